//! Client side of `psl deploy`, `psl invoke` and `psl functions`: plain HTTP to a platform.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7878";

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn explain(status: u16, body: &[u8]) -> anyhow::Error {
    let text = String::from_utf8_lossy(body);
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| text.into_owned());
    anyhow::anyhow!("server answered {status}: {message}")
}

fn read_body(response: ureq::http::Response<ureq::Body>) -> anyhow::Result<(u16, Vec<u8>)> {
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()?;
    Ok((status, body))
}

fn unreachable_hint(server: &str) -> String {
    format!("could not reach {server}; is `psl dev` running?")
}

pub fn deploy(server: &str, name: &str, module: &Path) -> anyhow::Result<ExitCode> {
    let wasm = std::fs::read(module).with_context(|| format!("reading {}", module.display()))?;
    let url = format!("{server}/functions/{name}");
    let response = agent()
        .put(&url)
        .send(&wasm[..])
        .with_context(|| unreachable_hint(server))?;
    let (status, body) = read_body(response)?;
    if status != 200 {
        return Err(explain(status, &body))
            .with_context(|| format!("deploying {}", module.display()));
    }
    let reply: serde_json::Value = serde_json::from_slice(&body)?;
    println!("deployed {name} = {}", reply["id"].as_str().unwrap_or("?"));
    Ok(ExitCode::SUCCESS)
}

pub fn invoke(
    server: &str,
    name: &str,
    input: Option<String>,
    file: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let input = match (input, file) {
        (Some(text), _) => text.into_bytes(),
        (None, Some(path)) if path == Path::new("-") => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            buf
        }
        (None, Some(path)) => {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
        }
        (None, None) => Vec::new(),
    };
    let url = format!("{server}/invoke/{name}");
    let response = agent()
        .post(&url)
        .send(&input[..])
        .with_context(|| unreachable_hint(server))?;
    let (status, body) = read_body(response)?;
    if status != 200 {
        return Err(explain(status, &body)).with_context(|| format!("invoking {name}"));
    }
    println!("{}", String::from_utf8_lossy(&body));
    Ok(ExitCode::SUCCESS)
}

pub fn functions(server: &str) -> anyhow::Result<ExitCode> {
    let response = agent()
        .get(&format!("{server}/functions"))
        .call()
        .with_context(|| unreachable_hint(server))?;
    let (status, body) = read_body(response)?;
    if status != 200 {
        bail!(explain(status, &body));
    }
    let list: Vec<serde_json::Value> = serde_json::from_slice(&body)?;
    for entry in list {
        println!(
            "{:<20} {}",
            entry["name"].as_str().unwrap_or("?"),
            entry["kind"].as_str().unwrap_or("?")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `psl attest`: challenge the manager with a fresh nonce, verify its evidence against the
/// policy (bound to its channel key and the nonce), print the verdict and the claims.
pub fn attest(server: &str, policy: &Path) -> anyhow::Result<ExitCode> {
    let policy = psl_trust::Policy::load(policy)
        .with_context(|| format!("loading the policy {}", policy.display()))?;
    let mut nonce = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| anyhow::anyhow!("no system randomness"))?;
    let client = psl_trust::PrepareClient::new(policy, nonce);
    let url = format!("{server}/attest");
    let response = agent()
        .post(&url)
        .send(&client.challenge()[..])
        .with_context(|| unreachable_hint(server))?;
    let (status, body) = read_body(response)?;
    if status != 200 {
        return Err(explain(status, &body)).context("asking the manager for evidence");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match client.verify_offer(&body, now) {
        Ok(attested) => {
            let claims = attested.claims();
            println!("verdict: ACCEPTED by the policy");
            if claims.simulated {
                println!(
                    "  WARNING: SIMULATED TEE: no hardware protection; accepted only because the \
                     policy allows simulation for this root"
                );
            }
            println!("  claims: {claims}");
            println!(
                "  {}",
                serde_json::to_string_pretty(claims).unwrap_or_default()
            );
            println!(
                "  channel key (owner secrets are sealed to it): {}",
                attested
                    .channel_key()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            println!("verdict: REFUSED: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

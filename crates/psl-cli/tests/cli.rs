//! The `psl` binary as a user runs it: one-shot runs, the dev demo, and a served platform
//! driven by `psl deploy` / `psl invoke` from separate processes.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn psl() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_psl"));
    command.env_remove("PSL_SERVER").current_dir(root());
    command
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn guest(name: &str) -> PathBuf {
    let path = root().join("guests/out").join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} missing: run `cargo xtask guests` first",
        path.display()
    );
    path
}

#[test]
fn run_prints_the_output_and_fails_clearly_on_a_bad_module() {
    let out = psl()
        .args(["run"])
        .arg(guest("hello"))
        .arg("Ada")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Hello, Ada!");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.wasm");
    std::fs::write(&bad, b"\0asm\x01\0\0\0\x05\xff").unwrap();
    let out = psl().arg("run").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("malformed module"), "{stderr}");
}

#[test]
fn dev_demo_runs_the_examples_end_to_end() {
    let out = psl()
        .args(["dev", "--exit-after-demo", "--examples"])
        .arg(root().join("guests/out"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Hello, PSL!"), "{stdout}");
    assert!(stdout.contains("(exact;"), "{stdout}");
    assert!(stdout.contains("invariant kept"), "{stdout}");
}

#[test]
fn served_platform_takes_deploys_and_invocations_from_other_processes() {
    let mut server = psl()
        .args([
            "dev",
            "--no-demo",
            "--listen",
            "127.0.0.1:0",
            "--examples",
            "/nonexistent",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let address = loop {
        let line = lines.next().expect("server exited").unwrap();
        if let Some(rest) = line.strip_prefix("serving on ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let result = std::panic::catch_unwind(|| {
        let deploy = psl()
            .args(["deploy", "greeter"])
            .arg(guest("hello"))
            .args(["--server", &address])
            .output()
            .unwrap();
        assert!(
            deploy.status.success(),
            "{}",
            String::from_utf8_lossy(&deploy.stderr)
        );
        let invoke = psl()
            .args(["invoke", "greeter", "CLI", "--server", &address])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&invoke.stdout).trim(),
            "Hello, CLI!"
        );
        let missing = psl()
            .args(["invoke", "nobody", "--server", &address])
            .output()
            .unwrap();
        assert!(!missing.status.success());
        assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
        // Prometheus metrics count what just happened.
        let metrics = http_get(&address, "/metrics");
        assert!(
            metrics.contains("psl_invocations_total{outcome=\"ok\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("psl_invocations_total{outcome=\"unknown_function\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("psl_invocation_seconds_count 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("psl_workers_enrolled_total 2"),
            "{metrics}"
        );
        assert!(metrics.contains("psl_replication_lag_records"), "{metrics}");
    });
    server.kill().unwrap();
    server.wait().unwrap();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn attest_verifies_the_served_manager_against_the_policy_and_refuses_a_strict_one() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    let mut server = psl()
        .args([
            "dev",
            "--no-demo",
            "--listen",
            "127.0.0.1:0",
            "--examples",
            "/nonexistent",
            "--policy-out",
        ])
        .arg(&policy)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    let address = loop {
        let line = lines.next().expect("server exited").unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if let Some(rest) = line.strip_prefix("serving on ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let result = std::panic::catch_unwind(|| {
        assert!(banner.contains("SIMULATED TEE"), "{banner}");
        let accepted = psl()
            .args(["attest", &address, "--policy"])
            .arg(&policy)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&accepted.stdout);
        assert!(accepted.status.success(), "{stdout}");
        assert!(stdout.contains("ACCEPTED"), "{stdout}");
        assert!(stdout.contains("SIMULATED TEE"), "{stdout}");
        // A policy that does not allow simulation refuses the same manager.
        let strict = dir.path().join("strict.json");
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&policy).unwrap()).unwrap();
        json["allow_sim"] = serde_json::Value::Bool(false);
        std::fs::write(&strict, json.to_string()).unwrap();
        let refused = psl()
            .args(["attest", &address, "--policy"])
            .arg(&strict)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&refused.stdout);
        assert!(!refused.status.success(), "{stdout}");
        assert!(stdout.contains("REFUSED"), "{stdout}");
        assert!(stdout.contains("simulat"), "{stdout}");
    });
    server.kill().unwrap();
    server.wait().unwrap();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// A plain HTTP/1.1 GET (no client library: this is what a scraper sends).
fn http_get(address: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let host = address.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

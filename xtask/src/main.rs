//! `cargo xtask`: the project's own build steps, so a fresh machine needs only rustup.
//!
//! * `cargo xtask dev [ARGS]`: installs the wasm target, builds the guests, runs `psl dev`.
//! * `cargo xtask test [ARGS]`: installs the wasm target, builds the guests, runs every test
//!   (release profile, see the workspace Cargo.toml for why).
//! * `cargo xtask guests`: builds the guest modules into `guests/out/`.
//! * `cargo xtask bench kernels [ARGS]`: the WebAssembly compute benchmark.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const GUESTS: [&str; 4] = ["hello", "counter", "bank", "ycsb"];
const WASM_TARGET: &str = "wasm32-wasip1";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn run(command: &mut Command) -> Result<(), String> {
    let status = command
        .status()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed with {status}"))
    }
}

fn ensure_wasm_target() -> Result<(), String> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    if let Ok(out) = installed
        && String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == WASM_TARGET)
    {
        return Ok(());
    }
    eprintln!("xtask: installing the {WASM_TARGET} target");
    run(Command::new("rustup").args(["target", "add", WASM_TARGET]))
}

/// Where guest builds go: beside the host target dir when one is configured (warm CI caches).
fn guest_target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("guests"),
        None => root().join("guests").join("target"),
    }
}

fn build_guests() -> Result<(), String> {
    ensure_wasm_target()?;
    let root = root();
    let target_dir = guest_target_dir();
    let mut build = cargo();
    build
        .current_dir(root.join("guests"))
        .args([
            "build",
            "--release",
            "--target",
            WASM_TARGET,
            "--target-dir",
        ])
        .arg(&target_dir);
    for guest in GUESTS {
        build.args(["-p", guest]);
    }
    // Production guests use wasm SIMD (docs/benchmarks.md explains the choice), and a 32 KiB
    // stack instead of Rust's 1 MiB: Rust puts the stack first in linear memory, so with the
    // default every invocation touches pages above 1 MiB that the pooling allocator must
    // madvise away again; with 32 KiB, stack, data and heap start inside the first 64 KiB the
    // runtime keeps resident (docs/abi.md, "Stack size").
    build.env(
        "RUSTFLAGS",
        "-C target-feature=+simd128 -C link-arg=-zstack-size=32768",
    );
    run(&mut build)?;
    let out = root.join("guests").join("out");
    std::fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let built = target_dir.join(WASM_TARGET).join("release");
    for guest in GUESTS {
        let file = format!("{}.wasm", guest.replace('-', "_"));
        let (from, to) = (built.join(&file), out.join(&file));
        std::fs::copy(&from, &to).map_err(|e| format!("copying {}: {e}", from.display()))?;
    }
    // The benchmark kernels, twice: with wasm SIMD (production setting) and without.
    for (variant, flags) in [("simd", "-C target-feature=+simd128"), ("scalar", "")] {
        let dir = target_dir.join(format!("kernels-{variant}"));
        let mut build = cargo();
        build
            .current_dir(root.join("guests"))
            .args([
                "build",
                "--release",
                "--target",
                WASM_TARGET,
                "-p",
                "psl-kernels-wasm",
                "--target-dir",
            ])
            .arg(&dir)
            .env("RUSTFLAGS", flags);
        run(&mut build)?;
        let from = dir
            .join(WASM_TARGET)
            .join("release")
            .join("psl_kernels_wasm.wasm");
        let to = out.join(format!("psl_kernels_wasm_{variant}.wasm"));
        std::fs::copy(&from, &to).map_err(|e| format!("copying {}: {e}", from.display()))?;
    }
    eprintln!("xtask: guest modules are in {}", out.display());
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let root = root();
    let result = match task.as_str() {
        "guests" => build_guests(),
        "dev" => build_guests().and_then(|()| {
            run(cargo()
                .current_dir(&root)
                .args([
                    "run",
                    "--release",
                    "-p",
                    "psl-cli",
                    "--bin",
                    "psl",
                    "--",
                    "dev",
                ])
                .args(&rest))
        }),
        "test" => build_guests().and_then(|()| {
            run(cargo()
                .current_dir(&root)
                .args(["test", "--release", "--workspace"])
                .args(&rest))
        }),
        "bench" => build_guests()
            // The cluster-mode targets start `psl node` processes: build `psl` next to the bench.
            .and_then(|()| {
                run(cargo()
                    .current_dir(&root)
                    .args(["build", "--release", "-p", "psl-cli"]))
            })
            .and_then(|()| {
                run(cargo()
                    .current_dir(&root)
                    .args(["run", "--release", "-p", "psl-bench", "--"])
                    .args(&rest))
            }),
        _ => Err("usage: cargo xtask <dev|test|guests|bench> [ARGS]".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

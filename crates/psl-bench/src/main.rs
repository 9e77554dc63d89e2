//! `psl-bench`: runs PSL's benchmarks and writes their results.
//!
//! ```text
//! psl-bench build-kernels                     # build the SIMD and scalar kernel modules
//! psl-bench kernels [--repeat N] [--out bench-results/] [--wasm <simd.wasm>] …
//! ```

use anyhow::Context;
use clap::{Parser, Subcommand};
use psl_bench::kernels::{self, Options, engines::ModuleKind};
use psl_kernels::Size;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "psl-bench", about = "PSL benchmarks", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Lock acquire+release latency on the embedded SCL cluster, with and without contention.
    Locks {
        /// Workers (and contending sessions).
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Acquire+release pairs per session.
        #[arg(long, default_value_t = 2000)]
        pairs: u64,
        /// Directory for locks.json and locks.md.
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
    },
    /// Cold start of the embedded cluster and the share of attestation and key provisioning.
    ColdStart {
        /// Workers per cluster.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Repetitions.
        #[arg(long, default_value_t = 30)]
        reps: u64,
        /// Directory for coldstart.json and coldstart.md.
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
    },
    /// Function start-up: cold compile, cached load, warm pooled invoke of `hello`, host-call cost.
    Start {
        /// Measured warm invocations.
        #[arg(long, default_value_t = 20_000)]
        invocations: u64,
        /// The `hello` module.
        #[arg(long, default_value = "guests/out/hello.wasm")]
        hello: PathBuf,
        /// Directory for start.json and start.md.
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
    },
    /// Build the kernel module twice (with and without wasm SIMD) into guests/target/{simd,scalar}.
    BuildKernels {
        /// Repository root (default: the one this binary was built from).
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// WASM compute benchmark: every kernel natively and on every engine.
    Kernels {
        /// Repetitions per kernel and engine (the median is reported).
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        /// Repetitions for interpreters (they are 10-40x slower).
        #[arg(long, default_value_t = 3)]
        slow_repeat: usize,
        /// Directory for kernels.json, kernels.md and kernels.svg.
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
        /// The SIMD build of psl-kernels-wasm.
        #[arg(long)]
        wasm: Option<PathBuf>,
        /// The scalar (no SIMD) build of psl-kernels-wasm.
        #[arg(long)]
        wasm_scalar: Option<PathBuf>,
        /// Problem size: mini, small, medium or bench.
        #[arg(long, default_value = "bench")]
        size: String,
        /// Only these kernels (comma-separated names).
        #[arg(long, value_delimiter = ',')]
        kernels: Vec<String>,
        /// Only these engines (comma-separated; native always runs).
        #[arg(long, value_delimiter = ',')]
        engines: Vec<String>,
        /// List the engines and kernels and exit.
        #[arg(long)]
        list: bool,
    },
    /// YCSB core workload (A-F or custom) against a state backend.
    Ycsb(Box<psl_bench::ycsb::cli::YcsbArgs>),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Ycsb(args) => psl_bench::ycsb::cli::main(*args),
        Command::BuildKernels { root } => {
            let root = root.unwrap_or_else(kernels::repo_root);
            kernels::build_guest_modules(&root)?;
            for kind in [ModuleKind::Simd, ModuleKind::Scalar] {
                let path = kernels::default_module_path(kind);
                kernels::load_module(&path)?;
                eprintln!("{kind:?}: {} (no imports)", path.display());
            }
            Ok(())
        }
        Command::Locks {
            workers,
            pairs,
            out,
        } => {
            let scenarios = psl_bench::locks::run(workers, pairs)?;
            let table = psl_bench::locks::markdown(&scenarios);
            std::fs::create_dir_all(&out)?;
            std::fs::write(
                out.join("locks.json"),
                serde_json::to_string_pretty(&scenarios)?,
            )?;
            std::fs::write(out.join("locks.md"), &table)?;
            println!("{table}");
            Ok(())
        }
        Command::ColdStart { workers, reps, out } => {
            let steps = psl_bench::coldstart::run(workers, reps)?;
            let table = psl_bench::coldstart::markdown(&steps);
            std::fs::create_dir_all(&out)?;
            std::fs::write(
                out.join("coldstart.json"),
                serde_json::to_string_pretty(&steps)?,
            )?;
            std::fs::write(out.join("coldstart.md"), &table)?;
            println!("{table}");
            Ok(())
        }
        Command::Start {
            invocations,
            hello,
            out,
        } => {
            let report = psl_bench::start::run(&hello, invocations)?;
            let table = psl_bench::start::markdown(&report);
            std::fs::create_dir_all(&out)?;
            std::fs::write(
                out.join("start.json"),
                serde_json::to_string_pretty(&report)?,
            )?;
            std::fs::write(out.join("start.md"), &table)?;
            println!("{table}");
            Ok(())
        }
        Command::Kernels {
            repeat,
            slow_repeat,
            out,
            wasm,
            wasm_scalar,
            size,
            kernels: only_kernels,
            engines,
            list,
        } => {
            if list {
                for e in kernels::engines::standard_engines() {
                    println!("engine {:<24} module {:?}", e.engine.name(), e.module);
                }
                for (name, _) in psl_kernels::KERNELS {
                    println!("kernel {name}");
                }
                return Ok(());
            }
            let size = Size::from_name(&size)
                .with_context(|| format!("unknown size {size:?} (mini, small, medium, bench)"))?;
            let defaults = Options::default();
            let options = Options {
                size,
                repeat,
                slow_repeat,
                kernels: only_kernels,
                engines,
                simd_module: wasm.unwrap_or(defaults.simd_module),
                scalar_module: wasm_scalar.unwrap_or(defaults.scalar_module),
                progress: true,
            };
            let report = kernels::run(&options, kernels::engines::standard_engines())?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let md = kernels::report::markdown(&report);
            let json = serde_json::to_string_pretty(&report)?;
            for (file, text) in [
                ("kernels.json", json),
                ("kernels.md", md.clone()),
                ("kernels.svg", kernels::svg::render(&report)),
            ] {
                let path = out.join(file);
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            println!("{md}");
            anyhow::ensure!(
                report.failures.is_empty(),
                "{} failure(s); see above and kernels.json",
                report.failures.len()
            );
            Ok(())
        }
    }
}

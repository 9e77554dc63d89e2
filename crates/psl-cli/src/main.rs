//! `psl`: the command-line interface. Thin glue over `psl-node`, `psl-runtime` and
//! `psl-store`; every error is printed with its chain and a non-zero exit code.

mod capsule;
mod cluster;
mod dev;
mod remote;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// PSL: secure, stateful serverless functions for trusted execution environments.
///
/// Start with `psl dev`: it runs the whole platform in this process (simulated TEE, workers
/// with replicated state in a DataCapsule), deploys the example functions, runs them end to end and serves invocations on
/// http://127.0.0.1:7878. Then use `psl deploy` and `psl invoke` against it, or `psl run` for a
/// one-shot run of a module without a server.
#[derive(Parser)]
#[command(name = "psl", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the embedded platform: deploy the examples (or given modules), demo them, serve.
    Dev(dev::DevArgs),
    /// Deploy a module to a running platform under a name.
    Deploy {
        /// The function's name (a-z, 0-9, '-', '_').
        name: String,
        /// The WebAssembly module (wasm32-wasip1).
        module: PathBuf,
        /// Platform address.
        #[arg(long, env = "PSL_SERVER", default_value = remote::DEFAULT_SERVER)]
        server: String,
    },
    /// Invoke a deployed function and print its output.
    Invoke {
        /// Function name (or module hash).
        name: String,
        /// Input text (default: empty). Use --input-file for bytes.
        input: Option<String>,
        /// Read the input from a file ('-' for stdin).
        #[arg(long, conflicts_with = "input")]
        input_file: Option<PathBuf>,
        /// Platform address.
        #[arg(long, env = "PSL_SERVER", default_value = remote::DEFAULT_SERVER)]
        server: String,
    },
    /// List the functions deployed on a running platform.
    Functions {
        /// Platform address.
        #[arg(long, env = "PSL_SERVER", default_value = remote::DEFAULT_SERVER)]
        server: String,
    },
    /// Run a module once, locally, without a server; prints output, stdout, stderr and logs.
    Run {
        /// The WebAssembly module.
        module: PathBuf,
        /// Input text.
        input: Option<String>,
        /// Execution deadline in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        deadline_ms: u64,
    },
    /// Verify a platform's manager: attestation evidence against a policy file; prints the
    /// verdict and the claims (exit code 1 if refused).
    Attest {
        /// Platform address.
        #[arg(env = "PSL_SERVER", default_value = remote::DEFAULT_SERVER)]
        server: String,
        /// The policy to check the evidence with (`psl dev` writes one and prints its path).
        #[arg(long)]
        policy: PathBuf,
    },
    /// Run one role of cluster mode (manager, worker, gateway) in this process, over NATS.
    Node(cluster::NodeArgs),
    /// Start a local multi-process cluster: 3 nats-server, a manager, N workers, a gateway.
    Up(cluster::UpArgs),
    /// Audit DataCapsule stores.
    #[command(subcommand)]
    Capsule(capsule::CapsuleCommand),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PSL_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dev(args) => dev::run(args),
        Command::Node(args) => cluster::node(&args),
        Command::Up(args) => cluster::up(&args),
        Command::Deploy {
            name,
            module,
            server,
        } => remote::deploy(&server, &name, &module),
        Command::Invoke {
            name,
            input,
            input_file,
            server,
        } => remote::invoke(&server, &name, input, input_file.as_deref()),
        Command::Functions { server } => remote::functions(&server),
        Command::Run {
            module,
            input,
            deadline_ms,
        } => dev::run_once(&module, input, deadline_ms),
        Command::Attest { server, policy } => remote::attest(&server, &policy),
        Command::Capsule(command) => capsule::run(command),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

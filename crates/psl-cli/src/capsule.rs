//! `psl capsule inspect|verify`: audits of a DataCapsule store directory.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum CapsuleCommand {
    /// Summarise a store: writers, heads, record kinds and counts, sizes.
    Inspect {
        /// The store directory.
        dir: PathBuf,
    },
    /// Verify every record (capsule id, certificates, signatures, hashes, chains).
    /// Exits 0 only if everything verifies; otherwise prints the first failure and where.
    Verify {
        /// The store directory.
        dir: PathBuf,
    },
}

pub fn run(command: CapsuleCommand) -> anyhow::Result<ExitCode> {
    match command {
        CapsuleCommand::Inspect { dir } => {
            let report = psl_store::inspect(&dir)
                .with_context(|| format!("inspecting {}", dir.display()))?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        CapsuleCommand::Verify { dir } => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            match psl_store::verify(&dir, now) {
                Ok(summary) => {
                    println!("{summary}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(failure) => {
                    println!("{failure}");
                    Ok(ExitCode::from(2))
                }
            }
        }
    }
}

//! Crash-test helper: appends to a store forever, printing each acknowledged record.
//!
//! `psl-store-crashloop <dir> <run> <always|batch|never>` opens (or creates) the store of the
//! testkit capsule "crashloop", starts a fresh writer incarnation (seeded by `run`, as a restarted
//! worker would draw a fresh key), and appends batches of 1..=8 records. After each `append`
//! returns it prints `ack <writer hex> <seq>` per record and flushes, so the parent test knows
//! exactly which records were acknowledged when it SIGKILLs this process.

use std::io::Write;
use std::process::ExitCode;

use psl_capsule::testkit::TestCapsule;
use psl_capsule::{CapsuleWriter, Update};
use psl_store::{DirStore, Durability, RecordStore, StoreError, StoreOptions};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("psl-store-crashloop: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(run), Some(mode)) = (args.get(1), args.get(2), args.get(3)) else {
        return Err("usage: psl-store-crashloop <dir> <run> <always|batch|never>".into());
    };
    let run: u64 = run.parse()?;
    let durability = match mode.as_str() {
        "always" => Durability::Always,
        "batch" => Durability::Batch,
        "never" => Durability::Never,
        other => return Err(format!("unknown durability {other}").into()),
    };
    let capsule = TestCapsule::new("crashloop", 1);
    // Small segments so rotation happens under the knife too.
    let options = StoreOptions {
        segment_bytes_target: 64 * 1024,
    };
    let store = match DirStore::open(dir, options.clone()) {
        Ok((store, _)) => store,
        Err(StoreError::NotAStore(_)) => DirStore::create(dir, &capsule.metadata, options)?,
        Err(error) => return Err(error.into()),
    };
    let (keys, certificate) = capsule.writer(run);
    let (mut writer, genesis) = CapsuleWriter::start(
        &capsule.metadata,
        &capsule.data_key,
        keys,
        &certificate,
        1,
        &[],
    )?;
    let mut stdout = std::io::stdout().lock();
    store.append(std::slice::from_ref(&genesis), durability)?;
    writeln!(stdout, "ack {} 0", genesis.writer().to_hex())?;
    stdout.flush()?;
    let mut lamport = 1u64;
    let mut state = run.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    loop {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let n = 1 + (state % 8) as usize;
        let mut batch = Vec::with_capacity(n);
        for _ in 0..n {
            lamport += 1;
            let value = vec![(lamport % 251) as u8; 64 + (state % 512) as usize];
            let updates = [Update::put(format!("key-{lamport}"), value)];
            batch.push(writer.seal_updates(lamport, &[], &updates)?);
        }
        store.append(&batch, durability)?;
        for record in &batch {
            writeln!(stdout, "ack {} {}", record.writer().to_hex(), record.seq())?;
        }
        stdout.flush()?;
    }
}

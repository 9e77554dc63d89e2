//! The Secure Concurrency Layer's protocol logic, as deterministic state machines without IO.
//!
//! Work in progress (issue 4): this crate holds the pieces that are built and tested (the
//! record body codec, the replica's memtable and merge rule, the lock service); the I/O shell,
//! the bus, sync reports, recovery, the simulator and the wiring into `psl-node` are not built
//! yet. Design decisions: `docs/design/scl.md`.
//!
//! Owns: the SCL body format, the replica's versioned memtable and merge rule, the lock service
//! (FIFO, leases, fencing tokens, release watermarks).
//! Must never: do IO, read a clock or draw randomness (time comes in as `now_ms` arguments),
//! depend on tokio, or panic on anything a peer can send.

pub mod body;
mod cursor;
pub mod lock;
pub mod manager;
pub mod replica;
#[cfg(test)]
pub mod sim;
pub mod worker;

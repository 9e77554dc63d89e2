//! Cluster-mode storage and transport for PSL over NATS.
//!
//! * [`JetStreamStore`]: a [`psl_store::RecordStore`] over a JetStream stream per capsule,
//!   replicated (R3 on a three-server cluster), idempotent appends, verifying like the embedded
//!   `DirStore` (module [`store`]).
//! * [`Bus`]: the message bus the nodes talk over (record multicast per application,
//!   request/reply, queue groups), with [`NatsBus`] over core NATS and [`LocalBus`] in process
//!   (module [`bus`]).
//! * [`NatsConnection`]: one client and the tokio runtime that drives it, shared by both
//!   (module [`conn`], which documents the threading).
//! * [`testing::NatsCluster`]: starts real `nats-server` processes on loopback for tests and
//!   benchmarks.
//!
//! NATS is untrusted, like all storage and networks in PSL: it only ever carries sealed, signed
//! records and messages whose receivers verify them. Nothing here panics on what a server or
//! peer sends; every size is bounded.
#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        reason = "tests may panic on failure"
    )
)]

pub mod bus;
pub mod conn;
mod error;
pub mod store;
pub mod subjects;
pub mod testing;

pub use bus::{Bus, BusMessage, LocalBus, NatsBus, Subscription};

pub use conn::{ConnectionStats, NatsConnection, NatsOptions};
pub use error::{BusError, NatsError};
pub use store::{JetStreamOptions, JetStreamStore, OpenReport};

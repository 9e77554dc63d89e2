//! PSL node roles. For now: the embedded platform (runtime + single-node state + function
//! registry) and its HTTP API. Manager, worker and CapsuleDB roles join here as they are built.
//!
//! Owns: composition of the runtime with a state backend, function naming, the HTTP surface.
//! Must never: implement protocol logic (that lives in sans-IO crates), or let a request
//! panic the node.

pub mod cluster;
pub mod gateway;
pub mod local;
pub mod metrics;
pub mod platform;
pub mod scl;
pub mod trust;

pub use local::{LocalLimits, LocalState};
pub use platform::{Listing, Platform, PlatformError};

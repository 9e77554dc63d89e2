//! Error types of this crate. Everything a NATS server or peer sends that does not fit is one of
//! these, never a panic.

use std::time::Duration;

use psl_capsule::CapsuleId;

/// Connecting, or setting up a stream, failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// The tokio runtime could not be built.
    #[error("cannot start the NATS runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The runtime was shut down while an operation was waiting for it.
    #[error("the NATS runtime is gone")]
    RuntimeGone,
    /// No server answered within the connect timeout.
    #[error("cannot connect to NATS {servers}: {detail}")]
    Connect {
        /// The server list.
        servers: String,
        /// Why.
        detail: String,
    },
    /// An option is out of range or malformed.
    #[error("invalid NATS option: {0}")]
    InvalidOption(String),
    /// A JetStream API call failed.
    #[error("JetStream {op} on stream {stream}: {detail}")]
    JetStream {
        /// What was being done.
        op: &'static str,
        /// The stream.
        stream: String,
        /// Why.
        detail: String,
    },
    /// The stream holds no capsule metadata.
    #[error("stream {0} holds no capsule metadata")]
    NotAStore(String),
    /// The stream's metadata is not the capsule's (undecodable, or its hash is another id).
    #[error("stream {stream}: metadata is not capsule {expected}: {detail}")]
    WrongMetadata {
        /// The stream.
        stream: String,
        /// The capsule asked for.
        expected: CapsuleId,
        /// What was found.
        detail: String,
    },
}

/// A bus operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// A subject or queue group name is not a valid NATS name (or contains a wildcard where
    /// none is allowed).
    #[error("invalid subject {subject:?}: {reason}")]
    InvalidSubject {
        /// The subject.
        subject: String,
        /// Why.
        reason: &'static str,
    },
    /// The message is larger than the server (or the in-process bus) accepts.
    #[error("message of {len} bytes exceeds the bus limit of {max} bytes")]
    TooLarge {
        /// Payload bytes (plus headers).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// No reply within the timeout.
    #[error("no reply on {subject} within {timeout:?}")]
    Timeout {
        /// The request subject.
        subject: String,
        /// The timeout.
        timeout: Duration,
    },
    /// Nobody subscribes to the request subject.
    #[error("no responders on {0}")]
    NoResponders(String),
    /// The bus is closed (connection closed, or the in-process bus dropped).
    #[error("bus closed")]
    Closed,
    /// The connection failed the operation.
    #[error("NATS {op}: {detail}")]
    Nats {
        /// What was being done.
        op: &'static str,
        /// Why.
        detail: String,
    },
    /// A received message is not what the protocol expects (for example an undecodable
    /// record).
    #[error("malformed message on {subject}: {detail}")]
    Malformed {
        /// The subject it arrived on.
        subject: String,
        /// Why.
        detail: String,
    },
}

impl From<NatsError> for BusError {
    fn from(error: NatsError) -> Self {
        match error {
            NatsError::RuntimeGone => BusError::Closed,
            other => BusError::Nats {
                op: "runtime",
                detail: other.to_string(),
            },
        }
    }
}

//! The state interface the runtime calls: the key-value API with locks, as one trait.
//!
//! The runtime knows nothing of replication, capsules or lock servers. It talks to a
//! [`State`] (one per worker), opening one [`Session`] per invocation. The Secure Concurrency
//! Layer implements these traits; so does the single-node store in `psl-node`.
//! Ack point, as every implementation must document it: `put` returns after the local apply;
//! durability (and visibility to the next holder of a lock) is reached at `flush`/`unlock`.

use std::time::Duration;

/// Lock modes: many readers or one writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockMode {
    /// Shared with other readers.
    Read,
    /// Exclusive.
    Write,
}

/// Errors a state backend reports. They are returned to the guest as error codes.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateError {
    /// `unlock` of a lock this session does not hold.
    #[error("lock {0:?} is not held by this invocation")]
    NotHeld(String),
    /// The lock was not granted in time.
    #[error("lock {0:?} was not granted within the wait limit")]
    LockTimeout(String),
    /// The session already holds this lock.
    #[error("lock {0:?} is already held by this invocation")]
    AlreadyHeld(String),
    /// The write was refused because the lock it was made under has moved on (fencing).
    #[error("write refused: lock lease expired and was fenced")]
    Fenced,
    /// The backend cannot serve the request right now (storage quorum lost, shutting down...).
    #[error("state unavailable: {0}")]
    Unavailable(String),
    /// Too many locks held, queue full, or similar bounded resource exhausted.
    #[error("state limit reached: {0}")]
    Limit(String),
}

/// Key-value entries in key order, as a scan returns them.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A worker's state backend.
pub trait State: Send + Sync + 'static {
    /// Opens the session for one invocation.
    fn session(&self) -> Box<dyn Session>;
}

/// The key-value API as seen by one invocation.
///
/// Locks held when the invocation ends are released by [`Session::finish`], after a flush.
pub trait Session: Send {
    /// Reads a key. Read-your-writes holds within a session.
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError>;
    /// Writes a key; applied locally at once, durable at the next flush or unlock.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StateError>;
    /// Deletes a key; returns whether it existed.
    fn delete(&mut self, key: &[u8]) -> Result<bool, StateError>;
    /// Returns up to `limit` entries whose keys start with `prefix`, in key order.
    fn scan_prefix(&mut self, prefix: &[u8], limit: usize) -> Result<Entries, StateError>;
    /// Acquires a lock, waiting up to `wait` for the grant. When it returns, every write
    /// released under this lock before is visible to this session.
    fn lock(&mut self, name: &[u8], mode: LockMode, wait: Duration) -> Result<(), StateError>;
    /// Flushes this session's writes, then releases the lock.
    fn unlock(&mut self, name: &[u8]) -> Result<(), StateError>;
    /// Makes every write of this session durable.
    fn flush(&mut self) -> Result<(), StateError>;
    /// Ends the session: flushes and releases every lock still held.
    fn finish(&mut self) -> Result<(), StateError>;
}

//! Native functions: Rust code compiled into the worker binary, with the same host API as
//! WebAssembly guests (the [`Host`] trait) and the same limits.
//!
//! Native code is trusted in the sense that it is part of the measured worker binary; it is
//! not sandboxed and cannot be interrupted, only its host calls check the deadline.

use std::time::Duration;

use crate::error::InvokeError;
use crate::host::Host;
use crate::state::{LockMode, Session, State, StateError};

/// A function compiled into the worker.
pub trait NativeFunction: Send + Sync {
    /// The name it is invoked by.
    fn name(&self) -> &str;
    /// Runs once per invocation; the output goes through [`Host::output`].
    fn call(&self, host: &mut dyn Host) -> Result<(), InvokeError>;
}

/// A state backend with nothing in it that refuses every write; used where a store is needed
/// before any real state exists (and in tests of pure functions).
pub struct NoState;

impl State for NoState {
    fn session(&self) -> Box<dyn Session> {
        Box::new(NoState)
    }
}

impl Session for NoState {
    fn get(&mut self, _: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(None)
    }
    fn put(&mut self, _: &[u8], _: &[u8]) -> Result<(), StateError> {
        Err(StateError::Unavailable(
            "this function runs without state".into(),
        ))
    }
    fn delete(&mut self, _: &[u8]) -> Result<bool, StateError> {
        Err(StateError::Unavailable(
            "this function runs without state".into(),
        ))
    }
    fn scan_prefix(&mut self, _: &[u8], _: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StateError> {
        Ok(Vec::new())
    }
    fn lock(&mut self, _: &[u8], _: LockMode, _: Duration) -> Result<(), StateError> {
        Err(StateError::Unavailable(
            "this function runs without state".into(),
        ))
    }
    fn unlock(&mut self, name: &[u8]) -> Result<(), StateError> {
        Err(StateError::NotHeld(
            String::from_utf8_lossy(name).into_owned(),
        ))
    }
    fn flush(&mut self) -> Result<(), StateError> {
        Ok(())
    }
    fn finish(&mut self) -> Result<(), StateError> {
        Ok(())
    }
}

//! Per-invocation host state and the host API with its limits, shared by WebAssembly
//! and native functions.
//!
//! [`HostCtx`] is the one implementation of [`Host`]: it counts calls, enforces key, value,
//! input, output and log limits, checks the deadline on every call, and forwards state
//! operations to the invocation's [`Session`]. The WebAssembly bindings in `abi.rs` only
//! translate guest memory to slices and call these methods; native functions call them
//! directly. This module never touches guest memory.

use std::time::{Duration, Instant};

use crate::error::{InvokeError, Limit};
use crate::limits::InvocationLimits;
use crate::state::{Entries, LockMode, Session};

/// Severity of a guest log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// Fine-grained.
    Debug,
    /// Normal.
    Info,
    /// Something odd.
    Warn,
    /// Something failed.
    Error,
}

impl LogLevel {
    /// Decodes the ABI level number; unknown numbers are `Info`.
    pub fn from_code(code: i32) -> Self {
        match code {
            0 => LogLevel::Debug,
            2 => LogLevel::Warn,
            3 => LogLevel::Error,
            _ => LogLevel::Info,
        }
    }
}

/// One log line written by a function.
#[derive(Clone, Debug)]
pub struct LogLine {
    /// Severity.
    pub level: LogLevel,
    /// Text (lossily decoded as UTF-8).
    pub message: String,
}

/// The host API every function sees, WebAssembly or native.
pub trait Host {
    /// The invocation's input.
    fn input(&self) -> &[u8];
    /// Appends to the invocation's output.
    fn output(&mut self, bytes: &[u8]) -> Result<(), InvokeError>;
    /// Reads a key.
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, InvokeError>;
    /// Writes a key.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), InvokeError>;
    /// Deletes a key; returns whether it existed.
    fn delete(&mut self, key: &[u8]) -> Result<bool, InvokeError>;
    /// Lists up to `limit` entries under `prefix`.
    fn scan(&mut self, prefix: &[u8], limit: usize) -> Result<Entries, InvokeError>;
    /// Acquires a lock (blocks until granted or the wait limit passes).
    fn lock(&mut self, name: &[u8], mode: LockMode) -> Result<(), InvokeError>;
    /// Flushes, then releases a lock.
    fn unlock(&mut self, name: &[u8]) -> Result<(), InvokeError>;
    /// Makes this invocation's writes durable.
    fn flush(&mut self) -> Result<(), InvokeError>;
    /// Writes a log line.
    fn log(&mut self, level: LogLevel, message: &[u8]) -> Result<(), InvokeError>;
}

/// Per-invocation host state.
pub struct HostCtx {
    input: Vec<u8>,
    output: Vec<u8>,
    session: Box<dyn Session>,
    limits: InvocationLimits,
    deadline: Instant,
    host_calls: u64,
    log_bytes: usize,
    logs: Vec<LogLine>,
    /// A result too large for the guest's buffer, kept for `take`.
    pub(crate) pending: Option<Vec<u8>>,
    /// The error message a guest reported through `fail`.
    pub(crate) guest_error: Option<String>,
    /// The typed reason a host call trapped the guest.
    pub(crate) fault: Option<InvokeError>,
}

impl HostCtx {
    /// Creates the host state for one invocation. Fails if the input is over its limit.
    pub fn new(
        input: Vec<u8>,
        session: Box<dyn Session>,
        limits: InvocationLimits,
        started: Instant,
    ) -> Result<Self, InvokeError> {
        check_len(Limit::InputBytes, input.len(), limits.input_bytes_max)?;
        let deadline = started + limits.execution_time_max;
        Ok(Self {
            input,
            output: Vec::new(),
            session,
            limits,
            deadline,
            host_calls: 0,
            log_bytes: 0,
            logs: Vec::new(),
            pending: None,
            guest_error: None,
            fault: None,
        })
    }

    /// Counts one host call and checks the deadline. Every host function calls this first.
    pub(crate) fn enter(&mut self) -> Result<(), InvokeError> {
        self.host_calls = self.host_calls.saturating_add(1);
        if self.host_calls > self.limits.host_calls_max {
            return Err(InvokeError::Limit {
                limit: Limit::HostCalls,
                requested: self.host_calls,
                max: self.limits.host_calls_max,
            });
        }
        if Instant::now() >= self.deadline {
            return Err(InvokeError::DeadlineExceeded(
                self.limits.execution_time_max,
            ));
        }
        Ok(())
    }

    /// Limits of this invocation.
    pub fn limits(&self) -> &InvocationLimits {
        &self.limits
    }

    /// Host calls made so far.
    pub fn host_calls(&self) -> u64 {
        self.host_calls
    }

    /// Ends the session (flush and release locks) and returns what the invocation produced.
    pub(crate) fn finish(mut self) -> (Vec<u8>, Vec<LogLine>, u64, Result<(), InvokeError>) {
        let ended = self.session.finish().map_err(InvokeError::State);
        (self.output, self.logs, self.host_calls, ended)
    }

    fn check_key(&self, key: &[u8]) -> Result<(), InvokeError> {
        check_len(Limit::KeyBytes, key.len(), self.limits.key_bytes_max)
    }

    fn lock_wait(&self) -> Duration {
        let left = self.deadline.saturating_duration_since(Instant::now());
        left.min(self.limits.lock_wait_max)
    }
}

fn check_len(limit: Limit, len: usize, max: usize) -> Result<(), InvokeError> {
    if len > max {
        return Err(InvokeError::Limit {
            limit,
            requested: len as u64,
            max: max as u64,
        });
    }
    Ok(())
}

impl Host for HostCtx {
    fn input(&self) -> &[u8] {
        &self.input
    }

    fn output(&mut self, bytes: &[u8]) -> Result<(), InvokeError> {
        let total = self.output.len().saturating_add(bytes.len());
        check_len(Limit::OutputBytes, total, self.limits.output_bytes_max)?;
        self.output.extend_from_slice(bytes);
        Ok(())
    }

    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, InvokeError> {
        self.check_key(key)?;
        Ok(self.session.get(key)?)
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), InvokeError> {
        self.check_key(key)?;
        check_len(Limit::ValueBytes, value.len(), self.limits.value_bytes_max)?;
        Ok(self.session.put(key, value)?)
    }

    fn delete(&mut self, key: &[u8]) -> Result<bool, InvokeError> {
        self.check_key(key)?;
        Ok(self.session.delete(key)?)
    }

    fn scan(&mut self, prefix: &[u8], limit: usize) -> Result<Entries, InvokeError> {
        self.check_key(prefix)?;
        check_len(Limit::ScanEntries, limit, self.limits.scan_entries_max)?;
        Ok(self.session.scan_prefix(prefix, limit)?)
    }

    fn lock(&mut self, name: &[u8], mode: LockMode) -> Result<(), InvokeError> {
        self.check_key(name)?;
        let wait = self.lock_wait();
        Ok(self.session.lock(name, mode, wait)?)
    }

    fn unlock(&mut self, name: &[u8]) -> Result<(), InvokeError> {
        self.check_key(name)?;
        Ok(self.session.unlock(name)?)
    }

    fn flush(&mut self) -> Result<(), InvokeError> {
        Ok(self.session.flush()?)
    }

    fn log(&mut self, level: LogLevel, message: &[u8]) -> Result<(), InvokeError> {
        let total = self.log_bytes.saturating_add(message.len());
        check_len(Limit::LogBytes, total, self.limits.log_bytes_max)?;
        self.log_bytes = total;
        let message = String::from_utf8_lossy(message).into_owned();
        tracing::debug!(target: "psl::guest", ?level, %message);
        self.logs.push(LogLine { level, message });
        Ok(())
    }
}

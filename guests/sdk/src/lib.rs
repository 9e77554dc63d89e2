//! The PSL guest SDK: write a function in Rust, compile it to `wasm32-wasip1`, deploy it.
//!
//! ```ignore
//! psl_guest::entry!(handler);
//!
//! fn handler(input: &[u8]) -> psl_guest::Result<Vec<u8>> {
//!     let _guard = psl_guest::lock("counter", psl_guest::LockMode::Write)?;
//!     let n = psl_guest::get_u64("counter")?.unwrap_or(0) + 1;
//!     psl_guest::put("counter", n.to_string())?;
//!     Ok(n.to_string().into_bytes())
//! }
//! ```
//!
//! State semantics: `put` is applied to this worker's replica at once and becomes durable (and
//! visible to the next holder of a lock) at `flush` or `unlock`. Locks give release
//! consistency: what the previous holder wrote before unlocking is visible after `lock`
//! returns. Locks still held when the function returns are released (after a flush).
//!
//! The raw ABI is in [`sys`]; `include/psl.h` is the same ABI for C.

use std::fmt;

/// The raw host imports (module `psl`). Prefer the safe wrappers.
pub mod sys {
    #[link(wasm_import_module = "psl")]
    unsafe extern "C" {
        pub fn input_len() -> i32;
        pub fn input_read(ptr: *mut u8, len: i32) -> i32;
        pub fn output_write(ptr: *const u8, len: i32) -> i32;
        pub fn kv_get(key: *const u8, key_len: i32, out: *mut u8, out_cap: i32) -> i64;
        pub fn kv_take(out: *mut u8, out_cap: i32) -> i64;
        pub fn kv_put(key: *const u8, key_len: i32, value: *const u8, value_len: i32) -> i32;
        pub fn kv_delete(key: *const u8, key_len: i32) -> i32;
        pub fn kv_scan(
            prefix: *const u8,
            prefix_len: i32,
            limit: i32,
            out: *mut u8,
            out_cap: i32,
        ) -> i64;
        pub fn lock(name: *const u8, name_len: i32, mode: i32) -> i32;
        pub fn unlock(name: *const u8, name_len: i32) -> i32;
        pub fn flush() -> i32;
        pub fn log(level: i32, ptr: *const u8, len: i32) -> i32;
        pub fn fail(ptr: *const u8, len: i32) -> i32;
    }
}

/// Errors the host reports to a function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// `unlock` of a lock not held.
    NotHeld,
    /// The lock was not granted within the wait limit.
    LockTimeout,
    /// The lock is already held by this invocation.
    AlreadyHeld,
    /// A write was refused because its lock lease had expired (fencing).
    Fenced,
    /// The state backend is unavailable.
    Unavailable,
    /// A bounded resource of the state backend is exhausted.
    StateLimit,
    /// An unknown code from a newer host.
    Host(i64),
    /// An error of the function itself.
    Message(String),
}

impl Error {
    fn from_code(code: i64) -> Self {
        match code {
            -2 => Error::NotHeld,
            -3 => Error::LockTimeout,
            -4 => Error::AlreadyHeld,
            -5 => Error::Fenced,
            -6 => Error::Unavailable,
            -7 => Error::StateLimit,
            other => Error::Host(other),
        }
    }

    /// An error with a message, for the function's own failures.
    pub fn msg(message: impl fmt::Display) -> Self {
        Error::Message(message.to_string())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotHeld => f.write_str("lock not held"),
            Error::LockTimeout => f.write_str("lock not granted in time"),
            Error::AlreadyHeld => f.write_str("lock already held"),
            Error::Fenced => f.write_str("write fenced: lock lease expired"),
            Error::Unavailable => f.write_str("state unavailable"),
            Error::StateLimit => f.write_str("state limit reached"),
            Error::Host(code) => write!(f, "host error code {code}"),
            Error::Message(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {}

/// Result with the SDK's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn check(code: i32) -> Result<i32> {
    if code < 0 {
        Err(Error::from_code(i64::from(code)))
    } else {
        Ok(code)
    }
}

fn len_i32(bytes: &[u8]) -> i32 {
    // Linear memory is at most 4 GiB and the host caps keys and values far below 2 GiB;
    // a longer slice is refused by the host as out of range.
    i32::try_from(bytes.len()).unwrap_or(i32::MAX)
}

/// The invocation's input.
pub fn input() -> Vec<u8> {
    // SAFETY: plain host calls; the buffer is valid for `len` bytes.
    unsafe {
        let len = sys::input_len().max(0) as usize;
        let mut buf = vec![0u8; len];
        let n = sys::input_read(buf.as_mut_ptr(), len_i32(&buf)).max(0) as usize;
        buf.truncate(n);
        buf
    }
}

/// Appends bytes to the invocation's output.
pub fn output(bytes: impl AsRef<[u8]>) {
    let bytes = bytes.as_ref();
    // SAFETY: the pointer and length describe a live slice.
    unsafe { sys::output_write(bytes.as_ptr(), len_i32(bytes)) };
}

const FIRST_BUFFER_BYTES: usize = 4096;

/// Reads a value that the host either wrote into `buf` or kept pending because `buf` was small.
fn read_value(first: impl FnOnce(&mut [u8]) -> i64) -> Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; FIRST_BUFFER_BYTES];
    let n = first(&mut buf);
    if n == -1 {
        return Ok(None);
    }
    if n < 0 {
        return Err(Error::from_code(n));
    }
    let n = n as usize;
    if n <= buf.len() {
        buf.truncate(n);
        return Ok(Some(buf));
    }
    buf = vec![0u8; n];
    // SAFETY: the buffer is valid for `n` bytes.
    let got = unsafe { sys::kv_take(buf.as_mut_ptr(), len_i32(&buf)) };
    if got < 0 {
        return Err(Error::from_code(got));
    }
    buf.truncate(got as usize);
    Ok(Some(buf))
}

/// Reads a key.
pub fn get(key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
    let key = key.as_ref();
    // SAFETY: pointers and lengths describe live slices.
    read_value(|buf| unsafe {
        sys::kv_get(key.as_ptr(), len_i32(key), buf.as_mut_ptr(), len_i32(buf))
    })
}

/// Reads a key holding a decimal `u64` (as written by [`put`] of `n.to_string()`).
pub fn get_u64(key: impl AsRef<[u8]>) -> Result<Option<u64>> {
    match get(key)? {
        None => Ok(None),
        Some(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| Error::msg("value is not a decimal u64")),
    }
}

/// Writes a key (applied locally now, durable at the next flush or unlock).
pub fn put(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
    let (key, value) = (key.as_ref(), value.as_ref());
    // SAFETY: pointers and lengths describe live slices.
    check(unsafe { sys::kv_put(key.as_ptr(), len_i32(key), value.as_ptr(), len_i32(value)) })
        .map(drop)
}

/// Deletes a key; returns whether it existed.
pub fn delete(key: impl AsRef<[u8]>) -> Result<bool> {
    let key = key.as_ref();
    // SAFETY: pointer and length describe a live slice.
    check(unsafe { sys::kv_delete(key.as_ptr(), len_i32(key)) }).map(|n| n == 1)
}

/// Lists up to `limit` entries whose keys start with `prefix`, in key order.
pub fn scan(prefix: impl AsRef<[u8]>, limit: u32) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let prefix = prefix.as_ref();
    let limit = i32::try_from(limit).unwrap_or(i32::MAX);
    // SAFETY: pointers and lengths describe live slices.
    let bytes = read_value(|buf| unsafe {
        sys::kv_scan(
            prefix.as_ptr(),
            len_i32(prefix),
            limit,
            buf.as_mut_ptr(),
            len_i32(buf),
        )
    })?
    .unwrap_or_default();
    decode_entries(&bytes).ok_or_else(|| Error::msg("malformed scan result from host"))
}

fn take_u32(bytes: &mut &[u8]) -> Option<usize> {
    let (head, rest) = bytes.split_at_checked(4)?;
    *bytes = rest;
    Some(u32::from_le_bytes(head.try_into().ok()?) as usize)
}

fn take_bytes(bytes: &mut &[u8]) -> Option<Vec<u8>> {
    let len = take_u32(bytes)?;
    let (head, rest) = bytes.split_at_checked(len)?;
    *bytes = rest;
    Some(head.to_vec())
}

fn decode_entries(mut bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let count = take_u32(&mut bytes)?;
    let mut out = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        let key = take_bytes(&mut bytes)?;
        let value = take_bytes(&mut bytes)?;
        out.push((key, value));
    }
    Some(out)
}

/// Lock modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// Shared with other readers.
    Read,
    /// Exclusive.
    Write,
}

/// A held lock. Release it with [`LockGuard::unlock`] to see the error; dropping it releases
/// too, ignoring errors.
#[must_use = "a lock is released when its guard is dropped"]
pub struct LockGuard {
    name: Vec<u8>,
    held: bool,
}

impl LockGuard {
    /// Flushes this invocation's writes, then releases the lock.
    pub fn unlock(mut self) -> Result<()> {
        self.held = false;
        unlock(&self.name)
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.held {
            let _ = unlock(&self.name);
        }
    }
}

/// Acquires a lock; returns once everything released under it before is visible here.
pub fn lock(name: impl AsRef<[u8]>, mode: LockMode) -> Result<LockGuard> {
    let name = name.as_ref();
    let mode = match mode {
        LockMode::Read => 0,
        LockMode::Write => 1,
    };
    // SAFETY: pointer and length describe a live slice.
    check(unsafe { sys::lock(name.as_ptr(), len_i32(name), mode) })?;
    Ok(LockGuard {
        name: name.to_vec(),
        held: true,
    })
}

/// Flushes, then releases a lock acquired without a guard.
pub fn unlock(name: impl AsRef<[u8]>) -> Result<()> {
    let name = name.as_ref();
    // SAFETY: pointer and length describe a live slice.
    check(unsafe { sys::unlock(name.as_ptr(), len_i32(name)) }).map(drop)
}

/// Makes every write of this invocation durable.
pub fn flush() -> Result<()> {
    // SAFETY: a plain host call.
    check(unsafe { sys::flush() }).map(drop)
}

/// Log levels.
#[derive(Clone, Copy, Debug)]
pub enum Level {
    /// Fine-grained.
    Debug = 0,
    /// Normal.
    Info = 1,
    /// Odd.
    Warn = 2,
    /// Failed.
    Error = 3,
}

/// Writes a log line.
pub fn log(level: Level, message: impl AsRef<str>) {
    let message = message.as_ref().as_bytes();
    // SAFETY: pointer and length describe a live slice.
    unsafe { sys::log(level as i32, message.as_ptr(), len_i32(message)) };
}

/// Used by [`entry!`]: runs the handler, writes its output or reports its error.
#[doc(hidden)]
pub fn __run(handler: fn(&[u8]) -> Result<Vec<u8>>) -> i32 {
    let input = input();
    match handler(&input) {
        Ok(out) => {
            output(&out);
            0
        }
        Err(error) => {
            let message = error.to_string();
            // SAFETY: pointer and length describe a live slice.
            unsafe { sys::fail(message.as_ptr(), len_i32(message.as_bytes())) };
            1
        }
    }
}

/// Declares the function's entry point: `fn(&[u8]) -> Result<Vec<u8>>`.
#[macro_export]
macro_rules! entry {
    ($handler:path) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn psl_run() -> i32 {
            $crate::__run($handler)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_scan_entries_and_refuses_truncation() {
        let bytes = [1, 0, 0, 0, 1, 0, 0, 0, b'a', 2, 0, 0, 0, b'x', b'y'];
        assert_eq!(
            decode_entries(&bytes),
            Some(vec![(b"a".to_vec(), b"xy".to_vec())])
        );
        assert_eq!(decode_entries(&bytes[..bytes.len() - 1]), None);
    }
}

//! The guest ABI: the `psl` import module, and the one place where guest pointers and lengths
//! are checked.
//!
//! Every host function here does three things only: check its guest ranges with
//! [`guest_range`], call the matching [`Host`] method, and turn the result into a return code.
//! State errors a guest can handle become negative codes (see [`code`]); everything else
//! (bad pointers, limits, deadline) traps this invocation with a typed [`InvokeError`] kept in
//! [`HostCtx::fault`]. No function here can panic on guest input.
//!
//! The ABI is documented for guest authors in `docs/abi.md`; `guests/sdk` and
//! `guests/sdk/include/psl.h` wrap it.

use std::ops::Range;

use wasmtime::{Caller, Linker};

use crate::error::InvokeError;
use crate::host::{Host, HostCtx, LogLevel};
use crate::runtime::StoreData;
use crate::state::{LockMode, StateError};

/// Return codes of host functions. Non-negative values are successes (often a length).
pub mod code {
    /// Success.
    pub const OK: i32 = 0;
    /// The key does not exist.
    pub const NOT_FOUND: i32 = -1;
    /// `unlock` of a lock not held.
    pub const NOT_HELD: i32 = -2;
    /// The lock was not granted in time.
    pub const LOCK_TIMEOUT: i32 = -3;
    /// The lock is already held by this invocation.
    pub const ALREADY_HELD: i32 = -4;
    /// The write was fenced (its lock lease had moved on).
    pub const FENCED: i32 = -5;
    /// The state backend is unavailable.
    pub const UNAVAILABLE: i32 = -6;
    /// A bounded resource of the state backend is exhausted.
    pub const STATE_LIMIT: i32 = -7;
    /// `take` was called with nothing pending.
    pub const NOTHING_PENDING: i32 = -8;
}

/// The import module name.
pub const MODULE: &str = "psl";

/// Names of every function in the `psl` import module (what a guest may import).
pub const FUNCTIONS: &[&str] = &[
    "input_len",
    "input_read",
    "output_write",
    "kv_get",
    "kv_take",
    "kv_put",
    "kv_delete",
    "kv_scan",
    "lock",
    "unlock",
    "flush",
    "log",
    "fail",
];

fn state_code(error: &StateError) -> i32 {
    match error {
        StateError::NotHeld(_) => code::NOT_HELD,
        StateError::LockTimeout(_) => code::LOCK_TIMEOUT,
        StateError::AlreadyHeld(_) => code::ALREADY_HELD,
        StateError::Fenced => code::FENCED,
        StateError::Unavailable(_) => code::UNAVAILABLE,
        StateError::Limit(_) => code::STATE_LIMIT,
    }
}

/// Checks that `ptr..ptr+len` lies inside a memory of `memory_len` bytes.
/// This is the only function that turns guest-supplied numbers into memory ranges.
pub fn guest_range(
    memory_len: usize,
    call: &'static str,
    ptr: i32,
    len: i32,
) -> Result<Range<usize>, InvokeError> {
    // WebAssembly passes u32 values in i32 slots: reinterpret, never sign-extend.
    let (ptr, len) = (u64::from(ptr as u32), u64::from(len as u32));
    let bad = || InvokeError::BadPointer { call, ptr, len };
    let end = ptr.checked_add(len).ok_or_else(bad)?;
    if end > memory_len as u64 {
        return Err(bad());
    }
    // Both fit in usize because they are <= memory_len.
    Ok(ptr as usize..end as usize)
}

type HostResult<T> = Result<T, InvokeError>;

/// Runs one host call: counts it, gives the body the guest memory and the host state, and
/// maps errors to codes or to a trap.
fn call<R: From<i32>>(
    caller: &mut Caller<'_, StoreData>,
    name: &'static str,
    body: impl FnOnce(&mut [u8], &mut HostCtx) -> HostResult<R>,
) -> wasmtime::Result<R> {
    let Some(memory) = caller.data().memory else {
        return trap(
            caller,
            InvokeError::BadArgument {
                call: name,
                why: "module exports no memory",
            },
        );
    };
    let (mem, data) = memory.data_and_store_mut(&mut *caller);
    let host = &mut data.host;
    let result = host.enter().and_then(|()| body(mem, host));
    match result {
        Ok(value) => Ok(value),
        Err(InvokeError::State(error)) => Ok(R::from(state_code(&error))),
        Err(error) => trap(caller, error),
    }
}

fn trap<R>(caller: &mut Caller<'_, StoreData>, error: InvokeError) -> wasmtime::Result<R> {
    let message = error.to_string();
    caller.data_mut().host.fault = Some(error);
    Err(wasmtime::Error::msg(message))
}

fn lock_mode(mode: i32) -> HostResult<LockMode> {
    match mode {
        0 => Ok(LockMode::Read),
        1 => Ok(LockMode::Write),
        _ => Err(InvokeError::BadArgument {
            call: "lock",
            why: "lock mode must be 0 (read) or 1 (write)",
        }),
    }
}

/// Copies `value` into the guest buffer if it fits, else keeps it pending for `kv_take`.
/// Returns the full length either way.
fn deliver(
    mem: &mut [u8],
    host: &mut HostCtx,
    name: &'static str,
    out: (i32, i32),
    value: Vec<u8>,
) -> HostResult<i64> {
    let range = guest_range(mem.len(), name, out.0, out.1)?;
    let len = value.len() as i64;
    match mem.get_mut(range.start..range.start.saturating_add(value.len())) {
        Some(dst) if value.len() <= range.len() => {
            dst.copy_from_slice(&value);
            host.pending = None;
        }
        _ => host.pending = Some(value),
    }
    Ok(len)
}

fn slice<'m>(mem: &'m [u8], name: &'static str, ptr: i32, len: i32) -> HostResult<&'m [u8]> {
    let range = guest_range(mem.len(), name, ptr, len)?;
    mem.get(range).ok_or(InvokeError::BadPointer {
        call: name,
        ptr: u64::from(ptr as u32),
        len: u64::from(len as u32),
    })
}

/// Encodes scan results as `u32 count, then (u32 klen, key, u32 vlen, value)*`, little-endian.
fn encode_entries(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let size: usize = entries.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (key, value) in entries {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// Adds the `psl` import module to a linker.
pub(crate) fn add_to_linker(linker: &mut Linker<StoreData>) -> wasmtime::Result<()> {
    linker.func_wrap(
        MODULE,
        "input_len",
        |mut c: Caller<'_, StoreData>| -> wasmtime::Result<i32> {
            call(&mut c, "input_len", |_, host| Ok(host.input().len() as i32))
        },
    )?;
    linker.func_wrap(
        MODULE,
        "input_read",
        |mut c: Caller<'_, StoreData>, ptr: i32, len: i32| {
            call(&mut c, "input_read", |mem, host| {
                let range = guest_range(mem.len(), "input_read", ptr, len)?;
                let n = range.len().min(host.input().len());
                let (dst, src) = (
                    mem.get_mut(range.start..range.start + n),
                    host.input().get(..n),
                );
                if let (Some(dst), Some(src)) = (dst, src) {
                    dst.copy_from_slice(src);
                }
                Ok(n as i32)
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "output_write",
        |mut c: Caller<'_, StoreData>, ptr: i32, len: i32| {
            call(&mut c, "output_write", |mem, host| {
                host.output(slice(mem, "output_write", ptr, len)?)?;
                Ok(code::OK)
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "kv_get",
        |mut c: Caller<'_, StoreData>,
         kp: i32,
         kl: i32,
         vp: i32,
         vc: i32|
         -> wasmtime::Result<i64> {
            call(&mut c, "kv_get", |mem, host| {
                // Check the output buffer even when the key turns out to be missing.
                guest_range(mem.len(), "kv_get", vp, vc)?;
                let value = host.get(slice(mem, "kv_get", kp, kl)?)?;
                match value {
                    None => Ok(i64::from(code::NOT_FOUND)),
                    Some(value) => deliver(mem, host, "kv_get", (vp, vc), value),
                }
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "kv_take",
        |mut c: Caller<'_, StoreData>, ptr: i32, cap: i32| {
            call(&mut c, "kv_take", |mem, host| -> HostResult<i64> {
                let Some(value) = host.pending.take() else {
                    return Ok(i64::from(code::NOTHING_PENDING));
                };
                deliver(mem, host, "kv_take", (ptr, cap), value)
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "kv_put",
        |mut c: Caller<'_, StoreData>, kp: i32, kl: i32, vp: i32, vl: i32| {
            call(&mut c, "kv_put", |mem, host| {
                host.put(slice(mem, "kv_put", kp, kl)?, slice(mem, "kv_put", vp, vl)?)?;
                Ok(code::OK)
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "kv_delete",
        |mut c: Caller<'_, StoreData>, kp: i32, kl: i32| {
            call(&mut c, "kv_delete", |mem, host| {
                let existed = host.delete(slice(mem, "kv_delete", kp, kl)?)?;
                Ok(if existed { 1 } else { 0 })
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "kv_scan",
        |mut c: Caller<'_, StoreData>, pp: i32, pl: i32, limit: i32, op: i32, oc: i32| {
            call(&mut c, "kv_scan", |mem, host| -> HostResult<i64> {
                guest_range(mem.len(), "kv_scan", op, oc)?;
                let limit = usize::try_from(limit).map_err(|_| InvokeError::BadArgument {
                    call: "kv_scan",
                    why: "negative limit",
                })?;
                let entries = host.scan(slice(mem, "kv_scan", pp, pl)?, limit)?;
                deliver(mem, host, "kv_scan", (op, oc), encode_entries(&entries))
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "lock",
        |mut c: Caller<'_, StoreData>, np: i32, nl: i32, mode: i32| {
            call(&mut c, "lock", |mem, host| {
                let mode = lock_mode(mode)?;
                host.lock(slice(mem, "lock", np, nl)?, mode)?;
                Ok(code::OK)
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "unlock",
        |mut c: Caller<'_, StoreData>, np: i32, nl: i32| {
            call(&mut c, "unlock", |mem, host| {
                host.unlock(slice(mem, "unlock", np, nl)?)?;
                Ok(code::OK)
            })
        },
    )?;
    linker.func_wrap(MODULE, "flush", |mut c: Caller<'_, StoreData>| {
        call(&mut c, "flush", |_, host| {
            host.flush()?;
            Ok(code::OK)
        })
    })?;
    linker.func_wrap(
        MODULE,
        "log",
        |mut c: Caller<'_, StoreData>, level: i32, p: i32, l: i32| {
            call(&mut c, "log", |mem, host| {
                host.log(LogLevel::from_code(level), slice(mem, "log", p, l)?)?;
                Ok(code::OK)
            })
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fail",
        |mut c: Caller<'_, StoreData>, p: i32, l: i32| {
            call(&mut c, "fail", |mem, host| {
                let message = slice(mem, "fail", p, l)?;
                let cut = &message[..message.len().min(4096)];
                host.guest_error = Some(String::from_utf8_lossy(cut).into_owned());
                Ok(code::OK)
            })
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_range_rejects_everything_outside_memory() {
        assert_eq!(guest_range(100, "t", 0, 100).ok(), Some(0..100));
        assert_eq!(guest_range(100, "t", 100, 0).ok(), Some(100..100));
        assert!(guest_range(100, "t", 100, 1).is_err());
        assert!(guest_range(100, "t", 1, 100).is_err());
        assert!(guest_range(100, "t", -1, 1).is_err());
        assert!(guest_range(100, "t", 0, -1).is_err());
        assert!(guest_range(usize::MAX, "t", -1, -1).is_ok());
        assert!(guest_range(0, "t", 0, 0).is_ok());
    }

    #[test]
    fn scan_encoding_is_length_prefixed() {
        let bytes = encode_entries(&[(b"a".to_vec(), b"xy".to_vec())]);
        assert_eq!(
            bytes,
            [1, 0, 0, 0, 1, 0, 0, 0, b'a', 2, 0, 0, 0, b'x', b'y']
        );
    }
}

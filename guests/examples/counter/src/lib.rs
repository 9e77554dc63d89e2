//! `counter`: increments a shared counter under a write lock and returns the new value.
//!
//! Input: optional counter name (default `counter`). Because the increment happens inside the
//! lock, every increment is counted exactly once, whichever worker runs it.

psl_guest::entry!(increment);

fn increment(input: &[u8]) -> psl_guest::Result<Vec<u8>> {
    let name = std::str::from_utf8(input)
        .map_err(psl_guest::Error::msg)?
        .trim();
    let key = if name.is_empty() { "counter" } else { name };
    let guard = psl_guest::lock(key, psl_guest::LockMode::Write)?;
    let next = psl_guest::get_u64(key)?.unwrap_or(0) + 1;
    psl_guest::put(key, next.to_string())?;
    guard.unlock()?;
    Ok(next.to_string().into_bytes())
}

//! `counter`: increments a shared counter under a write lock and returns the new value.
//!
//! Input: optional counter name (default `counter`), optionally followed by `slow N`: the
//! function then reads the counter N more times while it holds the lock (a slow critical
//! section, for fault tests: a holder stopped in it loses its lease). Because the increment
//! happens inside the lock, every increment is counted exactly once, whichever worker runs it.

psl_guest::entry!(increment);

fn increment(input: &[u8]) -> psl_guest::Result<Vec<u8>> {
    let text = std::str::from_utf8(input).map_err(psl_guest::Error::msg)?;
    let mut words = text.split_whitespace();
    let key = words.next().unwrap_or("counter");
    let extra_reads: u64 = match (words.next(), words.next()) {
        (Some("slow"), Some(n)) => n.parse().map_err(psl_guest::Error::msg)?,
        _ => 0,
    };
    let guard = psl_guest::lock(key, psl_guest::LockMode::Write)?;
    let next = psl_guest::get_u64(key)?.unwrap_or(0) + 1;
    for _ in 0..extra_reads {
        psl_guest::get_u64(key)?;
    }
    psl_guest::put(key, next.to_string())?;
    guard.unlock()?;
    Ok(next.to_string().into_bytes())
}

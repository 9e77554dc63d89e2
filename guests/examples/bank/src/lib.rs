//! `bank`: accounts with balances, moved between under locks so the total never changes.
//!
//! Commands (the input, as text):
//! * `open <accounts> <balance>`: creates accounts `0..accounts` with `balance` each
//!   (idempotent: existing accounts are left alone);
//! * `transfer <seed> <count>`: makes `count` random transfers between random accounts; each
//!   locks both accounts in a fixed (sorted) order, so concurrent transfers cannot deadlock;
//! * `total`: the sum of all balances, read under the `bank` write lock; transfers hold the
//!   `bank` lock for reading, so the total sees no transfer half done;
//! * `balances`: every account and balance, one per line.

use psl_guest::{Error, LockMode, Result};

psl_guest::entry!(bank);

const META: &str = "bank/accounts";

fn account_key(i: u64) -> String {
    format!("bank/acct/{i:06}")
}

fn parse(word: Option<&str>, what: &str) -> Result<u64> {
    word.and_then(|w| w.parse().ok())
        .ok_or_else(|| Error::msg(format!("expected {what}")))
}

fn accounts() -> Result<u64> {
    psl_guest::get_u64(META)?.ok_or_else(|| Error::msg("no accounts: run `open` first"))
}

fn bank(input: &[u8]) -> Result<Vec<u8>> {
    let text = std::str::from_utf8(input).map_err(Error::msg)?;
    let mut words = text.split_whitespace();
    match words.next() {
        Some("open") => open(
            parse(words.next(), "account count")?,
            parse(words.next(), "balance")?,
        ),
        Some("transfer") => transfer(parse(words.next(), "seed")?, parse(words.next(), "count")?),
        Some("total") => total().map(|t| t.to_string().into_bytes()),
        Some("balances") => balances(),
        _ => Err(Error::msg(
            "usage: open <n> <balance> | transfer <seed> <count> | total | balances",
        )),
    }
}

fn open(n: u64, balance: u64) -> Result<Vec<u8>> {
    let guard = psl_guest::lock("bank", LockMode::Write)?;
    if psl_guest::get_u64(META)?.is_none() {
        for i in 0..n {
            psl_guest::put(account_key(i), balance.to_string())?;
        }
        psl_guest::put(META, n.to_string())?;
    }
    guard.unlock()?;
    Ok(format!("{} accounts", accounts()?).into_bytes())
}

/// A small deterministic generator (xorshift64*), so a seed replays the same transfers.
struct Rng(u64);

impl Rng {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound.max(1)
    }
}

fn transfer(seed: u64, count: u64) -> Result<Vec<u8>> {
    let mut rng = Rng(seed | 1);
    let mut moved = 0u64;
    for _ in 0..count {
        // Read the account count under the `bank` lock: on another worker, `open` is only
        // guaranteed visible after acquiring a lock it was released under (release
        // consistency); outside locks, state is only eventually consistent.
        let bank = psl_guest::lock("bank", LockMode::Read)?;
        let n = accounts()?;
        if n < 2 {
            return Err(Error::msg("need at least two accounts"));
        }
        let from = rng.next(n);
        let to = (from + 1 + rng.next(n - 1)) % n;
        let (first, second) = (from.min(to), from.max(to));
        let a = psl_guest::lock(account_key(first), LockMode::Write)?;
        let b = psl_guest::lock(account_key(second), LockMode::Write)?;
        let have = psl_guest::get_u64(account_key(from))?.unwrap_or(0);
        let amount = rng.next(have.min(100) + 1);
        let dest = psl_guest::get_u64(account_key(to))?.unwrap_or(0);
        psl_guest::put(account_key(from), (have - amount).to_string())?;
        psl_guest::put(account_key(to), (dest + amount).to_string())?;
        moved += amount;
        b.unlock()?;
        a.unlock()?;
        bank.unlock()?;
    }
    Ok(format!("moved {moved} in {count} transfers").into_bytes())
}

fn total() -> Result<u64> {
    let guard = psl_guest::lock("bank", LockMode::Write)?;
    let n = accounts()?;
    let mut sum = 0u64;
    for i in 0..n {
        sum += psl_guest::get_u64(account_key(i))?.unwrap_or(0);
    }
    guard.unlock()?;
    Ok(sum)
}

fn balances() -> Result<Vec<u8>> {
    let mut out = String::new();
    for (key, value) in psl_guest::scan("bank/acct/", 10_000)? {
        out.push_str(&format!(
            "{} {}\n",
            String::from_utf8_lossy(&key),
            String::from_utf8_lossy(&value)
        ));
    }
    Ok(out.into_bytes())
}

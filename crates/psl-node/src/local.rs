//! The single-node, in-process state backend: a sorted map plus a FIFO lock table.
//!
//! It implements the runtime's [`State`]/[`Session`] traits exactly as the Secure Concurrency
//! Layer will, so swapping it out does not touch the runtime. It is memory-only: `flush` has
//! nothing to make durable, and the state is gone when the process exits (the SCL and its
//! DataCapsule provide durability). Locks need no lease here: a session's locks are released
//! when its invocation ends, and invocations are bounded by their deadline.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use psl_runtime::{LockMode, Session, State, StateError};

/// Limits of the local store.
#[derive(Clone, Debug)]
pub struct LocalLimits {
    /// Locks one session may hold at once.
    pub locks_held_max: usize,
    /// Sessions that may wait for one lock at once.
    pub lock_waiters_max: usize,
    /// Keys the store may hold.
    pub keys_max: usize,
}

impl Default for LocalLimits {
    fn default() -> Self {
        Self {
            locks_held_max: 1024,
            lock_waiters_max: 4096,
            keys_max: 10_000_000,
        }
    }
}

#[derive(Default)]
struct LockState {
    holders: Vec<(u64, LockMode)>,
    /// FIFO queue of (ticket, session, mode).
    waiters: VecDeque<(u64, u64, LockMode)>,
}

impl LockState {
    fn grantable(&self, ticket: u64, mode: LockMode) -> bool {
        let compatible = match mode {
            LockMode::Write => self.holders.is_empty(),
            LockMode::Read => self.holders.iter().all(|(_, m)| *m == LockMode::Read),
        };
        if !compatible {
            return false;
        }
        // FIFO: only the head may go, except that readers queued behind reading heads join them.
        for (t, _, m) in &self.waiters {
            if *t == ticket {
                return true;
            }
            if mode == LockMode::Write || *m == LockMode::Write {
                return false;
            }
        }
        false
    }
}

#[derive(Default)]
struct LockTable {
    locks: HashMap<Vec<u8>, LockState>,
    next_ticket: u64,
}

struct Inner {
    data: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
    locks: Mutex<LockTable>,
    changed: Condvar,
    next_session: AtomicU64,
    limits: LocalLimits,
}

/// The in-process state of one node.
#[derive(Clone)]
pub struct LocalState(Arc<Inner>);

impl LocalState {
    /// Creates an empty store.
    pub fn new(limits: LocalLimits) -> Self {
        Self(Arc::new(Inner {
            data: RwLock::new(BTreeMap::new()),
            locks: Mutex::new(LockTable::default()),
            changed: Condvar::new(),
            next_session: AtomicU64::new(1),
            limits,
        }))
    }

    /// A copy of every entry (for inspection and tests).
    pub fn snapshot(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.0.data.read().clone()
    }

    /// Number of locks currently held or waited for.
    pub fn active_locks(&self) -> usize {
        self.0.locks.lock().locks.len()
    }
}

impl Default for LocalState {
    fn default() -> Self {
        Self::new(LocalLimits::default())
    }
}

impl State for LocalState {
    fn session(&self) -> Box<dyn Session> {
        let id = self.0.next_session.fetch_add(1, Ordering::Relaxed);
        Box::new(LocalSession {
            state: Arc::clone(&self.0),
            id,
            held: Vec::new(),
        })
    }
}

struct LocalSession {
    state: Arc<Inner>,
    id: u64,
    held: Vec<Vec<u8>>,
}

fn lock_name(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

impl LocalSession {
    fn release(&mut self, name: &[u8]) -> Result<(), StateError> {
        let position = self
            .held
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| StateError::NotHeld(lock_name(name)))?;
        self.held.swap_remove(position);
        let mut table = self.state.locks.lock();
        if let Some(lock) = table.locks.get_mut(name) {
            lock.holders.retain(|(session, _)| *session != self.id);
            if lock.holders.is_empty() && lock.waiters.is_empty() {
                table.locks.remove(name);
            }
        }
        drop(table);
        self.state.changed.notify_all();
        Ok(())
    }
}

impl Session for LocalSession {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.state.data.read().get(key).cloned())
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        let mut data = self.state.data.write();
        if data.len() >= self.state.limits.keys_max && !data.contains_key(key) {
            return Err(StateError::Limit(format!(
                "store holds {} keys",
                data.len()
            )));
        }
        data.insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<bool, StateError> {
        Ok(self.state.data.write().remove(key).is_some())
    }

    fn scan_prefix(
        &mut self,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StateError> {
        let data = self.state.data.read();
        Ok(data
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn lock(&mut self, name: &[u8], mode: LockMode, wait: Duration) -> Result<(), StateError> {
        if self.held.iter().any(|n| n == name) {
            return Err(StateError::AlreadyHeld(lock_name(name)));
        }
        if self.held.len() >= self.state.limits.locks_held_max {
            return Err(StateError::Limit(format!("{} locks held", self.held.len())));
        }
        let deadline = Instant::now() + wait;
        let mut table = self.state.locks.lock();
        let ticket = table.next_ticket;
        table.next_ticket += 1;
        let lock = table.locks.entry(name.to_vec()).or_default();
        if lock.waiters.len() >= self.state.limits.lock_waiters_max {
            return Err(StateError::Limit(format!(
                "{} waiters on lock",
                lock.waiters.len()
            )));
        }
        lock.waiters.push_back((ticket, self.id, mode));
        loop {
            let lock = table.locks.entry(name.to_vec()).or_default();
            if lock.grantable(ticket, mode) {
                lock.waiters.retain(|(t, _, _)| *t != ticket);
                lock.holders.push((self.id, mode));
                drop(table);
                // A granted reader may let the readers queued behind it go too.
                self.state.changed.notify_all();
                self.held.push(name.to_vec());
                return Ok(());
            }
            if self
                .state
                .changed
                .wait_until(&mut table, deadline)
                .timed_out()
            {
                let lock = table.locks.entry(name.to_vec()).or_default();
                if lock.grantable(ticket, mode) {
                    continue;
                }
                lock.waiters.retain(|(t, _, _)| *t != ticket);
                if lock.holders.is_empty() && lock.waiters.is_empty() {
                    table.locks.remove(name);
                }
                drop(table);
                self.state.changed.notify_all();
                return Err(StateError::LockTimeout(lock_name(name)));
            }
        }
    }

    fn unlock(&mut self, name: &[u8]) -> Result<(), StateError> {
        self.flush()?;
        self.release(name)
    }

    fn flush(&mut self) -> Result<(), StateError> {
        // Memory-only store: every write is already as durable as this store gets.
        Ok(())
    }

    fn finish(&mut self) -> Result<(), StateError> {
        self.flush()?;
        while let Some(name) = self.held.last().cloned() {
            self.release(&name)?;
        }
        Ok(())
    }
}

impl Drop for LocalSession {
    fn drop(&mut self) {
        // A session dropped without `finish` (a bug elsewhere) must not leak its locks.
        let _ = self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_lock_excludes_and_times_out() {
        let state = LocalState::default();
        let mut a = state.session();
        let mut b = state.session();
        a.lock(b"l", LockMode::Write, Duration::from_secs(1))
            .unwrap();
        assert_eq!(
            b.lock(b"l", LockMode::Read, Duration::from_millis(20)),
            Err(StateError::LockTimeout("l".into()))
        );
        a.unlock(b"l").unwrap();
        b.lock(b"l", LockMode::Read, Duration::from_millis(20))
            .unwrap();
        assert_eq!(a.unlock(b"l"), Err(StateError::NotHeld("l".into())));
        assert_eq!(
            b.lock(b"l", LockMode::Read, Duration::ZERO),
            Err(StateError::AlreadyHeld("l".into()))
        );
        b.finish().unwrap();
        assert_eq!(state.active_locks(), 0);
    }

    #[test]
    fn readers_share() {
        let state = LocalState::default();
        let mut a = state.session();
        let mut b = state.session();
        a.lock(b"l", LockMode::Read, Duration::from_secs(1))
            .unwrap();
        b.lock(b"l", LockMode::Read, Duration::from_millis(50))
            .unwrap();
    }

    #[test]
    fn concurrent_increments_under_lock_are_exact() {
        let state = LocalState::default();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let state = state.clone();
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        let mut s = state.session();
                        s.lock(b"c", LockMode::Write, Duration::from_secs(10))
                            .unwrap();
                        let n: u64 = s
                            .get(b"c")
                            .unwrap()
                            .map_or(0, |v| String::from_utf8(v).unwrap().parse().unwrap());
                        s.put(b"c", (n + 1).to_string().as_bytes()).unwrap();
                        s.finish().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            state.snapshot().get(b"c".as_slice()).map(|v| v.as_slice()),
            Some(b"2000".as_slice())
        );
        assert_eq!(state.active_locks(), 0);
    }

    #[test]
    fn scan_returns_prefix_in_order_up_to_limit() {
        let state = LocalState::default();
        let mut s = state.session();
        for k in ["a/2", "a/1", "b/1", "a/3"] {
            s.put(k.as_bytes(), b"v").unwrap();
        }
        let keys: Vec<_> = s
            .scan_prefix(b"a/", 2)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![b"a/1".to_vec(), b"a/2".to_vec()]);
    }
}

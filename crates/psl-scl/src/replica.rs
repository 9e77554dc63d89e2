//! A worker's replica of the shared key-value state: the versioned memtable, the Lamport
//! clock, the per-writer applied sequence numbers, and the merge rule.
//!
//! The merge rule: every update carries a version `(lamport, writer)`, ordered by Lamport time
//! and then by writer id bytes; each key keeps the update with the highest version, deletes
//! included (as tombstones). The rule is a join, so any set of updates applied in any order
//! gives the same memtable (convergence), decided without wall-clock time.
//!
//! Records reach [`Replica::apply_remote`] already verified (signature, chain) and decrypted,
//! one writer's records in sequence order; the replica refuses duplicates and reports gaps so
//! the shell can fetch the missing range. Must never: do IO, read a clock, or panic on a batch.

use std::collections::BTreeMap;

use psl_capsule::WriterId;

use crate::body::{Batch, Op, StampedUpdate};

/// The version of an update: Lamport time first, writer id as the tie-break.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Lamport time.
    pub lamport: u64,
    /// The writer incarnation that made the update.
    pub writer: WriterId,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    version: Version,
    /// `None` is a tombstone.
    value: Option<Vec<u8>>,
}

/// Limits of a replica.
#[derive(Clone, Debug)]
pub struct ReplicaLimits {
    /// Keys (tombstones included) the memtable may hold before local writes are refused.
    pub keys_max: usize,
    /// Updates written locally and not yet taken for sealing.
    pub pending_max: usize,
}

impl Default for ReplicaLimits {
    fn default() -> Self {
        Self {
            keys_max: 10_000_000,
            pending_max: 1 << 20,
        }
    }
}

/// Why a local write was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplicaError {
    /// The memtable is full (eviction to the cold tier comes with CapsuleDB).
    #[error("replica holds {0} keys, its limit")]
    Full(usize),
    /// Too many local updates wait for sealing; flush first.
    #[error("{0} local updates wait for sealing, the limit")]
    PendingFull(usize),
}

/// What the memtable says about a key.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The key's live value.
    Hit(&'a [u8]),
    /// The key was deleted (a tombstone is newer than anything colder storage holds).
    Deleted,
    /// The memtable has no entry: ask the cold tier ([`ColdStore`]).
    Miss,
}

/// A committed entry held outside the memtable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColdEntry {
    /// Its version.
    pub version: Version,
    /// Its value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
}

/// Why the cold tier could not answer.
#[derive(Debug, thiserror::Error)]
#[error("cold read: {0}")]
pub struct ColdError(pub String);

/// Where memtable misses go: the keys the memtable does not hold. CapsuleDB (the LSM of cold
/// keys stored in the capsule) will implement it; until then every miss is an absent key
/// ([`NoColdStore`]) and the memtable never evicts, so the two agree.
pub trait ColdStore: Send + Sync {
    /// The committed entry of `key`, if the cold tier holds one.
    fn get(&self, key: &[u8]) -> Result<Option<ColdEntry>, ColdError>;
}

/// The cold tier of a replica that never evicts: every miss is an absent key.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoColdStore;

impl ColdStore for NoColdStore {
    fn get(&self, _key: &[u8]) -> Result<Option<ColdEntry>, ColdError> {
        Ok(None)
    }
}

/// What happened to a remote batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Applied; `changed` keys took the new value (others already had newer versions).
    Applied {
        /// Keys whose value changed.
        changed: usize,
    },
    /// Already applied (a duplicate or a replay): nothing changed.
    Duplicate,
    /// Records are missing before this one: fetch `expected..seq` first.
    Gap {
        /// The next sequence number this replica can apply from that writer.
        expected: u64,
    },
}

/// One worker's replica.
pub struct Replica {
    me: WriterId,
    clock: u64,
    memtable: BTreeMap<Vec<u8>, Entry>,
    /// Highest sequence number applied, contiguously, per writer (0 = only the genesis).
    applied: BTreeMap<WriterId, u64>,
    /// Local updates waiting to be sealed, per writer tag (a session): a record never mixes
    /// two tags, so each session's writes are sealed under its own lock fences only.
    pending: BTreeMap<u64, Vec<StampedUpdate>>,
    pending_len: usize,
    limits: ReplicaLimits,
}

impl Replica {
    /// An empty replica for the writer incarnation `me`.
    pub fn new(me: WriterId, limits: ReplicaLimits) -> Self {
        Self {
            me,
            clock: 0,
            memtable: BTreeMap::new(),
            applied: BTreeMap::new(),
            pending: BTreeMap::new(),
            pending_len: 0,
            limits,
        }
    }

    /// This replica's writer id.
    pub fn writer(&self) -> WriterId {
        self.me
    }

    /// The Lamport clock.
    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// Moves the clock forward to at least `lamport` (Lamport's receive rule).
    pub fn observe_clock(&mut self, lamport: u64) {
        self.clock = self.clock.max(lamport);
    }

    fn local(
        &mut self,
        tag: u64,
        key: &[u8],
        value: Option<Vec<u8>>,
    ) -> Result<Version, ReplicaError> {
        if self.pending_len >= self.limits.pending_max {
            return Err(ReplicaError::PendingFull(self.pending_len));
        }
        if self.memtable.len() >= self.limits.keys_max && !self.memtable.contains_key(key) {
            return Err(ReplicaError::Full(self.memtable.len()));
        }
        self.clock = self.clock.saturating_add(1);
        let version = Version {
            lamport: self.clock,
            writer: self.me,
        };
        let op = match &value {
            Some(v) => Op::Put(v.clone()),
            None => Op::Delete,
        };
        self.merge(key, version, value);
        self.pending.entry(tag).or_default().push(StampedUpdate {
            lamport: version.lamport,
            key: key.to_vec(),
            op,
        });
        self.pending_len += 1;
        Ok(version)
    }

    /// Writes a key locally (read-your-writes at once); the update waits for sealing.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<Version, ReplicaError> {
        self.put_as(0, key, value)
    }

    /// Deletes a key locally; returns whether it had a value.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool, ReplicaError> {
        self.delete_as(0, key)
    }

    /// [`Self::put`] on behalf of the writer `tag` (a session): sealed with that tag's updates.
    pub fn put_as(&mut self, tag: u64, key: &[u8], value: &[u8]) -> Result<Version, ReplicaError> {
        self.local(tag, key, Some(value.to_vec()))
    }

    /// [`Self::delete`] on behalf of the writer `tag`.
    pub fn delete_as(&mut self, tag: u64, key: &[u8]) -> Result<bool, ReplicaError> {
        let existed = self.get(key).is_some();
        self.local(tag, key, None)?;
        Ok(existed)
    }

    /// Looks a key up in the memtable, telling a miss (ask [`ColdStore`]) from a tombstone.
    pub fn lookup(&self, key: &[u8]) -> Lookup<'_> {
        match self.memtable.get(key) {
            Some(Entry { value: Some(v), .. }) => Lookup::Hit(v),
            Some(Entry { value: None, .. }) => Lookup::Deleted,
            None => Lookup::Miss,
        }
    }

    /// Reads a key, with a miss going to `cold`; a cold entry is merged into the memtable by
    /// the same join as any update (so a newer update that arrives later still wins).
    pub fn get_through(
        &mut self,
        key: &[u8],
        cold: &dyn ColdStore,
    ) -> Result<Option<Vec<u8>>, ColdError> {
        match self.lookup(key) {
            Lookup::Hit(v) => return Ok(Some(v.to_vec())),
            Lookup::Deleted => return Ok(None),
            Lookup::Miss => {}
        }
        let Some(entry) = cold.get(key)? else {
            return Ok(None);
        };
        let value = entry.value.clone();
        // Lamport's receive rule: a local write after this read must be newer than it.
        self.observe_clock(entry.version.lamport);
        self.merge(key, entry.version, entry.value);
        Ok(value)
    }

    /// Reads a key (memtable only; see [`Self::get_through`]).
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.memtable.get(key).and_then(|e| e.value.as_deref())
    }

    /// The version a key holds, tombstones included.
    pub fn version(&self, key: &[u8]) -> Option<Version> {
        self.memtable.get(key).map(|e| e.version)
    }

    /// Up to `limit` live entries under `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8], limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.memtable
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(k, e)| e.value.as_ref().map(|v| (k.clone(), v.clone())))
            .take(limit)
            .collect()
    }

    /// Whether local updates wait for sealing.
    pub fn has_pending(&self) -> bool {
        self.pending_len > 0
    }

    /// Whether local updates of `tag` wait for sealing.
    pub fn has_pending_of(&self, tag: u64) -> bool {
        self.pending.get(&tag).is_some_and(|p| !p.is_empty())
    }

    /// Takes local updates of one tag (the lowest with any), oldest first, to seal into the
    /// next record: at most `max` of them and, beyond the first, at most `bytes_max` bytes of
    /// keys and values.
    pub fn take_pending(&mut self, max: usize, bytes_max: usize) -> Vec<StampedUpdate> {
        match self.pending.keys().next().copied() {
            Some(tag) => self.take_pending_of(tag, max, bytes_max),
            None => Vec::new(),
        }
    }

    /// [`Self::take_pending`] for the updates of `tag` only.
    pub fn take_pending_of(
        &mut self,
        tag: u64,
        max: usize,
        bytes_max: usize,
    ) -> Vec<StampedUpdate> {
        let Some(pending) = self.pending.get_mut(&tag) else {
            return Vec::new();
        };
        let mut bytes = 0usize;
        let mut n = 0;
        for update in pending.iter().take(max) {
            let size = update.key.len()
                + if let Op::Put(v) = &update.op {
                    v.len()
                } else {
                    0
                }
                + 16;
            if n > 0 && bytes + size > bytes_max {
                break;
            }
            bytes += size;
            n += 1;
        }
        let taken: Vec<StampedUpdate> = pending.drain(..n).collect();
        if pending.is_empty() {
            self.pending.remove(&tag);
        }
        self.pending_len -= taken.len();
        taken
    }

    /// Records that this replica's own record `seq` was sealed (its updates are already here).
    pub fn sealed_own(&mut self, seq: u64) {
        let applied = self.applied.entry(self.me).or_insert(0);
        *applied = (*applied).max(seq);
    }

    /// Moves past record `seq` of `writer` that carries no updates (a heartbeat, a lock
    /// release, ...), if it is the next one; the verifier has checked the chain.
    pub fn note_applied(&mut self, writer: WriterId, seq: u64) {
        let done = self.applied(&writer);
        if seq == done.saturating_add(1) {
            self.applied.insert(writer, seq);
        }
    }

    /// The highest sequence number applied from `writer` without a gap.
    pub fn applied(&self, writer: &WriterId) -> u64 {
        self.applied.get(writer).copied().unwrap_or(0)
    }

    /// Whether everything up to `watermark` (per-writer sequence numbers) is applied here.
    pub fn caught_up<'a>(
        &self,
        watermark: impl IntoIterator<Item = (&'a WriterId, &'a u64)>,
    ) -> bool {
        watermark
            .into_iter()
            .all(|(writer, seq)| self.applied(writer) >= *seq)
    }

    /// Applies record `seq` of `writer`, which must be the next one from that writer.
    pub fn apply_remote(&mut self, writer: WriterId, seq: u64, batch: &Batch) -> Applied {
        let done = self.applied(&writer);
        if seq <= done {
            return Applied::Duplicate;
        }
        let expected = done.saturating_add(1);
        if seq != expected {
            return Applied::Gap { expected };
        }
        let mut changed = 0;
        for update in &batch.updates {
            let version = Version {
                lamport: update.lamport,
                writer,
            };
            let value = match &update.op {
                Op::Put(v) => Some(v.clone()),
                Op::Delete => None,
            };
            if self.merge(&update.key, version, value) {
                changed += 1;
            }
        }
        self.clock = self.clock.max(batch.max_lamport());
        self.applied.insert(writer, seq);
        Applied::Applied { changed }
    }

    /// The join: keeps the higher version. Returns whether the entry changed.
    fn merge(&mut self, key: &[u8], version: Version, value: Option<Vec<u8>>) -> bool {
        match self.memtable.get_mut(key) {
            Some(entry) if entry.version >= version => false,
            Some(entry) => {
                *entry = Entry { version, value };
                true
            }
            None => {
                self.memtable.insert(key.to_vec(), Entry { version, value });
                true
            }
        }
    }

    /// A digest of the memtable (keys, versions, values, tombstones): equal digests mean equal
    /// states. Used to check convergence.
    pub fn digest(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"psl-scl-memtable-v1");
        for (key, entry) in &self.memtable {
            hasher.update(&(key.len() as u64).to_le_bytes());
            hasher.update(key);
            hasher.update(&entry.version.lamport.to_le_bytes());
            hasher.update(&entry.version.writer.0);
            match &entry.value {
                Some(value) => {
                    hasher.update(&[1]);
                    hasher.update(&(value.len() as u64).to_le_bytes());
                    hasher.update(value);
                }
                None => {
                    hasher.update(&[0]);
                }
            }
        }
        *hasher.finalize().as_bytes()
    }

    /// Keys held (tombstones included).
    pub fn len(&self) -> usize {
        self.memtable.len()
    }

    /// Whether the memtable is empty.
    pub fn is_empty(&self) -> bool {
        self.memtable.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct OneCold(Vec<u8>, ColdEntry);

    impl ColdStore for OneCold {
        fn get(&self, key: &[u8]) -> Result<Option<ColdEntry>, ColdError> {
            Ok((key == self.0.as_slice()).then(|| self.1.clone()))
        }
    }

    #[test]
    fn misses_go_to_the_cold_tier_and_the_join_still_decides() {
        let writer = WriterId([1; 16]);
        let mut r = Replica::new(writer, ReplicaLimits::default());
        let cold = OneCold(
            b"k".to_vec(),
            ColdEntry {
                version: Version { lamport: 5, writer },
                value: Some(b"cold".to_vec()),
            },
        );
        assert_eq!(r.lookup(b"k"), Lookup::Miss);
        assert_eq!(
            r.get_through(b"k", &cold).unwrap().as_deref(),
            Some(&b"cold"[..])
        );
        assert_eq!(r.lookup(b"k"), Lookup::Hit(b"cold"));
        assert_eq!(r.get_through(b"x", &NoColdStore).unwrap(), None);
        // A local delete is newer than the cold entry: no resurrection from the cold tier.
        r.delete(b"k").unwrap();
        assert_eq!(r.lookup(b"k"), Lookup::Deleted);
        assert_eq!(r.get_through(b"k", &cold).unwrap(), None);
    }

    fn w(n: u8) -> WriterId {
        WriterId([n; 16])
    }

    fn put(lamport: u64, key: &str, value: &str) -> StampedUpdate {
        StampedUpdate {
            lamport,
            key: key.into(),
            op: Op::Put(value.into()),
        }
    }

    #[test]
    fn higher_lamport_wins_and_ties_go_to_the_higher_writer() {
        let mut r = Replica::new(w(9), ReplicaLimits::default());
        let batch = |u| Batch {
            fences: vec![],
            updates: vec![u],
        };
        r.apply_remote(w(1), 1, &batch(put(5, "k", "a")));
        r.apply_remote(w(2), 1, &batch(put(4, "k", "b")));
        assert_eq!(r.get(b"k"), Some(&b"a"[..]));
        r.apply_remote(w(2), 2, &batch(put(5, "k", "c")));
        assert_eq!(
            r.get(b"k"),
            Some(&b"c"[..]),
            "tie at 5: writer 2 > writer 1"
        );
        assert_eq!(r.clock(), 5);
    }

    #[test]
    fn duplicates_and_gaps_are_reported() {
        let mut r = Replica::new(w(9), ReplicaLimits::default());
        let b = Batch {
            fences: vec![],
            updates: vec![put(1, "k", "v")],
        };
        assert_eq!(r.apply_remote(w(1), 2, &b), Applied::Gap { expected: 1 });
        assert_eq!(r.apply_remote(w(1), 1, &b), Applied::Applied { changed: 1 });
        assert_eq!(r.apply_remote(w(1), 1, &b), Applied::Duplicate);
        assert_eq!(r.applied(&w(1)), 1);
        assert!(r.caught_up([(&w(1), &1)]));
        assert!(!r.caught_up([(&w(1), &2)]));
    }

    #[test]
    fn local_writes_are_read_back_and_queued_in_order() {
        let mut r = Replica::new(
            w(1),
            ReplicaLimits {
                keys_max: 2,
                pending_max: 3,
            },
        );
        r.put(b"a", b"1").unwrap();
        assert!(r.delete(b"a").unwrap());
        assert_eq!(r.get(b"a"), None);
        r.put(b"b", b"2").unwrap();
        assert_eq!(r.put(b"c", b"3"), Err(ReplicaError::PendingFull(3)));
        let taken = r.take_pending(10, usize::MAX);
        assert_eq!(
            taken.iter().map(|u| u.lamport).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(r.put(b"c", b"3"), Err(ReplicaError::Full(2)));
        // A late, older put does not resurrect the deleted key.
        r.apply_remote(
            w(2),
            1,
            &Batch {
                fences: vec![],
                updates: vec![put(1, "a", "old")],
            },
        );
        assert_eq!(r.get(b"a"), None);
    }
}

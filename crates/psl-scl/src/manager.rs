//! The manager role's SCL state machine, without IO: the [`LockService`] plus the manager's
//! own capsule chain, on which it publishes lock verdicts (`LockRelease` records) and sync
//! reports (`SyncReport` records).
//!
//! Why verdicts are records (see `docs/design/scl.md`, "fenced writes commit at release"): a
//! replica holds back another writer's fenced record until the lock service's verdict on that
//! grant says whether it committed. Putting verdicts on the manager's signed, hash-chained,
//! durable chain means every replica (and a worker replaying the store after a restart, and
//! CapsuleDB) gets the same verdicts in the same order, with gap repair and fork detection for
//! free. A new holder does not proceed before it applied the verdicts on the records its grant's
//! watermark names (a fenced record counts as applied only with its verdict), and a grant after
//! an expiry of the same lock names that verdict's record (release consistency).
//!
//! The shell's contract: multicast [`Effects::records`] only once they are durable in the
//! record store, in chain order. Grants may be delivered at once: their holders wait for the
//! records they depend on.
//!
//! Must never: do IO, read a clock (time is `now_ms`), or panic on a request.

use std::collections::BTreeMap;

use psl_capsule::{
    CapsuleMetadata, CapsuleWriter, DataKey, Head, RecordHash, RecordKind, SealedRecord,
    WriterCertificate, WriterId, WriterKeyPair,
};

use crate::cursor::{Reader, Truncated};
use crate::lock::{
    Event, FencingToken, Grant, HolderId, LockConfig, LockError, LockMode, LockName, LockService,
    Reply, Watermark,
};

/// Format version of verdict and sync-report bodies.
pub const CONTROL_VERSION: u8 = 1;
/// Verdicts in one `LockRelease` record at most.
pub const VERDICTS_PER_RECORD_MAX: usize = 4096;
/// Heads in one sync report at most.
pub const REPORT_HEADS_MAX: usize = 65_536;
/// Writers in one verdict's watermark at most.
pub const VERDICT_WRITERS_MAX: usize = 65_536;
/// Lamport time of the manager's genesis record.
const GENESIS_LAMPORT: u64 = 1;

/// Why a control body could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The body ended early, had trailing bytes, or a count over its limit.
    #[error("malformed control body: {0}")]
    Malformed(&'static str),
    /// Unknown version byte.
    #[error("unknown control body version {0}")]
    Version(u8),
}

/// The lock service's verdict on one grant: which records written under it committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockVerdict {
    /// The lock.
    pub lock: Vec<u8>,
    /// The grant's fencing token.
    pub token: u64,
    /// Records of each writer up to this are committed under the grant.
    pub committed: Watermark,
    /// True when the grant has ended (released, expired or forgotten): later records are not
    /// committed. False for an acknowledged flush while the grant is held: records up to
    /// `committed` commit whatever happens next, later ones wait for the final verdict.
    pub settled: bool,
}

impl From<Truncated> for ControlError {
    fn from(_: Truncated) -> Self {
        ControlError::Malformed("truncated")
    }
}

/// A count, checked against its limit and against the bytes left (each item takes at least
/// `min_item` bytes), so a hostile count never makes us allocate.
fn count(r: &mut Reader<'_>, max: usize, min_item: usize) -> Result<usize, ControlError> {
    let n = r.u32()? as usize;
    if n > max || n.saturating_mul(min_item) > r.remaining() {
        return Err(ControlError::Malformed("count over its limit"));
    }
    Ok(n)
}

fn version(r: &mut Reader<'_>) -> Result<(), ControlError> {
    match r.u8()? {
        CONTROL_VERSION => Ok(()),
        other => Err(ControlError::Version(other)),
    }
}

fn end(r: &Reader<'_>) -> Result<(), ControlError> {
    if r.remaining() == 0 {
        Ok(())
    } else {
        Err(ControlError::Malformed("trailing bytes"))
    }
}

fn put_u32(out: &mut Vec<u8>, n: usize) -> Result<(), ControlError> {
    let n = u32::try_from(n).map_err(|_| ControlError::Malformed("length over u32"))?;
    out.extend_from_slice(&n.to_le_bytes());
    Ok(())
}

/// Encodes verdicts as a `LockRelease` body.
pub fn encode_verdicts(verdicts: &[LockVerdict]) -> Result<Vec<u8>, ControlError> {
    if verdicts.len() > VERDICTS_PER_RECORD_MAX {
        return Err(ControlError::Malformed("too many verdicts"));
    }
    let mut out = vec![CONTROL_VERSION];
    put_u32(&mut out, verdicts.len())?;
    for verdict in verdicts {
        if verdict.lock.len() > crate::lock::LOCK_NAME_MAX {
            return Err(ControlError::Malformed("lock name too long"));
        }
        if verdict.committed.len() > VERDICT_WRITERS_MAX {
            return Err(ControlError::Malformed("watermark too large"));
        }
        put_u32(&mut out, verdict.lock.len())?;
        out.extend_from_slice(&verdict.lock);
        out.extend_from_slice(&verdict.token.to_le_bytes());
        out.push(u8::from(verdict.settled));
        put_u32(&mut out, verdict.committed.len())?;
        for (writer, seq) in verdict.committed.iter() {
            out.extend_from_slice(&writer.0);
            out.extend_from_slice(&seq.to_le_bytes());
        }
    }
    Ok(out)
}

/// Decodes a `LockRelease` body.
pub fn decode_verdicts(bytes: &[u8]) -> Result<Vec<LockVerdict>, ControlError> {
    let mut r = Reader::new(bytes);
    version(&mut r)?;
    let n = count(&mut r, VERDICTS_PER_RECORD_MAX, 17)?;
    let mut verdicts = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.u32()? as usize;
        if len > crate::lock::LOCK_NAME_MAX {
            return Err(ControlError::Malformed("lock name too long"));
        }
        let lock = r.bytes(len)?.to_vec();
        let token = r.u64()?;
        let settled = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(ControlError::Malformed("settled flag is not 0 or 1")),
        };
        let writers = count(&mut r, VERDICT_WRITERS_MAX, 24)?;
        let mut committed = Watermark::new();
        for _ in 0..writers {
            let writer = WriterId(r.array::<16>()?);
            committed.observe(writer, r.u64()?);
        }
        verdicts.push(LockVerdict {
            lock,
            token,
            committed,
            settled,
        });
    }
    end(&r)?;
    Ok(verdicts)
}

/// Encodes writer heads as a `SyncReport` body.
pub fn encode_report(heads: &[Head]) -> Result<Vec<u8>, ControlError> {
    if heads.len() > REPORT_HEADS_MAX {
        return Err(ControlError::Malformed("too many heads"));
    }
    let mut out = Vec::with_capacity(5 + heads.len() * 56);
    out.push(CONTROL_VERSION);
    put_u32(&mut out, heads.len())?;
    for head in heads {
        out.extend_from_slice(&head.writer.0);
        out.extend_from_slice(&head.seq.to_le_bytes());
        out.extend_from_slice(&head.hash.0);
    }
    Ok(out)
}

/// Decodes a `SyncReport` body.
pub fn decode_report(bytes: &[u8]) -> Result<Vec<Head>, ControlError> {
    let mut r = Reader::new(bytes);
    version(&mut r)?;
    let n = count(&mut r, REPORT_HEADS_MAX, 56)?;
    let mut heads = Vec::with_capacity(n);
    for _ in 0..n {
        let writer = WriterId(r.array::<16>()?);
        let seq = r.u64()?;
        let hash = RecordHash(r.array::<32>()?);
        heads.push(Head { writer, seq, hash });
    }
    end(&r)?;
    Ok(heads)
}

/// What the shell must do after a manager call.
#[derive(Debug, Default)]
pub struct Effects {
    /// Records of the manager's chain: append durably and multicast, before the grants.
    pub records: Vec<SealedRecord>,
    /// Grants to deliver to their holders.
    pub grants: Vec<Grant>,
    /// Holders that lost a lock without releasing it (tell them, if reachable).
    pub expired: Vec<(LockName, HolderId, FencingToken)>,
    /// The call repeated a release carried out before (see [`Manager::release`]): nothing
    /// changed.
    pub repeated: bool,
}

/// Why a manager call failed.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The lock service refused the request (nothing changed).
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The manager's chain could not seal a record.
    #[error("sealing: {0}")]
    Seal(String),
    /// A control body could not be encoded.
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// The manager's SCL state machine.
pub struct Manager {
    locks: LockService,
    writer: CapsuleWriter,
    lamport: u64,
    verdicts_issued: u64,
    /// Per lock, the manager seq of its latest expiry verdict (see `stamp`).
    last_expiry: BTreeMap<LockName, u64>,
    expiry_floor: u64,
    /// Recent releases by token (tokens are unique and grow, so the first is the oldest).
    released: BTreeMap<u64, Released>,
}

/// Locks whose latest expiry the manager remembers individually.
const LAST_EXPIRY_MAX: usize = 65_536;
/// Releases the manager remembers, so that the same release sent again (a retry after a lost
/// reply) is answered again instead of refused.
pub const RELEASED_MAX: usize = 65_536;

/// A release the manager carried out: who released, and a digest of the watermark it carried.
#[derive(Debug)]
struct Released {
    name: LockName,
    holder: HolderId,
    watermark: [u8; 32],
}

fn watermark_digest(watermark: &Watermark) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    for (writer, seq) in watermark.iter() {
        hasher.update(&writer.0);
        hasher.update(&seq.to_le_bytes());
    }
    *hasher.finalize().as_bytes()
}

impl Manager {
    /// Starts the manager's chain; returns it with its genesis record (publish it first).
    pub fn start(
        metadata: &CapsuleMetadata,
        data_key: &DataKey,
        keys: WriterKeyPair,
        certificate: &WriterCertificate,
        config: LockConfig,
    ) -> Result<(Self, SealedRecord), ManagerError> {
        let (writer, genesis) =
            CapsuleWriter::start(metadata, data_key, keys, certificate, GENESIS_LAMPORT, &[])
                .map_err(|e| ManagerError::Seal(e.to_string()))?;
        Ok((
            Self {
                locks: LockService::new(config),
                writer,
                lamport: GENESIS_LAMPORT,
                verdicts_issued: 0,
                last_expiry: BTreeMap::new(),
                expiry_floor: 0,
                released: BTreeMap::new(),
            },
            genesis,
        ))
    }

    /// The manager's writer id (workers accept verdicts and reports only from it).
    pub fn writer_id(&self) -> WriterId {
        self.writer.writer_id()
    }

    /// The sequence number of the manager's latest record.
    pub fn head_seq(&self) -> u64 {
        self.writer.next_seq().saturating_sub(1)
    }

    /// The lock table (read-only, for checks and snapshots).
    pub fn locks(&self) -> &LockService {
        &self.locks
    }

    /// Verdict records sealed so far.
    pub fn verdicts_issued(&self) -> u64 {
        self.verdicts_issued
    }

    /// A grant after an expiry of the same lock names the manager's record of that expiry
    /// verdict: the new holder must not proceed before its worker learned of the expiry (a
    /// worker whose session held the expired grant has that session's unsealed writes in its
    /// replica; the verdict poisons it before another session there reads them). Records of
    /// released holders need no stamp: the grant's watermark names them, and a replica counts
    /// a fenced record as applied only once its verdict arrived.
    fn stamp(&self, mut grant: Grant) -> Grant {
        let seq = self
            .last_expiry
            .get(&grant.name)
            .copied()
            .unwrap_or(self.expiry_floor);
        if seq > 0 {
            grant.watermark.observe(self.writer_id(), seq);
        }
        grant
    }

    fn note_expiry(&mut self, name: LockName) {
        let seq = self.head_seq();
        if self.last_expiry.len() >= LAST_EXPIRY_MAX
            && !self.last_expiry.contains_key(&name)
            && let Some((_, evicted)) = self.last_expiry.pop_first()
        {
            // Bounded: a forgotten lock is stamped with the highest evicted seq (conservative).
            self.expiry_floor = self.expiry_floor.max(evicted);
        }
        self.last_expiry.insert(name, seq);
    }

    fn seal(&mut self, kind: RecordKind, body: &[u8]) -> Result<SealedRecord, ManagerError> {
        self.lamport = self.lamport.saturating_add(1);
        self.writer
            .seal(kind, self.lamport, &[], body)
            .map_err(|e| ManagerError::Seal(e.to_string()))
    }

    fn seal_verdicts(
        &mut self,
        verdicts: &[LockVerdict],
    ) -> Result<Vec<SealedRecord>, ManagerError> {
        let mut records = Vec::new();
        for chunk in verdicts.chunks(VERDICTS_PER_RECORD_MAX) {
            let body = encode_verdicts(chunk)?;
            records.push(self.seal(RecordKind::LockRelease, &body)?);
            self.verdicts_issued = self.verdicts_issued.saturating_add(chunk.len() as u64);
        }
        Ok(records)
    }

    /// Acquire (see [`LockService::acquire`]); a grant names the lock's latest expiry verdict.
    pub fn acquire(
        &mut self,
        now_ms: u64,
        holder: HolderId,
        request_id: u64,
        name: LockName,
        mode: LockMode,
    ) -> Result<Reply, LockError> {
        Ok(
            match self.locks.acquire(now_ms, holder, request_id, name, mode)? {
                Reply::Granted(grant) => Reply::Granted(self.stamp(grant)),
                queued => queued,
            },
        )
    }

    /// Release (see [`LockService::release`]). `fenced` says whether the holder sealed any
    /// record under this grant; if so, the verdict (the lock's watermark after the release,
    /// which covers the release watermark and the acknowledged flushes) is sealed as a record.
    ///
    /// Idempotent: the same release again (same holder, lock, token and watermark; a retry
    /// after a lost reply) succeeds with no effects, since the first one's verdict covers what
    /// it names. The last [`RELEASED_MAX`] releases are remembered; an older retry is refused
    /// like any release of a grant that is gone, and the holder treats it as a lost grant.
    pub fn release(
        &mut self,
        now_ms: u64,
        holder: HolderId,
        name: &LockName,
        token: FencingToken,
        watermark: &Watermark,
        fenced: bool,
    ) -> Result<Effects, ManagerError> {
        let grants = match self.locks.release(now_ms, holder, name, token, watermark) {
            Ok(grants) => grants,
            Err(e) => {
                let again = self.released.get(&token.0).is_some_and(|done| {
                    done.holder == holder
                        && done.name == *name
                        && done.watermark == watermark_digest(watermark)
                });
                return if again {
                    Ok(Effects {
                        repeated: true,
                        ..Effects::default()
                    })
                } else {
                    Err(e.into())
                };
            }
        };
        if self.released.len() >= RELEASED_MAX {
            self.released.pop_first();
        }
        self.released.insert(
            token.0,
            Released {
                name: name.clone(),
                holder,
                watermark: watermark_digest(watermark),
            },
        );
        let mut effects = Effects::default();
        if fenced {
            let committed = self.locks.watermark(name).cloned().unwrap_or_default();
            effects.records = self.seal_verdicts(&[LockVerdict {
                lock: name.as_bytes().to_vec(),
                token: token.0,
                committed,
                settled: true,
            }])?;
        }
        effects.grants = grants.into_iter().map(|g| self.stamp(g)).collect();
        Ok(effects)
    }

    /// Renew (see [`LockService::renew`]).
    pub fn renew(
        &mut self,
        now_ms: u64,
        holder: HolderId,
        name: &LockName,
        token: FencingToken,
    ) -> Result<u64, LockError> {
        self.locks.renew(now_ms, holder, name, token)
    }

    /// Acknowledge a flush under a grant (see [`LockService::acknowledge_flush`]): returns the
    /// new lease end and a partial verdict record, so other replicas apply the flushed records
    /// now instead of at the release (a holder that flushes and then waits for another lock
    /// would otherwise block whoever waits for its flushed records).
    pub fn acknowledge_flush(
        &mut self,
        now_ms: u64,
        holder: HolderId,
        name: &LockName,
        token: FencingToken,
        watermark: &Watermark,
    ) -> Result<(u64, Effects), ManagerError> {
        let lease = self
            .locks
            .acknowledge_flush(now_ms, holder, name, token, watermark)?;
        let records = self.seal_verdicts(&[LockVerdict {
            lock: name.as_bytes().to_vec(),
            token: token.0,
            committed: watermark.clone(),
            settled: false,
        }])?;
        Ok((
            lease,
            Effects {
                records,
                ..Effects::default()
            },
        ))
    }

    /// Cancel a request (see [`LockService::cancel`]). A cancelled grant had no writes (its
    /// holder never knew it held the lock), so no verdict is needed... unless it raced: the
    /// shell releases instead when the holder saw the grant.
    pub fn cancel(
        &mut self,
        now_ms: u64,
        holder: HolderId,
        name: &LockName,
        request_id: u64,
    ) -> Effects {
        let grants = self.locks.cancel(now_ms, holder, name, request_id);
        Effects {
            grants: grants.into_iter().map(|g| self.stamp(g)).collect(),
            ..Effects::default()
        }
    }

    fn events(&mut self, events: Vec<Event>) -> Result<Effects, ManagerError> {
        let mut verdicts = Vec::new();
        let mut effects = Effects::default();
        let mut grants = Vec::new();
        for event in events {
            match event {
                Event::Expired {
                    name,
                    holder,
                    token,
                    acknowledged,
                } => {
                    verdicts.push(LockVerdict {
                        lock: name.as_bytes().to_vec(),
                        token: token.0,
                        committed: acknowledged,
                        settled: true,
                    });
                    effects.expired.push((name, holder, token));
                }
                Event::Granted(grant) => grants.push(grant),
            }
        }
        // Seal first, so the grants name the verdicts' records.
        effects.records = self.seal_verdicts(&verdicts)?;
        let expired: Vec<LockName> = effects.expired.iter().map(|(n, _, _)| n.clone()).collect();
        for name in expired {
            self.note_expiry(name);
        }
        effects.grants = grants.into_iter().map(|g| self.stamp(g)).collect();
        Ok(effects)
    }

    /// Expires holders whose lease passed; their verdicts commit only acknowledged flushes.
    pub fn tick(&mut self, now_ms: u64) -> Result<Effects, ManagerError> {
        let events = self.locks.tick(now_ms);
        self.events(events)
    }

    /// Drops a holder known to be dead (its worker incarnation crashed).
    pub fn forget_holder(
        &mut self,
        now_ms: u64,
        holder: HolderId,
    ) -> Result<Effects, ManagerError> {
        let events = self.locks.forget_holder(now_ms, holder);
        self.events(events)
    }

    /// Seals a sync report of `heads` (the record store's heads, as collected by the shell),
    /// leaving out the manager's own chain (the report itself advances it).
    pub fn sync_report(&mut self, heads: &[Head]) -> Result<SealedRecord, ManagerError> {
        let me = self.writer_id();
        let mut unique: BTreeMap<WriterId, Head> = BTreeMap::new();
        for head in heads.iter().filter(|h| h.writer != me) {
            unique
                .entry(head.writer)
                .and_modify(|h| {
                    if head.seq > h.seq {
                        *h = *head;
                    }
                })
                .or_insert(*head);
        }
        let mut heads: Vec<Head> = unique.into_values().collect();
        heads.truncate(REPORT_HEADS_MAX);
        let body = encode_report(&heads)?;
        self.seal(RecordKind::SyncReport, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(n: u8) -> WriterId {
        WriterId([n; 16])
    }

    #[test]
    fn verdicts_round_trip_and_reject_garbage() {
        let mut committed = Watermark::new();
        committed.observe(writer(1), 7);
        committed.observe(writer(2), 3);
        let verdicts = vec![
            LockVerdict {
                lock: b"bank".to_vec(),
                token: 42,
                committed,
                settled: true,
            },
            LockVerdict {
                lock: Vec::new(),
                token: 1,
                committed: Watermark::new(),
                settled: false,
            },
        ];
        let bytes = encode_verdicts(&verdicts).unwrap();
        assert_eq!(decode_verdicts(&bytes).unwrap(), verdicts);
        for cut in 0..bytes.len() {
            assert!(decode_verdicts(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode_verdicts(&trailing).is_err());
        let mut huge = bytes;
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_verdicts(&huge).is_err());
        assert_eq!(decode_verdicts(&[9]), Err(ControlError::Version(9)));
    }

    #[test]
    fn the_same_release_again_is_answered_again() {
        let capsule = psl_capsule::testkit::TestCapsule::new("release-again", 1);
        let (keys, cert) = capsule.writer(1);
        let (mut manager, _) = Manager::start(
            &capsule.metadata,
            &capsule.data_key,
            keys,
            &cert,
            LockConfig::default(),
        )
        .unwrap();
        let (alice, bob) = (HolderId([1; 16]), HolderId([2; 16]));
        let name = LockName::new(b"acct".to_vec()).unwrap();
        let grant = match manager.acquire(0, alice, 1, name.clone(), LockMode::Write) {
            Ok(Reply::Granted(grant)) => grant,
            other => panic!("{other:?}"),
        };
        let mut watermark = Watermark::new();
        watermark.observe(writer(7), 3);
        let first = manager
            .release(1, alice, &name, grant.token, &watermark, true)
            .unwrap();
        assert_eq!(first.records.len(), 1, "the verdict");
        // The reply was lost; the holder sends the same release again.
        let again = manager
            .release(2, alice, &name, grant.token, &watermark, true)
            .unwrap();
        assert!(again.repeated && again.records.is_empty() && again.grants.is_empty());
        assert!(!first.repeated);
        // Anything else about that grant is refused as before.
        let mut other = watermark.clone();
        other.observe(writer(7), 4);
        assert!(
            manager
                .release(3, alice, &name, grant.token, &other, true)
                .is_err()
        );
        assert!(
            manager
                .release(3, bob, &name, grant.token, &watermark, true)
                .is_err()
        );
        let wrong = LockName::new(b"other".to_vec()).unwrap();
        assert!(
            manager
                .release(3, alice, &wrong, grant.token, &watermark, true)
                .is_err()
        );
    }

    #[test]
    fn reports_round_trip_and_reject_garbage() {
        let heads = vec![Head {
            writer: writer(3),
            seq: 9,
            hash: RecordHash([5; 32]),
        }];
        let bytes = encode_report(&heads).unwrap();
        assert_eq!(decode_report(&bytes).unwrap(), heads);
        for cut in 0..bytes.len() {
            assert!(decode_report(&bytes[..cut]).is_err());
        }
    }
}

//! The SCL core of one worker, without IO: its replica, its capsule writer (sealing its own
//! updates into records) and its verifier (checking everyone else's), with a bounded reorder
//! buffer for records that arrive ahead of a gap.
//!
//! The I/O shell feeds it: local writes ([`WorkerCore::replica_mut`]), records from the bus
//! ([`WorkerCore::receive`]) and records fetched from storage after a gap. It returns sealed
//! records to publish and append ([`WorkerCore::seal`]), and ranges to fetch
//! ([`Received::Gap`]). Must never: do IO, read a clock (validity time comes in as an
//! argument), or panic on a record a peer or a storage server sends.

use std::collections::BTreeMap;

use psl_capsule::{
    CapsuleMetadata, CapsuleVerifier, CapsuleWriter, DataKey, RecordKind, SealedRecord, Validity,
    Verdict, VerifyError, WriterCertificate, WriterId, WriterKeyPair,
};

use crate::body::{Batch, BodyError, Fence};
use crate::lock::Watermark;
use crate::manager::{LockVerdict, decode_report, decode_verdicts};
use crate::replica::{Applied, Replica, ReplicaLimits};

/// Records buffered per writer while waiting for a gap to be filled.
pub const REORDER_BUFFER_RECORDS_MAX: usize = 1024;
/// Lock verdicts remembered at once (the oldest tokens are forgotten first).
pub const VERDICTS_MAX: usize = 65_536;
/// Lamport time of every writer's genesis record.
const GENESIS_LAMPORT: u64 = 1;
/// Bytes of records buffered in all.
pub const REORDER_BYTES_MAX: usize = 64 << 20;
/// Writers that may have records buffered at once.
pub const REORDER_WRITERS_MAX: usize = 1024;
/// Updates sealed into one record at most.
pub const UPDATES_PER_RECORD_MAX: usize = 4096;
/// Key and value bytes sealed into one record at most (well below the capsule's record limit;
/// a single larger update still gets a record of its own).
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 1 << 20;

/// Why the core failed.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// Sealing failed (a limit of the capsule, or the writer is closed).
    #[error("sealing: {0}")]
    Seal(String),
    /// The batch does not fit the SCL body limits.
    #[error("SCL body: {0}")]
    Body(#[from] BodyError),
}

/// What happened to a received record.
#[derive(Debug)]
pub enum Received {
    /// Verified and applied; `applied` records in all (this one and buffered successors).
    Applied {
        /// Records applied, counting buffered ones that became next in line.
        applied: usize,
    },
    /// A valid record of a kind the replica does not apply (genesis, heartbeat, ...).
    Accepted,
    /// Seen before: nothing changed.
    Duplicate,
    /// This worker's own record: nothing to do.
    Own,
    /// Records are missing before it; it was buffered (if there was room). Fetch the range
    /// from storage and pass those records to `receive` too.
    Gap {
        /// The writer.
        writer: WriterId,
        /// The missing sequence numbers.
        missing: std::ops::Range<u64>,
        /// Whether the record was kept (false when the buffer was full: it will come again
        /// with the range fetched from storage).
        buffered: bool,
    },
    /// Refused: forged, tampered, from an unknown or revoked writer, undecryptable, ...
    Rejected(String),
    /// Kept behind an earlier record of its writer that waits for a lock verdict (or dropped,
    /// when the buffer was full: it will come again from storage).
    Waiting {
        /// Whether it was kept.
        buffered: bool,
    },
}

/// One worker's SCL core.
pub struct WorkerCore {
    replica: Replica,
    writer: CapsuleWriter,
    verifier: CapsuleVerifier,
    data_key: DataKey,
    reorder: BTreeMap<WriterId, BTreeMap<u64, SealedRecord>>,
    reorder_bytes: usize,
    rejected: u64,
    last_sealed_lamport: u64,
    /// Lock-service verdicts: for `(lock, token)`, the records committed under that grant.
    verdicts: BTreeMap<(Vec<u8>, u64), Watermark>,
    /// Acknowledged flushes of grants still held: records up to these commit already.
    acknowledged: BTreeMap<(Vec<u8>, u64), Watermark>,
    /// Per writer, the verified record that waits for a verdict (its successors wait, still
    /// unverified, in the reorder buffer, so they can be fetched again if it overflows).
    held: BTreeMap<WriterId, (u64, Batch)>,
    fenced_refused: u64,
    /// The manager's writer id: the only writer whose verdicts and sync reports count.
    manager: Option<WriterId>,
    /// Grants this worker's sessions hold or held and whose verdict has not come yet: whether
    /// the session released it, and the highest seq sealed under it. Checked against the
    /// verdict: a grant that expired while held, or a refused own record, means this replica
    /// shows writes nobody else applies (see [`Self::poisoned`]).
    own_grants: BTreeMap<(Vec<u8>, u64), OwnGrant>,
    poisoned: bool,
    /// Ranges a sync report showed missing here: the shell fetches them from storage.
    wanted: Vec<(WriterId, std::ops::Range<u64>)>,
    forks: u64,
    /// Verdicts decoded from the manager's records, applied at the end of [`Self::receive`].
    pending_verdicts: Vec<LockVerdict>,
    #[cfg(test)]
    pub(crate) fencing_disabled: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct OwnGrant {
    released: bool,
    sealed_max: Option<u64>,
}

/// Keeps a map keyed by `(lock, token)` within [`VERDICTS_MAX`] before `key` is inserted:
/// when full, forgets the entry with the smallest token (tokens only grow, so it is among the
/// oldest).
fn make_room<V>(map: &mut BTreeMap<(Vec<u8>, u64), V>, key: &(Vec<u8>, u64)) {
    if map.len() >= VERDICTS_MAX
        && !map.contains_key(key)
        && let Some(oldest) = map.keys().min_by_key(|(_, t)| *t).cloned()
    {
        map.remove(&oldest);
    }
}

/// What the verdicts say about a fenced record.
enum Decision {
    Commit,
    Refuse,
    Hold,
}

impl WorkerCore {
    /// Starts a worker incarnation; returns the core and its genesis record (publish it first).
    pub fn start(
        metadata: &CapsuleMetadata,
        data_key: DataKey,
        keys: WriterKeyPair,
        certificate: &WriterCertificate,
        limits: ReplicaLimits,
    ) -> Result<(Self, SealedRecord), CoreError> {
        let (writer, genesis) =
            CapsuleWriter::start(metadata, &data_key, keys, certificate, GENESIS_LAMPORT, &[])
                .map_err(|e| CoreError::Seal(e.to_string()))?;
        let mut verifier = CapsuleVerifier::new(metadata.clone());
        // Our own chain is known to our verifier, so peers' links to it check out.
        let _ = verifier.verify(&genesis, Validity::Ignore);
        let mut replica = Replica::new(writer.writer_id(), limits);
        replica.observe_clock(GENESIS_LAMPORT);
        let core = Self {
            replica,
            writer,
            verifier,
            data_key,
            reorder: BTreeMap::new(),
            reorder_bytes: 0,
            rejected: 0,
            last_sealed_lamport: GENESIS_LAMPORT,
            verdicts: BTreeMap::new(),
            acknowledged: BTreeMap::new(),
            held: BTreeMap::new(),
            fenced_refused: 0,
            manager: None,
            own_grants: BTreeMap::new(),
            poisoned: false,
            wanted: Vec::new(),
            forks: 0,
            pending_verdicts: Vec::new(),
            #[cfg(test)]
            fencing_disabled: false,
        };
        Ok((core, genesis))
    }

    /// The replica (reads).
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// The replica (local writes).
    pub fn replica_mut(&mut self) -> &mut Replica {
        &mut self.replica
    }

    /// Names the manager: lock verdicts and sync reports are accepted from its chain only.
    pub fn set_manager(&mut self, manager: WriterId) {
        self.manager = Some(manager);
    }

    fn own_grant(&mut self, key: (Vec<u8>, u64)) -> &mut OwnGrant {
        // Bounded: the oldest grant's verdict is long overdue.
        make_room(&mut self.own_grants, &key);
        self.own_grants.entry(key).or_default()
    }

    /// A session on this worker was granted `(lock, token)`: from now on its writes are
    /// sealed under that fence (the shell passes it to [`Self::seal`]). Returns false if the
    /// grant is already settled (its lease ended before the session saw it): the session must
    /// not use it.
    pub fn note_grant(&mut self, lock: &[u8], token: u64) -> bool {
        if self.verdicts.contains_key(&(lock.to_vec(), token)) {
            return false;
        }
        self.own_grant((lock.to_vec(), token));
        true
    }

    /// The session released `(lock, token)` after its final flush: nothing more is sealed
    /// under it.
    pub fn note_release(&mut self, lock: &[u8], token: u64) {
        if let Some(grant) = self.own_grants.get_mut(&(lock.to_vec(), token)) {
            grant.released = true;
        }
    }

    /// True once a verdict refused one of this worker's own fenced records (it wrote under a
    /// grant after the lease ended), or the shell called [`Self::poison`]: its replica shows
    /// writes nobody else may apply, so the shell must end this incarnation and start a new
    /// one from the store.
    pub fn poisoned(&self) -> bool {
        self.poisoned
    }

    /// Ends this incarnation's right to serve: the shell lost track of a verdict its own
    /// records depend on (a release or flush acknowledgement whose outcome it does not know).
    /// Those records may yet be refused, and this replica already shows their writes, so no
    /// session may read them; the shell starts a new incarnation from the store.
    pub fn poison(&mut self) {
        self.poisoned = true;
    }

    /// Takes the ranges that sync reports showed missing here (fetch them from storage and
    /// pass the records to [`Self::receive`]).
    pub fn take_wanted(&mut self) -> Vec<(WriterId, std::ops::Range<u64>)> {
        std::mem::take(&mut self.wanted)
    }

    /// Sync-report heads that disagreed with the chain this worker verified (fork evidence).
    pub fn forks(&self) -> u64 {
        self.forks
    }

    /// Applies the owner's revocation list: records of revoked writers are refused from now
    /// on, including from chains this worker already follows.
    pub fn apply_revocations(
        &mut self,
        list: &psl_capsule::RevocationList,
    ) -> Result<(), psl_capsule::RevocationError> {
        self.verifier.apply_revocations(list)
    }

    /// Records refused so far.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Seals pending local updates (at most [`UPDATES_PER_RECORD_MAX`] and about
    /// [`RECORD_PAYLOAD_BYTES_MAX`], all of one tag) into one record carrying `fences`; `None`
    /// if nothing is pending. Call until it returns `None` to seal everything.
    pub fn seal(&mut self, fences: &[Fence]) -> Result<Option<SealedRecord>, CoreError> {
        if !self.replica.has_pending() {
            return Ok(None);
        }
        let updates = self
            .replica
            .take_pending(UPDATES_PER_RECORD_MAX, RECORD_PAYLOAD_BYTES_MAX);
        self.seal_updates(updates, fences).map(Some)
    }

    /// [`Self::seal`] for the updates of one tag (a session) only, under that session's fences.
    pub fn seal_tag(
        &mut self,
        tag: u64,
        fences: &[Fence],
    ) -> Result<Option<SealedRecord>, CoreError> {
        if !self.replica.has_pending_of(tag) {
            return Ok(None);
        }
        let updates =
            self.replica
                .take_pending_of(tag, UPDATES_PER_RECORD_MAX, RECORD_PAYLOAD_BYTES_MAX);
        self.seal_updates(updates, fences).map(Some)
    }

    fn seal_updates(
        &mut self,
        updates: Vec<crate::body::StampedUpdate>,
        fences: &[Fence],
    ) -> Result<SealedRecord, CoreError> {
        let batch = Batch {
            fences: fences.to_vec(),
            updates,
        };
        let body = batch.encode()?;
        // A record's Lamport time covers its updates and grows strictly along the chain.
        let lamport = batch
            .max_lamport()
            .max(self.last_sealed_lamport.saturating_add(1));
        self.replica.observe_clock(lamport);
        self.last_sealed_lamport = lamport;
        let record = self
            .writer
            .seal(RecordKind::Updates, lamport, &[], &body)
            .map_err(|e| CoreError::Seal(e.to_string()))?;
        self.replica.sealed_own(record.seq());
        let me = self.writer.writer_id();
        for fence in fences {
            let key = (fence.lock.clone(), fence.token);
            if let Some(verdict) = self.verdicts.get(&key) {
                // Sealed under a grant that is already settled: refused everywhere.
                if !verdict.covers(&me, record.seq()) {
                    self.poisoned = true;
                }
            } else {
                self.own_grant(key).sealed_max = Some(record.seq());
            }
        }
        Ok(record)
    }

    /// Verifies, decrypts and applies a record from the bus or from storage, then any buffered
    /// records of the same writer that became next in line.
    pub fn receive(&mut self, record: SealedRecord, validity: Validity) -> Received {
        let writer = record.writer();
        let received = self.receive_one(record, validity);
        let first = match &received {
            Received::Applied { applied } => *applied,
            Received::Accepted => 0,
            _ => return received,
        };
        let mut more = self.drain_buffer(writer, validity);
        while let Some(verdict) = self.pending_verdicts.pop() {
            more += if verdict.settled {
                self.on_verdict(&verdict.lock, verdict.token, verdict.committed, validity)
            } else {
                self.on_acknowledged(&verdict.lock, verdict.token, &verdict.committed, validity)
            };
        }
        if first + more > 0 {
            Received::Applied {
                applied: first + more,
            }
        } else {
            received
        }
    }

    fn receive_one(&mut self, record: SealedRecord, validity: Validity) -> Received {
        if record.writer() == self.writer.writer_id() {
            return Received::Own;
        }
        if let Some((held_seq, _)) = self.held.get(&record.writer()) {
            // Behind a record that waits for a lock verdict: keep it unverified (so it can be
            // fetched again if the buffer is full) until the verdict comes.
            if record.seq() <= *held_seq {
                return Received::Duplicate;
            }
            let (writer, seq) = (record.writer(), record.seq());
            return match self.buffer(record, writer, seq..seq) {
                Received::Gap { buffered, .. } => Received::Waiting { buffered },
                other => other,
            };
        }
        match self.verifier.verify(&record, validity) {
            Ok(Verdict::Duplicate { .. }) => Received::Duplicate,
            Ok(Verdict::Accepted(verified)) => match self.apply_verified(&verified) {
                Ok(true) => Received::Applied { applied: 1 },
                Ok(false) => Received::Accepted,
                Err(reason) => {
                    self.rejected += 1;
                    Received::Rejected(reason)
                }
            },
            // A writer whose genesis has not arrived yet: the same as a gap from seq 0.
            Err(VerifyError::UnknownWriter { writer, seq }) => self.buffer(record, writer, 0..seq),
            Err(VerifyError::Gap { writer, missing }) => self.buffer(record, writer, missing),
            Err(VerifyError::Replay { .. }) => Received::Duplicate,
            Err(error) => {
                self.rejected += 1;
                Received::Rejected(error.to_string())
            }
        }
    }

    fn buffer(
        &mut self,
        record: SealedRecord,
        writer: WriterId,
        missing: std::ops::Range<u64>,
    ) -> Received {
        let writers = self.reorder.len();
        let size = record.as_bytes().len();
        let room = self.reorder_bytes.saturating_add(size) <= REORDER_BYTES_MAX;
        let buffer = self.reorder.entry(writer).or_default();
        // Bounded three ways: records per writer, writers with a buffer, bytes in all. Records
        // of writers not yet known are unverified, so the byte bound is what stops a flood.
        let buffered =
            room && buffer.len() < REORDER_BUFFER_RECORDS_MAX && writers <= REORDER_WRITERS_MAX;
        if buffered && buffer.insert(record.seq(), record).is_none() {
            self.reorder_bytes = self.reorder_bytes.saturating_add(size);
        }
        Received::Gap {
            writer,
            missing,
            buffered,
        }
    }

    /// Applies a verified record to the replica. Returns whether it carried updates that were
    /// applied now (a fenced record may wait for its verdict or be refused by it).
    fn apply_verified(&mut self, verified: &psl_capsule::VerifiedRecord) -> Result<bool, String> {
        let record = verified.record();
        let (writer, seq) = (record.writer(), record.seq());
        match record.kind() {
            RecordKind::Updates => {}
            RecordKind::LockRelease | RecordKind::SyncReport => {
                if self.manager != Some(writer) {
                    // Only the manager speaks for the lock service. The chain moves on.
                    self.replica.note_applied(writer, seq);
                    return Err(format!(
                        "{:?} record from a writer that is not the manager",
                        record.kind()
                    ));
                }
                self.replica.note_applied(writer, seq);
                let plain = verified
                    .open_body(&self.data_key)
                    .map_err(|e| e.to_string())?;
                if record.kind() == RecordKind::LockRelease {
                    let verdicts = decode_verdicts(&plain).map_err(|e| e.to_string())?;
                    for verdict in verdicts {
                        self.pending_verdicts.push(verdict);
                    }
                } else {
                    let heads = decode_report(&plain).map_err(|e| e.to_string())?;
                    self.on_report(&heads);
                }
                return Ok(true);
            }
            _ => {
                // Still the next record of its writer: the replica's applied seq moves past it.
                self.replica.note_applied(writer, seq);
                return Ok(false);
            }
        }
        let batch = match verified
            .open_body(&self.data_key)
            .map_err(|e| e.to_string())
            .and_then(|plain| Batch::decode(&plain).map_err(|e| e.to_string()))
        {
            Ok(batch) => batch,
            Err(reason) => {
                // Validly signed but unreadable: the writer is certified yet broken or hostile.
                // Its chain moves on without the content, so its later records still apply.
                self.replica.note_applied(writer, seq);
                return Err(reason);
            }
        };
        match self.decide(writer, seq, &batch.fences) {
            Decision::Commit => self.commit(writer, seq, &batch),
            Decision::Refuse => {
                self.fenced_refused += 1;
                self.replica.note_applied(writer, seq);
                Ok(false)
            }
            Decision::Hold => {
                self.held.insert(writer, (seq, batch));
                Ok(false)
            }
        }
    }

    fn commit(&mut self, writer: WriterId, seq: u64, batch: &Batch) -> Result<bool, String> {
        match self.replica.apply_remote(writer, seq, batch) {
            Applied::Applied { .. } | Applied::Duplicate => Ok(true),
            // The verifier checked the chain, so the replica cannot be behind it.
            Applied::Gap { expected } => Err(format!("replica expected seq {expected} first")),
        }
    }

    /// Fenced writes commit at release (docs/design/scl.md): a record written under the
    /// grants `fences` is applied if every grant's verdict covers it, refused if one verdict
    /// does not, and held until the missing verdicts arrive otherwise.
    fn decide(&self, writer: WriterId, seq: u64, fences: &[Fence]) -> Decision {
        #[cfg(test)]
        if self.fencing_disabled {
            return Decision::Commit;
        }
        let mut complete = true;
        for fence in fences {
            let key = (fence.lock.clone(), fence.token);
            match self.verdicts.get(&key) {
                Some(verdict) if verdict.covers(&writer, seq) => {}
                Some(_) => return Decision::Refuse,
                None if self
                    .acknowledged
                    .get(&key)
                    .is_some_and(|ack| ack.covers(&writer, seq)) => {}
                None => complete = false,
            }
        }
        if complete {
            Decision::Commit
        } else {
            Decision::Hold
        }
    }

    /// Takes an acknowledged flush under the grant `(lock, token)`, which is still held: records
    /// up to `committed` commit now (an acknowledged flush is never revoked). Applies what
    /// waited for it; returns the records applied.
    pub fn on_acknowledged(
        &mut self,
        lock: &[u8],
        token: u64,
        committed: &Watermark,
        validity: Validity,
    ) -> usize {
        let key = (lock.to_vec(), token);
        if self.verdicts.contains_key(&key) {
            return 0; // already settled: the final verdict includes every acknowledgement
        }
        make_room(&mut self.acknowledged, &key);
        self.acknowledged.entry(key).or_default().merge(committed);
        self.redecide_held(validity)
    }

    /// Takes the lock service's verdict on the grant `(lock, token)`: the records of each
    /// writer up to `committed` are valid under it, later ones are not. Releases and applies
    /// (or refuses) the records that waited for it. Returns the records applied.
    pub fn on_verdict(
        &mut self,
        lock: &[u8],
        token: u64,
        committed: Watermark,
        validity: Validity,
    ) -> usize {
        make_room(&mut self.verdicts, &(lock.to_vec(), token));
        let me = self.writer.writer_id();
        if let Some(own) = self.own_grants.remove(&(lock.to_vec(), token)) {
            // Expired while a session here held it (its unsealed writes are applied here and
            // nowhere else), or refused a record sealed here.
            let refused = own
                .sealed_max
                .is_some_and(|seq| !committed.covers(&me, seq));
            if !own.released || refused {
                self.poisoned = true;
            }
        }
        self.acknowledged.remove(&(lock.to_vec(), token));
        self.verdicts.insert((lock.to_vec(), token), committed);
        self.redecide_held(validity)
    }

    /// Decides again every record that waits for verdicts; applies or refuses what is decided.
    fn redecide_held(&mut self, validity: Validity) -> usize {
        let waiting: Vec<WriterId> = self.held.keys().copied().collect();
        let mut applied = 0;
        for writer in waiting {
            let Some((seq, batch)) = self.held.remove(&writer) else {
                continue;
            };
            match self.decide(writer, seq, &batch.fences) {
                Decision::Hold => {
                    self.held.insert(writer, (seq, batch));
                    continue;
                }
                Decision::Refuse => {
                    self.fenced_refused += 1;
                    self.replica.note_applied(writer, seq);
                }
                Decision::Commit => {
                    if self.commit(writer, seq, &batch).unwrap_or(false) {
                        applied += 1;
                    }
                }
            }
            applied += self.drain_buffer(writer, validity);
        }
        applied
    }

    /// Compares a sync report's heads with the chains verified here: missing tails become
    /// [`Self::take_wanted`] ranges, a different hash at a reported seq is fork evidence.
    fn on_report(&mut self, heads: &[psl_capsule::Head]) {
        let me = self.writer.writer_id();
        for head in heads.iter().filter(|h| h.writer != me) {
            match self.verifier.check_heads(std::slice::from_ref(head)) {
                Ok(()) => {}
                Err(VerifyError::Truncated { writer, have, .. }) => {
                    let from = have.map_or(0, |h| h.saturating_add(1));
                    if self.wanted.len() < REORDER_WRITERS_MAX {
                        self.wanted.push((writer, from..head.seq.saturating_add(1)));
                    }
                }
                Err(VerifyError::HeadMismatch { .. }) => self.forks += 1,
                Err(_) => {}
            }
        }
    }

    /// Fenced records refused because a verdict did not cover them (late writes).
    pub fn fenced_refused(&self) -> u64 {
        self.fenced_refused
    }

    /// Applies buffered records of `writer` that are now next in line (iteratively).
    fn drain_buffer(&mut self, writer: WriterId, validity: Validity) -> usize {
        let mut applied = 0;
        loop {
            let next = self.replica.applied(&writer).saturating_add(1);
            let Some(record) = self.reorder.get_mut(&writer).and_then(|b| b.remove(&next)) else {
                break;
            };
            self.reorder_bytes = self.reorder_bytes.saturating_sub(record.as_bytes().len());
            match self.receive_one(record, validity) {
                Received::Applied { applied: n } => applied += n,
                Received::Accepted => {}
                _ => break,
            }
        }
        if self.reorder.get(&writer).is_some_and(BTreeMap::is_empty) {
            self.reorder.remove(&writer);
        }
        applied
    }
}

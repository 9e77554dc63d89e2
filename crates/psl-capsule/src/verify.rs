//! The verifier: checks records of one capsule against its metadata, the writers' certificates
//! and each writer's chain, and tells apart every way an untrusted store or network can lie.
//!
//! A [`CapsuleVerifier`] holds the capsule metadata, the revocation list, and per writer: the
//! certificate key, the next expected sequence number, the head hash, the last Lamport time and
//! a bounded window of recent hashes. Each record goes through, in order:
//!
//! 1. capsule id (splices from another capsule), size limit, recomputed hash;
//! 2. writer: known, or certified by the genesis record it *is*; not revoked; certificate valid
//!    at the caller's `now`;
//! 3. signature (singly, or in a batch with fallback to find the bad one);
//! 4. chain: duplicate, replay, fork (two signed records for one seq), gap, broken prev-hash,
//!    Lamport regression, record after `WriterClose`.
//!
//! Records are accepted strictly in chain order; a record ahead of the chain is refused with
//! [`VerifyError::Gap`] naming the missing range (the caller fetches it and re-delivers).
//! Nothing here decrypts without the caller's [`DataKey`], does IO or reads a clock.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;

use ed25519_dalek::{Signature, VerifyingKey};

use crate::cert::{CertificateError, WriterCertificate};
use crate::error::OpenError;
use crate::ids::{CapsuleId, Head, RecordHash, WriterId};
use crate::keys::{DataKey, WriterSubkey};
use crate::limits::{VERIFIER_HASH_WINDOW_DEFAULT, VERIFIER_WRITERS_MAX_DEFAULT};
use crate::metadata::CapsuleMetadata;
use crate::record::{RecordKind, SealedRecord, SignedHeader};
use crate::revocation::{RevocationError, RevocationList};
use crate::suite;

/// Which certificate validity time to check against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// Check `not_before_s <= now_s <= not_after_s` (seconds since the Unix epoch).
    At(u64),
    /// Do not check validity times (stores and archival audits that have no trusted clock).
    Ignore,
}

/// Memory bounds of a verifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifierLimits {
    /// Recent hashes remembered per writer (duplicate, replay and fork detection window).
    pub hash_window: usize,
    /// Distinct writers tracked.
    pub writers_max: usize,
}

impl Default for VerifierLimits {
    fn default() -> Self {
        VerifierLimits {
            hash_window: VERIFIER_HASH_WINDOW_DEFAULT,
            writers_max: VERIFIER_WRITERS_MAX_DEFAULT,
        }
    }
}

/// Why a record was refused. Every variant names the writer and sequence number involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The record names another capsule (spliced in from elsewhere).
    #[error("writer {writer} seq {seq}: record belongs to capsule {found}, not this one")]
    WrongCapsule {
        /// The writer named in the record.
        writer: WriterId,
        /// The sequence number.
        seq: u64,
        /// The capsule the record names.
        found: CapsuleId,
    },
    /// Larger than the capsule's `record_bytes_max`.
    #[error("writer {writer} seq {seq}: record of {len} bytes exceeds the capsule limit {max}")]
    RecordTooLarge {
        /// The writer.
        writer: WriterId,
        /// The sequence number.
        seq: u64,
        /// Encoded length.
        len: usize,
        /// The capsule's limit.
        max: usize,
    },
    /// The stored hash does not match the header and body (tampered or corrupted).
    #[error("writer {writer} seq {seq}: hash does not match header and body")]
    BadHash {
        /// The writer.
        writer: WriterId,
        /// The sequence number.
        seq: u64,
    },
    /// The signature does not verify under the writer's certified key.
    #[error("writer {writer} seq {seq}: bad signature")]
    BadSignature {
        /// The writer.
        writer: WriterId,
        /// The sequence number.
        seq: u64,
    },
    /// No certificate is known for the writer (its genesis record was not seen).
    #[error("writer {writer} seq {seq}: unknown writer (genesis record not seen)")]
    UnknownWriter {
        /// The writer.
        writer: WriterId,
        /// The sequence number.
        seq: u64,
    },
    /// The writer's certificate does not verify or does not bind this writer to this capsule.
    #[error("writer {writer}: not certified: {reason}")]
    Uncertified {
        /// The writer.
        writer: WriterId,
        /// Why.
        reason: CertificateError,
    },
    /// The writer's certificate is not valid at the time checked.
    #[error("writer {writer} seq {seq}: certificate not valid: {reason}")]
    Expired {
        /// The writer.
        writer: WriterId,
        /// The sequence number.
        seq: u64,
        /// Expired or not yet valid.
        reason: CertificateError,
    },
    /// The writer is on the revocation list.
    #[error("writer {writer} seq {seq}: writer is revoked")]
    Revoked {
        /// The writer.
        writer: WriterId,
        /// The sequence number.
        seq: u64,
    },
    /// An older record, already accepted, delivered again after the chain moved on.
    #[error("writer {writer} seq {seq}: replay of an old record (head is {head})")]
    Replay {
        /// The writer.
        writer: WriterId,
        /// The sequence number.
        seq: u64,
        /// The writer's current head sequence number.
        head: u64,
    },
    /// The record is ahead of the chain: the range `missing` was not seen.
    #[error("writer {writer}: gap, records {}..{} missing", missing.start, missing.end)]
    Gap {
        /// The writer.
        writer: WriterId,
        /// Missing sequence numbers (end exclusive = the record that arrived).
        missing: Range<u64>,
    },
    /// A record appears out of order in a stored log (found only by log audits that see the
    /// whole sequence, such as `psl_store::verify`).
    #[error("writer {writer} seq {seq}: out of order, expected seq {expected} first")]
    Reordered {
        /// The writer.
        writer: WriterId,
        /// The sequence number that came too early.
        seq: u64,
        /// The sequence number that should have come first (it appears later).
        expected: u64,
    },
    /// The record's prev hash is not the hash of the writer's accepted previous record.
    #[error("writer {writer} seq {seq}: prev hash does not match the accepted record {}", seq.saturating_sub(1))]
    ChainBreak {
        /// The writer.
        writer: WriterId,
        /// The sequence number.
        seq: u64,
    },
    /// Lamport time did not increase along the writer's chain.
    #[error("writer {writer} seq {seq}: lamport {found} not greater than previous {previous}")]
    LamportRegression {
        /// The writer.
        writer: WriterId,
        /// The sequence number.
        seq: u64,
        /// The previous record's Lamport time.
        previous: u64,
        /// This record's.
        found: u64,
    },
    /// A record after the writer's `WriterClose` record.
    #[error("writer {writer} seq {seq}: record after the writer closed at seq {closed_at}")]
    AfterClose {
        /// The writer.
        writer: WriterId,
        /// The sequence number.
        seq: u64,
        /// Sequence number of the `WriterClose` record.
        closed_at: u64,
    },
    /// Two different validly signed records with the same writer and sequence number.
    #[error("writer {writer} seq {seq}: fork, a different signed record {known_hash} was accepted")]
    Fork {
        /// The writer.
        writer: WriterId,
        /// The sequence number.
        seq: u64,
        /// The hash of the record accepted earlier.
        known_hash: RecordHash,
        /// The conflicting record, compactly (half of the evidence).
        conflicting: Box<SignedHeader>,
    },
    /// Too old to compare with what was accepted (outside the hash window).
    #[error("writer {writer} seq {seq}: older than the verifier's window (oldest kept {oldest})")]
    BelowWindow {
        /// The writer.
        writer: WriterId,
        /// The sequence number.
        seq: u64,
        /// Oldest sequence number still remembered.
        oldest: u64,
    },
    /// Fewer records than an authenticated head (e.g. from a sync report) says exist.
    #[error("writer {writer}: truncated, have up to {have:?} but expected up to seq {expected}")]
    Truncated {
        /// The writer.
        writer: WriterId,
        /// The head sequence number held (`None`: nothing).
        have: Option<u64>,
        /// The expected head.
        expected: u64,
    },
    /// The record at an expected head's sequence number has another hash.
    #[error("writer {writer} seq {seq}: hash differs from the expected head")]
    HeadMismatch {
        /// The writer.
        writer: WriterId,
        /// The sequence number.
        seq: u64,
    },
    /// A link names a record of another writer whose accepted hash differs.
    #[error(
        "writer {writer} seq {seq}: link to {linked_writer} seq {linked_seq} has the wrong hash"
    )]
    LinkConflict {
        /// The writer.
        writer: WriterId,
        /// The sequence number.
        seq: u64,
        /// The linked writer.
        linked_writer: WriterId,
        /// The linked sequence number.
        linked_seq: u64,
    },
    /// The verifier already tracks `max` writers.
    #[error("writer {writer}: too many writers (limit {max})")]
    TooManyWriters {
        /// The writer refused.
        writer: WriterId,
        /// The limit.
        max: usize,
    },
}

impl VerifyError {
    /// A short stable name of the failure class (for metrics and CLI output).
    pub fn class(&self) -> &'static str {
        match self {
            VerifyError::WrongCapsule { .. } => "wrong-capsule",
            VerifyError::RecordTooLarge { .. } => "record-too-large",
            VerifyError::BadHash { .. } => "bad-hash",
            VerifyError::BadSignature { .. } => "bad-signature",
            VerifyError::UnknownWriter { .. } => "unknown-writer",
            VerifyError::Uncertified { .. } => "uncertified",
            VerifyError::Expired { .. } => "expired",
            VerifyError::Revoked { .. } => "revoked",
            VerifyError::Replay { .. } => "replay",
            VerifyError::Gap { .. } => "gap",
            VerifyError::Reordered { .. } => "reordered",
            VerifyError::ChainBreak { .. } => "chain-break",
            VerifyError::LamportRegression { .. } => "lamport-regression",
            VerifyError::AfterClose { .. } => "after-close",
            VerifyError::Fork { .. } => "fork",
            VerifyError::BelowWindow { .. } => "below-window",
            VerifyError::Truncated { .. } => "truncated",
            VerifyError::HeadMismatch { .. } => "head-mismatch",
            VerifyError::LinkConflict { .. } => "link-conflict",
            VerifyError::TooManyWriters { .. } => "too-many-writers",
        }
    }
}

/// The outcome of verifying one record that was not refused.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// New and valid; it is now the writer's head.
    Accepted(VerifiedRecord),
    /// The writer's current head again (a harmless duplicate delivery): nothing changed.
    Duplicate {
        /// The writer.
        writer: WriterId,
        /// The sequence number.
        seq: u64,
    },
}

/// A record that passed every check. Only the verifier constructs it.
#[derive(Debug, Clone)]
pub struct VerifiedRecord {
    record: SealedRecord,
}

impl VerifiedRecord {
    /// The record.
    pub fn record(&self) -> &SealedRecord {
        &self.record
    }

    /// Takes the record out.
    pub fn into_record(self) -> SealedRecord {
        self.record
    }

    /// Decrypts the body with the capsule data key (derives the writer subkey each call; use
    /// [`Self::open_body_with`] with a cached subkey on hot paths).
    pub fn open_body(&self, data_key: &DataKey) -> Result<Vec<u8>, OpenError> {
        let subkey = data_key.writer_subkey(&self.record.capsule(), &self.record.writer());
        self.open_body_with(&subkey)
    }

    /// Decrypts the body with the writer's subkey.
    pub fn open_body_with(&self, subkey: &WriterSubkey) -> Result<Vec<u8>, OpenError> {
        open_record_body(&self.record, subkey)
    }
}

/// Decrypts a record body. Callers should verify the record first; AEAD authentication alone
/// proves the body is from a holder of the data key, not which writer sealed it.
pub fn open_record_body(
    record: &SealedRecord,
    subkey: &WriterSubkey,
) -> Result<Vec<u8>, OpenError> {
    let writer = record.writer();
    if record.kind() == RecordKind::Genesis {
        return Err(OpenError::NotEncrypted(writer));
    }
    if subkey.writer != writer || subkey.capsule != record.capsule() {
        return Err(OpenError::WrongSubkey);
    }
    subkey
        .key
        .open(record.seq(), record.header_bytes(), record.body())
        .map_err(|()| OpenError::Authentication {
            writer,
            seq: record.seq(),
        })
}

/// Two validly signed records of one writer with one sequence number: proof of equivocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkEvidence {
    /// The record seen first.
    pub first: SignedHeader,
    /// The conflicting record.
    pub second: SignedHeader,
}

impl ForkEvidence {
    /// Checks that this is real evidence against `certificate`'s writer: same capsule, writer
    /// and sequence number, different hashes, both hashes right and signed by the writer.
    pub fn check(&self, certificate: &WriterCertificate) -> bool {
        let (a, b) = (&self.first.header, &self.second.header);
        a.capsule == b.capsule
            && a.capsule == certificate.capsule
            && a.writer == b.writer
            && a.writer == certificate.writer
            && a.seq == b.seq
            && self.first.hash != self.second.hash
            && self.first.check(&certificate.writer_public_key)
            && self.second.check(&certificate.writer_public_key)
    }
}

struct WriterState {
    certificate: WriterCertificate,
    key: VerifyingKey,
    next_seq: u64,
    head_hash: RecordHash,
    last_lamport: u64,
    closed_at: Option<u64>,
    /// Hashes of seqs `next_seq - window.len() .. next_seq`.
    window: VecDeque<RecordHash>,
}

impl WriterState {
    fn window_start(&self) -> u64 {
        let len = u64::try_from(self.window.len()).unwrap_or(u64::MAX);
        self.next_seq.saturating_sub(len)
    }

    fn hash_at(&self, seq: u64) -> Option<RecordHash> {
        let offset = usize::try_from(seq.checked_sub(self.window_start())?).ok()?;
        self.window.get(offset).copied()
    }
}

/// The outcome of the stateless checks for one record: its writer's key, and the certificate
/// if the record is a genesis record of a writer not yet known.
struct Checked {
    key: VerifyingKey,
    new_certificate: Option<WriterCertificate>,
}

/// Verifies records of one capsule. See the module docs for the order of checks.
pub struct CapsuleVerifier {
    metadata: CapsuleMetadata,
    limits: VerifierLimits,
    writers: HashMap<WriterId, WriterState>,
    revoked: HashSet<WriterId>,
    revocation_serial: Option<u64>,
}

impl std::fmt::Debug for CapsuleVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapsuleVerifier")
            .field("capsule", &self.metadata.id())
            .field("writers", &self.writers.len())
            .field("revoked", &self.revoked.len())
            .finish_non_exhaustive()
    }
}

impl CapsuleVerifier {
    /// A verifier for the capsule described by `metadata`.
    pub fn new(metadata: CapsuleMetadata) -> Self {
        Self::with_limits(metadata, VerifierLimits::default())
    }

    /// A verifier with explicit memory bounds.
    pub fn with_limits(metadata: CapsuleMetadata, limits: VerifierLimits) -> Self {
        let limits = VerifierLimits {
            hash_window: limits.hash_window.max(1),
            writers_max: limits.writers_max,
        };
        CapsuleVerifier {
            metadata,
            limits,
            writers: HashMap::new(),
            revoked: HashSet::new(),
            revocation_serial: None,
        }
    }

    /// The capsule metadata.
    pub fn metadata(&self) -> &CapsuleMetadata {
        &self.metadata
    }

    /// Adds a writer to the revocation list; its records are refused from now on.
    pub fn revoke(&mut self, writer: WriterId) {
        self.revoked.insert(writer);
    }

    /// Applies an owner-signed revocation list: checks its capsule and signature, refuses a list
    /// older than one already applied, and adds its writers to the revocation list (lists only
    /// grow). Records of those writers are refused from now on, even from chains already known.
    pub fn apply_revocations(&mut self, list: &RevocationList) -> Result<(), RevocationError> {
        list.check(&self.metadata)?;
        if let Some(applied) = self.revocation_serial
            && list.serial < applied
        {
            return Err(RevocationError::Stale {
                serial: list.serial,
                applied,
            });
        }
        self.revoked.extend(list.writers.iter().copied());
        self.revocation_serial = Some(list.serial);
        Ok(())
    }

    /// Whether `writer` is revoked.
    pub fn is_revoked(&self, writer: &WriterId) -> bool {
        self.revoked.contains(writer)
    }

    /// Replaces the revocation list.
    pub fn set_revoked(&mut self, revoked: impl IntoIterator<Item = WriterId>) {
        self.revoked = revoked.into_iter().collect();
    }

    /// Starts tracking a writer from an authenticated head (for example from a signed sync
    /// report) without replaying its chain from genesis. The certificate is checked (binding and
    /// validity at `validity`).
    pub fn resume_writer(
        &mut self,
        certificate: &WriterCertificate,
        head: Head,
        last_lamport: u64,
        validity: Validity,
    ) -> Result<(), VerifyError> {
        let writer = certificate.writer;
        let key = certificate
            .check_binding(&self.metadata)
            .map_err(|reason| VerifyError::Uncertified { writer, reason })?;
        if let Validity::At(now_s) = validity {
            certificate
                .check_validity(now_s)
                .map_err(|reason| VerifyError::Expired {
                    writer,
                    seq: head.seq,
                    reason,
                })?;
        }
        if head.writer != writer {
            return Err(VerifyError::Uncertified {
                writer,
                reason: CertificateError::WriterIdMismatch,
            });
        }
        self.check_room(writer)?;
        let mut window = VecDeque::new();
        window.push_back(head.hash);
        self.writers.insert(
            writer,
            WriterState {
                certificate: certificate.clone(),
                key,
                next_seq: head.seq.saturating_add(1),
                head_hash: head.hash,
                last_lamport,
                closed_at: None,
                window,
            },
        );
        Ok(())
    }

    /// Heads of every tracked writer, sorted by writer id.
    pub fn heads(&self) -> Vec<Head> {
        let mut heads: Vec<Head> = self
            .writers
            .iter()
            .filter_map(|(writer, state)| {
                Some(Head {
                    writer: *writer,
                    seq: state.next_seq.checked_sub(1)?,
                    hash: state.head_hash,
                })
            })
            .collect();
        heads.sort_by_key(|head| head.writer);
        heads
    }

    /// The certificate of a tracked writer.
    pub fn certificate(&self, writer: &WriterId) -> Option<&WriterCertificate> {
        self.writers.get(writer).map(|state| &state.certificate)
    }

    /// Whether the writer sealed its `WriterClose` record, and at which seq.
    pub fn closed_at(&self, writer: &WriterId) -> Option<u64> {
        self.writers.get(writer).and_then(|state| state.closed_at)
    }

    /// Verifies one record (signature checked singly).
    pub fn verify(
        &mut self,
        record: &SealedRecord,
        validity: Validity,
    ) -> Result<Verdict, VerifyError> {
        let checked = self.check_stateless(record, validity, &HashMap::new())?;
        verify_signature(record, &checked.key)?;
        self.apply(record, checked)
    }

    /// Verifies a slice of records in order, checking all their signatures with one Ed25519
    /// batch verification; if the batch fails, each signature is checked singly to find the bad
    /// ones. Returns one result per record, in order; a refused record does not stop the rest.
    pub fn verify_batch(
        &mut self,
        records: &[SealedRecord],
        validity: Validity,
    ) -> Vec<Result<Verdict, VerifyError>> {
        // Certificates carried by genesis records inside this batch, so later records of a new
        // writer in the same batch find their key.
        let mut batch_keys: HashMap<WriterId, VerifyingKey> = HashMap::new();
        let mut checked: Vec<Result<Checked, VerifyError>> = Vec::with_capacity(records.len());
        for record in records {
            let result = self.check_stateless(record, validity, &batch_keys);
            if let Ok(Checked {
                key,
                new_certificate: Some(certificate),
            }) = &result
            {
                batch_keys.entry(certificate.writer).or_insert(*key);
            }
            checked.push(result);
        }
        let signatures_ok = batch_signatures(records, &checked);
        records
            .iter()
            .zip(checked)
            .zip(signatures_ok)
            .map(|((record, checked), signature)| {
                let checked = checked?;
                signature?;
                self.apply(record, checked)
            })
            .collect()
    }

    /// Checks that this verifier holds at least the `expected` heads (for example from a signed
    /// sync report): detects truncation and diverging heads. Returns the first failure.
    pub fn check_heads(&self, expected: &[Head]) -> Result<(), VerifyError> {
        for head in expected {
            let writer = head.writer;
            let Some(state) = self.writers.get(&writer) else {
                return Err(VerifyError::Truncated {
                    writer,
                    have: None,
                    expected: head.seq,
                });
            };
            if state.next_seq <= head.seq {
                return Err(VerifyError::Truncated {
                    writer,
                    have: state.next_seq.checked_sub(1),
                    expected: head.seq,
                });
            }
            match state.hash_at(head.seq) {
                Some(hash) if hash == head.hash => {}
                Some(_) => {
                    return Err(VerifyError::HeadMismatch {
                        writer,
                        seq: head.seq,
                    });
                }
                None => {
                    return Err(VerifyError::BelowWindow {
                        writer,
                        seq: head.seq,
                        oldest: state.window_start(),
                    });
                }
            }
        }
        Ok(())
    }

    fn check_room(&self, writer: WriterId) -> Result<(), VerifyError> {
        if !self.writers.contains_key(&writer) && self.writers.len() >= self.limits.writers_max {
            return Err(VerifyError::TooManyWriters {
                writer,
                max: self.limits.writers_max,
            });
        }
        Ok(())
    }

    /// Steps 1 and 2: everything that does not depend on chain state.
    fn check_stateless(
        &self,
        record: &SealedRecord,
        validity: Validity,
        batch_keys: &HashMap<WriterId, VerifyingKey>,
    ) -> Result<Checked, VerifyError> {
        let (writer, seq) = (record.writer(), record.seq());
        if record.capsule() != self.metadata.id() {
            return Err(VerifyError::WrongCapsule {
                writer,
                seq,
                found: record.capsule(),
            });
        }
        let max = usize::try_from(self.metadata.params().record_bytes_max).unwrap_or(usize::MAX);
        if record.len() > max {
            return Err(VerifyError::RecordTooLarge {
                writer,
                seq,
                len: record.len(),
                max,
            });
        }
        if record.compute_hash() != record.stored_hash() {
            return Err(VerifyError::BadHash { writer, seq });
        }
        if self.revoked.contains(&writer) {
            return Err(VerifyError::Revoked { writer, seq });
        }
        let (certificate, key, new_certificate) = match self.writers.get(&writer) {
            Some(state) => (state.certificate.clone(), state.key, None),
            None => {
                let certificate = match record.certificate() {
                    Some(Ok(certificate)) => certificate,
                    Some(Err(_)) => {
                        return Err(VerifyError::Uncertified {
                            writer,
                            reason: CertificateError::BadOwnerSignature,
                        });
                    }
                    None => match batch_keys.get(&writer) {
                        // Key from a genesis earlier in the same batch; validity was checked
                        // on that genesis.
                        Some(key) => {
                            return Ok(Checked {
                                key: *key,
                                new_certificate: None,
                            });
                        }
                        None => return Err(VerifyError::UnknownWriter { writer, seq }),
                    },
                };
                if certificate.writer != writer {
                    return Err(VerifyError::Uncertified {
                        writer,
                        reason: CertificateError::WriterIdMismatch,
                    });
                }
                let key = certificate
                    .check_binding(&self.metadata)
                    .map_err(|reason| VerifyError::Uncertified { writer, reason })?;
                (certificate.clone(), key, Some(certificate))
            }
        };
        if let Validity::At(now_s) = validity {
            certificate
                .check_validity(now_s)
                .map_err(|reason| VerifyError::Expired {
                    writer,
                    seq,
                    reason,
                })?;
        }
        Ok(Checked {
            key,
            new_certificate,
        })
    }

    /// Step 4: chain state. The signature has been checked.
    fn apply(&mut self, record: &SealedRecord, checked: Checked) -> Result<Verdict, VerifyError> {
        let (writer, seq) = (record.writer(), record.seq());
        let hash = record.stored_hash();
        if !self.writers.contains_key(&writer) {
            // Unknown writer: only its genesis record can start the chain.
            let Some(certificate) = checked.new_certificate else {
                return Err(VerifyError::UnknownWriter { writer, seq });
            };
            self.check_room(writer)?;
            self.check_links(record)?;
            let mut window = VecDeque::new();
            window.push_back(hash);
            self.writers.insert(
                writer,
                WriterState {
                    certificate,
                    key: checked.key,
                    next_seq: 1,
                    head_hash: hash,
                    last_lamport: record.header().lamport,
                    closed_at: None,
                    window,
                },
            );
            return Ok(Verdict::Accepted(VerifiedRecord {
                record: record.clone(),
            }));
        }
        self.check_links(record)?;
        let hash_window = self.limits.hash_window;
        let Some(state) = self.writers.get_mut(&writer) else {
            return Err(VerifyError::UnknownWriter { writer, seq });
        };
        if seq < state.next_seq {
            let head = state.next_seq.saturating_sub(1);
            return match state.hash_at(seq) {
                Some(known) if known == hash && seq == head => {
                    Ok(Verdict::Duplicate { writer, seq })
                }
                Some(known) if known == hash => Err(VerifyError::Replay { writer, seq, head }),
                Some(known_hash) => Err(VerifyError::Fork {
                    writer,
                    seq,
                    known_hash,
                    conflicting: Box::new(record.signed_header()),
                }),
                None => Err(VerifyError::BelowWindow {
                    writer,
                    seq,
                    oldest: state.window_start(),
                }),
            };
        }
        if seq > state.next_seq {
            return Err(VerifyError::Gap {
                writer,
                missing: state.next_seq..seq,
            });
        }
        if let Some(closed_at) = state.closed_at {
            return Err(VerifyError::AfterClose {
                writer,
                seq,
                closed_at,
            });
        }
        if record.header().prev_hash != state.head_hash {
            return Err(VerifyError::ChainBreak { writer, seq });
        }
        let lamport = record.header().lamport;
        if lamport <= state.last_lamport {
            return Err(VerifyError::LamportRegression {
                writer,
                seq,
                previous: state.last_lamport,
                found: lamport,
            });
        }
        state.next_seq = seq.saturating_add(1);
        state.head_hash = hash;
        state.last_lamport = lamport;
        if record.kind() == RecordKind::WriterClose {
            state.closed_at = Some(seq);
        }
        state.window.push_back(hash);
        while state.window.len() > hash_window {
            state.window.pop_front();
        }
        Ok(Verdict::Accepted(VerifiedRecord {
            record: record.clone(),
        }))
    }

    /// Links to records this verifier has accepted must carry the accepted hash.
    fn check_links(&self, record: &SealedRecord) -> Result<(), VerifyError> {
        for link in &record.header().links {
            let Some(linked) = self.writers.get(&link.writer) else {
                continue;
            };
            if let Some(hash) = linked.hash_at(link.seq)
                && hash != link.hash
            {
                return Err(VerifyError::LinkConflict {
                    writer: record.writer(),
                    seq: record.seq(),
                    linked_writer: link.writer,
                    linked_seq: link.seq,
                });
            }
        }
        Ok(())
    }
}

fn verify_signature(record: &SealedRecord, key: &VerifyingKey) -> Result<(), VerifyError> {
    let message = suite::record_signing_message(&record.stored_hash());
    let signature = Signature::from_bytes(&record.signature());
    key.verify_strict(&message, &signature)
        .map_err(|_| VerifyError::BadSignature {
            writer: record.writer(),
            seq: record.seq(),
        })
}

/// Checks the signatures of every record whose stateless checks passed: one batch, and on
/// failure one by one. Records that failed earlier get `Ok` here (their earlier error wins).
fn batch_signatures(
    records: &[SealedRecord],
    checked: &[Result<Checked, VerifyError>],
) -> Vec<Result<(), VerifyError>> {
    let mut messages: Vec<[u8; 68]> = Vec::with_capacity(records.len());
    let mut signatures = Vec::with_capacity(records.len());
    let mut keys = Vec::with_capacity(records.len());
    for (record, checked) in records.iter().zip(checked) {
        if let Ok(checked) = checked {
            messages.push(suite::record_signing_message(&record.stored_hash()));
            signatures.push(Signature::from_bytes(&record.signature()));
            keys.push(checked.key);
        }
    }
    let message_refs: Vec<&[u8]> = messages.iter().map(|message| &message[..]).collect();
    let all_ok = message_refs.is_empty()
        || ed25519_dalek::verify_batch(&message_refs, &signatures, &keys).is_ok();
    records
        .iter()
        .zip(checked)
        .map(|(record, checked)| match checked {
            Ok(checked) if !all_ok => verify_signature(record, &checked.key),
            _ => Ok(()),
        })
        .collect()
}

//! The writer: one worker incarnation's side of its chain. It owns the writer key pair, the next
//! sequence number, the previous hash and the last Lamport time, and produces sealed records.
//!
//! Sealing is split in two so a pool can parallelise it without breaking the chain:
//! [`CapsuleWriter::prepare`] encrypts, hashes and advances the chain (serial per writer, since
//! each header carries the previous hash); [`PreparedRecord::sign`] only signs the hash
//! (independent per record, so any thread may do it, in any order).
//!
//! The writer state lives only in memory. A restarted worker must start a *new* writer with a
//! fresh key pair (and so a fresh writer id and AEAD subkey); that is what makes the derived
//! nonces safe (see `docs/formats.md`).

use std::sync::Arc;

use crate::body::{self, Update};
use crate::cert::WriterCertificate;
use crate::error::SealError;
use crate::ids::{CapsuleId, Head, RecordHash, WriterId};
use crate::keys::{DataKey, WriterKeyPair, WriterSubkey};
use crate::limits::BODY_PLAINTEXT_BYTES_MAX;
use crate::metadata::CapsuleMetadata;
use crate::record::{Link, RecordHeader, RecordKind, SealedRecord, TRAILER_BYTES, check_links};
use crate::suite::{self, AEAD_TAG_BYTES};

/// One writer incarnation.
pub struct CapsuleWriter {
    capsule: CapsuleId,
    record_bytes_max: usize,
    keys: Arc<WriterKeyPair>,
    subkey: WriterSubkey,
    next_seq: u64,
    prev_hash: RecordHash,
    last_lamport: u64,
    closed: bool,
}

impl std::fmt::Debug for CapsuleWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapsuleWriter")
            .field("writer", &self.keys.writer_id())
            .field("next_seq", &self.next_seq)
            .field("last_lamport", &self.last_lamport)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// A record that is encrypted and hashed, with its chain position fixed, but not yet signed.
pub struct PreparedRecord {
    bytes: Vec<u8>,
    header: RecordHeader,
    header_len: usize,
    hash: RecordHash,
}

impl PreparedRecord {
    /// The record hash that will be signed.
    pub fn hash(&self) -> RecordHash {
        self.hash
    }

    /// Signs the record with the writer key it was prepared for.
    pub fn sign(mut self, keys: &WriterKeyPair) -> SealedRecord {
        let signature = keys.sign(&suite::record_signing_message(&self.hash));
        let start = self.bytes.len().saturating_sub(64);
        if let Some(dst) = self.bytes.get_mut(start..) {
            dst.copy_from_slice(&signature);
        }
        SealedRecord::from_parts(self.bytes, self.header, self.header_len)
    }
}

impl CapsuleWriter {
    /// Starts a writer incarnation and returns it with its genesis record (seq 0), which carries
    /// `certificate` in the clear. The certificate must be for these keys and this capsule.
    pub fn start(
        metadata: &CapsuleMetadata,
        data_key: &DataKey,
        keys: WriterKeyPair,
        certificate: &WriterCertificate,
        lamport: u64,
        links: &[Link],
    ) -> Result<(Self, SealedRecord), SealError> {
        if certificate.writer_public_key != keys.public_key() {
            return Err(SealError::CertificateMismatch(
                "certificate is for another key",
            ));
        }
        certificate
            .check_binding(metadata)
            .map_err(|_| SealError::CertificateMismatch("certificate does not verify"))?;
        let capsule = metadata.id();
        let writer = keys.writer_id();
        let mut state = CapsuleWriter {
            capsule,
            record_bytes_max: usize::try_from(metadata.params().record_bytes_max)
                .unwrap_or(usize::MAX),
            keys: Arc::new(keys),
            subkey: data_key.writer_subkey(&capsule, &writer),
            next_seq: 0,
            prev_hash: RecordHash::ZERO,
            last_lamport: 0,
            closed: false,
        };
        let cert_bytes = certificate.encode();
        let prepared = state.prepare_inner(RecordKind::Genesis, lamport, links, &cert_bytes)?;
        let genesis = prepared.sign(&state.keys);
        Ok((state, genesis))
    }

    /// The writer id.
    pub fn writer_id(&self) -> WriterId {
        self.keys.writer_id()
    }

    /// The capsule.
    pub fn capsule(&self) -> CapsuleId {
        self.capsule
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The Lamport time of the latest record.
    pub fn last_lamport(&self) -> u64 {
        self.last_lamport
    }

    /// The head of this writer's chain (the latest prepared record).
    pub fn head(&self) -> Head {
        Head {
            writer: self.writer_id(),
            seq: self.next_seq.saturating_sub(1),
            hash: self.prev_hash,
        }
    }

    /// The key pair, shared, for signing prepared records on other threads.
    pub fn signer(&self) -> Arc<WriterKeyPair> {
        Arc::clone(&self.keys)
    }

    /// Whether a `WriterClose` record was sealed.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Encrypts and hashes an opaque plaintext body as the next record and advances the chain.
    /// `lamport` must exceed the previous record's; `links` may be in any order.
    pub fn prepare(
        &mut self,
        kind: RecordKind,
        lamport: u64,
        links: &[Link],
        plaintext: &[u8],
    ) -> Result<PreparedRecord, SealError> {
        if kind == RecordKind::Genesis {
            return Err(SealError::KindNotSealable("genesis"));
        }
        self.prepare_inner(kind, lamport, links, plaintext)
    }

    /// [`Self::prepare`] for an `Updates` record, encoding the batch straight into the record.
    pub fn prepare_updates(
        &mut self,
        lamport: u64,
        links: &[Link],
        updates: &[Update],
    ) -> Result<PreparedRecord, SealError> {
        let len = body::encoded_len(updates)?;
        self.prepare_with(RecordKind::Updates, lamport, links, len, |out| {
            body::encode_updates_into(updates, out).map_err(SealError::from)
        })
    }

    /// Prepares and signs in one step.
    pub fn seal(
        &mut self,
        kind: RecordKind,
        lamport: u64,
        links: &[Link],
        plaintext: &[u8],
    ) -> Result<SealedRecord, SealError> {
        Ok(self
            .prepare(kind, lamport, links, plaintext)?
            .sign(&self.keys))
    }

    /// Prepares and signs an `Updates` record in one step.
    pub fn seal_updates(
        &mut self,
        lamport: u64,
        links: &[Link],
        updates: &[Update],
    ) -> Result<SealedRecord, SealError> {
        Ok(self
            .prepare_updates(lamport, links, updates)?
            .sign(&self.keys))
    }

    /// Seals the final `WriterClose` record; the writer refuses to seal anything after it.
    pub fn close(&mut self, lamport: u64, plaintext: &[u8]) -> Result<SealedRecord, SealError> {
        let record = self.seal(RecordKind::WriterClose, lamport, &[], plaintext)?;
        self.closed = true;
        Ok(record)
    }

    fn prepare_inner(
        &mut self,
        kind: RecordKind,
        lamport: u64,
        links: &[Link],
        plaintext: &[u8],
    ) -> Result<PreparedRecord, SealError> {
        self.prepare_with(kind, lamport, links, plaintext.len(), |out| {
            out.extend_from_slice(plaintext);
            Ok(())
        })
    }

    /// Builds header || plaintext (written by `fill`, exactly `body_plain_len` bytes), encrypts
    /// the plaintext in place with the header as associated data, hashes, and advances the chain.
    fn prepare_with(
        &mut self,
        kind: RecordKind,
        lamport: u64,
        links: &[Link],
        body_plain_len: usize,
        fill: impl FnOnce(&mut Vec<u8>) -> Result<(), SealError>,
    ) -> Result<PreparedRecord, SealError> {
        let writer = self.writer_id();
        if self.closed {
            return Err(SealError::WriterClosed(writer));
        }
        if body_plain_len > BODY_PLAINTEXT_BYTES_MAX {
            return Err(SealError::BodyTooLarge {
                len: body_plain_len,
                max: BODY_PLAINTEXT_BYTES_MAX,
            });
        }
        let genesis = kind == RecordKind::Genesis;
        if !genesis && lamport <= self.last_lamport {
            return Err(SealError::LamportNotIncreasing {
                previous: self.last_lamport,
                given: lamport,
            });
        }
        let next_after = self
            .next_seq
            .checked_add(1)
            .ok_or(SealError::SequenceExhausted(writer))?;
        let mut links = links.to_vec();
        links.sort_by_key(|link| link.writer);
        check_links(&writer, &links).map_err(SealError::InvalidLinks)?;

        let body_len = if genesis {
            body_plain_len
        } else {
            body_plain_len.saturating_add(AEAD_TAG_BYTES)
        };
        let header = RecordHeader {
            kind,
            capsule: self.capsule,
            writer,
            seq: self.next_seq,
            lamport,
            prev_hash: self.prev_hash,
            body_len: u32::try_from(body_len).map_err(|_| SealError::BodyTooLarge {
                len: body_len,
                max: BODY_PLAINTEXT_BYTES_MAX,
            })?,
            links,
        };
        let header_len = header.encoded_len();
        let total = header_len
            .saturating_add(body_len)
            .saturating_add(TRAILER_BYTES);
        if total > self.record_bytes_max {
            return Err(SealError::BodyTooLarge {
                len: body_plain_len,
                max: self
                    .record_bytes_max
                    .saturating_sub(header_len)
                    .saturating_sub(TRAILER_BYTES),
            });
        }
        let mut bytes = Vec::with_capacity(total);
        header.encode_into(&mut bytes);
        fill(&mut bytes)?;
        if bytes.len() != header_len.saturating_add(body_plain_len) {
            return Err(SealError::Aead);
        }
        if !genesis {
            let (aad, plain) = bytes.split_at_mut(header_len);
            let tag = self
                .subkey
                .key
                .seal(header.seq, aad, plain)
                .map_err(|_| SealError::Aead)?;
            bytes.extend_from_slice(&tag);
        }
        let digest = suite::body_digest(bytes.get(header_len..).unwrap_or(&[]));
        let hash = suite::record_hash(bytes.get(..header_len).unwrap_or(&[]), &digest);
        bytes.extend_from_slice(&hash.0);
        bytes.extend_from_slice(&[0u8; 64]);

        self.next_seq = next_after;
        self.prev_hash = hash;
        self.last_lamport = lamport;
        Ok(PreparedRecord {
            bytes,
            header,
            header_len,
            hash,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::TestCapsule;
    use crate::verify::{CapsuleVerifier, Validity, Verdict, VerifyError};

    fn started(capsule: &TestCapsule) -> (CapsuleWriter, SealedRecord) {
        let (keys, certificate) = capsule.writer(1);
        CapsuleWriter::start(
            &capsule.metadata,
            &capsule.data_key,
            keys,
            &certificate,
            5,
            &[],
        )
        .unwrap()
    }

    #[test]
    fn writer_enforces_lamport_links_and_close() {
        let capsule = TestCapsule::new("writer", 1);
        let (mut writer, _) = started(&capsule);
        assert!(matches!(
            writer.seal(RecordKind::Heartbeat, 5, &[], b""),
            Err(SealError::LamportNotIncreasing { .. })
        ));
        let own = Link {
            writer: writer.writer_id(),
            seq: 0,
            hash: RecordHash::ZERO,
        };
        assert!(matches!(
            writer.seal(RecordKind::Heartbeat, 6, &[own], b""),
            Err(SealError::InvalidLinks(_))
        ));
        assert!(matches!(
            writer.seal(RecordKind::Genesis, 6, &[], b""),
            Err(SealError::KindNotSealable(_))
        ));
        writer.close(6, b"bye").unwrap();
        assert!(matches!(
            writer.seal(RecordKind::Heartbeat, 7, &[], b""),
            Err(SealError::WriterClosed(_))
        ));
    }

    #[test]
    fn verifier_refuses_lamport_regression_and_records_after_close() {
        let capsule = TestCapsule::new("writer", 2);
        let (mut writer, genesis) = started(&capsule);
        let mut verifier = CapsuleVerifier::new(capsule.metadata.clone());
        assert!(matches!(
            verifier.verify(&genesis, Validity::Ignore),
            Ok(Verdict::Accepted(_))
        ));
        // Bypass the writer's own check to forge a signed regression.
        writer.last_lamport = 0;
        let regressed = writer.seal(RecordKind::Heartbeat, 3, &[], b"").unwrap();
        assert!(matches!(
            verifier.verify(&regressed, Validity::Ignore),
            Err(VerifyError::LamportRegression {
                previous: 5,
                found: 3,
                ..
            })
        ));

        let (mut writer, genesis) = started(&TestCapsule::new("writer", 3));
        let capsule = TestCapsule::new("writer", 3);
        let mut verifier = CapsuleVerifier::new(capsule.metadata.clone());
        verifier.verify(&genesis, Validity::Ignore).unwrap();
        let close = writer.close(6, b"").unwrap();
        verifier.verify(&close, Validity::Ignore).unwrap();
        writer.closed = false;
        let after = writer.seal(RecordKind::Heartbeat, 7, &[], b"").unwrap();
        assert!(matches!(
            verifier.verify(&after, Validity::Ignore),
            Err(VerifyError::AfterClose { closed_at: 1, .. })
        ));
    }

    #[test]
    fn pool_keeps_order_with_any_thread_count() {
        let capsule = TestCapsule::new("pool", 4);
        for threads in [0, 1, 3] {
            let pool = crate::CryptoPool::new(threads, 8).unwrap();
            let (mut writer, genesis) = started(&capsule);
            let requests: Vec<_> = (0..40u64)
                .map(|i| {
                    let updates =
                        vec![crate::Update::put(i.to_le_bytes().to_vec(), vec![1u8; 100])];
                    crate::SealRequest::updates(10 + i, updates)
                })
                .collect();
            let records = pool.seal_batch(&mut writer, &requests).unwrap();
            let mut verifier = CapsuleVerifier::new(capsule.metadata.clone());
            verifier.verify(&genesis, Validity::Ignore).unwrap();
            for (i, result) in verifier
                .verify_batch(&records, Validity::Ignore)
                .iter()
                .enumerate()
            {
                assert!(
                    matches!(result, Ok(Verdict::Accepted(_))),
                    "{threads} threads, record {i}"
                );
            }
            let bad = [crate::SealRequest::updates(1, vec![])];
            assert!(pool.seal_batch(&mut writer, &bad).is_err());
        }
    }
}

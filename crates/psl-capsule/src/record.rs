//! The record format: header, sealed body, hash and signature; canonical encoding and decoding.
//!
//! Layout of one record (integers little-endian; sizes in bytes):
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 1 | format version (1) |
//! | 1 | 1 | kind ([`RecordKind`]) |
//! | 2 | 32 | capsule id |
//! | 34 | 16 | writer id |
//! | 50 | 8 | seq (per-writer, gap-free, genesis = 0) |
//! | 58 | 8 | lamport |
//! | 66 | 32 | prev hash (all zero for seq 0) |
//! | 98 | 4 | body length b |
//! | 102 | 1 | link count n (<= 16) |
//! | 103 | 56 n | links: writer id (16), seq (8), hash (32); sorted by writer id, unique |
//! | h = 103 + 56 n | b | body: AEAD ciphertext + 16-byte tag; for genesis the clear certificate |
//! | h + b | 32 | hash = BLAKE3-derive("record hash", header bytes, BLAKE3-derive("body digest", body)) |
//! | h + b + 32 | 64 | Ed25519 signature over `PSL DataCapsule v1 record signature\0` and the hash |
//!
//! Decoding checks the layout and the limits only; whether the hash and signature are right and
//! whether the record fits its chain is [`crate::verify`]'s job.

use std::sync::Arc;

use crate::cert::{CERTIFICATE_BYTES, WriterCertificate};
use crate::codec::Reader;
use crate::error::DecodeError;
use crate::ids::{CapsuleId, Head, RecordHash, WriterId};
use crate::limits::{LINKS_MAX, RECORD_BYTES_MAX};
use crate::suite::{self, AEAD_TAG_BYTES, SIGNATURE_BYTES};

/// Format version written in byte 0 of every record.
pub const RECORD_VERSION: u8 = 1;
/// Size of the fixed part of the header, in bytes.
pub const HEADER_FIXED_BYTES: usize = 103;
/// Size of one encoded link, in bytes.
pub const LINK_BYTES: usize = 56;
/// Bytes after the body: hash and signature.
pub const TRAILER_BYTES: usize = 32 + SIGNATURE_BYTES;
/// Smallest possible encoded record (no links, empty sealed body = tag only), in bytes.
pub const RECORD_BYTES_MIN: usize = HEADER_FIXED_BYTES + AEAD_TAG_BYTES + TRAILER_BYTES;

/// What a record carries. Unknown kind bytes are a decode error, not an extension point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKind {
    /// Sequence 0 of every writer: the writer certificate in the clear.
    Genesis,
    /// A batch of key-value updates (see [`crate::body`]).
    Updates,
    /// A lock release with its watermark (payload defined by the SCL).
    LockRelease,
    /// A sync report of writer heads (payload defined by the SCL).
    SyncReport,
    /// A CapsuleDB LSM block.
    LsmBlock,
    /// A liveness heartbeat.
    Heartbeat,
    /// The last record of a writer incarnation; nothing may follow it.
    WriterClose,
}

impl RecordKind {
    /// Every kind, in wire-byte order.
    pub const ALL: [RecordKind; 7] = [
        RecordKind::Genesis,
        RecordKind::Updates,
        RecordKind::LockRelease,
        RecordKind::SyncReport,
        RecordKind::LsmBlock,
        RecordKind::Heartbeat,
        RecordKind::WriterClose,
    ];

    /// The wire byte.
    pub fn to_byte(self) -> u8 {
        match self {
            RecordKind::Genesis => 1,
            RecordKind::Updates => 2,
            RecordKind::LockRelease => 3,
            RecordKind::SyncReport => 4,
            RecordKind::LsmBlock => 5,
            RecordKind::Heartbeat => 6,
            RecordKind::WriterClose => 7,
        }
    }

    /// Parses a wire byte.
    pub fn from_byte(byte: u8) -> Result<Self, DecodeError> {
        RecordKind::ALL
            .iter()
            .copied()
            .find(|kind| kind.to_byte() == byte)
            .ok_or(DecodeError::UnknownKind(byte))
    }

    /// A lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Genesis => "genesis",
            RecordKind::Updates => "updates",
            RecordKind::LockRelease => "lock-release",
            RecordKind::SyncReport => "sync-report",
            RecordKind::LsmBlock => "lsm-block",
            RecordKind::Heartbeat => "heartbeat",
            RecordKind::WriterClose => "writer-close",
        }
    }
}

impl std::fmt::Display for RecordKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A link from a record to another writer's head (the capsule is a DAG of per-writer chains).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Link {
    /// The other writer.
    pub writer: WriterId,
    /// The sequence number of the linked record.
    pub seq: u64,
    /// The hash of the linked record.
    pub hash: RecordHash,
}

impl From<Head> for Link {
    fn from(head: Head) -> Self {
        Link {
            writer: head.writer,
            seq: head.seq,
            hash: head.hash,
        }
    }
}

/// A decoded record header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// The record kind.
    pub kind: RecordKind,
    /// The capsule.
    pub capsule: CapsuleId,
    /// The writer incarnation.
    pub writer: WriterId,
    /// Per-writer sequence number.
    pub seq: u64,
    /// Lamport time (strictly increasing per writer).
    pub lamport: u64,
    /// Hash of the writer's previous record ([`RecordHash::ZERO`] for seq 0).
    pub prev_hash: RecordHash,
    /// Body length in bytes.
    pub body_len: u32,
    /// Links to other writers' heads, sorted by writer id.
    pub links: Vec<Link>,
}

impl RecordHeader {
    /// Encoded length of this header, in bytes.
    pub fn encoded_len(&self) -> usize {
        HEADER_FIXED_BYTES.saturating_add(LINK_BYTES.saturating_mul(self.links.len()))
    }

    /// Appends the canonical encoding to `out`. The caller guarantees `links.len() <= 16`.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(RECORD_VERSION);
        out.push(self.kind.to_byte());
        out.extend_from_slice(&self.capsule.0);
        out.extend_from_slice(&self.writer.0);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.lamport.to_le_bytes());
        out.extend_from_slice(&self.prev_hash.0);
        out.extend_from_slice(&self.body_len.to_le_bytes());
        out.push(u8::try_from(self.links.len()).unwrap_or(u8::MAX));
        for link in &self.links {
            out.extend_from_slice(&link.writer.0);
            out.extend_from_slice(&link.seq.to_le_bytes());
            out.extend_from_slice(&link.hash.0);
        }
    }

    /// Decodes a header from the front of `reader` and checks its internal consistency.
    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let version = reader.u8("record version")?;
        if version != RECORD_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                what: "record",
                version,
            });
        }
        let kind = RecordKind::from_byte(reader.u8("record kind")?)?;
        let capsule = CapsuleId(reader.array("capsule id")?);
        let writer = WriterId(reader.array("writer id")?);
        let seq = reader.u64("seq")?;
        let lamport = reader.u64("lamport")?;
        let prev_hash = RecordHash(reader.array("prev hash")?);
        let body_len = reader.u32("body length")?;
        let n_links = usize::from(reader.u8("link count")?);
        if n_links > LINKS_MAX {
            return Err(DecodeError::TooLarge {
                what: "links",
                len: n_links,
                max: LINKS_MAX,
            });
        }
        let mut links = Vec::with_capacity(n_links);
        for _ in 0..n_links {
            links.push(Link {
                writer: WriterId(reader.array("link writer id")?),
                seq: reader.u64("link seq")?,
                hash: RecordHash(reader.array("link hash")?),
            });
        }
        let header = RecordHeader {
            kind,
            capsule,
            writer,
            seq,
            lamport,
            prev_hash,
            body_len,
            links,
        };
        header.check_consistency()?;
        Ok(header)
    }

    /// Rules every header obeys regardless of chain state.
    fn check_consistency(&self) -> Result<(), DecodeError> {
        let genesis = self.kind == RecordKind::Genesis;
        if genesis != (self.seq == 0) {
            return Err(DecodeError::Invalid {
                what: "record kind",
                reason: "seq 0 must be genesis and genesis must be seq 0",
            });
        }
        if genesis != (self.prev_hash == RecordHash::ZERO) {
            return Err(DecodeError::Invalid {
                what: "prev hash",
                reason: "must be all zero exactly for seq 0",
            });
        }
        let body_len = usize::try_from(self.body_len).unwrap_or(usize::MAX);
        if genesis && body_len != CERTIFICATE_BYTES {
            return Err(DecodeError::Invalid {
                what: "genesis body",
                reason: "must be one writer certificate",
            });
        }
        if !genesis && body_len < AEAD_TAG_BYTES {
            return Err(DecodeError::Invalid {
                what: "body length",
                reason: "shorter than the AEAD tag",
            });
        }
        check_links(&self.writer, &self.links).map_err(|reason| DecodeError::Invalid {
            what: "links",
            reason,
        })
    }
}

/// Links must be sorted by writer id, unique, and not point at the record's own writer.
pub(crate) fn check_links(own: &WriterId, links: &[Link]) -> Result<(), &'static str> {
    if links.len() > LINKS_MAX {
        return Err("more than LINKS_MAX links");
    }
    if links.iter().any(|link| link.writer == *own) {
        return Err("link to the record's own writer");
    }
    if links
        .windows(2)
        .any(|pair| matches!(pair, [a, b] if a.writer >= b.writer))
    {
        return Err("links not sorted by writer id or duplicated");
    }
    Ok(())
}

/// A complete record as it travels and is stored: canonical bytes plus the decoded header.
///
/// Holding a `SealedRecord` means only that the bytes are well formed; it says nothing about
/// the hash, signature or chain. Cloning is cheap (the bytes are shared).
#[derive(Clone, PartialEq, Eq)]
pub struct SealedRecord {
    bytes: Arc<[u8]>,
    header: RecordHeader,
    header_len: usize,
}

impl std::fmt::Debug for SealedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SealedRecord({} {} seq {} lamport {}, {} bytes)",
            self.header.kind,
            self.header.writer,
            self.header.seq,
            self.header.lamport,
            self.bytes.len()
        )
    }
}

impl SealedRecord {
    /// Decodes a record, checking the layout and [`RECORD_BYTES_MAX`] first.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_shared(Arc::from(check_size(bytes)?))
    }

    /// Decodes a record from an owned buffer.
    pub fn decode_vec(bytes: Vec<u8>) -> Result<Self, DecodeError> {
        check_size(&bytes)?;
        Self::decode_shared(Arc::from(bytes))
    }

    fn decode_shared(bytes: Arc<[u8]>) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(&bytes);
        let header = RecordHeader::decode(&mut reader)?;
        let header_len = reader.position();
        let body_len = usize::try_from(header.body_len).unwrap_or(usize::MAX);
        reader.take(body_len, "record body")?;
        reader.take(TRAILER_BYTES, "record hash and signature")?;
        reader.finish("record")?;
        Ok(SealedRecord {
            bytes,
            header,
            header_len,
        })
    }

    /// Builds a record from parts the writer just produced (trusted, already consistent).
    pub(crate) fn from_parts(bytes: Vec<u8>, header: RecordHeader, header_len: usize) -> Self {
        SealedRecord {
            bytes: Arc::from(bytes),
            header,
            header_len,
        }
    }

    /// The canonical bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The shared canonical bytes.
    pub fn shared_bytes(&self) -> Arc<[u8]> {
        Arc::clone(&self.bytes)
    }

    /// Encoded length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a record is never empty. Present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The decoded header.
    pub fn header(&self) -> &RecordHeader {
        &self.header
    }

    /// The record kind.
    pub fn kind(&self) -> RecordKind {
        self.header.kind
    }

    /// The writer.
    pub fn writer(&self) -> WriterId {
        self.header.writer
    }

    /// The per-writer sequence number.
    pub fn seq(&self) -> u64 {
        self.header.seq
    }

    /// The capsule named in the header.
    pub fn capsule(&self) -> CapsuleId {
        self.header.capsule
    }

    /// The encoded header bytes (the AEAD associated data).
    pub fn header_bytes(&self) -> &[u8] {
        self.bytes.get(..self.header_len).unwrap_or(&[])
    }

    fn body_end(&self) -> usize {
        self.bytes.len().saturating_sub(TRAILER_BYTES)
    }

    /// The body: AEAD ciphertext with tag, or the clear certificate of a genesis record.
    pub fn body(&self) -> &[u8] {
        self.bytes
            .get(self.header_len..self.body_end())
            .unwrap_or(&[])
    }

    /// The hash stored in the record (not recomputed).
    pub fn stored_hash(&self) -> RecordHash {
        let mut hash = [0u8; 32];
        if let Some(src) = self
            .bytes
            .get(self.body_end()..self.body_end().saturating_add(32))
        {
            hash.copy_from_slice(src);
        }
        RecordHash(hash)
    }

    /// The signature stored in the record.
    pub fn signature(&self) -> [u8; 64] {
        let mut signature = [0u8; 64];
        let start = self.body_end().saturating_add(32);
        if let Some(src) = self.bytes.get(start..)
            && src.len() == 64
        {
            signature.copy_from_slice(src);
        }
        signature
    }

    /// The body digest (BLAKE3-derive "body digest" of [`Self::body`]).
    pub fn body_digest(&self) -> [u8; 32] {
        suite::body_digest(self.body())
    }

    /// Recomputes the record hash from the header and body.
    pub fn compute_hash(&self) -> RecordHash {
        suite::record_hash(self.header_bytes(), &self.body_digest())
    }

    /// The head this record would make: (writer, seq, stored hash).
    pub fn head(&self) -> Head {
        Head {
            writer: self.writer(),
            seq: self.seq(),
            hash: self.stored_hash(),
        }
    }

    /// The certificate carried by a genesis record (`None` for other kinds).
    pub fn certificate(&self) -> Option<Result<WriterCertificate, DecodeError>> {
        (self.kind() == RecordKind::Genesis).then(|| WriterCertificate::decode(self.body()))
    }

    /// The compact signed header (header, body digest, hash, signature), e.g. for evidence.
    pub fn signed_header(&self) -> SignedHeader {
        SignedHeader {
            header: self.header.clone(),
            header_bytes: self.header_bytes().to_vec(),
            body_digest: self.body_digest(),
            hash: self.stored_hash(),
            signature: self.signature(),
        }
    }
}

fn check_size(bytes: &[u8]) -> Result<&[u8], DecodeError> {
    if bytes.len() > RECORD_BYTES_MAX {
        return Err(DecodeError::TooLarge {
            what: "record",
            len: bytes.len(),
            max: RECORD_BYTES_MAX,
        });
    }
    Ok(bytes)
}

/// A record without its body: enough to check the hash and signature and to prove
/// equivocation, at a few hundred bytes instead of up to 4 MiB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHeader {
    /// The decoded header.
    pub header: RecordHeader,
    /// The encoded header bytes.
    pub header_bytes: Vec<u8>,
    /// The body digest.
    pub body_digest: [u8; 32],
    /// The stored hash.
    pub hash: RecordHash,
    /// The writer's signature.
    pub signature: [u8; 64],
}

impl SignedHeader {
    /// Recomputes the hash from the header bytes and the body digest.
    pub fn compute_hash(&self) -> RecordHash {
        suite::record_hash(&self.header_bytes, &self.body_digest)
    }

    /// Checks that the hash matches and that `public_key` signed it.
    pub fn check(&self, public_key: &[u8; 32]) -> bool {
        if self.compute_hash() != self.hash {
            return false;
        }
        let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(public_key) else {
            return false;
        };
        let signature = ed25519_dalek::Signature::from_bytes(&self.signature);
        key.verify_strict(&suite::record_signing_message(&self.hash), &signature)
            .is_ok()
    }
}

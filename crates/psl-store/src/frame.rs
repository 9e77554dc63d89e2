//! Frames: how one record sits in a segment file, and the scanner that finds records, torn
//! tails and corruption in a segment's bytes.
//!
//! Frame layout (little-endian): magic `PSLF` (4), record length (4), CRC-32 (4) over the length
//! bytes and the record, then the record. The CRC catches torn and damaged writes; it is not
//! security (the record's own hash and signature are). This module does no IO.

use psl_capsule::limits::RECORD_BYTES_MAX;
use psl_capsule::record::RECORD_BYTES_MIN;
use psl_capsule::{DecodeError, SealedRecord};

/// Magic bytes at the start of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"PSLF";
/// Bytes of frame header before the record.
pub const FRAME_HEADER_BYTES: usize = 12;

/// Appends the frame of `record` to `out`.
pub(crate) fn encode_frame(record: &[u8], out: &mut Vec<u8>) {
    // Records are at most RECORD_BYTES_MAX (4 MiB), which fits in u32.
    let len = u32::try_from(record.len())
        .unwrap_or(u32::MAX)
        .to_le_bytes();
    out.extend_from_slice(&FRAME_MAGIC);
    out.extend_from_slice(&len);
    out.extend_from_slice(&checksum(&len, record).to_le_bytes());
    out.extend_from_slice(record);
}

fn checksum(len: &[u8; 4], record: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(len);
    hasher.update(record);
    hasher.finalize()
}

/// A frame whose magic, length and checksum are right (the record may still not decode).
pub(crate) struct RawFrame<'a> {
    pub(crate) record: &'a [u8],
    pub(crate) total_len: usize,
}

/// Why the bytes at an offset are not a good frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FrameProblem {
    Incomplete,
    BadMagic,
    BadLength(usize),
    BadChecksum,
}

impl std::fmt::Display for FrameProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameProblem::Incomplete => f.write_str("incomplete frame"),
            FrameProblem::BadMagic => f.write_str("bad frame magic"),
            FrameProblem::BadLength(len) => write!(f, "impossible record length {len}"),
            FrameProblem::BadChecksum => f.write_str("frame checksum mismatch"),
        }
    }
}

/// Parses the frame at the start of `bytes`.
pub(crate) fn parse_frame(bytes: &[u8]) -> Result<RawFrame<'_>, FrameProblem> {
    let Some(header) = bytes.get(..FRAME_HEADER_BYTES) else {
        return Err(FrameProblem::Incomplete);
    };
    let (magic, rest) = header.split_at(4);
    if magic != FRAME_MAGIC {
        return Err(FrameProblem::BadMagic);
    }
    let (len_bytes, crc_bytes) = rest.split_at(4);
    let mut len_array = [0u8; 4];
    len_array.copy_from_slice(len_bytes);
    let mut crc_array = [0u8; 4];
    crc_array.copy_from_slice(crc_bytes);
    let len = usize::try_from(u32::from_le_bytes(len_array)).unwrap_or(usize::MAX);
    if !(RECORD_BYTES_MIN..=RECORD_BYTES_MAX).contains(&len) {
        return Err(FrameProblem::BadLength(len));
    }
    let total_len = FRAME_HEADER_BYTES.saturating_add(len);
    let Some(record) = bytes.get(FRAME_HEADER_BYTES..total_len) else {
        return Err(FrameProblem::Incomplete);
    };
    if checksum(&len_array, record) != u32::from_le_bytes(crc_array) {
        return Err(FrameProblem::BadChecksum);
    }
    Ok(RawFrame { record, total_len })
}

/// One record found by the scanner.
pub(crate) struct ScannedFrame {
    /// Offset of the frame in the segment.
    pub(crate) offset: u64,
    /// Frame length (header + record).
    pub(crate) frame_len: u32,
    pub(crate) record: SealedRecord,
}

/// How a segment's frames end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// Every byte belongs to a good frame.
    Clean,
    /// Bad bytes from `offset` to the end, with no good frame after them: an interrupted append.
    TornTail { offset: u64, problem: FrameProblem },
    /// Bad bytes at `offset` followed by good frames (or a frame that does not decode): damage.
    Corrupt { offset: u64, detail: String },
}

/// The records of one segment body (`bytes` starts at `base_offset` in the file).
pub(crate) struct Scan {
    pub(crate) frames: Vec<ScannedFrame>,
    pub(crate) end: ScanEnd,
}

/// Scans frames. A bad frame is a torn tail only if no good frame starts anywhere after it.
pub(crate) fn scan(bytes: &[u8], base_offset: u64) -> Scan {
    let mut frames = Vec::new();
    let mut position = 0usize;
    while position < bytes.len() {
        let offset = base_offset.saturating_add(u64::try_from(position).unwrap_or(u64::MAX));
        let rest = bytes.get(position..).unwrap_or(&[]);
        match parse_frame(rest) {
            Ok(raw) => match SealedRecord::decode(raw.record) {
                Ok(record) => {
                    frames.push(ScannedFrame {
                        offset,
                        frame_len: u32::try_from(raw.total_len).unwrap_or(u32::MAX),
                        record,
                    });
                    position = position.saturating_add(raw.total_len);
                }
                Err(error) => {
                    return Scan {
                        frames,
                        end: corrupt_record(offset, &error),
                    };
                }
            },
            Err(problem) => {
                let end = match next_good_frame(rest) {
                    None => ScanEnd::TornTail { offset, problem },
                    Some(at) => ScanEnd::Corrupt {
                        offset,
                        detail: format!(
                            "{problem}, followed by a good frame {at} bytes later: damage in the \
                             middle of the log, not an interrupted append"
                        ),
                    },
                };
                return Scan { frames, end };
            }
        }
    }
    Scan {
        frames,
        end: ScanEnd::Clean,
    }
}

fn corrupt_record(offset: u64, error: &DecodeError) -> ScanEnd {
    ScanEnd::Corrupt {
        offset,
        detail: format!("frame checksum is right but the record is malformed: {error}"),
    }
}

/// Offset (within `bytes`, after the first byte) of the first good frame, if any.
fn next_good_frame(bytes: &[u8]) -> Option<usize> {
    let mut start = 1usize;
    while let Some(rest) = bytes.get(start..) {
        let found = rest.windows(4).position(|window| window == FRAME_MAGIC)?;
        let at = start.saturating_add(found);
        if parse_frame(bytes.get(at..).unwrap_or(&[])).is_ok() {
            return Some(at);
        }
        start = at.saturating_add(1);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_truncation_are_classified() {
        assert_eq!(parse_frame(b"PSL").err(), Some(FrameProblem::Incomplete));
        assert_eq!(parse_frame(&[0u8; 40]).err(), Some(FrameProblem::BadMagic));
        let mut huge = FRAME_MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0u8; 4]);
        assert!(matches!(
            parse_frame(&huge),
            Err(FrameProblem::BadLength(_))
        ));
        let scan = scan(&[0u8; 100], 48);
        assert!(scan.frames.is_empty());
        assert!(matches!(scan.end, ScanEnd::TornTail { offset: 48, .. }));
    }
}

//! Segment files and the metadata file of a store directory: names, headers, atomic writes,
//! directory listing, and reading a segment with a size limit.
//!
//! Directory layout: `capsule.meta` (the canonical metadata encoding, written atomically),
//! `LOCK` (held with an OS file lock while a [`crate::DirStore`] is open) and
//! `segment-<20-digit index>.psl` files, numbered from 1 without holes. A segment starts with a
//! 48-byte header: magic `PSLSEG01`, capsule id (32), segment index (u64 LE); frames follow.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use psl_capsule::{CapsuleId, CapsuleMetadata};

use crate::APPEND_BYTES_MAX;
use crate::error::{StoreError, io};

/// A segment is rotated once it reaches this size, in bytes: 64 MiB.
pub const SEGMENT_BYTES_TARGET: u64 = 64 * 1024 * 1024;
/// A segment file larger than this is refused as damaged (target + one maximal append).
pub const SEGMENT_FILE_BYTES_MAX: u64 = SEGMENT_BYTES_TARGET + APPEND_BYTES_MAX as u64;
/// Most segment files a store may have (bounds the directory listing): 1 Mi segments.
pub const SEGMENTS_MAX: usize = 1 << 20;

pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"PSLSEG01";
pub(crate) const SEGMENT_HEADER_BYTES: u64 = 48;
pub(crate) const METADATA_FILE: &str = "capsule.meta";
pub(crate) const LOCK_FILE: &str = "LOCK";

pub(crate) fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("segment-{index:020}.psl"))
}

pub(crate) fn segment_header(capsule: &CapsuleId, index: u64) -> Vec<u8> {
    let mut header = Vec::with_capacity(48);
    header.extend_from_slice(&SEGMENT_MAGIC);
    header.extend_from_slice(&capsule.0);
    header.extend_from_slice(&index.to_le_bytes());
    header
}

/// Segment indexes present in `dir`, sorted, checked to be 1..=n without holes.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("list", dir))? {
        let entry = entry.map_err(io("list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(number) = name
            .strip_prefix("segment-")
            .and_then(|rest| rest.strip_suffix(".psl"))
        else {
            continue;
        };
        let Ok(index) = number.parse::<u64>() else {
            continue;
        };
        if found.len() >= SEGMENTS_MAX {
            return Err(StoreError::Corruption {
                path: dir.to_path_buf(),
                offset: 0,
                detail: format!("more than {SEGMENTS_MAX} segment files"),
            });
        }
        found.push((index, entry.path()));
    }
    found.sort();
    for (expected, (index, path)) in (1u64..).zip(&found) {
        if *index != expected {
            return Err(StoreError::Corruption {
                path: path.clone(),
                offset: 0,
                detail: format!("segment {expected} is missing (found {index} instead)"),
            });
        }
    }
    Ok(found)
}

/// Reads a whole segment, refusing files over [`SEGMENT_FILE_BYTES_MAX`], and checks its header.
/// Returns the bytes after the header.
pub(crate) fn read_segment(
    path: &Path,
    capsule: &CapsuleId,
    index: u64,
) -> Result<Vec<u8>, StoreError> {
    let file = File::open(path).map_err(io("open", path))?;
    let len = file.metadata().map_err(io("stat", path))?.len();
    if len > SEGMENT_FILE_BYTES_MAX {
        return Err(StoreError::Corruption {
            path: path.to_path_buf(),
            offset: 0,
            detail: format!("segment of {len} bytes exceeds the limit {SEGMENT_FILE_BYTES_MAX}"),
        });
    }
    let bytes = std::fs::read(path).map_err(io("read", path))?;
    let expected = segment_header(capsule, index);
    let header_len = usize::try_from(SEGMENT_HEADER_BYTES).unwrap_or(48);
    match bytes.get(..header_len) {
        Some(header) if header == expected.as_slice() => {}
        _ => {
            return Err(StoreError::Corruption {
                path: path.to_path_buf(),
                offset: 0,
                detail: "bad segment header (magic, capsule id or index)".into(),
            });
        }
    }
    Ok(bytes.get(header_len..).unwrap_or(&[]).to_vec())
}

/// Creates a segment file with its header, atomically: the header is written and synced under
/// a temporary name, then renamed into place and the directory synced. A crash at any point
/// leaves either no new segment or a complete one, never a segment with a torn header (which
/// open could not tell from damage). Left-over temporary files are removed on open.
pub(crate) fn create_segment(
    dir: &Path,
    capsule: &CapsuleId,
    index: u64,
) -> Result<File, StoreError> {
    let path = segment_path(dir, index);
    let tmp = path.with_extension(SEGMENT_TMP_EXTENSION);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .read(true)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    file.write_all(&segment_header(capsule, index))
        .map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("fsync", &tmp))?;
    if path.exists() {
        return Err(StoreError::Corruption {
            path,
            offset: 0,
            detail: "segment file already exists".into(),
        });
    }
    std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
    sync_dir(dir)?;
    // Reopen for appending: the write position must be the end of the file.
    OpenOptions::new()
        .append(true)
        .read(true)
        .open(&path)
        .map_err(io("open", &path))
}

/// Extension of a segment being created (see [`create_segment`]).
const SEGMENT_TMP_EXTENSION: &str = "psl.creating";

/// Removes segment files whose creation was interrupted before the rename.
pub(crate) fn remove_interrupted_creations(dir: &Path) -> Result<usize, StoreError> {
    let mut removed: usize = 0;
    for entry in std::fs::read_dir(dir).map_err(io("list", dir))? {
        let entry = entry.map_err(io("list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("segment-") && name.ends_with(SEGMENT_TMP_EXTENSION) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(io("remove", &path))?;
            removed = removed.saturating_add(1);
        }
    }
    Ok(removed)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))
}

/// Writes the metadata file atomically: write a temporary file, fsync, rename, fsync the dir.
pub(crate) fn write_metadata(dir: &Path, metadata: &CapsuleMetadata) -> Result<(), StoreError> {
    let tmp = dir.join(format!("{METADATA_FILE}.tmp"));
    let path = dir.join(METADATA_FILE);
    let mut file = File::create(&tmp).map_err(io("create", &tmp))?;
    file.write_all(&metadata.encode())
        .map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("fsync", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
    sync_dir(dir)
}

pub(crate) fn read_metadata(dir: &Path) -> Result<CapsuleMetadata, StoreError> {
    let path = dir.join(METADATA_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::NotAStore(dir.to_path_buf()));
        }
        Err(error) => return Err(io("open", &path)(error)),
    };
    let len = file.metadata().map_err(io("stat", &path))?.len();
    let max = psl_capsule::limits::METADATA_BYTES_MAX as u64;
    if len > max {
        return Err(StoreError::Metadata {
            path,
            source: psl_capsule::DecodeError::TooLarge {
                what: "metadata file",
                len: usize::try_from(len).unwrap_or(usize::MAX),
                max: psl_capsule::limits::METADATA_BYTES_MAX,
            },
        });
    }
    let bytes = std::fs::read(&path).map_err(io("read", &path))?;
    CapsuleMetadata::decode(&bytes).map_err(|source| StoreError::Metadata { path, source })
}

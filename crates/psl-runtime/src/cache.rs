//! The on-disk cache of compiled modules. Entries are machine code, so every entry is
//! authenticated before it is loaded.
//!
//! An entry's name is derived from the module hash, the engine's compatibility hash and the
//! rewrite version, so an artifact is never loaded into an engine that did not produce it.
//! Its contents are `MAC || artifact`, where the MAC is keyed BLAKE3 under a secret that only
//! this worker holds (in a TEE it comes from the enclave's sealing key). An entry that fails
//! its MAC is deleted and the module is compiled again; nothing else about the file is trusted.
//! This module does file IO only under the configured directory and never deserializes bytes
//! whose MAC did not verify.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use crate::deadline::INSTRUMENT_VERSION;
use crate::module::FunctionId;

const MAC_BYTES: usize = 32;

/// A directory of authenticated compiled modules.
pub struct ArtifactCache {
    dir: PathBuf,
    key: [u8; 32],
    engine_tag: u64,
}

/// What a cache lookup found.
pub enum Lookup {
    /// An authenticated artifact produced by this engine.
    Hit(Vec<u8>),
    /// Nothing cached.
    Miss,
    /// An entry existed but failed authentication; it was removed.
    Rejected,
}

impl ArtifactCache {
    /// Opens (creating) a cache directory for artifacts of `engine`.
    pub fn open(
        dir: &Path,
        key: [u8; 32],
        engine: &wasmtime::Engine,
        mode_tag: u8,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        INSTRUMENT_VERSION.hash(&mut hasher);
        mode_tag.hash(&mut hasher);
        Ok(Self {
            dir: dir.to_path_buf(),
            key,
            engine_tag: hasher.finish(),
        })
    }

    fn path(&self, id: &FunctionId) -> PathBuf {
        self.dir
            .join(format!("{}-{:016x}.cwasm", id.to_hex(), self.engine_tag))
    }

    fn mac(&self, id: &FunctionId, artifact: &[u8]) -> [u8; MAC_BYTES] {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        hasher.update(b"psl-artifact-v1");
        hasher.update(&id.0);
        hasher.update(&self.engine_tag.to_le_bytes());
        hasher.update(artifact);
        *hasher.finalize().as_bytes()
    }

    /// Looks up the artifact of `id`, checking its MAC.
    pub fn get(&self, id: &FunctionId) -> Lookup {
        let path = self.path(id);
        let Ok(bytes) = std::fs::read(&path) else {
            return Lookup::Miss;
        };
        let (Some(mac), Some(artifact)) = (bytes.get(..MAC_BYTES), bytes.get(MAC_BYTES..)) else {
            let _ = std::fs::remove_file(&path);
            return Lookup::Rejected;
        };
        let expected = self.mac(id, artifact);
        if !constant_time_eq(mac, &expected) {
            tracing::warn!(path = %path.display(), "compiled-module cache entry failed its MAC; removed");
            let _ = std::fs::remove_file(&path);
            return Lookup::Rejected;
        }
        Lookup::Hit(artifact.to_vec())
    }

    /// Stores an artifact (atomically: write to a temporary file, then rename).
    pub fn put(&self, id: &FunctionId, artifact: &[u8]) -> std::io::Result<()> {
        let path = self.path(id);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut bytes = Vec::with_capacity(MAC_BYTES + artifact.len());
        bytes.extend_from_slice(&self.mac(id, artifact));
        bytes.extend_from_slice(artifact);
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, &path)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

//! YCSB from inside WebAssembly functions: the host side of the `ycsb` guest
//! (`guests/examples/ycsb`).
//!
//! In the run phase of a `wasm-*` target every client thread groups `ops_per_invoke`
//! operations into one input of the guest's wire format ([`Batch`]), invokes the guest through
//! a [`psl_node::Platform`] (runtime + state), and reads the per-operation statuses from its
//! output ([`Reply`]). Each invocation gets a fresh state session from the platform, which
//! `finish`es (flushes) at the end of the invocation, as for any function.
//!
//! Wire format version 1 (little-endian; `key` = `u16 len` + bytes; `blob` = `u32 len` +
//! bytes; field `0xFFFF` = all fields):
//!
//! ```text
//! input:  u8 1 | u8 0 | u16 field_count | u16 n | n x (u8 tag, operands)
//!         1 READ key u16 field | 2 UPDATE key u16 field blob | 3 PUT key blob
//!         4 SCAN key(prefix) u32 limit | 5 RMW key u16 read_field u16 field blob
//!         6 READN u16 count, count x key
//! output: u8 1 | u16 n | u32 found | u64 bytes_read | n x u8 status (0 ok, 1 not found,
//!         2 bad record, 3 host error)
//! ```

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use psl_node::Platform;
use psl_runtime::{RuntimeConfig, State};

/// Name the guest is deployed under.
pub const FUNCTION: &str = "ycsb";
/// Most operations of the wire format in one invocation (the guest refuses more).
pub const OPS_MAX: usize = 4096;
/// Most YCSB operations per invocation (a read-modify-write may take two wire operations).
pub const OPS_PER_INVOKE_MAX: usize = OPS_MAX / 2;
/// Field index meaning "all fields".
pub const ALL_FIELDS: u16 = 0xFFFF;

/// Per-operation status codes in the guest's output.
pub mod status {
    /// Done; a read found a well-formed record.
    pub const OK: u8 = 0;
    /// The key was not there.
    pub const NOT_FOUND: u8 = 1;
    /// The value was not a record of the expected shape.
    pub const BAD_RECORD: u8 = 2;
    /// The host API returned an error.
    pub const HOST_ERROR: u8 = 3;
}

/// Encoder of one invocation's input.
#[derive(Clone, Debug)]
pub struct Batch {
    bytes: Vec<u8>,
    ops: usize,
}

fn field_index(field: Option<usize>) -> anyhow::Result<u16> {
    match field {
        None => Ok(ALL_FIELDS),
        Some(i) => match u16::try_from(i) {
            Ok(i) if i != ALL_FIELDS => Ok(i),
            _ => bail!("field index {i} does not fit the wire format"),
        },
    }
}

impl Batch {
    /// An empty batch for records of `field_count` fields.
    pub fn new(field_count: usize) -> anyhow::Result<Self> {
        let count = u16::try_from(field_count)
            .ok()
            .filter(|c| *c != ALL_FIELDS)
            .ok_or_else(|| anyhow!("fieldcount {field_count} does not fit the wire format"))?;
        let mut bytes = Vec::with_capacity(4096);
        bytes.extend_from_slice(&[1, 0]);
        bytes.extend_from_slice(&count.to_le_bytes());
        bytes.extend_from_slice(&[0, 0]);
        Ok(Self { bytes, ops: 0 })
    }

    /// Operations in the batch.
    pub fn len(&self) -> usize {
        self.ops
    }

    /// Whether the batch has no operation.
    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }

    fn op(&mut self, tag: u8) -> anyhow::Result<()> {
        anyhow::ensure!(self.ops < OPS_MAX, "at most {OPS_MAX} operations per batch");
        self.ops += 1;
        self.bytes.push(tag);
        Ok(())
    }

    fn key(&mut self, key: &[u8]) -> anyhow::Result<()> {
        let len = u16::try_from(key.len()).context("key longer than 65535 bytes")?;
        self.bytes.extend_from_slice(&len.to_le_bytes());
        self.bytes.extend_from_slice(key);
        Ok(())
    }

    fn blob(&mut self, value: &[u8]) -> anyhow::Result<()> {
        let len = u32::try_from(value.len()).context("value longer than 4 GiB")?;
        self.bytes.extend_from_slice(&len.to_le_bytes());
        self.bytes.extend_from_slice(value);
        Ok(())
    }

    /// READ: all fields (`None`) or field `field`.
    pub fn read(&mut self, key: &[u8], field: Option<usize>) -> anyhow::Result<()> {
        let field = field_index(field)?;
        self.op(1)?;
        self.key(key)?;
        self.bytes.extend_from_slice(&field.to_le_bytes());
        Ok(())
    }

    /// UPDATE of one field (get, replace, put).
    pub fn update(&mut self, key: &[u8], field: usize, value: &[u8]) -> anyhow::Result<()> {
        let field = field_index(Some(field))?;
        self.op(2)?;
        self.key(key)?;
        self.bytes.extend_from_slice(&field.to_le_bytes());
        self.blob(value)
    }

    /// PUT of a whole record (insert, or update of all fields).
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        self.op(3)?;
        self.key(key)?;
        self.blob(value)
    }

    /// SCAN of up to `limit` entries under `prefix` (the host's `scan_prefix`).
    pub fn scan(&mut self, prefix: &[u8], limit: u32) -> anyhow::Result<()> {
        self.op(4)?;
        self.key(prefix)?;
        self.bytes.extend_from_slice(&limit.to_le_bytes());
        Ok(())
    }

    /// READ-MODIFY-WRITE: READ (`read_field`), then UPDATE of `field`.
    pub fn read_modify_write(
        &mut self,
        key: &[u8],
        read_field: Option<usize>,
        field: usize,
        value: &[u8],
    ) -> anyhow::Result<()> {
        let (read_field, field) = (field_index(read_field)?, field_index(Some(field))?);
        self.op(5)?;
        self.key(key)?;
        self.bytes.extend_from_slice(&read_field.to_le_bytes());
        self.bytes.extend_from_slice(&field.to_le_bytes());
        self.blob(value)
    }

    /// READN: READ (all fields) of every key; the driver's scan emulation.
    pub fn read_keys(&mut self, keys: &[Vec<u8>]) -> anyhow::Result<()> {
        let count = u16::try_from(keys.len()).context("more than 65535 keys in one READN")?;
        self.op(6)?;
        self.bytes.extend_from_slice(&count.to_le_bytes());
        for key in keys {
            self.key(key)?;
        }
        Ok(())
    }

    /// The current end of the batch, to [`Batch::rollback`] to.
    pub fn checkpoint(&self) -> (usize, usize) {
        (self.bytes.len(), self.ops)
    }

    /// Drops everything added since `checkpoint`.
    pub fn rollback(&mut self, (bytes, ops): (usize, usize)) {
        self.bytes.truncate(bytes);
        self.ops = ops;
    }

    /// The encoded input; the batch is empty again afterwards.
    pub fn take(&mut self) -> Vec<u8> {
        let ops = u16::try_from(self.ops).unwrap_or(u16::MAX);
        let mut next = self.bytes[..4].to_vec();
        next.extend_from_slice(&[0, 0]);
        let mut bytes = std::mem::replace(&mut self.bytes, next);
        bytes[4..6].copy_from_slice(&ops.to_le_bytes());
        self.ops = 0;
        bytes
    }
}

/// The guest's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Records (and scanned entries) read and well formed.
    pub found: u32,
    /// Their value bytes.
    pub bytes_read: u64,
    /// One status per operation, in order.
    pub statuses: Vec<u8>,
}

impl Reply {
    /// Parses the output; `None` if it is malformed.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (&version, rest) = bytes.split_first()?;
        if version != 1 {
            return None;
        }
        let (n, rest) = rest.split_at_checked(2)?;
        let (found, rest) = rest.split_at_checked(4)?;
        let (read, statuses) = rest.split_at_checked(8)?;
        let n = u16::from_le_bytes(n.try_into().ok()?);
        (statuses.len() == usize::from(n)).then(|| Self {
            found: u32::from_le_bytes(found.try_into().unwrap_or_default()),
            bytes_read: u64::from_le_bytes(read.try_into().unwrap_or_default()),
            statuses: statuses.to_vec(),
        })
    }
}

/// The platforms a `wasm-*` target invokes the guest on: one per worker; client thread `i`
/// uses platform `i % len`, as the native `scl` target puts thread `i`'s session on worker
/// `i % workers`.
pub struct WasmTarget {
    backend: Backend,
    /// Operations per invocation.
    pub ops_per_invoke: usize,
    /// The module's hash.
    pub module: String,
}

/// Where invocations go.
enum Backend {
    /// Platforms in this process.
    Local(Vec<Platform>),
    /// Worker processes, through a cluster-mode gateway (sealed invocations over NATS, to the
    /// workers' queue group). The load phase goes through it too.
    Gateway(Arc<psl_node::cluster::gateway::GatewayNode>, usize),
}

impl WasmTarget {
    /// Deploys `wasm` as [`FUNCTION`] on one platform per state.
    pub fn new(
        wasm: &[u8],
        states: Vec<Arc<dyn State>>,
        ops_per_invoke: usize,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (1..=OPS_PER_INVOKE_MAX).contains(&ops_per_invoke),
            "--ops-per-invoke must be 1..={OPS_PER_INVOKE_MAX}"
        );
        anyhow::ensure!(!states.is_empty(), "no state to invoke on");
        let mut module = String::new();
        let platforms = states
            .into_iter()
            .map(|state| -> anyhow::Result<Platform> {
                let platform = Platform::new(RuntimeConfig::default(), state)?;
                module = platform.deploy(FUNCTION, wasm)?.to_string();
                Ok(platform)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            backend: Backend::Local(platforms),
            ops_per_invoke,
            module,
        })
    }

    /// Invokes the guest (deployed on `workers` worker processes as module `module`) through
    /// a cluster-mode gateway.
    pub fn through_gateway(
        gateway: Arc<psl_node::cluster::gateway::GatewayNode>,
        workers: usize,
        module: String,
        ops_per_invoke: usize,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (1..=OPS_PER_INVOKE_MAX).contains(&ops_per_invoke),
            "--ops-per-invoke must be 1..={OPS_PER_INVOKE_MAX}"
        );
        Ok(Self {
            backend: Backend::Gateway(gateway, workers),
            ops_per_invoke,
            module,
        })
    }

    /// Whether the load phase must go through invocations too (no state in this process).
    pub fn remote(&self) -> bool {
        matches!(self.backend, Backend::Gateway(..))
    }

    /// Reads the module from `path`.
    pub fn read_module(path: &Path) -> anyhow::Result<Vec<u8>> {
        std::fs::read(path).with_context(|| {
            format!(
                "reading the ycsb guest {}; build it with `cargo xtask guests`",
                path.display()
            )
        })
    }

    /// Platforms (one per state), or worker processes.
    pub fn platforms(&self) -> usize {
        match &self.backend {
            Backend::Local(platforms) => platforms.len(),
            Backend::Gateway(_, workers) => *workers,
        }
    }

    /// The platform of client thread `thread` (`None` through a gateway).
    pub fn platform(&self, thread: usize) -> Option<&Platform> {
        match &self.backend {
            Backend::Local(platforms) => Some(&platforms[thread % platforms.len()]),
            Backend::Gateway(..) => None,
        }
    }

    /// Invokes the guest on `input` on `thread`'s platform (or any worker).
    pub fn invoke(&self, thread: usize, input: Vec<u8>, ops: usize) -> anyhow::Result<Reply> {
        let output = match &self.backend {
            Backend::Local(platforms) => {
                let outcome = platforms[thread % platforms.len()].invoke(FUNCTION, input)?;
                outcome.result.map_err(|e| anyhow!("ycsb guest: {e}"))?
            }
            Backend::Gateway(gateway, _) => {
                let (status, output) = gateway.invoke(FUNCTION, input)?;
                anyhow::ensure!(
                    status == psl_node::cluster::wire::InvokeStatus::Ok,
                    "ycsb guest: {status:?}: {}",
                    String::from_utf8_lossy(&output)
                );
                output
            }
        };
        let reply = Reply::decode(&output).ok_or_else(|| anyhow!("malformed ycsb guest output"))?;
        anyhow::ensure!(
            reply.statuses.len() == ops,
            "the guest answered {} operations, {ops} sent",
            reply.statuses.len()
        );
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_encode_the_documented_bytes() {
        let mut batch = Batch::new(10).unwrap();
        batch.read(b"k", None).unwrap();
        batch.update(b"k", 3, b"v").unwrap();
        let bytes = batch.take();
        assert_eq!(
            bytes,
            [
                1, 0, 10, 0, 2, 0, // header: version, flags, field_count, n
                1, 1, 0, b'k', 0xFF, 0xFF, // READ k all
                2, 1, 0, b'k', 3, 0, 1, 0, 0, 0, b'v', // UPDATE k field3 "v"
            ]
        );
        assert!(batch.is_empty());
        batch.scan(b"u", 7).unwrap();
        assert_eq!(batch.take(), [1, 0, 10, 0, 1, 0, 4, 1, 0, b'u', 7, 0, 0, 0]);
        assert!(Batch::new(0xFFFF).is_err());
        assert!(batch.read(b"k", Some(0xFFFF)).is_err());
    }

    #[test]
    fn replies_decode_and_refuse_truncation() {
        let bytes = [1, 2, 0, 3, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let reply = Reply::decode(&bytes).unwrap();
        assert_eq!(
            reply,
            Reply {
                found: 3,
                bytes_read: 9,
                statuses: vec![0, 1]
            }
        );
        for cut in 0..bytes.len() {
            assert_eq!(Reply::decode(&bytes[..cut]), None, "{cut}");
        }
        assert_eq!(Reply::decode(&[2; 17]), None);
    }
}

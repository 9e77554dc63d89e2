//! `ycsb`: performs a batch of YCSB operations through the host key-value API.
//!
//! Used by `psl-bench ycsb --target wasm-scl|wasm-local`: every invocation carries one or
//! more operations, so the driver measures YCSB from inside a WebAssembly function.
//! The host-side encoder is `crates/psl-bench/src/ycsb/wasm.rs`; the format is documented in
//! `docs/benchmarks-ycsb.md` and here.
//!
//! Input (version 1; integers little-endian; `key` = `u16 len` + bytes, `blob` = `u32 len` +
//! bytes; a field index of `0xFFFF` means "all fields"):
//!
//! ```text
//! u8 version (1) | u8 flags (0) | u16 field_count | u16 n (1..=4096) | n operations:
//!   1 READ    key, u16 field          get; the record must decode and have field_count
//!                                     fields (or the named field)
//!   2 UPDATE  key, u16 field, blob    get, replace field `field<i>` with blob, put
//!   3 PUT     key, blob               put blob (insert, or update of all fields)
//!   4 SCAN    key (prefix), u32 limit scan_prefix; ok if the host answers
//!   5 RMW     key, u16 read_field, u16 field, blob   READ then UPDATE of the same key
//!   6 READN   u16 count, count keys   READ (all fields) of each key; ok if all are found
//! ```
//!
//! Nothing is executed unless the whole input decodes; a malformed input fails the invocation
//! with `ycsb: malformed input at byte <offset>: <what>`. Host errors of single operations are
//! reported per operation, and the batch goes on.
//!
//! Output (version 1):
//!
//! ```text
//! u8 version (1) | u16 n | u32 found | u64 bytes_read | n x u8 status
//! ```
//!
//! `found` counts records (and scanned entries) that were read and well formed, `bytes_read`
//! their value bytes; status is 0 ok, 1 not found, 2 malformed record or missing field,
//! 3 host error.

use psl_guest::{Error, Result};

psl_guest::entry!(ycsb);

/// Input format version.
const VERSION: u8 = 1;
/// Most operations in one invocation.
const OPS_MAX: usize = 4096;
/// Field index meaning "every field".
const ALL_FIELDS: u16 = 0xFFFF;

const OK: u8 = 0;
const NOT_FOUND: u8 = 1;
const BAD_RECORD: u8 = 2;
const HOST_ERROR: u8 = 3;

/// Why an input was refused: the byte offset and what was expected there.
#[derive(Debug)]
struct Malformed {
    offset: usize,
    what: &'static str,
}

impl From<Malformed> for Error {
    fn from(m: Malformed) -> Self {
        Error::msg(format!(
            "ycsb: malformed input at byte {}: {}",
            m.offset, m.what
        ))
    }
}

/// A cursor over the input that never reads past its end.
struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Malformed> {
        let rest = self.bytes.get(self.offset..).unwrap_or_default();
        let head = rest.get(..n).ok_or(Malformed {
            offset: self.offset,
            what,
        })?;
        self.offset = self.offset.saturating_add(n);
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, Malformed> {
        Ok(self.take(1, what)?.first().copied().unwrap_or_default())
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, Malformed> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([
            b.first().copied().unwrap_or_default(),
            b.get(1).copied().unwrap_or_default(),
        ]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, Malformed> {
        let mut raw = [0u8; 4];
        raw.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_le_bytes(raw))
    }

    fn key(&mut self) -> Result<&'a [u8], Malformed> {
        let len = self.u16("key length")?;
        self.take(usize::from(len), "key bytes")
    }

    fn blob(&mut self) -> Result<&'a [u8], Malformed> {
        let len = self.u32("value length")?;
        self.take(len as usize, "value bytes")
    }

    fn field(&mut self) -> Result<Option<u16>, Malformed> {
        let field = self.u16("field index")?;
        Ok((field != ALL_FIELDS).then_some(field))
    }
}

/// One decoded operation, borrowing from the input.
enum Op<'a> {
    Read {
        key: &'a [u8],
        field: Option<u16>,
    },
    Update {
        key: &'a [u8],
        field: u16,
        value: &'a [u8],
    },
    Put {
        key: &'a [u8],
        value: &'a [u8],
    },
    Scan {
        prefix: &'a [u8],
        limit: u32,
    },
    ReadModifyWrite {
        key: &'a [u8],
        read_field: Option<u16>,
        field: u16,
        value: &'a [u8],
    },
    ReadN {
        keys: Vec<&'a [u8]>,
    },
}

struct Batch<'a> {
    field_count: u16,
    ops: Vec<Op<'a>>,
}

fn decode(input: &[u8]) -> Result<Batch<'_>, Malformed> {
    let mut r = Reader {
        bytes: input,
        offset: 0,
    };
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(Malformed {
            offset: 0,
            what: "unknown version (expected 1)",
        });
    }
    if r.u8("flags")? != 0 {
        return Err(Malformed {
            offset: 1,
            what: "unknown flags (expected 0)",
        });
    }
    let field_count = r.u16("field count")?;
    let n = usize::from(r.u16("operation count")?);
    if n == 0 || n > OPS_MAX {
        return Err(Malformed {
            offset: 4,
            what: "operation count must be 1..=4096",
        });
    }
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        let at = r.offset;
        let op = match r.u8("operation tag")? {
            1 => Op::Read {
                key: r.key()?,
                field: r.field()?,
            },
            2 => {
                let key = r.key()?;
                let field = r.u16("field index")?;
                Op::Update {
                    key,
                    field,
                    value: r.blob()?,
                }
            }
            3 => Op::Put {
                key: r.key()?,
                value: r.blob()?,
            },
            4 => Op::Scan {
                prefix: r.key()?,
                limit: r.u32("scan limit")?,
            },
            5 => {
                let key = r.key()?;
                let read_field = r.field()?;
                let field = r.u16("field index")?;
                Op::ReadModifyWrite {
                    key,
                    read_field,
                    field,
                    value: r.blob()?,
                }
            }
            6 => {
                let count = usize::from(r.u16("key count")?);
                let mut keys = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    keys.push(r.key()?);
                }
                Op::ReadN { keys }
            }
            _ => {
                return Err(Malformed {
                    offset: at,
                    what: "unknown operation tag (1..=6)",
                });
            }
        };
        ops.push(op);
    }
    if r.offset != input.len() {
        return Err(Malformed {
            offset: r.offset,
            what: "trailing bytes after the last operation",
        });
    }
    Ok(Batch { field_count, ops })
}

/// A record's fields (as `psl-bench`'s `record.rs` encodes them: `count:u32le`, then per field
/// `name_len:u32le name value_len:u32le value`), borrowed from the value.
fn fields(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut r = Reader { bytes, offset: 0 };
    let count = r.u32("").ok()? as usize;
    let mut out = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let name = r.blob().ok()?;
        let value = r.blob().ok()?;
        out.push((name, value));
    }
    (r.offset == bytes.len()).then_some(out)
}

fn encode(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let size = fields
        .iter()
        .map(|(n, v)| 8usize.saturating_add(n.len()).saturating_add(v.len()))
        .fold(4usize, usize::saturating_add);
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(fields.len() as u32).to_le_bytes());
    for (name, value) in fields {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    out
}

fn field_name(index: u16) -> Vec<u8> {
    format!("field{index}").into_bytes()
}

struct Totals {
    found: u32,
    bytes_read: u64,
}

impl Totals {
    /// Reads `key` and checks it as the driver does: all `field_count` fields, or the one named.
    fn read(&mut self, key: &[u8], field: Option<u16>, field_count: u16) -> u8 {
        let value = match psl_guest::get(key) {
            Ok(Some(value)) => value,
            Ok(None) => return NOT_FOUND,
            Err(_) => return HOST_ERROR,
        };
        let Some(record) = fields(&value) else {
            return BAD_RECORD;
        };
        let good = match field {
            Some(index) => {
                let name = field_name(index);
                record.iter().any(|(n, _)| *n == name.as_slice())
            }
            None => record.len() == usize::from(field_count),
        };
        if !good {
            return BAD_RECORD;
        }
        self.found = self.found.saturating_add(1);
        self.bytes_read = self.bytes_read.saturating_add(value.len() as u64);
        OK
    }

    /// Replaces (or adds) field `field` of the record at `key`.
    fn update(&mut self, key: &[u8], field: u16, value: &[u8]) -> u8 {
        let old = match psl_guest::get(key) {
            Ok(Some(old)) => old,
            Ok(None) => return NOT_FOUND,
            Err(_) => return HOST_ERROR,
        };
        let Some(mut record) = fields(&old) else {
            return BAD_RECORD;
        };
        let name = field_name(field);
        match record.iter_mut().find(|(n, _)| *n == name.as_slice()) {
            Some((_, v)) => *v = value,
            None => record.push((&name, value)),
        }
        let new = encode(&record);
        match psl_guest::put(key, &new) {
            Ok(()) => OK,
            Err(_) => HOST_ERROR,
        }
    }

    fn run(&mut self, op: &Op<'_>, field_count: u16) -> u8 {
        match op {
            Op::Read { key, field } => self.read(key, *field, field_count),
            Op::Update { key, field, value } => self.update(key, *field, value),
            Op::Put { key, value } => match psl_guest::put(key, value) {
                Ok(()) => OK,
                Err(_) => HOST_ERROR,
            },
            Op::Scan { prefix, limit } => match psl_guest::scan(prefix, *limit) {
                Ok(entries) => {
                    for (_, value) in &entries {
                        self.found = self.found.saturating_add(1);
                        self.bytes_read = self.bytes_read.saturating_add(value.len() as u64);
                    }
                    OK
                }
                Err(_) => HOST_ERROR,
            },
            Op::ReadModifyWrite {
                key,
                read_field,
                field,
                value,
            } => match self.read(key, *read_field, field_count) {
                OK => self.update(key, *field, value),
                failed => failed,
            },
            Op::ReadN { keys } => {
                let mut status = OK;
                for key in keys {
                    let got = self.read(key, None, field_count);
                    if status == OK {
                        status = got;
                    }
                }
                status
            }
        }
    }
}

fn ycsb(input: &[u8]) -> Result<Vec<u8>> {
    let batch = decode(input)?;
    let mut totals = Totals {
        found: 0,
        bytes_read: 0,
    };
    let statuses: Vec<u8> = batch
        .ops
        .iter()
        .map(|op| totals.run(op, batch.field_count))
        .collect();
    let mut out = Vec::with_capacity(15usize.saturating_add(statuses.len()));
    out.push(VERSION);
    out.extend_from_slice(&(statuses.len() as u16).to_le_bytes());
    out.extend_from_slice(&totals.found.to_le_bytes());
    out.extend_from_slice(&totals.bytes_read.to_le_bytes());
    out.extend_from_slice(&statuses);
    Ok(out)
}

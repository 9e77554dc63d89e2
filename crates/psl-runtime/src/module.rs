//! Deploy-time checks: what a module is (its [`FunctionId`]), whether it is valid, whether it
//! fits the shape limits, and whether it imports only what PSL provides.
//!
//! Everything here runs *before* the compiler sees the module: compile-time denial of service
//! is not something Cranelift protects against, so size and shape are capped first.

use std::fmt;

use wasmparser::{Parser, Payload, TypeRef, Validator, WasmFeatures};

use crate::abi;
use crate::error::DeployError;
use crate::limits::ModuleLimits;

/// A function's identity: the BLAKE3 hash of its module bytes, as deployed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionId(pub [u8; 32]);

impl FunctionId {
    /// Hashes module bytes.
    pub fn of(wasm: &[u8]) -> Self {
        Self(*blake3::hash(wasm).as_bytes())
    }

    /// Parses the 64-character hex form.
    pub fn parse(hex_text: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_text, &mut out).ok()?;
        Some(Self(out))
    }

    /// The hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A short prefix for display.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Display for FunctionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for FunctionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FunctionId({})", self.short())
    }
}

/// How a module is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// The PSL SDK entry point `psl_run() -> i32` (0 = success).
    PslRun,
    /// A WASI command's `_start`.
    Start,
    /// No entry point: a library of exports (callable only through
    /// [`crate::Runtime::call_export_f64`], e.g. by benchmarks).
    None,
}

/// What the checks learned about a module.
#[derive(Clone, Debug)]
pub struct ModuleInfo {
    /// The function's identity.
    pub id: FunctionId,
    /// Its entry point.
    pub entry: Entry,
    /// Whether it exports `_initialize` (a WASI reactor), to be called before the entry.
    pub has_initialize: bool,
    /// Size in bytes.
    pub bytes: usize,
}

/// The WebAssembly features guests may use. Threads are off: a guest may not declare shared
/// memories or atomics (the deadline flag relies on it, see `deadline.rs`).
pub fn guest_features() -> WasmFeatures {
    WasmFeatures::WASM2 | WasmFeatures::EXTENDED_CONST | WasmFeatures::TAIL_CALL
}

fn shape(what: &'static str, value: u64, max: u64) -> Result<(), DeployError> {
    if value > max {
        return Err(DeployError::Shape { what, value, max });
    }
    Ok(())
}

fn check_import(module: &str, name: &str, ty: &TypeRef) -> Result<(), DeployError> {
    let refuse = |why| {
        Err(DeployError::ForbiddenImport {
            module: module.into(),
            name: name.into(),
            why,
        })
    };
    if !matches!(ty, TypeRef::Func(_) | TypeRef::FuncExact(_)) {
        return refuse("only functions may be imported");
    }
    match module {
        abi::MODULE if abi::FUNCTIONS.contains(&name) => Ok(()),
        abi::MODULE => refuse("not a function of the psl host API"),
        "wasi_snapshot_preview1" => Ok(()),
        _ => refuse("unknown import module; PSL provides `psl` and `wasi_snapshot_preview1`"),
    }
}

/// Validates a module and checks it against the limits. Never panics on any input.
///
/// `memory_bytes_max` is the invocation memory limit: a module whose initial memory is larger
/// could never run, so it is refused here.
pub fn inspect(
    wasm: &[u8],
    limits: &ModuleLimits,
    memory_bytes_max: u64,
) -> Result<ModuleInfo, DeployError> {
    if wasm.len() > limits.module_bytes_max {
        return Err(DeployError::TooLarge {
            bytes: wasm.len(),
            max: limits.module_bytes_max,
        });
    }
    if !wasm.starts_with(b"\0asm") {
        return Err(DeployError::Malformed(
            "not a WebAssembly module (no \\0asm magic header)".into(),
        ));
    }
    Validator::new_with_features(guest_features())
        .validate_all(wasm)
        .map_err(|e| {
            DeployError::Malformed(format!("{} (at byte {:#x})", e.message(), e.offset()))
        })?;
    let mut functions = 0u64;
    let mut data_bytes = 0u64;
    let (mut has_run, mut has_start, mut has_initialize) = (false, false, false);
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(|e| DeployError::Malformed(e.to_string()))? {
            Payload::ImportSection(section) => {
                let mut n = 0u64;
                for import in section.into_imports() {
                    let import = import.map_err(|e| DeployError::Malformed(e.to_string()))?;
                    check_import(import.module, import.name, &import.ty)?;
                    n += 1;
                    functions += 1;
                }
                shape("imports", n, u64::from(limits.imports_max))?;
            }
            Payload::FunctionSection(section) => functions += u64::from(section.count()),
            Payload::MemorySection(section) => {
                for memory in section {
                    let memory = memory.map_err(|e| DeployError::Malformed(e.to_string()))?;
                    let bytes = memory
                        .initial
                        .saturating_mul(1 << memory.page_size_log2.unwrap_or(16));
                    shape("initial memory bytes", bytes, memory_bytes_max)?;
                }
            }
            Payload::TableSection(section) => {
                for table in section {
                    let table = table.map_err(|e| DeployError::Malformed(e.to_string()))?;
                    shape(
                        "table elements",
                        table.ty.initial,
                        limits.table_elements_max,
                    )?;
                }
            }
            Payload::ExportSection(section) => {
                shape(
                    "exports",
                    u64::from(section.count()),
                    u64::from(limits.exports_max),
                )?;
                for export in section {
                    let export = export.map_err(|e| DeployError::Malformed(e.to_string()))?;
                    match export.name {
                        "psl_run" => has_run = true,
                        "_start" => has_start = true,
                        "_initialize" => has_initialize = true,
                        _ => {}
                    }
                }
            }
            Payload::DataSection(section) => {
                for data in section {
                    let data = data.map_err(|e| DeployError::Malformed(e.to_string()))?;
                    data_bytes = data_bytes.saturating_add(data.data.len() as u64);
                }
            }
            Payload::CodeSectionEntry(body) => {
                let size = body.range().len() as u64;
                shape(
                    "function body bytes",
                    size,
                    u64::from(limits.function_body_bytes_max),
                )?;
                let mut locals = 0u64;
                let reader = body
                    .get_locals_reader()
                    .map_err(|e| DeployError::Malformed(e.to_string()))?;
                for local in reader {
                    let (count, _) = local.map_err(|e| DeployError::Malformed(e.to_string()))?;
                    locals = locals.saturating_add(u64::from(count));
                }
                shape(
                    "function locals",
                    locals,
                    u64::from(limits.function_locals_max),
                )?;
            }
            _ => {}
        }
    }
    shape("functions", functions, u64::from(limits.functions_max))?;
    shape("data bytes", data_bytes, limits.data_bytes_max)?;
    let entry = match (has_run, has_start) {
        (true, _) => Entry::PslRun,
        (false, true) => Entry::Start,
        (false, false) => Entry::None,
    };
    Ok(ModuleInfo {
        id: FunctionId::of(wasm),
        entry,
        has_initialize,
        bytes: wasm.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEM: u64 = 1 << 30;

    fn wat(text: &str) -> Vec<u8> {
        wat::parse_str(text).unwrap()
    }

    #[test]
    fn refuses_garbage_with_a_reason() {
        let err = inspect(b"\0asm\x02\0\0\0junk", &ModuleLimits::default(), MEM).unwrap_err();
        assert!(matches!(err, DeployError::Malformed(_)), "{err}");
        let err = inspect(b"", &ModuleLimits::default(), MEM).unwrap_err();
        assert!(matches!(err, DeployError::Malformed(_)), "{err}");
    }

    #[test]
    fn refuses_unknown_imports_and_memory_imports() {
        let m = wat(r#"(module (import "env" "f" (func)) (func (export "_start")))"#);
        assert!(matches!(
            inspect(&m, &ModuleLimits::default(), MEM),
            Err(DeployError::ForbiddenImport { .. })
        ));
        let m = wat(r#"(module (import "psl" "deadline" (memory 1)) (func (export "_start")))"#);
        assert!(matches!(
            inspect(&m, &ModuleLimits::default(), MEM),
            Err(DeployError::ForbiddenImport { .. })
        ));
        let m = wat(r#"(module (import "psl" "nope" (func)) (func (export "_start")))"#);
        assert!(matches!(
            inspect(&m, &ModuleLimits::default(), MEM),
            Err(DeployError::ForbiddenImport { .. })
        ));
    }

    #[test]
    fn refuses_shared_memory_and_missing_entry() {
        let m = wat(r#"(module (memory 1 1 shared) (func (export "_start")))"#);
        assert!(matches!(
            inspect(&m, &ModuleLimits::default(), MEM),
            Err(DeployError::Malformed(_))
        ));
        let m = wat(r#"(module (func (export "main")))"#);
        assert_eq!(
            inspect(&m, &ModuleLimits::default(), MEM).unwrap().entry,
            Entry::None
        );
    }

    #[test]
    fn enforces_shape_limits() {
        let limits = ModuleLimits {
            function_locals_max: 10,
            ..ModuleLimits::default()
        };
        let m = wat(
            r#"(module (func (export "_start") (local i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32)))"#,
        );
        assert!(matches!(
            inspect(&m, &limits, MEM),
            Err(DeployError::Shape {
                what: "function locals",
                ..
            })
        ));
        let limits = ModuleLimits {
            module_bytes_max: 8,
            ..ModuleLimits::default()
        };
        assert!(matches!(
            inspect(&m, &limits, MEM),
            Err(DeployError::TooLarge { .. })
        ));
    }
}

//! The WASM compute benchmark: the `psl-kernels` suite run natively and on WebAssembly engines.
//!
//! [`run`] prepares every engine (compilation is not timed), then runs each kernel on each
//! engine with a fresh instance per repetition, interleaving engines and kernels so that slow
//! drifts of a noisy machine hit all engines alike. Each wasm checksum must agree with the
//! native one to within [`CHECKSUM_TOLERANCE`] (relative); a mismatch or a trap is recorded as
//! a failure and reported, never hidden. [`report`] turns the result into a Markdown table and
//! [`svg`] into a plot; the [`Report`] itself serialises to the JSON the benchmark writes.

pub mod engines;
pub mod report;
pub mod svg;

use anyhow::Context;
use engines::{EngineEntry, ModuleKind};
use psl_kernels::Size;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Largest accepted relative difference between a wasm checksum and the native one.
pub const CHECKSUM_TOLERANCE: f64 = 1e-9;

/// The wasm file name cargo produces for `psl-kernels-wasm`.
pub const WASM_FILE: &str = "psl_kernels_wasm.wasm";

/// Root of the repository (where `Cargo.toml` of the host workspace lives), as seen when this
/// crate was compiled.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Default location of a module build: `guests/out/psl_kernels_wasm_<simd|scalar>.wasm`, where
/// `cargo xtask guests` (and `psl-bench build-kernels`) put them.
/// Relative to the current directory if it exists there, else to [`repo_root`].
pub fn default_module_path(kind: ModuleKind) -> PathBuf {
    let sub = match kind {
        ModuleKind::Simd => "simd",
        ModuleKind::Scalar | ModuleKind::Native => "scalar",
    };
    let rel = Path::new("guests/out").join(format!("psl_kernels_wasm_{sub}.wasm"));
    if rel.exists() {
        rel
    } else {
        repo_root().join(rel)
    }
}

/// The two commands that build the modules, as `(kind, RUSTFLAGS, target dir)`.
pub fn guest_builds(root: &Path) -> [(ModuleKind, &'static str, PathBuf); 2] {
    [
        (
            ModuleKind::Simd,
            "-C target-feature=+simd128",
            root.join("guests/target/simd"),
        ),
        (ModuleKind::Scalar, "", root.join("guests/target/scalar")),
    ]
}

/// Builds both kernel modules with cargo (release, `wasm32-wasip1`).
pub fn build_guest_modules(root: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    for (kind, rustflags, target_dir) in guest_builds(root) {
        eprintln!("building the {kind:?} kernel module (RUSTFLAGS={rustflags:?})");
        let status = std::process::Command::new(&cargo)
            .arg("build")
            .arg("--manifest-path")
            .arg(root.join("guests/Cargo.toml"))
            .args([
                "--target",
                "wasm32-wasip1",
                "--release",
                "-p",
                "psl-kernels-wasm",
            ])
            .arg("--target-dir")
            .arg(&target_dir)
            .env("RUSTFLAGS", rustflags)
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .status()
            .context("starting cargo")?;
        anyhow::ensure!(
            status.success(),
            "building the {kind:?} kernel module failed ({status})"
        );
        let built = target_dir.join("wasm32-wasip1/release").join(WASM_FILE);
        let out = root.join(default_module_path_rel(kind));
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::copy(&built, &out).with_context(|| format!("copying {}", built.display()))?;
    }
    Ok(())
}

fn default_module_path_rel(kind: ModuleKind) -> PathBuf {
    let sub = if kind == ModuleKind::Simd {
        "simd"
    } else {
        "scalar"
    };
    Path::new("guests/out").join(format!("psl_kernels_wasm_{sub}.wasm"))
}

/// Reads a module and checks that it has no imports at all (the kernels need none; an import
/// would mean `std` or WASI crept in and the engines would need a linker).
pub fn load_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "cannot read the kernel module {}; build it first with \
             `cargo xtask guests`",
            path.display()
        )
    })?;
    let imports = module_imports(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    anyhow::ensure!(
        imports.is_empty(),
        "{} must not import anything, but imports {imports:?}",
        path.display()
    );
    Ok(bytes)
}

/// `module.name` of every import of a wasm module.
pub fn module_imports(wasm: &[u8]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let wasmparser::Payload::ImportSection(reader) = payload? {
            for import in reader.into_imports() {
                let import = import?;
                out.push(format!("{}.{}", import.module, import.name));
            }
        }
    }
    Ok(out)
}

/// What to run.
#[derive(Clone, Debug, Serialize)]
pub struct Options {
    /// Problem size.
    #[serde(serialize_with = "ser_size")]
    pub size: Size,
    /// Repetitions per kernel for ordinary engines.
    pub repeat: usize,
    /// Repetitions per kernel for slow engines (interpreters).
    pub slow_repeat: usize,
    /// Kernel names to run (empty = all).
    pub kernels: Vec<String>,
    /// Engine names to run (empty = all; `native` is always run).
    pub engines: Vec<String>,
    /// The SIMD module.
    pub simd_module: PathBuf,
    /// The scalar module.
    pub scalar_module: PathBuf,
    /// Print progress to stderr.
    #[serde(skip)]
    pub progress: bool,
}

fn ser_size<S: serde::Serializer>(size: &Size, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(size.name())
}

impl Default for Options {
    fn default() -> Self {
        Self {
            size: Size::Bench,
            repeat: 5,
            slow_repeat: 3,
            kernels: Vec::new(),
            engines: Vec::new(),
            simd_module: default_module_path(ModuleKind::Simd),
            scalar_module: default_module_path(ModuleKind::Scalar),
            progress: true,
        }
    }
}

/// Where and with what the benchmark ran.
#[derive(Clone, Debug, Serialize)]
pub struct MachineInfo {
    /// CPU model (from `/proc/cpuinfo`).
    pub cpu: String,
    /// Logical CPUs available to this process.
    pub logical_cpus: usize,
    /// OS and architecture.
    pub os: String,
    /// Kernel release (Linux).
    pub kernel: String,
    /// 1/5/15-minute load average at the start (Linux); a loaded machine means noisy numbers.
    pub loadavg_at_start: String,
    /// rustc that built this binary (the guests are built by the same toolchain in CI).
    pub rustc: String,
    /// wasmtime crate version.
    pub wasmtime: String,
    /// wasmi crate version.
    pub wasmi: String,
    /// Seconds since the Unix epoch when the run started.
    pub unix_time: u64,
}

impl MachineInfo {
    /// Collects what can be found; unknown fields are `"unknown"`.
    pub fn collect() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let or_unknown = |s: String| {
            if s.trim().is_empty() {
                "unknown".into()
            } else {
                s.trim().to_owned()
            }
        };
        Self {
            cpu,
            logical_cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            os: format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
            kernel: or_unknown(read("/proc/sys/kernel/osrelease")),
            loadavg_at_start: or_unknown(read("/proc/loadavg")),
            rustc: env!("PSL_BENCH_RUSTC").to_owned(),
            wasmtime: env!("PSL_BENCH_WASMTIME").to_owned(),
            wasmi: env!("PSL_BENCH_WASMI").to_owned(),
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }
}

/// One engine as it took part in the run.
#[derive(Clone, Debug, Serialize)]
pub struct EngineInfo {
    /// Engine name.
    pub name: String,
    /// Module build it ran.
    pub module: ModuleKind,
    /// Time to prepare (compile) the module, in milliseconds (informative; not part of ratios).
    pub prepare_ms: f64,
    /// Why the engine could not be prepared, if it could not.
    pub error: Option<String>,
}

/// One kernel on one engine.
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    /// Engine name.
    pub engine: String,
    /// Every timed call, in milliseconds, in run order.
    pub samples_ms: Vec<f64>,
    /// Median of the samples (ms).
    pub median_ms: Option<f64>,
    /// Fastest sample (ms).
    pub min_ms: Option<f64>,
    /// Median time relative to the native median.
    pub ratio: Option<f64>,
    /// Fastest time relative to the fastest native time.
    pub ratio_min: Option<f64>,
    /// Checksum returned (the last one, all must be equal).
    pub checksum: Option<f64>,
    /// Relative difference to the native checksum.
    pub rel_err: Option<f64>,
    /// Whether the checksum equals the native one bit for bit.
    pub bit_identical: bool,
    /// The error (trap, mismatch, …) if the kernel failed on this engine.
    pub error: Option<String>,
}

/// One kernel on every engine.
#[derive(Clone, Debug, Serialize)]
pub struct KernelResult {
    /// Kernel name.
    pub name: String,
    /// Native checksum (the reference).
    pub native_checksum: Option<f64>,
    /// One cell per engine, in [`Report::engines`] order.
    pub cells: Vec<Cell>,
}

/// Geometric mean of one engine's ratios over the kernels.
#[derive(Clone, Debug, Serialize)]
pub struct Geomean {
    /// Engine name.
    pub engine: String,
    /// Geometric mean of the median ratios.
    pub ratio: Option<f64>,
    /// Geometric mean of the min ratios.
    pub ratio_min: Option<f64>,
    /// Number of kernels included (those that ran correctly on this engine).
    pub kernels: usize,
}

/// The whole run, as written to `kernels.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Format identifier.
    pub schema: &'static str,
    /// Machine and versions.
    pub machine: MachineInfo,
    /// The options used.
    pub options: Options,
    /// Engines, in column order.
    pub engines: Vec<EngineInfo>,
    /// Per-kernel results.
    pub kernels: Vec<KernelResult>,
    /// Geometric means per engine (same order as `engines`).
    pub geomeans: Vec<Geomean>,
    /// Human-readable list of everything that went wrong (empty on success).
    pub failures: Vec<String>,
}

impl Report {
    /// Geometric mean ratio of an engine, if it has one.
    pub fn geomean(&self, engine: &str) -> Option<f64> {
        self.geomeans
            .iter()
            .find(|g| g.engine == engine)
            .and_then(|g| g.ratio)
    }
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

fn geomean(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    Some((v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp())
}

/// Relative difference of `got` to `want` (absolute when `want` is 0).
pub fn relative_error(got: f64, want: f64) -> f64 {
    let scale = want.abs();
    if scale == 0.0 {
        (got - want).abs()
    } else {
        (got - want).abs() / scale
    }
}

/// Runs the benchmark with the given engines (normally [`engines::standard_engines`]).
pub fn run(options: &Options, mut engines: Vec<EngineEntry>) -> anyhow::Result<Report> {
    let machine = MachineInfo::collect();
    anyhow::ensure!(
        options.repeat >= 1 && options.slow_repeat >= 1,
        "repetitions must be at least 1"
    );
    for wanted in &options.engines {
        anyhow::ensure!(
            engines.iter().any(|e| e.engine.name() == wanted),
            "unknown engine {wanted:?}; known: {}",
            engines
                .iter()
                .map(|e| e.engine.name().to_owned())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    engines.retain(|e| {
        e.module == ModuleKind::Native
            || options.engines.is_empty()
            || options.engines.iter().any(|w| w == e.engine.name())
    });
    let native = engines
        .iter()
        .position(|e| e.module == ModuleKind::Native)
        .context("the engine list must contain the native engine")?;
    let kernels: Vec<&str> = if options.kernels.is_empty() {
        psl_kernels::KERNELS.iter().map(|(n, _)| *n).collect()
    } else {
        for k in &options.kernels {
            anyhow::ensure!(psl_kernels::find(k).is_some(), "unknown kernel {k:?}");
        }
        options.kernels.iter().map(String::as_str).collect()
    };

    // Load the modules that some engine needs.
    let needs = |kind| engines.iter().any(|e| e.module == kind);
    let simd = if needs(ModuleKind::Simd) {
        load_module(&options.simd_module)?
    } else {
        Vec::new()
    };
    let scalar = if needs(ModuleKind::Scalar) {
        load_module(&options.scalar_module)?
    } else {
        Vec::new()
    };

    let mut infos = Vec::new();
    for e in &mut engines {
        let bytes: &[u8] = match e.module {
            ModuleKind::Native => &[],
            ModuleKind::Simd => &simd,
            ModuleKind::Scalar => &scalar,
        };
        let start = Instant::now();
        let result = e.engine.prepare(bytes);
        let prepare_ms = start.elapsed().as_secs_f64() * 1e3;
        if options.progress {
            eprintln!("prepared {:<24} in {prepare_ms:8.1} ms", e.engine.name());
        }
        infos.push(EngineInfo {
            name: e.engine.name().to_owned(),
            module: e.module,
            prepare_ms,
            error: result.err().map(|err| format!("{err:#}")),
        });
    }

    // samples[k][e], errors[k][e], checksums[k][e]
    let (nk, ne) = (kernels.len(), engines.len());
    let mut samples = vec![vec![Vec::<f64>::new(); ne]; nk];
    let mut errors: Vec<Vec<Option<String>>> = vec![vec![None; ne]; nk];
    let mut sums: Vec<Vec<Option<f64>>> = vec![vec![None; ne]; nk];
    let rounds = options.repeat.max(options.slow_repeat);
    for round in 0..rounds {
        for (k, kernel) in kernels.iter().enumerate() {
            if options.progress {
                eprint!("[{}/{rounds}] {kernel:<15}", round + 1);
            }
            for (e, entry) in engines.iter_mut().enumerate() {
                let limit = if entry.engine.is_slow() {
                    options.slow_repeat
                } else {
                    options.repeat
                };
                if round >= limit || infos[e].error.is_some() || errors[k][e].is_some() {
                    continue;
                }
                match entry.engine.run(kernel, options.size) {
                    Ok((sum, time)) => {
                        if let Some(prev) = sums[k][e]
                            && prev.to_bits() != sum.to_bits()
                        {
                            errors[k][e] = Some(format!(
                                "checksum changed between runs: {prev:e} then {sum:e}"
                            ));
                        }
                        sums[k][e] = Some(sum);
                        samples[k][e].push(time.as_secs_f64() * 1e3);
                        if options.progress {
                            eprint!(" {:.0}", time.as_secs_f64() * 1e3);
                        }
                    }
                    Err(err) => {
                        if options.progress {
                            eprint!(" ERR");
                        }
                        errors[k][e] = Some(format!("{err:#}"));
                    }
                }
            }
            if options.progress {
                eprintln!();
            }
        }
    }

    let mut failures = Vec::new();
    for info in &infos {
        if let Some(err) = &info.error {
            failures.push(format!("engine {}: {err}", info.name));
        }
    }
    let mut results = Vec::new();
    for (k, kernel) in kernels.iter().enumerate() {
        let reference = sums[k][native];
        let native_median = median(&samples[k][native]);
        let native_min = samples[k][native].iter().copied().reduce(f64::min);
        let mut cells = Vec::new();
        for e in 0..ne {
            let mut error = errors[k][e].clone();
            let checksum = sums[k][e];
            let rel_err = match (checksum, reference) {
                (Some(got), Some(want)) => Some(relative_error(got, want)),
                _ => None,
            };
            if error.is_none()
                && let (Some(got), Some(want), Some(rel)) = (checksum, reference, rel_err)
                && !(rel <= CHECKSUM_TOLERANCE && got.is_finite())
            {
                error = Some(format!(
                    "checksum mismatch: {got:e} vs native {want:e} (relative error {rel:e})"
                ));
            }
            if let Some(err) = &error {
                failures.push(format!("{kernel} on {}: {err}", infos[e].name));
            }
            let med = median(&samples[k][e]);
            let min = samples[k][e].iter().copied().reduce(f64::min);
            let ok = error.is_none();
            cells.push(Cell {
                engine: infos[e].name.clone(),
                samples_ms: samples[k][e].clone(),
                median_ms: med,
                min_ms: min,
                ratio: med.zip(native_median).filter(|_| ok).map(|(a, b)| a / b),
                ratio_min: min.zip(native_min).filter(|_| ok).map(|(a, b)| a / b),
                checksum,
                rel_err,
                bit_identical: matches!((checksum, reference), (Some(a), Some(b)) if a.to_bits() == b.to_bits()),
                error,
            });
        }
        results.push(KernelResult {
            name: (*kernel).to_owned(),
            native_checksum: reference,
            cells,
        });
    }
    let geomeans = (0..ne)
        .map(|e| {
            let ratios: Vec<f64> = results.iter().filter_map(|r| r.cells[e].ratio).collect();
            let mins: Vec<f64> = results
                .iter()
                .filter_map(|r| r.cells[e].ratio_min)
                .collect();
            Geomean {
                engine: infos[e].name.clone(),
                ratio: geomean(&ratios),
                ratio_min: geomean(&mins),
                kernels: ratios.len(),
            }
        })
        .collect();
    Ok(Report {
        schema: "psl-bench/kernels/v1",
        machine,
        options: options.clone(),
        engines: infos,
        kernels: results,
        geomeans,
        failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let g = geomean(&[1.0, 4.0]).unwrap_or(f64::NAN);
        assert!((g - 2.0).abs() < 1e-12);
        assert_eq!(relative_error(1.0, 0.0), 1.0);
        assert!(relative_error(1.0 + 1e-12, 1.0) < CHECKSUM_TOLERANCE);
    }

    /// Every kernel at Mini size, natively and on wasm (both builds, JIT and interpreter): the
    /// checksums must agree. Fails, rather than skips, when the modules were not built.
    #[test]
    fn wasm_checksums_match_native_at_mini_size() {
        let options = Options {
            size: Size::Mini,
            repeat: 1,
            slow_repeat: 1,
            progress: false,
            ..Options::default()
        };
        for path in [&options.simd_module, &options.scalar_module] {
            assert!(
                path.exists(),
                "{} is missing: build the kernel modules first with \
                 `cargo xtask guests`",
                path.display()
            );
        }
        let wanted = [
            "cranelift-simd",
            "cranelift-scalar",
            "cranelift-epoch-simd",
            "cranelift-fuel-scalar",
            "wasmi-scalar",
        ];
        let options = Options {
            engines: wanted.iter().map(|s| (*s).to_owned()).collect(),
            ..options
        };
        let report = match run(&options, engines::standard_engines()) {
            Ok(r) => r,
            Err(e) => panic!("benchmark failed: {e:#}"),
        };
        assert!(
            report.failures.is_empty(),
            "failures: {:#?}",
            report.failures
        );
        assert_eq!(report.kernels.len(), psl_kernels::KERNELS.len());
        for k in &report.kernels {
            assert_eq!(k.cells.len(), wanted.len() + 1);
            for c in &k.cells {
                assert!(
                    c.error.is_none() && c.checksum.is_some(),
                    "{} on {}: {:?}",
                    k.name,
                    c.engine,
                    c.error
                );
            }
        }
    }

    #[test]
    fn modules_have_no_imports() {
        for kind in [ModuleKind::Simd, ModuleKind::Scalar] {
            let path = default_module_path(kind);
            if let Err(e) = load_module(&path) {
                panic!("{e:#}");
            }
        }
        // And the check itself works: a module with an import is rejected.
        let with_import = module_with_one_import();
        assert_eq!(
            module_imports(&with_import).ok(),
            Some(vec!["env.f".to_owned()])
        );
    }

    /// `(module (import "env" "f" (func)))`, hand-encoded.
    fn module_with_one_import() -> Vec<u8> {
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        m.extend_from_slice(&[1, 4, 1, 0x60, 0, 0]); // type section: one func type () -> ()
        m.extend_from_slice(&[2, 9, 1, 3, b'e', b'n', b'v', 1, b'f', 0, 0]); // import env.f
        m
    }
}

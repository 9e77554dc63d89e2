//! Execution engines for the kernel benchmark, behind one trait.
//!
//! An engine is prepared once with a module (compilation happens there and is not timed) and
//! then runs kernels; every [`KernelEngine::run`] uses a fresh instance, and only the call of
//! the kernel's export is timed. To add an engine (for example the production PSL runtime),
//! implement [`KernelEngine`] and list it in [`standard_engines`].

use anyhow::{Context, anyhow, bail};
use psl_kernels::Size;
use psl_runtime::DeadlineMode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Which build of the kernels an engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleKind {
    /// No wasm: the kernels linked into this binary.
    Native,
    /// `psl-kernels-wasm` built with `-C target-feature=+simd128`.
    Simd,
    /// `psl-kernels-wasm` built without SIMD (plain wasm32 MVP + default features).
    Scalar,
}

/// Something that can run the kernels of `psl-kernels` and time them.
pub trait KernelEngine {
    /// Short, unique, stable name used in tables, JSON and the plot.
    fn name(&self) -> &str;

    /// Compiles/loads the module (not timed). Called once before any [`KernelEngine::run`];
    /// `wasm` is empty for [`ModuleKind::Native`] engines.
    fn prepare(&mut self, wasm: &[u8]) -> anyhow::Result<()>;

    /// Runs kernel `kernel` (a name from `psl_kernels::KERNELS`) at `size` on a fresh instance
    /// and returns its checksum and the time of the call alone.
    fn run(&mut self, kernel: &str, size: Size) -> anyhow::Result<(f64, Duration)>;

    /// Interpreters are an order of magnitude slower; the harness runs them fewer times.
    fn is_slow(&self) -> bool {
        false
    }
}

/// An engine together with the module build it runs.
pub struct EngineEntry {
    /// The engine.
    pub engine: Box<dyn KernelEngine>,
    /// The module it is prepared with.
    pub module: ModuleKind,
}

/// Every engine the benchmark knows, in report order.
///
/// **This is the list to extend.** The production runtime (`psl-runtime`, with its deadline
/// mechanism and memory caps on) belongs here as one more entry, e.g.
/// `entry(PslRuntimeEngine::new("psl", …), ModuleKind::Simd)`, ideally right after
/// `cranelift-simd` so the cost of enforcement reads off the table.
pub fn standard_engines() -> Vec<EngineEntry> {
    fn entry(engine: impl KernelEngine + 'static, module: ModuleKind) -> EngineEntry {
        EngineEntry {
            engine: Box::new(engine),
            module,
        }
    }
    use Interruption::{Epoch, Fuel, None as Plain};
    use ModuleKind::{Scalar, Simd};
    #[allow(unused_mut, reason = "extended below when the `winch` feature is on")]
    let mut engines = vec![
        entry(Native, ModuleKind::Native),
        // The production runtime: pooling allocator, memory caps, a 60 s deadline enforced by
        // the flag checks (psl-runtime/src/deadline.rs).
        entry(Psl::new("psl-simd", DeadlineMode::Flag), Simd),
        entry(Psl::new("psl-scalar", DeadlineMode::Flag), Scalar),
        // The same runtime with wasmtime's epoch interruption as the deadline mechanism.
        entry(Psl::new("psl-epoch-simd", DeadlineMode::Epoch), Simd),
        entry(
            Wasmtime::new("cranelift-simd", Compiler::Cranelift, Plain),
            Simd,
        ),
        entry(
            Wasmtime::new("cranelift-scalar", Compiler::Cranelift, Plain),
            Scalar,
        ),
        entry(
            Wasmtime::new("cranelift-epoch-simd", Compiler::Cranelift, Epoch),
            Simd,
        ),
        entry(
            Wasmtime::new("cranelift-epoch-scalar", Compiler::Cranelift, Epoch),
            Scalar,
        ),
        entry(
            Wasmtime::new("cranelift-fuel-simd", Compiler::Cranelift, Fuel),
            Simd,
        ),
        entry(
            Wasmtime::new("cranelift-fuel-scalar", Compiler::Cranelift, Fuel),
            Scalar,
        ),
        // Interpreter-class stand-in (for WAMR-interpreter/Twine-like enclave runtimes): the
        // scalar build, since such interpreters generally lack wasm SIMD.
        entry(Wasmi::new("wasmi-scalar"), Scalar),
    ];
    #[cfg(feature = "winch")]
    {
        engines.push(entry(
            Wasmtime::new("winch-simd", Compiler::Winch, Plain),
            Simd,
        ));
        engines.push(entry(
            Wasmtime::new("winch-scalar", Compiler::Winch, Plain),
            Scalar,
        ));
    }
    engines
}

/// The PSL production runtime (`psl-runtime`) with its limits and deadline enforcement on.
pub struct Psl {
    name: String,
    mode: DeadlineMode,
    runtime: Option<psl_runtime::Runtime>,
    function: Option<Arc<psl_runtime::Function>>,
}

/// The deadline every PSL-engine run is under: far above any kernel's run time, so it never
/// fires, but armed and checked exactly as in production.
const PSL_DEADLINE: Duration = Duration::from_secs(60);

impl Psl {
    /// An unprepared runtime with the given deadline mechanism.
    pub fn new(name: &str, mode: DeadlineMode) -> Self {
        Self {
            name: name.to_owned(),
            mode,
            runtime: None,
            function: None,
        }
    }
}

impl KernelEngine for Psl {
    fn name(&self) -> &str {
        &self.name
    }

    fn prepare(&mut self, wasm: &[u8]) -> anyhow::Result<()> {
        let mut config = psl_runtime::RuntimeConfig {
            deadline: self.mode,
            ..Default::default()
        };
        config.limits.invocation.execution_time_max = PSL_DEADLINE;
        config.limits.worker.concurrent_instances_max = 4;
        let runtime = psl_runtime::Runtime::new(config)?;
        self.function = Some(
            runtime
                .deploy(wasm)
                .map_err(|e| anyhow!("{}: deploy: {e}", self.name))?,
        );
        self.runtime = Some(runtime);
        Ok(())
    }

    fn run(&mut self, kernel: &str, size: Size) -> anyhow::Result<(f64, Duration)> {
        let (Some(runtime), Some(function)) = (&self.runtime, &self.function) else {
            bail!("{}: run before prepare", self.name);
        };
        runtime
            .call_export_f64(function, kernel, size.code())
            .map_err(|e| anyhow!("{}: running {kernel}: {e}", self.name))
    }
}

/// The kernels compiled into this binary: the reference for times and checksums.
pub struct Native;

impl KernelEngine for Native {
    fn name(&self) -> &str {
        "native"
    }

    fn prepare(&mut self, _wasm: &[u8]) -> anyhow::Result<()> {
        Ok(())
    }

    fn run(&mut self, kernel: &str, size: Size) -> anyhow::Result<(f64, Duration)> {
        let f = psl_kernels::find(kernel).with_context(|| format!("no kernel named {kernel:?}"))?;
        let start = Instant::now();
        let checksum = std::hint::black_box(f(std::hint::black_box(size)));
        Ok((checksum, start.elapsed()))
    }
}

/// wasmtime code generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compiler {
    /// The optimising compiler (production).
    Cranelift,
    /// The baseline single-pass compiler (only with the `winch` feature).
    #[cfg(feature = "winch")]
    Winch,
}

/// How wasmtime can interrupt running guest code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interruption {
    /// No instrumentation: the guest cannot be stopped (the upper bound on speed).
    None,
    /// Epoch interruption, with a ticker thread bumping the epoch every millisecond and a
    /// deadline so far away that it never fires (measures the cost of the checks alone).
    Epoch,
    /// Fuel metering with practically unlimited fuel.
    Fuel,
}

/// A deadline that never arrives: 2^40 epoch ticks of 1 ms is about 35 years.
const FAR_EPOCH_DEADLINE: u64 = 1 << 40;

/// Epoch tick period of the ticker thread.
const EPOCH_TICK: Duration = Duration::from_millis(1);

fn wt<T>(r: wasmtime::Result<T>) -> anyhow::Result<T> {
    r.map_err(|e| anyhow!("{e:#}"))
}

/// wasmtime with a given compiler and interruption mode (default configuration otherwise).
pub struct Wasmtime {
    name: String,
    compiler: Compiler,
    interruption: Interruption,
    engine: Option<wasmtime::Engine>,
    module: Option<wasmtime::Module>,
    ticker: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Wasmtime {
    /// An unprepared engine.
    pub fn new(name: &str, compiler: Compiler, interruption: Interruption) -> Self {
        Self {
            name: name.to_owned(),
            compiler,
            interruption,
            engine: None,
            module: None,
            ticker: None,
        }
    }

    fn stop_ticker(&mut self) {
        if let Some((stop, handle)) = self.ticker.take() {
            stop.store(true, Ordering::Relaxed);
            // A panicking ticker thread would only mean no more ticks; nothing to clean up.
            let _ = handle.join();
        }
    }
}

impl Drop for Wasmtime {
    fn drop(&mut self) {
        self.stop_ticker();
    }
}

impl KernelEngine for Wasmtime {
    fn name(&self) -> &str {
        &self.name
    }

    fn prepare(&mut self, wasm: &[u8]) -> anyhow::Result<()> {
        self.stop_ticker();
        let mut config = wasmtime::Config::new();
        match self.compiler {
            Compiler::Cranelift => config.strategy(wasmtime::Strategy::Cranelift),
            #[cfg(feature = "winch")]
            Compiler::Winch => config.strategy(wasmtime::Strategy::Winch),
        };
        match self.interruption {
            Interruption::None => {}
            Interruption::Epoch => {
                config.epoch_interruption(true);
            }
            Interruption::Fuel => {
                config.consume_fuel(true);
            }
        }
        let engine = wt(wasmtime::Engine::new(&config))?;
        let module = wt(wasmtime::Module::new(&engine, wasm))
            .with_context(|| format!("{}: compiling the kernel module", self.name))?;
        if self.interruption == Interruption::Epoch {
            let stop = Arc::new(AtomicBool::new(false));
            let (flag, ticking) = (stop.clone(), engine.clone());
            let handle = std::thread::Builder::new()
                .name(format!("{}-epoch", self.name))
                .spawn(move || {
                    while !flag.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        ticking.increment_epoch();
                    }
                })
                .context("spawning the epoch ticker")?;
            self.ticker = Some((stop, handle));
        }
        self.engine = Some(engine);
        self.module = Some(module);
        Ok(())
    }

    fn run(&mut self, kernel: &str, size: Size) -> anyhow::Result<(f64, Duration)> {
        let (Some(engine), Some(module)) = (&self.engine, &self.module) else {
            bail!("{}: run before prepare", self.name);
        };
        let mut store = wasmtime::Store::new(engine, ());
        match self.interruption {
            Interruption::None => {}
            Interruption::Epoch => store.set_epoch_deadline(FAR_EPOCH_DEADLINE),
            Interruption::Fuel => wt(store.set_fuel(u64::MAX))?,
        }
        let instance = wt(wasmtime::Instance::new(&mut store, module, &[]))?;
        let func = wt(instance.get_typed_func::<i32, f64>(&mut store, kernel))
            .with_context(|| format!("export {kernel:?}"))?;
        let start = Instant::now();
        let checksum = wt(func.call(&mut store, size.code()))
            .with_context(|| format!("{}: running {kernel}", self.name))?;
        Ok((checksum, start.elapsed()))
    }
}

/// The wasmi interpreter, with eager translation so that no compilation is timed.
pub struct Wasmi {
    name: String,
    engine: wasmi::Engine,
    module: Option<wasmi::Module>,
}

impl Wasmi {
    /// An unprepared interpreter.
    pub fn new(name: &str) -> Self {
        let mut config = wasmi::Config::default();
        config.compilation_mode(wasmi::CompilationMode::Eager);
        Self {
            name: name.to_owned(),
            engine: wasmi::Engine::new(&config),
            module: None,
        }
    }
}

impl KernelEngine for Wasmi {
    fn name(&self) -> &str {
        &self.name
    }

    fn prepare(&mut self, wasm: &[u8]) -> anyhow::Result<()> {
        let module = wasmi::Module::new(&self.engine, wasm)
            .with_context(|| format!("{}: translating the kernel module", self.name))?;
        self.module = Some(module);
        Ok(())
    }

    fn run(&mut self, kernel: &str, size: Size) -> anyhow::Result<(f64, Duration)> {
        let Some(module) = &self.module else {
            bail!("{}: run before prepare", self.name);
        };
        let mut store = wasmi::Store::new(&self.engine, ());
        let linker = wasmi::Linker::<()>::new(&self.engine);
        let instance = linker.instantiate_and_start(&mut store, module)?;
        let func = instance
            .get_typed_func::<i32, f64>(&store, kernel)
            .with_context(|| format!("export {kernel:?}"))?;
        let start = Instant::now();
        let checksum = func
            .call(&mut store, size.code())
            .with_context(|| format!("{}: running {kernel}", self.name))?;
        Ok((checksum, start.elapsed()))
    }

    fn is_slow(&self) -> bool {
        true
    }
}

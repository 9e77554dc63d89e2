//! The runtime: one wasmtime engine per worker, deploy (check, rewrite, compile, cache) and
//! invoke (instantiate from the pool, run under limits and a deadline, classify the outcome).
//!
//! Invocations are synchronous and run on the caller's thread; callers put them on a thread
//! pool. Concurrency is bounded by instance *slots*: each slot owns one deadline flag and one
//! linker in which `psl::deadline` is that flag, so instantiation stays on wasmtime's fast
//! `InstancePre` path. This module knows nothing about replication, capsules or locks: it
//! calls the [`Session`] it is given.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Memory, Module, OptLevel,
    PoolingAllocationConfig, ResourceLimiter, Store, Strategy,
};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::abi;
use crate::cache::{ArtifactCache, Lookup};
use crate::deadline::{self, Armed, Flag, Timer};
use crate::error::{DeployError, InvokeError, Limit};
use crate::host::{HostCtx, LogLine};
use crate::limits::Limits;
use crate::module::{self, Entry, FunctionId, ModuleInfo};
use crate::native::NativeFunction;
use crate::state::Session;

/// How execution deadlines are enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadlineMode {
    /// The production mode: a flag checked at loop headers and calls (see `deadline.rs`).
    Flag,
    /// wasmtime epoch interruption (for comparison in benchmarks).
    Epoch,
    /// No deadline at all. Benchmarks only: an infinite loop runs forever.
    Unbounded,
}

impl DeadlineMode {
    fn tag(self) -> u8 {
        match self {
            DeadlineMode::Flag => 1,
            DeadlineMode::Epoch => 2,
            DeadlineMode::Unbounded => 3,
        }
    }
}

/// Runtime configuration.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Every limit.
    pub limits: Limits,
    /// Deadline enforcement.
    pub deadline: DeadlineMode,
    /// Directory of the compiled-module cache; `None` keeps compiled modules in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Secret that authenticates cache entries (in a TEE: derived from the sealing key).
    pub cache_key: [u8; 32],
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            deadline: DeadlineMode::Flag,
            cache_dir: None,
            cache_key: [0; 32],
        }
    }
}

/// Errors creating a runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// wasmtime refused the configuration.
    #[error("engine: {0}")]
    Engine(String),
    /// The cache directory or timer thread could not be set up.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Per-store state: WASI, the host API state, and the resource limiter.
pub(crate) struct StoreData {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) host: HostCtx,
    pub(crate) limiter: GuestLimiter,
    pub(crate) memory: Option<Memory>,
}

pub(crate) struct GuestLimiter {
    memory_bytes_max: usize,
    table_elements_max: usize,
    denied: Option<InvokeError>,
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        _: usize,
        desired: usize,
        _: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes_max {
            self.denied = Some(InvokeError::Limit {
                limit: Limit::MemoryBytes,
                requested: desired as u64,
                max: self.memory_bytes_max as u64,
            });
            wasmtime::bail!("memory limit exceeded");
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _: usize,
        desired: usize,
        _: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements_max {
            self.denied = Some(InvokeError::Limit {
                limit: Limit::TableElements,
                requested: desired as u64,
                max: self.table_elements_max as u64,
            });
            wasmtime::bail!("table limit exceeded");
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        2
    }

    fn tables(&self) -> usize {
        4
    }
}

/// A deployed, compiled function.
pub struct Function {
    info: ModuleInfo,
    module: Module,
    /// One pre-linked instance template per slot (each slot links its own deadline flag).
    pres: Vec<OnceLock<InstancePre<StoreData>>>,
}

impl Function {
    /// The function's identity (hash of its module).
    pub fn id(&self) -> FunctionId {
        self.info.id
    }

    /// What deploy learned about it.
    pub fn info(&self) -> &ModuleInfo {
        &self.info
    }
}

/// What an invocation produced.
#[derive(Debug)]
pub struct Outcome {
    /// The function's output, or why it failed.
    pub result: Result<Vec<u8>, InvokeError>,
    /// Captured stdout (bounded).
    pub stdout: Vec<u8>,
    /// Captured stderr (bounded).
    pub stderr: Vec<u8>,
    /// Log lines.
    pub logs: Vec<LogLine>,
    /// Host calls made.
    pub host_calls: u64,
    /// Wall-clock time from the call to its return.
    pub elapsed: Duration,
}

struct Slots {
    free: Mutex<Vec<usize>>,
    freed: Condvar,
}

struct SlotGuard<'r> {
    slots: &'r Slots,
    index: usize,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut free) = self.slots.free.lock() {
            free.push(self.index);
        }
        self.slots.freed.notify_one();
    }
}

impl Slots {
    fn acquire(&self, wait: Duration) -> Result<SlotGuard<'_>, InvokeError> {
        let deadline = Instant::now() + wait;
        fn poisoned<T>(_: T) -> InvokeError {
            InvokeError::Internal("slot lock poisoned".into())
        }
        let mut free = self.free.lock().map_err(poisoned)?;
        loop {
            if let Some(index) = free.pop() {
                return Ok(SlotGuard { slots: self, index });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(InvokeError::Busy(wait));
            }
            free = self.freed.wait_timeout(free, left).map_err(poisoned)?.0;
        }
    }
}

/// The function runtime of one worker.
pub struct Runtime {
    engine: Engine,
    linkers: Vec<Linker<StoreData>>,
    flags: Vec<Flag>,
    timer: Timer,
    slots: Slots,
    config: RuntimeConfig,
    functions: Mutex<HashMap<FunctionId, Arc<Function>>>,
    cache: Option<ArtifactCache>,
    abandoned_compiles: Arc<AtomicUsize>,
    // Held for its Drop, which stops the ticker thread.
    _epoch_ticker: Option<EpochTicker>,
}

struct EpochTicker {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

const EPOCH_TICK: Duration = Duration::from_millis(1);

fn engine_config(config: &RuntimeConfig) -> Config {
    let limits = &config.limits;
    let slots = limits.worker.concurrent_instances_max;
    let mut c = Config::new();
    c.strategy(Strategy::Cranelift);
    c.cranelift_opt_level(OptLevel::Speed);
    c.max_wasm_stack(limits.invocation.wasm_stack_bytes_max);
    c.wasm_threads(true);
    c.shared_memory(true);
    c.wasm_multi_memory(true);
    c.epoch_interruption(config.deadline == DeadlineMode::Epoch);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_core_instances(slots)
        .total_memories(slots)
        .total_tables(slots.saturating_mul(4))
        .max_memories_per_module(1)
        .max_tables_per_module(4)
        .max_memory_size(limits.invocation.memory_bytes_max)
        .table_elements(limits.invocation.table_elements_max)
        .linear_memory_keep_resident(64 << 10)
        .table_keep_resident(16 << 10);
    c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    c
}

fn placeholder_store(engine: &Engine, limits: &Limits) -> Result<Store<StoreData>, RuntimeError> {
    let host = HostCtx::new(
        Vec::new(),
        Box::new(crate::native::NoState),
        limits.invocation.clone(),
        Instant::now(),
    )
    .map_err(|e| RuntimeError::Engine(e.to_string()))?;
    Ok(Store::new(
        engine,
        StoreData {
            wasi: WasiCtxBuilder::new().build_p1(),
            host,
            limiter: GuestLimiter {
                memory_bytes_max: 0,
                table_elements_max: 0,
                denied: None,
            },
            memory: None,
        },
    ))
}

impl Runtime {
    /// Creates a runtime with its engine, instance pool, deadline timer and cache.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let engine = Engine::new(&engine_config(&config))
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let mut base: Linker<StoreData> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut base, |d| &mut d.wasi)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        abi::add_to_linker(&mut base).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let n_slots = config.limits.worker.concurrent_instances_max as usize;
        let placeholder = placeholder_store(&engine, &config.limits)?;
        let (mut linkers, mut flags) = (Vec::new(), Vec::new());
        for _ in 0..n_slots {
            let mut linker = base.clone();
            if config.deadline == DeadlineMode::Flag {
                let flag =
                    Flag::new(&engine).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
                linker
                    .define(
                        &placeholder,
                        deadline::FLAG_IMPORT.0,
                        deadline::FLAG_IMPORT.1,
                        flag.memory().clone(),
                    )
                    .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
                flags.push(flag);
            }
            linkers.push(linker);
        }
        let cache = match &config.cache_dir {
            Some(dir) => Some(ArtifactCache::open(
                dir,
                config.cache_key,
                &engine,
                config.deadline.tag(),
            )?),
            None => None,
        };
        let epoch_ticker = (config.deadline == DeadlineMode::Epoch).then(|| start_ticker(&engine));
        Ok(Self {
            engine,
            linkers,
            flags,
            timer: Timer::start()?,
            slots: Slots {
                free: Mutex::new((0..n_slots).rev().collect()),
                freed: Condvar::new(),
            },
            config,
            functions: Mutex::new(HashMap::new()),
            cache,
            abandoned_compiles: Arc::new(AtomicUsize::new(0)),
            _epoch_ticker: epoch_ticker,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// The engine (for tools that inspect compiled artifacts).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Looks up a deployed function.
    pub fn function(&self, id: &FunctionId) -> Option<Arc<Function>> {
        self.functions.lock().ok()?.get(id).cloned()
    }

    /// Checks, rewrites, compiles (or loads from the cache) and registers a module.
    pub fn deploy(&self, wasm: &[u8]) -> Result<Arc<Function>, DeployError> {
        let memory_max = self.config.limits.invocation.memory_bytes_max as u64;
        let info = module::inspect(wasm, &self.config.limits.module, memory_max)?;
        if let Some(function) = self.function(&info.id) {
            return Ok(function);
        }
        let module = self.load_or_compile(&info, wasm)?;
        let n_slots = self.linkers.len();
        let function = Arc::new(Function {
            info,
            module,
            pres: (0..n_slots).map(|_| OnceLock::new()).collect(),
        });
        let mut functions = self
            .functions
            .lock()
            .map_err(|_| DeployError::Compile("registry lock poisoned".into()))?;
        if functions.len() >= self.config.limits.worker.modules_cached_max {
            // Evict an arbitrary entry: callers keep their own Arc, so nothing in flight breaks.
            if let Some(victim) = functions.keys().next().copied() {
                functions.remove(&victim);
            }
        }
        functions.insert(function.info.id, Arc::clone(&function));
        Ok(function)
    }

    fn load_or_compile(&self, info: &ModuleInfo, wasm: &[u8]) -> Result<Module, DeployError> {
        if let Some(cache) = &self.cache
            && let Lookup::Hit(artifact) = cache.get(&info.id)
        {
            // SAFETY: `deserialize` runs machine code that `artifact` describes. The bytes
            // come from this cache only after their MAC verified under a key only this
            // worker holds, and the entry name binds the module hash, this engine's
            // compatibility hash and the rewrite version: they are exactly what this
            // engine's `serialize` wrote for this module.
            #[allow(unsafe_code, reason = "authenticated artifact, argued above")]
            let loaded = unsafe { Module::deserialize(&self.engine, &artifact) };
            match loaded {
                Ok(module) => return Ok(module),
                Err(e) => {
                    tracing::warn!(error = %e, "cached artifact did not load; recompiling")
                }
            }
        }
        let module = self.compile(wasm)?;
        if let Some(cache) = &self.cache {
            match module.serialize() {
                Ok(artifact) => {
                    if let Err(e) = cache.put(&info.id, &artifact) {
                        tracing::warn!(error = %e, "could not write the compiled-module cache");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not serialize a compiled module"),
            }
        }
        Ok(module)
    }

    fn compile(&self, wasm: &[u8]) -> Result<Module, DeployError> {
        let code = match self.config.deadline {
            DeadlineMode::Flag => deadline::instrument(wasm).map_err(DeployError::Compile)?,
            DeadlineMode::Epoch | DeadlineMode::Unbounded => wasm.to_vec(),
        };
        if self.abandoned_compiles.load(Ordering::Acquire)
            >= self.config.limits.module.abandoned_compiles_max
        {
            return Err(DeployError::CompilerBusy);
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let engine = self.engine.clone();
        let abandoned = Arc::clone(&self.abandoned_compiles);
        let spawned = std::thread::Builder::new()
            .name("psl-compile".into())
            .spawn(move || {
                let result = Module::new(&engine, &code).map_err(|e| format!("{e:#}"));
                if tx.send(result).is_err() {
                    abandoned.fetch_sub(1, Ordering::AcqRel);
                }
            });
        spawned.map_err(|e| DeployError::Compile(format!("cannot start compiler thread: {e}")))?;
        let limit = self.config.limits.module.compile_time_max;
        match rx.recv_timeout(limit) {
            Ok(result) => result.map_err(DeployError::Compile),
            Err(_) => {
                // The thread keeps running until the compiler returns; count it so a flood
                // of slow modules cannot pile up compiler threads.
                self.abandoned_compiles.fetch_add(1, Ordering::AcqRel);
                drop(rx);
                Err(DeployError::CompileTimeout(limit))
            }
        }
    }

    /// Runs a deployed function on `input` with `session` as its state.
    pub fn invoke(
        &self,
        function: &Function,
        input: Vec<u8>,
        session: Box<dyn Session>,
    ) -> Outcome {
        self.execute(function, input, session, |store, instance| {
            call_entry(store, instance, function.info.entry)
        })
    }

    /// Calls an export of type `(i32) -> f64` under exactly the production limits and deadline
    /// (used by the compute benchmark); returns its result and the time of the call alone.
    pub fn call_export_f64(
        &self,
        function: &Function,
        export: &str,
        arg: i32,
    ) -> Result<(f64, Duration), InvokeError> {
        let mut result = None;
        let outcome = self.execute(
            function,
            Vec::new(),
            Box::new(crate::native::NoState),
            |store, instance| {
                let f = instance.get_typed_func::<i32, f64>(&mut *store, export)?;
                let started = Instant::now();
                let value = f.call(&mut *store, arg)?;
                result = Some((value, started.elapsed()));
                Ok(None)
            },
        );
        outcome.result?;
        result.ok_or_else(|| InvokeError::Internal("export returned no value".into()))
    }

    fn execute(
        &self,
        function: &Function,
        input: Vec<u8>,
        session: Box<dyn Session>,
        body: impl FnOnce(&mut Store<StoreData>, &wasmtime::Instance) -> wasmtime::Result<Option<i32>>,
    ) -> Outcome {
        let started = Instant::now();
        let limits = &self.config.limits;
        let slot = match self.slots.acquire(limits.worker.instance_wait_max) {
            Ok(slot) => slot,
            Err(error) => return failed(error, started, session),
        };
        let host = match HostCtx::new(input, session, limits.invocation.clone(), started) {
            Ok(host) => host,
            Err(error) => {
                return Outcome {
                    result: Err(error),
                    ..empty(started)
                };
            }
        };
        let cap = limits.invocation.stdio_bytes_max;
        let (stdout, stderr) = (MemoryOutputPipe::new(cap), MemoryOutputPipe::new(cap));
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .args(&[function.info.id.short()])
            .build_p1();
        let limiter = GuestLimiter {
            memory_bytes_max: limits.invocation.memory_bytes_max,
            table_elements_max: limits.invocation.table_elements_max,
            denied: None,
        };
        let mut store = Store::new(
            &self.engine,
            StoreData {
                wasi,
                host,
                limiter,
                memory: None,
            },
        );
        store.limiter(|d| &mut d.limiter);
        let budget = limits.invocation.execution_time_max;
        if self.config.deadline == DeadlineMode::Epoch {
            let ticks = budget.as_millis().max(1) as u64 / EPOCH_TICK.as_millis().max(1) as u64;
            store.set_epoch_deadline(ticks.max(1));
        }
        let flag = self.flags.get(slot.index);
        let armed: Option<Armed<'_>> = flag.map(|flag| self.timer.arm(flag, started + budget));
        let run = self
            .instantiate(&mut store, function, slot.index)
            .and_then(|instance| body(&mut store, &instance));
        drop(armed);
        let fired = flag.is_some_and(Flag::is_set);
        if let Some(flag) = flag {
            flag.lower();
        }
        drop(slot);
        let mut data = store.into_data();
        let fault = data.host.fault.take().or(data.limiter.denied.take());
        let guest_error = data.host.guest_error.clone();
        let (output, logs, host_calls, ended) = data.host.finish();
        let result = classify(
            run,
            fault,
            guest_error,
            fired,
            self.config.deadline,
            limits.invocation.wasm_stack_bytes_max,
            budget,
        )
        .and(ended)
        .map(|()| output);
        Outcome {
            result,
            stdout: stdout.contents().to_vec(),
            stderr: stderr.contents().to_vec(),
            logs,
            host_calls,
            elapsed: started.elapsed(),
        }
    }

    fn instantiate(
        &self,
        store: &mut Store<StoreData>,
        function: &Function,
        slot: usize,
    ) -> wasmtime::Result<wasmtime::Instance> {
        let pre = match function.pres.get(slot).and_then(OnceLock::get) {
            Some(pre) => pre,
            None => {
                let linker = self
                    .linkers
                    .get(slot)
                    .ok_or_else(|| wasmtime::Error::msg("no linker for slot"))?;
                let pre = linker.instantiate_pre(&function.module)?;
                let cell = function
                    .pres
                    .get(slot)
                    .ok_or_else(|| wasmtime::Error::msg("no slot"))?;
                cell.get_or_init(|| pre)
            }
        };
        let instance = pre.instantiate(&mut *store)?;
        store.data_mut().memory = instance.get_memory(&mut *store, "memory");
        if function.info.has_initialize {
            instance
                .get_typed_func::<(), ()>(&mut *store, "_initialize")?
                .call(&mut *store, ())?;
        }
        Ok(instance)
    }

    /// Runs a native function with the same host API and limits (no deadline can interrupt
    /// native code; host calls still check it).
    pub fn invoke_native(
        &self,
        function: &dyn NativeFunction,
        input: Vec<u8>,
        session: Box<dyn Session>,
    ) -> Outcome {
        let started = Instant::now();
        let mut host = match HostCtx::new(
            input,
            session,
            self.config.limits.invocation.clone(),
            started,
        ) {
            Ok(host) => host,
            Err(error) => {
                return Outcome {
                    result: Err(error),
                    ..empty(started)
                };
            }
        };
        let called = function.call(&mut host);
        let (output, logs, host_calls, ended) = host.finish();
        Outcome {
            result: called.and(ended).map(|()| output),
            logs,
            host_calls,
            ..empty(started)
        }
    }
}

fn call_entry(
    store: &mut Store<StoreData>,
    instance: &wasmtime::Instance,
    entry: Entry,
) -> wasmtime::Result<Option<i32>> {
    match entry {
        Entry::PslRun => {
            let run = instance.get_typed_func::<(), i32>(&mut *store, "psl_run")?;
            Ok(Some(run.call(&mut *store, ())?))
        }
        Entry::Start => {
            let start = instance.get_typed_func::<(), ()>(&mut *store, "_start")?;
            start.call(&mut *store, ())?;
            Ok(None)
        }
        Entry::None => {
            store.data_mut().host.fault = Some(InvokeError::NoEntryPoint);
            Err(wasmtime::Error::msg("module has no entry point"))
        }
    }
}

fn empty(started: Instant) -> Outcome {
    Outcome {
        result: Ok(Vec::new()),
        stdout: Vec::new(),
        stderr: Vec::new(),
        logs: Vec::new(),
        host_calls: 0,
        elapsed: started.elapsed(),
    }
}

fn failed(error: InvokeError, started: Instant, mut session: Box<dyn Session>) -> Outcome {
    let _ = session.finish();
    Outcome {
        result: Err(error),
        ..empty(started)
    }
}

fn classify(
    run: wasmtime::Result<Option<i32>>,
    fault: Option<InvokeError>,
    guest_error: Option<String>,
    deadline_fired: bool,
    mode: DeadlineMode,
    stack_max: usize,
    budget: Duration,
) -> Result<(), InvokeError> {
    let error = match run {
        Ok(None) | Ok(Some(0)) => return Ok(()),
        Ok(Some(code)) => {
            return Err(InvokeError::Guest(
                guest_error.unwrap_or_else(|| format!("psl_run returned {code}")),
            ));
        }
        Err(error) => error,
    };
    if let Some(fault) = fault {
        return Err(fault);
    }
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return if exit.0 == 0 {
            Ok(())
        } else {
            Err(InvokeError::Exit(exit.0))
        };
    }
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) if mode == DeadlineMode::Epoch => {
            Err(InvokeError::DeadlineExceeded(budget))
        }
        Some(wasmtime::Trap::UnreachableCodeReached) if deadline_fired => {
            Err(InvokeError::DeadlineExceeded(budget))
        }
        Some(wasmtime::Trap::StackOverflow) => Err(InvokeError::StackOverflow(stack_max)),
        Some(trap) => Err(InvokeError::Trap(format!("{trap}"))),
        None => Err(InvokeError::Trap(format!("{error:#}"))),
    }
}

fn start_ticker(engine: &Engine) -> EpochTicker {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (engine, flag) = (engine.clone(), Arc::clone(&stop));
    let thread = std::thread::Builder::new()
        .name("psl-epoch".into())
        .spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })
        .ok();
    EpochTicker { stop, thread }
}

//! Execution deadlines that cost almost nothing on the guest's hot path.
//!
//! wasmtime's epoch interruption checks a counter at every loop header and function entry,
//! and its slow path is a call into the runtime. That call clobbers registers, so in tight
//! floating-point loops the compiler spills the loop's live values around it on every
//! iteration (measured: up to 3x slower kernels). PSL instead rewrites every module at deploy
//! time (this module's [`instrument`]) so that each function entry and each loop header runs
//!
//! ```wat
//! (if (i32.atomic.load $psl_deadline (i32.const 0)) (then unreachable))
//! ```
//!
//! a load, a compare and a never-taken branch to a trap: no call, so nothing is spilled. The
//! load is atomic so the compiler can neither merge nor hoist it (a plain load would be
//! eliminated as redundant inside store-free loops).
//! `$psl_deadline` is a one-page *shared* memory that the module imports as memory 0 (every
//! memory index of the original module moves up by one, so the guest's own code cannot name
//! it). The host creates one per instance slot ([`Flag`]), and a timer thread ([`Timer`]) sets its first word
//! to 1 when the invocation's deadline passes; the guest then traps at its next loop header or
//! call, which the runtime reports as [`crate::InvokeError::DeadlineExceeded`].
//!
//! Safety argument (also in ARCHITECTURE.md):
//! * Every unbounded execution passes through a loop header or a function entry, and each of
//!   them checks the flag, so a running guest observes the flag within one loop iteration or
//!   call after it is set (host calls check the deadline themselves).
//! * The guest cannot clear the flag: its instructions address only memories with index >= 1
//!   after the rewrite, and the rewrite refuses modules that import memories or use shared
//!   memories or atomics of their own (validation runs without the threads feature).
//! * Shared memories are the wasmtime-sanctioned way for a host thread to write memory that a
//!   running guest reads; both sides access the flag with atomic operations.
//! * The flag is reset before a slot is reused, and a timer entry is removed under the timer's
//!   lock before the invocation returns, so a late timer cannot stop the next invocation.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use wasm_encoder::reencode::Reencode;
use wasm_encoder::{Instruction, MemArg, SectionId};
use wasmtime::{Engine, MemoryType, SharedMemory};

/// Version of the rewrite; part of every compiled-module cache key.
pub const INSTRUMENT_VERSION: u32 = 1;
/// Import module and name of the deadline flag memory.
pub const FLAG_IMPORT: (&str, &str) = ("psl", "deadline");

/// Rewrites a validated module so that it checks the deadline flag at every function entry and
/// loop header. The caller must have validated `wasm` and refused memory imports.
pub fn instrument(wasm: &[u8]) -> Result<Vec<u8>, String> {
    let mut rewriter = Rewriter {
        import_added: false,
    };
    let mut module = wasm_encoder::Module::new();
    rewriter
        .parse_core_module(&mut module, wasmparser::Parser::new(0), wasm)
        .map_err(|e| format!("rewriting for deadlines failed: {e}"))?;
    Ok(module.finish())
}

struct Rewriter {
    import_added: bool,
}

impl Rewriter {
    fn flag_import(&mut self, section: &mut wasm_encoder::ImportSection) {
        let ty = wasm_encoder::MemoryType {
            minimum: 1,
            maximum: Some(1),
            memory64: false,
            shared: true,
            page_size_log2: None,
        };
        section.import(FLAG_IMPORT.0, FLAG_IMPORT.1, ty);
        self.import_added = true;
    }
}

fn emit_check(function: &mut wasm_encoder::Function) {
    let flag = MemArg {
        offset: 0,
        align: 2,
        memory_index: 0,
    };
    function.instruction(&Instruction::I32Const(0));
    // An atomic load: a plain load would be merged by Cranelift's redundant-load elimination
    // with the entry check (no store in between), i.e. hoisted out of the loop. On x86-64 an
    // atomic (sequentially consistent) load is still a plain `mov`.
    function.instruction(&Instruction::I32AtomicLoad(flag));
    function.instruction(&Instruction::If(wasm_encoder::BlockType::Empty));
    function.instruction(&Instruction::Unreachable);
    function.instruction(&Instruction::End);
}

impl Reencode for Rewriter {
    type Error = std::convert::Infallible;

    fn memory_index(&mut self, memory: u32) -> Result<u32, wasm_encoder::reencode::Error> {
        // Memory 0 is the deadline flag; the module's own memories move up by one.
        Ok(memory.saturating_add(1))
    }

    fn parse_import_section(
        &mut self,
        imports: &mut wasm_encoder::ImportSection,
        section: wasmparser::ImportSectionReader<'_>,
    ) -> Result<(), wasm_encoder::reencode::Error> {
        // Imported memories precede defined ones; ours goes first of all.
        self.flag_import(imports);
        wasm_encoder::reencode::utils::parse_import_section(self, imports, section)
    }

    fn intersperse_section_hook(
        &mut self,
        module: &mut wasm_encoder::Module,
        _after: Option<SectionId>,
        before: Option<SectionId>,
    ) -> Result<(), wasm_encoder::reencode::Error> {
        // A module without an import section gets one holding only the flag.
        let import_comes_next = matches!(before, Some(SectionId::Type | SectionId::Import));
        if !self.import_added && !import_comes_next {
            let mut imports = wasm_encoder::ImportSection::new();
            self.flag_import(&mut imports);
            module.section(&imports);
        }
        Ok(())
    }

    fn parse_function_body(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        body: wasmparser::FunctionBody<'_>,
    ) -> Result<(), wasm_encoder::reencode::Error> {
        let mut function = self.new_function_with_parsed_locals(&body)?;
        emit_check(&mut function);
        let mut reader = body.get_operators_reader()?;
        while !reader.eof() {
            let operator = reader.read()?;
            let is_loop = matches!(operator, wasmparser::Operator::Loop { .. });
            function.instruction(&self.instruction(operator)?);
            if is_loop {
                emit_check(&mut function);
            }
        }
        code.function(&function);
        Ok(())
    }
}

/// A deadline flag: the shared memory one invocation imports.
#[derive(Clone)]
pub struct Flag(SharedMemory);

impl Flag {
    fn word(&self) -> &AtomicU32 {
        let cells = self.0.data();
        // The memory is one 64 KiB page (checked at creation), so the first word exists.
        let ptr = cells.as_ptr().cast::<u32>().cast_mut();
        // SAFETY: `ptr` points to the first 4 bytes of a live shared memory that `self.0`
        // keeps alive for the returned borrow's lifetime; the base of a wasm memory is page
        // aligned, so it is aligned for u32; the bytes sit in `UnsafeCell`s, and all host
        // accesses go through this atomic while the guest only reads them with wasm loads,
        // which is the concurrent access shared memories are made for.
        #[allow(
            unsafe_code,
            reason = "atomic access to a shared wasm memory, argued above"
        )]
        unsafe {
            AtomicU32::from_ptr(ptr)
        }
    }

    /// Creates a lowered flag: a fresh one-page shared memory.
    pub fn new(engine: &Engine) -> wasmtime::Result<Self> {
        let memory = SharedMemory::new(engine, MemoryType::shared(1, 1))?;
        if memory.data_size() < 4 {
            wasmtime::bail!("deadline flag memory is smaller than one word");
        }
        Ok(Self(memory))
    }

    fn set(&self, value: u32) {
        self.word().store(value, Ordering::Release);
    }

    /// Lowers the flag. Call only after the timer entry that could raise it was removed.
    pub fn lower(&self) {
        self.set(0);
    }

    /// Whether the flag is raised.
    pub fn is_set(&self) -> bool {
        self.word().load(Ordering::Acquire) != 0
    }

    /// The memory to import into the instance.
    pub fn memory(&self) -> &SharedMemory {
        &self.0
    }
}

#[derive(Default)]
struct TimerState {
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    armed: HashMap<u64, Flag>,
    next_id: u64,
    shutdown: bool,
}

/// One thread that raises flags when their deadlines pass.
pub struct Timer {
    shared: Arc<(Mutex<TimerState>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

/// An armed deadline; dropping it disarms it (call sites drop it when the invocation ends).
pub struct Armed<'t> {
    timer: &'t Timer,
    id: u64,
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        let (lock, _) = &*self.timer.shared;
        if let Ok(mut state) = lock.lock() {
            state.armed.remove(&self.id);
        }
    }
}

impl Timer {
    /// Starts the timer thread.
    pub fn start() -> std::io::Result<Self> {
        let shared = Arc::new((Mutex::new(TimerState::default()), Condvar::new()));
        let for_thread = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("psl-deadline".into())
            .spawn(move || run_timer(&for_thread))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Raises `flag` at `deadline` unless disarmed first.
    pub fn arm(&self, flag: &Flag, deadline: Instant) -> Armed<'_> {
        let (lock, wake) = &*self.shared;
        let mut state = match lock.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        let id = state.next_id;
        state.next_id = state.next_id.wrapping_add(1);
        let earliest = state
            .queue
            .peek()
            .is_none_or(|Reverse((at, _))| deadline < *at);
        state.queue.push(Reverse((deadline, id)));
        state.armed.insert(id, flag.clone());
        drop(state);
        if earliest {
            wake.notify_one();
        }
        Armed { timer: self, id }
    }
}

fn run_timer(shared: &(Mutex<TimerState>, Condvar)) {
    let (lock, wake) = shared;
    let Ok(mut state) = lock.lock() else { return };
    loop {
        if state.shutdown {
            return;
        }
        let now = Instant::now();
        while let Some(Reverse((at, id))) = state.queue.peek().copied() {
            if at > now {
                break;
            }
            state.queue.pop();
            if let Some(flag) = state.armed.remove(&id) {
                flag.set(1);
            }
        }
        // Entries of disarmed invocations stay queued until their time; bound the heap by
        // dropping them eagerly when it grows past what live invocations could need.
        if state.queue.len() > 4 * state.armed.len() + 1024 {
            let armed: Vec<_> = state.armed.keys().copied().collect();
            state.queue.retain(|Reverse((_, id))| armed.contains(id));
        }
        let next = state.queue.peek().map(|Reverse((at, _))| *at);
        state = match next {
            Some(at) => match wake.wait_timeout(state, at.saturating_duration_since(now)) {
                Ok((state, _)) => state,
                Err(_) => return,
            },
            None => match wake.wait(state) {
                Ok(state) => state,
                Err(_) => return,
            },
        };
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        let (lock, wake) = &*self.shared;
        if let Ok(mut state) = lock.lock() {
            state.shutdown = true;
        }
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_checks(wasm: &[u8]) -> usize {
        let text = wasmprinter_like(wasm);
        text.matches("unreachable").count()
    }

    // Counts `unreachable` opcodes by walking the operators (no printer dependency).
    fn wasmprinter_like(wasm: &[u8]) -> String {
        let mut out = String::new();
        for payload in wasmparser::Parser::new(0).parse_all(wasm) {
            if let Ok(wasmparser::Payload::CodeSectionEntry(body)) = payload {
                let mut reader = body.get_operators_reader().unwrap();
                while !reader.eof() {
                    out.push_str(&format!("{:?}\n", reader.read().unwrap()).to_lowercase());
                }
            }
        }
        out
    }

    #[test]
    fn adds_a_check_at_entry_and_every_loop() {
        let wasm = wat::parse_str(
            r#"(module (memory 1)
                 (func (export "f") (loop (br 0)))
                 (func (loop (loop (br 1)))))"#,
        )
        .unwrap();
        let out = instrument(&wasm).unwrap();
        assert_eq!(count_checks(&out), 5);
        // The module's own memory is now memory 1, behind the imported flag.
        let mut features = wasmparser::WasmFeatures::default();
        features.insert(wasmparser::WasmFeatures::THREADS);
        wasmparser::Validator::new_with_features(features)
            .validate_all(&out)
            .unwrap();
    }

    #[test]
    fn module_without_imports_or_types_gets_the_flag_import() {
        let wasm = wat::parse_str("(module)").unwrap();
        let out = instrument(&wasm).unwrap();
        let mut imports = 0;
        for payload in wasmparser::Parser::new(0).parse_all(&out) {
            if let Ok(wasmparser::Payload::ImportSection(s)) = payload {
                imports += s.into_imports().count();
            }
        }
        assert_eq!(imports, 1);
    }
}

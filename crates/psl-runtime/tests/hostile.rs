//! Hostile inputs: each gives a typed error for that invocation, and the runtime keeps serving.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use psl_runtime::*;

/// A minimal in-memory session for runtime tests (the real stores live in other crates).
#[derive(Clone, Default)]
struct MapState(Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>);

impl State for MapState {
    fn session(&self) -> Box<dyn Session> {
        Box::new(self.clone())
    }
}

impl Session for MapState {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.0.lock().unwrap().get(key).cloned())
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        self.0.lock().unwrap().insert(key.to_vec(), value.to_vec());
        Ok(())
    }
    fn delete(&mut self, key: &[u8]) -> Result<bool, StateError> {
        Ok(self.0.lock().unwrap().remove(key).is_some())
    }
    fn scan_prefix(
        &mut self,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StateError> {
        let map = self.0.lock().unwrap();
        Ok(map
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
    fn lock(&mut self, _: &[u8], _: LockMode, _: Duration) -> Result<(), StateError> {
        Ok(())
    }
    fn unlock(&mut self, _: &[u8]) -> Result<(), StateError> {
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StateError> {
        Ok(())
    }
    fn finish(&mut self) -> Result<(), StateError> {
        Ok(())
    }
}

const BUDGET: Duration = Duration::from_millis(300);

fn runtime() -> Runtime {
    let mut config = RuntimeConfig::default();
    config.limits.invocation.execution_time_max = BUDGET;
    config.limits.invocation.memory_bytes_max = 16 << 20;
    config.limits.invocation.host_calls_max = 1000;
    config.limits.invocation.key_bytes_max = 64;
    config.limits.invocation.value_bytes_max = 1024;
    config.limits.module.module_bytes_max = 1 << 20;
    config.limits.worker.concurrent_instances_max = 4;
    Runtime::new(config).unwrap()
}

fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap()
}

/// A well-behaved function: echoes its input and stores it under "k".
const ECHO: &str = r#"(module
  (import "psl" "input_len" (func $input_len (result i32)))
  (import "psl" "input_read" (func $input_read (param i32 i32) (result i32)))
  (import "psl" "output_write" (func $output_write (param i32 i32) (result i32)))
  (import "psl" "kv_put" (func $kv_put (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "k")
  (func (export "psl_run") (result i32) (local $n i32)
    (local.set $n (call $input_read (i32.const 1024) (call $input_len)))
    (drop (call $kv_put (i32.const 0) (i32.const 1) (i32.const 1024) (local.get $n)))
    (drop (call $output_write (i32.const 1024) (local.get $n)))
    (i32.const 0)))"#;

fn assert_still_serving(rt: &Runtime) {
    let state = MapState::default();
    let echo = rt.deploy(&wat(ECHO)).unwrap();
    let out = rt.invoke(&echo, b"still here".to_vec(), state.session());
    assert_eq!(out.result.unwrap(), b"still here");
    assert_eq!(
        state.0.lock().unwrap().get(b"k".as_slice()).unwrap(),
        b"still here"
    );
}

fn run(rt: &Runtime, text: &str) -> Result<Vec<u8>, InvokeError> {
    let function = rt.deploy(&wat(text)).unwrap();
    rt.invoke(&function, b"input".to_vec(), MapState::default().session())
        .result
}

#[test]
fn echo_works_and_reports_host_calls() {
    let rt = runtime();
    let echo = rt.deploy(&wat(ECHO)).unwrap();
    let out = rt.invoke(&echo, b"abc".to_vec(), MapState::default().session());
    assert_eq!(out.result.unwrap(), b"abc");
    assert_eq!(out.host_calls, 4);
}

#[test]
fn malformed_and_oversized_modules_are_refused_with_a_reason() {
    let rt = runtime();
    for bytes in [
        &b""[..],
        b"\0asm",
        b"\0asm\x01\0\0\0\x01\xff\xff",
        b"not wasm at all",
    ] {
        let err = rt.deploy(bytes).err().unwrap();
        assert!(matches!(err, DeployError::Malformed(_)), "{err}");
        assert!(!err.to_string().is_empty());
    }
    let big = vec![0u8; 2 << 20];
    assert!(matches!(rt.deploy(&big), Err(DeployError::TooLarge { .. })));
    assert_still_serving(&rt);
}

#[test]
fn infinite_loop_is_stopped_by_the_deadline() {
    let rt = runtime();
    let start = Instant::now();
    let err = run(
        &rt,
        r#"(module (memory (export "memory") 1)
        (func (export "psl_run") (result i32) (loop (br 0)) (i32.const 0)))"#,
    )
    .unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, InvokeError::DeadlineExceeded(_)), "{err}");
    assert!(
        took >= BUDGET && took < BUDGET + Duration::from_millis(500),
        "took {took:?}"
    );
    assert_still_serving(&rt);
}

#[test]
fn loop_free_recursion_and_tail_calls_are_stopped_by_the_deadline() {
    let rt = runtime();
    // Exponential recursion with no loop at all: only the function-entry checks can stop it.
    let err = run(
        &rt,
        r#"(module (memory (export "memory") 1)
        (func $fib (param i32) (result i32)
          (if (result i32) (i32.lt_u (local.get 0) (i32.const 2)) (then (local.get 0))
            (else (i32.add (call $fib (i32.sub (local.get 0) (i32.const 1)))
                           (call $fib (i32.sub (local.get 0) (i32.const 2)))))))
        (func (export "psl_run") (result i32) (drop (call $fib (i32.const 60))) (i32.const 0)))"#,
    )
    .unwrap_err();
    assert!(matches!(err, InvokeError::DeadlineExceeded(_)), "{err}");
    let err = run(
        &rt,
        r#"(module (memory (export "memory") 1)
        (func $spin (param i32) (result i32) (return_call $spin (local.get 0)))
        (func (export "psl_run") (result i32) (call $spin (i32.const 1))))"#,
    )
    .unwrap_err();
    assert!(matches!(err, InvokeError::DeadlineExceeded(_)), "{err}");
    assert_still_serving(&rt);
}

#[test]
fn deep_recursion_is_a_stack_overflow() {
    let rt = runtime();
    let err = run(
        &rt,
        r#"(module (memory (export "memory") 1)
        (func $f (call $f))
        (func (export "psl_run") (result i32) (call $f) (i32.const 0)))"#,
    )
    .unwrap_err();
    assert!(matches!(err, InvokeError::StackOverflow(_)), "{err}");
    assert_still_serving(&rt);
}

#[test]
fn memory_over_the_cap_is_refused() {
    let rt = runtime();
    let err = run(&rt, r#"(module (memory (export "memory") 1)
        (func (export "psl_run") (result i32) (drop (memory.grow (i32.const 1000))) (i32.const 0)))"#)
    .unwrap_err();
    assert!(
        matches!(
            err,
            InvokeError::Limit {
                limit: Limit::MemoryBytes,
                ..
            }
        ),
        "{err}"
    );
    // A module that could never start is refused at deploy time.
    let err = rt
        .deploy(&wat(r#"(module (memory (export "memory") 1000)
        (func (export "psl_run") (result i32) (i32.const 0)))"#))
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            DeployError::Shape {
                what: "initial memory bytes",
                ..
            }
        ),
        "{err}"
    );
    assert_still_serving(&rt);
}

/// Every host call, each with one out-of-range pointer/length argument.
#[test]
fn out_of_range_pointers_in_every_host_call_are_refused() {
    let rt = runtime();
    let far = "(i32.const 65530) (i32.const 100)";
    let ok = "(i32.const 0) (i32.const 1)";
    let cases = [
        (
            "input_read",
            "(param i32 i32) (result i32)",
            far.to_string(),
        ),
        (
            "output_write",
            "(param i32 i32) (result i32)",
            far.to_string(),
        ),
        (
            "kv_get",
            "(param i32 i32 i32 i32) (result i64)",
            format!("{far} {ok}"),
        ),
        (
            "kv_get",
            "(param i32 i32 i32 i32) (result i64)",
            format!("{ok} (i32.const -1) (i32.const 8)"),
        ),
        (
            "kv_put",
            "(param i32 i32 i32 i32) (result i32)",
            format!("{far} {ok}"),
        ),
        (
            "kv_put",
            "(param i32 i32 i32 i32) (result i32)",
            format!("{ok} {far}"),
        ),
        ("kv_delete", "(param i32 i32) (result i32)", far.to_string()),
        (
            "kv_scan",
            "(param i32 i32 i32 i32 i32) (result i32)",
            format!("{far} (i32.const 1) {ok}"),
        ),
        (
            "lock",
            "(param i32 i32 i32) (result i32)",
            format!("{far} (i32.const 1)"),
        ),
        ("unlock", "(param i32 i32) (result i32)", far.to_string()),
        (
            "log",
            "(param i32 i32 i32) (result i32)",
            format!("(i32.const 1) {far}"),
        ),
        ("fail", "(param i32 i32) (result i32)", far.to_string()),
    ];
    for (name, ty, args) in cases {
        // kv_scan returns i64; adapt the declared result.
        let ty = if name == "kv_scan" {
            ty.replace("(result i32)", "(result i64)")
        } else {
            ty.to_string()
        };
        let module = format!(
            r#"(module (import "psl" "{name}" (func $f {ty}))
                (memory (export "memory") 1)
                (data (i32.const 0) "k")
                (func (export "psl_run") (result i32) (drop (call $f {args})) (i32.const 0)))"#
        );
        let err = run(&rt, &module).expect_err(name);
        assert!(
            matches!(err, InvokeError::BadPointer { call, .. } if call == name),
            "{name}: {err}"
        );
    }
    // kv_take with a pending value and a bad buffer.
    let module = r#"(module
        (import "psl" "kv_put" (func $put (param i32 i32 i32 i32) (result i32)))
        (import "psl" "kv_get" (func $get (param i32 i32 i32 i32) (result i64)))
        (import "psl" "kv_take" (func $take (param i32 i32) (result i64)))
        (memory (export "memory") 1) (data (i32.const 0) "k")
        (func (export "psl_run") (result i32)
          (drop (call $put (i32.const 0) (i32.const 1) (i32.const 0) (i32.const 100)))
          (drop (call $get (i32.const 0) (i32.const 1) (i32.const 0) (i32.const 1)))
          (drop (call $take (i32.const 65535) (i32.const 100))) (i32.const 0)))"#;
    let err = run(&rt, module).unwrap_err();
    assert!(
        matches!(
            err,
            InvokeError::BadPointer {
                call: "kv_take",
                ..
            }
        ),
        "{err}"
    );
    assert_still_serving(&rt);
}

#[test]
fn oversized_keys_values_and_too_many_calls_hit_limits() {
    let rt = runtime();
    let put = |k: u32, v: u32| {
        format!(
            r#"(module (import "psl" "kv_put" (func $put (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (func (export "psl_run") (result i32) (drop (call $put (i32.const 0) (i32.const {k}) (i32.const 0) (i32.const {v}))) (i32.const 0)))"#
        )
    };
    let err = run(&rt, &put(65, 1)).unwrap_err();
    assert!(
        matches!(
            err,
            InvokeError::Limit {
                limit: Limit::KeyBytes,
                requested: 65,
                max: 64
            }
        ),
        "{err}"
    );
    let err = run(&rt, &put(1, 1025)).unwrap_err();
    assert!(
        matches!(
            err,
            InvokeError::Limit {
                limit: Limit::ValueBytes,
                ..
            }
        ),
        "{err}"
    );
    let err = run(
        &rt,
        r#"(module (import "psl" "flush" (func $flush (result i32)))
        (memory (export "memory") 1)
        (func (export "psl_run") (result i32) (loop (drop (call $flush)) (br 0)) (i32.const 0)))"#,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            InvokeError::Limit {
                limit: Limit::HostCalls,
                requested: 1001,
                ..
            }
        ),
        "{err}"
    );
    let err = run(&rt, r#"(module (import "psl" "lock" (func $lock (param i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (func (export "psl_run") (result i32) (drop (call $lock (i32.const 0) (i32.const 1) (i32.const 7))) (i32.const 0)))"#)
    .unwrap_err();
    assert!(
        matches!(err, InvokeError::BadArgument { call: "lock", .. }),
        "{err}"
    );
    assert_still_serving(&rt);
}

#[test]
fn oversized_input_is_refused() {
    let mut config = RuntimeConfig::default();
    config.limits.invocation.input_bytes_max = 10;
    config.limits.worker.concurrent_instances_max = 2;
    let rt = Runtime::new(config).unwrap();
    let echo = rt.deploy(&wat(ECHO)).unwrap();
    let out = rt.invoke(&echo, vec![0; 11], MapState::default().session());
    assert!(matches!(
        out.result,
        Err(InvokeError::Limit {
            limit: Limit::InputBytes,
            ..
        })
    ));
}

#[test]
fn traps_and_guest_failures_are_typed() {
    let rt = runtime();
    let err = run(
        &rt,
        r#"(module (memory (export "memory") 1)
        (func (export "psl_run") (result i32) (drop (i32.load (i32.const 70000))) (i32.const 0)))"#,
    )
    .unwrap_err();
    assert!(matches!(err, InvokeError::Trap(_)), "{err}");
    let err = run(&rt, r#"(module (import "psl" "fail" (func $fail (param i32 i32) (result i32)))
        (memory (export "memory") 1) (data (i32.const 0) "broken")
        (func (export "psl_run") (result i32) (drop (call $fail (i32.const 0) (i32.const 6))) (i32.const 1)))"#)
    .unwrap_err();
    assert!(
        matches!(&err, InvokeError::Guest(m) if m == "broken"),
        "{err}"
    );
    // A plain `unreachable` is a trap, not a deadline, even though both use the same opcode.
    let err = run(
        &rt,
        r#"(module (memory (export "memory") 1)
        (func (export "psl_run") (result i32) unreachable))"#,
    )
    .unwrap_err();
    assert!(matches!(err, InvokeError::Trap(_)), "{err}");
    assert_still_serving(&rt);
}

#[test]
fn concurrent_invocations_beyond_the_slots_wait_or_are_busy() {
    let mut config = RuntimeConfig::default();
    config.limits.worker.concurrent_instances_max = 1;
    config.limits.worker.instance_wait_max = Duration::from_millis(50);
    config.limits.invocation.execution_time_max = Duration::from_secs(2);
    let rt = Arc::new(Runtime::new(config).unwrap());
    let spin = rt
        .deploy(&wat(r#"(module (memory (export "memory") 1)
        (func (export "psl_run") (result i32) (loop (br 0)) (i32.const 0)))"#))
        .unwrap();
    let rt2 = Arc::clone(&rt);
    let spin2 = Arc::clone(&spin);
    let busy = std::thread::spawn(move || {
        rt2.invoke(&spin2, vec![], MapState::default().session())
            .result
    });
    // Give the spinning invocation ample time to take the only slot, even on a loaded machine.
    std::thread::sleep(Duration::from_millis(500));
    let echo = rt.deploy(&wat(ECHO)).unwrap();
    let out = rt.invoke(&echo, vec![], MapState::default().session());
    assert!(
        matches!(out.result, Err(InvokeError::Busy(_))),
        "{:?}",
        out.result
    );
    assert!(matches!(
        busy.join().unwrap(),
        Err(InvokeError::DeadlineExceeded(_))
    ));
    assert_eq!(
        rt.invoke(&echo, b"x".to_vec(), MapState::default().session())
            .result
            .unwrap(),
        b"x"
    );
}

#[test]
fn tampered_cache_entries_are_rejected_and_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        cache_key: [7; 32],
        ..RuntimeConfig::default()
    };
    let module = wat(ECHO);
    {
        let rt = Runtime::new(config.clone()).unwrap();
        rt.deploy(&module).unwrap();
    }
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1);
    // Flip one byte of the machine code.
    let mut bytes = std::fs::read(&entries[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&entries[0], &bytes).unwrap();
    let rt = Runtime::new(config.clone()).unwrap();
    let echo = rt.deploy(&module).unwrap();
    assert_eq!(
        rt.invoke(&echo, b"ok".to_vec(), MapState::default().session())
            .result
            .unwrap(),
        b"ok"
    );
    // The entry was rewritten with a valid MAC; a runtime with another key rejects it.
    let other = RuntimeConfig {
        cache_key: [8; 32],
        ..config
    };
    let rt = Runtime::new(other).unwrap();
    let echo = rt.deploy(&module).unwrap();
    assert_eq!(
        rt.invoke(&echo, b"ok".to_vec(), MapState::default().session())
            .result
            .unwrap(),
        b"ok"
    );
}

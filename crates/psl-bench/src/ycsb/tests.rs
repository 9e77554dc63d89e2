use super::*;
use psl_node::local::LocalState;

#[test]
fn workload_proportions_hold_over_100k_draws() {
    for (name, expected) in [
        ("a", [0.5, 0.5, 0.0, 0.0, 0.0]),
        ("b", [0.95, 0.05, 0.0, 0.0, 0.0]),
        ("c", [1.0, 0.0, 0.0, 0.0, 0.0]),
        ("d", [0.95, 0.0, 0.05, 0.0, 0.0]),
        ("e", [0.0, 0.0, 0.05, 0.95, 0.0]),
        ("f", [0.5, 0.0, 0.0, 0.0, 0.5]),
    ] {
        let config = Config::preset(name).unwrap();
        let mut rng = SplitMix64::new(11);
        let mut counts = [0u64; 5];
        let draws = 100_000;
        for _ in 0..draws {
            counts[config.proportions.choose(&mut rng).index()] += 1;
        }
        for (op, (count, p)) in Op::ALL.iter().zip(counts.iter().zip(expected)) {
            let share = *count as f64 / draws as f64;
            // 5 sigma of a binomial share at 100k draws is below 0.008.
            assert!((share - p).abs() < 0.008, "{name} {op:?}: {share} vs {p}");
            if p == 0.0 {
                assert_eq!(*count, 0, "{name} {op:?} must never be drawn");
            }
        }
    }
}

#[test]
fn thread_shares_sum_to_the_total() {
    for (total, threads) in [(1000, 3), (7, 4), (0, 2), (1_000_000, 2)] {
        let sum: u64 = (0..threads).map(|i| share(total, threads, i)).sum();
        assert_eq!(sum, total);
    }
}

fn tiny(workload: &str, threads: usize) -> Config {
    Config {
        record_count: 100,
        operation_count: 1000,
        threads,
        ..Config::preset(workload).unwrap()
    }
}

#[test]
fn end_to_end_every_read_of_a_loaded_key_finds_it() {
    for workload in ["a", "b", "c", "d", "e", "f"] {
        for threads in [1, 2] {
            let state = LocalState::default();
            let config = tiny(workload, threads);
            let report = run(&state, &config, "local").unwrap();
            let load = report.phase("load").unwrap();
            assert_eq!(load.operations, 100);
            let run = report.phase("run").unwrap();
            assert_eq!(run.operations, 1000, "{workload}");
            assert_eq!(run.failed, 0, "{workload}/{threads}: {run:?}");
            assert_eq!(load.failed, 0);
            let inserted = run
                .ops
                .iter()
                .find(|o| o.op == "INSERT")
                .map_or(0, |o| o.count);
            let snapshot = state.snapshot();
            assert_eq!(snapshot.len() as u64, 100 + inserted, "{workload}");
            for ordinal in 0..100 + inserted {
                let key = key_name(ordinal, InsertOrder::Hashed, 1);
                let value = snapshot
                    .get(key.as_bytes())
                    .expect("every record is stored");
                let record = Record::decode(value).unwrap();
                assert_eq!(record.fields.len(), 10);
                assert!(record.fields.iter().all(|(_, v)| v.len() == 100));
            }
            assert!(!report.markdown().is_empty());
        }
    }
}

#[test]
fn one_field_reads_and_all_field_writes_work_too() {
    let state = LocalState::default();
    let config = Config {
        read_all_fields: false,
        write_all_fields: true,
        insert_order: InsertOrder::Ordered,
        zero_padding: 8,
        distribution: Distribution::Uniform,
        ..tiny("a", 2)
    };
    let report = run(&state, &config, "local").unwrap();
    assert_eq!(report.phase("run").unwrap().failed, 0);
    assert!(state.snapshot().contains_key(&b"user00000042"[..]));
    for distribution in ["plainzipfian", "hotspot", "latest", "uniform"] {
        let state = LocalState::default();
        let config = Config {
            distribution: Distribution::parse(distribution).unwrap(),
            ..tiny("f", 2)
        };
        let report = run(&state, &config, "local").unwrap();
        assert_eq!(report.phase("run").unwrap().failed, 0, "{distribution}");
    }
}

#[test]
fn the_operation_stream_is_deterministic_for_a_seed() {
    // Single thread: the whole store after the run depends on the seed only.
    let once = |seed| {
        let state = LocalState::default();
        let config = Config {
            seed,
            ..tiny("d", 1)
        };
        run(&state, &config, "local").unwrap();
        state.snapshot()
    };
    assert_eq!(once(1), once(1));
    assert_ne!(once(1), once(2));
}

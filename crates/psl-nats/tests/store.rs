//! JetStreamStore against real nats-server processes on loopback (skipped with a message when
//! nats-server is not installed, unless PSL_REQUIRE_NATS=1).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use psl_capsule::testkit::TestCapsule;
use psl_capsule::{CapsuleWriter, SealedRecord, Update, VerifyError};
use psl_nats::testing::{ClusterOptions, NatsCluster};
use psl_nats::{JetStreamOptions, JetStreamStore, NatsConnection, NatsError, NatsOptions};
use psl_store::{Durability, RecordStore, StoreError};

fn chain(
    capsule: &TestCapsule,
    seed: u64,
    n: usize,
    value_len: usize,
) -> (CapsuleWriter, Vec<SealedRecord>) {
    let (keys, certificate) = capsule.writer(seed);
    let (mut writer, genesis) = CapsuleWriter::start(
        &capsule.metadata,
        &capsule.data_key,
        keys,
        &certificate,
        1,
        &[],
    )
    .unwrap();
    let mut records = vec![genesis];
    for i in 0..n {
        let updates = [Update::put(
            format!("k{seed}-{i}"),
            vec![i as u8; value_len],
        )];
        records.push(writer.seal_updates(2 + i as u64, &[], &updates).unwrap());
    }
    (writer, records)
}

fn connect(cluster: &NatsCluster) -> NatsConnection {
    let mut options = NatsOptions::with_servers(cluster.urls());
    options.request_timeout = Duration::from_secs(2);
    NatsConnection::connect(options).unwrap()
}

fn options(replicas: usize) -> JetStreamOptions {
    JetStreamOptions {
        replicas,
        ..JetStreamOptions::default()
    }
}

fn stream_leader(conn: &NatsConnection, stream: &str) -> String {
    let client = conn.client().clone();
    let stream = stream.to_string();
    conn.run(async move {
        let mut stream = async_nats::jetstream::new(client)
            .get_stream(stream)
            .await
            .unwrap();
        stream
            .info()
            .await
            .unwrap()
            .cluster
            .clone()
            .unwrap()
            .leader
            .unwrap()
    })
    .unwrap()
}

#[test]
fn append_read_heads_writers_round_trip() {
    let Some(cluster) = NatsCluster::start_or_skip("round_trip", ClusterOptions::default()) else {
        return;
    };
    let conn = connect(&cluster);
    let capsule = TestCapsule::new("nats-store", 1);
    let (store, report) =
        JetStreamStore::open_or_create(&conn, &capsule.metadata, options(1)).unwrap();
    assert_eq!(report.records, 0);
    let (_, a) = chain(&capsule, 1, 10, 100);
    let (_, b) = chain(&capsule, 2, 5, 100);
    // Two writers in one call (published concurrently, one record per writer per round).
    let mut both = a[..6].to_vec();
    both.extend_from_slice(&b);
    let report = store.append(&both, Durability::Always).unwrap();
    assert_eq!((report.appended, report.duplicates), (12, 0));
    let report = store.append(&a[6..], Durability::Always).unwrap();
    assert_eq!((report.appended, report.duplicates), (5, 0));
    assert_eq!(
        store.read_range(a[0].writer(), 2..5).unwrap(),
        a[2..5].to_vec()
    );
    assert_eq!(
        store.read_range(a[0].writer(), 8..100).unwrap(),
        a[8..].to_vec()
    );
    assert!(store.read_range(b[0].writer(), 6..9).unwrap().is_empty());
    let mut expected = vec![a[10].head(), b[5].head()];
    expected.sort_by_key(|head| head.writer);
    assert_eq!(store.heads().unwrap(), expected);
    assert_eq!(store.writers().unwrap().len(), 2);
    assert_eq!(store.metadata().id(), capsule.id());

    // A second handle (another node) replays and verifies everything, and sees later appends
    // made through the first one.
    let other_conn = connect(&cluster);
    let (other, report) = JetStreamStore::open(&other_conn, capsule.id(), options(1)).unwrap();
    assert_eq!((report.records, report.skipped), (17, 0));
    assert_eq!(other.heads().unwrap(), expected);
    assert_eq!(other.read_range(b[0].writer(), 0..6).unwrap(), b);
    let (_, c) = chain(&capsule, 3, 2, 10);
    store.append(&c, Durability::Always).unwrap();
    assert_eq!(other.read_range(c[0].writer(), 0..10).unwrap(), c);
    assert_eq!(other.writers().unwrap().len(), 3);
    // Appends through the second handle continue the chain the first one wrote.
    let (mut writer_c, _) = chain(&capsule, 3, 2, 10);
    let next = writer_c
        .seal_updates(100, &[], &[Update::put("late", b"x".to_vec())])
        .unwrap();
    other
        .append(std::slice::from_ref(&next), Durability::Always)
        .unwrap();
    assert_eq!(store.read_range(c[0].writer(), 3..4).unwrap(), vec![next]);

    // Opening another capsule's id fails cleanly.
    let missing = TestCapsule::new("missing", 99);
    assert!(matches!(
        JetStreamStore::open(&conn, missing.id(), options(1)),
        Err(NatsError::NotAStore(_))
    ));
}

#[test]
fn retries_are_idempotent() {
    let Some(cluster) = NatsCluster::start_or_skip("idempotent", ClusterOptions::default()) else {
        return;
    };
    let conn = connect(&cluster);
    let capsule = TestCapsule::new("nats-idem", 2);
    let (store, _) = JetStreamStore::open_or_create(&conn, &capsule.metadata, options(1)).unwrap();
    // A second handle (another node) opened before the records exist: its index is stale.
    let (stale, _) = JetStreamStore::open(&conn, capsule.id(), options(1)).unwrap();
    let (_, a) = chain(&capsule, 1, 5, 50);
    store.append(&a, Durability::Always).unwrap();
    // The same records again through the same handle: skipped as duplicates.
    let report = store.append(&a[2..5], Durability::Always).unwrap();
    assert_eq!((report.appended, report.duplicates), (0, 3));
    // The stale handle appends them too (a retry from another node): the server refuses the
    // copies (same Nats-Msg-Id, or not after the subject's last message) and the handle finds
    // them already there.
    let report = stale.append(&a, Durability::Always).unwrap();
    assert_eq!(report.appended + report.duplicates, 6);
    // The same message id published behind the store's back is dropped by JetStream.
    let client = conn.client().clone();
    let subject = format!("psl.{}.rec.{}", capsule.id(), a[0].writer());
    let id = format!(
        "{}/{}/{}/{}",
        capsule.id(),
        a[0].writer(),
        0,
        a[0].stored_hash()
    );
    let payload = Bytes::copy_from_slice(a[0].as_bytes());
    let ack = conn
        .run(async move {
            let message = async_nats::jetstream::message::PublishMessage::build()
                .payload(payload)
                .message_id(id);
            async_nats::jetstream::new(client)
                .send_publish(subject, message)
                .await
                .unwrap()
                .await
                .unwrap()
        })
        .unwrap();
    assert!(ack.duplicate, "JetStream deduplicated by Nats-Msg-Id");
    // Nothing was stored twice: a third handle finds exactly 6 records, nothing skipped.
    let (third, report) = JetStreamStore::open(&conn, capsule.id(), options(1)).unwrap();
    assert_eq!((report.records, report.skipped), (6, 0));
    assert_eq!(third.read_range(a[0].writer(), 0..100).unwrap(), a);
    // open_or_create on an existing capsule opens it.
    let (again, report) =
        JetStreamStore::open_or_create(&conn, &capsule.metadata, options(1)).unwrap();
    assert_eq!(report.records, 6);
    assert_eq!(again.heads().unwrap(), vec![a[5].head()]);
}

#[test]
fn out_of_order_and_forged_records_are_refused() {
    let Some(cluster) = NatsCluster::start_or_skip("refusals", ClusterOptions::default()) else {
        return;
    };
    let conn = connect(&cluster);
    let capsule = TestCapsule::new("nats-refuse", 3);
    let (store, _) = JetStreamStore::open_or_create(&conn, &capsule.metadata, options(1)).unwrap();
    let (_, a) = chain(&capsule, 1, 4, 50);
    store.append(&a[..3], Durability::Always).unwrap();

    // Gap: seq 4 before seq 3.
    let error = store.append(&a[4..], Durability::Always).unwrap_err();
    assert!(
        matches!(
            &error,
            StoreError::Rejected {
                index: 0,
                source: VerifyError::Gap { .. },
                ..
            }
        ),
        "{error}"
    );
    // Unknown writer (no genesis).
    let (_, c) = chain(&capsule, 3, 2, 10);
    let error = store.append(&c[1..], Durability::Always).unwrap_err();
    assert!(
        matches!(
            &error,
            StoreError::Rejected {
                source: VerifyError::UnknownWriter { .. },
                ..
            }
        ),
        "{error}"
    );
    // A record of another capsule.
    let other = TestCapsule::new("elsewhere", 9);
    let (_, foreign) = chain(&other, 1, 1, 10);
    let error = store.append(&foreign, Durability::Always).unwrap_err();
    assert!(
        matches!(
            &error,
            StoreError::Rejected {
                source: VerifyError::WrongCapsule { .. },
                ..
            }
        ),
        "{error}"
    );
    // A forged signature on the next record.
    let mut bytes = a[3].as_bytes().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let forged = SealedRecord::decode(&bytes).unwrap();
    let error = store.append(&[forged], Durability::Always).unwrap_err();
    assert!(
        matches!(
            &error,
            StoreError::Rejected {
                source: VerifyError::BadSignature { .. },
                ..
            }
        ),
        "{error}"
    );
    // A fork: another validly signed record at an existing seq (same writer key).
    let (mut twin, _) = chain(&capsule, 1, 0, 0);
    let fork = twin
        .seal_updates(2, &[], &[Update::put("fork", b"!".to_vec())])
        .unwrap();
    assert_eq!(fork.seq(), 1);
    let error = store.append(&[fork], Durability::Always).unwrap_err();
    assert!(
        matches!(&error, StoreError::Fork { index: 0, .. }),
        "{error}"
    );
    // Every refusal left the stream untouched and the genuine record still goes in.
    store.append(&a[3..], Durability::Always).unwrap();
    let (fresh, report) = JetStreamStore::open(&conn, capsule.id(), options(1)).unwrap();
    assert_eq!((report.records, report.skipped), (5, 0));
    assert_eq!(fresh.read_range(a[0].writer(), 0..10).unwrap(), a);
}

#[test]
fn planted_messages_cannot_block_genuine_records() {
    let Some(cluster) = NatsCluster::start_or_skip("planted", ClusterOptions::default()) else {
        return;
    };
    let conn = connect(&cluster);
    let capsule = TestCapsule::new("nats-planted", 4);
    let (store, _) = JetStreamStore::open_or_create(&conn, &capsule.metadata, options(1)).unwrap();
    let (_, a) = chain(&capsule, 1, 4, 50);
    let writer_subject = format!("psl.{}.rec.{}", capsule.id(), a[0].writer());
    // Anyone with publish rights plants junk on the writer's subject before its genesis, and
    // a forged copy of its next record, and a genuine record of another writer on this subject.
    let (_, b) = chain(&capsule, 2, 0, 0);
    let mut forged = a[1].as_bytes().to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 0x55;
    let plant = |payload: Vec<u8>| {
        let client = conn.client().clone();
        let subject = writer_subject.clone();
        conn.run(async move {
            async_nats::jetstream::new(client)
                .publish(subject, Bytes::from(payload))
                .await
                .unwrap()
                .await
                .unwrap()
        })
        .unwrap();
    };
    plant(b"garbage".to_vec());
    store.append(&a[..1], Durability::Always).unwrap();
    plant(forged.clone());
    plant(b[0].as_bytes().to_vec());
    plant(vec![0xff; 3000]);
    let report = store.append(&a[1..], Durability::Always).unwrap();
    assert_eq!(report.appended, 4);
    assert_eq!(store.read_range(a[0].writer(), 0..10).unwrap(), a);
    // A fresh replay skips the four planted messages and serves the genuine chain.
    let (fresh, report) = JetStreamStore::open(&conn, capsule.id(), options(1)).unwrap();
    assert_eq!((report.records, report.skipped), (5, 4));
    assert_eq!(fresh.read_range(a[0].writer(), 0..10).unwrap(), a);
    assert_eq!(fresh.heads().unwrap(), vec![a[4].head()]);
    // The planted genuine genesis of writer b (on a's subject) did not make b a writer.
    assert_eq!(fresh.writers().unwrap(), vec![a[0].writer()]);
}

#[test]
fn records_larger_than_the_server_accepts_are_refused() {
    let Some(cluster) = NatsCluster::start_or_skip(
        "oversized",
        ClusterOptions {
            max_payload: 64 * 1024,
            ..ClusterOptions::default()
        },
    ) else {
        return;
    };
    let conn = connect(&cluster);
    let capsule = TestCapsule::new("nats-big", 5);
    let (store, _) = JetStreamStore::open_or_create(&conn, &capsule.metadata, options(1)).unwrap();
    assert_eq!(
        store.record_bytes_max(),
        64 * 1024 - psl_nats::store::PUBLISH_HEADER_BYTES
    );
    let (_, a) = chain(&capsule, 1, 0, 0);
    store.append(&a, Durability::Always).unwrap();
    let (mut writer, _) = chain(&capsule, 1, 0, 0);
    let big = writer
        .seal_updates(5, &[], &[Update::put("big", vec![7; 100 * 1024])])
        .unwrap();
    let error = store.append(&[big], Durability::Always).unwrap_err();
    assert!(
        matches!(error, StoreError::BatchTooLarge { max, .. } if max == store.record_bytes_max()),
        "{error}"
    );
}

/// Three servers, an R3 stream, appends from two threads while one server is SIGKILLed and
/// later restarted: every acknowledged record is readable afterwards (from a fresh replay), and
/// appends keep succeeding.
#[test]
fn r3_cluster_survives_sigkill_of_one_server() {
    let Some(mut cluster) = NatsCluster::start_or_skip(
        "sigkill",
        ClusterOptions {
            servers: 3,
            ..ClusterOptions::default()
        },
    ) else {
        return;
    };
    let conn = connect(&cluster);
    let capsule = Arc::new(TestCapsule::new("nats-r3", 6));
    let (store, _) = JetStreamStore::open_or_create(&conn, &capsule.metadata, options(3)).unwrap();
    let store = Arc::new(store);
    let stop = Arc::new(AtomicBool::new(false));
    let appenders: Vec<_> = (0..2u64)
        .map(|seed| {
            let (store, stop, capsule) =
                (Arc::clone(&store), Arc::clone(&stop), Arc::clone(&capsule));
            std::thread::spawn(move || {
                let (keys, certificate) = capsule.writer(100 + seed);
                let (mut writer, genesis) = CapsuleWriter::start(
                    &capsule.metadata,
                    &capsule.data_key,
                    keys,
                    &certificate,
                    1,
                    &[],
                )
                .unwrap();
                let mut acked = Vec::new();
                let mut failures = 0u32;
                let mut pending = Some(genesis);
                let mut lamport = 2;
                while !stop.load(Ordering::Relaxed) {
                    let record = match pending.take() {
                        Some(record) => record,
                        None => {
                            lamport += 1;
                            writer
                                .seal_updates(
                                    lamport,
                                    &[],
                                    &[Update::put(format!("k{lamport}"), vec![1; 1024])],
                                )
                                .unwrap()
                        }
                    };
                    match store.append(std::slice::from_ref(&record), Durability::Always) {
                        Ok(_) => acked.push(record),
                        Err(error) => {
                            // Not acknowledged: retried until it is (the same record).
                            failures += 1;
                            eprintln!("append failed (will retry): {error}");
                            pending = Some(record);
                        }
                    }
                }
                (acked, failures)
            })
        })
        .collect();
    let wait_for = |count: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while store.record_count() < count {
            assert!(
                Instant::now() < deadline,
                "appends stalled at {}",
                store.record_count()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for(40);
    // First the stream's leader (an election), then the server the client is connected to
    // (a reconnect), each restarted before the next kill (one failure at a time: quorum 2 of 3).
    let leader = stream_leader(&conn, store.stream_name());
    let connected = conn.client().server_info().server_name;
    eprintln!("stream leader {leader}, client connected to {connected}");
    let mut victims = vec![leader.clone()];
    if connected != leader {
        victims.push(connected);
    }
    for victim in victims {
        let index: usize = victim.trim_start_matches('n').parse().unwrap();
        cluster.kill(index).unwrap();
        let at_kill = store.record_count();
        // Reads during the failure (they retry through the election / reconnect).
        assert_eq!(store.heads().unwrap().len(), 2);
        wait_for(at_kill + 60);
        cluster.restart(index).unwrap();
        let at_restart = store.record_count();
        wait_for(at_restart + 20);
    }
    let (retries, conflicts) = store.retry_counts();
    eprintln!(
        "publish retries {retries}, conflicts {conflicts}, disconnects {}",
        conn.stats().disconnects.load(Ordering::Relaxed)
    );
    assert!(
        retries > 0,
        "killing the stream leader under load made publishes fail and retry"
    );
    stop.store(true, Ordering::Relaxed);
    let mut acked_all = Vec::new();
    for appender in appenders {
        let (acked, failures) = appender.join().unwrap();
        eprintln!(
            "appender: {} acknowledged, {failures} failed attempts",
            acked.len()
        );
        acked_all.push(acked);
    }
    // A fresh handle on a fresh connection (to a server that survived) replays the stream.
    let mut fresh_options =
        NatsOptions::with_servers([cluster.url(1).unwrap(), cluster.url(2).unwrap()]);
    fresh_options.request_timeout = Duration::from_secs(5);
    let fresh_conn = NatsConnection::connect(fresh_options).unwrap();
    let (fresh, report) = JetStreamStore::open(&fresh_conn, capsule.id(), options(3)).unwrap();
    eprintln!("replay: {report:?}");
    for acked in &acked_all {
        let writer = acked[0].writer();
        let mut read = Vec::new();
        while read.len() < acked.len() {
            let batch = fresh
                .read_range(writer, read.len() as u64..acked.len() as u64)
                .unwrap();
            assert!(
                !batch.is_empty(),
                "acknowledged records missing after {}",
                read.len()
            );
            read.extend(batch);
        }
        assert_eq!(&read, acked, "every acknowledged record, in order");
    }
    assert_eq!(report.skipped, 0);
    // The store keeps accepting appends after the failure.
    let (_, more) = chain(&capsule, 7, 3, 10);
    store.append(&more, Durability::Always).unwrap();
    assert_eq!(fresh.read_range(more[0].writer(), 0..4).unwrap(), more);
}

/// The accounts and permissions of docs/deploy.md are enough for the store and the bus, and a
/// user without them cannot publish on PSL subjects.
#[test]
fn store_and_bus_work_under_the_documented_permissions() {
    let accounts = r#"
accounts {
  PSL {
    jetstream: enabled
    users: [
      { user: psl-node, password: secret,
        permissions: {
          publish:   { allow: ["psl.>", "$JS.API.>", "_INBOX.>"] }
          subscribe: { allow: ["psl.>", "_INBOX.>"] }
        } }
      { user: reader, password: secret2,
        permissions: { publish: { allow: ["_INBOX.>"] }, subscribe: { allow: ["psl.>", "_INBOX.>"] } } }
    ]
  }
  SYS { users: [ { user: admin, password: admin } ] }
}
system_account: SYS
"#;
    let Some(cluster) = NatsCluster::start_or_skip(
        "permissions",
        ClusterOptions {
            extra_config: accounts.to_string(),
            ..ClusterOptions::default()
        },
    ) else {
        return;
    };
    let mut options = NatsOptions::with_servers(cluster.urls());
    options.request_timeout = Duration::from_secs(2);
    options.user_password = Some(("psl-node".into(), "secret".into()));
    let conn = NatsConnection::connect(options.clone()).unwrap();
    let capsule = TestCapsule::new("nats-perm", 8);
    let (store, _) =
        JetStreamStore::open_or_create(&conn, &capsule.metadata, options_r1()).unwrap();
    let (_, a) = chain(&capsule, 1, 3, 10);
    store.append(&a, Durability::Always).unwrap();
    assert_eq!(store.read_range(a[0].writer(), 0..10).unwrap(), a);
    let bus = psl_nats::NatsBus::new(conn.clone());
    use psl_nats::Bus;
    let subscription = bus.subscribe("psl.bus.app.records", 8).unwrap();
    bus.flush().unwrap();
    bus.publish_record("app", &a[1]).unwrap();
    bus.flush().unwrap();
    let message = subscription
        .recv_timeout(Duration::from_secs(5))
        .unwrap()
        .unwrap();
    assert_eq!(message.decode_record().unwrap(), a[1]);

    // A user without publish rights on psl.> cannot plant anything in the stream.
    let mut reader_options = options.clone();
    reader_options.user_password = Some(("reader".into(), "secret2".into()));
    let reader = NatsConnection::connect(reader_options).unwrap();
    let client = reader.client().clone();
    let subject = format!("psl.{}.rec.{}", capsule.id(), a[0].writer());
    reader
        .run(async move {
            client
                .publish(subject, Bytes::from_static(b"junk"))
                .await
                .unwrap();
            client.flush().await.unwrap();
        })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while reader.stats().server_errors.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "no permissions violation reported"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (fresh, report) = JetStreamStore::open(&conn, capsule.id(), options_r1()).unwrap();
    assert_eq!((report.records, report.skipped), (4, 0));
    assert_eq!(fresh.heads().unwrap(), vec![a[3].head()]);
    // Wrong password: a clear connect error, not a hang.
    let mut wrong = options;
    wrong.user_password = Some(("psl-node".into(), "nope".into()));
    wrong.connect_timeout = Duration::from_secs(2);
    assert!(matches!(
        NatsConnection::connect(wrong),
        Err(NatsError::Connect { .. })
    ));
}

fn options_r1() -> JetStreamOptions {
    options(1)
}

/// Past the deduplication window, Nats-Msg-Id no longer stops a second copy; the expected
/// last-subject-sequence check does: a stale handle re-appending records that are already in
/// the stream is refused by the server, finds them, and nothing is stored twice.
#[test]
fn expected_subject_sequence_refuses_copies_after_the_duplicate_window() {
    let Some(cluster) = NatsCluster::start_or_skip("expected_seq", ClusterOptions::default())
    else {
        return;
    };
    let conn = connect(&cluster);
    let capsule = TestCapsule::new("nats-window", 10);
    let short = JetStreamOptions {
        duplicate_window: Duration::from_millis(200),
        ..options(1)
    };
    let (store, _) =
        JetStreamStore::open_or_create(&conn, &capsule.metadata, short.clone()).unwrap();
    let (stale, _) = JetStreamStore::open(&conn, capsule.id(), short.clone()).unwrap();
    let (_, a) = chain(&capsule, 1, 3, 10);
    store.append(&a, Durability::Always).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let report = stale.append(&a, Durability::Always).unwrap();
    assert_eq!(report.appended + report.duplicates, 4);
    assert!(
        stale.retry_counts().1 > 0,
        "the server refused the stale copy"
    );
    let (fresh, report) = JetStreamStore::open(&conn, capsule.id(), short).unwrap();
    assert_eq!(
        (report.records, report.skipped),
        (4, 0),
        "no second copy stored"
    );
    assert_eq!(fresh.read_range(a[0].writer(), 0..10).unwrap(), a);
}

//! The Bus trait on both implementations: NATS (real servers on loopback; skipped with a
//! message when nats-server is not installed, unless PSL_REQUIRE_NATS=1) and in process.

use std::time::{Duration, Instant};

use bytes::Bytes;
use psl_capsule::testkit::TestCapsule;
use psl_capsule::{CapsuleWriter, Update};
use psl_nats::testing::{ClusterOptions, NatsCluster};
use psl_nats::{Bus, BusError, LocalBus, NatsBus, NatsConnection, NatsOptions, Subscription};

fn nats_bus(url: String) -> NatsBus {
    let mut options = NatsOptions::with_servers([url]);
    options.request_timeout = Duration::from_secs(2);
    NatsBus::new(NatsConnection::connect(options).unwrap())
}

/// Publishes probes until every subscription has seen one (subscription interest travels over
/// cluster routes asynchronously), then drains them.
fn settle(publisher: &dyn Bus, subject: &str, subscriptions: &[&Subscription]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = vec![false; subscriptions.len()];
    while !seen.iter().all(|seen| *seen) {
        assert!(Instant::now() < deadline, "subscriptions never saw a probe");
        publisher
            .publish(subject, Bytes::from_static(b"probe"))
            .unwrap();
        publisher.flush().unwrap();
        for (index, subscription) in subscriptions.iter().enumerate() {
            if subscription
                .recv_timeout(Duration::from_millis(20))
                .unwrap()
                .is_some()
            {
                seen[index] = true;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    for subscription in subscriptions {
        while subscription.try_recv().unwrap().is_some() {}
    }
}

fn drain(subscription: &Subscription, quiet: Duration) -> Vec<Bytes> {
    let mut out = Vec::new();
    while let Some(message) = subscription.recv_timeout(quiet).unwrap() {
        out.push(message.payload);
    }
    out
}

/// Multicast, queue groups, records, oversized payloads, bounded subscriptions: the same checks
/// for every implementation. `a`, `b` and `c` may be connected to different servers.
fn exercise(a: &dyn Bus, b: &dyn Bus, c: &dyn Bus) {
    // Multicast: every subscriber gets every message, in order.
    let s1 = a.subscribe("psl.bus.app1.records", 256).unwrap();
    let s2 = b.subscribe("psl.bus.app1.records", 256).unwrap();
    let s3 = c.subscribe("psl.bus.app1.>", 256).unwrap();
    settle(a, "psl.bus.app1.records", &[&s1, &s2, &s3]);
    let sent: Vec<Bytes> = (0..50u32)
        .map(|i| Bytes::from(i.to_le_bytes().to_vec()))
        .collect();
    for payload in &sent {
        b.publish("psl.bus.app1.records", payload.clone()).unwrap();
    }
    b.flush().unwrap();
    for subscription in [&s1, &s2, &s3] {
        assert_eq!(drain(subscription, Duration::from_millis(300)), sent);
    }

    // Records: published whole, decoded with typed errors.
    let capsule = TestCapsule::new("bus", 1);
    let (keys, certificate) = capsule.writer(1);
    let (mut writer, _genesis) = CapsuleWriter::start(
        &capsule.metadata,
        &capsule.data_key,
        keys,
        &certificate,
        1,
        &[],
    )
    .unwrap();
    let record = writer
        .seal_updates(2, &[], &[Update::put("k", b"v".to_vec())])
        .unwrap();
    c.publish_record("app1", &record).unwrap();
    c.flush().unwrap();
    let got = s1.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(got.decode_record().unwrap(), record);
    let copy = s2.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(copy.decode_record().unwrap(), record);
    a.publish("psl.bus.app1.records", Bytes::from_static(b"not a record"))
        .unwrap();
    a.flush().unwrap();
    // s3 got the record, then the junk.
    assert_eq!(
        s3.recv_timeout(Duration::from_secs(5))
            .unwrap()
            .unwrap()
            .decode_record()
            .unwrap(),
        record
    );
    let junk = s3.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
    assert!(matches!(
        junk.decode_record(),
        Err(BusError::Malformed { .. })
    ));
    drop((s1, s2, s3));

    // Queue group: each message to exactly one member; a plain subscriber still sees all.
    let q1 = a
        .queue_subscribe("psl.bus.app2.invoke", "workers", 256)
        .unwrap();
    let q2 = b
        .queue_subscribe("psl.bus.app2.invoke", "workers", 256)
        .unwrap();
    let q3 = c
        .queue_subscribe("psl.bus.app2.invoke", "workers", 256)
        .unwrap();
    let watcher = a.subscribe("psl.bus.app2.invoke", 256).unwrap();
    // Interest: probe until the watcher sees one and each member got at least one.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut members_seen = [false; 3];
    while !members_seen.iter().all(|seen| *seen) {
        assert!(Instant::now() < deadline, "queue members never saw a probe");
        c.publish("psl.bus.app2.invoke", Bytes::from_static(b"probe"))
            .unwrap();
        c.flush().unwrap();
        std::thread::sleep(Duration::from_millis(10));
        for (index, member) in [&q1, &q2, &q3].iter().enumerate() {
            while member.try_recv().unwrap().is_some() {
                members_seen[index] = true;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    for member in [&q1, &q2, &q3, &watcher] {
        while member.try_recv().unwrap().is_some() {}
    }
    for i in 0..90u32 {
        c.publish("psl.bus.app2.invoke", Bytes::from(i.to_le_bytes().to_vec()))
            .unwrap();
    }
    c.flush().unwrap();
    let mut delivered: Vec<Bytes> = Vec::new();
    let mut per_member = Vec::new();
    for member in [&q1, &q2, &q3] {
        let got = drain(member, Duration::from_millis(300));
        per_member.push(got.len());
        delivered.extend(got);
    }
    delivered.sort();
    let mut expected: Vec<Bytes> = (0..90u32)
        .map(|i| Bytes::from(i.to_le_bytes().to_vec()))
        .collect();
    expected.sort();
    assert_eq!(
        delivered, expected,
        "each message to exactly one member ({per_member:?})"
    );
    assert!(
        per_member.iter().filter(|count| **count > 0).count() >= 2,
        "{per_member:?}"
    );
    assert_eq!(drain(&watcher, Duration::from_millis(300)).len(), 90);
    drop((q1, q2, q3, watcher));

    // Oversized payloads are refused before they are sent.
    let max = a.max_payload();
    let error = a
        .publish("psl.bus.app1.records", Bytes::from(vec![0u8; max + 1]))
        .unwrap_err();
    assert!(
        matches!(error, BusError::TooLarge { len, max: limit } if len == max + 1 && limit == max),
        "{error}"
    );
    assert!(matches!(
        a.request(
            "svc.x",
            Bytes::from(vec![0u8; max + 1]),
            Duration::from_secs(1)
        ),
        Err(BusError::TooLarge { .. })
    ));
    // Invalid subjects and groups.
    assert!(matches!(
        a.publish("psl.bus.*", Bytes::new()),
        Err(BusError::InvalidSubject { .. })
    ));
    assert!(a.subscribe("psl bus", 1).is_err());
    assert!(a.queue_subscribe("psl.bus.x", "a.b", 1).is_err());
    assert!(a.subscribe("psl.bus.x", 0).is_err());

    // Bounded subscriptions: a subscriber that does not read keeps `capacity` messages and
    // the rest are dropped and counted, never buffered without limit.
    let slow = b.subscribe("psl.bus.app3.records", 4).unwrap();
    let fast = b.subscribe("psl.bus.app3.records", 1024).unwrap();
    settle(a, "psl.bus.app3.records", &[&fast]);
    for _ in 0..100 {
        a.publish("psl.bus.app3.records", Bytes::from_static(b"m"))
            .unwrap();
    }
    a.flush().unwrap();
    assert_eq!(drain(&fast, Duration::from_millis(300)).len(), 100);
    let kept = drain(&slow, Duration::from_millis(100)).len() as u64;
    assert!(kept <= 4 + 1, "kept {kept}");
    // The probes of settle() also went to `slow`.
    assert!(
        kept + slow.dropped() >= 100,
        "kept {kept} dropped {}",
        slow.dropped()
    );
}

fn request_reply(client: &dyn Bus, server: &(dyn Bus + Sync)) {
    // No responders: an error at once, not a timeout.
    let started = Instant::now();
    let error = client
        .request("psl.bus.app.lock", Bytes::new(), Duration::from_secs(5))
        .unwrap_err();
    assert!(
        matches!(error, BusError::NoResponders(_) | BusError::Timeout { .. }),
        "{error}"
    );
    // A responder answers.
    let requests = server.subscribe("psl.bus.app.lock", 16).unwrap();
    settle(client, "psl.bus.app.lock", &[&requests]);
    let requests = std::thread::scope(|scope| {
        let responder = scope.spawn(move || {
            let request = requests
                .recv_timeout(Duration::from_secs(10))
                .unwrap()
                .unwrap();
            let mut answer = b"granted:".to_vec();
            answer.extend_from_slice(&request.payload);
            server.respond(&request, Bytes::from(answer)).unwrap();
            requests
        });
        let reply = client
            .request(
                "psl.bus.app.lock",
                Bytes::from_static(b"k1"),
                Duration::from_secs(10),
            )
            .unwrap();
        assert_eq!(reply.payload.as_ref(), b"granted:k1");
        responder.join().unwrap()
    });
    // A responder that never answers: a timeout after about the timeout.
    let started_timeout = Instant::now();
    let error = client
        .request(
            "psl.bus.app.lock",
            Bytes::from_static(b"k2"),
            Duration::from_millis(200),
        )
        .unwrap_err();
    assert!(matches!(error, BusError::Timeout { .. }), "{error}");
    let waited = started_timeout.elapsed();
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // Answering a message that is not a request is a typed error.
    let message = requests
        .recv_timeout(Duration::from_secs(5))
        .unwrap()
        .unwrap();
    let mut not_request = message.clone();
    not_request.reply = None;
    assert!(matches!(
        server.respond(&not_request, Bytes::new()),
        Err(BusError::Malformed { .. })
    ));
}

#[test]
fn local_bus() {
    let bus = LocalBus::new(64 * 1024);
    exercise(&bus, &bus.clone(), &bus.clone());
    request_reply(&bus, &bus.clone());
}

#[test]
fn nats_bus_on_three_servers() {
    let Some(cluster) = NatsCluster::start_or_skip(
        "nats_bus",
        ClusterOptions {
            servers: 3,
            max_payload: 64 * 1024,
            ..ClusterOptions::default()
        },
    ) else {
        return;
    };
    // One connection per server: multicast and queue groups cross the cluster routes.
    let a = nats_bus(cluster.url(0).unwrap());
    let b = nats_bus(cluster.url(1).unwrap());
    let c = nats_bus(cluster.url(2).unwrap());
    assert_eq!(a.max_payload(), 64 * 1024);
    exercise(&a, &b, &c);
    request_reply(&a, &c);
}

//! The SCL over real NATS: three `nats-server` processes on loopback, records multicast on a
//! NATS subject and kept in a JetStream stream replicated three ways. The workers still run in
//! this process (separate node processes are not built yet); everything between them crosses
//! the untrusted servers. Skipped when `nats-server` is missing, unless `PSL_REQUIRE_NATS=1`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{call, module};
use psl_capsule::CapsuleMetadata;
use psl_nats::testing::{ClusterOptions, NatsCluster};
use psl_nats::{JetStreamOptions, JetStreamStore, NatsBus, NatsConnection, NatsOptions};
use psl_node::Platform;
use psl_node::scl::{ClusterError, LEASE_MS, RoundRobin, SclCluster};
use psl_node::trust::SimTrust;
use psl_runtime::{RuntimeConfig, State};
use psl_store::RecordStore;

#[test]
fn counter_and_bank_over_a_three_server_nats_cluster() {
    let Some(mut nats) = NatsCluster::start_or_skip(
        "counter_and_bank_over_a_three_server_nats_cluster",
        ClusterOptions {
            servers: 3,
            ..ClusterOptions::default()
        },
    ) else {
        return;
    };
    let connect = || NatsConnection::connect(NatsOptions::with_servers(nats.urls())).unwrap();
    let bus_conn = connect();
    let store_conn = connect();
    let stores: Arc<parking_lot::Mutex<Option<Arc<JetStreamStore>>>> = Default::default();
    let kept = Arc::clone(&stores);
    let open = move |metadata: &CapsuleMetadata| -> Result<Arc<dyn RecordStore>, ClusterError> {
        let options = JetStreamOptions {
            replicas: 3,
            ..JetStreamOptions::default()
        };
        let (store, _) = JetStreamStore::open_or_create(&store_conn, metadata, options)
            .map_err(|e| ClusterError::Setup(e.to_string()))?;
        let store = Arc::new(store);
        *kept.lock() = Some(Arc::clone(&store));
        Ok(store)
    };
    let cluster = SclCluster::start_with_store(
        3,
        LEASE_MS,
        SimTrust::generate().unwrap(),
        Arc::new(NatsBus::new(bus_conn)),
        &open,
    )
    .unwrap();
    let platform = Arc::new(
        Platform::new(
            RuntimeConfig::default(),
            Arc::new(RoundRobin(cluster.clone())),
        )
        .unwrap(),
    );
    for name in ["counter", "bank"] {
        platform.deploy(name, &module(name)).unwrap();
    }
    assert_eq!(call(&platform, "bank", "open 6 500"), "6 accounts");
    let threads: Vec<_> = (0..3u64)
        .map(|seed| {
            let platform = Arc::clone(&platform);
            std::thread::spawn(move || {
                for i in 0..10 {
                    call(&platform, "counter", "c");
                    call(&platform, "bank", &format!("transfer {} 5", seed * 10 + i));
                }
            })
        })
        .collect();
    // One NATS server dies under load; the stream keeps a quorum and the cluster keeps going.
    std::thread::sleep(Duration::from_millis(100));
    nats.kill(1).unwrap();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(call(&platform, "counter", "c"), "31");
    assert_eq!(call(&platform, "bank", "total"), "3000");
    assert!(cluster.settle(Duration::from_secs(30)));
    let digests = cluster.digests();
    assert!(
        digests.windows(2).all(|d| d[0] == d[1]),
        "replicas diverged"
    );
    // Everything the workers and the manager wrote is in the JetStream stream, verified.
    let store = stores.lock().clone().unwrap();
    let heads = store.heads().unwrap();
    assert!(heads.len() >= 4, "{} writers in the stream", heads.len());
    let mut session = cluster.worker(2).session();
    assert_eq!(session.get(b"c").unwrap().as_deref(), Some(&b"31"[..]));
    session.finish().unwrap();
}

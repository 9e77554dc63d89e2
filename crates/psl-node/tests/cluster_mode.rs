//! Cluster-mode nodes (manager, workers, gateway) in this process, talking only over a real
//! NATS server: what crosses NATS, and what a worker does with a store that was rolled back.
//! The multi-process tests (faults with SIGKILL and SIGSTOP) are in `psl-cli/tests/cluster.rs`.
//! Skipped when `nats-server` is missing, unless `PSL_REQUIRE_NATS=1`.

mod common;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use psl_capsule::{CapsuleMetadata, Head, SealedRecord, WriterId};
use psl_nats::testing::{ClusterOptions, NatsCluster};
use psl_nats::{Bus, JetStreamOptions, JetStreamStore, NatsBus, NatsConnection, NatsOptions};
use psl_node::cluster::gateway::GatewayNode;
use psl_node::cluster::manager::ManagerNode;
use psl_node::cluster::wire::{ErrorKind, InvokeStatus, ManagerReply};
use psl_node::cluster::worker::{WorkerNode, WorkerOptions};
use psl_node::scl::ClusterError;
use psl_node::trust::SimTrust;
use psl_runtime::RuntimeConfig;
use psl_store::{AppendReport, Durability, RecordStore, StoreError};

const APP: &str = "t";
const SEED: [u8; 32] = [9; 32];

struct Nodes {
    nats: NatsCluster,
    _manager: ManagerNode,
}

fn connect(nats: &NatsCluster) -> NatsConnection {
    NatsConnection::connect(NatsOptions::with_servers(nats.urls())).unwrap()
}

fn bus(nats: &NatsCluster) -> Arc<dyn Bus> {
    Arc::new(NatsBus::new(connect(nats)))
}

fn options() -> JetStreamOptions {
    JetStreamOptions::default()
}

fn start(test: &str) -> Option<Nodes> {
    let nats = NatsCluster::start_or_skip(test, ClusterOptions::default())?;
    let conn = connect(&nats);
    let open = move |metadata: &CapsuleMetadata| -> Result<Arc<dyn RecordStore>, ClusterError> {
        let (store, _) = JetStreamStore::open_or_create(&conn, metadata, options())
            .map_err(|e| ClusterError::Setup(e.to_string()))?;
        Ok(Arc::new(store))
    };
    let manager = ManagerNode::start(
        APP,
        SimTrust::from_root_seed(&SEED).unwrap(),
        bus(&nats),
        10_000,
        &open,
    )
    .unwrap();
    Some(Nodes {
        nats,
        _manager: manager,
    })
}

fn worker_with(
    nodes: &Nodes,
    open: &psl_node::cluster::worker::OpenCapsuleStore<'_>,
    catch_up_max: Duration,
) -> Result<WorkerNode, ClusterError> {
    worker_deploying(nodes, open, catch_up_max, &["counter"])
}

fn worker_deploying(
    nodes: &Nodes,
    open: &psl_node::cluster::worker::OpenCapsuleStore<'_>,
    catch_up_max: Duration,
    functions: &[&str],
) -> Result<WorkerNode, ClusterError> {
    WorkerNode::start(
        WorkerOptions {
            app: APP.into(),
            functions: functions
                .iter()
                .map(|f| (f.to_string(), common::module_path(f)))
                .collect(),
            threads: 2,
            runtime: RuntimeConfig::default(),
            catch_up_max,
        },
        SimTrust::from_root_seed(&SEED).unwrap(),
        bus(&nodes.nats),
        open,
    )
}

fn worker(nodes: &Nodes) -> WorkerNode {
    let conn = connect(&nodes.nats);
    let open = move |metadata: &CapsuleMetadata| -> Result<Arc<dyn RecordStore>, ClusterError> {
        let (store, _) = JetStreamStore::open(&conn, metadata.id(), options())
            .map_err(|e| ClusterError::Setup(e.to_string()))?;
        Ok(Arc::new(store))
    };
    worker_with(nodes, &open, Duration::from_secs(10)).unwrap()
}

fn gateway(nodes: &Nodes) -> Arc<GatewayNode> {
    GatewayNode::start(
        APP,
        SimTrust::from_root_seed(&SEED).unwrap(),
        bus(&nodes.nats),
        Duration::from_secs(20),
    )
    .unwrap()
}

fn call(gateway: &GatewayNode, function: &str, input: &str) -> String {
    let (status, output) = gateway.invoke(function, input.as_bytes().to_vec()).unwrap();
    let output = String::from_utf8(output).unwrap();
    assert_eq!(status, InvokeStatus::Ok, "{function}({input}): {output}");
    output
}

#[test]
fn lock_names_and_inputs_never_cross_nats_in_clear() {
    let Some(nodes) = start("lock_names_and_inputs_never_cross_nats_in_clear") else {
        return;
    };
    // Everything published on the server from now on, whatever the subject.
    let tap = bus(&nodes.nats).subscribe(">", 1 << 16).unwrap();
    let workers = [worker(&nodes), worker(&nodes)];
    let gateway = gateway(&nodes);
    let canary = "canary-lock-5f1e";
    for expected in 1..=20 {
        assert_eq!(call(&gateway, "counter", canary), expected.to_string());
    }
    // The workers' replicas hold it (the scan below would find it in clear).
    for worker in &workers {
        assert!(worker.settle(Duration::from_secs(20)));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut messages = 0;
    let mut subjects = std::collections::BTreeSet::new();
    while let Ok(Some(message)) = tap.try_recv() {
        messages += 1;
        let kind = if message.subject.starts_with("_INBOX.") {
            "_INBOX (replies)".to_string()
        } else {
            message
                .subject
                .split('.')
                .take(3)
                .collect::<Vec<_>>()
                .join(".")
        };
        subjects.insert(kind);
        assert!(
            !message.subject.contains("canary"),
            "canary in subject {}",
            message.subject
        );
        assert!(
            !message
                .payload
                .windows(canary.len())
                .any(|w| w == canary.as_bytes()),
            "canary in clear on {}",
            message.subject
        );
    }
    eprintln!("{messages} messages scanned on {subjects:?}");
    assert!(messages > 100, "the tap saw only {messages} messages");
    // The scan does find a canary sent in clear.
    let probe = bus(&nodes.nats);
    probe
        .publish("psl.t.probe", bytes::Bytes::from(format!("x{canary}x")))
        .unwrap();
    probe.flush().unwrap();
    let seen = tap.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
    assert!(
        seen.payload
            .windows(canary.len())
            .any(|w| w == canary.as_bytes())
    );
}

/// A store that serves an old snapshot of the capsule (a rolled-back disk or stream).
struct RolledBack {
    inner: Arc<dyn RecordStore>,
    heads: Vec<Head>,
}

impl RecordStore for RolledBack {
    fn metadata(&self) -> &CapsuleMetadata {
        self.inner.metadata()
    }

    fn append(
        &self,
        records: &[SealedRecord],
        durability: Durability,
    ) -> Result<AppendReport, StoreError> {
        self.inner.append(records, durability)
    }

    fn read_range(
        &self,
        writer: WriterId,
        seqs: Range<u64>,
    ) -> Result<Vec<SealedRecord>, StoreError> {
        let end = match self.heads.iter().find(|h| h.writer == writer) {
            Some(head) => seqs.end.min(head.seq + 1),
            None if seqs.start == 0 => 1.min(seqs.end),
            None => seqs.start,
        };
        self.inner
            .read_range(writer, seqs.start..end.max(seqs.start))
    }

    fn heads(&self) -> Result<Vec<Head>, StoreError> {
        let mut heads = self.heads.clone();
        // Writers that appeared after the snapshot (a new worker's genesis) stay visible.
        for head in self.inner.heads()? {
            if !heads.iter().any(|h| h.writer == head.writer) && head.seq == 0 {
                heads.push(head);
            }
        }
        Ok(heads)
    }

    fn writers(&self) -> Result<Vec<WriterId>, StoreError> {
        Ok(self.heads()?.iter().map(|h| h.writer).collect())
    }
}

#[test]
fn a_worker_on_a_rolled_back_store_refuses_to_serve() {
    let Some(nodes) = start("a_worker_on_a_rolled_back_store_refuses_to_serve") else {
        return;
    };
    let first = worker(&nodes);
    let gateway = gateway(&nodes);
    assert_eq!(call(&gateway, "counter", "c"), "1");
    assert!(first.settle(Duration::from_secs(20)));
    // A snapshot of the store now...
    let conn = connect(&nodes.nats);
    let snapshot: Arc<Mutex<Option<Vec<Head>>>> = Arc::default();
    {
        let (store, _) = JetStreamStore::open(&conn, first.capsule(), options()).unwrap();
        *snapshot.lock() = Some(store.heads().unwrap());
    }
    // ... and more increments after it.
    for expected in 2..=5 {
        assert_eq!(call(&gateway, "counter", "c"), expected.to_string());
    }
    assert!(first.settle(Duration::from_secs(20)));
    // A worker whose store serves the old snapshot must not serve (it would answer "2").
    let kept = Arc::clone(&snapshot);
    let open = move |metadata: &CapsuleMetadata| -> Result<Arc<dyn RecordStore>, ClusterError> {
        let (store, _) = JetStreamStore::open(&conn, metadata.id(), options())
            .map_err(|e| ClusterError::Setup(e.to_string()))?;
        Ok(Arc::new(RolledBack {
            inner: Arc::new(store),
            heads: kept.lock().clone().unwrap(),
        }))
    };
    let refused = worker_with(&nodes, &open, Duration::from_millis(1500));
    match refused {
        Err(e) => assert!(e.to_string().contains("behind"), "{e}"),
        Ok(_) => panic!("a worker on a rolled-back store started serving"),
    }
    // A worker on the real store serves the latest state.
    let second = worker(&nodes);
    drop(first);
    assert_eq!(call(&gateway, "counter", "c"), "6");
    drop(second);
}

#[test]
fn functions_deployed_through_the_gateway_reach_running_and_later_workers() {
    let Some(nodes) =
        start("functions_deployed_through_the_gateway_reach_running_and_later_workers")
    else {
        return;
    };
    let open_for = |nodes: &Nodes| {
        let conn = connect(&nodes.nats);
        move |metadata: &CapsuleMetadata| -> Result<Arc<dyn RecordStore>, ClusterError> {
            let (store, _) = JetStreamStore::open(&conn, metadata.id(), options())
                .map_err(|e| ClusterError::Setup(e.to_string()))?;
            Ok(Arc::new(store))
        }
    };
    let first = worker_deploying(&nodes, &open_for(&nodes), Duration::from_secs(10), &[]).unwrap();
    let gateway = gateway(&nodes);
    // Nobody serves it yet.
    assert!(matches!(
        gateway.invoke("counter", b"c".to_vec()),
        Err(psl_node::cluster::gateway::GatewayError::NoWorkers(_))
    ));
    match gateway
        .deploy("counter", common::module("counter"))
        .unwrap()
    {
        ManagerReply::Deployed { served, .. } => assert!(served, "no worker served it"),
        other => panic!("{other:?}"),
    }
    assert_eq!(call(&gateway, "counter", "c"), "1");
    assert!(first.platform().list().iter().any(|f| f.name == "counter"));
    // A bad module and a bad name are refused, and nothing changes.
    match gateway.deploy("junk", b"not wasm".to_vec()).unwrap() {
        ManagerReply::Error { kind, .. } => assert_eq!(kind, ErrorKind::BadModule),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        gateway.deploy("Bad Name", common::module("hello")).unwrap(),
        ManagerReply::Error {
            kind: ErrorKind::BadModule,
            ..
        }
    ));
    // A worker that starts later fetches it from the manager and serves it.
    let second = worker_deploying(&nodes, &open_for(&nodes), Duration::from_secs(10), &[]).unwrap();
    assert!(second.platform().list().iter().any(|f| f.name == "counter"));
    drop(first);
    assert_eq!(call(&gateway, "counter", "c"), "2");
}

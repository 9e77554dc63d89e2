//! The manager node: the prepare phase, key distribution over the bus, and the lock service
//! serving sealed requests. Its records go to the JetStream store and the record subject like
//! every writer's.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use psl_capsule::{CapsuleMetadata, WriterId};
use psl_nats::{Bus, BusMessage, Subscription};
use psl_runtime::StateError;
use psl_scl::lock::{FencingToken, Grant, HolderId, LockError, LockMode, LockName, Reply};
use psl_store::RecordStore;

use super::channel::{ChannelKeys, Direction, ReplayWindow};
use super::wire::{self, ErrorKind, ManagerReply, ManagerRequest, WireGrant};
use crate::scl::host::{GrantSink, ManagerHost};
use crate::scl::{ClusterError, creation_params, start_manager};
use crate::trust::{ManagerTrust, SimTrust};

/// Senders (enrolled writers) whose replay windows and enrollment the manager keeps.
const SENDERS_MAX: usize = 65_536;
/// Queued acquires and raced grants the manager remembers.
const PENDING_MAX: usize = 65_536;
/// How long after its wait ended a queued acquire is still remembered.
const PENDING_GRACE_MS: u64 = 60_000;

/// A queued acquire: where its grant goes.
struct Pending {
    reply: String,
    sender: WriterId,
    counter: u64,
    deadline_ms: u64,
}

/// Grants for queued acquires go out as sealed replies to the waiting request.
struct RemoteGrants {
    keys: Arc<ChannelKeys>,
    bus: Arc<dyn Bus>,
    pending: Mutex<HashMap<(HolderId, u64), Pending>>,
    /// Grants sent to a waiting request, until their lease ends: a cancel that raced one
    /// releases it (its holder never saw it, so nothing was written under it).
    sent: Mutex<HashMap<(HolderId, u64), (Grant, u64)>>,
}

impl GrantSink for RemoteGrants {
    fn deliver(&self, grants: Vec<Grant>, now_ms: u64) {
        for grant in grants {
            let key = (grant.holder, grant.request_id);
            let Some(pending) = self.pending.lock().remove(&key) else {
                tracing::warn!("a grant for a request nobody waits for; its lease will expire");
                continue;
            };
            let lease = Duration::from_millis(grant.lease_until_ms.saturating_sub(now_ms));
            let reply = ManagerReply::Granted(WireGrant::new(&grant, lease));
            let mut sent = self.sent.lock();
            if sent.len() < PENDING_MAX {
                sent.insert(
                    key,
                    (grant, now_ms.saturating_add(lease.as_millis() as u64)),
                );
            }
            drop(sent);
            if let Err(e) = self.bus.publish(
                &pending.reply,
                Bytes::from(seal_reply(
                    &self.keys,
                    pending.sender,
                    pending.counter,
                    &reply,
                )),
            ) {
                tracing::warn!(%e, "delivering a grant failed; the holder will cancel");
            }
        }
    }

    fn tick(&self, now_ms: u64) {
        // A waiter whose wait ended sends a cancel at once; keep its entry a while longer so a
        // grant racing that cancel still reaches it (and is released by the cancel), and drop
        // the entries of waiters that died.
        self.pending
            .lock()
            .retain(|_, p| p.deadline_ms.saturating_add(PENDING_GRACE_MS) > now_ms);
        self.sent.lock().retain(|_, (_, until)| *until > now_ms);
    }
}

fn seal_reply(keys: &ChannelKeys, sender: WriterId, counter: u64, reply: &ManagerReply) -> Vec<u8> {
    let plain = serde_json::to_vec(reply).unwrap_or_default();
    keys.seal(Direction::Reply, sender, counter, &plain)
}

/// Functions deployed most.
const FUNCTIONS_MAX: usize = 256;
/// Module bytes the registry keeps at most.
const REGISTRY_BYTES_MAX: usize = 512 << 20;
/// How long a deploy waits for the first worker to serve the function.
const DEPLOY_WAIT: Duration = Duration::from_secs(30);

/// Functions deployed through the gateway: name to module id and bytes. New and restarted
/// workers fetch them at start; running workers get a notice at each deploy.
#[derive(Default)]
struct Registry {
    functions: std::collections::BTreeMap<String, (String, Arc<Vec<u8>>)>,
    bytes: usize,
}

impl Registry {
    fn list(&self) -> Vec<(String, String)> {
        self.functions
            .iter()
            .map(|(name, (id, _))| (name.clone(), id.clone()))
            .collect()
    }

    fn insert(&mut self, name: &str, id: String, module: Vec<u8>) -> Result<(), String> {
        let old = self.functions.get(name).map_or(0, |(_, m)| m.len());
        if old == 0 && self.functions.len() >= FUNCTIONS_MAX {
            return Err(format!("at most {FUNCTIONS_MAX} functions"));
        }
        let bytes = self.bytes - old + module.len();
        if bytes > REGISTRY_BYTES_MAX {
            return Err(format!(
                "deployed modules would exceed {REGISTRY_BYTES_MAX} bytes"
            ));
        }
        self.bytes = bytes;
        self.functions
            .insert(name.to_string(), (id, Arc::new(module)));
        Ok(())
    }
}

/// The manager's admission of senders: enrolled writers, and their replay windows.
#[derive(Default)]
struct Senders {
    enrolled: HashSet<WriterId>,
    order: VecDeque<WriterId>,
    windows: HashMap<WriterId, ReplayWindow>,
}

impl Senders {
    fn admit(&mut self, writer: WriterId) {
        if self.enrolled.insert(writer) {
            self.order.push_back(writer);
        }
        while self.order.len() > SENDERS_MAX {
            if let Some(old) = self.order.pop_front() {
                self.enrolled.remove(&old);
                self.windows.remove(&old);
            }
        }
    }
}

struct Shared {
    app: String,
    bus: Arc<dyn Bus>,
    keys: Arc<ChannelKeys>,
    trust: Mutex<ManagerTrust>,
    senders: Mutex<Senders>,
    host: Arc<ManagerHost>,
    grants: Arc<RemoteGrants>,
    lease_ms: u64,
    functions: Vec<String>,
    registry: Mutex<Registry>,
    /// Counter of the manager's own sealed requests (deploy notices).
    counter: std::sync::atomic::AtomicU64,
}

/// Every writer's head, from the record multicast: each record is verified (certificate,
/// signature, chain) as it arrives, and gaps are filled from the store. Multicast records are
/// durable (writers append before they multicast), so these are heads of the store, without
/// the manager reading every record back from it.
struct HeadTracker {
    verifier: Mutex<psl_capsule::CapsuleVerifier>,
}

impl HeadTracker {
    fn start(
        metadata: &CapsuleMetadata,
        store: Arc<dyn RecordStore>,
        bus: &dyn Bus,
        app: &str,
    ) -> Result<Arc<Self>, ClusterError> {
        let subject = psl_nats::subjects::app_records("psl", app)
            .map_err(|e| ClusterError::Setup(e.to_string()))?;
        let subscription = bus
            .subscribe(&subject, 1 << 16)
            .map_err(|e| ClusterError::Setup(format!("bus: {e}")))?;
        let tracker = Arc::new(HeadTracker {
            verifier: Mutex::new(psl_capsule::CapsuleVerifier::new(metadata.clone())),
        });
        let weak = Arc::downgrade(&tracker);
        std::thread::Builder::new()
            .name("psl-mgr-heads".into())
            .spawn(move || {
                loop {
                    match subscription.recv_timeout(Duration::from_millis(200)) {
                        Ok(Some(message)) => {
                            let Some(tracker) = weak.upgrade() else {
                                return;
                            };
                            match message.decode_record() {
                                Ok(record) => tracker.observe(record, store.as_ref()),
                                Err(e) => tracing::debug!(%e, "undecodable bus message"),
                            }
                        }
                        Ok(None) if weak.strong_count() > 0 => {}
                        Ok(None) | Err(_) => return,
                    }
                }
            })
            .map_err(|e| ClusterError::Setup(e.to_string()))?;
        Ok(tracker)
    }

    fn observe(&self, record: psl_capsule::SealedRecord, store: &dyn RecordStore) {
        use psl_capsule::VerifyError;
        let now = psl_capsule::Validity::At(crate::trust::now_s());
        let mut verifier = self.verifier.lock();
        let missing = match verifier.verify(&record, now) {
            Ok(_) => return,
            Err(VerifyError::Gap { writer, missing }) => Some((writer, missing)),
            Err(VerifyError::UnknownWriter { writer, seq }) => Some((writer, 0..seq)),
            Err(e) => {
                tracing::debug!(%e, "a multicast record was not tracked");
                None
            }
        };
        // Fill the gap from the store (it holds every multicast record), then retry.
        if let Some((writer, missing)) = missing {
            let mut next = missing.start;
            while next < missing.end {
                let Ok(records) = store.read_range(writer, next..missing.end) else {
                    return;
                };
                let Some(last) = records.last() else { return };
                next = last.seq() + 1;
                for earlier in &records {
                    let _ = verifier.verify(earlier, now);
                }
            }
            let _ = verifier.verify(&record, now);
        }
    }

    fn heads(&self) -> Vec<psl_capsule::Head> {
        self.verifier.lock().heads()
    }
}

/// Serves one message of a subscription.
type Handler = fn(&Shared, &BusMessage);

/// A running manager node.
pub struct ManagerNode {
    shared: Arc<Shared>,
    metadata: CapsuleMetadata,
}

impl ManagerNode {
    /// Runs the prepare phase (this process plays the owner, as `psl dev` does), creates the
    /// capsule's stream in `store`'s place (via `open_store`), and serves enrollment, lock
    /// requests and attestation on `bus` for application `app`.
    pub fn start(
        app: &str,
        trust: SimTrust,
        bus: Arc<dyn Bus>,
        lease_ms: u64,
        open_store: &crate::scl::OpenStore<'_>,
    ) -> Result<Self, ClusterError> {
        let functions: Vec<String> = trust
            .policy
            .functions
            .keys()
            .map(|h| h.to_string())
            .collect();
        let (trust, metadata) = ManagerTrust::prepare(trust, app, creation_params()?)?;
        let store: Arc<dyn RecordStore> = open_store(&metadata)?;
        let (manager, genesis) = start_manager(&trust, &metadata, store.as_ref(), lease_ms.max(1))?;
        let keys = Arc::new(ChannelKeys::new(
            &trust.data_key(&metadata.id()),
            metadata.id(),
        ));
        let grants = Arc::new(RemoteGrants {
            keys: Arc::clone(&keys),
            bus: Arc::clone(&bus),
            pending: Mutex::new(HashMap::new()),
            sent: Mutex::new(HashMap::new()),
        });
        let tracker = HeadTracker::start(&metadata, Arc::clone(&store), bus.as_ref(), app)?;
        let heads: crate::scl::host::HeadSource = Arc::new(move || Some(tracker.heads()));
        let host = ManagerHost::start(
            manager,
            store,
            Arc::clone(&bus),
            app,
            Arc::clone(&grants) as Arc<dyn GrantSink>,
            Some(heads),
        )?;
        host.broadcast(&genesis);
        let shared = Arc::new(Shared {
            app: app.to_string(),
            bus: Arc::clone(&bus),
            keys,
            trust: Mutex::new(trust),
            senders: Mutex::new(Senders::default()),
            host,
            grants,
            lease_ms: lease_ms.max(1),
            functions,
            registry: Mutex::new(Registry::default()),
            counter: std::sync::atomic::AtomicU64::new(0),
        });
        let subscribe = |subject: String| -> Result<Subscription, ClusterError> {
            bus.subscribe(&subject, 4096)
                .map_err(|e| ClusterError::Setup(format!("bus: {e}")))
        };
        let served: [(&str, Subscription, Handler); 5] = [
            (
                "locks",
                subscribe(wire::manager_subject(app))?,
                serve_request,
            ),
            (
                "enroll",
                subscribe(wire::enroll_subject(app))?,
                serve_enroll,
            ),
            (
                "attest",
                subscribe(wire::attest_subject(app))?,
                serve_attest,
            ),
            (
                "deploy",
                subscribe(wire::deploy_subject(app))?,
                serve_deploy,
            ),
            (
                "modules",
                subscribe(wire::modules_subject(app))?,
                serve_module,
            ),
        ];
        for (name, subscription, handler) in served {
            let weak = Arc::downgrade(&shared);
            std::thread::Builder::new()
                .name(format!("psl-mgr-{name}"))
                .spawn(move || {
                    loop {
                        match subscription.recv_timeout(Duration::from_millis(200)) {
                            Ok(Some(message)) => {
                                let Some(shared) = weak.upgrade() else { return };
                                handler(&shared, &message);
                            }
                            Ok(None) if weak.strong_count() > 0 => {}
                            Ok(None) | Err(_) => return,
                        }
                    }
                })
                .map_err(|e| ClusterError::Setup(e.to_string()))?;
        }
        bus.flush()
            .map_err(|e| ClusterError::Setup(format!("bus: {e}")))?;
        Ok(ManagerNode { shared, metadata })
    }

    /// The capsule this manager created.
    pub fn metadata(&self) -> &CapsuleMetadata {
        &self.metadata
    }

    /// What the owner verified about this manager (the prepare phase).
    pub fn claims(&self) -> psl_trust::Claims {
        self.shared.trust.lock().manager_claims().clone()
    }

    /// The policy the manager enrolls workers under.
    pub fn policy(&self) -> psl_trust::Policy {
        self.shared.trust.lock().policy().clone()
    }

    /// Worker (and gateway) incarnations enrolled so far.
    pub fn enrolled(&self) -> u64 {
        self.shared.trust.lock().enrolled()
    }

    /// The application name.
    pub fn app(&self) -> &str {
        &self.shared.app
    }

    /// Prometheus text for the manager: enrollments, locks, verdicts, waiting acquires.
    pub fn render_metrics(&self) -> String {
        use crate::metrics::metric;
        let (locks, verdicts, head) = self.shared.host.call(|manager, _| {
            (
                manager.locks().lock_count(),
                manager.verdicts_issued(),
                manager.head_seq(),
            )
        });
        let waiting = self.shared.grants.pending.lock().len();
        let mut out = String::new();
        let rows: [(&str, &str, &str, f64); 5] = [
            (
                "psl_manager_enrolled_total",
                "counter",
                "Worker and gateway incarnations attested and given keys.",
                self.enrolled() as f64,
            ),
            (
                "psl_manager_locks",
                "gauge",
                "Lock entries in the lock table.",
                locks as f64,
            ),
            (
                "psl_manager_verdicts_total",
                "counter",
                "Lock verdicts sealed.",
                verdicts as f64,
            ),
            (
                "psl_manager_chain_seq",
                "gauge",
                "Sequence number of the manager's latest record.",
                head as f64,
            ),
            (
                "psl_manager_waiting_acquires",
                "gauge",
                "Acquires queued for a lock.",
                waiting as f64,
            ),
        ];
        for (name, kind, help, value) in rows {
            metric(&mut out, name, kind, help, value);
        }
        out
    }
}

fn respond(shared: &Shared, message: &BusMessage, payload: Vec<u8>) {
    if let Err(e) = shared.bus.respond(message, Bytes::from(payload)) {
        tracing::debug!(%e, "reply not sent");
    }
}

fn serve_enroll(shared: &Shared, message: &BusMessage) {
    let answer = match message.payload.split_first() {
        Some((&wire::enroll::CHALLENGE, _)) => shared.trust.lock().challenge(),
        Some((&wire::enroll::REQUEST, request)) => {
            let enrolled = shared.trust.lock().enroll_request(request);
            enrolled.map(|(grant, writer)| {
                shared.senders.lock().admit(writer);
                tracing::info!(writer = %writer, "enrolled");
                grant
            })
        }
        _ => Err(crate::trust::TrustError::Capsule(
            "unknown enrollment message".into(),
        )),
    };
    let mut payload = Vec::new();
    match answer {
        Ok(bytes) => {
            payload.push(wire::enroll::OK);
            payload.extend_from_slice(&bytes);
        }
        Err(e) => {
            tracing::warn!(%e, "enrollment refused");
            payload.push(wire::enroll::REFUSED);
            payload.extend_from_slice(e.to_string().as_bytes());
        }
    }
    respond(shared, message, payload);
}

/// A deploy from a gateway: validate the module, check it against the policy, keep it, and
/// send it to every worker; answers once one worker serves it (or after [`DEPLOY_WAIT`]).
fn serve_deploy(shared: &Shared, message: &BusMessage) {
    let Some(opened) = admit(shared, message) else {
        return;
    };
    let reply = deploy(shared, &opened.payload);
    respond(
        shared,
        message,
        seal_reply(&shared.keys, opened.sender, opened.counter, &reply),
    );
}

fn deploy(shared: &Shared, frame: &[u8]) -> ManagerReply {
    let frame = match wire::DeployFrame::decode(frame) {
        Ok(frame) => frame,
        Err(e) => return error(ErrorKind::BadModule, e),
    };
    let limits = psl_runtime::RuntimeConfig::default().limits;
    if let Err(e) = psl_runtime::module::inspect(
        &frame.module,
        &limits.module,
        limits.invocation.memory_bytes_max as u64,
    ) {
        return error(ErrorKind::BadModule, e);
    }
    if let Err(e) = shared.trust.lock().check_function(&frame.module) {
        return error(ErrorKind::NotAllowed, e);
    }
    let id = psl_runtime::FunctionId::of(&frame.module).to_hex();
    if let Err(e) = shared
        .registry
        .lock()
        .insert(&frame.name, id.clone(), frame.module.clone())
    {
        return error(ErrorKind::Limit, e);
    }
    tracing::info!(function = %frame.name, module = %id, "deployed");
    // Every running worker gets the module (sealed by the manager); the first that serves it
    // answers.
    let counter = shared
        .counter
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        + 1;
    let me = shared.host.writer_id();
    let notice = shared
        .keys
        .seal(Direction::Request, me, counter, &frame.encode());
    let served = match shared.bus.request(
        &wire::functions_subject(&shared.app),
        Bytes::from(notice),
        DEPLOY_WAIT,
    ) {
        Ok(answer) => shared
            .keys
            .open(Direction::Reply, &answer.payload)
            .is_ok_and(|o| o.sender == me && o.counter == counter && o.payload == b"ok"),
        Err(e) => {
            tracing::info!(%e, "no worker serves the new function yet");
            false
        }
    };
    ManagerReply::Deployed { id, served }
}

/// A worker fetches a deployed module by name; the answer is the module, sealed (empty if
/// there is no such function).
fn serve_module(shared: &Shared, message: &BusMessage) {
    let Some(opened) = admit(shared, message) else {
        return;
    };
    let name = String::from_utf8_lossy(&opened.payload).into_owned();
    let module = shared
        .registry
        .lock()
        .functions
        .get(&name)
        .map(|(_, module)| Arc::clone(module));
    let body = module.as_deref().map_or(&[][..], |m| m.as_slice());
    let sealed = shared
        .keys
        .seal(Direction::Reply, opened.sender, opened.counter, body);
    respond(shared, message, sealed);
}

fn serve_attest(shared: &Shared, message: &BusMessage) {
    let mut payload = Vec::new();
    match shared.trust.lock().offer(&message.payload) {
        Ok(offer) => {
            payload.push(wire::enroll::OK);
            payload.extend_from_slice(&offer);
        }
        Err(e) => {
            payload.push(wire::enroll::REFUSED);
            payload.extend_from_slice(e.to_string().as_bytes());
        }
    }
    respond(shared, message, payload);
}

fn error(kind: ErrorKind, message: impl std::fmt::Display) -> ManagerReply {
    ManagerReply::Error {
        kind,
        message: message.to_string(),
    }
}

fn lock_reply(e: LockError) -> ManagerReply {
    if crate::scl::grant_lost(&e) {
        error(ErrorKind::Fenced, e)
    } else {
        error(ErrorKind::Limit, e)
    }
}

fn state_reply(e: StateError) -> ManagerReply {
    match e {
        StateError::Fenced => error(ErrorKind::Fenced, "fenced"),
        other => error(ErrorKind::Unavailable, other),
    }
}

/// Opens a sealed request and admits it: enrolled sender, counter not seen before. `None`
/// when it was dropped (or refused with a sealed `NotEnrolled`).
fn admit(shared: &Shared, message: &BusMessage) -> Option<super::channel::Opened> {
    let Ok(opened) = shared.keys.open(Direction::Request, &message.payload) else {
        tracing::warn!(subject = %message.subject, "an unauthenticated request was dropped");
        return None;
    };
    let mut senders = shared.senders.lock();
    if !senders.enrolled.contains(&opened.sender) {
        drop(senders);
        let reply = error(ErrorKind::NotEnrolled, "sender is not an enrolled writer");
        respond(
            shared,
            message,
            seal_reply(&shared.keys, opened.sender, opened.counter, &reply),
        );
        return None;
    }
    if !senders
        .windows
        .entry(opened.sender)
        .or_default()
        .accept(opened.counter)
    {
        tracing::warn!(counter = opened.counter, "a replayed request was dropped");
        return None;
    }
    Some(opened)
}

fn serve_request(shared: &Shared, message: &BusMessage) {
    let Some(opened) = admit(shared, message) else {
        return;
    };
    let reply = match serde_json::from_slice::<ManagerRequest>(&opened.payload) {
        Ok(request) => handle(shared, message, opened.sender, opened.counter, request),
        Err(e) => Some(error(
            ErrorKind::Unavailable,
            format!("malformed request: {e}"),
        )),
    };
    if let Some(reply) = reply {
        respond(
            shared,
            message,
            seal_reply(&shared.keys, opened.sender, opened.counter, &reply),
        );
    }
}

fn name_of(bytes: Vec<u8>) -> Result<LockName, ManagerReply> {
    LockName::new(bytes).map_err(lock_reply)
}

/// Carries out one request; `None` when the reply comes later (a queued acquire).
fn handle(
    shared: &Shared,
    message: &BusMessage,
    sender: WriterId,
    counter: u64,
    request: ManagerRequest,
) -> Option<ManagerReply> {
    let host = &shared.host;
    let done = |result: Result<(), StateError>| match result {
        Ok(()) => ManagerReply::Done,
        Err(e) => state_reply(e),
    };
    Some(match request {
        ManagerRequest::Hello => ManagerReply::Hello {
            manager: host.writer_id().0,
            lease_ms: shared.lease_ms,
            heads: match host.store().heads() {
                Ok(heads) => heads.iter().map(|h| (h.writer.0, h.seq)).collect(),
                Err(e) => return Some(error(ErrorKind::Unavailable, e)),
            },
            functions: shared.functions.clone(),
            deployed: shared.registry.lock().list(),
        },
        ManagerRequest::ListFunctions => ManagerReply::Functions(shared.registry.lock().list()),
        ManagerRequest::Acquire {
            holder,
            request_id,
            name,
            write,
            wait_ms,
        } => {
            let name = match name_of(name) {
                Ok(name) => name,
                Err(reply) => return Some(reply),
            };
            let holder = HolderId(holder);
            let mode = if write {
                LockMode::Write
            } else {
                LockMode::Read
            };
            let Some(reply_to) = message.reply.clone() else {
                return Some(error(
                    ErrorKind::Unavailable,
                    "acquire without a reply subject",
                ));
            };
            let reply = host.call(|manager, now| {
                let reply = manager.acquire(now, holder, request_id, name, mode);
                if let Ok(Reply::Queued { .. }) = &reply {
                    let mut pending = shared.grants.pending.lock();
                    if pending.len() < PENDING_MAX {
                        pending.insert(
                            (holder, request_id),
                            Pending {
                                reply: reply_to,
                                sender,
                                counter,
                                deadline_ms: now.saturating_add(wait_ms),
                            },
                        );
                    }
                }
                reply
            });
            match reply {
                Ok(Reply::Granted(grant)) => {
                    let reply = ManagerReply::Granted(WireGrant::new(
                        &grant,
                        host.lease_left(grant.lease_until_ms),
                    ));
                    // If the reply arrives too late, the holder cancels: then release it.
                    let mut sent = shared.grants.sent.lock();
                    if sent.len() < PENDING_MAX {
                        let until = grant.lease_until_ms;
                        sent.insert((holder, request_id), (grant, until));
                    }
                    reply
                }
                Ok(Reply::Queued { .. }) => return None,
                Err(e) => lock_reply(e),
            }
        }
        ManagerRequest::Release {
            holder,
            name,
            token,
            watermark,
            fenced,
        } => {
            let name = match name_of(name) {
                Ok(name) => name,
                Err(reply) => return Some(reply),
            };
            let watermark = wire::watermark_from_wire(&watermark);
            done(host.with_manager(|manager, now| {
                let effects = manager
                    .release(
                        now,
                        HolderId(holder),
                        &name,
                        FencingToken(token),
                        &watermark,
                        fenced,
                    )
                    .map_err(|e| crate::scl::manager_error(name.as_bytes(), e))?;
                Ok(((), effects))
            }))
        }
        ManagerRequest::Acknowledge {
            holder,
            name,
            token,
            watermark,
        } => {
            let name = match name_of(name) {
                Ok(name) => name,
                Err(reply) => return Some(reply),
            };
            let watermark = wire::watermark_from_wire(&watermark);
            done(host.with_manager(|manager, now| {
                let (_, effects) = manager
                    .acknowledge_flush(
                        now,
                        HolderId(holder),
                        &name,
                        FencingToken(token),
                        &watermark,
                    )
                    .map_err(|e| crate::scl::manager_error(name.as_bytes(), e))?;
                Ok(((), effects))
            }))
        }
        ManagerRequest::Renew {
            holder,
            name,
            token,
        } => {
            let name = match name_of(name) {
                Ok(name) => name,
                Err(reply) => return Some(reply),
            };
            match host.call(|manager, now| {
                manager.renew(now, HolderId(holder), &name, FencingToken(token))
            }) {
                Ok(until) => ManagerReply::Renewed {
                    lease_ms: host.lease_left(until).as_millis() as u64,
                },
                Err(e) => lock_reply(e),
            }
        }
        ManagerRequest::Cancel {
            holder,
            name,
            request_id,
        } => {
            let name = match name_of(name) {
                Ok(name) => name,
                Err(reply) => return Some(reply),
            };
            let holder = HolderId(holder);
            shared.grants.pending.lock().remove(&(holder, request_id));
            let cancelled = host.with_manager(|manager, now| {
                Ok(((), manager.cancel(now, holder, &name, request_id)))
            });
            // A grant sent to the request before the cancel: the holder never saw it.
            let raced = shared.grants.sent.lock().remove(&(holder, request_id));
            let released = match raced {
                Some((grant, _)) => host.with_manager(|manager, now| {
                    let effects = manager
                        .release(
                            now,
                            holder,
                            &grant.name,
                            grant.token,
                            &psl_scl::lock::Watermark::new(),
                            false,
                        )
                        .map_err(|e| crate::scl::manager_error(grant.name.as_bytes(), e))?;
                    Ok(((), effects))
                }),
                None => Ok(()),
            };
            done(cancelled.and(released))
        }
        ManagerRequest::Forget { holder } => done(host.with_manager(|manager, now| {
            let effects = manager
                .forget_holder(now, HolderId(holder))
                .map_err(|e| StateError::Unavailable(e.to_string()))?;
            Ok(((), effects))
        })),
    })
}

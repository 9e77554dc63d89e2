//! The worker's (and gateway's) side of the manager protocol over the bus: enrollment, then
//! sealed lock requests ([`super::channel`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use psl_capsule::{CapsuleId, SealedRecord, WriterId};
use psl_nats::{Bus, BusError};
use psl_runtime::StateError;
use psl_scl::lock::{FencingToken, HolderId, LockMode, LockName, Watermark};
use psl_scl::worker::WorkerCore;
use psl_trust::ProvisionedParts;

use super::channel::{ChannelKeys, Direction};
use super::wire::{self, ErrorKind, ManagerReply, ManagerRequest};
use crate::scl::ClusterError;
use crate::scl::link::{Granted, ManagerLink, start_core};
use crate::trust::{SimTrust, worker_accept};

/// How long enrollment waits for a manager to answer at all.
pub const ENROLL_WAIT: Duration = Duration::from_secs(15);

/// How long a request other than an acquire waits for the manager.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the manager said at `Hello`.
#[derive(Clone, Debug)]
pub struct Hello {
    /// The manager's writer id (verdicts and reports are accepted only from it).
    pub manager: WriterId,
    /// The lock lease.
    pub lease: Duration,
    /// Every writer's head in the store when the manager answered.
    pub heads: Vec<(WriterId, u64)>,
    /// Module hashes the policy allows (empty: any).
    pub functions: Vec<String>,
    /// Functions deployed through a gateway: name and module id.
    pub deployed: Vec<(String, String)>,
}

struct Channel {
    keys: Arc<ChannelKeys>,
    me: WriterId,
    counter: AtomicU64,
}

/// A request sealed on the channel of one incarnation: its reply is opened on that channel,
/// even if the node re-enrolled (a new incarnation, a new channel) while it was on its way.
pub struct Sent {
    channel: Arc<Channel>,
    counter: u64,
}

/// The manager, over the bus.
pub struct BusLink {
    bus: Arc<dyn Bus>,
    app: String,
    trust: SimTrust,
    channel: Mutex<Option<Arc<Channel>>>,
    capsule: Mutex<Option<CapsuleId>>,
    metadata: Mutex<Option<psl_capsule::CapsuleMetadata>>,
    hello: Mutex<Option<Hello>>,
}

/// Timeouts of the tries of a request the manager answers alike however often it gets it
/// (release, acknowledge, renew, forget): a request or reply lost with a NATS server or
/// connection is sent again instead of leaving the session's records in doubt. Together
/// about [`REQUEST_TIMEOUT`].
const IDEMPOTENT_TRIES: [Duration; 3] = [
    Duration::from_millis(1000),
    Duration::from_millis(1500),
    Duration::from_millis(2500),
];

/// How long a request that found no subscriber waits before it is sent again.
const NO_RESPONDERS_PAUSE: Duration = Duration::from_millis(100);

/// How long an acquire waits for an answer before it sends the same request again.
const ACQUIRE_RESEND: Duration = Duration::from_secs(1);

/// A request that failed: no reply in time, nobody subscribed, or anything else.
enum RequestError {
    Timeout,
    NoResponders(String),
    Other(StateError),
}

impl From<StateError> for RequestError {
    fn from(e: StateError) -> Self {
        RequestError::Other(e)
    }
}

impl From<RequestError> for StateError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Timeout => StateError::Unavailable("the manager did not answer".into()),
            RequestError::NoResponders(e) => StateError::Unavailable(format!("manager: {e}")),
            RequestError::Other(e) => e,
        }
    }
}

impl BusLink {
    /// A link for application `app`, enrolling with `trust`'s policy and TEE.
    pub fn new(bus: Arc<dyn Bus>, app: &str, trust: SimTrust) -> Self {
        BusLink {
            bus,
            app: app.to_string(),
            trust,
            channel: Mutex::new(None),
            capsule: Mutex::new(None),
            metadata: Mutex::new(None),
            hello: Mutex::new(None),
        }
    }

    /// The bus.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    /// What the manager said at the last enrollment.
    pub fn hello(&self) -> Option<Hello> {
        self.hello.lock().clone()
    }

    fn enroll_call(&self, tag: u8, body: &[u8]) -> Result<Vec<u8>, ClusterError> {
        let mut payload = Vec::with_capacity(1 + body.len());
        payload.push(tag);
        payload.extend_from_slice(body);
        // A manager that just started may not be known yet on the server this node is
        // connected to (interest propagates between the servers of a NATS cluster): retry
        // "no responders" for a while.
        let payload = Bytes::from(payload);
        let started = Instant::now();
        let reply = loop {
            match self.bus.request(
                &wire::enroll_subject(&self.app),
                payload.clone(),
                REQUEST_TIMEOUT,
            ) {
                Ok(reply) => break reply,
                Err(BusError::NoResponders(_)) if started.elapsed() < ENROLL_WAIT => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(ClusterError::Setup(format!("enrollment: {e}"))),
            }
        };
        match reply.payload.split_first() {
            Some((&wire::enroll::OK, rest)) => Ok(rest.to_vec()),
            Some((_, reason)) => Err(ClusterError::Setup(format!(
                "the manager refused enrollment: {}",
                String::from_utf8_lossy(reason)
            ))),
            None => Err(ClusterError::Setup("empty enrollment reply".into())),
        }
    }

    /// Enrolls a new incarnation (attestation both ways, certificate, data key), opens the
    /// sealed channel and says hello. Returns the parts (keys, certificate, capsule).
    pub fn enroll_parts(&self) -> Result<ProvisionedParts, ClusterError> {
        let challenge = self.enroll_call(wire::enroll::CHALLENGE, &[])?;
        let capsule = *self.capsule.lock();
        let (request, pending) = self.trust.worker_request(capsule, &challenge)?;
        let grant = self.enroll_call(wire::enroll::REQUEST, &request)?;
        let parts = worker_accept(pending, &grant)?;
        let id = parts.metadata.id();
        *self.capsule.lock() = Some(id);
        *self.metadata.lock() = Some(parts.metadata.clone());
        *self.channel.lock() = Some(Arc::new(Channel {
            keys: Arc::new(ChannelKeys::new(&parts.data_key, id)),
            me: parts.certificate.writer,
            counter: AtomicU64::new(0),
        }));
        let hello = match self
            .request(&ManagerRequest::Hello, REQUEST_TIMEOUT)
            .map_err(|e| ClusterError::Setup(StateError::from(e).to_string()))?
        {
            ManagerReply::Hello {
                manager,
                lease_ms,
                heads,
                functions,
                deployed,
            } => Hello {
                manager: WriterId(manager),
                lease: Duration::from_millis(lease_ms),
                heads: heads.into_iter().map(|(w, s)| (WriterId(w), s)).collect(),
                functions,
                deployed,
            },
            other => {
                return Err(ClusterError::Setup(format!(
                    "unexpected answer to hello: {other:?}"
                )));
            }
        };
        *self.hello.lock() = Some(hello);
        Ok(parts)
    }

    /// The capsule of the last enrollment.
    pub fn metadata(&self) -> Option<psl_capsule::CapsuleMetadata> {
        self.metadata.lock().clone()
    }

    /// The channel keys of the capsule (once enrolled).
    pub fn channel_keys(&self) -> Option<Arc<ChannelKeys>> {
        self.channel.lock().as_ref().map(|c| Arc::clone(&c.keys))
    }

    fn channel(&self) -> Result<Arc<Channel>, StateError> {
        self.channel
            .lock()
            .clone()
            .ok_or_else(|| StateError::Unavailable("not enrolled".into()))
    }

    /// Seals `payload` as a request of this incarnation: what its reply must answer, and the
    /// envelope.
    pub fn seal_request(&self, payload: &[u8]) -> Result<(Sent, Vec<u8>), StateError> {
        let channel = self.channel()?;
        let counter = channel.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let sealed = channel
            .keys
            .seal(Direction::Request, channel.me, counter, payload);
        Ok((Sent { channel, counter }, sealed))
    }

    /// Opens the reply to the request `sent`; refuses anything else.
    pub fn open_reply(&self, sent: &Sent, bytes: &[u8]) -> Result<Vec<u8>, StateError> {
        let channel = &sent.channel;
        let opened = channel
            .keys
            .open(Direction::Reply, bytes)
            .map_err(|e| StateError::Unavailable(format!("reply refused: {e}")))?;
        if opened.sender != channel.me || opened.counter != sent.counter {
            return Err(StateError::Unavailable(
                "reply refused: it answers another request".into(),
            ));
        }
        Ok(opened.payload)
    }

    /// Sends `plain` sealed on `subject`; the opened reply.
    fn request_raw(
        &self,
        subject: &str,
        plain: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, RequestError> {
        let (sent, sealed) = self.seal_request(plain)?;
        let reply = self
            .bus
            .request(subject, Bytes::from(sealed), timeout)
            .map_err(|e| match e {
                BusError::Timeout { .. } => RequestError::Timeout,
                BusError::NoResponders(_) => RequestError::NoResponders(e.to_string()),
                other => RequestError::Other(StateError::Unavailable(format!("manager: {other}"))),
            })?;
        Ok(self.open_reply(&sent, &reply.payload)?)
    }

    fn request(
        &self,
        request: &ManagerRequest,
        timeout: Duration,
    ) -> Result<ManagerReply, RequestError> {
        let plain = serde_json::to_vec(request)
            .map_err(|e| StateError::Unavailable(format!("encoding a request: {e}")))?;
        let plain = self.request_raw(&wire::manager_subject(&self.app), &plain, timeout)?;
        serde_json::from_slice(&plain).map_err(|e| {
            RequestError::Other(StateError::Unavailable(format!("manager reply: {e}")))
        })
    }

    /// Deploys a module through the manager (gateway): the manager's answer.
    pub fn deploy(&self, name: &str, module: Vec<u8>) -> Result<ManagerReply, StateError> {
        let frame = wire::DeployFrame {
            name: name.to_string(),
            module,
        };
        let plain = self.request_raw(
            &wire::deploy_subject(&self.app),
            &frame.encode(),
            Duration::from_secs(60),
        )?;
        serde_json::from_slice(&plain)
            .map_err(|e| StateError::Unavailable(format!("manager reply: {e}")))
    }

    /// The functions deployed through gateways.
    pub fn list_functions(&self) -> Result<Vec<(String, String)>, StateError> {
        match self.request(&ManagerRequest::ListFunctions, REQUEST_TIMEOUT)? {
            ManagerReply::Functions(list) => Ok(list),
            other => Err(reply_error(b"", other)),
        }
    }

    /// Fetches a deployed module by name from the manager (worker start).
    pub fn fetch_module(&self, name: &str) -> Result<Vec<u8>, StateError> {
        let module = self.request_raw(
            &wire::modules_subject(&self.app),
            name.as_bytes(),
            Duration::from_secs(30),
        )?;
        if module.is_empty() {
            return Err(StateError::Unavailable(format!(
                "the manager has no function {name:?}"
            )));
        }
        Ok(module)
    }

    /// [`Self::request`] for a request the manager answers alike however often it gets it:
    /// sent again (a new envelope, the same content) while no reply comes.
    fn request_idempotent(&self, request: &ManagerRequest) -> Result<ManagerReply, StateError> {
        let mut lost = RequestError::Timeout;
        for (attempt, timeout) in IDEMPOTENT_TRIES.into_iter().enumerate() {
            match self.request(request, timeout) {
                Err(e @ (RequestError::Timeout | RequestError::NoResponders(_))) => {
                    tracing::debug!(attempt, "no answer from the manager; sending again");
                    if matches!(e, RequestError::NoResponders(_)) {
                        std::thread::sleep(NO_RESPONDERS_PAUSE);
                    }
                    lost = e;
                }
                other => return other.map_err(StateError::from),
            }
        }
        Err(lost.into())
    }

    fn expect_done(&self, name: &[u8], request: &ManagerRequest) -> Result<(), StateError> {
        match self.request_idempotent(request)? {
            ManagerReply::Done => Ok(()),
            other => Err(reply_error(name, other)),
        }
    }
}

fn reply_error(name: &[u8], reply: ManagerReply) -> StateError {
    let name = String::from_utf8_lossy(name).into_owned();
    match reply {
        ManagerReply::Error { kind, message } => match kind {
            ErrorKind::Fenced => StateError::Fenced,
            ErrorKind::Timeout => StateError::LockTimeout(name),
            ErrorKind::Limit => StateError::Limit(message),
            ErrorKind::Unavailable
            | ErrorKind::NotEnrolled
            | ErrorKind::BadModule
            | ErrorKind::NotAllowed => StateError::Unavailable(format!("manager: {message}")),
        },
        other => StateError::Unavailable(format!("unexpected manager reply {other:?}")),
    }
}

impl ManagerLink for BusLink {
    fn enroll(&self) -> Result<(WorkerCore, SealedRecord), ClusterError> {
        let parts = self.enroll_parts()?;
        let manager = self
            .hello()
            .map(|h| h.manager)
            .ok_or_else(|| ClusterError::Setup("no hello from the manager".into()))?;
        start_core(parts, manager, None)
    }

    fn acquire(
        &self,
        holder: HolderId,
        request_id: u64,
        name: &LockName,
        mode: LockMode,
        deadline: Instant,
    ) -> Result<Granted, StateError> {
        // Sent again every second while no answer comes: a lost request or grant (a NATS
        // server died with it) costs a second, not the whole wait. The lock service answers the
        // same (holder, request) alike (queued, or the same grant), and the manager answers a
        // queued one on the reply subject of the latest copy.
        let answer = loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let request = ManagerRequest::Acquire {
                holder: holder.0,
                request_id,
                name: name.as_bytes().to_vec(),
                write: mode == LockMode::Write,
                wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            };
            let this_try = wait.min(ACQUIRE_RESEND).max(Duration::from_millis(1));
            match self.request(&request, this_try) {
                Err(RequestError::Timeout) if this_try < wait => {}
                Err(RequestError::NoResponders(_))
                    if Instant::now() + NO_RESPONDERS_PAUSE < deadline =>
                {
                    // The manager's subscription is not known to this server (yet, or again).
                    std::thread::sleep(NO_RESPONDERS_PAUSE);
                }
                other => break other,
            }
        };
        match answer {
            Ok(ManagerReply::Granted(grant)) => {
                let (grant, lease) = grant
                    .into_grant()
                    .ok_or_else(|| StateError::Unavailable("malformed grant".into()))?;
                if grant.holder != holder || grant.request_id != request_id {
                    return Err(StateError::Unavailable("grant for another request".into()));
                }
                Ok(Granted { grant, lease })
            }
            Ok(other) => Err(reply_error(name.as_bytes(), other)),
            Err(RequestError::Timeout) => {
                // Not granted in time: cancel (a grant that raced this is released there).
                self.expect_done(
                    name.as_bytes(),
                    &ManagerRequest::Cancel {
                        holder: holder.0,
                        name: name.as_bytes().to_vec(),
                        request_id,
                    },
                )?;
                Err(StateError::LockTimeout(
                    String::from_utf8_lossy(name.as_bytes()).into_owned(),
                ))
            }
            Err(other) => Err(other.into()),
        }
    }

    fn release(
        &self,
        holder: HolderId,
        name: &LockName,
        token: FencingToken,
        watermark: &Watermark,
        fenced: bool,
    ) -> Result<(), StateError> {
        self.expect_done(
            name.as_bytes(),
            &ManagerRequest::Release {
                holder: holder.0,
                name: name.as_bytes().to_vec(),
                token: token.0,
                watermark: wire::watermark_to_wire(watermark),
                fenced,
            },
        )
    }

    fn acknowledge(
        &self,
        holder: HolderId,
        name: &LockName,
        token: FencingToken,
        watermark: &Watermark,
    ) -> Result<(), StateError> {
        self.expect_done(
            name.as_bytes(),
            &ManagerRequest::Acknowledge {
                holder: holder.0,
                name: name.as_bytes().to_vec(),
                token: token.0,
                watermark: wire::watermark_to_wire(watermark),
            },
        )
    }

    fn renew(
        &self,
        holder: HolderId,
        name: &LockName,
        token: FencingToken,
    ) -> Result<Duration, StateError> {
        let request = ManagerRequest::Renew {
            holder: holder.0,
            name: name.as_bytes().to_vec(),
            token: token.0,
        };
        match self.request_idempotent(&request)? {
            ManagerReply::Renewed { lease_ms } => Ok(Duration::from_millis(lease_ms)),
            other => Err(reply_error(name.as_bytes(), other)),
        }
    }

    fn forget(&self, holder: HolderId) -> Result<(), StateError> {
        self.expect_done(b"", &ManagerRequest::Forget { holder: holder.0 })
    }

    fn drain(&self, _wait: Duration) -> bool {
        // The manager's records are its own business; `settle` waits for the store's heads.
        true
    }
}

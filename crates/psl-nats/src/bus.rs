//! The message bus: [`Bus`], with [`NatsBus`] over core NATS and [`LocalBus`] in process.
//!
//! The bus is untrusted and lossy by design (DESIGN 3): it carries sealed, signed records and
//! requests whose receivers verify them, and a message may be lost (the SCL repairs gaps from
//! the record store). Both implementations have the same semantics:
//!
//! * subjects are dot-separated tokens of `[A-Za-z0-9_-]` (at most 128 bytes each, 512 in all);
//!   subscriptions may use `*` (one token) and a final `>` (the rest); [`crate::subjects`] names
//!   the PSL subjects (`psl.bus.<app>.records` for an application's record multicast);
//! * [`Bus::publish`] multicasts to every matching plain subscription and to one member of each
//!   matching queue group ([`Bus::queue_subscribe`]: load-balanced invocations);
//! * a message larger than [`Bus::max_payload`] is refused with [`BusError::TooLarge`] (records
//!   are never split: a record larger than the bus accepts goes through the store only);
//! * every subscription has a bounded buffer (`capacity` messages). Back-pressure: a publisher
//!   waits when its connection's outgoing buffer is full (NATS); a subscriber that falls behind
//!   loses messages, counted by [`Subscription::dropped`] (and, for NATS, by the connection's
//!   slow-consumer counter) rather than stalling everyone else;
//! * [`Bus::request`] sends one message with a private reply subject and waits for the first
//!   reply, at most `timeout` ([`BusError::Timeout`]; [`BusError::NoResponders`] when nobody
//!   listens); the server side answers with [`Bus::respond`].
//!
//! The API is synchronous like the rest of the node; [`NatsBus`] runs on its connection's runtime
//! (see [`crate::conn`] for the threading) and forwards each subscription to a bounded std
//! channel from a task on that runtime.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use psl_capsule::SealedRecord;
use psl_capsule::limits::RECORD_BYTES_MAX;

use crate::conn::NatsConnection;
use crate::error::BusError;
use crate::subjects::{self, check_subject, check_token};

/// Most messages one subscription buffers.
pub const SUBSCRIPTION_CAPACITY_MAX: usize = 1 << 20;
/// [`LocalBus`]'s default payload limit (the test cluster's `max_payload`).
pub const LOCAL_MAX_PAYLOAD: usize = 8 * 1024 * 1024;

/// A message received from the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusMessage {
    /// The subject it was published to.
    pub subject: String,
    /// The payload.
    pub payload: Bytes,
    /// Where to send a reply, for requests.
    pub reply: Option<String>,
}

impl BusMessage {
    /// Decodes the payload as a sealed record (untrusted: size-checked, typed errors). The
    /// record still has to be verified.
    /// The subject to answer this request on (an error if it is not a request).
    pub fn reply_subject(&self) -> Result<&str, BusError> {
        self.reply.as_deref().ok_or_else(|| BusError::Malformed {
            subject: self.subject.clone(),
            detail: "not a request (no reply subject)".into(),
        })
    }

    pub fn decode_record(&self) -> Result<SealedRecord, BusError> {
        let malformed = |detail: String| BusError::Malformed {
            subject: self.subject.clone(),
            detail,
        };
        if self.payload.len() > RECORD_BYTES_MAX {
            return Err(malformed(format!("{} bytes", self.payload.len())));
        }
        SealedRecord::decode(&self.payload).map_err(|error| malformed(error.to_string()))
    }
}

/// A subscription: a bounded stream of messages. Dropping it unsubscribes.
pub struct Subscription {
    receiver: Receiver<BusMessage>,
    dropped: Arc<AtomicU64>,
    _guard: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// Waits for the next message.
    pub fn recv(&self) -> Result<BusMessage, BusError> {
        self.receiver.recv().map_err(|_| BusError::Closed)
    }

    /// Waits at most `timeout`; `Ok(None)` if nothing came.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<BusMessage>, BusError> {
        match self.receiver.recv_timeout(timeout) {
            Ok(message) => Ok(Some(message)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(BusError::Closed),
        }
    }

    /// The next message if one is buffered.
    pub fn try_recv(&self) -> Result<Option<BusMessage>, BusError> {
        match self.receiver.try_recv() {
            Ok(message) => Ok(Some(message)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(BusError::Closed),
        }
    }

    /// Messages dropped because this subscription's buffer was full (or they exceeded the
    /// payload limit on the way in).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A reply on its way ([`Bus::request_async`]).
pub type RequestFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<BusMessage, BusError>> + Send>>;

/// The bus the nodes talk over. Object safe; see the module docs for the semantics.
pub trait Bus: Send + Sync {
    /// The largest payload a message may have.
    fn max_payload(&self) -> usize;

    /// Publishes a message (no wildcards in `subject`).
    fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError>;

    /// Subscribes to `subject` (wildcards allowed), buffering up to `capacity` messages.
    fn subscribe(&self, subject: &str, capacity: usize) -> Result<Subscription, BusError>;

    /// Joins queue group `group` on `subject`: each message goes to one member of the group.
    fn queue_subscribe(
        &self,
        subject: &str,
        group: &str,
        capacity: usize,
    ) -> Result<Subscription, BusError>;

    /// Sends a request and waits for the first reply, at most `timeout`.
    fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<BusMessage, BusError>;

    /// [`Bus::request`] for async callers: on NATS it waits without blocking a thread (the
    /// client's futures run on any tokio runtime with timers); the default runs the
    /// synchronous request (fine for an in-process bus, which answers at once).
    fn request_async(&self, subject: &str, payload: Bytes, timeout: Duration) -> RequestFuture {
        let result = self.request(subject, payload, timeout);
        Box::pin(std::future::ready(result))
    }

    /// Answers a request received from a subscription.
    fn respond(&self, request: &BusMessage, payload: Bytes) -> Result<(), BusError> {
        self.publish(request.reply_subject()?, payload)
    }

    /// Waits until everything published so far has left this process (NATS: reached the
    /// server).
    fn flush(&self) -> Result<(), BusError>;

    /// Multicasts a sealed record to application `app` (subject `psl.bus.<app>.records`).
    fn publish_record(&self, app: &str, record: &SealedRecord) -> Result<(), BusError> {
        let subject = subjects::app_records("psl", app)?;
        // Shares the record's buffer: no copy on an in-process bus.
        self.publish(&subject, Bytes::from_owner(record.shared_bytes()))
    }
}

fn check_capacity(capacity: usize) -> Result<usize, BusError> {
    if capacity == 0 || capacity > SUBSCRIPTION_CAPACITY_MAX {
        return Err(BusError::Nats {
            op: "subscribe",
            detail: format!("capacity must be in 1..={SUBSCRIPTION_CAPACITY_MAX}"),
        });
    }
    Ok(capacity)
}

fn check_size(len: usize, max: usize) -> Result<(), BusError> {
    if len > max {
        return Err(BusError::TooLarge { len, max });
    }
    Ok(())
}

// ----------------------------------------------------------------------------------------------
// NATS

/// [`Bus`] over core NATS (no JetStream: multicast, request/reply and queue groups as NATS
/// provides them).
#[derive(Clone, Debug)]
pub struct NatsBus {
    conn: NatsConnection,
}

impl NatsBus {
    /// A bus over `conn` (which may be shared with a [`crate::JetStreamStore`]).
    pub fn new(conn: NatsConnection) -> Self {
        NatsBus { conn }
    }

    /// The connection.
    pub fn connection(&self) -> &NatsConnection {
        &self.conn
    }

    fn nats_error(op: &'static str) -> impl FnOnce(String) -> BusError {
        move |detail| BusError::Nats { op, detail }
    }

    fn forward(&self, subscriber: async_nats::Subscriber, capacity: usize) -> Subscription {
        let (sender, receiver) = std::sync::mpsc::sync_channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
        let counter = Arc::clone(&dropped);
        let conn = self.conn.clone();
        self.conn
            .handle()
            .spawn(forward_task(subscriber, sender, counter, cancelled, conn));
        Subscription {
            receiver,
            dropped,
            _guard: Box::new(cancel),
        }
    }
}

async fn forward_task(
    mut subscriber: async_nats::Subscriber,
    sender: SyncSender<BusMessage>,
    dropped: Arc<AtomicU64>,
    mut cancelled: tokio::sync::oneshot::Receiver<()>,
    conn: NatsConnection,
) {
    loop {
        let message = tokio::select! {
            _ = &mut cancelled => break,
            message = subscriber.next() => message,
        };
        let Some(message) = message else { break };
        if message.payload.len() > conn.max_payload() {
            dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let message = BusMessage {
            subject: message.subject.to_string(),
            payload: message.payload,
            reply: message.reply.map(|reply| reply.to_string()),
        };
        match sender.try_send(message) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                // The receiver is behind: drop (NATS core is at-most-once; the client's own
                // buffer would drop next anyway) rather than stall the connection.
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => break,
        }
    }
    // Dropping the subscriber unsubscribes.
    let _ = subscriber.unsubscribe().await;
}

impl Bus for NatsBus {
    fn max_payload(&self) -> usize {
        self.conn.max_payload()
    }

    fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        check_subject(subject, false)?;
        check_size(payload.len(), self.max_payload())?;
        let client = self.conn.client().clone();
        let subject = subject.to_string();
        self.conn
            .run(async move { client.publish(subject, payload).await })?
            .map_err(|error| Self::nats_error("publish")(error.to_string()))
    }

    /// A reply is one message whose order relative to other replies does not matter: it is
    /// handed to the connection's runtime without waiting (a lost reply is the requester's
    /// timeout, as on any network).
    fn respond(&self, request: &BusMessage, payload: Bytes) -> Result<(), BusError> {
        let reply = request.reply_subject()?;
        check_subject(reply, false)?;
        check_size(payload.len(), self.max_payload())?;
        let client = self.conn.client().clone();
        let subject = reply.to_string();
        self.conn.handle().spawn(async move {
            if let Err(error) = client.publish(subject, payload).await {
                tracing::debug!(%error, "reply not sent");
            }
        });
        Ok(())
    }

    fn subscribe(&self, subject: &str, capacity: usize) -> Result<Subscription, BusError> {
        check_subject(subject, true)?;
        let capacity = check_capacity(capacity)?;
        let client = self.conn.client().clone();
        let subject = subject.to_string();
        let subscriber = self
            .conn
            .run(async move { client.subscribe(subject).await })?
            .map_err(|error| Self::nats_error("subscribe")(error.to_string()))?;
        Ok(self.forward(subscriber, capacity))
    }

    fn queue_subscribe(
        &self,
        subject: &str,
        group: &str,
        capacity: usize,
    ) -> Result<Subscription, BusError> {
        check_subject(subject, true)?;
        check_token(group)?;
        let capacity = check_capacity(capacity)?;
        let client = self.conn.client().clone();
        let subject = subject.to_string();
        let group = group.to_string();
        let subscriber = self
            .conn
            .run(async move { client.queue_subscribe(subject, group).await })?
            .map_err(|error| Self::nats_error("queue subscribe")(error.to_string()))?;
        Ok(self.forward(subscriber, capacity))
    }

    fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<BusMessage, BusError> {
        check_subject(subject, false)?;
        check_size(payload.len(), self.max_payload())?;
        let future = nats_request(
            self.conn.client().clone(),
            subject.to_string(),
            payload,
            timeout,
            self.max_payload(),
        );
        self.conn.run(future)?
    }

    fn request_async(&self, subject: &str, payload: Bytes, timeout: Duration) -> RequestFuture {
        if let Err(e) = check_subject(subject, false)
            .and_then(|()| check_size(payload.len(), self.max_payload()))
        {
            return Box::pin(std::future::ready(Err(e)));
        }
        Box::pin(nats_request(
            self.conn.client().clone(),
            subject.to_string(),
            payload,
            timeout,
            self.max_payload(),
        ))
    }

    fn flush(&self) -> Result<(), BusError> {
        let client = self.conn.client().clone();
        self.conn
            .run(async move { client.flush().await })?
            .map_err(|error| Self::nats_error("flush")(error.to_string()))
    }
}

/// One request over NATS: the first reply, or a typed error.
async fn nats_request(
    client: async_nats::Client,
    subject: String,
    payload: Bytes,
    timeout: Duration,
    max_payload: usize,
) -> Result<BusMessage, BusError> {
    let request = async_nats::Request::new()
        .payload(payload)
        .timeout(Some(timeout));
    // The client's own timeout applies; the outer one is a backstop.
    let backstop = timeout.saturating_add(Duration::from_secs(1));
    let outcome =
        tokio::time::timeout(backstop, client.send_request(subject.clone(), request)).await;
    let timed_out = |subject: String| BusError::Timeout { subject, timeout };
    match outcome {
        Err(_) => Err(timed_out(subject)),
        Ok(Ok(message)) => {
            if message.payload.len() > max_payload {
                return Err(BusError::Malformed {
                    subject,
                    detail: "reply larger than the payload limit".into(),
                });
            }
            Ok(BusMessage {
                subject: message.subject.to_string(),
                payload: message.payload,
                reply: None,
            })
        }
        Ok(Err(error)) => match error.kind() {
            async_nats::RequestErrorKind::TimedOut => Err(timed_out(subject)),
            async_nats::RequestErrorKind::NoResponders => Err(BusError::NoResponders(subject)),
            async_nats::RequestErrorKind::MaxPayloadExceeded => Err(BusError::TooLarge {
                len: 0,
                max: max_payload,
            }),
            _ => Err(NatsBus::nats_error("request")(error.to_string())),
        },
    }
}

// ----------------------------------------------------------------------------------------------
// In process

/// Does `subject` (no wildcards) match `pattern` (wildcards allowed)?
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut pattern_tokens = pattern.split('.');
    let mut subject_tokens = subject.split('.');
    loop {
        match (pattern_tokens.next(), subject_tokens.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(expected), Some(token)) if expected == token => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

struct LocalSub {
    id: u64,
    pattern: String,
    group: Option<String>,
    sender: SyncSender<BusMessage>,
    dropped: Arc<AtomicU64>,
}

#[derive(Default)]
struct LocalState {
    subs: Vec<LocalSub>,
    next_id: u64,
    /// Round-robin position per (pattern, group).
    turns: HashMap<(String, String), usize>,
}

/// [`Bus`] in process: the same semantics as [`NatsBus`] over bounded std channels, for tests
/// and the embedded mode. Cheap to clone (shared).
#[derive(Clone)]
pub struct LocalBus {
    state: Arc<Mutex<LocalState>>,
    max_payload: usize,
}

impl std::fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBus")
            .field("subscriptions", &self.state.lock().subs.len())
            .field("max_payload", &self.max_payload)
            .finish()
    }
}

impl Default for LocalBus {
    fn default() -> Self {
        LocalBus::new(LOCAL_MAX_PAYLOAD)
    }
}

struct LocalGuard {
    state: Weak<Mutex<LocalState>>,
    id: u64,
}

impl Drop for LocalGuard {
    fn drop(&mut self) {
        if let Some(state) = self.state.upgrade() {
            state.lock().subs.retain(|sub| sub.id != self.id);
        }
    }
}

impl LocalBus {
    /// An in-process bus refusing payloads over `max_payload` bytes.
    pub fn new(max_payload: usize) -> Self {
        LocalBus {
            state: Arc::new(Mutex::new(LocalState::default())),
            max_payload,
        }
    }

    fn add(
        &self,
        pattern: &str,
        group: Option<&str>,
        capacity: usize,
    ) -> Result<Subscription, BusError> {
        check_subject(pattern, true)?;
        if let Some(group) = group {
            check_token(group)?;
        }
        let capacity = check_capacity(capacity)?;
        let (sender, receiver) = std::sync::mpsc::sync_channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let mut state = self.state.lock();
        let id = state.next_id;
        state.next_id = state.next_id.wrapping_add(1);
        state.subs.push(LocalSub {
            id,
            pattern: pattern.to_string(),
            group: group.map(str::to_string),
            sender,
            dropped: Arc::clone(&dropped),
        });
        Ok(Subscription {
            receiver,
            dropped,
            _guard: Box::new(LocalGuard {
                state: Arc::downgrade(&self.state),
                id,
            }),
        })
    }

    /// Delivers; returns how many subscriptions matched.
    fn deliver(&self, message: &BusMessage) -> usize {
        let mut state = self.state.lock();
        let mut matched = 0usize;
        let mut groups: Vec<((String, String), Vec<usize>)> = Vec::new();
        for (position, sub) in state.subs.iter().enumerate() {
            if !subject_matches(&sub.pattern, &message.subject) {
                continue;
            }
            match &sub.group {
                None => {
                    matched = matched.saturating_add(1);
                    offer(sub, message.clone());
                }
                Some(group) => {
                    let key = (sub.pattern.clone(), group.clone());
                    match groups.iter_mut().find(|(existing, _)| *existing == key) {
                        Some((_, members)) => members.push(position),
                        None => groups.push((key, vec![position])),
                    }
                }
            }
        }
        for (key, members) in groups {
            let turn = state.turns.entry(key).or_insert(0);
            let Some(&position) = members.get(turn.checked_rem(members.len()).unwrap_or(0)) else {
                continue;
            };
            *turn = turn.wrapping_add(1);
            if let Some(sub) = state.subs.get(position) {
                matched = matched.saturating_add(1);
                offer(sub, message.clone());
            }
        }
        matched
    }
}

fn offer(sub: &LocalSub, message: BusMessage) {
    if let Err(TrySendError::Full(_)) = sub.sender.try_send(message) {
        sub.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

impl Bus for LocalBus {
    fn max_payload(&self) -> usize {
        self.max_payload
    }

    fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        check_subject(subject, false)?;
        check_size(payload.len(), self.max_payload)?;
        self.deliver(&BusMessage {
            subject: subject.to_string(),
            payload,
            reply: None,
        });
        Ok(())
    }

    fn subscribe(&self, subject: &str, capacity: usize) -> Result<Subscription, BusError> {
        self.add(subject, None, capacity)
    }

    fn queue_subscribe(
        &self,
        subject: &str,
        group: &str,
        capacity: usize,
    ) -> Result<Subscription, BusError> {
        self.add(subject, Some(group), capacity)
    }

    fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<BusMessage, BusError> {
        check_subject(subject, false)?;
        check_size(payload.len(), self.max_payload)?;
        let inbox = {
            let mut state = self.state.lock();
            let id = state.next_id;
            state.next_id = state.next_id.wrapping_add(1);
            format!("_INBOX.local.{id}")
        };
        let replies = self.add(&inbox, None, 1)?;
        let matched = self.deliver(&BusMessage {
            subject: subject.to_string(),
            payload,
            reply: Some(inbox),
        });
        if matched == 0 {
            return Err(BusError::NoResponders(subject.to_string()));
        }
        replies
            .recv_timeout(timeout)?
            .ok_or_else(|| BusError::Timeout {
                subject: subject.to_string(),
                timeout,
            })
    }

    fn flush(&self) -> Result<(), BusError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_matching() {
        assert!(subject_matches("a.b", "a.b"));
        assert!(subject_matches("a.*", "a.b"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(!subject_matches("a.b.c", "a.b"));
    }

    #[test]
    fn local_bus_semantics() {
        let bus = LocalBus::new(1024);
        let a = bus.subscribe("psl.bus.x.>", 4).unwrap();
        let b = bus.subscribe("psl.bus.x.records", 4).unwrap();
        let q1 = bus
            .queue_subscribe("psl.bus.x.invoke", "workers", 16)
            .unwrap();
        let q2 = bus
            .queue_subscribe("psl.bus.x.invoke", "workers", 16)
            .unwrap();
        bus.publish("psl.bus.x.records", Bytes::from_static(b"r"))
            .unwrap();
        assert_eq!(a.try_recv().unwrap().unwrap().payload, "r");
        assert_eq!(b.try_recv().unwrap().unwrap().payload, "r");
        for i in 0..10u8 {
            bus.publish("psl.bus.x.invoke", Bytes::from(vec![i]))
                .unwrap();
        }
        let mut got = Vec::new();
        while let Some(message) = q1.try_recv().unwrap() {
            got.push(message.payload[0]);
        }
        let first = got.len();
        while let Some(message) = q2.try_recv().unwrap() {
            got.push(message.payload[0]);
        }
        got.sort();
        assert_eq!(got, (0..10).collect::<Vec<u8>>());
        assert_eq!(first, 5, "round robin over two members");
        // Bounded: the fifth message to a 4-slot subscription is dropped and counted.
        for _ in 0..5 {
            bus.publish("psl.bus.x.records", Bytes::from_static(b"r"))
                .unwrap();
        }
        assert_eq!(b.dropped(), 1);
        // Too large, invalid subjects.
        assert!(matches!(
            bus.publish("psl.bus.x.records", Bytes::from(vec![0; 1025])),
            Err(BusError::TooLarge {
                len: 1025,
                max: 1024
            })
        ));
        assert!(bus.publish("psl.bus.*", Bytes::new()).is_err());
        // Unsubscribe on drop.
        drop(b);
        drop(a);
        bus.publish("psl.bus.x.records", Bytes::from_static(b"r"))
            .unwrap();
        assert_eq!(bus.state.lock().subs.len(), 2);
    }

    #[test]
    fn local_request_reply() {
        let bus = LocalBus::default();
        assert!(matches!(
            bus.request("svc.echo", Bytes::new(), Duration::from_millis(10)),
            Err(BusError::NoResponders(_))
        ));
        let server = bus.subscribe("svc.echo", 8).unwrap();
        let handle = {
            let bus = bus.clone();
            std::thread::spawn(move || {
                let request = server.recv().unwrap();
                bus.respond(&request, request.payload.clone()).unwrap();
                server
            })
        };
        let reply = bus
            .request(
                "svc.echo",
                Bytes::from_static(b"ping"),
                Duration::from_secs(5),
            )
            .unwrap();
        assert_eq!(reply.payload, "ping");
        let _server = handle.join().unwrap();
        // Subscribed but silent: a timeout, not a hang.
        let started = std::time::Instant::now();
        assert!(matches!(
            bus.request("svc.echo", Bytes::new(), Duration::from_millis(50)),
            Err(BusError::Timeout { .. })
        ));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

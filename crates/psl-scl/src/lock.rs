//! The lock service of the Secure Concurrency Layer: read/write locks with FIFO queues, leases,
//! fencing tokens and release watermarks, as a deterministic state machine without IO.
//!
//! # What it owns
//!
//! The lock table of one application: for every lock name, who holds it (one writer, or up to
//! [`LockConfig::holders_max_per_lock`] readers), who waits for it (a FIFO queue of at most
//! [`LockConfig::waiters_max_per_lock`] requests), the newest fencing token granted for it, and
//! its release watermark. It also owns the service-wide fencing-token counter.
//!
//! # What it must not do
//!
//! It does no IO, reads no clock and draws no randomness: time comes in as `now_ms` arguments and
//! every output is a value ([`Reply`], [`Grant`], [`Event`]) that the I/O shell in the manager
//! role sends. Every map it iterates to produce output is ordered (`BTreeMap`, `VecDeque`), so the
//! same inputs always give the same outputs. It never panics on any input and every table has a
//! limit with a typed error when it is reached. It does not authenticate anyone: the shell must
//! only pass a [`HolderId`] that the channel proved (the writer id of an attested worker
//! incarnation).
//!
//! # Requests, queues and leases
//!
//! [`LockService::acquire`] grants at once when nobody waits for the lock and the mode is
//! compatible with the current holders; otherwise the request joins the back of the lock's queue.
//! Readers share a lock, but a reader joins the current readers only if the queue is empty, so a
//! queued writer is never overtaken by later readers. When holders leave, the queue is served in
//! order: one writer, or every reader at the head of the queue (up to the holder limit).
//!
//! A request is identified by `(holder, request_id)` on one lock; the same request sent again
//! (a retry after a lost reply) returns the same outcome and never queues twice. A grant whose
//! message was lost is therefore recovered by retrying the acquire. A client that gives up waiting
//! (client-side timeout) must send [`LockService::cancel`]; cancelling a request that was granted
//! in the meantime gives the lock back (without merging a watermark, since the holder never knew
//! it held the lock). A late duplicate of an acquire that was already released is indistinguishable
//! from a new request and is granted again; the worker shell must release a grant for a request
//! it is not waiting for, and the lease bounds how long such a grant can block others.
//!
//! A holder keeps the lock while `now_ms < lease_until_ms`. [`LockService::renew`] and
//! [`LockService::acknowledge_flush`] extend the lease of a holder whose lease has not passed.
//! [`LockService::tick`] expires every holder whose lease has passed (`now_ms >= lease_until_ms`)
//! and promotes waiters. Once the lease has passed, release, renew and flush acknowledgements of
//! that holder are refused ([`LockError::LeaseExpired`]) even before a tick expired it, so what a
//! holder's writes become never depends on when the shell calls `tick`. Time never goes backwards
//! inside the service: each call uses the largest `now_ms` seen so far.
//!
//! # Fencing rule
//!
//! Every grant (read or write) takes a new [`FencingToken`] from one service-wide counter, so the
//! tokens of one lock are strictly increasing across all its grants, even when the lock's entry
//! was evicted and created again, and even across [`LockService::snapshot`] and
//! [`LockService::restore`]. Within the service, a write carrying token `t` for lock `L` is valid
//! only if `t` is the newest token granted for `L` ([`LockService::fence_check`]); a release,
//! renew or flush acknowledgement with any other token is refused and changes nothing.
//!
//! Replicas and CapsuleDB cannot apply "refuse tokens older than the newest I know" literally:
//! that verdict would depend on the order in which records and grants arrive (a replica that sees
//! an expired holder's late record before the next grant would accept it, another would refuse
//! it), and it would refuse records that the previous holder flushed before its release but that
//! reach a replica after the next grant. So the verdict on a token comes from this service and
//! is the same everywhere (see `docs/design/scl.md`, "fenced writes commit at release"): a record
//! of writer `w` with sequence number `s` written under `(L, t)` is committed if and only if
//! `s <= V[w]`, where `V` is the verdict on `t`: the release watermark merged with the holder's
//! acknowledged flushes when `t` was released, or the acknowledged flushes alone
//! (the `acknowledged` field of [`Event::Expired`]) when `t` expired or its holder was forgotten. Every other
//! record under `t` is a late write and is refused. Until the verdict on `t` is known, a replica
//! other than the writer's own holds such records back. The next grant's token is above `t`, so
//! a replica that sees a record under a token above `t` knows `t` is settled or about to be.
//!
//! # Watermark semantics
//!
//! A [`Watermark`] is a vector clock: for each writer incarnation, the highest sequence number of
//! its records that must be applied (sequence numbers start at 0, so an absent writer means
//! "nothing required", not "up to 0"). A holder releases with the watermark of everything its
//! replica had published and applied when it released (after flushing), and may acknowledge
//! flushes on the way ([`LockService::acknowledge_flush`]). The lock's watermark is the pointwise
//! maximum ([`Watermark::merge`]) of every release watermark and every acknowledged flush of every
//! holder that has left the lock (by release, expiry, cancel or [`LockService::forget_holder`]),
//! and every grant carries the lock's watermark at the moment of the grant; the acquirer's worker
//! does not return from `lock` until its replica applied everything up to it. So every grant's
//! watermark dominates ([`Watermark::dominates`]) every committed write of every earlier holder,
//! which is what release consistency needs. An expired or forgotten holder's unacknowledged writes
//! are lost by design (the design brief says so for unflushed writes). When an idle lock entry is
//! evicted to make room, its watermark is merged into a service-wide floor that every newly
//! created entry starts from, so eviction never loses a watermark (later grants may wait a little
//! more).
//!
//! # Limits
//!
//! Lock names are at most [`LOCK_NAME_MAX`] bytes; a release watermark at most
//! [`WATERMARK_WRITERS_MAX`] writers. The table holds at most [`LockConfig::locks_max`] entries:
//! when it is full, the least recently idle entry (no holder, no waiter) is evicted, and when none
//! is idle the acquire fails with [`LockError::TooManyLocks`]. A full queue fails the acquire with
//! [`LockError::TooManyWaiters`].
#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        reason = "tests may panic on failure"
    )
)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use psl_capsule::WriterId;

/// Largest lock name, in bytes.
pub const LOCK_NAME_MAX: usize = 4096;

/// Largest number of writers in a watermark presented to [`LockService::release`].
pub const WATERMARK_WRITERS_MAX: usize = 65_536;

/// The name of a lock: at most [`LOCK_NAME_MAX`] bytes, checked on construction.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct LockName(Vec<u8>);

impl LockName {
    /// A lock name, or [`LockError::NameTooLong`] beyond [`LOCK_NAME_MAX`] bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, LockError> {
        let bytes = bytes.into();
        if bytes.len() > LOCK_NAME_MAX {
            return Err(LockError::NameTooLong {
                len: bytes.len(),
                max: LOCK_NAME_MAX,
            });
        }
        Ok(Self(bytes))
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The name's bytes, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Who holds or waits for a lock: the writer id of one worker incarnation (opaque here).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct HolderId(pub [u8; 16]);

impl HolderId {
    /// The writer incarnation this holder is.
    pub fn writer(self) -> WriterId {
        WriterId(self.0)
    }
}

impl From<WriterId> for HolderId {
    fn from(writer: WriterId) -> Self {
        HolderId(writer.0)
    }
}

/// Shared (read) or exclusive (write).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum LockMode {
    /// Shared with other readers.
    Read,
    /// Exclusive.
    Write,
}

/// A fencing token: strictly increasing across all grants of one lock (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A vector clock of per-writer sequence numbers: for each writer, the highest sequence number
/// that must be applied. A writer that is absent requires nothing.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Watermark(BTreeMap<WriterId, u64>);

impl Watermark {
    /// The empty watermark (requires nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// The required sequence number of `writer`, if any.
    pub fn get(&self, writer: &WriterId) -> Option<u64> {
        self.0.get(writer).copied()
    }

    /// Raises the entry of `writer` to at least `seq`.
    pub fn observe(&mut self, writer: WriterId, seq: u64) {
        let entry = self.0.entry(writer).or_insert(seq);
        *entry = (*entry).max(seq);
    }

    /// Pointwise maximum with `other`.
    pub fn merge(&mut self, other: &Watermark) {
        for (writer, seq) in &other.0 {
            self.observe(*writer, *seq);
        }
    }

    /// Whether every requirement of `other` is met by `self` (`self >= other` pointwise).
    pub fn dominates(&self, other: &Watermark) -> bool {
        other
            .0
            .iter()
            .all(|(writer, seq)| self.get(writer).is_some_and(|mine| mine >= *seq))
    }

    /// Whether record `seq` of `writer` is at or below this watermark.
    pub fn covers(&self, writer: &WriterId, seq: u64) -> bool {
        self.get(writer).is_some_and(|mine| seq <= mine)
    }

    /// The entries in writer order.
    pub fn iter(&self) -> impl Iterator<Item = (&WriterId, &u64)> {
        self.0.iter()
    }

    /// Number of writers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no writer is required.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(WriterId, u64)> for Watermark {
    fn from_iter<I: IntoIterator<Item = (WriterId, u64)>>(iter: I) -> Self {
        let mut watermark = Watermark::new();
        for (writer, seq) in iter {
            watermark.observe(writer, seq);
        }
        watermark
    }
}

/// Limits and lease length of a [`LockService`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LockConfig {
    /// Lease length in milliseconds (at least 1; 0 is raised to 1).
    pub lease_ms: u64,
    /// Requests that may wait for one lock at once.
    pub waiters_max_per_lock: usize,
    /// Lock entries (held, waited for, or idle with a watermark) the table keeps.
    pub locks_max: usize,
    /// Readers that may hold one lock at once (at least 1; 0 is raised to 1).
    pub holders_max_per_lock: usize,
}

impl LockConfig {
    fn normalised(self) -> Self {
        Self {
            lease_ms: self.lease_ms.max(1),
            holders_max_per_lock: self.holders_max_per_lock.max(1),
            ..self
        }
    }
}

impl Default for LockConfig {
    fn default() -> Self {
        Self {
            lease_ms: 10_000,
            waiters_max_per_lock: 4096,
            locks_max: 65_536,
            holders_max_per_lock: 1024,
        }
    }
}

/// A lock granted to a holder.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Grant {
    /// The lock.
    pub name: LockName,
    /// Who holds it now.
    pub holder: HolderId,
    /// The acquire request this grant answers.
    pub request_id: u64,
    /// Read or write.
    pub mode: LockMode,
    /// The fencing token of this grant; the holder writes and releases with it.
    pub token: FencingToken,
    /// The holder's replica must apply everything up to this before the holder proceeds.
    pub watermark: Watermark,
    /// The lease ends at this time unless renewed.
    pub lease_until_ms: u64,
}

/// The answer to an acquire.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Reply {
    /// Granted now.
    Granted(Grant),
    /// Queued; `position` requests are ahead of this one (0: next in line).
    Queued {
        /// Requests ahead of this one.
        position: usize,
    },
}

/// Something that happened as a consequence of time passing or a holder being forgotten.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Event {
    /// A holder lost the lock without releasing it (its lease passed, or it was forgotten).
    /// This is the verdict on `token`: its writes up to `acknowledged` are committed (and were
    /// merged into the lock's watermark), every other write under `token` is fenced.
    Expired {
        /// The lock.
        name: LockName,
        /// The holder that lost it.
        holder: HolderId,
        /// The token it held.
        token: FencingToken,
        /// Merge of the watermarks of the flushes it had acknowledged under `token`.
        acknowledged: Watermark,
    },
    /// A waiter was granted the lock; the shell sends it the grant.
    Granted(Grant),
}

/// Why a lock request was refused. A refused request never changes the service's state.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The lock name is longer than allowed.
    #[error("lock name of {len} bytes exceeds the limit of {max}")]
    NameTooLong {
        /// Length of the name.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The holder already holds this lock (under another request).
    #[error("lock already held by this holder with token {token}")]
    AlreadyHeld {
        /// The token it holds.
        token: FencingToken,
    },
    /// The holder already waits for this lock under another request.
    #[error("already waiting for this lock under request {request_id}")]
    AlreadyWaiting {
        /// The request it waits under.
        request_id: u64,
    },
    /// The same request id was sent again with a different mode.
    #[error("request {request_id} was already made with a different mode")]
    RequestConflict {
        /// The request id.
        request_id: u64,
    },
    /// The holder does not hold this lock.
    #[error("lock not held by this holder")]
    NotHeld,
    /// The presented token is not the holder's current one: the lock moved on.
    #[error("stale fencing token {presented}: current is {current}")]
    Fenced {
        /// The token presented.
        presented: FencingToken,
        /// The holder's current token, or the lock's newest token if it holds nothing.
        current: FencingToken,
    },
    /// The lease has passed; the holder must stop writing under this lock.
    #[error("lease ended at {lease_until_ms} ms")]
    LeaseExpired {
        /// When the lease ended.
        lease_until_ms: u64,
    },
    /// The lock's queue is full.
    #[error("too many waiters for this lock (limit {max})")]
    TooManyWaiters {
        /// The limit.
        max: usize,
    },
    /// The lock table is full and no entry is idle.
    #[error("too many locks in use (limit {max})")]
    TooManyLocks {
        /// The limit.
        max: usize,
    },
    /// A release watermark names too many writers.
    #[error("watermark of {len} writers exceeds the limit of {max}")]
    WatermarkTooLarge {
        /// Writers in the watermark.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The token counter reached `u64::MAX` (not reachable in practice).
    #[error("fencing tokens exhausted")]
    TokensExhausted,
    /// A snapshot breaks an invariant of the lock table.
    #[error("invalid lock snapshot: {0}")]
    BadSnapshot(&'static str),
}

/// One holder of a lock, as kept in a snapshot.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct HeldSnapshot {
    /// The holder.
    pub holder: HolderId,
    /// The request it was granted under.
    pub request_id: u64,
    /// Read or write.
    pub mode: LockMode,
    /// Its token.
    pub token: FencingToken,
    /// The watermark its grant carried.
    pub watermark: Watermark,
    /// Its lease end.
    pub lease_until_ms: u64,
    /// Merge of the watermarks of its acknowledged flushes under this grant.
    pub acknowledged: Watermark,
}

/// One queued request, as kept in a snapshot.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WaiterSnapshot {
    /// Who waits.
    pub holder: HolderId,
    /// Its request id.
    pub request_id: u64,
    /// Read or write.
    pub mode: LockMode,
}

/// One lock entry, as kept in a snapshot.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LockEntrySnapshot {
    /// The lock.
    pub name: LockName,
    /// Merge of every release watermark so far (and of the floor when the entry was created).
    pub watermark: Watermark,
    /// Newest token granted for this lock while the entry existed.
    pub newest_token: Option<FencingToken>,
    /// Holders in holder order.
    pub holders: Vec<HeldSnapshot>,
    /// Waiters in queue order.
    pub waiters: Vec<WaiterSnapshot>,
    /// Eviction order stamp of an idle entry.
    pub idle_since: Option<u64>,
}

/// The whole state of a [`LockService`] as plain data, for manager recovery.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LockSnapshot {
    /// The configuration.
    pub config: LockConfig,
    /// The next fencing token to issue.
    pub next_token: u64,
    /// The next idle stamp.
    pub next_stamp: u64,
    /// The largest time seen.
    pub now_max_ms: u64,
    /// Merge of the watermarks of evicted entries.
    pub floor: Watermark,
    /// Every entry in name order.
    pub locks: Vec<LockEntrySnapshot>,
}

#[derive(Clone, Debug)]
struct Held {
    request_id: u64,
    mode: LockMode,
    token: FencingToken,
    watermark: Watermark,
    lease_until_ms: u64,
    acknowledged: Watermark,
}

#[derive(Clone, Copy, Debug)]
struct Waiter {
    holder: HolderId,
    request_id: u64,
    mode: LockMode,
}

#[derive(Clone, Debug)]
struct Entry {
    holders: BTreeMap<HolderId, Held>,
    waiters: VecDeque<Waiter>,
    watermark: Watermark,
    newest_token: Option<FencingToken>,
    idle_since: Option<u64>,
}

impl Entry {
    fn new(watermark: Watermark) -> Self {
        Self {
            holders: BTreeMap::new(),
            waiters: VecDeque::new(),
            watermark,
            newest_token: None,
            idle_since: None,
        }
    }

    fn is_idle(&self) -> bool {
        self.holders.is_empty() && self.waiters.is_empty()
    }

    fn grantable(&self, mode: LockMode, config: &LockConfig) -> bool {
        match mode {
            LockMode::Write => self.holders.is_empty(),
            LockMode::Read => {
                self.holders.len() < config.holders_max_per_lock
                    && self
                        .holders
                        .values()
                        .all(|held| held.mode == LockMode::Read)
            }
        }
    }

    /// Checks that `holder` holds the lock with `token`.
    fn check(&self, holder: HolderId, token: FencingToken) -> Result<&Held, LockError> {
        match self.holders.get(&holder) {
            Some(held) if held.token == token => Ok(held),
            Some(held) => Err(LockError::Fenced {
                presented: token,
                current: held.token,
            }),
            None => match self.newest_token {
                Some(current) if token < current => Err(LockError::Fenced {
                    presented: token,
                    current,
                }),
                _ => Err(LockError::NotHeld),
            },
        }
    }
}

fn grant_of(name: &LockName, holder: HolderId, held: &Held) -> Grant {
    Grant {
        name: name.clone(),
        holder,
        request_id: held.request_id,
        mode: held.mode,
        token: held.token,
        watermark: held.watermark.clone(),
        lease_until_ms: held.lease_until_ms,
    }
}

fn check_watermark(watermark: &Watermark) -> Result<(), LockError> {
    if watermark.len() > WATERMARK_WRITERS_MAX {
        return Err(LockError::WatermarkTooLarge {
            len: watermark.len(),
            max: WATERMARK_WRITERS_MAX,
        });
    }
    Ok(())
}

fn take_token(next_token: &mut u64) -> Result<FencingToken, LockError> {
    let token = *next_token;
    *next_token = token.checked_add(1).ok_or(LockError::TokensExhausted)?;
    Ok(FencingToken(token))
}

type LeaseKey = (u64, LockName, HolderId);

/// Makes `holder` a holder of `entry` with `token` and records its lease.
#[allow(
    clippy::too_many_arguments,
    reason = "disjoint borrows of the service's fields"
)]
fn install(
    entry: &mut Entry,
    leases: &mut BTreeSet<LeaseKey>,
    name: &LockName,
    holder: HolderId,
    request_id: u64,
    mode: LockMode,
    token: FencingToken,
    now_ms: u64,
    config: &LockConfig,
) -> Grant {
    let held = Held {
        request_id,
        mode,
        token,
        watermark: entry.watermark.clone(),
        lease_until_ms: now_ms.saturating_add(config.lease_ms),
        acknowledged: Watermark::new(),
    };
    let grant = grant_of(name, holder, &held);
    leases.insert((held.lease_until_ms, name.clone(), holder));
    entry.holders.insert(holder, held);
    entry.newest_token = Some(token);
    grant
}

/// Grants to the head of the queue for as long as it is compatible with the holders.
fn promote(
    entry: &mut Entry,
    leases: &mut BTreeSet<LeaseKey>,
    next_token: &mut u64,
    name: &LockName,
    now_ms: u64,
    config: &LockConfig,
) -> Vec<Grant> {
    let mut grants = Vec::new();
    while let Some(head) = entry.waiters.front().copied() {
        if !entry.grantable(head.mode, config) {
            break;
        }
        let Ok(token) = take_token(next_token) else {
            break;
        };
        entry.waiters.pop_front();
        grants.push(install(
            entry,
            leases,
            name,
            head.holder,
            head.request_id,
            head.mode,
            token,
            now_ms,
            config,
        ));
    }
    grants
}

/// The lock service: see the module docs.
#[derive(Clone, Debug)]
pub struct LockService {
    config: LockConfig,
    locks: BTreeMap<LockName, Entry>,
    /// Every holder's lease, ordered by lease end: `tick` reads only the expired prefix.
    leases: BTreeSet<LeaseKey>,
    /// Idle entries, least recently idle first: the eviction order.
    idle: BTreeSet<(u64, LockName)>,
    next_token: u64,
    next_stamp: u64,
    now_max_ms: u64,
    floor: Watermark,
}

impl LockService {
    /// An empty lock table. `lease_ms` and `holders_max_per_lock` are raised to at least 1.
    pub fn new(config: LockConfig) -> Self {
        Self {
            config: config.normalised(),
            locks: BTreeMap::new(),
            leases: BTreeSet::new(),
            idle: BTreeSet::new(),
            next_token: 1,
            next_stamp: 0,
            now_max_ms: 0,
            floor: Watermark::new(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> LockConfig {
        self.config
    }

    fn observe_time(&mut self, now_ms: u64) -> u64 {
        self.now_max_ms = self.now_max_ms.max(now_ms);
        self.now_max_ms
    }

    /// Keeps the idle set in step with the entry's state after a change.
    fn refresh_idle(&mut self, name: &LockName) {
        let Some(entry) = self.locks.get_mut(name) else {
            return;
        };
        match (entry.idle_since, entry.is_idle()) {
            (None, true) => {
                let stamp = self.next_stamp;
                self.next_stamp = stamp.saturating_add(1);
                entry.idle_since = Some(stamp);
                self.idle.insert((stamp, name.clone()));
            }
            (Some(stamp), false) => {
                entry.idle_since = None;
                self.idle.remove(&(stamp, name.clone()));
            }
            _ => {}
        }
    }

    /// Makes sure an entry for `name` exists, evicting the least recently idle entry if full.
    fn ensure_entry(&mut self, name: &LockName) -> Result<(), LockError> {
        if self.locks.contains_key(name) {
            return Ok(());
        }
        if self.locks.len() >= self.config.locks_max {
            let Some((_, victim)) = self.idle.pop_first() else {
                return Err(LockError::TooManyLocks {
                    max: self.config.locks_max,
                });
            };
            if let Some(evicted) = self.locks.remove(&victim) {
                assert!(evicted.is_idle(), "only idle entries are in the idle set");
                self.floor.merge(&evicted.watermark);
            }
        }
        self.locks
            .insert(name.clone(), Entry::new(self.floor.clone()));
        Ok(())
    }

    /// Asks for `name` in `mode` on behalf of `holder`; see the module docs for the rules.
    ///
    /// The same `(holder, request_id)` sent again while it waits or holds returns the same
    /// outcome (`Queued` with its current position, or the same grant with its current lease).
    pub fn acquire(
        &mut self,
        now_ms: u64,
        holder: HolderId,
        request_id: u64,
        name: LockName,
        mode: LockMode,
    ) -> Result<Reply, LockError> {
        let now = self.observe_time(now_ms);
        if let Some(entry) = self.locks.get(&name) {
            if let Some(held) = entry.holders.get(&holder) {
                if held.request_id != request_id {
                    return Err(LockError::AlreadyHeld { token: held.token });
                }
                if held.mode != mode {
                    return Err(LockError::RequestConflict { request_id });
                }
                return Ok(Reply::Granted(grant_of(&name, holder, held)));
            }
            if let Some((position, waiter)) = entry
                .waiters
                .iter()
                .enumerate()
                .find(|(_, waiter)| waiter.holder == holder)
            {
                if waiter.request_id != request_id {
                    return Err(LockError::AlreadyWaiting {
                        request_id: waiter.request_id,
                    });
                }
                if waiter.mode != mode {
                    return Err(LockError::RequestConflict { request_id });
                }
                return Ok(Reply::Queued { position });
            }
        }
        self.ensure_entry(&name)?;
        let config = self.config;
        let Some(entry) = self.locks.get_mut(&name) else {
            return Err(LockError::TooManyLocks {
                max: config.locks_max,
            });
        };
        let result = if entry.waiters.is_empty() && entry.grantable(mode, &config) {
            take_token(&mut self.next_token).map(|token| {
                Reply::Granted(install(
                    entry,
                    &mut self.leases,
                    &name,
                    holder,
                    request_id,
                    mode,
                    token,
                    now,
                    &config,
                ))
            })
        } else if entry.waiters.len() >= config.waiters_max_per_lock {
            Err(LockError::TooManyWaiters {
                max: config.waiters_max_per_lock,
            })
        } else {
            let position = entry.waiters.len();
            entry.waiters.push_back(Waiter {
                holder,
                request_id,
                mode,
            });
            Ok(Reply::Queued { position })
        };
        self.refresh_idle(&name);
        result
    }

    /// Releases `name` held by `holder` under `token`, merging `watermark` (everything the
    /// holder's replica published and applied, after its flush) into the lock's watermark.
    /// Returns the grants to the next waiters, in queue order.
    pub fn release(
        &mut self,
        now_ms: u64,
        holder: HolderId,
        name: &LockName,
        token: FencingToken,
        watermark: &Watermark,
    ) -> Result<Vec<Grant>, LockError> {
        let now = self.observe_time(now_ms);
        let config = self.config;
        check_watermark(watermark)?;
        let entry = self.locks.get_mut(name).ok_or(LockError::NotHeld)?;
        let lease_until_ms = entry.check(holder, token)?.lease_until_ms;
        if now >= lease_until_ms {
            return Err(LockError::LeaseExpired { lease_until_ms });
        }
        if let Some(held) = entry.holders.remove(&holder) {
            entry.watermark.merge(&held.acknowledged);
        }
        self.leases.remove(&(lease_until_ms, name.clone(), holder));
        entry.watermark.merge(watermark);
        let grants = promote(
            entry,
            &mut self.leases,
            &mut self.next_token,
            name,
            now,
            &config,
        );
        self.refresh_idle(name);
        Ok(grants)
    }

    /// Extends the lease of `holder` on `name` to `now_ms + lease_ms` and returns the new lease
    /// end. A lease that has already passed cannot be renewed ([`LockError::LeaseExpired`]).
    pub fn renew(
        &mut self,
        now_ms: u64,
        holder: HolderId,
        name: &LockName,
        token: FencingToken,
    ) -> Result<u64, LockError> {
        self.extend(now_ms, holder, name, token, None)
    }

    /// Records that `holder` flushed while holding `name` under `token`: `watermark` covers
    /// writes that are now durable. They are committed whatever happens next: a later expiry or
    /// [`LockService::forget_holder`] merges the acknowledged watermark into the lock's watermark
    /// and reports it in [`Event::Expired`], so no flushed write is lost. Extends the lease like
    /// [`LockService::renew`] and returns the new lease end; refused (changing nothing) if the
    /// lease has passed, so no write flushed after the lease ended is ever committed.
    pub fn acknowledge_flush(
        &mut self,
        now_ms: u64,
        holder: HolderId,
        name: &LockName,
        token: FencingToken,
        watermark: &Watermark,
    ) -> Result<u64, LockError> {
        self.extend(now_ms, holder, name, token, Some(watermark))
    }

    fn extend(
        &mut self,
        now_ms: u64,
        holder: HolderId,
        name: &LockName,
        token: FencingToken,
        acknowledged: Option<&Watermark>,
    ) -> Result<u64, LockError> {
        if let Some(watermark) = acknowledged {
            check_watermark(watermark)?;
        }
        let now = self.observe_time(now_ms);
        let lease_ms = self.config.lease_ms;
        let entry = self.locks.get_mut(name).ok_or(LockError::NotHeld)?;
        let old = entry.check(holder, token)?.lease_until_ms;
        if now >= old {
            return Err(LockError::LeaseExpired {
                lease_until_ms: old,
            });
        }
        let new = now.saturating_add(lease_ms).max(old);
        if let Some(held) = entry.holders.get_mut(&holder) {
            held.lease_until_ms = new;
            if let Some(watermark) = acknowledged {
                held.acknowledged.merge(watermark);
            }
        }
        self.leases.remove(&(old, name.clone(), holder));
        self.leases.insert((new, name.clone(), holder));
        Ok(new)
    }

    /// Withdraws the request `(holder, request_id)` on `name`: the shell sends this when the
    /// client stops waiting. If the request was granted in the meantime, the lock is given back
    /// without merging a watermark. Cancelling an unknown request does nothing. Returns the grants
    /// to waiters promoted as a consequence.
    pub fn cancel(
        &mut self,
        now_ms: u64,
        holder: HolderId,
        name: &LockName,
        request_id: u64,
    ) -> Vec<Grant> {
        let now = self.observe_time(now_ms);
        let config = self.config;
        let Some(entry) = self.locks.get_mut(name) else {
            return Vec::new();
        };
        let mut changed = false;
        if let Some(index) = entry
            .waiters
            .iter()
            .position(|waiter| waiter.holder == holder && waiter.request_id == request_id)
        {
            entry.waiters.remove(index);
            changed = true;
        } else if let Some(held) = entry.holders.get(&holder)
            && held.request_id == request_id
        {
            self.leases
                .remove(&(held.lease_until_ms, name.clone(), holder));
            if let Some(held) = entry.holders.remove(&holder) {
                entry.watermark.merge(&held.acknowledged);
            }
            changed = true;
        }
        if !changed {
            return Vec::new();
        }
        let grants = promote(
            entry,
            &mut self.leases,
            &mut self.next_token,
            name,
            now,
            &config,
        );
        self.refresh_idle(name);
        grants
    }

    /// Expires every holder whose lease has passed (`lease_until_ms <= now_ms`) and promotes
    /// waiters. Events come in lease order for expiries, then in lock-name order for grants.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Event> {
        let now = self.observe_time(now_ms);
        let expired: Vec<LeaseKey> = self
            .leases
            .iter()
            .take_while(|(until, _, _)| *until <= now)
            .cloned()
            .collect();
        let mut events = Vec::new();
        let mut touched = BTreeSet::new();
        for key in expired {
            self.leases.remove(&key);
            let (_, name, holder) = key;
            if let Some(entry) = self.locks.get_mut(&name)
                && let Some(held) = entry.holders.remove(&holder)
            {
                entry.watermark.merge(&held.acknowledged);
                events.push(Event::Expired {
                    name: name.clone(),
                    holder,
                    token: held.token,
                    acknowledged: held.acknowledged,
                });
                touched.insert(name);
            }
        }
        self.promote_all(touched, now, &mut events);
        events
    }

    /// Drops every hold and every queued request of `holder` (a worker incarnation known to be
    /// dead), without merging any watermark, and promotes waiters. Each dropped hold is reported
    /// as [`Event::Expired`]. Costs a scan of the table.
    pub fn forget_holder(&mut self, now_ms: u64, holder: HolderId) -> Vec<Event> {
        let now = self.observe_time(now_ms);
        let mut events = Vec::new();
        let mut touched = BTreeSet::new();
        for (name, entry) in &mut self.locks {
            let before = entry.waiters.len();
            entry.waiters.retain(|waiter| waiter.holder != holder);
            if entry.waiters.len() != before {
                touched.insert(name.clone());
            }
            if let Some(held) = entry.holders.remove(&holder) {
                self.leases
                    .remove(&(held.lease_until_ms, name.clone(), holder));
                entry.watermark.merge(&held.acknowledged);
                events.push(Event::Expired {
                    name: name.clone(),
                    holder,
                    token: held.token,
                    acknowledged: held.acknowledged,
                });
                touched.insert(name.clone());
            }
        }
        self.promote_all(touched, now, &mut events);
        events
    }

    fn promote_all(&mut self, names: BTreeSet<LockName>, now: u64, events: &mut Vec<Event>) {
        let config = self.config;
        for name in names {
            if let Some(entry) = self.locks.get_mut(&name) {
                let grants = promote(
                    entry,
                    &mut self.leases,
                    &mut self.next_token,
                    &name,
                    now,
                    &config,
                );
                events.extend(grants.into_iter().map(Event::Granted));
            }
            self.refresh_idle(&name);
        }
    }

    /// The newest token granted for `name`, if its entry is in the table.
    pub fn current_token(&self, name: &LockName) -> Option<FencingToken> {
        self.locks.get(name).and_then(|entry| entry.newest_token)
    }

    /// Whether a write carrying `token` for `name` is valid: `token` is the newest granted.
    pub fn fence_check(&self, name: &LockName, token: FencingToken) -> bool {
        self.current_token(name) == Some(token)
    }

    /// The current release watermark of `name`, if its entry is in the table.
    pub fn watermark(&self, name: &LockName) -> Option<&Watermark> {
        self.locks.get(name).map(|entry| &entry.watermark)
    }

    /// Number of entries in the table (held, waited for, or idle).
    pub fn lock_count(&self) -> usize {
        self.locks.len()
    }

    /// The whole state as plain data.
    pub fn snapshot(&self) -> LockSnapshot {
        LockSnapshot {
            config: self.config,
            next_token: self.next_token,
            next_stamp: self.next_stamp,
            now_max_ms: self.now_max_ms,
            floor: self.floor.clone(),
            locks: self
                .locks
                .iter()
                .map(|(name, entry)| LockEntrySnapshot {
                    name: name.clone(),
                    watermark: entry.watermark.clone(),
                    newest_token: entry.newest_token,
                    holders: entry
                        .holders
                        .iter()
                        .map(|(holder, held)| HeldSnapshot {
                            holder: *holder,
                            request_id: held.request_id,
                            mode: held.mode,
                            token: held.token,
                            watermark: held.watermark.clone(),
                            lease_until_ms: held.lease_until_ms,
                            acknowledged: held.acknowledged.clone(),
                        })
                        .collect(),
                    waiters: entry
                        .waiters
                        .iter()
                        .map(|waiter| WaiterSnapshot {
                            holder: waiter.holder,
                            request_id: waiter.request_id,
                            mode: waiter.mode,
                        })
                        .collect(),
                    idle_since: entry.idle_since,
                })
                .collect(),
        }
    }

    /// Rebuilds a service from a snapshot, checking the table's invariants. The token counter
    /// continues above every token in the snapshot, whatever `next_token` says.
    pub fn restore(snapshot: LockSnapshot) -> Result<Self, LockError> {
        use LockError::BadSnapshot;
        let config = snapshot.config.normalised();
        if snapshot.locks.len() > config.locks_max {
            return Err(BadSnapshot("more entries than locks_max"));
        }
        let mut service = LockService::new(config);
        service.floor = snapshot.floor;
        service.now_max_ms = snapshot.now_max_ms;
        let mut max_token = 0u64;
        let mut max_stamp = None::<u64>;
        for lock in snapshot.locks {
            let name = lock.name;
            if service.locks.contains_key(&name) {
                return Err(BadSnapshot("duplicate lock name"));
            }
            let mut entry = Entry::new(lock.watermark);
            entry.newest_token = lock.newest_token;
            if lock.holders.len() > config.holders_max_per_lock {
                return Err(BadSnapshot("more holders than holders_max_per_lock"));
            }
            let writers = lock
                .holders
                .iter()
                .filter(|held| held.mode == LockMode::Write)
                .count();
            if writers > 1 || (writers == 1 && lock.holders.len() > 1) {
                return Err(BadSnapshot("a writer shares the lock"));
            }
            for held in lock.holders {
                if entry.newest_token.is_none_or(|newest| held.token > newest) {
                    return Err(BadSnapshot("a holder's token is above the lock's newest"));
                }
                service
                    .leases
                    .insert((held.lease_until_ms, name.clone(), held.holder));
                let previous = entry.holders.insert(
                    held.holder,
                    Held {
                        request_id: held.request_id,
                        mode: held.mode,
                        token: held.token,
                        watermark: held.watermark,
                        lease_until_ms: held.lease_until_ms,
                        acknowledged: held.acknowledged,
                    },
                );
                if previous.is_some() {
                    return Err(BadSnapshot("duplicate holder"));
                }
            }
            if lock.waiters.len() > config.waiters_max_per_lock {
                return Err(BadSnapshot("more waiters than waiters_max_per_lock"));
            }
            let mut seen = BTreeSet::new();
            for waiter in lock.waiters {
                if entry.holders.contains_key(&waiter.holder) || !seen.insert(waiter.holder) {
                    return Err(BadSnapshot(
                        "a holder waits twice or waits for what it holds",
                    ));
                }
                entry.waiters.push_back(Waiter {
                    holder: waiter.holder,
                    request_id: waiter.request_id,
                    mode: waiter.mode,
                });
            }
            if let Some(head) = entry.waiters.front()
                && entry.grantable(head.mode, &config)
            {
                return Err(BadSnapshot("the head of a queue is grantable"));
            }
            if let Some(FencingToken(newest)) = entry.newest_token {
                max_token = max_token.max(newest);
            }
            if entry.is_idle()
                && let Some(stamp) = lock.idle_since
            {
                entry.idle_since = Some(stamp);
                service.idle.insert((stamp, name.clone()));
                max_stamp = Some(max_stamp.map_or(stamp, |max| max.max(stamp)));
            }
            service.locks.insert(name, entry);
        }
        let above_tokens = max_token
            .checked_add(1)
            .ok_or(BadSnapshot("token counter exhausted"))?;
        service.next_token = snapshot.next_token.max(above_tokens);
        let above_stamps = max_stamp.map_or(0, |max| max.saturating_add(1));
        service.next_stamp = snapshot.next_stamp.max(above_stamps);
        // Idle entries without a stamp (a hand-made snapshot) get one, in name order.
        let unstamped: Vec<LockName> = service
            .locks
            .iter()
            .filter(|(_, entry)| entry.is_idle() && entry.idle_since.is_none())
            .map(|(name, _)| name.clone())
            .collect();
        for name in unstamped {
            service.refresh_idle(&name);
        }
        Ok(service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> HolderId {
        HolderId([n; 16])
    }

    fn w(n: u8) -> WriterId {
        WriterId([n; 16])
    }

    fn name(s: &str) -> LockName {
        LockName::new(s.as_bytes().to_vec()).unwrap()
    }

    fn config() -> LockConfig {
        LockConfig {
            lease_ms: 100,
            waiters_max_per_lock: 4,
            locks_max: 3,
            holders_max_per_lock: 3,
        }
    }

    fn granted(reply: Result<Reply, LockError>) -> Grant {
        match reply {
            Ok(Reply::Granted(grant)) => grant,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    fn queued(reply: Result<Reply, LockError>) -> usize {
        match reply {
            Ok(Reply::Queued { position }) => position,
            other => panic!("expected queued, got {other:?}"),
        }
    }

    #[test]
    fn name_length_is_bounded() {
        assert!(LockName::new(vec![0u8; LOCK_NAME_MAX]).is_ok());
        assert_eq!(
            LockName::new(vec![0u8; LOCK_NAME_MAX + 1]),
            Err(LockError::NameTooLong {
                len: LOCK_NAME_MAX + 1,
                max: LOCK_NAME_MAX
            })
        );
    }

    #[test]
    fn watermark_merge_and_dominates() {
        let a: Watermark = [(w(1), 5), (w(2), 1)].into_iter().collect();
        let b: Watermark = [(w(2), 3), (w(3), 0)].into_iter().collect();
        assert!(!a.dominates(&b));
        assert!(!b.dominates(&a));
        let mut m = a.clone();
        m.merge(&b);
        assert!(m.dominates(&a) && m.dominates(&b));
        assert_eq!(m.get(&w(2)), Some(3));
        assert!(m.covers(&w(3), 0));
        assert!(!m.covers(&w(4), 0));
        assert!(m.dominates(&Watermark::new()));
        assert!(!Watermark::new().dominates(&b));
    }

    #[test]
    fn write_lock_is_fifo_and_exclusive() {
        let mut s = LockService::new(config());
        let l = name("x");
        let g1 = granted(s.acquire(0, h(1), 1, l.clone(), LockMode::Write));
        assert_eq!(g1.token, FencingToken(1));
        assert_eq!(g1.lease_until_ms, 100);
        assert_eq!(queued(s.acquire(1, h(2), 1, l.clone(), LockMode::Write)), 0);
        assert_eq!(queued(s.acquire(2, h(3), 1, l.clone(), LockMode::Write)), 1);
        let grants = s.release(3, h(1), &l, g1.token, &Watermark::new()).unwrap();
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].holder, h(2));
        assert_eq!(grants[0].token, FencingToken(2));
        assert_eq!(grants[0].lease_until_ms, 103);
        let grants = s
            .release(4, h(2), &l, FencingToken(2), &Watermark::new())
            .unwrap();
        assert_eq!(grants[0].holder, h(3));
        assert!(s.fence_check(&l, FencingToken(3)));
        assert!(!s.fence_check(&l, FencingToken(2)));
    }

    #[test]
    fn readers_share_and_writer_is_not_starved() {
        let mut s = LockService::new(config());
        let l = name("r");
        let r1 = granted(s.acquire(0, h(1), 1, l.clone(), LockMode::Read));
        let r2 = granted(s.acquire(0, h(2), 1, l.clone(), LockMode::Read));
        assert!(r2.token > r1.token);
        assert_eq!(queued(s.acquire(0, h(3), 1, l.clone(), LockMode::Write)), 0);
        // A later reader queues behind the writer instead of joining the readers.
        assert_eq!(queued(s.acquire(0, h(4), 1, l.clone(), LockMode::Read)), 1);
        assert_eq!(queued(s.acquire(0, h(5), 1, l.clone(), LockMode::Read)), 2);
        assert!(
            s.release(1, h(1), &l, r1.token, &Watermark::new())
                .unwrap()
                .is_empty()
        );
        let grants = s.release(1, h(2), &l, r2.token, &Watermark::new()).unwrap();
        assert_eq!(grants.len(), 1);
        assert_eq!((grants[0].holder, grants[0].mode), (h(3), LockMode::Write));
        // The writer's release grants both queued readers at once.
        let grants = s
            .release(2, h(3), &l, grants[0].token, &Watermark::new())
            .unwrap();
        assert_eq!(
            grants.iter().map(|g| g.holder).collect::<Vec<_>>(),
            vec![h(4), h(5)]
        );
        assert!(grants[1].token > grants[0].token);
    }

    #[test]
    fn reader_limit_queues_extra_readers() {
        let mut s = LockService::new(LockConfig {
            holders_max_per_lock: 1,
            ..config()
        });
        let l = name("r");
        let r1 = granted(s.acquire(0, h(1), 1, l.clone(), LockMode::Read));
        assert_eq!(queued(s.acquire(0, h(2), 1, l.clone(), LockMode::Read)), 0);
        let grants = s.release(0, h(1), &l, r1.token, &Watermark::new()).unwrap();
        assert_eq!(grants[0].holder, h(2));
    }

    #[test]
    fn retries_are_idempotent() {
        let mut s = LockService::new(config());
        let l = name("x");
        let g = granted(s.acquire(0, h(1), 7, l.clone(), LockMode::Write));
        assert_eq!(
            granted(s.acquire(5, h(1), 7, l.clone(), LockMode::Write)),
            g
        );
        assert_eq!(
            s.acquire(5, h(1), 8, l.clone(), LockMode::Write),
            Err(LockError::AlreadyHeld { token: g.token })
        );
        assert_eq!(
            s.acquire(5, h(1), 7, l.clone(), LockMode::Read),
            Err(LockError::RequestConflict { request_id: 7 })
        );
        assert_eq!(queued(s.acquire(6, h(2), 3, l.clone(), LockMode::Write)), 0);
        assert_eq!(queued(s.acquire(7, h(2), 3, l.clone(), LockMode::Write)), 0);
        assert_eq!(
            s.acquire(7, h(2), 4, l.clone(), LockMode::Write),
            Err(LockError::AlreadyWaiting { request_id: 3 })
        );
        let before = s.snapshot();
        assert_eq!(before.locks[0].waiters.len(), 1);
        // A grant whose message was lost is recovered by retrying.
        let grants = s.release(8, h(1), &l, g.token, &Watermark::new()).unwrap();
        assert_eq!(
            granted(s.acquire(9, h(2), 3, l.clone(), LockMode::Write)),
            grants[0]
        );
    }

    #[test]
    fn stale_release_is_fenced_and_changes_nothing() {
        let mut s = LockService::new(config());
        let l = name("x");
        let g1 = granted(s.acquire(0, h(1), 1, l.clone(), LockMode::Write));
        s.release(1, h(1), &l, g1.token, &Watermark::new()).unwrap();
        let g2 = granted(s.acquire(2, h(1), 2, l.clone(), LockMode::Write));
        let before = s.snapshot();
        let wm: Watermark = [(w(9), 9)].into_iter().collect();
        assert_eq!(
            s.release(3, h(1), &l, g1.token, &wm),
            Err(LockError::Fenced {
                presented: g1.token,
                current: g2.token
            })
        );
        assert_eq!(
            s.release(3, h(2), &l, g1.token, &wm),
            Err(LockError::Fenced {
                presented: g1.token,
                current: g2.token
            })
        );
        assert_eq!(
            s.release(3, h(2), &l, g2.token, &wm),
            Err(LockError::NotHeld)
        );
        assert_eq!(
            s.release(3, h(2), &name("other"), g2.token, &wm),
            Err(LockError::NotHeld)
        );
        assert_eq!(
            s.renew(3, h(1), &l, g1.token),
            Err(LockError::Fenced {
                presented: g1.token,
                current: g2.token
            })
        );
        let mut after = s.snapshot();
        after.now_max_ms = before.now_max_ms;
        assert_eq!(after, before);
    }

    #[test]
    fn lease_expiry_promotes_next_waiter_with_higher_token() {
        let mut s = LockService::new(config());
        let l = name("x");
        let g1 = granted(s.acquire(0, h(1), 1, l.clone(), LockMode::Write));
        queued(s.acquire(10, h(2), 1, l.clone(), LockMode::Write));
        assert_eq!(s.renew(50, h(1), &l, g1.token), Ok(150));
        assert!(s.tick(149).is_empty());
        let events = s.tick(150);
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0],
            Event::Expired {
                name: l.clone(),
                holder: h(1),
                token: g1.token,
                acknowledged: Watermark::new(),
            }
        );
        let Event::Granted(g2) = &events[1] else {
            panic!("expected a grant")
        };
        assert_eq!(g2.holder, h(2));
        assert!(g2.token > g1.token);
        assert_eq!(g2.lease_until_ms, 250);
        assert!(!s.fence_check(&l, g1.token));
        assert!(s.fence_check(&l, g2.token));
        assert_eq!(
            s.release(151, h(1), &l, g1.token, &Watermark::new()),
            Err(LockError::Fenced {
                presented: g1.token,
                current: g2.token
            })
        );
        // A lapsed lease can be neither renewed nor released, even before a tick expired it.
        let before = s.snapshot();
        assert_eq!(
            s.renew(250, h(2), &l, g2.token),
            Err(LockError::LeaseExpired {
                lease_until_ms: 250
            })
        );
        assert_eq!(
            s.release(260, h(2), &l, g2.token, &Watermark::new()),
            Err(LockError::LeaseExpired {
                lease_until_ms: 250
            })
        );
        assert_eq!(
            s.acknowledge_flush(260, h(2), &l, g2.token, &Watermark::new()),
            Err(LockError::LeaseExpired {
                lease_until_ms: 250
            })
        );
        let mut after = s.snapshot();
        after.now_max_ms = before.now_max_ms;
        assert_eq!(after, before);
        assert_eq!(s.tick(260).len(), 1);
    }

    #[test]
    fn acknowledged_flushes_survive_expiry_and_forget() {
        let mut s = LockService::new(config());
        let l = name("x");
        let g1 = granted(s.acquire(0, h(1), 1, l.clone(), LockMode::Write));
        queued(s.acquire(0, h(2), 1, l.clone(), LockMode::Write));
        let f1: Watermark = [(w(1), 4)].into_iter().collect();
        let f2: Watermark = [(w(1), 6), (w(3), 1)].into_iter().collect();
        assert_eq!(s.acknowledge_flush(10, h(1), &l, g1.token, &f1), Ok(110));
        assert_eq!(s.acknowledge_flush(20, h(1), &l, g1.token, &f2), Ok(120));
        assert_eq!(
            s.acknowledge_flush(20, h(1), &l, FencingToken(99), &f2),
            Err(LockError::Fenced {
                presented: FencingToken(99),
                current: g1.token
            })
        );
        let events = s.tick(120);
        let mut both = f1.clone();
        both.merge(&f2);
        assert_eq!(
            events[0],
            Event::Expired {
                name: l.clone(),
                holder: h(1),
                token: g1.token,
                acknowledged: both.clone(),
            }
        );
        let Event::Granted(g2) = &events[1] else {
            panic!("expected a grant")
        };
        assert_eq!(g2.watermark, both);
        // The same through forget_holder, and through a release that reports less.
        let f3: Watermark = [(w(2), 9)].into_iter().collect();
        s.acknowledge_flush(130, h(2), &l, g2.token, &f3).unwrap();
        queued(s.acquire(130, h(3), 1, l.clone(), LockMode::Write));
        let events = s.forget_holder(140, h(2));
        let Event::Granted(g3) = &events[1] else {
            panic!("expected a grant")
        };
        assert!(g3.watermark.dominates(&f3) && g3.watermark.dominates(&both));
        let f4: Watermark = [(w(3), 5)].into_iter().collect();
        s.acknowledge_flush(150, h(3), &l, g3.token, &f4).unwrap();
        queued(s.acquire(150, h(4), 1, l.clone(), LockMode::Write));
        let grants = s
            .release(160, h(3), &l, g3.token, &Watermark::new())
            .unwrap();
        assert!(grants[0].watermark.dominates(&f4));
    }

    #[test]
    fn watermarks_are_carried_and_merged() {
        let mut s = LockService::new(config());
        let l = name("x");
        let g1 = granted(s.acquire(0, h(1), 1, l.clone(), LockMode::Read));
        let g2 = granted(s.acquire(0, h(2), 1, l.clone(), LockMode::Read));
        assert!(g1.watermark.is_empty());
        queued(s.acquire(0, h(3), 1, l.clone(), LockMode::Write));
        let wm1: Watermark = [(w(1), 10), (w(2), 3)].into_iter().collect();
        let wm2: Watermark = [(w(1), 4), (w(2), 8)].into_iter().collect();
        s.release(1, h(1), &l, g1.token, &wm1).unwrap();
        let grants = s.release(2, h(2), &l, g2.token, &wm2).unwrap();
        let expected: Watermark = [(w(1), 10), (w(2), 8)].into_iter().collect();
        assert_eq!(grants[0].watermark, expected);
        // An expired holder leaves the watermark as it was.
        let events = s.tick(1000);
        assert!(matches!(events[0], Event::Expired { .. }));
        let g4 = granted(s.acquire(1001, h(4), 1, l.clone(), LockMode::Write));
        assert_eq!(g4.watermark, expected);
    }

    #[test]
    fn forget_holder_releases_everything_and_leaves_queues() {
        let mut s = LockService::new(config());
        let (a, b) = (name("a"), name("b"));
        let ga = granted(s.acquire(0, h(1), 1, a.clone(), LockMode::Write));
        let gb = granted(s.acquire(0, h(2), 1, b.clone(), LockMode::Write));
        queued(s.acquire(0, h(1), 2, b.clone(), LockMode::Write));
        queued(s.acquire(0, h(3), 1, b.clone(), LockMode::Write));
        queued(s.acquire(0, h(2), 2, a.clone(), LockMode::Write));
        let events = s.forget_holder(5, h(1));
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0],
            Event::Expired {
                name: a.clone(),
                holder: h(1),
                token: ga.token,
                acknowledged: Watermark::new(),
            }
        );
        let Event::Granted(g) = &events[1] else {
            panic!("expected a grant")
        };
        assert_eq!((g.holder, &g.name), (h(2), &a));
        // h(1) left b's queue: h(3) is next.
        let grants = s.release(6, h(2), &b, gb.token, &Watermark::new()).unwrap();
        assert_eq!(grants[0].holder, h(3));
        assert!(s.forget_holder(7, h(1)).is_empty());
    }

    #[test]
    fn cancel_leaves_the_queue_and_gives_back_a_racing_grant() {
        let mut s = LockService::new(config());
        let l = name("x");
        let r1 = granted(s.acquire(0, h(1), 1, l.clone(), LockMode::Read));
        queued(s.acquire(0, h(2), 1, l.clone(), LockMode::Write));
        queued(s.acquire(0, h(3), 1, l.clone(), LockMode::Read));
        // Cancelling the writer at the head lets the reader behind it join.
        let grants = s.cancel(1, h(2), &l, 1);
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].holder, h(3));
        assert!(s.cancel(1, h(2), &l, 1).is_empty());
        assert!(s.cancel(1, h(1), &l, 99).is_empty());
        queued(s.acquire(2, h(4), 1, l.clone(), LockMode::Write));
        assert!(s.cancel(3, h(1), &l, 1).is_empty());
        let before = s.watermark(&l).cloned();
        let grants = s.cancel(3, h(3), &l, 1);
        assert_eq!(grants[0].holder, h(4));
        assert!(grants[0].token > r1.token);
        assert_eq!(s.watermark(&l).cloned(), before);
    }

    #[test]
    fn limits_are_typed_errors() {
        let mut s = LockService::new(LockConfig {
            waiters_max_per_lock: 1,
            locks_max: 2,
            ..config()
        });
        let (a, b, c) = (name("a"), name("b"), name("c"));
        let ga = granted(s.acquire(0, h(1), 1, a.clone(), LockMode::Write));
        queued(s.acquire(0, h(2), 1, a.clone(), LockMode::Write));
        assert_eq!(
            s.acquire(0, h(3), 1, a.clone(), LockMode::Write),
            Err(LockError::TooManyWaiters { max: 1 })
        );
        let gb = granted(s.acquire(0, h(1), 2, b.clone(), LockMode::Write));
        assert_eq!(
            s.acquire(0, h(1), 3, c.clone(), LockMode::Write),
            Err(LockError::TooManyLocks { max: 2 })
        );
        // Once b is idle, it is evicted for c, and its watermark survives in the floor.
        let wm: Watermark = [(w(7), 70)].into_iter().collect();
        s.release(1, h(1), &b, gb.token, &wm).unwrap();
        let gc = granted(s.acquire(2, h(1), 3, c.clone(), LockMode::Write));
        assert_eq!(gc.watermark, wm);
        assert_eq!(s.lock_count(), 2);
        assert_eq!(s.current_token(&b), None);
        assert!(gc.token > ga.token && gc.token > gb.token);
        // b again: every entry is busy.
        assert_eq!(
            s.acquire(3, h(5), 1, b.clone(), LockMode::Write),
            Err(LockError::TooManyLocks { max: 2 })
        );
        let too_big: Watermark = (0..=WATERMARK_WRITERS_MAX as u32)
            .map(|i| {
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&i.to_le_bytes());
                (WriterId(id), 1)
            })
            .collect();
        assert!(matches!(
            s.release(4, h(1), &c, gc.token, &too_big),
            Err(LockError::WatermarkTooLarge { .. })
        ));
    }

    #[test]
    fn snapshot_restore_continues_tokens() {
        let mut s = LockService::new(config());
        let (a, b) = (name("a"), name("b"));
        let g = granted(s.acquire(0, h(1), 1, a.clone(), LockMode::Write));
        queued(s.acquire(0, h(2), 1, a.clone(), LockMode::Read));
        let gb = granted(s.acquire(0, h(3), 1, b.clone(), LockMode::Read));
        let wm: Watermark = [(w(1), 3)].into_iter().collect();
        s.release(1, h(3), &b, gb.token, &wm).unwrap();
        let snap = s.snapshot();
        let mut r = LockService::restore(snap.clone()).unwrap();
        assert_eq!(r.snapshot(), snap);
        let grants = r.release(2, h(1), &a, g.token, &Watermark::new()).unwrap();
        assert_eq!(
            grants,
            s.release(2, h(1), &a, g.token, &Watermark::new()).unwrap()
        );
        // Even a snapshot whose counter went backwards continues above the tokens it holds.
        let mut snap = r.snapshot();
        snap.next_token = 1;
        let mut r = LockService::restore(snap).unwrap();
        let gb2 = granted(r.acquire(3, h(4), 1, b.clone(), LockMode::Write));
        assert!(gb2.token > grants[0].token);
        assert_eq!(gb2.watermark, wm);
    }

    #[test]
    fn restore_refuses_broken_snapshots() {
        let mut s = LockService::new(config());
        let a = name("a");
        granted(s.acquire(0, h(1), 1, a.clone(), LockMode::Write));
        queued(s.acquire(0, h(2), 1, a.clone(), LockMode::Write));
        let good = s.snapshot();

        let mut bad = good.clone();
        let mut extra = bad.locks[0].holders[0].clone();
        extra.holder = h(9);
        bad.locks[0].holders.push(extra);
        assert!(matches!(
            LockService::restore(bad),
            Err(LockError::BadSnapshot(_))
        ));

        let mut bad = good.clone();
        bad.locks[0].holders.clear();
        assert!(matches!(
            LockService::restore(bad),
            Err(LockError::BadSnapshot(_))
        ));

        let mut bad = good.clone();
        bad.locks[0].newest_token = None;
        assert!(matches!(
            LockService::restore(bad),
            Err(LockError::BadSnapshot(_))
        ));

        let mut bad = good.clone();
        bad.locks.push(bad.locks[0].clone());
        assert!(matches!(
            LockService::restore(bad),
            Err(LockError::BadSnapshot(_))
        ));

        let mut bad = good;
        bad.locks[0].newest_token = Some(FencingToken(u64::MAX));
        bad.locks[0].holders[0].token = FencingToken(u64::MAX);
        assert!(matches!(
            LockService::restore(bad),
            Err(LockError::BadSnapshot(_))
        ));
    }

    #[test]
    fn time_never_goes_backwards() {
        let mut s = LockService::new(config());
        let l = name("x");
        let g = granted(s.acquire(1000, h(1), 1, l.clone(), LockMode::Write));
        assert_eq!(g.lease_until_ms, 1100);
        // A call with an earlier time uses the latest time seen.
        assert_eq!(s.renew(10, h(1), &l, g.token), Ok(1100));
        assert!(s.tick(0).is_empty());
        assert_eq!(s.tick(1100).len(), 1);
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let mut s = LockService::new(LockConfig {
            lease_ms: u64::MAX,
            ..config()
        });
        let l = name("x");
        let g = granted(s.acquire(u64::MAX - 1, h(1), 1, l.clone(), LockMode::Write));
        assert_eq!(g.lease_until_ms, u64::MAX);
        assert_eq!(s.tick(u64::MAX).len(), 1);
    }
}

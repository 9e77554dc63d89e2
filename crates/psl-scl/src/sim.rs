//! Deterministic simulation of the whole SCL protocol: N worker cores, the manager (lock
//! service + verdict and sync-report chain) and a record store, over a simulated untrusted
//! network that loses, duplicates, delays, reorders and corrupts messages, with partitions,
//! worker crashes and restarts, and lock holders that stall past their lease. Everything comes
//! from one seed, so a failing seed replays exactly; each run returns a trace hash.
//!
//! Clients on each worker run two kinds of operations:
//! - **increment**: lock `counter` (write), read `counter` and the client's marker, and if the
//!   marker shows this operation not yet done, write `counter + 1` and the marker, then unlock.
//!   Failed or ambiguous operations are retried; the marker makes the retry idempotent, so the
//!   final counter must equal the number of increments exactly.
//! - **put**: write a fresh value to one of a few unlocked keys, then flush.
//!
//! Checks (the issue's list): no flushed write lost (every acknowledged put is at or below the
//! final version of its key, and equal versions carry equal values), no value that nobody
//! wrote, no duplicate application (the counter is exact, markers agree), convergence after the
//! faults stop (equal digests, equal to a replica rebuilt from the store), mutual exclusion with
//! fencing and release visibility (each holder reads exactly the value the last successful
//! release wrote).
//!
//! Replaying a failing seed with `PSL_SIM_DEBUG=1` prints its events; `PSL_SIM_SEEDS=N` runs
//! more seeds (the default is 300, a few seconds in release).
//!
//! Not simulated: manager crashes (the lock service's snapshot/restore is tested on its own),
//! record-store faults (the store's own crash tests cover them).

use std::collections::{BTreeMap, BTreeSet};

use psl_capsule::testkit::{TestCapsule, seed_bytes};
use psl_capsule::{DataKey, Head, SealedRecord, Validity, WriterId};

use crate::body::Fence;
use crate::lock::{
    FencingToken, Grant, HolderId, LockConfig, LockMode, LockName, Reply, Watermark,
};
use crate::manager::{Effects, Manager};
use crate::replica::{ReplicaLimits, Version};
use crate::worker::{Received, WorkerCore};

/// The knobs of one simulation run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Workers.
    pub workers: usize,
    /// Clients per worker.
    pub clients_per_worker: usize,
    /// Operations per client.
    pub ops_per_client: usize,
    /// Unlocked keys the puts go to.
    pub keys: usize,
    /// Lease of a lock grant (simulated ms).
    pub lease_ms: u64,
    /// Per-message loss probability, in 1/1000.
    pub loss_permille: u64,
    /// Per-message duplication probability, in 1/1000.
    pub dup_permille: u64,
    /// Per-message corruption probability (one flipped byte in a record), in 1/1000.
    pub corrupt_permille: u64,
    /// Largest network delay (ms); delays are uniform in `1..=delay_max_ms` (reordering).
    pub delay_max_ms: u64,
    /// Probability that an increment stalls past its lease while holding the lock, in 1/1000.
    pub stall_permille: u64,
    /// Worker crashes during the faulty period.
    pub crashes: usize,
    /// Partitions (one worker cut off from the network for a while) during the faulty period.
    pub partitions: usize,
    /// Faults stop at this time (ms); then the network is reliable and nothing crashes.
    pub faults_until_ms: u64,
    /// The run fails if it has not finished and converged by then (ms).
    pub time_max_ms: u64,
    /// Disables fencing at the replicas (the deliberately broken variant).
    pub broken_fencing: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            workers: 3,
            clients_per_worker: 2,
            ops_per_client: 6,
            keys: 4,
            lease_ms: 60,
            loss_permille: 80,
            dup_permille: 50,
            corrupt_permille: 10,
            delay_max_ms: 8,
            stall_permille: 120,
            crashes: 1,
            partitions: 1,
            faults_until_ms: 600,
            time_max_ms: 60_000,
            broken_fencing: false,
        }
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct SimOutcome {
    /// Hash of every event and its outcome: equal seeds give equal hashes.
    pub trace: [u8; 32],
    /// Violated properties (empty: all checks passed).
    pub violations: Vec<String>,
    /// Simulated time at the end.
    pub end_ms: u64,
    /// Counters, for the curious.
    pub stats: SimStats,
}

/// Counts of what happened.
#[derive(Debug, Default, Clone)]
pub struct SimStats {
    /// Messages sent.
    pub messages: u64,
    /// Messages dropped (loss or partition).
    pub dropped: u64,
    /// Records refused by replicas (corrupted in flight).
    pub rejected: u64,
    /// Fenced records refused by verdicts (late writes).
    pub fenced_refused: u64,
    /// Worker incarnations ended (crash or poisoned).
    pub restarts: u64,
    /// Lock grants that expired.
    pub expiries: u64,
    /// Increments acknowledged.
    pub increments: u64,
    /// Puts acknowledged as flushed.
    pub flushed_puts: u64,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, permille: u64) -> bool {
        self.below(1000) < permille
    }
}

type Route = (usize, u64, usize); // worker, incarnation, client

#[derive(Clone, Debug)]
enum Req {
    Acquire {
        holder: HolderId,
        id: u64,
    },
    Release {
        holder: HolderId,
        token: FencingToken,
        watermark: Watermark,
        fenced: bool,
        id: u64,
        /// Oracle only: the counter value the releaser wrote (`None`: a grant given back unused).
        value: Option<u64>,
    },
    Ack {
        holder: HolderId,
        token: FencingToken,
        watermark: Watermark,
        id: u64,
        /// Oracle only: the counter value the grant's holder wrote, if it did (it is in the
        /// flushed records, so it commits if this acknowledgement is accepted).
        value: Option<u64>,
    },
}

#[derive(Clone, Debug)]
enum Rep {
    Granted(Grant),
    Done { id: u64, ok: bool },
}

#[derive(Clone, Debug)]
enum Msg {
    Record(usize, u64, SealedRecord),
    Request(Route, Req),
    Reply(Route, Rep),
}

#[derive(Clone, Debug)]
enum Event {
    Deliver(Msg),
    Step(usize, usize),
    Tick,
    Report,
    Crash(usize),
    Restart(usize),
    Partition(usize, bool),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Increment,
    Put,
}

#[derive(Debug)]
enum Phase {
    Idle,
    Acquiring {
        id: u64,
        sent: u64,
    },
    CatchingUp,
    Stalled {
        until: u64,
        value: u64,
    },
    Releasing {
        id: u64,
        sent: u64,
        value: u64,
        req: Req,
    },
    Flushing {
        pending: BTreeMap<u64, Req>,
        sent: u64,
        failed: bool,
        put: (Vec<u8>, Version, Vec<u8>),
    },
    Done,
}

struct Client {
    global: usize,
    ops: Vec<Op>,
    next_op: usize,
    phase: Phase,
    next_req: u64,
    inbox: Vec<Rep>,
    held: Option<Grant>,
    sealed_under: bool,
    /// Requests whose grant this client took (later copies of those grants are duplicates).
    used: BTreeSet<u64>,
}

struct SimWorker {
    core: Option<WorkerCore>,
    incarnation: u64,
    isolated: bool,
    clients: Vec<Client>,
}

struct Oracle {
    /// The counter value written by the last successful release.
    released: u64,
    /// Per grant token, the value its holder must read (release visibility).
    expected: BTreeMap<u64, u64>,
    /// Per grant token, the counter value its holder wrote and a flush acknowledged (it
    /// commits even if the grant expires).
    acknowledged: BTreeMap<u64, u64>,
    /// Every value ever written per unlocked key.
    written: BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>>,
    /// Acknowledged (flushed) puts.
    flushed: Vec<(Vec<u8>, Version, Vec<u8>)>,
    violations: Vec<String>,
}

const COUNTER: &[u8] = b"counter";
const LOCK: &[u8] = b"counter-lock";
const TICK_MS: u64 = 5;
const REPORT_MS: u64 = 40;
const STEP_MS: u64 = 2;

struct Sim {
    cfg: SimConfig,
    seed: u64,
    rng: Rng,
    now: u64,
    next_event: u64,
    queue: BTreeMap<(u64, u64), Event>,
    capsule: TestCapsule,
    manager: Manager,
    store: BTreeMap<WriterId, Vec<SealedRecord>>,
    workers: Vec<SimWorker>,
    routes: BTreeMap<HolderId, Route>,
    oracle: Oracle,
    trace: blake3::Hasher,
    stats: SimStats,
    next_key_seed: u64,
}

fn lock_name() -> LockName {
    match LockName::new(LOCK.to_vec()) {
        Ok(name) => name,
        Err(_) => unreachable!("a short constant name"),
    }
}

fn holder_of(writer: WriterId, client: usize) -> HolderId {
    let mut h = blake3::Hasher::new();
    h.update(&writer.0);
    h.update(&(client as u64).to_le_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&h.finalize().as_bytes()[..16]);
    HolderId(id)
}

fn marker_key(client: usize) -> Vec<u8> {
    format!("marker/{client}").into_bytes()
}

fn decode_u64(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes)
}

impl Sim {
    fn new(cfg: SimConfig, seed: u64) -> Self {
        let capsule = TestCapsule::new("sim", seed);
        let (keys, cert) = capsule.writer(seed.wrapping_mul(1000));
        let config = LockConfig {
            lease_ms: cfg.lease_ms,
            ..LockConfig::default()
        };
        let (manager, genesis) =
            match Manager::start(&capsule.metadata, &capsule.data_key, keys, &cert, config) {
                Ok(started) => started,
                Err(e) => unreachable!("test capsule manager starts: {e}"),
            };
        let mut sim = Sim {
            rng: Rng(seed),
            seed,
            now: 0,
            next_event: 0,
            queue: BTreeMap::new(),
            capsule,
            manager,
            store: BTreeMap::new(),
            workers: Vec::new(),
            routes: BTreeMap::new(),
            oracle: Oracle {
                released: 0,
                expected: BTreeMap::new(),
                acknowledged: BTreeMap::new(),
                written: BTreeMap::new(),
                flushed: Vec::new(),
                violations: Vec::new(),
            },
            trace: blake3::Hasher::new(),
            stats: SimStats::default(),
            next_key_seed: 1,
            cfg,
        };
        sim.append(std::slice::from_ref(&genesis));
        for w in 0..sim.cfg.workers {
            let clients = (0..sim.cfg.clients_per_worker)
                .map(|c| {
                    let global = w * sim.cfg.clients_per_worker + c;
                    let ops = (0..sim.cfg.ops_per_client)
                        .map(|_| {
                            if sim.rng.chance(600) {
                                Op::Increment
                            } else {
                                Op::Put
                            }
                        })
                        .collect();
                    Client {
                        global,
                        ops,
                        next_op: 0,
                        phase: Phase::Idle,
                        next_req: 1,
                        inbox: Vec::new(),
                        held: None,
                        sealed_under: false,
                        used: BTreeSet::new(),
                    }
                })
                .collect();
            sim.workers.push(SimWorker {
                core: None,
                incarnation: 0,
                isolated: false,
                clients,
            });
            sim.start_worker(w);
        }
        sim.schedule(TICK_MS, Event::Tick);
        sim.schedule(REPORT_MS, Event::Report);
        for w in 0..sim.cfg.workers {
            for c in 0..sim.cfg.clients_per_worker {
                let at = sim.rng.below(10);
                sim.schedule(at, Event::Step(w, c));
            }
        }
        let fault_window = sim.cfg.faults_until_ms.max(1);
        for _ in 0..sim.cfg.crashes {
            let at = sim.rng.below(fault_window);
            let w = sim.rng.below(sim.cfg.workers as u64) as usize;
            sim.schedule(at, Event::Crash(w));
        }
        for _ in 0..sim.cfg.partitions {
            let at = sim.rng.below(fault_window);
            let w = sim.rng.below(sim.cfg.workers as u64) as usize;
            let length = 20 + sim.rng.below(200);
            sim.schedule(at, Event::Partition(w, true));
            sim.schedule(at + length, Event::Partition(w, false));
        }
        sim
    }

    fn schedule(&mut self, after: u64, event: Event) {
        let key = (self.now + after, self.next_event);
        self.next_event += 1;
        self.queue.insert(key, event);
    }

    fn faulty(&self) -> bool {
        self.now < self.cfg.faults_until_ms
    }

    fn debug(&self, what: impl FnOnce() -> String) {
        if std::env::var_os("PSL_SIM_DEBUG").is_some() {
            eprintln!("{:>6} {}", self.now, what());
        }
    }

    fn note(&mut self, what: &[u8]) {
        self.trace.update(&self.now.to_le_bytes());
        self.trace.update(what);
    }

    fn append(&mut self, records: &[SealedRecord]) {
        for record in records {
            let chain = self.store.entry(record.writer()).or_default();
            if record.seq() as usize == chain.len() {
                chain.push(record.clone());
            }
        }
    }

    fn heads(&self) -> Vec<Head> {
        self.store
            .values()
            .filter_map(|chain| chain.last().map(SealedRecord::head))
            .collect()
    }

    fn read_range(&self, writer: WriterId, seqs: std::ops::Range<u64>) -> Vec<SealedRecord> {
        let Some(chain) = self.store.get(&writer) else {
            return Vec::new();
        };
        let end = (seqs.end as usize).min(chain.len());
        let start = (seqs.start as usize).min(end);
        chain[start..end].to_vec()
    }

    /// Sends a message over the simulated network: loss, duplication, corruption, delay, and
    /// partitions (an isolated worker neither sends nor receives).
    fn send(&mut self, from: Option<usize>, to: Option<usize>, msg: Msg) {
        self.stats.messages += 1;
        let isolated = |w: Option<usize>, sim: &Sim| w.is_some_and(|w| sim.workers[w].isolated);
        if isolated(from, self) || isolated(to, self) {
            self.stats.dropped += 1;
            return;
        }
        let faulty = self.faulty();
        if faulty && self.rng.chance(self.cfg.loss_permille) {
            self.stats.dropped += 1;
            return;
        }
        let copies = if faulty && self.rng.chance(self.cfg.dup_permille) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut msg = msg.clone();
            if faulty
                && self.rng.chance(self.cfg.corrupt_permille)
                && let Msg::Record(w, inc, record) = &msg
            {
                let mut bytes = record.as_bytes().to_vec();
                let at = self.rng.below(bytes.len() as u64) as usize;
                bytes[at] ^= 1 << self.rng.below(8);
                match SealedRecord::decode_vec(bytes) {
                    Ok(bad) => msg = Msg::Record(*w, *inc, bad),
                    Err(_) => {
                        self.stats.dropped += 1;
                        continue;
                    }
                }
            }
            let delay = 1 + self.rng.below(self.cfg.delay_max_ms.max(1));
            self.schedule(delay, Event::Deliver(msg));
        }
    }

    fn multicast(&mut self, from: Option<usize>, records: &[SealedRecord]) {
        for to in 0..self.workers.len() {
            if Some(to) == from {
                continue;
            }
            let inc = self.workers[to].incarnation;
            for record in records {
                self.send(from, Some(to), Msg::Record(to, inc, record.clone()));
            }
        }
    }

    fn start_worker(&mut self, w: usize) {
        let key_seed = self
            .seed
            .wrapping_mul(1000)
            .wrapping_add(self.next_key_seed);
        self.next_key_seed += 1;
        let (keys, cert) = self.capsule.writer(key_seed);
        let data_key = DataKey::from_bytes(seed_bytes("data key", self.seed));
        let Ok((mut core, genesis)) = WorkerCore::start(
            &self.capsule.metadata,
            data_key,
            keys,
            &cert,
            ReplicaLimits::default(),
        ) else {
            unreachable!("test capsule workers start")
        };
        core.set_manager(self.manager.writer_id());
        core.fencing_disabled = self.cfg.broken_fencing;
        let worker = &mut self.workers[w];
        worker.incarnation += 1;
        worker.core = Some(core);
        let me = genesis.writer();
        for (c, client) in worker.clients.iter_mut().enumerate() {
            client.held = None;
            client.sealed_under = false;
            client.inbox.clear();
            if !matches!(client.phase, Phase::Done) {
                client.phase = Phase::Idle;
            }
            self.routes
                .insert(holder_of(me, client.global), (w, worker.incarnation, c));
        }
        self.append(std::slice::from_ref(&genesis));
        self.multicast(Some(w), std::slice::from_ref(&genesis));
        // Recovery: replay everything the store holds.
        let writers: Vec<WriterId> = self.store.keys().copied().collect();
        for writer in writers {
            let records = self.read_range(writer, 0..u64::MAX);
            for record in records {
                self.receive(w, record);
            }
        }
        self.note(format!("start {w} {me:?}").as_bytes());
    }

    fn crash(&mut self, w: usize) {
        self.debug(|| format!("crash/restart w{w}"));
        self.stats.restarts += 1;
        let worker = &mut self.workers[w];
        worker.core = None;
        worker.incarnation += 1;
        for client in &mut worker.clients {
            client.held = None;
            client.inbox.clear();
            if !matches!(client.phase, Phase::Done) {
                client.phase = Phase::Idle;
            }
        }
        self.note(format!("crash {w}").as_bytes());
    }

    /// Passes a record to worker `w`'s core, repairing gaps from the store; a core that learns
    /// it is poisoned (its own late write was refused) is restarted, as the shell does.
    fn receive(&mut self, w: usize, record: SealedRecord) {
        let mut queue = vec![record];
        while let Some(record) = queue.pop() {
            let Some(core) = self.workers[w].core.as_mut() else {
                return;
            };
            let hash = record.stored_hash();
            let outcome = core.receive(record, Validity::Ignore);
            let mut fetch = Vec::new();
            match &outcome {
                Received::Gap {
                    writer, missing, ..
                } => fetch.push((*writer, missing.clone())),
                Received::Rejected(_) => self.stats.rejected += 1,
                _ => {}
            }
            fetch.extend(core.take_wanted());
            if !matches!(
                outcome,
                Received::Applied { .. } | Received::Own | Received::Duplicate
            ) {
                self.debug(|| format!("w{w} {outcome:?}"));
            }
            let tag: &[u8] = match outcome {
                Received::Applied { .. } => b"A",
                Received::Accepted => b"a",
                Received::Duplicate => b"d",
                Received::Own => b"o",
                Received::Gap { .. } => b"g",
                Received::Rejected(_) => b"r",
                Received::Waiting { .. } => b"w",
            };
            self.trace.update(&hash.0);
            self.trace.update(tag);
            for (writer, range) in fetch {
                let records = self.read_range(writer, range);
                queue.extend(records.into_iter().rev());
            }
        }
        if self.workers[w]
            .core
            .as_ref()
            .is_some_and(WorkerCore::poisoned)
        {
            self.crash(w);
            self.start_worker(w);
        }
    }

    /// Seals worker `w`'s pending updates under the grants its clients hold, appends the
    /// records durably, multicasts them. Returns the worker's head seq.
    fn flush(&mut self, w: usize) -> u64 {
        let worker = &mut self.workers[w];
        let fences: Vec<Fence> = worker
            .clients
            .iter()
            .filter_map(|c| c.held.as_ref())
            .map(|g| Fence {
                lock: g.name.as_bytes().to_vec(),
                token: g.token.0,
            })
            .collect();
        let Some(core) = worker.core.as_mut() else {
            return 0;
        };
        let mut records = Vec::new();
        while let Ok(Some(record)) = core.seal(&fences) {
            records.push(record);
        }
        let head = core.replica().applied(&core.replica().writer());
        if !records.is_empty() {
            for client in &mut worker.clients {
                if client.held.is_some() {
                    client.sealed_under = true;
                }
            }
        }
        self.append(&records);
        self.multicast(Some(w), &records);
        head
    }

    fn deliver_effects(&mut self, effects: Effects) {
        self.append(&effects.records);
        self.multicast(None, &effects.records);
        self.stats.expiries += effects.expired.len() as u64;
        self.debug(|| {
            format!(
                "effects: expired {:?} grants {:?} records {}",
                effects.expired.iter().map(|e| e.2).collect::<Vec<_>>(),
                effects.grants.iter().map(|g| g.token).collect::<Vec<_>>(),
                effects.records.len()
            )
        });
        for (_, _, token) in &effects.expired {
            if let Some(value) = self.oracle.acknowledged.get(&token.0) {
                self.oracle.released = *value;
            }
        }
        for grant in effects.grants {
            self.grant_issued(&grant);
            if let Some(route) = self.routes.get(&grant.holder).copied() {
                self.send(None, Some(route.0), Msg::Reply(route, Rep::Granted(grant)));
            }
        }
    }

    fn grant_issued(&mut self, grant: &Grant) {
        self.oracle
            .expected
            .insert(grant.token.0, self.oracle.released);
    }

    fn manager_request(&mut self, route: Route, req: Req) {
        let now = self.now;
        self.debug(|| format!("manager <- {route:?} {req:?}"));
        let name = lock_name();
        let reply = match req {
            Req::Acquire { holder, id } => {
                match self.manager.acquire(now, holder, id, name, LockMode::Write) {
                    Ok(Reply::Granted(grant)) => {
                        self.grant_issued(&grant);
                        Some(Rep::Granted(grant))
                    }
                    Ok(Reply::Queued { .. }) => None,
                    Err(_) => None,
                }
            }
            Req::Release {
                holder,
                token,
                watermark,
                fenced,
                id,
                value,
            } => match self
                .manager
                .release(now, holder, &name, token, &watermark, fenced)
            {
                Ok(effects) => {
                    // A repeat (a duplicate of a release carried out before) changes nothing.
                    if let Some(value) = value
                        && !effects.repeated
                    {
                        self.oracle.released = value;
                    }
                    self.deliver_effects(effects);
                    Some(Rep::Done { id, ok: true })
                }
                Err(_) => Some(Rep::Done { id, ok: false }),
            },
            Req::Ack {
                holder,
                token,
                watermark,
                id,
                value,
            } => {
                let ok = match self
                    .manager
                    .acknowledge_flush(now, holder, &name, token, &watermark)
                {
                    Ok((_, effects)) => {
                        self.deliver_effects(effects);
                        true
                    }
                    Err(_) => false,
                };
                if ok && let Some(value) = value {
                    self.oracle.acknowledged.insert(token.0, value);
                }
                Some(Rep::Done { id, ok })
            }
        };
        if let Some(rep) = reply {
            self.send(None, Some(route.0), Msg::Reply(route, rep));
        }
    }

    fn request(&mut self, route: Route, req: Req) {
        self.send(Some(route.0), None, Msg::Request(route, req));
    }

    /// One step of client `c` on worker `w`.
    fn step(&mut self, w: usize, c: usize) {
        let now = self.now;
        let lease = self.cfg.lease_ms;
        let resend = 4 * self.cfg.delay_max_ms + 4;
        let inc = self.workers[w].incarnation;
        let route = (w, inc, c);
        let Some(core) = self.workers[w].core.as_ref() else {
            return;
        };
        let me = core.replica().writer();
        let client = &mut self.workers[w].clients[c];
        let holder = holder_of(me, client.global);
        let inbox = std::mem::take(&mut client.inbox);
        let mut stale_grants = Vec::new();
        let mut granted = Vec::new();
        for rep in &inbox {
            if let Rep::Granted(grant) = rep {
                match client.phase {
                    _ if client.used.contains(&grant.request_id) => {}
                    Phase::Acquiring { id, .. } if grant.request_id == id => {
                        client.used.insert(id);
                        client.held = Some(grant.clone());
                        granted.push(grant.clone());
                        client.sealed_under = false;
                        client.phase = Phase::CatchingUp;
                    }
                    // A grant for a request this client no longer waits for: give it back.
                    _ => {
                        client.used.insert(grant.request_id);
                        stale_grants.push(grant.clone());
                    }
                }
            }
        }
        let worker = &mut self.workers[w];
        if let Some(core) = worker.core.as_mut() {
            for grant in &granted {
                if !core.note_grant(grant.name.as_bytes(), grant.token.0) {
                    // Its lease ended before it arrived: the operation starts over.
                    let client = &mut worker.clients[c];
                    client.held = None;
                    client.phase = Phase::Idle;
                }
            }
        }
        let client = &mut self.workers[w].clients[c];
        let first_id = client.next_req;
        client.next_req += stale_grants.len() as u64;
        for (n, grant) in stale_grants.into_iter().enumerate() {
            let id = first_id + n as u64;
            let req = Req::Release {
                holder,
                token: grant.token,
                watermark: Watermark::new(),
                fenced: false,
                id,
                value: None,
            };
            self.request(route, req);
        }
        let client = &mut self.workers[w].clients[c];
        let op_index = client.next_op;
        let global = client.global;
        let mut next_step = STEP_MS;
        match std::mem::replace(&mut client.phase, Phase::Idle) {
            Phase::Done => {
                client.phase = Phase::Done;
                return;
            }
            Phase::Idle => {
                let Some(op) = client.ops.get(op_index).copied() else {
                    client.phase = Phase::Done;
                    return;
                };
                match op {
                    Op::Increment => {
                        let id = client.next_req;
                        client.next_req += 1;
                        client.phase = Phase::Acquiring { id, sent: now };
                        self.request(route, Req::Acquire { holder, id });
                    }
                    Op::Put => {
                        let key = format!("k{}", self.rng.below(self.cfg.keys as u64)).into_bytes();
                        let value = format!("c{global}-op{op_index}-t{now}").into_bytes();
                        let Some(core) = self.workers[w].core.as_mut() else {
                            return;
                        };
                        let Ok(version) = core.replica_mut().put(&key, &value) else {
                            return;
                        };
                        self.oracle
                            .written
                            .entry(key.clone())
                            .or_default()
                            .insert(value.clone());
                        let head = self.flush(w);
                        let mut pending = BTreeMap::new();
                        let grants: Vec<(Grant, Option<u64>)> = self.workers[w]
                            .clients
                            .iter()
                            .filter_map(|c| {
                                let wrote = match c.phase {
                                    Phase::Stalled { value, .. } => Some(value),
                                    _ => None,
                                };
                                c.held.clone().map(|g| (g, wrote))
                            })
                            .collect();
                        let client = &mut self.workers[w].clients[c];
                        for (grant, wrote) in grants {
                            let id = client.next_req;
                            client.next_req += 1;
                            let mut watermark = Watermark::new();
                            watermark.observe(me, head);
                            pending.insert(
                                id,
                                Req::Ack {
                                    holder: grant.holder,
                                    token: grant.token,
                                    watermark,
                                    id,
                                    value: wrote,
                                },
                            );
                        }
                        let put = (key, version, value);
                        if pending.is_empty() {
                            self.put_done(w, c, put);
                        } else {
                            for req in pending.values() {
                                self.request(route, req.clone());
                            }
                            self.workers[w].clients[c].phase = Phase::Flushing {
                                pending,
                                sent: now,
                                failed: false,
                                put,
                            };
                        }
                    }
                }
            }
            Phase::Acquiring { id, sent } => {
                if now.saturating_sub(sent) > resend {
                    client.phase = Phase::Acquiring { id, sent: now };
                    self.request(route, Req::Acquire { holder, id });
                } else {
                    client.phase = Phase::Acquiring { id, sent };
                }
            }
            Phase::CatchingUp => {
                let Some(grant) = client.held.clone() else {
                    return;
                };
                let Some(core) = self.workers[w].core.as_mut() else {
                    return;
                };
                if !core.replica().caught_up(grant.watermark.iter()) {
                    self.workers[w].clients[c].phase = Phase::CatchingUp;
                } else {
                    let value = decode_u64(core.replica().get(COUNTER));
                    let marker = decode_u64(core.replica().get(&marker_key(global)));
                    if std::env::var_os("PSL_SIM_DEBUG").is_some() {
                        eprintln!(
                            "{now:>6} client {global} w{w} token {} reads {value} marker {marker} op {op_index}",
                            grant.token.0
                        );
                    }
                    // Release visibility: the holder sees what the last release wrote. (A
                    // grant given before the lease of the previous holder ended... cannot be:
                    // grants follow releases and expiries only.)
                    if let Some(expected) = self.oracle.expected.get(&grant.token.0)
                        && *expected != value
                    {
                        self.oracle.violations.push(format!(
                            "release visibility: token {} read counter {value}, last release wrote {expected}",
                            grant.token.0
                        ));
                    }
                    let mut value = value;
                    if marker <= op_index as u64 {
                        value += 1;
                        let _ = core.replica_mut().put(COUNTER, &value.to_le_bytes());
                        let _ = core
                            .replica_mut()
                            .put(&marker_key(global), &(op_index as u64 + 1).to_le_bytes());
                    }
                    if self.faulty() && self.rng.chance(self.cfg.stall_permille) {
                        let until = now + lease + 1 + self.rng.below(lease);
                        self.workers[w].clients[c].phase = Phase::Stalled { until, value };
                        next_step = until - now;
                    } else {
                        self.unlock(w, c, route, holder, grant, value);
                    }
                }
            }
            Phase::Stalled { until, value } => {
                if now < until {
                    client.phase = Phase::Stalled { until, value };
                } else if let Some(grant) = client.held.clone() {
                    self.unlock(w, c, route, holder, grant, value);
                }
            }
            Phase::Releasing {
                id,
                sent,
                value,
                req,
            } => {
                let done = inbox.iter().find_map(|rep| match rep {
                    Rep::Done { id: got, ok } if *got == id => Some(*ok),
                    _ => None,
                });
                match done {
                    Some(true) => {
                        client.next_op += 1;
                        self.stats.increments += 1;
                        let _ = value;
                    }
                    // Refused or lost: the operation is retried; the marker keeps it exact.
                    Some(false) => {}
                    None if now.saturating_sub(sent) > resend => {
                        self.request(route, req.clone());
                        self.workers[w].clients[c].phase = Phase::Releasing {
                            id,
                            sent: now,
                            value,
                            req,
                        };
                    }
                    None => {
                        client.phase = Phase::Releasing {
                            id,
                            sent,
                            value,
                            req,
                        }
                    }
                }
            }
            Phase::Flushing {
                mut pending,
                sent,
                mut failed,
                put,
            } => {
                for rep in &inbox {
                    if let Rep::Done { id, ok } = rep
                        && pending.remove(id).is_some()
                    {
                        failed |= !ok;
                    }
                }
                if pending.is_empty() {
                    if failed {
                        client.next_op += 1;
                    } else {
                        self.put_done(w, c, put);
                    }
                } else {
                    if now.saturating_sub(sent) > resend {
                        let reqs: Vec<Req> = pending.values().cloned().collect();
                        for req in reqs {
                            self.request(route, req);
                        }
                        self.workers[w].clients[c].phase = Phase::Flushing {
                            pending,
                            sent: now,
                            failed,
                            put,
                        };
                    } else {
                        self.workers[w].clients[c].phase = Phase::Flushing {
                            pending,
                            sent,
                            failed,
                            put,
                        };
                    }
                }
            }
        }
        self.schedule(next_step, Event::Step(w, c));
    }

    fn put_done(&mut self, w: usize, c: usize, put: (Vec<u8>, Version, Vec<u8>)) {
        self.stats.flushed_puts += 1;
        self.oracle.flushed.push(put);
        self.workers[w].clients[c].next_op += 1;
    }

    fn unlock(
        &mut self,
        w: usize,
        c: usize,
        route: Route,
        holder: HolderId,
        grant: Grant,
        value: u64,
    ) {
        let head = self.flush(w);
        let me = match self.workers[w].core.as_ref() {
            Some(core) => core.replica().writer(),
            None => return,
        };
        if let Some(core) = self.workers[w].core.as_mut() {
            core.note_release(grant.name.as_bytes(), grant.token.0);
        }
        let client = &mut self.workers[w].clients[c];
        // The grant leaves the worker's fence set together with the flush that determined the
        // release watermark: records sealed from now on are not written under it.
        client.held = None;
        let id = client.next_req;
        client.next_req += 1;
        let mut watermark = Watermark::new();
        watermark.observe(me, head);
        let req = Req::Release {
            holder,
            token: grant.token,
            watermark,
            fenced: client.sealed_under,
            id,
            value: Some(value),
        };
        client.phase = Phase::Releasing {
            id,
            sent: self.now,
            value,
            req: req.clone(),
        };
        self.request(route, req);
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver(Msg::Record(w, inc, record)) => {
                if self.workers[w].incarnation == inc && !self.workers[w].isolated {
                    self.receive(w, record);
                }
            }
            Event::Deliver(Msg::Request(route, req)) => {
                if !self.workers[route.0].isolated {
                    self.note(b"req");
                    self.manager_request(route, req);
                }
            }
            Event::Deliver(Msg::Reply(route, rep)) => {
                let worker = &self.workers[route.0];
                if worker.incarnation == route.1 && !worker.isolated {
                    self.note(b"rep");
                    self.workers[route.0].clients[route.2].inbox.push(rep);
                }
            }
            Event::Step(w, c) => {
                if self.workers[w].core.is_some() {
                    self.step(w, c);
                } else {
                    self.schedule(STEP_MS, Event::Step(w, c));
                }
            }
            Event::Tick => {
                match self.manager.tick(self.now) {
                    Ok(effects) => self.deliver_effects(effects),
                    Err(e) => self.oracle.violations.push(format!("manager tick: {e}")),
                }
                self.schedule(TICK_MS, Event::Tick);
            }
            Event::Report => {
                let heads = self.heads();
                match self.manager.sync_report(&heads) {
                    Ok(report) => {
                        self.append(std::slice::from_ref(&report));
                        self.multicast(None, &[report]);
                    }
                    Err(e) => self.oracle.violations.push(format!("sync report: {e}")),
                }
                self.schedule(REPORT_MS, Event::Report);
            }
            Event::Crash(w) => {
                if self.workers[w].core.is_some() {
                    self.crash(w);
                    let after = 10 + self.rng.below(100);
                    self.schedule(after, Event::Restart(w));
                }
            }
            Event::Restart(w) => {
                if self.workers[w].core.is_none() {
                    self.start_worker(w);
                }
            }
            Event::Partition(w, on) => {
                self.workers[w].isolated = on;
                self.note(format!("partition {w} {on}").as_bytes());
            }
        }
    }

    fn all_done(&self) -> bool {
        self.workers
            .iter()
            .all(|w| w.clients.iter().all(|c| matches!(c.phase, Phase::Done)))
    }

    fn converged(&self) -> bool {
        let heads = self.heads();
        self.workers.iter().all(|w| {
            w.core.as_ref().is_some_and(|core| {
                heads.iter().all(|h| {
                    h.writer == core.replica().writer()
                        || core.replica().applied(&h.writer) >= h.seq
                })
            })
        })
    }

    fn run(mut self) -> SimOutcome {
        let mut settled_at = None;
        while let Some(((at, _), event)) = self.queue.pop_first() {
            self.now = at;
            if self.now > self.cfg.time_max_ms {
                self.oracle
                    .violations
                    .push("did not finish and converge in time".into());
                break;
            }
            self.handle(event);
            if self.now >= self.cfg.faults_until_ms && self.all_done() {
                // Quiet now: let sync reports and ticks run until every replica applied every
                // chain, then a little longer.
                if self.converged() {
                    // Converged twice, two report periods apart: nothing was left in flight.
                    let since = *settled_at.get_or_insert(self.now);
                    if self.now >= since + 2 * REPORT_MS {
                        break;
                    }
                }
            }
        }
        self.check();
        let mut trace = self.trace.clone();
        trace.update(&self.now.to_le_bytes());
        for worker in &self.workers {
            if let Some(core) = &worker.core {
                trace.update(&core.replica().digest());
            }
        }
        SimOutcome {
            trace: *trace.finalize().as_bytes(),
            violations: self.oracle.violations,
            end_ms: self.now,
            stats: self.stats,
        }
    }

    fn check(&mut self) {
        let total_increments: usize = self
            .workers
            .iter()
            .flat_map(|w| &w.clients)
            .map(|c| c.ops.iter().filter(|op| **op == Op::Increment).count())
            .sum();
        // A reference replica rebuilt from the store alone.
        let (keys, cert) = self.capsule.writer(u64::MAX);
        let Ok((mut reference, _)) = WorkerCore::start(
            &self.capsule.metadata,
            DataKey::from_bytes(seed_bytes("data key", self.seed)),
            keys,
            &cert,
            ReplicaLimits::default(),
        ) else {
            unreachable!("reference core starts")
        };
        reference.set_manager(self.manager.writer_id());
        reference.fencing_disabled = self.cfg.broken_fencing;
        for chain in self.store.values() {
            for record in chain {
                let _ = reference.receive(record.clone(), Validity::Ignore);
            }
        }
        let digest = reference.replica().digest();
        for (w, worker) in self.workers.iter().enumerate() {
            let Some(core) = &worker.core else {
                self.oracle
                    .violations
                    .push(format!("worker {w} is down at the end"));
                continue;
            };
            if core.replica().digest() != digest {
                self.oracle.violations.push(format!(
                    "worker {w} did not converge with the store's state"
                ));
            }
            self.stats.fenced_refused += core.fenced_refused();
        }
        let replica = reference.replica();
        let counter = decode_u64(replica.get(COUNTER));
        if counter != total_increments as u64 {
            self.oracle.violations.push(format!(
                "counter is {counter}, {total_increments} increments were made"
            ));
        }
        for client in self.workers.iter().flat_map(|w| &w.clients) {
            let incs = client.ops.iter().filter(|op| **op == Op::Increment).count();
            let marker = decode_u64(replica.get(&marker_key(client.global)));
            let last = client
                .ops
                .iter()
                .rposition(|op| *op == Op::Increment)
                .map_or(0, |i| i as u64 + 1);
            if incs > 0 && marker != last {
                self.oracle.violations.push(format!(
                    "client {} marker is {marker}, its last increment was op {last}",
                    client.global
                ));
            }
        }
        for (key, version, value) in &self.oracle.flushed {
            match replica.version(key) {
                Some(final_version) if final_version > *version => {}
                Some(final_version) if final_version == *version => {
                    if replica.get(key) != Some(value.as_slice()) {
                        self.oracle
                            .violations
                            .push(format!("flushed put to {key:?} has another value"));
                    }
                }
                _ => self
                    .oracle
                    .violations
                    .push(format!("flushed put {value:?} to {key:?} was lost")),
            }
        }
        for (key, values) in &self.oracle.written {
            if let Some(value) = replica.get(key)
                && !values.contains(value)
            {
                self.oracle
                    .violations
                    .push(format!("{key:?} holds {value:?}, which nobody wrote"));
            }
        }
    }
}

/// Runs one seed.
pub fn run(config: SimConfig, seed: u64) -> SimOutcome {
    Sim::new(config, seed).run()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds() -> u64 {
        std::env::var("PSL_SIM_SEEDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300)
    }

    #[test]
    fn every_seed_keeps_every_property() {
        let mut stats = SimStats::default();
        let only: Option<u64> = std::env::var("PSL_SIM_SEED")
            .ok()
            .and_then(|s| s.parse().ok());
        for seed in only.map_or(0..seeds(), |s| s..s + 1) {
            let outcome = run(SimConfig::default(), seed);
            assert!(
                outcome.violations.is_empty(),
                "seed {seed}: {:?} ({:?})",
                outcome.violations,
                outcome.stats
            );
            stats.restarts += outcome.stats.restarts;
            stats.fenced_refused += outcome.stats.fenced_refused;
            stats.expiries += outcome.stats.expiries;
            stats.rejected += outcome.stats.rejected;
            stats.dropped += outcome.stats.dropped;
            stats.increments += outcome.stats.increments;
            stats.flushed_puts += outcome.stats.flushed_puts;
            stats.messages += outcome.stats.messages;
        }
        if only.is_some() {
            return;
        }
        // The faults really happened.
        assert!(stats.restarts > 0 && stats.expiries > 0 && stats.rejected > 0);
        assert!(stats.fenced_refused > 0, "{stats:?}");
        assert!(stats.dropped > 0);
        eprintln!("{stats:?}");
    }

    #[test]
    fn same_seed_same_trace() {
        for seed in [1, 7, 42] {
            let a = run(SimConfig::default(), seed);
            let b = run(SimConfig::default(), seed);
            assert_eq!(a.trace, b.trace, "seed {seed}");
        }
        assert_ne!(
            run(SimConfig::default(), 1).trace,
            run(SimConfig::default(), 2).trace
        );
    }

    #[test]
    fn broken_fencing_is_caught() {
        let config = SimConfig {
            broken_fencing: true,
            ..SimConfig::default()
        };
        let caught = (0..100)
            .filter(|seed| !run(config.clone(), *seed).violations.is_empty())
            .count();
        assert!(caught > 0, "disabling fencing went unnoticed in 100 seeds");
        eprintln!("broken fencing caught in {caught} of 100 seeds");
    }
}

#[cfg(test)]
mod fault_classes {
    use super::*;

    fn quiet() -> SimConfig {
        SimConfig {
            loss_permille: 0,
            dup_permille: 0,
            corrupt_permille: 0,
            stall_permille: 0,
            crashes: 0,
            partitions: 0,
            ..SimConfig::default()
        }
    }

    /// Each fault class alone, so a regression names its cause.
    #[test]
    fn each_fault_class_alone_keeps_every_property() {
        let variants: Vec<(&str, SimConfig)> = vec![
            ("quiet", quiet()),
            (
                "loss",
                SimConfig {
                    loss_permille: 80,
                    ..quiet()
                },
            ),
            (
                "dup",
                SimConfig {
                    dup_permille: 50,
                    ..quiet()
                },
            ),
            (
                "corrupt",
                SimConfig {
                    corrupt_permille: 10,
                    ..quiet()
                },
            ),
            (
                "stall",
                SimConfig {
                    stall_permille: 120,
                    ..quiet()
                },
            ),
            (
                "crash",
                SimConfig {
                    crashes: 1,
                    ..quiet()
                },
            ),
            (
                "partition",
                SimConfig {
                    partitions: 1,
                    ..quiet()
                },
            ),
        ];
        for (name, config) in variants {
            let mut bad = 0;
            let mut first = None;
            for seed in 0..30 {
                let outcome = run(config.clone(), seed);
                if !outcome.violations.is_empty() {
                    bad += 1;
                    first.get_or_insert((seed, outcome.violations));
                }
            }
            assert_eq!(bad, 0, "{name}: {bad}/30 seeds failed; first: {first:?}");
        }
    }
}

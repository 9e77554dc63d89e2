//! Model-based test of the lock service: random sequences of acquire, release (current and
//! replayed tokens), renew, cancel, forget, tick with advancing time and snapshot/restore, with
//! the lock invariants checked after every step:
//!
//! * L-1: at most one writer, never a writer together with readers, holder and queue limits;
//! * tokens strictly increasing across the grants of each lock (a retried request returns its
//!   earlier grant, never a new token);
//! * L-2: every grant's watermark dominates every watermark released on that lock before it and
//!   every flush acknowledged by a holder that has since left it (released, expired, forgotten);
//! * L-3: after a tick at time `t` no holder's lease ends at or before `t`, and no queue head is
//!   left grantable;
//! * L-4: a release or renew with a replayed old token (and every other refused request) leaves
//!   the state unchanged;
//! * determinism and recovery: a twin service that is never restored gives the same outputs.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use psl_capsule::WriterId;
use psl_scl::lock::{
    Event, FencingToken, Grant, HolderId, LockConfig, LockError, LockMode, LockName, LockService,
    LockSnapshot, Reply, Watermark,
};

const CONFIG: LockConfig = LockConfig {
    lease_ms: 100,
    waiters_max_per_lock: 2,
    locks_max: 2,
    holders_max_per_lock: 2,
};

#[derive(Debug, Clone)]
enum Op {
    Acquire {
        holder: u8,
        request: u8,
        lock: u8,
        write: bool,
    },
    Release {
        holder: u8,
        lock: u8,
        watermark: Vec<(u8, u8)>,
    },
    Replay {
        pick: usize,
        watermark: Vec<(u8, u8)>,
    },
    Renew {
        holder: u8,
        lock: u8,
    },
    Flush {
        holder: u8,
        lock: u8,
        watermark: Vec<(u8, u8)>,
    },
    Cancel {
        holder: u8,
        lock: u8,
        request: u8,
    },
    Forget {
        holder: u8,
    },
    Tick,
    Restore,
}

fn op() -> impl Strategy<Value = (u64, Op)> {
    let watermark = proptest::collection::vec((0u8..4, any::<u8>()), 0..4);
    let op = prop_oneof![
        4 => (0u8..4, 0u8..3, 0u8..3, any::<bool>()).prop_map(|(holder, request, lock, write)| {
            Op::Acquire { holder, request, lock, write }
        }),
        3 => (0u8..4, 0u8..3, watermark.clone())
            .prop_map(|(holder, lock, watermark)| Op::Release { holder, lock, watermark }),
        1 => (any::<usize>(), watermark.clone()).prop_map(|(pick, watermark)| Op::Replay { pick, watermark }),
        1 => (0u8..4, 0u8..3).prop_map(|(holder, lock)| Op::Renew { holder, lock }),
        1 => (0u8..4, 0u8..3, watermark.clone())
            .prop_map(|(holder, lock, watermark)| Op::Flush { holder, lock, watermark }),
        1 => (0u8..4, 0u8..3, 0u8..3)
            .prop_map(|(holder, lock, request)| Op::Cancel { holder, lock, request }),
        1 => (0u8..4).prop_map(|holder| Op::Forget { holder }),
        2 => Just(Op::Tick),
        1 => Just(Op::Restore),
    ];
    // Mostly no or little time between steps, sometimes more than a lease.
    let advance = prop_oneof![3 => Just(0u64), 2 => 0u64..20, 1 => 0u64..150];
    (advance, op)
}

fn holder(n: u8) -> HolderId {
    HolderId([n; 16])
}

fn lock(n: u8) -> LockName {
    LockName::new(vec![b'L', n]).unwrap()
}

fn watermark(entries: &[(u8, u8)]) -> Watermark {
    entries
        .iter()
        .map(|(writer, seq)| (WriterId([*writer; 16]), u64::from(*seq)))
        .collect()
}

#[derive(Debug, PartialEq)]
enum Out {
    Acquire(Result<Reply, LockError>),
    Grants(Result<Vec<Grant>, LockError>),
    Renew(Result<u64, LockError>),
    Events(Vec<Event>),
    Restored,
}

impl Out {
    fn grants(&self) -> Vec<Grant> {
        match self {
            Out::Acquire(Ok(Reply::Granted(grant))) => vec![grant.clone()],
            Out::Grants(Ok(grants)) => grants.clone(),
            Out::Events(events) => events
                .iter()
                .filter_map(|event| match event {
                    Event::Granted(grant) => Some(grant.clone()),
                    Event::Expired { .. } => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    fn is_err(&self) -> bool {
        matches!(
            self,
            Out::Acquire(Err(_)) | Out::Grants(Err(_)) | Out::Renew(Err(_))
        )
    }
}

fn held_token(snapshot: &LockSnapshot, name: &LockName, who: HolderId) -> Option<FencingToken> {
    snapshot
        .locks
        .iter()
        .find(|entry| &entry.name == name)?
        .holders
        .iter()
        .find(|held| held.holder == who)
        .map(|held| held.token)
}

fn apply(service: &mut LockService, now: u64, op: &Op, history: &[Grant]) -> Out {
    match op {
        Op::Acquire {
            holder: h,
            request,
            lock: l,
            write,
        } => {
            let mode = if *write {
                LockMode::Write
            } else {
                LockMode::Read
            };
            Out::Acquire(service.acquire(now, holder(*h), u64::from(*request), lock(*l), mode))
        }
        Op::Release {
            holder: h,
            lock: l,
            watermark: wm,
        } => {
            let token = held_token(&service.snapshot(), &lock(*l), holder(*h))
                .unwrap_or(FencingToken(u64::from(*h)));
            Out::Grants(service.release(now, holder(*h), &lock(*l), token, &watermark(wm)))
        }
        Op::Replay {
            pick,
            watermark: wm,
        } => match history.get(pick.checked_rem(history.len()).unwrap_or(0)) {
            Some(old) => {
                Out::Grants(service.release(now, old.holder, &old.name, old.token, &watermark(wm)))
            }
            None => Out::Grants(Ok(Vec::new())),
        },
        Op::Renew { holder: h, lock: l } => {
            let token =
                held_token(&service.snapshot(), &lock(*l), holder(*h)).unwrap_or(FencingToken(0));
            Out::Renew(service.renew(now, holder(*h), &lock(*l), token))
        }
        Op::Flush {
            holder: h,
            lock: l,
            watermark: wm,
        } => {
            let token =
                held_token(&service.snapshot(), &lock(*l), holder(*h)).unwrap_or(FencingToken(0));
            Out::Renew(service.acknowledge_flush(now, holder(*h), &lock(*l), token, &watermark(wm)))
        }
        Op::Cancel {
            holder: h,
            lock: l,
            request,
        } => Out::Grants(Ok(service.cancel(
            now,
            holder(*h),
            &lock(*l),
            u64::from(*request),
        ))),
        Op::Forget { holder: h } => Out::Events(service.forget_holder(now, holder(*h))),
        Op::Tick => Out::Events(service.tick(now)),
        Op::Restore => {
            let snapshot = service.snapshot();
            *service = LockService::restore(snapshot.clone()).unwrap();
            assert_eq!(service.snapshot(), snapshot, "restore must be lossless");
            Out::Restored
        }
    }
}

/// Invariants of one snapshot, whatever happened before.
fn check_table(snapshot: &LockSnapshot) {
    let config = snapshot.config;
    assert!(snapshot.locks.len() <= config.locks_max, "too many locks");
    for entry in &snapshot.locks {
        let writers = entry
            .holders
            .iter()
            .filter(|held| held.mode == LockMode::Write)
            .count();
        assert!(writers <= 1, "two writers on {:?}", entry.name);
        assert!(
            writers == 0 || entry.holders.len() == 1,
            "a writer shares {:?}",
            entry.name
        );
        assert!(entry.holders.len() <= config.holders_max_per_lock);
        assert!(entry.waiters.len() <= config.waiters_max_per_lock);
        for held in &entry.holders {
            assert!(Some(held.token) <= entry.newest_token);
            assert!(held.token.0 < snapshot.next_token);
            assert!(
                !entry.waiters.iter().any(|w| w.holder == held.holder),
                "a holder waits for what it holds"
            );
        }
        if let Some(newest) = entry.newest_token {
            assert!(newest.0 < snapshot.next_token, "counter behind a token");
        }
        let waiting: BTreeSet<_> = entry.waiters.iter().map(|w| w.holder).collect();
        assert_eq!(waiting.len(), entry.waiters.len(), "a holder queued twice");
        if let Some(head) = entry.waiters.first() {
            let grantable = match head.mode {
                LockMode::Write => entry.holders.is_empty(),
                LockMode::Read => {
                    entry.holders.len() < config.holders_max_per_lock
                        && entry.holders.iter().all(|held| held.mode == LockMode::Read)
                }
            };
            assert!(!grantable, "queue head of {:?} left waiting", entry.name);
        }
    }
}

fn without_time(mut snapshot: LockSnapshot) -> LockSnapshot {
    snapshot.now_max_ms = 0;
    snapshot
}

fn run(steps: &[(u64, Op)]) {
    let mut service = LockService::new(CONFIG);
    let mut twin = LockService::new(CONFIG);
    let mut now = 0u64;
    let mut history: Vec<Grant> = Vec::new();
    let mut newest: BTreeMap<LockName, FencingToken> = BTreeMap::new();
    let mut granted: BTreeMap<(LockName, FencingToken), Grant> = BTreeMap::new();
    let mut released: BTreeMap<LockName, Watermark> = BTreeMap::new();
    let mut acked: BTreeMap<(LockName, FencingToken), Watermark> = BTreeMap::new();

    for (advance, op) in steps {
        now += *advance;
        let before = service.snapshot();
        // Whether a replayed grant is still the holder's current one (then release is legitimate).
        let replay_current = match op {
            Op::Replay { pick, .. } => history
                .get(pick.checked_rem(history.len()).unwrap_or(0))
                .map(|old| held_token(&before, &old.name, old.holder) == Some(old.token)),
            _ => None,
        };
        let out = apply(&mut service, now, op, &history);
        let twin_out = if matches!(op, Op::Restore) {
            Out::Restored
        } else {
            apply(&mut twin, now, op, &history)
        };
        assert_eq!(out, twin_out, "a restored service diverged from its twin");
        let after = service.snapshot();
        check_table(&after);
        assert_eq!(without_time(after.clone()), without_time(twin.snapshot()));

        // A refused request never changes state (L-4 for replayed tokens).
        if out.is_err() {
            assert_eq!(
                without_time(after.clone()),
                without_time(before.clone()),
                "refused {op:?} changed state"
            );
        }
        // A holder whose lease has passed can no longer release, renew or acknowledge a flush.
        let acting = match op {
            Op::Release {
                holder: h, lock: l, ..
            }
            | Op::Renew { holder: h, lock: l }
            | Op::Flush {
                holder: h, lock: l, ..
            } => Some((holder(*h), lock(*l))),
            _ => None,
        };
        if let Some((who, name)) = acting
            && !out.is_err()
        {
            let lease = before
                .locks
                .iter()
                .find(|entry| entry.name == name)
                .and_then(|entry| entry.holders.iter().find(|held| held.holder == who))
                .map(|held| held.lease_until_ms);
            assert!(
                lease.is_some_and(|until| until > now),
                "{op:?} accepted after lease end"
            );
        }
        if replay_current == Some(false) {
            assert!(
                out.is_err(),
                "a replayed stale release was accepted: {out:?}"
            );
        }

        // Watermarks released so far, per lock (a successful release merged its watermark).
        let released_now = match (op, &out) {
            (
                Op::Release {
                    lock: l,
                    watermark: wm,
                    ..
                },
                Out::Grants(Ok(_)),
            ) => Some((lock(*l), watermark(wm))),
            (
                Op::Replay {
                    pick,
                    watermark: wm,
                },
                Out::Grants(Ok(_)),
            ) => history
                .get(pick.checked_rem(history.len()).unwrap_or(0))
                .map(|old| (old.name.clone(), watermark(wm))),
            _ => None,
        };
        if let Some((name, wm)) = released_now {
            released.entry(name).or_default().merge(&wm);
        }
        if let (
            Op::Flush {
                holder: h,
                lock: l,
                watermark: wm,
            },
            Out::Renew(Ok(_)),
        ) = (op, &out)
        {
            let token = held_token(&before, &lock(*l), holder(*h)).unwrap();
            acked
                .entry((lock(*l), token))
                .or_default()
                .merge(&watermark(wm));
        }
        // The acknowledged flushes of every holder that left are committed to its lock.
        for entry in &before.locks {
            for held in &entry.holders {
                if held_token(&after, &entry.name, held.holder) != Some(held.token) {
                    let key = (entry.name.clone(), held.token);
                    let wm = acked.get(&key).cloned().unwrap_or_default();
                    assert_eq!(held.acknowledged, wm, "acknowledged flushes drifted");
                    released.entry(entry.name.clone()).or_default().merge(&wm);
                }
            }
        }
        if let Out::Events(events) = &out {
            for event in events {
                if let Event::Expired {
                    name,
                    token,
                    acknowledged,
                    ..
                } = event
                {
                    let wm = acked
                        .get(&(name.clone(), *token))
                        .cloned()
                        .unwrap_or_default();
                    assert_eq!(*acknowledged, wm, "expiry verdict differs from the flushes");
                }
            }
        }

        for grant in out.grants() {
            let key = (grant.name.clone(), grant.token);
            if let Some(earlier) = granted.get(&key) {
                // A retried request: the same grant (the lease may have been renewed).
                assert_eq!(
                    Grant {
                        lease_until_ms: earlier.lease_until_ms,
                        ..grant.clone()
                    },
                    *earlier
                );
                continue;
            }
            if let Some(last) = newest.get(&grant.name) {
                assert!(grant.token > *last, "token not increasing: {grant:?}");
            }
            newest.insert(grant.name.clone(), grant.token);
            if let Some(wm) = released.get(&grant.name) {
                assert!(
                    grant.watermark.dominates(wm),
                    "grant {grant:?} misses released watermark {wm:?}"
                );
            }
            assert_eq!(grant.lease_until_ms, now + CONFIG.lease_ms);
            assert_eq!(
                held_token(&after, &grant.name, grant.holder),
                Some(grant.token),
                "granted holder does not hold"
            );
            assert!(service.fence_check(&grant.name, grant.token) || grant.mode == LockMode::Read);
            granted.insert(key, grant.clone());
            history.push(grant);
        }

        // L-3: after a tick, nobody holds past its lease.
        if matches!(op, Op::Tick) {
            for entry in &after.locks {
                for held in &entry.holders {
                    assert!(held.lease_until_ms > now, "{held:?} outlived its lease");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn lock_service_keeps_its_invariants(steps in proptest::collection::vec(op(), 1..150)) {
        run(&steps);
    }
}

/// A holder paused past its lease: its late release is fenced and the next holder's token wins.
#[test]
fn paused_holder_is_fenced_after_expiry() {
    let steps = vec![
        (
            0,
            Op::Acquire {
                holder: 0,
                request: 0,
                lock: 0,
                write: true,
            },
        ),
        (
            10,
            Op::Acquire {
                holder: 1,
                request: 0,
                lock: 0,
                write: true,
            },
        ),
        (100, Op::Tick),
        (
            1,
            Op::Replay {
                pick: 0,
                watermark: vec![(0, 9)],
            },
        ),
    ];
    run(&steps);
}

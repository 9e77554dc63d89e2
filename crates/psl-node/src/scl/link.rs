//! What a worker needs from the manager, and the in-process implementation of it.
//!
//! A worker's sessions talk to the manager through a [`ManagerLink`]: enrollment of a new
//! worker incarnation, and the lock calls. In the embedded mode the link calls the manager's
//! state machine in this process ([`LocalLink`]); in cluster mode it sends sealed requests over
//! NATS to the manager node (`crate::cluster::BusLink`). Both drive the same state machines.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use psl_capsule::{CapsuleMetadata, SealedRecord, WriterId};
use psl_runtime::StateError;
use psl_scl::lock::{FencingToken, Grant, HolderId, LockMode, LockName, Reply, Watermark};
use psl_scl::replica::ReplicaLimits;
use psl_scl::worker::WorkerCore;

use super::host::{GrantSink, ManagerHost};
use super::{ClusterError, lock_error, manager_error};
use crate::trust::ManagerTrust;

/// A grant and the lease left on it when it arrived.
pub(crate) struct Granted {
    pub grant: Grant,
    pub lease: Duration,
}

/// The manager as a worker's sessions see it.
pub(crate) trait ManagerLink: Send + Sync {
    /// Enrolls a new worker incarnation (attestation, certificate, data key): its core, with
    /// the manager's writer id and the current revocations set, and its genesis record.
    fn enroll(&self) -> Result<(WorkerCore, SealedRecord), ClusterError>;

    /// Acquires a lock, waiting until `deadline`; on timeout the request is cancelled (a grant
    /// that raced the cancel is given back) and the error is `LockTimeout`.
    fn acquire(
        &self,
        holder: HolderId,
        request_id: u64,
        name: &LockName,
        mode: LockMode,
        deadline: Instant,
    ) -> Result<Granted, StateError>;

    /// Releases a grant; `watermark` names what the holder flushed, `fenced` whether anything
    /// was ever sealed under the grant (then the release is a verdict).
    fn release(
        &self,
        holder: HolderId,
        name: &LockName,
        token: FencingToken,
        watermark: &Watermark,
        fenced: bool,
    ) -> Result<(), StateError>;

    /// Acknowledges a flush under a held grant (a partial verdict); refused means fenced.
    fn acknowledge(
        &self,
        holder: HolderId,
        name: &LockName,
        token: FencingToken,
        watermark: &Watermark,
    ) -> Result<(), StateError>;

    /// Renews a lease; returns the lease left.
    fn renew(
        &self,
        holder: HolderId,
        name: &LockName,
        token: FencingToken,
    ) -> Result<Duration, StateError>;

    /// Forgets every grant and request of a dead holder (its worker incarnation ended).
    fn forget(&self, holder: HolderId) -> Result<(), StateError>;

    /// Waits until the manager's records issued so far are durable and multicast.
    fn drain(&self, wait: Duration) -> bool;
}

/// Starts a worker core from an enrollment's parts.
pub(crate) fn start_core(
    parts: psl_trust::ProvisionedParts,
    manager: WriterId,
    revocations: Option<&psl_capsule::RevocationList>,
) -> Result<(WorkerCore, SealedRecord), ClusterError> {
    let (mut core, genesis) = WorkerCore::start(
        &parts.metadata,
        parts.data_key,
        parts.writer,
        &parts.certificate,
        ReplicaLimits::default(),
    )
    .map_err(|e| ClusterError::Setup(e.to_string()))?;
    core.set_manager(manager);
    if let Some(list) = revocations {
        core.apply_revocations(list)
            .map_err(|e| ClusterError::Setup(e.to_string()))?;
    }
    Ok((core, genesis))
}

/// Grants waiting for sessions of this process.
#[derive(Default)]
pub(crate) struct GrantBoard {
    granted: Mutex<HashMap<(HolderId, u64), Grant>>,
    changed: Condvar,
}

impl GrantSink for GrantBoard {
    fn deliver(&self, grants: Vec<Grant>, _now_ms: u64) {
        let mut granted = self.granted.lock();
        for grant in grants {
            granted.insert((grant.holder, grant.request_id), grant);
        }
        drop(granted);
        self.changed.notify_all();
    }
}

/// The manager in this process (embedded mode).
pub(crate) struct LocalLink {
    pub(crate) host: Arc<ManagerHost>,
    pub(crate) board: Arc<GrantBoard>,
    pub(crate) trust: Mutex<ManagerTrust>,
    pub(crate) metadata: CapsuleMetadata,
}

impl LocalLink {
    fn give_back(&self, grant: &Grant) -> Result<(), StateError> {
        self.release(
            grant.holder,
            &grant.name,
            grant.token,
            &Watermark::new(),
            false,
        )
    }

    fn granted(&self, grant: Grant) -> Granted {
        let lease = self.host.lease_left(grant.lease_until_ms);
        Granted { grant, lease }
    }
}

impl ManagerLink for LocalLink {
    fn enroll(&self) -> Result<(WorkerCore, SealedRecord), ClusterError> {
        let mut trust = self.trust.lock();
        let parts = trust.enroll_worker(self.metadata.id())?;
        start_core(
            parts,
            self.host.writer_id(),
            trust.revocation_list().as_ref(),
        )
    }

    fn acquire(
        &self,
        holder: HolderId,
        request_id: u64,
        name: &LockName,
        mode: LockMode,
        deadline: Instant,
    ) -> Result<Granted, StateError> {
        let reply = self
            .host
            .call(|manager, now| manager.acquire(now, holder, request_id, name.clone(), mode))
            .map_err(|e| StateError::Limit(e.to_string()))?;
        if let Reply::Granted(grant) = reply {
            return Ok(self.granted(grant));
        }
        let mut granted = self.board.granted.lock();
        loop {
            if let Some(grant) = granted.remove(&(holder, request_id)) {
                return Ok(self.granted(grant));
            }
            if self
                .board
                .changed
                .wait_until(&mut granted, deadline)
                .timed_out()
            {
                if let Some(grant) = granted.remove(&(holder, request_id)) {
                    return Ok(self.granted(grant));
                }
                drop(granted);
                self.host.with_manager(|manager, now| {
                    Ok(((), manager.cancel(now, holder, name, request_id)))
                })?;
                // A grant may have raced the cancel: then give it back at once (no writes).
                let raced = self.board.granted.lock().remove(&(holder, request_id));
                if let Some(grant) = raced {
                    self.give_back(&grant)?;
                }
                return Err(StateError::LockTimeout(
                    String::from_utf8_lossy(name.as_bytes()).into_owned(),
                ));
            }
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
        self.host.with_manager(|manager, now| {
            let effects = manager
                .release(now, holder, name, token, watermark, fenced)
                .map_err(|e| manager_error(name.as_bytes(), e))?;
            Ok(((), effects))
        })
    }

    fn acknowledge(
        &self,
        holder: HolderId,
        name: &LockName,
        token: FencingToken,
        watermark: &Watermark,
    ) -> Result<(), StateError> {
        self.host.with_manager(|manager, now| {
            let (_, effects) = manager
                .acknowledge_flush(now, holder, name, token, watermark)
                .map_err(|e| manager_error(name.as_bytes(), e))?;
            Ok(((), effects))
        })
    }

    fn renew(
        &self,
        holder: HolderId,
        name: &LockName,
        token: FencingToken,
    ) -> Result<Duration, StateError> {
        let until = self
            .host
            .call(|manager, now| manager.renew(now, holder, name, token))
            .map_err(|e| super::fenced_or(name.as_bytes(), e))?;
        Ok(self.host.lease_left(until))
    }

    fn forget(&self, holder: HolderId) -> Result<(), StateError> {
        self.host.with_manager(|manager, now| {
            let effects = manager
                .forget_holder(now, holder)
                .map_err(|e| lock_error(b"", e))?;
            Ok(((), effects))
        })
    }

    fn drain(&self, wait: Duration) -> bool {
        self.host.drain(wait)
    }
}

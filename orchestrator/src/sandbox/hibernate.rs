//! Stop and start (hibernation to disk), pause and resume (frozen in
//! memory), a new lifetime, and auto-resume.
//!
//! - **stop** removes the container, as a delete does, and keeps the
//!   sandbox's directory: its disk (everything written, installed or
//!   configured) and its record (id, token, limits, policy, labels). A
//!   stopped sandbox holds no process, no memory and no cgroup.
//! - **start** starts a container on that disk again, with a new handoff
//!   of the agent's listener: the same sandbox, rebooted. A start that
//!   fails goes back to `stopped`, its disk untouched.
//! - **pause** freezes every process (the freezer cgroup on youki, `docker
//!   pause` on Docker); **resume** thaws them. Memory stays.
//!
//! Each runs detached from its caller (a client that leaves mid-stop
//! leaves a stopped sandbox, not half of one) and under the sandbox's
//! operation lock, so that a stop, a start, a snapshot, a restore and a
//! delete of one sandbox never interleave.

use super::events::Detail;
use super::{detached, Manager, SandboxError};
use crate::lifecycle::Transition;
use crate::runtime::Feature;
use chrono::Utc;
use sbx_api::{EventKind, Sandbox, SandboxState};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;

/// One async lock per sandbox, for the operations that change what its
/// container is (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct OpLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl OpLocks {
    pub async fn lock(&self, id: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(locks.entry(id.to_owned()).or_default())
        };
        lock.lock_owned().await
    }

    pub fn forget(&self, id: &str) {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

impl Manager {
    /// Stops a sandbox: see the module docs. Stopping a stopped sandbox
    /// is a no-op.
    pub async fn stop(self: &Arc<Self>, id: &str, reason: String) -> Result<Sandbox, SandboxError> {
        let (manager, id) = (Arc::clone(self), id.to_owned());
        detached(async move {
            let _op = manager.ops.lock(&id).await;
            manager.stop_locked(&id, reason).await?;
            manager.get(&id).await
        })
        .await
    }

    /// Starts a stopped sandbox; starting a running one is a no-op.
    pub async fn start_stopped(self: &Arc<Self>, id: &str) -> Result<Sandbox, SandboxError> {
        let (manager, id) = (Arc::clone(self), id.to_owned());
        detached(async move {
            let _op = manager.ops.lock(&id).await;
            manager.start_locked(&id).await?;
            manager.get(&id).await
        })
        .await
    }

    pub async fn pause(
        self: &Arc<Self>,
        id: &str,
        reason: String,
    ) -> Result<Sandbox, SandboxError> {
        let (manager, id) = (Arc::clone(self), id.to_owned());
        detached(async move {
            let _op = manager.ops.lock(&id).await;
            manager.pause_locked(&id, reason).await?;
            manager.get(&id).await
        })
        .await
    }

    pub async fn resume(self: &Arc<Self>, id: &str) -> Result<Sandbox, SandboxError> {
        let (manager, id) = (Arc::clone(self), id.to_owned());
        detached(async move {
            let _op = manager.ops.lock(&id).await;
            manager.resume_locked(&id).await?;
            manager.get(&id).await
        })
        .await
    }

    /// Sets the sandbox's timeout to `seconds` from now.
    pub async fn set_timeout(&self, id: &str, seconds: u64) -> Result<Sandbox, SandboxError> {
        let record = self.record(id).await?;
        if matches!(
            record.sandbox.state,
            SandboxState::Deleting | SandboxState::Deleted
        ) {
            return Err(self.wrong_state(id, record.sandbox.state));
        }
        let at = Utc::now() + chrono::Duration::seconds(seconds as i64);
        let key = id.to_owned();
        self.db(move |store| store.set_timeout(&key, seconds, at))
            .await?;
        self.lifetime.rearm(id);
        self.get(id).await
    }

    pub(crate) async fn stop_locked(&self, id: &str, reason: String) -> Result<(), SandboxError> {
        self.supported(Feature::Stop)?;
        let state = self.record(id).await?.sandbox.state;
        if state == SandboxState::Stopped {
            return Ok(());
        }
        if !self.transition(id, Transition::Stop).await? {
            return Err(self.wrong_state(id, state));
        }
        self.egress.detach(id);
        let dir = self.dir(id);
        let removed =
            tokio::time::timeout(self.config.teardown_timeout, self.runtime.remove(id, &dir)).await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                self.transition(id, Transition::TeardownFailed).await?;
                return Err(SandboxError::Runtime {
                    id: id.to_owned(),
                    source,
                });
            }
            Err(_elapsed) => {
                self.transition(id, Transition::TeardownFailed).await?;
                return Err(SandboxError::TimedOut {
                    id: id.to_owned(),
                    what: "the stop",
                    limit: self.config.teardown_timeout,
                });
            }
        }
        self.transition(id, Transition::Halted).await?;
        tracing::info!(%id, %reason, "sandbox stopped");
        self.events
            .emit(id, EventKind::Stopped, Detail::reason(reason))
            .await;
        Ok(())
    }

    pub(crate) async fn start_locked(&self, id: &str) -> Result<(), SandboxError> {
        self.supported(Feature::Stop)?;
        let record = self.record(id).await?;
        match record.sandbox.state {
            SandboxState::Running => return Ok(()),
            SandboxState::Stopped => {}
            state => return Err(self.wrong_state(id, state)),
        }
        {
            let _admission = self.admissions.lock().await;
            let disk = record.sandbox.disk_mb.unwrap_or(0) << 20;
            let held = super::storage::allocated(&self.dir(id).disk_image());
            self.admit("starting the sandbox", disk.saturating_sub(held))
                .await?;
            if !self.transition(id, Transition::Start).await? {
                let state = self.record(id).await?.sandbox.state;
                return Err(self.wrong_state(id, state));
            }
        }
        let image_rootfs = self.image_build(&record)?;
        let limit = self.config.start_timeout;
        let started = tokio::time::timeout(limit, self.start(&record, image_rootfs, true))
            .await
            .unwrap_or_else(|_elapsed| {
                Err(SandboxError::TimedOut {
                    id: id.to_owned(),
                    what: "the start",
                    limit,
                })
            });
        if let Err(err) = started {
            tracing::warn!(%id, error = %err, "a stopped sandbox failed to start");
            // Back to stopped, the disk untouched; only the container goes.
            self.egress.detach(id);
            if let Err(cleanup) = self.runtime.remove(id, &self.dir(id)).await {
                tracing::error!(%id, error = %cleanup, "cannot remove a failed start");
                self.transition(id, Transition::TeardownFailed).await?;
                return Err(err);
            }
            self.transition(id, Transition::Halted).await?;
            return Err(err);
        }
        if !self.transition(id, Transition::Started).await? {
            return Err(self
                .not_serving(id)
                .await
                .unwrap_or_else(|| SandboxError::NotFound(id.to_owned())));
        }
        self.renew_after_wake(&record.sandbox).await?;
        self.serving.insert(id);
        self.deaths.watch(&self.runtime, id);
        tracing::info!(%id, "sandbox started");
        self.events
            .emit(id, EventKind::Started, Detail::default())
            .await;
        Ok(())
    }

    pub(crate) async fn pause_locked(&self, id: &str, reason: String) -> Result<(), SandboxError> {
        self.supported(Feature::Pause)?;
        let state = self.record(id).await?.sandbox.state;
        if state == SandboxState::Paused {
            return Ok(());
        }
        // Out of `running` first: new calls are refused (or wake it) from
        // here on, rather than reaching a frozen agent.
        if !self.transition(id, Transition::Pause).await? {
            return Err(self.wrong_state(id, state));
        }
        if let Err(source) = self.runtime.pause(id).await {
            self.transition(id, Transition::Resume).await?;
            self.serving.insert(id);
            return Err(SandboxError::Runtime {
                id: id.to_owned(),
                source,
            });
        }
        tracing::info!(%id, %reason, "sandbox paused");
        self.events
            .emit(id, EventKind::Paused, Detail::reason(reason))
            .await;
        Ok(())
    }

    pub(crate) async fn resume_locked(&self, id: &str) -> Result<(), SandboxError> {
        let record = self.record(id).await?;
        match record.sandbox.state {
            SandboxState::Running => return Ok(()),
            SandboxState::Paused => {}
            state => return Err(self.wrong_state(id, state)),
        }
        self.runtime
            .resume(id)
            .await
            .map_err(SandboxError::runtime(id))?;
        if !self.transition(id, Transition::Resume).await? {
            let state = self.record(id).await?.sandbox.state;
            return Err(self.wrong_state(id, state));
        }
        self.renew_after_wake(&record.sandbox).await?;
        self.serving.insert(id);
        tracing::info!(%id, "sandbox resumed");
        self.events
            .emit(id, EventKind::Resumed, Detail::default())
            .await;
        Ok(())
    }

    /// A sandbox back from sleep is idle from now, and one whose timeout
    /// put it to sleep gets its timeout again from now: waking it is a use.
    async fn renew_after_wake(&self, sandbox: &Sandbox) -> Result<(), SandboxError> {
        self.activity.reset(&sandbox.id);
        let expired = sandbox.expires_at.is_some_and(|at| at <= Utc::now());
        if let (true, Some(seconds)) = (expired, sandbox.lifecycle.timeout_s) {
            let at = Utc::now() + chrono::Duration::seconds(seconds as i64);
            let key = sandbox.id.clone();
            self.db(move |store| store.set_expiry(&key, Some(at)))
                .await?;
        }
        self.lifetime.rearm(&sandbox.id);
        Ok(())
    }

    /// Wakes a stopped or paused sandbox for a call that needs its agent,
    /// if its lifecycle says so (`auto_resume`); true when it is running
    /// afterwards. Runs detached: the call's client may leave, the wake
    /// finishes.
    pub(crate) async fn wake_for_call(self: &Arc<Self>, id: &str) -> Result<bool, SandboxError> {
        let record = self.record(id).await?;
        let sleeping = matches!(
            record.sandbox.state,
            SandboxState::Stopped
                | SandboxState::Paused
                | SandboxState::Stopping
                | SandboxState::Starting
        );
        if !sleeping || !record.sandbox.lifecycle.auto_resume {
            return Ok(false);
        }
        let (manager, key) = (Arc::clone(self), id.to_owned());
        detached(async move {
            // Behind whatever stop or start is under way.
            let _op = manager.ops.lock(&key).await;
            let started = std::time::Instant::now();
            match manager.record(&key).await?.sandbox.state {
                SandboxState::Stopped => manager.start_locked(&key).await?,
                SandboxState::Paused => manager.resume_locked(&key).await?,
                _ => {}
            }
            manager.metrics.auto_resumed(started.elapsed());
            Ok(())
        })
        .await?;
        Ok(self.serving.contains(id))
    }

    /// Which image build a sandbox's container starts on: the one pinned in
    /// its record, or (for records from before pinning) its image's now.
    pub(crate) fn image_build(
        &self,
        record: &crate::store::SandboxRecord,
    ) -> Result<std::path::PathBuf, SandboxError> {
        match &record.image_build {
            Some(build) => Ok(build.clone()),
            None => self
                .images
                .rootfs(&record.sandbox.image)?
                .ok_or_else(|| SandboxError::ImageNotFound(record.sandbox.image.clone())),
        }
    }
}

//! Timeouts: the task that ends sandboxes whose time is up, warns before
//! it does, and forgets ended sandboxes once their retention is over.
//!
//! Each sandbox may have two deadlines: its timeout (`expires_at`, set at
//! create and by `POST …/timeout`) and its idle timeout (`idle_timeout_s`
//! after the end of its last call, see [`super::activity`]). When the
//! earlier one passes, `on_timeout` acts: delete (the record stays,
//! `deleted`, with why, for the retention period), stop or pause. An
//! `expiring` event goes out `expiring_warning` before.
//!
//! The deadlines are read from the store on every tick rather than kept in
//! timers beside it: a timeout changed by a call, a sandbox stopped by a
//! client, a server restart, all need no bookkeeping here.

use super::events::Detail;
use super::{EndReason, Manager};
use chrono::{DateTime, Utc};
use sbx_api::{EventKind, OnTimeout, SandboxState};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub(crate) struct Lifetime {
    /// The deadline each sandbox was last warned of.
    warned: Mutex<HashMap<String, DateTime<Utc>>>,
    /// Sandboxes whose `on_timeout` is acting now.
    acting: Arc<Mutex<HashSet<String>>>,
    /// When this server began: a sandbox not used since is idle from here.
    pub since: DateTime<Utc>,
}

impl Default for Lifetime {
    fn default() -> Self {
        Self {
            warned: Mutex::default(),
            acting: Arc::default(),
            since: Utc::now(),
        }
    }
}

impl Lifetime {
    /// The sandbox's deadline changed: it may be warned again.
    pub fn rearm(&self, id: &str) {
        self.warned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// True when `deadline` has not been warned of yet (and is now).
    fn first_warning(&self, id: &str, deadline: DateTime<Utc>) -> bool {
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        warned.insert(id.to_owned(), deadline) != Some(deadline)
    }

    /// Claims `id` for an action; false when one is under way.
    fn claim(&self, id: &str) -> bool {
        self.acting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned())
    }
}

/// What is due for a sandbox, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Due {
    at: DateTime<Utc>,
    reason: &'static str,
}

impl Manager {
    /// Enforces every sandbox's lifetime until the server stops.
    pub async fn enforce_lifetimes(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(self.config.lifetime_tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(err) = self.enforce_once().await {
                tracing::warn!(error = %err, "cannot enforce sandbox lifetimes");
            }
        }
    }

    async fn enforce_once(self: &Arc<Self>) -> Result<(), super::SandboxError> {
        let now = Utc::now();
        for record in self.db(|store| store.list()).await? {
            if record.pooled {
                continue;
            }
            let sandbox = &record.sandbox;
            let Some(due) = self.due(sandbox) else {
                continue;
            };
            if due.at <= now {
                self.act(&sandbox.id, sandbox.lifecycle.on_timeout, due.reason);
            } else if due.at - self.config.expiring_warning <= now
                && self.lifetime.first_warning(&sandbox.id, due.at)
            {
                let detail = Detail {
                    reason: Some(due.reason.to_owned()),
                    detail: Some(sandbox.lifecycle.on_timeout.as_str().to_owned()),
                    at: Some(due.at),
                };
                self.events
                    .emit(&sandbox.id, EventKind::Expiring, detail)
                    .await;
            }
        }
        let retained = chrono::Duration::from_std(self.config.retention).unwrap_or_default();
        for id in self
            .db(move |store| store.purge_ended(now - retained))
            .await?
        {
            self.forget(&id);
            tracing::debug!(%id, "ended sandbox forgotten after its retention");
        }
        self.db(move |store| store.prune_events(now - retained))
            .await?;
        Ok(())
    }

    /// The sandbox's next deadline, if `on_timeout` still has something to
    /// do to it.
    fn due(&self, sandbox: &sbx_api::Sandbox) -> Option<Due> {
        let lifecycle = &sandbox.lifecycle;
        let acts = matches!(
            (sandbox.state, lifecycle.on_timeout),
            (SandboxState::Running, _)
                | (SandboxState::Paused, OnTimeout::Delete | OnTimeout::Stop)
        );
        if !acts {
            return None;
        }
        let timeout = sandbox.expires_at.map(|at| Due {
            at,
            reason: "timeout",
        });
        let idle = match (sandbox.state, lifecycle.idle_timeout_s) {
            (SandboxState::Running, Some(seconds)) => {
                let otherwise = sandbox.created_at.max(self.lifetime.since);
                self.activity
                    .idle_since(&sandbox.id, otherwise)
                    .map(|since| Due {
                        at: since + chrono::Duration::seconds(seconds as i64),
                        reason: "idle",
                    })
            }
            _ => None,
        };
        [timeout, idle]
            .into_iter()
            .flatten()
            .min_by_key(|due| due.at)
    }

    /// Carries out `action` on `id` in a task of its own, unless one is
    /// already under way.
    fn act(self: &Arc<Self>, id: &str, action: OnTimeout, reason: &'static str) {
        if !self.lifetime.claim(id) {
            return;
        }
        let (manager, id) = (Arc::clone(self), id.to_owned());
        let acting = Arc::clone(&self.lifetime.acting);
        tokio::spawn(async move {
            tracing::info!(%id, reason, action = action.as_str(), "the sandbox's time is up");
            let done = match action {
                OnTimeout::Delete => manager
                    .delete(&id, EndReason::Policy(reason.to_owned()))
                    .await
                    .map(drop),
                OnTimeout::Stop => manager.stop(&id, reason.to_owned()).await.map(drop),
                OnTimeout::Pause => manager.pause(&id, reason.to_owned()).await.map(drop),
            };
            if let Err(err) = done {
                tracing::warn!(%id, error = %err, "the timeout's action failed");
            }
            acting.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        });
    }
}

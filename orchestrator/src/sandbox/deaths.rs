//! Deaths, recorded when they happen rather than when someone asks.
//!
//! Why: a sandbox whose init died (the OOM killer, a crash) used to be
//! marked `failed` only when a call, a GET or a list touched it, so a
//! follower of `GET /v1/events` heard nothing until then. Now every
//! running sandbox's init is watched ([`crate::runtime::Runtime::exited`],
//! a pidfd) and its exit is handed to the one task that records deaths,
//! [`Manager::record_deaths`]. That task asks the runtime as any caller
//! would: a stop, a restore or a delete also ends the init, and those are
//! not deaths, which the state table settles (`died` starts only from
//! `running` or `paused`), as it does for a sandbox started again since.
//!
//! A watch costs a task and a pidfd per running sandbox, and ends with the
//! init, so nothing is kept for sandboxes that are gone.

use super::Manager;
use crate::runtime::Runtime;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

#[derive(Debug)]
pub(super) struct Deaths {
    exits: UnboundedSender<String>,
    /// Taken by [`Manager::record_deaths`].
    exited: Mutex<Option<UnboundedReceiver<String>>>,
}

impl Default for Deaths {
    fn default() -> Self {
        let (exits, exited) = unbounded_channel();
        Self {
            exits,
            exited: Mutex::new(Some(exited)),
        }
    }
}

impl Deaths {
    /// Watches `id`'s init from now until it exits.
    pub(super) fn watch(&self, runtime: &Arc<dyn Runtime>, id: &str) {
        let (runtime, exits, id) = (Arc::clone(runtime), self.exits.clone(), id.to_owned());
        tokio::spawn(async move {
            match runtime.exited(&id).await {
                Ok(()) => drop(exits.send(id)),
                Err(err) => tracing::warn!(%id, error = %err, "cannot watch the sandbox's init"),
            }
        });
    }
}

impl Manager {
    /// Records each watched init's exit that is a death, until the server
    /// stops (see the module docs).
    pub async fn record_deaths(self: Arc<Self>) {
        let taken = self
            .deaths
            .exited
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let Some(mut exited) = taken else {
            return;
        };
        while let Some(id) = exited.recv().await {
            if let Err(err) = self.mark_failed_if_dead(&id).await {
                tracing::debug!(%id, error = %err, "cannot check an exited init");
            }
        }
    }
}

//! Lifecycle events: written to the store (so `GET /v1/events` can replay
//! them) and broadcast to the streams following them live.
//!
//! A follower subscribes before it reads the store, then skips what it has
//! already sent by `seq`, so no event falls between the replay and the live
//! stream. A follower too slow for the broadcast's buffer reads the store
//! again from its last `seq` instead of losing events.

use crate::store::{Store, StoreError, MAX_EVENTS_READ};
use chrono::{DateTime, Utc};
use sbx_api::{Event, EventKind};
use std::sync::Arc;
use tokio::sync::broadcast;

/// Events held for live followers between their reads.
const LIVE_BUFFER: usize = 1024;

#[derive(Debug)]
pub(crate) struct Events {
    store: Arc<Store>,
    live: broadcast::Sender<Event>,
}

/// What an event says beyond its sandbox and kind.
#[derive(Debug, Clone, Default)]
pub(crate) struct Detail {
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub at: Option<DateTime<Utc>>,
}

impl Detail {
    pub fn reason(reason: impl Into<String>) -> Self {
        Self {
            reason: Some(reason.into()),
            ..Self::default()
        }
    }

    pub fn about(detail: impl Into<String>) -> Self {
        Self {
            detail: Some(detail.into()),
            ..Self::default()
        }
    }
}

impl Events {
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            live: broadcast::channel(LIVE_BUFFER).0,
        }
    }

    /// Records and broadcasts an event. A store failure is logged, not
    /// returned: the change the event reports has happened either way.
    pub async fn emit(&self, sandbox: &str, kind: EventKind, detail: Detail) {
        let event = Event {
            seq: 0,
            time: Utc::now(),
            sandbox_id: sandbox.to_owned(),
            kind,
            reason: detail.reason,
            detail: detail.detail,
            at: detail.at,
        };
        let store = Arc::clone(&self.store);
        match tokio::task::spawn_blocking(move || store.insert_event(&event)).await {
            Ok(Ok(stored)) => {
                tracing::debug!(sandbox = %stored.sandbox_id, kind = stored.kind.as_str(), "event");
                // No receiver is not an error.
                let _ = self.live.send(stored);
            }
            Ok(Err(err)) => tracing::error!(%sandbox, error = %err, "cannot record an event"),
            Err(err) => tracing::error!(%sandbox, error = %err, "recording an event panicked"),
        }
    }

    /// Stored events after `since`, oldest first.
    pub async fn read(
        &self,
        sandbox: Option<String>,
        since: u64,
    ) -> Result<Vec<Event>, StoreError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            store.query_events(sandbox.as_deref(), since, MAX_EVENTS_READ)
        })
        .await
        .unwrap_or_else(|err| {
            Err(StoreError::Corrupt {
                id: "(events)".into(),
                reason: format!("the read panicked: {err}"),
            })
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }
}

/// Where an event stream is.
struct Cursor {
    manager: Arc<super::Manager>,
    sandbox: Option<String>,
    last: u64,
    /// Live events; None when not following.
    live: Option<broadcast::Receiver<Event>>,
    /// Read from the store, not sent yet.
    pending: std::collections::VecDeque<Event>,
    /// Everything stored up to `last` has been read.
    caught_up: bool,
}

impl super::Manager {
    /// The events after `since` (of one sandbox, or all), oldest first;
    /// with `follow`, then every new one as it happens, until the server
    /// stops.
    pub fn events(
        self: &Arc<Self>,
        sandbox: Option<String>,
        since: u64,
        follow: bool,
    ) -> impl futures_util::Stream<Item = Result<Event, super::SandboxError>> + Send + 'static {
        let cursor = Cursor {
            live: follow.then(|| self.events.subscribe()),
            manager: Arc::clone(self),
            sandbox,
            last: since,
            pending: Default::default(),
            caught_up: false,
        };
        futures_util::stream::unfold(cursor, |mut cursor| async move {
            let next = cursor.next().await;
            next.map(|item| (item, cursor))
        })
    }
}

impl Cursor {
    async fn next(&mut self) -> Option<Result<Event, super::SandboxError>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.last = event.seq;
                return Some(Ok(event));
            }
            if !self.caught_up {
                let read = self
                    .manager
                    .events
                    .read(self.sandbox.clone(), self.last)
                    .await;
                match read {
                    Err(err) => return Some(Err(err.into())),
                    Ok(events) if events.is_empty() => self.caught_up = true,
                    Ok(events) => self.pending.extend(events),
                }
                continue;
            }
            let live = self.live.as_mut()?;
            let stopping = self.manager.following.cancelled();
            let received = tokio::select! {
                received = live.recv() => received,
                () = stopping => return None,
            };
            match received {
                Ok(event) => {
                    let wanted = self
                        .sandbox
                        .as_ref()
                        .is_none_or(|id| *id == event.sandbox_id);
                    if wanted && event.seq > self.last {
                        self.last = event.seq;
                        return Some(Ok(event));
                    }
                }
                // Too slow for the buffer: read what was missed from the
                // store.
                Err(broadcast::error::RecvError::Lagged(_)) => self.caught_up = false,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

//! Directory watches for envd's two shapes, on sbx's watch stream.
//!
//! The Python SDK polls: `CreateWatcher` starts a watch whose events wait
//! here until `GetWatcherEvents` drains them, and `RemoveWatcher` ends it.
//! Such a watcher outlives the request that made it, so it is bounded
//! every way a client that vanishes could leave it: at most
//! [`MAX_QUEUED`] events wait (the oldest are dropped), a watcher nobody
//! polled for [`IDLE_LIMIT`] ends itself, and only the token that made
//! it, on the sandbox it watches, can read or remove it.
//!
//! sbx's events map onto E2B's: create → CREATE, modify → WRITE, delete →
//! REMOVE, and a move → RENAME of its source then CREATE of its
//! destination, which is what inotify shows envd. Names are relative to
//! the watched directory, as envd sends them.

use super::envd::Envd;
use super::error::Failure;
use super::sbx::{encode, ndjson};
use axum::body::Body;
use axum::http::Method;
use futures_util::{Stream, StreamExt};
use sbx_api::e2b::{EventType, FilesystemEvent};
use sbx_api::{WatchEvent, WatchEventKind};
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most events a watcher keeps for its next poll.
const MAX_QUEUED: usize = 10_000;
/// A watcher nobody polled for this long ends.
const IDLE_LIMIT: Duration = Duration::from_secs(300);
/// How often an idle watcher checks.
const IDLE_CHECK: Duration = Duration::from_secs(15);

/// A watch in place, as E2B events.
pub struct WatchEvents {
    root: String,
    lines: Pin<Box<dyn Stream<Item = Result<WatchEvent, Failure>> + Send>>,
}

/// Opens sbx's watch on `path`; it is in place once this returns.
pub async fn open(envd: &Envd, path: &str, recursive: bool) -> Result<WatchEvents, Failure> {
    let uri = envd.uri(&format!(
        "watch?path={}&recursive={recursive}",
        encode(path)
    ));
    let response = envd
        .sbx
        .send(Method::GET, &uri, Body::empty(), None)
        .await?;
    Ok(WatchEvents {
        root: path.trim_end_matches('/').to_string(),
        lines: Box::pin(ndjson::<WatchEvent>(response.into_body())),
    })
}

impl WatchEvents {
    /// The E2B events of sbx's next event (overflows have none).
    pub async fn next_batch(&mut self) -> Result<Vec<FilesystemEvent>, Failure> {
        match self.lines.next().await {
            Some(Ok(event)) => Ok(self.translate(event)),
            Some(Err(failure)) => Err(failure),
            None => Err(Failure::Unavailable("the watch ended".into())),
        }
    }

    fn relative(&self, path: &str) -> String {
        path.strip_prefix(&self.root)
            .map(|rest| rest.trim_start_matches('/'))
            .unwrap_or(path)
            .to_string()
    }

    fn translate(&self, event: WatchEvent) -> Vec<FilesystemEvent> {
        let named = |path: &str, kind| FilesystemEvent {
            name: self.relative(path),
            kind,
        };
        match event.kind {
            WatchEventKind::Create => vec![named(&event.path, EventType::Create)],
            WatchEventKind::Modify => vec![named(&event.path, EventType::Write)],
            WatchEventKind::Delete => vec![named(&event.path, EventType::Remove)],
            WatchEventKind::Move => {
                let mut events = Vec::new();
                if let Some(from) = &event.from {
                    events.push(named(from, EventType::Rename));
                }
                if !event.path.is_empty() {
                    events.push(named(&event.path, EventType::Create));
                }
                events
            }
            WatchEventKind::Overflow => Vec::new(),
        }
    }
}

struct Watcher {
    sandbox: String,
    token: String,
    queued: Mutex<VecDeque<FilesystemEvent>>,
    /// Why the watch ended, once it has.
    ended: Mutex<Option<String>>,
    polled: Mutex<Instant>,
    task: tokio::task::AbortHandle,
}

impl Watcher {
    fn belongs_to(&self, envd: &Envd) -> bool {
        self.sandbox == envd.sandbox && self.token == envd.token
    }
}

/// The Python SDK's watchers, by id.
#[derive(Default)]
pub struct Watchers {
    by_id: Mutex<HashMap<String, Arc<Watcher>>>,
}

impl std::fmt::Debug for Watchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.by_id.lock().map(|by_id| by_id.len()).unwrap_or(0);
        f.debug_struct("Watchers").field("count", &count).finish()
    }
}

impl Watchers {
    /// Keeps `events` for polling; the watcher's id.
    pub fn start(this: &Arc<Watchers>, envd: &Envd, mut events: WatchEvents) -> String {
        let id = format!("{:032x}", rand::random::<u128>());
        let (registered, start) = tokio::sync::oneshot::channel::<Arc<Watcher>>();
        let watchers = Arc::clone(this);
        let watcher_id = id.clone();
        let task = tokio::spawn(async move {
            let Ok(watcher) = start.await else { return };
            let mut idle = tokio::time::interval(IDLE_CHECK);
            loop {
                tokio::select! {
                    batch = events.next_batch() => match batch {
                        Ok(batch) => watcher.push(batch),
                        Err(failure) => {
                            *lock(&watcher.ended) = Some(failure.message());
                            return;
                        }
                    },
                    _ = idle.tick() => {
                        if lock(&watcher.polled).elapsed() > IDLE_LIMIT {
                            lock(&watchers.by_id).remove(&watcher_id);
                            return;
                        }
                    }
                }
            }
        });
        let watcher = Arc::new(Watcher {
            sandbox: envd.sandbox.clone(),
            token: envd.token.clone(),
            queued: Mutex::default(),
            ended: Mutex::default(),
            polled: Mutex::new(Instant::now()),
            task: task.abort_handle(),
        });
        lock(&this.by_id).insert(id.clone(), Arc::clone(&watcher));
        let _ = registered.send(watcher);
        id
    }

    fn find(&self, envd: &Envd, id: &str) -> Result<Arc<Watcher>, Failure> {
        lock(&self.by_id)
            .get(id)
            .filter(|watcher| watcher.belongs_to(envd))
            .cloned()
            .ok_or_else(|| Failure::not_found(format!("no watcher {id}")))
    }

    /// The events since the last poll; the watch's end once none are left.
    pub fn drain(&self, envd: &Envd, id: &str) -> Result<Vec<FilesystemEvent>, Failure> {
        let watcher = self.find(envd, id)?;
        *lock(&watcher.polled) = Instant::now();
        let events: Vec<FilesystemEvent> = lock(&watcher.queued).drain(..).collect();
        if events.is_empty() {
            if let Some(reason) = lock(&watcher.ended).clone() {
                lock(&self.by_id).remove(id);
                return Err(Failure::Unavailable(reason));
            }
        }
        Ok(events)
    }

    pub fn remove(&self, envd: &Envd, id: &str) -> Result<(), Failure> {
        let watcher = self.find(envd, id)?;
        watcher.task.abort();
        lock(&self.by_id).remove(id);
        Ok(())
    }
}

impl Watcher {
    fn push(&self, batch: Vec<FilesystemEvent>) {
        let mut queued = lock(&self.queued);
        for event in batch {
            if queued.len() == MAX_QUEUED {
                queued.pop_front();
            }
            queued.push_back(event);
        }
    }
}

/// A poisoned lock still holds consistent data here (every critical
/// section is a single push, drain or assignment).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

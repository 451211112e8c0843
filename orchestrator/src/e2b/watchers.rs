//! Directory watches for envd's two shapes, on sbx's watch stream.
//!
//! The Python SDK polls: `CreateWatcher` starts a watch whose events wait
//! here until `GetWatcherEvents` drains them, and `RemoveWatcher` ends it.
//! Such a watcher outlives the request that made it, so it is bounded
//! every way a client that vanishes could leave it: at most
//! [`MAX_WATCHERS`] per token and sandbox, at most [`MAX_QUEUED`] events
//! waiting in each (the oldest are dropped), a watcher nobody
//! polled for [`IDLE_LIMIT`] ends itself, and only the token that made
//! it, on the sandbox it watches, can read or remove it.
//!
//! sbx's events map onto E2B's: create → CREATE, modify → WRITE, delete →
//! REMOVE, and a move → RENAME of its source then CREATE of its
//! destination, which is what inotify shows envd. Names are relative to
//! the watched directory, as envd sends them.

use super::envd::Envd;
use super::error::E2bError;
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

/// Most watchers one token keeps on one sandbox.
const MAX_WATCHERS: usize = 64;
/// Most events a watcher keeps for its next poll.
const MAX_QUEUED: usize = 10_000;
/// A watcher nobody polled for this long ends.
const IDLE_LIMIT: Duration = Duration::from_secs(300);
/// How often an idle watcher checks.
const IDLE_CHECK: Duration = Duration::from_secs(15);

/// A watch in place, as E2B events.
pub struct WatchEvents {
    root: String,
    lines: Pin<Box<dyn Stream<Item = Result<WatchEvent, E2bError>> + Send>>,
}

/// Opens sbx's watch on `path`; it is in place once this returns.
pub async fn open(envd: &Envd, path: &str, recursive: bool) -> Result<WatchEvents, E2bError> {
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
    pub async fn next_batch(&mut self) -> Result<Vec<FilesystemEvent>, E2bError> {
        match self.lines.next().await {
            Some(Ok(event)) => Ok(self.translate(event)),
            Some(Err(error)) => Err(error),
            None => Err(E2bError::Unavailable("the watch ended".into())),
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
                        Err(error) => {
                            *lock(&watcher.ended) = Some(error.message());
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

    /// Refuses a caller that holds [`MAX_WATCHERS`] on the sandbox already.
    pub fn make_room(&self, envd: &Envd) -> Result<(), E2bError> {
        let held = lock(&self.by_id)
            .values()
            .filter(|watcher| watcher.belongs_to(envd))
            .count();
        if held >= MAX_WATCHERS {
            return Err(E2bError::Api(sbx_api::ErrorBody::new(
                sbx_api::ErrorCode::PayloadTooLarge,
                format!("{MAX_WATCHERS} watchers on this sandbox already: remove one first"),
            )));
        }
        Ok(())
    }

    fn find(&self, envd: &Envd, id: &str) -> Result<Arc<Watcher>, E2bError> {
        lock(&self.by_id)
            .get(id)
            .filter(|watcher| watcher.belongs_to(envd))
            .cloned()
            .ok_or_else(|| E2bError::not_found(format!("no watcher {id}")))
    }

    /// The events since the last poll; the watch's end once none are left.
    pub fn drain(&self, envd: &Envd, id: &str) -> Result<Vec<FilesystemEvent>, E2bError> {
        let watcher = self.find(envd, id)?;
        *lock(&watcher.polled) = Instant::now();
        let events: Vec<FilesystemEvent> = lock(&watcher.queued).drain(..).collect();
        if events.is_empty() {
            if let Some(reason) = lock(&watcher.ended).clone() {
                lock(&self.by_id).remove(id);
                return Err(E2bError::Unavailable(reason));
            }
        }
        Ok(events)
    }

    pub fn remove(&self, envd: &Envd, id: &str) -> Result<(), E2bError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2b::sbx::Sbx;

    fn envd(sandbox: &str, token: &str) -> Envd {
        Envd {
            sbx: Sbx::new(axum::Router::new(), token, "test"),
            sandbox: sandbox.to_string(),
            user: None,
            token: token.to_string(),
        }
    }

    fn events(root: &str, lines: Vec<WatchEvent>) -> WatchEvents {
        let lines = futures_util::stream::iter(lines.into_iter().map(Ok))
            .chain(futures_util::stream::pending());
        WatchEvents {
            root: root.to_string(),
            lines: Box::pin(lines),
        }
    }

    fn event(kind: WatchEventKind, path: &str, from: Option<&str>) -> WatchEvent {
        WatchEvent {
            kind,
            path: path.to_string(),
            from: from.map(str::to_string),
            is_dir: false,
        }
    }

    #[tokio::test]
    async fn sbx_events_become_e2b_events_named_under_the_watch() {
        let mut watch = events(
            "/home/user/w",
            vec![
                event(WatchEventKind::Create, "/home/user/w/a.txt", None),
                event(WatchEventKind::Modify, "/home/user/w/sub/b.txt", None),
                event(
                    WatchEventKind::Move,
                    "/home/user/w/c",
                    Some("/home/user/w/a.txt"),
                ),
                event(WatchEventKind::Overflow, "", None),
                event(WatchEventKind::Delete, "/home/user/w/c", None),
            ],
        );
        let mut seen = Vec::new();
        for _ in 0..5 {
            for e2b in watch.next_batch().await.expect("an event") {
                seen.push((e2b.name, e2b.kind));
            }
        }
        assert_eq!(
            seen,
            [
                ("a.txt".to_string(), EventType::Create),
                ("sub/b.txt".to_string(), EventType::Write),
                ("a.txt".to_string(), EventType::Rename),
                ("c".to_string(), EventType::Create),
                ("c".to_string(), EventType::Remove),
            ]
        );
    }

    #[tokio::test]
    async fn a_watcher_is_its_makers_alone_and_their_number_is_bounded() {
        let watchers = Arc::new(Watchers::default());
        let maker = envd("sandbox-a", "token-1");
        let change = event(WatchEventKind::Create, "/w/new", None);
        let id = Watchers::start(&watchers, &maker, events("/w", vec![change]));
        let drained = loop {
            let drained = watchers.drain(&maker, &id).expect("the maker's watcher");
            if !drained.is_empty() {
                break drained;
            }
            tokio::task::yield_now().await;
        };
        assert_eq!(drained[0].name, "new");
        // Another token, or the same token on another sandbox, finds nothing.
        for stranger in [envd("sandbox-a", "token-2"), envd("sandbox-b", "token-1")] {
            assert!(matches!(
                watchers.drain(&stranger, &id),
                Err(E2bError::Api(_))
            ));
            assert!(watchers.remove(&stranger, &id).is_err());
        }
        for _ in 1..MAX_WATCHERS {
            watchers.make_room(&maker).expect("room");
            Watchers::start(&watchers, &maker, events("/w", Vec::new()));
        }
        assert!(watchers.make_room(&maker).is_err());
        assert!(watchers.make_room(&envd("sandbox-a", "token-2")).is_ok());
        watchers.remove(&maker, &id).expect("removed");
        assert!(watchers.make_room(&maker).is_ok());
    }
}

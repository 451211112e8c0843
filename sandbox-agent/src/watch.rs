//! `GET /watch?path=&recursive=`: changes under a directory, as an NDJSON
//! stream of [`WatchEvent`]s read from inotify.
//!
//! One inotify instance per stream, so a stream's end (its client leaving,
//! which drops the body, which closes the queue) frees every watch at once
//! by closing one fd. The handler sets every watch up (off the async
//! workers: a recursive walk is a file-system tree) before it returns, so
//! the response head means "watching": whatever happens after a client got
//! it is reported.
//!
//! Events, from the kernel's:
//! - `create`: `IN_CREATE`, and `IN_MOVED_TO` without a partner (moved in);
//! - `delete`: `IN_DELETE`, and `IN_MOVED_FROM` without a partner (moved
//!   out). The root's own `IN_DELETE_SELF` (or `IN_MOVE_SELF`, or its
//!   unmounting: the path no longer names what is watched) ends the stream
//!   with a `delete` of the root;
//! - `modify`: `IN_MODIFY`, `IN_ATTRIB` and `IN_CLOSE_WRITE` (the last
//!   catches writes through `mmap`, which raise no `IN_MODIFY`). Repeats for
//!   one path within one kernel read are coalesced: `echo x > f` is one
//!   `modify`, a 1 GiB copy a handful rather than one per `write(2)`. Only
//!   within one read, so a later write always gets its own event;
//! - `move`: `IN_MOVED_FROM` and `IN_MOVED_TO` paired by cookie. The kernel
//!   queues the two back to back, but a read may end between them, so a
//!   source waits for its partner until it is [`MOVE_PAIR_WAIT`] old *and*
//!   either the queue was found empty or a whole later read went by without
//!   it; then it becomes a `delete`, which may therefore come after events
//!   that happened later. A directory moved inside a recursive watch keeps
//!   its watches (they follow the inode); their paths are rewritten.
//!
//! Recursive watches add a watch for every directory created (or moved in)
//! later, then list it, reporting what is already inside as `create`s:
//! `mkdir -p a/b/c && echo x > a/b/c/f` runs faster than the agent can add
//! watches, and would otherwise lose `b`, `c` and `f`. An entry listed this
//! way may also raise its own `IN_CREATE` (created between the watch and the
//! listing); the paths reported by listings are remembered (up to
//! [`MAX_LISTED_PATHS`]) so that that `IN_CREATE` is not reported twice.
//!
//! Bounds: a stream holds at most [`WATCH_QUEUE_EVENTS`] events for a slow
//! reader; past that events are dropped and one `overflow` says so when room
//! returns (the kernel's own `IN_Q_OVERFLOW` becomes one too). Inotify still
//! drains meanwhile, so new directories keep being watched. A stream watches
//! at most [`MAX_WATCHED_DIRS`] directories (each watch pins kernel memory,
//! and the per-user watch limit is shared by the whole sandbox): a tree
//! larger than that at the start is refused with 400 (the head must mean
//! "everything is watched"); a directory that cannot be watched later
//! (over the bound, or the kernel's limit) becomes an `overflow`, since
//! what happens inside it will not be seen.

use crate::error::AgentError;
use crate::files::{blocking, checked_path, fs_error, QueryParams};
use crate::fs_safe::lookup_error;
use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use sbx_api::{WatchEvent, WatchEventKind, WatchQuery, NDJSON, WATCH_QUEUE_EVENTS};
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Most directories one stream watches; see the module docs.
pub const MAX_WATCHED_DIRS: usize = 8192;

/// How long a move's source waits for its destination; see the module docs.
pub const MOVE_PAIR_WAIT: Duration = Duration::from_millis(10);

/// Most paths remembered as reported by listings of new directories; past
/// it, an entry that raced its directory's watch may be reported twice.
pub const MAX_LISTED_PATHS: usize = 64 * 1024;

/// Most events put into one body frame.
const EVENTS_PER_FRAME: usize = 256;

/// What a directory's watch reports.
fn dir_mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

/// The `/watch` route. Stateless, so any state fits.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new().route("/watch", get(watch))
}

/// `GET /watch?path=P&recursive=B`: the head once every directory is
/// watched, then one event per line until the client leaves or P goes.
async fn watch(QueryParams(query): QueryParams<WatchQuery>) -> Result<Response, AgentError> {
    query.validate().map_err(AgentError::InvalidRequest)?;
    let root = checked_path(&query.path)?;
    let recursive = query.recursive;
    let watcher = blocking("watch", &root.clone(), move || {
        Watcher::start(root, recursive)
    })
    .await?;
    // SAFETY: the inotify fd is owned by the `Inotify` in the `Arc`, which
    // the `AsyncFd` holds a share of: it stays open, and is the same fd,
    // for as long as the `AsyncFd` lives.
    let readiness = unsafe {
        AsyncFd::register_with_interest(InotifyFd(Arc::clone(&watcher.inotify)), Interest::READABLE)
    }
    .map_err(|err| fs_error("watch", &watcher.root, err.into_parts().1))?;
    let (events, queue) = mpsc::channel(WATCH_QUEUE_EVENTS);
    tokio::spawn(run(
        watcher,
        readiness,
        Outbox {
            events,
            lost: false,
        },
    ));
    Ok(ndjson(queue))
}

/// A 200 streaming the queue's events as NDJSON, several to a frame when
/// they are already waiting.
fn ndjson(queue: mpsc::Receiver<WatchEvent>) -> Response {
    let frames = futures_util::stream::unfold(queue, |mut queue| async move {
        let mut batch = Vec::with_capacity(EVENTS_PER_FRAME);
        if queue.recv_many(&mut batch, EVENTS_PER_FRAME).await == 0 {
            return None;
        }
        let mut lines = Vec::with_capacity(batch.len() * 64);
        for event in &batch {
            serde_json::to_writer(&mut lines, event).expect("events serialize to json");
            lines.push(b'\n');
        }
        Some((Ok::<_, Infallible>(Bytes::from(lines)), queue))
    });
    ([(CONTENT_TYPE, NDJSON)], Body::from_stream(frames)).into_response()
}

/// The inotify descriptor, for [`AsyncFd`] (nix's type is `AsFd` only).
#[derive(Debug)]
struct InotifyFd(Arc<Inotify>);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// The queue towards the body, and whether events were dropped since the
/// last `overflow` went in.
#[derive(Debug)]
struct Outbox {
    events: mpsc::Sender<WatchEvent>,
    lost: bool,
}

impl Outbox {
    /// Queues `event`, or drops it when the queue is full.
    fn push(&mut self, event: WatchEvent) {
        if self.lost {
            if self.events.try_send(overflow()).is_err() {
                return;
            }
            self.lost = false;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.events.try_send(event) {
            self.lost = true;
        }
    }

    /// Events were lost elsewhere (the kernel's queue, an unwatched
    /// directory): say so now, or as soon as there is room.
    fn lose(&mut self) {
        self.lost = true;
        if self.events.try_send(overflow()).is_ok() {
            self.lost = false;
        }
    }

    /// The stream's last event, waiting for room if need be.
    async fn finish(self, last: WatchEvent) {
        if self.lost && self.events.send(overflow()).await.is_err() {
            return;
        }
        let _ = self.events.send(last).await;
    }
}

fn overflow() -> WatchEvent {
    WatchEvent {
        kind: WatchEventKind::Overflow,
        path: String::new(),
        from: None,
        is_dir: false,
    }
}

fn event(kind: WatchEventKind, path: &Path, is_dir: bool, from: Option<&Path>) -> WatchEvent {
    WatchEvent {
        kind,
        path: path.to_string_lossy().into_owned(),
        from: from.map(|from| from.to_string_lossy().into_owned()),
        is_dir,
    }
}

/// Whether a stream goes on after a batch.
#[derive(Debug)]
enum Flow {
    Continue,
    /// The root is gone: this is the last event.
    End(WatchEvent),
}

/// The outcome of adding one directory's watch.
#[derive(Debug)]
enum DirWatch {
    Added,
    /// It vanished or was replaced meanwhile: its parent reports that.
    Gone,
    /// [`MAX_WATCHED_DIRS`] is reached.
    OverBound,
    /// The kernel refused (its per-user watch limit).
    KernelLimit(Errno),
}

/// A move's source, waiting for its destination.
#[derive(Debug)]
struct PendingMove {
    cookie: u32,
    path: PathBuf,
    is_dir: bool,
    read_at: Instant,
    /// Reads completed since the one that brought it.
    later_reads: u32,
}

/// One stream's watches and what it remembers between kernel reads.
#[derive(Debug)]
struct Watcher {
    inotify: Arc<Inotify>,
    root: PathBuf,
    root_wd: WatchDescriptor,
    recursive: bool,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    moves: Vec<PendingMove>,
    /// Paths reported by listings whose own `IN_CREATE` may still come.
    listed: HashSet<PathBuf>,
    /// The path of the last `modify` of the current read, for coalescing.
    last_modify: Option<PathBuf>,
}

impl Watcher {
    /// Checks `root`, watches it and, when recursive, every directory
    /// beneath it. Blocking.
    fn start(root: PathBuf, recursive: bool) -> Result<Self, AgentError> {
        let meta =
            std::fs::metadata(&root).map_err(|err| fs_error("watch", &root, lookup_error(err)))?;
        if !meta.is_dir() {
            return Err(AgentError::InvalidRequest(format!(
                "cannot watch {}: it is not a directory",
                root.display()
            )));
        }
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|errno| watch_error(&root, errno))?;
        // The root may be a symlink to a directory (as for `ls`); nothing
        // below it is followed.
        let root_wd = inotify
            .add_watch(&root, dir_mask())
            .map_err(|errno| watch_error(&root, errno))?;
        let mut watcher = Watcher {
            inotify: Arc::new(inotify),
            root_wd,
            dirs: HashMap::from([(root_wd, root.clone())]),
            root,
            recursive,
            moves: Vec::new(),
            listed: HashSet::new(),
            last_modify: None,
        };
        if recursive {
            watcher.watch_existing_subdirs()?;
        }
        Ok(watcher)
    }

    /// The initial walk: each directory is watched before it is listed, so
    /// a subdirectory created meanwhile is either listed or reported.
    fn watch_existing_subdirs(&mut self) -> Result<(), AgentError> {
        let mut pending = vec![self.root.clone()];
        while let Some(dir) = pending.pop() {
            // Vanished or unreadable meanwhile: its parent reports the rest.
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                    continue;
                }
                let path = entry.path();
                match self.add_dir(&path) {
                    DirWatch::Added => pending.push(path),
                    DirWatch::Gone => {}
                    DirWatch::OverBound => {
                        return Err(AgentError::InvalidRequest(format!(
                            "cannot watch {} recursively: it holds more than {MAX_WATCHED_DIRS} directories",
                            self.root.display()
                        )))
                    }
                    DirWatch::KernelLimit(errno) => return Err(watch_error(&path, errno)),
                }
            }
        }
        Ok(())
    }

    fn add_dir(&mut self, dir: &Path) -> DirWatch {
        if self.dirs.len() >= MAX_WATCHED_DIRS {
            return DirWatch::OverBound;
        }
        // IN_DONT_FOLLOW: a symlink swapped in for the directory must not
        // lead the watch elsewhere.
        match self
            .inotify
            .add_watch(dir, dir_mask() | AddWatchFlags::IN_DONT_FOLLOW)
        {
            Ok(wd) => {
                self.dirs.insert(wd, dir.to_path_buf());
                DirWatch::Added
            }
            Err(errno @ Errno::ENOSPC) => DirWatch::KernelLimit(errno),
            Err(_) => DirWatch::Gone,
        }
    }

    /// A directory appeared under a recursive watch: watch it and
    /// everything beneath it, reporting what is already there. Blocking.
    fn watch_new_tree(&mut self, top: PathBuf, out: &mut Outbox) {
        let mut pending = vec![top];
        while let Some(dir) = pending.pop() {
            match self.add_dir(&dir) {
                DirWatch::Added => {}
                DirWatch::Gone => continue,
                DirWatch::OverBound | DirWatch::KernelLimit(_) => {
                    tracing::warn!(dir = %dir.display(), "watch: directory left unwatched");
                    out.lose();
                    continue;
                }
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
                if self.listed.len() < MAX_LISTED_PATHS {
                    self.listed.insert(path.clone());
                }
                self.emit(out, event(WatchEventKind::Create, &path, is_dir, None));
                if is_dir {
                    pending.push(path);
                }
            }
        }
    }

    /// Whether handling `events` may list directories (blocking work).
    fn needs_listing(&self, events: &[InotifyEvent]) -> bool {
        self.recursive
            && events.iter().any(|event| {
                event.mask.contains(AddWatchFlags::IN_ISDIR)
                    && event
                        .mask
                        .intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
            })
    }

    /// Handles one kernel read.
    fn handle(&mut self, events: Vec<InotifyEvent>, out: &mut Outbox) -> Flow {
        self.last_modify = None;
        for event in events {
            if let Flow::End(last) = self.handle_event(event, out) {
                return Flow::End(last);
            }
        }
        for pending in &mut self.moves {
            pending.later_reads += 1;
        }
        // The read after the one that brought a source would have brought
        // its destination.
        self.flush_moves(out, |pending| pending.later_reads >= 2);
        Flow::Continue
    }

    fn handle_event(&mut self, raw: InotifyEvent, out: &mut Outbox) -> Flow {
        let mask = raw.mask;
        if mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            out.lose();
            return Flow::Continue;
        }
        if mask.contains(AddWatchFlags::IN_IGNORED) {
            self.dirs.remove(&raw.wd);
            if raw.wd == self.root_wd {
                return Flow::End(self.root_gone());
            }
            return Flow::Continue;
        }
        let root_self =
            AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF | AddWatchFlags::IN_UNMOUNT;
        if raw.wd == self.root_wd && mask.intersects(root_self) {
            return Flow::End(self.root_gone());
        }
        // Events about a watched directory itself: its parent reports them.
        let Some(name) = raw.name else {
            return Flow::Continue;
        };
        let Some(dir) = self.dirs.get(&raw.wd) else {
            return Flow::Continue;
        };
        let path = dir.join(name);
        let is_dir = mask.contains(AddWatchFlags::IN_ISDIR);
        if mask.contains(AddWatchFlags::IN_CREATE) {
            if self.listed.remove(&path) {
                return Flow::Continue;
            }
            self.emit(out, event(WatchEventKind::Create, &path, is_dir, None));
            if is_dir && self.recursive {
                self.watch_new_tree(path, out);
            }
            return Flow::Continue;
        }
        self.listed.remove(&path);
        if mask.contains(AddWatchFlags::IN_MOVED_FROM) {
            self.moves.push(PendingMove {
                cookie: raw.cookie,
                path,
                is_dir,
                read_at: Instant::now(),
                later_reads: 0,
            });
        } else if mask.contains(AddWatchFlags::IN_MOVED_TO) {
            match self
                .moves
                .iter()
                .position(|pending| pending.cookie == raw.cookie)
            {
                Some(index) => {
                    let from = self.moves.remove(index).path;
                    if is_dir && self.recursive {
                        self.rename_dirs(&from, &path);
                    }
                    self.emit(out, event(WatchEventKind::Move, &path, is_dir, Some(&from)));
                }
                None => {
                    self.emit(out, event(WatchEventKind::Create, &path, is_dir, None));
                    if is_dir && self.recursive {
                        self.watch_new_tree(path, out);
                    }
                }
            }
        } else if mask.contains(AddWatchFlags::IN_DELETE) {
            self.emit(out, event(WatchEventKind::Delete, &path, is_dir, None));
        } else if mask.intersects(
            AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_ATTRIB | AddWatchFlags::IN_CLOSE_WRITE,
        ) && self.last_modify.as_ref() != Some(&path)
        {
            self.emit(out, event(WatchEventKind::Modify, &path, is_dir, None));
            self.last_modify = Some(path);
        }
        Flow::Continue
    }

    fn emit(&mut self, out: &mut Outbox, event: WatchEvent) {
        self.last_modify = None;
        out.push(event);
    }

    fn root_gone(&self) -> WatchEvent {
        event(WatchEventKind::Delete, &self.root, true, None)
    }

    /// A watched directory moved within the watch: its watches and those
    /// beneath it now report under `to`.
    fn rename_dirs(&mut self, from: &Path, to: &Path) {
        for path in self.dirs.values_mut() {
            if let Ok(rest) = path.strip_prefix(from) {
                *path = to.join(rest);
            }
        }
    }

    /// A directory moved out of the watch: its watches would report paths
    /// it no longer has.
    fn forget_dirs(&mut self, top: &Path) {
        let inotify = &self.inotify;
        self.dirs.retain(|wd, path| {
            if path.starts_with(top) {
                let _ = inotify.rm_watch(*wd);
                false
            } else {
                true
            }
        });
    }

    /// Reports the sources old enough and `done` waiting as `delete`s.
    fn flush_moves(&mut self, out: &mut Outbox, done: impl Fn(&PendingMove) -> bool) {
        let now = Instant::now();
        let (due, waiting) = std::mem::take(&mut self.moves)
            .into_iter()
            .partition(|pending| now >= pending.read_at + MOVE_PAIR_WAIT && done(pending));
        self.moves = waiting;
        for pending in due {
            if pending.is_dir && self.recursive {
                self.forget_dirs(&pending.path);
            }
            self.emit(
                out,
                event(WatchEventKind::Delete, &pending.path, pending.is_dir, None),
            );
        }
    }

    /// When the oldest waiting source is due, if any.
    fn next_move_deadline(&self) -> Option<Instant> {
        self.moves
            .iter()
            .map(|pending| pending.read_at + MOVE_PAIR_WAIT)
            .min()
    }
}

/// An inotify call failed on `path`.
fn watch_error(path: &Path, errno: Errno) -> AgentError {
    let source = io::Error::from(errno);
    match errno {
        Errno::ENOSPC | Errno::EMFILE => AgentError::WatchLimit {
            path: path.to_string_lossy().into_owned(),
            source,
        },
        _ => fs_error("watch", path, lookup_error(source)),
    }
}

/// What woke the reading loop.
#[derive(Debug)]
enum Wake {
    Events(Vec<InotifyEvent>),
    /// Nothing to read after all (readiness was stale).
    Spurious,
    /// There is room for the `overflow` owed.
    Room,
    /// The oldest waiting move source is due.
    MoveDue,
    /// The client left, or inotify failed.
    Stop,
}

/// Reads the kernel's events into the queue until the client leaves or the
/// root goes.
async fn run(mut watcher: Watcher, readiness: AsyncFd<InotifyFd>, mut out: Outbox) {
    loop {
        let deadline = watcher.next_move_deadline();
        // Biased: a pending move is flushed by the timer only when the
        // kernel has nothing more to say (its partner is not queued).
        let wake = tokio::select! {
            biased;
            () = out.events.closed() => Wake::Stop,
            ready = readiness.readable() => match ready {
                Ok(mut guard) => {
                    match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(io::Error::from)) {
                        Ok(Ok(events)) => Wake::Events(events),
                        Ok(Err(err)) => {
                            tracing::warn!(%err, "watch: inotify read failed");
                            Wake::Stop
                        }
                        Err(_would_block) => Wake::Spurious,
                    }
                }
                Err(err) => {
                    tracing::warn!(%err, "watch: inotify poll failed");
                    Wake::Stop
                }
            },
            permit = out.events.reserve(), if out.lost => match permit {
                Ok(permit) => {
                    permit.send(overflow());
                    Wake::Room
                }
                Err(_) => Wake::Stop,
            },
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => Wake::MoveDue,
        };
        let events = match wake {
            Wake::Events(events) => events,
            Wake::Spurious => continue,
            Wake::Room => {
                out.lost = false;
                continue;
            }
            Wake::MoveDue => {
                watcher.flush_moves(&mut out, |_| true);
                continue;
            }
            Wake::Stop => return,
        };
        let flow = if watcher.needs_listing(&events) {
            let handled = tokio::task::spawn_blocking(move || {
                let flow = watcher.handle(events, &mut out);
                (watcher, out, flow)
            })
            .await;
            match handled {
                Ok((back, outbox, flow)) => {
                    watcher = back;
                    out = outbox;
                    flow
                }
                Err(err) => {
                    tracing::warn!(%err, "watch: listing a new directory failed");
                    return;
                }
            }
        } else {
            watcher.handle(events, &mut out)
        };
        if let Flow::End(last) = flow {
            out.finish(last).await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(capacity: usize) -> (Outbox, mpsc::Receiver<WatchEvent>) {
        let (events, queue) = mpsc::channel(capacity);
        (
            Outbox {
                events,
                lost: false,
            },
            queue,
        )
    }

    fn create(path: &str) -> WatchEvent {
        event(WatchEventKind::Create, Path::new(path), false, None)
    }

    #[test]
    fn a_full_queue_drops_events_then_says_overflow_once() {
        let (mut out, mut queue) = outbox(2);
        for n in 0..5 {
            out.push(create(&format!("/w/{n}")));
        }
        assert!(out.lost);
        let kinds: Vec<_> = std::iter::from_fn(|| queue.try_recv().ok())
            .map(|event| event.path)
            .collect();
        assert_eq!(kinds, ["/w/0", "/w/1"]);
        out.push(create("/w/5"));
        out.push(create("/w/6"));
        let after: Vec<_> = std::iter::from_fn(|| queue.try_recv().ok()).collect();
        assert_eq!(after.len(), 2);
        assert_eq!(after[0].kind, WatchEventKind::Overflow);
        assert_eq!(after[1].path, "/w/5");
        assert!(out.lost, "/w/6 found the queue full again");
    }

    #[test]
    fn kernel_overflow_is_reported_in_place() {
        let (mut out, mut queue) = outbox(4);
        out.push(create("/w/a"));
        out.lose();
        out.push(create("/w/b"));
        let kinds: Vec<_> = std::iter::from_fn(|| queue.try_recv().ok())
            .map(|event| event.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                WatchEventKind::Create,
                WatchEventKind::Overflow,
                WatchEventKind::Create
            ]
        );
        assert!(!out.lost);
    }
}

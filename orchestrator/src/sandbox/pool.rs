//! The warm pool: sandboxes of the default shape, started ahead of demand,
//! so that a create that asks for nothing special is answered by handing
//! one out instead of starting a container.
//!
//! Why: a youki create costs tens of milliseconds, and on cgroup v1 about
//! 11 ms of that is a kernel floor sbx cannot remove (BENCHMARKS.md). A
//! claim costs a store update and a policy swap. The pool is refilled in
//! the background right after each claim, so a steady trickle of creates
//! never waits for a container, and a burst beyond the pool's size falls
//! back to starting containers as before.
//!
//! What a pooled sandbox is: a running sandbox of the default image,
//! memory, CPU and disk, with no environment, no labels and no egress, and
//! a store record flagged `pooled`: the orphan sweep leaves it alone, and
//! no client sees it (lists skip it, a lookup of its id is a 404). A claim
//! takes the request's labels and network policy, a fresh `created_at`,
//! and clears the flag; a request for anything else (another image,
//! limits, environment variables) is started fresh. Pooled sandboxes do not
//! outlive the server: a graceful stop deletes them, and so does the
//! recovery after a crash.
//!
//! This type is only the bookkeeping: which pooled sandboxes are ready,
//! and when more are wanted. The manager starts, claims and deletes them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(crate) struct WarmPool {
    /// How many ready sandboxes to keep; 0: no pool.
    size: usize,
    ready: Mutex<VecDeque<String>>,
    /// Woken when a claim makes room, or the pool closes.
    wanted: Notify,
    /// Set at shutdown: no more sandboxes are wanted.
    closed: AtomicBool,
}

impl WarmPool {
    pub(crate) fn new(size: usize) -> Self {
        Self {
            size,
            ..Self::default()
        }
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.size > 0
    }

    fn ready(&self) -> std::sync::MutexGuard<'_, VecDeque<String>> {
        // Every critical section is one push or pop.
        self.ready
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The oldest ready sandbox, if any; asks for a replacement.
    pub(crate) fn take(&self) -> Option<String> {
        let id = self.ready().pop_front();
        if id.is_some() {
            self.wanted.notify_one();
        }
        id
    }

    /// Adds a sandbox that is ready to be claimed.
    pub(crate) fn put(&self, id: String) {
        self.ready().push_back(id);
    }

    /// Whether the pool holds fewer ready sandboxes than its size, and is
    /// still open.
    pub(crate) fn wants_more(&self) -> bool {
        !self.is_closed() && self.ready().len() < self.size
    }

    /// Stops the filling: nothing more is wanted, and a filler waiting for
    /// room is woken to see so.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wanted.notify_one();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Waits until a claim has made room (at once if one did since the
    /// last wait).
    pub(crate) async fn room_made(&self) {
        self.wanted.notified().await;
    }

    /// How many sandboxes are ready to be claimed: the metrics' pool
    /// level, read at scrape time.
    pub(crate) fn ready_count(&self) -> usize {
        self.ready().len()
    }

    /// Forgets every ready sandbox, returning their ids.
    pub(crate) fn drain(&self) -> Vec<String> {
        self.ready().drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn claims_go_oldest_first_and_ask_for_a_replacement() {
        let pool = WarmPool::new(2);
        assert!(pool.is_enabled());
        assert!(pool.wants_more());
        pool.put("a".into());
        pool.put("b".into());
        assert!(!pool.wants_more());
        assert_eq!(pool.take().as_deref(), Some("a"));
        assert!(pool.wants_more());
        // The claim left a wake-up for the filler.
        tokio::time::timeout(std::time::Duration::from_secs(1), pool.room_made())
            .await
            .expect("woken");
        pool.take();
        assert!(pool.wants_more());
        pool.close();
        assert!(!pool.wants_more(), "a closed pool wants nothing");
        tokio::time::timeout(std::time::Duration::from_secs(1), pool.room_made())
            .await
            .expect("closing wakes the filler");
        pool.put("c".into());
        assert_eq!(pool.drain(), ["c"]);
        assert_eq!(pool.take(), None);
        assert!(!WarmPool::new(0).is_enabled());
    }
}

//! The sandboxes a call may go straight to: running, and a client's.
//!
//! Why: every exec, file and process call first asks whether its sandbox
//! is running. Asking the store means a SQLite read, which must leave the
//! async workers (`Manager::db`): a thread hand-off each way that cost
//! about 0.3 ms per exec in an A/B run. The manager changes every state, so
//! it keeps this set beside the store: an id goes in when its sandbox
//! becomes a client's running sandbox (started, claimed from the pool,
//! adopted at recovery) and out before any transition away from running
//! and at teardown. A call for an id not in the set takes the slow path
//! through the store, which gives the exact answer (404, 409); so a missing
//! entry costs time, never correctness, and a stale one is no worse than
//! the race a store read always had with a concurrent delete (the agent
//! then answers that it is shutting down, and the bridge asks the store).

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

#[derive(Debug, Default)]
pub(crate) struct Serving {
    ids: Mutex<HashSet<String>>,
}

impl Serving {
    fn ids(&self) -> MutexGuard<'_, HashSet<String>> {
        // Every critical section is one insert, remove or lookup.
        self.ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn insert(&self, id: &str) {
        self.ids().insert(id.to_owned());
    }

    pub(crate) fn remove(&self, id: &str) {
        self.ids().remove(id);
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.ids().contains(id)
    }
}

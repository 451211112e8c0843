//! What keeps a sandbox awake: API calls that touch it, and the calls and
//! streams (exec, a log follow, an upload) still running.
//!
//! A sandbox is idle from the moment its last call or stream ended; its
//! own background processes do not count, or a forgotten `sleep infinity`
//! would hold memory forever. The state is in memory: after a restart of
//! the server every sandbox's idle time starts again from the recovery,
//! which can only make a sandbox live longer, never end early.

use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy)]
struct Use {
    /// Calls and streams running now.
    running: u32,
    /// When the last one ended (or the sandbox was last started).
    since: DateTime<Utc>,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Activity {
    uses: Arc<Mutex<HashMap<String, Use>>>,
}

/// Held while a call or stream on a sandbox runs; its drop marks the end.
#[derive(Debug)]
pub struct InUse {
    activity: Activity,
    id: String,
}

impl Drop for InUse {
    fn drop(&mut self) {
        let mut uses = self.activity.lock();
        if let Some(entry) = uses.get_mut(&self.id) {
            entry.running = entry.running.saturating_sub(1);
            entry.since = Utc::now();
        }
    }
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Use>> {
        self.uses
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A sandbox starts (or is adopted): idle from now, nothing running.
    pub fn reset(&self, id: &str) {
        let mut uses = self.lock();
        let running = uses.get(id).map_or(0, |entry| entry.running);
        uses.insert(
            id.to_owned(),
            Use {
                running,
                since: Utc::now(),
            },
        );
    }

    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    /// A call on `id` begins; it ends when the guard drops.
    pub fn begin(&self, id: &str) -> InUse {
        let mut uses = self.lock();
        let entry = uses.entry(id.to_owned()).or_insert(Use {
            running: 0,
            since: Utc::now(),
        });
        entry.running += 1;
        InUse {
            activity: self.clone(),
            id: id.to_owned(),
        }
    }

    /// Since when `id` has been idle; None while a call or stream runs.
    /// A sandbox never seen is idle from `otherwise`.
    pub fn idle_since(&self, id: &str, otherwise: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self.lock().get(id) {
            Some(entry) if entry.running > 0 => None,
            Some(entry) => Some(entry.since),
            None => Some(otherwise),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_call_keeps_a_sandbox_awake_until_it_ends() {
        let activity = Activity::default();
        let before = Utc::now();
        activity.reset("a");
        assert!(activity.idle_since("a", before).expect("idle") >= before);
        let call = activity.begin("a");
        let stream = activity.begin("a");
        assert_eq!(activity.idle_since("a", before), None);
        drop(call);
        assert_eq!(activity.idle_since("a", before), None, "the stream runs");
        let ended = Utc::now();
        drop(stream);
        assert!(activity.idle_since("a", before).expect("idle") >= ended);
        assert_eq!(activity.idle_since("never", before), Some(before));
        activity.forget("a");
        assert_eq!(activity.idle_since("a", before), Some(before));
    }
}

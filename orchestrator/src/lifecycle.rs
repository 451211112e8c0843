//! The sandbox lifecycle: every state change there is, in one table.
//!
//! ```text
//!  (create) ─► creating ─ready─► running ◄─resume── paused
//!                 │               │  │ └───pause────►  │
//!                 │               │  └─stop─► stopping ◄┘ (stop)
//!                 │               │              │
//!                 │            started        stopped
//!                 │               │              ▼
//!                 │           starting ◄─start─ stopped
//!                 │                              │
//!   running, paused, stopped, failed ──delete──► deleting ──ended──► deleted
//!   creating, deleting, stopping, starting ──teardown failed──► failed
//!   running, paused ──died──► failed
//!   any but failed, deleted ──recovery failed──► failed
//! ```
//!
//! A sandbox enters the store as `creating` and leaves it by removal (a
//! finished teardown, or the end of a `deleted` record's retention), so
//! neither end is a transition. Everything in between is a [`Transition`]:
//! the states it may start from and the state it leads to, written once in
//! [`Transition::rule`]. The store applies a transition with one
//! conditional `UPDATE … WHERE state IN (from)`, so two racing calls (two
//! deletes, a delete and a death) cannot both win, and a change the table
//! does not allow cannot happen.
//!
//! `stopping` and `starting` are the in-between states of the two slow
//! changes: a crash there is settled at recovery, as `stopped` (the disk is
//! what a stopped sandbox is, and it is never touched by either). A start
//! that fails goes back to `stopped` for the same reason, where a create
//! that fails is torn down.

use sbx_api::SandboxState::{
    self, Creating, Deleted, Deleting, Failed, Paused, Running, Starting, Stopped, Stopping,
};

/// One change of state; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The agent answered its first request.
    Ready,
    /// The container or the agent died underneath us.
    Died,
    /// A client (or a timeout) asked for the sandbox to go.
    Delete,
    /// A teardown (or a start's cleanup) could not finish; a later delete
    /// tries again.
    TeardownFailed,
    /// Processes frozen.
    Pause,
    /// Processes thawed.
    Resume,
    /// The container is being removed; the disk stays.
    Stop,
    /// The container is gone (or a start did not come up): only the disk
    /// is left.
    Halted,
    /// A stopped sandbox's container is being started on its disk.
    Start,
    /// Its agent answered again.
    Started,
    /// Torn down, but kept listed with why it ended (a timeout's delete).
    Ended,
    /// A restarted server could not settle the sandbox (its container
    /// would not go, or could not be asked about); a delete tries again.
    RecoveryFailed,
}

impl Transition {
    /// Every transition, for tests and docs.
    pub const ALL: [Transition; 12] = [
        Transition::Ready,
        Transition::Died,
        Transition::Delete,
        Transition::TeardownFailed,
        Transition::Pause,
        Transition::Resume,
        Transition::Stop,
        Transition::Halted,
        Transition::Start,
        Transition::Started,
        Transition::Ended,
        Transition::RecoveryFailed,
    ];

    /// The table: the states this transition may start from, and its end.
    pub const fn rule(self) -> (&'static [SandboxState], SandboxState) {
        match self {
            Transition::Ready => (&[Creating], Running),
            Transition::Died => (&[Running, Paused], Failed),
            Transition::Delete => (&[Running, Paused, Stopped, Failed], Deleting),
            Transition::TeardownFailed => (&[Creating, Deleting, Stopping, Starting], Failed),
            Transition::Pause => (&[Running], Paused),
            Transition::Resume => (&[Paused], Running),
            Transition::Stop => (&[Running, Paused], Stopping),
            Transition::Halted => (&[Stopping, Starting], Stopped),
            Transition::Start => (&[Stopped], Starting),
            Transition::Started => (&[Starting], Running),
            Transition::Ended => (&[Deleting], Deleted),
            Transition::RecoveryFailed => (
                &[
                    Creating, Deleting, Stopping, Starting, Running, Paused, Stopped,
                ],
                Failed,
            ),
        }
    }

    pub fn from(self) -> &'static [SandboxState] {
        self.rule().0
    }

    pub fn to(self) -> SandboxState {
        self.rule().1
    }

    /// Whether a sandbox in `state` may take this transition.
    pub fn allowed_from(self, state: SandboxState) -> bool {
        self.from().contains(&state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_matches_the_diagram() {
        let edges: Vec<(SandboxState, SandboxState)> = Transition::ALL
            .iter()
            .flat_map(|t| t.from().iter().map(move |from| (*from, t.to())))
            .collect();
        assert_eq!(
            edges,
            [
                (Creating, Running),
                (Running, Failed),
                (Paused, Failed),
                (Running, Deleting),
                (Paused, Deleting),
                (Stopped, Deleting),
                (Failed, Deleting),
                (Creating, Failed),
                (Deleting, Failed),
                (Stopping, Failed),
                (Starting, Failed),
                (Running, Paused),
                (Paused, Running),
                (Running, Stopping),
                (Paused, Stopping),
                (Stopping, Stopped),
                (Starting, Stopped),
                (Stopped, Starting),
                (Starting, Running),
                (Deleting, Deleted),
                (Creating, Failed),
                (Deleting, Failed),
                (Stopping, Failed),
                (Starting, Failed),
                (Running, Failed),
                (Paused, Failed),
                (Stopped, Failed),
            ]
        );
        // Nothing returns to `creating`, and nothing leaves `deleted` but
        // removal.
        for transition in Transition::ALL {
            assert_ne!(transition.to(), Creating);
            assert!(!transition.allowed_from(Deleted));
        }
        assert!(!Transition::Delete.allowed_from(Creating));
        assert!(!Transition::Delete.allowed_from(Deleting));
        // Every state but `deleted` has a way out.
        for state in SandboxState::ALL {
            let leaves = Transition::ALL.iter().any(|t| t.allowed_from(state));
            assert_eq!(leaves, state != Deleted, "{state:?}");
        }
    }
}

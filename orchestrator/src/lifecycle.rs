//! The sandbox lifecycle: every state change there is, in one table.
//!
//! ```text
//!   (create) ──► creating ──ready──► running ──delete──► deleting ──► (gone)
//!                   │                   │                    │
//!                   │                  died                  │
//!                   │                   ▼                    │
//!                   └──(start fails:  failed ◄──teardown─────┘
//!                       torn down,      │      failed
//!                       gone)           └──delete──► deleting
//! ```
//!
//! A sandbox enters the store as `creating` and leaves it by removal (a
//! finished teardown), so neither end is a transition. Everything in
//! between is a [`Transition`]: the states it may start from and the state
//! it leads to, written once in [`Transition::rule`]. The store applies a
//! transition with one conditional `UPDATE … WHERE state IN (from)`, so two
//! racing calls (two deletes, a delete and a death) cannot both win, and a
//! change the table does not allow cannot happen. A new state (the
//! lifecycle issue adds stopped and paused) is a new line in the table.

use sbx_api::SandboxState::{self, Creating, Deleting, Failed, Running};

/// One change of state; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The agent answered its first request.
    Ready,
    /// The container or the agent died underneath us.
    Died,
    /// A client asked for the sandbox to go.
    Delete,
    /// A teardown (or a start's cleanup) could not finish; a later delete
    /// tries again.
    TeardownFailed,
}

impl Transition {
    /// Every transition, for tests and docs.
    pub const ALL: [Transition; 4] = [
        Transition::Ready,
        Transition::Died,
        Transition::Delete,
        Transition::TeardownFailed,
    ];

    /// The table: the states this transition may start from, and its end.
    pub const fn rule(self) -> (&'static [SandboxState], SandboxState) {
        match self {
            Transition::Ready => (&[Creating], Running),
            Transition::Died => (&[Running], Failed),
            Transition::Delete => (&[Running, Failed], Deleting),
            Transition::TeardownFailed => (&[Creating, Deleting], Failed),
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
                (Running, Deleting),
                (Failed, Deleting),
                (Creating, Failed),
                (Deleting, Failed),
            ]
        );
        // Only a start leaves `creating` for `running`, and nothing returns
        // to `creating`.
        for transition in Transition::ALL {
            assert_ne!(transition.to(), Creating);
        }
        assert!(!Transition::Delete.allowed_from(Creating));
        assert!(!Transition::Delete.allowed_from(Deleting));
    }
}

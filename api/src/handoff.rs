//! What the orchestrator hands a sandbox's agent when it starts.
//!
//! The agent never binds its own socket in a sandbox: anything the sandbox
//! can write, its code can replace, and the orchestrator would then follow
//! a path chosen by the sandbox (a symlink to a neighbour's socket, say).
//! Instead the orchestrator binds the agent's listening socket on the host,
//! in a directory the sandbox cannot see, and passes the listening
//! descriptor into the sandbox once, at start: the agent connects to
//! [`crate::HANDOFF_SOCKET_PATH`] and receives one message, this header as
//! JSON with the descriptors attached (`SCM_RIGHTS`), in this order:
//!
//! 1. the listening socket the agent serves on;
//! 2. [`Handoff::tenant_cgroups`] open `cgroup.procs` files of the
//!    sandbox's tenant cgroups: the agent moves every command it starts into
//!    them, so the commands' pids and memory limits leave the agent headroom.

use serde::{Deserialize, Serialize};

/// Most descriptors one handoff carries (the listener and a few cgroups).
pub const HANDOFF_MAX_FDS: usize = 8;

/// The header of the handoff message; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    /// How many `cgroup.procs` descriptors follow the listener.
    pub tenant_cgroups: usize,
}

impl Handoff {
    /// How many descriptors travel with this header.
    pub fn fd_count(&self) -> usize {
        1 + self.tenant_cgroups
    }

    /// Checks a received header against the descriptors that came with it.
    pub fn validate(&self, received_fds: usize) -> Result<(), String> {
        if self.fd_count() > HANDOFF_MAX_FDS {
            return Err(format!(
                "handoff names {} descriptors, at most {HANDOFF_MAX_FDS} are allowed",
                self.fd_count()
            ));
        }
        if received_fds != self.fd_count() {
            return Err(format!(
                "handoff names {} descriptors but carried {received_fds}",
                self.fd_count()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_must_match_the_descriptors() {
        let handoff = Handoff { tenant_cgroups: 2 };
        assert_eq!(handoff.fd_count(), 3);
        assert!(handoff.validate(3).is_ok());
        assert!(handoff.validate(1).is_err());
        assert!(Handoff { tenant_cgroups: 20 }.validate(21).is_err());
    }
}

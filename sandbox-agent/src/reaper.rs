//! The one place that calls `waitpid`: zombie reaping for PID 1 without
//! stealing anyone's exit status.
//!
//! As PID 1 of its sandbox the agent inherits every orphan, so it must reap
//! with `waitpid(-1)`; but a per-child `waitpid(pid)` (what `tokio::process`
//! and `Child::wait` do) would race with that and lose statuses. So there is
//! exactly one reaper: on every SIGCHLD it collects all exited children and
//! hands each status to whoever registered that pid; orphans' statuses are
//! dropped.
//!
//! Pid reuse is what makes this subtle. Spawning and reaping take the same
//! lock, and `waitpid` runs only under it: a pid is registered before the
//! lock is released after `fork`, so a fast exit is always dispatched to its
//! owner, and an orphan's status (collected under the lock) can never be
//! handed to a new child that reused its pid. The lock also keeps the reaper
//! away from the private `waitpid` std does when `exec` fails.

use crate::error::AgentError;
use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    /// Decodes a raw `waitpid` status; `None` for stop/continue reports,
    /// which are not exits (the reaper never asks for them anyway).
    pub fn from_wait_status(raw: i32) -> Option<Self> {
        if libc::WIFEXITED(raw) {
            Some(ExitStatus::Exited(libc::WEXITSTATUS(raw)))
        } else if libc::WIFSIGNALED(raw) {
            Some(ExitStatus::Signaled(libc::WTERMSIG(raw)))
        } else {
            None
        }
    }

    /// The exit code as a shell reports it: `128 + N` for signal N.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled(signal) => 128 + signal,
        }
    }
}

/// A child's exit status, once the reaper has collected it. Clones all see
/// the same exit, so an exec's waiter and its output readers can each hold
/// one.
#[derive(Debug, Clone)]
pub struct ExitWatch {
    pid: i32,
    rx: watch::Receiver<Option<ExitStatus>>,
}

impl ExitWatch {
    /// The status if the child has already been reaped.
    pub fn status(&self) -> Option<ExitStatus> {
        *self.rx.borrow()
    }

    /// Waits for the exit.
    pub async fn wait(&mut self) -> Result<ExitStatus, AgentError> {
        let pid = self.pid;
        let status = self
            .rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| AgentError::ExitLost { pid })?;
        status.ok_or(AgentError::ExitLost { pid })
    }

    /// Resolves once the child has exited (or its status can no longer
    /// arrive); for callers that only need to know "it is over".
    pub async fn exited(&mut self) {
        let _ = self.rx.wait_for(Option::is_some).await;
    }
}

#[derive(Debug, Default)]
struct Registry {
    /// Children the agent spawned and has not seen exit yet, keyed by pid
    /// (which is also their process group id).
    children: HashMap<i32, watch::Sender<Option<ExitStatus>>>,
    /// Set at shutdown: no new children after the final sweep starts.
    closed: bool,
}

/// See the module docs. Shared as `Arc<Reaper>`.
#[derive(Debug, Default)]
pub struct Reaper {
    registry: Mutex<Registry>,
}

impl Reaper {
    /// Installs the SIGCHLD handler, reaps whatever already exited, and
    /// starts the reaping task. Must run inside the tokio runtime, before
    /// the first spawn.
    pub fn start() -> Result<Arc<Self>, AgentError> {
        let mut sigchld = signal(SignalKind::child()).map_err(|source| AgentError::Signal {
            signal: "SIGCHLD",
            source,
        })?;
        let reaper = Arc::new(Self::default());
        reaper.reap();
        let task_reaper = Arc::clone(&reaper);
        tokio::spawn(async move {
            // SIGCHLD deliveries coalesce; each wake-up reaps everything.
            while sigchld.recv().await.is_some() {
                task_reaper.reap();
            }
        });
        Ok(reaper)
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic elsewhere cannot leave the map half-updated: every
        // mutation is a single insert/remove. Keep reaping regardless.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spawns `command` and registers its pid before anyone can reap it.
    /// The caller must never `wait` on the returned `Child`.
    pub fn spawn(&self, command: &mut Command) -> Result<(Child, ExitWatch), AgentError> {
        let mut registry = self.lock();
        if registry.closed {
            return Err(AgentError::ShuttingDown);
        }
        let child = command.spawn().map_err(|source| AgentError::Spawn {
            program: command.get_program().to_string_lossy().into_owned(),
            source,
        })?;
        let pid = i32::try_from(child.id()).expect("pids fit in pid_t");
        let (tx, rx) = watch::channel(None);
        registry.children.insert(pid, tx);
        // Not needed for correctness (the SIGCHLD of a fast exit wakes the
        // reaper, which waits for this lock), but cheap insurance.
        reap_locked(&mut registry);
        Ok((child, ExitWatch { pid, rx }))
    }

    /// Collects every exited child and dispatches the statuses.
    pub fn reap(&self) {
        reap_locked(&mut self.lock());
    }

    /// How many spawned children have not exited yet.
    pub fn live_count(&self) -> usize {
        self.lock().children.len()
    }

    /// The pids (= process groups) of the children still running.
    pub fn running(&self) -> Vec<i32> {
        self.lock().children.keys().copied().collect()
    }

    /// Refuses further spawns and returns the pids (= process groups) of
    /// the children still running, for the shutdown sweep.
    pub fn close(&self) -> Vec<i32> {
        let mut registry = self.lock();
        registry.closed = true;
        registry.children.keys().copied().collect()
    }
}

fn reap_locked(registry: &mut Registry) {
    loop {
        let mut raw = 0;
        // SAFETY: waitpid writes only to `raw`, a live local; WNOHANG keeps
        // it from blocking while the lock is held.
        let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
        if pid == -1 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        // 0: children exist but none has exited; -1 (ECHILD): no children.
        if pid <= 0 {
            return;
        }
        let Some(status) = ExitStatus::from_wait_status(raw) else {
            continue;
        };
        match registry.children.remove(&pid) {
            Some(tx) => {
                tx.send_replace(Some(status));
            }
            None => tracing::trace!(pid, ?status, "reaped an orphan"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_wait_statuses() {
        // Layouts from <bits/waitstatus.h>: exit code in bits 8..16,
        // terminating signal in the low 7 bits.
        assert_eq!(
            ExitStatus::from_wait_status(3 << 8),
            Some(ExitStatus::Exited(3))
        );
        assert_eq!(
            ExitStatus::from_wait_status(9),
            Some(ExitStatus::Signaled(9))
        );
        // A stop report (0x7f in the low byte) is not an exit.
        assert_eq!(ExitStatus::from_wait_status((19 << 8) | 0x7f), None);
    }

    #[test]
    fn exit_codes_follow_shell_convention() {
        assert_eq!(ExitStatus::Exited(0).code(), 0);
        assert_eq!(ExitStatus::Exited(3).code(), 3);
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
        assert_eq!(ExitStatus::Signaled(15).code(), 143);
    }
}

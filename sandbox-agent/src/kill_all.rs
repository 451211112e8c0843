//! `POST /processes/kill-all`: the way back from a bomb.
//!
//! A background fork bomb keeps forking after the exec that started it has
//! returned, and fills the sandbox's tenant cgroup. Killing its process
//! groups one by one races with its forks, so as PID 1 the agent uses
//! `kill(-1, SIGKILL)`, which reaches every process of the sandbox but
//! PID 1 itself, and repeats it until none is left: a process forked while
//! one sweep ran is caught by the next. Orphans are the agent's children
//! and its reaper collects them; the call answers once `/proc` lists only
//! the agent, so the pids are free again and the next exec can fork.
//!
//! Outside a sandbox (tests on a host) `kill(-1)` would reach the whole
//! machine: there the agent kills only the process groups it started.

use crate::error::AgentError;
use crate::process::signal_group;
use crate::Agent;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sbx_api::KillAllResult;
use std::time::Duration;
use tokio::time::Instant;

/// How long the processes get to die; the kernel needs only to tear them
/// down, so this bounds a pathological case, not a normal one.
const DEADLINE: Duration = Duration::from_secs(10);
/// Between sweeps: long enough for killed processes to be reaped, short
/// enough that the call stays fast.
const SWEEP_PAUSE: Duration = Duration::from_millis(2);

/// Kills every process but the agent; see the module docs.
pub async fn kill_all(agent: &Agent) -> Result<KillAllResult, AgentError> {
    let is_init = std::process::id() == 1;
    let killed = if is_init {
        other_processes().len()
    } else {
        agent.reaper.live_count()
    };
    let deadline = Instant::now() + DEADLINE;
    loop {
        let groups = agent.reaper.running();
        if is_init {
            let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        } else {
            for &pgid in &groups {
                signal_group(pgid, Signal::SIGKILL);
            }
        }
        agent.reaper.reap();
        let left = if is_init {
            other_processes().len()
        } else {
            agent.reaper.live_count()
        };
        if left == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(AgentError::KillAll { left });
        }
        tokio::time::sleep(SWEEP_PAUSE).await;
    }
    tracing::info!(killed, "killed every process of the sandbox");
    Ok(KillAllResult {
        killed: u32::try_from(killed).unwrap_or(u32::MAX),
    })
}

/// Pids of every process in `/proc` but ours (zombies included: they
/// still hold their pid until reaped).
fn other_processes() -> Vec<i32> {
    let own = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != own)
        .collect()
}

//! Watching and killing a container's init process from the host.
//!
//! The init is never the server's child (it is the youki helper's, or after
//! a restart the host init's), so `waitpid` cannot wait for it. A pidfd
//! can: it becomes readable when the process exits, child or not, so
//! waiting needs neither polling nor sleeping. Reaping is the parent's job.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Whether `pid` is a live (not zombie) process.
pub(crate) fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name, which may
        // itself contain spaces and parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| !matches!(state, 'Z' | 'X')),
        Err(_) => false,
    }
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd (pidfds are always CLOEXEC).
    Ok(unsafe { OwnedFd::from_raw_fd(raw as i32) })
}

/// Waits until `pid` exits or `timeout` passes; true when it exited.
pub(crate) async fn wait_exit(pid: i32, timeout: Duration) -> io::Result<bool> {
    match tokio::time::timeout(timeout, exited(pid)).await {
        Ok(exited) => exited.map(|()| true),
        Err(_) => Ok(!is_alive(pid)),
    }
}

/// Resolves once `pid` exits (at once if it is gone already).
pub(crate) async fn exited(pid: i32) -> io::Result<()> {
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(err) if err.raw_os_error() == Some(libc::ESRCH) => return Ok(()),
        Err(err) => return Err(err),
    };
    // SAFETY: the AsyncFd owns the pidfd, so the fd stays open and is not
    // reused for as long as it is registered.
    let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }?;
    pidfd.readable().await.map(drop)
}

pub(crate) fn signal(pid: i32, signal: libc::c_int) {
    // SAFETY: kill(2) with a positive pid; ESRCH just means it is gone.
    unsafe { libc::kill(pid, signal) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_a_child_to_exit_and_times_out_on_a_live_one() {
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = sleeper.id() as i32;
        assert!(is_alive(pid));
        assert!(!wait_exit(pid, Duration::from_millis(50))
            .await
            .expect("wait"));
        signal(pid, libc::SIGKILL);
        assert!(wait_exit(pid, Duration::from_secs(10)).await.expect("wait"));
        assert!(!is_alive(pid), "a zombie counts as exited");
        sleeper.wait().expect("reap");
        assert!(wait_exit(pid, Duration::from_secs(1)).await.expect("gone"));
    }
}

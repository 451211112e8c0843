//! Starting a command in the sandbox: the layer every way of running
//! something (buffered exec, streamed exec, background processes) is built
//! on.
//!
//! [`spawn`] returns a [`Spawned`]: the pid, which is also the process group
//! id because each command starts its own session (so a timeout, a signal
//! request or shutdown reaches everything the command forked); an
//! [`ExitWatch`] fed by the [`Reaper`]; and the stdio pipes as async
//! endpoints. Output comes through [`OutputStream`], which knows when to stop
//! reading even if a background grandchild keeps the pipe open. Consumers
//! decide what to do with the chunks: collect them (`exec`), forward them as
//! events, or keep a log.
//!
//! In a sandbox every command moves itself into the tenant cgroups between
//! fork and exec (see `sbx_api::Handoff`), so a bomb fills them and not the
//! agent's headroom.
//!
//! We use `std::process::Command` rather than `tokio::process`, because the
//! latter reaps its own children and would fight the global reaper.

use crate::error::AgentError;
use crate::reaper::{ExitWatch, Reaper};
use crate::user::Identity;
use bytes::{Bytes, BytesMut};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::time::Instant;

/// After the command exits, output still in flight is read until the pipe
/// has been silent this long. Pipes whose writers are all gone reach EOF at
/// once, so this only costs time when a background process holds them open.
pub const POST_EXIT_IDLE: Duration = Duration::from_millis(100);

/// Upper bound on reading after exit, for a background process that keeps
/// writing to the command's pipes.
pub const POST_EXIT_LIMIT: Duration = Duration::from_secs(1);

const READ_CHUNK: usize = 64 * 1024;

/// The `cgroup.procs` files every command moves itself into (see
/// `sbx_api::Handoff`): set once at start in a sandbox, never outside one.
static TENANT_CGROUPS: OnceLock<Vec<File>> = OnceLock::new();

/// Makes every command from now on start in `cgroups` (open `cgroup.procs`
/// files). Only the first call counts.
pub fn set_tenant_cgroups(cgroups: Vec<File>) {
    if TENANT_CGROUPS.set(cgroups).is_err() {
        tracing::warn!("tenant cgroups were already set");
    }
}

/// What to run; built by the route from its request.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    /// Program and arguments; the program is looked up in the command's
    /// own `PATH` when it has no slash.
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    /// The complete environment (nothing is inherited).
    pub env: BTreeMap<String, String>,
    /// Give the command a stdin pipe; otherwise stdin is `/dev/null`.
    pub stdin: bool,
    /// Run as this user; as the agent's own (root) when `None`.
    pub identity: Option<Identity>,
}

/// A running command. Dropping it neither waits for nor kills the command;
/// see [`GroupKillGuard`] for that.
#[derive(Debug)]
pub struct Spawned {
    /// Pid of the command, and id of its process group.
    pub pid: i32,
    /// When the process was started, for durations.
    pub started: Instant,
    pub stdin: Option<pipe::Sender>,
    pub stdout: OutputStream,
    pub stderr: OutputStream,
    pub exit: ExitWatch,
}

/// Starts `spec` in its own session. Errors from `fork`/`exec` come back as
/// [`AgentError::Spawn`]; see [`is_program_error`] to tell "no such
/// program" from "no resources".
pub fn spawn(reaper: &Reaper, spec: &CommandSpec) -> Result<Spawned, AgentError> {
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| AgentError::InvalidRequest("cmd must name a program".into()))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.cwd)
        .stdin(if spec.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let identity = spec.identity.clone();
    let tenant: Vec<RawFd> = TENANT_CGROUPS
        .get()
        .map(|files| files.iter().map(AsRawFd::as_raw_fd).collect())
        .unwrap_or_default();
    // SAFETY: the hook runs in the forked child before exec, where only
    // async-signal-safe calls are allowed; it calls write(2) on descriptors
    // that live as long as the agent and setsid(2), which are such calls,
    // then `Identity::apply_in_child` (raw set*id syscalls on data built
    // before the fork), and builds io::Errors from errnos without allocating.
    unsafe {
        command.pre_exec(move || {
            // Into the tenant cgroups before anything else: from here on
            // the command and all it forks count against the sandbox's
            // limits, never the agent's headroom.
            for &fd in &tenant {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            nix::unistd::setsid().map_err(io::Error::from)?;
            match &identity {
                Some(identity) => identity.apply_in_child(),
                None => Ok(()),
            }
        });
    }
    let started = Instant::now();
    let (mut child, exit) = reaper.spawn(&mut command)?;
    let pid = i32::try_from(child.id()).expect("pids fit in pid_t");
    // From here on the child runs; if we cannot watch it, do not leave it
    // running unowned.
    let abandon = |source: io::Error| {
        signal_group(pid, Signal::SIGKILL);
        AgentError::Pipe { pid, source }
    };
    let stdin = match child.stdin.take() {
        Some(stdin) => Some(pipe::Sender::from_owned_fd(OwnedFd::from(stdin)).map_err(abandon)?),
        None => None,
    };
    let stdout = child.stdout.take().expect("stdout is piped");
    let stdout = pipe::Receiver::from_owned_fd(OwnedFd::from(stdout)).map_err(abandon)?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let stderr = pipe::Receiver::from_owned_fd(OwnedFd::from(stderr)).map_err(abandon)?;
    // `child` is dropped without waiting: the reaper owns its exit.
    Ok(Spawned {
        pid,
        started,
        stdin,
        stdout: OutputStream::new(stdout, exit.clone()),
        stderr: OutputStream::new(stderr, exit.clone()),
        exit,
    })
}

/// Whether a spawn error is about the program itself (missing, not
/// executable, bad cwd component…) — what a shell reports as exit 126/127 —
/// rather than the agent running out of something.
pub fn is_program_error(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(
            libc::ENOENT
                | libc::EACCES
                | libc::EPERM
                | libc::ENOEXEC
                | libc::ENOTDIR
                | libc::EISDIR
                | libc::ELOOP
                | libc::ENAMETOOLONG
                | libc::ETXTBSY
                | libc::E2BIG
        )
    )
}

/// Sends `signal` to process group `pgid`; a group that is already gone is
/// not an error.
pub fn signal_group(pgid: i32, signal: Signal) {
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(err) => tracing::warn!(pgid, %signal, %err, "cannot signal process group"),
    }
}

/// Kills a command's process group when dropped while armed: a consumer
/// whose client went away (its future was dropped) must not leave the
/// command running.
#[derive(Debug)]
pub struct GroupKillGuard {
    pgid: Option<i32>,
}

impl GroupKillGuard {
    pub fn new(pgid: i32) -> Self {
        Self { pgid: Some(pgid) }
    }

    /// The command finished normally; leave its group alone.
    pub fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupKillGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            tracing::debug!(pgid, "consumer went away, killing the command");
            signal_group(pgid, Signal::SIGKILL);
        }
    }
}

/// One output pipe of a command, read chunk by chunk until EOF — or, once
/// the command has exited, until the pipe stays silent for
/// [`POST_EXIT_IDLE`] (at most [`POST_EXIT_LIMIT`] in all), so a background
/// grandchild that inherited the pipe cannot hold the consumer hostage.
#[derive(Debug)]
pub struct OutputStream {
    pipe: pipe::Receiver,
    exit: ExitWatch,
    exited: bool,
    /// Set at the first read after exit.
    post_exit_deadline: Option<Instant>,
    done: bool,
    buf: BytesMut,
}

impl OutputStream {
    fn new(pipe: pipe::Receiver, exit: ExitWatch) -> Self {
        Self {
            pipe,
            exit,
            exited: false,
            post_exit_deadline: None,
            done: false,
            buf: BytesMut::new(),
        }
    }

    /// The next chunk of output, or `None` when the stream is over (EOF, a
    /// read error, or the post-exit grace ran out). Cancel-safe.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        self.buf.reserve(READ_CHUNK);
        let read = loop {
            if self.exited || self.exit.status().is_some() {
                self.exited = true;
                let now = Instant::now();
                let limit = *self.post_exit_deadline.get_or_insert(now + POST_EXIT_LIMIT);
                let idle = (now + POST_EXIT_IDLE).min(limit);
                match tokio::time::timeout_at(idle, self.pipe.read_buf(&mut self.buf)).await {
                    Ok(read) => break read,
                    Err(_) => break Ok(0),
                }
            }
            tokio::select! {
                biased;
                read = self.pipe.read_buf(&mut self.buf) => break read,
                () = self.exit.exited() => self.exited = true,
            }
        };
        match read {
            Ok(n) if n > 0 => Some(self.buf.split().freeze()),
            Ok(_) => {
                self.done = true;
                None
            }
            Err(err) => {
                tracing::debug!(%err, "output pipe read failed");
                self.done = true;
                None
            }
        }
    }
}

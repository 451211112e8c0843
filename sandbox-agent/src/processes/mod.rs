//! Background processes: `POST /processes` and the routes under
//! `/processes/{pid}` ([`routes`]).
//!
//! Unlike an exec, a background process outlives the request that started
//! it, so the agent keeps a record per process in [`Processes`], keyed by
//! pid (which is also the process group: a signal reaches everything the
//! process forked). Lifecycle: `running` → `exited`, the only transition,
//! made once the leader has exited *and* its output has been drained, so
//! that `wait` and the logs' final `exit` come after every byte of output.
//!
//! Output: one task per process (the *pump*) reads both pipes all the time,
//! so a process never blocks on a full pipe however few clients read it.
//! Each chunk goes into a ring buffer of the last `PROCESS_LOG_CAP` bytes
//! per stream (older output is dropped) and, under the same lock, into a
//! broadcast channel for the clients following the logs. A follower takes
//! its snapshot of the rings and subscribes while holding that lock, so
//! what it replays and what it then receives live neither overlap nor leave
//! a gap. The channel holds [`LIVE_CHUNKS`] chunks: a follower that falls
//! further behind (a slow client) skips what it missed rather than slowing
//! the process down — the rings still have it for a later `tail`.
//!
//! stdin is a pipe kept open until `?close=true` (or the process exits), so
//! clients can talk to interactive programs over several requests.
//!
//! Memory is bounded: at most [`MAX_EXITED`] exited records are kept (the
//! newest), and only the newest [`MAX_EXITED_WITH_LOGS`] of them keep their
//! output; older ones answer logs with just their `exit`.
//!
//! Shutdown needs nothing special: the processes are the reaper's children
//! like any exec, so the shutdown sweep signals their groups with the rest.
//! Pid reuse: a record's process is signalled only while the reaper has not
//! reported its exit, and a pid cannot be reused before that; a new process
//! with the pid of an old record replaces that record.

mod logs;
mod routes;

pub use logs::LogReader;
pub use routes::routes;

use crate::error::AgentError;
use crate::events::OutputKind;
use crate::exec::{command_spec, spawn_reason};
use crate::process::{self, is_program_error, OutputStream};
use crate::reaper::ExitWatch;
use crate::Agent;
use axum::body::Body;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use logs::Output;
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use sbx_api::{ProcessInfo, ProcessState, StartProcessRequest};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

/// Exited processes whose records are kept (the newest).
pub const MAX_EXITED: usize = 1000;

/// Exited processes whose output is kept (the newest).
pub const MAX_EXITED_WITH_LOGS: usize = 32;

/// Chunks a log follower may fall behind before it starts missing output.
pub const LIVE_CHUNKS: usize = 128;

/// The registry of background processes; see the module docs.
#[derive(Debug, Default)]
pub struct Processes {
    table: Mutex<HashMap<i32, Arc<Process>>>,
}

impl Processes {
    fn lock(&self) -> MutexGuard<'_, HashMap<i32, Arc<Process>>> {
        // Every mutation is a single insert/remove: nothing half-done to
        // fear from a poisoned lock.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a validated request in the background.
    pub fn start(
        agent: &Arc<Agent>,
        request: &StartProcessRequest,
    ) -> Result<ProcessInfo, AgentError> {
        let mut spec = command_spec(agent, &request.as_exec())?;
        spec.stdin = true;
        let spawned = process::spawn(&agent.reaper, &spec).map_err(|err| match err {
            AgentError::Spawn { program, source } if is_program_error(&source) => {
                AgentError::NotRunnable {
                    program,
                    reason: spawn_reason(&source),
                }
            }
            other => other,
        })?;
        tracing::debug!(pid = spawned.pid, program = %spec.argv[0], "background process started");
        let process = Arc::new(Process {
            pid: spawned.pid,
            name: request.name.clone(),
            cmd: spec.argv,
            started_at: Utc::now(),
            started: spawned.started,
            leader: spawned.exit,
            output: Mutex::new(Output::default()),
            live: broadcast::channel(LIVE_CHUNKS).0,
            stdin: tokio::sync::Mutex::new(spawned.stdin),
            ended: watch::channel(None).0,
        });
        agent
            .processes
            .lock()
            .insert(process.pid, Arc::clone(&process));
        tokio::spawn(pump(
            Arc::clone(agent),
            Arc::clone(&process),
            spawned.stdout,
            spawned.stderr,
        ));
        Ok(process.info())
    }

    pub fn get(&self, pid: i32) -> Result<Arc<Process>, AgentError> {
        self.lock()
            .get(&pid)
            .cloned()
            .ok_or(AgentError::ProcessNotFound { pid })
    }

    /// Every known process, oldest first.
    pub fn list(&self) -> Vec<ProcessInfo> {
        let mut infos: Vec<ProcessInfo> = self.lock().values().map(|p| p.info()).collect();
        infos.sort_by_key(|info| (info.started_at, info.pid));
        infos
    }

    /// Enforces [`MAX_EXITED`] and [`MAX_EXITED_WITH_LOGS`].
    fn prune(&self) {
        let mut table = self.lock();
        let mut exited: Vec<(DateTime<Utc>, i32)> = table
            .values()
            .filter_map(|process| process.ended().map(|ended| (ended.at, process.pid)))
            .collect();
        if exited.len() <= MAX_EXITED_WITH_LOGS {
            return;
        }
        exited.sort_unstable_by(|a, b| b.cmp(a));
        for (rank, (_, pid)) in exited.into_iter().enumerate() {
            if rank >= MAX_EXITED {
                table.remove(&pid);
            } else if rank >= MAX_EXITED_WITH_LOGS {
                if let Some(process) = table.get(&pid) {
                    process.lock_output().clear();
                }
            }
        }
    }
}

/// One background process.
#[derive(Debug)]
pub struct Process {
    pid: i32,
    name: Option<String>,
    cmd: Vec<String>,
    started_at: DateTime<Utc>,
    started: Instant,
    /// The reaper's report of the leader's exit (before output is drained).
    leader: ExitWatch,
    output: Mutex<Output>,
    /// Output as it arrives, then [`Live::Ended`]; sent under `output`.
    live: broadcast::Sender<Live>,
    /// `None` once closed. An async lock: a writer holds it while a large
    /// body streams in, so two writers never interleave.
    stdin: tokio::sync::Mutex<Option<pipe::Sender>>,
    /// Set (under `output`) when the process has exited and its output is
    /// drained.
    ended: watch::Sender<Option<Ended>>,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ended {
    exit_code: i32,
    at: DateTime<Utc>,
    duration: Duration,
}

/// What followers of the logs receive.
#[derive(Debug, Clone)]
enum Live {
    Output(OutputKind, Bytes),
    /// The last message: [`Process::ended`] is set.
    Ended,
}

impl Process {
    fn lock_output(&self) -> MutexGuard<'_, Output> {
        self.output.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ended(&self) -> Option<Ended> {
        *self.ended.borrow()
    }

    pub fn info(&self) -> ProcessInfo {
        let ended = self.ended();
        ProcessInfo {
            pid: self.pid,
            name: self.name.clone(),
            cmd: self.cmd.clone(),
            state: if ended.is_some() {
                ProcessState::Exited
            } else {
                ProcessState::Running
            },
            exit_code: ended.map(|ended| ended.exit_code),
            started_at: self.started_at,
            exited_at: ended.map(|ended| ended.at),
        }
    }

    /// Waits until the process has exited (and its output is drained).
    pub async fn wait(&self) -> ProcessInfo {
        let mut ended = self.ended.subscribe();
        // The sender lives in `self`, so this cannot fail.
        let _ = ended.wait_for(Option::is_some).await;
        self.info()
    }

    /// Signals the whole process group.
    pub fn signal(&self, signal: Signal) -> Result<(), AgentError> {
        let pid = self.pid;
        if self.leader.status().is_some() {
            return Err(AgentError::ProcessExited { pid });
        }
        match killpg(Pid::from_raw(pid), signal) {
            Ok(()) => Ok(()),
            Err(Errno::ESRCH) => Err(AgentError::ProcessExited { pid }),
            Err(source) => Err(AgentError::SendSignal {
                pid,
                signal: signal.as_str(),
                source,
            }),
        }
    }

    /// Streams `body` into stdin, then closes it if `close`.
    pub async fn write_stdin(&self, body: Body, close: bool) -> Result<(), AgentError> {
        let pid = self.pid;
        let mut stdin = self.stdin.lock().await;
        if self.leader.status().is_some() {
            *stdin = None;
            return Err(AgentError::ProcessExited { pid });
        }
        let pipe = stdin.as_mut().ok_or(AgentError::StdinClosed { pid })?;
        let mut leader = self.leader.clone();
        // A grandchild may hold the pipe open without reading it; stop
        // writing when the process itself is gone.
        let written = tokio::select! {
            written = write_body(pipe, body, pid) => written,
            () = leader.exited() => Err(AgentError::ProcessExited { pid }),
        };
        let broken = matches!(
            written,
            Err(AgentError::ProcessExited { .. } | AgentError::StdinClosed { .. })
        );
        if close || broken {
            *stdin = None;
        }
        written
    }

    /// Keeps one output chunk: into the ring and out to the followers.
    fn push(&self, kind: OutputKind, chunk: &[u8]) {
        let mut output = self.lock_output();
        output.ring(kind).push(chunk);
        // A copy: the read buffer's chunk would pin its whole 64 KiB
        // allocation for as long as a slow follower leaves it queued.
        // No followers is not an error.
        let _ = self
            .live
            .send(Live::Output(kind, Bytes::copy_from_slice(chunk)));
    }

    fn end(&self, exit_code: i32) {
        if let Ok(mut stdin) = self.stdin.try_lock() {
            *stdin = None;
        }
        let ended = Ended {
            exit_code,
            at: Utc::now(),
            duration: self.started.elapsed(),
        };
        let _output = self.lock_output();
        self.ended.send_replace(Some(ended));
        let _ = self.live.send(Live::Ended);
    }
}

async fn write_body(pipe: &mut pipe::Sender, body: Body, pid: i32) -> Result<(), AgentError> {
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|err| {
            AgentError::InvalidRequest(format!("cannot read request body: {err}"))
        })?;
        pipe.write_all(&chunk).await.map_err(|source| {
            if source.kind() == std::io::ErrorKind::BrokenPipe {
                AgentError::StdinClosed { pid }
            } else {
                AgentError::Stdin { pid, source }
            }
        })?;
    }
    Ok(())
}

/// Reads the process's output until it is drained, then records the end.
async fn pump(
    agent: Arc<Agent>,
    process: Arc<Process>,
    stdout: OutputStream,
    stderr: OutputStream,
) {
    let mut leader = process.leader.clone();
    let ((), (), status) = tokio::join!(
        collect(&process, OutputKind::Stdout, stdout),
        collect(&process, OutputKind::Stderr, stderr),
        leader.wait(),
    );
    let exit_code = status.map_or_else(
        |err| {
            tracing::error!(%err, "background process lost");
            -1
        },
        |status| status.code(),
    );
    tracing::debug!(pid = process.pid, exit_code, "background process exited");
    process.end(exit_code);
    agent.processes.prune();
}

async fn collect(process: &Process, kind: OutputKind, mut stream: OutputStream) {
    while let Some(chunk) = stream.next_chunk().await {
        process.push(kind, &chunk);
    }
}

/// `TERM`, `SIGTERM`, `term` or `15`.
pub fn parse_signal(text: &str) -> Result<Signal, AgentError> {
    let unknown = || AgentError::UnknownSignal {
        signal: text.to_owned(),
    };
    let trimmed = text.trim();
    if let Ok(number) = trimmed.parse::<i32>() {
        return Signal::try_from(number).map_err(|_| unknown());
    }
    let upper = trimmed.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse().map_err(|_| unknown())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_or_number() {
        for (text, signal) in [
            ("TERM", Signal::SIGTERM),
            ("SIGTERM", Signal::SIGTERM),
            ("kill", Signal::SIGKILL),
            ("USR1", Signal::SIGUSR1),
            ("CONT", Signal::SIGCONT),
            ("9", Signal::SIGKILL),
            ("2", Signal::SIGINT),
        ] {
            assert_eq!(parse_signal(text).expect(text), signal, "{text}");
        }
        for bad in ["", "NOPE", "SIG", "0", "-1", "999", "TERM9"] {
            let err = parse_signal(bad).expect_err(bad);
            assert!(matches!(err, AgentError::UnknownSignal { .. }), "{bad}");
        }
    }
}

//! Persistent shell sessions: one shell per session whose `cd`, `export`,
//! functions and `$?` carry over from one command to the next.
//!
//! | route | answer |
//! |---|---|
//! | `POST /sessions` (CreateSessionRequest) | 201 Session |
//! | `GET /sessions` | 200 SessionList |
//! | `DELETE /sessions/{sid}` | 204 |
//! | `POST /sessions/{sid}/exec` (SessionExecRequest) | 200 ExecResult, or NDJSON ExecEvents |
//! | `POST /sessions/{sid}/signal` (SignalRequest) | 204; 409 when no command runs |
//!
//! **The shell.** `bash --noprofile --norc` (else `/bin/sh`), started like
//! any command ([`crate::process::spawn`]: its own session and process
//! group, the tenant cgroups, the request's user). Its stdin and stdout
//! are the agent's *control channel*, and carry nothing else: commands
//! never read the shell's stdin nor write to its stdout. For each command
//! the agent writes the command's text to a file in the session's private
//! directory, makes two fresh FIFOs there, and writes one control line to
//! the shell, which
//! 1. restores `$?` to the previous command's status (`__sbx_status N && :`
//!    — the `&& :` keeps a `set -e` from ending the shell on it),
//! 2. sources the file (`. file`, so `cd`, `export`, functions and `exit`
//!    act on the shell itself) with stdin from `/dev/null` and stdout and
//!    stderr on the two FIFOs,
//! 3. prints the status on the control channel.
//!
//! So the output the client gets is exactly what the command wrote —
//! no markers to strip, a missing final newline kept — and the status line
//! cannot be faked or hidden by it. A command that reads stdin gets EOF at
//! once. `exit N` ends the shell: the control channel closes, the answer
//! carries `N` from the shell's exit status, and the session is gone.
//!
//! **Output.** The agent opens each FIFO's read end (non-blocking) before
//! the shell opens the write end, and keeps a write end of its own, so no
//! EOF comes early. Once the status line arrives, everything the command
//! wrote is in the FIFOs (pipe writes complete before the writer goes on),
//! so the agent reads them until they are empty, then closes its own write
//! end and hands the read ends to a task that discards whatever background
//! jobs still write, until real EOF. A job left running (`sleep 1000 &`, a
//! loop that keeps printing) therefore never delays the answer, never
//! reaches the next command's output (that one gets new FIFOs), and never
//! dies of `SIGPIPE`. The buffered answer keeps [`DEFAULT_OUTPUT_CAP`]
//! bytes per stream like `POST /exec`; the streamed one is paced by its
//! client like a streamed exec.
//!
//! **Stopping a command, not the session.** Without job control a
//! command's processes share the shell's process group, so they are found
//! instead: the shell's children that did not exist before the command
//! started (pid and start time, against pid reuse), and their descendants.
//! A timeout *aborts* the command in the shell, then `SIGKILL`s them: the
//! agent writes the status to report into the session directory and sends
//! the shell `SIGUSR2`, whose trap (set by every control line) makes the
//! `.` return as soon as the foreground process is gone, so the rest of
//! the command's text is skipped, even a loop made of builtins only. (In
//! the other order the shell could run the next line before the signal
//! arrived; found by the timeout test under load.) The timeout repeats this every
//! [`ABORT_WAIT`] (a `return` leaves one function at a time) for up to
//! [`ABORT_ROUNDS`] rounds; if the status still has not come (the command
//! replaced the trap, or blocks in a builtin), the shell is killed: the
//! answer says `timed_out` and the session is gone. A signal request
//! delivers the signal to the command's processes, and for the signals that
//! mean "stop" (`stops_command`) also aborts once, so like Ctrl-C at a
//! prompt it ends the whole command. Either way `$?` afterwards is what the
//! answer said.
//!
//! **Lifecycle.**
//!
//! ```text
//!            exec               status line
//!   idle ───────────► busy ───────────────────► idle
//!    │                  │  shell exits (exit N, killed after a timeout)
//!    │ DELETE,          ▼
//!    └─ shell dies ─► gone (404; its processes are killed, its directory
//!                           removed)
//! ```
//!
//! One command at a time: the shell is behind an async lock that an exec
//! takes without waiting (409 when it is held) and releases when the
//! command is over. The command runs in a task, not in the handler: a
//! client that leaves does not stop it half way (its `cd` or `export`
//! still happen); its output is then dropped. Sessions are capped at
//! [`MAX_SESSIONS`].
//!
//! With `/bin/sh` (dash) as the fallback, a syntax error in a command ends
//! the shell, as POSIX allows for an error in a special built-in (`.`).

use crate::env::command_env;
use crate::error::AgentError;
use crate::events::{ndjson_response, OutputKind, Utf8Decoder};
use crate::exec::CappedBuffer;
use crate::process::{self, signal_group, CommandSpec, OutputStream};
use crate::processes::parse_signal;
use crate::pty::IdParam;
use crate::reaper::ExitWatch;
use crate::server::JsonBody;
use crate::stream::EVENT_BUFFER;
use crate::user::Identity;
use crate::Agent;
use axum::extract::State;
use axum::http::header::ACCEPT;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sbx_api::{
    CreateSessionRequest, ExecEvent, ExecResult, Session as SessionInfo, SessionExecRequest,
    SessionList, SignalRequest, DEFAULT_OUTPUT_CAP, NDJSON,
};
use std::collections::{HashMap, HashSet};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot, watch, OwnedMutexGuard};
use tokio::time::Instant;

/// Sessions one agent keeps at most.
pub const MAX_SESSIONS: usize = 64;

/// Between two rounds of stopping a timed-out command.
pub const ABORT_WAIT: Duration = Duration::from_millis(50);

/// Rounds of stopping a timed-out command before the shell is killed.
pub const ABORT_ROUNDS: u32 = 10;

/// The signal whose trap makes the shell abandon the command it sources
/// (`USR2` in [`PreparedCommand::control_line`]'s `trap`).
const ABORT_SIGNAL: Signal = Signal::SIGUSR2;

/// What a timed-out command reports, as if killed by `SIGKILL` (like a
/// timed-out exec).
const TIMEOUT_STATUS: i32 = 128 + Signal::SIGKILL as i32;

/// The abort trap's status when no abort was asked for (someone else sent
/// the signal): as if killed by it.
const STRAY_ABORT_STATUS: i32 = 128 + ABORT_SIGNAL as i32;

/// Shells tried in order, with the arguments that keep them from reading
/// any profile or rc file (those may print, or read stdin).
const SHELLS: &[(&str, &[&str])] = &[("/bin/bash", &["--noprofile", "--norc"]), ("/bin/sh", &[])];

/// The file, in the session directory, that tells the abort trap its
/// status.
const ABORT_FILE: &str = "abort";

const READ_CHUNK: usize = 64 * 1024;

/// Non-blocking reads of a FIFO after the command finished: enough to empty
/// it several times over, and a bound if a background job refills it as
/// fast as it drains.
const DRAIN_READS: usize = 64;

/// Longest control line the agent accepts; a longer one is not ours.
const MAX_CONTROL_LINE: usize = 4096;

/// Deepest process tree walked when looking for a command's processes.
const MAX_TREE_DEPTH: usize = 1024;

/// The routes, with the session table as an extension.
pub fn routes() -> Router<Arc<Agent>> {
    Router::new()
        .route("/sessions", post(create).get(list))
        .route("/sessions/{sid}", delete(remove))
        .route("/sessions/{sid}/exec", post(exec))
        .route("/sessions/{sid}/signal", post(signal))
        .layer(Extension(Arc::new(Sessions::default())))
}

async fn create(
    State(agent): State<Arc<Agent>>,
    Extension(sessions): Extension<Arc<Sessions>>,
    JsonBody(request): JsonBody<CreateSessionRequest>,
) -> Result<(StatusCode, Json<SessionInfo>), AgentError> {
    request.validate().map_err(AgentError::InvalidRequest)?;
    let session = Sessions::open(&sessions, &agent, &request)?;
    Ok((StatusCode::CREATED, Json(session.info())))
}

async fn list(Extension(sessions): Extension<Arc<Sessions>>) -> Json<SessionList> {
    Json(SessionList {
        sessions: sessions.list(),
    })
}

async fn remove(
    Extension(sessions): Extension<Arc<Sessions>>,
    IdParam(sid): IdParam,
) -> Result<StatusCode, AgentError> {
    let session = sessions.forget(&sid)?;
    // The watcher removes its directory once the shell is gone.
    session.kill_everything();
    Ok(StatusCode::NO_CONTENT)
}

async fn signal(
    Extension(sessions): Extension<Arc<Sessions>>,
    IdParam(sid): IdParam,
    JsonBody(request): JsonBody<SignalRequest>,
) -> Result<StatusCode, AgentError> {
    let signal = parse_signal(&request.signal)?;
    sessions.get(&sid)?.signal(signal)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Buffered, or streamed when the body says `stream` or the client accepts
/// NDJSON; either way the command runs in its own task (see the module
/// docs).
async fn exec(
    Extension(sessions): Extension<Arc<Sessions>>,
    IdParam(sid): IdParam,
    headers: HeaderMap,
    JsonBody(request): JsonBody<SessionExecRequest>,
) -> Result<Response, AgentError> {
    request.validate().map_err(AgentError::InvalidRequest)?;
    let session = sessions.get(&sid)?;
    let shell = session.claim(&sessions)?;
    let command = match PreparedCommand::prepare(&session, &shell, request.command).await {
        Ok(command) => command,
        Err(err) => {
            session.release(shell);
            return Err(err);
        }
    };
    let timeout = request.timeout_ms.map(Duration::from_millis);
    let pid = session.leader.pid;
    if request.stream || accepts_ndjson(&headers) {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        tx.try_send(ExecEvent::Start { pid })
            .expect("an empty channel has room");
        let sinks = [OutputKind::Stdout, OutputKind::Stderr].map(|kind| OutputSink::Stream {
            kind,
            decoder: Utf8Decoder::default(),
            events: Some(tx.clone()),
        });
        tokio::spawn(async move {
            let outcome = run(sessions, session, shell, command, timeout, sinks).await;
            let [mut stdout, mut stderr] = outcome.output;
            stdout.finish().await;
            stderr.finish().await;
            let _ = tx
                .send(ExecEvent::Exit {
                    exit_code: outcome.exit_code,
                    duration_ms: millis(outcome.duration),
                    timed_out: outcome.timed_out,
                })
                .await;
        });
        let events = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|event| (event, rx))
        });
        return Ok(ndjson_response(events));
    }
    let sinks = [(); 2].map(|()| OutputSink::Collect(CappedBuffer::new(DEFAULT_OUTPUT_CAP)));
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let outcome = run(sessions, session, shell, command, timeout, sinks).await;
        let _ = tx.send(outcome.into_result());
    });
    // Only a panic in the task drops the sender.
    let result = rx.await.map_err(|_| AgentError::ExitLost { pid })?;
    Ok(Json(result).into_response())
}

/// As the agent's `POST /exec` reads it.
fn accepts_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|range| range.split(';').next().map(str::trim) == Some(NDJSON))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The agent's sessions, by id.
#[derive(Debug, Default)]
pub struct Sessions {
    table: Mutex<HashMap<String, Arc<Session>>>,
    next_id: AtomicU64,
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Session>>> {
        // Every mutation is a single insert or remove.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, id: &str) -> Result<Arc<Session>, AgentError> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::SessionNotFound { id: id.to_owned() })
    }

    fn forget(&self, id: &str) -> Result<Arc<Session>, AgentError> {
        self.lock()
            .remove(id)
            .ok_or_else(|| AgentError::SessionNotFound { id: id.to_owned() })
    }

    /// Forgets `session` if the table still holds it (not a newer one).
    fn forget_if_current(&self, session: &Arc<Session>) {
        let mut table = self.lock();
        if table
            .get(&session.id)
            .is_some_and(|held| Arc::ptr_eq(held, session))
        {
            table.remove(&session.id);
        }
    }

    /// Every session, oldest first.
    fn list(&self) -> Vec<SessionInfo> {
        let mut sessions: Vec<SessionInfo> = self.lock().values().map(|s| s.info()).collect();
        sessions.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        sessions
    }

    /// Starts a shell for a validated request.
    fn open(
        sessions: &Arc<Self>,
        agent: &Agent,
        request: &CreateSessionRequest,
    ) -> Result<Arc<Session>, AgentError> {
        let identity = request
            .user
            .as_deref()
            .or(agent.config.default_user.as_deref())
            .map(Identity::resolve)
            .transpose()?;
        let cwd = match &request.cwd {
            Some(cwd) => crate::pty::checked_cwd(cwd)?,
            None => agent.config.workdir.clone(),
        };
        let user_env = identity.as_ref().map(Identity::env).unwrap_or_default();
        let owner = identity
            .as_ref()
            .filter(|identity| identity.uid != 0)
            .map(|identity| (identity.uid, identity.gid));
        let (program, args) = shell_program();
        let spec = CommandSpec {
            argv: std::iter::once(program)
                .chain(args.iter().copied())
                .map(str::to_owned)
                .collect(),
            cwd,
            env: command_env(&agent.config.base_env, &user_env, &request.env),
            stdin: true,
            identity,
        };
        let mut table = sessions.lock();
        if table.len() >= MAX_SESSIONS {
            return Err(AgentError::TooManyShells {
                what: "sessions",
                limit: MAX_SESSIONS,
            });
        }
        let id = format!("s{}", sessions.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        let dir = private_dir(&id, owner)?;
        let spawned = match process::spawn(&agent.reaper, &spec) {
            Ok(spawned) => spawned,
            Err(err) => {
                remove_dir(&dir);
                // A shell the sandbox lacks (or a cwd it lacks) is the
                // caller's to fix, as for a terminal's command.
                return Err(match err {
                    AgentError::Spawn { program, source } if process::is_program_error(&source) => {
                        AgentError::NotRunnable {
                            program,
                            reason: crate::exec::spawn_reason(&source),
                        }
                    }
                    other => other,
                });
            }
        };
        let stdin = spawned.stdin.expect("the shell's stdin is piped");
        tokio::spawn(discard_shell_errors(spawned.pid, spawned.stderr));
        let session = Arc::new(Session {
            id: id.clone(),
            leader: SessionLeader::new(spawned.pid),
            created_at: Utc::now(),
            dir,
            owner,
            exit: spawned.exit,
            shell: Arc::new(tokio::sync::Mutex::new(Shell {
                stdin,
                control: ControlChannel::new(spawned.stdout),
                last_status: 0,
                next_command: 0,
            })),
            busy: AtomicBool::new(false),
            running: Mutex::new(None),
            commands: AtomicU64::new(0),
        });
        table.insert(id, Arc::clone(&session));
        drop(table);
        tokio::spawn(watch_shell(Arc::clone(sessions), Arc::clone(&session)));
        let pid = session.leader.pid;
        tracing::debug!(id = %session.id, pid, shell = program, "session started");
        Ok(session)
    }
}

fn shell_program() -> (&'static str, &'static [&'static str]) {
    SHELLS
        .iter()
        .copied()
        .find(|(shell, _)| Path::new(shell).exists())
        .unwrap_or(SHELLS[SHELLS.len() - 1])
}

/// A directory only the session's user (and the agent) can enter, for the
/// command files and FIFOs. The agent's pid and the clock make the name
/// unique among agents sharing `/tmp` (tests) and across restarts.
fn private_dir(id: &str, owner: Option<(libc::uid_t, libc::gid_t)>) -> Result<PathBuf, AgentError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "sbx-session-{}-{id}-{nanos:08x}",
        std::process::id()
    ));
    let setup = |source| AgentError::ShellSetup {
        op: format!("make the session directory {}", dir.display()),
        source,
    };
    DirBuilder::new().mode(0o700).create(&dir).map_err(setup)?;
    if let Err(err) = chown(&dir, owner) {
        remove_dir(&dir);
        return Err(setup(err));
    }
    Ok(dir)
}

fn chown(path: &Path, owner: Option<(libc::uid_t, libc::gid_t)>) -> io::Result<()> {
    match owner {
        Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid)),
        None => Ok(()),
    }
}

fn remove_dir(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => {
            tracing::warn!(dir = %dir.display(), %err, "cannot remove session directory");
        }
        _ => {}
    }
}

/// The shell's own stderr carries nothing of the commands' (theirs goes to
/// the FIFOs); it is read so the shell never blocks on it.
async fn discard_shell_errors(pid: i32, mut stderr: OutputStream) {
    while let Some(chunk) = stderr.next_chunk().await {
        tracing::debug!(pid, text = %String::from_utf8_lossy(&chunk), "session shell stderr");
    }
}

/// Ends the session when its shell goes, whatever the reason (`exit`,
/// DELETE, a kill-all).
async fn watch_shell(sessions: Arc<Sessions>, session: Arc<Session>) {
    let mut exit = session.exit.clone();
    exit.exited().await;
    session.end(&sessions);
}

/// One session; see the module docs.
#[derive(Debug)]
pub struct Session {
    id: String,
    /// The shell: pid, and its session for [`Session::kill_everything`].
    leader: SessionLeader,
    created_at: DateTime<Utc>,
    /// See [`private_dir`].
    dir: PathBuf,
    /// Who the files in `dir` must belong to; `None` for root.
    owner: Option<(libc::uid_t, libc::gid_t)>,
    exit: ExitWatch,
    /// Held by the command that runs.
    shell: Arc<tokio::sync::Mutex<Shell>>,
    /// Set while the lock on `shell` is held by an exec; for listings,
    /// which must not touch the lock itself.
    busy: AtomicBool,
    /// The shell's children before the running command started; `None`
    /// when no command runs.
    running: Mutex<Option<HashSet<ProcessKey>>>,
    commands: AtomicU64,
}

/// The agent's end of the control channel, and what it remembers between
/// commands.
#[derive(Debug)]
struct Shell {
    stdin: pipe::Sender,
    control: ControlChannel,
    /// What `$?` is restored to before the next command.
    last_status: i32,
    next_command: u64,
}

impl Session {
    fn info(&self) -> SessionInfo {
        SessionInfo {
            id: self.id.clone(),
            pid: self.leader.pid,
            busy: self.busy.load(Ordering::Relaxed),
            commands: self.commands.load(Ordering::Relaxed),
            created_at: self.created_at,
        }
    }

    fn lock_running(&self) -> MutexGuard<'_, Option<HashSet<ProcessKey>>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shell for one command, or 409 while another runs (404 if the
    /// shell has died and the watcher has not caught up yet).
    fn claim(&self, sessions: &Arc<Sessions>) -> Result<OwnedMutexGuard<Shell>, AgentError> {
        let shell =
            Arc::clone(&self.shell)
                .try_lock_owned()
                .map_err(|_| AgentError::SessionBusy {
                    id: self.id.clone(),
                })?;
        if self.exit.status().is_some() {
            if let Some(session) = sessions.lock().get(&self.id).cloned() {
                session.end(sessions);
            }
            return Err(AgentError::SessionNotFound {
                id: self.id.clone(),
            });
        }
        self.busy.store(true, Ordering::Relaxed);
        Ok(shell)
    }

    fn release(&self, shell: OwnedMutexGuard<Shell>) {
        self.busy.store(false, Ordering::Relaxed);
        drop(shell);
    }

    /// Delivers `signal` to the running command; see the module docs.
    fn signal(&self, signal: Signal) -> Result<(), AgentError> {
        let running = self.lock_running();
        let baseline = running.as_ref().ok_or_else(|| AgentError::SessionIdle {
            id: self.id.clone(),
        })?;
        // The abort first: the shell must have it pending when its
        // foreground process dies, or it may run the next line first.
        if stops_command(signal) {
            self.abort(128 + signal as i32);
        }
        self.signal_command(baseline, signal);
        Ok(())
    }

    /// Sends `signal` to the processes of the running command (not the
    /// shell, nor jobs earlier commands left running).
    fn signal_command(&self, baseline: &HashSet<ProcessKey>, signal: Signal) {
        let table = process_table();
        for pid in command_processes(&table, self.leader.pid, baseline) {
            match kill(Pid::from_raw(pid), signal) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(err) => tracing::debug!(pid, %signal, %err, "cannot signal a session command"),
            }
        }
    }

    /// Makes the shell abandon the command it sources, reporting `status`.
    fn abort(&self, status: i32) {
        if let Err(err) = std::fs::write(self.dir.join(ABORT_FILE), format!("{status}\n")) {
            tracing::warn!(id = %self.id, %err, "cannot record the abort status");
        }
        match kill(Pid::from_raw(self.leader.pid), ABORT_SIGNAL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(err) => tracing::warn!(id = %self.id, %err, "cannot abort a session command"),
        }
    }

    /// `SIGKILL` for the shell and every process of its session.
    fn kill_everything(&self) {
        if self.exit.status().is_none() {
            signal_group(self.leader.pid, Signal::SIGKILL);
        }
        self.leader.signal_session(Signal::SIGKILL);
    }

    /// The session is over: out of the table, its processes killed (jobs
    /// left behind could no longer be reached), its directory removed.
    /// Idempotent.
    fn end(self: &Arc<Self>, sessions: &Sessions) {
        sessions.forget_if_current(self);
        self.kill_everything();
        remove_dir(&self.dir);
        tracing::debug!(id = %self.id, "session ended");
    }
}

/// The last reference goes once the session has ended, or when the agent
/// stops before the watcher could end it. Its processes need nothing here:
/// without job control they are all in the shell's process group, which
/// the shutdown sweep kills.
impl Drop for Session {
    fn drop(&mut self) {
        remove_dir(&self.dir);
    }
}

/// `SIGINT`, `SIGTERM`, `SIGKILL`, `SIGHUP` and `SIGQUIT` stop the whole
/// command, like Ctrl-C at a prompt; other signals only reach its
/// processes.
fn stops_command(signal: Signal) -> bool {
    matches!(
        signal,
        Signal::SIGINT | Signal::SIGTERM | Signal::SIGKILL | Signal::SIGHUP | Signal::SIGQUIT
    )
}

/// One command's files, ready for the shell: its text, and its two FIFOs,
/// open at our end.
#[derive(Debug)]
struct PreparedCommand {
    script: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
    /// Our own write ends, so the FIFOs see no EOF before the shell has
    /// opened them, nor while it holds them.
    writers: [File; 2],
}

impl PreparedCommand {
    /// Writes the text and makes the FIFOs (on a blocking thread: the text
    /// may be tens of megabytes).
    async fn prepare(session: &Session, shell: &Shell, text: String) -> Result<Self, AgentError> {
        let number = shell.next_command;
        let dir = session.dir.clone();
        let owner = session.owner;
        let files = tokio::task::spawn_blocking(move || make_files(&dir, number, &text, owner))
            .await
            .map_err(|err| AgentError::ShellSetup {
                op: "prepare a session command".into(),
                source: io::Error::other(err),
            })?
            .map_err(|source| AgentError::ShellSetup {
                op: format!("prepare a command in session {}", session.id),
                source,
            })?;
        let receiver = |file: File| {
            pipe::Receiver::from_file(file).map_err(|source| AgentError::ShellSetup {
                op: "watch a session command's output".into(),
                source,
            })
        };
        let CommandFiles {
            script,
            fifos: [stdout_path, stderr_path],
            readers: [stdout, stderr],
            writers,
        } = files;
        Ok(Self {
            stdout: receiver(stdout)?,
            stderr: receiver(stderr)?,
            script,
            stdout_path,
            stderr_path,
            writers,
        })
    }

    /// What the shell reads: see the module docs. Paths are quoted; the
    /// trap refers to the abort file through a variable so its own text
    /// needs no second level of quoting.
    fn control_line(&self, abort_file: &Path, previous_status: i32) -> String {
        format!(
            "__sbx_abort={abort}; \
             trap '[ \"${{__sbx_in-}}\" = 1 ] && {{ read -r __sbx_rc 2>/dev/null <\"$__sbx_abort\" \
             || __sbx_rc={stray}; return \"$__sbx_rc\"; }}' USR2; \
             __sbx_status() {{ return \"$1\"; }}; __sbx_in=1; __sbx_status {previous} && :; \
             . {script} </dev/null >{stdout} 2>{stderr}; \
             __sbx_rc=$?; __sbx_in=; \\command printf '%s\\n' \"$__sbx_rc\"\n",
            abort = quote(abort_file),
            stray = STRAY_ABORT_STATUS,
            previous = previous_status.clamp(0, 255),
            script = quote(&self.script),
            stdout = quote(&self.stdout_path),
            stderr = quote(&self.stderr_path),
        )
    }

    fn remove_files_at(dir: &Path, paths: [&Path; 3]) {
        let abort = dir.join(ABORT_FILE);
        for path in paths.into_iter().chain([abort.as_path()]) {
            match std::fs::remove_file(path) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => {
                    tracing::debug!(path = %path.display(), %err, "cannot remove a command file");
                }
                _ => {}
            }
        }
    }
}

/// The files of command `number`, made on a blocking thread.
struct CommandFiles {
    script: PathBuf,
    fifos: [PathBuf; 2],
    readers: [File; 2],
    writers: [File; 2],
}

fn make_files(
    dir: &Path,
    number: u64,
    text: &str,
    owner: Option<(libc::uid_t, libc::gid_t)>,
) -> io::Result<CommandFiles> {
    let script = dir.join(format!("command-{number}"));
    let mut contents = text.to_owned();
    // A here-document on the last line needs its newline.
    if !contents.ends_with('\n') {
        contents.push('\n');
    }
    std::fs::write(&script, contents)?;
    chown(&script, owner)?;
    let fifos = ["stdout", "stderr"].map(|name| dir.join(format!("{name}-{number}")));
    for fifo in &fifos {
        nix::unistd::mkfifo(
            fifo,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .map_err(io::Error::from)?;
        chown(fifo, owner)?;
    }
    // Non-blocking opens: the read end first (it needs no writer), then
    // our write end (which needs a reader).
    let open_fifo = |fifo: &Path, write: bool| {
        OpenOptions::new()
            .read(!write)
            .write(write)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo)
    };
    let readers = [open_fifo(&fifos[0], false)?, open_fifo(&fifos[1], false)?];
    let writers = [open_fifo(&fifos[0], true)?, open_fifo(&fifos[1], true)?];
    Ok(CommandFiles {
        script,
        fifos,
        readers,
        writers,
    })
}

/// `'…'` for the shell.
fn quote(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', r"'\''"))
}

/// How a command ended, as the control channel told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The status line came; the shell lives on.
    Finished(i32),
    /// The shell exited (`exit N`, or killed); the session is over.
    ShellExited(i32),
}

/// Where one output stream of a command goes.
#[derive(Debug)]
enum OutputSink {
    Collect(CappedBuffer),
    Stream {
        kind: OutputKind,
        decoder: Utf8Decoder,
        /// `None` once the client has gone: the rest is dropped, the
        /// command goes on.
        events: Option<mpsc::Sender<ExecEvent>>,
    },
}

impl OutputSink {
    async fn push(&mut self, bytes: &[u8]) {
        match self {
            OutputSink::Collect(buffer) => buffer.push(bytes),
            OutputSink::Stream {
                kind,
                decoder,
                events,
            } => {
                let Some(tx) = events else { return };
                let text = decoder.decode(bytes);
                if !text.is_empty() && tx.send(kind.event(text)).await.is_err() {
                    *events = None;
                }
            }
        }
    }

    /// Whatever the decoder held back.
    async fn finish(&mut self) {
        if let OutputSink::Stream {
            kind,
            decoder,
            events: Some(tx),
        } = self
        {
            let rest = decoder.finish();
            if !rest.is_empty() {
                let _ = tx.send(kind.event(rest)).await;
            }
        }
    }
}

/// A finished command.
#[derive(Debug)]
struct Outcome {
    exit_code: i32,
    timed_out: bool,
    duration: Duration,
    /// Stdout, stderr.
    output: [OutputSink; 2],
}

impl Outcome {
    fn into_result(self) -> ExecResult {
        let [stdout, stderr] = self.output.map(|sink| match sink {
            OutputSink::Collect(buffer) => buffer,
            OutputSink::Stream { .. } => CappedBuffer::new(0),
        });
        ExecResult {
            exit_code: self.exit_code,
            truncated: stdout.truncated() || stderr.truncated(),
            stdout: stdout.into_string(),
            stderr: stderr.into_string(),
            duration_ms: millis(self.duration),
            timed_out: self.timed_out,
        }
    }
}

/// Runs one prepared command to its end; see the module docs.
async fn run(
    sessions: Arc<Sessions>,
    session: Arc<Session>,
    mut shell: OwnedMutexGuard<Shell>,
    command: PreparedCommand,
    timeout: Option<Duration>,
    output: [OutputSink; 2],
) -> Outcome {
    let started = Instant::now();
    shell.next_command += 1;
    session.commands.fetch_add(1, Ordering::Relaxed);
    let baseline = children_of(&process_table(), session.leader.pid);
    *session.lock_running() = Some(baseline);
    let line = command.control_line(&session.dir.join(ABORT_FILE), shell.last_status);
    if let Err(err) = shell.stdin.write_all(line.as_bytes()).await {
        // The shell is gone; its control channel says so next.
        tracing::debug!(id = %session.id, %err, "cannot write to the session shell");
    }
    let PreparedCommand {
        script,
        stdout_path,
        stderr_path,
        stdout,
        stderr,
        writers,
    } = command;
    let [stdout_sink, stderr_sink] = output;
    let (stop, stopped) = watch::channel(false);
    let deadline = timeout.map(|timeout| started + timeout);
    let ((ending, timed_out), (stdout, stdout_sink), (stderr, stderr_sink)) = tokio::join!(
        async {
            let ended = wait_command(&session, &mut shell, deadline).await;
            let _ = stop.send(true);
            ended
        },
        forward(stdout, stdout_sink, stopped.clone()),
        forward(stderr, stderr_sink, stopped),
    );
    let duration = started.elapsed();
    *session.lock_running() = None;
    drop(writers);
    tokio::spawn(discard_late_output(stdout, stderr));
    PreparedCommand::remove_files_at(&session.dir, [&script, &stdout_path, &stderr_path]);
    let exit_code = match ending {
        Ending::Finished(status) => {
            shell.last_status = status;
            status
        }
        Ending::ShellExited(status) => {
            // Before the answer goes out, so the next call already sees
            // the session gone.
            session.end(&sessions);
            status
        }
    };
    session.release(shell);
    tracing::debug!(id = %session.id, exit_code, timed_out, "session command finished");
    Outcome {
        exit_code,
        timed_out,
        duration,
        output: [stdout_sink, stderr_sink],
    }
}

/// Waits for the status line (or the shell's end), stopping the command
/// when `deadline` passes; returns how it ended and whether it timed out.
async fn wait_command(
    session: &Session,
    shell: &mut Shell,
    deadline: Option<Instant>,
) -> (Ending, bool) {
    let mut next_round = deadline;
    let mut rounds = 0;
    loop {
        tokio::select! {
            status = shell.control.next_status() => {
                let ending = match status {
                    Some(status) => Ending::Finished(status),
                    None => Ending::ShellExited(shell_exit_code(session).await),
                };
                return (ending, rounds > 0);
            }
            () = sleep_until(next_round) => {
                rounds += 1;
                if rounds <= ABORT_ROUNDS {
                    // Abort before killing; see `Session::signal`.
                    session.abort(TIMEOUT_STATUS);
                    if let Some(baseline) = session.lock_running().as_ref() {
                        session.signal_command(baseline, Signal::SIGKILL);
                    }
                    next_round = Some(Instant::now() + ABORT_WAIT);
                } else {
                    // It runs in the shell itself, and ignores the abort.
                    tracing::debug!(id = %session.id, "timed-out command ends its session");
                    session.kill_everything();
                    next_round = None;
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn shell_exit_code(session: &Session) -> i32 {
    let mut exit = session.exit.clone();
    match exit.wait().await {
        Ok(status) => status.code(),
        Err(err) => {
            tracing::error!(id = %session.id, %err, "session shell lost");
            TIMEOUT_STATUS
        }
    }
}

/// Moves one FIFO's output into its sink until `stop`, then empties the
/// FIFO; gives the FIFO back for [`discard_late_output`].
async fn forward(
    mut fifo: pipe::Receiver,
    mut sink: OutputSink,
    mut stop: watch::Receiver<bool>,
) -> (pipe::Receiver, OutputSink) {
    let mut buf = vec![0; READ_CHUNK];
    loop {
        tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            read = fifo.read(&mut buf) => match read {
                Ok(n) if n > 0 => sink.push(&buf[..n]).await,
                // No EOF while we hold a write end; an error ends the
                // stream.
                Ok(_) => break,
                Err(err) => {
                    tracing::debug!(%err, "session output read failed");
                    break;
                }
            },
        }
    }
    // Read directly, not through the runtime's readiness, which may not
    // have seen the last write yet.
    for _ in 0..DRAIN_READS {
        match nix::unistd::read(fifo.as_raw_fd(), &mut buf) {
            Ok(0) | Err(Errno::EAGAIN) => break,
            Ok(n) => sink.push(&buf[..n]).await,
            Err(Errno::EINTR) => {}
            Err(err) => {
                tracing::debug!(%err, "session output drain failed");
                break;
            }
        }
    }
    (fifo, sink)
}

/// Resolves once the command is over (the guard `wait_for` returns must
/// not live across the sink's awaits).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Reads what background jobs still write to a finished command's FIFOs,
/// until they all let go, so none of them dies of `SIGPIPE`.
async fn discard_late_output(stdout: pipe::Receiver, stderr: pipe::Receiver) {
    async fn drain(mut fifo: pipe::Receiver) {
        let mut buf = vec![0; 4096];
        while matches!(fifo.read(&mut buf).await, Ok(n) if n > 0) {}
    }
    tokio::join!(drain(stdout), drain(stderr));
}

/// The shell's stdout, read as status lines.
#[derive(Debug)]
struct ControlChannel {
    stream: OutputStream,
    pending: Vec<u8>,
}

impl ControlChannel {
    fn new(stream: OutputStream) -> Self {
        Self {
            stream,
            pending: Vec::new(),
        }
    }

    /// The next status line, or `None` once the shell has exited.
    /// Anything else on the channel is skipped. Cancel-safe.
    async fn next_status(&mut self) -> Option<i32> {
        loop {
            while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line[..end]);
                match text.trim().parse() {
                    Ok(status) => return Some(status),
                    Err(_) => {
                        tracing::debug!(%text, "unexpected line on a session's control channel")
                    }
                }
            }
            if self.pending.len() > MAX_CONTROL_LINE {
                self.pending.clear();
            }
            let chunk = self.stream.next_chunk().await?;
            self.pending.extend_from_slice(&chunk);
        }
    }
}

/// A process, told apart from a later one with the same pid by its start
/// time.
pub(crate) type ProcessKey = (i32, u64);

/// What `/proc/<pid>/stat` says of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcessEntry {
    pub pid: i32,
    pub ppid: i32,
    /// The session id.
    pub sid: i32,
    /// Start time, in clock ticks since boot.
    pub start: u64,
}

impl ProcessEntry {
    fn key(&self) -> ProcessKey {
        (self.pid, self.start)
    }
}

/// Every process `/proc` shows (in a sandbox, the sandbox's).
pub(crate) fn process_table() -> Vec<ProcessEntry> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .filter_map(read_entry)
        .collect()
}

fn read_entry(pid: i32) -> Option<ProcessEntry> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &stat)
}

/// `pid (comm) state ppid pgrp session … starttime …`: the command name may
/// hold spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(pid: i32, stat: &str) -> Option<ProcessEntry> {
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    // fields[0] is field 3 (state) of proc(5).
    Some(ProcessEntry {
        pid,
        ppid: fields.get(1)?.parse().ok()?,
        sid: fields.get(3)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

fn children_of(table: &[ProcessEntry], parent: i32) -> HashSet<ProcessKey> {
    table
        .iter()
        .filter(|entry| entry.ppid == parent)
        .map(ProcessEntry::key)
        .collect()
}

/// The processes of the command `shell` runs: its children that are not in
/// `baseline` (those it had before the command), and their descendants.
fn command_processes(
    table: &[ProcessEntry],
    shell: i32,
    baseline: &HashSet<ProcessKey>,
) -> Vec<i32> {
    let by_pid: HashMap<i32, &ProcessEntry> =
        table.iter().map(|entry| (entry.pid, entry)).collect();
    let belongs = |entry: &ProcessEntry| {
        let mut current = entry;
        for _ in 0..MAX_TREE_DEPTH {
            if current.ppid == shell {
                return !baseline.contains(&current.key());
            }
            match by_pid.get(&current.ppid) {
                Some(parent) => current = parent,
                None => return false,
            }
        }
        false
    };
    table
        .iter()
        .filter(|entry| entry.pid != shell && belongs(entry))
        .map(|entry| entry.pid)
        .collect()
}

/// The first process of a session (a terminal's command, a session's
/// shell: both are session leaders), remembered with its start time.
///
/// Signalling "its session" means every process whose session id is the
/// leader's pid, leader gone or not: the kernel does not reuse a pid while
/// a session still has it as its id. Once the session is empty, though,
/// the pid may go to a new process that starts a session of its own; that
/// is recognised by the start time and left alone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionLeader {
    pub pid: i32,
    /// `None` when the leader was gone before we could look.
    start: Option<u64>,
}

impl SessionLeader {
    /// Call right after spawning `pid`.
    pub(crate) fn new(pid: i32) -> Self {
        Self {
            pid,
            start: read_entry(pid).map(|entry| entry.start),
        }
    }

    /// Sends `signal` to every process of the leader's session; see the
    /// type's docs.
    pub(crate) fn signal_session(&self, signal: Signal) {
        let table = process_table();
        let reused = table
            .iter()
            .any(|entry| entry.pid == self.pid && Some(entry.start) != self.start);
        if reused {
            return;
        }
        let agent = i32::try_from(std::process::id()).expect("pids fit in pid_t");
        for entry in table
            .iter()
            .filter(|entry| entry.sid == self.pid && entry.pid != agent)
        {
            match kill(Pid::from_raw(entry.pid), signal) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(err) => tracing::debug!(pid = entry.pid, %signal, %err, "cannot signal"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_around_odd_command_names() {
        let stat = "4242 (we ird) (name)) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let entry = parse_stat(4242, stat).expect("parses");
        assert_eq!(
            entry,
            ProcessEntry {
                pid: 4242,
                ppid: 17,
                sid: 4242,
                start: 987_654,
            }
        );
        assert_eq!(parse_stat(1, "1 (init"), None);
        assert_eq!(parse_stat(1, "1 (init) S 0"), None);
    }

    #[test]
    fn command_processes_are_new_children_and_their_descendants() {
        let entry = |pid, ppid| ProcessEntry {
            pid,
            ppid,
            sid: 10,
            start: u64::try_from(pid).expect("positive"),
        };
        let table = [
            entry(10, 1),  // the shell
            entry(11, 10), // a job of an earlier command
            entry(12, 11), // its child
            entry(20, 10), // the command
            entry(21, 20), // its child
            entry(22, 21), // and grandchild
            entry(30, 1),  // unrelated
        ];
        let baseline = HashSet::from([(11, 11)]);
        let mut found = command_processes(&table, 10, &baseline);
        found.sort_unstable();
        assert_eq!(found, vec![20, 21, 22]);
        // A pid reused by a new child is new.
        let reused = HashSet::from([(20, 5)]);
        let mut found = command_processes(&table, 10, &reused);
        found.sort_unstable();
        assert_eq!(found, vec![11, 12, 20, 21, 22]);
        assert_eq!(children_of(&table, 10), HashSet::from([(11, 11), (20, 20)]));
    }

    #[test]
    fn paths_are_quoted_for_the_shell() {
        assert_eq!(quote(Path::new("/tmp/a b")), "'/tmp/a b'");
        assert_eq!(quote(Path::new("/tmp/it's")), r"'/tmp/it'\''s'");
    }

    #[test]
    fn only_stopping_signals_abort_the_command() {
        assert!(stops_command(Signal::SIGINT));
        assert!(stops_command(Signal::SIGKILL));
        assert!(!stops_command(Signal::SIGUSR1));
        assert!(!stops_command(Signal::SIGWINCH));
    }
}

//! Terminals: a command on a pseudo-terminal that clients watch and type
//! into over WebSockets, and that outlives every connection.
//!
//! | route | answer |
//! |---|---|
//! | `POST /pty` (CreatePtyRequest) | 201 Pty |
//! | `GET /pty` | 200 PtyList |
//! | `GET /pty/{tid}` with a WebSocket handshake | 101, then the terminal (without one: 400) |
//! | `POST /pty/{tid}/resize` (PtySize) | 204 (409 once the command exited) |
//! | `DELETE /pty/{tid}` | 204 |
//!
//! **Spawning.** The command is forked by the [`crate::reaper::Reaper`]
//! like every other command, so PID 1 reaps it, its exit status comes
//! back to us, and the shutdown sweep stops it with the rest. It is a
//! session leader whose
//! controlling terminal is the pty's slave side (`setsid` + `TIOCSCTTY`),
//! on fds 0-2: job control, Ctrl-C and `SIGWINCH` work as on a console. We
//! open the pty with `posix_openpt` rather than `openpty` so both ends are
//! close-on-exec from the first instant: a command forked concurrently by
//! another request must not inherit them, or the terminal would never see
//! its slave side close. The agent drops its own slave descriptor once the
//! command has it, so a read on the master fails with `EIO` exactly when
//! every process of the terminal has let go of it.
//!
//! **Output.** One task per terminal (the *pump*) reads the master all the
//! time, whoever watches: a program never blocks on its terminal, as under
//! tmux. Each chunk goes into a ring of the last [`PTY_SCROLLBACK_BYTES`]
//! bytes and, under the same lock, into a broadcast channel. A viewer takes
//! its scrollback snapshot and subscribes while holding that lock, so the
//! replay and the live output neither overlap nor leave a gap. After the
//! command exits, output still in flight is read as by
//! [`crate::process::OutputStream`] (until it stays silent for a moment, a
//! background job may hold the slave open for ever); then the exit is
//! recorded and broadcast last. The terminal stays listed with its exit
//! code, and attachable for its scrollback, until it is deleted.
//!
//! **Viewers.** Each WebSocket is served by one task: scrollback (one
//! binary frame), live output (binary frames), and at the end
//! `{"type":"exit","exit_code":N}` and a close frame. What the client types
//! (binary frames) is written to the master while its frames are read one
//! at a time, so a program that does not read its input slows down only
//! the viewer typing into it. A viewer that falls more than [`LIVE_CHUNKS`]
//! chunks behind, or cannot take a frame for [`SEND_LIMIT`], is dropped
//! (close code 1013, "try again later"): the terminal and the other viewers
//! never wait for it, and a reattach replays the scrollback.
//!
//! **Deleting** hangs up the terminal's whole session: `SIGHUP` to every
//! process in it (a shell's jobs each have a process group of their own),
//! `SIGKILL` after [`HANGUP_GRACE`] to what is left, in a task, so it
//! happens whether or not the client waits for the answer.
//!
//! **Tenant cgroups.** In a sandbox every command must start in the tenant
//! cgroups ([`crate::process`] writes to the handed-over `cgroup.procs`
//! files between fork and exec). Those files are private to that module,
//! so `tenant_cgroup_fds` finds the same open descriptors under
//! `/proc/self/fd`: they are the only `cgroup.procs` files the agent keeps
//! open.

use crate::error::AgentError;
use crate::exec::spawn_reason;
use crate::process::{is_program_error, signal_group, POST_EXIT_IDLE, POST_EXIT_LIMIT};
use crate::reaper::ExitWatch;
use crate::server::JsonBody;
use crate::session::SessionLeader;
use crate::user::Identity;
use crate::Agent;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::{Buf, Bytes};
use chrono::{DateTime, Utc};
use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use sbx_api::{CreatePtyRequest, Pty, PtyControl, PtyList, PtySize, PTY_SCROLLBACK_BYTES};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path as FsPath, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;

/// Terminals one agent keeps at most, exited ones included (each holds a
/// pty and up to [`PTY_SCROLLBACK_BYTES`] of scrollback).
pub const MAX_TERMINALS: usize = 64;

/// Chunks a viewer may fall behind before it is dropped. A chunk is one
/// read of the master, at most `READ_CHUNK` bytes and usually one
/// line-discipline buffer (4 KiB).
pub const LIVE_CHUNKS: usize = 512;

/// Longest a viewer may take to accept one frame before it is dropped.
pub const SEND_LIMIT: Duration = Duration::from_secs(30);

/// Between `SIGHUP` and `SIGKILL` when a terminal is deleted.
pub const HANGUP_GRACE: Duration = Duration::from_millis(500);

/// How long a viewer waits for the client's answer to its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

const READ_CHUNK: usize = 16 * 1024;

/// What terminals announce themselves as.
const TERM: &str = "xterm-256color";

/// The shell when `/etc/passwd` names none, or one that is missing.
const FALLBACK_SHELL: &str = "/bin/sh";

/// WebSocket close codes (RFC 6455, section 7.4.1).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// The routes, with the terminal table as an extension.
pub fn routes() -> Router<Arc<Agent>> {
    Router::new()
        .route("/pty", post(create).get(list))
        .route("/pty/{tid}", get(attach).delete(remove))
        .route("/pty/{tid}/resize", post(resize))
        .layer(Extension(Arc::new(Terminals::default())))
}

async fn create(
    State(agent): State<Arc<Agent>>,
    Extension(terminals): Extension<Arc<Terminals>>,
    JsonBody(request): JsonBody<CreatePtyRequest>,
) -> Result<(StatusCode, Json<Pty>), AgentError> {
    request.validate().map_err(AgentError::InvalidRequest)?;
    let terminal = terminals.open(&agent, &request)?;
    Ok((StatusCode::CREATED, Json(terminal.info())))
}

async fn list(Extension(terminals): Extension<Arc<Terminals>>) -> Json<PtyList> {
    Json(PtyList {
        terminals: terminals.list(),
    })
}

/// The handshake is checked after the id, so an unknown terminal is a 404
/// however it is asked for.
async fn attach(
    Extension(terminals): Extension<Arc<Terminals>>,
    IdParam(tid): IdParam,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, AgentError> {
    let terminal = terminals.get(&tid)?;
    let upgrade = upgrade.map_err(|rejection| {
        AgentError::InvalidRequest(format!(
            "GET /pty/{tid} needs a WebSocket handshake: {}",
            rejection.body_text()
        ))
    })?;
    Ok(upgrade.on_upgrade(move |socket| view(terminal, socket)))
}

async fn resize(
    Extension(terminals): Extension<Arc<Terminals>>,
    IdParam(tid): IdParam,
    JsonBody(size): JsonBody<PtySize>,
) -> Result<StatusCode, AgentError> {
    size.validate().map_err(AgentError::InvalidRequest)?;
    terminals.get(&tid)?.resize(size)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove(
    Extension(terminals): Extension<Arc<Terminals>>,
    IdParam(tid): IdParam,
) -> Result<StatusCode, AgentError> {
    let terminal = terminals.forget(&tid)?;
    tokio::spawn(terminal.hang_up());
    Ok(StatusCode::NO_CONTENT)
}

/// The one path parameter of `/pty/{tid}…` and `/sessions/{sid}…`, with a
/// malformed one answered as an [`AgentError`] rather than axum's plain
/// text.
#[derive(Debug)]
pub(crate) struct IdParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdParam {
    type Rejection = AgentError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| IdParam(id))
            .map_err(|rejection| AgentError::InvalidRequest(rejection.body_text()))
    }
}

/// The agent's terminals, by id.
#[derive(Debug, Default)]
pub struct Terminals {
    table: Mutex<HashMap<String, Arc<Terminal>>>,
    next_id: AtomicU64,
}

impl Terminals {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Terminal>>> {
        // Every mutation is a single insert or remove.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, id: &str) -> Result<Arc<Terminal>, AgentError> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::TerminalNotFound { id: id.to_owned() })
    }

    fn forget(&self, id: &str) -> Result<Arc<Terminal>, AgentError> {
        self.lock()
            .remove(id)
            .ok_or_else(|| AgentError::TerminalNotFound { id: id.to_owned() })
    }

    /// Every terminal, oldest first.
    fn list(&self) -> Vec<Pty> {
        let mut terminals: Vec<Pty> = self.lock().values().map(|t| t.info()).collect();
        terminals.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        terminals
    }

    /// Starts a validated request on a new terminal and its pump.
    fn open(&self, agent: &Agent, request: &CreatePtyRequest) -> Result<Arc<Terminal>, AgentError> {
        let user = request
            .user
            .as_deref()
            .or(agent.config.default_user.as_deref());
        let identity = user.map(Identity::resolve).transpose()?;
        // Root's home and shell when no user is named; the command itself
        // then runs as the agent's own root, like an exec.
        let account = match &identity {
            Some(identity) => identity.clone(),
            None => Identity::resolve("0")?,
        };
        let (argv, arg0) = match &request.cmd {
            Some(argv) => (argv.clone(), None),
            None => {
                let shell = login_shell(account.uid);
                let arg0 = login_arg0(&shell);
                (vec![shell], Some(arg0))
            }
        };
        let cwd = match &request.cwd {
            Some(cwd) => checked_cwd(cwd)?,
            // As login(1) does when the home directory is missing.
            None => Some(PathBuf::from(&account.home))
                .filter(|home| home.is_dir())
                .unwrap_or_else(|| PathBuf::from("/")),
        };
        let mut extra = BTreeMap::from([("TERM".to_owned(), TERM.to_owned())]);
        extra.extend(request.env.clone());
        let user_env = identity.as_ref().map(Identity::env).unwrap_or_default();
        let spec = PtySpec {
            argv,
            arg0,
            cwd,
            env: crate::env::command_env(&agent.config.base_env, &user_env, &extra),
            identity,
            size: PtySize {
                cols: request.cols,
                rows: request.rows,
            },
        };
        // The count and the insert under one lock, so concurrent creates
        // cannot overshoot the cap; forking under it takes a millisecond.
        let mut table = self.lock();
        if table.len() >= MAX_TERMINALS {
            return Err(AgentError::TooManyShells {
                what: "terminals",
                limit: MAX_TERMINALS,
            });
        }
        let started = spawn_on_pty(agent, &spec)?;
        let id = format!("t{}", self.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        // SAFETY: an `OwnedFd` is a valid open descriptor, and it keeps the
        // same one until the `AsyncFd` that owns it is dropped.
        let master = unsafe { AsyncFd::register(started.master) }.map_err(|err| {
            signal_group(started.pid, Signal::SIGKILL);
            AgentError::ShellSetup {
                op: "watch a terminal".into(),
                source: io::Error::from(err),
            }
        })?;
        let terminal = Arc::new(Terminal {
            id: id.clone(),
            leader: SessionLeader::new(started.pid),
            cmd: spec.argv,
            created_at: Utc::now(),
            master,
            size: Mutex::new(spec.size),
            screen: Mutex::new(Screen::default()),
            live: broadcast::channel(LIVE_CHUNKS).0,
            viewers: AtomicU32::new(0),
            exit: started.exit,
        });
        table.insert(id, Arc::clone(&terminal));
        tokio::spawn(pump(Arc::clone(&terminal)));
        tracing::debug!(id = %terminal.id, pid = started.pid, "terminal started");
        Ok(terminal)
    }
}

/// What to run on a new terminal.
#[derive(Debug)]
struct PtySpec {
    argv: Vec<String>,
    /// `-bash` for a login shell.
    arg0: Option<String>,
    cwd: PathBuf,
    env: BTreeMap<String, String>,
    identity: Option<Identity>,
    size: PtySize,
}

#[derive(Debug)]
struct Started {
    pid: i32,
    master: OwnedFd,
    exit: ExitWatch,
}

/// Opens a pty and starts `spec` on it; see the module docs.
fn spawn_on_pty(agent: &Agent, spec: &PtySpec) -> Result<Started, AgentError> {
    let setup = |op: &str| {
        let op = op.to_owned();
        move |source: io::Error| AgentError::ShellSetup { op, source }
    };
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(io::Error::from)
        .map_err(setup("open a pty"))?;
    nix::pty::grantpt(&master)
        .and_then(|()| nix::pty::unlockpt(&master))
        .map_err(io::Error::from)
        .map_err(setup("unlock a pty"))?;
    let slave_path = nix::pty::ptsname_r(&master)
        .map_err(io::Error::from)
        .map_err(setup("name a pty"))?;
    // std opens close-on-exec; O_NOCTTY keeps the agent's own session
    // without a controlling terminal.
    let slave: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&slave_path)
        .map_err(setup(&format!("open {slave_path}")))?
        .into();
    set_window_size(master.as_raw_fd(), spec.size).map_err(setup("size a pty"))?;
    if let Some(identity) = spec.identity.as_ref().filter(|id| id.uid != 0) {
        // The terminal belongs to its user, as after login(1): programs
        // that reopen it by name (ssh, gpg) may.
        nix::unistd::fchown(
            slave.as_raw_fd(),
            Some(nix::unistd::Uid::from_raw(identity.uid)),
            None,
        )
        .map_err(io::Error::from)
        .map_err(setup("give a pty to its user"))?;
    }
    let stdio = || -> Result<Stdio, AgentError> {
        Ok(Stdio::from(
            slave.try_clone().map_err(setup("share a pty"))?,
        ))
    };
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
        .stdin(stdio()?)
        .stdout(stdio()?)
        .stderr(stdio()?);
    if let Some(arg0) = &spec.arg0 {
        command.arg0(arg0);
    }
    let identity = spec.identity.clone();
    let tenant = tenant_cgroup_fds();
    // SAFETY: the hook runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: write(2) on descriptors that live
    // as long as the agent, setsid(2), ioctl(2) on fd 0 (the slave, dup2'd
    // there by std before the hook), then `Identity::apply_in_child` (raw
    // set*id syscalls on data built before the fork); errors are built from
    // errnos without allocating.
    unsafe {
        command.pre_exec(move || {
            for &fd in tenant {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::setsid() == -1 || libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            match &identity {
                Some(identity) => identity.apply_in_child(),
                None => Ok(()),
            }
        });
    }
    let spawned = agent.reaper.spawn(&mut command);
    // The child has its copies; ours must go, or the master never sees the
    // slave side close.
    drop(command);
    drop(slave);
    let (child, exit) = spawned.map_err(|err| match err {
        AgentError::Spawn { program, source } if is_program_error(&source) => {
            AgentError::NotRunnable {
                program,
                reason: spawn_reason(&source),
            }
        }
        other => other,
    })?;
    let pid = i32::try_from(child.id()).expect("pids fit in pid_t");
    // `child` is dropped without waiting: the reaper owns its exit.
    // SAFETY: `into_raw_fd` hands over an open descriptor that nothing
    // else owns from now on.
    let master = unsafe { OwnedFd::from_raw_fd(master.into_raw_fd()) };
    if let Err(err) = nix::fcntl::fcntl(
        master.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
    ) {
        signal_group(pid, Signal::SIGKILL);
        return Err(setup("make a pty non-blocking")(io::Error::from(err)));
    }
    Ok(Started { pid, master, exit })
}

fn set_window_size(fd: RawFd, size: PtySize) -> io::Result<()> {
    let winsize = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which points
    // to a live local for the duration of the call.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &winsize) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The descriptors of the tenant cgroups' `cgroup.procs` files that
/// [`crate::process::set_tenant_cgroups`] keeps open (none outside a
/// sandbox); see the module docs. Looked up once: the set never changes
/// after the handoff, which precedes the first request.
fn tenant_cgroup_fds() -> &'static [RawFd] {
    static FDS: OnceLock<Vec<RawFd>> = OnceLock::new();
    FDS.get_or_init(|| {
        let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter(|entry| {
                std::fs::read_link(entry.path())
                    .is_ok_and(|target| target.file_name() == Some("cgroup.procs".as_ref()))
            })
            .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
            .collect()
    })
}

/// The login shell of `uid` in the sandbox's `/etc/passwd`, when it names
/// one that exists; else [`FALLBACK_SHELL`].
fn login_shell(uid: libc::uid_t) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    shell_of(&passwd, uid)
        .filter(|shell| FsPath::new(shell).is_file())
        .unwrap_or_else(|| FALLBACK_SHELL.to_owned())
}

/// Field 7 of the first entry for `uid` (`name:pw:uid:gid:gecos:home:shell`).
fn shell_of(passwd: &str, uid: libc::uid_t) -> Option<String> {
    passwd
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.len() >= 7 && fields[2].parse() == Ok(uid))
        .map(|fields| fields[6].trim().to_owned())
        .filter(|shell| shell.starts_with('/'))
}

/// A leading dash in `argv[0]` is how login(1) asks any shell to be a
/// login shell (`-l` is not universal).
fn login_arg0(shell: &str) -> String {
    let name = shell.rsplit('/').next().unwrap_or(shell);
    format!("-{name}")
}

/// `cwd` from a request, which must be an existing directory (a missing
/// one would fail in the child as ENOENT, like a missing program).
pub(crate) fn checked_cwd(cwd: &str) -> Result<PathBuf, AgentError> {
    let path = PathBuf::from(cwd);
    if path.is_dir() {
        Ok(path)
    } else {
        Err(AgentError::InvalidRequest(format!(
            "cwd {cwd} is not an existing directory"
        )))
    }
}

/// One terminal; see the module docs.
#[derive(Debug)]
pub struct Terminal {
    id: String,
    /// The command: pid, and its session for [`Terminal::hang_up`].
    leader: SessionLeader,
    cmd: Vec<String>,
    created_at: DateTime<Utc>,
    /// Non-blocking; read by the pump, written by the viewers.
    master: AsyncFd<OwnedFd>,
    size: Mutex<PtySize>,
    screen: Mutex<Screen>,
    /// Output as it arrives, then the exit; sent under `screen`.
    live: broadcast::Sender<Live>,
    viewers: AtomicU32,
    exit: ExitWatch,
}

/// What a viewer needs at attach time.
#[derive(Debug, Default)]
struct Screen {
    /// The last [`PTY_SCROLLBACK_BYTES`] bytes of output.
    scrollback: VecDeque<u8>,
    /// Set once the command exited and its output was read.
    exit_code: Option<i32>,
}

impl Screen {
    fn push(&mut self, bytes: &[u8]) {
        let bytes = &bytes[bytes.len().saturating_sub(PTY_SCROLLBACK_BYTES)..];
        let overflow = (self.scrollback.len() + bytes.len()).saturating_sub(PTY_SCROLLBACK_BYTES);
        self.scrollback.drain(..overflow);
        self.scrollback.extend(bytes);
    }
}

/// What the pump broadcasts to viewers.
#[derive(Debug, Clone)]
enum Live {
    Output(Bytes),
    /// The last message.
    Exit(i32),
}

impl Terminal {
    fn lock_screen(&self) -> MutexGuard<'_, Screen> {
        self.screen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn info(&self) -> Pty {
        let size = *self.size.lock().unwrap_or_else(PoisonError::into_inner);
        Pty {
            id: self.id.clone(),
            pid: self.leader.pid,
            cmd: self.cmd.clone(),
            cols: size.cols,
            rows: size.rows,
            viewers: self.viewers.load(Ordering::Relaxed),
            exit_code: self.lock_screen().exit_code,
            created_at: self.created_at,
        }
    }

    fn resize(&self, size: PtySize) -> Result<(), AgentError> {
        if self.exit.status().is_some() {
            return Err(AgentError::TerminalExited {
                id: self.id.clone(),
            });
        }
        // Held across the ioctl, so concurrent resizes leave the recorded
        // size and the kernel's agreeing.
        let mut current = self.size.lock().unwrap_or_else(PoisonError::into_inner);
        set_window_size(self.master.as_raw_fd(), size).map_err(|source| {
            AgentError::ShellSetup {
                op: format!("resize terminal {}", self.id),
                source,
            }
        })?;
        *current = size;
        Ok(())
    }

    /// The next chunk of output into `buf`: its length, or `None` once the
    /// slave side is closed everywhere (`EIO`). Cancel-safe: the read
    /// itself never waits.
    async fn read_output(&self, buf: &mut [u8]) -> Option<usize> {
        loop {
            let mut ready = self.master.readable().await.ok()?;
            let read = ready.try_io(|master| {
                nix::unistd::read(master.as_raw_fd(), buf).map_err(io::Error::from)
            });
            match read {
                Ok(Ok(0)) => return None,
                Ok(Ok(n)) => return Some(n),
                Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(err)) => {
                    if err.raw_os_error() != Some(libc::EIO) {
                        tracing::debug!(id = %self.id, %err, "terminal read failed");
                    }
                    return None;
                }
                Err(_would_block) => {}
            }
        }
    }

    /// Writes some of `data` (what the terminal takes without blocking,
    /// once it takes anything) and returns how much. Cancel-safe.
    async fn write_input(&self, data: &[u8]) -> io::Result<usize> {
        loop {
            let mut ready = self.master.writable().await?;
            match ready.try_io(|master| nix::unistd::write(master, data).map_err(io::Error::from)) {
                Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => {}
                Ok(written) => return written,
                Err(_would_block) => {}
            }
        }
    }

    /// Keeps one chunk: into the scrollback and out to the viewers.
    fn push(&self, chunk: &[u8]) {
        let mut screen = self.lock_screen();
        screen.push(chunk);
        // No viewers is not an error.
        let _ = self.live.send(Live::Output(Bytes::copy_from_slice(chunk)));
    }

    fn end(&self, exit_code: i32) {
        let mut screen = self.lock_screen();
        screen.exit_code = Some(exit_code);
        let _ = self.live.send(Live::Exit(exit_code));
    }

    /// The scrollback, the exit code if the command has ended, and (when it
    /// has not) the live output from exactly where the scrollback stops.
    fn attach(&self) -> (Vec<u8>, Result<i32, broadcast::Receiver<Live>>) {
        let screen = self.lock_screen();
        let replay = screen.scrollback.iter().copied().collect();
        let rest = screen.exit_code.ok_or_else(|| self.live.subscribe());
        (replay, rest)
    }

    /// `SIGHUP` to the terminal's session, `SIGKILL` to what is left after
    /// [`HANGUP_GRACE`]; see the module docs.
    async fn hang_up(self: Arc<Self>) {
        let pid = self.leader.pid;
        if self.exit.status().is_none() {
            signal_group(pid, Signal::SIGHUP);
        }
        self.leader.signal_session(Signal::SIGHUP);
        let mut exit = self.exit.clone();
        let _ = tokio::time::timeout(HANGUP_GRACE, exit.exited()).await;
        if self.exit.status().is_none() {
            signal_group(pid, Signal::SIGKILL);
        }
        self.leader.signal_session(Signal::SIGKILL);
        tracing::debug!(id = %self.id, pid, "terminal deleted");
    }
}

/// The last reference goes after a delete, or when the agent stops: then
/// the shutdown sweep has stopped the command's process group, but not the
/// jobs a shell put in groups of their own (outside a sandbox, where the
/// agent is not PID 1 and cannot kill everything).
impl Drop for Terminal {
    fn drop(&mut self) {
        self.leader.signal_session(Signal::SIGKILL);
    }
}

/// Reads the terminal's output until its command has exited and the output
/// is drained, then records the exit; see the module docs.
async fn pump(terminal: Arc<Terminal>) {
    let mut buf = vec![0; READ_CHUNK];
    let mut exit = terminal.exit.clone();
    let mut closed = false;
    loop {
        tokio::select! {
            biased;
            read = terminal.read_output(&mut buf) => match read {
                Some(n) => terminal.push(&buf[..n]),
                None => {
                    closed = true;
                    break;
                }
            },
            () = exit.exited() => break,
        }
    }
    if !closed {
        let limit = Instant::now() + POST_EXIT_LIMIT;
        loop {
            let idle = (Instant::now() + POST_EXIT_IDLE).min(limit);
            match tokio::time::timeout_at(idle, terminal.read_output(&mut buf)).await {
                Ok(Some(n)) => terminal.push(&buf[..n]),
                Ok(None) | Err(_) => break,
            }
        }
    }
    let exit_code = exit.wait().await.map_or_else(
        |err| {
            tracing::error!(id = %terminal.id, %err, "terminal command lost");
            -1
        },
        |status| status.code(),
    );
    tracing::debug!(id = %terminal.id, exit_code, "terminal command exited");
    terminal.end(exit_code);
}

/// Counts a viewer for as long as it lives.
struct Viewer<'a>(&'a Terminal);

impl<'a> Viewer<'a> {
    fn join(terminal: &'a Terminal) -> Self {
        terminal.viewers.fetch_add(1, Ordering::Relaxed);
        Self(terminal)
    }
}

impl Drop for Viewer<'_> {
    fn drop(&mut self) {
        self.0.viewers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one WebSocket until the command exits, the client leaves, or the
/// viewer is dropped for being slow; see the module docs.
async fn view(terminal: Arc<Terminal>, mut socket: WebSocket) {
    let _viewer = Viewer::join(&terminal);
    let (replay, rest) = terminal.attach();
    if !replay.is_empty() && !send(&mut socket, Message::Binary(replay.into())).await {
        return;
    }
    let mut live = match rest {
        Ok(exit_code) => return finish(socket, exit_code).await,
        Err(live) => live,
    };
    // Typed bytes not yet taken by the terminal; the client's next frame is
    // read only once they are.
    let mut typed = Bytes::new();
    loop {
        tokio::select! {
            event = live.recv() => match event {
                Ok(Live::Output(chunk)) => {
                    if !send(&mut socket, Message::Binary(chunk)).await {
                        return;
                    }
                }
                Ok(Live::Exit(exit_code)) => return finish(socket, exit_code).await,
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(id = %terminal.id, missed, "terminal viewer fell behind");
                    return close(socket, CLOSE_TRY_AGAIN_LATER, "viewer fell behind").await;
                }
                // The pump always sends the exit before it lets go.
                Err(RecvError::Closed) => return,
            },
            message = socket.recv(), if typed.is_empty() => match message {
                Some(Ok(Message::Binary(data))) => typed = data,
                Some(Ok(Message::Text(text))) => control(&terminal, &text),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
            },
            written = terminal.write_input(&typed), if !typed.is_empty() => match written {
                Ok(n) => typed.advance(n),
                Err(err) => {
                    tracing::debug!(id = %terminal.id, %err, "cannot type into terminal");
                    typed.clear();
                }
            },
        }
    }
}

/// A client's text frame: a resize. Anything else is ignored: a viewer
/// does not end over a malformed frame.
fn control(terminal: &Terminal, text: &str) {
    match serde_json::from_str::<PtyControl>(text) {
        Ok(PtyControl::Resize { cols, rows }) => {
            let size = PtySize { cols, rows };
            let resized = size
                .validate()
                .map_err(AgentError::InvalidRequest)
                .and_then(|()| terminal.resize(size));
            if let Err(err) = resized {
                tracing::debug!(id = %terminal.id, %err, "resize frame ignored");
            }
        }
        Ok(PtyControl::Exit { .. }) | Err(_) => {
            tracing::debug!(id = %terminal.id, "unknown text frame ignored");
        }
    }
}

/// Sends one frame; false when the viewer is gone or too slow.
async fn send(socket: &mut WebSocket, message: Message) -> bool {
    matches!(
        tokio::time::timeout(SEND_LIMIT, socket.send(message)).await,
        Ok(Ok(()))
    )
}

/// The exit frame, then the close.
async fn finish(mut socket: WebSocket, exit_code: i32) {
    let exit = serde_json::to_string(&PtyControl::Exit { exit_code }).expect("json");
    if send(&mut socket, Message::Text(exit.into())).await {
        close(socket, CLOSE_NORMAL, "exited").await;
    }
}

/// Sends a close frame and waits a moment for the client's, so the client
/// sees a clean closing handshake rather than a reset.
async fn close(mut socket: WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    if !send(&mut socket, Message::Close(Some(frame))).await {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrollback_keeps_the_newest_bytes() {
        let mut screen = Screen::default();
        screen.push(b"hello ");
        screen.push(b"world");
        assert_eq!(
            screen.scrollback.iter().copied().collect::<Vec<_>>(),
            b"hello world"
        );
        screen.push(&vec![b'x'; PTY_SCROLLBACK_BYTES + 10]);
        assert_eq!(screen.scrollback.len(), PTY_SCROLLBACK_BYTES);
        screen.push(b"end");
        assert_eq!(screen.scrollback.len(), PTY_SCROLLBACK_BYTES);
        let tail: Vec<u8> = screen
            .scrollback
            .iter()
            .rev()
            .take(4)
            .rev()
            .copied()
            .collect();
        assert_eq!(tail, b"xend");
    }

    #[test]
    fn login_shells_come_from_passwd() {
        let passwd = "\
# comment
root:x:0:0:root:/root:/bin/bash
dev:x:1000:1000::/home/dev:/usr/bin/zsh
noshell:x:1001:1001::/home/n:
";
        assert_eq!(shell_of(passwd, 0).as_deref(), Some("/bin/bash"));
        assert_eq!(shell_of(passwd, 1000).as_deref(), Some("/usr/bin/zsh"));
        assert_eq!(shell_of(passwd, 1001), None);
        assert_eq!(shell_of(passwd, 4242), None);
        assert_eq!(login_arg0("/bin/bash"), "-bash");
        assert_eq!(login_arg0("sh"), "-sh");
    }
}

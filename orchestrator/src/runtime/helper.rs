//! libcontainer runs in a helper process, never in the server.
//!
//! libcontainer clones the calling process to make each container's
//! intermediate and init processes, and the clones run Rust code (they
//! allocate, they log) before they exec. Cloned from the multi-threaded
//! server, a clone inherits whatever locks other threads held at that
//! instant (a malloc arena, the stderr lock) and can block on them forever;
//! we saw exactly that under 20 concurrent creates. It also inherits the
//! server's sockets until it execs. libcontainer further `chdir()`s and
//! flips `PR_SET_DUMPABLE` on its caller.
//!
//! So the server starts one helper at start-up, `sbx __youki-helper`: a
//! fresh, single-threaded process of the same binary, with nothing open but
//! its pipes. It takes one JSON request per line on stdin (start or delete a
//! container), runs it, and answers one line on stdout. Requests are
//! serialised, which libcontainer needs anyway. Container inits become the
//! helper's children; it reaps them after every request. If the server
//! dies, the helper reads EOF and exits, and the containers run on.
//!
//! The helper also owns the sandboxes' mounts. It runs in a mount namespace
//! of its own, private, and mounts a sandbox's disk and overlay there just
//! before cloning the sandbox's init, whose new mount namespace copies
//! them; then it unmounts them again. A sandbox's mounts so exist only in
//! the sandbox, and go with it. Why: every new mount namespace copies the
//! whole mount table of its creator, and libcontainer reads
//! `/proc/self/mountinfo` several times per create (7.7 ms a read with a
//! thousand mounts here). With every sandbox's mounts in the host's table,
//! libcontainer's part of a create grew from 21–25 ms with no sandbox
//! running to 71–86 ms with 500 (a whole create over HTTP: 43 ms to 96 ms
//! p50); with the mounts kept inside, a create with 500 running takes
//! 43 ms p50, as with none.
//!
//! ## The protocol, and one driver that owns it
//!
//! Each line the server writes is one call, `{"seq":7,"request":{"op":
//! "delete",…}}`, and the helper answers it with one line that echoes the
//! call's number, `{"seq":7}` or `{"seq":7,"error":"…"}`.
//!
//! An HTTP handler's future is dropped at its next `.await` when its client
//! hangs up. When callers took turns at the pipes under a lock, a caller
//! dropped after writing its request and before reading the reply left that
//! reply in the pipe, and the next caller read it as its own: replies went
//! to the wrong requests. So no caller touches the pipes. [`Helper::call`]
//! queues the request with a oneshot for its outcome, and one task, the
//! driver, owns the child and both pipes: it numbers each request, writes
//! it, reads the reply, checks that the reply carries that number, and sends
//! the outcome to the oneshot, dropping it if the caller has gone. A caller
//! that vanishes so loses only its own outcome; its request, once queued,
//! still runs to the end, as the helper cannot be interrupted half-way
//! anyway. The queue is unbounded, as the lock's waiters were: each entry
//! is a start or delete the server decided to make, and bounding those is
//! the manager's business, not the pipe's.
//!
//! ## A dead helper is replaced
//!
//! The driver gives up on a helper when a write or read fails, the helper
//! exits, a reply is malformed or carries another call's number (the two
//! sides no longer agree where they are in the stream, and guessing would
//! hand replies to the wrong callers again), or no reply comes within
//! [`REPLY_TIMEOUT`]. Then it fails the request in flight with
//! [`RuntimeError::HelperGone`], logs why, kills and reaps the helper, and
//! starts a new one for the next request. A helper that dies while idle is
//! noticed at once, since the driver waits on it between requests (and,
//! as that wait hears of the exit only when the reactor next polls, asks
//! the kernel once more before writing), and is replaced before the next
//! request is written, so that request is not lost.
//!
//! The request in flight is lost, not retried: a start may have got
//! half-way (a disk mounted, an init cloned), and running it again would
//! trip over its own leftovers. Its caller sees a failed start and cleans
//! up with `remove`, which copes with whatever half of a sandbox exists.
//! The container inits the old helper had cloned are reparented to the
//! host's init, which reaps them; their sandboxes keep running, and since
//! libcontainer keeps each container's state on disk, the new helper
//! deletes them like any other.
//!
//! Restarts are bounded: a helper that breaks before answering a single
//! call is replaced only after a delay that doubles from
//! [`RESPAWN_BACKOFF`] up to [`RESPAWN_BACKOFF_CAP`], so a broken binary
//! costs one spawn every few seconds, not a busy loop; one answered call
//! resets the delay. Dropping the [`Helper`] ends the driver once the
//! requests already queued have run, and the driver kills and reaps the
//! helper.
//!
//! ## One helper per data dir, even across a server's death
//!
//! A helper whose server was killed still finishes the call it was
//! running: a start goes on to mount a disk, make the container and start
//! it, and only then finds the pipe gone. A server restarted meanwhile
//! would recover that sandbox while the old helper is half-way through
//! making it: tear down a directory the helper is still writing into, or
//! declare a container gone that appears a moment later, its disk
//! attached. So the helper holds a lock, an exclusive `flock` on
//! `helper.lock` in the state root, which the server takes before it
//! starts its helper and hands down as an open descriptor: it is released
//! only when the server and every helper it started are gone. A server
//! that starts waits for it ([`lock`]), so recovery sees only what the old
//! helper finished. The helper marks the descriptor close-on-exec, so no
//! container's process keeps it. Two servers on one data dir are refused
//! the same way.
//!
//! The protocol is private to one binary talking to itself, so its types
//! live here rather than in `sbx-api`.

use super::{RuntimeError, SandboxDir};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, LinesCodec};

/// The hidden subcommand that runs [`serve_requests`].
pub const HELPER_SUBCOMMAND: &str = "__youki-helper";

/// How long a call may take before the helper is taken for hung. A start
/// takes tens of milliseconds and a delete less; a minute is far beyond
/// anything but a helper stuck for good (on a lock, say), which would
/// otherwise stall every later create and delete.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// The lock the helpers of the server on a data dir hold, in the state
/// root (see the module docs).
const LOCK_FILE: &str = "helper.lock";
/// How long a starting server waits for that lock: the helper of a killed
/// server finishes its last call within [`REPLY_TIMEOUT`], or is stuck.
const LOCK_WAIT: Duration = Duration::from_secs(65);
/// The delay before replacing a helper that broke before answering a call,
/// doubled for every further one that does.
const RESPAWN_BACKOFF: Duration = Duration::from_millis(100);
const RESPAWN_BACKOFF_CAP: Duration = Duration::from_secs(5);
/// A reply is an error message at most; a longer line is a broken helper.
const MAX_REPLY_BYTES: usize = 64 * 1024;
/// How long a killed helper gets to be reaped. One stuck in the kernel
/// (uninterruptible sleep) is left to tokio's orphan reaper instead of
/// stalling the driver.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Request {
    /// Mount the sandbox's rootfs (its disk, if `disk`, then the overlay
    /// of `lower`), create the container from `bundle` (the sandbox dir),
    /// bring `lo` up, start it.
    Start {
        id: String,
        state_root: PathBuf,
        bundle: PathBuf,
        log: PathBuf,
        lower: PathBuf,
        /// `lower` is the unshifted build: mount it idmapped (see
        /// `idmapped`) rather than use it as it is.
        #[serde(default)]
        idmap_lower: bool,
        disk: bool,
        root_uid: Option<u32>,
    },
    /// Delete the (stopped) container and its cgroups.
    Delete { id: String, state_root: PathBuf },
    /// Whether an overlay over an idmapped lower layer works, tried in
    /// `scratch` (see `idmapped::probe`).
    ProbeIdmap { scratch: PathBuf },
}

/// One line from the server: a request and the number the reply echoes.
/// The request is a separate object, not flattened into this one, because
/// requests have an `id` field of their own (the container's).
#[derive(Debug, Serialize, Deserialize)]
struct Call<R> {
    seq: u64,
    request: R,
}

/// One line from the helper.
#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    /// The number of the call answered; absent when the line read was not
    /// a call at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Reply {
    fn into_outcome(self) -> Result<(), RuntimeError> {
        match self.error {
            None => Ok(()),
            Some(message) => Err(RuntimeError::Engine {
                context: "youki".into(),
                message,
            }),
        }
    }
}

/// The helper's main loop: one call per stdin line, one reply per line.
/// `lock_fd` is the server's lock ([`lock`]), held until this exits.
pub fn serve_requests(lock_fd: Option<RawFd>) -> std::process::ExitCode {
    if let Some(fd) = lock_fd {
        // SAFETY: F_SETFD on a descriptor number changes only its flags.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            eprintln!("sbx youki helper: no lock descriptor {fd}");
            return std::process::ExitCode::FAILURE;
        }
    }
    if let Err(err) = private_mount_namespace() {
        // Without it, sandbox mounts would land in (and could propagate
        // through) the host's namespace: refuse to run instead.
        eprintln!("sbx youki helper: {err}");
        return std::process::ExitCode::FAILURE;
    }
    serve(
        std::io::stdin().lock(),
        std::io::stdout().lock(),
        |request| {
            let outcome = run(request);
            reap_exited_children();
            outcome
        },
    );
    std::process::ExitCode::SUCCESS
}

/// Answers every call read from `input` on `output`, running each request
/// with `run`, until `input` ends or `output` breaks.
fn serve(
    input: impl BufRead,
    mut output: impl Write,
    mut run: impl FnMut(Request) -> Result<(), RuntimeError>,
) {
    for line in input.lines() {
        let Ok(line) = line else { break };
        let reply = answer(&line, &mut run);
        let text = serde_json::to_string(&reply).expect("a reply always serializes");
        if writeln!(output, "{text}")
            .and_then(|()| output.flush())
            .is_err()
        {
            break;
        }
    }
}

/// The reply to one line. A line that is no call gets a reply without a
/// number, which the driver takes for a broken helper: it is a bug in this
/// binary, and the stream cannot be trusted after it.
fn answer(line: &str, run: &mut impl FnMut(Request) -> Result<(), RuntimeError>) -> Reply {
    let call = match serde_json::from_str::<Call<serde_json::Value>>(line) {
        Ok(call) => call,
        Err(err) => {
            return Reply {
                seq: None,
                error: Some(format!("malformed call: {err}")),
            }
        }
    };
    let outcome = serde_json::from_value::<Request>(call.request)
        .map_err(|err| RuntimeError::Engine {
            context: "youki helper".into(),
            message: format!("malformed request: {err}"),
        })
        .and_then(run);
    Reply {
        seq: Some(call.seq),
        error: outcome.err().map(|err| err.to_string()),
    }
}

/// Runs one request, in the helper.
fn run(request: Request) -> Result<(), RuntimeError> {
    match request {
        Request::Start {
            id,
            state_root,
            bundle,
            log,
            lower,
            idmap_lower,
            disk,
            root_uid,
        } => super::in_helper::mount_and_start(
            &id,
            &state_root,
            &SandboxDir::new(bundle),
            &log,
            super::in_helper::Layers {
                lower: &lower,
                idmap_lower,
                disk,
                root_uid,
            },
        ),
        Request::Delete { id, state_root } => super::in_helper::delete_container(&id, &state_root),
        Request::ProbeIdmap { scratch } => {
            super::idmapped::probe(&scratch).map_err(|reason| RuntimeError::Engine {
                context: "idmapped image layers".into(),
                message: reason,
            })
        }
    }
}

/// Moves this process into a new mount namespace in which nothing
/// propagates to or from the host's.
fn private_mount_namespace() -> Result<(), RuntimeError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|errno| RuntimeError::Io {
        context: "cannot make a mount namespace for the youki helper".into(),
        source: errno.into(),
    })?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|errno| RuntimeError::Io {
        context: "cannot make the youki helper's mounts private".into(),
        source: errno.into(),
    })
}

/// Container inits are our children (libcontainer clones them with
/// CLONE_PARENT from an intermediate we own); reap the ones that exited.
/// Nothing of libcontainer runs between requests, so this cannot steal an
/// exit status libcontainer waits for.
fn reap_exited_children() {
    loop {
        // SAFETY: waitpid with WNOHANG on any child never blocks.
        let pid = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if pid <= 0 {
            break;
        }
    }
}

/// The server's handle on its helper: a queue to the driver task that owns
/// the helper process (see the module doc).
#[derive(Debug)]
pub(crate) struct Helper {
    jobs: mpsc::UnboundedSender<Job>,
}

/// A request on its way to the driver, and where its outcome goes.
#[derive(Debug)]
struct Job {
    request: serde_json::Value,
    outcome: oneshot::Sender<Result<(), RuntimeError>>,
}

/// The driver's time limits; the tests shorten them.
#[derive(Debug, Clone, Copy)]
struct Timing {
    reply: Duration,
    backoff: Duration,
    backoff_cap: Duration,
}

impl Timing {
    const SERVER: Timing = Timing {
        reply: REPLY_TIMEOUT,
        backoff: RESPAWN_BACKOFF,
        backoff_cap: RESPAWN_BACKOFF_CAP,
    };
}

/// Takes the lock of the helpers of `state_root` (see the module docs),
/// waiting while a helper of a killed server finishes its last call.
pub(crate) async fn lock(state_root: &Path) -> Result<OwnedFd, RuntimeError> {
    lock_within(state_root, LOCK_WAIT).await
}

async fn lock_within(state_root: &Path, wait: Duration) -> Result<OwnedFd, RuntimeError> {
    let path = state_root.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(RuntimeError::io(format!("cannot open {}", path.display())))?;
    let started = Instant::now();
    let mut said = false;
    loop {
        // SAFETY: flock on an open descriptor; LOCK_NB never blocks.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file.into());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(RuntimeError::Io {
                context: format!("cannot lock {}", path.display()),
                source: err,
            });
        }
        if started.elapsed() >= wait {
            return Err(RuntimeError::Engine {
                context: "youki helper".into(),
                message: format!(
                    "{} is still locked after {} s: another sbx server runs on this data dir, \
                     or the helper of one that was killed is stuck",
                    path.display(),
                    wait.as_secs()
                ),
            });
        }
        if !std::mem::replace(&mut said, true) {
            tracing::info!(
                "waiting for the youki helper of a killed server to finish its last call"
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Helper {
    /// Starts the helper (`sbx __youki-helper`) and its driver, handing it
    /// `lock` ([`lock`]); every helper the driver starts later gets it
    /// too. Must be called within a tokio runtime.
    pub(crate) fn spawn(lock: OwnedFd) -> Result<Self, RuntimeError> {
        let exe =
            std::env::current_exe().map_err(RuntimeError::io("cannot find the sbx executable"))?;
        let mut command = std::process::Command::new(exe);
        let fd = lock.as_raw_fd();
        command
            .arg(HELPER_SUBCOMMAND)
            .arg("--lock-fd")
            .arg(fd.to_string());
        // The closure owns the lock: it lives as long as the command the
        // driver restarts helpers from.
        let lock = Arc::new(lock);
        // SAFETY: between fork and exec the closure makes one fcntl call,
        // which is async-signal-safe, on the child's own descriptor table.
        unsafe {
            command.pre_exec(move || {
                if libc::fcntl(lock.as_raw_fd(), libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Self::start(command, Timing::SERVER)
    }

    /// Starts `command` as the helper, and its driver; the tests start fake
    /// helpers this way. The first helper is started here, so that a
    /// helper that cannot start at all fails the server's start-up.
    fn start(command: std::process::Command, timing: Timing) -> Result<Self, RuntimeError> {
        let mut command = Command::from(command);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // The helper logs to the server's stderr.
            .stderr(Stdio::inherit())
            // Should the driver task be dropped without ending (the async
            // runtime shutting down), the helper still goes with it.
            .kill_on_drop(true);
        let first = Process::spawn(&mut command)?;
        let (jobs, queue) = mpsc::unbounded_channel();
        let driver = Driver {
            command,
            timing,
            last_seq: 0,
            failures: 0,
        };
        tokio::spawn(driver.run(queue, first));
        Ok(Self { jobs })
    }

    /// Runs one request in the helper and returns its outcome. Dropping the
    /// future drops only the outcome: once polled, the request runs.
    pub(crate) async fn call(&self, request: &Request) -> Result<(), RuntimeError> {
        let request = serde_json::to_value(request).map_err(|err| RuntimeError::Engine {
            context: "youki helper".into(),
            message: format!("cannot encode a request: {err}"),
        })?;
        let (outcome, reply) = oneshot::channel();
        self.jobs
            .send(Job { request, outcome })
            .map_err(|_| RuntimeError::HelperGone)?;
        // An error here means the driver ended without answering: the async
        // runtime is shutting down.
        reply.await.map_err(|_| RuntimeError::HelperGone)?
    }
}

/// The task that owns the helper process (see the module doc).
#[derive(Debug)]
struct Driver {
    /// How to start a helper: kept to start the next one.
    command: Command,
    timing: Timing,
    /// The number of the last call written.
    last_seq: u64,
    /// Helpers that broke (or failed to start) in a row without answering
    /// a call in between: sets the delay before the next one.
    failures: u32,
}

/// What the driver waits for between calls.
#[derive(Debug)]
enum Event {
    Job(Option<Job>),
    HelperExited(String),
}

impl Driver {
    async fn run(mut self, mut queue: mpsc::UnboundedReceiver<Job>, first: Process) {
        let mut helper = Some(first);
        loop {
            let event = match helper.as_mut() {
                Some(process) => tokio::select! {
                    // Biased: a helper that died is replaced before the
                    // next request is written, which would otherwise be
                    // lost to it.
                    biased;
                    status = process.child.wait() => Event::HelperExited(exit_reason(status)),
                    job = queue.recv() => Event::Job(job),
                },
                None => Event::Job(queue.recv().await),
            };
            let job = match event {
                Event::HelperExited(reason) => {
                    self.died_while_idle(&mut helper, &reason);
                    continue;
                }
                Event::Job(None) => break,
                Event::Job(Some(job)) => job,
            };
            // The wait above learns of an exit only once the reactor has
            // seen the helper's pidfd turn readable, which can be after the
            // job arrived: ask the kernel directly before writing.
            if let Some(reason) = helper.as_mut().and_then(Process::exited) {
                self.died_while_idle(&mut helper, &reason);
            }
            if helper.is_none() {
                match self.respawn().await {
                    Ok(process) => helper = Some(process),
                    Err(err) => {
                        tracing::error!(%err, "cannot restart the youki helper");
                        // The caller may have gone: then only the error is lost.
                        let _ = job.outcome.send(Err(err));
                        continue;
                    }
                }
            }
            let process = helper.as_mut().expect("a helper runs by now");
            self.last_seq += 1;
            let seq = self.last_seq;
            let exchanged =
                tokio::time::timeout(self.timing.reply, process.exchange(seq, &job.request)).await;
            let answered = match exchanged {
                Ok(answered) => answered,
                Err(_) => Err(format!("no reply within {:?}", self.timing.reply)),
            };
            let outcome = match answered {
                Ok(reply) => {
                    self.failures = 0;
                    reply.into_outcome()
                }
                Err(reason) => {
                    tracing::error!(
                        pid = ?process.pid,
                        seq,
                        %reason,
                        "youki helper broke during a call; the call fails and a new helper starts"
                    );
                    self.failures += 1;
                    if let Some(process) = helper.take() {
                        process.stop().await;
                    }
                    Err(RuntimeError::HelperGone)
                }
            };
            // The caller may have gone (its client hung up): then only its
            // outcome is lost, and nothing is left for the next caller.
            let _ = job.outcome.send(outcome);
        }
        if let Some(process) = helper {
            process.stop().await;
        }
    }

    fn died_while_idle(&mut self, helper: &mut Option<Process>, reason: &str) {
        let pid = helper.take().and_then(|process| process.pid);
        tracing::error!(
            ?pid,
            %reason,
            "youki helper died while idle; a new one starts with the next request"
        );
        self.failures += 1;
    }

    /// Starts the next helper, after the backoff if the last ones broke in
    /// a row.
    async fn respawn(&mut self) -> Result<Process, RuntimeError> {
        if self.failures > 1 {
            let doublings = (self.failures - 2).min(16);
            let delay = self
                .timing
                .backoff
                .saturating_mul(1 << doublings)
                .min(self.timing.backoff_cap);
            tracing::warn!(
                ?delay,
                failures = self.failures,
                "youki helpers keep breaking; waiting before starting another"
            );
            tokio::time::sleep(delay).await;
        }
        let process = Process::spawn(&mut self.command).inspect_err(|_| self.failures += 1)?;
        tracing::warn!(pid = ?process.pid, "youki helper restarted");
        Ok(process)
    }
}

/// One helper process and its pipes.
#[derive(Debug)]
struct Process {
    child: Child,
    /// For the log; the child's own id goes once it is reaped.
    pid: Option<u32>,
    stdin: ChildStdin,
    replies: FramedRead<ChildStdout, LinesCodec>,
}

impl Process {
    fn spawn(command: &mut Command) -> Result<Self, RuntimeError> {
        let mut child = command
            .spawn()
            .map_err(RuntimeError::io("cannot start the youki helper"))?;
        let stdin = child.stdin.take().expect("the helper's stdin is piped");
        let stdout = child.stdout.take().expect("the helper's stdout is piped");
        Ok(Self {
            pid: child.id(),
            child,
            stdin,
            replies: FramedRead::new(stdout, LinesCodec::new_with_max_length(MAX_REPLY_BYTES)),
        })
    }

    /// Why the helper has exited, if it has.
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => Some(exit_reason(Ok(status))),
            Err(err) => Some(exit_reason(Err(err))),
        }
    }

    /// Writes call `seq` and reads its reply. An error says why the helper
    /// can no longer be trusted with another call.
    async fn exchange(&mut self, seq: u64, request: &serde_json::Value) -> Result<Reply, String> {
        let mut line =
            serde_json::to_string(&Call { seq, request }).expect("a JSON value always serializes");
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|err| format!("cannot write to it: {err}"))?;
        let answer = tokio::select! {
            // Biased: a reply already written counts even if the helper
            // died right after writing it.
            biased;
            answer = self.replies.next() => answer,
            status = self.child.wait() => return Err(exit_reason(status)),
        };
        let answer = match answer {
            Some(Ok(answer)) => answer,
            Some(Err(err)) => return Err(format!("cannot read its reply: {err}")),
            None => {
                return Err(match self.child.try_wait() {
                    Ok(Some(status)) => exit_reason(Ok(status)),
                    _ => "it closed its stdout".into(),
                })
            }
        };
        let reply: Reply = serde_json::from_str(&answer)
            .map_err(|err| format!("malformed reply {answer:?}: {err}"))?;
        match reply.seq {
            Some(answered) if answered == seq => Ok(reply),
            answered => Err(format!(
                "it answered call {answered:?} while call {seq} was in flight"
            )),
        }
    }

    /// Kills the helper and reaps it.
    async fn stop(self) {
        let Self {
            mut child,
            pid,
            stdin,
            ..
        } = self;
        drop(stdin);
        // Fails only for a helper already reaped, which is what we want.
        let _ = child.start_kill();
        if tokio::time::timeout(REAP_TIMEOUT, child.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?pid,
                "youki helper not gone {REAP_TIMEOUT:?} after SIGKILL; left to be reaped later"
            );
        }
    }
}

/// Why a helper ended, for the log.
fn exit_reason(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(status) => format!("it exited ({status})"),
        Err(err) => format!("cannot wait for it: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn calls_are_numbered_lines() {
        let request = Request::Delete {
            id: "abc".into(),
            state_root: "/var/lib/sbx/youki".into(),
        };
        let line = serde_json::to_string(&Call {
            seq: 7,
            request: &request,
        })
        .expect("serializable");
        assert_eq!(
            line,
            r#"{"seq":7,"request":{"op":"delete","id":"abc","state_root":"/var/lib/sbx/youki"}}"#
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn the_helper_echoes_each_calls_number() {
        let input = concat!(
            r#"{"seq":3,"request":{"op":"delete","id":"a","state_root":"/s"}}"#,
            "\n",
            r#"{"seq":4,"request":{"op":"delete","id":"b","state_root":"/s"}}"#,
            "\n",
            r#"{"seq":5,"request":{"op":"explode"}}"#,
            "\n",
            "not a call\n",
        );
        let mut output = Vec::new();
        let mut ran = Vec::new();
        serve(input.as_bytes(), &mut output, |request| {
            let Request::Delete { id, .. } = request else {
                panic!("only deletes were sent")
            };
            ran.push(id.clone());
            match id.as_str() {
                "a" => Ok(()),
                _ => Err(RuntimeError::Engine {
                    context: "test".into(),
                    message: format!("no {id}"),
                }),
            }
        });
        assert_eq!(ran, ["a", "b"]);
        let replies: Vec<Reply> = String::from_utf8(output)
            .expect("utf-8")
            .lines()
            .map(|line| serde_json::from_str(line).expect("a reply"))
            .collect();
        assert_eq!(replies.len(), 4);
        assert_eq!(
            (replies[0].seq, replies[0].error.as_deref()),
            (Some(3), None)
        );
        assert_eq!(
            (replies[1].seq, replies[1].error.as_deref()),
            (Some(4), Some("test: no b"))
        );
        assert_eq!(replies[2].seq, Some(5));
        assert!(replies[2]
            .error
            .as_deref()
            .is_some_and(|error| error.contains("malformed request")));
        assert_eq!(replies[3].seq, None, "a line that is no call has no number");
    }

    /// A fake helper in sh. It answers a call for container `<id>` with the
    /// error "<id> by <its pid>", so a test sees which call a reply was
    /// for and which helper gave it, except for ids that make it
    /// misbehave: `slow…` answers after 300 ms, `exit…` exits without
    /// answering, `hang…` never answers, `wrong-seq…` answers with the
    /// next call's number, `garbage…` answers with a line that is not JSON,
    /// `ok…` answers with success.
    const FAKE_HELPER: &str = r#"
        while IFS= read -r line; do
          seq=${line#'{"seq":'}; seq=${seq%%,*}
          id=${line#*'"id":"'}; id=${id%%'"'*}
          case $id in
            slow*) sleep 0.3 ;;
            exit*) exit 3 ;;
            hang*) exec sleep 30 ;;
            wrong-seq*) seq=$((seq + 1)) ;;
            garbage*) echo 'not json'; continue ;;
            ok*) echo "{\"seq\":$seq}"; continue ;;
          esac
          echo "{\"seq\":$seq,\"error\":\"$id by $$\"}"
        done
    "#;

    const QUICK: Timing = Timing {
        reply: Duration::from_secs(5),
        backoff: Duration::from_millis(100),
        backoff_cap: Duration::from_millis(400),
    };

    fn fake_helper(script: &str, timing: Timing) -> Helper {
        let mut command = std::process::Command::new("sh");
        command.arg("-c").arg(script);
        Helper::start(command, timing).expect("sh starts")
    }

    /// Asks the fake about container `id`: its answer ("<id> by <pid>"),
    /// or "ok" for a success.
    async fn ask(helper: &Helper, id: &str) -> Result<String, RuntimeError> {
        let request = Request::Delete {
            id: id.into(),
            state_root: "/nowhere".into(),
        };
        match helper.call(&request).await {
            Ok(()) => Ok("ok".into()),
            Err(RuntimeError::Engine { message, .. }) => Ok(message),
            Err(err) => Err(err),
        }
    }

    /// The pid of the fake helper that gave `answer`.
    fn answered_by(answer: &str) -> i32 {
        answer
            .rsplit(' ')
            .next()
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("{answer:?} names no pid"))
    }

    fn is_gone(result: Result<String, RuntimeError>) -> bool {
        matches!(result, Err(RuntimeError::HelperGone))
    }

    /// Whether `pid` has exited (a zombie counts) or been reaped.
    fn has_exited(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
        })
    }

    async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn the_helper_lock_is_one_holders_at_a_time_and_goes_with_it() {
        let root = tempfile::tempdir().expect("tempdir");
        let held = lock_within(root.path(), Duration::ZERO)
            .await
            .expect("free");
        let refused = lock_within(root.path(), Duration::from_millis(50)).await;
        let message = refused.expect_err("held").to_string();
        assert!(message.contains("still locked"), "{message}");
        // A helper holds the same lock through an inherited descriptor.
        let inherited = held.try_clone().expect("dup");
        drop(held);
        assert!(lock_within(root.path(), Duration::ZERO).await.is_err());
        drop(inherited);
        lock_within(root.path(), Duration::ZERO)
            .await
            .expect("free once every holder is gone");
    }

    #[tokio::test]
    async fn calls_get_their_own_replies() {
        let helper = fake_helper(FAKE_HELPER, QUICK);
        let first = ask(&helper, "a").await.expect("an answer");
        assert!(first.starts_with("a by "), "{first}");
        let pid = answered_by(&first);
        assert_eq!(
            ask(&helper, "b").await.expect("an answer"),
            format!("b by {pid}")
        );
        assert_eq!(ask(&helper, "ok").await.expect("an answer"), "ok");
    }

    #[tokio::test]
    async fn a_call_dropped_after_sending_does_not_hand_its_reply_to_the_next() {
        let helper = fake_helper(FAKE_HELPER, QUICK);
        // The request is written at once; its reply comes after 300 ms.
        let dropped =
            tokio::time::timeout(Duration::from_millis(50), ask(&helper, "slow-first")).await;
        assert!(dropped.is_err(), "the first call was still waiting");
        let next = ask(&helper, "next").await.expect("an answer");
        assert!(next.starts_with("next by "), "the next call got {next:?}");
        let pid = answered_by(&next);
        assert_eq!(
            ask(&helper, "third").await.expect("an answer"),
            format!("third by {pid}"),
            "the same helper serves on, in step"
        );
    }

    #[tokio::test]
    async fn a_helper_that_exits_mid_call_fails_that_call_and_is_replaced() {
        let helper = fake_helper(FAKE_HELPER, QUICK);
        let before = answered_by(&ask(&helper, "before").await.expect("an answer"));
        assert!(is_gone(ask(&helper, "exit").await));
        let after = ask(&helper, "after").await.expect("a new helper answers");
        assert!(after.starts_with("after by "), "{after}");
        assert_ne!(answered_by(&after), before, "a new helper");
        assert!(has_exited(before), "the old helper is gone");
    }

    #[tokio::test]
    async fn a_helper_that_dies_while_idle_is_replaced_without_losing_a_call() {
        let helper = fake_helper(FAKE_HELPER, QUICK);
        let before = answered_by(&ask(&helper, "before").await.expect("an answer"));
        // SAFETY: kill(2) on the fake helper this test started.
        assert_eq!(unsafe { libc::kill(before, libc::SIGKILL) }, 0);
        wait_until("the helper exited", || has_exited(before)).await;
        let after = ask(&helper, "after").await.expect("a new helper answers");
        assert!(after.starts_with("after by "), "{after}");
        assert_ne!(answered_by(&after), before);
    }

    #[tokio::test]
    async fn replies_are_matched_by_number() {
        let helper = fake_helper(FAKE_HELPER, QUICK);
        let first = answered_by(&ask(&helper, "first").await.expect("an answer"));
        assert!(
            is_gone(ask(&helper, "wrong-seq").await),
            "a reply to another call breaks the helper"
        );
        let second = answered_by(&ask(&helper, "after").await.expect("an answer"));
        assert_ne!(second, first, "a new helper");
        assert!(
            is_gone(ask(&helper, "garbage").await),
            "a malformed reply breaks the helper"
        );
        let third = answered_by(&ask(&helper, "after").await.expect("an answer"));
        assert_ne!(third, second, "a new helper");
    }

    #[tokio::test]
    async fn a_hung_helper_is_replaced_after_the_timeout() {
        let timing = Timing {
            reply: Duration::from_millis(200),
            ..QUICK
        };
        let helper = fake_helper(FAKE_HELPER, timing);
        let before = answered_by(&ask(&helper, "before").await.expect("an answer"));
        let started = Instant::now();
        assert!(is_gone(ask(&helper, "hang").await));
        assert!(started.elapsed() < Duration::from_secs(5));
        let after = answered_by(&ask(&helper, "after").await.expect("an answer"));
        assert_ne!(after, before);
        assert!(has_exited(before), "the hung helper was killed");
    }

    #[tokio::test]
    async fn a_helper_that_keeps_dying_is_restarted_with_a_growing_delay() {
        let starts = tempfile::NamedTempFile::new().expect("a temp file");
        let script = format!("echo started >> '{}'; exit 1", starts.path().display());
        let helper = fake_helper(&script, QUICK);
        let started = Instant::now();
        for _ in 0..4 {
            assert!(is_gone(ask(&helper, "any").await));
        }
        // However the first death is noticed, the restarts before the last
        // two calls waited 100 ms and 200 ms at least.
        assert!(started.elapsed() >= Duration::from_millis(300));
        let spawned = std::fs::read_to_string(starts.path())
            .expect("readable")
            .lines()
            .count();
        assert!(
            (2..=5).contains(&spawned),
            "one helper at start, at most one more per call: {spawned}"
        );
    }

    #[tokio::test]
    async fn dropping_the_helper_kills_it() {
        let helper = fake_helper(FAKE_HELPER, QUICK);
        let pid = answered_by(&ask(&helper, "who").await.expect("an answer"));
        drop(helper);
        wait_until("the dropped helper is killed", || has_exited(pid)).await;
    }
}

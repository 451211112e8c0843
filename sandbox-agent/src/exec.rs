//! `POST /exec`: run one command to completion and return everything at once.
//!
//! This is one consumer of [`process::spawn`]: it feeds stdin, collects both
//! output streams into [`CappedBuffer`]s and waits for the exit, all at the
//! same time (sequentially, a big stdin or a chatty command would deadlock
//! on full pipes). The timeout kills the whole process group, so a command's
//! own children die with it.
//!
//! A program that cannot be run (not found, not executable) is not a bad
//! request but a command that failed, as in a shell: the result carries
//! exit code 127 (or 126) and the reason on stderr, which is what an agent
//! driving the sandbox knows how to read. A missing cwd, by contrast, is the
//! request's fault and gets a 400.

use crate::env::command_env;
use crate::error::AgentError;
use crate::process::{
    self, is_program_error, signal_group, CommandSpec, GroupKillGuard, OutputStream,
};
use crate::reaper::{ExitStatus, ExitWatch};
use crate::user::Identity;
use crate::Agent;
use nix::sys::signal::Signal;
use sbx_api::{ExecRequest, ExecResult, DEFAULT_OUTPUT_CAP};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;

/// Shells tried, in order, for `shell` requests.
const SHELLS: &[&str] = &["/bin/bash", "/bin/sh"];

/// Runs a validated request to completion.
pub async fn run(agent: &Agent, request: ExecRequest) -> Result<ExecResult, AgentError> {
    let spec = command_spec(agent, &request)?;
    let spawned = match process::spawn(&agent.reaper, &spec) {
        Ok(spawned) => spawned,
        Err(AgentError::Spawn { program, source }) if is_program_error(&source) => {
            return Ok(not_runnable(&program, &source));
        }
        Err(err) => return Err(err),
    };
    tracing::debug!(pid = spawned.pid, program = %spec.argv[0], "exec started");
    let timeout = request.timeout_ms.map(Duration::from_millis);
    let result = collect(spawned, request.stdin, timeout, DEFAULT_OUTPUT_CAP).await?;
    tracing::debug!(
        program = %spec.argv[0],
        exit_code = result.exit_code,
        duration_ms = result.duration_ms,
        timed_out = result.timed_out,
        "exec finished"
    );
    Ok(result)
}

/// What to spawn for a validated request (shared with background
/// processes): argv, checked cwd, identity and environment.
pub(crate) fn command_spec(
    agent: &Agent,
    request: &ExecRequest,
) -> Result<CommandSpec, AgentError> {
    let argv = match (&request.cmd, &request.shell) {
        (Some(argv), None) => argv.clone(),
        (None, Some(script)) => vec![shell().to_owned(), "-c".to_owned(), script.clone()],
        _ => {
            return Err(AgentError::InvalidRequest(
                "give exactly one of cmd or shell".into(),
            ))
        }
    };
    let cwd = request
        .cwd
        .as_ref()
        .map_or_else(|| agent.config.workdir.clone(), PathBuf::from);
    check_cwd(&cwd)?;
    let identity = request
        .user
        .as_deref()
        .or(agent.config.default_user.as_deref())
        .map(Identity::resolve)
        .transpose()?;
    let user_env = identity.as_ref().map(Identity::env).unwrap_or_default();
    Ok(CommandSpec {
        argv,
        cwd,
        env: command_env(&agent.config.base_env, &user_env, &request.env),
        stdin: request.stdin.is_some(),
        identity,
    })
}

fn shell() -> &'static str {
    SHELLS
        .iter()
        .copied()
        .find(|shell| Path::new(shell).exists())
        .unwrap_or("/bin/sh")
}

/// A cwd that is missing would fail inside the child as ENOENT, which is
/// indistinguishable from a missing program; check it up front instead.
fn check_cwd(cwd: &Path) -> Result<(), AgentError> {
    match std::fs::metadata(cwd) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(AgentError::InvalidRequest(format!(
            "cwd {} is not a directory",
            cwd.display()
        ))),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Err(AgentError::InvalidRequest(
            format!("cwd {} does not exist", cwd.display()),
        )),
        Err(err) => Err(AgentError::InvalidRequest(format!(
            "cannot use cwd {}: {err}",
            cwd.display()
        ))),
    }
}

/// The result of a command that could not be started, shaped like a shell's.
pub(crate) fn not_runnable(program: &str, err: &io::Error) -> ExecResult {
    let exit_code = if err.raw_os_error() == Some(libc::ENOENT) {
        127
    } else {
        126
    };
    ExecResult {
        exit_code,
        stdout: String::new(),
        stderr: format!("sandbox-agent: {program}: {}\n", spawn_reason(err)),
        duration_ms: 0,
        timed_out: false,
        truncated: false,
    }
}

/// Why a program could not be run, as `strerror` says it (without the
/// "(os error N)" of io::Error's Display).
pub(crate) fn spawn_reason(err: &io::Error) -> String {
    err.raw_os_error().map_or_else(
        || err.to_string(),
        |errno| nix::errno::Errno::from_raw(errno).desc().to_owned(),
    )
}

/// Drives a spawned command to the end: stdin, both outputs and the exit
/// (with the timeout) progress together.
async fn collect(
    spawned: process::Spawned,
    stdin: Option<String>,
    timeout: Option<Duration>,
    cap: usize,
) -> Result<ExecResult, AgentError> {
    let process::Spawned {
        pid,
        started,
        stdin: stdin_pipe,
        stdout,
        stderr,
        exit,
    } = spawned;
    let mut guard = GroupKillGuard::new(pid);
    let feed_exit = exit.clone();
    let (out, err, waited, ()) = tokio::join!(
        read_capped(stdout, cap),
        read_capped(stderr, cap),
        wait_exit(pid, exit, timeout),
        feed(stdin_pipe, stdin, feed_exit),
    );
    let (status, timed_out) = waited?;
    let duration = started.elapsed();
    guard.disarm();
    Ok(ExecResult {
        exit_code: status.code(),
        truncated: out.truncated() || err.truncated(),
        stdout: out.into_string(),
        stderr: err.into_string(),
        duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        timed_out,
    })
}

/// Waits for the command to exit; when `timeout` runs out first, kills its
/// process group and reports `timed_out`.
pub(crate) async fn wait_exit(
    pid: i32,
    mut exit: ExitWatch,
    timeout: Option<Duration>,
) -> Result<(ExitStatus, bool), AgentError> {
    let timed_out = match timeout {
        Some(limit) => tokio::time::timeout(limit, exit.exited()).await.is_err(),
        None => false,
    };
    if timed_out {
        signal_group(pid, Signal::SIGKILL);
    }
    Ok((exit.wait().await?, timed_out))
}

/// Writes `data` to the command's stdin and closes it. Gives up when the
/// command exits: a grandchild may hold the pipe without ever reading it.
pub(crate) async fn feed(pipe: Option<pipe::Sender>, data: Option<String>, mut exit: ExitWatch) {
    let (Some(mut pipe), Some(data)) = (pipe, data) else {
        return;
    };
    tokio::select! {
        written = pipe.write_all(data.as_bytes()) => {
            if let Err(err) = written {
                // EPIPE: the command closed stdin without reading it all.
                tracing::debug!(%err, "stdin not fully delivered");
            }
        }
        () = exit.exited() => {}
    }
    // Dropping the pipe closes it: the command sees EOF.
}

async fn read_capped(mut stream: OutputStream, cap: usize) -> CappedBuffer {
    let mut buffer = CappedBuffer::new(cap);
    while let Some(chunk) = stream.next_chunk().await {
        buffer.push(&chunk);
    }
    buffer
}

/// Keeps the first `cap` bytes pushed into it and counts the rest, so a
/// flood is drained (the writer never blocks) without growing memory.
#[derive(Debug)]
pub struct CappedBuffer {
    data: Vec<u8>,
    cap: usize,
    dropped: u64,
}

impl CappedBuffer {
    pub fn new(cap: usize) -> Self {
        Self {
            data: Vec::new(),
            cap,
            dropped: 0,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        let room = self.cap - self.data.len();
        let kept = bytes.len().min(room);
        self.data.extend_from_slice(&bytes[..kept]);
        self.dropped += (bytes.len() - kept) as u64;
    }

    /// Some bytes were thrown away.
    pub fn truncated(&self) -> bool {
        self.dropped > 0
    }

    /// The kept bytes as text; invalid UTF-8 (including a character cut at
    /// the cap) becomes U+FFFD.
    pub fn into_string(self) -> String {
        match String::from_utf8(self.data) {
            Ok(text) => text,
            Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_buffer_keeps_the_head_and_counts_the_rest() {
        let mut buffer = CappedBuffer::new(5);
        buffer.push(b"abc");
        assert!(!buffer.truncated());
        buffer.push(b"defg");
        buffer.push(b"hij");
        assert!(buffer.truncated());
        assert_eq!(buffer.dropped, 5);
        assert_eq!(buffer.into_string(), "abcde");
    }

    #[test]
    fn capped_buffer_at_exactly_the_cap_is_not_truncated() {
        let mut buffer = CappedBuffer::new(4);
        buffer.push(b"abcd");
        buffer.push(b"");
        assert!(!buffer.truncated());
        assert_eq!(buffer.into_string(), "abcd");
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let mut buffer = CappedBuffer::new(16);
        buffer.push(b"ok \xff");
        assert_eq!(buffer.into_string(), "ok \u{fffd}");
    }

    #[test]
    fn unrunnable_programs_look_like_shell_failures() {
        let missing = not_runnable("nope", &io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(missing.exit_code, 127);
        assert_eq!(
            missing.stderr,
            "sandbox-agent: nope: No such file or directory\n"
        );
        let denied = not_runnable("/etc/passwd", &io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(denied.exit_code, 126);
    }

    #[test]
    fn missing_and_non_directory_cwds_are_rejected() {
        let missing = check_cwd(Path::new("/nonexistent/sbx-test")).expect_err("missing cwd");
        assert!(missing
            .to_string()
            .contains("/nonexistent/sbx-test does not exist"));
        let file = check_cwd(Path::new("/proc/self/status")).expect_err("file cwd");
        assert!(file.to_string().contains("is not a directory"));
        check_cwd(Path::new("/")).expect("root is a directory");
    }
}

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
//! The protocol is private to one binary talking to itself, so its types
//! live here rather than in `sbx-api`.

use super::{RuntimeError, SandboxDir};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Mutex;

/// The hidden subcommand that runs [`serve_requests`].
pub const HELPER_SUBCOMMAND: &str = "__youki-helper";

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
        disk: bool,
        root_uid: Option<u32>,
    },
    /// Delete the (stopped) container and its cgroups.
    Delete { id: String, state_root: PathBuf },
}

#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The helper's main loop: one request per stdin line, one reply per line.
pub fn serve_requests() -> std::process::ExitCode {
    if let Err(err) = private_mount_namespace() {
        // Without it, sandbox mounts would land in (and could propagate
        // through) the host's namespace: refuse to run instead.
        eprintln!("sbx youki helper: {err}");
        return std::process::ExitCode::FAILURE;
    }
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let outcome = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Start {
                id,
                state_root,
                bundle,
                log,
                lower,
                disk,
                root_uid,
            }) => super::youki::mount_and_start(
                &id,
                &state_root,
                &SandboxDir::new(bundle),
                &log,
                (&lower, disk, root_uid),
            ),
            Ok(Request::Delete { id, state_root }) => {
                super::youki::delete_container(&id, &state_root)
            }
            Err(err) => Err(RuntimeError::Engine {
                context: "youki helper".into(),
                message: format!("malformed request: {err}"),
            }),
        };
        reap_exited_children();
        let reply = Reply {
            error: outcome.err().map(|err| err.to_string()),
        };
        let text = serde_json::to_string(&reply).expect("a reply always serializes");
        if writeln!(stdout, "{text}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            break;
        }
    }
    std::process::ExitCode::SUCCESS
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

/// The server's handle on its helper.
#[derive(Debug)]
pub(crate) struct Helper {
    pipes: Mutex<(ChildStdin, BufReader<ChildStdout>)>,
    _child: Child,
}

impl Helper {
    pub(crate) fn spawn() -> Result<Self, RuntimeError> {
        let exe =
            std::env::current_exe().map_err(RuntimeError::io("cannot find the sbx executable"))?;
        let mut child = Command::new(exe)
            .arg(HELPER_SUBCOMMAND)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            // The helper logs to the server's stderr.
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(RuntimeError::io("cannot start the youki helper"))?;
        let stdin = child.stdin.take().ok_or(RuntimeError::HelperGone)?;
        let stdout = child.stdout.take().ok_or(RuntimeError::HelperGone)?;
        Ok(Self {
            pipes: Mutex::new((stdin, BufReader::new(stdout))),
            _child: child,
        })
    }

    /// Sends one request and waits for its reply.
    pub(crate) async fn call(&self, request: &Request) -> Result<(), RuntimeError> {
        let mut line = serde_json::to_string(request).map_err(|err| RuntimeError::Engine {
            context: "youki helper".into(),
            message: err.to_string(),
        })?;
        line.push('\n');
        let mut pipes = self.pipes.lock().await;
        let (stdin, stdout) = &mut *pipes;
        stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|_| RuntimeError::HelperGone)?;
        let mut answer = String::new();
        let read = stdout
            .read_line(&mut answer)
            .await
            .map_err(|_| RuntimeError::HelperGone)?;
        if read == 0 {
            return Err(RuntimeError::HelperGone);
        }
        let reply: Reply = serde_json::from_str(&answer).map_err(|err| RuntimeError::Engine {
            context: "youki helper".into(),
            message: format!("malformed reply: {err}"),
        })?;
        match reply.error {
            None => Ok(()),
            Some(message) => Err(RuntimeError::Engine {
                context: "youki".into(),
                message,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_lines() {
        let request = Request::Delete {
            id: "abc".into(),
            state_root: "/var/lib/sbx/youki".into(),
        };
        let line = serde_json::to_string(&request).expect("serializable");
        assert_eq!(
            line,
            r#"{"op":"delete","id":"abc","state_root":"/var/lib/sbx/youki"}"#
        );
        assert!(!line.contains('\n'));
    }
}

//! The harness shared by the agent test binaries: the real agent binary on
//! a temporary socket on the host (see `agent.rs`), plus bounded waits.
//! Each test binary uses a different part of it.
#![allow(dead_code)]

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sbx_api::client::{Client, EventStream};
use sbx_api::ExecEvent;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// One agent process, SIGTERMed (then SIGKILLed) on drop so that it stops
/// the commands it started. Only the pid spawned here is ever signalled.
pub struct TestAgent {
    child: Option<Child>,
    pub dir: TempDir,
    pub socket: PathBuf,
}

impl TestAgent {
    pub fn start() -> Self {
        Self::start_with_env(&[])
    }

    pub fn start_with_env(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the agent");
        let socket = dir.path().join("agent.sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sandbox-agent"))
            .arg("--socket")
            .arg(&socket)
            .arg("--workdir")
            .arg(dir.path())
            // Many agents share the host's loopback: each relay takes a free
            // port, and its proxy socket lives in the agent's own dir.
            .arg("--egress-listen")
            .arg("127.0.0.1:0")
            .arg("--egress-socket")
            .arg(dir.path().join("egress.sock"))
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("agent binary starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if let Some(status) = child.try_wait().expect("agent status") {
                panic!("agent exited before listening: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "agent socket did not appear within 10 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Self {
            child: Some(child),
            dir,
            socket,
        }
    }

    pub fn client(&self) -> Client {
        Client::unix(&self.socket)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn pid(&self) -> Pid {
        let child = self.child.as_ref().expect("agent still owned");
        Pid::from_raw(i32::try_from(child.id()).expect("pid fits"))
    }

    /// Waits up to `limit` for the agent to exit and returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("agent status") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if child.try_wait().ok().flatten().is_none() {
            let _ = kill(self.pid(), Signal::SIGTERM);
            if self.wait_exit(Duration::from_secs(3)).is_none() {
                if let Some(child) = self.child.as_mut() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }
}

pub fn read_pid(path: &Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(pid) = text.trim().parse() {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "no pid in {}", path.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// True once /proc/<pid> is gone (killed and reaped), within `limit`.
pub fn gone_within(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Longest a test waits for one event or for a stream to end.
pub const EVENT_LIMIT: Duration = Duration::from_secs(20);

/// The next event of an NDJSON stream, within [`EVENT_LIMIT`].
pub async fn next_event(events: &mut EventStream) -> Option<ExecEvent> {
    tokio::time::timeout(EVENT_LIMIT, events.next())
        .await
        .expect("event within the limit")
        .expect("well-formed event")
}

/// Every remaining event, the stream ending within [`EVENT_LIMIT`].
pub async fn all_events(events: EventStream) -> Vec<ExecEvent> {
    tokio::time::timeout(EVENT_LIMIT, events.collect())
        .await
        .expect("stream ends within the limit")
        .expect("well-formed events")
}

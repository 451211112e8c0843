//! A runtime without containers, for unit tests of everything above the
//! [`Runtime`] trait: the manager's pool, recovery, failed and hung starts,
//! races and cancellation run in milliseconds, without root.
//!
//! A "container" is a task in the test's own runtime playing the agent: it
//! takes its listener through the handoff socket, as a real agent does,
//! and answers `GET /health`. What `start` does is scripted per call.

use super::{ContainerSpec, Isolation, Limits, Runtime, RuntimeError, SandboxDir};
use async_trait::async_trait;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use std::collections::{HashMap, VecDeque};
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::AbortHandle;

/// What the next `start` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// Starts an agent that takes its listener and serves.
    Agent,
    /// Like `Agent`, after a pause.
    SlowAgent(Duration),
    /// Returns an engine error.
    Fail,
    /// Never returns.
    Hang,
    /// Returns, but no agent ever takes the handoff.
    NoAgent,
}

#[derive(Debug, Default)]
struct State {
    script: VecDeque<Start>,
    /// Live "containers": the agent task of each.
    running: HashMap<String, Option<AbortHandle>>,
    removed: Vec<String>,
    /// Ids whose "container" is frozen.
    paused: std::collections::HashSet<String>,
    /// Ids the OOM killer ended.
    oom_killed: std::collections::HashSet<String>,
    /// Ids whose `remove` fails, as an engine that will not let go.
    stuck: std::collections::HashSet<String>,
    /// Woken when a "container" is killed (see `Runtime::exited`).
    deaths: HashMap<String, Arc<tokio::sync::Notify>>,
    /// Whether sandboxes may ask for `disk_mb` (the disk image is the
    /// test's to write: the fake mounts nothing).
    disks: bool,
}

impl State {
    fn death(&mut self, id: &str) -> Arc<tokio::sync::Notify> {
        Arc::clone(self.deaths.entry(id.to_owned()).or_default())
    }

    /// Wakes whoever waits for `id`'s init to exit.
    fn died(&mut self, id: &str) {
        if let Some(death) = self.deaths.remove(id) {
            death.notify_one();
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct FakeRuntime {
    state: Mutex<State>,
}

impl FakeRuntime {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("no test panics while holding it")
    }

    /// Scripts the next starts, in order; unscripted starts are `Agent`.
    pub(crate) fn script(&self, starts: impl IntoIterator<Item = Start>) {
        self.state().script.extend(starts);
    }

    /// Whether `pause` froze `id` (and no `resume` thawed it since).
    pub(crate) fn is_paused(&self, id: &str) -> bool {
        self.state().paused.contains(id)
    }

    /// Ids whose container `remove` was called for, in order.
    pub(crate) fn removed(&self) -> Vec<String> {
        self.state().removed.clone()
    }

    /// Kills a container underneath the manager, as a crash would.
    pub(crate) fn kill(&self, id: &str) {
        let mut state = self.state();
        if let Some(Some(agent)) = state.running.remove(id) {
            agent.abort();
        }
        state.died(id);
    }

    /// Lets sandboxes have disks, so that they can be copied.
    pub(crate) fn allow_disks(&self) {
        self.state().disks = true;
    }

    /// Kills a container as the OOM killer would.
    pub(crate) fn kill_by_oom(&self, id: &str) {
        self.kill(id);
        self.state().oom_killed.insert(id.to_owned());
    }

    /// Makes `remove` of `id` fail (`false`: succeed again).
    pub(crate) fn set_stuck(&self, id: &str, stuck: bool) {
        let mut state = self.state();
        if stuck {
            state.stuck.insert(id.to_owned());
        } else {
            state.stuck.remove(id);
        }
    }

    /// Pretends a container runs (one found at recovery).
    pub(crate) fn adopt(&self, id: &str) {
        self.state().running.insert(id.to_owned(), None);
    }
}

/// Plays the agent of `dir`: takes the listener, answers every request.
async fn play_agent(dir: SandboxDir) {
    let handoff = dir.handoff_socket();
    let Ok(stream) = tokio::task::spawn_blocking(move || -> std::io::Result<OwnedFd> {
        let stream = std::os::unix::net::UnixStream::connect(handoff)?;
        let mut header = [0u8; 256];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 8]);
        let mut iov = [IoSliceMut::new(&mut header)];
        let message = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )?;
        for cmsg in message.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                // SAFETY: fresh descriptors from SCM_RIGHTS, each wrapped
                // once; the first is the listener, the rest are dropped.
                let mut owned = fds
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
                if let Some(listener) = owned.next() {
                    return Ok(listener);
                }
            }
        }
        Err(std::io::Error::other("no listener in the handoff"))
    })
    .await
    .expect("the handoff task does not panic") else {
        return;
    };
    let listener = std::os::unix::net::UnixListener::from(stream);
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::UnixListener::from_std(listener).expect("registered");
    let app = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
    let _ = axum::serve(listener, app).await;
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn version(&self) -> String {
        "0".into()
    }

    fn isolation(&self) -> Isolation {
        Isolation {
            image_mapping: None,
            host_root_uid: Some(nix::unistd::geteuid().as_raw()),
            disk_quota: if self.state().disks {
                Ok(())
            } else {
                Err("the fake runtime has no disks".into())
            },
            user_namespace_note: None,
        }
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let step = self.state().script.pop_front().unwrap_or(Start::Agent);
        let agent = match step {
            Start::Fail => {
                return Err(RuntimeError::Engine {
                    context: format!("starting {}", spec.id),
                    message: "scripted failure".into(),
                })
            }
            Start::Hang => std::future::pending().await,
            Start::NoAgent => None,
            Start::Agent => Some(tokio::spawn(play_agent(spec.dir.clone())).abort_handle()),
            Start::SlowAgent(pause) => {
                tokio::time::sleep(pause).await;
                Some(tokio::spawn(play_agent(spec.dir.clone())).abort_handle())
            }
        };
        self.state().running.insert(spec.id.clone(), agent);
        Ok(())
    }

    async fn tenant_cgroups(
        &self,
        _id: &str,
        _limits: &Limits,
    ) -> Result<Vec<std::fs::File>, RuntimeError> {
        Ok(Vec::new())
    }

    async fn remove(&self, id: &str, _dir: &SandboxDir) -> Result<(), RuntimeError> {
        let mut state = self.state();
        if state.stuck.contains(id) {
            return Err(RuntimeError::Engine {
                context: format!("removing {id}"),
                message: "the engine will not let go".into(),
            });
        }
        state.removed.push(id.to_owned());
        state.died(id);
        state.paused.remove(id);
        if let Some(Some(agent)) = state.running.remove(id) {
            agent.abort();
        }
        Ok(())
    }

    async fn is_running(&self, id: &str) -> Result<bool, RuntimeError> {
        Ok(self.state().running.contains_key(id))
    }

    async fn init_pid(&self, id: &str) -> Result<Option<i32>, RuntimeError> {
        Ok(self
            .state()
            .running
            .contains_key(id)
            .then(|| std::process::id() as i32))
    }

    async fn exited(&self, id: &str) -> Result<(), RuntimeError> {
        let death = {
            let mut state = self.state();
            if !state.running.contains_key(id) {
                return Ok(());
            }
            state.death(id)
        };
        death.notified().await;
        Ok(())
    }

    async fn oom_killed(&self, id: &str) -> bool {
        self.state().oom_killed.contains(id)
    }

    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        let mut state = self.state();
        if !state.running.contains_key(id) {
            return Err(RuntimeError::Engine {
                context: format!("pausing {id}"),
                message: "not running".into(),
            });
        }
        state.paused.insert(id.to_owned());
        Ok(())
    }

    async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        self.state().paused.remove(id);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(self.state().running.keys().cloned().collect())
    }
}

//! Starting a sandbox's agent on a socket the sandbox cannot redirect.
//!
//! Why: the orchestrator reaches a sandbox only through its agent's socket,
//! and code inside a sandbox is hostile. An agent that bound its own socket
//! in a directory the sandbox can write let that code swap the socket for a
//! symlink to a neighbour's agent, and the orchestrator, connecting by path,
//! served the neighbour's files to the attacker. So nothing the orchestrator
//! connects to lives where a sandbox can write:
//!
//! - before the container starts, the orchestrator binds the agent's
//!   listening socket at `<sandbox dir>/agent.sock` (0600, root), a
//!   directory the sandbox never sees, and a one-shot handoff socket in the
//!   run directory, which the sandbox sees read-only;
//! - the agent, PID 1, connects to the handoff socket first thing and
//!   receives the listening descriptor (`sbx_api::Handoff`); the handoff
//!   socket is then removed;
//! - the sandbox is ready when a request on `<sandbox dir>/agent.sock` is
//!   answered: the connection waits in the listener's backlog until the
//!   agent accepts, so no polling and no file watching is needed.
//!
//! Only the agent's uid may take the handoff, and it is taken before any
//! code of the sandbox's runs; a listener descriptor can only ever reach
//! the sandbox it was handed to. After an orchestrator restart the socket
//! file still names the agent's listener, so adoption needs no handoff.

use crate::runtime::SandboxDir;
use crate::sandbox_socket;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use sbx_api::client::Client;
use sbx_api::Handoff;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::UnixListener;

/// The sockets of a sandbox whose agent has not taken its listener yet.
#[derive(Debug)]
pub(crate) struct PendingAgent {
    listener: StdUnixListener,
    listener_path: PathBuf,
    handoff: UnixListener,
    handoff_path: PathBuf,
    /// The host uid the agent runs as: the only one that may take the
    /// handoff.
    agent_uid: u32,
}

impl PendingAgent {
    /// Binds the agent's listener and the handoff socket for `dir`, whose
    /// run directory must exist. `agent_uid` is the host uid of root inside
    /// the sandbox. Must run inside the tokio runtime.
    pub(crate) fn bind(dir: &SandboxDir, agent_uid: u32) -> io::Result<Self> {
        // The orchestrator's own (root's): only it connects to the agent.
        let listener_path = dir.agent_socket();
        let listener = sandbox_socket::bind(&listener_path, None)?;
        let handoff_path = dir.handoff_socket();
        let handoff = sandbox_socket::bind(&handoff_path, Some(agent_uid))?;
        handoff.set_nonblocking(true)?;
        Ok(Self {
            listener,
            listener_path,
            handoff: UnixListener::from_std(handoff)?,
            handoff_path,
            agent_uid,
        })
    }

    /// Waits (at most `timeout`) for the agent to connect to the handoff
    /// socket and gives it its listener and `tenant_cgroups`; then waits for
    /// the agent to answer on the listener. False when the agent did not
    /// show up in time.
    pub(crate) async fn hand_over(
        self,
        timeout: Duration,
        tenant_cgroups: &[File],
    ) -> io::Result<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        let handed = tokio::time::timeout_at(deadline, self.send(tenant_cgroups)).await;
        // Whatever happened, nobody may take the handoff later.
        let _ = sandbox_socket::remove(&self.handoff_path);
        match handed {
            Err(_elapsed) => return Ok(false),
            Ok(result) => result?,
        }
        // Our copy of the listener goes: the agent's is the only one left.
        drop(self.listener);
        match tokio::time::timeout_at(deadline, answers(&self.listener_path)).await {
            Err(_elapsed) => Ok(false),
            Ok(result) => result.map(|()| true),
        }
    }

    async fn send(&self, tenant_cgroups: &[File]) -> io::Result<()> {
        loop {
            let (stream, _) = self.handoff.accept().await?;
            let peer = stream.peer_cred()?;
            if peer.uid() != self.agent_uid {
                tracing::warn!(
                    uid = peer.uid(),
                    pid = ?peer.pid(),
                    "refused a handoff to a process that is not the agent"
                );
                continue;
            }
            let header = serde_json::to_vec(&Handoff {
                tenant_cgroups: tenant_cgroups.len(),
            })
            .map_err(io::Error::other)?;
            let fds: Vec<RawFd> = std::iter::once(self.listener.as_raw_fd())
                .chain(tenant_cgroups.iter().map(AsRawFd::as_raw_fd))
                .collect();
            stream.writable().await?;
            sendmsg::<()>(
                stream.as_raw_fd(),
                &[io::IoSlice::new(&header)],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(io::Error::from)?;
            return Ok(());
        }
    }
}

/// One request on the agent's socket that the agent answers.
async fn answers(path: &Path) -> io::Result<()> {
    let response = Client::unix(path)
        .send(http::Method::GET, "/health", None, bytes::Bytes::new())
        .await
        .map_err(io::Error::other)?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "the agent answered its first request with {}",
            response.status()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox_dir() -> (tempfile::TempDir, SandboxDir) {
        let temp = tempfile::tempdir().expect("tempdir");
        let dir = SandboxDir::new(temp.path().to_owned());
        std::fs::create_dir_all(dir.run_dir()).expect("run dir");
        (temp, dir)
    }

    #[tokio::test]
    async fn an_agent_that_never_comes_times_out_and_the_handoff_is_gone() {
        let (_temp, dir) = sandbox_dir();
        let uid = nix::unistd::getuid().as_raw();
        let pending = PendingAgent::bind(&dir, uid).expect("bind");
        assert!(dir.handoff_socket().exists());
        let ready = pending
            .hand_over(Duration::from_millis(50), &[])
            .await
            .expect("no error");
        assert!(!ready);
        assert!(!dir.handoff_socket().exists());
    }

    #[tokio::test]
    async fn a_caller_of_another_uid_gets_nothing() {
        let (_temp, dir) = sandbox_dir();
        let me = nix::unistd::getuid().as_raw();
        // The agent is someone else: our own connection must be refused.
        let pending = PendingAgent::bind(&dir, me.wrapping_add(1)).expect("bind");
        let handoff = dir.handoff_socket();
        let intruder = tokio::spawn(async move {
            let mut stream = tokio::net::UnixStream::connect(&handoff)
                .await
                .expect("connect");
            let mut buf = [0u8; 16];
            tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await
        });
        let ready = pending
            .hand_over(Duration::from_millis(200), &[])
            .await
            .expect("no error");
        assert!(!ready);
        // The intruder's connection was dropped without a byte.
        assert!(matches!(intruder.await.expect("joined"), Ok(0)));
    }
}

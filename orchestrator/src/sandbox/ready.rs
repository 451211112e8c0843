//! Waiting for a sandbox's agent to be ready, without polling.
//!
//! The agent binds its socket under a temporary name and renames it to
//! `agent.sock` only once it listens, so the socket's appearance *is* the
//! readiness signal. We watch the host side of the socket directory with
//! inotify (set up before the container starts, so the event cannot be
//! missed) and wake on the rename: no sleep loop, no probe requests.

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

pub(crate) struct SocketWatch {
    inotify: AsyncFd<InotifyFd>,
    socket: PathBuf,
}

impl std::fmt::Debug for SocketWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketWatch")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl SocketWatch {
    /// Starts watching `socket`'s directory, which must exist.
    pub(crate) fn new(socket: &Path) -> io::Result<Self> {
        let dir = socket
            .parent()
            .ok_or_else(|| io::Error::other("socket path has no parent directory"))?;
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        inotify.add_watch(dir, AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)?;
        // SAFETY: the AsyncFd owns the inotify instance, so its fd stays
        // open for as long as it is registered.
        let inotify =
            unsafe { AsyncFd::register_with_interest(InotifyFd(inotify), Interest::READABLE) }?;
        Ok(Self {
            inotify,
            socket: socket.to_owned(),
        })
    }

    /// Resolves once the socket exists; false when `timeout` passed first.
    pub(crate) async fn wait(&self, timeout: Duration) -> io::Result<bool> {
        let name = self.socket.file_name().map(ToOwned::to_owned);
        let appeared = async {
            loop {
                if self.socket.exists() {
                    return Ok(());
                }
                let mut guard = self.inotify.readable().await?;
                match guard.get_inner().0.read_events() {
                    Ok(events) => {
                        if events.iter().any(|event| event.name == name) {
                            return Ok(());
                        }
                    }
                    Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                    Err(errno) => return Err(io::Error::from(errno)),
                }
            }
        };
        match tokio::time::timeout(timeout, appeared).await {
            Ok(result) => result.map(|()| true),
            Err(_) => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_on_rename_into_place_and_times_out_otherwise() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("agent.sock");
        let watch = SocketWatch::new(&socket).expect("watch");
        assert!(!watch.wait(Duration::from_millis(50)).await.expect("wait"));

        let temp = dir.path().join(".agent.sock.tmp");
        std::fs::write(&temp, b"").expect("write");
        let renamer = tokio::spawn(async move {
            tokio::task::yield_now().await;
            std::fs::rename(temp, dir.path().join("agent.sock")).expect("rename");
            dir
        });
        assert!(watch.wait(Duration::from_secs(10)).await.expect("wait"));
        let _dir = renamer.await.expect("renamer");
    }

    #[tokio::test]
    async fn an_existing_socket_is_ready_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("agent.sock");
        std::fs::write(&socket, b"").expect("write");
        let watch = SocketWatch::new(&socket).expect("watch");
        assert!(watch.wait(Duration::from_millis(1)).await.expect("wait"));
    }
}

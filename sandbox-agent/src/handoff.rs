//! Receiving the agent's listener (and its tenant cgroups) from the
//! orchestrator at start; see `sbx_api::Handoff` for why the agent never
//! binds its own socket in a sandbox.
//!
//! The exchange is one `connect` and one `recvmsg` on a blocking socket,
//! before the async runtime starts: there is nothing else to do until the
//! agent has its listener.

use crate::error::AgentError;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use sbx_api::{Handoff, HANDOFF_MAX_FDS};
use std::fs::File;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

/// Longest handoff header accepted.
const MAX_HEADER_BYTES: usize = 4096;
/// The orchestrator answers at once; a silent one is broken.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the orchestrator handed over.
#[derive(Debug)]
pub struct Received {
    pub listener: UnixListener,
    /// Open `cgroup.procs` files of the tenant cgroups (see
    /// [`crate::process`]).
    pub tenant_cgroups: Vec<File>,
}

/// Connects to the handoff socket at `path` and receives the listener.
pub fn receive(path: &Path) -> Result<Received, AgentError> {
    let failed = |source: io::Error| AgentError::Handoff {
        path: path.to_owned(),
        source,
    };
    let stream = UnixStream::connect(path).map_err(failed)?;
    stream
        .set_read_timeout(Some(RECEIVE_TIMEOUT))
        .map_err(failed)?;
    let mut header = vec![0u8; MAX_HEADER_BYTES];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; HANDOFF_MAX_FDS]);
    let (bytes, mut fds) = {
        let mut iov = [IoSliceMut::new(&mut header)];
        let message = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|errno| failed(errno.into()))?;
        let mut fds = Vec::new();
        for cmsg in message.cmsgs().map_err(|errno| failed(errno.into()))? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                // SAFETY: SCM_RIGHTS descriptors are new, open and ours
                // alone; wrapping each exactly once closes it exactly once.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        if message.flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err(failed(io::Error::other(
                "too many descriptors in the handoff",
            )));
        }
        (message.bytes, fds)
    };
    let handoff: Handoff = serde_json::from_slice(&header[..bytes])
        .map_err(|err| failed(io::Error::new(io::ErrorKind::InvalidData, err)))?;
    handoff
        .validate(fds.len())
        .map_err(|reason| failed(io::Error::new(io::ErrorKind::InvalidData, reason)))?;
    let tenant_cgroups = fds.split_off(1).into_iter().map(File::from).collect();
    let listener = UnixListener::from(fds.remove(0));
    Ok(Received {
        listener,
        tenant_cgroups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{sendmsg, ControlMessage};
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;

    #[test]
    fn receives_a_listener_that_accepts_connections() {
        let dir = tempfile::tempdir().expect("tempdir");
        let handoff_path = dir.path().join("handoff.sock");
        let agent_path = dir.path().join("agent.sock");
        let handoff = UnixListener::bind(&handoff_path).expect("bind handoff");
        let listener = UnixListener::bind(&agent_path).expect("bind agent");
        let cgroup = File::open("/dev/null").expect("a stand-in cgroup file");
        let sender = std::thread::spawn(move || {
            let (stream, _) = handoff.accept().expect("accept");
            let header = serde_json::to_vec(&Handoff { tenant_cgroups: 1 }).expect("json");
            let fds = [listener.as_raw_fd(), cgroup.as_raw_fd()];
            sendmsg::<()>(
                stream.as_raw_fd(),
                &[IoSlice::new(&header)],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            )
            .expect("sendmsg");
        });
        let received = receive(&handoff_path).expect("received");
        sender.join().expect("sender");
        assert_eq!(received.tenant_cgroups.len(), 1);
        let _client = UnixStream::connect(&agent_path).expect("connect");
        received
            .listener
            .accept()
            .expect("accepted on the handed listener");
    }

    #[test]
    fn a_header_that_miscounts_its_descriptors_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let handoff_path = dir.path().join("handoff.sock");
        let handoff = UnixListener::bind(&handoff_path).expect("bind handoff");
        let sender = std::thread::spawn(move || {
            let (stream, _) = handoff.accept().expect("accept");
            let header = serde_json::to_vec(&Handoff { tenant_cgroups: 2 }).expect("json");
            sendmsg::<()>(
                stream.as_raw_fd(),
                &[IoSlice::new(&header)],
                &[],
                MsgFlags::empty(),
                None,
            )
            .expect("sendmsg");
        });
        let err = receive(&handoff_path).expect_err("no listener came");
        sender.join().expect("sender");
        assert!(err.to_string().contains("descriptors"), "{err}");
    }
}

//! Bringing `lo` up inside a new network namespace.
//!
//! youki creates the namespace but leaves `lo` down, and the sandbox holds
//! no `CAP_NET_ADMIN` to fix that itself. Between `build()` and `start()` the
//! container's init already lives in its namespace, so we enter that
//! namespace from a short-lived thread (setns changes only the calling
//! thread, and the thread dies with it) and set `IFF_UP` on `lo`.

use super::RuntimeError;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub(crate) fn bring_up_in(pid: i32) -> Result<(), RuntimeError> {
    let namespace = File::open(format!("/proc/{pid}/ns/net")).map_err(RuntimeError::io(
        format!("cannot open net namespace of pid {pid}"),
    ))?;
    std::thread::Builder::new()
        .name("sbx-netns".into())
        .spawn(move || -> io::Result<()> {
            // SAFETY: setns on a valid namespace fd; it only affects this
            // thread, which exits right after.
            if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            set_loopback_up()
        })
        .map_err(RuntimeError::io("cannot spawn the netns thread"))?
        .join()
        .map_err(|_| RuntimeError::Io {
            context: "netns thread panicked".into(),
            source: io::Error::other("panic"),
        })?
        .map_err(RuntimeError::io(format!(
            "cannot bring lo up for pid {pid}"
        )))
}

fn set_loopback_up() -> io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh, valid fd that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads into the ifreq we own.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the flags member is the one SIOCGIFFLAGS just filled in.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

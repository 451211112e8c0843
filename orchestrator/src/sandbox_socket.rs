//! Binding a Unix socket the orchestrator listens on for one sandbox (the
//! agent's listener, the handoff, the egress proxy).
//!
//! Each lives in a directory only the host can write, so the path is the
//! orchestrator's own: a stale file there is one an earlier orchestrator
//! left, and is replaced. The socket is 0600 and belongs to the one uid
//! that may connect: root inside the sandbox (a host uid when remapped), or
//! the orchestrator itself.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Binds `path` (replacing a stale file) for `owner` alone (`None`: root).
pub fn bind(path: &Path, owner: Option<u32>) -> io::Result<UnixListener> {
    remove(path)?;
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    if let Some(uid) = owner.filter(|&uid| uid != nix::unistd::geteuid().as_raw()) {
        std::os::unix::fs::chown(path, Some(uid), Some(uid))?;
    }
    Ok(listener)
}

/// Removes the socket file at `path`; a missing one is fine.
pub fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

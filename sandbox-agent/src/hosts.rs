//! `localhost` resolves inside every sandbox.
//!
//! glibc resolves `localhost` through `/etc/hosts` only: without the entry
//! Python's `socket`, pip and every dev server that binds `localhost` fail
//! with "Temporary failure in name resolution" (there is no DNS in a
//! sandbox). An image may lack the entry, and on Docker a container with no
//! network gets an empty `/etc/hosts` from the engine's init layer, which
//! hides the image's. So the agent adds the loopback lines when no line
//! names `localhost`, once, at start, before any code of the sandbox runs.
//! The file stays the sandbox's own to edit.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// What the agent adds; the same lines the base image ships.
const LOOPBACK: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// Whether a hosts file's `text` maps `localhost`.
fn names_localhost(text: &str) -> bool {
    text.lines().any(|line| {
        let entry = line.split('#').next().unwrap_or_default();
        entry
            .split_whitespace()
            .skip(1)
            .any(|name| name == "localhost")
    })
}

/// Adds the loopback lines to the hosts file at `path` unless it maps
/// `localhost` already; creates it if missing. A symlink or anything but a
/// regular file is left alone. Returns whether it wrote.
pub fn ensure_localhost(path: &Path) -> std::io::Result<bool> {
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Ok(false);
    }
    let text = std::io::read_to_string(&mut file)?;
    if names_localhost(&text) {
        return Ok(false);
    }
    let separator = if text.is_empty() || text.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    file.write_all(format!("{separator}{LOOPBACK}").as_bytes())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_or_missing_hosts_file_gets_localhost_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hosts = dir.path().join("hosts");
        assert!(ensure_localhost(&hosts).expect("created"));
        assert!(!ensure_localhost(&hosts).expect("kept"));
        assert_eq!(std::fs::read_to_string(&hosts).expect("read"), LOOPBACK);
        std::fs::write(&hosts, "10.0.0.1 db").expect("write");
        assert!(ensure_localhost(&hosts).expect("appended"));
        assert_eq!(
            std::fs::read_to_string(&hosts).expect("read"),
            format!("10.0.0.1 db\n{LOOPBACK}")
        );
    }

    #[test]
    fn a_commented_out_localhost_does_not_count_and_a_symlink_is_left_alone() {
        assert!(!names_localhost("# 127.0.0.1 localhost\n"));
        assert!(names_localhost("127.0.0.1 box localhost # loop\n"));
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "").expect("write");
        std::os::unix::fs::symlink(&target, dir.path().join("hosts")).expect("symlink");
        assert!(ensure_localhost(&dir.path().join("hosts")).is_err());
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "");
    }
}

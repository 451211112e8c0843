//! The per-sandbox root filesystem: an overlay of the shared, read-only
//! image (lower) and the sandbox's own writable layer (upper).
//!
//! An overlay makes creation O(1) in the image size: nothing is copied, and
//! a thousand sandboxes share one image's page cache. The youki helper
//! mounts it in its own mount namespace just before it starts the
//! container, whose namespace keeps the only lasting copy; it survives an
//! orchestrator restart with the container, and goes with it.
//!
//! The upper and work directories sit in the sandbox's layer directory,
//! which the youki runtime creates first and, with `disk_mb`, mounts the
//! sandbox's disk on ([`super::disk`]): that is where the limit applies.

use super::{RuntimeError, SandboxDir};
use nix::mount::{mount, MsFlags};
use std::fs;
use std::path::{Path, PathBuf};

pub(crate) fn rootfs(dir: &SandboxDir) -> PathBuf {
    dir.path().join("rootfs")
}

/// Creates the upper and work directories in the (existing) layer and
/// mounts the overlay of `lower` at `rootfs/`. `lower` is a resolved image
/// build ([`super::resolve_image`]), so that a later rebuild, which
/// repoints the image's symlink, never changes this sandbox's lower layer.
///
/// Mount points the container needs (`/.sbx/run`, `/.sbx/sandbox-agent`,
/// `/workspace`) are created in the upper layer first, so the image needs
/// no sbx-specific content and stays untouched. With a user namespace,
/// `root_uid` is the host uid of the sandbox's root: it owns what sbx
/// creates in the sandbox's root filesystem and the socket directory.
pub(crate) fn mount_rootfs(
    dir: &SandboxDir,
    lower: &Path,
    root_uid: Option<u32>,
) -> Result<(), RuntimeError> {
    let upper = dir.layer().join("upper");
    let work = dir.layer().join("work");
    let target = rootfs(dir);
    let sbx_dir = upper.join(".sbx");
    let workspace = upper.join(sbx_api::WORKSPACE_DIR.trim_start_matches('/'));
    for path in [
        sbx_dir.join("run"),
        workspace.clone(),
        work.clone(),
        target.clone(),
        dir.run_dir(),
    ] {
        fs::create_dir_all(&path).map_err(RuntimeError::io(format!(
            "cannot create {}",
            path.display()
        )))?;
    }
    let agent_mount_point = sbx_dir.join("sandbox-agent");
    debug_assert_eq!(
        agent_mount_point,
        upper.join(sbx_api::AGENT_BINARY_PATH.trim_start_matches('/'))
    );
    fs::write(&agent_mount_point, b"").map_err(RuntimeError::io(format!(
        "cannot create {}",
        agent_mount_point.display()
    )))?;
    if let Some(uid) = root_uid {
        for path in [
            &upper,
            &sbx_dir,
            &sbx_dir.join("run"),
            &workspace,
            &agent_mount_point,
            &dir.run_dir(),
        ] {
            std::os::unix::fs::chown(path, Some(uid), Some(uid))
                .map_err(RuntimeError::io(format!("cannot chown {}", path.display())))?;
        }
    }

    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &target,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|errno| RuntimeError::Io {
        context: format!("cannot mount overlay at {}", target.display()),
        source: errno.into(),
    })
}

/// Unmounts `rootfs/` if it is mounted.
pub(crate) fn unmount_rootfs(dir: &SandboxDir) -> Result<(), RuntimeError> {
    super::disk::unmount(&rootfs(dir))
}

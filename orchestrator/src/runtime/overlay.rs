//! The per-sandbox root filesystem: an overlay of the shared, read-only
//! image (lower) and the sandbox's own writable layer (upper).
//!
//! An overlay makes creation O(1) in the image size: nothing is copied, and
//! a thousand sandboxes share one image's page cache. The mount lives in the
//! host's mount namespace so it survives an orchestrator restart together
//! with the container; delete unmounts it.

use super::{RuntimeError, SandboxDir};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::fs;
use std::path::{Path, PathBuf};

pub(crate) fn rootfs(dir: &SandboxDir) -> PathBuf {
    dir.path().join("rootfs")
}

/// Creates the layer directories and mounts the overlay at `rootfs/`.
///
/// Mount points the container needs (`/.sbx/run`, `/.sbx/sandbox-agent`,
/// `/workspace`) are created in the upper layer first, so the image needs
/// no sbx-specific content and stays untouched.
pub(crate) fn mount_rootfs(dir: &SandboxDir, image_rootfs: &Path) -> Result<(), RuntimeError> {
    let upper = dir.path().join("upper");
    let work = dir.path().join("work");
    let target = rootfs(dir);
    for path in [
        upper.join(".sbx/run"),
        upper.join(sbx_api::WORKSPACE_DIR.trim_start_matches('/')),
        work.clone(),
        target.clone(),
        dir.run_dir(),
    ] {
        fs::create_dir_all(&path).map_err(RuntimeError::io(format!(
            "cannot create {}",
            path.display()
        )))?;
    }
    let agent_mount_point = upper.join(sbx_api::AGENT_BINARY_PATH.trim_start_matches('/'));
    fs::write(&agent_mount_point, b"").map_err(RuntimeError::io(format!(
        "cannot create {}",
        agent_mount_point.display()
    )))?;

    // Pin the image build this sandbox starts from: a later rebuild repoints
    // the image's symlink, never this sandbox's lower layer.
    let lower = image_rootfs
        .canonicalize()
        .map_err(RuntimeError::io(format!(
            "cannot resolve image rootfs {}",
            image_rootfs.display()
        )))?;
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
    let target = rootfs(dir);
    match umount2(&target, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (never mounted, or already unmounted).
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(errno) => Err(RuntimeError::Io {
            context: format!("cannot unmount {}", target.display()),
            source: errno.into(),
        }),
    }
}

//! Root inside a sandbox is not root outside: the youki runtime's user
//! namespace mapping, and the image copy that goes with it.
//!
//! Every youki sandbox runs in its own user namespace that maps sandbox ids
//! `0..65536` to host ids `HOST_BASE..HOST_BASE + 65536`, like dockerd's
//! `--userns-remap`. A process that escapes its other namespaces is an
//! unprivileged uid on the host, owns nothing there, and its capabilities
//! hold only over objects of its own namespace.
//!
//! The image on disk belongs to host root, which the sandbox would see as
//! `nobody`: root inside could not even write `/etc`. So each image build is
//! copied once with every owner shifted into the range (a "shifted" image)
//! and sandboxes use that copy as their lower layer. The copy is made the
//! first time a sandbox needs it and is shared by every later sandbox, and by
//! every server on the machine (it lives beside the images).
//!
//! All sandboxes share the one range, as with dockerd. Neighbours still
//! cannot reach each other (separate mount, pid and network namespaces);
//! disjoint ranges per sandbox would need idmapped mounts instead of a copy.

use super::{resolve_image, RuntimeError};
use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The first host id of the range. High enough to stay clear of login users
/// and of the ranges `useradd` hands out in `/etc/subuid` (from 100000).
pub(crate) const HOST_BASE: u32 = 1_000_000_000;
/// Ids a sandbox can use: the 16-bit range every distribution expects.
pub(crate) const RANGE: u32 = 65_536;

/// The host id of sandbox id `id`; ids beyond the range become `nobody`.
pub(crate) fn to_host(id: u32) -> u32 {
    HOST_BASE + if id < RANGE { id } else { 65_534 }
}

/// Serialises shifting within this process; across processes the atomic
/// rename below decides.
static SHIFTING: Mutex<()> = Mutex::new(());

/// The shifted copy of `image_rootfs`, made now if it does not exist yet:
/// `<images>/.idmapped/<build>/rootfs`, where `<build>` names the resolved
/// image build, so a rebuilt image gets its own copy. The path returned is
/// itself resolved: it pins the build.
pub(crate) fn shifted_image(image_rootfs: &Path) -> Result<PathBuf, RuntimeError> {
    let resolved = resolve_image(image_rootfs)?;
    let build = resolved.parent().ok_or_else(|| RuntimeError::Engine {
        context: "shifting an image".into(),
        message: format!("{} has no parent directory", resolved.display()),
    })?;
    let build_name = build
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    // `<images>/.store/<build>` (scripts/build-image) or `<images>/<build>`.
    let images_dir = match build.parent() {
        Some(parent) if parent.file_name().is_some_and(|name| name == ".store") => {
            parent.parent().unwrap_or(parent)
        }
        Some(parent) => parent,
        None => build,
    };
    let target = images_dir
        .join(".idmapped")
        .join(format!("{build_name}.{HOST_BASE}"));
    let rootfs = target.join("rootfs");
    if rootfs.is_dir() {
        return Ok(rootfs);
    }
    let _one_at_a_time = SHIFTING.lock().unwrap_or_else(|err| err.into_inner());
    if rootfs.is_dir() {
        return Ok(rootfs);
    }
    let started = std::time::Instant::now();
    let parent = target.parent().unwrap_or(&target);
    fs::create_dir_all(parent).map_err(RuntimeError::io(format!(
        "cannot create {}",
        parent.display()
    )))?;
    let staging = parent.join(format!(".{build_name}.{}.tmp", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir(&staging).map_err(RuntimeError::io(format!(
        "cannot create {}",
        staging.display()
    )))?;
    let copied = copy_shifted(&resolved, &staging.join("rootfs"), &mut HashMap::new());
    let renamed = copied.and_then(|()| match fs::rename(&staging, &target) {
        Ok(()) => Ok(()),
        // Another server finished the same copy first: use theirs.
        Err(_) if rootfs.is_dir() => fs::remove_dir_all(&staging),
        Err(err) => Err(err),
    });
    if let Err(err) = renamed {
        let _ = fs::remove_dir_all(&staging);
        return Err(RuntimeError::Io {
            context: format!(
                "cannot copy {} with shifted owners to {}",
                resolved.display(),
                target.display()
            ),
            source: err,
        });
    }
    tracing::info!(
        image = %resolved.display(),
        shifted = %rootfs.display(),
        ms = started.elapsed().as_millis() as u64,
        "made the user-namespace copy of an image"
    );
    Ok(rootfs)
}

/// Copies `src` to `dst` (which must not exist) keeping every file type,
/// mode, hard link and time, with owners moved into the host range. `links`
/// maps (device, inode) of multiply-linked files to their first copy.
fn copy_shifted(
    src: &Path,
    dst: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> std::io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    let kind = meta.file_type();
    if kind.is_dir() {
        fs::create_dir(dst)?;
        for entry in fs::read_dir(src)? {
            let entry = entry?;
            copy_shifted(&entry.path(), &dst.join(entry.file_name()), links)?;
        }
    } else if kind.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)?;
    } else if meta.nlink() > 1 && links.contains_key(&(meta.dev(), meta.ino())) {
        // Owner, mode and times are the inode's: already set on the first.
        return fs::hard_link(&links[&(meta.dev(), meta.ino())], dst);
    } else if kind.is_file() {
        fs::copy(src, dst)?;
        if meta.nlink() > 1 {
            links.insert((meta.dev(), meta.ino()), dst.to_owned());
        }
    } else {
        let file_kind = if kind.is_char_device() {
            SFlag::S_IFCHR
        } else if kind.is_block_device() {
            SFlag::S_IFBLK
        } else if kind.is_fifo() {
            SFlag::S_IFIFO
        } else {
            SFlag::S_IFSOCK
        };
        mknod(
            dst,
            file_kind,
            Mode::from_bits_truncate(meta.mode()),
            meta.rdev(),
        )?;
    }
    std::os::unix::fs::lchown(dst, Some(to_host(meta.uid())), Some(to_host(meta.gid())))?;
    if !kind.is_symlink() {
        // chown clears set-user-id and set-group-id bits: put them back.
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    utimensat(
        None,
        dst,
        &TimeSpec::new(meta.atime(), meta.atime_nsec()),
        &TimeSpec::new(meta.mtime(), meta.mtime_nsec()),
        UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn ids_beyond_the_range_become_nobody() {
        assert_eq!(to_host(0), HOST_BASE);
        assert_eq!(to_host(1000), HOST_BASE + 1000);
        assert_eq!(to_host(RANGE), HOST_BASE + 65_534);
    }

    /// Needs root (chown to arbitrary ids); the test suite runs as root.
    #[test]
    fn copies_a_tree_with_shifted_owners_and_kept_modes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let images = tmp.path().join("images");
        let rootfs = images.join(".store/demo-1234/rootfs");
        fs::create_dir_all(rootfs.join("usr/bin")).expect("mkdir");
        fs::write(rootfs.join("usr/bin/su"), b"#!").expect("write");
        // chown first: it would clear the set-user-id bit.
        std::os::unix::fs::lchown(rootfs.join("usr/bin/su"), Some(0), Some(42)).expect("chown");
        fs::set_permissions(
            rootfs.join("usr/bin/su"),
            fs::Permissions::from_mode(0o4755),
        )
        .expect("chmod");
        fs::hard_link(rootfs.join("usr/bin/su"), rootfs.join("usr/bin/su2")).expect("link");
        symlink("su", rootfs.join("usr/bin/su-link")).expect("symlink");

        let shifted = shifted_image(&rootfs).expect("shift");
        assert_eq!(
            shifted,
            images.join(format!(".idmapped/demo-1234.{HOST_BASE}/rootfs"))
        );
        let su = fs::metadata(shifted.join("usr/bin/su")).expect("su");
        assert_eq!(su.uid(), HOST_BASE);
        assert_eq!(su.gid(), HOST_BASE + 42);
        assert_eq!(su.mode() & 0o7777, 0o4755, "setuid bit kept");
        let su2 = fs::metadata(shifted.join("usr/bin/su2")).expect("su2");
        assert_eq!(su2.ino(), su.ino(), "hard link kept");
        let link = fs::symlink_metadata(shifted.join("usr/bin/su-link")).expect("link");
        assert!(link.file_type().is_symlink());
        assert_eq!(link.uid(), HOST_BASE);
        assert_eq!(fs::metadata(&shifted).expect("root").uid(), HOST_BASE);
        // A second call reuses the copy.
        assert_eq!(shifted_image(&rootfs).expect("again"), shifted);
    }
}

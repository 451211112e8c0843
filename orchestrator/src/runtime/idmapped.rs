//! Image builds seen with shifted owners without copying them: an
//! idmapped bind mount of the build (`mount_setattr` with
//! `MOUNT_ATTR_IDMAP`, Linux 5.12+) as the overlay's lower layer (overlayfs
//! takes idmapped layers from Linux 5.19).
//!
//! The mount maps every owner `u` of the build to `HOST_BASE + u` through a
//! user namespace with the sandboxes' own mapping ([`super::idmap`]), so
//! the sandbox's root owns the image's files exactly as with the shifted
//! copy; the build itself is untouched, and a new image is ready the moment
//! it is imported. Runs in the youki helper (root, its own mount
//! namespace). Overlayfs keeps private clones of its layers, so the bind
//! is detached again as soon as the overlay is mounted.
//!
//! Whether the kernel and the images' filesystem allow it is probed once,
//! at start-up ([`probe`]); where they do not, the shifted copy stays.

use super::idmap::{HOST_BASE, RANGE};
use super::RuntimeError;
use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::OnceLock;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A user namespace with the sandboxes' mapping, made once per helper.
static MAPPING: OnceLock<Result<OwnedFd, String>> = OnceLock::new();

fn mapping() -> Result<&'static OwnedFd, RuntimeError> {
    MAPPING
        .get_or_init(mapping_namespace)
        .as_ref()
        .map_err(|reason| RuntimeError::Engine {
            context: "making the user namespace of idmapped images".into(),
            message: reason.clone(),
        })
}

/// A user namespace mapping ids `0..RANGE` to `HOST_BASE..`: a child
/// enters a new one and waits while we write its maps and open it.
fn mapping_namespace() -> Result<OwnedFd, String> {
    let (ready_read, ready_write) = nix::unistd::pipe().map_err(|e| e.to_string())?;
    let (hold_read, hold_write) = nix::unistd::pipe().map_err(|e| e.to_string())?;
    // SAFETY: the child calls only async-signal-safe functions (unshare,
    // write, read, _exit) before it exits.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if child == 0 {
        // SAFETY: async-signal-safe calls on descriptors this child owns.
        unsafe {
            // Only the parent's ends may stay open, or the read below
            // would never see the end.
            libc::close(hold_write.as_raw_fd());
            libc::close(ready_read.as_raw_fd());
            let status = if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                0u8
            } else {
                1u8
            };
            libc::write(ready_write.as_raw_fd(), (&status as *const u8).cast(), 1);
            let mut byte = 0u8;
            // Until the parent closes its end.
            libc::read(hold_read.as_raw_fd(), (&mut byte as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    drop(ready_write);
    drop(hold_read);
    let outcome = (|| {
        let mut status = [1u8];
        nix::unistd::read(ready_read.as_raw_fd(), &mut status).map_err(|e| e.to_string())?;
        if status[0] != 0 {
            return Err("the kernel refuses a new user namespace".to_owned());
        }
        let map = format!("0 {HOST_BASE} {RANGE}\n");
        for file in ["uid_map", "gid_map"] {
            fs::write(format!("/proc/{child}/{file}"), &map)
                .map_err(|err| format!("cannot write {file}: {err}"))?;
        }
        fs::File::open(format!("/proc/{child}/ns/user"))
            .map(OwnedFd::from)
            .map_err(|err| format!("cannot open the namespace: {err}"))
    })();
    drop(hold_write);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None);
    outcome
}

/// Mounts `source` at `target` (an empty dir) with every owner shifted
/// into the sandboxes' range.
pub(crate) fn bind(source: &Path, target: &Path) -> Result<(), RuntimeError> {
    let failed = |what: &str| {
        let context = format!(
            "cannot {what} for an idmapped mount of {} at {}",
            source.display(),
            target.display()
        );
        move |source: std::io::Error| RuntimeError::Io { context, source }
    };
    let userns = mapping()?;
    let source_c = CString::new(source.as_os_str().as_bytes())
        .map_err(|_| failed("name the source")(std::io::ErrorKind::InvalidInput.into()))?;
    let target_c = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| failed("name the target")(std::io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: open_tree on a NUL-terminated path; returns a new descriptor.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source_c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(failed("clone the tree")(std::io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr on our detached tree with a valid mount_attr
    // of the size passed.
    let set = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if set < 0 {
        return Err(failed("idmap the tree")(std::io::Error::last_os_error()));
    }
    // SAFETY: move_mount of our detached tree onto a NUL-terminated path.
    let moved = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if moved < 0 {
        return Err(failed("attach the tree")(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Lazily detaches the mount at `target`.
pub(crate) fn detach(target: &Path) -> Result<(), RuntimeError> {
    nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH).map_err(|errno| {
        RuntimeError::Io {
            context: format!("cannot detach {}", target.display()),
            source: errno.into(),
        }
    })
}

/// Whether an overlay over an idmapped layer works here: in `scratch` (a
/// dir on the images' filesystem, made and removed), a file of root's in
/// the lower layer must show as the sandboxes' root through the overlay.
/// Runs in the helper's mount namespace.
pub(crate) fn probe(scratch: &Path) -> Result<(), String> {
    let _ = fs::remove_dir_all(scratch);
    let outcome = probe_in(scratch);
    let _ = fs::remove_dir_all(scratch);
    outcome
}

fn probe_in(scratch: &Path) -> Result<(), String> {
    let [lower, mapped, upper, work, merged] =
        ["lower", "mapped", "upper", "work", "merged"].map(|name| scratch.join(name));
    for dir in [&lower, &mapped, &upper, &work, &merged] {
        fs::create_dir_all(dir).map_err(|err| format!("cannot make {}: {err}", dir.display()))?;
    }
    fs::write(lower.join("owned-by-root"), b"").map_err(|err| err.to_string())?;
    bind(&lower, &mapped).map_err(|err| err.to_string())?;
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        mapped.display(),
        upper.display(),
        work.display()
    );
    let mounted = nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|errno| format!("overlayfs refuses an idmapped lower layer: {errno}"));
    let _ = detach(&mapped);
    mounted?;
    let owner = fs::metadata(merged.join("owned-by-root")).map(|meta| meta.uid());
    let _ = detach(&merged);
    match owner {
        Ok(uid) if uid == HOST_BASE => Ok(()),
        Ok(uid) => Err(format!(
            "an idmapped file shows owner {uid}, not {HOST_BASE}"
        )),
        Err(err) => Err(format!("cannot read through the overlay: {err}")),
    }
}

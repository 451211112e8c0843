//! The youki runtime's writable layers, and their size limits.
//!
//! A sandbox writes into its overlay's upper directory, which lives under
//! `<sandbox dir>/layer/`. Capping how much a directory tree may hold takes a
//! filesystem that accounts per tree. XFS and ext4 project quotas need the
//! kernel's generic quota code (`CONFIG_QUOTA`), which the VM kernels sbx
//! runs on often lack; btrfs quota groups are btrfs's own. So on btrfs with
//! quotas enabled (scripts/storage-up makes the data dir such a pool) each
//! layer is a subvolume with a quota-group limit: writing past it fails
//! inside the sandbox with EDQUOT, "Disk quota exceeded", and nothing else
//! on the host fills. Docker's btrfs storage driver enforces its
//! `--storage-opt size=` the same way.
//!
//! Elsewhere a layer is a plain directory and `disk_mb` cannot be enforced;
//! [`LayerStore::quota`] says so, and `GET /v1/info` passes it on.
//!
//! A subvolume is also cheaper to delete than a tree: one ioctl drops it,
//! however many files a sandbox wrote.

use super::RuntimeError;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// `struct btrfs_ioctl_vol_args` (linux/btrfs.h).
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// `struct btrfs_qgroup_limit` inside `struct btrfs_ioctl_qgroup_limit_args`.
#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

/// Limit the bytes a subvolume references (`BTRFS_QGROUP_LIMIT_MAX_RFER`).
const LIMIT_MAX_RFER: u64 = 1;
/// The inode number of every subvolume's root directory.
const SUBVOLUME_ROOT_INO: u64 = 256;

nix::ioctl_write_ptr!(subvol_create, 0x94, 14, VolArgs);
nix::ioctl_write_ptr!(snap_destroy, 0x94, 15, VolArgs);
// The kernel declares this one _IOR although it reads the argument.
nix::ioctl_read!(qgroup_limit, 0x94, 43, QgroupLimitArgs);

/// How layers are made under one directory (`<data-dir>/sandboxes`).
#[derive(Debug, Clone)]
pub(crate) struct LayerStore {
    /// Layers are btrfs subvolumes.
    subvolumes: bool,
    /// Their size can be limited: `Ok`, or why not.
    quota: Result<(), String>,
}

impl LayerStore {
    /// Finds out what the filesystem under `parent` offers, by trying it: a
    /// probe subvolume gets a limit and is dropped again.
    pub(crate) fn probe(parent: &Path) -> Self {
        let on_btrfs = nix::sys::statfs::statfs(parent)
            .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC);
        if !on_btrfs {
            return Self {
                subvolumes: false,
                quota: Err(format!(
                    "{} is not on btrfs with quota groups (see scripts/storage-up)",
                    parent.display()
                )),
            };
        }
        let probe = parent.join(format!(".quota-probe-{}", std::process::id()));
        let store = Self {
            subvolumes: true,
            quota: Ok(()),
        };
        let _ = store.destroy(&probe);
        let quota = store
            .create(&probe, Some(1 << 30))
            .map_err(|err| format!("btrfs quota groups are not usable: {err}"));
        let _ = store.destroy(&probe);
        Self { quota, ..store }
    }

    /// Whether [`LayerStore::create`] can enforce a limit; the error says why not.
    pub(crate) fn quota(&self) -> Result<(), String> {
        self.quota.clone()
    }

    /// Creates the layer directory `path`, holding at most `limit` bytes.
    pub(crate) fn create(&self, path: &Path, limit: Option<u64>) -> Result<(), RuntimeError> {
        if !self.subvolumes {
            if limit.is_some() {
                return Err(RuntimeError::Engine {
                    context: format!("creating {}", path.display()),
                    message: self.quota.clone().err().unwrap_or_default(),
                });
            }
            return std::fs::create_dir(path).map_err(RuntimeError::io(format!(
                "cannot create {}",
                path.display()
            )));
        }
        let (parent, mut args) = parent_and_name(path)?;
        // SAFETY: `args` is a valid, initialised btrfs_ioctl_vol_args.
        unsafe { subvol_create(parent.as_raw_fd(), &args) }.map_err(|errno| RuntimeError::Io {
            context: format!("cannot create subvolume {}", path.display()),
            source: errno.into(),
        })?;
        let Some(bytes) = limit else { return Ok(()) };
        let limited = File::open(path).and_then(|layer| {
            let mut limit = QgroupLimitArgs {
                // 0: the subvolume `layer` is the root of.
                qgroupid: 0,
                flags: LIMIT_MAX_RFER,
                max_rfer: bytes,
                max_excl: 0,
                rsv_rfer: 0,
                rsv_excl: 0,
            };
            // SAFETY: `limit` is a valid btrfs_ioctl_qgroup_limit_args.
            unsafe { qgroup_limit(layer.as_raw_fd(), &mut limit) }
                .map(drop)
                .map_err(std::io::Error::from)
        });
        if let Err(source) = limited {
            args.fd = 0;
            // SAFETY: as above; undo the create so no unlimited layer stays.
            let _ = unsafe { snap_destroy(parent.as_raw_fd(), &args) };
            return Err(RuntimeError::Io {
                context: format!("cannot limit {} to {bytes} bytes", path.display()),
                source,
            });
        }
        Ok(())
    }

    /// Removes the layer `path` with all it holds. Idempotent.
    pub(crate) fn destroy(&self, path: &Path) -> Result<(), RuntimeError> {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(RuntimeError::Io {
                    context: format!("cannot stat {}", path.display()),
                    source,
                })
            }
        };
        if self.subvolumes && meta.ino() == SUBVOLUME_ROOT_INO {
            let (parent, args) = parent_and_name(path)?;
            // SAFETY: `args` is a valid, initialised btrfs_ioctl_vol_args.
            unsafe { snap_destroy(parent.as_raw_fd(), &args) }.map_err(|errno| {
                RuntimeError::Io {
                    context: format!("cannot delete subvolume {}", path.display()),
                    source: errno.into(),
                }
            })?;
            return Ok(());
        }
        std::fs::remove_dir_all(path).map_err(RuntimeError::io(format!(
            "cannot remove {}",
            path.display()
        )))
    }
}

/// An open parent directory of `path` and the ioctl argument naming `path`
/// in it.
fn parent_and_name(path: &Path) -> Result<(File, VolArgs), RuntimeError> {
    let invalid = || RuntimeError::Engine {
        context: "btrfs layer".into(),
        message: format!("{} has no usable parent and name", path.display()),
    };
    let parent = path.parent().ok_or_else(invalid)?;
    let name = path.file_name().ok_or_else(invalid)?;
    let name = CString::new(name.as_bytes()).map_err(|_| invalid())?;
    let mut args = VolArgs {
        fd: 0,
        name: [0; 4088],
    };
    let bytes = name.as_bytes_with_nul();
    if bytes.len() > args.name.len() {
        return Err(invalid());
    }
    args.name[..bytes.len()].copy_from_slice(bytes);
    let parent = File::open(parent).map_err(RuntimeError::io(format!(
        "cannot open {}",
        parent.display()
    )))?;
    Ok((parent, args))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The subvolume path is exercised by the end-to-end disk tests, on the
    /// btrfs pool; this one covers the fallback.
    #[test]
    fn plain_directories_off_btrfs_and_limits_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = LayerStore::probe(tmp.path());
        assert!(
            !store.subvolumes,
            "precondition: the system temp dir must not be on btrfs"
        );
        assert!(store.quota().is_err());
        let layer = tmp.path().join("layer");
        assert!(store.create(&layer, Some(1 << 20)).is_err());
        store.create(&layer, None).expect("plain dir");
        std::fs::write(layer.join("f"), b"x").expect("write");
        store.destroy(&layer).expect("destroy");
        assert!(!layer.exists());
        store.destroy(&layer).expect("idempotent");
    }
}

//! Disk volumes: the directory that holds one disk image, and the unit that
//! snapshots, forks and restores copy.
//!
//! Why a directory and not the image file alone: on btrfs, a reflink of a
//! file (`FICLONE`) costs time per extent, and a sandbox disk written
//! through a direct-I/O loop device gets an extent per request (at most
//! 1.25 MiB): a disk with 1 GiB written clones in 30–40 ms, and a fork of
//! ten pays that ten times. A btrfs snapshot of a subvolume shares its
//! whole tree at once: ~3 ms whatever it holds. So on btrfs each disk
//! image sits alone in a subvolume of its own, and copying a disk is
//! snapshotting its subvolume. Elsewhere a volume is a plain directory and
//! a copy is a copy of its image ([`super::Disks::copy_volume`]).
//!
//! Subvolumes need no special removal: `rmdir` of an empty one deletes it
//! (root, Linux ≥ 4.18), so `remove_dir_all` removes a volume either way.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The inode number of every btrfs subvolume's root directory
/// (`BTRFS_FIRST_FREE_OBJECTID`).
const SUBVOLUME_ROOT_INODE: u64 = 256;
/// `BTRFS_PATH_NAME_MAX`: the longest name the ioctls take.
const NAME_MAX: usize = 4039;

/// `struct btrfs_ioctl_vol_args` (linux/btrfs.h).
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// `struct btrfs_ioctl_vol_args_v2` (linux/btrfs.h), without the qgroup
/// inheritance its union can carry (the `unused` words).
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

nix::ioctl_write_ptr!(subvol_create, 0x94, 14, VolArgs);
nix::ioctl_write_ptr!(snap_create_v2, 0x94, 23, VolArgsV2);

/// The parent directory (opened) and the final name of `path`.
fn parent_and_name(path: &Path) -> std::io::Result<(File, CString)> {
    let invalid = || std::io::Error::from_raw_os_error(libc::EINVAL);
    let parent = path.parent().ok_or_else(invalid)?;
    let name = path.file_name().ok_or_else(invalid)?.as_bytes();
    if name.len() > NAME_MAX {
        return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    let name = CString::new(name).map_err(|_| invalid())?;
    Ok((File::open(parent)?, name))
}

/// Makes `path` a new, empty btrfs subvolume.
pub(crate) fn create_subvolume(path: &Path) -> std::io::Result<()> {
    let (parent, name) = parent_and_name(path)?;
    // SAFETY: the ioctl reads a vol_args, all integers and bytes.
    let mut args: Box<VolArgs> = Box::new(unsafe { std::mem::zeroed() });
    args.name[..name.as_bytes().len()].copy_from_slice(name.as_bytes());
    // SAFETY: `parent` is an open directory and `args` a valid vol_args.
    unsafe { subvol_create(parent.as_raw_fd(), &*args) }?;
    Ok(())
}

/// Makes `to` (which must not exist) a writable snapshot of the subvolume
/// `from`: the same files, sharing every block until either side writes.
pub(crate) fn snapshot_subvolume(from: &Path, to: &Path) -> std::io::Result<()> {
    let source = File::open(from)?;
    let (parent, name) = parent_and_name(to)?;
    // SAFETY: the ioctl reads a vol_args_v2, all integers and bytes.
    let mut args: Box<VolArgsV2> = Box::new(unsafe { std::mem::zeroed() });
    args.fd = i64::from(source.as_raw_fd());
    args.name[..name.as_bytes().len()].copy_from_slice(name.as_bytes());
    // SAFETY: `parent` is an open directory, `args` a valid vol_args_v2
    // naming the open `source`.
    unsafe { snap_create_v2(parent.as_raw_fd(), &*args) }?;
    Ok(())
}

/// Whether `path` is the root of a btrfs subvolume (a plain directory is
/// not, even on btrfs: a volume from before volumes were subvolumes).
pub(crate) fn is_subvolume(path: &Path) -> bool {
    let root = std::fs::symlink_metadata(path)
        .is_ok_and(|meta| meta.is_dir() && meta.ino() == SUBVOLUME_ROOT_INODE);
    root && nix::sys::statfs::statfs(path)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<VolArgs>(), 4096);
        assert_eq!(std::mem::size_of::<VolArgsV2>(), 4096);
    }

    #[test]
    fn a_plain_directory_is_not_a_subvolume() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("plain")).expect("mkdir");
        assert!(!is_subvolume(&dir.path().join("plain")));
        assert!(!is_subvolume(&dir.path().join("missing")));
    }
}

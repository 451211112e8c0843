//! Per-sandbox disks: every sandbox's writable layer is a filesystem of its
//! own, `disk_mb` in size.
//!
//! Why a filesystem and not a quota: capping a directory tree takes a
//! filesystem that accounts per tree. XFS and ext4 project quotas need the
//! kernel's generic quota code (`CONFIG_QUOTA`), which the VM kernels sbx
//! runs on often lack; btrfs quota groups work, but answer EDQUOT ("Disk
//! quota exceeded"), leave `df` showing the whole pool, and Docker's btrfs
//! driver that uses them made creates take seconds. A disk of its own
//! behaves like a VM's: writing past it fails with ENOSPC, `df /` inside
//! shows its size (overlayfs reports its upper filesystem), and the same
//! disk caps a Docker container when it is mounted over the container's
//! overlay2 layer directory (see [`super::docker`]).
//!
//! How: `<sandbox dir>/disk.img` is a sparse file holding an ext4 without a
//! journal (nothing to replay for a disposable layer, and no journal thread
//! per sandbox), attached to a loop device with autoclear (unmounting frees
//! the device) and direct I/O (no second copy of the data in the page
//! cache), mounted `discard` so that deleted blocks are punched back out of
//! the file. Formatting costs ~25 ms, so each size is formatted once into a
//! template and cloned (`FICLONE`, a reflink: ~1 ms for the few MiB of
//! metadata) where the data dir's filesystem can (the btrfs pool of
//! scripts/storage-up); elsewhere each disk is formatted.
//!
//! Disks are thin: their sizes may add up to more than the pool holds, as
//! with any thin-provisioned VM disks. The pool's own size is what bounds
//! what sandboxes can take from the host; were the pool full, a write
//! inside a sandbox would fail with EIO rather than ENOSPC.

use super::{volume, RuntimeError};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

/// `noinit_itable`: the file is sparse, so its inode tables already read as
/// zeros; without it the kernel would write them all out in the background.
const MOUNT_OPTIONS: &str = "noinit_itable,discard";
/// The size of the disk the start-up probe makes (and keeps as a template).
const PROBE_BYTES: u64 = 64 << 20;
/// The name of the image in a disk volume ([`super::volume`]).
pub const IMAGE: &str = "disk.img";
/// How many templates (so distinct disk sizes) are kept formatted.
const TEMPLATES_KEPT: usize = 8;
/// What a mount point may hold to be carried over onto its disk (see
/// [`Carried`]); anything bigger is not what a fresh layer holds.
const CARRIED_MAX: u64 = 1 << 20;

/// `LOOP_CTL_GET_FREE` (linux/loop.h): the number of a free loop device.
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;

/// `struct loop_info64` (linux/loop.h).
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    size_limit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` (linux/loop.h), the argument of `LOOP_CONFIGURE`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, LoopConfig);
nix::ioctl_write_int!(ficlone, 0x94, 9);

/// Makes and mounts sandbox disks; one per runtime.
#[derive(Debug)]
pub struct Disks {
    /// Formatted, empty disk images, one per size, to clone from.
    templates: PathBuf,
    /// `Ok` when disks work here, else why not.
    usable: Result<(), String>,
    /// Cleared when cloning a template fails: the data dir's filesystem
    /// cannot, so every disk is formatted instead.
    clones: AtomicBool,
    /// Whether each disk's volume is a btrfs subvolume (see
    /// [`super::volume`]); cleared where making one fails.
    subvolumes: AtomicBool,
}

impl Disks {
    /// Finds out whether disks work here by making one: loop devices,
    /// ext4 and `mkfs.ext4` must all be there.
    pub fn probe(templates: PathBuf) -> Self {
        let mut disks = Self {
            templates,
            usable: Ok(()),
            clones: AtomicBool::new(true),
            subvolumes: AtomicBool::new(true),
        };
        let scratch = disks
            .templates
            .join(format!(".probe-{}", std::process::id()));
        let mountpoint = scratch.join("mnt");
        let tried = fs::create_dir_all(&mountpoint)
            .map_err(RuntimeError::io(format!(
                "cannot create {}",
                mountpoint.display()
            )))
            .and_then(|()| disks.mount_new(&scratch.join("disk.img"), PROBE_BYTES, &mountpoint))
            .and_then(|()| unmount(&mountpoint));
        let _ = unmount(&mountpoint);
        if tried.is_ok() {
            let cloned = clone_file(&scratch.join("disk.img"), &scratch.join("clone.img"));
            if cloned.as_ref().is_err_and(unsupported_here) {
                disks.clones.store(false, Ordering::Relaxed);
            }
            let subvolume = scratch.join("volume");
            if volume::create_subvolume(&subvolume).is_err() {
                disks.subvolumes.store(false, Ordering::Relaxed);
            }
        }
        let _ = fs::remove_dir_all(&scratch);
        if let Err(err) = tried {
            disks.usable = Err(format!("per-sandbox disks do not work here: {err}"));
        }
        disks
    }

    /// How a disk volume is copied here: `subvolume` (a snapshot, in
    /// milliseconds whatever it holds), `reflink` (a clone of the image, in
    /// time per extent), or `copy` (its bytes). The first two share blocks
    /// until either side writes them.
    pub fn copy_method(&self) -> &'static str {
        if self.subvolumes.load(Ordering::Relaxed) {
            "subvolume"
        } else if self.reflinks() {
            "reflink"
        } else {
            "copy"
        }
    }

    /// Whether a disk image is cloned by reflink here rather than copied
    /// byte by byte.
    fn reflinks(&self) -> bool {
        self.clones.load(Ordering::Relaxed)
    }

    /// Makes `dir` a new, empty disk volume: a btrfs subvolume where the
    /// pool is btrfs, else a directory.
    pub fn new_volume(&self, dir: &Path) -> Result<(), RuntimeError> {
        if self.subvolumes.load(Ordering::Relaxed) {
            match volume::create_subvolume(dir) {
                Ok(()) => return Ok(()),
                Err(err) if unsupported_here(&err) => {
                    tracing::info!(%err, "cannot make subvolumes here; disk volumes are directories");
                    self.subvolumes.store(false, Ordering::Relaxed);
                }
                Err(err) => {
                    return Err(RuntimeError::Io {
                        context: format!("cannot create the subvolume {}", dir.display()),
                        source: err,
                    })
                }
            }
        }
        fs::create_dir(dir).map_err(RuntimeError::io(format!("cannot create {}", dir.display())))
    }

    /// Copies the disk volume `from` to `to` (which must not exist): a
    /// snapshot of its subvolume (milliseconds, whatever it holds), else a
    /// copy of its image ([`Self::copy_image`]). `from` must not be written
    /// meanwhile (a stopped or frozen sandbox's disk, or a snapshot's). A
    /// failed copy leaves nothing at `to`.
    pub fn copy_volume(&self, from: &Path, to: &Path) -> Result<(), RuntimeError> {
        if volume::is_subvolume(from) {
            return volume::snapshot_subvolume(from, to).map_err(RuntimeError::io(format!(
                "cannot snapshot {} to {}",
                from.display(),
                to.display()
            )));
        }
        self.new_volume(to)?;
        self.copy_image(&from.join(IMAGE), &to.join(IMAGE))
            .inspect_err(|_| {
                let _ = fs::remove_dir_all(to);
            })
    }

    /// Copies the disk image `from` to `to` (which must not exist): a
    /// reflink where the filesystem can, else a sparse copy. `from` must
    /// not be written meanwhile (a stopped or frozen sandbox's disk, or a
    /// snapshot's).
    pub fn copy_image(&self, from: &Path, to: &Path) -> Result<(), RuntimeError> {
        if self.reflinks() {
            match clone_file(from, to) {
                Ok(()) => return Ok(()),
                Err(err) if unsupported_here(&err) => {}
                Err(err) => {
                    return Err(RuntimeError::Io {
                        context: format!("cannot clone {} to {}", from.display(), to.display()),
                        source: err,
                    })
                }
            }
        }
        // GNU cp keeps holes (a 10 GiB disk holding 1 MiB copies 1 MiB).
        let output = Command::new("cp")
            .args(["--sparse=always", "--reflink=never", "--"])
            .arg(from)
            .arg(to)
            .output()
            .map_err(RuntimeError::io("cannot run cp"))?;
        if output.status.success() {
            return Ok(());
        }
        let _ = fs::remove_file(to);
        Err(RuntimeError::Engine {
            context: format!("cannot copy {} to {}", from.display(), to.display()),
            message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }

    /// Whether [`Disks::mount_new`] works; the error says why not.
    pub fn usable(&self) -> Result<(), String> {
        self.usable.clone()
    }

    /// Makes `image` a new, empty disk of `bytes` and mounts it over
    /// `mountpoint` ([`mount_image`]).
    pub(crate) fn mount_new(
        &self,
        image: &Path,
        bytes: u64,
        mountpoint: &Path,
    ) -> Result<(), RuntimeError> {
        self.create_image(image, bytes)?;
        mount_image(image, mountpoint)
    }

    /// A new disk image at `image`: a clone of the size's template, or
    /// formatted in place where cloning does not work. Its directory is
    /// made a volume ([`Self::new_volume`]) unless it exists.
    pub(crate) fn create_image(&self, image: &Path, bytes: u64) -> Result<(), RuntimeError> {
        if let Some(dir) = image.parent().filter(|dir| !dir.exists()) {
            self.new_volume(dir)?;
        }
        if self.clones.load(Ordering::Relaxed) {
            let template = self.template(bytes)?;
            match clone_file(&template, image) {
                Ok(()) => return Ok(()),
                Err(err) if unsupported_here(&err) => {
                    tracing::info!(%err, "cannot clone disk templates here; formatting each disk");
                    self.clones.store(false, Ordering::Relaxed);
                }
                // Say, the template was evicted meanwhile: format this one.
                Err(err) => tracing::debug!(%err, "formatting a disk instead of cloning it"),
            }
        }
        format(image, bytes)
    }

    /// The template for disks of `bytes`, formatted on first use.
    fn template(&self, bytes: u64) -> Result<PathBuf, RuntimeError> {
        let template = self.templates.join(format!("ext4-{bytes}.img"));
        if template.exists() {
            return Ok(template);
        }
        fs::create_dir_all(&self.templates).map_err(RuntimeError::io(format!(
            "cannot create {}",
            self.templates.display()
        )))?;
        // Formatted aside and renamed: a template that exists is complete,
        // and two creates racing for it each rename a good one.
        let staging = self.templates.join(format!(
            ".ext4-{bytes}.{}.{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        format(&staging, bytes)?;
        fs::rename(&staging, &template).map_err(RuntimeError::io(format!(
            "cannot rename {} to {}",
            staging.display(),
            template.display()
        )))?;
        self.evict_templates(&template);
        Ok(template)
    }

    /// Keeps the [`TEMPLATES_KEPT`] newest templates: each distinct
    /// `disk_mb` makes one, and clients choose `disk_mb`.
    fn evict_templates(&self, keep: &Path) {
        let Ok(listing) = fs::read_dir(&self.templates) else {
            return;
        };
        let mut templates: Vec<(std::time::SystemTime, PathBuf)> = listing
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().starts_with("ext4-"))
            .filter_map(|entry| Some((entry.metadata().ok()?.modified().ok()?, entry.path())))
            .filter(|(_, path)| path != keep)
            .collect();
        templates.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
        for (_, old) in templates.iter().skip(TEMPLATES_KEPT - 1) {
            let _ = fs::remove_file(old);
        }
    }
}

/// Whether a failed clone (or subvolume create) means the filesystem
/// cannot do it at all.
fn unsupported_here(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL | libc::ENOTTY | libc::ENOSYS)
    )
}

/// Mounts the disk `image` over `mountpoint`. What the mount point holds
/// (a small tree, as Docker leaves in a layer directory) is carried over
/// with its owners and modes, and the disk's root takes the mount point's
/// owner and mode, so the mount changes nothing but where the bytes go and
/// how many fit. On a disk that already holds a layer (a restart), the
/// carried files replace theirs and its directories are kept with what
/// they hold: a new container's `link` and `lower` over the old `diff`.
pub(crate) fn mount_image(image: &Path, mountpoint: &Path) -> Result<(), RuntimeError> {
    let carried = Carried::read(mountpoint)?;
    let (device, path) = attach(image)?;
    mount(
        Some(&path),
        mountpoint,
        Some("ext4"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(MOUNT_OPTIONS),
    )
    .map_err(|errno| RuntimeError::Io {
        context: format!(
            "cannot mount {} ({}) at {}",
            path.display(),
            image.display(),
            mountpoint.display()
        ),
        source: errno.into(),
    })?;
    // The mount holds the device now; closing ours lets autoclear detach
    // it when the mount goes.
    drop(device);
    carried.write(mountpoint).inspect_err(|_| {
        let _ = unmount(mountpoint);
    })
}

/// Unmounts a disk (or whatever is mounted at `mountpoint`), lazily: the
/// loop device goes with its last user. Idempotent.
pub(crate) fn unmount(mountpoint: &Path) -> Result<(), RuntimeError> {
    match umount2(mountpoint, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (never mounted, or already unmounted).
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(errno) => Err(RuntimeError::Io {
            context: format!("cannot unmount {}", mountpoint.display()),
            source: errno.into(),
        }),
    }
}

/// Formats `path` as an empty ext4 of `bytes`, sparse.
fn format(path: &Path, bytes: u64) -> Result<(), RuntimeError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(RuntimeError::io(format!(
            "cannot create {}",
            path.display()
        )))?;
    file.set_len(bytes)
        .map_err(RuntimeError::io(format!("cannot size {}", path.display())))?;
    drop(file);
    let output = Command::new("mkfs.ext4")
        // -T default: the same layout (4 KiB blocks, an inode per 16 KiB)
        // for every size, not mke2fs's "small" and "floppy" variants.
        .args(["-q", "-F", "-T", "default", "-m", "0", "-O", "^has_journal"])
        .args(["-E", "lazy_itable_init=1,nodiscard", "-L", "sbx-disk"])
        .arg(path)
        .output()
        .map_err(RuntimeError::io("cannot run mkfs.ext4 (e2fsprogs)"))?;
    if output.status.success() {
        return Ok(());
    }
    let _ = fs::remove_file(path);
    Err(RuntimeError::Engine {
        context: format!("mkfs.ext4 {}", path.display()),
        message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

/// Makes `to` share `from`'s blocks (a reflink).
fn clone_file(from: &Path, to: &Path) -> std::io::Result<()> {
    let source = File::open(from)?;
    let target = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(to)?;
    // SAFETY: both are open file descriptors; FICLONE reads only the int.
    let cloned = unsafe { ficlone(target.as_raw_fd(), source.as_raw_fd() as _) };
    cloned.map(drop).map_err(|errno| {
        let _ = fs::remove_file(to);
        errno.into()
    })
}

/// Attaches `image` to a free loop device, with autoclear and direct I/O.
/// Returns the open device (autoclear detaches it once this and every
/// mount of it are gone) and its path.
fn attach(image: &Path) -> Result<(File, PathBuf), RuntimeError> {
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(RuntimeError::io(format!("cannot open {}", image.display())))?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(RuntimeError::io("cannot open /dev/loop-control"))?;
    let mut flags = LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO;
    // Another attach (ours or anyone's) can take the free device between
    // asking for it and configuring it: then ask again.
    for _ in 0..64 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument.
        let number = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if number < 0 {
            return Err(RuntimeError::Io {
                context: "cannot find a free loop device".into(),
                source: std::io::Error::last_os_error(),
            });
        }
        let path = PathBuf::from(format!("/dev/loop{number}"));
        let device = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(RuntimeError::io(format!("cannot open {}", path.display())))?;
        // SAFETY: every field of loop_config is an integer or an integer
        // array, for which all zeros is a valid value.
        let mut config: LoopConfig = unsafe { std::mem::zeroed() };
        config.fd = backing.as_raw_fd() as u32;
        config.block_size = 4096;
        config.info.flags = flags;
        // SAFETY: `config` is a valid loop_config naming an open fd.
        match unsafe { loop_configure(device.as_raw_fd(), &config) } {
            Ok(_) => return Ok((device, path)),
            Err(nix::errno::Errno::EBUSY) => continue,
            // A backing filesystem without direct I/O: buffered, then.
            Err(nix::errno::Errno::EINVAL) if flags & LO_FLAGS_DIRECT_IO != 0 => {
                flags &= !LO_FLAGS_DIRECT_IO;
            }
            Err(errno) => {
                return Err(RuntimeError::Io {
                    context: format!("cannot attach {} to {}", image.display(), path.display()),
                    source: errno.into(),
                })
            }
        }
    }
    Err(RuntimeError::Engine {
        context: format!("cannot attach {}", image.display()),
        message: "every free loop device was taken before it could be configured".into(),
    })
}

/// The contents of a mount point, to put back on top of a new disk: a
/// small tree of directories and files, as a fresh layer directory holds
/// (Docker's `link` and `lower` files, empty `diff`, `work/work` left by
/// the mount Docker does at create).
struct Carried {
    meta: fs::Metadata,
    node: Node,
}

enum Node {
    File(Vec<u8>),
    Dir(Vec<(std::ffi::OsString, Carried)>),
}

impl Carried {
    fn read(dir: &Path) -> Result<Self, RuntimeError> {
        let mut budget = CARRIED_MAX;
        Self::read_tree(dir, &mut budget).map_err(|reason| match reason {
            TreeError::Io(err) => err,
            TreeError::TooBig => RuntimeError::Engine {
                context: format!("cannot mount a disk over {}", dir.display()),
                message: "it holds more than a fresh layer directory does".into(),
            },
        })
    }

    fn read_tree(path: &Path, budget: &mut u64) -> Result<Self, TreeError> {
        let meta = fs::symlink_metadata(path)
            .map_err(RuntimeError::io(format!("cannot stat {}", path.display())))?;
        // Every entry costs a little, so that no tree is free.
        *budget = budget
            .checked_sub(meta.len().max(1))
            .ok_or(TreeError::TooBig)?;
        let node = if meta.is_dir() {
            let listing = fs::read_dir(path)
                .map_err(RuntimeError::io(format!("cannot list {}", path.display())))?;
            let mut children = Vec::new();
            for entry in listing {
                let entry =
                    entry.map_err(RuntimeError::io(format!("cannot list {}", path.display())))?;
                children.push((entry.file_name(), Self::read_tree(&entry.path(), budget)?));
            }
            Node::Dir(children)
        } else if meta.is_file() {
            Node::File(
                fs::read(path)
                    .map_err(RuntimeError::io(format!("cannot read {}", path.display())))?,
            )
        } else {
            return Err(TreeError::TooBig);
        };
        Ok(Self { meta, node })
    }

    /// Recreates the tree at `path`, whose root directory exists.
    fn write(&self, path: &Path) -> Result<(), RuntimeError> {
        match &self.node {
            Node::File(bytes) => fs::write(path, bytes).map_err(RuntimeError::io(format!(
                "cannot create {}",
                path.display()
            )))?,
            Node::Dir(children) => {
                for (name, child) in children {
                    let child_path = path.join(name);
                    if matches!(child.node, Node::Dir(_)) {
                        match fs::create_dir(&child_path) {
                            // Only at a layer's top: the disk's own
                            // directories, which no sandbox writes.
                            Err(err)
                                if err.kind() == std::io::ErrorKind::AlreadyExists
                                    && fs::symlink_metadata(&child_path)
                                        .is_ok_and(|meta| meta.is_dir()) => {}
                            result => result.map_err(RuntimeError::io(format!(
                                "cannot create {}",
                                child_path.display()
                            )))?,
                        }
                    }
                    child.write(&child_path)?;
                }
            }
        }
        own_like(path, &self.meta)
    }
}

enum TreeError {
    Io(RuntimeError),
    /// Bigger than [`CARRIED_MAX`], or holding something other than
    /// directories and regular files.
    TooBig,
}

impl From<RuntimeError> for TreeError {
    fn from(err: RuntimeError) -> Self {
        Self::Io(err)
    }
}

fn own_like(path: &Path, meta: &fs::Metadata) -> Result<(), RuntimeError> {
    std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid()))
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(meta.mode())))
        .map_err(RuntimeError::io(format!(
            "cannot set the owner and mode of {}",
            path.display()
        )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Needs root and loop devices, as the server does.
    #[test]
    fn a_disk_is_its_size_keeps_the_mount_point_and_goes_on_unmount() {
        let data = std::env::var_os("SBX_TEST_DATA_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        fs::create_dir_all(&data).expect("data root");
        let tmp = tempfile::tempdir_in(&data).expect("tempdir");
        let disks = Disks::probe(tmp.path().join("templates"));
        disks.usable().expect("disks work here");

        let layer = tmp.path().join("layer");
        fs::create_dir_all(layer.join("diff")).expect("mkdir");
        fs::create_dir_all(layer.join("work/work")).expect("mkdir");
        fs::set_permissions(layer.join("work/work"), fs::Permissions::from_mode(0o0))
            .expect("chmod");
        fs::write(layer.join("link"), b"ABCDEF").expect("write");
        fs::set_permissions(&layer, fs::Permissions::from_mode(0o710)).expect("chmod");
        std::os::unix::fs::chown(layer.join("diff"), Some(100_000), Some(100_000)).expect("chown");
        let image = tmp.path().join("disk.img");
        disks
            .mount_new(&image, 32 << 20, &layer)
            .expect("mount a disk");

        let fs_type = nix::sys::statfs::statfs(&layer).expect("statfs");
        assert_eq!(
            fs_type.filesystem_type(),
            nix::sys::statfs::EXT4_SUPER_MAGIC
        );
        let total = fs_type.blocks() * fs_type.block_size() as u64;
        assert!(
            (28 << 20..=32 << 20).contains(&total),
            "a 32 MiB disk shows {total} bytes"
        );
        assert_eq!(fs::read(layer.join("link")).expect("carried"), b"ABCDEF");
        let diff = fs::metadata(layer.join("diff")).expect("carried dir");
        assert_eq!((diff.uid(), diff.gid()), (100_000, 100_000));
        assert_eq!(fs::metadata(&layer).expect("root").mode() & 0o7777, 0o710);
        let nested = fs::metadata(layer.join("work/work")).expect("carried nested dir");
        assert_eq!(nested.mode() & 0o7777, 0);

        let mut fill = File::create(layer.join("diff/fill")).expect("create");
        let chunk = vec![7u8; 1 << 20];
        let error = (0..64)
            .find_map(|_| fill.write_all(&chunk).err())
            .expect("writing 64 MiB into 32 MiB fails");
        assert_eq!(error.raw_os_error(), Some(libc::ENOSPC), "{error}");
        drop(fill);

        assert_eq!(loop_devices_backed_by(&image).len(), 1);
        unmount(&layer).expect("unmount");
        assert!(!layer.join("diff/fill").exists(), "still mounted");
        assert!(layer.join("link").exists(), "the original is back");
        assert_eq!(loop_devices_backed_by(&image), Vec::<String>::new());
        unmount(&layer).expect("idempotent");
    }

    #[test]
    fn only_the_newest_templates_are_kept() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let templates = tmp.path().join("templates");
        let disks = Disks::probe(templates.clone());
        let sizes: Vec<u64> = (1..=TEMPLATES_KEPT as u64 + 2)
            .map(|mib| (64 + mib) << 20)
            .collect();
        for &bytes in &sizes {
            disks.template(bytes).expect("template");
        }
        let kept: Vec<String> = fs::read_dir(&templates)
            .expect("list")
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("ext4-"))
            .collect();
        assert_eq!(kept.len(), TEMPLATES_KEPT, "{kept:?}");
        for bytes in &sizes[sizes.len() - TEMPLATES_KEPT..] {
            assert!(kept.contains(&format!("ext4-{bytes}.img")), "{kept:?}");
        }
    }

    fn loop_devices_backed_by(image: &Path) -> Vec<String> {
        let image = image.canonicalize().expect("image path");
        fs::read_dir("/sys/block")
            .expect("/sys/block")
            .flatten()
            .filter(|entry| {
                fs::read_to_string(entry.path().join("loop/backing_file"))
                    .is_ok_and(|file| Path::new(file.trim()) == image)
            })
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect()
    }
}

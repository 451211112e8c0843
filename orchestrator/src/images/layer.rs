//! Applying one OCI image layer (an uncompressed tar) onto a root
//! filesystem being assembled, with the layer format's semantics:
//!
//! - `.wh.NAME` deletes `NAME` from the layers below; `.wh..wh..opq` makes
//!   its directory opaque, hiding what the layers below put there (but not
//!   what this layer adds to it, in whatever order the tar lists them);
//! - hard links are made to files already in the root;
//! - owners, modes (set-id bits included) and files' mtimes are kept;
//! - FIFOs are made; character and block devices are skipped and reported
//!   (a sandbox cannot use them, and the host must not hold them).
//!
//! A layer is untrusted input: whoever built the image chose every name,
//! link and link target in it. So nothing here resolves a path the way the
//! host would. Every entry's parent is opened with `openat2` and
//! `RESOLVE_IN_ROOT` from the root's descriptor, so `..` and symlinks,
//! absolute or relative, resolve as they would inside the image (as if
//! chrooted) and never reach out of it; the entry itself is then made with
//! an `*at` call on that parent and the bare name, never following a
//! symlink at it. A name with a `..` component, or none at all, fails the
//! layer: a well-formed layer has neither.

use super::ImageError;
use nix::fcntl::AtFlags;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fchmodat, fstatat, mkdirat, mknodat, FchmodatFlags, Mode, SFlag};
use nix::unistd::{fchown, fchownat, unlinkat, Gid, Uid, UnlinkatFlags};
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// The prefix of a whiteout's name.
const WHITEOUT: &str = ".wh.";
/// The name that makes its directory opaque.
const OPAQUE: &str = ".wh..wh..opq";

/// What applying a layer did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Entries made or removed.
    pub entries: u64,
    /// Device nodes the layer held, not made.
    pub skipped_devices: Vec<String>,
}

/// Applies the layer `tar` (uncompressed) onto the directory `root`.
pub fn apply(tar: impl Read, root: &Path) -> Result<Applied, ImageError> {
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(ImageError::errno(format!("cannot open {}", root.display())))?;
    // SAFETY: `open` returned a new descriptor that nothing else owns.
    let root_fd = unsafe { OwnedFd::from_raw_fd(root_fd) };
    let mut layer = Layer {
        root: root_fd,
        made: HashSet::new(),
        applied: Applied::default(),
    };
    let mut archive = tar::Archive::new(tar);
    // A layer that does not parse is malformed (its blob, a file of ours,
    // was read whole to check its digest).
    let malformed =
        |err: std::io::Error| ImageError::Invalid(format!("a layer is not a tar: {err}"));
    let entries = archive.entries().map_err(malformed)?;
    for entry in entries {
        let entry = entry.map_err(malformed)?;
        layer.apply_entry(entry)?;
    }
    Ok(layer.applied)
}

/// The state of one layer being applied.
struct Layer {
    root: OwnedFd,
    /// Paths this layer made, which its opaque markers must not hide.
    made: HashSet<PathBuf>,
    applied: Applied,
}

/// `path` (from a tar header) as a relative path of normal components.
/// Whether `rel` is a directory under `root`, resolved inside it (the
/// root's own links cannot point the answer outside).
pub fn is_dir_in(root: &Path, rel: &Path) -> bool {
    let Ok(root) = File::open(root) else {
        return false;
    };
    if rel.as_os_str().is_empty() {
        return true;
    }
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(root.as_raw_fd(), rel, how) {
        Ok(fd) => {
            // SAFETY: a new descriptor that nothing else owns.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
            true
        }
        Err(_) => false,
    }
}

fn entry_path(raw: &Path) -> Result<PathBuf, ImageError> {
    let mut clean = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(name) => clean.push(name),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(ImageError::BadEntry {
                    path: raw.display().to_string(),
                    reason: "a '..' component".into(),
                })
            }
        }
    }
    Ok(clean)
}

impl Layer {
    fn apply_entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ImageError> {
        let raw = entry
            .path()
            .map_err(ImageError::io("a layer entry's path"))?
            .into_owned();
        let path = entry_path(&raw)?;
        let Some(name) = path.file_name().map(OsStr::to_owned) else {
            // The root itself ("./"): its owner and mode are the image's
            // business, not the layer's.
            return Ok(());
        };
        let parent_path = path.parent().unwrap_or(Path::new(""));
        let name_str = name.to_string_lossy();
        if name_str == OPAQUE {
            let parent = self.dir(parent_path)?;
            self.clear_below(&parent, parent_path)?;
            return Ok(());
        }
        if let Some(hidden) = name_str.strip_prefix(WHITEOUT) {
            // `.wh..` and `.wh...` would name the directory itself or its
            // parent, which `..` could take out of the root.
            if matches!(hidden, "" | "." | "..") {
                return Err(ImageError::BadEntry {
                    path: path.display().to_string(),
                    reason: "a whiteout of no name".into(),
                });
            }
            let parent = self.dir(parent_path)?;
            remove_at(&parent, OsStr::new(hidden), &path)?;
            self.applied.entries += 1;
            return Ok(());
        }
        let header = entry.header().clone();
        let kind = header.entry_type();
        let context = |what: &str| format!("{what} {}", path.display());
        let uid = Uid::from_raw(
            header
                .uid()
                .map_err(ImageError::io(context("the owner of")))? as u32,
        );
        let gid = Gid::from_raw(
            header
                .gid()
                .map_err(ImageError::io(context("the group of")))? as u32,
        );
        let mode = Mode::from_bits_truncate(
            header
                .mode()
                .map_err(ImageError::io(context("the mode of")))?
                & 0o7777,
        );
        if kind.is_character_special() || kind.is_block_special() {
            self.applied
                .skipped_devices
                .push(path.display().to_string());
            return Ok(());
        }
        let parent = self.dir(parent_path)?;
        if kind.is_dir() {
            let existing = fstatat(
                Some(parent.as_raw_fd()),
                name.as_os_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            );
            if !existing.is_ok_and(|stat| {
                SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
            }) {
                remove_at(&parent, &name, &path)?;
                mkdirat(
                    Some(parent.as_raw_fd()),
                    name.as_os_str(),
                    Mode::from_bits_truncate(0o755),
                )
                .map_err(ImageError::errno(context("cannot make")))?;
            }
            let dir = open_at(&parent, &name, OFlag::O_RDONLY | OFlag::O_DIRECTORY, &path)?;
            fchown(dir.as_raw_fd(), Some(uid), Some(gid))
                .map_err(ImageError::errno(context("cannot chown")))?;
            fchmod(dir.as_raw_fd(), mode).map_err(ImageError::errno(context("cannot chmod")))?;
        } else {
            remove_at(&parent, &name, &path)?;
            if kind.is_symlink() {
                let target = entry
                    .link_name()
                    .map_err(ImageError::io(context("the target of")))?
                    .ok_or_else(|| ImageError::BadEntry {
                        path: path.display().to_string(),
                        reason: "a symlink without a target".into(),
                    })?;
                nix::unistd::symlinkat(target.as_ref(), Some(parent.as_raw_fd()), name.as_os_str())
                    .map_err(ImageError::errno(context("cannot make the symlink")))?;
                chown_at(&parent, &name, uid, gid, &path)?;
            } else if kind.is_hard_link() {
                self.hard_link(&entry, &parent, &name, &path)?;
            } else if kind.is_fifo() {
                mknodat(
                    Some(parent.as_raw_fd()),
                    name.as_os_str(),
                    SFlag::S_IFIFO,
                    mode,
                    0,
                )
                .map_err(ImageError::errno(context("cannot make the FIFO")))?;
                chown_at(&parent, &name, uid, gid, &path)?;
                fchmodat(
                    Some(parent.as_raw_fd()),
                    name.as_os_str(),
                    mode,
                    FchmodatFlags::FollowSymlink,
                )
                .map_err(ImageError::errno(context("cannot chmod")))?;
            } else if kind.is_file() || kind.is_contiguous() {
                let file = open_at(
                    &parent,
                    &name,
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
                    &path,
                )?;
                let mut file = File::from(file);
                std::io::copy(&mut entry, &mut file)
                    .map_err(ImageError::io(context("cannot write")))?;
                // chown clears set-id bits: the mode goes last.
                fchown(file.as_raw_fd(), Some(uid), Some(gid))
                    .map_err(ImageError::errno(context("cannot chown")))?;
                fchmod(file.as_raw_fd(), mode)
                    .map_err(ImageError::errno(context("cannot chmod")))?;
                if let Ok(mtime) = header.mtime() {
                    let time = nix::sys::time::TimeSpec::new(mtime as i64, 0);
                    let _ = nix::sys::stat::futimens(file.as_raw_fd(), &time, &time);
                }
            } else {
                // PAX and GNU metadata entries are read by the tar crate
                // itself; anything else is not part of a filesystem.
                return Ok(());
            }
        }
        self.made.insert(path);
        self.applied.entries += 1;
        Ok(())
    }

    /// The directory `rel` (relative to the root, resolved inside it),
    /// made with its missing parents (root-owned, 0755) if absent.
    fn dir(&self, rel: &Path) -> Result<OwnedFd, ImageError> {
        if rel.as_os_str().is_empty() {
            return self
                .root
                .try_clone()
                .map_err(ImageError::io("cannot duplicate the root"));
        }
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        match openat2(self.root.as_raw_fd(), rel, how) {
            // SAFETY: a new descriptor that nothing else owns.
            Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(nix::errno::Errno::ENOENT) => {
                let parent = self.dir(rel.parent().unwrap_or(Path::new("")))?;
                let name = rel.file_name().unwrap_or_default();
                match mkdirat(
                    Some(parent.as_raw_fd()),
                    name,
                    Mode::from_bits_truncate(0o755),
                ) {
                    Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                    Err(errno) => {
                        return Err(ImageError::errno(format!("cannot make {}", rel.display()))(
                            errno,
                        ))
                    }
                }
                // Made now, or a name already there that is no directory:
                // a link to a directory the layers do not hold.
                open_at(&parent, name, OFlag::O_PATH | OFlag::O_DIRECTORY, rel).map_err(|_| {
                    ImageError::BadEntry {
                        path: rel.display().to_string(),
                        reason: "not a directory, nor a link to one in the image".into(),
                    }
                })
            }
            Err(errno) => Err(ImageError::errno(format!("cannot open {}", rel.display()))(
                errno,
            )),
        }
    }

    /// Removes what the layers below put in `dir` (at `rel`): everything
    /// in it that this layer has not made.
    fn clear_below(&mut self, dir: &OwnedFd, rel: &Path) -> Result<(), ImageError> {
        let listed = open_at(
            dir,
            OsStr::new("."),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            rel,
        )?;
        let names = names_in(listed, rel)?;
        for name in names {
            let path = rel.join(&name);
            if !self.made.contains(&path) {
                remove_at(dir, &name, &path)?;
                self.applied.entries += 1;
            }
        }
        Ok(())
    }

    /// Makes `name` in `parent` a hard link to the entry's link target,
    /// which must already be in the root and not be a directory.
    fn hard_link<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        parent: &OwnedFd,
        name: &OsStr,
        path: &Path,
    ) -> Result<(), ImageError> {
        let bad = |reason: &str| ImageError::BadEntry {
            path: path.display().to_string(),
            reason: reason.into(),
        };
        let target = entry
            .link_name()
            .map_err(ImageError::io(format!("the target of {}", path.display())))?
            .ok_or_else(|| bad("a hard link without a target"))?;
        let target = entry_path(&target)?;
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = openat2(self.root.as_raw_fd(), &target, how).map_err(|_| {
            bad(&format!(
                "links to {}, which the layers do not hold",
                target.display()
            ))
        })?;
        // SAFETY: a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name_c = std::ffi::CString::new(name.as_encoded_bytes())
            .map_err(|_| bad("a NUL in its name"))?;
        // SAFETY: both descriptors are open; AT_EMPTY_PATH links the file
        // `fd` refers to, whatever path it was opened by.
        let linked = unsafe {
            libc::linkat(
                fd.as_raw_fd(),
                c"".as_ptr(),
                parent.as_raw_fd(),
                name_c.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        };
        if linked != 0 {
            return Err(ImageError::io(format!("cannot link {}", path.display()))(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}

/// Opens `name` in `dir` without following a symlink at it.
fn open_at(dir: &OwnedFd, name: &OsStr, flags: OFlag, path: &Path) -> Result<OwnedFd, ImageError> {
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(ImageError::errno(format!("cannot open {}", path.display())))?;
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Removes `name` from `dir`, a directory with all it holds; nothing if it
/// is not there.
fn remove_at(dir: &OwnedFd, name: &OsStr, path: &Path) -> Result<(), ImageError> {
    match unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
        Err(nix::errno::Errno::EISDIR) => {}
        Err(errno) => {
            return Err(ImageError::errno(format!(
                "cannot remove {}",
                path.display()
            ))(errno))
        }
    }
    let inner = open_at(dir, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY, path)?;
    let listed = inner
        .try_clone()
        .map_err(ImageError::io("cannot duplicate a descriptor"))?;
    let names = names_in(listed, path)?;
    for child in names {
        remove_at(&inner, &child, &path.join(&child))?;
    }
    unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::RemoveDir).map_err(ImageError::errno(
        format!("cannot remove {}", path.display()),
    ))
}

/// Sets the owner of `name` in `dir`, or of the link itself if it is one.
fn chown_at(
    dir: &OwnedFd,
    name: &OsStr,
    uid: Uid,
    gid: Gid,
    path: &Path,
) -> Result<(), ImageError> {
    fchownat(
        Some(dir.as_raw_fd()),
        name,
        Some(uid),
        Some(gid),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(ImageError::errno(format!(
        "cannot chown {}",
        path.display()
    )))
}

/// The names in the directory `dir` (at `path`), but `.` and `..`.
fn names_in(dir: OwnedFd, path: &Path) -> Result<Vec<OsString>, ImageError> {
    let mut listing = nix::dir::Dir::from(dir)
        .map_err(ImageError::errno(format!("cannot list {}", path.display())))?;
    Ok(listing
        .iter()
        .flatten()
        .map(|entry| OsStr::from_bytes(entry.file_name().to_bytes()).to_owned())
        .filter(|name| name != "." && name != "..")
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::test_tar::{layer, Kind};
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
    }

    #[test]
    fn layers_stack_with_whiteouts_opaque_dirs_links_and_owners() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let base = layer(&[
            ("etc/", Kind::Dir, 0, 0o755),
            ("etc/motd", Kind::File("hi"), 0, 0o644),
            ("etc/motd-link", Kind::HardLink("etc/motd"), 0, 0o644),
            ("app/cache/old", Kind::File("old"), 0, 0o644),
            ("app/keep", Kind::File("kept"), 0, 0o644),
            ("bin/tool", Kind::File("#!/bin/sh\n"), 0, 0o4755),
            ("c1", Kind::Symlink("c2"), 0, 0o777),
            ("c2", Kind::Symlink("/etc/motd"), 0, 0o777),
            ("home/user/notes", Kind::File("mine"), 1000, 0o600),
            ("run/fifo", Kind::Fifo, 0, 0o644),
            ("dev/null", Kind::CharDevice, 0, 0o666),
        ]);
        let applied = apply(base.as_slice(), root).expect("base applies");
        assert_eq!(applied.skipped_devices, ["dev/null"]);
        assert!(!root.join("dev/null").exists());
        // c1 -> c2 -> /etc/motd: kept as written (read from the host, the
        // absolute one would lead to the host's /etc/motd, so the chain is
        // checked link by link).
        assert_eq!(
            std::fs::read_link(root.join("c1")).expect("link"),
            Path::new("c2")
        );
        assert_eq!(
            std::fs::read_link(root.join("c2")).expect("link"),
            Path::new("/etc/motd")
        );
        assert_eq!(read(&root.join("etc/motd")), "hi");
        let motd = std::fs::metadata(root.join("etc/motd")).expect("motd");
        let linked = std::fs::metadata(root.join("etc/motd-link")).expect("link");
        assert_eq!(motd.ino(), linked.ino(), "a hard link, not a copy");
        let tool = std::fs::metadata(root.join("bin/tool")).expect("tool");
        assert_eq!(
            tool.permissions().mode() & 0o7777,
            0o4755,
            "set-id bits kept"
        );
        assert_eq!(tool.mtime(), 1_700_000_000);
        let notes = std::fs::metadata(root.join("home/user/notes")).expect("notes");
        assert_eq!(
            (notes.uid(), notes.gid(), notes.permissions().mode() & 0o777),
            (1000, 1000, 0o600)
        );
        let fifo = std::fs::symlink_metadata(root.join("run/fifo")).expect("fifo");
        assert!(fifo.file_type().is_fifo());

        let upper = layer(&[
            ("app/cache/new", Kind::File("new"), 0, 0o644),
            // After the new file: it stays; only the layers below are hidden.
            ("app/cache/.wh..wh..opq", Kind::File(""), 0, 0o644),
            ("etc/.wh.motd", Kind::File(""), 0, 0o644),
            ("app/keep/", Kind::Dir, 0, 0o755),
        ]);
        apply(upper.as_slice(), root).expect("upper applies");
        let cache: Vec<_> = std::fs::read_dir(root.join("app/cache"))
            .expect("cache")
            .flatten()
            .map(|entry| entry.file_name())
            .collect();
        assert_eq!(cache, ["new"]);
        assert!(!root.join("etc/motd").exists(), "whited out");
        assert_eq!(
            read(&root.join("etc/motd-link")),
            "hi",
            "the other name stays"
        );
        assert!(
            root.join("app/keep").is_dir(),
            "a file replaced by a directory"
        );
    }

    #[test]
    fn a_hostile_layer_writes_nothing_outside_its_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).expect("root");
        let host_file = dir.path().join("host-file");
        std::fs::write(&host_file, "host").expect("host file");
        let host_path = host_file.to_str().expect("utf-8");
        let outside = || -> Vec<_> {
            let mut names: Vec<_> = std::fs::read_dir(dir.path())
                .expect("list")
                .flatten()
                .map(|entry| entry.file_name())
                .collect();
            names.sort();
            names
        };

        // Symlinks out, absolute and relative, then writes through them:
        // resolved inside the root, as the image would see them.
        let through_links = layer(&[
            ("escape", Kind::Symlink("/"), 0, 0o777),
            ("up", Kind::Symlink("../../../.."), 0, 0o777),
            ("escape/pwned", Kind::File("x"), 0, 0o644),
            ("up/pwned-too", Kind::File("x"), 0, 0o644),
            ("host", Kind::Symlink(host_path), 0, 0o777),
            ("host", Kind::File("evil"), 0, 0o644),
        ]);
        apply(through_links.as_slice(), &root).expect("applies, inside");
        assert_eq!(read(&root.join("pwned")), "x");
        assert_eq!(read(&root.join("pwned-too")), "x");
        assert_eq!(read(&root.join("host")), "evil", "the link was replaced");
        assert_eq!(read(&host_file), "host");
        assert_eq!(outside(), ["host-file", "root"]);

        // Names with `..`, and hard links to what the root does not hold
        // (a host file by its absolute path, or through a link out): each
        // fails the layer.
        for hostile in [
            layer(&[("../outside", Kind::File("x"), 0, 0o644)]),
            layer(&[("a/../../outside", Kind::File("x"), 0, 0o644)]),
            layer(&[("stolen", Kind::HardLink(host_path), 0, 0o644)]),
            layer(&[("stolen", Kind::HardLink("escape/etc/shadow"), 0, 0o644)]),
            layer(&[("stolen", Kind::HardLink("../host-file"), 0, 0o644)]),
            // A whiteout of `..` at the top would remove the root's parent.
            layer(&[(".wh...", Kind::File(""), 0, 0o644)]),
            layer(&[("a/.wh..", Kind::File(""), 0, 0o644)]),
        ] {
            let failed = apply(hostile.as_slice(), &root);
            assert!(
                matches!(failed, Err(ImageError::BadEntry { .. })),
                "{failed:?}"
            );
        }
        assert!(!root.join("stolen").exists());
        assert_eq!(outside(), ["host-file", "root"]);
        assert_eq!(std::fs::metadata(&host_file).expect("host").nlink(), 1);
    }
}

//! File-system helpers shared by [`crate::files`] and [`crate::archive`]:
//! errno text for messages, [`FileInfo`] from metadata, and [`Beneath`],
//! which opens paths *beneath* a directory so that nothing outside it can be
//! reached, whatever symlinks the directory holds.
//!
//! Why [`Beneath`] exists: tar extraction writes where a stranger's archive
//! says. Checking the names (`..`, leading `/`) is not enough, because an
//! earlier entry can plant a symlink (`evil -> /etc`) that a later entry
//! (`evil/passwd`) would write through, and the target directory may already
//! hold such links. So every parent directory is resolved by the kernel with
//! `openat2(root, rel, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, which fails
//! with `EXDEV` on any escape (absolute symlinks, `..` above the root,
//! `/proc` magic links), and entries are then created with `*at()` calls
//! relative to that directory fd and `O_NOFOLLOW` on the last component.
//!
//! Without `openat2` (kernel < 5.6, or a seccomp profile that refuses it)
//! the fallback walks the path one component at a time with
//! `O_NOFOLLOW | O_DIRECTORY`: stricter (no symlink in a parent path is
//! followed at all, even one that stays inside) but never escaping.

use chrono::{DateTime, Utc};
use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use sbx_api::{FileInfo, FileType};
use std::fs::Metadata;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};

/// Errno text for messages: "no such file or directory", without the
/// "(os error 2)" suffix and lower-cased, as the conventions want.
pub fn describe(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => {
            let text = Errno::from_raw(code).desc();
            let mut chars = text.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => format!("os error {code}"),
            }
        }
        None => err.to_string(),
    }
}

/// `ENOTDIR` from a lookup ("/file/x") means the path does not exist; for
/// calls that only look, report it as such (404 rather than 409).
pub fn lookup_error(err: io::Error) -> io::Error {
    if err.raw_os_error() == Some(libc::ENOTDIR) {
        io::Error::from_raw_os_error(libc::ENOENT)
    } else {
        err
    }
}

/// The wire description of `path`, from its `lstat` metadata.
pub fn file_info(path: &Path, meta: &Metadata, link_target: Option<&Path>) -> FileInfo {
    let file_type = meta.file_type();
    let file_type = if file_type.is_symlink() {
        FileType::Symlink
    } else if file_type.is_dir() {
        FileType::Dir
    } else if file_type.is_file() {
        FileType::File
    } else {
        FileType::Other
    };
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string_lossy().into_owned());
    let nanos = u32::try_from(meta.mtime_nsec()).unwrap_or(0);
    FileInfo {
        path: path.to_string_lossy().into_owned(),
        name,
        file_type,
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        mtime: DateTime::<Utc>::from_timestamp(meta.mtime(), nanos).unwrap_or_default(),
        uid: meta.uid(),
        gid: meta.gid(),
        link_target: link_target.map(|target| target.to_string_lossy().into_owned()),
        owner: None,
        group: None,
    }
}

/// `lstat` plus the link target of a symlink, for blocking contexts.
pub fn stat_blocking(path: &Path) -> io::Result<FileInfo> {
    let meta = std::fs::symlink_metadata(path)?;
    let target = if meta.file_type().is_symlink() {
        std::fs::read_link(path).ok()
    } else {
        None
    };
    Ok(file_info(path, &meta, target.as_deref()))
}

/// Takes ownership of a descriptor nix returned.
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open call and nothing
    // else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

const OPENAT2_UNKNOWN: u8 = 0;
const OPENAT2_WORKS: u8 = 1;
const OPENAT2_MISSING: u8 = 2;

/// Whether `openat2` is usable here, learnt from the first call.
static OPENAT2: AtomicU8 = AtomicU8::new(OPENAT2_UNKNOWN);

/// How [`Beneath`] resolves paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolver {
    /// `openat2` with `RESOLVE_BENEATH`, falling back to [`Resolver::Walk`]
    /// when the kernel or seccomp refuses the call.
    Auto,
    /// One `openat(O_NOFOLLOW)` per component.
    Walk,
}

/// A directory that paths are resolved beneath; see the module docs.
#[derive(Debug)]
pub struct Beneath {
    root: OwnedFd,
    resolver: Resolver,
}

impl Beneath {
    /// Opens `dir` (following symlinks: the caller chose it) as the root.
    pub fn open_root(dir: &Path, resolver: Resolver) -> io::Result<Self> {
        let fd = nix::fcntl::open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            root: owned(fd),
            resolver,
        })
    }

    pub fn root_fd(&self) -> RawFd {
        self.root.as_raw_fd()
    }

    /// Opens `rel` beneath the root. `rel` is relative, its components are
    /// separated by single `/` and none is empty, `.` or `..` (callers
    /// normalise first). Symlinks are followed only while they stay beneath
    /// (pass `O_NOFOLLOW` to refuse one as the last component); an escape
    /// fails with `EXDEV`. The walking fallback follows no symlink at all
    /// (`ENOTDIR` or `ELOOP`).
    pub fn open(&self, rel: &[u8], flags: OFlag, mode: Mode) -> io::Result<OwnedFd> {
        let flags = flags | OFlag::O_CLOEXEC;
        if self.resolver == Resolver::Auto && OPENAT2.load(Ordering::Relaxed) != OPENAT2_MISSING {
            let how = OpenHow::new()
                .flags(flags)
                .mode(mode)
                .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
            // EAGAIN: a concurrent rename raced the lookup; the kernel asks
            // us to retry.
            for _ in 0..8 {
                match openat2(self.root_fd(), rel, how) {
                    Ok(fd) => {
                        OPENAT2.store(OPENAT2_WORKS, Ordering::Relaxed);
                        return Ok(owned(fd));
                    }
                    Err(Errno::EAGAIN) => continue,
                    // ENOSYS: old kernel; EPERM: a seccomp profile that
                    // predates openat2 (an O_PATH lookup is otherwise never
                    // refused with EPERM).
                    Err(Errno::ENOSYS | Errno::EPERM)
                        if OPENAT2.load(Ordering::Relaxed) == OPENAT2_UNKNOWN =>
                    {
                        tracing::info!(
                            "openat2 unavailable, resolving paths component by component"
                        );
                        OPENAT2.store(OPENAT2_MISSING, Ordering::Relaxed);
                        break;
                    }
                    Err(errno) => return Err(errno.into()),
                }
            }
            if OPENAT2.load(Ordering::Relaxed) != OPENAT2_MISSING {
                return Err(Errno::EAGAIN.into());
            }
        }
        self.walk(rel, flags, mode)
    }

    fn walk(&self, rel: &[u8], flags: OFlag, mode: Mode) -> io::Result<OwnedFd> {
        let mut components = rel.split(|&byte| byte == b'/').peekable();
        let mut current: Option<OwnedFd> = None;
        while let Some(component) = components.next() {
            if component.is_empty() || component == b"." || component == b".." {
                return Err(Errno::EINVAL.into());
            }
            let dirfd = current.as_ref().map_or(self.root_fd(), AsRawFd::as_raw_fd);
            let fd = if components.peek().is_some() {
                openat(
                    Some(dirfd),
                    component,
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?
            } else {
                openat(Some(dirfd), component, flags | OFlag::O_NOFOLLOW, mode)?
            };
            current = Some(owned(fd));
        }
        current.ok_or_else(|| Errno::EINVAL.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn escapes(resolver: Resolver) {
        let outer = tempfile::tempdir().expect("tempdir");
        let root = outer.path().join("root");
        std::fs::create_dir_all(root.join("inside/deeper")).expect("mkdir");
        symlink(outer.path(), root.join("out")).expect("symlink");
        symlink("../..", root.join("inside/up")).expect("symlink");
        symlink("/", root.join("slash")).expect("symlink");
        symlink("inside", root.join("alias")).expect("symlink");
        let beneath = Beneath::open_root(&root, resolver).expect("root");
        let dir = OFlag::O_PATH | OFlag::O_DIRECTORY;
        assert!(beneath.open(b"inside/deeper", dir, Mode::empty()).is_ok());
        for hostile in [
            &b"out/root"[..],
            b"inside/up/x",
            b"slash/etc",
            b"out",
            b"slash",
        ] {
            assert!(
                beneath.open(hostile, dir, Mode::empty()).is_err(),
                "{resolver:?} let {} through",
                String::from_utf8_lossy(hostile)
            );
        }
        // A symlink that stays inside is followed by openat2 only.
        let alias = beneath.open(b"alias/deeper", dir, Mode::empty());
        assert_eq!(alias.is_ok(), resolver == Resolver::Auto, "{alias:?}");
    }

    #[test]
    fn openat2_refuses_escapes() {
        escapes(Resolver::Auto);
    }

    #[test]
    fn walking_refuses_escapes() {
        escapes(Resolver::Walk);
    }

    #[test]
    fn errno_text_is_lower_case() {
        let err = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(describe(&err), "no such file or directory");
        assert_eq!(
            lookup_error(io::Error::from_raw_os_error(libc::ENOTDIR)).raw_os_error(),
            Some(libc::ENOENT)
        );
    }
}

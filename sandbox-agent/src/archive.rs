//! `/archive`: tar upload (extracted here, inside the sandbox) and tar
//! download of a file or tree. Both stream: neither side ever holds a whole
//! archive.
//!
//! Upload (`PUT /archive?path=DIR`): an async task feeds the request body
//! through a bounded channel to a blocking reader ([`BodyReader`]) that the
//! `tar` crate parses on a `spawn_blocking` thread, so at most
//! [`BRIDGE_DEPTH`] body chunks are in flight. DIR is created if missing.
//! With `&owner=USER[:GROUP]` (a Dockerfile's `COPY --chown`, resolved by
//! [`Owner`] before anything is written; an unknown name is a 400), every
//! file, directory and symlink the extraction creates — DIR and its missing
//! parents included — is given that owner; directories that already
//! existed keep theirs, and hard links share their target's inode.
//!
//! The archive is hostile until proven otherwise. Policy:
//! - leading `/` is stripped (`/abs/x` lands in `DIR/abs/x`, like GNU tar
//!   and `docker cp`); `.` components are dropped;
//! - an entry (or hardlink target) with a `..` component rejects the
//!   archive: 400, nothing more is extracted;
//! - every parent directory is resolved beneath DIR by the kernel
//!   ([`Beneath`], `openat2(RESOLVE_BENEATH)`), so a write through a symlink
//!   that leaves DIR — planted by an earlier entry (`evil -> /etc`, then
//!   `evil/passwd`) or already there — is refused with 400 instead of being
//!   followed; symlinks that stay inside DIR work as usual;
//! - the last component is created with `O_CREAT | O_EXCL | O_NOFOLLOW`,
//!   `mkdirat`, `symlinkat` or `linkat`; an existing file or symlink there is
//!   unlinked first (never written through), an existing directory is a 409;
//! - symlinks are created with whatever target they carry (a link is inert
//!   until something follows it, and everything here refuses to follow it
//!   out); hardlink targets must resolve beneath DIR, so a link to a file
//!   outside is refused (400);
//! - devices, FIFOs and other special entries are skipped (not counted);
//! - permission bits are kept except setuid and setgid on files (a
//!   directory keeps setgid); mtimes are restored (those of directories once
//!   the whole archive is in); the archive's ownership is not: entries belong
//!   to `owner` when given, else to the agent's user. The owner is set
//!   before the mode, since a `chown` clears set-id bits.
//!
//! A rejected archive (400) or a failed write leaves the entries before the
//! failing one in place: streaming rules out checking everything first.
//!
//! Download (`GET /archive?path=P`): a `spawn_blocking` thread walks P
//! (sorted, symlinks archived as symlinks, sockets skipped) and writes the
//! tar into [`ChannelWriter`], whose 64 KiB chunks become the response body
//! as they are produced. Entries are named relative to P's parent (`out/…`
//! for `/workspace/out`, like `docker cp`). Each file contributes exactly
//! the size it had when opened, so a file changing meanwhile cannot corrupt
//! the archive's framing. An error after the response has started aborts the
//! body, so the client sees a failed transfer rather than a short tar.

use crate::error::AgentError;
use crate::files::{checked_path, fs_error, QueryParams, CHUNK, DEFAULT_DIR_MODE};
use crate::fs_safe::{lookup_error, Beneath, Resolver};
use crate::user::Owner;
use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstatat, futimens, mkdirat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use sbx_api::{ArchiveSummary, FileQuery};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use tar::{EntryType, Header, HeaderMode};
use tokio::sync::mpsc;

/// Body chunks buffered between the request and the extracting thread.
const BRIDGE_DEPTH: usize = 16;

/// Tar chunks buffered between the archiving thread and the response.
const DOWNLOAD_DEPTH: usize = 8;

/// After the archive ends (or fails), at most this much of the rest of the
/// body is read and dropped, so the client can read our answer cleanly
/// (GNU tar pads archives to 10 KiB records).
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

/// Directories whose mode and mtime are restored at the end; beyond this
/// many (a hostile archive of empty directories), the rest keep defaults.
const MAX_DIR_FIXUPS: usize = 1 << 20;

/// `PUT /archive?path=DIR[&owner=USER[:GROUP]]`: extracts the tar body
/// into DIR.
pub(crate) async fn upload(
    QueryParams(query): QueryParams<FileQuery>,
    body: Body,
) -> Result<Json<ArchiveSummary>, AgentError> {
    let dir = checked_path(&query.path)?;
    let (sender, receiver) = mpsc::channel(BRIDGE_DEPTH);
    let failure = Arc::new(OnceLock::new());
    let reader = BodyReader {
        receiver,
        current: Bytes::new(),
        failure: Arc::clone(&failure),
    };
    let extraction = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            // Before anything is written; dropping `reader` on error makes
            // `feed` drain the body.
            let owner = query.owner.as_deref().map(Owner::resolve).transpose()?;
            extract(&dir, reader, &failure, Resolver::Auto, owner)
        }
    });
    let ((), extracted) = tokio::join!(feed(body, sender), extraction);
    let summary = extracted
        .map_err(|err| fs_error("extract into", &dir, io::Error::other(err.to_string())))??;
    Ok(Json(summary))
}

/// Moves the body into the channel until the extractor stops listening,
/// then drains a bounded remainder.
async fn feed(body: Body, sender: mpsc::Sender<Result<Bytes, String>>) {
    let mut stream = body.into_data_stream();
    let mut sender = Some(sender);
    let mut drained = 0;
    while let Some(chunk) = stream.next().await {
        let Some(live) = &sender else {
            drained += chunk.map_or(0, |bytes| bytes.len());
            if drained > DRAIN_LIMIT {
                return;
            }
            continue;
        };
        match chunk {
            Ok(bytes) => {
                if live.send(Ok(bytes)).await.is_err() {
                    sender = None;
                }
            }
            Err(err) => {
                let _ = live.send(Err(err.to_string())).await;
                return;
            }
        }
    }
}

/// The blocking end of the upload bridge. A body error is recorded in
/// `failure` so that it is not mistaken for a malformed archive.
#[derive(Debug)]
pub struct BodyReader {
    receiver: mpsc::Receiver<Result<Bytes, String>>,
    current: Bytes,
    failure: Arc<OnceLock<String>>,
}

impl Read for BodyReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                None => return Ok(0),
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(err)) => {
                    let _ = self.failure.set(err.clone());
                    return Err(io::Error::other(err));
                }
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// Extracts the tar read from `reader` into `dir` (created if missing),
/// as the module docs say, the entries it creates owned by `owner` when
/// given. `failure` holds the reason if the body failed.
pub fn extract<R: Read>(
    dir: &Path,
    reader: R,
    failure: &OnceLock<String>,
    resolver: Resolver,
    owner: Option<Owner>,
) -> Result<ArchiveSummary, AgentError> {
    let root_error = |err| fs_error("extract into", dir, err);
    create_target(dir, DEFAULT_DIR_MODE, owner).map_err(root_error)?;
    let beneath = Beneath::open_root(dir, resolver).map_err(root_error)?;
    let mut extractor = Extractor {
        dir,
        beneath,
        failure,
        owner,
        parent: None,
        stale: false,
        dirs: Vec::new(),
        buffer: vec![0; CHUNK],
        summary: ArchiveSummary {
            entries: 0,
            bytes: 0,
        },
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|err| extractor.tar_error(&err))?;
    for entry in entries {
        let mut entry = entry.map_err(|err| extractor.tar_error(&err))?;
        extractor.entry(&mut entry)?;
    }
    extractor.restore_dirs();
    Ok(extractor.summary)
}

/// `mkdir -p dir`, then gives `owner` the directories that created, from
/// the topmost down.
pub(crate) fn create_target(dir: &Path, mode: u32, owner: Option<Owner>) -> io::Result<()> {
    let mut missing = Vec::new();
    if owner.is_some() {
        let mut current = Some(dir);
        while let Some(path) = current.filter(|path| !path.as_os_str().is_empty()) {
            match std::fs::symlink_metadata(path) {
                Err(err) if err.kind() == io::ErrorKind::NotFound => missing.push(path),
                _ => break,
            }
            current = path.parent();
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)?;
    if let Some(owner) = owner {
        for path in missing.into_iter().rev() {
            chown_at(None, path, owner)?;
        }
    }
    Ok(())
}

/// `fchownat(AT_SYMLINK_NOFOLLOW)`: a symlink gets the owner, its target
/// is untouched.
fn chown_at<P: ?Sized + nix::NixPath>(
    dirfd: Option<RawFd>,
    name: &P,
    owner: Owner,
) -> io::Result<()> {
    fchownat(
        dirfd,
        name,
        Some(Uid::from_raw(owner.uid)),
        Some(Gid::from_raw(owner.gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(io::Error::from)
}

/// Normalises an entry name: leading `/` and `.` components dropped, `..`
/// refused (`None`). The result is relative, `/`-separated, maybe empty.
fn normalize(raw: &[u8]) -> Option<Vec<u8>> {
    let mut rel = Vec::with_capacity(raw.len());
    for component in raw.split(|&byte| byte == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return None,
            name => {
                if !rel.is_empty() {
                    rel.push(b'/');
                }
                rel.extend_from_slice(name);
            }
        }
    }
    Some(rel)
}

/// (`a/b`, `c`) from `a/b/c`; (``, `c`) from `c`.
fn split_parent(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&byte| byte == b'/') {
        Some(slash) => (&rel[..slash], &rel[slash + 1..]),
        None => (&[], rel),
    }
}

fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open call and nothing
    // else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn mode_of(header: &Header, mask: u32) -> u32 {
    header.mode().map_or(0o644, |mode| mode & mask)
}

fn mtime_of(header: &Header) -> Option<TimeSpec> {
    let seconds = i64::try_from(header.mtime().ok()?).ok()?;
    Some(TimeSpec::new(seconds, 0))
}

fn set_mtime(fd: RawFd, mtime: Option<TimeSpec>) {
    if let Some(mtime) = mtime {
        // Best effort: a wrong mtime is not worth failing the upload.
        let _ = futimens(fd, &TimeSpec::UTIME_OMIT, &mtime);
    }
}

struct Extractor<'a> {
    dir: &'a Path,
    beneath: Beneath,
    failure: &'a OnceLock<String>,
    /// Who the created entries belong to; `None`: the agent's user.
    owner: Option<Owner>,
    /// The last parent directory resolved: archives list a directory's
    /// files together, so most entries reuse it. Dropped at the next entry
    /// once anything was unlinked (a path could now resolve differently).
    parent: Option<(Vec<u8>, OwnedFd)>,
    stale: bool,
    /// Directories to give their mode and mtime at the end.
    dirs: Vec<(Vec<u8>, u32, Option<TimeSpec>)>,
    buffer: Vec<u8>,
    summary: ArchiveSummary,
}

impl Extractor<'_> {
    fn shown(rel: &[u8]) -> String {
        String::from_utf8_lossy(rel).into_owned()
    }

    fn path_of(&self, rel: &[u8]) -> PathBuf {
        self.dir.join(Path::new(std::ffi::OsStr::from_bytes(rel)))
    }

    /// A read error from the tar parser: the body failed, or the archive is
    /// malformed.
    fn tar_error(&self, err: &io::Error) -> AgentError {
        match self.failure.get() {
            Some(reason) => AgentError::InvalidRequest(format!(
                "cannot read the archive for {}: {reason}",
                self.dir.display()
            )),
            None => AgentError::InvalidRequest(format!(
                "malformed tar archive for {}: {err}",
                self.dir.display()
            )),
        }
    }

    fn hostile(&self, raw: &[u8], why: &str) -> AgentError {
        AgentError::InvalidRequest(format!(
            "archive entry {:?} {why}; refusing to extract it into {}",
            Self::shown(raw),
            self.dir.display()
        ))
    }

    /// Errors of resolving beneath the root: an escape is the archive's
    /// fault (400); anything else is the file system's answer.
    fn resolve_error(&self, raw: &[u8], rel: &[u8], err: io::Error) -> AgentError {
        match err.raw_os_error() {
            Some(libc::EXDEV | libc::ELOOP) => self.hostile(raw, "resolves outside the target"),
            _ => fs_error("extract", &self.path_of(rel), err),
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), AgentError> {
        if self.stale {
            self.parent = None;
            self.stale = false;
        }
        let raw = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        let Some(rel) = normalize(&raw) else {
            return Err(self.hostile(&raw, "has a `..` component"));
        };
        match kind {
            // Pre-POSIX archives mark directories with a trailing slash.
            EntryType::Regular if raw.ends_with(b"/") => self.directory(entry, &raw, &rel),
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(entry, &raw, &rel)
            }
            EntryType::Directory => self.directory(entry, &raw, &rel),
            EntryType::Symlink => self.symlink(entry, &raw, &rel),
            EntryType::Link => self.hardlink(entry, &raw, &rel),
            _ => {
                tracing::debug!(entry = %Self::shown(&raw), ?kind, "skipping archive entry");
                Ok(())
            }
        }
    }

    /// The directory `parent` (relative), created if missing, resolved
    /// beneath the root. The fd stays valid until the next entry.
    fn parent_fd(&mut self, raw: &[u8], parent: &[u8]) -> Result<RawFd, AgentError> {
        if parent.is_empty() {
            return Ok(self.beneath.root_fd());
        }
        if let Some((cached, fd)) = &self.parent {
            if cached.as_slice() == parent {
                return Ok(fd.as_raw_fd());
            }
        }
        let fd = match self
            .beneath
            .open(parent, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())
        {
            Ok(fd) => fd,
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => self
                .make_parents(parent)
                .map_err(|err| self.resolve_error(raw, parent, err))?,
            Err(err) => return Err(self.resolve_error(raw, parent, err)),
        };
        let raw_fd = fd.as_raw_fd();
        self.parent = Some((parent.to_vec(), fd));
        Ok(raw_fd)
    }

    /// `mkdir -p` beneath the root: each component is created in its
    /// parent's fd, then the prefix so far is resolved from the root again.
    fn make_parents(&self, parent: &[u8]) -> io::Result<OwnedFd> {
        let mut current: Option<OwnedFd> = None;
        let mut end = 0;
        for component in parent.split(|&byte| byte == b'/') {
            end += component.len();
            let dirfd = current
                .as_ref()
                .map_or(self.beneath.root_fd(), AsRawFd::as_raw_fd);
            match mkdirat(
                Some(dirfd),
                component,
                Mode::from_bits_truncate(DEFAULT_DIR_MODE),
            ) {
                Ok(()) => {
                    if let Some(owner) = self.owner {
                        chown_at(Some(dirfd), component, owner)?;
                    }
                }
                Err(Errno::EEXIST) => {}
                Err(errno) => return Err(errno.into()),
            }
            current = Some(self.beneath.open(
                &parent[..end],
                OFlag::O_PATH | OFlag::O_DIRECTORY,
                Mode::empty(),
            )?);
            end += 1;
        }
        current.ok_or_else(|| Errno::EINVAL.into())
    }

    /// Gives the entry `name` in `dirfd` (`rel` in messages) the upload's
    /// owner, if it has one.
    fn own(&self, dirfd: RawFd, name: &[u8], rel: &[u8]) -> Result<(), AgentError> {
        match self.owner {
            Some(owner) => chown_at(Some(dirfd), name, owner)
                .map_err(|err| fs_error("set the owner of", &self.path_of(rel), err)),
            None => Ok(()),
        }
    }

    /// Unlinks the non-directory at `name` so an entry can take its place.
    fn clear(&mut self, dirfd: RawFd, name: &[u8], rel: &[u8]) -> Result<(), AgentError> {
        let error = |errno: Errno| fs_error("extract", &self.path_of(rel), errno.into());
        let stat = fstatat(Some(dirfd), name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(error)?;
        if SFlag::from_bits_truncate(stat.st_mode & libc::S_IFMT) == SFlag::S_IFDIR {
            return Err(AgentError::FileConflict {
                op: "extract",
                path: self.path_of(rel).to_string_lossy().into_owned(),
                reason: "a directory is in the way",
            });
        }
        unlinkat(Some(dirfd), name, UnlinkatFlags::NoRemoveDir).map_err(error)?;
        self.stale = true;
        Ok(())
    }

    /// Runs `create` in the entry's parent; if the name is taken by a file
    /// or symlink, unlinks it and tries once more.
    fn create_at(
        &mut self,
        raw: &[u8],
        rel: &[u8],
        create: impl Fn(RawFd, &[u8]) -> nix::Result<()>,
    ) -> Result<RawFd, AgentError> {
        let (parent, name) = split_parent(rel);
        if name.is_empty() {
            return Err(self.hostile(raw, "names the target directory itself"));
        }
        let dirfd = self.parent_fd(raw, parent)?;
        match create(dirfd, name) {
            Err(Errno::EEXIST) => {
                self.clear(dirfd, name, rel)?;
                create(dirfd, name)
            }
            other => other,
        }
        .map_err(|errno| fs_error("extract", &self.path_of(rel), errno.into()))?;
        Ok(dirfd)
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
        rel: &[u8],
    ) -> Result<(), AgentError> {
        // Everything but setuid/setgid: an archive should not mint them.
        let mode = mode_of(entry.header(), 0o1777);
        let mtime = mtime_of(entry.header());
        let fd = std::cell::Cell::new(-1);
        self.create_at(raw, rel, |dirfd, name| {
            let flags = OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_EXCL
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC;
            fd.set(openat(
                Some(dirfd),
                name,
                flags,
                Mode::from_bits_truncate(mode),
            )?);
            Ok(())
        })?;
        let mut file = File::from(owned(fd.get()));
        loop {
            let n = match entry.read(&mut self.buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(self.tar_error(&err)),
            };
            file.write_all(&self.buffer[..n])
                .map_err(|err| fs_error("extract", &self.path_of(rel), err))?;
            self.summary.bytes += n as u64;
        }
        if let Some(owner) = self.owner {
            fchown(
                file.as_raw_fd(),
                Some(Uid::from_raw(owner.uid)),
                Some(Gid::from_raw(owner.gid)),
            )
            .map_err(|errno| fs_error("set the owner of", &self.path_of(rel), errno.into()))?;
        }
        // The umask trimmed the mode at creation; set it exactly (after the
        // chown, which clears set-id bits).
        fchmod(file.as_raw_fd(), Mode::from_bits_truncate(mode))
            .map_err(|errno| fs_error("extract", &self.path_of(rel), errno.into()))?;
        set_mtime(file.as_raw_fd(), mtime);
        self.summary.entries += 1;
        Ok(())
    }

    fn directory<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
        rel: &[u8],
    ) -> Result<(), AgentError> {
        // DIR itself (`./`): its mode and mtime are the caller's.
        if rel.is_empty() {
            return Ok(());
        }
        let mode = mode_of(entry.header(), 0o3777);
        let mtime = mtime_of(entry.header());
        let (parent, name) = split_parent(rel);
        let dirfd = self.parent_fd(raw, parent)?;
        // Owner-writable until the end, so that its entries can be added
        // whatever mode it is meant to have.
        let initial = Mode::from_bits_truncate(DEFAULT_DIR_MODE | 0o700);
        match mkdirat(Some(dirfd), name, initial) {
            Ok(()) => self.own(dirfd, name, rel)?,
            Err(Errno::EEXIST) => {
                let stat = fstatat(Some(dirfd), name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|errno| fs_error("extract", &self.path_of(rel), errno.into()))?;
                if SFlag::from_bits_truncate(stat.st_mode & libc::S_IFMT) != SFlag::S_IFDIR {
                    self.clear(dirfd, name, rel)?;
                    mkdirat(Some(dirfd), name, initial)
                        .map_err(|errno| fs_error("extract", &self.path_of(rel), errno.into()))?;
                    self.own(dirfd, name, rel)?;
                }
            }
            Err(errno) => return Err(fs_error("extract", &self.path_of(rel), errno.into())),
        }
        if self.dirs.len() < MAX_DIR_FIXUPS {
            self.dirs.push((rel.to_vec(), mode, mtime));
        }
        self.summary.entries += 1;
        Ok(())
    }

    fn symlink<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
        rel: &[u8],
    ) -> Result<(), AgentError> {
        let target = match entry.link_name_bytes() {
            Some(target) if !target.is_empty() => target.into_owned(),
            _ => return Err(self.hostile(raw, "is a symlink without a target")),
        };
        let dirfd = self.create_at(raw, rel, |dirfd, name| {
            symlinkat(target.as_slice(), Some(dirfd), name)
        })?;
        self.own(dirfd, split_parent(rel).1, rel)?;
        self.summary.entries += 1;
        Ok(())
    }

    fn hardlink<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
        rel: &[u8],
    ) -> Result<(), AgentError> {
        let target_raw = match entry.link_name_bytes() {
            Some(target) if !target.is_empty() => target.into_owned(),
            _ => return Err(self.hostile(raw, "is a hardlink without a target")),
        };
        let target = match normalize(&target_raw) {
            Some(target) if !target.is_empty() => target,
            _ => return Err(self.hostile(raw, "links to a target outside the archive")),
        };
        let (target_parent, target_name) = split_parent(&target);
        // Resolved beneath the root like any parent; the target itself is
        // linked, not followed (linkat without AT_SYMLINK_FOLLOW).
        let target_dir = if target_parent.is_empty() {
            None
        } else {
            Some(
                self.beneath
                    .open(
                        target_parent,
                        OFlag::O_PATH | OFlag::O_DIRECTORY,
                        Mode::empty(),
                    )
                    .map_err(|err| match err.raw_os_error() {
                        Some(libc::ENOENT | libc::ENOTDIR) => {
                            self.hostile(raw, "links to a missing target")
                        }
                        _ => self.resolve_error(raw, target_parent, err),
                    })?,
            )
        };
        let target_fd = target_dir
            .as_ref()
            .map_or(self.beneath.root_fd(), AsRawFd::as_raw_fd);
        let linked = self.create_at(raw, rel, |dirfd, name| {
            linkat(
                Some(target_fd),
                target_name,
                Some(dirfd),
                name,
                AtFlags::empty(),
            )
        });
        match linked {
            Err(AgentError::File { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
                Err(self.hostile(raw, "links to a missing target"))
            }
            Err(err) => Err(err),
            Ok(_) => {
                self.summary.entries += 1;
                Ok(())
            }
        }
    }

    /// Gives directories their archived mode and mtime, children first
    /// (adding entries had changed their mtimes; a read-only mode would have
    /// stopped us adding them). Best effort.
    fn restore_dirs(&mut self) {
        self.parent = None;
        for (rel, mode, mtime) in self.dirs.drain(..).rev() {
            let Ok(fd) = self.beneath.open(
                &rel,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
                Mode::empty(),
            ) else {
                continue;
            };
            let _ = fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(mode));
            set_mtime(fd.as_raw_fd(), mtime);
        }
    }
}

/// `GET /archive?path=P`: a tar of the file or tree at P, streamed.
pub(crate) async fn download(
    QueryParams(query): QueryParams<FileQuery>,
) -> Result<Response, AgentError> {
    let path = checked_path(&query.path)?;
    // Checked before answering 200: afterwards errors can only abort.
    tokio::fs::symlink_metadata(&path)
        .await
        .map_err(|err| fs_error("archive", &path, lookup_error(err)))?;
    let name = path
        .file_name()
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    let (sender, receiver) = mpsc::channel(DOWNLOAD_DEPTH);
    tokio::task::spawn_blocking(move || write_archive(&path, &name, ChannelWriter::new(sender)));
    let chunks = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    });
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-tar"),
        )],
        Body::from_stream(chunks),
    )
        .into_response())
}

/// Writes the tar of `path` (entries named from `name`) to `writer`; on
/// error the writer passes the error on, which aborts the response body.
pub fn write_archive(path: &Path, name: &Path, writer: ChannelWriter) {
    let mut builder = tar::Builder::new(writer);
    let result = append_tree(&mut builder, path, name)
        .and_then(|()| builder.finish())
        .and_then(|()| builder.get_mut().flush());
    if let Err(err) = result {
        tracing::debug!(path = %path.display(), %err, "archive download failed");
        builder.get_mut().fail(err);
    }
}

fn header_for(meta: &std::fs::Metadata) -> Header {
    let mut header = Header::new_gnu();
    header.set_metadata_in_mode(meta, HeaderMode::Complete);
    header.set_mode(meta.mode() & 0o7777);
    header
}

/// Pre-order walk, children sorted by name, nothing followed, within the
/// filesystem of `root`: a directory another filesystem is mounted on is
/// archived empty, as `tar --one-file-system` does. So `/` gives the
/// sandbox's own files, not `/proc`, `/sys` or `/dev`, whose kernel files
/// cannot all be read (a read error there aborted the whole download).
fn append_tree<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    name: &Path,
) -> io::Result<()> {
    let mut pending = vec![(root.to_path_buf(), name.to_path_buf())];
    let mut root_device = None;
    while let Some((path, name)) = pending.pop() {
        let is_root = pending.is_empty() && path == root;
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            // Removed since its directory was read: nothing to archive.
            Err(err) if err.kind() == io::ErrorKind::NotFound && !is_root => continue,
            Err(err) => return Err(err),
        };
        let file_type = meta.file_type();
        let root_device = *root_device.get_or_insert(meta.dev());
        if file_type.is_dir() {
            let mut header = header_for(&meta);
            builder.append_data(&mut header, &name, io::empty())?;
            if meta.dev() != root_device {
                continue;
            }
            let mut children = Vec::new();
            for child in std::fs::read_dir(&path)? {
                children.push(child?.file_name());
            }
            children.sort();
            for child in children.into_iter().rev() {
                pending.push((path.join(&child), name.join(&child)));
            }
        } else if file_type.is_file() {
            append_file(builder, &path, &name, is_root)?;
        } else if file_type.is_symlink() {
            let target = std::fs::read_link(&path)?;
            let mut header = header_for(&meta);
            builder.append_link(&mut header, &name, &target)?;
        } else if file_type.is_socket() {
            tracing::debug!(path = %path.display(), "sockets cannot be archived, skipped");
        } else {
            let mut header = header_for(&meta);
            if file_type.is_char_device() || file_type.is_block_device() {
                let device = meta.rdev();
                header.set_device_major(libc::major(device))?;
                header.set_device_minor(libc::minor(device))?;
            }
            builder.append_data(&mut header, &name, io::empty())?;
        }
    }
    Ok(())
}

fn append_file<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &Path,
    name: &Path,
    is_root: bool,
) -> io::Result<()> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound && !is_root => return Ok(()),
        Err(err) => return Err(err),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        // Swapped for something else since the walk saw it.
        return Ok(());
    }
    let mut header = header_for(&meta);
    let size = meta.len();
    // Exactly `size` bytes, zero-padded if the file shrank meanwhile: the
    // header is already written and the framing must hold.
    let data = (&file).take(size).chain(io::repeat(0)).take(size);
    builder.append_data(&mut header, name, data)
}

/// The blocking end of the download: buffers the tar into [`CHUNK`]-sized
/// pieces for the response body. Once the client is gone or
/// [`ChannelWriter::fail`] was called, writes fail with `BrokenPipe`.
#[derive(Debug)]
pub struct ChannelWriter {
    sender: mpsc::Sender<io::Result<Bytes>>,
    buffer: BytesMut,
    closed: bool,
}

impl ChannelWriter {
    pub fn new(sender: mpsc::Sender<io::Result<Bytes>>) -> Self {
        Self {
            sender,
            buffer: BytesMut::with_capacity(CHUNK),
            closed: false,
        }
    }

    fn send(&mut self, item: io::Result<Bytes>) -> io::Result<()> {
        if self.closed || self.sender.blocking_send(item).is_err() {
            self.closed = true;
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the archive's reader went away",
            ));
        }
        Ok(())
    }

    fn send_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, BytesMut::with_capacity(CHUNK));
        self.send(Ok(chunk.freeze()))
    }

    /// Ends the stream with `err`: the response body is aborted.
    pub fn fail(&mut self, err: io::Error) {
        let _ = self.send(Err(err));
        self.closed = true;
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.closed {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the archive's reader went away",
            ));
        }
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK {
            self.send_buffer()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffer()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_and_dotdot_refused() {
        assert_eq!(normalize(b"/abs/x").as_deref(), Some(&b"abs/x"[..]));
        assert_eq!(normalize(b"./a//b/./c/").as_deref(), Some(&b"a/b/c"[..]));
        assert_eq!(normalize(b"./").as_deref(), Some(&b""[..]));
        assert_eq!(normalize(b"../x"), None);
        assert_eq!(normalize(b"a/../../x"), None);
        assert_eq!(normalize(b"a/.."), None);
        assert_eq!(normalize(b"a/..b").as_deref(), Some(&b"a/..b"[..]));
        assert_eq!(split_parent(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split_parent(b"c"), (&b""[..], &b"c"[..]));
    }

    /// The walking fallback must refuse the same escapes as openat2.
    #[test]
    fn walking_resolver_refuses_symlink_write_through() {
        let outer = tempfile::tempdir().expect("tempdir");
        let target = outer.path().join("target");
        let victim = outer.path().join("victim");
        std::fs::create_dir(&victim).expect("mkdir");
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        tar.append_link(&mut header, "evil", &victim)
            .expect("symlink entry");
        let mut header = Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o644);
        tar.append_data(&mut header, "evil/pwned", &b"pwned"[..])
            .expect("file entry");
        let bytes = tar.into_inner().expect("tar");
        let failure = OnceLock::new();
        let result = extract(&target, &bytes[..], &failure, Resolver::Walk, None);
        assert!(result.is_err(), "{result:?}");
        assert!(!victim.join("pwned").exists());
        assert!(target.join("evil").symlink_metadata().is_ok());
    }

    /// Every entry the upload creates belongs to the owner; what existed
    /// keeps its owner; set-id bits of files are still stripped.
    #[test]
    fn an_owner_owns_what_the_upload_creates() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: chown to another user needs root");
            return;
        }
        let owner = Owner {
            uid: 4321,
            gid: 8765,
        };
        let outer = tempfile::tempdir().expect("tempdir");
        let target = outer.path().join("new/dir");
        let mut tar = tar::Builder::new(Vec::new());
        let mut dir = Header::new_gnu();
        dir.set_entry_type(EntryType::Directory);
        dir.set_size(0);
        dir.set_mode(0o2755);
        tar.append_data(&mut dir.clone(), "d", io::empty())
            .expect("dir entry");
        tar.append_data(&mut dir, "kept", io::empty())
            .expect("dir entry");
        let mut file = Header::new_gnu();
        file.set_size(2);
        file.set_mode(0o6755);
        file.set_uid(1);
        file.set_gid(1);
        tar.append_data(&mut file, "d/f", &b"hi"[..])
            .expect("file entry");
        tar.append_data(&mut file.clone(), "implicit/parent/f", &b"hi"[..])
            .expect("file entry");
        let mut link = Header::new_gnu();
        link.set_entry_type(EntryType::Symlink);
        link.set_size(0);
        link.set_mode(0o777);
        tar.append_link(&mut link, "d/l", "/nonexistent")
            .expect("symlink entry");
        let mut hard = Header::new_gnu();
        hard.set_entry_type(EntryType::Link);
        hard.set_size(0);
        tar.append_link(&mut hard, "d/h", "d/f")
            .expect("hardlink entry");
        let bytes = tar.into_inner().expect("tar");
        // Already there: an entry naming it does not take it over.
        std::fs::create_dir_all(target.join("kept")).expect("mkdir");
        let summary = extract(
            &target,
            &bytes[..],
            &OnceLock::new(),
            Resolver::Auto,
            Some(owner),
        )
        .expect("extract");
        assert_eq!(summary.entries, 6);
        let ids = |rel: &str| {
            let meta = std::fs::symlink_metadata(outer.path().join(rel)).expect(rel);
            (meta.uid(), meta.gid())
        };
        for rel in [
            "new/dir/d",
            "new/dir/d/f",
            "new/dir/d/l",
            "new/dir/d/h",
            "new/dir/implicit",
            "new/dir/implicit/parent",
            "new/dir/implicit/parent/f",
        ] {
            assert_eq!(ids(rel), (4321, 8765), "{rel}");
        }
        // Made before the upload: not its to take.
        assert_eq!(ids("new"), (0, 0));
        assert_eq!(ids("new/dir"), (0, 0));
        assert_eq!(ids("new/dir/kept"), (0, 0));
        let mode = |rel: &str| {
            std::fs::symlink_metadata(outer.path().join(rel))
                .expect(rel)
                .mode()
                & 0o7777
        };
        assert_eq!(mode("new/dir/d/f"), 0o755);
        assert_eq!(mode("new/dir/d"), 0o2755);

        // A target the upload makes, parents included, is the owner's.
        let fresh = outer.path().join("fresh/a/b");
        extract(
            &fresh,
            &b""[..],
            &OnceLock::new(),
            Resolver::Auto,
            Some(owner),
        )
        .expect("empty archive");
        assert_eq!(ids("fresh"), (4321, 8765));
        assert_eq!(ids("fresh/a/b"), (4321, 8765));
        // Without an owner, the agent's user.
        let plain = outer.path().join("plain");
        extract(&plain, &bytes[..], &OnceLock::new(), Resolver::Auto, None).expect("extract");
        assert_eq!(ids("plain/d/f"), (0, 0));
    }

    /// Property: whatever a tar holds (names with `..`, absolute names,
    /// symlinks and hard links pointing out, entries through earlier
    /// symlinks), extraction writes only beneath its target. Bounded to a
    /// fixed number of cases so that it costs the same in every CI run.
    mod confinement {
        use super::*;
        use proptest::prelude::*;

        /// Name components an attacker would use, and plain ones.
        fn component() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec!["..", ".", "", "a", "b", "evil", "out"])
        }

        fn entry_name() -> impl Strategy<Value = String> {
            (any::<bool>(), prop::collection::vec(component(), 1..5)).prop_map(
                |(absolute, parts)| {
                    let joined = parts.join("/");
                    if absolute {
                        format!("/{joined}")
                    } else {
                        joined
                    }
                },
            )
        }

        #[derive(Debug, Clone)]
        enum Kind {
            File,
            Dir,
            /// A symlink to the victim directory outside, or to a name.
            SymlinkOut,
            SymlinkTo(String),
            HardlinkTo(String),
            /// A hard link to the secret file outside, by absolute path.
            HardlinkOut,
        }

        fn kind() -> impl Strategy<Value = Kind> {
            prop_oneof![
                Just(Kind::File),
                Just(Kind::Dir),
                Just(Kind::SymlinkOut),
                entry_name().prop_map(Kind::SymlinkTo),
                entry_name().prop_map(Kind::HardlinkTo),
                Just(Kind::HardlinkOut),
            ]
        }

        /// A raw header: the name bytes go in as they are, without the
        /// checks tar::Builder's path setters would make.
        fn header(name: &str, kind: &Kind, victim: &Path, secret: &Path) -> Header {
            let mut header = Header::new_gnu();
            let (entry_type, size) = match kind {
                Kind::File => (EntryType::Regular, 5),
                Kind::Dir => (EntryType::Directory, 0),
                Kind::SymlinkOut | Kind::SymlinkTo(_) => (EntryType::Symlink, 0),
                Kind::HardlinkTo(_) | Kind::HardlinkOut => (EntryType::Link, 0),
            };
            header.set_entry_type(entry_type);
            header.set_size(size);
            header.set_mode(0o755);
            let link = match kind {
                Kind::SymlinkOut => Some(victim.display().to_string()),
                Kind::SymlinkTo(target) | Kind::HardlinkTo(target) => Some(target.clone()),
                Kind::HardlinkOut => Some(secret.display().to_string()),
                _ => None,
            };
            let gnu = header.as_gnu_mut().expect("gnu header");
            let bytes = name.as_bytes();
            gnu.name[..bytes.len().min(99)].copy_from_slice(&bytes[..bytes.len().min(99)]);
            if let Some(link) = link {
                let bytes = link.as_bytes();
                gnu.linkname[..bytes.len().min(99)].copy_from_slice(&bytes[..bytes.len().min(99)]);
            }
            header.set_cksum();
            header
        }

        fn listing(dir: &Path) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|entry| entry.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            names
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: 96,
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            #[test]
            fn extraction_never_writes_outside_its_target(
                entries in prop::collection::vec((entry_name(), kind()), 1..8),
                walk in any::<bool>(),
            ) {
                let outer = tempfile::tempdir().expect("tempdir");
                let target = outer.path().join("target");
                let victim = outer.path().join("victim");
                std::fs::create_dir(&victim).expect("mkdir");
                let secret = outer.path().join("secret");
                std::fs::write(&secret, b"secret").expect("write");
                let mut tar = tar::Builder::new(Vec::new());
                for (name, kind) in &entries {
                    let header = header(name, kind, &victim, &secret);
                    let data: &[u8] = if matches!(kind, Kind::File) { b"pwned" } else { b"" };
                    tar.append(&header, data).expect("append");
                }
                let bytes = tar.into_inner().expect("tar");
                let failure = OnceLock::new();
                let resolver = if walk { Resolver::Walk } else { Resolver::Auto };
                // Refusing the archive is fine; escaping is not.
                let _ = extract(&target, &bytes[..], &failure, resolver, None);
                prop_assert_eq!(listing(outer.path()), vec!["secret", "target", "victim"]);
                prop_assert!(listing(&victim).is_empty(), "wrote into the victim dir");
                let secret_meta = std::fs::metadata(&secret).expect("secret");
                prop_assert_eq!(secret_meta.nlink(), 1, "linked to a file outside");
                prop_assert_eq!(std::fs::read(&secret).expect("read"), b"secret".to_vec());
            }

            #[test]
            fn normalised_names_are_relative_and_free_of_dotdot(
                raw in prop::collection::vec(component(), 0..8),
                absolute in any::<bool>(),
            ) {
                let name = format!("{}{}", if absolute { "/" } else { "" }, raw.join("/"));
                if let Some(rel) = normalize(name.as_bytes()) {
                    prop_assert!(!rel.starts_with(b"/"));
                    let clean = rel
                        .split(|&b| b == b'/')
                        .all(|part| !matches!(part, b".." | b"." | b""));
                    prop_assert!(rel.is_empty() || clean, "{:?}", rel);
                } else {
                    prop_assert!(raw.contains(&".."));
                }
            }
        }
    }
}

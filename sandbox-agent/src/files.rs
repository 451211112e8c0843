//! `/files…` routes: read, write (atomic), remove, stat, list, mkdir -p,
//! move; [`router`] also mounts the `/archive` routes of [`crate::archive`].
//!
//! Paths are absolute paths inside the sandbox, checked with
//! [`sbx_api::validate_path`]; `..` is allowed because the sandbox, not the
//! path, is the boundary. Contents travel as raw bytes and are streamed both
//! ways, so a file of any size costs a few 64 KiB buffers:
//! - `GET /files` sends a `ReaderStream` over the open file, limited to the
//!   size `fstat` reported when it was opened, which is also the
//!   `Content-Length` (a file growing meanwhile cannot break the framing);
//! - `PUT /files` writes the body to a temporary file created with
//!   `O_EXCL` in the target's directory, then `rename(2)`s it over the
//!   target, so readers see the old or the new contents, never a mix, and a
//!   failed upload leaves the target untouched (the temporary file is removed
//!   on error and when the request is dropped). There is no `fsync`: the
//!   promise is atomicity towards other readers in the sandbox, not
//!   durability across a host crash, and a sandbox does not outlive one.
//!
//! A symlink at a `PUT` target is replaced by the new file (as `mv` would),
//! not written through. `DELETE` never follows symlinks either.

use crate::archive::create_target;
use crate::error::AgentError;
use crate::fs_safe::{file_info, lookup_error, stat_blocking};
use crate::server::JsonBody;
use crate::user::{AccountNames, Owner};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Query};
use axum::handler::Handler;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use sbx_api::{
    parse_mode, validate_path, FileInfo, FileList, FileQuery, MkdirRequest, MoveRequest,
    MAX_LIST_DEPTH,
};
use serde::de::DeserializeOwned;
use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

/// Read and write buffer size of file streams.
pub(crate) const CHUNK: usize = 64 * 1024;

/// Mode of files written without `mode`.
const DEFAULT_FILE_MODE: u32 = 0o644;
/// Mode of directories created without `mode`, and of missing parents.
pub(crate) const DEFAULT_DIR_MODE: u32 = 0o755;

/// The `/files` and `/archive` routes. Stateless, so any state fits.
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route(
            "/files",
            get(read_file)
                // Uploads are bounded by the file system, not by the body
                // limit server.rs sets for JSON requests.
                .put(write_file.layer(DefaultBodyLimit::disable()))
                .delete(remove),
        )
        .route("/files/stat", get(stat))
        .route("/files/list", get(list))
        .route("/files/mkdir", post(mkdir))
        .route("/files/move", post(move_path))
        .route(
            "/archive",
            get(crate::archive::download)
                .put(crate::archive::upload.layer(DefaultBodyLimit::disable())),
        )
}

/// A query string whose every failure is an [`AgentError`] (400), unlike
/// axum's `Query`, which answers in plain text.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AgentError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Query::try_from_uri(&parts.uri)
            .map(|Query(value)| QueryParams(value))
            .map_err(|rejection| {
                let reason = std::error::Error::source(&rejection)
                    .map_or_else(|| rejection.body_text(), ToString::to_string);
                AgentError::InvalidRequest(format!("invalid query string: {reason}"))
            })
    }
}

/// Validates a request path.
pub(crate) fn checked_path(path: &str) -> Result<PathBuf, AgentError> {
    validate_path(path).map_err(AgentError::InvalidRequest)?;
    Ok(PathBuf::from(path))
}

pub(crate) fn fs_error(op: &'static str, path: &Path, source: io::Error) -> AgentError {
    AgentError::File {
        op,
        path: path.to_string_lossy().into_owned(),
        source,
    }
}

/// For calls that only look: `ENOTDIR` there means "not found".
fn lookup<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> AgentError + 'a {
    move |err| fs_error(op, path, lookup_error(err))
}

fn conflict(op: &'static str, path: &Path, reason: &'static str) -> AgentError {
    AgentError::FileConflict {
        op,
        path: path.to_string_lossy().into_owned(),
        reason,
    }
}

fn mode_or(mode: Option<&str>, default: u32) -> Result<u32, AgentError> {
    mode.map_or(Ok(default), parse_mode)
        .map_err(AgentError::InvalidRequest)
}

/// Runs blocking file-system work off the async workers.
pub(crate) async fn blocking<T, F>(op: &'static str, path: &Path, work: F) -> Result<T, AgentError>
where
    F: FnOnce() -> Result<T, AgentError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| fs_error(op, path, io::Error::other(err.to_string())))?
}

/// `GET /files?path=P`: the bytes of a regular file, streamed.
async fn read_file(QueryParams(query): QueryParams<FileQuery>) -> Result<Response, AgentError> {
    let path = checked_path(&query.path)?;
    // O_NONBLOCK: opening a FIFO must not wait for a writer; it is ignored
    // for regular files.
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .await
        .map_err(lookup("read", &path))?;
    let meta = file.metadata().await.map_err(lookup("read", &path))?;
    if meta.is_dir() {
        return Err(conflict("read", &path, "it is a directory"));
    }
    if !meta.is_file() {
        return Err(conflict("read", &path, "it is not a regular file"));
    }
    let size = meta.len();
    let octet_stream = HeaderValue::from_static("application/octet-stream");
    // Size 0 is what /proc and /sys files report whatever they hold: send
    // those chunked, to their end, rather than as empty.
    if size == 0 {
        let body = Body::from_stream(ReaderStream::with_capacity(file, CHUNK));
        return Ok(([(header::CONTENT_TYPE, octet_stream)], body).into_response());
    }
    let body = Body::from_stream(ReaderStream::with_capacity(file.take(size), CHUNK));
    Ok((
        [
            (header::CONTENT_TYPE, octet_stream),
            (header::CONTENT_LENGTH, HeaderValue::from(size)),
        ],
        body,
    )
        .into_response())
}

/// Distinguishes temporary files of concurrent uploads.
static UPLOADS: AtomicU64 = AtomicU64::new(0);

/// A temporary file that is removed unless [`TempFile::keep`] was called,
/// including when the request future is dropped mid-upload.
#[derive(Debug)]
struct TempFile {
    path: Option<PathBuf>,
}

impl TempFile {
    fn keep(&mut self) {
        self.path = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `.NAME.sbx-PID-N.tmp` next to `target`, within NAME_MAX.
fn temporary_name(target: &Path) -> PathBuf {
    let name = target.file_name().map_or(&[][..], OsStrExt::as_bytes);
    let mut temp = b".".to_vec();
    temp.extend_from_slice(&name[..name.len().min(200)]);
    let n = UPLOADS.fetch_add(1, Ordering::Relaxed);
    temp.extend_from_slice(format!(".sbx-{}-{n}.tmp", std::process::id()).as_bytes());
    target.with_file_name(OsString::from_vec(temp))
}

/// `mkdir -p` of `path`'s parent; the directories it makes belong to
/// `owner` when one is named.
async fn create_parents(
    op: &'static str,
    path: &Path,
    owner: Option<Owner>,
) -> Result<(), AgentError> {
    let Some(parent) = path.parent().map(Path::to_path_buf) else {
        return Ok(());
    };
    blocking(op, &parent.clone(), move || {
        create_target(&parent, DEFAULT_DIR_MODE, owner).map_err(|err| fs_error(op, &parent, err))
    })
    .await
}

/// `PUT /files?path=P&mode=0644[&owner=USER[:GROUP]]`: the body becomes
/// the file, atomically; with `owner`, the file and the parents the write
/// makes belong to them.
async fn write_file(
    QueryParams(query): QueryParams<FileQuery>,
    body: Body,
) -> Result<Json<FileInfo>, AgentError> {
    let path = checked_path(&query.path)?;
    let mode = mode_or(query.mode.as_deref(), DEFAULT_FILE_MODE)?;
    let owner = query.owner.as_deref().map(Owner::resolve).transpose()?;
    if path.file_name().is_none() {
        return Err(conflict("write", &path, "it is a directory"));
    }
    match tokio::fs::symlink_metadata(&path).await {
        Ok(meta) if meta.is_dir() => return Err(conflict("write", &path, "it is a directory")),
        _ => {}
    }
    create_parents("write", &path, owner).await?;

    let temp_path = temporary_name(&path);
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temp_path)
        .await
        .map_err(|err| fs_error("write", &path, err))?;
    let mut temp = TempFile {
        path: Some(temp_path.clone()),
    };
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|err| {
            AgentError::InvalidRequest(format!(
                "cannot read the body for {}: {err}",
                path.display()
            ))
        })?;
        file.write_all(&chunk)
            .await
            .map_err(|err| fs_error("write", &path, err))?;
    }
    // tokio's File finishes its last write in the background: flush waits
    // for it (and reports its error). The explicit chmod defeats the umask.
    file.flush()
        .await
        .map_err(|err| fs_error("write", &path, err))?;
    if let Some(owner) = owner {
        // By descriptor: the temporary file this request created, whatever
        // its name points at by now.
        nix::unistd::fchown(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            Some(nix::unistd::Uid::from_raw(owner.uid)),
            Some(nix::unistd::Gid::from_raw(owner.gid)),
        )
        .map_err(|err| fs_error("write", &path, io::Error::from(err)))?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .await
        .map_err(|err| fs_error("write", &path, err))?;
    drop(file);
    tokio::fs::rename(&temp_path, &path)
        .await
        .map_err(|err| fs_error("write", &path, err))?;
    temp.keep();
    let info = blocking("write", &path.clone(), move || {
        named_stat(&path).map_err(|err| fs_error("write", &path, err))
    })
    .await?;
    Ok(Json(info))
}

/// `DELETE /files?path=P[&recursive=true]`: 204. Symlinks are removed, not
/// followed; a directory needs `recursive=true`, even an empty one.
async fn remove(QueryParams(query): QueryParams<FileQuery>) -> Result<StatusCode, AgentError> {
    let path = checked_path(&query.path)?;
    if path.file_name().is_none() {
        return Err(AgentError::InvalidRequest(format!(
            "refusing to remove {}: it names / or ends in ..",
            path.display()
        )));
    }
    let meta = tokio::fs::symlink_metadata(&path)
        .await
        .map_err(lookup("remove", &path))?;
    if meta.is_dir() {
        if !query.recursive {
            return Err(conflict(
                "remove",
                &path,
                "it is a directory (pass recursive=true)",
            ));
        }
        // remove_dir_all does not follow symlinks, and is safe against
        // their being swapped in meanwhile (CVE-2022-21658).
        blocking("remove", &path.clone(), move || {
            std::fs::remove_dir_all(&path).map_err(|err| fs_error("remove", &path, err))
        })
        .await?;
    } else {
        tokio::fs::remove_file(&path)
            .await
            .map_err(lookup("remove", &path))?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /files/stat?path=P`: `lstat`, so a symlink is reported as one.
async fn stat(QueryParams(query): QueryParams<FileQuery>) -> Result<Json<FileInfo>, AgentError> {
    let path = checked_path(&query.path)?;
    blocking("stat", &path.clone(), move || {
        named_stat(&path).map_err(lookup("stat", &path))
    })
    .await
    .map(Json)
}

/// `GET /files/list?path=P&depth=N`: entries under directory P, N levels
/// deep (default 1), sorted by path. P itself may be a symlink to a
/// directory (as for `ls`); symlinks below it are listed, not descended.
async fn list(QueryParams(query): QueryParams<FileQuery>) -> Result<Json<FileList>, AgentError> {
    let path = checked_path(&query.path)?;
    let depth = query.depth.unwrap_or(1);
    if !(1..=MAX_LIST_DEPTH).contains(&depth) {
        return Err(AgentError::InvalidRequest(format!(
            "depth {depth} is not between 1 and {MAX_LIST_DEPTH}"
        )));
    }
    let entries = blocking("list", &path.clone(), move || list_blocking(&path, depth)).await?;
    Ok(Json(FileList { entries }))
}

/// `lstat` of `path`, its owner and group named.
fn named_stat(path: &Path) -> io::Result<FileInfo> {
    stat_blocking(path).map(|info| AccountNames::load().name(info))
}

fn list_blocking(root: &Path, depth: u32) -> Result<Vec<FileInfo>, AgentError> {
    let names = AccountNames::load();
    let meta = std::fs::metadata(root).map_err(lookup("list", root))?;
    if !meta.is_dir() {
        return Err(conflict("list", root, "it is not a directory"));
    }
    let mut entries = Vec::new();
    let mut pending = vec![(root.to_path_buf(), 1)];
    while let Some((dir, level)) = pending.pop() {
        let reader = match std::fs::read_dir(&dir) {
            Ok(reader) => reader,
            Err(err) if dir == root => return Err(fs_error("list", root, err)),
            // A subdirectory that vanished or cannot be read: list the rest.
            Err(_) => continue,
        };
        for entry in reader.flatten() {
            // DirEntry::metadata does not follow symlinks.
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let path = entry.path();
            let target = if meta.file_type().is_symlink() {
                std::fs::read_link(&path).ok()
            } else {
                None
            };
            entries.push(names.name(file_info(&path, &meta, target.as_deref())));
            if meta.is_dir() && level < depth {
                pending.push((path, level + 1));
            }
        }
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

/// `POST /files/mkdir`: `mkdir -p`; an existing directory is fine, the
/// mode applies to the last component when it is created, and `owner`
/// (when named) gets every directory the call makes.
async fn mkdir(JsonBody(request): JsonBody<MkdirRequest>) -> Result<Json<FileInfo>, AgentError> {
    let path = checked_path(&request.path)?;
    let mode = mode_or(request.mode.as_deref(), DEFAULT_DIR_MODE)?;
    let owner = request.owner.as_deref().map(Owner::resolve).transpose()?;
    blocking("create directory", &path.clone(), move || {
        let error = |err| fs_error("create directory", &path, err);
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(conflict(
                    "create directory",
                    &path,
                    "it exists and is not a directory",
                ))
            }
            Err(_) => {
                create_target(&path, mode, owner).map_err(error)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .map_err(error)?;
            }
        }
        named_stat(&path).map_err(error)
    })
    .await
    .map(Json)
}

/// `POST /files/move`: `rename(2)`, creating the parents of `to`. Across
/// file systems (`EXDEV`) a file or symlink is copied then removed; a
/// directory is refused with 409 rather than copied tree-wide.
async fn move_path(JsonBody(request): JsonBody<MoveRequest>) -> Result<StatusCode, AgentError> {
    let from = checked_path(&request.from)?;
    let to = checked_path(&request.to)?;
    if from.file_name().is_none() || to.file_name().is_none() {
        return Err(AgentError::InvalidRequest(format!(
            "cannot move {} to {}: a path names / or ends in ..",
            from.display(),
            to.display()
        )));
    }
    let meta = tokio::fs::symlink_metadata(&from)
        .await
        .map_err(lookup("move", &from))?;
    create_parents("move", &to, None).await?;
    let what = PathBuf::from(format!("{} to {}", from.display(), to.display()));
    match tokio::fs::rename(&from, &to).await {
        Ok(()) => {}
        Err(err) if err.raw_os_error() == Some(libc::EXDEV) => {
            if meta.is_dir() {
                return Err(conflict(
                    "move",
                    &what,
                    "directories are not moved across file systems",
                ));
            }
            blocking("move", &what.clone(), move || {
                copy_across(&from, &to, &meta).map_err(|err| fs_error("move", &what, err))
            })
            .await?;
        }
        Err(err) => return Err(fs_error("move", &what, err)),
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The `EXDEV` fallback of a move: copy to a temporary file beside `to`,
/// rename it into place, remove `from`.
fn copy_across(from: &Path, to: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
    let temp_path = temporary_name(to);
    let mut temp = TempFile {
        path: Some(temp_path.clone()),
    };
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, &temp_path)?;
    } else if meta.is_file() {
        let mut source = std::fs::File::open(from)?;
        let mut copy = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(meta.permissions().mode() & 0o7777)
            .open(&temp_path)?;
        io::copy(&mut source, &mut copy)?;
        copy.set_permissions(meta.permissions())?;
    } else {
        return Err(io::Error::from_raw_os_error(libc::EXDEV));
    }
    std::fs::rename(&temp_path, to)?;
    temp.keep();
    std::fs::remove_file(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_stay_short_and_hidden() {
        let long = format!("/w/{}", "x".repeat(255));
        let temp = temporary_name(Path::new(&long));
        let name = temp.file_name().expect("name").as_bytes();
        assert!(name.len() <= 255, "{}", name.len());
        assert!(name.starts_with(b".x"));
        assert_eq!(temp.parent(), Some(Path::new("/w")));
        assert_ne!(
            temporary_name(Path::new("/w/a")),
            temporary_name(Path::new("/w/a"))
        );
    }
}

//! `sbx cp`, like `docker cp`: copy a file or tree between the host and a
//! sandbox as a tar stream.
//!
//! The tar is built or unpacked on the host on a blocking thread and
//! streamed through the archive API; the sandbox side is always extracted
//! by the agent, inside the sandbox. Naming follows `docker cp`: copying
//! `src` to an existing directory puts `src` inside it; copying to a path
//! that does not exist creates it under that name. `-` stands for a tar on
//! stdin (upload) or stdout (download).

use super::CliError;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::StreamBody;
use hyper::body::Frame;
use sbx_api::client::{ByteStream, Client};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

/// One side of a copy: a host path, `-`, or `ID:PATH` in a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Host(PathBuf),
    Stdio,
    Sandbox { id: String, path: String },
}

impl Location {
    pub fn parse(text: &str) -> Self {
        if text == "-" {
            return Location::Stdio;
        }
        match text.split_once(':') {
            // A host path with a colon can be written as ./a:b.
            Some((id, path)) if !id.is_empty() && !id.contains('/') && path.starts_with('/') => {
                Location::Sandbox {
                    id: id.to_owned(),
                    path: path.to_owned(),
                }
            }
            _ => Location::Host(PathBuf::from(text)),
        }
    }
}

/// A `Write` that hands each buffer to an async body stream; blocks when
/// the upload falls behind, so memory stays bounded.
struct ChannelWriter(mpsc::Sender<io::Result<Bytes>>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "upload stopped"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

type UploadBody =
    StreamBody<futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, io::Error>>>;

/// Runs `produce` on a blocking thread and streams what it writes.
fn streamed_body<F>(produce: F) -> (UploadBody, tokio::task::JoinHandle<io::Result<()>>)
where
    F: FnOnce(&mut ChannelWriter) -> io::Result<()> + Send + 'static,
{
    let (sender, receiver) = mpsc::channel::<io::Result<Bytes>>(16);
    let producer = tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter(sender.clone());
        let result = produce(&mut writer);
        if let Err(err) = &result {
            let _ = sender.blocking_send(Err(io::Error::new(err.kind(), err.to_string())));
        }
        result
    });
    let stream = tokio_stream(receiver)
        .map(|chunk| chunk.map(Frame::data))
        .boxed();
    (StreamBody::new(stream), producer)
}

fn tokio_stream<T: Send + 'static>(
    mut receiver: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

fn file_name(path: &Path) -> Result<String, CliError> {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .ok_or_else(|| CliError::Usage(format!("{} has no file name", path.display())))
}

fn sandbox_name(path: &str) -> Result<String, CliError> {
    file_name(Path::new(path))
}

fn sandbox_parent(path: &str) -> String {
    Path::new(path)
        .parent()
        .map(|parent| parent.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".into())
}

pub async fn copy(client: &Client, from: &str, to: &str) -> Result<(), CliError> {
    match (Location::parse(from), Location::parse(to)) {
        (Location::Sandbox { id, path }, destination @ (Location::Host(_) | Location::Stdio)) => {
            download(client, &id, &path, destination).await
        }
        (source @ (Location::Host(_) | Location::Stdio), Location::Sandbox { id, path }) => {
            upload(client, source, &id, &path).await
        }
        _ => Err(CliError::Usage(
            "one side of sbx cp must be ID:/path in a sandbox and the other a host path or -"
                .into(),
        )),
    }
}

async fn upload(client: &Client, source: Location, id: &str, dest: &str) -> Result<(), CliError> {
    let sandbox = client.sandbox(id);
    let (dir, (body, producer)) = match source {
        Location::Host(local) => {
            // Into an existing directory (or one named with a trailing
            // slash) under the source's name; otherwise as `dest` itself.
            let into_dir = dest.ends_with('/')
                || matches!(sandbox.stat(dest).await, Ok(info) if info.file_type == sbx_api::FileType::Dir);
            let (dir, name) = if into_dir {
                (dest.to_owned(), file_name(&local)?)
            } else {
                (sandbox_parent(dest), sandbox_name(dest)?)
            };
            let metadata = std::fs::metadata(&local).map_err(|source| CliError::Io {
                path: local.clone(),
                source,
            })?;
            let tar = streamed_body(move |writer| {
                let mut builder = tar::Builder::new(writer);
                builder.follow_symlinks(false);
                if metadata.is_dir() {
                    builder.append_dir_all(&name, &local)?;
                } else {
                    builder.append_path_with_name(&local, &name)?;
                }
                builder.into_inner()?.flush()
            });
            (dir, tar)
        }
        _ => (
            dest.to_owned(),
            streamed_body(|writer| io::copy(&mut io::stdin().lock(), writer).map(drop)),
        ),
    };
    let summary = sandbox.upload_archive(&dir, body).await;
    // A local read error explains a failed upload better than the upload's
    // own error, so it is reported first.
    producer_result(producer).await?;
    summary?;
    Ok(())
}

async fn producer_result(
    producer: tokio::task::JoinHandle<io::Result<()>>,
) -> Result<(), CliError> {
    match producer.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(CliError::Io {
            path: PathBuf::from("(tar stream)"),
            source,
        }),
        Err(err) => Err(CliError::Usage(format!("tar producer failed: {err}"))),
    }
}

fn into_reader(stream: ByteStream) -> impl Read {
    let chunks = futures_util::stream::unfold(stream, |mut stream| async move {
        match stream.next_chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), stream)),
            Ok(None) => None,
            Err(err) => Some((Err(io::Error::other(err.to_string())), stream)),
        }
    });
    SyncIoBridge::new(StreamReader::new(Box::pin(chunks)))
}

async fn download(
    client: &Client,
    id: &str,
    path: &str,
    destination: Location,
) -> Result<(), CliError> {
    let stream = client.sandbox(id).download_archive(path).await?;
    let local = match destination {
        Location::Stdio => {
            let mut stream = stream;
            let mut stdout = io::stdout().lock();
            while let Some(chunk) = stream.next_chunk().await? {
                stdout.write_all(&chunk).map_err(|source| CliError::Io {
                    path: PathBuf::from("-"),
                    source,
                })?;
            }
            return stdout.flush().map_err(|source| CliError::Io {
                path: PathBuf::from("-"),
                source,
            });
        }
        Location::Host(local) => local,
        Location::Sandbox { .. } => unreachable!("matched by the caller"),
    };
    // Into an existing directory keeping the source's name; otherwise the
    // archive's top entry is renamed to the destination's name.
    let (dir, rename) = if local.is_dir() {
        (local, None)
    } else {
        let parent = local
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_owned);
        (parent, Some(file_name(&local)?))
    };
    let reader = into_reader(stream);
    tokio::task::spawn_blocking(move || unpack(reader, &dir, rename.as_deref()))
        .await
        .map_err(|err| CliError::Usage(format!("tar extraction failed: {err}")))?
}

/// Unpacks on the host, into `dir` as the archive names things, or with
/// its one top-level entry renamed to `rename`: then it is unpacked into a
/// staging directory beside the destination and moved into place, so a
/// failed copy leaves no half-renamed tree.
fn unpack(reader: impl Read, dir: &Path, rename: Option<&str>) -> Result<(), CliError> {
    let io_error = |source| CliError::Io {
        path: dir.to_owned(),
        source,
    };
    let Some(name) = rename else {
        return unpack_into(reader, dir);
    };
    let staging = tempfile::Builder::new()
        .prefix(".sbx-cp-")
        .tempdir_in(dir)
        .map_err(io_error)?;
    unpack_into(reader, staging.path())?;
    let mut top = std::fs::read_dir(staging.path()).map_err(io_error)?;
    let (Some(entry), None) = (top.next(), top.next()) else {
        return Err(CliError::Usage(
            "the archive does not have exactly one top-level entry".into(),
        ));
    };
    let entry = entry.map_err(io_error)?;
    std::fs::rename(entry.path(), dir.join(name)).map_err(io_error)
}

/// `Entry::unpack_in` refuses entries that would land outside `dir` (`..`,
/// absolute paths, writes through symlinks): the archive comes from an
/// untrusted sandbox.
fn unpack_into(reader: impl Read, dir: &Path) -> Result<(), CliError> {
    let io_error = |source| CliError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    for entry in archive.entries().map_err(io_error)? {
        let mut entry = entry.map_err(io_error)?;
        if !entry.unpack_in(dir).map_err(io_error)? {
            let path = entry.path().map_err(io_error)?.display().to_string();
            return Err(CliError::Usage(format!(
                "refusing archive entry {path} outside {}",
                dir.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_like_docker_cp() {
        assert_eq!(Location::parse("-"), Location::Stdio);
        assert_eq!(
            Location::parse("abc:/workspace/x"),
            Location::Sandbox {
                id: "abc".into(),
                path: "/workspace/x".into()
            }
        );
        assert_eq!(Location::parse("./a:b"), Location::Host("./a:b".into()));
        assert_eq!(
            Location::parse("rel/path"),
            Location::Host("rel/path".into())
        );
        assert_eq!(
            Location::parse("abc:relative"),
            Location::Host("abc:relative".into())
        );
    }
}

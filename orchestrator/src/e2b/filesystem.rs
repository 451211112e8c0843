//! envd's `filesystem` service on sbx's file routes and watch.
//!
//! Relative paths are the user's home's, as in envd (`/home/user` for
//! E2B's default user, `/root` for root). Entries are `FileInfo`s
//! reshaped. Directory watches come in both of the SDKs'
//! shapes: the `WatchDir` stream (JavaScript) and the polled watchers
//! (`CreateWatcher`, `GetWatcherEvents`, `RemoveWatcher`; Python), both
//! on sbx's inotify watch.

use super::connect::{self, Stream};
use super::envd::Envd;
use super::error::E2bError;
use super::sbx::{encode, NO_BODY};
use super::watchers::{self, Watchers};
use super::E2b;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use sbx_api::e2b::{
    CreateWatcherResponse, Empty, EntryInfo, EntryResponse, FileType, ListDirRequest,
    ListDirResponse, MoveRequest, PathRequest, WatchDirMessage, WatchRequest, WatcherEvents,
    WatcherRequest,
};
use sbx_api::{FileInfo, FileList, MkdirRequest};

/// `path` made absolute against `user`'s home.
pub fn absolute(path: &str, user: Option<&str>) -> String {
    if path.starts_with('/') {
        return path.to_string();
    }
    let home = match user {
        None | Some("root") => "/root".to_string(),
        Some(name) => format!("/home/{name}"),
    };
    let relative = path.trim_start_matches("~/").trim_start_matches("./");
    if relative.is_empty() || relative == "~" || relative == "." {
        home
    } else {
        format!("{home}/{relative}")
    }
}

/// Who owns what a call makes for `user`: the user, unless that is root
/// (the agent's own).
pub fn owner_of(user: Option<&str>) -> Option<String> {
    user.filter(|user| *user != "root").map(str::to_string)
}

fn permissions(kind: FileType, mode: u32) -> String {
    let mut text = String::with_capacity(10);
    text.push(match kind {
        FileType::Directory => 'd',
        FileType::Symlink => 'l',
        _ => '-',
    });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 0o7;
        text.push(if bits & 0o4 != 0 { 'r' } else { '-' });
        text.push(if bits & 0o2 != 0 { 'w' } else { '-' });
        text.push(if bits & 0o1 != 0 { 'x' } else { '-' });
    }
    text
}

/// An account's name, or its id when the sandbox has no name for it.
fn account(name: Option<String>, id: u32) -> String {
    name.unwrap_or_else(|| id.to_string())
}

pub fn entry(info: FileInfo) -> EntryInfo {
    let kind = match info.file_type {
        sbx_api::FileType::File => FileType::File,
        sbx_api::FileType::Dir => FileType::Directory,
        sbx_api::FileType::Symlink => FileType::Symlink,
        sbx_api::FileType::Other => FileType::Unspecified,
    };
    EntryInfo {
        name: info.name,
        kind,
        path: info.path,
        size: info.size,
        mode: info.mode,
        permissions: permissions(kind, info.mode),
        owner: account(info.owner, info.uid),
        group: account(info.group, info.gid),
        modified_time: info.mtime,
        symlink_target: info.link_target,
    }
}

async fn stat_of(envd: &Envd, path: &str) -> Result<EntryInfo, E2bError> {
    let info: FileInfo = envd
        .sbx
        .json(
            Method::GET,
            &envd.uri(&format!("files/stat?path={}", encode(path))),
            NO_BODY,
        )
        .await?;
    Ok(entry(info))
}

pub async fn stat(State(state): State<E2b>, headers: HeaderMap, body: Body) -> Response {
    connect::unary(
        async {
            let envd = Envd::new(&state, &headers, "filesystem.Stat")?;
            let asked: PathRequest = connect::read_unary(body).await?;
            let path = absolute(&asked.path, envd.user.as_deref());
            Ok(EntryResponse {
                entry: stat_of(&envd, &path).await?,
            })
        }
        .await,
    )
}

pub async fn list_dir(State(state): State<E2b>, headers: HeaderMap, body: Body) -> Response {
    connect::unary(
        async {
            let envd = Envd::new(&state, &headers, "filesystem.ListDir")?;
            let asked: ListDirRequest = connect::read_unary(body).await?;
            let path = absolute(&asked.path, envd.user.as_deref());
            let depth = asked.depth.max(1);
            let listed: FileList = envd
                .sbx
                .json(
                    Method::GET,
                    &envd.uri(&format!("files/list?path={}&depth={depth}", encode(&path))),
                    NO_BODY,
                )
                .await?;
            Ok(ListDirResponse {
                entries: listed.entries.into_iter().map(entry).collect(),
            })
        }
        .await,
    )
}

/// `already_exists` when the path exists, which the SDKs answer with
/// `False`; otherwise `mkdir -p`.
pub async fn make_dir(State(state): State<E2b>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let envd = Envd::new(&state, &headers, "filesystem.MakeDir")?;
        let asked: PathRequest = connect::read_unary(body).await?;
        let path = absolute(&asked.path, envd.user.as_deref());
        match stat_of(&envd, &path).await {
            Ok(_) => return Ok(Err(path)),
            Err(E2bError::Api(body)) if body.error_code == sbx_api::ErrorCode::NotFound => {}
            Err(error) => return Err(error),
        }
        let request = MkdirRequest {
            path: path.clone(),
            mode: None,
            owner: owner_of(envd.user.as_deref()),
        };
        envd.sbx
            .call(Method::POST, &envd.uri("files/mkdir"), Some(&request))
            .await?;
        Ok(Ok(EntryResponse {
            entry: stat_of(&envd, &path).await?,
        }))
    }
    .await;
    match result {
        Ok(Err(path)) => connect::unary_error(sbx_api::e2b::ConnectError {
            code: "already_exists",
            message: format!("{path} already exists"),
        }),
        Ok(Ok(made)) => connect::unary(Ok(made)),
        Err(error) => connect::unary::<Empty>(Err(error)),
    }
}

pub async fn remove(State(state): State<E2b>, headers: HeaderMap, body: Body) -> Response {
    connect::unary(
        async {
            let envd = Envd::new(&state, &headers, "filesystem.Remove")?;
            let asked: PathRequest = connect::read_unary(body).await?;
            let path = absolute(&asked.path, envd.user.as_deref());
            envd.sbx
                .call(
                    Method::DELETE,
                    &envd.uri(&format!("files?path={}&recursive=true", encode(&path))),
                    NO_BODY,
                )
                .await?;
            Ok(Empty {})
        }
        .await,
    )
}

pub async fn move_entry(State(state): State<E2b>, headers: HeaderMap, body: Body) -> Response {
    connect::unary(
        async {
            let envd = Envd::new(&state, &headers, "filesystem.Move")?;
            let asked: MoveRequest = connect::read_unary(body).await?;
            let user = envd.user.as_deref();
            let request = sbx_api::MoveRequest {
                from: absolute(&asked.source, user),
                to: absolute(&asked.destination, user),
            };
            envd.sbx
                .call(Method::POST, &envd.uri("files/move"), Some(&request))
                .await?;
            Ok(EntryResponse {
                entry: stat_of(&envd, &request.to).await?,
            })
        }
        .await,
    )
}

/// The JavaScript SDK's watch: a stream, `start` first once the watch is
/// in place.
pub async fn watch_dir(State(state): State<E2b>, headers: HeaderMap, body: Body) -> Response {
    let opened = async {
        let envd = Envd::new(&state, &headers, "filesystem.WatchDir")?;
        let asked: WatchRequest = connect::read_enveloped(body).await?;
        let path = absolute(&asked.path, envd.user.as_deref());
        let events = watchers::open(&envd, &path, asked.recursive).await?;
        Ok::<_, E2bError>(events)
    }
    .await;
    let mut events = match opened {
        Ok(events) => events,
        Err(error) => return connect::stream_error(error),
    };
    let (stream, response) = Stream::open();
    tokio::spawn(async move {
        if !stream.send(&WatchDirMessage::Start {}).await {
            return;
        }
        loop {
            let batch = tokio::select! {
                batch = events.next_batch() => batch,
                () = stream.client_left() => return,
            };
            match batch {
                Ok(batch) => {
                    for event in batch {
                        if !stream.send(&WatchDirMessage::Filesystem(event)).await {
                            return;
                        }
                    }
                }
                Err(error) => return stream.end(Some(error)).await,
            }
        }
    });
    response
}

pub async fn create_watcher(State(state): State<E2b>, headers: HeaderMap, body: Body) -> Response {
    connect::unary(
        async {
            let envd = Envd::new(&state, &headers, "filesystem.CreateWatcher")?;
            let asked: WatchRequest = connect::read_unary(body).await?;
            let path = absolute(&asked.path, envd.user.as_deref());
            state.watchers.make_room(&envd)?;
            let events = watchers::open(&envd, &path, asked.recursive).await?;
            let watcher_id = Watchers::start(&state.watchers, &envd, events);
            Ok(CreateWatcherResponse { watcher_id })
        }
        .await,
    )
}

pub async fn watcher_events(State(state): State<E2b>, headers: HeaderMap, body: Body) -> Response {
    connect::unary(
        async {
            let envd = Envd::new(&state, &headers, "filesystem.GetWatcherEvents")?;
            let asked: WatcherRequest = connect::read_unary(body).await?;
            let events = state.watchers.drain(&envd, &asked.watcher_id)?;
            Ok(WatcherEvents { events })
        }
        .await,
    )
}

pub async fn remove_watcher(State(state): State<E2b>, headers: HeaderMap, body: Body) -> Response {
    connect::unary(
        async {
            let envd = Envd::new(&state, &headers, "filesystem.RemoveWatcher")?;
            let asked: WatcherRequest = connect::read_unary(body).await?;
            state.watchers.remove(&envd, &asked.watcher_id)?;
            Ok(Empty {})
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_the_users_home() {
        assert_eq!(absolute("/etc/hosts", Some("user")), "/etc/hosts");
        assert_eq!(absolute("notes.txt", None), "/root/notes.txt");
        assert_eq!(absolute("notes.txt", Some("user")), "/home/user/notes.txt");
        assert_eq!(absolute("~/a/b", Some("user")), "/home/user/a/b");
        assert_eq!(absolute("", Some("user")), "/home/user");
    }

    #[test]
    fn permissions_read_like_ls() {
        assert_eq!(permissions(FileType::File, 0o644), "-rw-r--r--");
        assert_eq!(permissions(FileType::Directory, 0o755), "drwxr-xr-x");
        assert_eq!(permissions(FileType::Symlink, 0o777), "lrwxrwxrwx");
    }
}

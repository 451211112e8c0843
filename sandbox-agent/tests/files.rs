//! File and archive routes of the agent, driven through the `sbx-api`
//! client on the agent's socket. On the host the agent's paths are real host
//! paths, so every test works inside its own temporary directory, and the
//! hostile-archive tests check real host paths next to the target.

mod common;

use axum::body::Body;
use bytes::Bytes;
use common::TestAgent;
use http::{header, Method};
use http_body_util::Full;
use sbx_api::client::ClientError;
use sbx_api::{ArchiveSummary, ErrorBody, ErrorCode, FileInfo, FileType};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tar::{EntryType, Header};
use tempfile::TempDir;

fn text(path: &Path) -> String {
    path.to_str().expect("utf-8 test path").to_owned()
}

fn api_error<T: Debug>(result: Result<T, ClientError>) -> (u16, ErrorBody) {
    match result {
        Err(ClientError::Api { status, body }) => (status, body),
        other => panic!("expected an api error, got {other:?}"),
    }
}

fn assert_error<T: Debug>(result: Result<T, ClientError>, status: u16, code: ErrorCode) -> String {
    let (got, body) = api_error(result);
    assert_eq!((got, body.error_code), (status, code), "{body}");
    body.message
}

/// Deterministic noise with plenty of NUL bytes (xorshift64*).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        let word = seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        // Every fourth byte zero: NULs must survive.
        out.extend_from_slice(&[word[0], word[1], word[2], 0, word[4], word[5], word[6], 0]);
    }
    out.truncate(len);
    out
}

/// FNV-1a, to compare large contents in messages.
fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A body sent in `chunk`-sized frames, as a streaming client would.
fn chunked(data: Vec<u8>, chunk: usize) -> Body {
    let chunks: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(chunk)
        .map(|piece| Ok(Bytes::copy_from_slice(piece)))
        .collect();
    Body::from_stream(futures_util::stream::iter(chunks))
}

fn full(data: impl Into<Bytes>) -> Full<Bytes> {
    Full::new(data.into())
}

/// Polls `done` for up to 5 s (for effects the agent completes after the
/// client already has its answer).
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn binary_round_trip_streams_both_ways() {
    let agent = TestAgent::start();
    let client = agent.client();
    let api = client.agent();
    let path = agent.path("blob.bin");
    let data = noise(3 * 1024 * 1024 + 12_345, 7);
    let info = api
        .write_file(&text(&path), None, chunked(data.clone(), 100_000))
        .await
        .expect("write");
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(info.file_type, FileType::File);
    assert_eq!(info.mode, 0o644, "default mode");
    assert_eq!(info.path, text(&path));
    assert_eq!(info.name, "blob.bin");

    let read = api
        .read_file(&text(&path))
        .await
        .expect("read")
        .bytes()
        .await
        .expect("body");
    assert_eq!(read.len(), data.len());
    assert_eq!(checksum(&read), checksum(&data));
    assert!(read == data);

    let response = client
        .send(
            Method::GET,
            &format!("/files?path={}", text(&path)),
            None,
            Bytes::new(),
        )
        .await
        .expect("raw read");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()[header::CONTENT_LENGTH],
        data.len().to_string().as_str()
    );
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/octet-stream"
    );
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(body.len(), data.len());
}

#[tokio::test]
async fn uploads_are_not_bounded_by_the_json_body_limit() {
    let agent = TestAgent::start();
    let client = agent.client();
    let path = agent.path("big.bin");
    // Above the agent's 64 MiB limit for JSON bodies.
    let size = 70 * 1024 * 1024;
    let info = client
        .agent()
        .write_file(&text(&path), None, chunked(vec![b'z'; size], 1 << 20))
        .await
        .expect("write");
    assert_eq!(info.size, size as u64);
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), size as u64);
}

#[tokio::test]
async fn put_sets_mode_creates_parents_and_replaces_atomically() {
    let agent = TestAgent::start();
    let client = agent.client();
    let api = client.agent();

    let secret = agent.path("secret");
    let info = api
        .write_file(&text(&secret), Some(0o600), full("s3cret"))
        .await
        .expect("write 0600");
    assert_eq!(info.mode, 0o600);
    assert_eq!(api.stat(&text(&secret)).await.expect("stat").mode, 0o600);
    // Modes beyond the umask are honoured too.
    let open = agent.path("open");
    api.write_file(&text(&open), Some(0o666), full(""))
        .await
        .expect("write 0666");
    let mode = std::fs::metadata(&open).expect("stat").permissions().mode();
    assert_eq!(mode & 0o7777, 0o666);

    let nested = agent.path("a/b/c/file.txt");
    api.write_file(&text(&nested), None, full("deep"))
        .await
        .expect("write with parents");
    assert_eq!(std::fs::read(&nested).expect("read"), b"deep");
    assert!(agent.path("a/b").is_dir());

    let target = agent.path("replace.txt");
    api.write_file(&text(&target), None, full("version one"))
        .await
        .expect("v1");
    let first_inode = std::fs::metadata(&target).expect("stat").ino();
    api.write_file(&text(&target), None, full("v2"))
        .await
        .expect("v2");
    assert_eq!(std::fs::read(&target).expect("read"), b"v2");
    // A new inode renamed into place, not the old file rewritten.
    assert_ne!(std::fs::metadata(&target).expect("stat").ino(), first_inode);
    let leftovers: Vec<String> = dir_names(agent.dir.path())
        .into_iter()
        .filter(|name| name.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // Onto a directory, or under a file.
    let message = assert_error(
        api.write_file(&text(&agent.path("a")), None, full("x"))
            .await,
        409,
        ErrorCode::Conflict,
    );
    assert!(message.contains("is a directory"), "{message}");
    assert_error(
        api.write_file(&text(&agent.path("secret/under")), None, full("x"))
            .await,
        409,
        ErrorCode::Conflict,
    );
    assert_error(
        api.write_file(&text(&target), Some(0o1234567), full("x"))
            .await,
        400,
        ErrorCode::InvalidRequest,
    );
}

#[tokio::test]
async fn failed_upload_leaves_the_target_untouched() {
    let agent = TestAgent::start();
    let client = agent.client();
    let dir = agent.path("keep");
    std::fs::create_dir(&dir).expect("mkdir");
    let target = dir.join("file");
    std::fs::write(&target, "original").expect("write");
    let temporary = |dir: &Path| {
        dir_names(dir)
            .into_iter()
            .any(|name| name.ends_with(".tmp"))
    };
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from(vec![1u8; 256 * 1024])),
        Ok(Bytes::from(vec![2u8; 256 * 1024])),
    ];
    // Fail only once the agent is writing its temporary file, so that the
    // test sees it removed rather than never made.
    let watched = dir.clone();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen_by_body = std::sync::Arc::clone(&seen);
    let failure = futures_util::stream::once(async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !temporary(&watched) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen_by_body.store(temporary(&watched), std::sync::atomic::Ordering::SeqCst);
        Err(std::io::Error::other("client gave up"))
    });
    let body = Body::from_stream(futures_util::StreamExt::chain(
        futures_util::stream::iter(chunks),
        failure,
    ));
    let result = client.agent().write_file(&text(&target), None, body).await;
    assert!(result.is_err(), "{result:?}");
    assert!(
        seen.load(std::sync::atomic::Ordering::SeqCst),
        "no temporary file was being written"
    );
    assert_eq!(std::fs::read(&target).expect("read"), b"original");
    eventually("the temporary file to go", || {
        dir_names(&dir) == ["file".to_owned()]
    });
}

#[tokio::test]
async fn stat_reports_files_directories_and_symlinks() {
    let agent = TestAgent::start();
    let client = agent.client();
    let api = client.agent();
    let file = agent.path("f.txt");
    std::fs::write(&file, "12345").expect("write");
    let dir = agent.path("d");
    std::fs::create_dir(&dir).expect("mkdir");
    let link = agent.path("l");
    std::os::unix::fs::symlink("f.txt", &link).expect("symlink");

    let info = api.stat(&text(&file)).await.expect("stat file");
    assert_eq!(
        (info.file_type, info.size, info.name.as_str()),
        (FileType::File, 5, "f.txt")
    );
    let meta = std::fs::metadata(&file).expect("stat");
    assert_eq!(info.mtime.timestamp(), meta.mtime());
    assert_eq!((info.uid, info.gid), (meta.uid(), meta.gid()));
    assert_eq!(info.link_target, None);

    let info = api.stat(&text(&dir)).await.expect("stat dir");
    assert_eq!(info.file_type, FileType::Dir);

    let info = api.stat(&text(&link)).await.expect("stat link");
    assert_eq!(info.file_type, FileType::Symlink);
    assert_eq!(info.link_target.as_deref(), Some("f.txt"));

    assert_error(
        api.stat(&text(&agent.path("missing"))).await,
        404,
        ErrorCode::NotFound,
    );
    // A file used as a directory: not found, like stat(1) says.
    assert_error(
        api.stat(&text(&file.join("x"))).await,
        404,
        ErrorCode::NotFound,
    );
}

#[tokio::test]
async fn list_walks_to_the_requested_depth_without_following_links() {
    let agent = TestAgent::start();
    let client = agent.client();
    let api = client.agent();
    let root = agent.path("tree");
    std::fs::create_dir_all(root.join("b/e")).expect("mkdir");
    std::fs::write(root.join("a"), "a").expect("write");
    std::fs::write(root.join("b/c"), "c").expect("write");
    std::fs::write(root.join("b/e/f"), "f").expect("write");
    std::os::unix::fs::symlink("b", root.join("link")).expect("symlink");
    let names = |entries: &[FileInfo]| -> Vec<String> {
        entries
            .iter()
            .map(|entry| {
                Path::new(&entry.path)
                    .strip_prefix(&root)
                    .expect("under root")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    };

    let one = api.list(&text(&root), None).await.expect("depth 1");
    assert_eq!(names(&one), ["a", "b", "link"]);
    assert_eq!(one[2].file_type, FileType::Symlink);
    assert_eq!(one[2].link_target.as_deref(), Some("b"));
    let two = api.list(&text(&root), Some(2)).await.expect("depth 2");
    assert_eq!(names(&two), ["a", "b", "b/c", "b/e", "link"]);
    let all = api.list(&text(&root), Some(64)).await.expect("depth 64");
    assert_eq!(names(&all), ["a", "b", "b/c", "b/e", "b/e/f", "link"]);

    assert_error(
        api.list(&text(&root.join("a")), None).await,
        409,
        ErrorCode::Conflict,
    );
    assert_error(
        api.list(&text(&agent.path("nope")), None).await,
        404,
        ErrorCode::NotFound,
    );
    assert_error(
        api.list(&text(&root), Some(0)).await,
        400,
        ErrorCode::InvalidRequest,
    );
    assert_error(
        api.list(&text(&root), Some(65)).await,
        400,
        ErrorCode::InvalidRequest,
    );
}

#[tokio::test]
async fn an_owner_gets_the_file_and_the_directories_made_for_it() {
    let agent = TestAgent::start();
    let client = agent.client();
    let existing = agent.path("existing");
    std::fs::create_dir(&existing).expect("mkdir");
    let file = agent.path("existing/made/file.txt");
    let response = client
        .send(
            Method::PUT,
            &format!("/files?path={}&owner=65534:65534", text(&file)),
            Some("application/octet-stream"),
            Bytes::from_static(b"theirs"),
        )
        .await
        .expect("write with an owner");
    assert_eq!(response.status(), 200);
    let owner = |path: &Path| {
        let meta = std::fs::symlink_metadata(path).expect("stat");
        (meta.uid(), meta.gid())
    };
    assert_eq!(owner(&file), (65534, 65534));
    assert_eq!(owner(&agent.path("existing/made")), (65534, 65534));
    // A directory that was there keeps its owner.
    assert_eq!(owner(&existing), (0, 0));
    assert_eq!(std::fs::read(&file).expect("read"), b"theirs");

    let made = agent.path("dirs/of/theirs");
    let response = client
        .send(
            Method::POST,
            "/files/mkdir",
            Some("application/json"),
            Bytes::from(format!(
                r#"{{"path": "{}", "owner": "65534"}}"#,
                text(&made)
            )),
        )
        .await
        .expect("mkdir with an owner");
    assert_eq!(response.status(), 200);
    assert_eq!(owner(&made), (65534, 65534));
    assert_eq!(owner(&agent.path("dirs")), (65534, 65534));

    let unknown = client
        .send(
            Method::PUT,
            &format!("/files?path={}&owner=no-such-user", text(&agent.path("x"))),
            Some("application/octet-stream"),
            Bytes::from_static(b"x"),
        )
        .await
        .expect("an unknown owner is answered");
    assert_eq!(unknown.status(), 400);
    assert!(!agent.path("x").exists());
}

#[tokio::test]
async fn mkdir_is_idempotent_and_refuses_files() {
    let agent = TestAgent::start();
    let client = agent.client();
    let api = client.agent();
    let deep = agent.path("x/y/z");
    let info = api.mkdir(&text(&deep)).await.expect("mkdir -p");
    assert_eq!(info.file_type, FileType::Dir);
    assert_eq!(info.mode, 0o755);
    assert!(deep.is_dir());
    api.mkdir(&text(&deep)).await.expect("again");

    let file = agent.path("file");
    std::fs::write(&file, "x").expect("write");
    assert_error(api.mkdir(&text(&file)).await, 409, ErrorCode::Conflict);

    let private = agent.path("private");
    let response = client
        .send(
            Method::POST,
            "/files/mkdir",
            Some("application/json"),
            Bytes::from(format!(
                r#"{{"path": "{}", "mode": "0700"}}"#,
                text(&private)
            )),
        )
        .await
        .expect("mkdir with mode");
    assert_eq!(response.status(), 200);
    let mode = std::fs::metadata(&private)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o700);
}

#[tokio::test]
async fn move_and_remove() {
    let agent = TestAgent::start();
    let client = agent.client();
    let api = client.agent();
    let from = agent.path("from.txt");
    std::fs::write(&from, "moving").expect("write");
    let to = agent.path("new/parent/to.txt");
    api.move_path(&text(&from), &text(&to)).await.expect("move");
    assert!(!from.exists());
    assert_eq!(std::fs::read(&to).expect("read"), b"moving");
    assert_error(
        api.move_path(&text(&from), &text(&to)).await,
        404,
        ErrorCode::NotFound,
    );

    api.remove_path(&text(&to), false)
        .await
        .expect("remove file");
    assert!(!to.exists());
    assert_error(
        api.remove_path(&text(&to), false).await,
        404,
        ErrorCode::NotFound,
    );

    let full_dir = agent.path("new");
    let message = assert_error(
        api.remove_path(&text(&full_dir), false).await,
        409,
        ErrorCode::Conflict,
    );
    assert!(message.contains("recursive"), "{message}");
    assert!(full_dir.exists());
    api.remove_path(&text(&full_dir), true)
        .await
        .expect("remove tree");
    assert!(!full_dir.exists());

    // A symlink goes, its target stays.
    let target = agent.path("target");
    std::fs::create_dir(&target).expect("mkdir");
    std::fs::write(target.join("kept"), "k").expect("write");
    let link = agent.path("link");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    api.remove_path(&text(&link), true)
        .await
        .expect("remove link");
    assert!(link.symlink_metadata().is_err());
    assert!(target.join("kept").exists());

    assert_error(
        api.remove_path("/", true).await,
        400,
        ErrorCode::InvalidRequest,
    );
}

#[tokio::test]
async fn bad_paths_and_queries_get_error_bodies() {
    let agent = TestAgent::start();
    let client = agent.client();
    let api = client.agent();
    assert_error(
        api.stat("relative/path").await,
        400,
        ErrorCode::InvalidRequest,
    );
    assert_error(
        api.read_file("relative").await,
        400,
        ErrorCode::InvalidRequest,
    );
    assert_error(
        api.write_file("relative", None, full("x")).await,
        400,
        ErrorCode::InvalidRequest,
    );
    assert_error(
        api.list("relative", None).await,
        400,
        ErrorCode::InvalidRequest,
    );
    assert_error(api.mkdir("relative").await, 400, ErrorCode::InvalidRequest);
    assert_error(
        api.move_path("/a", "b").await,
        400,
        ErrorCode::InvalidRequest,
    );
    assert_error(
        api.upload_archive("relative", full("")).await,
        400,
        ErrorCode::InvalidRequest,
    );

    let dir = agent.path("dir");
    std::fs::create_dir(&dir).expect("mkdir");
    let message = assert_error(api.read_file(&text(&dir)).await, 409, ErrorCode::Conflict);
    assert!(message.contains("directory"), "{message}");
    // A socket cannot be opened as a file (ENXIO): the wrong kind of file,
    // not a server error (schemathesis found /dev/fd/11 answered 500).
    let socket = agent.path("socket");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    assert_error(
        api.read_file(&text(&socket)).await,
        409,
        ErrorCode::Conflict,
    );
    assert_error(
        api.read_file(&text(&agent.path("missing"))).await,
        404,
        ErrorCode::NotFound,
    );

    // Query strings the typed client cannot produce.
    for query in [
        "/files/stat",
        "/files/stat?path=%2Fa%00b",
        "/files/stat?path=/a&bogus=1",
        "/files/list?path=/tmp&depth=deep",
        "/files?path=/tmp&recursive=maybe",
    ] {
        let method = if query.starts_with("/files?") {
            Method::DELETE
        } else {
            Method::GET
        };
        let response = client
            .send(method, query, None, Bytes::new())
            .await
            .expect("request goes through");
        let status = response.status().as_u16();
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("body")
            .to_bytes();
        let body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_else(|err| {
            panic!("{query}: not an ErrorBody ({err}): {bytes:?}");
        });
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body.error_code, ErrorCode::InvalidRequest, "{query}");
    }
}

/// An unprivileged agent gets EACCES from the kernel, honestly: run the
/// agent binary as `nobody` over files only root may read.
#[tokio::test]
async fn permission_denied_as_an_unprivileged_agent() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to start the agent as nobody");
        return;
    }
    let nobody = nix::unistd::Uid::from_raw(65534);
    let dir = tempfile::tempdir().expect("tempdir");
    let run = dir.path().join("run");
    std::fs::create_dir(&run).expect("mkdir");
    nix::unistd::chown(dir.path(), Some(nobody), None).expect("chown");
    nix::unistd::chown(&run, Some(nobody), None).expect("chown");
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).expect("mkdir");
    std::fs::write(locked.join("secret"), "root only").expect("write");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let readonly = dir.path().join("readonly.txt");
    std::fs::write(&readonly, "mine").expect("write");
    std::fs::set_permissions(&readonly, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    let socket = run.join("agent.sock");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sandbox-agent"))
        .arg("--socket")
        .arg(&socket)
        .arg("--workdir")
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .uid(65534)
        .gid(65534)
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("agent starts as nobody");
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if let Some(status) = child.try_wait().expect("status") {
            panic!("agent exited: {status}");
        }
        assert!(Instant::now() < deadline, "no socket within 10 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let _reap = Reap(child);
    let client = sbx_api::client::Client::unix(&socket);
    let api = client.agent();
    assert_error(
        api.read_file(&text(&locked.join("secret"))).await,
        403,
        ErrorCode::PermissionDenied,
    );
    assert_error(
        api.read_file(&text(&readonly)).await,
        403,
        ErrorCode::PermissionDenied,
    );
    assert_error(
        api.list(&text(&locked), None).await,
        403,
        ErrorCode::PermissionDenied,
    );
    assert_error(
        api.write_file(&text(&locked.join("new")), None, full("x"))
            .await,
        403,
        ErrorCode::PermissionDenied,
    );
    assert_error(
        api.remove_path(&text(&locked.join("secret")), false).await,
        403,
        ErrorCode::PermissionDenied,
    );
}

// ---------------------------------------------------------------- archives

/// Appends an entry with a raw name (the `tar` crate refuses to write `..`
/// or absolute names, which is exactly what hostile archives contain).
fn raw_entry(
    builder: &mut tar::Builder<Vec<u8>>,
    name: &[u8],
    kind: EntryType,
    link: Option<&[u8]>,
    data: &[u8],
) {
    let mut header = Header::new_gnu();
    let gnu = header.as_gnu_mut().expect("gnu header");
    gnu.name[..name.len()].copy_from_slice(name);
    if let Some(link) = link {
        gnu.linkname[..link.len()].copy_from_slice(link);
    }
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(if kind == EntryType::Directory {
        0o755
    } else {
        0o644
    });
    header.set_mtime(1_600_000_000);
    header.set_cksum();
    builder.append(&header, data).expect("append entry");
}

fn file_entry(builder: &mut tar::Builder<Vec<u8>>, name: &str, mode: u32, data: &[u8]) {
    let mut header = Header::new_gnu();
    header.set_entry_type(EntryType::Regular);
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_mtime(1_600_000_000);
    builder
        .append_data(&mut header, name, data)
        .expect("append file");
}

fn link_entry(builder: &mut tar::Builder<Vec<u8>>, kind: EntryType, name: &str, target: &str) {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(0);
    header.set_mode(0o777);
    builder
        .append_link(&mut header, name, target)
        .expect("append link");
}

/// Path → (type, contents or link target, mode) for every entry of a tar.
fn tar_index(bytes: &[u8]) -> BTreeMap<String, (EntryType, Vec<u8>, u32)> {
    let mut archive = tar::Archive::new(bytes);
    let mut index = BTreeMap::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().expect("mode");
        let content = match entry.link_name_bytes() {
            Some(target) => target.into_owned(),
            None => {
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut data).expect("data");
                data
            }
        };
        index.insert(path.trim_end_matches('/').to_owned(), (kind, content, mode));
    }
    index
}

#[tokio::test]
async fn archive_round_trip_of_a_small_tree() {
    let agent = TestAgent::start();
    let client = agent.client();
    let api = client.agent();
    let long_name = format!("proj/{}/file.txt", "long-directory-name".repeat(8));
    let binary = noise(200_000, 3);
    let mut tar = tar::Builder::new(Vec::new());
    raw_entry(&mut tar, b"proj/", EntryType::Directory, None, b"");
    file_entry(&mut tar, "proj/run.sh", 0o755, b"#!/bin/sh\necho hi\n");
    file_entry(&mut tar, "proj/data.bin", 0o600, &binary);
    // No directory entry for src/: parents are created as needed.
    file_entry(&mut tar, "proj/src/main.rs", 0o644, b"fn main() {}\n");
    file_entry(&mut tar, &long_name, 0o644, b"long");
    link_entry(&mut tar, EntryType::Symlink, "proj/latest", "src/main.rs");
    link_entry(&mut tar, EntryType::Link, "proj/hard", "proj/run.sh");
    raw_entry(&mut tar, b"proj/fifo", EntryType::Fifo, None, b"");
    let bytes = tar.into_inner().expect("tar");

    let dest = agent.path("dest/here");
    let summary: ArchiveSummary = api
        .upload_archive(&text(&dest), full(bytes))
        .await
        .expect("upload");
    assert_eq!(summary.entries, 7, "{summary:?} (the fifo is skipped)");
    let script_len = "#!/bin/sh\necho hi\n".len() as u64;
    assert_eq!(summary.bytes, script_len + 200_000 + 13 + 4);

    let proj = dest.join("proj");
    assert_eq!(std::fs::read(proj.join("data.bin")).expect("read"), binary);
    let mode = |path: &Path| std::fs::symlink_metadata(path).expect("stat").mode() & 0o7777;
    assert_eq!(mode(&proj.join("run.sh")), 0o755);
    assert_eq!(mode(&proj.join("data.bin")), 0o600);
    assert_eq!(
        std::fs::metadata(proj.join("run.sh"))
            .expect("stat")
            .mtime(),
        1_600_000_000
    );
    assert_eq!(
        std::fs::metadata(&proj).expect("stat").mtime(),
        1_600_000_000,
        "directory mtimes are restored last"
    );
    assert_eq!(
        std::fs::read_link(proj.join("latest")).expect("link"),
        PathBuf::from("src/main.rs")
    );
    assert_eq!(
        std::fs::metadata(proj.join("hard")).expect("stat").ino(),
        std::fs::metadata(proj.join("run.sh")).expect("stat").ino()
    );
    assert_eq!(std::fs::read(dest.join(&long_name)).expect("long"), b"long");
    assert!(proj.join("fifo").symlink_metadata().is_err());

    // Download: entries are named from the tree's own name, like docker cp.
    let downloaded = api
        .download_archive(&text(&proj))
        .await
        .expect("download")
        .bytes()
        .await
        .expect("tar body");
    let index = tar_index(&downloaded);
    assert_eq!(index["proj"].0, EntryType::Directory);
    assert_eq!(index["proj/data.bin"].1, binary);
    assert_eq!(index["proj/data.bin"].2 & 0o7777, 0o600);
    assert_eq!(index["proj/run.sh"].2 & 0o7777, 0o755);
    assert_eq!(index["proj/latest"].0, EntryType::Symlink);
    assert_eq!(index["proj/latest"].1, b"src/main.rs");
    assert_eq!(index[long_name.as_str()].1, b"long");
    assert!(
        index.keys().all(|name| name.starts_with("proj")),
        "{index:?}"
    );

    // A single file downloads as one entry named after it.
    let single = api
        .download_archive(&text(&proj.join("src/main.rs")))
        .await
        .expect("download file")
        .bytes()
        .await
        .expect("tar body");
    let index = tar_index(&single);
    assert_eq!(index.keys().collect::<Vec<_>>(), ["main.rs"]);

    assert_error(
        api.download_archive(&text(&agent.path("missing"))).await,
        404,
        ErrorCode::NotFound,
    );
}

/// Every regular file under `root`, relative path → contents.
fn tree_contents(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(root).expect("under root").to_owned();
                out.insert(relative, std::fs::read(&path).expect("read"));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_of_a_thousand_files_streams_from_download_to_upload() {
    let agent = TestAgent::start();
    let client = agent.client();
    let api = client.agent();
    let source = agent.path("src/tree");
    for i in 0..1_200 {
        let dir = source.join(format!("d{:02}/sub{}", i % 40, i % 3));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(
            dir.join(format!("f{i}.txt")),
            noise(i * 7 % 5_000, i as u64 + 1),
        )
        .expect("write");
    }
    // The download's body is the upload's body: nothing is collected.
    let download = api
        .download_archive(&text(&source))
        .await
        .expect("download");
    let dest = agent.path("copy");
    let summary = api
        .upload_archive(&text(&dest), download.into_inner())
        .await
        .expect("upload");
    let files = 1_200;
    let dirs = 1 + 40 + 40 * 3;
    assert_eq!(summary.entries, files + dirs, "{summary:?}");
    let original = tree_contents(&source);
    let copied = tree_contents(&dest.join("tree"));
    assert_eq!(original.len(), 1_200);
    assert!(original == copied, "trees differ");
}

/// The layout of a hostile-archive test: `target` is where the archive goes,
/// `outside` a sibling that must stay untouched.
struct Arena {
    _base: TempDir,
    target: PathBuf,
    outside: PathBuf,
}

impl Arena {
    fn new() -> Self {
        let base = tempfile::tempdir().expect("tempdir");
        let target = base.path().join("target");
        let outside = base.path().join("outside");
        std::fs::create_dir(&target).expect("mkdir");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::write(outside.join("secret"), "untouched").expect("write");
        Self {
            _base: base,
            target,
            outside,
        }
    }

    fn base(&self) -> &Path {
        self.target.parent().expect("base")
    }

    /// Only what was there before: `outside/secret`, unchanged, not linked.
    fn assert_outside_untouched(&self) {
        assert_eq!(dir_names(&self.outside), ["secret"], "outside was written");
        assert_eq!(
            dir_names(self.base()),
            ["outside", "target"],
            "base was written"
        );
        let meta = std::fs::metadata(self.outside.join("secret")).expect("stat");
        assert_eq!(meta.nlink(), 1, "the secret was hardlinked");
        assert_eq!(
            std::fs::read(self.outside.join("secret")).expect("read"),
            b"untouched"
        );
    }

    fn outside_bytes(&self) -> Vec<u8> {
        text(&self.outside).into_bytes()
    }
}

async fn upload(
    agent: &TestAgent,
    dir: &Path,
    tar: tar::Builder<Vec<u8>>,
) -> Result<ArchiveSummary, ClientError> {
    let bytes = tar.into_inner().expect("tar");
    agent
        .client()
        .agent()
        .upload_archive(&text(dir), full(bytes))
        .await
}

#[tokio::test]
async fn hostile_dotdot_entries_are_rejected() {
    let agent = TestAgent::start();
    for name in [&b"../escape"[..], b"a/../../escape", b"./../outside/pwned"] {
        let arena = Arena::new();
        let mut tar = tar::Builder::new(Vec::new());
        file_entry(&mut tar, "before.txt", 0o644, b"fine");
        raw_entry(&mut tar, name, EntryType::Regular, None, b"pwned");
        let message = assert_error(
            upload(&agent, &arena.target, tar).await,
            400,
            ErrorCode::InvalidRequest,
        );
        assert!(message.contains(".."), "{message}");
        arena.assert_outside_untouched();
        // Entries before the bad one stay: streaming cannot look ahead.
        assert_eq!(dir_names(&arena.target), ["before.txt"]);
    }
}

#[tokio::test]
async fn absolute_entries_land_inside_the_target() {
    let agent = TestAgent::start();
    let arena = Arena::new();
    let mut name = arena.outside_bytes();
    name.extend_from_slice(b"/abs_escape");
    let mut tar = tar::Builder::new(Vec::new());
    raw_entry(&mut tar, &name, EntryType::Regular, None, b"pwned");
    let summary = upload(&agent, &arena.target, tar)
        .await
        .expect("absolute names are made relative");
    assert_eq!(summary.entries, 1);
    arena.assert_outside_untouched();
    let relative = text(&arena.outside);
    let landed = arena
        .target
        .join(relative.trim_start_matches('/'))
        .join("abs_escape");
    assert_eq!(std::fs::read(landed).expect("inside"), b"pwned");
}

/// `outside`'s absolute path, with `prefix` before and `suffix` after.
fn around(arena: &Arena, prefix: &[u8], suffix: &[u8]) -> Vec<u8> {
    [prefix, &arena.outside_bytes(), suffix].concat()
}

type SymlinkCase = fn(&Arena) -> (Vec<u8>, Vec<u8>, Vec<u8>);

#[tokio::test]
async fn writes_through_symlinks_out_of_the_target_are_refused() {
    let agent = TestAgent::start();
    // (symlink name, its target, the entry written through it)
    let cases: [SymlinkCase; 4] = [
        |arena| {
            (
                b"link".to_vec(),
                around(arena, b"", b""),
                b"link/pwned".to_vec(),
            )
        },
        |_| {
            (
                b"link".to_vec(),
                b"../outside".to_vec(),
                b"link/pwned".to_vec(),
            )
        },
        |arena| {
            let climb = b"../../../../../../../../../..".to_vec();
            (b"up".to_vec(), climb, around(arena, b"up", b"/pwned"))
        },
        |arena| {
            (
                b"slash".to_vec(),
                b"/".to_vec(),
                around(arena, b"slash", b"/pwned"),
            )
        },
    ];
    for case in cases {
        let arena = Arena::new();
        let (link, target, write) = case(&arena);
        let mut tar = tar::Builder::new(Vec::new());
        raw_entry(&mut tar, &link, EntryType::Symlink, Some(&target), b"");
        raw_entry(&mut tar, &write, EntryType::Regular, None, b"pwned");
        let message = assert_error(
            upload(&agent, &arena.target, tar).await,
            400,
            ErrorCode::InvalidRequest,
        );
        assert!(
            message.contains("outside"),
            "{}: {message}",
            String::from_utf8_lossy(&write)
        );
        arena.assert_outside_untouched();
        // The link itself is inert, and was created.
        let link = arena.target.join(String::from_utf8_lossy(&link).as_ref());
        assert!(link.symlink_metadata().is_ok());
    }
}

#[tokio::test]
async fn preexisting_links_are_replaced_not_written_through() {
    let agent = TestAgent::start();
    let arena = Arena::new();
    std::os::unix::fs::symlink(arena.outside.join("secret"), arena.target.join("victim"))
        .expect("symlink");
    std::os::unix::fs::symlink(&arena.outside, arena.target.join("dirlink")).expect("symlink");
    let mut tar = tar::Builder::new(Vec::new());
    file_entry(&mut tar, "victim", 0o644, b"replaced");
    raw_entry(&mut tar, b"dirlink", EntryType::Directory, None, b"");
    file_entry(&mut tar, "dirlink/inside", 0o644, b"in a real dir now");
    let summary = upload(&agent, &arena.target, tar)
        .await
        .expect("links in the way are replaced");
    assert_eq!(summary.entries, 3);
    arena.assert_outside_untouched();
    let victim = arena.target.join("victim");
    assert!(victim.symlink_metadata().expect("stat").is_file());
    assert_eq!(std::fs::read(victim).expect("read"), b"replaced");
    assert!(arena
        .target
        .join("dirlink")
        .symlink_metadata()
        .expect("stat")
        .is_dir());

    // A link planted before the upload is not followed either.
    let arena = Arena::new();
    std::os::unix::fs::symlink(&arena.outside, arena.target.join("planted")).expect("symlink");
    let mut tar = tar::Builder::new(Vec::new());
    file_entry(&mut tar, "planted/pwned", 0o644, b"pwned");
    assert_error(
        upload(&agent, &arena.target, tar).await,
        400,
        ErrorCode::InvalidRequest,
    );
    arena.assert_outside_untouched();
}

type HardlinkCase = fn(&Arena) -> Vec<(&'static [u8], EntryType, Vec<u8>)>;

#[tokio::test]
async fn hardlinks_to_files_outside_are_refused() {
    let agent = TestAgent::start();
    let cases: [HardlinkCase; 4] = [
        // Absolute target: made relative, so it names nothing inside.
        |arena| vec![(b"hl", EntryType::Link, around(arena, b"", b"/secret"))],
        |_| vec![(b"hl", EntryType::Link, b"../outside/secret".to_vec())],
        // Through symlinks that leave the target.
        |arena| {
            vec![
                (b"out", EntryType::Symlink, around(arena, b"", b"")),
                (b"hl", EntryType::Link, b"out/secret".to_vec()),
            ]
        },
        |_| {
            vec![
                (b"up", EntryType::Symlink, b"../outside".to_vec()),
                (b"hl", EntryType::Link, b"up/secret".to_vec()),
            ]
        },
    ];
    for case in cases {
        let arena = Arena::new();
        let mut tar = tar::Builder::new(Vec::new());
        for (name, kind, link) in case(&arena) {
            raw_entry(&mut tar, name, kind, Some(&link), b"");
        }
        assert_error(
            upload(&agent, &arena.target, tar).await,
            400,
            ErrorCode::InvalidRequest,
        );
        arena.assert_outside_untouched();
        assert!(arena.target.join("hl").symlink_metadata().is_err());
    }
}

#[tokio::test]
async fn malformed_archives_are_bad_requests() {
    let agent = TestAgent::start();
    let arena = Arena::new();
    let client = agent.client();
    let api = client.agent();
    let garbage = noise(4096, 11);
    let message = assert_error(
        api.upload_archive(&text(&arena.target), full(garbage))
            .await,
        400,
        ErrorCode::InvalidRequest,
    );
    assert!(message.contains("malformed"), "{message}");
    // Cut in the middle of a file's data.
    let mut tar = tar::Builder::new(Vec::new());
    file_entry(&mut tar, "cut.bin", 0o644, &noise(10_000, 5));
    let mut bytes = tar.into_inner().expect("tar");
    bytes.truncate(512 + 4_000);
    assert_error(
        api.upload_archive(&text(&arena.target), full(bytes)).await,
        400,
        ErrorCode::InvalidRequest,
    );
    // Empty is a valid (empty) archive.
    let summary = api
        .upload_archive(&text(&arena.target), full(""))
        .await
        .expect("empty archive");
    assert_eq!(
        summary,
        ArchiveSummary {
            entries: 0,
            bytes: 0
        }
    );
    // Onto a file.
    assert_error(
        api.upload_archive(&text(&arena.outside.join("secret")), full(""))
            .await,
        409,
        ErrorCode::Conflict,
    );
}

/// An answer made before the body was read (the target is a directory, the
/// process is unknown) reaches the client, instead of the connection
/// closing under a client still writing the body (which the orchestrator
/// turned into a 503 "agent unavailable"). Found by schemathesis.
#[tokio::test]
async fn early_answers_to_uploads_reach_the_client() {
    let agent = TestAgent::start();
    let client = agent.client();
    let api = client.agent();
    std::fs::create_dir(agent.path("dir")).expect("mkdir");
    let body = || full(vec![b'x'; 512 * 1024]);
    for _ in 0..10 {
        assert_error(
            api.write_file(&text(&agent.path("dir")), None, body())
                .await,
            409,
            ErrorCode::Conflict,
        );
        assert_error(
            api.upload_archive("relative/dir", body()).await,
            400,
            ErrorCode::InvalidRequest,
        );
        assert_error(
            api.write_stdin(999_999, Bytes::from(vec![b'x'; 512 * 1024]), false)
                .await,
            404,
            ErrorCode::NotFound,
        );
    }
    let listed = api
        .list(&text(agent.dir.path()), None)
        .await
        .expect("the agent serves on");
    assert!(!listed.is_empty());
}

//! End to end: what a coding agent does inside its sandbox — streamed exec,
//! background processes, files and archives — through `sbx serve` and the
//! agent, with the Rust client.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use sbx_api::client::{ClientError, EventStream, SandboxClient};
use sbx_api::{
    ErrorCode, ExecEvent, ExecRequest, FileType, LogsQuery, ProcessState, StartProcessRequest,
};
use sbx_tests::{agent_pid, eventually, peak_rss, tree_tar, Engine, Server};
use std::io::Read;
use std::time::Duration;

const MIB: u64 = 1024 * 1024;

fn api_code(err: &ClientError) -> Option<ErrorCode> {
    err.api_error().map(|body| body.error_code)
}

fn status_of(err: &ClientError) -> Option<u16> {
    match err {
        ClientError::Api { status, .. } => Some(*status),
        _ => None,
    }
}

/// Next event that is not output, collecting stdout on the way.
async fn next_event(events: &mut EventStream) -> Result<ExecEvent> {
    events.next().await?.context("stream ended early")
}

async fn run(sandbox: &SandboxClient<'_>, script: &str) -> Result<String> {
    let result = sandbox.exec(&ExecRequest::shell(script)).await?;
    if result.exit_code != 0 {
        bail!("{script:?} exited {}: {}", result.exit_code, result.stderr);
    }
    Ok(result.stdout)
}

/// Whether process `pid` in the sandbox is gone within a bounded wait
/// (killing is asynchronous; the kernel needs a moment to tear it down).
async fn process_disappears(sandbox: &SandboxClient<'_>, pid: i32) -> bool {
    eventually(Duration::from_secs(10), || async {
        let probe = sandbox
            .exec(&ExecRequest::shell(format!("kill -0 {pid}")))
            .await;
        matches!(probe, Ok(result) if result.exit_code != 0)
    })
    .await
}

fn random_bytes(len: usize) -> Result<Vec<u8>> {
    let mut data = vec![0u8; len];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut data)?;
    Ok(data)
}

async fn streamed_exec_delivers_events_in_order_while_the_command_runs(
    engine: Engine,
) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;
    let sandbox = client.sandbox(&id);
    // The command prints, then waits for the test to let it go: output
    // that arrives while it waits can only have been streamed.
    let script = "echo first; echo oops >&2; \
                  while [ ! -e /tmp/go ]; do sleep 0.02; done; echo second";
    let mut events = sandbox.exec_stream(&ExecRequest::shell(script)).await?;
    let ExecEvent::Start { pid } = next_event(&mut events).await? else {
        bail!("the first event must be start");
    };
    assert!(pid > 1);
    let mut stdout = String::new();
    let mut stderr = String::new();
    while stdout != "first\n" || stderr != "oops\n" {
        match next_event(&mut events).await? {
            ExecEvent::Stdout { data } => stdout.push_str(&data),
            ExecEvent::Stderr { data } => stderr.push_str(&data),
            other => bail!("unexpected {other:?} before the command was released"),
        }
    }
    run(&sandbox, "touch /tmp/go").await?;
    let mut rest = Vec::new();
    while let Some(event) = events.next().await? {
        rest.push(event);
    }
    assert_eq!(
        rest.first(),
        Some(&ExecEvent::Stdout {
            data: "second\n".into()
        })
    );
    assert!(
        matches!(
            rest.last(),
            Some(ExecEvent::Exit {
                exit_code: 0,
                timed_out: false,
                ..
            })
        ),
        "{rest:?}"
    );
    assert_eq!(rest.len(), 2, "exit is the last event: {rest:?}");
    Ok(())
}

async fn a_client_that_disconnects_kills_the_streamed_command(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;
    let sandbox = client.sandbox(&id);
    let mut events = sandbox
        .exec_stream(&ExecRequest::shell("echo ready; exec sleep 300"))
        .await?;
    let ExecEvent::Start { pid } = next_event(&mut events).await? else {
        bail!("the first event must be start");
    };
    assert_eq!(
        next_event(&mut events).await?,
        ExecEvent::Stdout {
            data: "ready\n".into()
        }
    );
    assert_eq!(
        run(&sandbox, &format!("kill -0 {pid} && echo alive")).await?,
        "alive\n"
    );
    drop(events);
    assert!(
        process_disappears(&sandbox, pid).await,
        "the command outlived its client"
    );
    Ok(())
}

async fn fifty_concurrent_execs_on_one_sandbox(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let client = client.clone();
        let id = id.clone();
        tasks.spawn(async move {
            let result = client
                .sandbox(&id)
                .exec(&ExecRequest::shell(format!("echo {i}; echo err{i} >&2")))
                .await?;
            anyhow::Ok((i, result))
        });
    }
    let mut seen = 0;
    while let Some(joined) = tasks.join_next().await {
        let (i, result) = joined??;
        assert_eq!(result.stdout, format!("{i}\n"));
        assert_eq!(result.stderr, format!("err{i}\n"));
        assert_eq!(result.exit_code, 0);
        seen += 1;
    }
    assert_eq!(seen, 50);
    Ok(())
}

async fn a_gigabyte_of_output_keeps_agent_and_orchestrator_memory_bounded(
    engine: Engine,
) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;
    let sandbox = client.sandbox(&id);

    let mut events = sandbox
        .exec_stream(&ExecRequest::shell("head -c 1G /dev/zero | tr '\\0' x"))
        .await?;
    let mut streamed = 0u64;
    let mut exit = None;
    while let Some(event) = events.next().await? {
        match event {
            ExecEvent::Stdout { data } => streamed += data.len() as u64,
            ExecEvent::Exit { exit_code, .. } => exit = Some(exit_code),
            _ => {}
        }
    }
    assert_eq!(exit, Some(0));
    assert_eq!(streamed, 1024 * MIB, "every byte is streamed");

    let buffered = sandbox
        .exec(&ExecRequest::shell("head -c 1G /dev/zero | tr '\\0' y"))
        .await?;
    assert!(buffered.truncated);
    assert_eq!(buffered.stdout.len() as u64, 10 * MIB, "cut at the cap");

    let agent = agent_pid(engine, &id).context("agent pid")?;
    let agent_peak = peak_rss(agent).context("agent rss")?;
    let server_peak = peak_rss(server.pid().context("server pid")?).context("server rss")?;
    assert!(
        agent_peak < 96 * MIB,
        "agent peak rss {} MiB",
        agent_peak / MIB
    );
    assert!(
        server_peak < 128 * MIB,
        "orchestrator peak rss {} MiB",
        server_peak / MIB
    );
    Ok(())
}

async fn background_process_logs_stdin_signals_and_wait(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;
    let sandbox = client.sandbox(&id);

    // stdin reaches the process and its output can be followed.
    let cat = sandbox
        .start_process(&StartProcessRequest {
            cmd: Some(vec!["cat".into()]),
            name: Some("echoer".into()),
            ..StartProcessRequest::default()
        })
        .await?;
    assert_eq!(cat.state, ProcessState::Running);
    assert_eq!(cat.name.as_deref(), Some("echoer"));
    let mut follow = sandbox
        .process_logs(
            cat.pid,
            &LogsQuery {
                tail: None,
                follow: true,
            },
        )
        .await?;
    sandbox
        .write_stdin(cat.pid, Bytes::from_static(b"hello\n"), false)
        .await?;
    let mut seen = String::new();
    while seen != "hello\n" {
        match next_event(&mut follow).await? {
            ExecEvent::Stdout { data } => seen.push_str(&data),
            ExecEvent::Start { .. } => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    sandbox
        .write_stdin(cat.pid, Bytes::from_static(b"bye\n"), true)
        .await?;
    let mut rest = Vec::new();
    while let Some(event) = follow.next().await? {
        rest.push(event);
    }
    assert!(
        matches!(rest.last(), Some(ExecEvent::Exit { exit_code: 0, .. })),
        "closing stdin ends cat: {rest:?}"
    );
    let done = sandbox.wait_process(cat.pid).await?;
    assert_eq!(done.state, ProcessState::Exited);
    assert_eq!(done.exit_code, Some(0));
    let tail = sandbox
        .process_logs(
            cat.pid,
            &LogsQuery {
                tail: Some(4),
                follow: false,
            },
        )
        .await?
        .collect()
        .await?;
    let tailed: String = tail
        .iter()
        .filter_map(|event| match event {
            ExecEvent::Stdout { data } => Some(data.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(tailed, "bye\n", "tail keeps only the last bytes");

    // A signal reaches the whole process group, grandchildren included.
    let parent = sandbox
        .start_process(&StartProcessRequest {
            shell: Some("sleep 300 & echo $! > /tmp/grandchild; wait".into()),
            ..StartProcessRequest::default()
        })
        .await?;
    let written = eventually(Duration::from_secs(10), || async {
        matches!(sandbox.stat("/tmp/grandchild").await, Ok(info) if info.size > 0)
    })
    .await;
    assert!(written);
    let grandchild = run(&sandbox, "cat /tmp/grandchild")
        .await?
        .trim()
        .to_owned();
    let listed = sandbox.processes().await?;
    assert!(listed
        .iter()
        .any(|p| p.pid == parent.pid && p.state == ProcessState::Running));
    sandbox.signal(parent.pid, "TERM").await?;
    let ended = sandbox.wait_process(parent.pid).await?;
    assert_eq!(ended.exit_code, Some(128 + 15));
    let grandchild: i32 = grandchild.parse()?;
    assert!(
        process_disappears(&sandbox, grandchild).await,
        "the grandchild got the signal too"
    );

    let err = sandbox.process(999_999).await.expect_err("unknown pid");
    assert_eq!(api_code(&err), Some(ErrorCode::NotFound));
    let err = sandbox
        .signal(parent.pid, "NOPE")
        .await
        .expect_err("bad signal");
    assert_eq!(api_code(&err), Some(ErrorCode::InvalidRequest));
    Ok(())
}

async fn a_100_mib_file_round_trips_byte_identical(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;
    let sandbox = client.sandbox(&id);
    let data = Bytes::from(random_bytes(100 * MIB as usize)?);

    let written = sandbox
        .write_file(
            "/workspace/data/big.bin",
            Some(0o600),
            Full::new(data.clone()),
        )
        .await?;
    assert_eq!(written.size, 100 * MIB);
    assert_eq!(written.mode, 0o600);
    let read = sandbox
        .read_file("/workspace/data/big.bin")
        .await?
        .bytes()
        .await?;
    assert!(read == data, "contents differ");
    let checksum = run(
        &sandbox,
        "sha256sum /workspace/data/big.bin | cut -d' ' -f1",
    )
    .await?;
    assert_eq!(checksum.len(), 65);

    let server_peak = peak_rss(server.pid().context("server pid")?).context("server rss")?;
    assert!(
        server_peak < 96 * MIB,
        "the orchestrator streams instead of buffering: peak {} MiB",
        server_peak / MIB
    );
    Ok(())
}

async fn file_operations_and_their_errors(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;
    let sandbox = client.sandbox(&id);

    let binary: &[u8] = b"a\0b\xff\n";
    sandbox
        .write_file(
            "/workspace/bin.dat",
            None,
            Full::new(Bytes::from_static(binary)),
        )
        .await?;
    assert_eq!(
        sandbox
            .read_file("/workspace/bin.dat")
            .await?
            .bytes()
            .await?,
        binary
    );
    let info = sandbox.stat("/workspace/bin.dat").await?;
    assert_eq!(info.file_type, FileType::File);
    assert_eq!(info.size, binary.len() as u64);

    sandbox.mkdir("/workspace/a/b/c").await?;
    sandbox.mkdir("/workspace/a/b/c").await?;
    sandbox
        .move_path("/workspace/bin.dat", "/workspace/a/moved.dat")
        .await?;
    let entries = sandbox.list("/workspace/a", Some(2)).await?;
    let names: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert!(names.contains(&"/workspace/a/moved.dat"), "{names:?}");
    assert!(names.contains(&"/workspace/a/b/c"), "{names:?}");

    let checks: Vec<(Result<(), ClientError>, u16, ErrorCode)> = vec![
        (
            sandbox.read_file("/workspace/missing").await.map(drop),
            404,
            ErrorCode::NotFound,
        ),
        (
            sandbox.read_file("/workspace/a").await.map(drop),
            409,
            ErrorCode::Conflict,
        ),
        (
            sandbox.stat("workspace/relative").await.map(drop),
            400,
            ErrorCode::InvalidRequest,
        ),
        (
            sandbox.remove_path("/workspace/a", false).await,
            409,
            ErrorCode::Conflict,
        ),
        (
            sandbox.list("/workspace/a/moved.dat", None).await.map(drop),
            409,
            ErrorCode::Conflict,
        ),
        (
            sandbox
                .write_file("/workspace/a", None, Full::new(Bytes::new()))
                .await
                .map(drop),
            409,
            ErrorCode::Conflict,
        ),
        (
            sandbox
                .move_path("/workspace/nothing", "/workspace/x")
                .await,
            404,
            ErrorCode::NotFound,
        ),
    ];
    for (index, (result, status, code)) in checks.into_iter().enumerate() {
        let err = result.expect_err("must fail");
        assert_eq!(status_of(&err), Some(status), "case {index}: {err}");
        assert_eq!(api_code(&err), Some(code), "case {index}: {err}");
    }

    sandbox.remove_path("/workspace/a", true).await?;
    let err = sandbox.stat("/workspace/a").await.expect_err("removed");
    assert_eq!(api_code(&err), Some(ErrorCode::NotFound));

    let unknown = client.sandbox("0000000000000000");
    let err = unknown.stat("/workspace").await.expect_err("no sandbox");
    assert_eq!(api_code(&err), Some(ErrorCode::NotFound));
    Ok(())
}

async fn a_10000_file_tree_round_trips_through_archives(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;
    let sandbox = client.sandbox(&id);

    let summary = sandbox
        .upload_archive("/workspace", Full::new(Bytes::from(tree_tar(10_000)?)))
        .await?;
    assert!(summary.entries >= 10_000, "{summary:?}");
    assert_eq!(
        run(&sandbox, "find /workspace/tree -type f | wc -l")
            .await?
            .trim(),
        "10000"
    );

    let downloaded = sandbox
        .download_archive("/workspace/tree")
        .await?
        .bytes()
        .await?;
    let mut archive = tar::Archive::new(downloaded.as_ref());
    let mut files = 0;
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type().is_file() {
            let path = entry.path()?.to_string_lossy().into_owned();
            let mut content = String::new();
            entry.read_to_string(&mut content)?;
            let number = path
                .rsplit_once("/f")
                .and_then(|(_, name)| name.strip_suffix(".txt"))
                .context("file name")?;
            assert!(path.starts_with("tree/"), "{path}");
            assert_eq!(content, format!("file {number}\n"));
            files += 1;
        }
    }
    assert_eq!(files, 10_000);
    Ok(())
}

/// `/` downloads whole: the sandbox's own files, with the kernel's
/// filesystems mounted on `/proc`, `/sys` and `/dev` archived as empty
/// directories (a read error in `/proc` used to cut the stream mid-way).
async fn the_root_downloads_within_its_own_filesystem(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;
    let sandbox = client.sandbox(&id);
    run(&sandbox, "echo marker > /workspace/marker.txt").await?;

    let downloaded = sandbox.download_archive("/").await?.bytes().await?;
    let mut names = Vec::new();
    for entry in tar::Archive::new(downloaded.as_ref()).entries()? {
        let name = entry?.path()?.to_string_lossy().into_owned();
        names.push(name.trim_start_matches("./").to_owned());
    }
    for present in ["etc/passwd", "usr/bin/git", "workspace/marker.txt", "proc"] {
        assert!(
            names
                .iter()
                .any(|name| name.trim_end_matches('/') == present),
            "{present} missing from {} entries",
            names.len()
        );
    }
    let inside_proc: Vec<&String> = names
        .iter()
        .filter(|name| name.starts_with("proc/") && name.len() > "proc/".len())
        .collect();
    assert!(
        inside_proc.is_empty(),
        "{:?}",
        &inside_proc[..inside_proc.len().min(5)]
    );
    Ok(())
}

/// A file entry with a raw name: the tar crate refuses to build `..` or
/// absolute names itself, which is exactly what an attacker would send.
fn raw_file(builder: &mut tar::Builder<Vec<u8>>, name: &str) -> Result<()> {
    let mut header = tar::Header::new_old();
    let content = b"pwned\n";
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    let raw = &mut header.as_old_mut().name;
    raw[..name.len()].copy_from_slice(name.as_bytes());
    header.set_cksum();
    builder.append(&header, &content[..])?;
    Ok(())
}

fn symlink(builder: &mut tar::Builder<Vec<u8>>, name: &str, target: &str) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    header.set_mode(0o777);
    builder.append_link(&mut header, name, target)?;
    Ok(())
}

fn hostile_tar() -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let file = raw_file;
    let link = symlink;
    file(&mut builder, "../escaped-parent")?;
    file(&mut builder, "/escaped-absolute")?;
    link(&mut builder, "etc-link", "/etc")?;
    file(&mut builder, "etc-link/escaped-via-link")?;
    link(&mut builder, "up-link", "../..")?;
    file(&mut builder, "up-link/escaped-via-up-link")?;
    Ok(builder.into_inner()?)
}

async fn hostile_archives_stay_inside_the_target_directory(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;
    let sandbox = client.sandbox(&id);
    sandbox.mkdir("/workspace/target/inner").await?;

    let outcome = sandbox
        .upload_archive(
            "/workspace/target/inner",
            Full::new(Bytes::from(hostile_tar()?)),
        )
        .await;
    if let Err(err) = &outcome {
        assert_eq!(api_code(err), Some(ErrorCode::InvalidRequest), "{err}");
    }
    let escaped = run(
        &sandbox,
        "find / -xdev \\( -name 'escaped-*' \\) -not -path '/workspace/target/inner/*' 2>/dev/null",
    )
    .await?;
    assert_eq!(escaped, "", "written outside the target dir");
    assert_eq!(
        run(&sandbox, "ls /etc/escaped-via-link 2>/dev/null || true").await?,
        ""
    );
    Ok(())
}

async fn exec_defaults_and_users(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;
    let sandbox = client.sandbox(&id);

    let env = run(&sandbox, "echo $HOME; echo $LANG; echo $PATH; pwd").await?;
    let lines: Vec<&str> = env.lines().collect();
    assert_eq!(lines[0], "/root");
    assert_eq!(lines[1], "C.UTF-8");
    assert!(lines[2].contains("/usr/bin"), "{}", lines[2]);
    assert_eq!(lines[3], "/workspace");

    let nobody = sandbox
        .exec(&ExecRequest {
            user: Some("nobody".into()),
            ..ExecRequest::shell("id -u; id -g")
        })
        .await?;
    assert_eq!(nobody.stdout, "65534\n65534\n", "{}", nobody.stderr);
    let numeric = sandbox
        .exec(&ExecRequest {
            user: Some("1000:1000".into()),
            ..ExecRequest::argv(["id", "-u"])
        })
        .await?;
    assert_eq!(numeric.stdout, "1000\n", "{}", numeric.stderr);
    let err = sandbox
        .exec(&ExecRequest {
            user: Some("no-such-user".into()),
            ..ExecRequest::argv(["true"])
        })
        .await
        .expect_err("unknown user");
    assert_eq!(api_code(&err), Some(ErrorCode::InvalidRequest));
    Ok(())
}

sbx_tests::on_every_runtime!(
    streamed_exec_delivers_events_in_order_while_the_command_runs,
    a_client_that_disconnects_kills_the_streamed_command,
    fifty_concurrent_execs_on_one_sandbox,
    a_gigabyte_of_output_keeps_agent_and_orchestrator_memory_bounded,
    background_process_logs_stdin_signals_and_wait,
    a_100_mib_file_round_trips_byte_identical,
    file_operations_and_their_errors,
    a_10000_file_tree_round_trips_through_archives,
    hostile_archives_stay_inside_the_target_directory,
    the_root_downloads_within_its_own_filesystem,
    exec_defaults_and_users,
);

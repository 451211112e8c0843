//! End to end, on both runtimes: a sandbox's files survive every lifecycle
//! operation, interleaved and repeated; a server killed in the middle of
//! one leaves a consistent sandbox and no orphan; idleness is what the
//! README says; the storage pool is never promised past its size.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use sbx_api::client::{Client, ClientError};
use sbx_api::{
    CreateSandboxRequest, ErrorCode, ExecRequest, LifecycleRequest, OnTimeout, SandboxState,
    StartProcessRequest,
};
use sbx_tests::{attached_disks, Engine, Server};
use std::collections::BTreeSet;
use std::time::Duration;

sbx_tests::on_every_runtime!(
    a_death_is_reported_without_anyone_asking,
    // hosts_only: stop, pause, snapshots, host disks and tenant cgroups,
    // none of which the kubernetes runtime has (tests/kubernetes.rs).
    ; hosts_only:
    a_full_disk_does_not_fail_its_neighbours_writes,
    a_sandbox_the_oom_killer_ends_says_oom,
    a_server_killed_mid_operation_leaves_a_consistent_sandbox,
    idle_means_no_call_and_no_stream_not_no_process,
    the_pool_is_never_promised_past_its_size,
    nothing_is_lost_across_every_operation_many_times_over,
);

/// The error code of a call the server refused.
fn refused<T: std::fmt::Debug>(answer: std::result::Result<T, ClientError>) -> ErrorCode {
    match answer {
        Err(err) => err
            .api_error()
            .map(|body| body.error_code)
            .expect("an API error"),
        Ok(answer) => panic!("expected a refusal, got {answer:?}"),
    }
}

/// Creates a sandbox with `disk_mb`, or from `snapshot`.
async fn create(
    client: &Client,
    disk_mb: Option<u64>,
    snapshot: Option<&str>,
) -> std::result::Result<String, ClientError> {
    let request = CreateSandboxRequest {
        disk_mb,
        snapshot: snapshot.map(str::to_owned),
        ..CreateSandboxRequest::default()
    };
    Ok(client.create_sandbox(&request).await?.id)
}

async fn sh(client: &Client, id: &str, script: &str) -> Result<String> {
    let request = ExecRequest::argv(["sh", "-c", script]);
    let result = tokio::time::timeout(Duration::from_secs(60), client.exec(id, &request))
        .await
        .with_context(|| format!("{id} did not answer: {script}"))??;
    if result.exit_code != 0 {
        bail!("{script}: {result:?}");
    }
    Ok(result.stdout)
}

/// Writes a new generation of files: large and small, fsynced and not, a
/// git repository with uncommitted changes, and files removed and renamed.
const WRITE: &str = r#"
set -e
mkdir -p /workspace/data /workspace/repo
dd if=/dev/urandom of=/workspace/data/big-$g bs=1M count=16 conv=fsync status=none
head -c 3000 /dev/urandom > /workspace/data/small-$g
echo "line $g" >> /workspace/data/log
sync /workspace/data/log
cd /workspace/repo
[ -d .git ] || { git init -q . && git config user.email t@x && git config user.name t; }
echo "committed $g" > c-$g && git add c-$g && git commit -qm "gen $g"
echo "uncommitted $g" >> c-$g
echo "untracked $g" > u-$g
rm -f /workspace/data/small-$((g - 1))
[ ! -e /workspace/data/big-$((g - 2)) ] || mv /workspace/data/big-$((g - 2)) /workspace/data/renamed-$g
"#;

/// A manifest of everything written: every file's checksum, and the
/// repository's status and log.
const MANIFEST: &str = r#"
cd /workspace && find data repo -path repo/.git -prune -o -type f -print | sort | xargs md5sum
cd /workspace/repo && git status --porcelain && git log --format=%s
"#;

async fn write_generation(client: &Client, id: &str, generation: u32) -> Result<String> {
    sh(client, id, &format!("g={generation}; {WRITE}")).await?;
    sh(client, id, MANIFEST).await
}

async fn nothing_is_lost_across_every_operation_many_times_over(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    // The tests' data dirs are on the btrfs pool: copies are snapshots of
    // the disks' subvolumes.
    assert_eq!(client.info().await?.storage.snapshot_method, "subvolume");
    let id = create(&client, Some(1024), None).await?;
    let mut expected = write_generation(&client, &id, 1).await?;
    let mut kept = Vec::new();
    for round in 0..3u32 {
        let snapshot = format!("round-{engine:?}-{round}");
        let steps = ["pause", "stop", "snapshot", "fork", "restore"];
        for step in steps {
            match step {
                "pause" => {
                    assert_eq!(client.pause_sandbox(&id).await?.state, SandboxState::Paused);
                    assert_eq!(
                        client.resume_sandbox(&id).await?.state,
                        SandboxState::Running
                    );
                }
                "stop" => {
                    assert_eq!(client.stop_sandbox(&id).await?.state, SandboxState::Stopped);
                    assert!(
                        !attached_disks(server.data_dir())?.contains(&id),
                        "a stopped sandbox's disk is not mounted"
                    );
                    assert_eq!(
                        client.start_sandbox(&id).await?.state,
                        SandboxState::Running
                    );
                }
                "snapshot" => {
                    let taken = client.create_snapshot(&id, &snapshot).await?;
                    assert_eq!(taken.disk_mb, 1024);
                    let copy = create(&client, None, Some(&snapshot)).await?;
                    assert_eq!(sh(&client, &copy, MANIFEST).await?, expected);
                    client.delete_sandbox(&copy).await?;
                    kept.push((snapshot.clone(), expected.clone()));
                }
                "fork" => {
                    let forks = client.fork_sandbox(&id, 2).await?;
                    assert_eq!(forks.len(), 2);
                    for fork in forks {
                        let fork = fork.sandbox.context("every fork succeeds")?;
                        assert_ne!(fork.sandbox.id, id);
                        assert_eq!(sh(&client, &fork.sandbox.id, MANIFEST).await?, expected);
                        // A fork is a copy: its writes are its own.
                        sh(&client, &fork.sandbox.id, "echo fork > /workspace/data/log").await?;
                        client.delete_sandbox(&fork.sandbox.id).await?;
                    }
                }
                _ => {
                    // Move on, then roll back to the round's snapshot.
                    write_generation(&client, &id, 100 + round).await?;
                    let restored = client.restore_sandbox(&id, &snapshot).await?;
                    assert_eq!(restored.state, SandboxState::Running);
                    assert_eq!(restored.id, id);
                }
            }
            assert_eq!(
                sh(&client, &id, MANIFEST).await?,
                expected,
                "after {step} in round {round}"
            );
        }
        expected = write_generation(&client, &id, round + 2).await?;
    }
    // Every snapshot still holds what it was taken of, and a stopped
    // sandbox restores too (and stays stopped).
    client.stop_sandbox(&id).await?;
    let (first, first_manifest) = &kept[0];
    let restored = client.restore_sandbox(&id, first).await?;
    assert_eq!(restored.state, SandboxState::Stopped);
    client.start_sandbox(&id).await?;
    assert_eq!(&sh(&client, &id, MANIFEST).await?, first_manifest);
    for (name, _) in &kept {
        client.delete_snapshot(name).await?;
    }
    Ok(())
}

/// What the host holds for a data dir: sandbox directories, containers,
/// mounted disks, snapshot files.
#[derive(Debug, PartialEq, Eq)]
struct Held {
    dirs: BTreeSet<String>,
    containers: BTreeSet<String>,
    disks: BTreeSet<String>,
    snapshots: BTreeSet<String>,
    /// Sandboxes (of those known) that have cgroups; youki only, where sbx
    /// makes and removes them.
    cgroups: BTreeSet<String>,
}

/// What the host holds for `server`; `known` are sandbox ids the test has
/// seen, which may have no directory left.
fn held(engine: Engine, server: &Server, known: &[&str]) -> Result<Held> {
    let data_dir = server.data_dir();
    let dirs: BTreeSet<String> = std::fs::read_dir(data_dir.join("sandboxes"))?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    let everything = sbx_tests::traces_on_the_host(engine, data_dir)?;
    let containers = everything
        .difference(&dirs)
        .cloned()
        .collect::<BTreeSet<_>>();
    // A container whose directory exists is in both sets: ask the runtime.
    let mut containers = containers;
    for id in &dirs {
        if sbx_tests::agent_pid(engine, id).is_some() {
            containers.insert(id.clone());
        }
    }
    Ok(Held {
        containers,
        disks: attached_disks(data_dir)?,
        snapshots: std::fs::read_dir(data_dir.join("snapshots"))?
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect(),
        cgroups: dirs
            .iter()
            .map(String::as_str)
            .chain(known.iter().copied())
            .filter(|id| !sbx_tests::youki_cgroups(id).is_empty())
            .map(str::to_owned)
            .collect(),
        dirs,
    })
}

async fn a_server_killed_mid_operation_leaves_a_consistent_sandbox(engine: Engine) -> Result<()> {
    for operation in ["stop", "start", "pause", "snapshot", "fork", "restore"] {
        let mut first = Server::start(engine).await?;
        let client = first.client();
        let id = create(&client, Some(256), None).await?;
        let expected = write_generation(&client, &id, 1).await?;
        client.create_snapshot(&id, "base").await?;
        if operation == "start" {
            client.stop_sandbox(&id).await?;
        }
        let (racing, target) = (client.clone(), id.clone());
        let request = tokio::spawn(async move {
            match operation {
                "stop" => racing.stop_sandbox(&target).await.map(drop),
                "start" => racing.start_sandbox(&target).await.map(drop),
                "pause" => racing.pause_sandbox(&target).await.map(drop),
                "snapshot" => racing.create_snapshot(&target, "mid").await.map(drop),
                "fork" => racing.fork_sandbox(&target, 3).await.map(drop),
                _ => racing.restore_sandbox(&target, "base").await.map(drop),
            }
        });
        // Somewhere in the middle: the operations take 10–200 ms.
        tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 40)).await;
        let data_dir = first
            .take_data_dir()
            .context("the harness owns a temp dir")?;
        first.kill();
        let _ = request.await;

        let second = Server::start_on(engine, data_dir.path()).await?;
        let client = second.client();
        let sandboxes = client.list_sandboxes().await?;
        for sandbox in &sandboxes {
            assert!(
                matches!(
                    sandbox.state,
                    SandboxState::Running | SandboxState::Paused | SandboxState::Stopped
                ),
                "{operation}: {sandbox:?}\nthe servers' log:\n{}",
                second.log()
            );
        }
        let snapshots = client.list_snapshots().await?;
        let names: BTreeSet<String> = snapshots.iter().map(|s| s.name.clone()).collect();
        let ids: BTreeSet<String> = sandboxes.iter().map(|s| s.id.clone()).collect();
        let running: BTreeSet<String> = sandboxes
            .iter()
            .filter(|s| s.state != SandboxState::Stopped)
            .map(|s| s.id.clone())
            .collect();
        let host = held(engine, &second, &[&id])?;
        assert_eq!(
            host,
            Held {
                dirs: ids.clone(),
                containers: running.clone(),
                disks: running.clone(),
                snapshots: names.clone(),
                cgroups: match engine {
                    Engine::Youki => running,
                    Engine::Docker | Engine::Kubernetes => BTreeSet::new(),
                },
            },
            "{operation}: what the host holds is what the store says; the servers' log:\n{}",
            second.log()
        );
        // Every sandbox is usable, and the original holds its files (or,
        // restored, the snapshot's: the same ones here).
        for sandbox in &sandboxes {
            match sandbox.state {
                SandboxState::Stopped => drop(client.start_sandbox(&sandbox.id).await?),
                SandboxState::Paused => drop(client.resume_sandbox(&sandbox.id).await?),
                _ => {}
            }
            assert_eq!(
                sh(&client, &sandbox.id, MANIFEST).await?,
                expected,
                "{operation}"
            );
        }
        assert!(
            ids.contains(&id),
            "{operation}: the sandbox itself survives"
        );
        for name in names {
            client.delete_snapshot(&name).await?;
        }
    }
    Ok(())
}

async fn idle_means_no_call_and_no_stream_not_no_process(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let idle = CreateSandboxRequest {
        lifecycle: Some(LifecycleRequest {
            idle_timeout_s: Some(2),
            on_timeout: Some(OnTimeout::Stop),
            auto_resume: Some(false),
            ..LifecycleRequest::default()
        }),
        ..CreateSandboxRequest::default()
    };
    let busy_in_background = client.create_sandbox(&idle).await?.id;
    let followed = client.create_sandbox(&idle).await?.id;
    let mut follows = Vec::new();
    for id in [&busy_in_background, &followed] {
        let process = client
            .sandbox(id)
            .start_process(&StartProcessRequest {
                shell: Some("while :; do echo tick; sleep 0.2; done".into()),
                ..StartProcessRequest::default()
            })
            .await?;
        follows.push(process.pid);
    }
    // A log follow open on one of them: a stream in progress.
    let stream = client
        .sandbox(&followed)
        .process_logs(
            follows[1],
            &sbx_api::LogsQuery {
                tail: None,
                follow: true,
            },
        )
        .await?;
    let stopped = sbx_tests::eventually(Duration::from_secs(15), || async {
        matches!(client.get_sandbox(&busy_in_background).await,
            Ok(s) if s.state == SandboxState::Stopped)
    })
    .await;
    assert!(stopped, "a background process alone does not keep it awake");
    let awake = client.get_sandbox(&followed).await?;
    assert_eq!(
        awake.state,
        SandboxState::Running,
        "the follow keeps it awake"
    );
    assert_eq!(awake.idle_since, None, "in use");
    drop(stream);
    let stopped = sbx_tests::eventually(Duration::from_secs(15), || async {
        matches!(client.get_sandbox(&followed).await,
            Ok(s) if s.state == SandboxState::Stopped)
    })
    .await;
    assert!(stopped, "idle once the stream ends");
    let events = client
        .send(
            Method::GET,
            &format!("/v1/events?sandbox={followed}"),
            None,
            Bytes::new(),
        )
        .await?
        .into_body()
        .collect()
        .await?
        .to_bytes();
    let events = String::from_utf8_lossy(&events);
    assert!(events.contains(r#""kind":"expiring""#), "{events}");
    assert!(
        events.contains(r#""kind":"stopped","reason":"idle""#),
        "{events}"
    );
    Ok(())
}

async fn the_pool_is_never_promised_past_its_size(engine: Engine) -> Result<()> {
    // A capacity of a few hundred MiB of the real pool.
    let pool = pool_bytes(sbx_tests::temp_data_dir()?.path())?;
    let ratio = (700u64 << 20) as f64 / pool as f64;
    let ratio = format!("{ratio:.6}");
    let server = Server::start_with(engine, &["--disk-overcommit", &ratio]).await?;
    let client = server.client();
    let first = create(&client, Some(400), None).await?;
    let too_much = create(&client, Some(400), None).await;
    assert_eq!(refused(too_much), ErrorCode::InsufficientStorage);
    let fork = client.fork_sandbox(&first, 1).await;
    assert_eq!(refused(fork), ErrorCode::InsufficientStorage);
    // Stopped, it holds only what it wrote: room for another.
    client.stop_sandbox(&first).await?;
    let second = create(&client, Some(400), None).await?;
    let start = client.start_sandbox(&first).await;
    assert_eq!(refused(start), ErrorCode::InsufficientStorage);
    let info = client.info().await?;
    assert!(
        info.storage.promised_bytes >= 400 << 20,
        "{:?}",
        info.storage
    );
    let metrics = client.metrics().await?;
    assert!(metrics.contains("sbx_storage_promised_bytes "), "{metrics}");
    client.delete_sandbox(&second).await?;
    client.start_sandbox(&first).await?;
    Ok(())
}

/// The size of the filesystem `path` is on: the storage pool.
fn pool_bytes(path: &std::path::Path) -> Result<u64> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a NUL-terminated path, and room for the struct statvfs fills.
    if unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        bail!("statvfs: {}", std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let stat = unsafe { stat.assume_init() };
    Ok(stat.f_blocks * stat.f_frsize)
}

async fn a_full_disk_does_not_fail_its_neighbours_writes(engine: Engine) -> Result<()> {
    let server = Server::start_with(engine, &["--disk-overcommit", "1"]).await?;
    let client = server.client();
    let filler = create(&client, Some(128), None).await?;
    let neighbour = create(&client, Some(128), None).await?;
    let fill = {
        let client = client.clone();
        let filler = filler.clone();
        tokio::spawn(async move {
            client
                .exec(
                    &filler,
                    &ExecRequest::argv([
                        "sh",
                        "-c",
                        "dd if=/dev/zero of=/workspace/fill bs=1M count=400 conv=fsync 2>&1; true",
                    ]),
                )
                .await
        })
    };
    let written = sh(
        &client,
        &neighbour,
        "for i in 1 2 3 4 5 6 7 8; do dd if=/dev/urandom of=/workspace/n-$i bs=1M count=8 \
         conv=fsync status=none || exit 1; done; cat /workspace/n-* | md5sum",
    )
    .await?;
    let filled = fill.await??;
    assert!(
        filled.stdout.contains("No space left on device"),
        "the filler meets its own limit: {filled:?}"
    );
    assert!(!filled.stdout.contains("Input/output error"), "{filled:?}");
    assert_eq!(
        sh(&client, &neighbour, "cat /workspace/n-* | md5sum").await?,
        written,
        "the neighbour's bytes are whole"
    );
    Ok(())
}

/// The OOM killer takes the agent itself: a hog moved (from the host) out
/// of the tenant cgroup into the sandbox's own, where the agent lives,
/// fills it, and the agent is made the victim. (A sandbox's own commands
/// cannot do this: the tenant cgroup holds them, and its kills are its
/// own; see the breakout suite.) The sandbox then ends as `oom`, where an
/// agent killed otherwise ends as `agent died`.
async fn a_sandbox_the_oom_killer_ends_says_oom(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let id = client
        .create_sandbox(&CreateSandboxRequest {
            memory_mb: Some(64),
            ..CreateSandboxRequest::default()
        })
        .await?
        .id;
    let tenant = sbx_tests::tenant_cgroup(engine, &id, "memory").context("tenant cgroup")?;
    let own = tenant.parent().context("the sandbox's cgroup")?.to_owned();
    let agent = sbx_tests::agent_pid(engine, &id).context("the agent")?;
    // The hog waits until it is moved, then grows without bound.
    sh(
        &client,
        &id,
        "(while [ ! -e /tmp/moved ]; do sleep 0.05; done; exec tail /dev/zero) \
         >/dev/null 2>&1 &",
    )
    .await?;
    let hogs = std::fs::read_to_string(tenant.join("cgroup.procs"))?;
    ensure_some(&hogs, "the hog in the tenant cgroup")?;
    for pid in hogs.lines() {
        // A `sleep` of the wait loop may be gone already.
        let _ = std::fs::write(format!("/proc/{pid}/oom_score_adj"), "-1000");
        let _ = std::fs::write(own.join("cgroup.procs"), pid);
    }
    std::fs::write(format!("/proc/{agent}/oom_score_adj"), "1000")?;
    sh(&client, &id, "touch /tmp/moved").await?;

    let (ended, sandbox) = failed(&client, &id).await?;
    assert!(ended, "the agent was never killed: {sandbox:?}");
    assert_eq!(sandbox.ended_reason.as_deref(), Some("oom"), "{sandbox:?}");
    client.delete_sandbox(&id).await?;

    // An agent killed by a signal is not an OOM.
    let id = client
        .create_sandbox(&CreateSandboxRequest::default())
        .await?
        .id;
    kill_agent(engine, &id)?;
    let (ended, sandbox) = failed(&client, &id).await?;
    assert!(ended, "{sandbox:?}");
    assert_eq!(sandbox.ended_reason.as_deref(), Some("agent died"));
    client.delete_sandbox(&id).await?;
    Ok(())
}

/// Whether `id` became `failed` within 30 s, and the sandbox as it is.
async fn failed(client: &Client, id: &str) -> Result<(bool, sbx_api::Sandbox)> {
    let ended = sbx_tests::eventually(Duration::from_secs(30), || async {
        client
            .get_sandbox(id)
            .await
            .is_ok_and(|s| s.state == SandboxState::Failed)
    })
    .await;
    Ok((ended, client.get_sandbox(id).await?))
}

/// SIGKILLs the sandbox's agent from the host, as a crash would.
fn kill_agent(engine: Engine, id: &str) -> Result<()> {
    let agent = sbx_tests::agent_pid(engine, id).context("the agent")?;
    // SAFETY: a plain kill(2) of a pid just looked up.
    unsafe { libc::kill(agent as i32, libc::SIGKILL) };
    Ok(())
}

fn ensure_some(text: &str, what: &str) -> Result<()> {
    if text.trim().is_empty() {
        bail!("no {what}");
    }
    Ok(())
}

/// A follower of a sandbox's events hears of its death when it happens,
/// though nothing calls the sandbox: the server watches every init.
async fn a_death_is_reported_without_anyone_asking(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let id = client
        .create_sandbox(&CreateSandboxRequest::default())
        .await?
        .id;
    let follow = sbx_api::SandboxEventsQuery {
        since: None,
        follow: true,
    };
    let mut events = client.sandbox_events(&id, &follow).await?;
    kill_agent(engine, &id)?;
    let failed = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = events.next().await? {
            if event.kind == sbx_api::EventKind::Failed {
                return Ok::<_, ClientError>(Some(event));
            }
        }
        Ok(None)
    })
    .await
    .context("no `failed` event within 30 s")??
    .context("the stream ended without a `failed` event")?;
    assert_eq!(failed.reason.as_deref(), Some("agent died"), "{failed:?}");
    let sandbox = client.get_sandbox(&id).await?;
    assert_eq!(sandbox.state, SandboxState::Failed);
    client.delete_sandbox(&id).await?;
    Ok(())
}

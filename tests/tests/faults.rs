//! End to end: what happens when parts die underneath a running system.

use anyhow::{Context, Result};
use sbx_api::{CreateSandboxRequest, ErrorCode, ExecRequest, SandboxState};
use sbx_tests::{agent_pid, processes_in_cgroup, traces_on_the_host, Engine, Server};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

async fn a_killed_agent_leaves_a_failed_sandbox_not_a_hung_one(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;
    let agent = agent_pid(engine, &id).context("agent pid")?;
    // SAFETY: kill(2) on the pid of the agent this test's sandbox runs.
    assert_eq!(unsafe { libc::kill(agent as i32, libc::SIGKILL) }, 0);

    let gone = sbx_tests::eventually(Duration::from_secs(10), || async {
        matches!(client.get_sandbox(&id).await, Ok(s) if s.state == SandboxState::Failed)
    })
    .await;
    assert!(gone, "the sandbox is reported failed");
    let err = client
        .exec(&id, &ExecRequest::argv(["true"]))
        .await
        .expect_err("no agent");
    assert_eq!(
        err.api_error().map(|body| body.error_code),
        Some(ErrorCode::Conflict),
        "{err}"
    );
    let listed = client.list_sandboxes().await?;
    assert!(listed
        .iter()
        .any(|s| s.id == id && s.state == SandboxState::Failed));
    client.delete_sandbox(&id).await?;
    assert!(!server.data_dir().join("sandboxes").join(&id).exists());
    Ok(())
}

async fn a_server_killed_during_creates_recovers_cleanly(engine: Engine) -> Result<()> {
    let mut first = Server::start(engine).await?;
    let client = first.client();
    let mut creates = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let client = client.clone();
        creates.spawn(async move {
            client
                .create_sandbox(&CreateSandboxRequest::default())
                .await
        });
    }
    // Kill it once creation is under way, with some done and some not.
    let sandboxes = first.data_dir().join("sandboxes");
    let started = sbx_tests::eventually(Duration::from_secs(30), || async {
        std::fs::read_dir(&sandboxes).map_or(0, |dir| dir.count()) >= 3
    })
    .await;
    assert!(started);
    let data_dir = first.take_data_dir().expect("the harness owns a temp dir");
    first.kill();
    let mut answered = 0;
    while let Some(result) = creates.join_next().await {
        if result?.is_ok() {
            answered += 1;
        }
    }
    assert!(answered < 20, "the kill came before all creates finished");

    let second = Server::start_on(engine, data_dir.path()).await?;
    let client = second.client();
    let listed = client.list_sandboxes().await?;
    for sandbox in &listed {
        assert_eq!(sandbox.state, SandboxState::Running, "{sandbox:?}");
        let echo = client
            .exec(&sandbox.id, &ExecRequest::argv(["echo", "usable"]))
            .await?;
        assert_eq!(echo.stdout, "usable\n");
    }
    let known: BTreeSet<String> = listed.iter().map(|s| s.id.clone()).collect();
    assert_eq!(
        traces_on_the_host(engine, data_dir.path())?,
        known,
        "no orphan container or directory"
    );
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    let leftover_mounts = mounts
        .lines()
        .filter(|line| line.contains(&data_dir.path().display().to_string()))
        .count();
    assert_eq!(
        leftover_mounts, 0,
        "a sandbox's mounts live in its own mount namespace, never in the host's"
    );
    // Docker's disks are mounted in the engine's data root, but every
    // disk's image lives in its sandbox's directory.
    assert_eq!(
        sbx_tests::attached_disks(data_dir.path())?,
        known,
        "a loop device per live sandbox's disk"
    );
    for id in &known {
        let marker = engine.cgroup_marker(id).context("container")?;
        client.delete_sandbox(id).await?;
        assert!(processes_in_cgroup(&marker).is_empty());
    }
    // Unmounting is lazy: a device goes once the kernel lets go of it.
    let disks_gone = sbx_tests::eventually(Duration::from_secs(10), || async {
        sbx_tests::attached_disks(data_dir.path()).is_ok_and(|ids| ids.is_empty())
    })
    .await;
    assert!(disks_gone, "deleting frees every disk's loop device");
    Ok(())
}

sbx_tests::on_every_runtime!(
    a_killed_agent_leaves_a_failed_sandbox_not_a_hung_one,
    a_server_killed_during_creates_recovers_cleanly,
);

/// The server's youki helpers: its children running `sbx __youki-helper`.
fn youki_helpers(server_pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parent = format!("PPid:\t{server_pid}\n");
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .is_ok_and(|status| status.contains(&parent))
                && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                    cmdline
                        .split(|&byte| byte == 0)
                        .any(|arg| arg == b"__youki-helper")
                })
        })
        .collect()
}

/// Whether `pid` is a live process, not a zombie.
fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}

/// The youki helper (the process that runs libcontainer) is SIGKILLed under
/// a running server: the next create works, on a new helper; the sandbox
/// the dead helper started (its init now the host init's child) and the new
/// one both serve exec; deleting both leaves nothing behind. Youki only:
/// Docker has no helper.
#[tokio::test]
async fn youki_a_killed_helper_is_replaced() -> Result<()> {
    let engine = Engine::Youki;
    let server = Server::start(engine).await?;
    let client = server.client();
    let server_pid = server.pid().context("server pid")?;
    let old = server.new_sandbox().await?;
    let helpers = youki_helpers(server_pid);
    let [dead] = helpers[..] else {
        anyhow::bail!("one helper expected, found {helpers:?}");
    };
    // SAFETY: kill(2) on the helper of the server this test started.
    assert_eq!(unsafe { libc::kill(dead as i32, libc::SIGKILL) }, 0);
    let died = sbx_tests::eventually(Duration::from_secs(10), || async { !is_alive(dead) }).await;
    assert!(died, "the helper dies of SIGKILL");

    let new = server
        .new_sandbox()
        .await
        .with_context(|| format!("a create after the helper died; log: {}", server.log()))?;
    let helpers = youki_helpers(server_pid);
    assert_eq!(helpers.len(), 1, "one helper again: {helpers:?}");
    assert_ne!(helpers[0], dead, "a new helper");
    assert!(
        !Path::new(&format!("/proc/{dead}")).exists(),
        "the dead helper was reaped"
    );
    for id in [&old, &new] {
        let echo = client
            .exec(id, &ExecRequest::argv(["echo", "alive"]))
            .await
            .with_context(|| format!("exec in {id}"))?;
        assert_eq!(echo.stdout, "alive\n", "{id}");
    }

    for id in [&old, &new] {
        let marker = engine.cgroup_marker(id).context("cgroup marker")?;
        client
            .delete_sandbox(id)
            .await
            .with_context(|| format!("delete {id}; log: {}", server.log()))?;
        assert!(
            processes_in_cgroup(&marker).is_empty(),
            "{id} left processes"
        );
    }
    assert_eq!(
        traces_on_the_host(engine, server.data_dir())?,
        BTreeSet::new(),
        "no container or directory left"
    );
    let data_dir = server.data_dir().display().to_string();
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    assert!(
        !mounts.lines().any(|line| line.contains(&data_dir)),
        "no mount left in the host's table"
    );
    let disks_gone = sbx_tests::eventually(Duration::from_secs(10), || async {
        sbx_tests::attached_disks(server.data_dir()).is_ok_and(|ids| ids.is_empty())
    })
    .await;
    assert!(disks_gone, "deleting frees every disk's loop device");
    Ok(())
}

/// A labelled container that no record owns appears while the server runs
/// (as when the engine finishes a create sent by a server that died): the
/// periodic sweep removes it, and leaves the real sandbox alone. Docker
/// only: it is the engine that can complete a create on its own; with youki
/// the create runs inside the server and dies with it.
#[tokio::test]
async fn docker_orphans_appearing_while_serving_are_swept() -> Result<()> {
    let server = Server::start_with(Engine::Docker, &["--orphan-sweep-secs", "1"]).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;
    let instance = std::fs::read_to_string(server.data_dir().join("instance-id"))?;
    let image = docker(&[
        "inspect",
        "--format",
        "{{.Config.Image}}",
        &format!("sbx-{id}"),
    ])?;
    let orphan = format!("{:016x}", rand::random::<u64>());
    docker(&[
        "create",
        "--network",
        "none",
        "--name",
        &format!("sbx-{orphan}"),
        "--label",
        "sbx.managed=true",
        "--label",
        &format!("sbx.instance={}", instance.trim()),
        "--label",
        &format!("sbx.id={orphan}"),
        &image,
        "true",
    ])?;
    assert!(sbx_tests::docker_container_id(&orphan).is_some());
    let swept = sbx_tests::eventually(Duration::from_secs(20), || async {
        sbx_tests::docker_container_id(&orphan).is_none()
    })
    .await;
    assert!(swept, "the orphan is still there; log: {}", server.log());
    let alive = client
        .exec(&id, &ExecRequest::argv(["echo", "alive"]))
        .await?;
    assert_eq!(alive.stdout, "alive\n");
    Ok(())
}

fn docker(args: &[&str]) -> Result<String> {
    let output = std::process::Command::new("docker").args(args).output()?;
    anyhow::ensure!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

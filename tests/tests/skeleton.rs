//! End to end: a real `sbx serve` (youki runtime) creating real sandboxes
//! from the base image, driven through the Rust client.

use anyhow::{Context, Result};
use sbx_api::client::ClientError;
use sbx_api::{CreateSandboxRequest, ErrorCode, ExecRequest, SandboxState};
use sbx_tests::{processes_in_cgroup, Engine, Server};
use std::path::Path;
use std::time::{Duration, Instant};

fn api_code(err: &ClientError) -> Option<ErrorCode> {
    err.api_error().map(|body| body.error_code)
}

async fn echo_git_python_and_exit_codes(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;

    let hi = client.exec(&id, &ExecRequest::argv(["echo", "hi"])).await?;
    assert_eq!(hi.stdout, "hi\n");
    assert_eq!(hi.exit_code, 0);
    assert!(!hi.timed_out && !hi.truncated);

    let piped = client
        .exec(&id, &ExecRequest::shell("echo hi | tr a-z A-Z"))
        .await?;
    assert_eq!(piped.stdout, "HI\n");

    let git = client
        .exec(&id, &ExecRequest::argv(["git", "--version"]))
        .await?;
    assert_eq!(git.exit_code, 0, "stderr: {}", git.stderr);
    assert!(git.stdout.starts_with("git version"), "{}", git.stdout);

    let python = client
        .exec(&id, &ExecRequest::argv(["python3", "-c", "print(1+1)"]))
        .await?;
    assert_eq!(python.stdout, "2\n", "stderr: {}", python.stderr);

    let failing = client
        .exec(&id, &ExecRequest::shell("echo oops >&2; exit 3"))
        .await?;
    assert_eq!(failing.exit_code, 3);
    assert_eq!(failing.stderr, "oops\n");

    let cwd = client.exec(&id, &ExecRequest::argv(["pwd"])).await?;
    assert_eq!(cwd.stdout, "/workspace\n");
    Ok(())
}

async fn create_answers_201_with_the_sandbox_and_applies_limits_and_env(
    engine: Engine,
) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let body = br#"{"image":"base","memory_mb":256,"cpus":0.5,"env":{"GREETING":"hello"},"labels":{"team":"e2e"}}"#;
    let response = client
        .send(
            http::Method::POST,
            "/v1/sandboxes",
            Some("application/json"),
            bytes::Bytes::from_static(body),
        )
        .await?;
    assert_eq!(response.status(), 201);
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await?
        .to_bytes();
    let sandbox: serde_json::Value = serde_json::from_slice(&bytes)?;
    let id = sandbox["id"].as_str().expect("id is a string").to_owned();
    assert_eq!(sandbox["state"], "running");
    assert_eq!(sandbox["image"], "base");
    assert_eq!(sandbox["labels"]["team"], "e2e");
    assert!(
        chrono::DateTime::parse_from_rfc3339(sandbox["created_at"].as_str().expect("string"))
            .is_ok()
    );
    assert!(
        sandbox.get("env").is_none(),
        "env may hold secrets and is never echoed"
    );

    let env = client
        .exec(&id, &ExecRequest::shell("echo $GREETING"))
        .await?;
    assert_eq!(env.stdout, "hello\n");
    // The limits as the sandbox itself sees them (cgroup v1 files): its
    // commands run in the tenant cgroup, which has exactly these. On the
    // cluster the kubelet owns the cgroups: the pod's container has the
    // sandbox's limits plus the agent's headroom, and pids are capped per
    // node (the kubelet's podPidsLimit), not per sandbox.
    if engine.is_cluster() {
        let limits = client
            .exec(
                &id,
                &ExecRequest::shell(
                    "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us",
                ),
            )
            .await?;
        let expected = format!("{}\n50000\n", (256u64 << 20) + (32 << 20));
        assert_eq!(limits.stdout, expected, "{}", limits.stderr);
        return Ok(());
    }
    let limits = client
        .exec(
            &id,
            &ExecRequest::shell(
                "cat /sys/fs/cgroup/memory/tenant/memory.limit_in_bytes \
                     /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/pids/tenant/pids.max",
            ),
        )
        .await?;
    let expected = format!("{}\n50000\n1024\n", 256u64 << 20);
    assert_eq!(limits.stdout, expected, "{}", limits.stderr);
    Ok(())
}

async fn a_timeout_kills_the_command_quickly(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let id = server.new_sandbox().await?;
    let request = ExecRequest {
        timeout_ms: Some(500),
        ..ExecRequest::shell("sleep 10 & sleep 10")
    };
    let started = Instant::now();
    let result = server.client().exec(&id, &request).await?;
    assert!(result.timed_out);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let leftover = server
        .client()
        .exec(&id, &ExecRequest::shell("pgrep -x sleep || true"))
        .await?;
    assert_eq!(leftover.stdout, "", "the whole process group is killed");
    Ok(())
}

async fn files_persist_between_execs_and_sandboxes_are_isolated(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let first = server.new_sandbox().await?;
    let second = server.new_sandbox().await?;

    let write = client
        .exec(&first, &ExecRequest::shell("echo secret > /workspace/note"))
        .await?;
    assert_eq!(write.exit_code, 0, "{}", write.stderr);
    let read = client
        .exec(&first, &ExecRequest::argv(["cat", "/workspace/note"]))
        .await?;
    assert_eq!(read.stdout, "secret\n");

    let other = client
        .exec(&second, &ExecRequest::argv(["cat", "/workspace/note"]))
        .await?;
    assert_ne!(
        other.exit_code, 0,
        "the other sandbox must not see the file"
    );
    let processes = client
        .exec(&second, &ExecRequest::shell("ls /proc | grep -c '^[0-9]'"))
        .await?;
    let count: u32 = processes.stdout.trim().parse()?;
    assert!(
        count <= 4,
        "a sandbox sees only its own processes, saw {count}"
    );

    for id in [&first, &second] {
        let interfaces = client
            .exec(
                id,
                &ExecRequest::shell("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"),
            )
            .await?;
        // A pod always has its interface on the cluster network, with a
        // route to its subnet and none beyond (no default route).
        let (only, routes) = match engine.is_cluster() {
            true => (
                "lo\neth0\n",
                "awk 'NR > 1 && $2 == \"00000000\"' /proc/net/route | wc -l",
            ),
            false => ("lo\n", "tail -n +2 /proc/net/route | wc -l"),
        };
        assert_eq!(interfaces.stdout, only, "no other network");
        let routes = client.exec(id, &ExecRequest::shell(routes)).await?;
        assert_eq!(routes.stdout.trim(), "0", "no route out");
        // lo is up: something can listen and be reached on loopback.
        let loopback = client
            .exec(
                id,
                &ExecRequest::argv([
                    "python3",
                    "-c",
                    "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(); \
                     c=socket.create_connection(s.getsockname()); print('ok')",
                ]),
            )
            .await?;
        assert_eq!(loopback.stdout, "ok\n", "{}", loopback.stderr);
    }
    Ok(())
}

async fn delete_leaves_nothing_behind(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;
    let dir = server.data_dir().join("sandboxes").join(&id);
    let marker = engine.cgroup_marker(&id).context("the container exists")?;
    client
        .exec(&id, &ExecRequest::shell("sleep 1000 & echo started"))
        .await?;
    assert!(dir.is_dir());
    assert!(
        processes_in_cgroup(&marker).len() >= 2,
        "the agent and the background sleep run in the sandbox"
    );
    let disks = || sbx_tests::attached_disks(server.data_dir());
    // On the cluster the disk is the pod's ephemeral storage, not a loop
    // device of the server's.
    let has_disk = !engine.is_cluster();
    assert_eq!(disks()?.contains(&id), has_disk, "the sandbox's disk");
    if engine == Engine::Youki {
        // Docker keeps its overlays under its own layer ids.
        let agent = sbx_tests::agent_pid(engine, &id).context("the agent runs")?;
        let inside = std::fs::read_to_string(format!("/proc/{agent}/mounts"))?;
        assert!(
            inside
                .lines()
                .any(|line| line.starts_with("overlay / overlay")),
            "the sandbox's root is its overlay: {inside}"
        );
        let host = std::fs::read_to_string("/proc/mounts")?;
        assert!(!host.contains(&id), "the host's mount table has none of it");
    }

    client.delete_sandbox(&id).await?;

    assert!(!dir.exists(), "sandbox dir removed");
    // The kubelet kills a deleted pod's containers after the API has let
    // go of it (in under a second).
    let exited = sbx_tests::eventually(Duration::from_secs(20), || async {
        processes_in_cgroup(&marker).is_empty()
    })
    .await;
    assert!(exited, "no container process left");
    match engine {
        Engine::Youki => assert!(
            !Path::new(&format!("/sys/fs/cgroup/memory/sbx/{id}")).exists(),
            "cgroup removed"
        ),
        Engine::Docker => assert!(
            sbx_tests::docker_container_id(&id).is_none(),
            "container removed"
        ),
        Engine::Kubernetes => {
            for kind in ["sandbox", "pod", "secret"] {
                assert_eq!(
                    sbx_tests::kubectl(&["get", kind, &format!("sbx-{id}"), "--ignore-not-found"]),
                    Some(String::new()),
                    "the sandbox's {kind} is gone"
                );
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    assert!(!mounts.contains(&id), "no mount left");
    // The disk goes with the last mount of it, which the kernel drops
    // lazily.
    let detached = sbx_tests::eventually(Duration::from_secs(10), || async {
        disks().is_ok_and(|ids| !ids.contains(&id))
    })
    .await;
    assert!(detached, "the sandbox's loop device is gone");
    let err = client.get_sandbox(&id).await.expect_err("deleted");
    assert_eq!(api_code(&err), Some(ErrorCode::NotFound));
    let err = client
        .exec(&id, &ExecRequest::argv(["true"]))
        .await
        .expect_err("deleted");
    assert_eq!(api_code(&err), Some(ErrorCode::NotFound));
    Ok(())
}

async fn sandboxes_survive_a_server_restart(engine: Engine) -> Result<()> {
    let mut first = Server::start(engine).await?;
    let id = first.new_sandbox().await?;
    first
        .client()
        .exec(&id, &ExecRequest::shell("echo kept > /workspace/kept"))
        .await?;
    let data_dir = first.take_data_dir().expect("the harness owns a temp dir");
    first.kill();

    let second = Server::start_on(engine, data_dir.path()).await?;
    let client = second.client();
    let listed = client.list_sandboxes().await?;
    assert!(
        listed
            .iter()
            .any(|s| s.id == id && s.state == SandboxState::Running),
        "{listed:?}; log: {}",
        second.log()
    );
    let read = client
        .exec(&id, &ExecRequest::argv(["cat", "/workspace/kept"]))
        .await?;
    assert_eq!(read.stdout, "kept\n");
    client.delete_sandbox(&id).await?;
    assert!(!data_dir.path().join("sandboxes").join(&id).exists());
    Ok(())
}

async fn containers_the_store_does_not_know_are_removed_at_start(engine: Engine) -> Result<()> {
    let mut first = Server::start(engine).await?;
    let id = first.new_sandbox().await?;
    let marker = engine.cgroup_marker(&id).context("the container exists")?;
    let data_dir = first.take_data_dir().expect("the harness owns a temp dir");
    first.kill();
    // Forget the sandbox: as if the server died between starting the
    // container and recording it.
    for name in ["sbx.db", "sbx.db-wal", "sbx.db-shm"] {
        let _ = std::fs::remove_file(data_dir.path().join(name));
    }

    let second = Server::start_on(engine, data_dir.path()).await?;
    assert!(second.client().list_sandboxes().await?.is_empty());
    // A pod's containers end just after its deletion.
    let ended = sbx_tests::eventually(Duration::from_secs(20), || async {
        processes_in_cgroup(&marker).is_empty()
    })
    .await;
    assert!(ended, "orphan still running");
    if engine.is_cluster() {
        assert_eq!(
            sbx_tests::kubectl(&["get", "sandbox", &format!("sbx-{id}"), "--ignore-not-found"]),
            Some(String::new()),
            "the orphan's record is gone"
        );
    }
    assert!(!data_dir.path().join("sandboxes").join(&id).exists());
    if engine == Engine::Docker {
        assert!(
            sbx_tests::docker_container_id(&id).is_none(),
            "orphan container kept"
        );
    }
    Ok(())
}

async fn auth_and_error_bodies(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let info = server.client().info().await?;
    assert_eq!(info.runtime.name, engine.name());
    assert!(!info.runtime.version.is_empty());
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    for token in [None, Some("wrong-token")] {
        let err = server
            .client_with_token(token)
            .list_sandboxes()
            .await
            .expect_err("unauthorized");
        assert!(matches!(err, ClientError::Api { status: 401, .. }), "{err}");
        assert_eq!(api_code(&err), Some(ErrorCode::Unauthorized));
    }

    let client = server.client();
    let err = client
        .get_sandbox("0123456789abcdef")
        .await
        .expect_err("unknown");
    assert!(matches!(err, ClientError::Api { status: 404, .. }), "{err}");
    let body = err.api_error().expect("error body");
    assert_eq!(body.message, "sandbox 0123456789abcdef not found");
    let err = client.delete_sandbox("nope").await.expect_err("unknown");
    assert_eq!(api_code(&err), Some(ErrorCode::NotFound));

    let err = client
        .create_sandbox(&CreateSandboxRequest {
            image: Some("no-such-image".into()),
            ..CreateSandboxRequest::default()
        })
        .await
        .expect_err("unknown image");
    assert_eq!(api_code(&err), Some(ErrorCode::NotFound));

    for (path, body) in [
        ("/v1/sandboxes", "{not json"),
        ("/v1/sandboxes", r#"{"memory_mb":"lots"}"#),
        ("/v1/sandboxes", r#"{"memory_mb":0}"#),
        ("/v1/sandboxes", r#"{"cpus":-1}"#),
    ] {
        let response = client
            .send(
                http::Method::POST,
                path,
                Some("application/json"),
                bytes::Bytes::from(body),
            )
            .await?;
        assert_eq!(response.status(), 400, "{body}");
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await?
            .to_bytes();
        let error: sbx_api::ErrorBody = serde_json::from_slice(&bytes)?;
        assert_eq!(error.error_code, ErrorCode::InvalidRequest, "{body}");
    }

    // `curl -d '{}'` sends a form content type; the JSON is accepted anyway.
    let response = client
        .send(
            http::Method::POST,
            "/v1/sandboxes",
            Some("application/x-www-form-urlencoded"),
            bytes::Bytes::from_static(b"{}"),
        )
        .await?;
    assert_eq!(response.status(), 201);

    let id = server.new_sandbox().await?;
    let both = ExecRequest {
        shell: Some("true".into()),
        ..ExecRequest::argv(["true"])
    };
    let err = client.exec(&id, &both).await.expect_err("invalid");
    assert_eq!(api_code(&err), Some(ErrorCode::InvalidRequest));
    assert_eq!(
        server.client().list_sandboxes().await?.len(),
        2,
        "server still up"
    );
    Ok(())
}

sbx_tests::on_every_runtime!(
    echo_git_python_and_exit_codes,
    create_answers_201_with_the_sandbox_and_applies_limits_and_env,
    a_timeout_kills_the_command_quickly,
    files_persist_between_execs_and_sandboxes_are_isolated,
    delete_leaves_nothing_behind,
    sandboxes_survive_a_server_restart,
    containers_the_store_does_not_know_are_removed_at_start,
    auth_and_error_bodies,
);

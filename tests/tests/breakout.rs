//! End to end: code inside a sandbox trying to get out, or to take the
//! machine down with it. Every attempt must fail inside the sandbox and
//! leave the host and the neighbouring sandbox untouched. Network isolation
//! is checked by inspection only: no test sends a packet anywhere but
//! loopback.

use anyhow::{bail, Context, Result};
use sbx_api::client::SandboxClient;
use sbx_api::{CreateSandboxRequest, ExecRequest, ExecResult};
use sbx_tests::{processes_in_cgroup, Engine, Server};

/// Runs a Python snippet that makes one raw syscall and prints
/// `<return value> <errno>`.
fn raw_syscall(number: u32, args: &str) -> ExecRequest {
    ExecRequest::argv([
        "python3",
        "-c",
        &format!(
            "import ctypes; libc = ctypes.CDLL(None, use_errno=True); \
             r = libc.syscall({number}{args}); print(r, ctypes.get_errno())"
        ),
    ])
}

async fn exec(sandbox: &SandboxClient<'_>, request: ExecRequest) -> Result<ExecResult> {
    Ok(sandbox.exec(&request).await?)
}

/// The attempt ran and failed.
fn refused(what: &str, result: &ExecResult) -> Result<()> {
    if result.exit_code == 0 {
        bail!("{what} succeeded: {}{}", result.stdout, result.stderr);
    }
    Ok(())
}

async fn privileged_operations_are_refused(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;
    let sandbox = client.sandbox(&id);

    let mount = exec(&sandbox, ExecRequest::shell("mount -t tmpfs none /mnt")).await?;
    refused("mount", &mount)?;
    let sysrq = exec(&sandbox, ExecRequest::shell("echo h > /proc/sysrq-trigger")).await?;
    refused("writing /proc/sysrq-trigger", &sysrq)?;
    let raw = exec(
        &sandbox,
        ExecRequest::argv([
            "python3",
            "-c",
            "import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)",
        ]),
    )
    .await?;
    refused("opening a raw socket", &raw)?;
    assert!(raw.stderr.contains("PermissionError"), "{}", raw.stderr);

    // x86_64 syscall numbers; each must come back -1 with EPERM (1), or
    // ENOSYS (38) where the kernel has no such feature at all (modules on
    // a kernel built without them).
    for (what, number, args) in [
        ("init_module (load a module)", 175, ", 0, 0, 0"),
        ("finit_module (load a module)", 313, ", 0, 0, 0"),
        // LINUX_REBOOT_MAGIC1, MAGIC2, LINUX_REBOOT_CMD_RESTART
        ("reboot", 169, ", 0xfee1dead, 672274793, 0x01234567, 0"),
        ("ptrace(PTRACE_ATTACH) of PID 1", 101, ", 16, 1, 0, 0"),
    ] {
        let result = exec(&sandbox, raw_syscall(number, args)).await?;
        assert!(
            result.stdout == "-1 1\n" || result.stdout == "-1 38\n",
            "{what} was not refused: {}{}",
            result.stdout,
            result.stderr
        );
    }
    let agent_alive = exec(&sandbox, ExecRequest::argv(["true"])).await?;
    assert_eq!(agent_alive.exit_code, 0, "PID 1 is untouched");
    Ok(())
}

async fn sandboxes_cannot_reach_each_other_or_the_host(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let mine = server.new_sandbox().await?;
    let theirs = server.new_sandbox().await?;
    let me = client.sandbox(&mine);
    let neighbour = client.sandbox(&theirs);
    neighbour
        .exec(&ExecRequest::shell(format!(
            "echo secret > /workspace/secret-{theirs}"
        )))
        .await?;

    // Nothing of the neighbour is visible: not its files, not its socket,
    // not its processes; only this sandbox's own agent socket and egress
    // proxy socket are mounted.
    let search = exec(
        &me,
        ExecRequest::shell(
            "grep -rs secret /workspace; find / -xdev -name 'secret-*' 2>/dev/null; \
             ls /.sbx/run; ps -eo comm | grep -cx sandbox-agent",
        ),
    )
    .await?;
    assert_eq!(
        search.stdout, "agent.sock\negress.sock\n1\n",
        "{}",
        search.stderr
    );
    assert!(!search.stdout.contains(&theirs));

    // The host's data dir (token, database, every sandbox's files) does
    // not exist from inside.
    let data_dir = server.data_dir().display().to_string();
    let host = exec(
        &me,
        ExecRequest::shell(format!(
            "ls /var/lib/sbx 2>&1; cat {data_dir}/admin.token 2>&1; ls {data_dir} 2>&1; true"
        )),
    )
    .await?;
    assert!(
        !host.stdout.contains(&server.token),
        "the admin token leaked"
    );
    assert!(host.stdout.contains("No such file"), "{}", host.stdout);

    // No network but loopback: one interface, no route (inspected only).
    let network = exec(
        &me,
        ExecRequest::shell(
            "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; \
             tail -n +2 /proc/net/route | wc -l; tail -n +2 /proc/net/ipv6_route 2>/dev/null | grep -vc ' lo$' || true",
        ),
    )
    .await?;
    assert_eq!(network.stdout, "lo\n0\n0\n", "{}", network.stderr);
    Ok(())
}

async fn resource_bombs_stay_inside(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let bomber = client
        .create_sandbox(&CreateSandboxRequest {
            memory_mb: Some(256),
            ..CreateSandboxRequest::default()
        })
        .await?
        .id;
    let neighbour = server.new_sandbox().await?;
    let sandbox = client.sandbox(&bomber);

    // A fork bomb runs into the pids limit; the timeout ends it. (It stays
    // in the foreground so that the timeout's group kill reaches it all.)
    let fork_bomb = sandbox
        .exec(&ExecRequest {
            timeout_ms: Some(3_000),
            ..ExecRequest::shell("bomb() { bomb | bomb; }; bomb")
        })
        .await?;
    assert!(fork_bomb.timed_out, "exit code {}", fork_bomb.exit_code);
    assert!(
        fork_bomb
            .stderr
            .contains("Resource temporarily unavailable"),
        "the pids limit stopped it"
    );
    let pids_max = exec(
        &sandbox,
        ExecRequest::shell("cat /sys/fs/cgroup/pids/pids.max"),
    )
    .await?;
    assert_eq!(pids_max.stdout, "1024\n");

    // A memory bomb is OOM-killed inside; the agent lives on.
    let memory_bomb = sandbox
        .exec(&ExecRequest::argv([
            "python3",
            "-c",
            "blocks = []\nwhile True: blocks.append(bytearray(16 << 20))",
        ]))
        .await?;
    assert_eq!(
        memory_bomb.exit_code,
        128 + 9,
        "SIGKILL by the OOM killer: {memory_bomb:?}"
    );

    // An output flood is cut at the cap.
    let flood = exec(&sandbox, ExecRequest::shell("yes | head -c 64M")).await?;
    assert!(flood.truncated);

    for id in [&bomber, &neighbour] {
        let alive = client
            .sandbox(id)
            .exec(&ExecRequest::argv(["echo", "alive"]))
            .await?;
        assert_eq!(alive.stdout, "alive\n", "sandbox {id} still answers");
    }
    // A bomb left running in the background cannot stop the delete, and
    // nothing of it survives.
    let marker = engine.cgroup_marker(&bomber).context("container exists")?;
    let background = sandbox
        .exec(&ExecRequest::shell("bomb() { bomb | bomb & }; bomb"))
        .await?;
    assert_eq!(background.exit_code, 0);
    client.delete_sandbox(&bomber).await?;
    assert!(
        processes_in_cgroup(&marker).is_empty(),
        "the bomb outlived its sandbox"
    );
    let still = client
        .sandbox(&neighbour)
        .exec(&ExecRequest::argv(["echo", "alive"]))
        .await?;
    assert_eq!(still.stdout, "alive\n");
    Ok(())
}

/// Root inside is an unprivileged uid outside: the mapping is visible
/// inside, the agent runs as that uid on the host, and a file root makes in
/// a host-visible directory belongs to it.
async fn root_inside_is_an_unprivileged_uid_outside(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let isolation = client.info().await?.runtime.isolation;
    assert!(isolation.user_namespace, "{isolation:?}");
    let host_root = isolation.host_root_uid.context("a remapped root uid")?;
    assert!(host_root >= 65_536, "root maps to {host_root}");

    let id = server.new_sandbox().await?;
    let sandbox = client.sandbox(&id);
    let inside = exec(
        &sandbox,
        ExecRequest::shell(
            "id -u; cat /proc/self/uid_map /proc/self/gid_map; touch /.sbx/run/mine",
        ),
    )
    .await?;
    let lines: Vec<Vec<&str>> = inside
        .stdout
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    let mapping = vec!["0".to_owned(), host_root.to_string(), "65536".to_owned()];
    assert_eq!(lines.len(), 3, "{}{}", inside.stdout, inside.stderr);
    assert_eq!(lines[0], ["0"], "root inside");
    for map in &lines[1..] {
        assert_eq!(map, &mapping, "{}", inside.stdout);
    }

    let agent = sbx_tests::agent_pid(engine, &id).context("the agent's host pid")?;
    let status = std::fs::read_to_string(format!("/proc/{agent}/status"))?;
    let uids = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .context("Uid line")?;
    for uid in uids.split_whitespace() {
        assert_eq!(uid, host_root.to_string(), "the agent's host uids: {uids}");
    }
    let made = server.data_dir().join(format!("sandboxes/{id}/run/mine"));
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&made)?);
    assert_eq!(owner, host_root, "{} is owned by {owner}", made.display());
    Ok(())
}

/// A disk fill stops at the sandbox's `disk_mb` with ENOSPC inside, and
/// `df` inside shows the disk's size; the neighbour keeps writing, and
/// deleting files frees the space again.
async fn a_disk_fill_stops_at_disk_mb(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    assert_disk_fill_stops_at_disk_mb(&server).await
}

async fn assert_disk_fill_stops_at_disk_mb(server: &Server) -> Result<()> {
    let client = server.client();
    let isolation = client.info().await?.runtime.isolation;
    assert!(isolation.disk_quota, "{isolation:?}");
    let small = client
        .create_sandbox(&CreateSandboxRequest {
            disk_mb: Some(64),
            ..CreateSandboxRequest::default()
        })
        .await?;
    assert_eq!(small.disk_mb, Some(64));
    let neighbour = client
        .create_sandbox(&CreateSandboxRequest::default())
        .await?;
    assert_eq!(neighbour.disk_mb, isolation.default_disk_mb);
    let sandbox = client.sandbox(&small.id);

    let df = |path: &str| format!("df -k --output=size {path} | tail -n 1");
    for path in ["/", "/workspace"] {
        let size_kib: u64 = exec(&sandbox, ExecRequest::shell(df(path)))
            .await?
            .stdout
            .trim()
            .parse()?;
        assert!(
            (56 << 10..=64 << 10).contains(&size_kib),
            "df {path} inside a 64 MiB sandbox: {size_kib} KiB"
        );
    }
    let fill = exec(
        &sandbox,
        ExecRequest::shell("dd if=/dev/zero of=/workspace/fill bs=1M count=128 conv=fsync"),
    )
    .await?;
    refused("writing 128 MiB into 64 MiB", &fill)?;
    assert!(
        fill.stderr.contains("No space left on device"),
        "{}",
        fill.stderr
    );
    let size: u64 = exec(&sandbox, ExecRequest::shell("stat -c %s /workspace/fill"))
        .await?
        .stdout
        .trim()
        .parse()?;
    assert!(
        (16 << 20..=64 << 20).contains(&size),
        "wrote {size} bytes under a 64 MiB limit"
    );

    let elsewhere = client
        .sandbox(&neighbour.id)
        .exec(&ExecRequest::shell(
            "dd if=/dev/zero of=/workspace/f bs=1M count=96 conv=fsync 2>&1 && echo wrote",
        ))
        .await?;
    assert!(
        elsewhere.stdout.ends_with("wrote\n"),
        "{}",
        elsewhere.stdout
    );

    let again = exec(
        &sandbox,
        ExecRequest::shell(
            "rm /workspace/fill && dd if=/dev/zero of=/workspace/again bs=1M count=16 \
             conv=fsync 2>&1 && echo wrote",
        ),
    )
    .await?;
    assert!(again.stdout.ends_with("wrote\n"), "{}", again.stdout);
    Ok(())
}

/// Off the btrfs pool (here: the system temp dir) disk templates cannot be
/// cloned, so each disk is formatted: limits hold all the same.
#[tokio::test]
async fn youki_formats_disks_where_it_cannot_clone_them() -> Result<()> {
    let data_dir = tempfile::Builder::new().prefix("sbx-e2e-").tempdir()?;
    let server = Server::start_on(Engine::Youki, data_dir.path()).await?;
    assert_disk_fill_stops_at_disk_mb(&server).await?;
    assert!(
        server.log().contains("formatting each disk"),
        "precondition: the system temp dir must not clone files; log: {}",
        server.log()
    );
    drop(server);
    Ok(())
}

sbx_tests::on_every_runtime!(
    privileged_operations_are_refused,
    sandboxes_cannot_reach_each_other_or_the_host,
    resource_bombs_stay_inside,
    root_inside_is_an_unprivileged_uid_outside,
    a_disk_fill_stops_at_disk_mb,
);

/// `disk_mb` on a server that cannot enforce it: the info says so with a
/// reason naming `hint`, a request for it is a 400, and a sandbox without
/// it reports no limit rather than a pretend one.
async fn assert_disk_mb_refused(server: &Server, hint: &str) -> Result<()> {
    let client = server.client();
    let isolation = client.info().await?.runtime.isolation;
    assert!(!isolation.disk_quota, "{isolation:?}");
    assert_eq!(isolation.default_disk_mb, None);
    assert!(
        isolation.notes.iter().any(|note| note.contains(hint)),
        "{:?}",
        isolation.notes
    );
    let refused = client
        .create_sandbox(&CreateSandboxRequest {
            disk_mb: Some(128),
            ..CreateSandboxRequest::default()
        })
        .await;
    match refused {
        Err(sbx_api::client::ClientError::Api { status, body }) => {
            assert_eq!(status, 400);
            assert_eq!(body.error_code, sbx_api::ErrorCode::InvalidRequest);
            assert!(body.message.contains("disk_mb"), "{}", body.message);
        }
        other => bail!("disk_mb was not refused: {other:?}"),
    }
    let unlimited = client
        .create_sandbox(&CreateSandboxRequest::default())
        .await?;
    assert_eq!(unlimited.disk_mb, None);
    Ok(())
}

/// Without `mkfs.ext4` (a PATH without it) there are no disks: the server
/// says so and refuses `disk_mb` rather than pretend. Youki only: the
/// Docker runtime needs `tar` from PATH to import images.
#[tokio::test]
async fn disk_mb_is_refused_where_disks_cannot_be_made() -> Result<()> {
    let empty = tempfile::tempdir()?;
    let server = Server::start_with_env(Engine::Youki, &[("PATH", empty.path())]).await?;
    assert_disk_mb_refused(&server, "mkfs.ext4").await
}

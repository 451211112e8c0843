//! End to end: code inside a sandbox trying to get out, or to take the
//! machine down with it. Every attempt must fail inside the sandbox and
//! leave the host and the neighbouring sandbox untouched. Network isolation
//! is checked by inspection only: no test sends a packet anywhere but
//! loopback.

use anyhow::{bail, Context, Result};
use sbx_api::client::SandboxClient;
use sbx_api::{CreateSandboxRequest, ExecRequest, ExecResult};
use sbx_tests::{processes_in_cgroup, Engine, Server};
use std::path::Path;
use std::time::Duration;

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
    // not its processes; only this sandbox's egress proxy socket is mounted
    // (the agent's listener was handed over, it has no path inside).
    let search = exec(
        &me,
        ExecRequest::shell(
            "grep -rs secret /workspace; find / -xdev -name 'secret-*' 2>/dev/null; \
             ls /.sbx/run; ps -eo comm | grep -cx sandbox-agent",
        ),
    )
    .await?;
    assert_eq!(search.stdout, "egress.sock\n1\n", "{}", search.stderr);
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
    // Commands run in the tenant cgroup, which has the sandbox's limit (the
    // container's adds the agent's headroom).
    let pids_max = exec(
        &sandbox,
        ExecRequest::shell(
            "cat /sys/fs/cgroup/pids/tenant/pids.max; grep -c ':pids:.*/tenant$' /proc/self/cgroup",
        ),
    )
    .await?;
    assert_eq!(pids_max.stdout, "1024\n1\n", "{}", pids_max.stderr);

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

/// How many forks the tenant cgroup at `dir` has refused (`pids.events`).
fn refused_forks(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("pids.events"))
        .ok()
        .and_then(|events| {
            events
                .lines()
                .find_map(|line| line.strip_prefix("max ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// How many times the OOM killer struck in the memory cgroup at `dir`.
fn oom_kills(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("memory.oom_control"))
        .ok()
        .and_then(|control| {
            control
                .lines()
                .find_map(|line| line.strip_prefix("oom_kill ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A background fork bomb fills the sandbox's pids limit and a background
/// memory bomb its memory, and neither takes the agent with it: while they
/// rage the agent still answers and starts commands, kill-all ends them,
/// and a command that forks works again at once. Every time.
async fn bombs_leave_the_agent_in_control(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let id = client
        .create_sandbox(&CreateSandboxRequest {
            memory_mb: Some(256),
            ..CreateSandboxRequest::default()
        })
        .await?
        .id;
    let sandbox = client.sandbox(&id);
    let pids = sbx_tests::tenant_cgroup(engine, &id, "pids").context("tenant pids cgroup")?;
    let memory = sbx_tests::tenant_cgroup(engine, &id, "memory").context("tenant memory cgroup")?;
    for round in 0..3 {
        let refused = refused_forks(&pids);
        // Each copy forks forever (bash retries a refused fork), so the
        // bomb holds the tenant full until it is killed.
        let bomb = exec(
            &sandbox,
            ExecRequest::shell("bomb() { while :; do bomb & done; }; bomb >/dev/null 2>&1 &"),
        )
        .await?;
        assert_eq!(bomb.exit_code, 0, "round {round}: {bomb:?}");
        let full = sbx_tests::eventually(Duration::from_secs(30), || async {
            refused_forks(&pids) > refused
        })
        .await;
        assert!(full, "round {round}: the fork bomb never filled the tenant");
        let alive = exec(&sandbox, ExecRequest::argv(["echo", "alive"])).await?;
        assert_eq!(
            alive.stdout, "alive\n",
            "round {round}: exec while the bomb runs"
        );

        let killed = sandbox.kill_all().await?;
        assert!(
            killed.killed > 100,
            "round {round}: killed {}",
            killed.killed
        );
        let forks = exec(&sandbox, ExecRequest::shell("echo $(echo forked) | cat")).await?;
        assert_eq!(forks.stdout, "forked\n", "round {round}: {forks:?}");

        let kills = oom_kills(&memory);
        let hog = "blocks = []\nwhile True: blocks.append(bytearray(16 << 20))";
        let bomb = exec(
            &sandbox,
            ExecRequest::shell(format!(
                "for i in 1 2 3 4; do python3 -c '{hog}' >/dev/null 2>&1 & done"
            )),
        )
        .await?;
        assert_eq!(bomb.exit_code, 0, "round {round}: {bomb:?}");
        let struck = sbx_tests::eventually(Duration::from_secs(30), || async {
            oom_kills(&memory) > kills
        })
        .await;
        assert!(struck, "round {round}: the memory bomb never hit the limit");
        let alive = exec(&sandbox, ExecRequest::argv(["echo", "alive"])).await?;
        assert_eq!(
            alive.stdout, "alive\n",
            "round {round}: exec beside the memory bomb"
        );
        sandbox.kill_all().await?;
        let forks = exec(&sandbox, ExecRequest::shell("echo $(echo forked) | cat")).await?;
        assert_eq!(forks.stdout, "forked\n", "round {round}: {forks:?}");
        let again = sandbox.kill_all().await?;
        assert_eq!(
            again.killed, 0,
            "round {round}: nothing but the agent was left"
        );
    }
    client.delete_sandbox(&id).await?;
    assert!(!pids.exists(), "{} outlived the sandbox", pids.display());
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
            "id -u; cat /proc/self/uid_map /proc/self/gid_map; touch /.sbx/run/mine; true",
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
    // The run directory is the host's, read-only inside: nothing lands there.
    assert!(
        inside.stderr.contains("Read-only file system"),
        "{}",
        inside.stderr
    );
    let made = server.data_dir().join(format!("sandboxes/{id}/run/mine"));
    assert!(!made.exists(), "{} was made from inside", made.display());
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

/// The run directory (`/.sbx/run`, the host's sockets for the sandbox)
/// takes no writes: a sandbox with a 64 MiB disk cannot put 200 MiB on the
/// host's pool through it, and `df` there is not the pool's.
async fn the_run_dir_is_not_storage(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let request = CreateSandboxRequest {
        disk_mb: Some(64),
        ..CreateSandboxRequest::default()
    };
    let id = client.create_sandbox(&request).await?.id;
    let sandbox = client.sandbox(&id);
    let fill = exec(
        &sandbox,
        ExecRequest::shell(
            "dd if=/dev/zero of=/.sbx/run/fill bs=1M count=200 2>&1; \
             mkdir /.sbx/run/d 2>&1; ls -A /.sbx/run",
        ),
    )
    .await?;
    assert!(
        fill.stdout.matches("Read-only file system").count() >= 2,
        "{}{}",
        fill.stdout,
        fill.stderr
    );
    // Only the orchestrator's egress socket is left: the handoff is over.
    assert_eq!(
        fill.stdout.lines().last(),
        Some("egress.sock"),
        "{}",
        fill.stdout
    );
    let run_dir = server.data_dir().join(format!("sandboxes/{id}/run"));
    let mut names: Vec<String> = std::fs::read_dir(&run_dir)?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["egress.sock"], "{}", run_dir.display());
    Ok(())
}

/// What code inside could put where the orchestrator's sockets are, each
/// as a shell snippet run as root inside: `{path}` is the socket it tries
/// to replace. The targets outside are host paths, which the sandbox
/// cannot reach, but a symlink's target is only text.
fn socket_replacements(neighbour_socket: &Path) -> Vec<(&'static str, String)> {
    let swap = |make: &str| format!("rm -f /tmp/evil && {make} && mv -fT /tmp/evil {{path}}");
    vec![
        (
            "a symlink to the neighbour's agent socket",
            swap(&format!("ln -sfn {} /tmp/evil", neighbour_socket.display())),
        ),
        (
            "a symlink to the docker engine's socket",
            swap("ln -sfn /run/sbx/docker.sock /tmp/evil"),
        ),
        (
            "a symlink to a host file",
            swap("ln -sfn /etc/shadow /tmp/evil"),
        ),
        ("a fifo", swap("mkfifo /tmp/evil")),
        ("a regular file", swap("echo evil > /tmp/evil")),
        ("an unlink", "rm {path}".to_owned()),
        (
            "a socket bound by another process",
            "python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); \
             s.bind(sys.argv[1]); s.listen()' {path}"
                .to_owned(),
        ),
    ]
}

/// A sandbox that replaces the sockets in its run directory with anything
/// at all steers nothing: each attempt fails inside, the sandbox's calls
/// keep reaching its own agent, the neighbour is untouched, and every
/// attempt is in the audit trail.
async fn replaced_sockets_steer_nothing(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let a = server.new_sandbox().await?;
    let b = server.new_sandbox().await?;
    let (sandbox_a, sandbox_b) = (client.sandbox(&a), client.sandbox(&b));
    exec(&sandbox_a, ExecRequest::shell("echo a > /workspace/who")).await?;
    exec(&sandbox_b, ExecRequest::shell("echo b > /workspace/who")).await?;
    let sandboxes = server.data_dir().join("sandboxes");
    let neighbour = sandboxes.join(&b).join("agent.sock");
    let mut attempts = 0;
    for (what, snippet) in socket_replacements(&neighbour) {
        for path in [sbx_api::EGRESS_SOCKET_PATH, "/.sbx/run/agent.sock"] {
            let script = snippet.replace("{path}", path);
            let attempt = ExecRequest {
                timeout_ms: Some(10_000),
                ..ExecRequest::shell(&script)
            };
            let attempt = exec(&sandbox_a, attempt).await?;
            assert!(!attempt.timed_out, "{what} at {path} hung");
            attempts += 1;
            refused(&format!("{what} at {path}"), &attempt)?;
            let who = exec(&sandbox_a, ExecRequest::shell("cat /workspace/who")).await?;
            assert_eq!(
                who.stdout, "a\n",
                "after {what} at {path}, calls reach A's agent"
            );
        }
    }
    let who = exec(&sandbox_b, ExecRequest::shell("cat /workspace/who")).await?;
    assert_eq!(who.stdout, "b\n", "the neighbour is untouched");
    for id in [&a, &b] {
        let egress = sandboxes.join(id).join("run/egress.sock");
        let kind = std::fs::symlink_metadata(&egress)?.file_type();
        assert!(
            std::os::unix::fs::FileTypeExt::is_socket(&kind),
            "{} is still the proxy's socket",
            egress.display()
        );
    }
    let records = client
        .audit(&sbx_api::AuditQuery {
            sandbox: Some(a.clone()),
            limit: Some(sbx_api::MAX_AUDIT_LIMIT),
            ..sbx_api::AuditQuery::default()
        })
        .await?;
    let logged = records
        .iter()
        .filter(|record| {
            record.route.ends_with("/exec")
                && record
                    .summary
                    .as_deref()
                    .is_some_and(|summary| summary.contains(".sbx/run/"))
        })
        .count();
    assert_eq!(logged, attempts, "every attempt is in the audit trail");
    Ok(())
}

/// Snapshots, forks, stops, starts and restores copy and remount a
/// sandbox's disk on the host. A sandbox that fills its filesystem with
/// traps (symlinks to host paths, a FIFO with a reader, a writer that never
/// stops) steers none of it: every operation finishes, the host's files
/// are untouched, and a copy's symlinks still resolve inside the copy.
async fn a_hostile_filesystem_steers_no_lifecycle_copy(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let request = CreateSandboxRequest {
        disk_mb: Some(256),
        ..CreateSandboxRequest::default()
    };
    let id = client.create_sandbox(&request).await?.id;
    let marker = std::env::temp_dir().join(format!("sbx-breakout-{:016x}", rand::random::<u64>()));
    let shadow = std::fs::read("/etc/shadow")?;
    let traps = format!(
        "ln -s /etc/shadow /workspace/shadow && ln -s {marker} /workspace/escape && \
         ln -s / /workspace/root && ln -s /var/lib/sbx /workspace/data && mkfifo /workspace/fifo && \
         (cat /workspace/fifo > /dev/null &) && \
         (while :; do date >> /workspace/busy; done > /dev/null 2>&1 &)",
        marker = marker.display()
    );
    let planted = exec(&client.sandbox(&id), ExecRequest::shell(traps)).await?;
    assert_eq!(planted.exit_code, 0, "{planted:?}");
    let bounded = Duration::from_secs(60);
    let steps = async {
        client.create_snapshot(&id, "traps").await?;
        let forks = client.fork_sandbox(&id, 1).await?;
        let fork = forks[0].sandbox.as_ref().context("the fork succeeds")?;
        client.pause_sandbox(&id).await?;
        client.resume_sandbox(&id).await?;
        client.stop_sandbox(&id).await?;
        client.start_sandbox(&id).await?;
        client.restore_sandbox(&id, "traps").await?;
        anyhow::Ok(fork.sandbox.id.clone())
    };
    let fork = tokio::time::timeout(bounded, steps)
        .await
        .context("the operations finish")??;
    for sandbox in [&id, &fork] {
        let wrote = exec(
            &client.sandbox(sandbox),
            ExecRequest::shell("echo pwned > /workspace/escape && readlink /workspace/shadow"),
        )
        .await?;
        assert_eq!(wrote.stdout, "/etc/shadow\n", "{wrote:?}");
    }
    assert!(
        !marker.exists(),
        "a write through a copied symlink reached the host"
    );
    assert_eq!(
        std::fs::read("/etc/shadow")?,
        shadow,
        "the host file is untouched"
    );
    let snapshots: Vec<String> = std::fs::read_dir(server.data_dir().join("snapshots"))?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(snapshots, ["traps"]);
    Ok(())
}

/// Sandboxes that turn the CA bundle's directory into a symlink, on a
/// server that does not mount the bundle, stop, and are started again once
/// the server trusts the host's CA (`--trust-host-ca`): the bundle is
/// mounted where the symlink leads inside the sandbox, or the start fails,
/// but nothing is written on the host: not the bundle, not the sandbox's
/// run dir (a host directory mounted inside), not the host's own
/// certificates.
async fn a_symlinked_ca_path_steers_no_host_write(engine: Engine) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bundle = dir.path().join("bundle.pem");
    std::fs::copy("/etc/ssl/certs/ca-certificates.crt", &bundle)?;
    let pem = std::fs::read(&bundle)?;
    let host_certs = || -> Result<Vec<_>> {
        let mut names: Vec<_> = std::fs::read_dir("/etc/ssl/certs")?
            .flatten()
            .map(|entry| entry.file_name())
            .collect();
        names.sort();
        Ok(names)
    };
    let before = host_certs()?;
    let targets = [
        "/.sbx/run",
        "/.sbx",
        "/proc/self/root/etc/ssl/certs",
        "/../../../etc/ssl/certs",
    ];
    let mut first = Server::start(engine).await?;
    let client = first.client();
    let mut planted = Vec::new();
    for target in targets {
        let id = first.new_sandbox().await?;
        let made = exec(
            &client.sandbox(&id),
            ExecRequest::shell(format!(
                "rm -rf /etc/ssl/certs && ln -s {target} /etc/ssl/certs"
            )),
        )
        .await?;
        assert_eq!(made.exit_code, 0, "{made:?}");
        client.stop_sandbox(&id).await?;
        planted.push((target, id));
    }
    let data_dir = first
        .take_data_dir()
        .context("the harness owns a temp dir")?;
    first.kill();
    let trusting = Server::start_on_with(
        engine,
        data_dir.path(),
        &["--trust-host-ca", &bundle.to_string_lossy()],
    )
    .await?;
    let client = trusting.client();
    for (target, id) in &planted {
        // Started or refused: either way the sandbox's own business.
        let _ = client.start_sandbox(id).await;
        let run_dir = data_dir.path().join("sandboxes").join(id).join("run");
        let in_run_dir: Vec<_> = std::fs::read_dir(&run_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains("ca-certificates"))
            .collect();
        assert!(
            in_run_dir.is_empty(),
            "{target}: {in_run_dir:?} in the run dir"
        );
    }
    drop(trusting);
    assert_eq!(std::fs::read(&bundle)?, pem, "the bundle is untouched");
    assert_eq!(
        host_certs()?,
        before,
        "the host's certificates are untouched"
    );
    Ok(())
}

sbx_tests::on_every_runtime!(
    privileged_operations_are_refused,
    // hosts_only: these attack what a sandbox shares with the server's own
    // host (its run dir and sockets, loop disks, tenant cgroups, the user
    // namespace, the egress proxy). On the cluster none of it exists; the
    // pod's own boundary is tested in tests/kubernetes.rs.
    ; hosts_only:
    a_hostile_filesystem_steers_no_lifecycle_copy,
    a_disk_fill_stops_at_disk_mb,
    a_symlinked_ca_path_steers_no_host_write,
    replaced_sockets_steer_nothing,
    bombs_leave_the_agent_in_control,
    root_inside_is_an_unprivileged_uid_outside,
    sandboxes_cannot_reach_each_other_or_the_host,
    the_run_dir_is_not_storage,
    resource_bombs_stay_inside,
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

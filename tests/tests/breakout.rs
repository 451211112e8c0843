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
    // not its processes; only this sandbox's own agent socket is mounted.
    let search = exec(
        &me,
        ExecRequest::shell(
            "grep -rs secret /workspace; find / -xdev -name 'secret-*' 2>/dev/null; \
             ls /.sbx/run; ps -eo comm | grep -cx sandbox-agent",
        ),
    )
    .await?;
    assert_eq!(search.stdout, "agent.sock\n1\n", "{}", search.stderr);
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

sbx_tests::on_every_runtime!(
    privileged_operations_are_refused,
    sandboxes_cannot_reach_each_other_or_the_host,
    resource_bombs_stay_inside,
);

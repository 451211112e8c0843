//! End to end through the `sbx` binary itself: what a person types.

use anyhow::{ensure, Result};
use sbx_tests::{eventually, sbx_bin, Engine, Server};
use std::io::{Read, Write};
use std::process::{Command, Output};
use std::time::Duration;

fn sbx(server: &Server, args: &[&str]) -> Result<Output> {
    Ok(Command::new(sbx_bin())
        .args(args)
        .env("SBX_URL", &server.url)
        .env("SBX_TOKEN", &server.token)
        .output()?)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn create_exec_ls_rm(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;

    let created = sbx(
        &server,
        &[
            "create", "--image", "base", "--memory", "256M", "--cpus", "1",
        ],
    )?;
    ensure!(created.status.success(), "create failed: {created:?}");
    let id = stdout(&created).trim().to_owned();
    assert_eq!(id.len(), 16, "create prints only the id: {id:?}");

    let echoed = sbx(&server, &["exec", &id, "--", "echo", "hello", "world"])?;
    assert!(echoed.status.success());
    assert_eq!(stdout(&echoed), "hello world\n");

    let failed = sbx(
        &server,
        &["exec", &id, "--", "sh", "-c", "echo to-stderr >&2; exit 7"],
    )?;
    assert_eq!(failed.status.code(), Some(7), "the exit code propagates");
    assert_eq!(String::from_utf8_lossy(&failed.stderr), "to-stderr\n");
    assert_eq!(stdout(&failed), "");

    let shell = sbx(&server, &["exec", "--shell", &id, "--", "echo a | tr a b"])?;
    assert_eq!(stdout(&shell), "b\n");

    let listed = sbx(&server, &["ls"])?;
    assert!(listed.status.success());
    let line = stdout(&listed)
        .lines()
        .find(|line| line.starts_with(&id))
        .map(str::to_owned)
        .expect("ls lists the sandbox");
    assert!(line.contains("running") && line.contains("base"), "{line}");

    let removed = sbx(&server, &["rm", &id])?;
    assert!(removed.status.success(), "{removed:?}");
    let listed = sbx(&server, &["ls"])?;
    assert!(!stdout(&listed).contains(&id));

    let missing = sbx(&server, &["exec", &id, "--", "true"])?;
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
    Ok(())
}

async fn background_processes_from_the_cli(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let created = sbx(&server, &["create"])?;
    let id = stdout(&created).trim().to_owned();

    let started = sbx(
        &server,
        &[
            "exec",
            "-d",
            "--shell",
            &id,
            "--",
            "echo up; exec sleep 300",
        ],
    )?;
    ensure!(started.status.success(), "exec -d failed: {started:?}");
    let pid = stdout(&started).trim().to_owned();
    ensure!(
        pid.parse::<i32>().is_ok(),
        "exec -d prints the pid: {pid:?}"
    );

    let ps = sbx(&server, &["ps", &id])?;
    let line = stdout(&ps)
        .lines()
        .find(|line| line.starts_with(&pid))
        .map(str::to_owned)
        .expect("ps lists the process");
    assert!(line.contains("running"), "{line}");

    // The process prints on its own schedule; the kill must come after.
    let printed = eventually(Duration::from_secs(10), || async {
        sbx(&server, &["logs", &id, &pid]).is_ok_and(|logs| stdout(&logs) == "up\n")
    })
    .await;
    assert!(printed, "logs show the output of the running process");

    let killed = sbx(&server, &["kill", "--signal", "KILL", &id, &pid])?;
    ensure!(killed.status.success(), "kill failed: {killed:?}");
    // `logs -f` ends when the process has exited, so this also waits.
    let logs = sbx(&server, &["logs", "-f", &id, &pid])?;
    assert!(logs.status.success());
    assert_eq!(stdout(&logs), "up\n");
    let ps = sbx(&server, &["ps", &id])?;
    assert!(
        stdout(&ps)
            .lines()
            .any(|l| l.starts_with(&pid) && l.contains("exited")),
        "{}",
        stdout(&ps)
    );
    Ok(())
}

async fn cp_round_trips_a_100_mib_file_and_a_tree(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let created = sbx(&server, &["create"])?;
    let id = stdout(&created).trim().to_owned();
    let local = tempfile::tempdir()?;

    let mut data = vec![0u8; 100 * 1024 * 1024];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut data)?;
    let source = local.path().join("big.bin");
    std::fs::write(&source, &data)?;
    let up = sbx(
        &server,
        &[
            "cp",
            source.to_str().expect("utf-8"),
            &format!("{id}:/workspace/"),
        ],
    )?;
    ensure!(up.status.success(), "cp up failed: {up:?}");
    let back = local.path().join("back.bin");
    let down = sbx(
        &server,
        &[
            "cp",
            &format!("{id}:/workspace/big.bin"),
            back.to_str().expect("utf-8"),
        ],
    )?;
    ensure!(down.status.success(), "cp down failed: {down:?}");
    assert!(
        std::fs::read(&back)? == data,
        "100 MiB differ after the round trip"
    );

    let tree = local.path().join("src");
    std::fs::create_dir_all(tree.join("nested"))?;
    std::fs::write(tree.join("a.txt"), "a\n")?;
    std::fs::write(tree.join("nested/b.txt"), "b\n")?;
    let up = sbx(
        &server,
        &[
            "cp",
            tree.to_str().expect("utf-8"),
            &format!("{id}:/workspace/copied"),
        ],
    )?;
    ensure!(up.status.success(), "cp tree failed: {up:?}");
    let cat = sbx(
        &server,
        &["exec", &id, "--", "cat", "/workspace/copied/nested/b.txt"],
    )?;
    assert_eq!(stdout(&cat), "b\n");
    let out = local.path().join("out");
    std::fs::create_dir(&out)?;
    let down = sbx(
        &server,
        &[
            "cp",
            &format!("{id}:/workspace/copied"),
            out.to_str().expect("utf-8"),
        ],
    )?;
    ensure!(down.status.success(), "cp tree down failed: {down:?}");
    assert_eq!(std::fs::read_to_string(out.join("copied/a.txt"))?, "a\n");

    let tar = sbx(&server, &["cp", &format!("{id}:/workspace/copied"), "-"])?;
    ensure!(tar.status.success());
    let mut archive = tar::Archive::new(tar.stdout.as_slice());
    let names: Vec<String> = archive
        .entries()?
        .map(|entry| Ok(entry?.path()?.to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    assert!(
        names.iter().any(|n| n == "copied/nested/b.txt"),
        "{names:?}"
    );

    // A tar on stdin goes into the directory named on the sandbox side.
    let mut upload = Command::new(sbx_bin())
        .args(["cp", "-", &format!("{id}:/workspace/from-stdin")])
        .env("SBX_URL", &server.url)
        .env("SBX_TOKEN", &server.token)
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    upload
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(&tar.stdout)?;
    ensure!(upload.wait()?.success(), "cp - failed");
    let cat = sbx(
        &server,
        &[
            "exec",
            &id,
            "--",
            "cat",
            "/workspace/from-stdin/copied/a.txt",
        ],
    )?;
    assert_eq!(stdout(&cat), "a\n");
    Ok(())
}

async fn without_a_token_the_cli_is_refused(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let output = Command::new(sbx_bin())
        .args(["ls", "--token", "bogus"])
        .env("SBX_URL", &server.url)
        .output()?;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unauthorized"));
    Ok(())
}

sbx_tests::on_every_runtime!(
    create_exec_ls_rm,
    background_processes_from_the_cli,
    cp_round_trips_a_100_mib_file_and_a_tree,
    without_a_token_the_cli_is_refused,
);

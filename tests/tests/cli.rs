//! End to end through the `sbx` binary itself: what a person types.

use anyhow::{ensure, Result};
use sbx_tests::{sbx_bin, Server};
use std::process::{Command, Output};

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

#[tokio::test]
async fn create_exec_ls_rm() -> Result<()> {
    let server = Server::start().await?;

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

#[tokio::test]
async fn without_a_token_the_cli_is_refused() -> Result<()> {
    let server = Server::start().await?;
    let output = Command::new(sbx_bin())
        .args(["ls", "--token", "bogus"])
        .env("SBX_URL", &server.url)
        .output()?;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unauthorized"));
    Ok(())
}

//! End to end through the `sbx` binary itself: what a person types.

use anyhow::{ensure, Context, Result};
use sbx_tests::registry::Registry;
use sbx_tests::{eventually, sbx_bin, Engine, Server};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
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

fn state(server: &Server, id: &str) -> Result<String> {
    let inspected = sbx(server, &["inspect", id])?;
    ensure!(inspected.status.success(), "inspect failed: {inspected:?}");
    let sandbox: serde_json::Value = serde_json::from_slice(&inspected.stdout)?;
    Ok(sandbox["state"].as_str().unwrap_or_default().to_owned())
}

fn cat(server: &Server, id: &str, path: &str) -> Result<String> {
    Ok(stdout(&sbx(server, &["exec", id, "--", "cat", path])?))
}

async fn lifecycle_from_the_cli(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let created = sbx(
        &server,
        // Small disks: the forks and the sandbox made from the snapshot
        // each take as much of the storage pool.
        &[
            "create",
            "--disk",
            "256M",
            "--timeout",
            "3600",
            "--on-timeout",
            "stop",
        ],
    )?;
    ensure!(created.status.success(), "create failed: {created:?}");
    let id = stdout(&created).trim().to_owned();
    let written = sbx(
        &server,
        &["exec", "-s", &id, "--", "echo one > /workspace/f"],
    )?;
    ensure!(written.status.success(), "{written:?}");

    let extended = sbx(&server, &["extend", &id, "7200"])?;
    ensure!(extended.status.success(), "extend failed: {extended:?}");
    let (extended_id, at) = stdout(&extended)
        .trim()
        .split_once(' ')
        .map(|(id, at)| (id.to_owned(), at.to_owned()))
        .expect("extend prints the id and the expiry");
    assert_eq!(extended_id, id);
    let at = chrono::DateTime::parse_from_rfc3339(&at)?;
    let left = at.signed_duration_since(chrono::Utc::now()).num_seconds();
    assert!((7100..=7200).contains(&left), "expires in {left} s");

    let snapped = sbx(&server, &["snapshot", &id, "one"])?;
    ensure!(snapped.status.success(), "snapshot failed: {snapped:?}");
    assert_eq!(stdout(&snapped), "one\n");
    let listed = sbx(&server, &["snapshots"])?;
    assert!(
        stdout(&listed)
            .lines()
            .any(|line| line.starts_with("one ") && line.contains(&id)),
        "{}",
        stdout(&listed)
    );
    sbx(
        &server,
        &["exec", "-s", &id, "--", "echo two > /workspace/f"],
    )?;

    let forked = sbx(&server, &["fork", "--count", "2", "--print-token", &id])?;
    ensure!(forked.status.success(), "fork failed: {forked:?}");
    let forks: Vec<(String, String)> = stdout(&forked)
        .lines()
        .map(|line| {
            let (id, token) = line.split_once(' ').expect("ID TOKEN");
            (id.to_owned(), token.to_owned())
        })
        .collect();
    assert_eq!(forks.len(), 2, "{}", stdout(&forked));
    for (fork, token) in &forks {
        assert_eq!(cat(&server, fork, "/workspace/f")?, "two\n");
        // Each fork's token works on it.
        let own = Command::new(sbx_bin())
            .args(["exec", fork, "--", "true"])
            .env("SBX_URL", &server.url)
            .env("SBX_TOKEN", token)
            .output()?;
        assert!(own.status.success(), "{own:?}");
    }
    let missing = sbx(&server, &["fork", "0123456789abcdef"])?;
    assert!(!missing.status.success());

    let restored = sbx(&server, &["restore", &id, "one"])?;
    ensure!(restored.status.success(), "restore failed: {restored:?}");
    assert_eq!(cat(&server, &id, "/workspace/f")?, "one\n");

    let from_snapshot = sbx(&server, &["create", "--snapshot", "one"])?;
    ensure!(
        from_snapshot.status.success(),
        "create --snapshot failed: {from_snapshot:?}"
    );
    let from_snapshot = stdout(&from_snapshot).trim().to_owned();
    assert_eq!(cat(&server, &from_snapshot, "/workspace/f")?, "one\n");

    for (verb, after) in [
        ("pause", "paused"),
        ("resume", "running"),
        ("stop", "stopped"),
        ("start", "running"),
    ] {
        let changed = sbx(&server, &[verb, &id])?;
        ensure!(changed.status.success(), "{verb} failed: {changed:?}");
        assert_eq!(stdout(&changed), format!("{id}\n"));
        assert_eq!(state(&server, &id)?, after, "after {verb}");
    }
    assert_eq!(
        cat(&server, &id, "/workspace/f")?,
        "one\n",
        "a stop keeps the disk"
    );

    let events = sbx(&server, &["events", "--sandbox", &id])?;
    ensure!(events.status.success(), "events failed: {events:?}");
    let events: Vec<serde_json::Value> = stdout(&events)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let kinds: Vec<&str> = events
        .iter()
        .map(|event| event["kind"].as_str().unwrap_or_default())
        .collect();
    for kind in [
        "created", "snapshot", "forked", "restored", "paused", "resumed", "stopped", "started",
    ] {
        assert!(kinds.contains(&kind), "no {kind} event in {kinds:?}");
    }
    assert!(events
        .iter()
        .all(|event| event["sandbox_id"] == id.as_str()));
    let last = events
        .iter()
        .filter_map(|event| event["seq"].as_u64())
        .max()
        .expect("events have a seq");

    // A followed stream prints what happens after `--since`, as it happens.
    let mut follow = Command::new(sbx_bin())
        .args(["events", "--follow", "--since", &last.to_string()])
        .env("SBX_URL", &server.url)
        .env("SBX_TOKEN", &server.token)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let followed = follow.stdout.take().expect("piped stdout");
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(followed)) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let removed = sbx(&server, &["rm", &forks[0].0])?;
    ensure!(removed.status.success(), "{removed:?}");
    let line = received.recv_timeout(Duration::from_secs(30));
    follow.kill()?;
    follow.wait()?;
    let event: serde_json::Value = serde_json::from_str(&line??)?;
    assert_eq!(event["sandbox_id"], forks[0].0.as_str());
    assert_eq!(event["kind"], "deleted");
    assert!(event["seq"].as_u64() > Some(last));

    let removed = sbx(&server, &["snapshots", "rm", "one"])?;
    ensure!(removed.status.success(), "snapshots rm failed: {removed:?}");
    assert_eq!(stdout(&removed), "one\n");
    let listed = sbx(&server, &["snapshots"])?;
    assert_eq!(stdout(&listed).lines().count(), 1, "{}", stdout(&listed));
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

/// `sbx` with `env` set on top of the server's, no registry credentials
/// from the test's own environment, and `input` (if any) on its stdin.
fn sbx_with(
    server: &Server,
    args: &[&str],
    env: &[(&str, &str)],
    input: Option<&[u8]>,
) -> Result<Output> {
    let mut child = Command::new(sbx_bin())
        .args(args)
        .env("SBX_URL", &server.url)
        .env("SBX_TOKEN", &server.token)
        .env_remove("SBX_REGISTRY_PASSWORD")
        .env_remove("SBX_REGISTRY_TOKEN")
        .envs(env.iter().copied())
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let writer = match (input, child.stdin.take()) {
        (Some(input), Some(mut stdin)) => {
            let input = input.to_vec();
            Some(std::thread::spawn(move || stdin.write_all(&input)))
        }
        _ => None,
    };
    let output = child.wait_with_output()?;
    if let Some(writer) = writer {
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("the stdin writer panicked"))?
            .context("writing sbx's stdin")?;
    }
    Ok(output)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// `docker save` output of a one-layer image named `name`: busybox as
/// `/bin/busybox`, `/bin/sh` and `/bin/cat`, and `/data/{file}` holding
/// `content`.
fn busybox_image(name: &str, file: &str, content: &[u8]) -> Result<Vec<u8>> {
    let busybox =
        std::fs::read("/bin/busybox").context("busybox-static (scripts/setup installs it)")?;
    let mut layer = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>, mode| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        if let Some(link) = link {
            header.set_link_name(link)?;
        }
        header.set_cksum();
        layer.append_data(&mut header, path, data)
    };
    add("bin/", tar::EntryType::Directory, b"", None, 0o755)?;
    add(
        "bin/busybox",
        tar::EntryType::Regular,
        &busybox,
        None,
        0o755,
    )?;
    for applet in ["bin/sh", "bin/cat"] {
        add(applet, tar::EntryType::Symlink, b"", Some("busybox"), 0o777)?;
    }
    add("data/", tar::EntryType::Directory, b"", None, 0o755)?;
    add(
        &format!("data/{file}"),
        tar::EntryType::Regular,
        content,
        None,
        0o644,
    )?;
    let layer = layer.into_inner()?;

    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]},
    }))?;
    let config_name = format!("{}.json", &sha256(&config)[7..]);
    let layer_name = format!("{}/layer.tar", &sha256(&layer)[7..]);
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": config_name, "RepoTags": [name], "Layers": [layer_name]}
    ]))?;
    let mut saved = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("manifest.json", &manifest[..]),
        (&config_name[..], &config[..]),
        (&layer_name[..], &layer[..]),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        saved.append_data(&mut header, path, data)?;
    }
    Ok(saved.into_inner()?)
}

/// The NAME column of `sbx image ls`.
fn image_names(server: &Server) -> Result<Vec<String>> {
    let listed = sbx(server, &["image", "ls"])?;
    ensure!(listed.status.success(), "image ls failed: {listed:?}");
    let text = stdout(&listed);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    ensure!(header.starts_with("NAME "), "image ls header: {header:?}");
    Ok(lines
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

async fn images_from_the_cli(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let scratch = tempfile::tempdir()?;
    let repository = format!("sbx-tests/cli-{:08x}", rand::random::<u32>());
    let content = format!("imported by {repository}\n");

    // From a file, and from stdin.
    let name = format!("{repository}:v1");
    let archive = scratch.path().join("saved.tar");
    std::fs::write(
        &archive,
        busybox_image(
            &format!("{repository}:in-archive"),
            "file",
            content.as_bytes(),
        )?,
    )?;
    let path = archive.to_str().context("utf-8")?;
    let imported = sbx(&server, &["image", "import", path, "-t", &name])?;
    ensure!(
        imported.status.success(),
        "image import failed: {imported:?}"
    );
    assert_eq!(stdout(&imported), format!("{name}\n"), "prints the name");
    let piped_name = format!("{repository}:stdin");
    let piped_archive = busybox_image("sbx-tests/ignored:v1", "piped", b"from stdin\n")?;
    let piped = sbx_with(
        &server,
        &["image", "import", "-", "--name", &piped_name],
        &[],
        Some(&piped_archive),
    )?;
    ensure!(piped.status.success(), "image import - failed: {piped:?}");
    assert_eq!(stdout(&piped), format!("{piped_name}\n"));

    let names = image_names(&server)?;
    for listed in [&name, &piped_name, &"base".to_owned()] {
        assert!(names.contains(listed), "image ls lacks {listed}: {names:?}");
    }
    let inspected = sbx(&server, &["image", "inspect", &name])?;
    ensure!(
        inspected.status.success(),
        "image inspect failed: {inspected:?}"
    );
    let image: serde_json::Value = serde_json::from_slice(&inspected.stdout)?;
    assert_eq!(image["name"], name.as_str(), "{image:#}");
    assert_eq!(image["layers"], 1, "{image:#}");
    assert_eq!(image["source"], "import", "{image:#}");
    assert!(
        image["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("sha256:")),
        "{image:#}"
    );

    // A sandbox runs it, and holds it until it goes.
    let created = sbx(&server, &["create", "--image", &name])?;
    ensure!(created.status.success(), "create failed: {created:?}");
    let id = stdout(&created).trim().to_owned();
    let cat = sbx(&server, &["exec", &id, "--", "cat", "/data/file"])?;
    ensure!(
        cat.status.success(),
        "exec failed: {cat:?}; {}",
        server.log()
    );
    assert_eq!(stdout(&cat), content);
    let held = sbx(&server, &["image", "rm", &name])?;
    assert!(!held.status.success(), "image rm of a used image: {held:?}");
    assert!(
        stderr(&held).contains("conflict") && stderr(&held).contains(&id),
        "says which sandbox uses it: {}",
        stderr(&held)
    );
    assert_eq!(stdout(&held), "");
    let removed = sbx(&server, &["rm", &id])?;
    ensure!(removed.status.success(), "rm failed: {removed:?}");
    let removed = sbx(&server, &["image", "rm", &name, &piped_name])?;
    ensure!(removed.status.success(), "image rm failed: {removed:?}");
    assert_eq!(stdout(&removed), format!("{name}\n{piped_name}\n"));
    let gone = sbx(&server, &["image", "inspect", &name])?;
    assert!(!gone.status.success(), "{gone:?}");
    assert!(stderr(&gone).contains("not found"), "{}", stderr(&gone));
    let names = image_names(&server)?;
    assert!(
        !names.contains(&name) && !names.contains(&piped_name),
        "{names:?}"
    );

    // Pulls from a registry behind basic auth.
    let registry = Registry::start(Some(("agent", "s3cret")))?;
    registry.push(&archive, &format!("{repository}:v1"))?;
    let reference = format!("{}/{repository}:v1", registry.addr);
    let pull = ["image", "pull", reference.as_str(), "-u", "agent"];
    let unsure = sbx_with(&server, &pull, &[], None)?;
    assert_eq!(unsure.status.code(), Some(1), "no password: {unsure:?}");
    assert!(
        stderr(&unsure).contains("SBX_REGISTRY_PASSWORD"),
        "{}",
        stderr(&unsure)
    );
    let nothing = sbx(&server, &["image", "inspect", &reference])?;
    assert!(!nothing.status.success(), "nothing pulled: {nothing:?}");

    let pulled = sbx_with(&server, &pull, &[("SBX_REGISTRY_PASSWORD", "s3cret")], None)?;
    ensure!(
        pulled.status.success(),
        "image pull failed: {pulled:?}; {}",
        server.log()
    );
    assert_eq!(stdout(&pulled), format!("{reference}\n"), "prints the name");
    let inspected = sbx(&server, &["image", "inspect", &reference])?;
    let image: serde_json::Value = serde_json::from_slice(&inspected.stdout)?;
    assert_eq!(image["name"], reference.as_str(), "{image:#}");
    assert_eq!(image["layers"], 1, "{image:#}");

    let renamed = format!("{repository}:pulled");
    let from_stdin = sbx_with(
        &server,
        &[&pull[..], &["--password-stdin", "-t", &renamed]].concat(),
        &[],
        Some(b"s3cret\n"),
    )?;
    ensure!(
        from_stdin.status.success(),
        "image pull --password-stdin failed: {from_stdin:?}"
    );
    assert_eq!(stdout(&from_stdin), format!("{renamed}\n"));
    assert!(
        !server.log().contains("s3cret"),
        "the password is never logged"
    );

    let removed = sbx(&server, &["image", "rm", &reference, &renamed])?;
    ensure!(removed.status.success(), "image rm failed: {removed:?}");
    let names = image_names(&server)?;
    assert!(
        !names.contains(&reference) && !names.contains(&renamed),
        "{names:?}"
    );
    Ok(())
}

/// `sbx image build` on a context directory: each step and the output of
/// `RUN` printed as it happens, a build argument from the environment,
/// `.dockerignore` applied; a rebuild wholly from the cache; an unsupported
/// instruction and a Dockerfile outside the context refused.
async fn build_from_the_cli(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let scratch = tempfile::tempdir()?;
    let repository = format!(
        "localhost/sbx-tests/cli-build-{:08x}",
        rand::random::<u32>()
    );
    let base = format!("{repository}:base");
    let archive = scratch.path().join("base.tar");
    std::fs::write(&archive, busybox_image(&base, "file", b"in the base\n")?)?;
    let imported = sbx(
        &server,
        &["image", "import", archive.to_str().context("utf-8")?],
    )?;
    ensure!(
        imported.status.success(),
        "image import failed: {imported:?}"
    );

    let context = scratch.path().join("context");
    std::fs::create_dir(&context)?;
    let dockerfile = format!(
        "FROM {base}\nARG GREETING\nCOPY app.txt /app/\nCOPY . /ctx/\n\
         RUN echo \"greeting=$GREETING\" && echo built-output && cat /app/app.txt > /app/copy.txt\n"
    );
    std::fs::write(context.join("Dockerfile"), &dockerfile)?;
    std::fs::write(context.join("app.txt"), "from the context\n")?;
    std::fs::write(context.join("secret.txt"), "never sent\n")?;
    std::fs::write(
        context.join(".dockerignore"),
        "# not for the image\nsecret.txt\n",
    )?;
    let dir = context.to_str().context("utf-8")?;
    let name = format!("{repository}:built");
    let build = [
        "image",
        "build",
        "-t",
        name.as_str(),
        "--build-arg",
        "GREETING",
        dir,
    ];
    let env = [("GREETING", "hi-from-env")];

    let built = sbx_with(&server, &build, &env, None)?;
    ensure!(
        built.status.success(),
        "image build failed: {built:?}; {}",
        server.log()
    );
    let out = stdout(&built);
    for expected in [
        format!("Step 1/5 : FROM {base}\n"),
        "Step 3/5 : COPY app.txt /app/\n".to_owned(),
        "Step 5/5 : RUN echo".to_owned(),
        "greeting=hi-from-env\nbuilt-output\n".to_owned(),
    ] {
        assert!(out.contains(&expected), "{expected:?} in {out}");
    }
    let last = out.lines().last().unwrap_or_default();
    assert!(last.starts_with(&format!("Built {name} (")), "{out}");

    let created = sbx(&server, &["create", "--image", &name])?;
    ensure!(created.status.success(), "create failed: {created:?}");
    let id = stdout(&created).trim().to_owned();
    let check = sbx(
        &server,
        &[
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "cat /app/copy.txt /data/file /ctx/app.txt /ctx/.dockerignore; \
             if [ -e /ctx/secret.txt ]; then echo secret sent; fi",
        ],
    )?;
    ensure!(check.status.success(), "exec failed: {check:?}");
    assert_eq!(
        stdout(&check),
        "from the context\nin the base\nfrom the context\n# not for the image\nsecret.txt\n"
    );
    let removed = sbx(&server, &["rm", &id])?;
    ensure!(removed.status.success(), "rm failed: {removed:?}");

    // Nothing changed: every step from the cache, nothing run.
    let again = sbx_with(&server, &build, &env, None)?;
    ensure!(again.status.success(), "the rebuild failed: {again:?}");
    let out = stdout(&again);
    let lines: Vec<&str> = out.lines().collect();
    let steps: Vec<usize> = (0..lines.len())
        .filter(|&at| lines[at].starts_with("Step "))
        .collect();
    assert_eq!(steps.len(), 5, "{out}");
    for at in steps {
        assert_eq!(lines.get(at + 1), Some(&" ---> Using cache"), "{out}");
    }
    assert!(!out.contains("greeting=hi-from-env"), "{out}");
    assert!(out.contains(&format!("Built {name} (")), "{out}");

    // An instruction sbx does not build: exit code 1, the line named.
    std::fs::write(
        context.join("Dockerfile"),
        format!("FROM {base}\nEXPOSE 80\n"),
    )?;
    let refused = sbx(&server, &["image", "build", "-t", &name, dir])?;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        stderr(&refused).contains("line 2") && stderr(&refused).contains("EXPOSE"),
        "{}",
        stderr(&refused)
    );

    // A Dockerfile outside the context: a usage error, nothing sent.
    let outside = scratch.path().join("Outside.Dockerfile");
    std::fs::write(&outside, format!("FROM {base}\n"))?;
    let outside = outside.to_str().context("utf-8")?;
    let refused = sbx(
        &server,
        &["image", "build", "-t", &name, "-f", outside, dir],
    )?;
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(
        stderr(&refused).contains("outside the context"),
        "{}",
        stderr(&refused)
    );

    let removed = sbx(&server, &["image", "rm", &name, &base])?;
    ensure!(removed.status.success(), "image rm failed: {removed:?}");
    Ok(())
}

sbx_tests::on_every_runtime!(
    create_exec_ls_rm,
    background_processes_from_the_cli,
    cp_round_trips_a_100_mib_file_and_a_tree,
    without_a_token_the_cli_is_refused,
    images_from_the_cli,
    build_from_the_cli,
    // hosts_only: stop, pause and snapshots, which the kubernetes runtime
    // refuses (tests/kubernetes.rs).
    ; hosts_only:
    lifecycle_from_the_cli,
);

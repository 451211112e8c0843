//! End to end through the `sbx` binary: the live commands as a person
//! types them — `sbx shell` in a real terminal (a private tmux server,
//! driven with `send-keys` and read with `capture-pane`), reattaching to
//! a terminal, `sbx forward` carrying TCP, `sbx session`, `sbx watch`,
//! `sbx port wait` and `sbx preview`, on both runtimes.
//!
//! Everything that waits polls with a deadline: a terminal draws, a
//! forward starts listening and a watch starts watching when they do.

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use sbx_api::client::Client;
use sbx_tests::{eventually, free_loopback_port, sbx_bin, Engine, Server};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any one wait for a screen, a line or an event may take.
const WAIT: Duration = Duration::from_secs(20);

fn sbx(server: &Server, args: &[&str]) -> Result<Output> {
    sbx_with_input(server, args, None)
}

/// How long one `sbx` command may take (the longest waits 20 s for a
/// port).
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// `sbx` with `input` (if any) on a piped stdin, closed after it; killed
/// (by its pid) if it has not exited within [`COMMAND_LIMIT`].
fn sbx_with_input(server: &Server, args: &[&str], input: Option<&[u8]>) -> Result<Output> {
    let mut child = Command::new(sbx_bin())
        .args(args)
        .env("SBX_URL", &server.url)
        .env("SBX_TOKEN", &server.token)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pipes: [Box<dyn Read + Send>; 2] = [
        Box::new(child.stdout.take().context("piped")?),
        Box::new(child.stderr.take().context("piped")?),
    ];
    let readers = pipes.map(|mut pipe| {
        std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = pipe.read_to_end(&mut all);
            all
        })
    });
    let written = match (input, child.stdin.take()) {
        (Some(input), Some(mut stdin)) => stdin.write_all(input),
        _ => Ok(()),
    };
    let deadline = Instant::now() + COMMAND_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if written.is_err() || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let [stdout, stderr] = readers.map(|reader| reader.join().unwrap_or_default());
    written.context("writing sbx's stdin")?;
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => bail!(
            "sbx {args:?} still running after {COMMAND_LIMIT:?}; stdout {:?}, stderr {:?}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `sbx` that must succeed; its stdout.
fn sbx_ok(server: &Server, args: &[&str]) -> Result<String> {
    let output = sbx(server, args)?;
    ensure!(
        output.status.success(),
        "sbx {args:?} failed ({}): {}",
        output.status,
        stderr(&output)
    );
    Ok(stdout(&output))
}

fn new_sandbox(server: &Server) -> Result<String> {
    Ok(sbx_ok(server, &["create"])?.trim().to_owned())
}

/// A shell script run in the sandbox, which must succeed; its stdout.
fn sh(server: &Server, id: &str, script: &str) -> Result<String> {
    sbx_ok(server, &["exec", "--shell", id, "--", script])
}

/// A long-running `sbx` (forward, watch, a shell to detach from), its
/// output collected as it comes; killed (by its pid) when dropped.
struct Background {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Background {
    /// Starts `sbx args` with a stdin that stays open and empty.
    fn spawn(server: &Server, args: &[&str]) -> Result<Self> {
        let mut child = Command::new(sbx_bin())
            .args(args)
            .env("SBX_URL", &server.url)
            .env("SBX_TOKEN", &server.token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let collect = |mut from: Box<dyn Read + Send>| {
            let into = Arc::new(Mutex::new(Vec::new()));
            let buffer = into.clone();
            std::thread::spawn(move || {
                let mut chunk = [0; 4096];
                while let Ok(read @ 1..) = from.read(&mut chunk) {
                    buffer
                        .lock()
                        .expect("no reader panics")
                        .extend_from_slice(&chunk[..read]);
                }
            });
            into
        };
        let stdout = collect(Box::new(child.stdout.take().context("piped")?));
        let stderr = collect(Box::new(child.stderr.take().context("piped")?));
        Ok(Self {
            child,
            stdout,
            stderr,
        })
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().expect("no reader panics")).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("no reader panics")).into_owned()
    }

    /// Waits until `check` holds for what the process printed.
    async fn wait_for(&self, what: &str, check: impl Fn(&Self) -> bool) -> Result<()> {
        if !eventually(WAIT, || async { check(self) }).await {
            bail!(
                "{what}: not seen; stdout {:?}, stderr {:?}",
                self.stdout(),
                self.stderr()
            );
        }
        Ok(())
    }

    fn signal(&self, signal: libc::c_int) -> Result<()> {
        let pid = libc::pid_t::try_from(self.child.id())?;
        // SAFETY: kill(2) on the pid of our own child, not yet reaped (we
        // hold its `Child`), so the pid cannot have been reused.
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!("kill: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits for the process to exit by itself, within the deadline.
    async fn exited(&mut self) -> Result<ExitStatus> {
        let mut status = None;
        let exited = eventually(WAIT, || {
            status = status.or_else(|| self.child.try_wait().ok().flatten());
            let done = status.is_some();
            async move { done }
        })
        .await;
        match status {
            Some(status) if exited => Ok(status),
            _ => bail!("still running; stderr {:?}", self.stderr()),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private tmux server (its own socket), with one session `t` of one
/// pane; the server is killed when this is dropped, whatever happened.
struct Tmux {
    socket: String,
    /// The socket's file, which the server leaves behind.
    socket_path: Option<String>,
}

impl Tmux {
    /// A `width`×`height` pane running `command` through `sh -c`, with the
    /// server's URL and token in its environment.
    fn start(server: &Server, width: u16, height: u16, command: &str) -> Result<Self> {
        let mut tmux = Self {
            socket: format!(
                "sbx-cli-live-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ),
            socket_path: None,
        };
        // The first client starts the server, which hands its environment
        // to the pane.
        let started = Command::new("tmux")
            .args(["-L", &tmux.socket, "-f", "/dev/null", "new-session", "-d"])
            .args([
                "-s",
                "t",
                "-x",
                &width.to_string(),
                "-y",
                &height.to_string(),
            ])
            .arg(command)
            .env("SBX_URL", &server.url)
            .env("SBX_TOKEN", &server.token)
            .env_remove("TMUX")
            .stdin(Stdio::null())
            .output()
            .context("cannot run tmux (apt-get install tmux)")?;
        ensure!(started.status.success(), "tmux: {}", stderr(&started));
        let path = tmux.tmux(&["display-message", "-p", "#{socket_path}"])?;
        tmux.socket_path = Some(path.trim().to_owned());
        Ok(tmux)
    }

    fn tmux(&self, args: &[&str]) -> Result<String> {
        let output = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .env_remove("TMUX")
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            output.status.success(),
            "tmux {args:?}: {}",
            stderr(&output)
        );
        Ok(stdout(&output))
    }

    /// Types `text` and presses Enter.
    fn type_line(&self, text: &str) -> Result<()> {
        self.tmux(&["send-keys", "-t", "t", "-l", text])?;
        self.tmux(&["send-keys", "-t", "t", "Enter"])?;
        Ok(())
    }

    /// What the pane shows now.
    fn screen(&self) -> Result<String> {
        self.tmux(&["capture-pane", "-p", "-t", "t"])
    }

    /// The pane's size in cells, as tmux has it.
    fn pane_size(&self) -> Result<(u16, u16)> {
        let size = self.tmux(&[
            "display-message",
            "-p",
            "-t",
            "t",
            "#{pane_width} #{pane_height}",
        ])?;
        let (width, height) = size.trim().split_once(' ').context("two numbers")?;
        Ok((width.parse()?, height.parse()?))
    }

    /// Waits until the screen satisfies `check`; returns that screen.
    async fn wait_for(&self, what: &str, check: impl Fn(&str) -> bool) -> Result<String> {
        let mut seen = String::new();
        let shown = eventually(WAIT, || {
            seen = self.screen().unwrap_or_default();
            let shown = check(&seen);
            async move { shown }
        })
        .await;
        ensure!(shown, "{what}: not shown; the screen:\n{seen}");
        Ok(seen)
    }

    /// Waits until a line of the screen is exactly `line`.
    async fn wait_for_line(&self, line: &str) -> Result<String> {
        self.wait_for(line, |screen| screen.lines().any(|l| l.trim_end() == line))
            .await
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .env_remove("TMUX")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The terminals `sbx pty ls ID` lists, a line each (no header).
fn terminals(server: &Server, id: &str) -> Result<Vec<String>> {
    let listed = sbx_ok(server, &["pty", "ls", id])?;
    let mut lines = listed.lines();
    ensure!(
        lines.next().is_some_and(|header| header.starts_with("ID")),
        "{listed}"
    );
    Ok(lines.map(str::to_owned).collect())
}

async fn shell_in_a_real_terminal(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let id = new_sandbox(&server)?;
    sh(&server, &id, "seq -f 'line-%04g' 1 500 > /tmp/lines.txt")?;

    let command = format!(
        "'{}' shell {id}; echo \"rc=$?\"; sleep 600",
        sbx_bin().display()
    );
    let tmux = Tmux::start(&server, 120, 40, &command)?;
    // The sandbox's shell prompts (root's: `#`).
    tmux.wait_for("the prompt", |screen| {
        screen
            .lines()
            .rev()
            .find(|line| !line.trim().is_empty())
            .is_some_and(|line| line.trim_end().ends_with('#'))
    })
    .await?;

    // What is typed reaches the shell, and its output the screen: the
    // output line, not the echo of the typing, is the sum alone.
    tmux.type_line("echo $((6*7))")?;
    tmux.wait_for_line("42").await?;
    let listed = terminals(&server, &id)?;
    ensure!(listed.len() == 1, "one terminal: {listed:?}");

    // The terminal has the pane's size, and follows it.
    let (width, height) = tmux.pane_size()?;
    ensure!(width == 120, "pane width {width}");
    tmux.type_line("echo size-$(tput cols)x$(tput lines)")?;
    tmux.wait_for_line(&format!("size-{width}x{height}"))
        .await?;
    ensure!(
        listed[0].contains(&format!("{width}x{height}")),
        "{listed:?}"
    );
    tmux.tmux(&["resize-window", "-t", "t", "-x", "100", "-y", "30"])?;
    let (width, height) = tmux.pane_size()?;
    ensure!(width == 100, "resized pane width {width}");
    // The window change and the typing reach `sbx shell` independently
    // (a signal and stdin): ask again until the answer is the new size.
    let wanted = format!("size-{width}x{height}");
    let deadline = Instant::now() + WAIT;
    loop {
        tmux.type_line("echo size-$(tput cols)x$(tput lines)")?;
        let shown = eventually(Duration::from_secs(2), || async {
            tmux.screen()
                .is_ok_and(|screen| screen.lines().any(|line| line.trim_end() == wanted))
        })
        .await;
        if shown {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{wanted} not shown; the screen:\n{}",
            tmux.screen()?
        );
    }

    // A full-screen program draws its screen, a line per row above its
    // prompt; quitting brings the shell's screen back.
    tmux.tmux(&["send-keys", "-t", "t", "-l", "clear"])?;
    tmux.tmux(&["send-keys", "-t", "t", "Enter"])?;
    tmux.type_line("less /tmp/lines.txt")?;
    let last_row = format!("line-{:04}", height - 1);
    let screen = tmux
        .wait_for("less's first page", |screen| {
            screen.lines().any(|line| line.trim_end() == last_row)
        })
        .await?;
    let rows: Vec<&str> = screen.lines().collect();
    for (row, line) in rows.iter().take(usize::from(height - 1)).enumerate() {
        ensure!(
            line.trim_end() == format!("line-{:04}", row + 1),
            "row {row} of less's screen is {line:?}:\n{screen}"
        );
    }
    tmux.tmux(&["send-keys", "-t", "t", "-l", "q"])?;
    tmux.wait_for("the shell's screen again", |screen| {
        !screen.contains("line-0001")
    })
    .await?;
    tmux.type_line("echo back-$((2+3))")?;
    tmux.wait_for_line("back-5").await?;

    // The shell's exit code is `sbx shell`'s, and the finished terminal
    // is deleted.
    tmux.type_line("exit 3")?;
    tmux.wait_for_line("rc=3").await?;
    let listed = terminals(&server, &id)?;
    ensure!(listed.is_empty(), "deleted after its exit: {listed:?}");
    Ok(())
}

/// The terminal id in `sbx shell`'s "… --attach TID" line.
fn attach_id(stderr: &str) -> Result<String> {
    let (_, rest) = stderr
        .rsplit_once("--attach ")
        .with_context(|| format!("no reattach command in {stderr:?}"))?;
    Ok(rest.split_whitespace().next().context("an id")?.to_owned())
}

async fn a_terminal_outlives_its_connection(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let id = new_sandbox(&server)?;

    // Without a terminal on this side: no raw mode, 80x24, and piped
    // input is typed into the login shell.
    let piped = sbx_with_input(
        &server,
        &["shell", &id],
        Some(b"echo piped-$((3*3)) $(tput cols)x$(tput lines); exit 4\n"),
    )?;
    ensure!(piped.status.code() == Some(4), "{piped:?}");
    ensure!(stdout(&piped).contains("piped-9 80x24"), "{piped:?}");
    ensure!(
        terminals(&server, &id)?.is_empty(),
        "deleted after its exit"
    );

    let script = "echo hi-$((1+1)) $(tput cols)x$(tput lines); read line; echo got-$line; exit 5";
    let mut first = Background::spawn(&server, &["shell", &id, "--", "sh", "-c", script])?;
    first
        .wait_for("the command's first line", |shell| {
            shell.stdout().contains("hi-2 80x24")
        })
        .await?;
    // Told to stop, it detaches: the terminal lives on.
    first.signal(libc::SIGTERM)?;
    let status = first.exited().await?;
    ensure!(status.code() == Some(255), "detached: {status}");
    let tid = attach_id(&first.stderr())?;
    let listed = terminals(&server, &id)?;
    ensure!(
        listed.len() == 1 && listed[0].starts_with(&tid),
        "{tid} still listed: {listed:?}"
    );

    // Reattached: what it showed comes first, then it goes on.
    let again = sbx_with_input(&server, &["shell", &id, "--attach", &tid], Some(b"typed\n"))?;
    ensure!(
        again.status.code() == Some(5),
        "the command's exit code: {again:?}"
    );
    let shown = stdout(&again);
    ensure!(
        shown.contains("hi-2 80x24") && shown.contains("got-typed"),
        "{shown:?}"
    );
    ensure!(
        terminals(&server, &id)?.is_empty(),
        "deleted after its exit"
    );

    // `sbx pty kill` ends one that nobody watches.
    let mut second = Background::spawn(&server, &["shell", &id, "--", "sleep", "600"])?;
    // Attached (one viewer): its signals are handled from then on.
    second
        .wait_for("a terminal with its viewer", |_| {
            terminals(&server, &id).is_ok_and(|listed| {
                listed.len() == 1 && listed[0].split_whitespace().nth(3) == Some("1")
            })
        })
        .await?;
    second.signal(libc::SIGHUP)?;
    ensure!(second.exited().await?.code() == Some(255));
    let tid = attach_id(&second.stderr())?;
    let killed = sbx_ok(&server, &["pty", "kill", &id, &tid])?;
    ensure!(killed.trim() == tid, "{killed:?}");
    ensure!(terminals(&server, &id)?.is_empty());

    let missing = sbx(&server, &["shell", &id, "--attach", "nope"])?;
    ensure!(missing.status.code() == Some(1), "{missing:?}");
    ensure!(stderr(&missing).contains("not_found"), "{missing:?}");
    Ok(())
}

/// Starts `python3 -m http.server` on 8000 in the sandbox, serving
/// /workspace/site (an index.html and 1 MB of random bytes), and waits for
/// it with `sbx port wait`; returns the big file's sha256.
fn start_web_server(server: &Server, id: &str) -> Result<String> {
    let digest = sh(
        server,
        id,
        "mkdir -p /workspace/site && echo '<p>hello from the sandbox</p>' > /workspace/site/index.html \
         && head -c 1000000 /dev/urandom > /workspace/site/big.bin \
         && sha256sum /workspace/site/big.bin",
    )?;
    sbx_ok(
        server,
        &[
            "exec",
            "-d",
            "--shell",
            id,
            "--",
            "python3 -m http.server 8000 --bind 127.0.0.1 --directory /workspace/site",
        ],
    )?;
    sbx_ok(server, &["port", "wait", "--timeout", "20s", id, "8000"])?;
    Ok(digest
        .split_whitespace()
        .next()
        .context("a digest")?
        .to_owned())
}

/// Sends an HTTP/1.0 request by hand.
async fn send_get(stream: &mut TcpStream, path: &str) -> Result<()> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    Ok(())
}

/// Reads an answer to its end (an HTTP/1.0 server closes the connection
/// after it): its head and body.
async fn read_answer(stream: &mut TcpStream) -> Result<(String, Vec<u8>)> {
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .context("the answer did not end")??;
    let split = answer
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .with_context(|| format!("no head in {:?}", String::from_utf8_lossy(&answer)))?;
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    Ok((head, answer[split + 4..].to_vec()))
}

async fn forward_carries_tcp_to_a_port(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let id = new_sandbox(&server)?;
    let digest = start_web_server(&server, &id)?;

    // Nothing on another port: the wait gives up and says so.
    let waited = sbx(
        &server,
        &["port", "wait", "--timeout", "300ms", &id, "8999"],
    )?;
    ensure!(
        !waited.status.success() && stderr(&waited).contains("nothing listens on port 8999"),
        "{waited:?}"
    );

    let local = free_loopback_port()?;
    let mut forward = Background::spawn(&server, &["forward", &id, "8000", &local.to_string()])?;
    let line = format!("Forwarding 127.0.0.1:{local} -> {id}:8000\n");
    forward
        .wait_for("the Forwarding line", |forward| forward.stderr() == line)
        .await?;

    // Two connections at once, each through its own tunnel.
    let mut first = TcpStream::connect(("127.0.0.1", local)).await?;
    let mut second = TcpStream::connect(("127.0.0.1", local)).await?;
    send_get(&mut first, "/index.html").await?;
    send_get(&mut second, "/big.bin").await?;
    let (head, body) = read_answer(&mut second).await?;
    ensure!(head.starts_with("HTTP/1.0 200"), "{head}");
    ensure!(body.len() == 1_000_000, "{} bytes", body.len());
    ensure!(format!("{:x}", Sha256::digest(&body)) == digest);
    let (head, body) = read_answer(&mut first).await?;
    ensure!(head.starts_with("HTTP/1.0 200"), "{head}");
    ensure!(body == b"<p>hello from the sandbox</p>\n", "{body:?}");

    // And after them, another.
    let mut third = TcpStream::connect(("127.0.0.1", local)).await?;
    send_get(&mut third, "/missing").await?;
    let (head, _) = read_answer(&mut third).await?;
    ensure!(head.starts_with("HTTP/1.0 404"), "{head}");

    // A client that half-closes after its request (as `nc -N` does) still
    // gets the answer: its EOF crosses the tunnel as an EOF.
    let mut half = TcpStream::connect(("127.0.0.1", local)).await?;
    send_get(&mut half, "/index.html").await?;
    half.shutdown().await?;
    let (head, body) = read_answer(&mut half).await?;
    ensure!(head.starts_with("HTTP/1.0 200"), "{head}");
    ensure!(body == b"<p>hello from the sandbox</p>\n", "{body:?}");

    // Ctrl-C ends it, cleanly.
    forward.signal(libc::SIGINT)?;
    let status = forward.exited().await?;
    ensure!(status.success(), "{status}; {}", forward.stderr());
    ensure!(
        forward.stderr() == line,
        "no errors: {:?}",
        forward.stderr()
    );
    Ok(())
}

async fn sessions_keep_their_shell_state(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let id = new_sandbox(&server)?;
    let sid = sbx_ok(&server, &["session", "create", "-e", "GREETING=hi", &id])?
        .trim()
        .to_owned();
    ensure!(
        !sid.is_empty() && !sid.contains(char::is_whitespace),
        "{sid:?}"
    );
    let exec = |words: &[&str]| {
        let mut args = vec!["session", "exec", &id, &sid, "--"];
        args.extend_from_slice(words);
        sbx(&server, &args)
    };

    ensure!(exec(&["cd", "/tmp"])?.status.success());
    ensure!(exec(&["export", "X=1"])?.status.success());
    let state = exec(&["pwd;", "echo", "x=$X", "$GREETING"])?;
    ensure!(stdout(&state) == "/tmp\nx=1 hi\n", "{state:?}");

    let failed = exec(&["echo", "to-stderr", ">&2;", "(exit", "7)"])?;
    ensure!(failed.status.code() == Some(7), "{failed:?}");
    ensure!(stderr(&failed) == "to-stderr\n" && stdout(&failed).is_empty());

    let mut args = vec!["session", "exec", "--timeout", "500ms", &id, &sid];
    args.extend(["--", "sleep", "100"]);
    let timed = sbx(&server, &args)?;
    ensure!(timed.status.code() == Some(124), "{timed:?}");
    ensure!(stdout(&exec(&["pwd"])?) == "/tmp\n", "the session survived");

    let listed = sbx_ok(&server, &["session", "ls", &id])?;
    ensure!(
        listed.lines().any(|line| line.starts_with(&sid)),
        "{listed}"
    );
    ensure!(sbx_ok(&server, &["session", "rm", &id, &sid])?.trim() == sid);
    let listed = sbx_ok(&server, &["session", "ls", &id])?;
    ensure!(!listed.contains(&sid), "{listed}");
    let gone = exec(&["true"])?;
    ensure!(
        gone.status.code() == Some(1) && stderr(&gone).contains("not_found"),
        "{gone:?}"
    );

    // A command that ends the shell ends the session, with its code.
    let other = sbx_ok(&server, &["session", "create", "--cwd", "/", &id])?
        .trim()
        .to_owned();
    let ended = sbx(
        &server,
        &["session", "exec", &id, &other, "--", "exit", "3"],
    )?;
    ensure!(ended.status.code() == Some(3), "{ended:?}");
    let listed = sbx_ok(&server, &["session", "ls", &id])?;
    ensure!(!listed.contains(&other), "{listed}");
    Ok(())
}

async fn watch_prints_changes(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let id = new_sandbox(&server)?;
    sh(&server, &id, "mkdir -p /workspace/watched/deep")?;

    let json = Background::spawn(&server, &["watch", "--json", &id, "/workspace/watched"])?;
    let text = Background::spawn(&server, &["watch", &id, "/workspace/watched"])?;
    for watch in [&json, &text] {
        watch
            .wait_for("the Watching line", |watch| {
                watch
                    .stderr()
                    .contains(&format!("Watching {id}:/workspace/watched"))
            })
            .await?;
    }
    sbx_ok(
        &server,
        &[
            "exec",
            &id,
            "--",
            "touch",
            "/workspace/watched/deep/new.txt",
        ],
    )?;
    sh(
        &server,
        &id,
        "mv /workspace/watched/deep/new.txt /workspace/watched/moved.txt",
    )?;

    json.wait_for("a create event as JSON", |watch| {
        watch.stdout().lines().any(|line| {
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|event| {
                event["type"] == "create" && event["path"] == "/workspace/watched/deep/new.txt"
            })
        })
    })
    .await?;
    text.wait_for("the events as lines", |watch| {
        let out = watch.stdout();
        out.lines()
            .any(|line| line == "create /workspace/watched/deep/new.txt")
            && out.lines().any(|line| {
                line == "move /workspace/watched/deep/new.txt -> /workspace/watched/moved.txt"
            })
    })
    .await?;
    Ok(())
}

/// `GET path` on the server without a token: status and body.
async fn anonymous_get(server: &Server, path: &str) -> Result<(StatusCode, Bytes)> {
    let response = Client::new(&server.url, None)?
        .send(Method::GET, path, None, Bytes::new())
        .await?;
    let status = response.status();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

async fn previews_from_the_cli(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let id = new_sandbox(&server)?;
    start_web_server(&server, &id)?;

    let url = sbx_ok(&server, &["preview", "create", "--ttl", "1h", &id, "8000"])?;
    let url = url.trim();
    ensure!(url.lines().count() == 1, "only the URL: {url:?}");
    let path = url
        .strip_prefix(&server.url)
        .with_context(|| format!("{url} is on {}", server.url))?
        .to_owned();
    let (status, body) = anonymous_get(&server, &format!("{path}index.html")).await?;
    ensure!(status == StatusCode::OK, "{status}");
    ensure!(body == "<p>hello from the sandbox</p>\n", "{body:?}");

    let listed = sbx_ok(&server, &["preview", "ls", &id])?;
    let rows: Vec<&str> = listed.lines().skip(1).collect();
    ensure!(rows.len() == 1, "{listed}");
    let columns: Vec<&str> = rows[0].split_whitespace().collect();
    ensure!(columns.len() == 3 && columns[1] == "8000", "{listed}");
    ensure!(
        !listed.contains(&path[3..]),
        "the URL's secret is not listed"
    );
    let preview_id = columns[0];

    ensure!(sbx_ok(&server, &["preview", "rm", &id, preview_id])?.trim() == preview_id);
    let (status, _) = anonymous_get(&server, &format!("{path}index.html")).await?;
    ensure!(status == StatusCode::NOT_FOUND, "removed: {status}");
    let listed = sbx_ok(&server, &["preview", "ls", &id])?;
    ensure!(listed.lines().count() == 1, "{listed}");
    Ok(())
}

sbx_tests::on_every_runtime!(
    shell_in_a_real_terminal,
    a_terminal_outlives_its_connection,
    forward_carries_tcp_to_a_port,
    sessions_keep_their_shell_state,
    watch_prints_changes,
    previews_from_the_cli,
);

//! `sbx shell`, `sbx pty` and `sbx forward`: a sandbox's terminals on the
//! user's own terminal, and its ports on local sockets, over the API's
//! WebSockets (see `sbx_api::client`'s live calls).
//!
//! **The local terminal.** `sbx shell` puts its terminal in raw mode, so
//! every key (Ctrl-C, arrows, Ctrl-D) reaches the sandbox's terminal,
//! whose line discipline does what a local one would. Raw mode is set only
//! when stdin is a terminal, and a guard restores it on every way out: the
//! command's exit, an error, a panic (its unwinding drops the guard), and
//! `SIGHUP`/`SIGTERM`, which are caught to detach rather than left to kill
//! the process with the terminal still raw.
//!
//! **Input.** stdin is read on a plain thread rather than with tokio's
//! `stdin()`: tokio reads it on a blocking-pool thread that cannot be
//! cancelled, and the runtime's shutdown would wait there for a key press
//! after the shell had exited. A plain thread ends with the process.
//!
//! **Ending.** The terminal outlives the connection (the server keeps it
//! and its scrollback), so a connection that drops without the exit frame
//! is reported with the command that reattaches, and `sbx shell` exits 255,
//! as `ssh` does when it loses its connection; an exit frame makes it exit
//! with the command's code and delete the finished terminal.
//!
//! **Forwarding** opens one tunnel WebSocket per accepted connection, as
//! `kubectl port-forward` does. A WebSocket has no half-close of its own,
//! so the local side's EOF sends the tunnel's: an empty binary frame (the
//! agent then shuts its port's write side, and what the port still says
//! comes back), and the sandbox side's close frame shuts the local
//! socket's write side. A client that half-closes after its request
//! (`nc -N`) gets its answer, and an HTTP/1.0 server's answer, ended by
//! its close, reaches the client whole.

use super::{parse_key_value, CliError, ConnArgs};
use bytes::Bytes;
use clap::{Args, Subcommand};
use futures_util::{SinkExt, StreamExt};
use nix::sys::termios::{self, SetArg, Termios};
use sbx_api::client::{Client, ClientError, WebSocket};
use sbx_api::{CreatePtyRequest, ErrorCode, PortWaitQuery, PtyControl, PtySize, MAX_PTY_CELLS};
use std::io::{IsTerminal, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message};

/// The size of a terminal opened when stdout is not a terminal.
const DEFAULT_SIZE: PtySize = PtySize { cols: 80, rows: 24 };

/// `sbx shell`'s exit code when the connection is lost (as `ssh`'s).
const CONNECTION_LOST: u8 = 255;

/// Largest chunk read from stdin or a forwarded socket into one frame.
const CHUNK: usize = 64 * 1024;

/// The terminal and port verbs, flattened into `sbx`'s own subcommands.
#[derive(Debug, Subcommand)]
pub enum TerminalCommand {
    /// Open an interactive terminal in a sandbox: its login shell, or CMD
    /// after `--`, sized like this terminal. Exits with the command's exit
    /// code, or 255 if the connection is lost (the terminal lives on:
    /// `sbx shell ID --attach TID` reattaches). Piped stdin is typed into
    /// it as it comes (end it with `exit`, as with `ssh -tt`)
    Shell(ShellArgs),
    /// List a sandbox's terminals (`sbx pty ls ID`), or kill them (`sbx pty
    /// kill ID TID…`)
    Pty {
        #[command(subcommand)]
        command: PtyCommand,
    },
    /// Forward a local TCP port to PORT inside a sandbox, until Ctrl-C:
    /// `sbx forward ID 8000` serves 127.0.0.1:8000
    Forward(ForwardArgs),
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Start in this directory (default: the user's home)
    #[arg(long)]
    cwd: Option<String>,
    /// Run as this user (name or uid[:gid]; default root)
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// KEY=VALUE, repeatable
    #[arg(long = "env", short = 'e', value_parser = parse_key_value)]
    env: Vec<(String, String)>,
    /// Attach to this existing terminal (see `sbx pty ls`) instead of
    /// opening one; what it last showed is replayed first
    #[arg(long, value_name = "TID", conflicts_with_all = ["cwd", "user", "env", "command"])]
    attach: Option<String>,
    id: String,
    /// The command and its arguments (default: the user's login shell)
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum PtyCommand {
    /// List a sandbox's terminals, running and exited
    Ls {
        #[command(flatten)]
        conn: ConnArgs,
        id: String,
    },
    /// Kill terminals (their whole session) and forget them; prints their
    /// ids
    Kill {
        #[command(flatten)]
        conn: ConnArgs,
        id: String,
        #[arg(required = true)]
        tids: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct ForwardArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// The local address to listen on
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    address: IpAddr,
    id: String,
    /// The port inside the sandbox
    #[arg(value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// The local port (default: PORT; 0 picks a free one)
    local_port: Option<u16>,
}

pub async fn run(command: TerminalCommand) -> Result<ExitCode, CliError> {
    match command {
        TerminalCommand::Shell(args) => shell(args).await,
        TerminalCommand::Pty {
            command: PtyCommand::Ls { conn, id },
        } => {
            let terminals = conn.client()?.sandbox(&id).terminals().await?;
            println!(
                "{:<18} {:<8} {:<9} {:<7} {:<5} CMD",
                "ID", "PID", "SIZE", "VIEWERS", "EXIT"
            );
            for terminal in terminals {
                println!(
                    "{:<18} {:<8} {:<9} {:<7} {:<5} {}",
                    terminal.id,
                    terminal.pid,
                    format!("{}x{}", terminal.cols, terminal.rows),
                    terminal.viewers,
                    terminal
                        .exit_code
                        .map(|code| code.to_string())
                        .unwrap_or_default(),
                    terminal.cmd.join(" ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TerminalCommand::Pty {
            command: PtyCommand::Kill { conn, id, tids },
        } => {
            let client = conn.client()?;
            for tid in tids {
                client.sandbox(&id).kill_pty(&tid).await?;
                println!("{tid}");
            }
            Ok(ExitCode::SUCCESS)
        }
        TerminalCommand::Forward(args) => forward(args).await,
    }
}

/// How a terminal's connection ended.
enum Ended {
    /// The command exited with this code.
    Exited(i32),
    /// The connection ended without an exit: why.
    Lost(String),
    /// This process was told to stop (the signal's name).
    Detached(&'static str),
}

async fn shell(args: ShellArgs) -> Result<ExitCode, CliError> {
    // Caught from the start, so that a signal while the terminal opens
    // detaches (once attached) rather than killing this process.
    let signals = Signals::new()?;
    let client = args.conn.client()?;
    let sandbox = client.sandbox(&args.id);
    let local_tty = std::io::stdout().is_terminal();
    let size = local_tty
        .then(window_size)
        .flatten()
        .unwrap_or(DEFAULT_SIZE);
    let (tid, opened) = match args.attach {
        Some(tid) => (tid, false),
        None => {
            let request = CreatePtyRequest {
                cmd: (!args.command.is_empty()).then_some(args.command),
                env: args.env.into_iter().collect(),
                cwd: args.cwd,
                user: args.user,
                ..CreatePtyRequest::shell(size.cols, size.rows)
            };
            (sandbox.create_pty(&request).await?.id, true)
        }
    };
    let mut socket = match sandbox.attach_pty(&tid).await {
        Ok(socket) => socket,
        Err(err) => {
            // Nobody could ever see a terminal we opened and cannot attach.
            if opened {
                let _ = sandbox.kill_pty(&tid).await;
            }
            return Err(err.into());
        }
    };
    // A terminal opened elsewhere takes this window's size (its program
    // gets SIGWINCH and redraws).
    if !opened && local_tty {
        let resize = resize_frame(size);
        if let Err(err) = socket.send(resize).await {
            let what = format!("lost the connection to terminal {tid} ({err})");
            return Ok(left_running(&what, &args.id, &tid, false));
        }
    }
    let ended = {
        let _raw = RawMode::enable()?;
        relay(socket, signals, local_tty).await?
    };
    match ended {
        Ended::Exited(code) => {
            // Finished: its scrollback is of no more use to anyone.
            if let Err(err) = sandbox.kill_pty(&tid).await {
                if err.api_error().is_none() {
                    eprintln!("sbx: cannot delete terminal {tid}: {err}");
                }
            }
            Ok(ExitCode::from(
                u8::try_from(code.clamp(0, 255)).unwrap_or(255),
            ))
        }
        Ended::Lost(why) => {
            let what = format!("lost the connection to terminal {tid} ({why})");
            Ok(left_running(&what, &args.id, &tid, local_tty))
        }
        Ended::Detached(signal) => {
            let what = format!("{signal}: detached from terminal {tid}");
            Ok(left_running(&what, &args.id, &tid, local_tty))
        }
    }
}

/// Says how to reattach to a terminal this command leaves running. On a
/// terminal, the cursor may be anywhere in the remote prompt: the message
/// starts a line of its own.
fn left_running(what: &str, id: &str, tid: &str, local_tty: bool) -> ExitCode {
    let newline = if local_tty { "\n" } else { "" };
    eprintln!("{newline}sbx: {what}; it is still running: sbx shell {id} --attach {tid}");
    ExitCode::from(CONNECTION_LOST)
}

/// Copies the terminal to stdout and stdin to the terminal, and this
/// window's size changes to it, until the command exits or the connection
/// ends.
async fn relay(
    socket: WebSocket,
    mut signals: Signals,
    local_tty: bool,
) -> Result<Ended, CliError> {
    let mut input = read_stdin()?;
    let mut input_open = true;
    let mut stdout = tokio::io::stdout();
    let (mut to_terminal, mut from_terminal) = socket.split();
    loop {
        tokio::select! {
            message = from_terminal.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    let written = async {
                        stdout.write_all(&bytes).await?;
                        stdout.flush().await
                    };
                    written.await.map_err(|source| CliError::Local {
                        what: "stdout".into(),
                        source,
                    })?;
                }
                Some(Ok(Message::Text(text))) => {
                    if let Ok(PtyControl::Exit { exit_code }) = serde_json::from_str(&text) {
                        return Ok(Ended::Exited(exit_code));
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let why = match frame {
                        Some(frame) if !frame.reason.is_empty() => {
                            format!("closed by the server: {}", frame.reason.as_str())
                        }
                        _ => "closed by the server".to_owned(),
                    };
                    return Ok(Ended::Lost(why));
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => return Ok(Ended::Lost(err.to_string())),
                None => return Ok(Ended::Lost("the connection ended".to_owned())),
            },
            chunk = input.recv(), if input_open => match chunk {
                Some(bytes) => {
                    if let Err(err) = to_terminal.send(Message::Binary(bytes)).await {
                        return Ok(Ended::Lost(err.to_string()));
                    }
                }
                // The end of stdin is not typed as Ctrl-D: typed ahead, the
                // line discipline may drop it before the program reads (a
                // shell that switches its terminal to raw mode does), so
                // it could not be relied on. Piped input ends with `exit`.
                None => input_open = false,
            },
            _ = signals.window_changes.recv(), if local_tty => {
                if let Some(size) = window_size() {
                    if let Err(err) = to_terminal.send(resize_frame(size)).await {
                        return Ok(Ended::Lost(err.to_string()));
                    }
                }
            }
            _ = signals.hangups.recv() => return Ok(Ended::Detached("SIGHUP")),
            _ = signals.terminations.recv() => return Ok(Ended::Detached("SIGTERM")),
        }
    }
}

/// The signals `sbx shell` handles.
struct Signals {
    window_changes: Signal,
    hangups: Signal,
    terminations: Signal,
}

impl Signals {
    fn new() -> Result<Self, CliError> {
        let handle = |kind| {
            signal(kind).map_err(|source| CliError::Local {
                what: "cannot handle signals".into(),
                source,
            })
        };
        Ok(Self {
            window_changes: handle(SignalKind::window_change())?,
            hangups: handle(SignalKind::hangup())?,
            terminations: handle(SignalKind::terminate())?,
        })
    }
}

fn resize_frame(size: PtySize) -> Message {
    let control = PtyControl::Resize {
        cols: size.cols,
        rows: size.rows,
    };
    Message::Text(
        serde_json::to_string(&control)
            .expect("a resize serializes")
            .into(),
    )
}

/// This process's stdin, chunk by chunk as it arrives, read on a thread of
/// its own (see the module docs); the channel closes at its end.
fn read_stdin() -> Result<mpsc::Receiver<Bytes>, CliError> {
    let (sender, receiver) = mpsc::channel(16);
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buffer = vec![0; CHUNK];
            loop {
                match stdin.read(&mut buffer) {
                    Ok(0) => return,
                    Ok(read) => {
                        let chunk = Bytes::copy_from_slice(&buffer[..read]);
                        if sender.blocking_send(chunk).is_err() {
                            return;
                        }
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        })
        .map_err(|source| CliError::Local {
            what: "cannot start reading stdin".into(),
            source,
        })?;
    Ok(receiver)
}

/// The size of the terminal on stdout, if it is one.
fn window_size() -> Option<PtySize> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which
    // points at a live, writable `winsize` for the whole call.
    let answered = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    (answered && size.ws_col > 0 && size.ws_row > 0).then(|| PtySize {
        cols: size.ws_col.min(MAX_PTY_CELLS),
        rows: size.ws_row.min(MAX_PTY_CELLS),
    })
}

/// stdin's terminal in raw mode while this lives; its old mode comes back
/// when it is dropped, however the scope is left.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Raw mode if stdin is a terminal; nothing to undo otherwise.
    fn enable() -> Result<Option<Self>, CliError> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        let failed = |errno: nix::errno::Errno| CliError::Local {
            what: "cannot put the terminal in raw mode".into(),
            source: errno.into(),
        };
        let saved = termios::tcgetattr(&stdin).map_err(failed)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw).map_err(failed)?;
        Ok(Some(Self { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

async fn forward(args: ForwardArgs) -> Result<ExitCode, CliError> {
    let client = args.conn.client()?;
    // A wrong id or token fails here rather than at the first connection;
    // nothing listening yet is fine, something may by then.
    let probe = PortWaitQuery {
        timeout_ms: Some(1),
    };
    match client
        .sandbox(&args.id)
        .wait_for_port(args.port, &probe)
        .await
    {
        Err(err) if err.api_error().map(|body| body.error_code) != Some(ErrorCode::Unavailable) => {
            return Err(err.into())
        }
        _ => {}
    }
    let local = SocketAddr::new(args.address, args.local_port.unwrap_or(args.port));
    let bind_failed = |source| CliError::Local {
        what: format!("cannot listen on {local}"),
        source,
    };
    let listener = TcpListener::bind(local).await.map_err(bind_failed)?;
    let bound = listener.local_addr().map_err(bind_failed)?;
    // Caught before the line that says it runs: Ctrl-C then always ends
    // it through here, with a success.
    let mut interrupts = signal(SignalKind::interrupt()).map_err(|source| CliError::Local {
        what: "cannot handle signals".into(),
        source,
    })?;
    eprintln!("Forwarding {bound} -> {}:{}", args.id, args.port);
    let _ = std::io::stderr().flush();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let (client, id, port) = (client.clone(), args.id.clone(), args.port);
                    tokio::spawn(async move {
                        if let Err(err) = forward_connection(&client, &id, port, stream).await {
                            eprintln!("sbx: connection from {peer}: {err}");
                        }
                    });
                }
                Err(err) => {
                    eprintln!("sbx: cannot accept a connection on {bound}: {err}");
                    // Out of descriptors, say: do not spin on it.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = interrupts.recv() => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// One accepted connection, through its own tunnel (see the module docs
/// for how each side's end ends the other).
async fn forward_connection(
    client: &Client,
    id: &str,
    port: u16,
    stream: TcpStream,
) -> Result<(), ForwardError> {
    stream.set_nodelay(true)?;
    let socket = client.sandbox(id).open_tunnel(port).await?;
    let (mut to_sandbox, mut from_sandbox) = socket.split();
    let (mut from_local, mut to_local) = stream.into_split();
    let upstream = async {
        let mut buffer = vec![0; CHUNK];
        let copied = async {
            loop {
                let read = from_local.read(&mut buffer).await?;
                if read == 0 {
                    return Ok(());
                }
                let chunk = Bytes::copy_from_slice(&buffer[..read]);
                to_sandbox.send(Message::Binary(chunk)).await?;
            }
        };
        let copied: Result<(), ForwardError> = copied.await;
        // The local EOF, as the tunnel's half close. Fails when the
        // sandbox side closed first; it is closed either way.
        let _ = to_sandbox.send(Message::Binary(Bytes::new())).await;
        copied
    };
    let downstream = async {
        while let Some(message) = from_sandbox.next().await {
            match message? {
                Message::Binary(bytes) => to_local.write_all(&bytes).await?,
                Message::Close(_) => break,
                _ => {}
            }
        }
        to_local.shutdown().await?;
        Ok::<(), ForwardError>(())
    };
    let (up, down) = tokio::join!(upstream, downstream);
    up.and(down)
}

#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error(transparent)]
    Open(#[from] ClientError),
    #[error(transparent)]
    Local(#[from] std::io::Error),
    #[error(transparent)]
    Tunnel(#[from] tungstenite::Error),
}

#[cfg(test)]
mod tests {
    use super::super::{Cli, Command};
    use super::*;
    use clap::Parser;

    fn terminal(args: &[&str]) -> TerminalCommand {
        let cli = Cli::try_parse_from(args).expect("parses");
        match cli.command {
            Command::Terminal(command) => command,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn shell_takes_a_command_after_the_separator() {
        match terminal(&[
            "sbx", "shell", "-e", "A=b", "--cwd", "/tmp", "abc", "--", "top", "-b",
        ]) {
            TerminalCommand::Shell(args) => {
                assert_eq!(args.id, "abc");
                assert_eq!(args.command, ["top", "-b"]);
                assert_eq!(args.env, [("A".to_owned(), "b".to_owned())]);
                assert_eq!(args.cwd.as_deref(), Some("/tmp"));
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(matches!(
            terminal(&["sbx", "shell", "abc", "--attach", "t1"]),
            TerminalCommand::Shell(ShellArgs { attach: Some(tid), .. }) if tid == "t1"
        ));
        // Attaching opens nothing, so it takes nothing to open with.
        assert!(
            Cli::try_parse_from(["sbx", "shell", "abc", "--attach", "t1", "--", "sh"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["sbx", "shell", "abc", "--attach", "t1", "--cwd", "/"]).is_err()
        );
    }

    #[test]
    fn terminals_are_listed_and_killed_by_id() {
        assert!(matches!(
            terminal(&["sbx", "pty", "ls", "abc"]),
            TerminalCommand::Pty { command: PtyCommand::Ls { id, .. } } if id == "abc"
        ));
        assert!(matches!(
            terminal(&["sbx", "pty", "kill", "abc", "t1", "t2"]),
            TerminalCommand::Pty { command: PtyCommand::Kill { tids, .. } } if tids == ["t1", "t2"]
        ));
        assert!(Cli::try_parse_from(["sbx", "pty", "kill", "abc"]).is_err());
    }

    #[test]
    fn forward_listens_on_loopback_and_the_same_port_by_default() {
        match terminal(&["sbx", "forward", "abc", "8000"]) {
            TerminalCommand::Forward(args) => {
                assert_eq!(args.port, 8000);
                assert_eq!(args.local_port, None);
                assert_eq!(args.address, IpAddr::V4(Ipv4Addr::LOCALHOST));
            }
            other => panic!("parsed as {other:?}"),
        }
        match terminal(&["sbx", "forward", "--address", "0.0.0.0", "abc", "8000", "0"]) {
            TerminalCommand::Forward(args) => {
                assert_eq!(args.local_port, Some(0));
                assert_eq!(args.address, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(Cli::try_parse_from(["sbx", "forward", "abc", "0"]).is_err());
    }
}

//! `sbx session`, `sbx watch`, `sbx preview` and `sbx port`: the live
//! routes that are plain HTTP (terminals and forwarding, which need a
//! WebSocket, are in [`super::terminal`]).
//!
//! Output follows the other client commands: what a command creates is
//! printed alone on stdout (a session's id, a preview's URL), so that
//! `$(sbx session create ID)` composes; listings are tables. `sbx session
//! exec` streams like `sbx exec` and exits with the command's code, 124
//! on a timeout as `timeout(1)` does. `sbx watch` prints one event a line,
//! or the API's NDJSON with `--json`, and says on stderr when the watch is
//! in place: a change made after that line is reported.

use super::{copy_events, parse_key_value, CliError, ConnArgs};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use sbx_api::client::ClientError;
use sbx_api::{
    CreatePreviewRequest, CreateSessionRequest, ErrorCode, PortWaitQuery, SessionExecRequest,
    WatchEvent, WatchEventKind, WatchQuery, MAX_PORT_WAIT_MS,
};
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// `sbx session exec`'s exit code when the command timed out (as
/// `timeout(1)`'s).
const TIMED_OUT: u8 = 124;

/// The live verbs, flattened into `sbx`'s own subcommands.
#[derive(Debug, Subcommand)]
pub enum LiveCommand {
    /// Persistent shells: `cd`, `export` and functions carry over from one
    /// `sbx session exec` to the next
    Session {
        #[command(subcommand)]
        command: SessionCommand,
    },
    /// Print changes under a directory of a sandbox as they happen, one a
    /// line (`create /workspace/a`, `move /a -> /b`), until Ctrl-C
    Watch(WatchArgs),
    /// URLs that reach a port of a sandbox without a token (for a
    /// browser), until they expire or are removed
    Preview {
        #[command(subcommand)]
        command: PreviewCommand,
    },
    /// Ports inside a sandbox: `sbx port wait ID PORT`
    Port {
        #[command(subcommand)]
        command: PortCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Start a shell session and print its id
    Create {
        #[command(flatten)]
        conn: ConnArgs,
        /// Start in this directory (default: /workspace)
        #[arg(long)]
        cwd: Option<String>,
        /// KEY=VALUE, repeatable
        #[arg(long = "env", short = 'e', value_parser = parse_key_value)]
        env: Vec<(String, String)>,
        /// Run as this user (name or uid[:gid]; default root)
        #[arg(long, short = 'u')]
        user: Option<String>,
        id: String,
    },
    /// Run a command line in a session, as if typed there; streams its
    /// output and exits with its exit code (124 on a timeout). A command
    /// that ends the shell (`exit 3`) ends the session.
    Exec {
        #[command(flatten)]
        conn: ConnArgs,
        /// Kill the command (not the session) after this long: 500ms, 30s,
        /// 5m
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        id: String,
        sid: String,
        /// Shell words, joined with spaces into one command line
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// List a sandbox's sessions
    Ls {
        #[command(flatten)]
        conn: ConnArgs,
        id: String,
    },
    /// End sessions (their shells and what runs in them); prints their ids
    Rm {
        #[command(flatten)]
        conn: ConnArgs,
        id: String,
        #[arg(required = true)]
        sids: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Only PATH itself, not the directories under it
    #[arg(long)]
    no_recursive: bool,
    /// Print the API's events, one JSON object a line
    #[arg(long)]
    json: bool,
    id: String,
    /// An absolute directory inside the sandbox
    path: String,
}

#[derive(Debug, Subcommand)]
pub enum PreviewCommand {
    /// Make a URL for PORT and print it; anyone holding it reaches the port
    /// until it expires
    Create {
        #[command(flatten)]
        conn: ConnArgs,
        /// How long it lasts: 90s, 30m, 1h, 7d (default 1h)
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        id: String,
        #[arg(value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
    },
    /// List a sandbox's previews (their URLs are shown only when made)
    Ls {
        #[command(flatten)]
        conn: ConnArgs,
        id: String,
    },
    /// Remove previews: their URLs stop working at once; prints their ids
    Rm {
        #[command(flatten)]
        conn: ConnArgs,
        id: String,
        #[arg(required = true)]
        preview_ids: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PortCommand {
    /// Wait until something listens on PORT inside the sandbox; fails
    /// after the timeout
    Wait {
        #[command(flatten)]
        conn: ConnArgs,
        /// Give up after this long: 500ms, 30s, 5m
        #[arg(long, value_parser = parse_duration, default_value = "30s")]
        timeout: Duration,
        id: String,
        #[arg(value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
    },
}

/// `500ms`, `30s`, `5m`, `2h`, `7d`, or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("{text:?} is not a duration like 500ms, 30s, 5m or 1h");
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60 * 1000,
        "h" => 60 * 60 * 1000,
        "d" => 24 * 60 * 60 * 1000,
        _ => return Err(invalid()),
    };
    let millis = number.checked_mul(millis_per_unit).ok_or_else(invalid)?;
    if millis == 0 {
        return Err(format!("{text:?} must be longer than zero"));
    }
    Ok(Duration::from_millis(millis))
}

fn time(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

pub async fn run(command: LiveCommand) -> Result<ExitCode, CliError> {
    match command {
        LiveCommand::Session { command } => session(command).await,
        LiveCommand::Watch(args) => watch(args).await,
        LiveCommand::Preview { command } => preview(command).await,
        LiveCommand::Port {
            command:
                PortCommand::Wait {
                    conn,
                    timeout,
                    id,
                    port,
                },
        } => wait_for_port(conn, &id, port, timeout).await,
    }
}

async fn session(command: SessionCommand) -> Result<ExitCode, CliError> {
    match command {
        SessionCommand::Create {
            conn,
            cwd,
            env,
            user,
            id,
        } => {
            let request = CreateSessionRequest {
                cwd,
                env: env.into_iter().collect(),
                user,
            };
            let session = conn.client()?.sandbox(&id).create_session(&request).await?;
            println!("{}", session.id);
        }
        SessionCommand::Exec {
            conn,
            timeout,
            id,
            sid,
            command,
        } => {
            let request = SessionExecRequest {
                timeout_ms: timeout.map(millis),
                ..SessionExecRequest::new(command.join(" "))
            };
            let client = conn.client()?;
            let events = client
                .sandbox(&id)
                .session_exec_stream(&sid, &request)
                .await?;
            let exit = copy_events(events).await?;
            if exit.timed_out {
                return Ok(ExitCode::from(TIMED_OUT));
            }
            return Ok(exit.code());
        }
        SessionCommand::Ls { conn, id } => {
            let sessions = conn.client()?.sandbox(&id).sessions().await?;
            println!(
                "{:<18} {:<8} {:<5} {:>8} CREATED",
                "ID", "PID", "BUSY", "COMMANDS"
            );
            for session in sessions {
                println!(
                    "{:<18} {:<8} {:<5} {:>8} {}",
                    session.id,
                    session.pid,
                    if session.busy { "yes" } else { "no" },
                    session.commands,
                    time(&session.created_at)
                );
            }
        }
        SessionCommand::Rm { conn, id, sids } => {
            let client = conn.client()?;
            for sid in sids {
                client.sandbox(&id).end_session(&sid).await?;
                println!("{sid}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An event as a person reads it.
fn describe(event: &WatchEvent) -> String {
    let kind = match event.kind {
        WatchEventKind::Create => "create",
        WatchEventKind::Modify => "modify",
        WatchEventKind::Delete => "delete",
        WatchEventKind::Move => "move",
        WatchEventKind::Overflow => return "overflow".to_owned(),
    };
    match &event.from {
        Some(from) => format!("{kind} {from} -> {}", event.path),
        None => format!("{kind} {}", event.path),
    }
}

async fn watch(args: WatchArgs) -> Result<ExitCode, CliError> {
    let query = WatchQuery {
        path: args.path,
        recursive: !args.no_recursive,
    };
    let client = args.conn.client()?;
    let mut events = client.sandbox(&args.id).watch(&query).await?;
    eprintln!("Watching {}:{}", args.id, query.path);
    while let Some(event) = events.next().await? {
        let line = if args.json {
            serde_json::to_string(&event).map_err(ClientError::Decode)?
        } else {
            describe(&event)
        };
        let mut stdout = std::io::stdout().lock();
        // A closed stdout (`| head`) ends the watch quietly.
        if writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn preview(command: PreviewCommand) -> Result<ExitCode, CliError> {
    match command {
        PreviewCommand::Create {
            conn,
            ttl,
            id,
            port,
        } => {
            let ttl_s = match ttl {
                Some(ttl) if ttl < Duration::from_secs(1) => {
                    return Err(CliError::Usage(
                        "a preview's --ttl is at least 1s".to_owned(),
                    ))
                }
                Some(ttl) => Some(ttl.as_secs()),
                None => None,
            };
            let request = CreatePreviewRequest { port, ttl_s };
            let preview = conn.client()?.sandbox(&id).create_preview(&request).await?;
            match preview.url {
                Some(url) => println!("{url}"),
                None => {
                    return Err(CliError::Usage(format!(
                        "the server made preview {} without a URL",
                        preview.id
                    )))
                }
            }
        }
        PreviewCommand::Ls { conn, id } => {
            let previews = conn.client()?.sandbox(&id).previews().await?;
            println!("{:<18} {:<6} EXPIRES", "ID", "PORT");
            for preview in previews {
                println!(
                    "{:<18} {:<6} {}",
                    preview.id,
                    preview.port,
                    time(&preview.expires_at)
                );
            }
        }
        PreviewCommand::Rm {
            conn,
            id,
            preview_ids,
        } => {
            let client = conn.client()?;
            for preview_id in preview_ids {
                client.sandbox(&id).revoke_preview(&preview_id).await?;
                println!("{preview_id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits in calls of at most the API's longest wait, so any timeout works.
async fn wait_for_port(
    conn: ConnArgs,
    id: &str,
    port: u16,
    timeout: Duration,
) -> Result<ExitCode, CliError> {
    let client = conn.client()?;
    let sandbox = client.sandbox(id);
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let query = PortWaitQuery {
            timeout_ms: Some(millis(left).clamp(1, MAX_PORT_WAIT_MS)),
        };
        match sandbox.wait_for_port(port, &query).await {
            Ok(_) => return Ok(ExitCode::SUCCESS),
            Err(err)
                if err.api_error().map(|body| body.error_code) == Some(ErrorCode::Unavailable) =>
            {
                if Instant::now() >= deadline {
                    eprintln!(
                        "sbx: nothing listens on port {port} in {id} after {}",
                        humantime(timeout)
                    );
                    return Ok(ExitCode::FAILURE);
                }
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// A duration as `parse_duration` reads it back.
fn humantime(duration: Duration) -> String {
    let millis = millis(duration);
    if !millis.is_multiple_of(1000) {
        format!("{millis}ms")
    } else {
        format!("{}s", millis / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Cli, Command};
    use super::*;
    use clap::Parser;

    fn live(args: &[&str]) -> LiveCommand {
        let cli = Cli::try_parse_from(args).expect("parses");
        match cli.command {
            Command::Live(command) => command,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn durations_take_a_unit_or_mean_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        for bad in ["", "0s", "s", "1.5s", "10y", "-1s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(humantime(Duration::from_secs(30)), "30s");
        assert_eq!(humantime(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn session_exec_joins_the_words_after_the_separator() {
        match live(&[
            "sbx",
            "session",
            "exec",
            "--timeout",
            "2s",
            "abc",
            "s1",
            "--",
            "cd",
            "/tmp",
            "&&",
            "pwd",
        ]) {
            LiveCommand::Session {
                command:
                    SessionCommand::Exec {
                        timeout,
                        id,
                        sid,
                        command,
                        ..
                    },
            } => {
                assert_eq!((id.as_str(), sid.as_str()), ("abc", "s1"));
                assert_eq!(timeout, Some(Duration::from_secs(2)));
                assert_eq!(command.join(" "), "cd /tmp && pwd");
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(Cli::try_parse_from(["sbx", "session", "exec", "abc", "s1"]).is_err());
    }

    #[test]
    fn watch_is_recursive_unless_told() {
        match live(&["sbx", "watch", "abc", "/workspace"]) {
            LiveCommand::Watch(args) => assert!(!args.no_recursive && !args.json),
            other => panic!("parsed as {other:?}"),
        }
        match live(&["sbx", "watch", "--no-recursive", "--json", "abc", "/w"]) {
            LiveCommand::Watch(args) => assert!(args.no_recursive && args.json),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn ports_and_previews_parse() {
        assert!(matches!(
            live(&["sbx", "port", "wait", "abc", "8000"]),
            LiveCommand::Port { command: PortCommand::Wait { timeout, port: 8000, .. } }
                if timeout == Duration::from_secs(30)
        ));
        assert!(matches!(
            live(&["sbx", "preview", "create", "--ttl", "1h", "abc", "8000"]),
            LiveCommand::Preview { command: PreviewCommand::Create { ttl: Some(ttl), port: 8000, .. } }
                if ttl == Duration::from_secs(3600)
        ));
        assert!(Cli::try_parse_from(["sbx", "preview", "create", "abc", "0"]).is_err());
        assert!(Cli::try_parse_from(["sbx", "preview", "rm", "abc"]).is_err());
    }

    #[test]
    fn events_read_as_a_line_each() {
        let event = |kind, path: &str, from: Option<&str>| WatchEvent {
            kind,
            path: path.to_owned(),
            from: from.map(str::to_owned),
            is_dir: false,
        };
        assert_eq!(
            describe(&event(WatchEventKind::Create, "/workspace/a", None)),
            "create /workspace/a"
        );
        assert_eq!(
            describe(&event(WatchEventKind::Move, "/b", Some("/a"))),
            "move /a -> /b"
        );
        assert_eq!(
            describe(&event(WatchEventKind::Overflow, "", None)),
            "overflow"
        );
    }
}

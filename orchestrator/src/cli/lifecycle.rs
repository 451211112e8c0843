//! The lifecycle subcommands: `sbx stop|start|pause|resume|extend`,
//! `sbx snapshot|snapshots|fork|restore`, `sbx events`, and the lifetime
//! flags of `sbx create`.
//!
//! Output follows the other client commands: a command that acts on
//! sandboxes prints the ids it acted on, one a line, so it composes with
//! `xargs`; listings are tables; events are JSON lines, as the API sends
//! them, for `jq`.

use super::{CliError, ConnArgs, OnTimeoutArg};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use sbx_api::client::ClientError;
use sbx_api::{EventsQuery, LifecycleRequest, SandboxEventsQuery};
use std::io::Write;
use std::process::ExitCode;

/// The lifecycle verbs, flattened into `sbx`'s own subcommands.
#[derive(Debug, Subcommand)]
pub enum LifecycleCommand {
    /// Stop sandboxes: their processes end and memory is freed; the disk
    /// stays for `sbx start`
    Stop {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Start stopped sandboxes again, on the disk they had
    Start {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Pause sandboxes: their processes are frozen in memory
    Pause {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Resume paused sandboxes
    Resume {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Set a sandbox's timeout to SECONDS from now; prints when it acts
    Extend {
        #[command(flatten)]
        conn: ConnArgs,
        id: String,
        seconds: u64,
    },
    /// Snapshot a sandbox's filesystem under NAME (see `sbx snapshots`,
    /// `sbx restore`, `sbx create --snapshot`)
    Snapshot {
        #[command(flatten)]
        conn: ConnArgs,
        id: String,
        name: String,
    },
    /// List snapshots, or delete them with `sbx snapshots rm NAME…`
    #[command(args_conflicts_with_subcommands = true)]
    Snapshots {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(subcommand)]
        command: Option<SnapshotsCommand>,
    },
    /// Copy a sandbox's filesystem into new running sandboxes and print
    /// their ids; fails if any copy failed
    Fork {
        #[command(flatten)]
        conn: ConnArgs,
        /// How many copies
        #[arg(long, short = 'n', default_value_t = 1)]
        count: u32,
        /// Print "ID TOKEN" for each copy: its own token (shown only this
        /// once) after its id
        #[arg(long)]
        print_token: bool,
        id: String,
    },
    /// Roll a sandbox back to a snapshot, in place (same id and token)
    Restore {
        #[command(flatten)]
        conn: ConnArgs,
        id: String,
        snapshot: String,
    },
    /// Print lifecycle events, one JSON object a line, oldest first
    Events {
        #[command(flatten)]
        conn: ConnArgs,
        /// Only this sandbox's events
        #[arg(long)]
        sandbox: Option<String>,
        /// Only events after this sequence number (an event's `seq`)
        #[arg(long, value_name = "SEQ")]
        since: Option<u64>,
        /// Keep printing new events as they happen
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotsCommand {
    /// List snapshots (the default)
    Ls {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Delete snapshots by name
    Rm {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// The lifetime flags of `sbx create`; absent ones take the server's
/// defaults.
#[derive(Debug, Args)]
pub struct LifetimeArgs {
    /// Seconds until --on-timeout acts (0: no timeout)
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Seconds of idleness (no API call, exec, stream or upload) after
    /// which --on-timeout acts (0: never)
    #[arg(long, value_name = "SECS")]
    idle_timeout: Option<u64>,
    /// What a timeout does: delete keeps nothing, stop keeps the disk,
    /// pause keeps the memory too
    #[arg(long, value_enum)]
    on_timeout: Option<OnTimeoutArg>,
    /// Whether a call that needs the sandbox (exec, files) wakes it when
    /// stopped or paused
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    auto_resume: Option<bool>,
}

impl LifetimeArgs {
    /// The create request's `lifecycle`, absent when no flag was given.
    pub fn request(&self) -> Option<LifecycleRequest> {
        let request = LifecycleRequest {
            timeout_s: self.timeout,
            idle_timeout_s: self.idle_timeout,
            on_timeout: self.on_timeout.map(Into::into),
            auto_resume: self.auto_resume,
        };
        (request != LifecycleRequest::default()).then_some(request)
    }
}

fn time(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `bytes` for a person: whole MiB, or GiB with one decimal.
fn size(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    if bytes >= 1 << 30 {
        format!("{:.1}G", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{}M", bytes.div_ceil(MIB))
    }
}

pub async fn run(command: LifecycleCommand) -> Result<ExitCode, CliError> {
    match command {
        LifecycleCommand::Stop { conn, ids } => {
            let client = conn.client()?;
            for id in ids {
                client.stop_sandbox(&id).await?;
                println!("{id}");
            }
        }
        LifecycleCommand::Start { conn, ids } => {
            let client = conn.client()?;
            for id in ids {
                client.start_sandbox(&id).await?;
                println!("{id}");
            }
        }
        LifecycleCommand::Pause { conn, ids } => {
            let client = conn.client()?;
            for id in ids {
                client.pause_sandbox(&id).await?;
                println!("{id}");
            }
        }
        LifecycleCommand::Resume { conn, ids } => {
            let client = conn.client()?;
            for id in ids {
                client.resume_sandbox(&id).await?;
                println!("{id}");
            }
        }
        LifecycleCommand::Extend { conn, id, seconds } => {
            let sandbox = conn.client()?.set_timeout(&id, seconds).await?;
            let at = sandbox.expires_at.as_ref().map_or("never".into(), time);
            println!("{} {at}", sandbox.id);
        }
        LifecycleCommand::Snapshot { conn, id, name } => {
            let snapshot = conn.client()?.create_snapshot(&id, &name).await?;
            println!("{}", snapshot.name);
        }
        LifecycleCommand::Snapshots { conn, command } => match command {
            None => list_snapshots(conn).await?,
            Some(SnapshotsCommand::Ls { conn }) => list_snapshots(conn).await?,
            Some(SnapshotsCommand::Rm { conn, names }) => {
                let client = conn.client()?;
                for name in names {
                    client.delete_snapshot(&name).await?;
                    println!("{name}");
                }
            }
        },
        LifecycleCommand::Fork {
            conn,
            count,
            print_token,
            id,
        } => return fork(conn, &id, count, print_token).await,
        LifecycleCommand::Restore { conn, id, snapshot } => {
            conn.client()?.restore_sandbox(&id, &snapshot).await?;
            println!("{id}");
        }
        LifecycleCommand::Events {
            conn,
            sandbox,
            since,
            follow,
        } => {
            let client = conn.client()?;
            // One sandbox's under its own route: a token bound to it works.
            let mut events = match sandbox {
                Some(id) => {
                    let query = SandboxEventsQuery { since, follow };
                    client.sandbox_events(&id, &query).await?
                }
                None => {
                    let query = EventsQuery {
                        sandbox: None,
                        since,
                        follow,
                    };
                    client.events(&query).await?
                }
            };
            while let Some(event) = events.next().await? {
                let line = serde_json::to_string(&event).map_err(ClientError::Decode)?;
                let mut stdout = std::io::stdout().lock();
                // A closed stdout (`| head`) ends a followed stream quietly.
                if writeln!(stdout, "{line}")
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn list_snapshots(conn: ConnArgs) -> Result<(), CliError> {
    let snapshots = conn.client()?.list_snapshots().await?;
    println!(
        "{:<24} {:<18} {:<12} {:>8} CREATED",
        "NAME", "SANDBOX", "IMAGE", "SIZE"
    );
    for snapshot in snapshots {
        println!(
            "{:<24} {:<18} {:<12} {:>8} {}",
            snapshot.name,
            snapshot.sandbox_id,
            snapshot.image,
            size(snapshot.size_bytes),
            time(&snapshot.created_at)
        );
    }
    Ok(())
}

/// Prints each copy's id (and token) as `sbx create` does; a copy that
/// failed is reported on stderr and fails the command, after the others
/// are printed, since they exist either way.
async fn fork(
    conn: ConnArgs,
    id: &str,
    count: u32,
    print_token: bool,
) -> Result<ExitCode, CliError> {
    let outcomes = conn.client()?.fork_sandbox(id, count).await?;
    let mut failed = false;
    for outcome in outcomes {
        match (outcome.sandbox, outcome.error) {
            (Some(created), _) if print_token => {
                println!("{} {}", created.sandbox.id, created.token)
            }
            (Some(created), _) => println!("{}", created.sandbox.id),
            (None, Some(error)) => {
                eprintln!("sbx: fork of {id} failed: {error}");
                failed = true;
            }
            (None, None) => {
                eprintln!("sbx: fork of {id} failed without an error");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Cli, Command};
    use super::*;
    use clap::Parser;
    use sbx_api::OnTimeout;

    fn lifecycle(args: &[&str]) -> LifecycleCommand {
        let cli = Cli::try_parse_from(args).expect("parses");
        match cli.command {
            Command::Lifecycle(command) => command,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn the_verbs_are_top_level_subcommands() {
        assert!(matches!(
            lifecycle(&["sbx", "stop", "a", "b"]),
            LifecycleCommand::Stop { ids, .. } if ids == ["a", "b"]
        ));
        assert!(Cli::try_parse_from(["sbx", "stop"]).is_err(), "needs an id");
        assert!(matches!(
            lifecycle(&["sbx", "extend", "a", "600"]),
            LifecycleCommand::Extend { id, seconds: 600, .. } if id == "a"
        ));
        assert!(Cli::try_parse_from(["sbx", "extend", "a", "10m"]).is_err());
        assert!(matches!(
            lifecycle(&["sbx", "fork", "a"]),
            LifecycleCommand::Fork {
                count: 1,
                print_token: false,
                ..
            }
        ));
        assert!(matches!(
            lifecycle(&["sbx", "fork", "-n", "3", "--print-token", "a"]),
            LifecycleCommand::Fork { count: 3, print_token: true, id, .. } if id == "a"
        ));
        assert!(matches!(
            lifecycle(&["sbx", "events", "--sandbox", "a", "--since", "7", "-f"]),
            LifecycleCommand::Events { sandbox: Some(s), since: Some(7), follow: true, .. }
                if s == "a"
        ));
    }

    #[test]
    fn snapshots_lists_by_default_and_removes_by_name() {
        assert!(matches!(
            lifecycle(&["sbx", "snapshots"]),
            LifecycleCommand::Snapshots { command: None, .. }
        ));
        assert!(matches!(
            lifecycle(&["sbx", "snapshots", "ls"]),
            LifecycleCommand::Snapshots {
                command: Some(SnapshotsCommand::Ls { .. }),
                ..
            }
        ));
        assert!(matches!(
            lifecycle(&["sbx", "snapshots", "rm", "x", "y"]),
            LifecycleCommand::Snapshots { command: Some(SnapshotsCommand::Rm { names, .. }), .. }
                if names == ["x", "y"]
        ));
        assert!(Cli::try_parse_from(["sbx", "snapshots", "rm"]).is_err());
    }

    #[test]
    fn create_sends_a_lifecycle_only_when_asked() {
        let lifetime = |args: &[&str]| {
            let cli = Cli::try_parse_from(args).expect("parses");
            match cli.command {
                Command::Create { lifetime, .. } => lifetime.request(),
                other => panic!("parsed as {other:?}"),
            }
        };
        assert_eq!(lifetime(&["sbx", "create"]), None);
        assert_eq!(
            lifetime(&[
                "sbx",
                "create",
                "--timeout",
                "60",
                "--idle-timeout",
                "0",
                "--on-timeout",
                "pause",
                "--auto-resume",
                "false",
            ]),
            Some(LifecycleRequest {
                timeout_s: Some(60),
                idle_timeout_s: Some(0),
                on_timeout: Some(OnTimeout::Pause),
                auto_resume: Some(false),
            })
        );
        assert!(Cli::try_parse_from(["sbx", "create", "--on-timeout", "explode"]).is_err());
        assert!(Cli::try_parse_from(["sbx", "create", "--auto-resume", "maybe"]).is_err());
    }

    #[test]
    fn sizes_read_as_mib_or_gib() {
        assert_eq!(size(0), "0M");
        assert_eq!(size(1), "1M");
        assert_eq!(size(5 << 20), "5M");
        assert_eq!(size(3 << 29), "1.5G");
    }
}

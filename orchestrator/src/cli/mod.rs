//! The `sbx` command line: `sbx serve`, and the client subcommands that
//! talk to a running server over HTTP with the `sbx-api` client.
//!
//! The client finds its server through `SBX_URL` (default
//! `http://127.0.0.1:7070`) and its token through `SBX_TOKEN`, falling back
//! to the admin token in the local data dir, so `sbx create` just works on
//! the machine that runs `sbx serve`.

mod context;
mod cp;
mod image;
mod lifecycle;
mod live;
mod policy;
mod terminal;

use crate::server::{self, KubeConfig, RuntimeKind, ServeConfig, ServeError};
use clap::{Args, Parser, Subcommand};
use sbx_api::client::{Client, ClientError};
use sbx_api::{
    CreateSandboxRequest, ExecEvent, ExecRequest, Lifecycle, LogsQuery, NetworkPolicy, OnTimeout,
    StartProcessRequest,
};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const DEFAULT_DATA_DIR: &str = "/var/lib/sbx";

#[derive(Debug, Parser)]
#[command(name = "sbx", version, about = "Sandboxes for coding agents")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the orchestrator (HTTP API on --listen)
    Serve(ServeArgs),
    /// Create a sandbox and print its id
    Create {
        #[command(flatten)]
        conn: ConnArgs,
        /// The image to start from (default: base, or the snapshot's)
        #[arg(long)]
        image: Option<String>,
        /// Memory limit: 512M, 2G, or a number of MiB
        #[arg(long, value_parser = parse_size_mb)]
        memory: Option<u64>,
        #[arg(long)]
        cpus: Option<f64>,
        /// Size limit of the sandbox's writable layer: 512M, 20G, or MiB
        #[arg(long, value_parser = parse_size_mb)]
        disk: Option<u64>,
        /// KEY=VALUE, repeatable
        #[arg(long = "env", short = 'e', value_parser = parse_key_value)]
        env: Vec<(String, String)>,
        /// KEY=VALUE, repeatable
        #[arg(long = "label", short = 'l', value_parser = parse_key_value)]
        labels: Vec<(String, String)>,
        /// Print "ID TOKEN": the sandbox's own token (shown only this once)
        /// after the id
        #[arg(long)]
        print_token: bool,
        /// Let the sandbox reach HOST through the egress proxy: `host`,
        /// `*.domain` or either with `:port`; repeatable. Without any, the
        /// sandbox has no network.
        #[arg(long = "allow", value_name = "HOST")]
        allow: Vec<String>,
        #[command(flatten)]
        lifetime: lifecycle::LifetimeArgs,
        /// Start from this snapshot's filesystem instead of a fresh one
        #[arg(long, value_name = "NAME")]
        snapshot: Option<String>,
    },
    /// Show a sandbox's egress allowlist, or replace it (live)
    Egress {
        #[command(flatten)]
        conn: ConnArgs,
        id: String,
        /// The new allowlist, one entry per flag (replaces the old one)
        #[arg(long = "allow", value_name = "HOST")]
        allow: Vec<String>,
        /// Empty the allowlist: every request is denied
        #[arg(long, conflicts_with = "allow")]
        deny_all: bool,
    },
    /// List sandboxes
    Ls {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Show one sandbox as JSON
    Inspect {
        #[command(flatten)]
        conn: ConnArgs,
        id: String,
    },
    /// Run a command in a sandbox; exits with the command's exit code
    Exec {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long)]
        cwd: Option<String>,
        /// KEY=VALUE, repeatable
        #[arg(long = "env", short = 'e', value_parser = parse_key_value)]
        env: Vec<(String, String)>,
        /// Kill the command after this many milliseconds
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Run the words as one shell script instead of an argv
        #[arg(long, short = 's')]
        shell: bool,
        /// Run as this user (name or uid[:gid])
        #[arg(long, short = 'u')]
        user: Option<String>,
        /// Start in the background and print the pid (see `sbx ps`, `sbx logs`)
        #[arg(long, short = 'd')]
        detach: bool,
        id: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// List a sandbox's background processes
    Ps {
        #[command(flatten)]
        conn: ConnArgs,
        id: String,
    },
    /// Print a background process's output
    Logs {
        #[command(flatten)]
        conn: ConnArgs,
        /// Keep printing output as it happens, until the process exits
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only the last this many bytes of each stream
        #[arg(long)]
        tail: Option<usize>,
        id: String,
        pid: i32,
    },
    /// Signal a background process's whole process group
    Kill {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long, short = 's', default_value = "TERM")]
        signal: String,
        id: String,
        pid: i32,
    },
    /// Kill every process in a sandbox but its agent (after a fork or
    /// memory bomb); prints how many were running
    KillAll {
        #[command(flatten)]
        conn: ConnArgs,
        id: String,
    },
    /// Print the server's Prometheus metrics (needs `metrics:read`)
    Metrics {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Print the API's OpenAPI 3.1 spec (what `GET /openapi.json` serves),
    /// for client generators; needs no server
    Openapi,
    /// Copy files between the host and a sandbox: `sbx cp ./src ID:/workspace/`,
    /// `sbx cp ID:/workspace/out ./out`; `-` is a tar on stdin or stdout
    Cp {
        #[command(flatten)]
        conn: ConnArgs,
        from: String,
        to: String,
    },
    /// Internal: the single-threaded process that runs libcontainer for
    /// `sbx serve` (see runtime::helper).
    #[command(name = "__youki-helper", hide = true)]
    YoukiHelper {
        /// The server's helper lock, an inherited descriptor.
        #[arg(long)]
        lock_fd: Option<i32>,
    },
    /// Mint, list and revoke API tokens
    Token {
        #[command(subcommand)]
        command: policy::TokenCommand,
    },
    /// Import, pull, build, list, inspect and delete images
    Image {
        #[command(subcommand)]
        command: image::ImageCommand,
    },
    /// Show the audit trail of API calls, oldest first
    Audit(policy::AuditArgs),
    /// Serve the server's MCP tools on stdin/stdout, for MCP clients that
    /// spawn a command: relays to SBX_URL's /mcp with SBX_TOKEN
    Mcp {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Delete sandboxes
    Rm {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    #[command(flatten)]
    Lifecycle(lifecycle::LifecycleCommand),
    #[command(flatten)]
    Terminal(terminal::TerminalCommand),
    #[command(flatten)]
    Live(live::LiveCommand),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Container engine for the sandboxes
    #[arg(long, env = "SBX_RUNTIME", value_enum, default_value_t = RuntimeKind::Auto)]
    runtime: RuntimeKind,
    /// The cluster's kubeconfig (--runtime kubernetes); default: KUBECONFIG,
    /// ~/.kube/config, then the pod's service account
    #[arg(long, env = "SBX_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The namespace sandboxes live in (--runtime kubernetes)
    #[arg(long, env = "SBX_KUBE_NAMESPACE", default_value = "sbx")]
    namespace: String,
    /// A RuntimeClass for sandbox pods, such as gVisor's or Kata's
    #[arg(long, env = "SBX_KUBE_RUNTIME_CLASS")]
    kube_runtime_class: Option<String>,
    /// The containerd socket of the cluster's one node when it is this
    /// machine: sbx imports its images there itself (no registry needed)
    #[arg(long, env = "SBX_KUBE_NODE_CONTAINERD")]
    kube_node_containerd: Option<PathBuf>,
    /// The name replicas serving the same sandboxes share; default: this
    /// data dir's instance id
    #[arg(long, env = "SBX_KUBE_INSTANCE")]
    kube_instance: Option<String>,
    #[arg(long, env = "SBX_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    #[arg(long, env = "SBX_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Directory of images (NAME/rootfs); defaults to <data-dir>/images
    #[arg(long, env = "SBX_IMAGES_DIR")]
    images_dir: Option<PathBuf>,
    /// The statically linked sandbox-agent binary
    #[arg(long, env = "SBX_AGENT_BIN")]
    agent_bin: Option<PathBuf>,
    /// Largest request body the server reads whole (JSON, and an exec with
    /// its stdin): 64M, 1G, or MiB. File uploads stream and are capped by
    /// the sandbox's disk limit instead.
    #[arg(long, env = "SBX_MAX_BODY", default_value = "64M", value_parser = parse_size_mb)]
    max_body: u64,
    /// Seconds between sweeps for containers no sandbox record owns (an
    /// engine can finish a create for a server that died meanwhile)
    #[arg(long, default_value_t = 60)]
    orphan_sweep_secs: u64,
    /// Sandboxes of the default shape to keep started ahead of demand: a
    /// create that asks for nothing else gets one at once (0: no pool)
    #[arg(long, env = "SBX_WARM_POOL", default_value_t = 0)]
    warm_pool: usize,
    /// Also append every audit record to this file as a JSON line
    #[arg(long, env = "SBX_AUDIT_LOG")]
    audit_log: Option<PathBuf>,
    /// Seconds a sandbox lives unless its create says otherwise (0: no
    /// timeout)
    #[arg(long, env = "SBX_DEFAULT_TIMEOUT", default_value_t = 0)]
    default_timeout: u64,
    /// Seconds of idleness (no API call, no exec, stream or upload running)
    /// after which a sandbox's on_timeout acts, unless its create says
    /// otherwise (0: never). A forgotten sandbox must not hold memory
    /// forever.
    #[arg(long, env = "SBX_DEFAULT_IDLE_TIMEOUT", default_value_t = 3600)]
    default_idle_timeout: u64,
    /// What a timeout does unless the create says: stop keeps the disk,
    /// pause keeps the memory too, delete keeps nothing
    #[arg(long, env = "SBX_DEFAULT_ON_TIMEOUT", value_enum, default_value_t = OnTimeoutArg::Stop)]
    default_on_timeout: OnTimeoutArg,
    /// Whether calls wake stopped and paused sandboxes unless the create
    /// says otherwise
    #[arg(long, env = "SBX_DEFAULT_AUTO_RESUME", default_value_t = true, action = clap::ArgAction::Set)]
    default_auto_resume: bool,
    /// Seconds before a timeout acts that its `expiring` event goes out
    #[arg(long, default_value_t = 60)]
    expiring_warning: u64,
    /// Seconds a sandbox ended by its timeout stays listed, as deleted
    /// with its reason
    #[arg(long, default_value_t = 24 * 3600)]
    retention: u64,
    /// How far the disk space promised to sandboxes and snapshots may
    /// exceed the storage pool: 1.0 never lets a full pool fail a
    /// sandbox's writes; 10 allows ten times the pool, trusting that few
    /// sandboxes fill their disks
    #[arg(long, env = "SBX_DISK_OVERCOMMIT", default_value_t = 1.0, value_parser = parse_overcommit)]
    disk_overcommit: f64,
    /// Make every sandbox trust the host's CA bundle (FILE; by default
    /// /etc/ssl/certs/ca-certificates.crt), mounted read-only over the
    /// image's and named in SSL_CERT_FILE, REQUESTS_CA_BUNDLE, PIP_CERT and
    /// NODE_EXTRA_CA_CERTS: pip, npm, git and curl then work through a
    /// TLS-intercepting proxy that the host trusts
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "/etc/ssl/certs/ca-certificates.crt")]
    trust_host_ca: Option<PathBuf>,
    /// Serve previews as their own hosts, http://PORT-ID.DOMAIN/, each its
    /// own origin (needs wildcard DNS for *.DOMAIN to this server; a
    /// `*.localhost` domain resolves to loopback in browsers without it)
    #[arg(long, value_name = "DOMAIN", value_parser = parse_preview_domain)]
    preview_domain: Option<String>,
    /// TEST ONLY: HOST=IP makes the egress proxy resolve HOST to IP without
    /// DNS and without refusing loopback; repeatable
    #[arg(long, value_name = "HOST=IP", value_parser = parse_resolve, hide = true)]
    egress_resolve: Vec<(String, IpAddr)>,
}

#[derive(Debug, Args)]
struct ConnArgs {
    #[arg(long, env = "SBX_URL", default_value = "http://127.0.0.1:7070")]
    url: String,
    #[arg(long, env = "SBX_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Mcp(#[from] crate::mcp::RelayError),
    #[error("no token: set SBX_TOKEN or pass --token (no readable {0})")]
    NoToken(String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    Usage(String),
    /// This machine's side failed: its terminal, stdout, a local port.
    #[error("{what}: {source}")]
    Local {
        what: String,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `--default-on-timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnTimeoutArg {
    Delete,
    Stop,
    Pause,
}

impl From<OnTimeoutArg> for OnTimeout {
    fn from(arg: OnTimeoutArg) -> Self {
        match arg {
            OnTimeoutArg::Delete => OnTimeout::Delete,
            OnTimeoutArg::Stop => OnTimeout::Stop,
            OnTimeoutArg::Pause => OnTimeout::Pause,
        }
    }
}

fn parse_overcommit(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(ratio) if ratio.is_finite() && ratio > 0.0 => Ok(ratio),
        _ => Err(format!("{text:?} is not a positive ratio")),
    }
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// `HOST=IP` for `--egress-resolve`; the host is normalised as the proxy
/// normalises requested hosts.
fn parse_resolve(text: &str) -> Result<(String, IpAddr), String> {
    let (host, ip) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not HOST=IP"))?;
    let host = sbx_api::normalize_host(host).map_err(|why| format!("{text:?}: {why}"))?;
    let ip = ip
        .parse()
        .map_err(|_| format!("{text:?}: {ip:?} is not an ip address"))?;
    Ok((host, ip))
}

/// `512M`, `512MiB`, `2G`, `2GiB` or a bare number of MiB.
fn parse_size_mb(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(digits_end);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 512M or 2G"))?;
    let factor = match unit {
        "" | "m" | "mb" | "mi" | "mib" => 1,
        "g" | "gb" | "gi" | "gib" => 1024,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use M or G)")),
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

impl ConnArgs {
    fn client(&self) -> Result<Client, CliError> {
        Ok(Client::new(&self.url, Some(self.token()?))?)
    }

    fn token(&self) -> Result<String, CliError> {
        match &self.token {
            Some(token) => Ok(token.clone()),
            None => local_admin_token(),
        }
    }
}

fn local_admin_token() -> Result<String, CliError> {
    let data_dir = std::env::var_os("SBX_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let path = data_dir.join("admin.token");
    std::fs::read_to_string(&path)
        .map(|token| token.trim().to_owned())
        .map_err(|_| CliError::NoToken(path.display().to_string()))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // rmcp logs every stateless /mcp request's service start and end at
    // info: two lines per tool call that say nothing the audit trail does
    // not. libcgroups warns, per create, of controllers the host lacks.
    let filter = tracing_subscriber::EnvFilter::try_from_env("SBX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmcp=warn,libcgroups=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // The helper must stay single-threaded: no async runtime for it.
    if let Command::YoukiHelper { lock_fd } = cli.command {
        return crate::runtime::helper::serve_requests(lock_fd);
    }
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("sbx: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Serve(args) => {
            server::run(ServeConfig {
                runtime: args.runtime,
                listen: args.listen,
                data_dir: args.data_dir,
                images_dir: args.images_dir,
                agent_binary: args.agent_bin,
                max_body_bytes: usize::try_from(args.max_body << 20).unwrap_or(usize::MAX),
                orphan_sweep: Duration::from_secs(args.orphan_sweep_secs.max(1)),
                warm_pool: args.warm_pool,
                audit_log: args.audit_log,
                egress_resolve: args.egress_resolve,
                default_lifecycle: Lifecycle {
                    timeout_s: (args.default_timeout > 0).then_some(args.default_timeout),
                    idle_timeout_s: (args.default_idle_timeout > 0)
                        .then_some(args.default_idle_timeout),
                    on_timeout: args.default_on_timeout.into(),
                    auto_resume: args.default_auto_resume,
                },
                expiring_warning: Duration::from_secs(args.expiring_warning),
                retention: Duration::from_secs(args.retention),
                disk_overcommit: args.disk_overcommit,
                trust_host_ca: args.trust_host_ca,
                preview_domain: args.preview_domain,
                kube: KubeConfig {
                    kubeconfig: args.kubeconfig,
                    namespace: args.namespace,
                    runtime_class: args.kube_runtime_class,
                    node_containerd: args.kube_node_containerd,
                    instance: args.kube_instance,
                },
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Create {
            conn,
            image,
            memory,
            cpus,
            disk,
            env,
            labels,
            print_token,
            allow,
            lifetime,
            snapshot,
        } => {
            let request = CreateSandboxRequest {
                image,
                memory_mb: memory,
                cpus,
                disk_mb: disk,
                env: env.into_iter().collect(),
                labels: labels.into_iter().collect(),
                network: (!allow.is_empty()).then_some(NetworkPolicy { egress: allow }),
                lifecycle: lifetime.request(),
                snapshot,
            };
            let created = conn.client()?.create_sandbox_with_token(&request).await?;
            if print_token {
                println!("{} {}", created.sandbox.id, created.token);
            } else {
                println!("{}", created.sandbox.id);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Egress {
            conn,
            id,
            allow,
            deny_all,
        } => {
            let client = conn.client()?;
            let sandbox = if allow.is_empty() && !deny_all {
                client.get_sandbox(&id).await?
            } else {
                client.set_egress(&id, allow).await?
            };
            for entry in sandbox.network.egress {
                println!("{entry}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ls { conn } => {
            let sandboxes = conn.client()?.list_sandboxes().await?;
            println!("{:<18} {:<9} {:<12} CREATED", "ID", "STATE", "IMAGE");
            for sandbox in sandboxes {
                println!(
                    "{:<18} {:<9} {:<12} {}",
                    sandbox.id,
                    sandbox.state.as_str(),
                    sandbox.image,
                    sandbox
                        .created_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { conn, id } => {
            let sandbox = conn.client()?.get_sandbox(&id).await?;
            let text = serde_json::to_string_pretty(&sandbox).map_err(ClientError::Decode)?;
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec {
            conn,
            cwd,
            env,
            timeout_ms,
            shell,
            user,
            detach,
            id,
            command,
        } => {
            let mut request = if shell {
                ExecRequest::shell(command.join(" "))
            } else {
                ExecRequest::argv(command)
            };
            request.cwd = cwd;
            request.env = env.into_iter().collect::<BTreeMap<_, _>>();
            request.timeout_ms = timeout_ms;
            request.user = user;
            let client = conn.client()?;
            if detach {
                let process = client
                    .sandbox(&id)
                    .start_process(&StartProcessRequest {
                        cmd: request.cmd,
                        shell: request.shell,
                        cwd: request.cwd,
                        env: request.env,
                        user: request.user,
                        name: None,
                    })
                    .await?;
                println!("{}", process.pid);
                return Ok(ExitCode::SUCCESS);
            }
            let events = client.sandbox(&id).exec_stream(&request).await?;
            print_events(events).await
        }
        Command::Ps { conn, id } => {
            let processes = conn.client()?.sandbox(&id).processes().await?;
            println!(
                "{:<8} {:<8} {:<5} {:<12} CMD",
                "PID", "STATE", "EXIT", "NAME"
            );
            for process in processes {
                let state = match process.state {
                    sbx_api::ProcessState::Running => "running",
                    sbx_api::ProcessState::Exited => "exited",
                };
                println!(
                    "{:<8} {:<8} {:<5} {:<12} {}",
                    process.pid,
                    state,
                    process
                        .exit_code
                        .map(|code| code.to_string())
                        .unwrap_or_default(),
                    process.name.unwrap_or_default(),
                    process.cmd.join(" ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs {
            conn,
            follow,
            tail,
            id,
            pid,
        } => {
            let client = conn.client()?;
            let events = client
                .sandbox(&id)
                .process_logs(pid, &LogsQuery { tail, follow })
                .await?;
            print_events(events).await.map(|_| ExitCode::SUCCESS)
        }
        Command::Kill {
            conn,
            signal,
            id,
            pid,
        } => {
            conn.client()?.sandbox(&id).signal(pid, &signal).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::KillAll { conn, id } => {
            let result = conn.client()?.sandbox(&id).kill_all().await?;
            println!("{}", result.killed);
            Ok(ExitCode::SUCCESS)
        }
        Command::Metrics { conn } => {
            print!("{}", conn.client()?.metrics().await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Openapi => {
            let spec = crate::http::openapi().to_pretty_json();
            println!("{}", spec.expect("the spec serializes"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Cp { conn, from, to } => {
            cp::copy(&conn.client()?, &from, &to).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { command } => {
            policy::token(command).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Image { command } => image::run(command).await,
        Command::Audit(args) => {
            policy::audit(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::YoukiHelper { lock_fd } => Ok(crate::runtime::helper::serve_requests(lock_fd)),
        Command::Mcp { conn } => {
            crate::mcp::relay_stdio(&conn.url, conn.token()?).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Rm { conn, ids } => {
            let client = conn.client()?;
            for id in ids {
                client.delete_sandbox(&id).await?;
                println!("{id}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Lifecycle(command) => lifecycle::run(command).await,
        Command::Terminal(command) => terminal::run(command).await,
        Command::Live(command) => live::run(command).await,
    }
}

/// Prints output events to the matching streams as they arrive; the exit
/// code is the command's.
async fn print_events(events: sbx_api::client::EventStream) -> Result<ExitCode, CliError> {
    Ok(copy_events(events).await?.code())
}

/// How a streamed command ended.
struct Exit {
    exit_code: i32,
    timed_out: bool,
}

impl Exit {
    /// The command's exit code as this process's.
    fn code(&self) -> ExitCode {
        ExitCode::from(u8::try_from(self.exit_code.clamp(0, 255)).unwrap_or(255))
    }
}

/// Prints output events to the matching streams as they arrive, and
/// returns how the command ended.
async fn copy_events(mut events: sbx_api::client::EventStream) -> Result<Exit, CliError> {
    let mut exit = Exit {
        exit_code: 0,
        timed_out: false,
    };
    while let Some(event) = events.next().await? {
        // A closed stdout (e.g. `| head`) must not turn into an error.
        match event {
            ExecEvent::Start { .. } => {}
            ExecEvent::Stdout { data } => {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(data.as_bytes());
                let _ = stdout.flush();
            }
            ExecEvent::Stderr { data } => {
                let _ = std::io::stderr().write_all(data.as_bytes());
            }
            ExecEvent::Exit {
                exit_code,
                timed_out,
                ..
            } => {
                if timed_out {
                    eprintln!("sbx: command timed out");
                }
                exit = Exit {
                    exit_code,
                    timed_out,
                };
            }
            ExecEvent::Error {
                error_code,
                message,
            } => {
                return Err(CliError::Usage(format!("{error_code}: {message}")));
            }
        }
    }
    Ok(exit)
}

/// A DNS name of lowercase labels: letters, digits and inner hyphens.
fn parse_preview_domain(text: &str) -> Result<String, String> {
    let domain = text.trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if domain.len() <= 200 && domain.split('.').all(label_ok) {
        Ok(domain)
    } else {
        Err(format!("{text:?} is not a DNS name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_parse_to_mib() {
        assert_eq!(parse_size_mb("512M"), Ok(512));
        assert_eq!(parse_size_mb("512"), Ok(512));
        assert_eq!(parse_size_mb("2G"), Ok(2048));
        assert_eq!(parse_size_mb("1GiB"), Ok(1024));
        assert!(parse_size_mb("12T").is_err());
        assert!(parse_size_mb("M").is_err());
    }

    #[test]
    fn resolve_overrides_are_host_equals_ip() {
        assert_eq!(
            parse_resolve("Allowed.Test.=127.0.0.1"),
            Ok(("allowed.test".to_owned(), IpAddr::from([127, 0, 0, 1])))
        );
        assert!(parse_resolve("allowed.test").is_err());
        assert!(parse_resolve("allowed.test=nope").is_err());
        assert!(parse_resolve("a..b=127.0.0.1").is_err());
    }

    #[test]
    fn key_values_need_a_key() {
        assert_eq!(
            parse_key_value("A=b=c"),
            Ok(("A".to_owned(), "b=c".to_owned()))
        );
        assert!(parse_key_value("=x").is_err());
        assert!(parse_key_value("novalue").is_err());
    }

    #[test]
    fn exec_takes_the_command_after_the_separator() {
        let cli = Cli::try_parse_from(["sbx", "exec", "abc", "--", "ls", "-la"]).expect("parses");
        match cli.command {
            Command::Exec { id, command, .. } => {
                assert_eq!(id, "abc");
                assert_eq!(command, ["ls", "-la"]);
            }
            other => panic!("parsed as {other:?}"),
        }
    }
}

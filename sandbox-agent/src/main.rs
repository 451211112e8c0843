//! `sandbox-agent [--socket PATH | --handoff PATH | --listen-tcp ADDR] [--workdir DIR] [--user USER]
//! [--egress-listen ADDR] [--egress-socket PATH]`: parses arguments, sets up logging to stderr and
//! hands over to the library.

use clap::Parser;
use sandbox_agent::egress::RelayConfig;
use sandbox_agent::{env::base_env_from_vars, AgentKey, Config, Listen};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// PID 1 of an sbx sandbox: serves exec and friends on a Unix socket.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Unix socket to listen on; it appears only once the agent is ready.
    #[arg(long, env = "SBX_AGENT_SOCKET", default_value = sbx_api::AGENT_SOCKET_PATH)]
    socket: PathBuf,
    /// Receive the listener through this socket instead of binding one (how
    /// the orchestrator starts the agent in a sandbox).
    #[arg(long, env = "SBX_AGENT_HANDOFF")]
    handoff: Option<PathBuf>,
    /// Listen on this TCP address instead (how a sandbox on a cluster
    /// starts); every request must then carry the key in the environment
    /// variable `SBX_AGENT_KEY`.
    #[arg(long, env = "SBX_AGENT_LISTEN_TCP", conflicts_with = "handoff")]
    listen_tcp: Option<SocketAddr>,
    /// Copy this executable to PATH (mode 0555) and exit: how a cluster's
    /// init container puts the agent where the sandbox container runs it.
    #[arg(long, value_name = "PATH")]
    install: Option<PathBuf>,
    /// Default working directory of commands.
    #[arg(long, env = "SBX_AGENT_WORKDIR", default_value = sbx_api::WORKSPACE_DIR)]
    workdir: PathBuf,
    /// Default user of commands (a name or `uid[:gid]`); root when unset.
    #[arg(long, env = "SBX_AGENT_USER")]
    user: Option<String>,
    /// Where the egress relay listens for the sandbox's HTTP(S) proxy
    /// clients (port 0: any free port, for tests on a host).
    #[arg(long, env = "SBX_AGENT_EGRESS_LISTEN", default_value = sbx_api::EGRESS_PROXY_LISTEN)]
    egress_listen: SocketAddr,
    /// The orchestrator's egress proxy socket the relay connects to.
    #[arg(long, env = "SBX_AGENT_EGRESS_SOCKET", default_value = sbx_api::EGRESS_SOCKET_PATH)]
    egress_socket: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    if let Some(target) = args.install {
        return match sandbox_agent::install_self(&target) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!(target = %target.display(), "cannot install the agent: {err}");
                ExitCode::FAILURE
            }
        };
    }
    // Read once and cleared: nothing the agent starts inherits it, and
    // the agent is not dumpable, so its initial environment stays private.
    let key = std::env::var(sbx_api::AGENT_KEY_ENV).ok();
    std::env::remove_var(sbx_api::AGENT_KEY_ENV);
    let listen = match (args.handoff, args.listen_tcp) {
        (Some(path), _) => Listen::Handoff(path),
        (None, Some(addr)) => match key.and_then(AgentKey::new) {
            Some(key) => Listen::Tcp { addr, key },
            None => {
                tracing::error!(
                    "--listen-tcp needs a key of 32 or more characters in {}",
                    sbx_api::AGENT_KEY_ENV
                );
                return ExitCode::FAILURE;
            }
        },
        (None, None) => Listen::Path(args.socket),
    };
    let config = Config {
        listen,
        workdir: args.workdir,
        default_user: args.user,
        base_env: base_env_from_vars(std::env::vars_os()),
        egress: RelayConfig {
            listen: args.egress_listen,
            socket: args.egress_socket,
        },
    };
    match sandbox_agent::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            ExitCode::FAILURE
        }
    }
}

//! `sandbox-agent [--socket PATH | --handoff PATH] [--workdir DIR] [--user USER]
//! [--egress-listen ADDR] [--egress-socket PATH]`: parses arguments, sets up logging to stderr and
//! hands over to the library.

use clap::Parser;
use sandbox_agent::egress::RelayConfig;
use sandbox_agent::{env::base_env_from_vars, Config, Listen};
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
    let config = Config {
        listen: match args.handoff {
            Some(path) => Listen::Handoff(path),
            None => Listen::Path(args.socket),
        },
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

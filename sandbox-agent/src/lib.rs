//! `sandbox-agent`: PID 1 of every sbx sandbox.
//!
//! The orchestrator never enters a sandbox to run something; it asks this
//! daemon, which already lives inside, over HTTP/1.1 on a Unix socket
//! whose listening end the orchestrator binds on the host and hands over at
//! start ([`handoff`]). So an exec costs one
//! socket round trip and a fork, and the agent owns every process it starts:
//! it can time them out, signal their whole process group and reap them.
//!
//! Modules, bottom up:
//! - [`reaper`]: the single `waitpid(-1)` loop (PID 1 must reap orphans)
//!   that hands exit statuses to their owners;
//! - [`process`]: spawn a command in its own session, with async pipes and
//!   an exit watch — the base for exec, streaming and background processes;
//! - [`user`]: who a command runs as, from the sandbox's `/etc/passwd`;
//! - [`exec`]: the buffered `POST /exec` consumer;
//! - [`events`]: NDJSON event streams and incremental UTF-8 decoding;
//! - [`stream`]: the streamed `POST /exec`, killed when its client leaves;
//! - [`processes`]: background processes, their logs, stdin and signals;
//! - [`kill_all`]: ending every process but the agent (after a bomb);
//! - [`pty`]: terminals: a command on a PTY, viewed over WebSockets;
//! - [`session`]: persistent shell sessions, one command at a time;
//! - [`files`], [`archive`]: file and tar routes, streamed; [`fs_safe`]
//!   keeps archive extraction beneath its target directory;
//! - [`layer`]: a build step's changes to the root file system, as an OCI
//!   layer;
//! - [`watch`]: file-system change streams from inotify;
//! - [`ports`]: the sandbox's ports: HTTP proxy, readiness wait, TCP tunnels;
//! - [`handoff`]: receiving the listener from the orchestrator;
//! - [`server`]: routes, readiness, shutdown;
//! - [`egress`]: the relay from `127.0.0.1:3128` in the sandbox to the
//!   orchestrator's egress proxy;
//! - [`env`]: the clean environment commands start with;
//! - [`error`]: [`AgentError`] and its one mapping to HTTP.

pub mod archive;
pub mod egress;
pub mod env;
pub mod error;
pub mod events;
pub mod exec;
pub mod files;
pub mod fs_safe;
pub mod handoff;
pub mod hosts;
pub mod kill_all;
pub mod layer;
pub mod ports;
pub mod process;
pub mod processes;
pub mod pty;
pub mod reaper;
pub mod server;
pub mod session;
pub mod stream;
pub mod unread_body;
pub mod user;
pub mod watch;

pub use error::AgentError;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Worker threads of the runtime. The agent mostly waits on pipes and
/// sockets; two threads are plenty and keep idle memory per sandbox low
/// (the default would be one per host core).
const WORKER_THREADS: usize = 2;
/// Threads for blocking file work. Bounded so the agent's threads always
/// fit in the pids headroom the orchestrator leaves it beside the tenant
/// cgroup (64, see the orchestrator's `runtime::tenant`).
const MAX_BLOCKING_THREADS: usize = 16;

/// Where the agent's listener comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// Bind a socket at this path (an agent run by hand, tests).
    Path(PathBuf),
    /// Receive it through the handoff socket at this path (in a sandbox:
    /// `sbx_api::HANDOFF_SOCKET_PATH`).
    Handoff(PathBuf),
    /// Bind this TCP address (in a sandbox on a cluster:
    /// `sbx_api::AGENT_TCP_LISTEN`, loopback in its own network namespace)
    /// and serve only requests that carry `key` (see [`server::require_key`]).
    Tcp { addr: SocketAddr, key: AgentKey },
}

/// The secret a TCP agent checks on every request: the orchestrator's
/// proof that it is the one calling. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentKey(String);

impl AgentKey {
    /// A key; `None` when it is too short to be one (an unset variable).
    pub fn new(key: String) -> Option<Self> {
        (key.len() >= 32).then_some(Self(key))
    }

    /// Whether `offered` is this key, in time that does not depend on
    /// where the two first differ.
    pub fn matches(&self, offered: &[u8]) -> bool {
        let key = self.0.as_bytes();
        offered.len() == key.len()
            && key
                .iter()
                .zip(offered)
                .fold(0u8, |differ, (a, b)| differ | (a ^ b))
                == 0
    }
}

impl std::fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentKey(..)")
    }
}

/// What the agent needs to know, settled at start-up.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Listen,
    /// The default cwd of commands (`sbx_api::WORKSPACE_DIR` in a sandbox).
    pub workdir: PathBuf,
    /// The default user of commands (the image's `User`); root when
    /// `None`.
    pub default_user: Option<String>,
    /// The sandbox's base environment, from `SBX_ENV_*` variables (see
    /// [`env::base_env_from_vars`]). The proxy variables that point at
    /// the egress relay come first; these override them.
    pub base_env: BTreeMap<String, String>,
    /// The egress relay (see [`egress`]).
    pub egress: egress::RelayConfig,
}

/// Shared state of the running agent.
#[derive(Debug)]
pub struct Agent {
    pub config: Config,
    pub reaper: Arc<reaper::Reaper>,
    pub processes: processes::Processes,
    /// The baseline of `GET /layer/changes`.
    pub layers: Arc<layer::Layers>,
}

/// Copies the running executable to `target` (mode 0555), through a
/// temporary name, so a half-written agent is never found there.
pub fn install_self(target: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let source = std::env::current_exe()?;
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temporary = target.with_extension("partial");
    std::fs::copy(&source, &temporary)?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o555))?;
    std::fs::rename(&temporary, target)
}

/// What a sandbox's agent does before any of the sandbox's code runs.
fn prepare_sandbox(workdir: &Path) {
    if let Err(err) = hosts::ensure_localhost(Path::new("/etc/hosts")) {
        tracing::warn!(%err, "cannot make localhost resolve");
    }
    // An image's WorkingDir need not exist in it, as with Docker.
    if let Err(err) = std::fs::create_dir_all(workdir) {
        tracing::warn!(%err, workdir = %workdir.display(), "cannot make the working dir");
    }
}

/// Runs the agent until SIGTERM/SIGINT. Returns `Ok` after a clean shutdown.
pub fn run(config: Config) -> Result<(), AgentError> {
    // Code in the sandbox runs as root with our uid. Without CAP_SYS_PTRACE
    // the kernel still lets it ptrace (and read the memory of) any dumpable
    // process of the same uid, so the agent makes itself non-dumpable: PID 1
    // cannot be attached to, nor its /proc files read. Commands it starts
    // become dumpable again at exec, so debuggers work on them as usual.
    if let Err(err) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(%err, "cannot make the agent non-dumpable");
    }
    if std::process::id() != 1 {
        // Outside a sandbox (tests, debugging) orphans of our commands would
        // go to the host's init; as a subreaper they come to us, as in a
        // sandbox, and get the same reaping.
        if let Err(err) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::warn!(%err, "cannot become a child subreaper");
        }
    }
    let listener = match &config.listen {
        Listen::Path(path) => server::Bound::Unix(server::listen_ready(path)?),
        Listen::Handoff(path) => {
            prepare_sandbox(&config.workdir);
            let received = handoff::receive(path)?;
            process::set_tenant_cgroups(received.tenant_cgroups);
            server::Bound::Unix(received.listener)
        }
        Listen::Tcp { addr, .. } => {
            prepare_sandbox(&config.workdir);
            server::Bound::Tcp(server::listen_tcp(*addr)?)
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    let result = runtime.block_on(async {
        let reaper = reaper::Reaper::start()?;
        // Bound before the agent's socket appears, so a ready sandbox has
        // its proxy address too; the environment names the bound address.
        let relay = egress::Relay::bind(&config.egress).await?;
        let mut config = config;
        let mut base_env = egress::proxy_env(relay.local_addr()?);
        base_env.append(&mut config.base_env);
        config.base_env = base_env;
        tokio::spawn(relay.run());
        let agent = Arc::new(Agent {
            config,
            reaper,
            processes: processes::Processes::default(),
            layers: Arc::default(),
        });
        server::serve(agent, listener).await
    });
    // Tasks still parked on pipes of killed processes must not delay exit.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

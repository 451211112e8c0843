//! `sbx serve`: assembles the store, the runtime, the egress proxy, the
//! manager and the HTTP API, adopts the sandboxes that survived the last
//! run, and serves.
//!
//! Stopping the server (SIGTERM, Ctrl-C) stops the API only: sandboxes keep
//! running, and the next `sbx serve` on the same data dir adopts them. The
//! warm pool's unclaimed sandboxes are the exception: they are deleted.

use crate::audit::{AuditError, AuditLog, EgressAudit};
use crate::egress::{EgressProxy, Resolver};
use crate::http::{self, AppState};
use crate::metrics::{CountedEgress, Metrics};
use crate::runtime::docker::DockerRuntime;
use crate::runtime::kubernetes::{KubeOptions, KubernetesRuntime};
use crate::runtime::youki::YoukiRuntime;
use crate::runtime::{Disks, Feature, Runtime, RuntimeError};
use crate::sandbox::{Manager, ManagerConfig, SandboxError};
use crate::store::{Store, StoreError};
use crate::tokens::Tokens;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("the sandbox agent binary was not found (looked at {0}); pass --agent-bin or set SBX_AGENT_BIN")]
    AgentBinaryNotFound(String),
    #[error("sbx serve needs root (namespaces, cgroups, mounts and the data dir)")]
    NotRoot,
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let context = context.into();
    move |source| ServeError::Io { context, source }
}

/// Which container engine runs the sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// youki where it can run (Linux, root, cgroups), Docker otherwise.
    Auto,
    /// libcontainer embedded in this process.
    Youki,
    /// A Docker Engine at DOCKER_HOST or /var/run/docker.sock.
    Docker,
    /// Pods on a Kubernetes cluster (see `--kubeconfig`, `--namespace`).
    Kubernetes,
}

impl RuntimeKind {
    fn resolve(self) -> RuntimeKind {
        match self {
            RuntimeKind::Auto => {
                let can_run_youki = cfg!(target_os = "linux")
                    && nix::unistd::geteuid().is_root()
                    && Path::new("/sys/fs/cgroup").is_dir();
                if can_run_youki {
                    RuntimeKind::Youki
                } else {
                    RuntimeKind::Docker
                }
            }
            chosen => chosen,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub runtime: RuntimeKind,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Defaults to `<data-dir>/images`.
    pub images_dir: Option<PathBuf>,
    /// Defaults to `sandbox-agent` next to the running executable.
    pub agent_binary: Option<PathBuf>,
    /// Largest request body read whole; larger ones get 413.
    pub max_body_bytes: usize,
    /// How often containers that no record owns are looked for.
    pub orphan_sweep: Duration,
    /// Default sandboxes kept started ahead of demand (0: none).
    pub warm_pool: usize,
    /// Also append every audit record to this file, as a JSON line.
    pub audit_log: Option<PathBuf>,
    /// TEST ONLY: names the egress proxy resolves to these addresses
    /// without DNS and without refusing loopback (see
    /// [`Resolver::with_overrides`]). Empty in production.
    pub egress_resolve: Vec<(String, IpAddr)>,
    /// The lifecycle of a sandbox whose create asks for none.
    pub default_lifecycle: sbx_api::Lifecycle,
    /// How long before a timeout acts its `expiring` event goes out.
    pub expiring_warning: Duration,
    /// How long a sandbox ended by its timeout stays listed.
    pub retention: Duration,
    /// How far promised disk space may exceed the pool.
    pub disk_overcommit: f64,
    /// A CA bundle every sandbox trusts instead of its image's.
    pub trust_host_ca: Option<PathBuf>,
    /// Previews are also served as `{port}-{id}.DOMAIN` (wildcard DNS to
    /// this server); their URLs name that host.
    pub preview_domain: Option<String>,
    /// The cluster, for `RuntimeKind::Kubernetes`.
    pub kube: KubeConfig,
}

/// Where the kubernetes runtime finds its cluster (see
/// `runtime::kubernetes::KubeOptions`).
#[derive(Debug, Clone, Default)]
pub struct KubeConfig {
    pub kubeconfig: Option<PathBuf>,
    pub namespace: String,
    pub runtime_class: Option<String>,
    pub node_containerd: Option<PathBuf>,
    /// Shared by replicas that serve the same sandboxes; defaults to this
    /// data dir's instance id.
    pub instance: Option<String>,
}

/// The CA bundle at `path`, resolved, once it is known to hold a PEM
/// certificate: a wrong path must fail the start, not every TLS call in
/// every sandbox.
fn ca_bundle(path: &Path) -> Result<PathBuf, ServeError> {
    let resolved = path.canonicalize().map_err(io_error(format!(
        "cannot find the CA bundle {}",
        path.display()
    )))?;
    let pem = std::fs::read_to_string(&resolved).map_err(io_error(format!(
        "cannot read the CA bundle {}",
        resolved.display()
    )))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(ServeError::Config(format!(
            "{} holds no PEM certificate",
            resolved.display()
        )));
    }
    Ok(resolved)
}

/// Where the agent binary is: the explicit path, or beside this executable.
fn resolve_agent_binary(explicit: Option<PathBuf>) -> Result<PathBuf, ServeError> {
    let candidates: Vec<PathBuf> = match explicit {
        Some(path) => vec![path],
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("sandbox-agent")))
            .into_iter()
            .chain([PathBuf::from("/usr/local/lib/sbx/sandbox-agent")])
            .collect(),
    };
    candidates
        .iter()
        .find(|path| path.is_file())
        .map(|path| path.canonicalize().unwrap_or_else(|_| path.clone()))
        .ok_or_else(|| {
            let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            ServeError::AgentBinaryNotFound(looked.join(", "))
        })
}

/// Creates the data dir and returns its absolute path; libcontainer changes
/// the process's cwd, so no relative path may survive start-up.
///
/// Mode 0711: nobody but root may list it, but a sandbox's remapped root
/// (an unprivileged host uid) must be able to traverse it to reach its own
/// root filesystem and socket directory while the runtime sets them up. The
/// files with secrets in it are 0600 ([`private_file`]).
fn prepare_data_dir(path: &Path) -> Result<PathBuf, ServeError> {
    std::fs::create_dir_all(path).map_err(io_error(format!("cannot create {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o711))
        .map_err(io_error(format!("cannot chmod {}", path.display())))?;
    path.canonicalize()
        .map_err(io_error(format!("cannot resolve {}", path.display())))
}

/// Creates `path` if needed and makes it readable by root only: the
/// database holds every sandbox's environment. SQLite gives its `-wal` and
/// `-shm` files the same mode.
fn private_file(path: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .and_then(|_| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)))
        .map_err(io_error(format!("cannot create {}", path.display())))
}

/// A random id naming this data dir, created once: it tells this
/// orchestrator's containers from those of others sharing an engine.
fn load_or_create_instance_id(path: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let id = format!("{:016x}", rand::random::<u64>());
    std::fs::write(path, format!("{id}\n"))?;
    Ok(id)
}

/// The manager's settings, with what `runtime` cannot do taken out: a
/// default timeout that would stop or pause deletes instead (said in the
/// log), and a host CA bundle it cannot mount is an error.
fn fit_to_runtime(
    mut config: ManagerConfig,
    runtime: &dyn Runtime,
) -> Result<ManagerConfig, ServeError> {
    let needs = match config.default_lifecycle.on_timeout {
        sbx_api::OnTimeout::Delete => None,
        sbx_api::OnTimeout::Stop => Some(Feature::Stop),
        sbx_api::OnTimeout::Pause => Some(Feature::Pause),
    };
    if let Some(reason) = needs.and_then(|feature| runtime.refuses(feature)) {
        tracing::warn!(
            runtime = runtime.name(),
            %reason,
            "a sandbox's timeout deletes it by default on this runtime"
        );
        config.default_lifecycle.on_timeout = sbx_api::OnTimeout::Delete;
    }
    if let (Some(_), Some(reason)) = (&config.ca_bundle, runtime.refuses(Feature::HostCaBundle)) {
        return Err(ServeError::Config(format!(
            "--trust-host-ca does not work with the {} runtime: {reason}",
            runtime.name()
        )));
    }
    Ok(config)
}

pub async fn run(config: ServeConfig) -> Result<(), ServeError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(ServeError::NotRoot);
    }
    let data_dir = prepare_data_dir(&config.data_dir)?;
    let images_dir = match config.images_dir {
        Some(dir) => std::path::absolute(&dir)
            .map_err(io_error(format!("cannot resolve {}", dir.display())))?,
        None => data_dir.join("images"),
    };
    let agent_binary = resolve_agent_binary(config.agent_binary)?;
    let token_path = data_dir.join("admin.token");
    let admin_token = http::load_or_create_admin_token(&token_path).map_err(io_error(format!(
        "cannot read or create {}",
        token_path.display()
    )))?;

    raise_open_files_limit();
    let db_path = data_dir.join("sbx.db");
    private_file(&db_path)?;
    let store = Arc::new(Store::open(&db_path)?);
    let manager_config = ManagerConfig {
        warm_pool: config.warm_pool,
        default_lifecycle: config.default_lifecycle,
        expiring_warning: config.expiring_warning,
        retention: config.retention,
        disk_overcommit: config.disk_overcommit,
        ca_bundle: config.trust_host_ca.as_deref().map(ca_bundle).transpose()?,
        ..ManagerConfig::new(&data_dir, images_dir.clone(), agent_binary.clone())
    };
    let audit = AuditLog::start(Arc::clone(&store), config.audit_log.as_deref())?;
    let tokens = Arc::new(Tokens::new(Arc::clone(&store), admin_token));
    // Templates sit next to the sandbox directories: a disk is a clone of
    // one, and cloning works only within a filesystem.
    let disks = Arc::new(Disks::probe(data_dir.join("disk-templates")));
    if let Err(reason) = disks.usable() {
        tracing::warn!(%reason, "disk_mb cannot be enforced");
    }
    let instance = || {
        load_or_create_instance_id(&data_dir.join("instance-id"))
            .map_err(io_error("cannot read or create the instance id"))
    };
    let runtime: Arc<dyn Runtime> = match config.runtime.resolve() {
        RuntimeKind::Docker => {
            Arc::new(DockerRuntime::connect(instance()?, Arc::clone(&disks)).await?)
        }
        RuntimeKind::Kubernetes => {
            let kube = config.kube.clone();
            Arc::new(
                KubernetesRuntime::connect(KubeOptions {
                    kubeconfig: kube.kubeconfig,
                    namespace: kube.namespace,
                    runtime_class: kube.runtime_class,
                    node_containerd: kube.node_containerd,
                    agent_binary: agent_binary.clone(),
                    instance: match kube.instance {
                        Some(instance) => instance,
                        None => instance()?,
                    },
                    scratch: data_dir.join("kube-imports"),
                })
                .await?,
            )
        }
        _ => Arc::new(YoukiRuntime::new(data_dir.join("youki"), Arc::clone(&disks)).await?),
    };
    let manager_config = fit_to_runtime(manager_config, runtime.as_ref())?;
    let resolver = Resolver::with_overrides(config.egress_resolve);
    if resolver.has_overrides() {
        tracing::warn!("egress resolver overrides in effect (--egress-resolve): for tests only");
    }
    let metrics = Arc::new(Metrics::new(runtime.name()));
    let egress = Arc::new(EgressProxy::new(
        resolver,
        Arc::new(CountedEgress::new(
            Arc::clone(&metrics),
            Arc::new(EgressAudit { log: audit.clone() }),
        )),
    ));
    let manager = Manager::new(
        store,
        runtime,
        egress,
        disks,
        manager_config,
        Arc::clone(&metrics),
    )?;
    manager.recover().await?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(io_error(format!("cannot listen on {}", config.listen)))?;
    let local = listener
        .local_addr()
        .map_err(io_error("cannot read the listening address"))?;
    tracing::info!(
        listen = %local,
        data_dir = %data_dir.display(),
        images_dir = %images_dir.display(),
        agent = %agent_binary.display(),
        runtime = manager.runtime().name(),
        "sbx serve ready"
    );
    let manager = Arc::new(manager);
    let sweeper = tokio::spawn(sweep_orphans(Arc::clone(&manager), config.orphan_sweep));
    let filler = tokio::spawn(Arc::clone(&manager).keep_pool_full());
    let lifetimes = tokio::spawn(Arc::clone(&manager).enforce_lifetimes());
    let deaths = tokio::spawn(Arc::clone(&manager).record_deaths());
    let detached = tokio_util::task::TaskTracker::new();
    let state = AppState {
        manager: Arc::clone(&manager),
        max_body_bytes: config.max_body_bytes,
        tokens,
        audit: audit.clone(),
        detached: detached.clone(),
        metrics,
        preview_domain: config.preview_domain.as_deref().map(Arc::from),
    };
    let stopping = Arc::clone(&manager);
    let shutdown = async move {
        shutdown_signal().await;
        // Streams that would never end on their own: the drain waits for
        // every call in progress.
        stopping.stop_following();
    };
    http::serve(listener, state, shutdown).await;
    // Work whose client left still runs; its records come after it.
    detached.close();
    detached.wait().await;
    sweeper.abort();
    lifetimes.abort();
    deaths.abort();
    // The filler ends after the launch it is in, so that nothing pooled
    // is still being made when the pool is drained (see `close_pool`).
    manager.close_pool();
    if let Err(err) = filler.await {
        tracing::error!(error = %err, "the pool's filler failed");
    }
    // Pooled sandboxes are nobody's: they do not outlive the server.
    if let Err(err) = manager.drain_pool().await {
        tracing::error!(error = %err, "cannot delete the pooled sandboxes");
    }
    // The records of the last calls may still be queued.
    audit.flush().await;
    Ok(())
}

/// Every `period`, removes containers no record owns (see
/// [`Manager::sweep_orphans`]). A failed sweep is logged and retried.
async fn sweep_orphans(manager: Arc<Manager>, period: Duration) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate; recovery just ran
    loop {
        ticks.tick().await;
        if let Err(err) = manager.sweep_orphans().await {
            tracing::warn!(error = %err, "orphan sweep failed");
        }
    }
}

/// Raises the soft open-files limit to the hard one: every sandbox holds
/// an egress listener here, and a default soft limit of 1,024 would stop a
/// server short of its 1,000 sandboxes.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(err) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(%err, soft, "cannot raise the open-files limit");
            }
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(%err, "cannot read the open-files limit"),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down; sandboxes keep running");
}

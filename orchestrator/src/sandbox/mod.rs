//! The sandbox manager: the lifecycle of every sandbox, and the only code
//! that changes a sandbox's state.
//!
//! The states and the transitions between them are one table,
//! [`crate::lifecycle`], which the store enforces; its diagram is there.
//! What the states mean here:
//!
//! - `creating`: the record exists, the container is being started and the
//!   agent handed its listener ([`handoff`]). Delete answers 409 until it
//!   settles; a start that fails or times out is torn down.
//! - `running`: the agent answered; exec and files are served.
//! - `failed`: the agent or container died underneath us, or a teardown
//!   could not finish. Only delete is allowed.
//! - `deleting`: teardown in progress; a crash here is finished at
//!   recovery, and a teardown that fails or times out ends in `failed`.
//!
//! The manager also keeps the [`EgressProxy`] in step with the sandboxes: a
//! sandbox is attached to it (its egress socket listening, its policy
//! loaded) before its container starts and when an adopted sandbox is
//! recovered, and detached at teardown. A policy change (`update`) is
//! written to the store and then to the proxy under one lock, so two racing
//! changes cannot leave the proxy enforcing a policy the store does not
//! hold.
//!
//! Create, delete and update run detached from their caller ([`detached`]):
//! a client that leaves mid-call leaves a sandbox that is running or gone,
//! never one stuck half-way. Timeouts bound the rest: a start that does not
//! finish within `start_timeout` is torn down, a teardown that does not
//! finish within `teardown_timeout` ends in `failed`.
//!
//! With a warm pool ([`pool`]), default creates are answered with a
//! sandbox started ahead of demand.
//!
//! Beyond create and delete: stop, start, pause and resume
//! ([`hibernate`]), snapshots, fork and restore ([`snapshots`]), timeouts
//! ([`lifetime`], with idleness from [`activity`]), the events that report
//! all of these ([`events`]), and the disk space they promise
//! ([`storage`]).

mod activity;
mod build;
mod deaths;
mod events;
mod handoff;
mod hibernate;
#[cfg(test)]
mod hibernate_tests;
mod images;
mod legacy;
mod lifetime;
#[cfg(test)]
mod manager_tests;
mod pool;
mod previews;
mod serving;
mod snapshots;
mod storage;

pub use activity::InUse;
pub use build::BuildRequest;
pub use storage::Storage;

use crate::egress::{EgressError, EgressProxy};
use crate::lifecycle::Transition;
use crate::metrics::{Census, CreateSource, Metrics};
use crate::runtime::{
    AgentLink, ContainerSpec, Disks, Feature, Limits, Runtime, RuntimeError, SandboxDir,
};
use crate::store::{SandboxRecord, Store, StoreError};
use chrono::{DateTime, Utc};
use events::Detail;
use sbx_api::client::Client;
use sbx_api::{
    CreateSandboxRequest, EventKind, Lifecycle, NetworkPolicy, OnTimeout, Sandbox, SandboxState,
    UpdateSandboxRequest,
};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Pause before retrying a pooled sandbox that failed to start.
const POOL_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("sandbox {0} not found")]
    NotFound(String),
    #[error("image {0} not found")]
    ImageNotFound(String),
    #[error("snapshot {0} not found")]
    SnapshotNotFound(String),
    /// The message names the preview.
    #[error("{0}")]
    PreviewNotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    InsufficientStorage(String),
    #[error("sandbox {id} is {state}")]
    WrongState { id: String, state: &'static str },
    #[error("sandbox {id}: {what} did not finish within {limit:?}")]
    TimedOut {
        id: String,
        what: &'static str,
        limit: Duration,
    },
    #[error("agent of sandbox {id} is unavailable: {reason}")]
    AgentUnavailable { id: String, reason: String },
    #[error("sandbox {id}: {source}")]
    Runtime { id: String, source: RuntimeError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("sandbox {id}: {source}")]
    Egress { id: String, source: EgressError },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Image(#[from] crate::images::ImageError),
}

impl SandboxError {
    /// Wraps a runtime error of sandbox `id` (for `map_err`).
    fn runtime(id: &str) -> impl FnOnce(RuntimeError) -> SandboxError + '_ {
        move |source| SandboxError::Runtime {
            id: id.to_owned(),
            source,
        }
    }
}

/// Defaults and fixed paths the manager works with.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// `<data-dir>/sandboxes`
    pub sandboxes_dir: PathBuf,
    /// Image `NAME` is the rootfs at `<images_dir>/NAME/rootfs`.
    pub images_dir: PathBuf,
    pub agent_binary: PathBuf,
    pub default_memory_mb: u64,
    pub default_cpus: f64,
    /// Applied when the runtime can enforce disk limits and the request
    /// names none.
    pub default_disk_mb: u64,
    pub pids_limit: u64,
    /// How long a new sandbox's agent may take to take its listener and
    /// answer, once its container runs.
    pub ready_timeout: Duration,
    /// How long a whole start may take (the engine included) before the
    /// sandbox is torn down: no sandbox stays `creating`.
    pub start_timeout: Duration,
    /// How long a teardown may take before the sandbox is marked `failed`
    /// (a later delete tries again): no sandbox stays `deleting`.
    pub teardown_timeout: Duration,
    /// How many default sandboxes to keep started ahead of demand.
    pub warm_pool: usize,
    /// `<data-dir>/snapshots`: one disk image per snapshot.
    pub snapshots_dir: PathBuf,
    /// The lifecycle of a sandbox whose create asks for none.
    pub default_lifecycle: Lifecycle,
    /// How long before a timeout acts its `expiring` event goes out.
    pub expiring_warning: Duration,
    /// How long a sandbox ended by its timeout stays listed as `deleted`;
    /// events of sandboxes gone are kept as long.
    pub retention: Duration,
    /// How far the disks promised may exceed the storage pool (see
    /// [`storage`]); 1.0: not at all.
    pub disk_overcommit: f64,
    /// How often timeouts are checked.
    pub lifetime_tick: Duration,
    /// The host CA bundle every sandbox trusts instead of its image's
    /// (`sbx serve --trust-host-ca`).
    pub ca_bundle: Option<PathBuf>,
}

impl ManagerConfig {
    pub fn new(data_dir: &Path, images_dir: PathBuf, agent_binary: PathBuf) -> Self {
        Self {
            sandboxes_dir: data_dir.join("sandboxes"),
            images_dir,
            agent_binary,
            default_memory_mb: 512,
            default_cpus: 1.0,
            default_disk_mb: 10 * 1024,
            pids_limit: 1024,
            ready_timeout: Duration::from_secs(10),
            start_timeout: Duration::from_secs(60),
            teardown_timeout: Duration::from_secs(60),
            warm_pool: 0,
            snapshots_dir: data_dir.join("snapshots"),
            default_lifecycle: Lifecycle {
                timeout_s: None,
                idle_timeout_s: Some(3600),
                on_timeout: OnTimeout::Stop,
                auto_resume: true,
            },
            expiring_warning: Duration::from_secs(60),
            retention: Duration::from_secs(24 * 3600),
            disk_overcommit: 1.0,
            lifetime_tick: Duration::from_millis(500),
            ca_bundle: None,
        }
    }
}

#[derive(Debug)]
pub struct Manager {
    store: Arc<Store>,
    runtime: Arc<dyn Runtime>,
    egress: Arc<EgressProxy>,
    config: ManagerConfig,
    /// Serialises policy changes (see the module docs).
    policy_changes: tokio::sync::Mutex<()>,
    pool: pool::WarmPool,
    serving: serving::Serving,
    /// Create and delete are timed here (see [`crate::metrics`]).
    metrics: Arc<Metrics>,
    /// Copies disks for snapshots, forks and restores.
    disks: Arc<Disks>,
    events: events::Events,
    activity: activity::Activity,
    lifetime: lifetime::Lifetime,
    /// Serialises what changes a sandbox's container (see [`hibernate`]).
    ops: hibernate::OpLocks,
    /// Held from a storage admission until what it admitted is recorded.
    admissions: tokio::sync::Mutex<()>,
    /// The images dir: what `image` names.
    images: Arc<crate::images::catalog::Images>,
    /// Cancelled when the server stops: event streams that follow end.
    following: tokio_util::sync::CancellationToken,
    /// Every running sandbox's init, watched (see [`deaths`]).
    deaths: deaths::Deaths,
}

/// Why a sandbox is deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// A client asked; the name is its token's. The record goes.
    Client(String),
    /// Its lifecycle ended it (`timeout`, `idle`): the record stays, as
    /// `deleted`, for the retention period.
    Policy(String),
}

impl EndReason {
    fn text(&self) -> String {
        match self {
            EndReason::Client(identity) => format!("deleted by {identity}"),
            EndReason::Policy(reason) => reason.clone(),
        }
    }
}

/// When a sandbox with `lifecycle` that starts now times out.
fn expiry(lifecycle: &Lifecycle) -> Option<DateTime<Utc>> {
    lifecycle
        .timeout_s
        .map(|seconds| Utc::now() + chrono::Duration::seconds(seconds as i64))
}

/// Whether `id` could name a sandbox: ASCII letters, digits and `-`, at
/// most 64 bytes (new ids are 16 lowercase hex digits, see [`new_id`]).
/// Anything else is refused before it reaches a path, which keeps `/`, `..`
/// and NUL out of them.
fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The variables that point TLS clients which do not read the system
/// bundle at a CA file: Python's `ssl` and OpenSSL, `requests`, pip (which
/// carries its own bundle), and Node (likewise).
const CA_BUNDLE_ENV: [&str; 4] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    "NODE_EXTRA_CA_CERTS",
];

/// Environment of the agent process: the sandbox env travels as `SBX_ENV_*`
/// so the agent can tell it apart from its own settings.
fn agent_env(env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    env.iter()
        .map(|(key, value)| (format!("SBX_ENV_{key}"), value.clone()))
        .collect()
}

impl Manager {
    pub fn new(
        store: Arc<Store>,
        runtime: Arc<dyn Runtime>,
        egress: Arc<EgressProxy>,
        disks: Arc<Disks>,
        config: ManagerConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SandboxError> {
        for dir in [&config.sandboxes_dir, &config.snapshots_dir] {
            std::fs::create_dir_all(dir).map_err(|source| SandboxError::Io {
                context: format!("cannot create {}", dir.display()),
                source,
            })?;
        }
        let images = Arc::new(crate::images::catalog::Images::open(&config.images_dir)?);
        Ok(Self {
            images,
            events: events::Events::new(Arc::clone(&store)),
            activity: activity::Activity::default(),
            lifetime: lifetime::Lifetime::default(),
            ops: hibernate::OpLocks::default(),
            admissions: tokio::sync::Mutex::new(()),
            following: tokio_util::sync::CancellationToken::new(),
            deaths: deaths::Deaths::default(),
            disks,
            store,
            runtime,
            egress,
            pool: pool::WarmPool::new(config.warm_pool),
            config,
            policy_changes: tokio::sync::Mutex::new(()),
            serving: serving::Serving::default(),
            metrics,
        })
    }

    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    pub fn runtime(&self) -> &dyn Runtime {
        self.runtime.as_ref()
    }

    /// How disks are copied here (`GET /v1/info`, see
    /// [`Disks::copy_method`]).
    pub fn snapshot_method(&self) -> &'static str {
        self.disks.copy_method()
    }

    /// A sandbox's environment as its processes see it: `env` from its
    /// create, over the server's defaults (the CA variables, when the
    /// server trusts the host's bundle).
    fn sandbox_env(&self, env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut full: BTreeMap<String, String> = match &self.config.ca_bundle {
            Some(_) => CA_BUNDLE_ENV
                .iter()
                .map(|name| (name.to_string(), sbx_api::CA_BUNDLE_PATH.to_owned()))
                .collect(),
            None => BTreeMap::new(),
        };
        full.extend(env.iter().map(|(key, value)| (key.clone(), value.clone())));
        full
    }

    /// The agent's environment in a sandbox with `env` on the image build
    /// at `image_rootfs`: the sandbox's env over its image's, and the
    /// image's working dir and user as the defaults of every command.
    fn agent_env(
        &self,
        env: &BTreeMap<String, String>,
        image_rootfs: &Path,
    ) -> BTreeMap<String, String> {
        let defaults = crate::images::catalog::defaults_of(image_rootfs);
        let mut merged = defaults.env;
        merged.extend(env.iter().map(|(key, value)| (key.clone(), value.clone())));
        let mut full = agent_env(&self.sandbox_env(&merged));
        if let Some(dir) = defaults.working_dir {
            full.insert("SBX_AGENT_WORKDIR".into(), dir);
        }
        if let Some(user) = defaults.user {
            full.insert("SBX_AGENT_USER".into(), user);
        }
        full
    }

    fn dir(&self, id: &str) -> SandboxDir {
        SandboxDir::new(self.config.sandboxes_dir.join(id))
    }

    /// Runs `call` on the store off the async workers: SQLite calls block
    /// (on the disk, and on the store's one connection).
    async fn db<T, F>(&self, call: F) -> Result<T, SandboxError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || call(&store))
            .await
            .map_err(|err| SandboxError::Io {
                context: "a store call panicked".into(),
                source: std::io::Error::other(err.to_string()),
            })?
            .map_err(SandboxError::from)
    }

    async fn record(&self, id: &str) -> Result<SandboxRecord, SandboxError> {
        if !is_valid_id(id) {
            return Err(SandboxError::NotFound(id.to_owned()));
        }
        let key = id.to_owned();
        // A pooled sandbox is nobody's yet: no client may see or touch it.
        self.db(move |store| store.get(&key))
            .await?
            .filter(|record| !record.pooled)
            .ok_or_else(|| SandboxError::NotFound(id.to_owned()))
    }

    /// The error of a call that the sandbox's state does not allow.
    pub(crate) fn wrong_state(&self, id: &str, state: SandboxState) -> SandboxError {
        SandboxError::WrongState {
            id: id.to_owned(),
            state: state.as_str(),
        }
    }

    /// Applies `transition` to `id` if the lifecycle table allows it now.
    async fn transition(&self, id: &str, transition: Transition) -> Result<bool, SandboxError> {
        if transition.to() != SandboxState::Running {
            // Before the store: from now on calls take the slow path and
            // see the new state there.
            self.serving.remove(id);
        }
        let key = id.to_owned();
        self.db(move |store| store.transition(&key, transition))
            .await
    }

    /// One sandbox. A sandbox recorded as running whose container has died
    /// is reported (and from now on recorded) as failed.
    pub async fn get(&self, id: &str) -> Result<Sandbox, SandboxError> {
        let sandbox = self.record(id).await?.sandbox;
        let alive = !matches!(sandbox.state, SandboxState::Running | SandboxState::Paused)
            || !self.mark_failed_if_dead(id).await?;
        let sandbox = if alive {
            sandbox
        } else {
            self.record(id).await?.sandbox
        };
        Ok(self.with_idle(sandbox))
    }

    /// The sandbox with `idle_since` filled in, where it applies.
    fn with_idle(&self, mut sandbox: Sandbox) -> Sandbox {
        if sandbox.state == SandboxState::Running {
            let otherwise = sandbox.created_at.max(self.lifetime.since);
            sandbox.idle_since = self.activity.idle_since(&sandbox.id, otherwise);
        }
        sandbox
    }

    /// Marks a call or stream on `id` as running until the guard drops:
    /// the sandbox is not idle meanwhile (see [`activity`]).
    pub fn in_use(&self, id: &str) -> InUse {
        self.activity.begin(id)
    }

    /// Checks with the runtime whether a running sandbox's container still
    /// lives; if not, moves it to `failed`. True when it was found dead.
    async fn mark_failed_if_dead(&self, id: &str) -> Result<bool, SandboxError> {
        let alive = self
            .runtime
            .is_running(id)
            .await
            .map_err(SandboxError::runtime(id))?;
        if alive {
            return Ok(false);
        }
        let reason = self.death_reason(id, "agent died").await;
        if self.fail(id, Transition::Died, reason).await? {
            tracing::warn!(%id, %reason, "the sandbox's container died; marked failed");
        }
        Ok(true)
    }

    /// Takes `transition` to `failed` with `reason`, in one update, and
    /// reports it; false when the sandbox was in no state to take it.
    async fn fail(
        &self,
        id: &str,
        transition: Transition,
        reason: &'static str,
    ) -> Result<bool, SandboxError> {
        self.serving.remove(id);
        let key = id.to_owned();
        let failed = self
            .db(move |store| store.transition_ended(&key, transition, reason, Utc::now()))
            .await?;
        if failed {
            self.events
                .emit(id, EventKind::Failed, Detail::reason(reason))
                .await;
        }
        Ok(failed)
    }

    /// Why a sandbox found dead died: `oom` when the OOM killer took a
    /// process of its own cgroup (its agent, beside the tenant cgroup),
    /// else `otherwise`.
    async fn death_reason(&self, id: &str, otherwise: &'static str) -> &'static str {
        if self.runtime.oom_killed(id).await {
            "oom"
        } else {
            otherwise
        }
    }

    /// What the metrics' gauges report, read now: the store's count of
    /// clients' sandboxes per state and the pool's level, rather than
    /// counts kept beside them that could drift (see [`crate::metrics`]).
    pub async fn census(&self) -> Result<Census, SandboxError> {
        let sandboxes = self.db(|store| store.count_by_state()).await?;
        let storage = self.storage().await?;
        Ok(Census {
            sandboxes,
            pool_ready: self.pool.ready_count() as u64,
            pool_size: self.config.warm_pool as u64,
            storage_pool_bytes: storage.pool_bytes,
            storage_used_bytes: storage.used_bytes,
            storage_promised_bytes: storage.promised_bytes,
        })
    }

    pub async fn list(&self) -> Result<Vec<Sandbox>, SandboxError> {
        Ok(self
            .db(|store| store.list())
            .await?
            .into_iter()
            .filter(|record| !record.pooled)
            .map(|record| self.with_idle(record.sandbox))
            .collect())
    }

    /// Drops what the manager keeps in memory of a sandbox that is gone.
    fn forget(&self, id: &str) {
        self.activity.forget(id);
        self.ops.forget(id);
        self.lifetime.rearm(id);
    }

    /// Creates a sandbox and returns it once its agent accepts connections.
    /// Runs to the end even if the caller stops waiting (see [`detached`]).
    pub async fn create(
        self: &Arc<Self>,
        request: CreateSandboxRequest,
    ) -> Result<Sandbox, SandboxError> {
        let manager = Arc::clone(self);
        detached(async move { manager.create_now(request, None).await }).await
    }

    /// Like [`Manager::create`], on the image build whose root filesystem
    /// is `rootfs` rather than the one `request.image` names (a Dockerfile
    /// build's step); never a pooled sandbox.
    pub(crate) async fn create_on_build(
        self: &Arc<Self>,
        request: CreateSandboxRequest,
        rootfs: PathBuf,
    ) -> Result<Sandbox, SandboxError> {
        let manager = Arc::clone(self);
        detached(async move { manager.create_now(request, Some(rootfs)).await }).await
    }

    async fn create_now(
        &self,
        request: CreateSandboxRequest,
        build: Option<PathBuf>,
    ) -> Result<Sandbox, SandboxError> {
        let started = Instant::now();
        request.validate().map_err(SandboxError::InvalidRequest)?;
        let snapshot = request.snapshot.clone();
        let pinned = build.is_some();
        let (mut record, image_rootfs) = self.new_record(request, build)?;
        if snapshot.is_none() && !pinned {
            if let Some(sandbox) = self.claim_pooled(&record).await? {
                self.metrics.created(CreateSource::Pool, started.elapsed());
                self.created(&sandbox).await;
                return Ok(sandbox);
            }
        }
        let sandbox = {
            let admission = self.admissions.lock().await;
            let disk = record.sandbox.disk_mb.unwrap_or(0) << 20;
            self.admit("the sandbox's disk", disk).await?;
            let (image_rootfs, keep_disk) = match &snapshot {
                Some(name) => (self.copy_snapshot_into(&mut record, name).await?, true),
                None => (image_rootfs, false),
            };
            let inserted = record.clone();
            let stored = self.db(move |store| store.insert(&inserted)).await;
            drop(admission);
            if let Err(err) = stored {
                let _ = std::fs::remove_dir_all(self.dir(&record.sandbox.id).path());
                return Err(err);
            }
            self.launch_inserted(record, image_rootfs, keep_disk)
                .await?
        };
        self.metrics.created(CreateSource::Cold, started.elapsed());
        Ok(sandbox)
    }

    /// A client's new sandbox is running: idle from now, and reported.
    async fn created(&self, sandbox: &Sandbox) {
        self.activity.reset(&sandbox.id);
        self.events
            .emit(&sandbox.id, EventKind::Created, Detail::default())
            .await;
    }

    /// The record of a new sandbox as `request` asks for it, with the
    /// server's defaults for what it leaves out, and its image's rootfs.
    fn new_record(
        &self,
        request: CreateSandboxRequest,
        build: Option<PathBuf>,
    ) -> Result<(SandboxRecord, PathBuf), SandboxError> {
        let image = request
            .image
            .unwrap_or_else(|| sbx_api::DEFAULT_IMAGE.to_owned());
        let resolved = match build {
            Some(rootfs) => Ok(Some(rootfs)),
            None => self.images.rootfs(&image),
        };
        let image_rootfs = match resolved {
            Ok(Some(rootfs)) => rootfs,
            Ok(None) => return Err(SandboxError::ImageNotFound(image)),
            Err(crate::images::ImageError::Invalid(reason)) => {
                return Err(SandboxError::InvalidRequest(reason))
            }
            Err(err) => return Err(err.into()),
        };
        let disk_mb = match (request.disk_mb, self.runtime.isolation().disk_quota) {
            (requested, Ok(())) => Some(requested.unwrap_or(self.config.default_disk_mb)),
            (None, Err(_)) => None,
            (Some(_), Err(reason)) => {
                return Err(SandboxError::InvalidRequest(format!(
                    "disk_mb cannot be enforced by this server: {reason}"
                )))
            }
        };
        let network = match request.network {
            Some(network) => network.normalized().map_err(SandboxError::InvalidRequest)?,
            None => NetworkPolicy::default(),
        };
        if !network.egress.is_empty() {
            self.supported(Feature::EgressProxy)?;
        }
        let lifecycle = request
            .lifecycle
            .unwrap_or_default()
            .over(&self.config.default_lifecycle);
        match lifecycle.on_timeout {
            OnTimeout::Delete => {}
            OnTimeout::Stop => self.supported(Feature::Stop)?,
            OnTimeout::Pause => self.supported(Feature::Pause)?,
        }
        let record = SandboxRecord {
            sandbox: Sandbox {
                id: new_id(),
                state: SandboxState::Creating,
                image,
                created_at: Utc::now(),
                memory_mb: request.memory_mb.unwrap_or(self.config.default_memory_mb),
                cpus: request.cpus.unwrap_or(self.config.default_cpus),
                disk_mb,
                labels: request.labels,
                network,
                expires_at: expiry(&lifecycle),
                lifecycle,
                idle_since: None,
                ended_reason: None,
            },
            env: request.env,
            pooled: false,
            image_build: Some(image_rootfs.clone()),
            ended_at: None,
        };
        Ok((record, image_rootfs))
    }

    /// Starts the sandbox `record` describes, already stored as
    /// `creating`; on failure nothing of it is left.
    async fn launch_inserted(
        &self,
        record: SandboxRecord,
        image_rootfs: PathBuf,
        keep_disk: bool,
    ) -> Result<Sandbox, SandboxError> {
        let id = record.sandbox.id.clone();
        let limit = self.config.start_timeout;
        let start = self.start(&record, image_rootfs, keep_disk);
        let started = match tokio::time::timeout(limit, start).await {
            Ok(result) => result,
            Err(_elapsed) => Err(SandboxError::TimedOut {
                id: id.clone(),
                what: "the start",
                limit,
            }),
        };
        match started {
            Ok(()) => {
                if !self.transition(&id, Transition::Ready).await? {
                    // Deleted meanwhile (a pooled sandbox at shutdown).
                    let reason = self.not_serving(&id).await;
                    return Err(reason.unwrap_or(SandboxError::NotFound(id)));
                }
                let mut sandbox = record.sandbox;
                sandbox.state = SandboxState::Running;
                if !record.pooled {
                    self.serving.insert(&id);
                    self.deaths.watch(&self.runtime, &id);
                    self.created(&sandbox).await;
                }
                tracing::info!(%id, image = %sandbox.image, pooled = record.pooled, "sandbox running");
                Ok(sandbox)
            }
            Err(err) => {
                tracing::warn!(%id, error = %err, "sandbox failed to start");
                if let Err(cleanup) = self.bounded_teardown(&id, false).await {
                    tracing::error!(%id, error = %cleanup, "cleanup of a failed sandbox failed");
                    // Out of `creating`: a delete can finish the job.
                    self.transition(&id, Transition::TeardownFailed).await?;
                }
                Err(err)
            }
        }
    }

    /// Hands out a ready pooled sandbox as `wanted`, when the pool has one
    /// and `wanted` is of the pool's shape (see [`pool`]).
    async fn claim_pooled(&self, wanted: &SandboxRecord) -> Result<Option<Sandbox>, SandboxError> {
        if !self.pool.is_enabled() || !self.fits_pool(wanted)? {
            return Ok(None);
        }
        while let Some(id) = self.pool.take() {
            let requested = &wanted.sandbox;
            // Both at once: each is a hop off the async workers, and a
            // claim costs these two hops. A dead one claimed is torn down
            // below like an unclaimed one.
            let (key, claim) = (id.clone(), requested.clone());
            let (alive, claimed) = tokio::join!(
                self.runtime.is_running(&id),
                self.db(move |store| store.claim_pooled(&key, &claim))
            );
            let claimed = claimed? && alive.unwrap_or(false);
            if !claimed {
                tracing::warn!(%id, "a pooled sandbox died before its claim");
                if let Err(err) = self.teardown(&id).await {
                    tracing::error!(%id, error = %err, "cannot remove a dead pooled sandbox");
                }
                continue;
            }
            self.egress
                .set_policy(&id, &requested.network)
                .map_err(|source| SandboxError::Egress {
                    id: id.clone(),
                    source,
                })?;
            self.serving.insert(&id);
            self.deaths.watch(&self.runtime, &id);
            tracing::info!(%id, "pooled sandbox claimed");
            return Ok(Some(Sandbox {
                id,
                state: SandboxState::Running,
                ..requested.clone()
            }));
        }
        Ok(None)
    }

    /// Whether a sandbox like `wanted` can come from the pool: everything
    /// but its labels and network policy must be what a default create
    /// gets.
    fn fits_pool(&self, wanted: &SandboxRecord) -> Result<bool, SandboxError> {
        let (shape, _) = self.new_record(CreateSandboxRequest::default(), None)?;
        let env_matches = wanted.env == shape.env;
        let (wanted, shape) = (&wanted.sandbox, &shape.sandbox);
        Ok(env_matches
            && wanted.image == shape.image
            && wanted.memory_mb == shape.memory_mb
            && wanted.cpus == shape.cpus
            && wanted.disk_mb == shape.disk_mb)
    }

    /// Keeps the warm pool full for as long as the server runs: starts a
    /// pooled sandbox whenever one is missing, and waits for claims in
    /// between. A failed start is retried after a pause.
    pub async fn keep_pool_full(self: Arc<Self>) {
        if !self.pool.is_enabled() {
            return;
        }
        loop {
            while self.pool.wants_more() {
                match self.launch_pooled().await {
                    Ok(id) => self.pool.put(id),
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot start a pooled sandbox");
                        tokio::time::sleep(POOL_RETRY).await;
                    }
                }
            }
            if self.pool.is_closed() {
                return;
            }
            self.pool.room_made().await;
        }
    }

    /// Ends the event streams that follow: the server is stopping, and
    /// waits for the calls in progress.
    pub fn stop_following(&self) {
        self.following.cancel();
    }

    /// Stops refilling the pool: [`Self::keep_pool_full`] returns once the
    /// launch it is in (bounded by the start timeout) has finished. Not
    /// aborted mid-launch: a start already handed to the runtime goes on
    /// without its caller, and its sandbox would be left half-made, after
    /// [`Self::drain_pool`] had looked (seen in CI).
    pub fn close_pool(&self) {
        self.pool.close();
    }

    async fn launch_pooled(&self) -> Result<String, SandboxError> {
        let (mut record, image_rootfs) = self.new_record(CreateSandboxRequest::default(), None)?;
        record.pooled = true;
        let admission = self.admissions.lock().await;
        self.admit(
            "a pooled sandbox",
            record.sandbox.disk_mb.unwrap_or(0) << 20,
        )
        .await?;
        let inserted = record.clone();
        self.db(move |store| store.insert(&inserted)).await?;
        drop(admission);
        Ok(self.launch_inserted(record, image_rootfs, false).await?.id)
    }

    /// Deletes every pooled sandbox, ready or half-started: they hold
    /// nothing of anyone's. For a graceful stop, once nothing refills the
    /// pool any more.
    pub async fn drain_pool(&self) -> Result<(), SandboxError> {
        self.pool.drain();
        for record in self.db(|store| store.list()).await? {
            if record.pooled {
                self.teardown(&record.sandbox.id).await?;
            }
        }
        Ok(())
    }

    async fn start(
        &self,
        record: &SandboxRecord,
        image_rootfs: PathBuf,
        keep_disk: bool,
    ) -> Result<(), SandboxError> {
        let id = &record.sandbox.id;
        let dir = self.dir(id);
        let run_dir = dir.run_dir();
        let io_error = |context: &str| {
            let context = format!("{context} {}", run_dir.display());
            move |source| SandboxError::Io { context, source }
        };
        std::fs::create_dir_all(&run_dir).map_err(io_error("cannot create"))?;
        // Root's, and read-only to the sandbox (see `SandboxDir::run_dir`).
        std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o755))
            .map_err(io_error("cannot set the mode of"))?;
        let spec = ContainerSpec {
            id: id.clone(),
            agent_env: self.agent_env(&record.env, &image_rootfs),
            image_rootfs,
            dir: dir.clone(),
            agent_binary: self.config.agent_binary.clone(),
            ca_bundle: self.config.ca_bundle.clone(),
            limits: Limits {
                memory_bytes: record.sandbox.memory_mb << 20,
                cpus: record.sandbox.cpus,
                pids: self.config.pids_limit,
                disk_bytes: record.sandbox.disk_mb.map(|mb| mb << 20),
            },
            keep_disk,
        };
        let started = Instant::now();
        let ready = match self.runtime.agent_link() {
            AgentLink::Handoff => self.start_handed_over(record, &spec).await?,
            AgentLink::Dialed => {
                self.runtime
                    .start(&spec)
                    .await
                    .map_err(SandboxError::runtime(id))?;
                self.agent_answers(id, Instant::now() + self.config.ready_timeout)
                    .await
            }
        };
        if ready {
            tracing::debug!(%id, ready_us = started.elapsed().as_micros() as u64, "sandbox started");
            Ok(())
        } else {
            Err(SandboxError::AgentUnavailable {
                id: id.clone(),
                reason: format!(
                    "not ready after {:?}; agent log: {}",
                    self.config.ready_timeout,
                    log_tail(&dir.agent_log())
                ),
            })
        }
    }

    /// Starts a sandbox whose agent takes its listener from the
    /// orchestrator (see [`handoff`]); true once the agent answers.
    async fn start_handed_over(
        &self,
        record: &SandboxRecord,
        spec: &ContainerSpec,
    ) -> Result<bool, SandboxError> {
        let id = &record.sandbox.id;
        let dir = &spec.dir;
        let run_dir = dir.run_dir();
        let io_error = |context: &str| {
            let context = format!("{context} {}", run_dir.display());
            move |source| SandboxError::Io { context, source }
        };
        let owner = self.runtime.isolation().host_root_uid;
        let agent = handoff::PendingAgent::bind(dir, owner.unwrap_or(0))
            .map_err(io_error("cannot bind the agent's sockets in"))?;
        // Listening before the agent starts: its relay works from the
        // first request.
        self.egress
            .attach(id, &dir.egress_socket(), &record.sandbox.network, owner)
            .map_err(|source| SandboxError::Egress {
                id: id.clone(),
                source,
            })?;
        let started = Instant::now();
        self.runtime
            .start(spec)
            .await
            .map_err(SandboxError::runtime(id))?;
        let tenant = self
            .runtime
            .tenant_cgroups(id, &spec.limits)
            .await
            .map_err(SandboxError::runtime(id))?;
        let container_started = started.elapsed();
        let ready = agent
            .hand_over(self.config.ready_timeout, &tenant)
            .await
            .map_err(io_error("cannot hand the agent its listener in"))?;
        tracing::debug!(
            %id,
            container_us = container_started.as_micros() as u64,
            agent_ready_us = (started.elapsed() - container_started).as_micros() as u64,
            "agent handed its listener"
        );
        Ok(ready)
    }

    /// Whether a dialed agent answers `GET /health` before `deadline`,
    /// asking again while it is not listening yet.
    async fn agent_answers(&self, id: &str, deadline: Instant) -> bool {
        let Ok(client) = self.agent_client(id).await else {
            return false;
        };
        while Instant::now() < deadline {
            let answer = client
                .send(http::Method::GET, "/health", None, bytes::Bytes::new())
                .await;
            match answer {
                Ok(response) if response.status().is_success() => return true,
                Ok(response) => {
                    tracing::debug!(%id, status = %response.status(), "agent not ready")
                }
                Err(err) => tracing::debug!(%id, error = %err, "agent not ready"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Deletes a sandbox: stops the container and removes every trace,
    /// but for a record kept as `deleted` when its lifecycle ended it (see
    /// [`EndReason`]). Deleting such a record removes it.
    /// Runs to the end even if the caller stops waiting (see [`detached`]).
    pub async fn delete(self: &Arc<Self>, id: &str, reason: EndReason) -> Result<(), SandboxError> {
        let (manager, id) = (Arc::clone(self), id.to_owned());
        detached(async move {
            let _op = manager.ops.lock(&id).await;
            manager.delete_now(&id, reason).await
        })
        .await
    }

    async fn delete_now(&self, id: &str, reason: EndReason) -> Result<(), SandboxError> {
        let started = Instant::now();
        let record = self.record(id).await?;
        if record.sandbox.state == SandboxState::Deleted {
            let key = id.to_owned();
            self.db(move |store| store.remove(&key)).await?;
            self.forget(id);
            return Ok(());
        }
        if !self.transition(id, Transition::Delete).await? {
            let state = self.record(id).await?.sandbox.state;
            return Err(self.wrong_state(id, state));
        }
        let keep_record = matches!(reason, EndReason::Policy(_));
        if keep_record {
            // Before the teardown: a recovery that finds the record
            // `deleting` keeps it (see `recover`), and nobody reads a
            // `deleted` record without its reason.
            let (key, text) = (id.to_owned(), reason.text());
            self.db(move |store| store.set_ended(&key, &text, Utc::now()))
                .await?;
        }
        if let Err(err) = self.bounded_teardown(id, keep_record).await {
            self.transition(id, Transition::TeardownFailed).await?;
            return Err(err);
        }
        if keep_record {
            self.transition(id, Transition::Ended).await?;
        }
        self.events
            .emit(id, EventKind::Deleted, Detail::reason(reason.text()))
            .await;
        self.metrics.deleted(started.elapsed());
        tracing::info!(%id, reason = %reason.text(), "sandbox deleted");
        Ok(())
    }

    /// Replaces what `request` names of a running sandbox; today, its
    /// network policy, which the egress proxy applies to the next
    /// connection.
    /// Runs to the end even if the caller stops waiting (see [`detached`]).
    pub async fn update(
        self: &Arc<Self>,
        id: &str,
        request: UpdateSandboxRequest,
    ) -> Result<Sandbox, SandboxError> {
        let (manager, id) = (Arc::clone(self), id.to_owned());
        detached(async move { manager.update_now(&id, request).await }).await
    }

    async fn update_now(
        &self,
        id: &str,
        request: UpdateSandboxRequest,
    ) -> Result<Sandbox, SandboxError> {
        request.validate().map_err(SandboxError::InvalidRequest)?;
        self.record(id).await?;
        if let Some(network) = request.network {
            let network = network.normalized().map_err(SandboxError::InvalidRequest)?;
            let _serialised = self.policy_changes.lock().await;
            let (key, stored) = (id.to_owned(), network.clone());
            if !self
                .db(move |store| store.set_network(&key, SandboxState::Running, &stored))
                .await?
            {
                let reason = self.not_serving(id).await;
                return Err(reason.unwrap_or(self.wrong_state(id, SandboxState::Running)));
            }
            let attached =
                self.egress
                    .set_policy(id, &network)
                    .map_err(|source| SandboxError::Egress {
                        id: id.to_owned(),
                        source,
                    })?;
            if !attached {
                tracing::warn!(%id, "policy stored, but the sandbox has no egress listener");
            }
            tracing::info!(%id, egress = ?network.egress, "network policy changed");
        }
        self.get(id).await
    }

    /// [`Manager::teardown`] within the configured time.
    async fn bounded_teardown(&self, id: &str, keep_record: bool) -> Result<(), SandboxError> {
        let limit = self.config.teardown_timeout;
        tokio::time::timeout(limit, self.teardown_keeping(id, keep_record))
            .await
            .unwrap_or_else(|_elapsed| {
                Err(SandboxError::TimedOut {
                    id: id.to_owned(),
                    what: "the teardown",
                    limit,
                })
            })
    }

    /// Removes the container, the sandbox directory and the record.
    async fn teardown(&self, id: &str) -> Result<(), SandboxError> {
        self.teardown_keeping(id, false).await
    }

    /// Removes the container and the sandbox directory, and the record
    /// unless `keep_record`.
    async fn teardown_keeping(&self, id: &str, keep_record: bool) -> Result<(), SandboxError> {
        let dir = self.dir(id);
        let started = Instant::now();
        self.egress.detach(id);
        self.runtime
            .remove(id, &dir)
            .await
            .map_err(SandboxError::runtime(id))?;
        // A tree the sandbox wrote (its layer, without a disk): removed off
        // the async workers, and without following its symlinks (std's
        // remove_dir_all never does).
        let path = dir.path().to_owned();
        let removed = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&path) {
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => Err(SandboxError::Io {
                context: format!("cannot remove {}", path.display()),
                source,
            }),
            _ => Ok(()),
        });
        removed.await.map_err(|err| SandboxError::Io {
            context: format!("removing {}", dir.path().display()),
            source: std::io::Error::other(err.to_string()),
        })??;
        self.serving.remove(id);
        if !keep_record {
            let key = id.to_owned();
            self.db(move |store| store.remove(&key)).await?;
            self.forget(id);
        }
        tracing::debug!(%id, teardown_us = started.elapsed().as_micros() as u64, "sandbox torn down");
        Ok(())
    }

    /// A client of a running sandbox's agent. A stopped or paused sandbox
    /// whose lifecycle has `auto_resume` is woken first (see [`hibernate`]).
    pub async fn agent(self: &Arc<Self>, id: &str) -> Result<Client, SandboxError> {
        if self.serving.contains(id) {
            return self.agent_client(id).await;
        }
        let record = self.record(id).await?;
        match record.sandbox.state {
            SandboxState::Running => {}
            state if self.wake_for_call(id).await? => {
                tracing::debug!(%id, from = state.as_str(), "woken for a call");
            }
            state => {
                return Err(match state {
                    SandboxState::Stopped | SandboxState::Paused => {
                        SandboxError::Conflict(format!(
                            "sandbox {id} is {}: start or resume it first, or create it with \
                             lifecycle.auto_resume",
                            state.as_str()
                        ))
                    }
                    state => self.wrong_state(id, state),
                })
            }
        }
        self.agent_client(id).await
    }

    /// A client of sandbox `id`'s agent, however its runtime reaches it.
    async fn agent_client(&self, id: &str) -> Result<Client, SandboxError> {
        match self.runtime.agent_link() {
            AgentLink::Handoff => Ok(Client::unix(self.dir(id).agent_socket())),
            AgentLink::Dialed => self
                .runtime
                .agent_client(id)
                .await
                .map_err(SandboxError::runtime(id)),
        }
    }

    /// Refuses what this server's runtime cannot do, saying why.
    pub(crate) fn supported(&self, feature: Feature) -> Result<(), SandboxError> {
        match self.runtime.refuses(feature) {
            None => Ok(()),
            Some(reason) => Err(SandboxError::Conflict(format!(
                "the {} runtime cannot {}: {reason}",
                self.runtime.name(),
                feature.name().replace('_', " ")
            ))),
        }
    }

    /// Why a sandbox can no longer serve calls, if it cannot: deleted (404)
    /// or in any state but running (409). An agent that answers "shutting
    /// down" is one whose sandbox is being deleted; this turns that into the
    /// client's error instead of the agent's.
    pub async fn not_serving(&self, id: &str) -> Option<SandboxError> {
        match self.record(id).await {
            Err(err) => Some(err),
            Ok(record) if record.sandbox.state != SandboxState::Running => {
                Some(self.wrong_state(id, record.sandbox.state))
            }
            Ok(_) => None,
        }
    }

    /// Explains why a call to a sandbox's agent failed: the sandbox may have
    /// been deleted or be being deleted meanwhile (404, 409), its container
    /// may have died (then it is marked failed, 409), or its agent is really
    /// unreachable (503).
    pub async fn agent_failure(&self, id: &str, reason: String) -> SandboxError {
        if let Some(err) = self.not_serving(id).await {
            return err;
        }
        match self.mark_failed_if_dead(id).await {
            Ok(true) => self.wrong_state(id, SandboxState::Failed),
            Ok(false) => SandboxError::AgentUnavailable {
                id: id.to_owned(),
                reason,
            },
            Err(err) => err,
        }
    }

    /// Reconciles the store with what is really running, after a restart.
    ///
    /// Sandboxes whose container and agent survived stay `running`; ones
    /// that died are marked `failed`; ones caught mid-create or mid-delete
    /// are torn down; directories the store does not know are removed.
    pub async fn recover(&self) -> Result<(), SandboxError> {
        self.adopt_legacy_disks()?;
        for (id, staged) in self.db(|store| store.unfinished_restores()).await? {
            tracing::info!(%id, "finishing an interrupted restore");
            // The store names a file in the sandbox's own directory.
            let staging = self.dir(&id).disk_volume().with_file_name(staged);
            if let Err(err) = self.finish_restore(&id, &staging).await {
                tracing::error!(%id, error = %err, "cannot finish a restore; marked failed");
                self.fail(&id, Transition::RecoveryFailed, "server recovery failed")
                    .await?;
            }
        }
        for record in self.db(|store| store.list()).await? {
            let (id, pooled) = (record.sandbox.id.clone(), record.pooled);
            let Err(err) = self.recover_one(record).await else {
                continue;
            };
            // One sandbox the host will not settle must not keep the
            // server from serving all the others. (A failed one is left as
            // it is: a delete retries.)
            tracing::error!(%id, error = %err, "cannot recover the sandbox; marked failed");
            if pooled {
                // Nobody holds it; the next start tries again.
                continue;
            }
            self.fail(&id, Transition::RecoveryFailed, "server recovery failed")
                .await?;
        }
        // Containers and directories that no record owns: left by a crash
        // between creating them and recording the sandbox. They are ours
        // (labelled, or under our data dir), so they go.
        let entries =
            std::fs::read_dir(&self.config.sandboxes_dir).map_err(|source| SandboxError::Io {
                context: format!("cannot list {}", self.config.sandboxes_dir.display()),
                source,
            })?;
        let directories = entries
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        self.remove_orphans(directories).await?;
        self.remove_orphan_snapshots().await
    }

    /// Removes the copies a killed server left half-made in `id`'s
    /// directory (a restore's staged disk; those whose rename was recorded
    /// are finished before this runs). Best effort: they are only space.
    fn remove_staged_copies(&self, id: &str) {
        let disk = self.dir(id).disk_volume();
        let Ok(entries) = std::fs::read_dir(self.dir(id).path()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if snapshots::is_staging_name(&disk, &name) {
                tracing::info!(%id, file = %name, "removing a copy a killed server left");
                snapshots::remove_volume(&entry.path());
            }
        }
    }

    /// Settles one sandbox found in the store at recovery (see
    /// [`Self::recover`]).
    async fn recover_one(&self, record: SandboxRecord) -> Result<(), SandboxError> {
        let id = record.sandbox.id;
        self.remove_staged_copies(&id);
        if record.pooled {
            // Cheaper to start afresh than to check: nobody holds it.
            return self.teardown(&id).await;
        }
        match record.sandbox.state {
            SandboxState::Creating => {
                tracing::info!(%id, "removing a sandbox whose create was interrupted");
                self.teardown(&id).await?;
            }
            SandboxState::Deleting => {
                tracing::info!(%id, "finishing the teardown of an interrupted sandbox");
                let keep_record = record.ended_at.is_some();
                self.teardown_keeping(&id, keep_record).await?;
                if keep_record {
                    self.transition(&id, Transition::Ended).await?;
                }
            }
            SandboxState::Stopping | SandboxState::Starting => {
                // Either way the disk is whole: settle as stopped.
                tracing::info!(%id, "settling an interrupted stop or start as stopped");
                self.runtime
                    .remove(&id, &self.dir(&id))
                    .await
                    .map_err(SandboxError::runtime(&id))?;
                self.transition(&id, Transition::Halted).await?;
                self.events
                    .emit(&id, EventKind::Stopped, Detail::reason("server recovery"))
                    .await;
            }
            SandboxState::Running | SandboxState::Paused => {
                let alive = self
                    .runtime
                    .is_running(&id)
                    .await
                    .map_err(SandboxError::runtime(&id))?;
                if alive && record.sandbox.state == SandboxState::Running {
                    // A copy (snapshot, fork) freezes a running sandbox
                    // for its instant; a server killed in that instant
                    // leaves it frozen.
                    if let Err(err) = self.runtime.resume(&id).await {
                        tracing::warn!(%id, error = %err, "cannot thaw an adopted sandbox");
                    }
                }
                let reachable = match self.runtime.agent_link() {
                    AgentLink::Handoff => self.dir(&id).agent_socket().exists(),
                    AgentLink::Dialed => true,
                };
                if alive && reachable {
                    // A sandbox without its proxy still runs; its relay
                    // answers 503 until it is deleted.
                    let socket = self.dir(&id).egress_socket();
                    let owner = self.runtime.isolation().host_root_uid;
                    let network = &record.sandbox.network;
                    if let Err(err) = self.egress.attach(&id, &socket, network, owner) {
                        tracing::error!(%id, error = %err, "cannot restore the egress proxy");
                    }
                    if record.sandbox.state == SandboxState::Running {
                        self.serving.insert(&id);
                    }
                    self.deaths.watch(&self.runtime, &id);
                    self.activity.reset(&id);
                    tracing::info!(%id, state = record.sandbox.state.as_str(), "adopted sandbox");
                } else {
                    tracing::warn!(%id, "sandbox died while the orchestrator was down");
                    let reason = self.death_reason(&id, "server recovery").await;
                    self.fail(&id, Transition::Died, reason).await?;
                }
            }
            SandboxState::Stopped | SandboxState::Failed | SandboxState::Deleted => {}
        }
        Ok(())
    }

    /// Removes snapshot volumes no record owns (a crash between the copy
    /// and the record), and records whose disk is missing (a crash between
    /// the record and the rename).
    async fn remove_orphan_snapshots(&self) -> Result<(), SandboxError> {
        let snapshots = self.db(|store| store.list_snapshots()).await?;
        let owned: std::collections::HashSet<PathBuf> = snapshots
            .iter()
            .map(|snapshot| storage::snapshot_volume(&self.config.snapshots_dir, snapshot))
            .collect();
        for snapshot in &snapshots {
            if !storage::snapshot_image(&self.config.snapshots_dir, snapshot).exists() {
                tracing::warn!(snapshot = %snapshot.name, "a snapshot lost its disk; forgotten");
                let name = snapshot.name.clone();
                self.db(move |store| store.remove_snapshot(&name)).await?;
            }
        }
        let listing =
            std::fs::read_dir(&self.config.snapshots_dir).map_err(|source| SandboxError::Io {
                context: format!("cannot list {}", self.config.snapshots_dir.display()),
                source,
            })?;
        for entry in listing.flatten() {
            if !owned.contains(&entry.path()) {
                tracing::info!(path = %entry.path().display(), "removing an orphaned snapshot");
                snapshots::remove_volume(&entry.path());
            }
        }
        Ok(())
    }
}

impl Manager {
    /// Removes the containers that no record owns, while serving.
    ///
    /// A record exists before its container (create inserts first) and
    /// outlives it (teardown removes the container first), so a container
    /// without a record is never one of ours in flight. It is one that an
    /// engine finished creating for a server that died meanwhile: Docker
    /// can complete a `create` it had already received after the restarted
    /// server's recovery ran. Only a sweep while serving catches those.
    pub async fn sweep_orphans(&self) -> Result<(), SandboxError> {
        self.remove_orphans(Vec::new()).await
    }

    /// Tears down every id among the runtime's containers and `extra` that
    /// the store does not know.
    async fn remove_orphans(&self, extra: Vec<String>) -> Result<(), SandboxError> {
        let mut orphans = self
            .runtime
            .list()
            .await
            .map_err(|source| SandboxError::Runtime {
                id: "(all)".into(),
                source,
            })?;
        orphans.extend(extra);
        orphans.sort();
        orphans.dedup();
        for id in orphans {
            let key = id.clone();
            if is_valid_id(&id) && self.db(move |store| store.get(&key)).await?.is_none() {
                tracing::info!(%id, "removing an orphaned sandbox");
                self.teardown(&id).await?;
            }
        }
        Ok(())
    }
}

/// Runs `work` in a task of its own and waits for it. The caller's future
/// may be dropped at any `.await` (an HTTP client that hangs up drops its
/// handler); the task is not, so a change of state always finishes, or
/// undoes itself, as it would have with the caller there. Log lines keep
/// the caller's span (its request id).
async fn detached<T, F>(work: F) -> Result<T, SandboxError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, SandboxError>> + Send + 'static,
{
    tokio::spawn(work.in_current_span())
        .await
        .map_err(|err| SandboxError::Io {
            context: "a sandbox operation panicked".into(),
            source: std::io::Error::other(err.to_string()),
        })?
}

/// The last lines of the agent's log, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    if lines.is_empty() {
        return "(empty)".into();
    }
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_with_path_characters_are_invalid() {
        assert!(is_valid_id(&new_id()));
        for bad in ["", "..", "a/b", "a\0b", "../etc", &"x".repeat(65)] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn sandbox_env_is_prefixed_for_the_agent() {
        let env = BTreeMap::from([("FOO".to_owned(), "bar".to_owned())]);
        assert_eq!(
            agent_env(&env),
            BTreeMap::from([("SBX_ENV_FOO".to_owned(), "bar".to_owned())])
        );
    }
}

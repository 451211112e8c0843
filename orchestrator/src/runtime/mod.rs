//! The one seam between the orchestrator and a container engine.
//!
//! A [`Runtime`] turns a [`ContainerSpec`] into a running container whose
//! PID 1 is the sandbox agent, and tears it down again. Everything above
//! this trait (the store, the HTTP API, the agent bridge) is the same for
//! every engine; everything engine-specific (rootfs layering, cgroups,
//! namespaces, how a process is killed and reaped) lives below it.
//!
//! Implementations:
//! - [`youki::YoukiRuntime`]: libcontainer embedded in this process, the
//!   default on Linux as root. No daemon, no shim: a container costs a clone
//!   and a few mounts.
//! - [`docker::DockerRuntime`]: a Docker Engine through bollard, for
//!   machines where Docker is what there is.
//! - [`kubernetes::KubernetesRuntime`]: pods on a cluster through its API
//!   server. The engine is not on this host, so the agent is reached over
//!   a dialed, authenticated channel ([`AgentLink::Dialed`]) instead of a
//!   handed-over socket, and some of the lifecycle is refused
//!   ([`Runtime::refuses`]).

pub mod docker;
pub mod kubernetes;
pub mod youki;

mod disk;
#[cfg(test)]
pub(crate) mod fake;
mod freezer;
pub mod helper;
mod idmap;
mod idmapped;
mod in_helper;
mod loopback;
mod overlay;
mod process;
mod seccomp;
mod spec;
mod tenant;
pub(crate) mod volume;

pub use disk::{Disks, IMAGE as DISK_IMAGE};

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("libcontainer failed for sandbox {id}: {source}")]
    Libcontainer {
        id: String,
        source: Box<libcontainer::error::LibcontainerError>,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("invalid container spec for sandbox {id}: {reason}")]
    Spec { id: String, reason: String },
    #[error("the runtime's helper process has stopped")]
    HelperGone,
    #[error("{context}: {message}")]
    Engine { context: String, message: String },
}

impl RuntimeError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| RuntimeError::Io { context, source }
    }
}

/// Resolves once the init `pid` exits (at once without one).
async fn init_exited(pid: Option<i32>) -> Result<(), RuntimeError> {
    let Some(pid) = pid else {
        return Ok(());
    };
    process::exited(pid)
        .await
        .map_err(RuntimeError::io(format!("cannot watch pid {pid}")))
}

/// The image build an image's rootfs path points at now. Pinning the
/// resolved path means a later rebuild (which repoints the image's symlink)
/// never changes a running sandbox's lower layer, and names the build.
pub(crate) fn resolve_image(image_rootfs: &Path) -> Result<PathBuf, RuntimeError> {
    image_rootfs
        .canonicalize()
        .map_err(RuntimeError::io(format!(
            "cannot resolve image rootfs {}",
            image_rootfs.display()
        )))
}

/// The host-side directory of one sandbox, `<data-dir>/sandboxes/<id>/`.
/// Owned by the manager; runtimes put their per-sandbox files in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxDir(PathBuf);

impl SandboxDir {
    pub fn new(path: PathBuf) -> Self {
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Host side of `/.sbx/run` (`sbx_api::RUN_DIR`): the orchestrator's
    /// sockets for the sandbox, bind-mounted read-only, so the sandbox can
    /// connect to them but neither replace them nor store anything here.
    pub fn run_dir(&self) -> PathBuf {
        self.0.join("run")
    }

    /// The writable layer (overlay upper and work dirs), the part of a
    /// sandbox that `disk_mb` caps: youki mounts the sandbox's disk here.
    pub fn layer(&self) -> PathBuf {
        self.0.join("layer")
    }

    /// The volume holding the sandbox's disk image ([`Disks::new_volume`]):
    /// what snapshots, forks and restores copy.
    pub fn disk_volume(&self) -> PathBuf {
        self.0.join("disk")
    }

    /// The sandbox's disk image ([`Disks`]), on both runtimes.
    pub fn disk_image(&self) -> PathBuf {
        self.disk_volume().join(disk::IMAGE)
    }

    /// The agent's listening socket. The orchestrator binds it here, in a
    /// directory no sandbox sees, and hands the listener to the agent
    /// (`sbx_api::Handoff`): connecting to this path reaches this sandbox's
    /// agent and nothing else, whatever code inside the sandbox does.
    pub fn agent_socket(&self) -> PathBuf {
        self.0.join("agent.sock")
    }

    /// Where the agent picks up its listener at start
    /// (`sbx_api::HANDOFF_SOCKET_PATH` inside); gone once it has.
    pub fn handoff_socket(&self) -> PathBuf {
        self.run_dir().join("handoff.sock")
    }

    /// Where the orchestrator's egress proxy listens for this sandbox; the
    /// agent reaches it as `sbx_api::EGRESS_SOCKET_PATH`.
    pub fn egress_socket(&self) -> PathBuf {
        self.run_dir().join("egress.sock")
    }

    /// The agent's own stdout/stderr, kept for post-mortems.
    pub fn agent_log(&self) -> PathBuf {
        self.0.join("agent.log")
    }
}

/// Processes the agent may have on top of a sandbox's pids limit: its
/// threads, and the fork of each command before it joins the tenant cgroup.
pub const AGENT_PIDS_HEADROOM: u64 = 64;
/// Memory the agent may use on top of a sandbox's memory limit.
pub const AGENT_MEMORY_HEADROOM: u64 = 32 << 20;

/// Resource limits applied through cgroups: a sandbox's commands get these
/// in its tenant cgroup, the container as a whole a little more (see
/// [`Limits::container`] and `tenant`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub memory_bytes: u64,
    /// CPU quota in cores (1.5 = one and a half cores of time per period).
    pub cpus: f64,
    pub pids: u64,
    /// Size limit of the writable layer; `None`: unlimited.
    pub disk_bytes: Option<u64>,
}

impl Limits {
    /// The container's limits: the sandbox's plus the agent's headroom.
    pub fn container(&self) -> Limits {
        Limits {
            memory_bytes: self.memory_bytes.saturating_add(AGENT_MEMORY_HEADROOM),
            pids: self.pids.saturating_add(AGENT_PIDS_HEADROOM),
            ..*self
        }
    }
}

/// What a runtime enforces on every sandbox it starts, for `GET /v1/info`
/// and for refusing requests it could not honour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation {
    /// The host uid that root inside a sandbox is; `None`: not remapped.
    pub host_root_uid: Option<u32>,
    /// `Ok` when [`Limits::disk_bytes`] is enforced, else why not.
    pub disk_quota: Result<(), String>,
    /// Why the user namespace is missing, when it is.
    pub user_namespace_note: Option<String>,
    /// How images' owners are shifted into the user namespace, where sbx
    /// does it: [`IMAGES_IDMAPPED`] or [`IMAGES_SHIFTED_COPY`] (and why).
    pub image_mapping: Option<Result<&'static str, String>>,
}

/// Image builds are mounted idmapped: nothing is copied.
pub const IMAGES_IDMAPPED: &str = "idmapped_mount";
/// Each image build is copied once with its owners shifted.
pub const IMAGES_SHIFTED_COPY: &str = "shifted_copy";

/// How the orchestrator reaches a sandbox's agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentLink {
    /// The orchestrator binds the agent's Unix socket on this host and
    /// hands the listener over (`sandbox::handoff`).
    Handoff,
    /// The runtime dials the agent ([`Runtime::agent_client`]), which
    /// listens inside the sandbox and checks a per-sandbox key.
    Dialed,
}

/// What a runtime may be unable to do; [`Runtime::refuses`] says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Feature {
    /// Freezing a sandbox with its memory kept.
    Pause,
    /// Stopping a sandbox with its disk kept, and starting it again.
    Stop,
    /// Snapshots of a sandbox's disk: templates, forks, restores.
    Snapshot,
    /// Egress through sbx's proxy, by the sandbox's policy.
    EgressProxy,
    /// The host's CA bundle in place of the image's (`--trust-host-ca`).
    HostCaBundle,
}

impl Feature {
    pub const ALL: [Feature; 5] = [
        Feature::Pause,
        Feature::Stop,
        Feature::Snapshot,
        Feature::EgressProxy,
        Feature::HostCaBundle,
    ];

    /// The name `GET /v1/info` lists it under.
    pub fn name(self) -> &'static str {
        match self {
            Feature::Pause => "pause",
            Feature::Stop => "stop",
            Feature::Snapshot => "snapshot",
            Feature::EgressProxy => "egress_proxy",
            Feature::HostCaBundle => "host_ca_bundle",
        }
    }
}

/// The cluster a runtime places sandboxes on, for `GET /v1/info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// The API server's version (`v1.20.2`).
    pub server_version: String,
    pub nodes: u64,
    pub namespace: String,
}

/// What a runtime needs to start one sandbox.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub id: String,
    /// The image's root filesystem, used read-only as the lower layer.
    pub image_rootfs: PathBuf,
    pub dir: SandboxDir,
    /// The static agent binary on the host, mounted read-only.
    pub agent_binary: PathBuf,
    /// Environment of the agent process (and so the base of every exec).
    pub agent_env: BTreeMap<String, String>,
    /// A host CA bundle to mount read-only over the image's
    /// (`sbx_api::CA_BUNDLE_PATH`), when the server trusts the host's.
    pub ca_bundle: Option<PathBuf>,
    pub limits: Limits,
    /// The sandbox's disk image already holds its writable layer (a start
    /// after a stop, a fork, a create from a snapshot): mount it as it is.
    /// Otherwise the runtime makes a new, empty one.
    pub keep_disk: bool,
}

#[async_trait]
pub trait Runtime: Send + Sync + std::fmt::Debug {
    /// Short engine name shown in logs and `GET /v1/info`.
    fn name(&self) -> &'static str;

    /// The engine's version, for `GET /v1/info`.
    fn version(&self) -> String;

    /// What this runtime enforces; fixed for the life of the runtime.
    fn isolation(&self) -> Isolation;

    /// Readies the image build at `image_rootfs` (resolved) for fast
    /// starts, once, when it is imported: the youki runtime makes its
    /// user-namespace copy, Docker loads it into the engine. A start does
    /// the same when it finds it not done.
    async fn prepare_image(&self, _image_rootfs: &Path) -> Result<(), RuntimeError> {
        Ok(())
    }

    /// Lets go of what [`Runtime::prepare_image`] made for the build named
    /// `build` (`<images>/.store/<build>`), which is gone. Best effort:
    /// what cannot be removed is logged.
    async fn release_image(&self, _build: &str) {}

    /// Creates and starts the container. Returns once the agent process runs;
    /// the caller waits for the agent's socket to know it is ready. On
    /// failure the caller cleans up with [`Runtime::remove`], which copes
    /// with whatever half of the sandbox exists.
    async fn start(&self, spec: &ContainerSpec) -> Result<(), RuntimeError>;

    /// Makes the tenant cgroups of a started sandbox, under its container's
    /// cgroups, with the sandbox's own `limits`, and opens them for the
    /// agent (see `tenant`). Empty where the cgroup layout has no room for
    /// them (cgroup v2); the sandbox then runs without the agent's headroom.
    async fn tenant_cgroups(
        &self,
        id: &str,
        limits: &Limits,
    ) -> Result<Vec<std::fs::File>, RuntimeError>;

    /// Stops the container (the agent gets SIGTERM and a grace period, then
    /// everything is killed) and removes all it left on the host. Idempotent:
    /// removing a sandbox that is half created or already gone succeeds.
    async fn remove(&self, id: &str, dir: &SandboxDir) -> Result<(), RuntimeError>;

    /// Whether the sandbox's agent process is alive (frozen counts).
    async fn is_running(&self, id: &str) -> Result<bool, RuntimeError>;

    /// The host pid of the sandbox's init (its agent), if it runs.
    async fn init_pid(&self, id: &str) -> Result<Option<i32>, RuntimeError>;

    /// Resolves once the sandbox's init exits (at once if it is not
    /// running): a pidfd on its host pid, which both runtimes' inits have
    /// (the engine runs on this host).
    async fn exited(&self, id: &str) -> Result<(), RuntimeError> {
        init_exited(self.init_pid(id).await?).await
    }

    /// Whether the kernel's OOM killer has killed a process charged to the
    /// sandbox's own cgroup: the one that holds its agent, above the
    /// tenant cgroup its commands run in. Asked of a sandbox found dead,
    /// to say it ran out of memory rather than that its agent died. False
    /// where it cannot tell.
    async fn oom_killed(&self, id: &str) -> bool;

    /// Freezes every process of the sandbox, the agent included; memory
    /// stays.
    async fn pause(&self, id: &str) -> Result<(), RuntimeError>;

    /// Thaws what [`Runtime::pause`] froze. Idempotent.
    async fn resume(&self, id: &str) -> Result<(), RuntimeError>;

    /// Ids of every sandbox container this runtime holds, running or not:
    /// recovery removes the ones the store does not know.
    async fn list(&self) -> Result<Vec<String>, RuntimeError>;

    /// How the orchestrator reaches an agent of this runtime's.
    fn agent_link(&self) -> AgentLink {
        AgentLink::Handoff
    }

    /// A client of the agent of sandbox `id`, for a runtime whose link is
    /// [`AgentLink::Dialed`].
    async fn agent_client(&self, id: &str) -> Result<sbx_api::client::Client, RuntimeError> {
        Err(RuntimeError::Engine {
            context: format!("sandbox {id}"),
            message: format!("the {} runtime hands its agents a socket", self.name()),
        })
    }

    /// Why this runtime cannot do `feature`; `None` when it can.
    fn refuses(&self, _feature: Feature) -> Option<&'static str> {
        None
    }

    /// The cluster this runtime runs on, when it is one.
    async fn cluster(&self) -> Option<Cluster> {
        None
    }
}

//! `GET /v1/info`: what is serving, and on which container engine.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServerInfo {
    /// The sbx version.
    pub version: String,
    pub runtime: RuntimeInfo,
    /// The pool sandbox disks and snapshots live in.
    pub storage: StorageInfo,
}

/// The storage pool, and what has been promised out of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StorageInfo {
    /// `subvolume`: snapshots, forks and restores snapshot a disk's btrfs
    /// subvolume, in milliseconds whatever it holds; `reflink`: they clone
    /// its image, in time that grows with how fragmented it is; `copy`:
    /// they copy its bytes.
    pub snapshot_method: String,
    /// The pool's size.
    pub pool_bytes: u64,
    /// What the pool holds now.
    pub used_bytes: u64,
    /// What sandboxes may still write, plus what stopped sandboxes and
    /// snapshots hold: creates, starts, forks and snapshots are refused
    /// past `pool_bytes × overcommit`.
    pub promised_bytes: u64,
    pub overcommit: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuntimeInfo {
    /// `youki`, `docker` or `kubernetes`.
    pub name: String,
    /// The engine's own version (the API server's, on a cluster).
    pub version: String,
    pub isolation: IsolationInfo,
    /// The cluster sandboxes run on, with the kubernetes runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterInfo>,
    /// What this runtime cannot do, by feature (`pause`, `stop`,
    /// `snapshot`, `egress_proxy`, `host_ca_bundle`), with the reason; a
    /// call that needs one is refused with 409 and that reason. Empty:
    /// everything works.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unsupported: BTreeMap<String, String>,
}

/// A Kubernetes cluster sbx places sandboxes on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterInfo {
    /// The API server's version (`v1.20.2`).
    pub server_version: String,
    /// Nodes registered with the cluster.
    pub nodes: u64,
    /// The namespace sbx's pods and `Sandbox` resources live in.
    pub namespace: String,
}

/// What the runtime enforces on every sandbox, so that a client can check
/// before it trusts. A `false` comes with a reason in `notes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IsolationInfo {
    /// Sandboxes run in a user namespace: their root is an unprivileged
    /// host uid.
    pub user_namespace: bool,
    /// The host uid that root inside a sandbox is, when remapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_root_uid: Option<u32>,
    /// `disk_mb` is enforced.
    pub disk_quota: bool,
    /// The default `disk_mb` of a sandbox created without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_disk_mb: Option<u64>,
    /// How image files come to be owned by the sandbox's root in its user
    /// namespace: `idmapped_mount` (the image is mounted with shifted
    /// owners; nothing is copied) or `shifted_copy` (each image build is
    /// copied once with shifted owners, when it is imported). Absent where
    /// the engine does it itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_mapping: Option<String>,
    /// Why a protection above is missing, in words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

//! `GET /v1/info`: what is serving, and on which container engine.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServerInfo {
    /// The sbx version.
    pub version: String,
    pub runtime: RuntimeInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuntimeInfo {
    /// `youki` or `docker`.
    pub name: String,
    /// The engine's own version.
    pub version: String,
    pub isolation: IsolationInfo,
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
    /// Why a protection above is missing, in words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

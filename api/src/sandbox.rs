//! Sandbox records and the create request.

use crate::{Lifecycle, LifecycleRequest, NetworkPolicy};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The image a sandbox gets when the request names none.
pub const DEFAULT_IMAGE: &str = "base";
/// Upper bounds that catch unit mistakes (bytes sent as megabytes).
pub const MAX_MEMORY_MB: u64 = 1024 * 1024;
pub const MAX_CPUS: f64 = 1024.0;
/// Disk bounds: below the minimum a package install cannot even start;
/// above the maximum the number is a unit mistake.
pub const MIN_DISK_MB: u64 = 64;
pub const MAX_DISK_MB: u64 = 16 * 1024 * 1024;

/// `POST /v1/sandboxes`. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxRequest {
    /// The image's name (`GET /v1/images`): `[registry/]repository[:tag]
    /// [@digest]`, `:latest` when it has neither tag nor digest; `base`
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = r"^[A-Za-z0-9_][A-Za-z0-9._:@-]*(/[A-Za-z0-9_:@-][A-Za-z0-9._:@-]*)*$",
        max_length = 512
    )]
    pub image: Option<String>,
    /// Memory limit in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 16, maximum = 1048576)]
    pub memory_mb: Option<u64>,
    /// CPU limit, in cores; fractions allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0, maximum = 1024)]
    pub cpus: Option<f64>,
    /// Size limit of the sandbox's writable layer: what its commands can
    /// write on top of the image. Writing past it fails inside with a
    /// quota error. Needs a runtime that can enforce it (`GET /v1/info`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 64, maximum = 16777216)]
    pub disk_mb: Option<u64>,
    /// Environment every command in the sandbox starts with.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// What the sandbox may reach through the egress proxy. Absent: nothing
    /// (its network namespace has only `lo`, and the proxy refuses all).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::body::optional_object"
    )]
    pub network: Option<NetworkPolicy>,
    /// How long the sandbox lives, and what happens when that runs out.
    /// Absent fields take the server's defaults.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::body::optional_object"
    )]
    pub lifecycle: Option<LifecycleRequest>,
    /// Start from this snapshot's filesystem (and its image build) instead
    /// of a fresh one; `image` and `disk_mb`, if given, must match it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")]
    pub snapshot: Option<String>,
}

impl CreateSandboxRequest {
    /// Range and shape checks; the message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(image) = &self.image {
            // The characters of the reference grammar; the server checks
            // the grammar itself.
            let valid = !image.is_empty()
                && image.len() <= 512
                && image
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@".contains(&b))
                && image.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                && image
                    .split('/')
                    .all(|part| !part.is_empty() && !part.starts_with('.'));
            if !valid {
                return Err(format!("image {image:?} is not a valid image name"));
            }
        }
        match self.memory_mb {
            Some(mb) if !(16..=MAX_MEMORY_MB).contains(&mb) => {
                return Err(format!(
                    "memory_mb {mb} is out of range (16..={MAX_MEMORY_MB})"
                ))
            }
            _ => {}
        }
        match self.cpus {
            Some(cpus) if !(cpus.is_finite() && cpus > 0.0 && cpus <= MAX_CPUS) => {
                return Err(format!("cpus {cpus} is out of range (0..={MAX_CPUS})"))
            }
            _ => {}
        }
        match self.disk_mb {
            Some(mb) if !(MIN_DISK_MB..=MAX_DISK_MB).contains(&mb) => {
                return Err(format!(
                    "disk_mb {mb} is out of range ({MIN_DISK_MB}..={MAX_DISK_MB})"
                ))
            }
            _ => {}
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
                return Err(format!("env var {key:?} is not a valid name=value pair"));
            }
        }
        if let Some(network) = &self.network {
            network.validate()?;
        }
        if let Some(lifecycle) = &self.lifecycle {
            lifecycle.validate()?;
        }
        if let Some(snapshot) = &self.snapshot {
            crate::validate_snapshot_name(snapshot)?;
        }
        Ok(())
    }
}

/// Where a sandbox is in its life. Transitions are owned by the
/// orchestrator's sandbox manager, which documents them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Creating,
    Running,
    /// Processes frozen, memory kept.
    Paused,
    Stopping,
    /// No processes and no memory; the disk is kept.
    Stopped,
    Starting,
    Deleting,
    /// Gone, kept listed with its `ended_reason` for the server's retention
    /// period.
    Deleted,
    Failed,
}

impl SandboxState {
    /// Every state, in lifecycle order.
    pub const ALL: [SandboxState; 9] = [
        SandboxState::Creating,
        SandboxState::Running,
        SandboxState::Paused,
        SandboxState::Stopping,
        SandboxState::Stopped,
        SandboxState::Starting,
        SandboxState::Deleting,
        SandboxState::Deleted,
        SandboxState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Creating => "creating",
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
            SandboxState::Stopping => "stopping",
            SandboxState::Stopped => "stopped",
            SandboxState::Starting => "starting",
            SandboxState::Deleting => "deleting",
            SandboxState::Deleted => "deleted",
            SandboxState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == text)
    }
}

/// A sandbox as the API reports it. The environment is deliberately absent:
/// it may hold secrets, and listing sandboxes must not leak them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Sandbox {
    pub id: String,
    pub state: SandboxState,
    pub image: String,
    pub created_at: DateTime<Utc>,
    pub memory_mb: u64,
    pub cpus: f64,
    /// The writable layer's size limit; absent when the runtime cannot
    /// enforce one (see `GET /v1/info`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The sandbox's network policy, in canonical form.
    #[serde(default)]
    pub network: NetworkPolicy,
    /// Its lifetime, with the server's defaults filled in.
    #[serde(default)]
    pub lifecycle: Lifecycle,
    /// When `lifecycle.on_timeout` acts, if the sandbox has a timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Since when nothing has used the sandbox (see [`Lifecycle`]); absent
    /// while a call or stream is running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<DateTime<Utc>>,
    /// Why it ended or failed: `timeout`, `idle`, `oom`, `agent died`,
    /// `server recovery`, `server recovery failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_reason: Option<String>,
}

/// The path parameter of every `/v1/sandboxes/{id}…` route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SandboxPath {
    /// The sandbox's id.
    pub id: String,
}

/// `GET /v1/sandboxes`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SandboxList {
    pub sandboxes: Vec<Sandbox>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_request_is_valid() {
        let parsed: CreateSandboxRequest = serde_json::from_str("{}").expect("empty object parses");
        assert_eq!(parsed, CreateSandboxRequest::default());
        assert!(parsed.validate().is_ok());
    }

    #[test]
    fn rejects_out_of_range_values_and_bad_image_names() {
        for bad in [
            r#"{"memory_mb":0}"#,
            r#"{"cpus":0}"#,
            r#"{"cpus":-1.5}"#,
            r#"{"disk_mb":1}"#,
            r#"{"disk_mb":1000000000000}"#,
            r#"{"image":"../etc"}"#,
            r#"{"image":"/abs"}"#,
            r#"{"image":"a/../b"}"#,
            r#"{"image":"a//b"}"#,
            r#"{"image":"a b"}"#,
            r#"{"image":"-a"}"#,
            r#"{"image":""}"#,
            r#"{"network":{"egress":["https://github.com"]}}"#,
            r#"{"network":{"egress":["*"]}}"#,
        ] {
            let parsed: CreateSandboxRequest = serde_json::from_str(bad).expect("well-typed");
            assert!(parsed.validate().is_err(), "{bad} should be rejected");
        }
        let negative: Result<CreateSandboxRequest, _> = serde_json::from_str(r#"{"memory_mb":-5}"#);
        assert!(negative.is_err(), "negative memory is a type error");
    }

    #[test]
    fn network_policy_is_optional_and_validated() {
        let parsed: CreateSandboxRequest =
            serde_json::from_str(r#"{"network":{"egress":["github.com:443","*.pypi.org"]}}"#)
                .expect("well-typed");
        assert!(parsed.validate().is_ok());
        let old_record: Sandbox = serde_json::from_str(
            r#"{"id":"a","state":"running","image":"base","created_at":"2024-01-01T00:00:00Z","memory_mb":512,"cpus":1.0}"#,
        )
        .expect("a record without network still decodes");
        assert!(old_record.network.egress.is_empty());
    }

    #[test]
    fn state_round_trips_through_text() {
        for state in [
            SandboxState::Creating,
            SandboxState::Running,
            SandboxState::Failed,
        ] {
            assert_eq!(SandboxState::parse(state.as_str()), Some(state));
        }
        assert_eq!(SandboxState::parse("bogus"), None);
    }
}

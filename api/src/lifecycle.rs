//! A sandbox's life beyond create and delete: its lifetime (timeouts and
//! idleness), stop and start, pause and resume, snapshots, fork and
//! restore, and the events that report all of it.

use crate::{CreatedSandbox, ErrorBody};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Longest `timeout_s` or `idle_timeout_s`: thirty days. Longer is a unit
/// mistake (milliseconds sent as seconds).
pub const MAX_LIFETIME_S: u64 = 30 * 24 * 3600;
/// Most sandboxes one fork makes.
pub const MAX_FORKS: u32 = 100;

/// What happens to a sandbox when its timeout or idle timeout fires.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    /// Deleted: its processes and disk go. It stays listed, as `deleted`
    /// with its `ended_reason`, for the server's retention period.
    #[default]
    Delete,
    /// Stopped: processes end and memory is freed; the disk stays and
    /// `start` (or auto-resume) boots it again.
    Stop,
    /// Paused: processes are frozen in memory; `resume` (or auto-resume)
    /// thaws them.
    Pause,
}

impl OnTimeout {
    pub fn as_str(self) -> &'static str {
        match self {
            OnTimeout::Delete => "delete",
            OnTimeout::Stop => "stop",
            OnTimeout::Pause => "pause",
        }
    }
}

/// A sandbox's lifetime, as it applies: the request's `lifecycle` with the
/// server's defaults filled in.
///
/// A sandbox is idle when no API call has touched it, and no exec, stream,
/// log follow or upload has been running, for `idle_timeout_s`. Its own
/// background processes do not keep it awake.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Lifecycle {
    /// Seconds from create (or start, or the last `POST …/timeout`) until
    /// `on_timeout` acts; absent: no timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    /// Seconds of idleness after which `on_timeout` acts; absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u64>,
    #[serde(default)]
    pub on_timeout: OnTimeout,
    /// Whether a call that needs the sandbox's agent (exec, files,
    /// processes) starts a stopped sandbox or resumes a paused one, instead
    /// of answering 409.
    #[serde(default)]
    pub auto_resume: bool,
}

/// `lifecycle` of `POST /v1/sandboxes`: what the sandbox's lifetime should
/// be. Absent fields take the server's defaults (`sbx serve
/// --default-timeout`, `--default-idle-timeout`, …).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LifecycleRequest {
    /// Seconds until `on_timeout` acts; 0: no timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 2592000)]
    pub timeout_s: Option<u64>,
    /// Seconds of idleness after which `on_timeout` acts; 0: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 2592000)]
    pub idle_timeout_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<OnTimeout>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_resume: Option<bool>,
}

impl LifecycleRequest {
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("timeout_s", self.timeout_s),
            ("idle_timeout_s", self.idle_timeout_s),
        ] {
            if let Some(seconds) = value.filter(|&seconds| seconds > MAX_LIFETIME_S) {
                return Err(format!(
                    "lifecycle.{name} {seconds} is out of range (0..={MAX_LIFETIME_S})"
                ));
            }
        }
        Ok(())
    }

    /// The lifecycle that applies: this request over `defaults`, where 0
    /// turns a default timeout off.
    pub fn over(&self, defaults: &Lifecycle) -> Lifecycle {
        let seconds = |asked: Option<u64>, default: Option<u64>| match asked {
            Some(0) => None,
            Some(seconds) => Some(seconds),
            None => default,
        };
        Lifecycle {
            timeout_s: seconds(self.timeout_s, defaults.timeout_s),
            idle_timeout_s: seconds(self.idle_timeout_s, defaults.idle_timeout_s),
            on_timeout: self.on_timeout.unwrap_or(defaults.on_timeout),
            auto_resume: self.auto_resume.unwrap_or(defaults.auto_resume),
        }
    }
}

/// `POST /v1/sandboxes/{id}/timeout`: the sandbox's lifetime from now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTimeoutRequest {
    /// Seconds from now until `on_timeout` acts.
    #[schema(minimum = 1, maximum = 2592000)]
    pub timeout_s: u64,
}

impl SetTimeoutRequest {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_LIFETIME_S).contains(&self.timeout_s) {
            return Err(format!(
                "timeout_s {} is out of range (1..={MAX_LIFETIME_S})",
                self.timeout_s
            ));
        }
        Ok(())
    }
}

/// Whether `name` may name a snapshot: the shape of an image name.
pub fn validate_snapshot_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid snapshot name"))
    }
}

/// `POST /v1/sandboxes/{id}/snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotRequest {
    /// Unique on the server; letters, digits, `-`, `_`, `.`.
    #[schema(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")]
    pub name: String,
}

/// A sandbox's filesystem as it was at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Snapshot {
    pub name: String,
    /// The sandbox it was taken from (which may be gone since).
    pub sandbox_id: String,
    /// The image its filesystem sits on; a sandbox made from it uses the
    /// same build of that image.
    pub image: String,
    pub disk_mb: u64,
    pub created_at: DateTime<Utc>,
    /// Host bytes it holds now (shared blocks counted in full).
    pub size_bytes: u64,
}

/// `GET /v1/snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SnapshotList {
    pub snapshots: Vec<Snapshot>,
}

/// The path parameter of `/v1/snapshots/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SnapshotPath {
    /// The snapshot's name.
    pub name: String,
}

/// `POST /v1/sandboxes/{id}/fork`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    /// How many copies; 1 when absent.
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 100, default = 1)]
    pub count: u32,
}

fn one() -> u32 {
    1
}

impl Default for ForkRequest {
    fn default() -> Self {
        Self { count: 1 }
    }
}

impl ForkRequest {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_FORKS).contains(&self.count) {
            return Err(format!(
                "count {} is out of range (1..={MAX_FORKS})",
                self.count
            ));
        }
        Ok(())
    }
}

/// One fork's outcome: the new sandbox and its token, or why it failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ForkOutcome {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<CreatedSandbox>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// `POST /v1/sandboxes/{id}/fork`: one outcome per requested copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ForkResult {
    pub forks: Vec<ForkOutcome>,
}

/// `POST /v1/sandboxes/{id}/restore`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// The snapshot to roll the sandbox back to.
    pub snapshot: String,
}

/// What happened to a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Created,
    Paused,
    Resumed,
    Stopped,
    Started,
    Snapshot,
    Forked,
    Restored,
    /// Its container or agent died (`reason` says how).
    Failed,
    Deleted,
    /// Its timeout or idle timeout acts soon (`at` says when).
    Expiring,
}

impl EventKind {
    pub const ALL: [EventKind; 11] = [
        EventKind::Created,
        EventKind::Paused,
        EventKind::Resumed,
        EventKind::Stopped,
        EventKind::Started,
        EventKind::Snapshot,
        EventKind::Forked,
        EventKind::Restored,
        EventKind::Failed,
        EventKind::Deleted,
        EventKind::Expiring,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Paused => "paused",
            EventKind::Resumed => "resumed",
            EventKind::Stopped => "stopped",
            EventKind::Started => "started",
            EventKind::Snapshot => "snapshot",
            EventKind::Forked => "forked",
            EventKind::Restored => "restored",
            EventKind::Failed => "failed",
            EventKind::Deleted => "deleted",
            EventKind::Expiring => "expiring",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// One line of `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// Increases with every event on the server; `since` takes it.
    pub seq: u64,
    pub time: DateTime<Utc>,
    pub sandbox_id: String,
    pub kind: EventKind,
    /// Why: for `deleted`, `stopped`, `paused` and `failed`, e.g.
    /// `timeout`, `idle`, `deleted by <identity>`, `oom`, `agent died`,
    /// `server recovery`, `server recovery failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For `snapshot` and `restored`, the snapshot; for `forked`, the new
    /// sandbox's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For `expiring`: when the timeout acts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
}

/// The largest `seq` there can be (the store numbers events as SQLite
/// integers).
pub const MAX_EVENT_SEQ: u64 = i64::MAX as u64;

/// `GET /v1/events` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only this sandbox's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Only events after this `seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 0, maximum = 9223372036854775807_i64)]
    pub since: Option<u64>,
    /// Keep the stream open and send new events as they happen.
    #[serde(default)]
    pub follow: bool,
}

impl EventsQuery {
    pub fn validate(&self) -> Result<(), String> {
        validate_since(self.since)
    }
}

/// `GET /v1/sandboxes/{id}/events` query: the sandbox is the route's, so
/// a token bound to it may read them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SandboxEventsQuery {
    /// Only events after this `seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 0, maximum = 9223372036854775807_i64)]
    pub since: Option<u64>,
    /// Keep the stream open and send new events as they happen.
    #[serde(default)]
    pub follow: bool,
}

impl SandboxEventsQuery {
    pub fn validate(&self) -> Result<(), String> {
        validate_since(self.since)
    }
}

fn validate_since(since: Option<u64>) -> Result<(), String> {
    match since {
        Some(seq) if seq > MAX_EVENT_SEQ => {
            Err(format!("since {seq} is out of range (0..={MAX_EVENT_SEQ})"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_overrides_the_defaults_and_zero_turns_one_off() {
        let defaults = Lifecycle {
            timeout_s: None,
            idle_timeout_s: Some(3600),
            on_timeout: OnTimeout::Stop,
            auto_resume: true,
        };
        let parsed: LifecycleRequest = serde_json::from_str("{}").expect("empty");
        assert_eq!(parsed.over(&defaults), defaults);
        let asked: LifecycleRequest =
            serde_json::from_str(r#"{"timeout_s":60,"idle_timeout_s":0,"on_timeout":"delete"}"#)
                .expect("well-typed");
        assert_eq!(
            asked.over(&defaults),
            Lifecycle {
                timeout_s: Some(60),
                idle_timeout_s: None,
                on_timeout: OnTimeout::Delete,
                auto_resume: true,
            }
        );
        let too_long: LifecycleRequest =
            serde_json::from_str(r#"{"idle_timeout_s":2592001}"#).expect("well-typed");
        assert!(too_long.validate().is_err());
        assert!(serde_json::from_str::<LifecycleRequest>(r#"{"on_timeout":"explode"}"#).is_err());
    }

    #[test]
    fn fork_counts_and_snapshot_names_are_checked() {
        let parsed: ForkRequest = serde_json::from_str("{}").expect("empty");
        assert_eq!(parsed.count, 1);
        assert!(ForkRequest { count: 0 }.validate().is_err());
        assert!(ForkRequest { count: 101 }.validate().is_err());
        assert!(validate_snapshot_name("base-1.2").is_ok());
        for bad in ["", ".hidden", "a/b", "../x", &"x".repeat(129)] {
            assert!(validate_snapshot_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn event_kinds_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_string(&kind).expect("json");
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
    }
}

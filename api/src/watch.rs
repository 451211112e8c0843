//! File watch: `GET /v1/sandboxes/{id}/watch?path=…&recursive=…`, an
//! NDJSON stream of [`WatchEvent`]s from inotify inside the sandbox,
//! forwarded from the agent's `GET /watch`.

use serde::{Deserialize, Serialize};

/// Events a watch holds for a slow reader; past this, events are dropped
/// and one [`WatchEventKind::Overflow`] says so.
pub const WATCH_QUEUE_EVENTS: usize = 16 * 1024;

/// Query of `GET /watch`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WatchQuery {
    /// An absolute directory inside the sandbox.
    pub path: String,
    /// Watch the directories under `path` too, including those created
    /// while the watch runs.
    #[serde(default)]
    pub recursive: bool,
}

impl WatchQuery {
    pub fn validate(&self) -> Result<(), String> {
        crate::validate_path(&self.path)
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WatchEventKind {
    Create,
    /// Written, truncated, or its metadata (mode, owner, times) changed.
    Modify,
    Delete,
    /// Renamed: `from` → `path` when both are inside the watch. A rename
    /// out of the watch is a `delete`, one into it a `create`.
    Move,
    /// Events were dropped (the queue was full, or the kernel's was): what
    /// changed since is unknown, so a reader should rescan.
    Overflow,
}

/// One line of a watch. The stream's head is sent once every directory is
/// watched: anything that happens after the head arrives is reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub kind: WatchEventKind,
    /// The absolute path inside the sandbox; empty for an overflow.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// A move's source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default)]
    pub is_dir: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_as_the_stream_sends_them() {
        let event = WatchEvent {
            kind: WatchEventKind::Move,
            path: "/workspace/b".into(),
            from: Some("/workspace/a".into()),
            is_dir: false,
        };
        assert_eq!(
            serde_json::to_string(&event).expect("json"),
            r#"{"type":"move","path":"/workspace/b","from":"/workspace/a","is_dir":false}"#
        );
        let overflow: WatchEvent = serde_json::from_str(r#"{"type":"overflow"}"#).expect("parses");
        assert_eq!(overflow.kind, WatchEventKind::Overflow);
    }
}

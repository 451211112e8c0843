//! The lifecycle tools: stop, start, pause, resume and extend a sandbox;
//! snapshot, fork and restore it; list and delete snapshots.
//!
//! Each is one REST call. Forks' own tokens stay out of the model's
//! context, as `create_sandbox`'s does: the caller's token reaches them.

use super::{describe_sandbox, sandbox_path, Answer, SandboxArgs, ToolError, MAX_JSON_BYTES};
use crate::mcp::rest::Rest;
use crate::mcp::text;
use axum::http::Method;
use sbx_api::{
    CreateSnapshotRequest, ErrorBody, ForkRequest, ForkResult, OnTimeout, RestoreRequest, Sandbox,
    SetTimeoutRequest, Snapshot, SnapshotList,
};
use schemars::JsonSchema;
use serde::Deserialize;
use std::fmt::Write as _;

/// `on_timeout` as a model sees it.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeoutArg {
    /// Delete the sandbox and its files.
    Delete,
    /// Stop it: processes end, files stay; start_sandbox boots it again.
    Stop,
    /// Pause it: processes are frozen in memory; resume_sandbox thaws them.
    Pause,
}

impl From<OnTimeoutArg> for OnTimeout {
    fn from(arg: OnTimeoutArg) -> Self {
        match arg {
            OnTimeoutArg::Delete => OnTimeout::Delete,
            OnTimeoutArg::Stop => OnTimeout::Stop,
            OnTimeoutArg::Pause => OnTimeout::Pause,
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendSandboxArgs {
    /// The sandbox's id, as create_sandbox returned it.
    sandbox_id: String,
    /// Seconds from now until the sandbox's timeout acts (1 to 2592000, i.e. 30 days).
    #[schemars(range(min = 1, max = 2592000))]
    timeout_s: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSandboxArgs {
    /// The sandbox's id, as create_sandbox returned it.
    sandbox_id: String,
    /// A name for the snapshot, unique on the server: letters, digits, '-', '_', '.', e.g. "tests-green".
    name: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListSnapshotsArgs {}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotArgs {
    /// The snapshot's name, as snapshot_sandbox took it.
    name: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkSandboxArgs {
    /// The sandbox's id, as create_sandbox returned it.
    sandbox_id: String,
    /// How many copies to make (default 1, at most 100).
    #[serde(default)]
    #[schemars(range(min = 1, max = 100))]
    count: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreSandboxArgs {
    /// The sandbox's id, as create_sandbox returned it.
    sandbox_id: String,
    /// The snapshot to roll back to, as snapshot_sandbox named it.
    snapshot: String,
}

/// A snapshot name as it may appear in a path.
fn snapshot_path(name: &str) -> Result<String, ToolError> {
    sbx_api::validate_snapshot_name(name)
        .map(|()| format!("/v1/snapshots/{name}"))
        .map_err(|_| {
            ToolError::Invalid(format!(
                "{:?} is not a snapshot name (letters, digits, '-', '_', '.')",
                text::printable(name)
            ))
        })
}

fn describe_snapshot(snapshot: &Snapshot) -> String {
    format!(
        "{}  from sandbox {}  image {}  {} MiB on disk  created {}",
        snapshot.name,
        snapshot.sandbox_id,
        snapshot.image,
        snapshot.size_bytes.div_ceil(1 << 20),
        snapshot
            .created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// `stop_sandbox`, `start_sandbox`, `pause_sandbox`, `resume_sandbox`:
/// `POST /v1/sandboxes/{id}/{verb}`, answered by the sandbox as it is now.
pub async fn change(rest: &Rest, tool: &str, args: SandboxArgs) -> Result<Answer, ToolError> {
    let (verb, done, next) = match tool {
        "stop_sandbox" => (
            "stop",
            "stopped",
            "its processes ended and its files are kept; start_sandbox boots it again",
        ),
        "start_sandbox" => (
            "start",
            "started",
            "it runs again on the files it had; background processes must be started again",
        ),
        "pause_sandbox" => (
            "pause",
            "paused",
            "its processes are frozen in memory; resume_sandbox thaws them",
        ),
        "resume_sandbox" => (
            "resume",
            "resumed",
            "its processes run on from where they were",
        ),
        other => {
            return Err(ToolError::Internal(format!(
                "{other} is not a state change"
            )))
        }
    };
    let uri = format!("{}/{verb}", sandbox_path(&args.sandbox_id)?);
    let sandbox: Sandbox = rest
        .json(Method::POST, &uri, None::<&()>, MAX_JSON_BYTES)
        .await?;
    let text = format!(
        "{done} sandbox {}: {next}\n{}",
        sandbox.id,
        describe_sandbox(&sandbox)
    );
    Ok(Answer::text(text).with(&sandbox))
}

pub async fn extend(rest: &Rest, args: ExtendSandboxArgs) -> Result<Answer, ToolError> {
    let request = SetTimeoutRequest {
        timeout_s: args.timeout_s,
    };
    request.validate().map_err(ToolError::Invalid)?;
    let uri = format!("{}/timeout", sandbox_path(&args.sandbox_id)?);
    let sandbox: Sandbox = rest
        .json(Method::POST, &uri, Some(&request), MAX_JSON_BYTES)
        .await?;
    let when = sandbox.expires_at.map_or_else(
        || "never".to_owned(),
        |at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    let text = format!(
        "sandbox {}'s timeout now acts at {when} ({} s from now): it will {}",
        sandbox.id,
        args.timeout_s,
        sandbox.lifecycle.on_timeout.as_str()
    );
    Ok(Answer::text(text).with(&sandbox))
}

pub async fn snapshot(rest: &Rest, args: SnapshotSandboxArgs) -> Result<Answer, ToolError> {
    sbx_api::validate_snapshot_name(&args.name).map_err(ToolError::Invalid)?;
    let request = CreateSnapshotRequest { name: args.name };
    let uri = format!("{}/snapshots", sandbox_path(&args.sandbox_id)?);
    let snapshot: Snapshot = rest
        .json(Method::POST, &uri, Some(&request), MAX_JSON_BYTES)
        .await?;
    let text = format!(
        "took snapshot {name} of sandbox {id}\n{line}\nrestore_sandbox rolls a sandbox back to \
         it; create_sandbox with snapshot \"{name}\" starts a new sandbox from it",
        name = snapshot.name,
        id = snapshot.sandbox_id,
        line = describe_snapshot(&snapshot)
    );
    Ok(Answer::text(text).with(&snapshot))
}

pub async fn list_snapshots(rest: &Rest) -> Result<Answer, ToolError> {
    let list: SnapshotList = rest
        .json(Method::GET, "/v1/snapshots", None::<&()>, MAX_JSON_BYTES)
        .await?;
    let text = if list.snapshots.is_empty() {
        "no snapshots".to_owned()
    } else {
        list.snapshots
            .iter()
            .map(describe_snapshot)
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok(Answer::text(text).with(&list))
}

pub async fn delete_snapshot(rest: &Rest, args: SnapshotArgs) -> Result<Answer, ToolError> {
    let uri = snapshot_path(&args.name)?;
    rest.call(Method::DELETE, &uri, None, false).await?;
    Ok(Answer::text(format!("deleted snapshot {}", args.name)))
}

pub async fn fork(rest: &Rest, args: ForkSandboxArgs) -> Result<Answer, ToolError> {
    let request = ForkRequest {
        count: args.count.unwrap_or(1),
    };
    request.validate().map_err(ToolError::Invalid)?;
    let uri = format!("{}/fork", sandbox_path(&args.sandbox_id)?);
    let result: ForkResult = rest
        .json(Method::POST, &uri, Some(&request), MAX_JSON_BYTES)
        .await?;
    let (forks, errors) = forks(result);
    if forks.is_empty() {
        let first = errors.into_iter().next().unwrap_or_else(|| {
            ErrorBody::new(sbx_api::ErrorCode::Internal, "the fork made no sandbox")
        });
        return Err(ToolError::Api(first));
    }
    let mut text = format!(
        "forked sandbox {} into {} new sandbox{}, each with a copy of its files as they were:",
        args.sandbox_id,
        forks.len(),
        if forks.len() == 1 { "" } else { "es" }
    );
    for sandbox in &forks {
        let _ = write!(text, "\n{}", describe_sandbox(sandbox));
    }
    for error in &errors {
        let _ = write!(text, "\na copy failed: {error}");
    }
    text.push_str("\nPass each sandbox_id to the other tools; each runs on its own.");
    let structured = serde_json::json!({ "sandboxes": forks, "errors": errors });
    Ok(Answer::text(text).with(structured))
}

/// The new sandboxes and the errors of the copies that failed; the forks'
/// tokens are dropped (see the module docs).
fn forks(result: ForkResult) -> (Vec<Sandbox>, Vec<ErrorBody>) {
    let mut forks = Vec::new();
    let mut errors = Vec::new();
    for outcome in result.forks {
        match (outcome.sandbox, outcome.error) {
            (Some(created), _) => forks.push(created.sandbox),
            (None, Some(error)) => errors.push(error),
            (None, None) => errors.push(ErrorBody::new(
                sbx_api::ErrorCode::Internal,
                "a copy failed without an error",
            )),
        }
    }
    (forks, errors)
}

pub async fn restore(rest: &Rest, args: RestoreSandboxArgs) -> Result<Answer, ToolError> {
    sbx_api::validate_snapshot_name(&args.snapshot).map_err(ToolError::Invalid)?;
    let request = RestoreRequest {
        snapshot: args.snapshot,
    };
    let uri = format!("{}/restore", sandbox_path(&args.sandbox_id)?);
    let sandbox: Sandbox = rest
        .json(Method::POST, &uri, Some(&request), MAX_JSON_BYTES)
        .await?;
    let text = format!(
        "restored sandbox {} to snapshot {}: its files are the snapshot's, and it was \
         restarted (background processes must be started again)\n{}",
        sandbox.id,
        request.snapshot,
        describe_sandbox(&sandbox)
    );
    Ok(Answer::text(text).with(&sandbox))
}

#[cfg(test)]
mod tests {
    use super::super::{find, parse, CreateSandboxArgs, TOOLS};
    use super::*;
    use rmcp::model::JsonObject;
    use sbx_api::{CreatedSandbox, ErrorCode, ForkOutcome};

    fn arguments(json: serde_json::Value) -> JsonObject {
        match json {
            serde_json::Value::Object(map) => map,
            _ => unreachable!("an object"),
        }
    }

    #[test]
    fn every_route_a_tool_calls_is_in_the_api() {
        let spec = serde_json::to_value(crate::http::openapi()).expect("the spec serializes");
        for tool in TOOLS {
            for (method, route) in tool.routes {
                let method = method.as_str().to_ascii_lowercase();
                assert!(
                    spec["paths"][route][&method].is_object(),
                    "{}: {method} {route} is not an API operation",
                    tool.name
                );
            }
        }
    }

    #[test]
    fn lifecycle_tools_go_to_tokens_with_the_lifecycle_scope() {
        use crate::tokens::Principal;
        use sbx_api::Scope;
        let token = |scopes: &[Scope], sandbox: Option<&str>| Principal {
            name: "t".into(),
            token_id: Some("0123456789abcdef".into()),
            scopes: scopes.iter().copied().collect(),
            sandbox: sandbox.map(str::to_owned),
            expires_at: None,
        };
        let visible = |principal: &Principal| -> Vec<&str> {
            crate::mcp::scope::visible(principal)
                .map(|tool| tool.name)
                .collect()
        };
        let on_one = [
            "stop_sandbox",
            "start_sandbox",
            "pause_sandbox",
            "resume_sandbox",
            "extend_sandbox",
            "snapshot_sandbox",
            "restore_sandbox",
        ];
        assert_eq!(visible(&token(&[Scope::SandboxesLifecycle], None)), on_one);
        // Bound to a sandbox, a lifecycle token still acts on its own one.
        assert_eq!(
            visible(&token(&[Scope::SandboxesLifecycle], Some("aaaa"))),
            on_one
        );
        let deleter = token(&[Scope::SandboxesDelete], None);
        assert_eq!(visible(&deleter), ["delete_sandbox", "delete_snapshot"]);
    }

    #[test]
    fn arguments_take_their_defaults_and_refuse_unknown_fields() {
        let fork = find("fork_sandbox").expect("fork_sandbox");
        let args: ForkSandboxArgs = parse(
            fork,
            None,
            arguments(serde_json::json!({"sandbox_id": "aa"})),
        )
        .expect("parses");
        assert_eq!(args.count, None);
        let bound: ForkSandboxArgs =
            parse(fork, Some("bb"), arguments(serde_json::json!({"count": 3}))).expect("parses");
        assert_eq!((bound.sandbox_id.as_str(), bound.count), ("bb", Some(3)));
        let extend = find("extend_sandbox").expect("extend_sandbox");
        assert!(parse::<ExtendSandboxArgs>(
            extend,
            None,
            arguments(serde_json::json!({"sandbox_id": "aa"}))
        )
        .is_err());
        let create = find("create_sandbox").expect("create_sandbox");
        let args: CreateSandboxArgs = parse(
            create,
            None,
            arguments(serde_json::json!({
                "timeout_s": 600, "on_timeout": "pause", "auto_resume": false, "snapshot": "base-1"
            })),
        )
        .expect("parses");
        assert!(matches!(args.on_timeout, Some(OnTimeoutArg::Pause)));
        assert_eq!(args.snapshot.as_deref(), Some("base-1"));
        assert!(parse::<CreateSandboxArgs>(
            create,
            None,
            arguments(serde_json::json!({"on_timeout": "explode"}))
        )
        .is_err());
    }

    #[test]
    fn snapshot_names_cannot_reach_other_routes() {
        assert_eq!(
            snapshot_path("tests-green.1").expect("valid"),
            "/v1/snapshots/tests-green.1"
        );
        for bad in ["", "..", "../tokens", "a/b", "a?b", "a b"] {
            assert!(
                matches!(snapshot_path(bad), Err(ToolError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn forks_drop_their_tokens_and_keep_their_errors() {
        let sandbox: Sandbox = serde_json::from_value(serde_json::json!({
            "id": "0123456789abcdef", "state": "running", "image": "base",
            "created_at": "2026-01-01T00:00:00Z", "memory_mb": 512, "cpus": 1.0,
            "network": {"egress": []}, "lifecycle": {"on_timeout": "stop", "auto_resume": true}
        }))
        .expect("a sandbox");
        let result = ForkResult {
            forks: vec![
                ForkOutcome {
                    sandbox: Some(CreatedSandbox {
                        sandbox: sandbox.clone(),
                        token: "sbx_secret".into(),
                    }),
                    error: None,
                },
                ForkOutcome {
                    sandbox: None,
                    error: Some(ErrorBody::new(ErrorCode::Unavailable, "disk full")),
                },
            ],
        };
        let (made, failed) = forks(result);
        assert_eq!(made, [sandbox]);
        assert_eq!(failed.len(), 1);
        assert!(!serde_json::to_string(&made)
            .expect("json")
            .contains("sbx_secret"));
    }
}

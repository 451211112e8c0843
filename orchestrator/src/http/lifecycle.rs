//! The lifecycle routes: stop, start, pause, resume and timeout of a
//! sandbox; snapshots, fork and restore; and the event stream.
//!
//! Each change runs [`detached`] (the manager's own work is detached too):
//! a client that leaves mid-stop leaves a stopped sandbox.

use super::audit_trail::Call;
use super::detached::detached;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::AppState;
use crate::sandbox::{Manager, SandboxError};
use crate::tokens::Principal;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::StreamExt;
use sbx_api::{
    CreateSnapshotRequest, CreatedSandbox, EventsQuery, ForkOutcome, ForkRequest, ForkResult,
    RestoreRequest, Sandbox, SandboxEventsQuery, SandboxPath, SetTimeoutRequest, Snapshot,
    SnapshotList, SnapshotPath, NDJSON,
};
use std::future::Future;
use std::sync::Arc;

/// Runs `change` on the manager detached from the client, for `call`.
async fn change<T, F, Fut>(state: &AppState, call: Call, change: F) -> Result<T, ApiError>
where
    F: FnOnce(Arc<Manager>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, SandboxError>> + Send + 'static,
    T: Send + 'static,
{
    let manager = Arc::clone(&state.manager);
    detached(&state.detached, call, |_| async move {
        Ok(change(manager).await?)
    })
    .await
}

/// Stop a sandbox.
///
/// Ends every process and frees its memory and cgroup; its disk (all it
/// wrote, installed or configured), id, token, limits, policy and labels
/// stay. `start` boots it again.
#[utoipa::path(post, path = "/sandboxes/{id}/stop", tag = "lifecycle", operation_id = "stop_sandbox",
    params(SandboxPath), responses((status = 200, body = Sandbox)))]
pub async fn stop(
    State(state): State<AppState>,
    Extension(caller): Extension<Arc<Principal>>,
    call: Call,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Sandbox>, ApiError> {
    let reason = format!("stopped by {}", caller.name);
    let stopped = change(&state, call, move |manager| async move {
        manager.stop(&id, reason).await
    });
    Ok(Json(stopped.await?))
}

/// Start a stopped sandbox.
///
/// Boots it again on its disk, with the same id, token, limits, policy and
/// labels.
#[utoipa::path(post, path = "/sandboxes/{id}/start", tag = "lifecycle", operation_id = "start_sandbox",
    params(SandboxPath), responses((status = 200, body = Sandbox)))]
pub async fn start(
    State(state): State<AppState>,
    call: Call,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Sandbox>, ApiError> {
    let started = change(&state, call, move |manager| async move {
        manager.start_stopped(&id).await
    });
    Ok(Json(started.await?))
}

/// Pause a sandbox.
///
/// Freezes every process; memory stays. Calls that need its agent get 409,
/// or resume it with `lifecycle.auto_resume`.
#[utoipa::path(post, path = "/sandboxes/{id}/pause", tag = "lifecycle", operation_id = "pause_sandbox",
    params(SandboxPath), responses((status = 200, body = Sandbox)))]
pub async fn pause(
    State(state): State<AppState>,
    Extension(caller): Extension<Arc<Principal>>,
    call: Call,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Sandbox>, ApiError> {
    let reason = format!("paused by {}", caller.name);
    let paused = change(&state, call, move |manager| async move {
        manager.pause(&id, reason).await
    });
    Ok(Json(paused.await?))
}

/// Resume a paused sandbox.
#[utoipa::path(post, path = "/sandboxes/{id}/resume", tag = "lifecycle", operation_id = "resume_sandbox",
    params(SandboxPath), responses((status = 200, body = Sandbox)))]
pub async fn resume(
    State(state): State<AppState>,
    call: Call,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Sandbox>, ApiError> {
    let resumed = change(&state, call, move |manager| async move {
        manager.resume(&id).await
    });
    Ok(Json(resumed.await?))
}

/// Set a sandbox's timeout.
///
/// `lifecycle.on_timeout` acts `timeout_s` from now: extends or shortens
/// its life.
#[utoipa::path(post, path = "/sandboxes/{id}/timeout", tag = "lifecycle", operation_id = "set_sandbox_timeout",
    params(SandboxPath), request_body = SetTimeoutRequest,
    responses((status = 200, body = Sandbox)))]
pub async fn set_timeout(
    State(state): State<AppState>,
    call: Call,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<SetTimeoutRequest>,
) -> Result<Json<Sandbox>, ApiError> {
    request.validate().map_err(ApiError::invalid)?;
    call.summary(format!("timeout_s {}", request.timeout_s));
    let manager = Arc::clone(&state.manager);
    Ok(Json(manager.set_timeout(&id, request.timeout_s).await?))
}

/// Snapshot a sandbox's filesystem.
///
/// Consistent while it runs: its processes are frozen for the instant of
/// the copy, a reflink on the btrfs pool (`GET /v1/info` says which).
#[utoipa::path(post, path = "/sandboxes/{id}/snapshots", tag = "snapshots", operation_id = "create_snapshot",
    params(SandboxPath), request_body = CreateSnapshotRequest,
    responses((status = 201, body = Snapshot)))]
pub async fn snapshot(
    State(state): State<AppState>,
    call: Call,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<CreateSnapshotRequest>,
) -> Result<(StatusCode, Json<Snapshot>), ApiError> {
    call.summary(&request.name);
    let taken = change(&state, call, move |manager| async move {
        manager.snapshot(&id, &request.name).await
    });
    Ok((StatusCode::CREATED, Json(taken.await?)))
}

/// List snapshots.
#[utoipa::path(get, path = "/snapshots", tag = "snapshots", operation_id = "list_snapshots",
    responses((status = 200, body = SnapshotList)))]
pub async fn list_snapshots(State(state): State<AppState>) -> Result<Json<SnapshotList>, ApiError> {
    let snapshots = state.manager.snapshots().await?;
    Ok(Json(SnapshotList { snapshots }))
}

/// Get a snapshot.
#[utoipa::path(get, path = "/snapshots/{name}", tag = "snapshots", operation_id = "get_snapshot",
    params(SnapshotPath), responses((status = 200, body = Snapshot)))]
pub async fn get_snapshot(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Snapshot>, ApiError> {
    Ok(Json(state.manager.get_snapshot(&name).await?))
}

/// Delete a snapshot.
///
/// Sandboxes made from it keep their own copies.
#[utoipa::path(delete, path = "/snapshots/{name}", tag = "snapshots", operation_id = "delete_snapshot",
    params(SnapshotPath), responses((status = 204, description = "Deleted")))]
pub async fn delete_snapshot(
    State(state): State<AppState>,
    call: Call,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    change(&state, call, move |manager| async move {
        manager.delete_snapshot(&name).await
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Fork a sandbox.
///
/// `count` new running sandboxes, each with a copy of this one's
/// filesystem as it is now, and its image, limits, policy and labels; each
/// with its own id and token. This one keeps running. Each fork's outcome
/// is reported on its own.
#[utoipa::path(post, path = "/sandboxes/{id}/fork", tag = "snapshots", operation_id = "fork_sandbox",
    params(SandboxPath), request_body = ForkRequest,
    responses((status = 200, body = ForkResult)))]
pub async fn fork(
    State(state): State<AppState>,
    Extension(caller): Extension<Arc<Principal>>,
    call: Call,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<ForkRequest>,
) -> Result<Json<ForkResult>, ApiError> {
    request.validate().map_err(ApiError::invalid)?;
    call.summary(format!("count {}", request.count));
    let task_state = state.clone();
    let forks = detached(&state.detached, call, |_| async move {
        let outcomes = task_state.manager.fork(&id, request.count).await?;
        let mut forks = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            forks.push(with_token(&task_state, &caller, outcome).await);
        }
        Ok(forks)
    })
    .await?;
    Ok(Json(ForkResult { forks }))
}

/// One fork's outcome, with a token for the new sandbox; a fork whose
/// token cannot be minted is deleted again.
async fn with_token(
    state: &AppState,
    caller: &Principal,
    outcome: Result<Sandbox, SandboxError>,
) -> ForkOutcome {
    let minted = match outcome {
        Ok(sandbox) => match state.tokens.mint_for_sandbox(caller, &sandbox.id) {
            Ok(token) => Ok(CreatedSandbox { sandbox, token }),
            Err(err) => {
                let reason = crate::sandbox::EndReason::Client(caller.name.clone());
                if let Err(cleanup) = state.manager.delete(&sandbox.id, reason).await {
                    tracing::error!(id = %sandbox.id, error = %cleanup, "cannot delete a fork without a token");
                }
                Err(ApiError::from(err))
            }
        },
        Err(err) => Err(ApiError::from(err)),
    };
    match minted {
        Ok(sandbox) => ForkOutcome {
            sandbox: Some(sandbox),
            error: None,
        },
        Err(err) => ForkOutcome {
            sandbox: None,
            error: Some(err.body()),
        },
    }
}

/// Restore a sandbox from a snapshot.
///
/// Rolls it back in place: the same id and token, its processes restarted
/// on the snapshot's filesystem. A stopped sandbox stays stopped.
#[utoipa::path(post, path = "/sandboxes/{id}/restore", tag = "snapshots", operation_id = "restore_sandbox",
    params(SandboxPath), request_body = RestoreRequest,
    responses((status = 200, body = Sandbox)))]
pub async fn restore(
    State(state): State<AppState>,
    call: Call,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<RestoreRequest>,
) -> Result<Json<Sandbox>, ApiError> {
    call.summary(&request.snapshot);
    let restored = change(&state, call, move |manager| async move {
        manager.restore(&id, &request.snapshot).await
    });
    Ok(Json(restored.await?))
}

/// Stream lifecycle events.
///
/// NDJSON, one event per line, oldest first: created, paused, resumed,
/// stopped, started, snapshot, forked, restored, failed, deleted (with
/// why), and `expiring` before a timeout acts. With `follow`, the stream
/// stays open for new events.
#[utoipa::path(get, path = "/events", tag = "lifecycle", operation_id = "list_events",
    params(EventsQuery),
    responses((status = 200, description = "One Event per line",
        content((sbx_api::Event = "application/x-ndjson")))))]
pub async fn events(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    query.validate().map_err(ApiError::invalid)?;
    Ok(ndjson_events(
        &state,
        query.sandbox,
        query.since,
        query.follow,
    ))
}

/// Stream one sandbox's lifecycle events.
///
/// As `GET /v1/events?sandbox={id}`, but under the sandbox's route, so a
/// token bound to the sandbox may read them (a coding agent inside can see
/// its `expiring` warning). The events of a sandbox that is gone are still
/// answered, for as long as they are kept.
#[utoipa::path(get, path = "/sandboxes/{id}/events", tag = "lifecycle",
    operation_id = "list_sandbox_events",
    params(SandboxPath, SandboxEventsQuery),
    responses((status = 200, description = "One Event per line",
        content((sbx_api::Event = "application/x-ndjson")))))]
pub async fn sandbox_events(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<SandboxEventsQuery>,
) -> Result<Response, ApiError> {
    query.validate().map_err(ApiError::invalid)?;
    Ok(ndjson_events(&state, Some(id), query.since, query.follow))
}

fn ndjson_events(
    state: &AppState,
    sandbox: Option<String>,
    since: Option<u64>,
    follow: bool,
) -> Response {
    let stream = state
        .manager
        .events(sandbox, since.unwrap_or(0), follow)
        .map(|event| {
            let mut line = serde_json::to_vec(&event?).map_err(std::io::Error::other)?;
            line.push(b'\n');
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(line)
        });
    ([(CONTENT_TYPE, NDJSON)], Body::from_stream(stream)).into_response()
}

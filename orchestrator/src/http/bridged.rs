//! Routes served inside the sandbox by its agent: processes, files and
//! archives are forwarded as they are (see [`crate::bridge`]); exec is
//! validated here first, so a bad request never reaches the sandbox.
//!
//! Each handler also leaves the audit trail a summary (see
//! [`super::audit`]): the command of an exec or a new process, the path of
//! a file call, the pid of a process call. Small JSON bodies (start a
//! process, mkdir, move, signal) are read here to summarise them and then
//! forwarded byte for byte; uploads keep streaming and are never read.

use super::audit::{noted, AuditNote, Summary};
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::AppState;
use crate::bridge;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use sbx_api::{ExecRequest, MkdirRequest, MoveRequest, SignalRequest, StartProcessRequest};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::HashMap;

#[derive(Debug, Deserialize)]
pub struct SandboxParams {
    id: String,
    /// Set on the `/processes/{pid}…` routes.
    pid: Option<String>,
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/sandboxes/{id}/exec", post(exec))
        .route(
            "/sandboxes/{id}/processes",
            get(forward).post(forward_json::<StartProcessRequest>),
        )
        .route("/sandboxes/{id}/processes/kill-all", post(forward))
        .route("/sandboxes/{id}/processes/{pid}", get(forward))
        .route("/sandboxes/{id}/processes/{pid}/logs", get(forward))
        .route("/sandboxes/{id}/processes/{pid}/stdin", post(forward))
        .route(
            "/sandboxes/{id}/processes/{pid}/signal",
            post(forward_json::<SignalRequest>),
        )
        .route("/sandboxes/{id}/processes/{pid}/wait", get(forward))
        .route(
            "/sandboxes/{id}/files",
            get(forward).put(forward).delete(forward),
        )
        .route("/sandboxes/{id}/files/stat", get(forward))
        .route("/sandboxes/{id}/files/list", get(forward))
        .route(
            "/sandboxes/{id}/files/mkdir",
            post(forward_json::<MkdirRequest>),
        )
        .route(
            "/sandboxes/{id}/files/move",
            post(forward_json::<MoveRequest>),
        )
        .route("/sandboxes/{id}/archive", get(forward).put(forward))
}

async fn exec(
    State(state): State<AppState>,
    ApiPath(SandboxParams { id, .. }): ApiPath<SandboxParams>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<ExecRequest>,
) -> Response {
    let note = AuditNote::new(request.summary());
    note.attach(forward_exec(&state, &id, &headers, request).await)
}

async fn forward_exec(
    state: &AppState,
    id: &str,
    headers: &HeaderMap,
    request: ExecRequest,
) -> Result<Response, ApiError> {
    request.validate().map_err(ApiError::invalid)?;
    let body = serde_json::to_vec(&request).map_err(|err| ApiError::invalid(err.to_string()))?;
    let mut forwarded = HeaderMap::new();
    forwarded.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if let Some(accept) = headers.get(header::ACCEPT) {
        forwarded.insert(header::ACCEPT, accept.clone());
    }
    let response = bridge::forward(
        &state.manager,
        id,
        Method::POST,
        "/exec",
        &forwarded,
        Body::from(body),
    )
    .await?;
    Ok(response)
}

/// What a forwarded call is about: the `path` of a file or archive call,
/// or the pid of a process call.
fn forwarded_note(parts: &Parts, pid: Option<&str>) -> Option<AuditNote> {
    if let Some(pid) = pid {
        return Some(AuditNote::new(format!("pid {pid}")));
    }
    let query = Query::<HashMap<String, String>>::try_from_uri(&parts.uri).ok()?;
    query.0.get("path").map(AuditNote::new)
}

/// Forwards `/v1/sandboxes/{id}/REST?QUERY` to the agent's `/REST?QUERY`,
/// streaming the body.
async fn forward(
    State(state): State<AppState>,
    ApiPath(SandboxParams { id, pid }): ApiPath<SandboxParams>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let note = forwarded_note(&parts, pid.as_deref());
    noted(note, forward_parts(&state, &id, parts, body).await)
}

/// Like [`forward`], for routes whose small JSON body says what the call
/// does: the body is read (within the default body limit), summarised if
/// it parses (the agent judges it either way), and forwarded unchanged.
async fn forward_json<T: DeserializeOwned + Summary>(
    State(state): State<AppState>,
    ApiPath(SandboxParams { id, pid }): ApiPath<SandboxParams>,
    parts: Parts,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return ApiError::from(rejection).into_response(),
    };
    let parsed = serde_json::from_slice::<T>(&body).ok();
    let summary: Vec<String> = [
        pid.map(|pid| format!("pid {pid}")),
        parsed.map(|request| request.summary()),
    ]
    .into_iter()
    .flatten()
    .collect();
    let note = (!summary.is_empty()).then(|| AuditNote::new(summary.join(" ")));
    noted(
        note,
        forward_parts(&state, &id, parts, Body::from(body)).await,
    )
}

async fn forward_parts(
    state: &AppState,
    id: &str,
    parts: Parts,
    body: Body,
) -> Result<Response, ApiError> {
    // Routes are nested under /v1, so the path here starts at /sandboxes.
    let prefix = format!("/sandboxes/{id}");
    let rest = parts
        .uri
        .path()
        .strip_prefix(&prefix)
        .ok_or_else(|| ApiError::invalid("unexpected route"))?;
    let agent_path = match parts.uri.query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_owned(),
    };
    let response = bridge::forward(
        &state.manager,
        id,
        parts.method,
        &agent_path,
        &parts.headers,
        body,
    )
    .await?;
    Ok(response)
}

//! Routes served inside the sandbox by its agent: processes, files and
//! archives are forwarded as they are (see [`crate::bridge`]); exec is
//! validated here first, so a bad request never reaches the sandbox.
//!
//! Each handler also leaves the audit trail a summary (see
//! [`super::audit`]), before it forwards anything, so that a call whose
//! client leaves half-way is recorded with it: the command of an exec or a
//! new process, the path of a file call, the pid of a process call. Small
//! JSON bodies (start a process, mkdir, move, signal) are read here to
//! summarise them and then forwarded byte for byte; uploads keep streaming
//! and are never read.
//!
//! The agent's error bodies are the API's own ([`ErrorBody`]); the call's
//! request id is added to them on the way out, as to every error body.

use super::audit_trail::{Call, Summary};
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::request_id::RequestId;
use super::AppState;
use crate::bridge;
use crate::metrics::Transfer;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use sbx_api::{
    ErrorBody, ExecRequest, MkdirRequest, MoveRequest, SignalRequest, StartProcessRequest,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Instant;

/// Largest agent error body given the request id; a larger one (which the
/// agent never sends) is passed on as it is.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

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
    call: Call,
    ApiPath(SandboxParams { id, .. }): ApiPath<SandboxParams>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<ExecRequest>,
) -> Result<Response, ApiError> {
    call.summary(request.summary());
    forward_exec(&state, &id, &headers, request).await
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
    let started = Instant::now();
    let response = bridge::forward(
        &state.manager,
        id,
        Method::POST,
        "/exec",
        &forwarded,
        Body::from(body),
    )
    .await?;
    state.metrics.exec_answered(&response, started.elapsed());
    Ok(with_request_id(response).await)
}

/// What a forwarded call is about: the `path` of a file or archive call,
/// or the pid of a process call.
fn forwarded_summary(parts: &Parts, pid: Option<&str>) -> Option<String> {
    if let Some(pid) = pid {
        return Some(format!("pid {pid}"));
    }
    let query = Query::<HashMap<String, String>>::try_from_uri(&parts.uri).ok()?;
    query.0.get("path").cloned()
}

/// Forwards `/v1/sandboxes/{id}/REST?QUERY` to the agent's `/REST?QUERY`,
/// streaming the body.
async fn forward(
    State(state): State<AppState>,
    call: Call,
    ApiPath(SandboxParams { id, pid }): ApiPath<SandboxParams>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    if let Some(summary) = forwarded_summary(&parts, pid.as_deref()) {
        call.summary(summary);
    }
    forward_parts(&state, &id, parts, body).await
}

/// Like [`forward`], for routes whose small JSON body says what the call
/// does: the body is read (within the default body limit), summarised if
/// it parses (the agent judges it either way), and forwarded unchanged.
async fn forward_json<T: DeserializeOwned + Summary>(
    State(state): State<AppState>,
    call: Call,
    ApiPath(SandboxParams { id, pid }): ApiPath<SandboxParams>,
    parts: Parts,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let parsed = serde_json::from_slice::<T>(&body).ok();
    let summary: Vec<String> = [
        pid.map(|pid| format!("pid {pid}")),
        parsed.map(|request| request.summary()),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !summary.is_empty() {
        call.summary(summary.join(" "));
    }
    forward_parts(&state, &id, parts, Body::from(body)).await
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
    let counted = state
        .metrics
        .file_bytes(Transfer::of(&parts.method, &agent_path));
    let response = bridge::forward(
        &state.manager,
        id,
        parts.method,
        &agent_path,
        &parts.headers,
        counted.request(body),
    )
    .await?;
    Ok(with_request_id(counted.response(response)).await)
}

/// The agent's response, with the call's request id added to its error
/// body if it has one.
async fn with_request_id(response: Response) -> Response {
    let status = response.status();
    let small = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|length| length <= MAX_ERROR_BODY_BYTES);
    let id = match RequestId::current() {
        Some(id) if small && (status.is_client_error() || status.is_server_error()) => id,
        _ => return response,
    };
    let (mut parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_ERROR_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(err) => {
            return ApiError::internal(format!("cannot read an agent's error body: {err}"))
                .into_response()
        }
    };
    let Ok(body) = serde_json::from_slice::<ErrorBody>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    // Read by the layer that counts errors (`super::metrics`).
    parts.extensions.insert(body.error_code);
    let json = serde_json::to_vec(&body.with_request_id(Some(id.to_string())))
        .expect("an error body always serializes");
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(json))
}

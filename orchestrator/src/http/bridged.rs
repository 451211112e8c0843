//! Routes served inside the sandbox by its agent: processes, files and
//! archives are forwarded as they are (see [`crate::bridge`]); exec is
//! validated here first, so a bad request never reaches the sandbox.

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::AppState;
use crate::bridge;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use sbx_api::ExecRequest;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct SandboxParams {
    id: String,
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/sandboxes/{id}/exec", post(exec))
        .route("/sandboxes/{id}/processes", get(forward).post(forward))
        .route("/sandboxes/{id}/processes/{pid}", get(forward))
        .route("/sandboxes/{id}/processes/{pid}/logs", get(forward))
        .route("/sandboxes/{id}/processes/{pid}/stdin", post(forward))
        .route("/sandboxes/{id}/processes/{pid}/signal", post(forward))
        .route("/sandboxes/{id}/processes/{pid}/wait", get(forward))
        .route(
            "/sandboxes/{id}/files",
            get(forward).put(forward).delete(forward),
        )
        .route("/sandboxes/{id}/files/stat", get(forward))
        .route("/sandboxes/{id}/files/list", get(forward))
        .route("/sandboxes/{id}/files/mkdir", post(forward))
        .route("/sandboxes/{id}/files/move", post(forward))
        .route("/sandboxes/{id}/archive", get(forward).put(forward))
}

async fn exec(
    State(state): State<AppState>,
    ApiPath(SandboxParams { id }): ApiPath<SandboxParams>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<ExecRequest>,
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
        &id,
        Method::POST,
        "/exec",
        &forwarded,
        Body::from(body),
    )
    .await?;
    Ok(response)
}

/// Forwards `/v1/sandboxes/{id}/REST?QUERY` to the agent's `/REST?QUERY`.
async fn forward(
    State(state): State<AppState>,
    ApiPath(SandboxParams { id }): ApiPath<SandboxParams>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
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
        &id,
        parts.method,
        &agent_path,
        &parts.headers,
        body,
    )
    .await?;
    Ok(response)
}

//! Forwarding sandbox calls to the agent inside the sandbox.
//!
//! The public routes under `/v1/sandboxes/{id}/…` mirror the agent's own
//! routes, so the bridge does not interpret results: it sends the request
//! over the agent's Unix socket and streams the agent's status, content type
//! and body straight back, never buffering a whole body. The orchestrator
//! never spawns a process per call; the agent already lives inside.

use crate::sandbox::{Manager, SandboxError};
use axum::body::Body;
use axum::http::{header, Method, Response};
use bytes::Bytes;

/// Sends a JSON request to the agent of sandbox `id` and returns its
/// response, body still streaming.
pub async fn forward_json(
    manager: &Manager,
    id: &str,
    agent_path: &str,
    body: Vec<u8>,
) -> Result<Response<Body>, SandboxError> {
    let agent = manager.agent(id)?;
    let response = agent
        .send(
            Method::POST,
            agent_path,
            Some("application/json"),
            Bytes::from(body),
        )
        .await
        .map_err(|err| manager.agent_failure(id, err.to_string()))?;
    let (parts, incoming) = response.into_parts();
    let mut forwarded = Response::builder().status(parts.status);
    if let Some(content_type) = parts.headers.get(header::CONTENT_TYPE) {
        forwarded = forwarded.header(header::CONTENT_TYPE, content_type);
    }
    forwarded
        .body(Body::new(incoming))
        .map_err(|err| manager.agent_failure(id, err.to_string()))
}

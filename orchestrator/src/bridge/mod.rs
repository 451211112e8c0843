//! Forwarding sandbox calls to the agent inside the sandbox.
//!
//! The public routes under `/v1/sandboxes/{id}/…` mirror the agent's own
//! routes, so the bridge does not interpret results: it sends the request
//! over the agent's Unix socket and streams the agent's status, headers and
//! body straight back — and streams request bodies (uploads) the other way —
//! never buffering a whole body in the orchestrator. The orchestrator never
//! spawns a process per call; the agent already lives inside.
//!
//! Dropping the response (the public client went away) drops the agent
//! connection with it, which is how a disconnect reaches the agent and kills
//! a streamed command.
//!
//! A forwarded call keeps its sandbox awake (`Manager::in_use`) until its
//! response body has ended: an exec stream, a log follow or a download
//! counts for as long as it runs, not just until its head is sent.

use crate::sandbox::{InUse, Manager, SandboxError};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Headers that describe the body or what the caller accepts; everything
/// else (authorization above all) stays on this side of the bridge.
const FORWARDED_REQUEST_HEADERS: [header::HeaderName; 3] =
    [header::CONTENT_TYPE, header::CONTENT_LENGTH, header::ACCEPT];
const FORWARDED_RESPONSE_HEADERS: [header::HeaderName; 2] =
    [header::CONTENT_TYPE, header::CONTENT_LENGTH];

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap, names: &[header::HeaderName]) {
    for name in names {
        if let Some(value) = from.get(name) {
            to.insert(name.clone(), value.clone());
        }
    }
}

/// Sends `method agent_path` (path and query, as the agent spells it) with
/// `body` to the agent of sandbox `id`; returns the agent's response with
/// its body still streaming.
pub async fn forward(
    manager: &Arc<Manager>,
    id: &str,
    method: Method,
    agent_path: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response<Body>, SandboxError> {
    let in_use = manager.in_use(id);
    let agent = manager.agent(id).await?;
    let mut request = Request::builder()
        .method(method)
        .uri(agent_path)
        .body(body)
        .map_err(|err| SandboxError::InvalidRequest(format!("cannot forward request: {err}")))?;
    copy_headers(headers, request.headers_mut(), &FORWARDED_REQUEST_HEADERS);
    let response = match agent.send_request(request).await {
        Ok(response) => response,
        Err(err) => return Err(manager.agent_failure(id, err.to_string()).await),
    };
    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
        if let Some(err) = manager.not_serving(id).await {
            return Err(err);
        }
    }
    let (parts, incoming) = response.into_parts();
    let mut forwarded = Response::new(Body::new(Held {
        inner: incoming,
        _in_use: in_use,
    }));
    *forwarded.status_mut() = parts.status;
    copy_headers(
        &parts.headers,
        forwarded.headers_mut(),
        &FORWARDED_RESPONSE_HEADERS,
    );
    Ok(forwarded)
}

/// A response body that keeps its sandbox in use until it ends or drops.
struct Held<B> {
    inner: B,
    _in_use: InUse,
}

impl<B> http_body::Body for Held<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

//! Reading what a handler left of a request body, so that its answer
//! reaches the client.
//!
//! A handler may answer before it reads the body it was sent: an upload to
//! a path that is a directory (409), stdin for an unknown process (404), a
//! bad query (400). hyper then closes the connection, with the body still
//! arriving, and the orchestrator's client, writing that body, fails with
//! EPIPE before it reads the answer: the client saw a 503 "agent
//! unavailable" instead of the 409 (found by fuzzing with schemathesis).
//! So [`layer`] hands each handler its body in a wrapper that, when
//! dropped unfinished, gives the rest back; once the answer is made, the
//! rest is read and discarded, up to [`DRAIN_LIMIT`] bytes within
//! [`DRAIN_TIMEOUT`]. A larger or slower rest is abandoned and the
//! connection closes as before: the bound keeps a client that streams
//! without end from holding the agent.

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::oneshot;

/// Most bytes of an unread body read and discarded after the answer.
pub const DRAIN_LIMIT: usize = 1024 * 1024;
/// Longest time spent discarding them.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The middleware (see the module doc).
pub async fn layer(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let (leftover, returned) = oneshot::channel();
    let tracked = Tracked {
        inner: Some(body),
        leftover: Some(leftover),
    };
    let response = next
        .run(Request::from_parts(parts, Body::new(tracked)))
        .await;
    // The body was read to its end or dropped with the handler, unless a
    // task of the handler's still holds it: that one gets the same bound.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        if let Ok(rest) = returned.await {
            discard(rest).await;
        }
    })
    .await;
    response
}

/// Reads and drops up to [`DRAIN_LIMIT`] bytes of `body`.
async fn discard(mut body: Body) {
    let mut read = 0;
    while read <= DRAIN_LIMIT {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
            Some(Err(_)) | None => return,
        }
    }
}

/// A request body that, dropped before its end, sends itself back.
struct Tracked {
    inner: Option<Body>,
    leftover: Option<oneshot::Sender<Body>>,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.as_ref().map_or_else(
            || http_body::SizeHint::with_exact(0),
            http_body::Body::size_hint,
        )
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let (Some(inner), Some(leftover)) = (self.inner.take(), self.leftover.take()) {
            if !http_body::Body::is_end_stream(&inner) {
                // The middleware may be gone (the connection closed): then
                // there is nothing left to answer.
                let _ = leftover.send(inner);
            }
        }
    }
}

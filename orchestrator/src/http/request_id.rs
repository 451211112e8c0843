//! Request ids: one fresh random id per call, so that what a client sees
//! (the `x-request-id` header, the `request_id` of an error body), what the
//! audit trail holds and what the log says can be matched up.
//!
//! The id is made when hyper hands the request over (see [`super::serve`])
//! and [`assign`], the outermost layer of every route (`/health` and the
//! fallbacks included), puts it to use. An id the client sent is never
//! trusted: a client could otherwise make its calls look like someone
//! else's in the log.
//!
//! The id reaches the code below it three ways: the request's extensions
//! (for the audit layer), a tracing span (so every log line of the call
//! carries it without being told) and a task-local, so that
//! [`ApiError`](super::ApiError)'s `into_response`, which has no request at
//! hand, can put it in the error body. Work that leaves the task (see
//! [`super::detached`]) takes the span and the task-local along with
//! [`carry`].

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use sbx_api::REQUEST_ID_HEADER;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use tracing::Instrument;

tokio::task_local! {
    static CURRENT: RequestId;
}

/// 16 lower-case hex digits, 64 random bits: unique enough to find one
/// call among a server's lifetime of calls, short enough to read out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    pub fn new() -> Self {
        Self(format!("{:016x}", rand::random::<u64>()).into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of the call the current task serves, if it serves one.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `future` as part of the call `self` names: [`Self::current`]
    /// returns `self` inside it.
    pub fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, future)
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Wraps `future` so that, wherever it runs (a spawned task), it keeps the
/// current call's request id and tracing span.
pub fn carry<F: Future>(future: F) -> impl Future<Output = F::Output> {
    let id = RequestId::current().unwrap_or_default();
    id.scope(future.instrument(tracing::Span::current()))
}

/// The middleware: a fresh id for the call (the one [`super::serve`] gave
/// it, if any), in its extensions, span and task-local, and in the
/// response's `x-request-id` header.
pub async fn assign(mut request: Request, next: Next) -> Response {
    let id = match request.extensions().get::<RequestId>() {
        Some(id) => id.clone(),
        None => {
            let id = RequestId::new();
            request.extensions_mut().insert(id.clone());
            id
        }
    };
    // At error level so that the span, and with it the id, is on every line
    // the call logs whatever `SBX_LOG` lets through.
    let span = tracing::error_span!("request", request_id = %id);
    let mut response = id.clone().scope(next.run(request).instrument(span)).await;
    let value = HeaderValue::from_str(id.as_str()).expect("hex digits are a valid header value");
    response.headers_mut().insert(REQUEST_ID_HEADER, value);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_16_hex_digits_and_differ() {
        let (a, b) = (RequestId::new(), RequestId::new());
        assert_eq!(a.as_str().len(), 16);
        assert!(a.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn the_id_is_current_in_its_scope_and_in_carried_tasks() {
        assert_eq!(RequestId::current(), None);
        let id = RequestId::new();
        let expected = id.clone();
        let seen = id
            .scope(async {
                let inner = RequestId::current();
                let spawned = tokio::spawn(carry(async { RequestId::current() }))
                    .await
                    .expect("the task runs");
                (inner, spawned)
            })
            .await;
        assert_eq!(seen, (Some(expected.clone()), Some(expected)));
    }
}

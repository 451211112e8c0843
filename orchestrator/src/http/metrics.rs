//! `GET /metrics`, and the layer that counts error responses.
//!
//! The route sits outside `/v1`, where scrapers look for it, but is
//! authenticated like `/v1`: [`super::auth::authorize`] runs on it, and
//! its line in the policy table asks for `metrics:read`. The admin token
//! has it; give a scraper a token with that scope alone (it reveals counts
//! and latencies, never an id, a path or a command).
//!
//! A successful scrape leaves no audit record, unlike every `/v1` call: a
//! scraper polls every 15 s or so, which would put about 5,800 identical
//! rows a day into the trail, to record a read of nothing a client owns.
//! The trail is for who did what to which sandbox; scrapes are visible in
//! the scraper's own logs. A refused scrape (401, 403) is recorded, though
//! ([`audit_refusals`]): it is someone trying a token, and without a record
//! `/metrics` would be a place to test whether a leaked token is still
//! valid (401) or not (403) without leaving a trace. Refusals are also
//! counted in `sbx_errors_total`, like every error.
//!
//! What is measured, and where, is in [`crate::metrics`].

use super::audit_trail::Call;
use super::error::ApiError;
use super::request_id::RequestId;
use super::AppState;
use crate::metrics::CONTENT_TYPE;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sbx_api::ErrorCode;

/// Prometheus metrics.
///
/// The exposition, in the Prometheus text format 0.0.4: the counters and
/// histograms as they stand, and the gauges read now from the store and
/// the pool.
#[utoipa::path(get, path = "/metrics", tag = "server", operation_id = "metrics",
    responses((status = 200, body = String, content_type = "text/plain",
        description = "Prometheus text format 0.0.4")))]
pub async fn scrape(State(state): State<AppState>) -> Result<Response, ApiError> {
    let census = state.manager.census().await?;
    let text = state.metrics.encode(&census);
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

/// Audits the refused calls of the route it wraps, outside `authorize`,
/// and nothing else (see the module docs): the call's record is started
/// as for a `/v1` call, so that `authorize` names the caller in it, and
/// written only if the answer is 401 or 403.
pub async fn audit_refusals(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let id = request
        .extensions()
        .get::<RequestId>()
        .cloned()
        .unwrap_or_default();
    let call = Call::arrive(
        state.audit.clone(),
        request.method(),
        request.uri().path(),
        &id,
    );
    request.extensions_mut().insert(call.clone());
    // Dropped with the call if its client leaves: nothing is recorded.
    let _unrecorded = Unrecorded(call.clone());
    let response = next.run(request).await;
    let status = response.status();
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        call.finish(status.as_u16());
    }
    response
}

/// Discards its call's record when dropped, unless it was written.
struct Unrecorded(Call);

impl Drop for Unrecorded {
    fn drop(&mut self) {
        self.0.discard();
    }
}

/// Counts every response that carries an error body, by its code: the
/// server's own errors and agents' alike mark their response with the
/// [`ErrorCode`] (see `error.rs` and `bridged.rs`), and every response,
/// unknown routes included, passes here once.
pub async fn count_errors(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if let Some(code) = response.extensions().get::<ErrorCode>() {
        state.metrics.error_answered(*code);
    }
    response
}

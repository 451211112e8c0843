//! `GET /metrics`, and the layer that counts error responses.
//!
//! The route sits outside `/v1`, where scrapers look for it, but is
//! authenticated like `/v1`: [`super::auth::authorize`] runs on it, and
//! its line in the policy table asks for `metrics:read`. The admin token
//! has it; give a scraper a token with that scope alone (it reveals counts
//! and latencies, never an id, a path or a command).
//!
//! A scrape leaves no audit record, unlike every `/v1` call: a scraper
//! polls every 15 s or so, which would put about 5,800 identical rows a day
//! into the trail, to record a read of nothing a client owns. The trail
//! is for who did what to which sandbox; scrapes are visible in the
//! scraper's own logs. A refused scrape (401, 403) is counted in
//! `sbx_errors_total` like every error.
//!
//! What is measured, and where, is in [`crate::metrics`].

use super::error::ApiError;
use super::AppState;
use crate::metrics::CONTENT_TYPE;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sbx_api::ErrorCode;

/// The exposition: the counters and histograms as they stand, and the
/// gauges read now from the store and the pool.
pub async fn scrape(State(state): State<AppState>) -> Result<Response, ApiError> {
    let census = state.manager.census().await?;
    let text = state.metrics.encode(&census);
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
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

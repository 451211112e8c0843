//! The public HTTP API: routes, authentication and error mapping.
//!
//! Handlers stay short: extract and validate, call the [`Manager`] or the
//! [`bridge`](crate::bridge), map the result. Wire types come from `sbx-api`
//! only, and errors become responses in [`error`] only.

mod auth;
mod bridged;
mod error;
mod extract;
mod sandboxes;

pub use auth::load_or_create_admin_token;
pub use error::ApiError;

use crate::sandbox::Manager;
use axum::routing::get;
use axum::Router;
use sbx_api::ErrorCode;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct AppState {
    pub manager: Arc<Manager>,
    pub admin_token: Arc<str>,
    /// Largest body an extractor reads whole (JSON, exec); larger is 413.
    /// Streamed bodies (file uploads, archives) are not read whole and are
    /// bounded by the sandbox's disk limit instead.
    pub max_body_bytes: usize,
}

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/info", get(sandboxes::info))
        .route("/sandboxes", get(sandboxes::list).post(sandboxes::create))
        .route(
            "/sandboxes/{id}",
            get(sandboxes::get)
                .patch(sandboxes::update)
                .delete(sandboxes::delete),
        )
        .merge(bridged::routes())
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body_bytes))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .nest("/v1", v1)
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this route",
            )
        })
        .with_state(state)
}

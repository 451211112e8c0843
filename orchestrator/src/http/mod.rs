//! The public HTTP API: routes, authentication, audit and error mapping.
//!
//! Handlers stay short: extract and validate, call the [`Manager`] or the
//! [`bridge`](crate::bridge), map the result. Wire types come from `sbx-api`
//! only, and errors become responses in [`error`] only.
//!
//! [`serve`] gives every call a request id and starts the audit record of
//! every `/v1` call the moment hyper hands it over, before the router runs
//! (see there for why). Then every call, `/health` and unknown routes
//! included, passes [`request_id::assign`] (the `x-request-id` header of
//! its response, the span of its log lines), and every `/v1` call two more
//! layers, outermost first: [`audit_trail::record`] (exactly one audit entry per
//! call, refusals, unknown routes and calls whose client left included) and
//! [`auth::authorize`] (token → principal → the route's requirement).
//! Handlers that change state run their work [`detached`](detached) from
//! the client's connection.

mod audit_trail;
mod auth;
mod bridged;
mod detached;
mod error;
mod extract;
mod images;
mod lifecycle;
mod live;
mod metrics;
mod openapi;
mod ports;
mod request_id;
mod sandboxes;
mod serve;
mod tokens;

pub use audit_trail::ViaTool;
pub use auth::{check, load_or_create_admin_token, requirement, Requirement};
pub use error::ApiError;
pub use request_id::RequestId;
pub use serve::serve;

use crate::audit::AuditLog;
use crate::metrics::Metrics;
use crate::sandbox::Manager;
use crate::tokens::Tokens;
use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use sbx_api::ErrorCode;
use std::sync::Arc;
use tokio_util::task::TaskTracker;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Debug, Clone)]
pub struct AppState {
    pub manager: Arc<Manager>,
    /// Largest body an extractor reads whole (JSON, exec); larger is 413.
    /// Streamed bodies (file uploads, archives) are not read whole and are
    /// bounded by the sandbox's disk limit instead.
    pub max_body_bytes: usize,
    pub tokens: Arc<Tokens>,
    pub audit: AuditLog,
    /// The work handlers detached from their clients (see [`detached`]);
    /// the server waits for it before it stops.
    pub detached: TaskTracker,
    /// What `GET /metrics` reports (see [`metrics`]).
    pub metrics: Arc<Metrics>,
    /// `sbx serve --preview-domain`: previews are also served as hosts
    /// under it (see [`ports`]).
    pub preview_domain: Option<Arc<str>>,
}

async fn no_route() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
}

/// The `/v1` routes, each with its part of the OpenAPI spec.
fn v1_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sandboxes::info))
        .routes(routes!(sandboxes::list, sandboxes::create))
        .routes(routes!(
            sandboxes::get,
            sandboxes::update,
            sandboxes::delete
        ))
        .routes(routes!(lifecycle::stop))
        .routes(routes!(lifecycle::start))
        .routes(routes!(lifecycle::pause))
        .routes(routes!(lifecycle::resume))
        .routes(routes!(lifecycle::set_timeout))
        .routes(routes!(lifecycle::snapshot))
        .routes(routes!(lifecycle::fork))
        .routes(routes!(lifecycle::restore))
        .routes(routes!(lifecycle::list_snapshots))
        .routes(routes!(lifecycle::get_snapshot, lifecycle::delete_snapshot))
        .routes(routes!(lifecycle::events))
        .routes(routes!(lifecycle::sandbox_events))
        .routes(routes!(images::list))
        .routes(routes!(images::import))
        .routes(routes!(images::pull))
        .routes(routes!(images::build))
        .routes(routes!(images::get, images::delete))
        .merge(bridged::routes())
        .merge(live::routes())
        .merge(ports::routes())
        .routes(routes!(tokens::list, tokens::create))
        .routes(routes!(tokens::revoke))
        .routes(routes!(audit_trail::list))
}

/// The API's OpenAPI 3.1 spec (see [`openapi`]).
pub fn openapi() -> utoipa::openapi::OpenApi {
    openapi::complete(v1_routes().into_openapi())
}

/// The OpenAPI 3.1 spec.
///
/// This API's contract, as JSON; no token needed.
#[utoipa::path(get, path = "/openapi.json", tag = "server", operation_id = "openapi",
    security(()), responses((status = 200, description = "The spec",
        content_type = "application/json")))]
async fn serve_openapi(spec: Bytes) -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], spec)
}

pub fn router(state: AppState) -> Router {
    let (v1, v1_spec) = v1_routes().split_for_parts();
    let spec = Bytes::from(
        openapi::complete(v1_spec)
            .to_pretty_json()
            .expect("the spec serializes"),
    );
    // The /v1 router has its own fallbacks so that the audit layer, which
    // wraps them too, records unknown routes and methods.
    let v1 = v1
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body_bytes))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit_trail::record,
        ));
    // Outside /v1, where scrapers look, but authenticated all the same;
    // only refusals are audited (see `metrics`).
    let scrape = Router::new()
        .route("/metrics", get(metrics::scrape))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::audit_refusals,
        ));
    let api = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/openapi.json", get(move || serve_openapi(spec.clone())))
        .merge(scrape)
        .merge(ports::preview_routes())
        .nest("/v1", v1)
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(request_id::assign))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::count_errors,
        ))
        .with_state(state.clone());
    // MCP's tools and E2B's calls use the API above in process (see
    // crate::mcp, crate::e2b); /mcp and /e2b get a request id like every
    // other route.
    let mcp = Router::new()
        .route_service("/mcp", crate::mcp::service(state, api.clone()))
        .nest_service("/e2b", crate::e2b::service(api.clone()))
        .layer(axum::middleware::from_fn(request_id::assign));
    api.merge(mcp)
}

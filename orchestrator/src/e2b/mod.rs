//! E2B's API at `/e2b`, so that E2B's official SDKs drive sbx unchanged:
//! `E2B_API_URL` and `E2B_SANDBOX_URL` both name `http://HOST:PORT/e2b`,
//! and `E2B_API_KEY` is an sbx token.
//!
//! **One API, three wires.** Like MCP ([`crate::mcp`]), every E2B call is
//! carried out by the REST API: each handler builds the `/v1` requests it
//! stands for and sends them in process through the router `sbx serve`
//! serves, with the caller's own token as the bearer ([`sbx`]). Scopes,
//! sandbox-bound tokens, the audit trail (each record's summary opens with
//! `e2b CALL`), egress policy, limits and detached work are the REST API's,
//! never a copy: an E2B call is an sbx call with another wire shape.
//!
//! **Two planes on one port.** The SDKs talk to two servers: the control
//! plane (`/sandboxes`, `/v2/sandboxes`, with the key in `X-API-KEY`) and
//! envd inside each sandbox (Connect RPCs, `/files`, `/health`, with the
//! sandbox's access token in `X-Access-Token`). With `E2B_SANDBOX_URL` set
//! the SDKs send envd traffic to that URL with an `E2b-Sandbox-Id` header,
//! which is how [`service`] tells the planes apart and which sandbox a call
//! is for: no wildcard DNS, no TLS. The access token a create hands out is
//! the new sandbox's own sbx token, bound to that sandbox.
//!
//! **What is not served** (each answers an error the SDKs raise as their
//! own exception, never a silent success): terminals (`pty`; sbx's are at
//! `/v1/…/pty`), process tags, templates and builds, snapshots and forks
//! through E2B's routes, volumes, secrets, metrics, network updates, and
//! traffic to ports other than envd's (sbx's previews serve `get_host`).

mod connect;
mod control;
mod envd;
mod error;
mod files;
mod filesystem;
mod process;
mod sbx;
mod watchers;

use axum::body::Body;
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Router;
use std::convert::Infallible;
use std::sync::Arc;
use tower::ServiceExt;

/// The header the SDKs name the sandbox of an envd call with.
const SANDBOX_ID_HEADER: &str = "e2b-sandbox-id";

/// What every handler shares: the API to call, and the Python SDK's
/// directory watchers (which outlive a request).
#[derive(Debug, Clone)]
struct E2b {
    api: Router,
    watchers: Arc<watchers::Watchers>,
}

/// The service mounted at `/e2b`; `api` is the router `sbx serve` serves.
pub fn service(api: Router) -> Router {
    let state = E2b {
        api,
        watchers: Arc::default(),
    };
    let control = control::routes(state.clone());
    let envd = envd::routes(state);
    Router::new().fallback_service(tower::service_fn(move |request: Request| {
        let plane = if is_envd_call(request.headers()) {
            envd.clone()
        } else {
            control.clone()
        };
        async move {
            Ok::<Response<Body>, Infallible>(
                plane
                    .oneshot(request)
                    .await
                    .unwrap_or_else(|never| match never {}),
            )
        }
    }))
}

fn is_envd_call(headers: &HeaderMap) -> bool {
    headers.contains_key(SANDBOX_ID_HEADER)
}

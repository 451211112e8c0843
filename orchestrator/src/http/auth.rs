//! Authentication and authorization of every `/v1` route, and of
//! `/metrics`.
//!
//! [`authorize`] resolves the bearer token to a [`Principal`] (see
//! [`crate::tokens`]), checks it against what the matched route requires,
//! and hands the principal on: to the call's audit record as soon as it is
//! known, refusals included (the record may be written without a response,
//! if the client leaves), and to the handler in the request's extensions
//! (minting needs to know who mints).
//!
//! What each route requires is written down once, in [`requirement`], from
//! the route's template: a route added without a line there falls to
//! [`Requirement::EveryScope`], so only the admin can call it until someone
//! decides otherwise.

use super::audit_trail::Call;
use super::error::ApiError;
use super::extract::raw_id_param;
use super::AppState;
use crate::tokens::{Principal, TokenError};
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sbx_api::{ErrorCode, Scope};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

/// Reads the admin token, creating it (32 random bytes, hex) if absent.
pub fn load_or_create_admin_token(path: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(token) if !token.trim().is_empty() => return Ok(token.trim().to_owned()),
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let token: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(token.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    Ok(token)
}

/// What a route asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Any valid token.
    Authenticated,
    /// The scope, on the route's sandbox (`{id}`) or on none.
    Scope { scope: Scope, on_sandbox: bool },
    /// Every scope, unbound: the admin.
    EveryScope,
}

/// The policy table: what `method route` (a matched route template, as
/// `MatchedPath` spells it) requires.
pub fn requirement(method: &Method, route: &str) -> Requirement {
    let scope = |scope, on_sandbox| Requirement::Scope { scope, on_sandbox };
    match (route, method) {
        ("/v1/info", _) => Requirement::Authenticated,
        ("/v1/sandboxes", &Method::POST) => scope(Scope::SandboxesCreate, false),
        ("/v1/sandboxes", &Method::GET) => scope(Scope::SandboxesRead, false),
        ("/v1/sandboxes/{id}", &Method::GET) => scope(Scope::SandboxesRead, true),
        ("/v1/sandboxes/{id}", &Method::DELETE) => scope(Scope::SandboxesDelete, true),
        ("/v1/sandboxes/{id}", &Method::PATCH) => scope(Scope::SandboxesNetwork, true),
        (
            "/v1/sandboxes/{id}/stop"
            | "/v1/sandboxes/{id}/start"
            | "/v1/sandboxes/{id}/pause"
            | "/v1/sandboxes/{id}/resume"
            | "/v1/sandboxes/{id}/timeout"
            | "/v1/sandboxes/{id}/snapshots"
            | "/v1/sandboxes/{id}/restore",
            &Method::POST,
        ) => scope(Scope::SandboxesLifecycle, true),
        // New sandboxes, from any sandbox's files: what create may do.
        ("/v1/sandboxes/{id}/fork", &Method::POST) => scope(Scope::SandboxesCreate, false),
        ("/v1/snapshots" | "/v1/snapshots/{name}", &Method::GET) => {
            scope(Scope::SandboxesRead, false)
        }
        ("/v1/snapshots/{name}", &Method::DELETE) => scope(Scope::SandboxesDelete, false),
        ("/v1/events", &Method::GET) => scope(Scope::SandboxesRead, false),
        ("/v1/sandboxes/{id}/events", &Method::GET) => scope(Scope::SandboxesRead, true),
        (route, _) if route.starts_with("/v1/sandboxes/{id}/") => scope(Scope::SandboxesExec, true),
        ("/v1/images" | "/v1/images/{name}", &Method::GET) => scope(Scope::ImagesRead, false),
        ("/v1/images/import" | "/v1/images/pull" | "/v1/images/build", &Method::POST)
        | ("/v1/images/{name}", &Method::DELETE) => scope(Scope::ImagesWrite, false),
        ("/v1/tokens" | "/v1/tokens/{id}", _) => scope(Scope::TokensAdmin, false),
        ("/v1/audit", &Method::GET) => scope(Scope::AuditRead, false),
        ("/metrics", &Method::GET) => scope(Scope::MetricsRead, false),
        // Any valid token; each tool call is then held to its own route's
        // line here (see `crate::mcp`).
        ("/mcp", &Method::POST) => Requirement::Authenticated,
        _ => Requirement::EveryScope,
    }
}

fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Whether `principal` meets `requirement` on `sandbox` (the route's `{id}`).
pub fn check(
    principal: &Principal,
    requirement: Requirement,
    sandbox: Option<&str>,
) -> Result<(), TokenError> {
    match requirement {
        Requirement::Authenticated => Ok(()),
        Requirement::Scope { scope, on_sandbox } => {
            principal.check(scope, if on_sandbox { sandbox } else { None })
        }
        Requirement::EveryScope => principal.check_all(),
    }
}

pub async fn authorize(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(presented) = bearer(&request) else {
        return ApiError::new(
            ErrorCode::Unauthorized,
            "missing bearer token in the authorization header",
        )
        .into_response();
    };
    let principal = match state.tokens.authenticate(presented) {
        Ok(principal) => Arc::new(principal),
        Err(err) => return ApiError::from(err).into_response(),
    };
    if let Some(call) = request.extensions().get::<Call>() {
        call.principal(&principal);
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_default();
    let sandbox = raw_id_param(&mut request).await;
    let allowed = check(
        &principal,
        requirement(request.method(), &route),
        sandbox.as_deref(),
    );
    match allowed {
        Ok(()) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(err) => ApiError::from(err).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn token_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("admin.token");
        let first = load_or_create_admin_token(&path).expect("create");
        assert_eq!(first.len(), 64);
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_admin_token(&path).expect("read"), first);
    }

    #[test]
    fn every_route_has_its_requirement() {
        let scope = |scope, on_sandbox| Requirement::Scope { scope, on_sandbox };
        let cases = [
            (Method::GET, "/v1/info", Requirement::Authenticated),
            (
                Method::POST,
                "/v1/sandboxes",
                scope(Scope::SandboxesCreate, false),
            ),
            (
                Method::GET,
                "/v1/sandboxes",
                scope(Scope::SandboxesRead, false),
            ),
            (
                Method::GET,
                "/v1/sandboxes/{id}",
                scope(Scope::SandboxesRead, true),
            ),
            (
                Method::DELETE,
                "/v1/sandboxes/{id}",
                scope(Scope::SandboxesDelete, true),
            ),
            (
                Method::PATCH,
                "/v1/sandboxes/{id}",
                scope(Scope::SandboxesNetwork, true),
            ),
            (
                Method::POST,
                "/v1/sandboxes/{id}/exec",
                scope(Scope::SandboxesExec, true),
            ),
            (
                Method::GET,
                "/v1/sandboxes/{id}/files",
                scope(Scope::SandboxesExec, true),
            ),
            (
                Method::PUT,
                "/v1/sandboxes/{id}/archive",
                scope(Scope::SandboxesExec, true),
            ),
            (
                Method::POST,
                "/v1/sandboxes/{id}/processes/{pid}/signal",
                scope(Scope::SandboxesExec, true),
            ),
            (Method::POST, "/v1/tokens", scope(Scope::TokensAdmin, false)),
            (Method::GET, "/v1/tokens", scope(Scope::TokensAdmin, false)),
            (
                Method::DELETE,
                "/v1/tokens/{id}",
                scope(Scope::TokensAdmin, false),
            ),
            (Method::GET, "/v1/audit", scope(Scope::AuditRead, false)),
            (Method::GET, "/metrics", scope(Scope::MetricsRead, false)),
            (Method::GET, "/v1/images", scope(Scope::ImagesRead, false)),
            (
                Method::GET,
                "/v1/images/{name}",
                scope(Scope::ImagesRead, false),
            ),
            (
                Method::POST,
                "/v1/images/import",
                scope(Scope::ImagesWrite, false),
            ),
            (
                Method::DELETE,
                "/v1/images/{name}",
                scope(Scope::ImagesWrite, false),
            ),
            (
                Method::POST,
                "/v1/images/pull",
                scope(Scope::ImagesWrite, false),
            ),
            (
                Method::POST,
                "/v1/images/build",
                scope(Scope::ImagesWrite, false),
            ),
            (Method::POST, "/mcp", Requirement::Authenticated),
            (Method::POST, "/metrics", Requirement::EveryScope),
            (Method::GET, "/v1/something-new", Requirement::EveryScope),
            (Method::PATCH, "/v1/sandboxes", Requirement::EveryScope),
        ];
        for (method, route, expected) in cases {
            assert_eq!(requirement(&method, route), expected, "{method} {route}");
        }
    }

    #[test]
    fn a_sandbox_bound_principal_passes_only_on_its_sandbox() {
        let bound = Principal {
            name: "sandbox:aaaa".into(),
            token_id: Some("0123456789abcdef".into()),
            scopes: [Scope::SandboxesRead, Scope::SandboxesExec].into(),
            sandbox: Some("aaaa".into()),
            expires_at: None,
        };
        let on = |method: Method, route: &str, sandbox: Option<&str>| {
            check(&bound, requirement(&method, route), sandbox).is_ok()
        };
        assert!(on(Method::POST, "/v1/sandboxes/{id}/exec", Some("aaaa")));
        assert!(on(Method::GET, "/v1/sandboxes/{id}", Some("aaaa")));
        assert!(on(Method::GET, "/v1/info", None));
        assert!(!on(Method::POST, "/v1/sandboxes/{id}/exec", Some("bbbb")));
        assert!(!on(Method::DELETE, "/v1/sandboxes/{id}", Some("aaaa")));
        assert!(!on(Method::PATCH, "/v1/sandboxes/{id}", Some("aaaa")));
        assert!(!on(Method::GET, "/v1/sandboxes", None));
        assert!(!on(Method::POST, "/v1/sandboxes", None));
        assert!(!on(Method::GET, "/v1/tokens", None));
        assert!(!on(Method::GET, "/v1/audit", None));
        assert!(!on(Method::GET, "/metrics", None));
        assert!(!on(Method::GET, "/v1/something-new", None));
        let admin = Principal::admin();
        assert!(check(&admin, requirement(&Method::GET, "/v1/something-new"), None).is_ok());
    }
}

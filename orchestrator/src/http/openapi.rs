//! The OpenAPI 3.1 contract: generated from the code, checked in as
//! `api/openapi.json`, served at `GET /openapi.json`.
//!
//! Nothing in it is written twice:
//! - the schemas are the wire types of `sbx-api`, which derive them
//!   (`utoipa::ToSchema`), doc comments and serde attributes included;
//! - the paths are the handlers' `#[utoipa::path]` attributes, registered
//!   through `utoipa_axum`, so a route cannot be served without being in
//!   the spec, nor documented without being served;
//! - each operation's security requirement (the scopes it needs) is
//!   written here from [`requirement`], the policy table that `authorize`
//!   enforces, so the spec and the enforcement cannot disagree;
//! - the error responses every operation may give are added here, by
//!   kind of route, all as the one [`ErrorBody`] with its `error_code`
//!   enum, rather than repeated in every attribute.
//!
//! A test (below) fails when the generated spec differs from the checked-in
//! file; `EXPECTORATE=overwrite cargo test -p sbx-orchestrator openapi`
//! rewrites it, and the diff is then reviewed like code.

use super::auth::{requirement, Requirement};
use axum::http::Method;
use sbx_api::{ErrorBody, PortPath, Scope};
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr};
use utoipa::{OpenApi as _, PartialSchema, ToSchema};

/// The name of the bearer-token security scheme.
const BEARER: &str = "bearer";
/// The routes that need no token.
const OPEN_ROUTES: [&str; 3] = ["/health", "/openapi.json", "/p/{secret}/{path}"];
/// The name of the shared error response.
const ERROR_RESPONSE: &str = "Error";

/// The parts of the spec that are not generated from a route: its info,
/// the token scheme, the tags, and the two routes outside `/v1`.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "sbx",
        description = "Sandboxes for coding agents: create one, run commands, move files, \
            run background processes, govern its network, and audit every call.\n\n\
            Every `/v1` route takes `Authorization: Bearer <token>`. What a token may do is \
            its scopes; the scopes each operation needs are its security requirement. A \
            token bound to a sandbox (the one `POST /v1/sandboxes` returns) works on that \
            sandbox alone.\n\n\
            Errors are one JSON body, `ErrorBody`, whose `error_code` clients branch on. \
            Streams (`exec` with `Accept: application/x-ndjson`, process logs) are NDJSON: \
            one `ExecEvent` per line.\n\n\
            E2B's API, for E2B's official SDKs, is served under `/e2b` by the same \
            server (each call carried out by this API, as its caller).",
    ),
    paths(health, super::serve_openapi, super::metrics::scrape, mcp, port_proxy, preview),
    tags(
        (name = "sandboxes", description = "Create, list, change and delete sandboxes"),
        (name = "exec", description = "Run a command to completion"),
        (name = "processes", description = "Background processes, their logs, stdin and signals"),
        (name = "files", description = "Files, directories and tar archives inside a sandbox"),
        (name = "images", description = "Images sandboxes are made from: import, list, delete"),
        (name = "terminals", description = "Terminals (PTYs) attached over WebSockets"),
        (name = "sessions", description = "Shell sessions whose cd, variables and functions persist"),
        (name = "ports", description = "Servers inside a sandbox: proxied requests, tunnels, previews"),
        (name = "tokens", description = "Scoped API tokens"),
        (name = "audit", description = "The audit trail: one record per call"),
        (name = "server", description = "The server itself"),
    )
)]
struct Base;

/// Liveness.
///
/// Answers `ok` as long as the server serves; no token needed.
#[utoipa::path(get, path = "/health", tag = "server", operation_id = "health",
    security(()), responses((status = 200, body = String, content_type = "text/plain")))]
#[allow(dead_code)] // Documents the route; the router serves it with a closure.
fn health() {}

/// The MCP server (streamable HTTP transport, stateless).
///
/// JSON-RPC 2.0 messages of the Model Context Protocol, one per request,
/// answered as JSON. The tools it lists follow the token's scopes; each
/// tool call is a call of this API, checked and audited as one. Its
/// contract is MCP's own, tested with the official MCP SDK.
#[utoipa::path(post, path = "/mcp", tag = "server", operation_id = "mcp",
    request_body(content = Object, description = "A JSON-RPC 2.0 request or notification"),
    responses(
        (status = 200, body = Object, description = "The JSON-RPC response"),
        (status = 202, description = "A notification, accepted"),
    ))]
#[allow(dead_code)] // Documents the route; `crate::mcp` serves it.
fn mcp() {}

/// Any request to a port inside a sandbox.
///
/// Every method, every path under the port: proxied to
/// `127.0.0.1:{port}` inside the sandbox with its query, headers (but
/// `Authorization`, which is sbx's) and body, and the answer streamed back
/// as the server there gives it. WebSocket upgrades pass through. 502 when
/// nothing listens on the port.
#[utoipa::path(method(get, post, put, patch, delete), path = "/v1/sandboxes/{id}/ports/{port}/{path}",
    tag = "ports", operation_id = "proxy_port",
    params(PortPath, ("path" = String, Path, description = "The path under the port, after its first `/`")),
    request_body(content(("application/octet-stream")), description = "Passed on as it is"),
    responses(
        (status = 200, description = "The server's answer, whatever its status and body"),
        (status = 502, body = ErrorBody, description = "Nothing listens on the port"),
    ))]
#[allow(dead_code)] // Documents the route; `super::ports` serves it.
fn port_proxy() {}

/// A request through a preview URL.
///
/// Like the port proxy, for whoever holds the URL: no token; the secret in
/// the path is the credential. 404 once the preview expired or was
/// revoked, or its sandbox deleted.
#[utoipa::path(method(get, post, put, patch, delete), path = "/p/{secret}/{path}",
    tag = "ports", operation_id = "through_preview", security(()),
    params(("secret" = String, Path, description = "The preview's secret, from its URL"),
        ("path" = String, Path, description = "The path under the port")),
    request_body(content(("application/octet-stream")), description = "Passed on as it is"),
    responses(
        (status = 200, description = "The server's answer, whatever its status and body"),
        (status = 404, body = ErrorBody, description = "No such preview"),
        (status = 502, body = ErrorBody, description = "Nothing listens on the port"),
    ))]
#[allow(dead_code)] // Documents the route; `super::ports` serves it.
fn preview() {}

/// The complete spec, from the `/v1` routes' generated part.
pub fn complete(v1: OpenApi) -> OpenApi {
    let mut spec = Base::openapi().nest("/v1", v1);
    let components = spec.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        BEARER.into(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An sbx token: the admin token (in the server's data dir), a minted \
                     one, or a sandbox's own",
                ))
                .build(),
        ),
    );
    components
        .schemas
        .insert(ErrorBody::name().into_owned(), ErrorBody::schema());
    let mut error_schemas = Vec::new();
    ErrorBody::schemas(&mut error_schemas);
    components.schemas.extend(error_schemas);
    components.responses.insert(
        ERROR_RESPONSE.into(),
        RefOr::T(
            ResponseBuilder::new()
                .description("An error: `error_code` says which, `message` says why")
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                        .build(),
                )
                .build(),
        ),
    );
    for (path, item) in spec.paths.paths.iter_mut() {
        if OPEN_ROUTES.contains(&path.as_str()) {
            continue;
        }
        let operations = [
            (Method::GET, &mut item.get),
            (Method::PUT, &mut item.put),
            (Method::POST, &mut item.post),
            (Method::DELETE, &mut item.delete),
            (Method::PATCH, &mut item.patch),
        ];
        for (method, operation) in operations {
            if let Some(operation) = operation {
                secure(operation, requirement(&method, path));
                add_errors(operation, &method, path);
            }
        }
    }
    spec
}

/// Writes the route's requirement into its operation: the security
/// requirement, and a sentence in its description.
fn secure(operation: &mut Operation, requirement: Requirement) {
    let (scopes, sentence): (Vec<Scope>, String) = match requirement {
        Requirement::Authenticated => (Vec::new(), "Any valid token.".into()),
        Requirement::Scope { scope, on_sandbox } => (
            vec![scope],
            if on_sandbox {
                format!(
                    "Needs the `{scope}` scope; a token bound to this sandbox with it works \
                     too."
                )
            } else {
                format!("Needs the `{scope}` scope, on a token bound to no sandbox.")
            },
        ),
        Requirement::EveryScope => (Scope::ALL.to_vec(), "Needs every scope.".into()),
    };
    operation.security = Some(vec![SecurityRequirement::new(
        BEARER,
        scopes.into_iter().map(Scope::as_str),
    )]);
    let description = operation.description.get_or_insert_with(String::new);
    if !description.is_empty() {
        description.push_str("\n\n");
    }
    description.push_str(&sentence);
}

/// The routes that take disk space out of the storage pool (see
/// `sandbox::storage`).
const PROMISES_DISK: [&str; 4] = [
    "/v1/sandboxes",
    "/v1/sandboxes/{id}/start",
    "/v1/sandboxes/{id}/fork",
    "/v1/sandboxes/{id}/snapshots",
];

/// The errors a route that needs a token may answer with, by kind of
/// route.
fn add_errors(operation: &mut Operation, method: &Method, path: &str) {
    // Every route: no or a bad token, a token that may not, a bug; and on
    // the API proper, a malformed request.
    let mut statuses = vec![401, 403, 500];
    if path.starts_with("/v1/") {
        statuses.push(400);
    }
    if path.starts_with("/v1/sandboxes") {
        // A sandbox (or image, or path, or process) that does not exist,
        // one in a state that does not allow the call, an agent or engine
        // that cannot be reached.
        statuses.extend([404, 409, 503]);
    }
    if path.starts_with("/v1/sandboxes/{id}/") {
        // An empty id collapses the path onto another route
        // (`POST /v1/sandboxes//start` is `/v1/sandboxes/{id}` with the id
        // `start`), which may not take the method.
        statuses.push(405);
    }
    if path.starts_with("/v1/tokens") || path.starts_with("/v1/snapshots/") {
        // A token, or the sandbox a new token is to be bound to; a
        // snapshot.
        statuses.push(404);
    }
    if path == "/v1/images/{name}" {
        // No such image; one a sandbox or snapshot is made from.
        statuses.push(404);
        if method == Method::DELETE {
            statuses.push(409);
        }
    }
    if method == Method::POST && PROMISES_DISK.contains(&path) {
        // The storage pool cannot back what the call would promise.
        statuses.push(507);
    }
    if operation.request_body.is_some() {
        statuses.push(413);
    }
    for status in statuses {
        operation
            .responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name(ERROR_RESPONSE)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checked_in_spec_is_the_generated_one() {
        let spec = super::super::openapi();
        let json = spec.to_pretty_json().expect("the spec serializes");
        expectorate::assert_contents("../api/openapi.json", &format!("{json}\n"));
    }

    /// Bounds written as literals in the routes' attributes are the ones
    /// the agent enforces.
    #[test]
    fn literal_bounds_are_the_enforced_ones() {
        let spec = serde_json::to_value(super::super::openapi()).expect("serializes");
        let params = &spec["paths"]["/v1/sandboxes/{id}/files/list"]["get"]["parameters"];
        let depth = params
            .as_array()
            .and_then(|params| params.iter().find(|param| param["name"] == "depth"))
            .expect("list_files has depth");
        assert_eq!(depth["schema"]["maximum"], sbx_api::MAX_LIST_DEPTH);
        assert_eq!(depth["schema"]["minimum"], 1);
    }

    #[test]
    fn every_operation_carries_the_scopes_authorize_enforces() {
        let spec = super::super::openapi();
        let mut checked = 0;
        for (path, item) in &spec.paths.paths {
            let operations = [
                (Method::GET, &item.get),
                (Method::PUT, &item.put),
                (Method::POST, &item.post),
                (Method::DELETE, &item.delete),
                (Method::PATCH, &item.patch),
            ];
            for (method, operation) in operations {
                let Some(operation) = operation else { continue };
                let security = serde_json::to_value(&operation.security).expect("serializes");
                if OPEN_ROUTES.contains(&path.as_str()) {
                    assert_eq!(security, serde_json::json!([{}]), "{method} {path} is open");
                    continue;
                }
                let expected = match requirement(&method, path) {
                    Requirement::Authenticated => vec![],
                    Requirement::Scope { scope, .. } => vec![scope.as_str()],
                    Requirement::EveryScope => panic!("{method} {path} has no policy line"),
                };
                assert_eq!(
                    security,
                    serde_json::json!([{ BEARER: expected }]),
                    "{method} {path}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 25, "only {checked} operations");
    }
}

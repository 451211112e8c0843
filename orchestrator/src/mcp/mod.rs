//! MCP: sbx's sandboxes as tools for a model, at `/mcp` (streamable HTTP)
//! and through `sbx mcp` (stdio).
//!
//! **One API, two wires.** A tool call is carried out by the REST API: each
//! tool builds the `/v1` request(s) it stands for and sends them in process,
//! through the very router `sbx serve` serves (`tower::ServiceExt::oneshot`,
//! see [`rest`]), with the caller's own bearer token. So scope checks, audit
//! records, error codes and detached work (a create finishes even if the
//! model's client hangs up) are the REST API's, not a copy of them. What the
//! MCP layer adds is what a model needs that a program does not: output cut
//! to fit a context window, with the whole kept in the sandbox to page
//! through ([`text`]); files read by lines; an exact-string `edit_file`.
//!
//! **Audit.** Each `/v1` call a tool makes is one audit record, made by the
//! audit layer as for any call, with `mcp TOOL` opening its summary. The
//! tool name reaches the layer as a request extension
//! ([`crate::http::ViaTool`]), which no outside client can set. The
//! in-process request does not pass `http::serve`'s arrival hook, so the
//! audit layer starts its record itself (as it does for any router served
//! without it): one record per call, 499 if the tool call is dropped. A tool
//! call refused before it reaches the API (arguments that do not parse) is
//! recorded here, with route `/mcp`, as is a `/mcp` request without a valid
//! token (401).
//!
//! **Scopes.** `/mcp` takes the REST API's bearer tokens. The tools a client
//! is shown follow its token's scopes, decided by the REST policy table
//! itself ([`scope`]): a tool is listed when every route it calls would let
//! the token through. A token bound to one sandbox (the one handed out with
//! each sandbox) sees only the tools that work inside it, and without a
//! `sandbox_id` argument: the id is the token's, so a model cannot aim at
//! another sandbox by mistake. A call to a tool not listed is still answered
//! by the API, with its `forbidden`.
//!
//! **Errors.** A failed tool call is an MCP tool error (`isError: true`)
//! whose text starts with the API's `error_code` and whose
//! `structuredContent` is the API's error body; JSON-RPC errors are left to
//! protocol failures (an unknown tool).
//!
//! **Transport.** rmcp's `StreamableHttpService`, stateless: every POST is
//! served on its own, with the token it carries, so the server keeps no
//! session state for clients that vanish, and a token revoked mid-session
//! stops working at its next call. Responses are plain JSON (no server
//! notifications are ever sent). rmcp's `Host` check (a guard against DNS
//! rebinding for servers without authentication) is off: every call needs a
//! bearer token, which a rebound page does not have, and `sbx serve` may
//! listen on any address.
//!
//! **Wire types.** Results and errors are `sbx-api`'s types. The tool
//! argument structs in [`tools`] are MCP's wire, not the REST API's: they
//! are shaped for a model (a shell command string, seconds, line numbers)
//! and derive `schemars::JsonSchema`, as rmcp expects, so they live here
//! rather than in `api/`.

mod relay;
mod rest;
mod scope;
mod text;
mod tools;

pub use relay::{relay_stdio, RelayError};

use crate::http::{ApiError, AppState, RequestId};
use crate::store::AuditEntry;
use crate::tokens::Principal;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use chrono::Utc;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use sbx_api::{ErrorCode, ANONYMOUS};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tower::util::BoxCloneSyncService;

/// The route MCP is served on, as the audit trail names it.
pub const MCP_ROUTE: &str = "/mcp";

/// The `/mcp` service: bearer authentication in front of rmcp's streamable
/// HTTP server, whose tools call `api` (the `/v1` router) in process.
pub fn service(state: AppState, api: Router) -> BoxCloneSyncService<Request, Response, Infallible> {
    let handler = Mcp {
        api,
        audit: state.audit.clone(),
    };
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_sse_retry(None)
        .disable_allowed_hosts()
        .with_max_request_body_bytes(state.max_body_bytes);
    let mcp = StreamableHttpService::new(
        move || Ok(handler.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    let router = Router::new()
        .fallback_service(tower::ServiceExt::<Request>::map_response(
            mcp,
            |response: http::Response<_>| response.map(Body::new),
        ))
        .layer(axum::middleware::from_fn_with_state(state, authenticate));
    BoxCloneSyncService::new(router)
}

/// `Authorization: Bearer …` as the REST API takes it; no token or a bad
/// one is a 401 with the API's error body, and an audit record.
async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let refusal = match presented.map(|token| state.tokens.authenticate(token)) {
        Some(Ok(principal)) => {
            request.extensions_mut().insert(Arc::new(principal));
            return next.run(request).await;
        }
        Some(Err(err)) => ApiError::from(err),
        None => ApiError::new(
            ErrorCode::Unauthorized,
            "missing bearer token in the authorization header",
        ),
    };
    let response = refusal.into_response();
    state.audit.record(AuditEntry {
        time: Utc::now(),
        identity: ANONYMOUS.to_owned(),
        token_id: None,
        method: request.method().to_string(),
        route: MCP_ROUTE.to_owned(),
        sandbox: None,
        summary: None,
        status: response.status().as_u16(),
        duration: started.elapsed(),
        request_id: RequestId::current().map(|id| id.to_string()),
    });
    response
}

/// The MCP server handler; one per request (the transport is stateless),
/// so it is cheap to clone.
#[derive(Debug, Clone)]
struct Mcp {
    api: Router,
    audit: crate::audit::AuditLog,
}

/// Who is calling, as [`authenticate`] found out, and the token to call
/// the API with on their behalf.
struct Caller {
    principal: Arc<Principal>,
    authorization: axum::http::HeaderValue,
    /// The `Host` the caller reached this server at, which URLs made for
    /// them (a preview's) name.
    host: Option<axum::http::HeaderValue>,
}

fn caller(context: &RequestContext<RoleServer>) -> Result<Caller, ErrorData> {
    let parts = context
        .extensions
        .get::<axum::http::request::Parts>()
        .ok_or_else(|| ErrorData::internal_error("no http request behind this call", None))?;
    let principal = parts
        .extensions
        .get::<Arc<Principal>>()
        .cloned()
        .ok_or_else(|| ErrorData::internal_error("unauthenticated call", None))?;
    let authorization = parts
        .headers
        .get(AUTHORIZATION)
        .cloned()
        .ok_or_else(|| ErrorData::internal_error("no authorization header", None))?;
    Ok(Caller {
        principal,
        authorization,
        host: parts.headers.get(axum::http::header::HOST).cloned(),
    })
}

const INSTRUCTIONS: &str = "sbx runs Linux sandboxes (Debian with bash, git, python3, curl, \
jq, ripgrep, make, or another image that list_images shows). Create one with create_sandbox \
(unless your token is bound to one), then run commands with exec, read and change files with \
read_file, write_file and edit_file, and run servers or long jobs with start_process. Paths \
are absolute; /workspace is the working directory. A sandbox has no network unless set_egress \
allows hosts. Save its files with snapshot_sandbox before a risky change and roll back with \
restore_sandbox; try alternatives side by side with fork_sandbox. A sandbox is stopped or \
deleted when its timeout runs out or it sits idle too long; extend_sandbox pushes its timeout \
back.";

impl ServerHandler for Mcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("sbx", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let caller = caller(&context)?;
        let tools: Vec<Tool> = scope::visible(&caller.principal)
            .map(|tool| tool.describe(caller.principal.sandbox.is_some()))
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let caller = caller(&context)?;
        let Some(tool) = tools::find(&request.name) else {
            return Err(ErrorData::invalid_params(
                format!("unknown tool {:?}", request.name),
                None,
            ));
        };
        let started = std::time::Instant::now();
        let rest = rest::Rest::new(self.api.clone(), caller.authorization, tool.name)
            .with_host(caller.host);
        let arguments = request.arguments.unwrap_or_default();
        let outcome =
            tools::call(tool, &rest, caller.principal.sandbox.as_deref(), arguments).await;
        if let Err(err) = &outcome {
            if !err.reached_api() {
                self.refused(&caller.principal, tool.name, err, started.elapsed());
            }
        }
        Ok(tools::result(outcome).into())
    }
}

impl Mcp {
    /// Records a tool call that failed before any API call was made.
    fn refused(&self, principal: &Principal, tool: &str, err: &tools::ToolError, took: Duration) {
        self.audit.record(AuditEntry {
            time: Utc::now(),
            identity: principal.name.clone(),
            token_id: principal.token_id.clone(),
            method: "POST".to_owned(),
            route: MCP_ROUTE.to_owned(),
            sandbox: principal.sandbox.clone(),
            summary: Some(format!("mcp {tool}")),
            status: err.code().http_status(),
            duration: took,
            request_id: None,
        });
    }
}

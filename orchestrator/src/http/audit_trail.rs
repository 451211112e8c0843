//! Recording every `/v1` call in the audit trail, and `GET /v1/audit`.
//!
//! Every call that reaches a `/v1` route leaves exactly one record, calls
//! whose client left included. hyper drops a call's future when its client
//! disconnects, at the future's next `.await`, or before its first poll if
//! the client hung up right after sending the request; so the record cannot
//! be written "after the handler". It is a [`Call`], started the moment
//! hyper hands the request over (see [`super::serve`]), shared by the
//! layers and handlers inside and any work they detach (see
//! [`super::detached`]), and written either when a response is made
//! ([`Call::finish`]) or, failing that, when the last holder lets go of
//! it, with status 499 ([`CLIENT_CLOSED_REQUEST`]). Whichever comes first
//! writes it; the other finds nothing left to write.
//!
//! A record starts with the time, method, path, sandbox and request id;
//! the layers inside fill in the rest as soon as they know it, so that a
//! call dropped half-way is recorded with what was known: [`record`] the
//! matched route template (a call dropped before routing keeps the path as
//! sent, like an unknown route), `auth` the caller's [`Principal`]
//! (refusals included; none means the call was not authenticated),
//! handlers a summary of their request and the sandbox a create made.
//! Handlers only summarise what they parsed anyway, or small JSON bodies; a
//! refused call never reaches its handler, so it is recorded without a
//! summary.

use super::error::ApiError;
use super::extract::{raw_id_param, ApiQuery};
use super::request_id::RequestId;
use super::AppState;
use crate::audit::{summarize, AuditEntry, AuditLog};
use crate::store::AuditFilter;
use crate::tokens::Principal;
use axum::extract::{FromRequestParts, MatchedPath, OriginalUri, Request, State};
use axum::http::request::Parts;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use chrono::Utc;
use sbx_api::{
    AuditList, AuditQuery, CreatePtyRequest, CreateSandboxRequest, CreateSessionRequest,
    CreateTokenRequest, ExecRequest, MkdirRequest, MoveRequest, PtySize, SessionExecRequest,
    SignalRequest, StartProcessRequest, ANONYMOUS, CLIENT_CLOSED_REQUEST,
};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// The route recorded for every request through a preview, in place of
/// its path, which holds the preview's secret.
const PREVIEW_ROUTE: &str = "/p/{secret}";

/// Longest route or sandbox id recorded as sent (an unmatched path, a
/// hostile id); longer ones are cut.
const MAX_FIELD_BYTES: usize = 256;

/// The audit record of one call in the making; cheap to clone. It is
/// written once: by [`Call::finish`], or else when the last clone is
/// dropped, as a call whose client left.
#[derive(Debug, Clone)]
pub struct Call(Arc<Pending>);

#[derive(Debug)]
struct Pending {
    log: AuditLog,
    started: Instant,
    /// The MCP tool or E2B call the call was made for (see [`ViaTool`]).
    tool: OnceLock<ViaTool>,
    /// None once written.
    entry: Mutex<Option<AuditEntry>>,
}

impl Call {
    fn begin(log: AuditLog, entry: AuditEntry) -> Self {
        Self(Arc::new(Pending {
            log,
            started: Instant::now(),
            tool: OnceLock::new(),
            entry: Mutex::new(Some(entry)),
        }))
    }

    /// Starts the record of a call that has just arrived, before routing:
    /// its route is the path as sent for now (see [`record`]).
    pub fn arrive(log: AuditLog, method: &Method, path: &str, request_id: &RequestId) -> Self {
        // A preview's path holds its secret, which no record may keep.
        let path = match path.starts_with(sbx_api::PREVIEW_PATH_PREFIX) {
            true => PREVIEW_ROUTE,
            false => path,
        };
        let sandbox = path
            .strip_prefix("/v1/sandboxes/")
            .and_then(|rest| rest.split('/').next())
            .filter(|id| !id.is_empty())
            .map(cut);
        Self::begin(
            log,
            AuditEntry {
                time: Utc::now(),
                identity: ANONYMOUS.to_owned(),
                token_id: None,
                method: method.to_string(),
                route: cut(path),
                sandbox,
                summary: None,
                status: CLIENT_CLOSED_REQUEST,
                duration: Duration::ZERO,
                request_id: Some(request_id.to_string()),
            },
        )
    }

    fn update(&self, change: impl FnOnce(&mut AuditEntry)) {
        if let Some(entry) = self.0.entry().as_mut() {
            change(entry);
        }
    }

    /// Who is calling (set by `auth` before it decides).
    pub fn principal(&self, principal: &Principal) {
        self.update(|entry| {
            entry.identity = principal.name.clone();
            entry.token_id = principal.token_id.clone();
        });
    }

    /// The call came through preview `preview_id` of sandbox `sandbox`:
    /// the preview is who called.
    pub fn preview(&self, preview_id: &str, sandbox: &str) {
        let sandbox = cut(sandbox);
        self.update(|entry| {
            entry.identity = format!("preview {preview_id}");
            entry.sandbox = Some(sandbox);
        });
    }

    /// What the call asks for, without contents (see [`Summary`]).
    pub fn summary(&self, summary: impl AsRef<str>) {
        let summary = match self.0.tool.get() {
            Some(tool) => summarize(&format!("{tool}: {}", summary.as_ref())),
            None => summarize(summary.as_ref()),
        };
        self.update(|entry| entry.summary = Some(summary));
    }

    /// The sandbox the call is about, when its route does not name it (the
    /// one a create made).
    pub fn sandbox(&self, id: &str) {
        let id = cut(id);
        self.update(|entry| {
            entry.sandbox.get_or_insert(id);
        });
    }

    /// The MCP tool or E2B call the call was made for: its name opens the
    /// summary.
    fn via_tool(&self, tool: ViaTool) {
        if self.0.tool.set(tool).is_ok() {
            self.update(|entry| entry.summary = Some(tool.to_string()));
        }
    }

    /// The route template the call matched, and the sandbox it names.
    fn routed(&self, route: String, sandbox: Option<String>) {
        self.update(|entry| {
            entry.route = route;
            entry.sandbox = sandbox;
        });
    }

    /// Writes the record with the status the call was answered with.
    pub fn finish(&self, status: u16) {
        self.0.write(status);
    }

    /// Forgets the record unwritten: the call turned out to be one that is
    /// not audited (a successful scrape, see `super::metrics`).
    pub fn discard(&self) {
        self.0.entry().take();
    }
}

impl Pending {
    fn entry(&self) -> MutexGuard<'_, Option<AuditEntry>> {
        // Every update is a plain field assignment: a panic elsewhere while
        // the lock was held cannot have left the entry half-changed.
        self.entry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self, status: u16) {
        let taken = self.entry().take();
        if let Some(mut entry) = taken {
            entry.status = status;
            entry.duration = self.started.elapsed();
            self.log.record(entry);
        }
    }
}

impl Drop for Pending {
    /// The last holder is gone and no answer was recorded: the client left
    /// before one was made (or the work was cancelled with it).
    fn drop(&mut self) {
        self.write(CLIENT_CLOSED_REQUEST);
    }
}

/// Handlers take the call's record as an argument; only routes under
/// [`record`] have one.
impl<S: Send + Sync> FromRequestParts<S> for Call {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Call>()
            .cloned()
            .ok_or_else(|| ApiError::internal("a handler that audits runs outside the audit layer"))
    }
}

/// Marks a request the server sends itself for an MCP tool call (see
/// [`crate::mcp`]) or an E2B SDK call (see [`crate::e2b`]): the audit
/// record's summary starts with `mcp TOOL` or `e2b CALL`. It is a request
/// extension, which only code in this process can set; a header would let
/// any client claim to be a tool.
#[derive(Debug, Clone, Copy)]
pub struct ViaTool {
    /// `mcp` or `e2b`.
    pub surface: &'static str,
    pub name: &'static str,
}

impl ViaTool {
    pub fn mcp(tool: &'static str) -> Self {
        Self {
            surface: "mcp",
            name: tool,
        }
    }

    pub fn e2b(call: &'static str) -> Self {
        Self {
            surface: "e2b",
            name: call,
        }
    }
}

impl std::fmt::Display for ViaTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.surface, self.name)
    }
}

/// A one-line description of a request, without its contents.
pub trait Summary {
    fn summary(&self) -> String;
}

/// `echo 'a b'`: the argv as a shell would need it typed.
fn command_line(argv: &[String]) -> String {
    let quoted: Vec<String> = argv
        .iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
            if plain {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect();
    quoted.join(" ")
}

fn command(cmd: Option<&Vec<String>>, shell: Option<&String>) -> String {
    match (cmd, shell) {
        (Some(argv), _) => command_line(argv),
        (None, Some(script)) => format!("shell: {script}"),
        (None, None) => String::new(),
    }
}

impl Summary for ExecRequest {
    fn summary(&self) -> String {
        command(self.cmd.as_ref(), self.shell.as_ref())
    }
}

impl Summary for StartProcessRequest {
    fn summary(&self) -> String {
        command(self.cmd.as_ref(), self.shell.as_ref())
    }
}

impl Summary for MkdirRequest {
    fn summary(&self) -> String {
        self.path.clone()
    }
}

impl Summary for MoveRequest {
    fn summary(&self) -> String {
        format!("{} -> {}", self.from, self.to)
    }
}

impl Summary for SignalRequest {
    fn summary(&self) -> String {
        format!("signal {}", self.signal)
    }
}

impl Summary for CreatePtyRequest {
    fn summary(&self) -> String {
        match &self.cmd {
            Some(argv) => command_line(argv),
            None => "login shell".into(),
        }
    }
}

impl Summary for PtySize {
    fn summary(&self) -> String {
        format!("resize {}x{}", self.cols, self.rows)
    }
}

impl Summary for CreateSessionRequest {
    fn summary(&self) -> String {
        format!("session as {}", self.user.as_deref().unwrap_or("root"))
    }
}

impl Summary for SessionExecRequest {
    fn summary(&self) -> String {
        format!("shell: {}", self.command)
    }
}

impl Summary for CreateSandboxRequest {
    fn summary(&self) -> String {
        format!(
            "image {}",
            self.image.as_deref().unwrap_or(sbx_api::DEFAULT_IMAGE)
        )
    }
}

impl Summary for CreateTokenRequest {
    fn summary(&self) -> String {
        let scopes: Vec<&str> = self.scopes.iter().map(|scope| scope.as_str()).collect();
        let mut summary = format!("token {} scopes {}", self.name, scopes.join(","));
        if let Some(sandbox) = &self.sandbox {
            summary.push_str(&format!(" sandbox {sandbox}"));
        }
        summary
    }
}

fn cut(text: &str) -> String {
    if text.len() <= MAX_FIELD_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_FIELD_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Whether calls to `path` are audited: those under `/v1`, and every
/// request through a preview.
pub fn is_audited(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/") || path.starts_with(sbx_api::PREVIEW_PATH_PREFIX)
}

/// The middleware of every `/v1` route: completes the call's record with
/// the matched route and its sandbox (or starts one, if the router is
/// served without [`super::serve`]), and writes it when the layers and
/// handler inside answer.
pub async fn record(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    // An unmatched path has no template; the path itself (as sent, before
    // nesting stripped `/v1`) says what was tried.
    let path = match request.extensions().get::<OriginalUri>() {
        Some(OriginalUri(uri)) => uri.path().to_owned(),
        None => request.uri().path().to_owned(),
    };
    let route = match request.extensions().get::<MatchedPath>() {
        Some(matched) => matched.as_str().to_owned(),
        None => cut(&path),
    };
    let sandbox = if route.starts_with("/v1/sandboxes/{id}") {
        raw_id_param(&mut request).await.map(|id| cut(&id))
    } else {
        None
    };
    let call = match request.extensions().get::<Call>() {
        Some(call) => call.clone(),
        None => {
            let id = request.extensions().get::<RequestId>().cloned();
            let call = Call::arrive(
                state.audit.clone(),
                request.method(),
                &path,
                &id.unwrap_or_default(),
            );
            request.extensions_mut().insert(call.clone());
            call
        }
    };
    call.routed(route, sandbox);
    if let Some(tool) = request.extensions().get::<ViaTool>() {
        call.via_tool(*tool);
    }
    let response = next.run(request).await;
    call.finish(response.status().as_u16());
    response
}

/// Read the audit trail.
///
/// One record per `/v1` call, newest first.
#[utoipa::path(get, path = "/audit", tag = "audit", operation_id = "list_audit_records",
    params(AuditQuery), responses((status = 200, body = AuditList)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<AuditList>, ApiError> {
    let filter = AuditFilter {
        limit: query.effective_limit().map_err(ApiError::invalid)?,
        sandbox: query.sandbox,
        since: query.since,
    };
    let records = state.audit.query(&filter).await?;
    Ok(Json(AuditList { records }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn exec_summaries_show_the_command_and_nothing_else() {
        let mut request = ExecRequest::argv(["echo", "hello world", "it's", "--x=1"]);
        request.stdin = Some("SECRET-STDIN".into());
        request.env = BTreeMap::from([("KEY".into(), "SECRET-ENV".into())]);
        assert_eq!(request.summary(), r"echo 'hello world' 'it'\''s' --x=1");
        assert_eq!(
            ExecRequest::shell("ls | wc -l").summary(),
            "shell: ls | wc -l"
        );
        let process = StartProcessRequest {
            cmd: Some(vec!["sleep".into(), "10".into()]),
            env: BTreeMap::from([("TOKEN".into(), "SECRET".into())]),
            ..StartProcessRequest::default()
        };
        assert_eq!(process.summary(), "sleep 10");
    }

    #[test]
    fn other_summaries() {
        assert_eq!(CreateSandboxRequest::default().summary(), "image base");
        let token = CreateTokenRequest {
            name: "ci-bot".into(),
            scopes: vec![
                sbx_api::Scope::SandboxesCreate,
                sbx_api::Scope::SandboxesRead,
            ],
            ttl_s: Some(60),
            sandbox: None,
        };
        assert_eq!(
            token.summary(),
            "token ci-bot scopes sandboxes:create,sandboxes:read"
        );
        let moved = MoveRequest {
            from: "/a".into(),
            to: "/b".into(),
        };
        assert_eq!(moved.summary(), "/a -> /b");
    }

    #[test]
    fn long_fields_are_cut_at_a_character_boundary() {
        assert_eq!(cut("short"), "short");
        let long = "é".repeat(MAX_FIELD_BYTES);
        let cut = cut(&long);
        assert!(cut.len() <= MAX_FIELD_BYTES + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }

    fn log() -> AuditLog {
        let store = Arc::new(crate::store::Store::in_memory().expect("store"));
        AuditLog::start(store, None).expect("audit writer")
    }

    fn begin(log: &AuditLog) -> Call {
        Call::begin(
            log.clone(),
            AuditEntry {
                time: Utc::now(),
                identity: ANONYMOUS.to_owned(),
                token_id: None,
                method: "POST".into(),
                route: "/v1/sandboxes".into(),
                sandbox: None,
                summary: None,
                status: 0,
                duration: Duration::ZERO,
                request_id: Some("0123456789abcdef".into()),
            },
        )
    }

    async fn all(log: &AuditLog) -> Vec<sbx_api::AuditRecord> {
        let filter = AuditFilter {
            limit: 100,
            ..AuditFilter::default()
        };
        log.query(&filter).await.expect("query")
    }

    #[tokio::test]
    async fn an_answered_call_is_recorded_once_with_its_status() {
        let log = log();
        let call = begin(&log);
        call.principal(&Principal::admin());
        call.summary("image base");
        let kept = call.clone();
        call.finish(201);
        call.finish(500);
        kept.sandbox("aaaa");
        drop((call, kept));
        let records = all(&log).await;
        assert_eq!(records.len(), 1, "{records:?}");
        let record = &records[0];
        assert_eq!(record.status, 201);
        assert_eq!(record.identity, "admin");
        assert_eq!(record.summary.as_deref(), Some("image base"));
        assert_eq!(record.sandbox, None, "nothing changes once written");
        assert_eq!(record.request_id.as_deref(), Some("0123456789abcdef"));
    }

    #[tokio::test]
    async fn a_call_nobody_answered_is_recorded_as_client_closed_when_let_go() {
        let log = log();
        let call = begin(&log);
        call.summary("image base");
        let detached = call.clone();
        drop(call);
        assert!(all(&log).await.is_empty(), "detached work still holds it");
        detached.sandbox("aaaa");
        drop(detached);
        let records = all(&log).await;
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(records[0].status, CLIENT_CLOSED_REQUEST);
        assert_eq!(records[0].sandbox.as_deref(), Some("aaaa"));
        assert_eq!(records[0].identity, ANONYMOUS);
    }

    #[tokio::test]
    async fn a_call_dropped_before_routing_keeps_its_path_and_sandbox() {
        let log = log();
        let id = RequestId::new();
        let call = Call::arrive(log.clone(), &Method::DELETE, "/v1/sandboxes/aaaa", &id);
        drop(call);
        let records = all(&log).await;
        assert_eq!(records.len(), 1, "{records:?}");
        let record = &records[0];
        assert_eq!(record.status, CLIENT_CLOSED_REQUEST);
        assert_eq!(record.method, "DELETE");
        assert_eq!(record.route, "/v1/sandboxes/aaaa");
        assert_eq!(record.sandbox.as_deref(), Some("aaaa"));
        assert_eq!(record.request_id.as_deref(), Some(id.as_str()));

        let routed = Call::arrive(log.clone(), &Method::GET, "/v1/sandboxes/bbbb/files", &id);
        routed.routed("/v1/sandboxes/{id}/files".into(), Some("bbbb".into()));
        routed.finish(200);
        let records = all(&log).await;
        assert_eq!(records[0].route, "/v1/sandboxes/{id}/files");
        assert_eq!(records[0].status, 200);
        assert!(is_audited("/v1") && is_audited("/v1/info"));
        assert!(!is_audited("/health") && !is_audited("/v10") && !is_audited("/"));
    }
}

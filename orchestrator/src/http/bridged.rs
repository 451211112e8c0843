//! Routes served inside the sandbox by its agent: processes, files and
//! archives are forwarded as they are (see [`crate::bridge`]); exec is
//! validated here first, so a bad request never reaches the sandbox.
//!
//! Each handler also leaves the audit trail a summary (see
//! [`super::audit`]), before it forwards anything, so that a call whose
//! client leaves half-way is recorded with it: the command of an exec or a
//! new process, the path of a file call, the pid of a process call. Small
//! JSON bodies (start a process, mkdir, move, signal) are read here to
//! summarise them and then forwarded byte for byte; uploads keep streaming
//! and are never read.
//!
//! The agent's error bodies are the API's own ([`ErrorBody`]); the call's
//! request id is added to them on the way out, as to every error body.

use super::audit_trail::{Call, Summary};
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::request_id::RequestId;
use super::AppState;
use crate::bridge::{self, Forwarded, Passing};
use crate::metrics::Transfer;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use sbx_api::{
    ArchiveSummary, ErrorBody, ExecEvent, ExecRequest, ExecResult, FileInfo, FileList,
    KillAllResult, LogsQuery, MkdirRequest, MoveRequest, PortPath, ProcessInfo, ProcessList,
    ProcessPath, PtyPath, SandboxPath, SessionPath, SignalRequest, StartProcessRequest, StdinQuery,
};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::time::Instant;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Largest agent error body given the request id; a larger one (which the
/// agent never sends) is passed on as it is.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// The routes, each with its OpenAPI description: registered through
/// `utoipa_axum`, a route cannot be served without being in the spec.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(exec))
        .routes(routes!(list_processes, start_process))
        .routes(routes!(kill_all))
        .routes(routes!(get_process))
        .routes(routes!(process_logs))
        .routes(routes!(write_stdin))
        .routes(routes!(signal_process))
        .routes(routes!(wait_process))
        .routes(routes!(read_file, write_file, remove_file))
        .routes(routes!(stat_file))
        .routes(routes!(list_files))
        .routes(routes!(make_dir))
        .routes(routes!(move_file))
        .routes(routes!(download_archive, upload_archive))
}

/// Run a command to completion.
///
/// Answers with its result, or, with `Accept: application/x-ndjson` (or
/// `"stream": true`), streams its events as they happen: one `start`,
/// `stdout`/`stderr` chunks, one `exit` last.
#[utoipa::path(post, path = "/sandboxes/{id}/exec", tag = "exec", operation_id = "exec",
    params(SandboxPath), request_body = ExecRequest,
    responses((status = 200, content(
        (ExecResult = "application/json"),
        (ExecEvent = "application/x-ndjson"),
    ), description = "The result, or an NDJSON stream of events, one per line")))]
async fn exec(
    State(state): State<AppState>,
    call: Call,
    ApiPath(SandboxPath { id }): ApiPath<SandboxPath>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<ExecRequest>,
) -> Result<Response, ApiError> {
    call.summary(request.summary());
    forward_exec(&state, &id, &headers, request).await
}

/// Declares a handler that forwards its route to the sandbox's agent
/// through `$via`: [`forward`] as it is, or [`forward_json`] reading a
/// small JSON body first to summarise it. The `#[utoipa::path]` above
/// each is its contract.
macro_rules! forwarded {
    ($(#[$meta:meta])* $name:ident($path:ty) => $via:expr) => {
        $(#[$meta])*
        async fn $name(
            State(state): State<AppState>,
            call: Call,
            ApiPath(path): ApiPath<$path>,
            request: Request,
        ) -> Result<Response, ApiError> {
            $via(&state, &call, path.into(), request).await
        }
    };
}
pub(super) use forwarded;

forwarded! {
    /// List background processes.
    ///
    /// The sandbox's background processes, running and exited.
    #[utoipa::path(get, path = "/sandboxes/{id}/processes", tag = "processes",
        operation_id = "list_processes", params(SandboxPath),
        responses((status = 200, body = ProcessList)))]
    list_processes(SandboxPath) => forward
}

forwarded! {
    /// Start a background process.
    ///
    /// It outlives this call. Its output is kept (the last 1 MiB of each
    /// stream) for `logs`.
    #[utoipa::path(post, path = "/sandboxes/{id}/processes", tag = "processes",
        operation_id = "start_process", params(SandboxPath), request_body = StartProcessRequest,
        responses((status = 201, body = ProcessInfo)))]
    start_process(SandboxPath) => forward_json::<StartProcessRequest>
}

forwarded! {
    /// Kill every process in the sandbox.
    ///
    /// Every process but the sandbox's agent is killed and reaped; exec
    /// works again at once.
    #[utoipa::path(post, path = "/sandboxes/{id}/processes/kill-all", tag = "processes",
        operation_id = "kill_all_processes", params(SandboxPath),
        responses((status = 200, body = KillAllResult)))]
    kill_all(SandboxPath) => forward
}

forwarded! {
    /// Get a background process.
    #[utoipa::path(get, path = "/sandboxes/{id}/processes/{pid}", tag = "processes",
        operation_id = "get_process", params(ProcessPath),
        responses((status = 200, body = ProcessInfo)))]
    get_process(ProcessPath) => forward
}

forwarded! {
    /// A process's output.
    ///
    /// An NDJSON stream of events: the output kept so far, then, with
    /// `follow=true`, output as it happens and an `exit` last.
    #[utoipa::path(get, path = "/sandboxes/{id}/processes/{pid}/logs", tag = "processes",
        operation_id = "process_logs", params(ProcessPath, LogsQuery),
        responses((status = 200, body = ExecEvent, content_type = "application/x-ndjson",
            description = "NDJSON: one event per line")))]
    process_logs(ProcessPath) => forward
}

forwarded! {
    /// Write to a process's stdin.
    ///
    /// The raw body is written; `close=true` closes stdin afterwards.
    #[utoipa::path(post, path = "/sandboxes/{id}/processes/{pid}/stdin", tag = "processes",
        operation_id = "write_stdin", params(ProcessPath, StdinQuery),
        request_body(content(("application/octet-stream"))),
        responses((status = 204, description = "Written")))]
    write_stdin(ProcessPath) => forward
}

forwarded! {
    /// Signal a process.
    ///
    /// The signal goes to the process's whole process group.
    #[utoipa::path(post, path = "/sandboxes/{id}/processes/{pid}/signal", tag = "processes",
        operation_id = "signal_process", params(ProcessPath), request_body = SignalRequest,
        responses((status = 204, description = "Sent")))]
    signal_process(ProcessPath) => forward_json::<SignalRequest>
}

forwarded! {
    /// Wait for a process to exit.
    ///
    /// Answers once the process has exited.
    #[utoipa::path(get, path = "/sandboxes/{id}/processes/{pid}/wait", tag = "processes",
        operation_id = "wait_process", params(ProcessPath),
        responses((status = 200, body = ProcessInfo)))]
    wait_process(ProcessPath) => forward
}

forwarded! {
    /// Read a file.
    ///
    /// The file's contents, as raw bytes.
    #[utoipa::path(get, path = "/sandboxes/{id}/files", tag = "files",
        operation_id = "read_file", params(SandboxPath, ("path" = String, Query, pattern = "^/", description = "An absolute path inside the sandbox")),
        responses((status = 200, content(("application/octet-stream")),
            description = "The file's bytes")))]
    read_file(SandboxPath) => forward
}

forwarded! {
    /// Write a file.
    ///
    /// The raw body becomes the file, atomically (readers see the old or
    /// the new contents); missing parent directories are created.
    #[utoipa::path(put, path = "/sandboxes/{id}/files", tag = "files",
        operation_id = "write_file", params(SandboxPath, ("path" = String, Query, pattern = "^/", description = "An absolute path inside the sandbox"), ("mode" = Option<String>, Query, pattern = "^(0o)?0*[0-7]{1,4}$", description = "Octal permission bits of the new file (default 0644)"), ("owner" = Option<String>, Query, description = "Who owns the file and the directories made for it, as `user[:group]` (default: the agent's user)")),
        request_body(content(("application/octet-stream"))),
        responses((status = 200, body = FileInfo)))]
    write_file(SandboxPath) => forward
}

forwarded! {
    /// Remove a file or directory.
    ///
    /// A directory needs `recursive=true`. Symlinks are not followed.
    #[utoipa::path(delete, path = "/sandboxes/{id}/files", tag = "files",
        operation_id = "remove_file", params(SandboxPath, ("path" = String, Query, pattern = "^/", description = "An absolute path inside the sandbox"), ("recursive" = Option<bool>, Query, description = "Required to remove a directory")),
        responses((status = 204, description = "Removed")))]
    remove_file(SandboxPath) => forward
}

forwarded! {
    /// A path's metadata.
    ///
    /// A symlink is not followed.
    #[utoipa::path(get, path = "/sandboxes/{id}/files/stat", tag = "files",
        operation_id = "stat_file", params(SandboxPath, ("path" = String, Query, pattern = "^/", description = "An absolute path inside the sandbox")),
        responses((status = 200, body = FileInfo)))]
    stat_file(SandboxPath) => forward
}

forwarded! {
    /// List a directory.
    ///
    /// Its entries, `depth` levels down (default 1).
    #[utoipa::path(get, path = "/sandboxes/{id}/files/list", tag = "files",
        operation_id = "list_files", params(SandboxPath, ("path" = String, Query, pattern = "^/", description = "An absolute path inside the sandbox"), ("depth" = Option<u32>, Query, minimum = 1, maximum = 64, description = "How many levels to descend (default 1)")),
        responses((status = 200, body = FileList)))]
    list_files(SandboxPath) => forward
}

forwarded! {
    /// Make a directory.
    ///
    /// Missing parents are made too, like `mkdir -p`.
    #[utoipa::path(post, path = "/sandboxes/{id}/files/mkdir", tag = "files",
        operation_id = "make_dir", params(SandboxPath), request_body = MkdirRequest,
        responses((status = 200, body = FileInfo)))]
    make_dir(SandboxPath) => forward_json::<MkdirRequest>
}

forwarded! {
    /// Move or rename a path.
    ///
    /// Like `mv`.
    #[utoipa::path(post, path = "/sandboxes/{id}/files/move", tag = "files",
        operation_id = "move_file", params(SandboxPath), request_body = MoveRequest,
        responses((status = 204, description = "Moved")))]
    move_file(SandboxPath) => forward_json::<MoveRequest>
}

forwarded! {
    /// Download a directory.
    ///
    /// The directory as a tar stream.
    #[utoipa::path(get, path = "/sandboxes/{id}/archive", tag = "files",
        operation_id = "download_archive", params(SandboxPath, ("path" = String, Query, pattern = "^/", description = "An absolute path inside the sandbox")),
        responses((status = 200, content(("application/x-tar")),
            description = "A tar stream of the directory")))]
    download_archive(SandboxPath) => forward
}

forwarded! {
    /// Upload a directory.
    ///
    /// The tar stream in the body is extracted into the directory. Entries
    /// that would land outside it (absolute paths, `..`, links) are
    /// refused.
    #[utoipa::path(put, path = "/sandboxes/{id}/archive", tag = "files",
        operation_id = "upload_archive", params(SandboxPath, ("path" = String, Query, pattern = "^/", description = "An absolute path inside the sandbox")),
        request_body(content(("application/x-tar"))),
        responses((status = 200, body = ArchiveSummary)))]
    upload_archive(SandboxPath) => forward
}

/// Which sandbox a forwarded call is about, and what in it: a process, a
/// terminal, a session or a port, named for the audit trail.
pub(super) struct Target {
    pub id: String,
    pub about: Option<String>,
}

impl From<SandboxPath> for Target {
    fn from(SandboxPath { id }: SandboxPath) -> Self {
        Self { id, about: None }
    }
}

impl From<ProcessPath> for Target {
    fn from(ProcessPath { id, pid }: ProcessPath) -> Self {
        let about = Some(format!("pid {pid}"));
        Self { id, about }
    }
}

impl From<PtyPath> for Target {
    fn from(PtyPath { id, tid }: PtyPath) -> Self {
        let about = Some(format!("terminal {tid}"));
        Self { id, about }
    }
}

impl From<SessionPath> for Target {
    fn from(SessionPath { id, sid }: SessionPath) -> Self {
        let about = Some(format!("session {sid}"));
        Self { id, about }
    }
}

impl From<PortPath> for Target {
    fn from(PortPath { id, port }: PortPath) -> Self {
        let about = Some(format!("port {port}"));
        Self { id, about }
    }
}

async fn forward_exec(
    state: &AppState,
    id: &str,
    headers: &HeaderMap,
    request: ExecRequest,
) -> Result<Response, ApiError> {
    request.validate().map_err(ApiError::invalid)?;
    let body = serde_json::to_vec(&request).map_err(|err| ApiError::invalid(err.to_string()))?;
    let mut forwarded = HeaderMap::new();
    forwarded.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if let Some(accept) = headers.get(header::ACCEPT) {
        forwarded.insert(header::ACCEPT, accept.clone());
    }
    let started = Instant::now();
    let call = Forwarded {
        method: Method::POST,
        agent_path: "/exec",
        headers: &forwarded,
        body: Body::from(body),
        passing: Passing::Api,
        upgrade: None,
    };
    let response = bridge::forward(&state.manager, id, call).await?;
    state.metrics.exec_answered(&response, started.elapsed());
    Ok(with_request_id(response).await)
}

/// What a forwarded call is about: what its route names (a process, a
/// terminal…), else the `path` of a file, archive or watch call.
fn forwarded_summary(parts: &Parts, about: Option<String>) -> Option<String> {
    if about.is_some() {
        return about;
    }
    let query = Query::<HashMap<String, String>>::try_from_uri(&parts.uri).ok()?;
    query.0.get("path").cloned()
}

/// Forwards `/v1/sandboxes/{id}/REST?QUERY` to the agent's `/REST?QUERY`,
/// streaming the body.
pub(super) async fn forward(
    state: &AppState,
    call: &Call,
    target: Target,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    if let Some(summary) = forwarded_summary(&parts, target.about) {
        call.summary(summary);
    }
    forward_parts(state, &target.id, parts, body, Passing::Api).await
}

/// Like [`forward`], for routes whose small JSON body says what the call
/// does: the body is read (within the default body limit), summarised if
/// it parses (the agent judges it either way), and forwarded unchanged.
pub(super) async fn forward_json<T: DeserializeOwned + Summary>(
    state: &AppState,
    call: &Call,
    target: Target,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let body = Bytes::from_request(Request::from_parts(parts.clone(), body), state).await?;
    let parsed = serde_json::from_slice::<T>(&body).ok();
    let summary: Vec<String> = [target.about, parsed.map(|request| request.summary())]
        .into_iter()
        .flatten()
        .collect();
    if !summary.is_empty() {
        call.summary(summary.join(" "));
    }
    forward_parts(state, &target.id, parts, Body::from(body), Passing::Api).await
}

pub(super) async fn forward_parts(
    state: &AppState,
    id: &str,
    mut parts: Parts,
    body: Body,
    passing: Passing,
) -> Result<Response, ApiError> {
    // Routes are nested under /v1, so the path here is /sandboxes/ID/REST,
    // with ID as sent: percent-encoded, unlike the decoded `id`, so it is
    // skipped as a segment rather than matched.
    let rest = parts
        .uri
        .path()
        .strip_prefix("/sandboxes/")
        .and_then(|tail| tail.find('/').map(|slash| &tail[slash..]))
        .ok_or_else(|| ApiError::invalid("unexpected route"))?;
    let agent_path = match parts.uri.query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_owned(),
    };
    let counted = state
        .metrics
        .file_bytes(Transfer::of(&parts.method, &agent_path));
    let upgrade = client_upgrade(&mut parts);
    let call = Forwarded {
        method: parts.method,
        agent_path: &agent_path,
        headers: &parts.headers,
        body: counted.request(body),
        passing,
        upgrade,
    };
    let response = bridge::forward(&state.manager, id, call).await?;
    Ok(with_request_id(counted.response(response)).await)
}

/// The client's side of the upgrade its request asks for, if it asks.
fn client_upgrade(parts: &mut Parts) -> Option<OnUpgrade> {
    parts
        .headers
        .contains_key(header::UPGRADE)
        .then(|| parts.extensions.remove::<OnUpgrade>())
        .flatten()
}

/// The agent's response, with the call's request id added to its error
/// body if it has one.
async fn with_request_id(response: Response) -> Response {
    let status = response.status();
    let small = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|length| length <= MAX_ERROR_BODY_BYTES);
    let id = match RequestId::current() {
        Some(id) if small && (status.is_client_error() || status.is_server_error()) => id,
        _ => return response,
    };
    let (mut parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_ERROR_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(err) => {
            return ApiError::internal(format!("cannot read an agent's error body: {err}"))
                .into_response()
        }
    };
    let Ok(body) = serde_json::from_slice::<ErrorBody>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    // Read by the layer that counts errors (`super::metrics`).
    parts.extensions.insert(body.error_code);
    let json = serde_json::to_vec(&body.with_request_id(Some(id.to_string())))
        .expect("an error body always serializes");
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(json))
}

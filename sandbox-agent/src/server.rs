//! The HTTP side: routes, the JSON extractor, readiness and shutdown.
//!
//! In a sandbox the listener comes from the orchestrator ([`crate::handoff`])
//! and readiness is the orchestrator's first answered request. Run by hand,
//! the agent binds its socket itself and readiness is the socket's
//! existence: we bind and listen under a temporary name in the same
//! directory and `rename` it into place, which is atomic, so the name
//! appears only once a `connect` will succeed.
//!
//! Shutdown (SIGTERM, or SIGINT by hand): stop starting processes, SIGTERM
//! every process group the agent started (execs, streams and background
//! processes alike: all are the reaper's children) and, as PID 1, every
//! process in the sandbox, give them up to [`STOP_GRACE`] to go, SIGKILL
//! what is left, let in-flight replies go out for a moment, remove the
//! socket (when the agent bound it), exit 0.
//!
//! On a cluster the agent listens on TCP, on loopback inside the sandbox's
//! network namespace, and serves only requests carrying its key
//! ([`require_key`]).

use crate::error::AgentError;
use crate::events::ndjson_response;
use crate::process::signal_group;
use crate::{exec, processes, stream, Agent, AgentKey, Listen};
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::header::ACCEPT;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sbx_api::{ExecRequest, NDJSON};
use serde::de::DeserializeOwned;
use std::future::IntoFuture;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, Signal as SignalStream, SignalKind};
use tokio::time::Instant;

/// Largest request body accepted. Exec stdin travels in the JSON body, so
/// this is deliberately larger than axum's 2 MiB default.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// How long children get between SIGTERM and SIGKILL at shutdown.
pub const STOP_GRACE: Duration = Duration::from_secs(1);

/// How long in-flight replies may take to go out once children are gone.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// The routes, with `agent` as state.
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/exec", post(exec_handler))
        .merge(processes::routes())
        .merge(crate::files::router())
        .merge(crate::layer::routes())
        .merge(crate::pty::routes())
        .merge(crate::session::routes())
        .merge(crate::watch::routes())
        .merge(crate::ports::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(crate::unread_body::layer))
        .with_state(agent)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Buffered, or streamed (see [`stream`]) when the body says `stream` or
/// the client accepts NDJSON.
async fn exec_handler(
    State(agent): State<Arc<Agent>>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<ExecRequest>,
) -> Result<Response, AgentError> {
    request.validate().map_err(AgentError::InvalidRequest)?;
    if request.stream || accepts_ndjson(&headers) {
        return Ok(ndjson_response(stream::start(&agent, request)?));
    }
    Ok(Json(exec::run(&agent, request).await?).into_response())
}

fn accepts_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|range| range.split(';').next().map(str::trim) == Some(NDJSON))
}

async fn not_found(method: Method, uri: Uri) -> AgentError {
    AgentError::RouteNotFound {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> AgentError {
    AgentError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

/// A JSON body whose every failure (too big, unreadable, not JSON, wrong
/// shape) is an [`AgentError`], unlike axum's `Json`, which answers in plain
/// text. The content type is not checked: `curl -d` works too.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AgentError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    AgentError::PayloadTooLarge {
                        limit: MAX_BODY_BYTES,
                    }
                } else {
                    AgentError::InvalidRequest(format!(
                        "cannot read request body: {}",
                        rejection.body_text()
                    ))
                }
            })?;
        sbx_api::from_json_object(&bytes)
            .map(JsonBody)
            .map_err(AgentError::InvalidRequest)
    }
}

/// A listener the agent serves on.
#[derive(Debug)]
pub enum Bound {
    Unix(std::os::unix::net::UnixListener),
    Tcp(std::net::TcpListener),
}

/// Binds `addr` for [`crate::Listen::Tcp`].
pub fn listen_tcp(addr: SocketAddr) -> Result<std::net::TcpListener, AgentError> {
    std::net::TcpListener::bind(addr).map_err(|source| AgentError::Listen {
        path: PathBuf::from(addr.to_string()),
        source,
    })
}

/// Refuses (401) a request that does not carry the agent's key in
/// `sbx_api::AGENT_KEY_HEADER`, and removes the header from one that does:
/// a request proxied on to a server in the sandbox must not take it along.
pub async fn require_key(
    State(key): State<AgentKey>,
    mut request: Request,
    next: axum::middleware::Next,
) -> Response {
    let offered = request.headers_mut().remove(sbx_api::AGENT_KEY_HEADER);
    match offered {
        Some(value) if key.matches(value.as_bytes()) => next.run(request).await,
        _ => AgentError::Unauthorized.into_response(),
    }
}

/// Serves on `listener` until SIGTERM/SIGINT, then shuts down as the module
/// docs say.
pub async fn serve(agent: Arc<Agent>, listener: Bound) -> Result<(), AgentError> {
    // Handlers first: as PID 1 an unhandled SIGTERM is simply ignored, and
    // the orchestrator may send it as soon as the socket appears.
    let signals = Signals {
        sigterm: install(SignalKind::terminate(), "SIGTERM")?,
        sigint: install(SignalKind::interrupt(), "SIGINT")?,
    };
    let socket = match &agent.config.listen {
        Listen::Path(path) => Some(path.clone()),
        Listen::Handoff(_) | Listen::Tcp { .. } => None,
    };
    let listen_error = |source| AgentError::Listen {
        path: socket.clone().unwrap_or_default(),
        source,
    };
    let routes = router(Arc::clone(&agent));
    match (listener, &agent.config.listen) {
        (Bound::Tcp(listener), Listen::Tcp { key, .. }) => {
            listener.set_nonblocking(true).map_err(listen_error)?;
            let listener = TcpListener::from_std(listener).map_err(listen_error)?;
            let routes = routes.layer(axum::middleware::from_fn_with_state(
                key.clone(),
                require_key,
            ));
            tracing::info!(addr = ?listener.local_addr().ok(), pid = std::process::id(), "agent ready");
            serve_until_signalled(&agent, listener, routes, signals).await
        }
        (Bound::Tcp(_), _) => Err(listen_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a TCP listener needs a key",
        ))),
        (Bound::Unix(listener), _) => {
            listener.set_nonblocking(true).map_err(listen_error)?;
            let listener = UnixListener::from_std(listener).map_err(listen_error)?;
            tracing::info!(socket = ?socket, pid = std::process::id(), "agent ready");
            let result = serve_until_signalled(&agent, listener, routes, signals).await;
            remove_socket(socket.as_deref());
            result
        }
    }
}

struct Signals {
    sigterm: SignalStream,
    sigint: SignalStream,
}

async fn serve_until_signalled<L>(
    agent: &Arc<Agent>,
    listener: L,
    routes: Router,
    mut signals: Signals,
) -> Result<(), AgentError>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, routes)
        .with_graceful_shutdown(async {
            let _ = stop_rx.await;
        })
        .into_future();
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result.map_err(AgentError::Serve),
        _ = signals.sigterm.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = signals.sigint.recv() => tracing::info!("SIGINT received, shutting down"),
    }

    stop_children(agent).await;
    let _ = stop_tx.send(());
    if tokio::time::timeout(DRAIN_GRACE, &mut server)
        .await
        .is_err()
    {
        tracing::warn!("connections still open at exit");
    }
    tracing::info!("agent stopped");
    Ok(())
}

fn install(kind: SignalKind, name: &'static str) -> Result<SignalStream, AgentError> {
    signal(kind).map_err(|source| AgentError::Signal {
        signal: name,
        source,
    })
}

/// Binds under a temporary name and renames into place, so `path` appears
/// only once connections are accepted.
pub fn listen_ready(path: &Path) -> Result<std::os::unix::net::UnixListener, AgentError> {
    let listen_error = |source| AgentError::Listen {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        listen_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file name",
        ))
    })?;
    std::fs::create_dir_all(&dir).map_err(listen_error)?;
    let temporary = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    // Left behind by an earlier agent with the same pid (always 1 in a
    // sandbox) that was killed before renaming.
    remove_if_present(&temporary).map_err(listen_error)?;
    let listener = std::os::unix::net::UnixListener::bind(&temporary).map_err(listen_error)?;
    // rename(2) replaces a stale socket at `path` atomically.
    if let Err(err) = std::fs::rename(&temporary, path) {
        let _ = std::fs::remove_file(&temporary);
        return Err(listen_error(err));
    }
    Ok(listener)
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

fn remove_socket(path: Option<&Path>) {
    let Some(path) = path else { return };
    if let Err(err) = remove_if_present(path) {
        tracing::warn!(socket = %path.display(), %err, "cannot remove socket");
    }
}

/// SIGTERM, grace, SIGKILL for everything the agent started.
async fn stop_children(agent: &Agent) {
    let groups = agent.reaper.close();
    let is_init = std::process::id() == 1;
    tracing::info!(groups = groups.len(), "stopping children");
    for &pgid in &groups {
        signal_group(pgid, Signal::SIGTERM);
    }
    // Only as PID 1 is "every process" the sandbox; on a host it would be
    // the whole machine.
    if is_init {
        let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while agent.reaper.live_count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Also reaches background members of groups whose leader already left.
    for &pgid in &groups {
        signal_group(pgid, Signal::SIGKILL);
    }
    if is_init {
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    }
}

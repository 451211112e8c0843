//! The agent's one error type, and the one place it becomes an HTTP answer.
//!
//! Every failure a handler can meet is an [`AgentError`]; its
//! [`IntoResponse`] impl picks the status and the stable
//! [`ErrorCode`](sbx_api::ErrorCode), so no handler writes a status code by
//! hand and every error reaches the client as an [`ErrorBody`] — including
//! bad JSON, unknown routes and wrong methods, which axum would otherwise
//! answer in plain text. Start-up failures (socket, signals, runtime) share
//! the enum so `run` has a single error type too.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sbx_api::{ErrorBody, ErrorCode};
use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The request is malformed or names something unusable; the message
    /// names the field or path.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("no route for {method} {path}")]
    RouteNotFound { method: String, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    /// `user` names nobody in the sandbox's `/etc/passwd`.
    #[error("user {user:?} is not in /etc/passwd")]
    UnknownUser { user: String },
    /// An archive upload's `owner` names an unknown user or group, or is
    /// not `user[:group]`.
    #[error("owner {owner:?} does not resolve: {reason}")]
    UnknownOwner { owner: String, reason: String },
    /// `GET /layer/changes` before any `POST /layer/baseline`.
    #[error("no layer baseline was recorded (POST /layer/baseline first)")]
    NoLayerBaseline,
    /// A background process's program cannot be run (missing, not
    /// executable); buffered and streamed execs report this as exit 126/127
    /// instead, as a shell does.
    #[error("cannot run {program}: {reason}")]
    NotRunnable { program: String, reason: String },
    #[error("unknown signal {signal:?}")]
    UnknownSignal { signal: String },
    #[error("no process with pid {pid}")]
    ProcessNotFound { pid: i32 },
    /// The call needs a running process (signal, stdin).
    #[error("process {pid} has exited")]
    ProcessExited { pid: i32 },
    /// Closed by an earlier `?close=true`, or by the process itself.
    #[error("stdin of process {pid} is closed")]
    StdinClosed { pid: i32 },
    #[error("cannot write to the stdin of process {pid}: {source}")]
    Stdin {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("cannot send {signal} to process group {pid}: {source}")]
    SendSignal {
        pid: i32,
        signal: &'static str,
        #[source]
        source: nix::errno::Errno,
    },
    /// SIGTERM arrived: the agent refuses new processes while it stops.
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// A request to a TCP agent without its key.
    #[error("this agent serves only its orchestrator")]
    Unauthorized,
    /// fork/exec failed for a reason that is not the program's fault
    /// (no pids or fds left, out of memory…).
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    /// The process started but its pipes could not join the event loop.
    #[error("cannot watch the output of pid {pid}: {source}")]
    Pipe {
        pid: i32,
        #[source]
        source: io::Error,
    },
    /// The reaper stopped before reporting this child's exit (a bug).
    #[error("exit status of pid {pid} was lost")]
    ExitLost { pid: i32 },
    #[error("cannot listen on {}: {source}", path.display())]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{left} processes were still alive after kill-all")]
    KillAll { left: usize },
    #[error("cannot receive the listener through {}: {source}", path.display())]
    Handoff {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {addr} for the egress relay: {source}")]
    EgressListen {
        addr: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot install the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("the http server failed: {0}")]
    Serve(#[source] io::Error),
    /// A file-system call failed; the code follows the errno (see
    /// [`io_error_code`]). `path` is the path inside the sandbox.
    #[error("cannot {op} {path}: {}", crate::fs_safe::describe(source))]
    File {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    /// The path exists but is the wrong kind of file for the call.
    #[error("cannot {op} {path}: {reason}")]
    FileConflict {
        op: &'static str,
        path: String,
        reason: &'static str,
    },
    /// The kernel's inotify limits (instances or watches per user) are
    /// reached: other watches must end first.
    #[error(
        "cannot watch {path}: the inotify limits are reached ({})",
        crate::fs_safe::describe(source)
    )]
    WatchLimit {
        path: String,
        #[source]
        source: io::Error,
    },
    /// A proxied request or tunnel found no server on the sandbox's port,
    /// or one that did not answer HTTP. Answered 502, as a gateway does:
    /// the agent is up, the sandbox's own server is not.
    #[error("cannot reach port {port}: {reason}")]
    PortUnreachable { port: u16, reason: String },
    /// `GET /ports/{port}/wait` timed out.
    #[error("nothing listens on port {port} after {waited_ms} ms")]
    PortNotListening { port: u16, waited_ms: u64 },
    /// No terminal with this id: never created, or deleted.
    #[error("no terminal with id {id:?}")]
    TerminalNotFound { id: String },
    /// The call needs a terminal whose command still runs (resize).
    #[error("the command of terminal {id:?} has exited")]
    TerminalExited { id: String },
    /// No session with this id: never created, ended by `exit`, or
    /// deleted.
    #[error("no session with id {id:?}")]
    SessionNotFound { id: String },
    /// A session runs one command at a time.
    #[error("session {id:?} is already running a command")]
    SessionBusy { id: String },
    /// A signal for a session that runs no command.
    #[error("session {id:?} is not running a command")]
    SessionIdle { id: String },
    /// The agent already keeps as many terminals or sessions as it allows.
    #[error("too many {what}: the limit is {limit}, delete one first")]
    TooManyShells { what: &'static str, limit: usize },
    /// A terminal or session could not be set up or driven (a pty, a
    /// fifo, its private directory).
    #[error("cannot {op}: {source}")]
    ShellSetup {
        op: String,
        #[source]
        source: io::Error,
    },
}

impl AgentError {
    /// The stable code clients branch on.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            AgentError::InvalidRequest(_)
            | AgentError::UnknownUser { .. }
            | AgentError::UnknownOwner { .. }
            | AgentError::NotRunnable { .. }
            | AgentError::UnknownSignal { .. } => ErrorCode::InvalidRequest,
            AgentError::ProcessNotFound { .. } => ErrorCode::NotFound,
            AgentError::ProcessExited { .. }
            | AgentError::StdinClosed { .. }
            | AgentError::NoLayerBaseline => ErrorCode::Conflict,
            AgentError::MethodNotAllowed { .. } => ErrorCode::MethodNotAllowed,
            AgentError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            AgentError::RouteNotFound { .. } => ErrorCode::NotFound,
            AgentError::ShuttingDown => ErrorCode::Unavailable,
            AgentError::Unauthorized => ErrorCode::Unauthorized,
            AgentError::WatchLimit { .. }
            | AgentError::PortUnreachable { .. }
            | AgentError::PortNotListening { .. } => ErrorCode::Unavailable,
            AgentError::TerminalNotFound { .. } | AgentError::SessionNotFound { .. } => {
                ErrorCode::NotFound
            }
            AgentError::TerminalExited { .. }
            | AgentError::SessionBusy { .. }
            | AgentError::SessionIdle { .. }
            | AgentError::TooManyShells { .. } => ErrorCode::Conflict,
            AgentError::ShellSetup { .. } => ErrorCode::Internal,
            AgentError::File { source, .. } => io_error_code(source),
            AgentError::FileConflict { .. } => ErrorCode::Conflict,
            AgentError::Spawn { .. }
            | AgentError::Stdin { .. }
            | AgentError::SendSignal { .. }
            | AgentError::Pipe { .. }
            | AgentError::ExitLost { .. }
            | AgentError::Listen { .. }
            | AgentError::Handoff { .. }
            | AgentError::KillAll { .. }
            | AgentError::EgressListen { .. }
            | AgentError::Signal { .. }
            | AgentError::Runtime(_)
            | AgentError::Serve(_) => ErrorCode::Internal,
        }
    }

    /// The HTTP status, fixed by the code in `sbx-api`.
    pub fn status(&self) -> StatusCode {
        // The one status the code does not fix (see the variant).
        if let AgentError::PortUnreachable { .. } = self {
            return StatusCode::BAD_GATEWAY;
        }
        StatusCode::from_u16(self.error_code().http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// The error code of a failed file-system call, by errno: what the caller
/// can fix (missing path, wrong kind of file, full disk) is a 4xx. A
/// socket or a device without a driver opened as a file (`/dev/fd/N` of a
/// socket gives ENXIO) is the wrong kind of file too.
fn io_error_code(err: &io::Error) -> ErrorCode {
    match err.raw_os_error() {
        Some(libc::ENOENT) => ErrorCode::NotFound,
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => ErrorCode::PermissionDenied,
        Some(
            libc::EEXIST
            | libc::ENOTEMPTY
            | libc::EISDIR
            | libc::ENOTDIR
            | libc::EBUSY
            | libc::EXDEV
            | libc::ETXTBSY
            | libc::EMLINK
            | libc::ENXIO
            | libc::ENODEV,
        ) => ErrorCode::Conflict,
        Some(libc::ENAMETOOLONG | libc::ELOOP | libc::EINVAL) => ErrorCode::InvalidRequest,
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => ErrorCode::PayloadTooLarge,
        _ => ErrorCode::Internal,
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, "request rejected");
        }
        let body = ErrorBody::new(self.error_code(), self.to_string());
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_error_codes() {
        let invalid = AgentError::InvalidRequest("cwd \"/nope\" does not exist".into());
        assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
        assert_eq!(invalid.error_code(), ErrorCode::InvalidRequest);
        let missing = AgentError::RouteNotFound {
            method: "GET".into(),
            path: "/nope".into(),
        };
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(missing.to_string(), "no route for GET /nope");
        assert_eq!(
            AgentError::PayloadTooLarge { limit: 1 }.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            AgentError::ShuttingDown.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let spawn = AgentError::Spawn {
            program: "x".into(),
            source: io::Error::from_raw_os_error(libc::EAGAIN),
        };
        assert_eq!(spawn.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            AgentError::ProcessNotFound { pid: 7 }.status(),
            StatusCode::NOT_FOUND
        );
        let exited = AgentError::ProcessExited { pid: 7 };
        assert_eq!(exited.status(), StatusCode::CONFLICT);
        assert_eq!(exited.to_string(), "process 7 has exited");
        assert_eq!(
            AgentError::UnknownUser { user: "x".into() }.status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(AgentError::NoLayerBaseline.status(), StatusCode::CONFLICT);
        // Found by schemathesis: reading /dev/fd/11 (the agent's socket) was a 500.
        let socket = AgentError::File {
            op: "read",
            path: "/dev/fd/11".into(),
            source: io::Error::from_raw_os_error(libc::ENXIO),
        };
        assert_eq!(socket.status(), StatusCode::CONFLICT);
        let unreachable = AgentError::PortUnreachable {
            port: 8000,
            reason: "connection refused".into(),
        };
        assert_eq!(unreachable.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(unreachable.error_code(), ErrorCode::Unavailable);
        assert_eq!(
            AgentError::PortNotListening {
                port: 8000,
                waited_ms: 5
            }
            .status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}

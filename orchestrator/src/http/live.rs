//! Live routes inside a sandbox, forwarded to its agent like the others
//! (see [`super::bridged`]): terminals, persistent shell sessions, file
//! watches, waiting for a port, and raw TCP tunnels.
//!
//! A terminal's and a tunnel's WebSocket is the agent's: the bridge passes
//! the handshake through and splices the connections (see
//! [`crate::bridge`]), so these handlers are the same thin forwards as a
//! file call. Each is audited as one call, when it starts; what is typed
//! into a terminal is not recorded, as a file's contents are not.

use super::audit_trail::Call;
use super::bridged::{forward, forward_json, forwarded};
use super::error::ApiError;
use super::extract::ApiPath;
use super::AppState;
use axum::extract::{Request, State};
use axum::response::Response;
use sbx_api::{
    CreatePtyRequest, CreateSessionRequest, ErrorBody, ExecEvent, ExecResult, PortPath, PortStatus,
    PortWaitQuery, Pty, PtyControl, PtyList, PtyPath, PtySize, SandboxPath, Session,
    SessionExecRequest, SessionList, SessionPath, SignalRequest, WatchEvent, WatchQuery,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_terminals, create_terminal))
        .routes(routes!(attach_terminal, kill_terminal))
        .routes(routes!(resize_terminal))
        .routes(routes!(list_sessions, create_session))
        .routes(routes!(end_session))
        .routes(routes!(session_exec))
        .routes(routes!(signal_session))
        .routes(routes!(watch))
        .routes(routes!(wait_for_port))
        .routes(routes!(tunnel))
}

forwarded! {
    /// Open a terminal.
    ///
    /// A command (the user's login shell by default) on a new PTY. It
    /// outlives every connection to it, until it exits and is deleted.
    #[utoipa::path(post, path = "/sandboxes/{id}/pty", tag = "terminals",
        operation_id = "create_terminal", params(SandboxPath), request_body = CreatePtyRequest,
        responses((status = 201, body = Pty)))]
    create_terminal(SandboxPath) => forward_json::<CreatePtyRequest>
}

forwarded! {
    /// List terminals.
    #[utoipa::path(get, path = "/sandboxes/{id}/pty", tag = "terminals",
        operation_id = "list_terminals", params(SandboxPath),
        responses((status = 200, body = PtyList)))]
    list_terminals(SandboxPath) => forward
}

forwarded! {
    /// Attach to a terminal (WebSocket).
    ///
    /// Upgrades to a WebSocket. Binary frames carry the terminal's bytes
    /// both ways; the server sends the scrollback first. Text frames are
    /// `PtyControl`: `resize` from the client, `exit` from the server,
    /// last. Several clients may attach at once; one leaving ends nothing.
    #[utoipa::path(get, path = "/sandboxes/{id}/pty/{tid}", tag = "terminals",
        operation_id = "attach_terminal", params(PtyPath),
        responses((status = 101, description = "A WebSocket of the terminal",
            body = PtyControl)))]
    attach_terminal(PtyPath) => forward
}

forwarded! {
    /// Kill a terminal.
    ///
    /// Kills its command's process group and forgets it.
    #[utoipa::path(delete, path = "/sandboxes/{id}/pty/{tid}", tag = "terminals",
        operation_id = "kill_terminal", params(PtyPath),
        responses((status = 204, description = "Killed")))]
    kill_terminal(PtyPath) => forward
}

forwarded! {
    /// Resize a terminal.
    ///
    /// The same as a `resize` frame on its WebSocket.
    #[utoipa::path(post, path = "/sandboxes/{id}/pty/{tid}/resize", tag = "terminals",
        operation_id = "resize_terminal", params(PtyPath), request_body = PtySize,
        responses((status = 204, description = "Resized")))]
    resize_terminal(PtyPath) => forward_json::<PtySize>
}

forwarded! {
    /// Start a shell session.
    ///
    /// A shell whose working directory, variables, functions and last
    /// exit status persist from one command to the next.
    #[utoipa::path(post, path = "/sandboxes/{id}/sessions", tag = "sessions",
        operation_id = "create_session", params(SandboxPath), request_body = CreateSessionRequest,
        responses((status = 201, body = Session)))]
    create_session(SandboxPath) => forward_json::<CreateSessionRequest>
}

forwarded! {
    /// List shell sessions.
    #[utoipa::path(get, path = "/sandboxes/{id}/sessions", tag = "sessions",
        operation_id = "list_sessions", params(SandboxPath),
        responses((status = 200, body = SessionList)))]
    list_sessions(SandboxPath) => forward
}

forwarded! {
    /// End a shell session.
    ///
    /// Its shell and every process it started are killed.
    #[utoipa::path(delete, path = "/sandboxes/{id}/sessions/{sid}", tag = "sessions",
        operation_id = "end_session", params(SessionPath),
        responses((status = 204, description = "Ended")))]
    end_session(SessionPath) => forward
}

forwarded! {
    /// Run a command in a shell session.
    ///
    /// As if typed at the session's prompt. Answers with its result, or
    /// streams `ExecEvent`s (`stream`, or `Accept: application/x-ndjson`).
    /// One command runs at a time: a second gets 409 while one runs. A
    /// timeout kills the command, not the session; `exit` ends the session.
    #[utoipa::path(post, path = "/sandboxes/{id}/sessions/{sid}/exec", tag = "sessions",
        operation_id = "session_exec", params(SessionPath), request_body = SessionExecRequest,
        responses((status = 200, content(
            (ExecResult = "application/json"),
            (ExecEvent = "application/x-ndjson"),
        ), description = "The result, or an NDJSON stream of events, one per line")))]
    session_exec(SessionPath) => forward_json::<SessionExecRequest>
}

forwarded! {
    /// Signal a session's running command.
    ///
    /// The command's processes get the signal; the session's shell does
    /// not. 409 when no command runs.
    #[utoipa::path(post, path = "/sandboxes/{id}/sessions/{sid}/signal", tag = "sessions",
        operation_id = "signal_session", params(SessionPath), request_body = SignalRequest,
        responses((status = 204, description = "Sent")))]
    signal_session(SessionPath) => forward_json::<SignalRequest>
}

forwarded! {
    /// Watch a directory.
    ///
    /// An NDJSON stream of `WatchEvent`s, from the moment the answer's
    /// head arrives until the client leaves. A full queue drops events and
    /// says so with one `overflow`.
    #[utoipa::path(get, path = "/sandboxes/{id}/watch", tag = "files",
        operation_id = "watch", params(SandboxPath, WatchQuery),
        responses((status = 200, body = WatchEvent, content_type = "application/x-ndjson",
            description = "NDJSON: one event per line")))]
    watch(SandboxPath) => forward
}

forwarded! {
    /// Wait for a port to listen.
    ///
    /// Answers once something inside the sandbox listens on the port; 503
    /// after the timeout.
    #[utoipa::path(get, path = "/sandboxes/{id}/ports/{port}/wait", tag = "ports",
        operation_id = "wait_for_port", params(PortPath, PortWaitQuery),
        responses((status = 200, body = PortStatus),
            (status = 503, body = ErrorBody, description = "Nothing listened before the timeout")))]
    wait_for_port(PortPath) => forward
}

forwarded! {
    /// Tunnel to a port (WebSocket).
    ///
    /// Upgrades to a WebSocket whose binary frames carry one TCP
    /// connection's bytes to and from `127.0.0.1:{port}` inside the
    /// sandbox, like `kubectl port-forward`. 502 when nothing listens.
    #[utoipa::path(get, path = "/sandboxes/{id}/tunnel/{port}", tag = "ports",
        operation_id = "tunnel", params(PortPath),
        responses((status = 101, description = "A WebSocket carrying the connection")))]
    tunnel(PortPath) => forward
}

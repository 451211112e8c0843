//! `sbx-api`: every type that crosses a process boundary in sbx.
//!
//! The orchestrator, the in-sandbox agent, the CLI and the tests all depend on
//! this crate, so the HTTP API, the agent protocol and the client cannot drift
//! apart: a field renamed here is renamed everywhere at compile time.
//!
//! The public API under `/v1/sandboxes/{id}/…` mirrors the agent's own routes,
//! which is why request and result types such as [`ExecRequest`] are shared by
//! both hops.

mod audit;
mod body;
pub mod e2b;
mod error;
mod exec;
mod files;
mod handoff;
mod image;
mod info;
mod lifecycle;
mod network;
mod ports;
mod process;
mod sandbox;
mod terminal;
mod token;
mod watch;

#[cfg(feature = "client")]
pub mod client;

pub use audit::{
    AuditList, AuditQuery, AuditRecord, ANONYMOUS, CLIENT_CLOSED_REQUEST, DEFAULT_AUDIT_LIMIT,
    MAX_AUDIT_LIMIT,
};
pub use body::from_json_object;
pub use error::{ErrorBody, ErrorCode, REQUEST_ID_HEADER};
pub use exec::{
    validate_user, ExecEvent, ExecRequest, ExecResult, DEFAULT_OUTPUT_CAP, MAX_TIMEOUT_MS, NDJSON,
};
pub use files::{
    parse_mode, validate_path, ArchiveSummary, FileInfo, FileList, FileQuery, FileType,
    MkdirRequest, MoveRequest, MAX_LIST_DEPTH,
};
pub use handoff::{Handoff, HANDOFF_MAX_FDS};
pub use image::{
    BuildEvent, BuildImageQuery, Image, ImageConfig, ImageList, ImagePath, ImageSource,
    ImportImageQuery, LayerBaseline, PullEvent, PullImageRequest, MAX_IMAGE_ARCHIVE_BYTES,
};
pub use info::{ClusterInfo, IsolationInfo, RuntimeInfo, ServerInfo, StorageInfo};
pub use lifecycle::{
    validate_snapshot_name, CreateSnapshotRequest, Event, EventKind, EventsQuery, ForkOutcome,
    ForkRequest, ForkResult, Lifecycle, LifecycleRequest, OnTimeout, RestoreRequest,
    SandboxEventsQuery, SetTimeoutRequest, Snapshot, SnapshotList, SnapshotPath, MAX_FORKS,
    MAX_LIFETIME_S,
};
pub use network::{
    normalize_host, EgressRule, HostPattern, NetworkPolicy, UpdateSandboxRequest, MAX_EGRESS_RULES,
};
pub use ports::{
    CreatePreviewRequest, PortPath, PortStatus, PortWaitQuery, Preview, PreviewList, PreviewPath,
    DEFAULT_PORT_WAIT_MS, DEFAULT_PREVIEW_TTL_S, MAX_PORT_WAIT_MS, MAX_PREVIEW_TTL_S,
    PREVIEW_COOKIE, PREVIEW_PATH_PREFIX, PREVIEW_TOKEN_PARAM,
};
pub use process::{
    KillAllResult, LogsQuery, ProcessInfo, ProcessList, ProcessPath, ProcessState, SignalRequest,
    StartProcessRequest, StdinQuery, PROCESS_LOG_CAP,
};
pub use sandbox::{
    CreateSandboxRequest, Sandbox, SandboxList, SandboxPath, SandboxState, DEFAULT_IMAGE, MAX_CPUS,
    MAX_DISK_MB, MAX_MEMORY_MB, MIN_DISK_MB,
};
pub use terminal::{
    CreatePtyRequest, CreateSessionRequest, Pty, PtyControl, PtyList, PtyPath, PtySize, Session,
    SessionExecRequest, SessionList, SessionPath, MAX_PTY_CELLS, PTY_SCROLLBACK_BYTES,
};
pub use token::{
    CreateTokenRequest, CreatedSandbox, CreatedToken, Scope, TokenInfo, TokenList,
    MAX_TOKEN_NAME_LEN, MAX_TOKEN_TTL_S, TOKEN_PREFIX,
};

pub use watch::{WatchEvent, WatchEventKind, WatchQuery, WATCH_QUEUE_EVENTS};

/// Where an agent run by hand (tests, debugging) listens by default. In a
/// sandbox the agent never binds a socket itself: the orchestrator hands it
/// a listener through [`HANDOFF_SOCKET_PATH`] (see [`Handoff`]).
pub const AGENT_SOCKET_PATH: &str = "/.sbx/agent.sock";
/// The sandbox's run directory: the orchestrator's sockets for it, bind
/// mounted read-only, so code inside can use them but put nothing there.
pub const RUN_DIR: &str = "/.sbx/run";
/// Where a sandbox's agent picks up its listener at start (see [`Handoff`]).
pub const HANDOFF_SOCKET_PATH: &str = "/.sbx/run/handoff.sock";
/// Where the agent listens for the sandbox's proxy clients (the address in
/// `HTTP_PROXY`); it relays each connection to [`EGRESS_SOCKET_PATH`].
pub const EGRESS_PROXY_LISTEN: &str = "127.0.0.1:3128";
/// The orchestrator's egress proxy socket for this sandbox, as seen inside
/// it (the host side is in the sandbox's run directory).
pub const EGRESS_SOCKET_PATH: &str = "/.sbx/run/egress.sock";
/// Where the agent binary is bind-mounted inside a sandbox.
pub const AGENT_BINARY_PATH: &str = "/.sbx/sandbox-agent";
/// The CA bundle of Debian-family images, which `sbx serve
/// --trust-host-ca` mounts the host's over (read-only).
pub const CA_BUNDLE_PATH: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The default working directory of every command run in a sandbox.
pub const WORKSPACE_DIR: &str = "/workspace";
/// Where a sandbox's agent listens when the orchestrator cannot hand it a
/// socket (the kubernetes runtime): loopback inside the sandbox's own
/// network namespace, which only the API server's port-forward reaches.
pub const AGENT_TCP_LISTEN: &str = "127.0.0.1:7177";
/// The header that carries a sandbox's agent key on every request to an
/// agent listening on TCP ([`AGENT_TCP_LISTEN`]); the agent refuses a
/// request without it.
pub const AGENT_KEY_HEADER: &str = "x-sbx-agent-key";
/// The environment variable a TCP agent reads its key from (set from a
/// Kubernetes Secret); the agent clears it before anything else runs.
pub const AGENT_KEY_ENV: &str = "SBX_AGENT_KEY";

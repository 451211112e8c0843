"""sbx: Python SDK for sbx sandboxes.

Sandboxes for coding agents, reachable over the HTTP API that ``sbx
serve`` exposes. The blocking API is :class:`Sandbox` (with
:class:`Client` for admin calls); :class:`AsyncSandbox` and
:class:`AsyncClient` are the same calls for ``asyncio``/``trio``. Both are
thin layers over one shared description of the wire protocol
(``sbx._core``), so they cannot drift apart::

    from sbx import Sandbox

    with Sandbox.create(memory_mb=512, egress=["pypi.org"]) as sb:
        print(sb.exec("echo hi | tr a-z A-Z").stdout)

The server is found through ``SBX_URL`` (default ``http://127.0.0.1:7070``)
and the token through ``SBX_TOKEN``, as the ``sbx`` CLI does.
"""

from ._async import (
    AsyncByteStream,
    AsyncClient,
    AsyncEventStream,
    AsyncFiles,
    AsyncImages,
    AsyncProcesses,
    AsyncSandbox,
    AsyncSandboxEventStream,
    AsyncSnapshots,
    AsyncTokens,
)
from ._core import DEFAULT, DEFAULT_TIMEOUT, DEFAULT_URL
from ._sync import (
    ByteStream,
    Client,
    EventStream,
    Files,
    Images,
    Processes,
    Sandbox,
    SandboxEventStream,
    Snapshots,
    Tokens,
)
from ._tar import extract_tar
from .errors import (
    ApiError,
    Conflict,
    Forbidden,
    InsufficientStorage,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ProtocolError,
    RequestTimeout,
    SbxError,
    TransportError,
    Unauthorized,
    Unavailable,
    UnsafeArchiveError,
)
from .models import (
    SCOPES,
    ArchiveSummary,
    AuditRecord,
    CreatedToken,
    ErrorEvent,
    EventKind,
    ExecEvent,
    ExecResult,
    ExitEvent,
    FileInfo,
    ImageConfig,
    ImageInfo,
    ImageSource,
    IsolationInfo,
    Lifecycle,
    OnTimeout,
    ProcessInfo,
    RuntimeInfo,
    SandboxEvent,
    SandboxInfo,
    SandboxState,
    Scope,
    ServerInfo,
    SnapshotInfo,
    StartEvent,
    StderrEvent,
    StdoutEvent,
    TokenInfo,
    UnknownEvent,
)

__version__ = "0.1.0"

__all__ = [
    "Sandbox",
    "Client",
    "Tokens",
    "Snapshots",
    "Images",
    "Processes",
    "Files",
    "EventStream",
    "SandboxEventStream",
    "ByteStream",
    "AsyncSandbox",
    "AsyncClient",
    "AsyncTokens",
    "AsyncSnapshots",
    "AsyncImages",
    "AsyncProcesses",
    "AsyncFiles",
    "AsyncEventStream",
    "AsyncSandboxEventStream",
    "AsyncByteStream",
    "DEFAULT",
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "extract_tar",
    "SbxError",
    "ApiError",
    "InvalidRequest",
    "Unauthorized",
    "Forbidden",
    "PermissionDenied",
    "NotFound",
    "MethodNotAllowed",
    "Conflict",
    "PayloadTooLarge",
    "InsufficientStorage",
    "InternalError",
    "Unavailable",
    "TransportError",
    "RequestTimeout",
    "ProtocolError",
    "UnsafeArchiveError",
    "SCOPES",
    "Scope",
    "SandboxInfo",
    "SandboxState",
    "Lifecycle",
    "OnTimeout",
    "SnapshotInfo",
    "ImageInfo",
    "ImageConfig",
    "ImageSource",
    "SandboxEvent",
    "EventKind",
    "ExecResult",
    "ExecEvent",
    "StartEvent",
    "StdoutEvent",
    "StderrEvent",
    "ExitEvent",
    "ErrorEvent",
    "UnknownEvent",
    "ProcessInfo",
    "FileInfo",
    "ArchiveSummary",
    "TokenInfo",
    "CreatedToken",
    "AuditRecord",
    "ServerInfo",
    "RuntimeInfo",
    "IsolationInfo",
]

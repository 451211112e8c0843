"""The values the API returns, as frozen dataclasses.

They mirror the server's wire types (``api/src/*.rs`` in the sbx repo)
field for field, with Python types: times are timezone-aware
``datetime``s, durations keep the wire's units in their names
(``duration_ms``). Decoding ignores fields it does not know, so a newer
server with more fields still works; a missing required field is a
:class:`~sbx.errors.ProtocolError`, because the answer then is not what the
API promises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple, TypeVar, Union

from .errors import ProtocolError

__all__ = [
    "SandboxState",
    "OnTimeout",
    "EventKind",
    "Scope",
    "SCOPES",
    "Lifecycle",
    "SandboxInfo",
    "SnapshotInfo",
    "ImageSource",
    "ImageConfig",
    "ImageInfo",
    "PullProgress",
    "BuildStep",
    "BuildOutput",
    "BuildEvent",
    "SandboxEvent",
    "ExecResult",
    "StartEvent",
    "StdoutEvent",
    "StderrEvent",
    "ExitEvent",
    "ErrorEvent",
    "UnknownEvent",
    "ExecEvent",
    "ProcessInfo",
    "FileInfo",
    "ArchiveSummary",
    "TokenInfo",
    "CreatedToken",
    "AuditRecord",
    "ClusterInfo",
    "IsolationInfo",
    "RuntimeInfo",
    "ServerInfo",
    "SessionInfo",
    "WatchEventType",
    "WatchEvent",
    "PortStatus",
    "PreviewInfo",
    "PtyInfo",
]

SandboxState = Literal[
    "creating",
    "running",
    "paused",
    "stopping",
    "stopped",
    "starting",
    "deleting",
    "deleted",
    "failed",
]
#: What a sandbox's timeout or idle timeout does to it.
OnTimeout = Literal["delete", "stop", "pause"]
#: What a :class:`SandboxEvent` reports (a newer server may send others).
EventKind = Literal[
    "created",
    "paused",
    "resumed",
    "stopped",
    "started",
    "snapshot",
    "forked",
    "restored",
    "failed",
    "deleted",
    "expiring",
]
#: Where an image came from: built by the server's recipe, imported from an
#: archive, pulled from a registry, or built from a Dockerfile.
ImageSource = Literal["recipe", "import", "pull", "build"]
ProcessState = Literal["running", "exited"]
#: What a :class:`WatchEvent` reports (a newer server may send others).
WatchEventType = Literal["create", "modify", "delete", "move", "overflow"]
FileType = Literal["file", "dir", "symlink", "other"]
Scope = Literal[
    "sandboxes:create",
    "sandboxes:read",
    "sandboxes:delete",
    "sandboxes:exec",
    "sandboxes:network",
    "sandboxes:lifecycle",
    "tokens:admin",
    "audit:read",
    "metrics:read",
    "images:read",
    "images:write",
]
#: Every scope a token can hold (see the README's policy model).
SCOPES: Tuple[Scope, ...] = (
    "sandboxes:create",
    "sandboxes:read",
    "sandboxes:delete",
    "sandboxes:exec",
    "sandboxes:network",
    "sandboxes:lifecycle",
    "tokens:admin",
    "audit:read",
    "metrics:read",
    "images:read",
    "images:write",
)

T = TypeVar("T")

_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_time(text: str) -> datetime:
    """RFC 3339 as the server writes it (nanoseconds, ``Z``) to a datetime.

    ``datetime.fromisoformat`` before 3.11 takes neither nine fraction
    digits nor ``Z``, hence the hand parse; the fraction is cut to
    microseconds.
    """
    match = _RFC3339.match(text)
    if match is None:
        raise ProtocolError(f"invalid timestamp {text!r}")
    day, clock, fraction, zone = match.groups()
    micros = (fraction or "0")[:6].ljust(6, "0")
    if zone in ("Z", "z"):
        tz = timezone.utc
    else:
        sign = 1 if zone[0] == "+" else -1
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    return datetime.fromisoformat(f"{day}T{clock}.{micros}").replace(tzinfo=tz)


def format_time(moment: datetime) -> str:
    """A datetime as RFC 3339 in UTC; a naive one is taken to be UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


class _Fields:
    """Typed access to one JSON object; a wrong or missing field is a ProtocolError."""

    def __init__(self, data: Any, what: str) -> None:
        if not isinstance(data, dict):
            raise ProtocolError(f"expected a JSON object for {what}, got {type(data).__name__}")
        self.data: Dict[str, Any] = data
        self.what = what

    def _get(self, key: str, kind: Union[type, Tuple[type, ...]], optional: bool) -> Any:
        value = self.data.get(key)
        if value is None:
            if optional:
                return None
            raise ProtocolError(f"{self.what} has no {key!r}")
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ProtocolError(f"{self.what}.{key} has the wrong type: {value!r}")
        return value

    def text(self, key: str) -> str:
        return self._get(key, str, False)  # type: ignore[no-any-return]

    def opt_text(self, key: str) -> Optional[str]:
        return self._get(key, str, True)  # type: ignore[no-any-return]

    def integer(self, key: str) -> int:
        return self._get(key, int, False)  # type: ignore[no-any-return]

    def opt_integer(self, key: str) -> Optional[int]:
        return self._get(key, int, True)  # type: ignore[no-any-return]

    def number(self, key: str) -> float:
        return float(self._get(key, (int, float), False))

    def flag(self, key: str, default: Optional[bool] = None) -> bool:
        value: Optional[bool] = self._get(key, bool, default is not None)
        if value is None:
            return bool(default)
        return value

    def moment(self, key: str) -> datetime:
        return parse_time(self.text(key))

    def opt_moment(self, key: str) -> Optional[datetime]:
        text = self.opt_text(key)
        return None if text is None else parse_time(text)

    def str_map(self, key: str) -> Dict[str, str]:
        value = self._get(key, dict, True) or {}
        return {str(k): str(v) for k, v in value.items()}

    def str_list(self, key: str) -> List[str]:
        value = self._get(key, list, True) or []
        return [str(item) for item in value]

    def opt_str_list(self, key: str) -> Optional[List[str]]:
        value = self._get(key, list, True)
        return None if value is None else [str(item) for item in value]

    def obj(self, key: str, decode: Callable[[Any], T]) -> T:
        return decode(self._get(key, dict, False))

    def opt_obj(self, key: str, decode: Callable[[Any], T]) -> Optional[T]:
        value = self._get(key, dict, True)
        return None if value is None else decode(value)

    def objs(self, key: str, decode: Callable[[Any], T]) -> List[T]:
        return [decode(item) for item in self._get(key, list, False)]


@dataclass(frozen=True)
class Lifecycle:
    """A sandbox's lifetime as it applies, the server's defaults filled in."""

    #: Seconds from create (or start, or the last ``set_timeout``) until
    #: ``on_timeout`` acts; ``None``: no timeout.
    timeout_s: Optional[int] = None
    #: Seconds without API use (no call, no running exec or stream) after
    #: which ``on_timeout`` acts; ``None``: never.
    idle_timeout_s: Optional[int] = None
    on_timeout: OnTimeout = "delete"
    #: Whether exec, files and processes start a stopped sandbox or resume a
    #: paused one instead of raising :class:`~sbx.Conflict`.
    auto_resume: bool = False

    @classmethod
    def from_json(cls, data: Any) -> Lifecycle:
        f = _Fields(data, "lifecycle")
        return cls(
            timeout_s=f.opt_integer("timeout_s"),
            idle_timeout_s=f.opt_integer("idle_timeout_s"),
            on_timeout=f.opt_text("on_timeout") or "delete",  # type: ignore[arg-type]
            auto_resume=f.flag("auto_resume", False),
        )


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as the server reports it (its environment is never shown)."""

    id: str
    state: SandboxState
    image: str
    created_at: datetime
    memory_mb: int
    cpus: float
    #: The writable layer's size limit; ``None`` where the runtime cannot enforce one.
    disk_mb: Optional[int]
    labels: Dict[str, str]
    #: The egress allowlist in canonical form (lowercase, no trailing dot).
    egress: List[str]
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    #: When ``lifecycle.on_timeout`` acts, if the sandbox has a timeout.
    expires_at: Optional[datetime] = None
    #: Since when nothing has used it; ``None`` while a call or stream runs.
    idle_since: Optional[datetime] = None
    #: Why it ended or failed: ``timeout``, ``idle``, ``oom``, ``agent died``…
    ended_reason: Optional[str] = None

    @classmethod
    def from_json(cls, data: Any) -> SandboxInfo:
        f = _Fields(data, "sandbox")
        network = _Fields(f.data.get("network") or {}, "sandbox.network")
        return cls(
            id=f.text("id"),
            state=f.text("state"),  # type: ignore[arg-type]
            image=f.text("image"),
            created_at=f.moment("created_at"),
            memory_mb=f.integer("memory_mb"),
            cpus=f.number("cpus"),
            disk_mb=f.opt_integer("disk_mb"),
            labels=f.str_map("labels"),
            egress=network.str_list("egress"),
            lifecycle=f.opt_obj("lifecycle", Lifecycle.from_json) or Lifecycle(),
            expires_at=f.opt_moment("expires_at"),
            idle_since=f.opt_moment("idle_since"),
            ended_reason=f.opt_text("ended_reason"),
        )


@dataclass(frozen=True)
class SnapshotInfo:
    """A sandbox's filesystem as it was at one instant, kept under a name."""

    name: str
    #: The sandbox it was taken from (which may be gone since).
    sandbox_id: str
    #: The image its filesystem sits on; sandboxes made from it use the same build.
    image: str
    disk_mb: int
    created_at: datetime
    #: Host bytes it holds now (blocks shared with others counted in full).
    size_bytes: int

    @classmethod
    def from_json(cls, data: Any) -> SnapshotInfo:
        f = _Fields(data, "snapshot")
        return cls(
            name=f.text("name"),
            sandbox_id=f.text("sandbox_id"),
            image=f.text("image"),
            disk_mb=f.integer("disk_mb"),
            created_at=f.moment("created_at"),
            size_bytes=f.integer("size_bytes"),
        )


@dataclass(frozen=True)
class ImageConfig:
    """What an image's config says a container runs with.

    ``env``, ``working_dir`` and ``user`` are the defaults of every sandbox
    made from the image (a sandbox's own ``env`` wins); ``entrypoint`` and
    ``cmd`` are kept for reference only, since the sandbox agent is always
    PID 1.
    """

    #: ``NAME=value`` entries, in the image's order.
    env: List[str] = field(default_factory=list)
    working_dir: Optional[str] = None
    #: A user name or ``uid[:gid]`` from the image's ``/etc/passwd``.
    user: Optional[str] = None
    entrypoint: Optional[List[str]] = None
    cmd: Optional[List[str]] = None
    labels: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> ImageConfig:
        f = _Fields(data, "image config")
        return cls(
            env=f.str_list("env"),
            working_dir=f.opt_text("working_dir"),
            user=f.opt_text("user"),
            entrypoint=f.opt_str_list("entrypoint"),
            cmd=f.opt_str_list("cmd"),
            labels=f.str_map("labels"),
        )


@dataclass(frozen=True)
class ImageInfo:
    """An image sandboxes can be made from: ``image=`` in :meth:`~sbx.Sandbox.create`."""

    #: ``[registry/]repository[:tag][@digest]``; ``base`` is the default image.
    name: str
    #: ``sha256:<hex>`` of the image config for imported images,
    #: ``recipe:<hash>`` for recipe images.
    id: str
    source: ImageSource
    created_at: datetime
    #: Bytes of the files in its root filesystem (hard links counted once),
    #: when known: recipe images do not say.
    size_bytes: Optional[int] = None
    #: How many layers it was built from (imported images).
    layers: Optional[int] = None
    config: ImageConfig = field(default_factory=ImageConfig)
    #: Device nodes its layers held, which are never made (a sandbox has its own ``/dev``).
    skipped_devices: List[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: Any) -> ImageInfo:
        f = _Fields(data, "image")
        return cls(
            name=f.text("name"),
            id=f.text("id"),
            source=f.text("source"),  # type: ignore[arg-type]
            created_at=f.moment("created_at"),
            size_bytes=f.opt_integer("size_bytes"),
            layers=f.opt_integer("layers"),
            config=f.opt_obj("config", ImageConfig.from_json) or ImageConfig(),
            skipped_devices=f.str_list("skipped_devices"),
        )


@dataclass(frozen=True)
class PullProgress:
    """One blob of an image pull (a layer, or the config), as it arrives."""

    #: ``sha256:<hex>``, as the image's manifest names it.
    digest: str
    #: Bytes of it received so far.
    received: int
    #: Its size, from the manifest: ``received == size`` once it is whole.
    size: int

    @classmethod
    def from_json(cls, data: Any) -> PullProgress:
        f = _Fields(data, "pull progress")
        return cls(digest=f.text("digest"), received=f.integer("received"), size=f.integer("size"))


@dataclass(frozen=True)
class BuildStep:
    """One instruction of a Dockerfile build, as it starts."""

    #: 1-based, of ``total``.
    index: int
    total: int
    #: The Dockerfile line the instruction starts on.
    line: int
    #: The instruction as written (``RUN make``).
    instruction: str
    #: Its result came from the build cache: nothing runs.
    cached: bool

    @classmethod
    def from_json(cls, data: Any) -> BuildStep:
        f = _Fields(data, "build step")
        return cls(
            index=f.integer("index"),
            total=f.integer("total"),
            line=f.integer("line"),
            instruction=f.text("instruction"),
            cached=f.flag("cached"),
        )


@dataclass(frozen=True)
class BuildOutput:
    """Output of a build step's command, as it happens."""

    #: Which of the command's streams it came from.
    stream: Literal["stdout", "stderr"]
    data: str

    @classmethod
    def from_json(cls, data: Any) -> BuildOutput:
        f = _Fields(data, "build output")
        stream = f.text("type")
        if stream not in ("stdout", "stderr"):
            raise ProtocolError(f"build output from an unknown stream: {stream!r}")
        return cls(stream=stream, data=f.text("data"))  # type: ignore[arg-type]


#: What a build reports as it goes (``on_event`` of ``images.build``).
BuildEvent = Union[BuildStep, BuildOutput]


@dataclass(frozen=True)
class SandboxEvent:
    """One line of ``GET /v1/events``: something that happened to a sandbox."""

    #: Increases with every event on the server; ``events(since=…)`` takes it.
    seq: int
    time: datetime
    sandbox_id: str
    #: An :data:`EventKind`; a kind this SDK does not know arrives as is.
    kind: str
    #: Why, for ``deleted``, ``stopped``, ``paused`` and ``failed``:
    #: ``timeout``, ``idle``, ``deleted by <identity>``, ``agent died``…
    reason: Optional[str] = None
    #: The snapshot for ``snapshot`` and ``restored``; the new sandbox's id for ``forked``.
    detail: Optional[str] = None
    #: For ``expiring``: when the timeout acts.
    at: Optional[datetime] = None

    @classmethod
    def from_json(cls, data: Any) -> SandboxEvent:
        f = _Fields(data, "sandbox event")
        return cls(
            seq=f.integer("seq"),
            time=f.moment("time"),
            sandbox_id=f.text("sandbox_id"),
            kind=f.text("kind"),
            reason=f.opt_text("reason"),
            detail=f.opt_text("detail"),
            at=f.opt_moment("at"),
        )


@dataclass(frozen=True)
class ExecResult:
    """The outcome of a command run to completion."""

    #: The exit status; ``128 + N`` when killed by signal N.
    exit_code: int
    stdout: str
    stderr: str
    duration_ms: int
    #: The command's own timeout fired and its process group was killed.
    timed_out: bool
    #: Some output went past the server's cap (10 MiB per stream) and was cut.
    truncated: bool = False

    @property
    def ok(self) -> bool:
        """Exited 0 within its timeout."""
        return self.exit_code == 0 and not self.timed_out

    @classmethod
    def from_json(cls, data: Any) -> ExecResult:
        f = _Fields(data, "exec result")
        return cls(
            exit_code=f.integer("exit_code"),
            stdout=f.text("stdout"),
            stderr=f.text("stderr"),
            duration_ms=f.integer("duration_ms"),
            timed_out=f.flag("timed_out", False),
            truncated=f.flag("truncated", False),
        )


@dataclass(frozen=True)
class StartEvent:
    """The command started; always the first event of an exec stream."""

    pid: int
    type: Literal["start"] = field(default="start", repr=False)


@dataclass(frozen=True)
class StdoutEvent:
    """Output on stdout, UTF-8 decoded with invalid sequences replaced."""

    data: str
    type: Literal["stdout"] = field(default="stdout", repr=False)


@dataclass(frozen=True)
class StderrEvent:
    """Output on stderr, UTF-8 decoded with invalid sequences replaced."""

    data: str
    type: Literal["stderr"] = field(default="stderr", repr=False)


@dataclass(frozen=True)
class ExitEvent:
    """The command exited; always the last event when it comes."""

    exit_code: int
    duration_ms: int
    timed_out: bool
    type: Literal["exit"] = field(default="exit", repr=False)


@dataclass(frozen=True)
class ErrorEvent:
    """The server could not go on with the stream; no exit follows."""

    error_code: str
    message: str
    type: Literal["error"] = field(default="error", repr=False)


@dataclass(frozen=True)
class UnknownEvent:
    """An event of a type this SDK does not know (a newer server)."""

    type: str
    data: Dict[str, Any]


ExecEvent = Union[StartEvent, StdoutEvent, StderrEvent, ExitEvent, ErrorEvent, UnknownEvent]


def parse_event(data: Any) -> ExecEvent:
    """One NDJSON line of an exec stream or of process logs."""
    f = _Fields(data, "event")
    kind = f.text("type")
    if kind == "start":
        return StartEvent(pid=f.integer("pid"))
    if kind == "stdout":
        return StdoutEvent(data=f.text("data"))
    if kind == "stderr":
        return StderrEvent(data=f.text("data"))
    if kind == "exit":
        return ExitEvent(
            exit_code=f.integer("exit_code"),
            duration_ms=f.integer("duration_ms"),
            timed_out=f.flag("timed_out", False),
        )
    if kind == "error":
        return ErrorEvent(error_code=f.text("error_code"), message=f.text("message"))
    return UnknownEvent(type=kind, data=dict(f.data))


@dataclass(frozen=True)
class ProcessInfo:
    """A background process."""

    pid: int
    name: Optional[str]
    #: The argv that runs (a shell command shows the shell invocation).
    cmd: List[str]
    state: ProcessState
    #: Set once exited; ``128 + N`` when killed by signal N.
    exit_code: Optional[int]
    started_at: datetime
    exited_at: Optional[datetime]

    @property
    def running(self) -> bool:
        return self.state == "running"

    @classmethod
    def from_json(cls, data: Any) -> ProcessInfo:
        f = _Fields(data, "process")
        return cls(
            pid=f.integer("pid"),
            name=f.opt_text("name"),
            cmd=f.str_list("cmd"),
            state=f.text("state"),  # type: ignore[arg-type]
            exit_code=f.opt_integer("exit_code"),
            started_at=f.moment("started_at"),
            exited_at=f.opt_moment("exited_at"),
        )


@dataclass(frozen=True)
class FileInfo:
    """A file, directory or link inside a sandbox (links are not followed)."""

    path: str
    name: str
    type: FileType
    size: int
    #: Permission bits, e.g. ``0o644``.
    mode: int
    mtime: datetime
    uid: int
    gid: int
    #: Where a symlink points.
    link_target: Optional[str] = None
    #: The owner's and group's names in the sandbox, when they have one.
    owner: Optional[str] = None
    group: Optional[str] = None

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"

    @property
    def is_file(self) -> bool:
        return self.type == "file"

    @classmethod
    def from_json(cls, data: Any) -> FileInfo:
        f = _Fields(data, "file info")
        return cls(
            path=f.text("path"),
            name=f.text("name"),
            type=f.text("type"),  # type: ignore[arg-type]
            size=f.integer("size"),
            mode=f.integer("mode"),
            mtime=f.moment("mtime"),
            uid=f.integer("uid"),
            gid=f.integer("gid"),
            link_target=f.opt_text("link_target"),
            owner=f.opt_text("owner"),
            group=f.opt_text("group"),
        )


@dataclass(frozen=True)
class ArchiveSummary:
    """What extracting an uploaded tar wrote inside the sandbox."""

    entries: int
    bytes: int

    @classmethod
    def from_json(cls, data: Any) -> ArchiveSummary:
        f = _Fields(data, "archive summary")
        return cls(entries=f.integer("entries"), bytes=f.integer("bytes"))


@dataclass(frozen=True)
class TokenInfo:
    """A minted or sandbox token, as listed (never with its secret)."""

    id: str
    name: str
    scopes: List[str]
    #: The sandbox the token is bound to, if any.
    sandbox: Optional[str]
    created_at: datetime
    expires_at: Optional[datetime]
    #: The identity that minted it.
    created_by: str

    @classmethod
    def from_json(cls, data: Any) -> TokenInfo:
        f = _Fields(data, "token")
        return cls(
            id=f.text("id"),
            name=f.text("name"),
            scopes=f.str_list("scopes"),
            sandbox=f.opt_text("sandbox"),
            created_at=f.moment("created_at"),
            expires_at=f.opt_moment("expires_at"),
            created_by=f.text("created_by"),
        )


@dataclass(frozen=True)
class CreatedToken:
    """A token just minted, with its secret: shown this once, never again."""

    token: TokenInfo
    secret: str = field(repr=False)

    @property
    def id(self) -> str:
        return self.token.id

    @classmethod
    def from_json(cls, data: Any) -> CreatedToken:
        f = _Fields(data, "created token")
        return cls(token=TokenInfo.from_json(data), secret=f.text("secret"))


@dataclass(frozen=True)
class AuditRecord:
    """One call (or egress decision) in the audit trail."""

    seq: int
    time: datetime
    #: ``admin``, ``sandbox:<id>``, a minted token's name, or ``anonymous``.
    identity: str
    token_id: Optional[str]
    method: str
    #: The matched route template, e.g. ``/v1/sandboxes/{id}/exec``.
    route: str
    sandbox: Optional[str]
    summary: Optional[str]
    #: The answer's status; 499 when the client left before it.
    status: int
    duration_us: int
    request_id: Optional[str]

    @classmethod
    def from_json(cls, data: Any) -> AuditRecord:
        f = _Fields(data, "audit record")
        return cls(
            seq=f.integer("seq"),
            time=f.moment("time"),
            identity=f.text("identity"),
            token_id=f.opt_text("token_id"),
            method=f.text("method"),
            route=f.text("route"),
            sandbox=f.opt_text("sandbox"),
            summary=f.opt_text("summary"),
            status=f.integer("status"),
            duration_us=f.integer("duration_us"),
            request_id=f.opt_text("request_id"),
        )


@dataclass(frozen=True)
class IsolationInfo:
    """What the runtime enforces on every sandbox; a gap comes with a note."""

    user_namespace: bool
    host_root_uid: Optional[int]
    disk_quota: bool
    default_disk_mb: Optional[int]
    notes: List[str]

    @classmethod
    def from_json(cls, data: Any) -> IsolationInfo:
        f = _Fields(data, "isolation")
        return cls(
            user_namespace=f.flag("user_namespace"),
            host_root_uid=f.opt_integer("host_root_uid"),
            disk_quota=f.flag("disk_quota"),
            default_disk_mb=f.opt_integer("default_disk_mb"),
            notes=f.str_list("notes"),
        )


@dataclass(frozen=True)
class ClusterInfo:
    """The Kubernetes cluster sandboxes run on (the kubernetes runtime)."""

    server_version: str
    nodes: int
    namespace: str

    @classmethod
    def from_json(cls, data: Any) -> ClusterInfo:
        f = _Fields(data, "cluster")
        return cls(
            server_version=f.text("server_version"),
            nodes=f.integer("nodes"),
            namespace=f.text("namespace"),
        )


@dataclass(frozen=True)
class RuntimeInfo:
    #: ``youki``, ``docker`` or ``kubernetes``.
    name: str
    version: str
    isolation: IsolationInfo
    #: The cluster, with the kubernetes runtime.
    cluster: Optional[ClusterInfo] = None
    #: What this runtime refuses (``pause``, ``stop``, ``snapshot``,
    #: ``egress_proxy``, ``host_ca_bundle``), with the reason.
    unsupported: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> RuntimeInfo:
        f = _Fields(data, "runtime")
        return cls(
            name=f.text("name"),
            version=f.text("version"),
            isolation=f.obj("isolation", IsolationInfo.from_json),
            cluster=f.opt_obj("cluster", ClusterInfo.from_json),
            unsupported=f.str_map("unsupported"),
        )


@dataclass(frozen=True)
class ServerInfo:
    """``GET /v1/info``: what is serving, on which runtime."""

    version: str
    runtime: RuntimeInfo

    @classmethod
    def from_json(cls, data: Any) -> ServerInfo:
        f = _Fields(data, "server info")
        return cls(version=f.text("version"), runtime=f.obj("runtime", RuntimeInfo.from_json))


@dataclass(frozen=True)
class SessionInfo:
    """A persistent shell session: one shell whose ``cd``, ``export``,
    functions and ``$?`` carry over from one command to the next."""

    #: Unique within its sandbox.
    id: str
    #: The pid of its shell inside the sandbox.
    pid: int
    #: A command runs in it now (another one gets :class:`~sbx.Conflict`).
    busy: bool
    #: How many commands it has run.
    commands: int
    created_at: datetime

    @classmethod
    def from_json(cls, data: Any) -> SessionInfo:
        f = _Fields(data, "session")
        return cls(
            id=f.text("id"),
            pid=f.integer("pid"),
            busy=f.flag("busy", False),
            commands=f.integer("commands"),
            created_at=f.moment("created_at"),
        )


@dataclass(frozen=True)
class WatchEvent:
    """One line of a watch: something changed under the watched directory."""

    #: A :data:`WatchEventType`; a type this SDK does not know arrives as is.
    #: ``overflow``: events were dropped, so what changed is unknown (rescan).
    type: str
    #: The absolute path inside the sandbox; empty for an overflow.
    path: str
    #: A move's source (the wire's ``from``); the move's target is ``path``.
    from_path: Optional[str] = None
    is_dir: bool = False

    @classmethod
    def from_json(cls, data: Any) -> WatchEvent:
        f = _Fields(data, "watch event")
        return cls(
            type=f.text("type"),
            path=f.opt_text("path") or "",
            from_path=f.opt_text("from"),
            is_dir=f.flag("is_dir", False),
        )


@dataclass(frozen=True)
class PortStatus:
    """``ports.wait``: something listens on the port inside the sandbox."""

    port: int
    listening: bool
    #: How long the server waited for it.
    waited_ms: int

    @classmethod
    def from_json(cls, data: Any) -> PortStatus:
        f = _Fields(data, "port status")
        return cls(
            port=f.integer("port"),
            listening=f.flag("listening"),
            waited_ms=f.integer("waited_ms"),
        )


@dataclass(frozen=True)
class PreviewInfo:
    """A preview: one port of a sandbox, reachable without a bearer token
    by whoever holds its URL, until it expires or is revoked."""

    #: For revoking it; not a secret.
    id: str
    sandbox_id: str
    port: int
    created_at: datetime
    expires_at: datetime
    #: The URL, its secret token in it: only in the answer that created
    #: the preview (the server keeps a hash of the token), ``None`` as listed.
    url: Optional[str] = field(default=None, repr=False)

    @classmethod
    def from_json(cls, data: Any) -> PreviewInfo:
        f = _Fields(data, "preview")
        return cls(
            id=f.text("id"),
            sandbox_id=f.text("sandbox_id"),
            port=f.integer("port"),
            created_at=f.moment("created_at"),
            expires_at=f.moment("expires_at"),
            url=f.opt_text("url"),
        )


@dataclass(frozen=True)
class PtyInfo:
    """A terminal: a command on a pseudo-terminal, attached over a WebSocket."""

    #: Unique within its sandbox.
    id: str
    #: The pid of its command inside the sandbox.
    pid: int
    cmd: List[str]
    cols: int
    rows: int
    #: WebSockets attached right now.
    viewers: int
    created_at: datetime
    #: Set once its command exited (``128 + N`` for signal N); it stays
    #: listed, and attachable for its scrollback and exit, until killed.
    exit_code: Optional[int] = None

    @classmethod
    def from_json(cls, data: Any) -> PtyInfo:
        f = _Fields(data, "terminal")
        return cls(
            id=f.text("id"),
            pid=f.integer("pid"),
            cmd=f.str_list("cmd"),
            cols=f.integer("cols"),
            rows=f.integer("rows"),
            viewers=f.integer("viewers"),
            created_at=f.moment("created_at"),
            exit_code=f.opt_integer("exit_code"),
        )


def decode_list(data: Any, key: str, decode: Callable[[Any], T]) -> List[T]:
    """``{"<key>": [...]}`` to a list of decoded items."""
    return _Fields(data, f"{key} list").objs(key, decode)


def kill_count(data: Any) -> int:
    return _Fields(data, "kill-all result").integer("killed")

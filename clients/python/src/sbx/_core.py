"""What the sync and async clients share: everything but the I/O.

Each API call is described once here, as a :class:`Call`: the HTTP request
to make (method, path, query, body, headers, timeout) and how to decode a
successful answer. ``Client`` runs a ``Call`` on an ``httpx.Client`` and
``AsyncClient`` on an ``httpx.AsyncClient``, so both speak exactly the same
wire format, map errors the same way and compute timeouts the same way;
only the waiting differs. Streams (NDJSON events, file bytes) are decoded
by the I/O-free :class:`NdjsonDecoder` and summed up by :class:`EventLog`,
again shared.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal as signals
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import (
    IO,
    Any,
    Callable,
    Dict,
    Generic,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)
from urllib.parse import quote

import httpx

from . import models
from .errors import (
    ApiError,
    ProtocolError,
    RequestTimeout,
    SbxError,
    TransportError,
    error_for,
    error_from_response,
)
from .models import (
    ErrorEvent,
    ExecEvent,
    ExecResult,
    ExitEvent,
    StartEvent,
    StderrEvent,
    StdoutEvent,
)

T = TypeVar("T")

#: Where the CLI looks for a server too.
DEFAULT_URL = "http://127.0.0.1:7070"
#: The HTTP timeout of a call, in seconds, unless the client or call says otherwise.
DEFAULT_TIMEOUT = 60.0
#: How much longer than a command's own timeout the HTTP call may wait: the
#: server kills the command at its timeout and still has to answer.
EXEC_GRACE_S = 10.0
#: The data dir whose admin token the CLI falls back to.
DEFAULT_DATA_DIR = "/var/lib/sbx"
NDJSON = "application/x-ndjson"
#: Largest NDJSON line accepted: the server sends output in read-sized
#: pieces, so a longer line means a broken stream, not a big event.
MAX_EVENT_LINE = 16 * 1024 * 1024
CHUNK = 64 * 1024


class _Default:
    """The type of :data:`DEFAULT`."""

    _instance: Optional[_Default] = None

    def __new__(cls) -> _Default:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "DEFAULT"


#: "Use the client's setting": the default of every ``request_timeout``.
DEFAULT = _Default()

#: Seconds, ``None`` for no limit, or :data:`DEFAULT`.
TimeoutArg = Union[float, None, _Default]
Command = Union[str, Sequence[str]]
SignalArg = Union[str, int, signals.Signals]
#: Seconds, as a number or a timedelta.
Seconds = Union[int, float, timedelta]
#: A snapshot, by name or as listed.
SnapshotRef = Union[str, models.SnapshotInfo]
#: An image, by name or as listed.
ImageRef = Union[str, models.ImageInfo]
#: A preview, by id or as listed.
PreviewRef = Union[str, models.PreviewInfo]
#: A terminal, by id or as listed.
PtyRef = Union[str, models.PtyInfo]
#: What an image import sends: a tar's path, its bytes, or a binary file
#: object (read from where it is, not rewound).
ImageArchive = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]


# --- configuration ---------------------------------------------------------


def resolve_url(url: Optional[str]) -> str:
    """The argument, else ``SBX_URL``, else the CLI's default."""
    chosen = url or os.environ.get("SBX_URL") or DEFAULT_URL
    return chosen.rstrip("/")


def resolve_token(token: Optional[str]) -> Optional[str]:
    """The argument, else ``SBX_TOKEN``, else the local admin token (as the CLI).

    The last fallback reads ``$SBX_DATA_DIR/admin.token`` (default
    ``/var/lib/sbx``) when it is readable, so code on the machine that runs
    ``sbx serve`` works without setup; elsewhere there is no token and the
    server answers 401.
    """
    if token:
        return token
    from_env = os.environ.get("SBX_TOKEN")
    if from_env:
        return from_env.strip()
    path = Path(os.environ.get("SBX_DATA_DIR") or DEFAULT_DATA_DIR) / "admin.token"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def needs_tls(url: str) -> bool:
    """Whether a client of ``url`` needs certificates loaded.

    Loading them costs about 45 ms per client, which would dominate a
    ``Sandbox.connect`` on loopback; a plain ``http://`` client never does
    TLS (redirects are not followed), so it skips them.
    """
    return not url.lower().startswith("http://")


def client_headers(token: Optional[str]) -> Dict[str, str]:
    headers = {"user-agent": "sbx-python"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return headers


# --- timeouts --------------------------------------------------------------


def http_timeout(
    client_timeout: Optional[float],
    request_timeout: TimeoutArg,
    *,
    at_least: Optional[float] = None,
    unbounded_read: bool = False,
) -> httpx.Timeout:
    """The httpx timeout of one call.

    An explicit ``request_timeout`` wins. Otherwise the client's timeout,
    raised to ``at_least`` (a command's own timeout plus grace, so the HTTP
    call never gives up on a command the server is still allowed to run),
    or, with ``unbounded_read``, with no limit on waiting for the answer
    (following logs, waiting for a process) while connecting stays bounded.
    """
    if not isinstance(request_timeout, _Default):
        return httpx.Timeout(request_timeout)
    if unbounded_read:
        return httpx.Timeout(client_timeout, read=None)
    if at_least is not None and client_timeout is not None:
        return httpx.Timeout(max(client_timeout, at_least))
    return httpx.Timeout(client_timeout)


def command_timeout_ms(timeout: Optional[float]) -> Optional[int]:
    """Seconds (the SDK's unit) to the wire's milliseconds, never 0."""
    if timeout is None:
        return None
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    return max(1, math.ceil(timeout * 1000))


@contextlib.contextmanager
def transport_errors() -> Iterator[None]:
    """Maps httpx's failures to the SDK's: a timeout, or no answer at all."""
    try:
        yield
    except httpx.TimeoutException as err:
        raise RequestTimeout(f"timed out: {err or type(err).__name__}") from err
    except httpx.RequestError as err:
        raise TransportError(f"{type(err).__name__}: {err}") from err


# --- requests --------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    params: Dict[str, str] = field(default_factory=dict)
    #: A JSON body; ``None`` for none (no endpoint takes a JSON null).
    json: Any = None
    #: A raw body: bytes, or an iterable the transport streams.
    content: Any = None
    headers: Dict[str, str] = field(default_factory=dict)
    timeout: TimeoutArg = DEFAULT
    #: Given to ``http_timeout`` together with the client's timeout.
    at_least: Optional[float] = None
    unbounded_read: bool = False

    def timeout_for(self, client_timeout: Optional[float]) -> httpx.Timeout:
        return http_timeout(
            client_timeout,
            self.timeout,
            at_least=self.at_least,
            unbounded_read=self.unbounded_read,
        )


@dataclass(frozen=True)
class Call(Generic[T]):
    """A request and the decoder of its successful answer's body."""

    request: Request
    decode: Callable[[bytes], T]


def raise_for_status(response: httpx.Response) -> None:
    """Raises the API's error for a non-2xx answer whose body has been read."""
    if response.is_success:
        return
    raise error_from_response(response.status_code, response.content, response.headers)


def json_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as err:
        raise ProtocolError(f"invalid JSON in the answer: {err}") from err


def _json(decode: Callable[[Any], T]) -> Callable[[bytes], T]:
    return lambda body: decode(json_body(body))


def _nothing(_body: bytes) -> None:
    return None


def _quote(part: Union[str, int]) -> str:
    return quote(str(part), safe="")


def _clean(mapping: Optional[Mapping[str, Any]]) -> Dict[str, str]:
    return {str(k): str(v) for k, v in (mapping or {}).items()}


def command_fields(cmd: Command) -> Dict[str, Any]:
    """A string runs through the shell (as ``sbx exec --shell``), a list as an argv."""
    if isinstance(cmd, str):
        return {"shell": cmd}
    if isinstance(cmd, (bytes, bytearray)):
        raise TypeError("cmd must be a str (a shell script) or a sequence of str (an argv)")
    argv = [str(arg) for arg in cmd]
    if not argv:
        raise ValueError("cmd must name a program")
    return {"cmd": argv}


def _drop_none(fields: Dict[str, Any]) -> Dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None and value != {}}


def whole_seconds(value: Optional[Seconds], name: str, *, minimum: int = 0) -> Optional[int]:
    """Seconds (a number or a timedelta) to the wire's whole seconds, rounded up."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} is a number of seconds or a timedelta, got {value!r}")
    seconds = math.ceil(value)
    if seconds < minimum:
        raise ValueError(f"{name} must be at least {minimum} s, got {value!r}")
    return seconds


def snapshot_name(snapshot: SnapshotRef) -> str:
    return snapshot.name if isinstance(snapshot, models.SnapshotInfo) else snapshot


def image_name(image: ImageRef) -> str:
    return image.name if isinstance(image, models.ImageInfo) else image


def error_body(data: Any) -> ApiError:
    """The exception for an error body found inside a successful answer."""
    if not isinstance(data, dict) or not isinstance(data.get("error_code"), str):
        raise ProtocolError(f"expected an error body, got {data!r:.200}")
    request_id = data.get("request_id")
    return error_for(
        data["error_code"],
        str(data.get("message", "")),
        request_id=request_id if isinstance(request_id, str) else None,
    )


# sandboxes


def sandbox_path(sandbox_id: str, rest: str = "") -> str:
    return f"/v1/sandboxes/{_quote(sandbox_id)}{rest}"


@dataclass(frozen=True)
class Created:
    """``POST /v1/sandboxes``: the sandbox and its own token."""

    info: models.SandboxInfo
    token: str


def _created(data: Any) -> Created:
    info = models.SandboxInfo.from_json(data)
    token = data.get("token")
    if not isinstance(token, str):
        raise ProtocolError("the created sandbox has no token")
    return Created(info, token)


def create_sandbox(
    *,
    image: Optional[ImageRef],
    memory_mb: Optional[int],
    cpus: Optional[float],
    disk_mb: Optional[int],
    egress: Optional[Sequence[str]],
    env: Optional[Mapping[str, str]],
    labels: Optional[Mapping[str, str]],
    timeout_s: Optional[Seconds] = None,
    idle_timeout_s: Optional[Seconds] = None,
    on_timeout: Optional[str] = None,
    auto_resume: Optional[bool] = None,
    snapshot: Optional[SnapshotRef] = None,
    request_timeout: TimeoutArg,
) -> Call[Created]:
    if isinstance(egress, str):
        raise TypeError("egress is a list of host patterns, not one string")
    lifecycle = _drop_none(
        {
            "timeout_s": whole_seconds(timeout_s, "timeout_s"),
            "idle_timeout_s": whole_seconds(idle_timeout_s, "idle_timeout_s"),
            "on_timeout": on_timeout,
            "auto_resume": auto_resume,
        }
    )
    body = _drop_none(
        {
            "image": None if image is None else image_name(image),
            "memory_mb": memory_mb,
            "cpus": cpus,
            "disk_mb": disk_mb,
            "env": _clean(env),
            "labels": _clean(labels),
            "network": None if egress is None else {"egress": list(egress)},
            "lifecycle": lifecycle,
            "snapshot": None if snapshot is None else snapshot_name(snapshot),
        }
    )
    request = Request("POST", "/v1/sandboxes", json=body, timeout=request_timeout)
    return Call(request, _json(_created))


def get_sandbox(sandbox_id: str) -> Call[models.SandboxInfo]:
    return Call(Request("GET", sandbox_path(sandbox_id)), _json(models.SandboxInfo.from_json))


def list_sandboxes() -> Call[List[models.SandboxInfo]]:
    return Call(
        Request("GET", "/v1/sandboxes"),
        _json(lambda data: models.decode_list(data, "sandboxes", models.SandboxInfo.from_json)),
    )


def update_egress(sandbox_id: str, egress: Sequence[str]) -> Call[models.SandboxInfo]:
    if isinstance(egress, str):
        raise TypeError("egress is a list of host patterns, not one string")
    request = Request("PATCH", sandbox_path(sandbox_id), json={"network": {"egress": list(egress)}})
    return Call(request, _json(models.SandboxInfo.from_json))


def delete_sandbox(sandbox_id: str, request_timeout: TimeoutArg) -> Call[None]:
    return Call(Request("DELETE", sandbox_path(sandbox_id), timeout=request_timeout), _nothing)


# lifecycle


def change_state(
    sandbox_id: str, action: str, request_timeout: TimeoutArg
) -> Call[models.SandboxInfo]:
    """``POST …/stop``, ``/start``, ``/pause`` or ``/resume``: no body, the sandbox after."""
    request = Request("POST", sandbox_path(sandbox_id, f"/{action}"), timeout=request_timeout)
    return Call(request, _json(models.SandboxInfo.from_json))


def set_timeout(sandbox_id: str, timeout_s: Seconds) -> Call[models.SandboxInfo]:
    body = {"timeout_s": whole_seconds(timeout_s, "timeout_s", minimum=1)}
    request = Request("POST", sandbox_path(sandbox_id, "/timeout"), json=body)
    return Call(request, _json(models.SandboxInfo.from_json))


def create_snapshot(
    sandbox_id: str, name: str, request_timeout: TimeoutArg
) -> Call[models.SnapshotInfo]:
    request = Request(
        "POST", sandbox_path(sandbox_id, "/snapshots"), json={"name": name}, timeout=request_timeout
    )
    return Call(request, _json(models.SnapshotInfo.from_json))


def snapshot_path(name: SnapshotRef) -> str:
    return f"/v1/snapshots/{_quote(snapshot_name(name))}"


def list_snapshots() -> Call[List[models.SnapshotInfo]]:
    return Call(
        Request("GET", "/v1/snapshots"),
        _json(lambda data: models.decode_list(data, "snapshots", models.SnapshotInfo.from_json)),
    )


def get_snapshot(name: SnapshotRef) -> Call[models.SnapshotInfo]:
    return Call(Request("GET", snapshot_path(name)), _json(models.SnapshotInfo.from_json))


def delete_snapshot(name: SnapshotRef) -> Call[None]:
    return Call(Request("DELETE", snapshot_path(name)), _nothing)


#: One fork's outcome: the new sandbox and its token, or why it failed.
ForkOutcome = Union[Created, ApiError]


def _forks(data: Any) -> List[ForkOutcome]:
    forks = data.get("forks") if isinstance(data, dict) else None
    if not isinstance(forks, list):
        raise ProtocolError("the fork answer has no 'forks' list")
    outcomes: List[ForkOutcome] = []
    for item in forks:
        if isinstance(item, dict) and isinstance(item.get("sandbox"), dict):
            outcomes.append(_created(item["sandbox"]))
        elif isinstance(item, dict) and item.get("error") is not None:
            outcomes.append(error_body(item["error"]))
        else:
            raise ProtocolError(f"a fork outcome has neither sandbox nor error: {item!r:.200}")
    return outcomes


def fork(sandbox_id: str, count: int, request_timeout: TimeoutArg) -> Call[List[ForkOutcome]]:
    request = Request(
        "POST", sandbox_path(sandbox_id, "/fork"), json={"count": count}, timeout=request_timeout
    )
    return Call(request, _json(_forks))


def restore(
    sandbox_id: str, snapshot: SnapshotRef, request_timeout: TimeoutArg
) -> Call[models.SandboxInfo]:
    request = Request(
        "POST",
        sandbox_path(sandbox_id, "/restore"),
        json={"snapshot": snapshot_name(snapshot)},
        timeout=request_timeout,
    )
    return Call(request, _json(models.SandboxInfo.from_json))


def events(
    sandbox: Optional[str], since: Optional[int], follow: bool, request_timeout: TimeoutArg
) -> Request:
    """``GET /v1/events``, or ``GET /v1/sandboxes/{id}/events`` for one
    sandbox's (which a token bound to that sandbox may read): NDJSON, live
    with ``follow`` (no read timeout then)."""
    params = {"follow": "true" if follow else "false"}
    if since is not None:
        params["since"] = str(int(since))
    return Request(
        "GET",
        "/v1/events" if sandbox is None else sandbox_path(sandbox, "/events"),
        params=params,
        headers={"accept": NDJSON},
        timeout=request_timeout,
        unbounded_read=follow,
    )


# images


@contextlib.contextmanager
def image_archive(source: ImageArchive) -> Iterator[Any]:
    """The body of an image import: a path opened (and closed after the
    call), bytes as they are, a file object to be read in chunks. Files are
    streamed, never read whole."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as file:
            yield file
    elif isinstance(source, (bytes, bytearray, memoryview)):
        yield bytes(source)
    elif hasattr(source, "read"):
        yield source
    else:
        kind = type(source).__name__
        raise TypeError(f"an image archive is a path, bytes or a binary file, got {kind}")


def import_image(
    content: Any, name: Optional[str], request_timeout: TimeoutArg
) -> Call[models.ImageInfo]:
    """``POST /v1/images/import``: ``content`` from :func:`image_archive`."""
    request = Request(
        "POST",
        "/v1/images/import",
        params=_drop_none({"name": name}),
        content=content,
        headers={"content-type": "application/x-tar"},
        timeout=request_timeout,
    )
    return Call(request, _json(models.ImageInfo.from_json))


def pull_image(
    reference: str,
    *,
    name: Optional[str],
    username: Optional[str],
    password: Optional[str],
    token: Optional[str],
    insecure: bool,
    request_timeout: TimeoutArg,
) -> Request:
    """``POST /v1/images/pull``, streamed: progress lines, then the image or
    the error. No read timeout unless ``request_timeout``: a pull takes as
    long as the image needs, and the server is quiet while it applies the
    layers."""
    if (username is None) != (password is None):
        raise ValueError("give username and password together")
    if token is not None and username is not None:
        raise ValueError("give a username and password, or a token, not both")
    body = _drop_none(
        {
            "reference": reference,
            "name": name,
            "username": username,
            "password": password,
            "token": token,
        }
    )
    if insecure:
        body["insecure"] = True
    return Request(
        "POST",
        "/v1/images/pull",
        json=body,
        headers={"accept": NDJSON},
        timeout=request_timeout,
        unbounded_read=True,
    )


def build_image(
    name: str,
    *,
    content: Any,
    dockerfile: Optional[str],
    build_args: Optional[Mapping[str, str]],
    allow: Optional[Sequence[str]],
    no_cache: bool,
    request_timeout: TimeoutArg,
) -> Request:
    """``POST /v1/images/build``, streamed: ``content`` is the context tar;
    each step and its output, then the image or the error. No read timeout
    unless ``request_timeout``: a step may run long without a word."""
    if isinstance(allow, str):
        raise TypeError("allow is a list of hosts, not one string")
    params = {"name": name}
    if dockerfile is not None:
        params["dockerfile"] = dockerfile
    if build_args:
        params["build_args"] = json.dumps(_clean(build_args), sort_keys=True)
    if allow:
        params["allow"] = ",".join(allow)
    if no_cache:
        params["no_cache"] = "true"
    return Request(
        "POST",
        "/v1/images/build",
        params=params,
        content=content,
        headers={"content-type": "application/x-tar", "accept": NDJSON},
        timeout=request_timeout,
        unbounded_read=True,
    )


# Routes beside ``/v1/images/{name}`` that a bare name would land on.
_IMAGE_ROUTES = ("import", "pull", "build")


def image_path(name: ImageRef) -> str:
    """A name holds ``/`` and ``:``; it travels as one segment, slashes encoded
    (and the first letter too for a name that is a sibling route's)."""
    segment = quote(image_name(name), safe=":@")
    if segment in _IMAGE_ROUTES:
        segment = f"%{ord(segment[0]):02X}{segment[1:]}"
    return f"/v1/images/{segment}"


def list_images() -> Call[List[models.ImageInfo]]:
    return Call(
        Request("GET", "/v1/images"),
        _json(lambda data: models.decode_list(data, "images", models.ImageInfo.from_json)),
    )


def get_image(name: ImageRef) -> Call[models.ImageInfo]:
    return Call(Request("GET", image_path(name)), _json(models.ImageInfo.from_json))


def delete_image(name: ImageRef) -> Call[None]:
    return Call(Request("DELETE", image_path(name)), _nothing)


# exec


def exec_request(
    sandbox_id: str,
    cmd: Command,
    *,
    cwd: Optional[str],
    env: Optional[Mapping[str, str]],
    timeout: Optional[float],
    stdin: Optional[str],
    user: Optional[str],
    stream: bool,
    request_timeout: TimeoutArg,
) -> Request:
    """``POST …/exec``; a stream asks for NDJSON the way the Rust client does."""
    if stdin is not None and not isinstance(stdin, str):
        raise TypeError("stdin travels in JSON and must be a str")
    body = _drop_none(
        {
            **command_fields(cmd),
            "cwd": cwd,
            "env": _clean(env),
            "timeout_ms": command_timeout_ms(timeout),
            "stdin": stdin,
            "user": user,
        }
    )
    if stream:
        body["stream"] = True
    return Request(
        "POST",
        sandbox_path(sandbox_id, "/exec"),
        json=body,
        headers={"accept": NDJSON} if stream else {},
        timeout=request_timeout,
        at_least=None if timeout is None else timeout + EXEC_GRACE_S,
    )


def exec_buffered(request: Request) -> Call[ExecResult]:
    """The call of a non-streamed :func:`exec_request`."""
    return Call(request, _json(ExecResult.from_json))


# processes


def start_process(
    sandbox_id: str,
    cmd: Command,
    *,
    cwd: Optional[str],
    env: Optional[Mapping[str, str]],
    user: Optional[str],
    name: Optional[str],
) -> Call[models.ProcessInfo]:
    body = _drop_none(
        {**command_fields(cmd), "cwd": cwd, "env": _clean(env), "user": user, "name": name}
    )
    request = Request("POST", sandbox_path(sandbox_id, "/processes"), json=body)
    return Call(request, _json(models.ProcessInfo.from_json))


def list_processes(sandbox_id: str) -> Call[List[models.ProcessInfo]]:
    return Call(
        Request("GET", sandbox_path(sandbox_id, "/processes")),
        _json(lambda data: models.decode_list(data, "processes", models.ProcessInfo.from_json)),
    )


def get_process(sandbox_id: str, pid: int) -> Call[models.ProcessInfo]:
    return Call(
        Request("GET", sandbox_path(sandbox_id, f"/processes/{_quote(pid)}")),
        _json(models.ProcessInfo.from_json),
    )


def process_logs(
    sandbox_id: str, pid: int, *, follow: bool, tail: Optional[int], request_timeout: TimeoutArg
) -> Request:
    params = {"follow": "true" if follow else "false"}
    if tail is not None:
        params["tail"] = str(int(tail))
    return Request(
        "GET",
        sandbox_path(sandbox_id, f"/processes/{_quote(pid)}/logs"),
        params=params,
        headers={"accept": NDJSON},
        timeout=request_timeout,
        unbounded_read=follow,
    )


def write_stdin(sandbox_id: str, pid: int, data: Union[bytes, str], close: bool) -> Call[None]:
    payload = data.encode() if isinstance(data, str) else bytes(data)
    request = Request(
        "POST",
        sandbox_path(sandbox_id, f"/processes/{_quote(pid)}/stdin"),
        params={"close": "true"} if close else {},
        content=payload,
        headers={"content-type": "application/octet-stream"},
    )
    return Call(request, _nothing)


def signal_name(sig: SignalArg) -> str:
    """``"TERM"``, ``signal.SIGTERM`` or ``15`` to what the agent parses."""
    if isinstance(sig, signals.Signals):
        return sig.name
    return str(sig)


def signal_process(sandbox_id: str, pid: int, sig: SignalArg) -> Call[None]:
    request = Request(
        "POST",
        sandbox_path(sandbox_id, f"/processes/{_quote(pid)}/signal"),
        json={"signal": signal_name(sig)},
    )
    return Call(request, _nothing)


def wait_process(sandbox_id: str, pid: int, timeout: TimeoutArg) -> Call[models.ProcessInfo]:
    request = Request(
        "GET",
        sandbox_path(sandbox_id, f"/processes/{_quote(pid)}/wait"),
        timeout=timeout,
        unbounded_read=True,
    )
    return Call(request, _json(models.ProcessInfo.from_json))


def kill_all(sandbox_id: str) -> Call[int]:
    request = Request("POST", sandbox_path(sandbox_id, "/processes/kill-all"))
    return Call(request, _json(models.kill_count))


# files


def _octal(mode: Optional[int]) -> Optional[str]:
    return None if mode is None else format(mode, "o")


def read_file(sandbox_id: str, path: str, request_timeout: TimeoutArg) -> Request:
    return Request(
        "GET", sandbox_path(sandbox_id, "/files"), params={"path": path}, timeout=request_timeout
    )


def write_file(
    sandbox_id: str,
    path: str,
    content: Any,
    mode: Optional[int],
    request_timeout: TimeoutArg,
    owner: Optional[str] = None,
) -> Call[models.FileInfo]:
    params = _drop_none({"path": path, "mode": _octal(mode), "owner": owner})
    request = Request(
        "PUT",
        sandbox_path(sandbox_id, "/files"),
        params=params,
        content=content,
        headers={"content-type": "application/octet-stream"},
        timeout=request_timeout,
    )
    return Call(request, _json(models.FileInfo.from_json))


def remove_file(sandbox_id: str, path: str, recursive: bool) -> Call[None]:
    params = {"path": path}
    if recursive:
        params["recursive"] = "true"
    return Call(Request("DELETE", sandbox_path(sandbox_id, "/files"), params=params), _nothing)


def stat_file(sandbox_id: str, path: str) -> Call[models.FileInfo]:
    request = Request("GET", sandbox_path(sandbox_id, "/files/stat"), params={"path": path})
    return Call(request, _json(models.FileInfo.from_json))


def list_files(sandbox_id: str, path: str, depth: Optional[int]) -> Call[List[models.FileInfo]]:
    params = {"path": path}
    if depth is not None:
        params["depth"] = str(int(depth))
    return Call(
        Request("GET", sandbox_path(sandbox_id, "/files/list"), params=params),
        _json(lambda data: models.decode_list(data, "entries", models.FileInfo.from_json)),
    )


def mkdir(
    sandbox_id: str, path: str, mode: Optional[int], owner: Optional[str] = None
) -> Call[models.FileInfo]:
    body = _drop_none({"path": path, "mode": _octal(mode), "owner": owner})
    request = Request("POST", sandbox_path(sandbox_id, "/files/mkdir"), json=body)
    return Call(request, _json(models.FileInfo.from_json))


def move_file(sandbox_id: str, source: str, destination: str) -> Call[None]:
    body = {"from": source, "to": destination}
    return Call(Request("POST", sandbox_path(sandbox_id, "/files/move"), json=body), _nothing)


def upload_archive(
    sandbox_id: str, directory: str, content: Any, request_timeout: TimeoutArg
) -> Call[models.ArchiveSummary]:
    request = Request(
        "PUT",
        sandbox_path(sandbox_id, "/archive"),
        params={"path": directory},
        content=content,
        headers={"content-type": "application/x-tar"},
        timeout=request_timeout,
    )
    return Call(request, _json(models.ArchiveSummary.from_json))


def download_archive(sandbox_id: str, path: str, request_timeout: TimeoutArg) -> Request:
    return Request(
        "GET", sandbox_path(sandbox_id, "/archive"), params={"path": path}, timeout=request_timeout
    )


# sessions


def session_path(sandbox_id: str, session_id: str, rest: str = "") -> str:
    return sandbox_path(sandbox_id, f"/sessions/{_quote(session_id)}{rest}")


def create_session(
    sandbox_id: str,
    *,
    cwd: Optional[str],
    env: Optional[Mapping[str, str]],
    user: Optional[str],
) -> Call[models.SessionInfo]:
    body = _drop_none({"cwd": cwd, "env": _clean(env), "user": user})
    request = Request("POST", sandbox_path(sandbox_id, "/sessions"), json=body)
    return Call(request, _json(models.SessionInfo.from_json))


def list_sessions(sandbox_id: str) -> Call[List[models.SessionInfo]]:
    return Call(
        Request("GET", sandbox_path(sandbox_id, "/sessions")),
        _json(lambda data: models.decode_list(data, "sessions", models.SessionInfo.from_json)),
    )


def delete_session(sandbox_id: str, session_id: str) -> Call[None]:
    return Call(Request("DELETE", session_path(sandbox_id, session_id)), _nothing)


def session_exec_request(
    sandbox_id: str,
    session_id: str,
    command: str,
    *,
    timeout: Optional[float],
    stream: bool,
    request_timeout: TimeoutArg,
) -> Request:
    """``POST …/sessions/{sid}/exec``: shell text, typed into the session's shell."""
    if not isinstance(command, str):
        raise TypeError("a session runs shell text: command must be a str")
    body = _drop_none({"command": command, "timeout_ms": command_timeout_ms(timeout)})
    if stream:
        body["stream"] = True
    return Request(
        "POST",
        session_path(sandbox_id, session_id, "/exec"),
        json=body,
        headers={"accept": NDJSON} if stream else {},
        timeout=request_timeout,
        at_least=None if timeout is None else timeout + EXEC_GRACE_S,
    )


def signal_session(sandbox_id: str, session_id: str, sig: SignalArg) -> Call[None]:
    request = Request(
        "POST", session_path(sandbox_id, session_id, "/signal"), json={"signal": signal_name(sig)}
    )
    return Call(request, _nothing)


def no_session(session_id: str) -> ApiError:
    """What looking up a session that is not listed raises."""
    return error_for("not_found", f"no session {session_id!r} in this sandbox", status=404)


# watch


def watch(sandbox_id: str, path: str, recursive: bool, request_timeout: TimeoutArg) -> Request:
    """``GET …/watch``: NDJSON that never ends by itself (no read timeout)."""
    return Request(
        "GET",
        sandbox_path(sandbox_id, "/watch"),
        params={"path": path, "recursive": "true" if recursive else "false"},
        headers={"accept": NDJSON},
        timeout=request_timeout,
        unbounded_read=True,
    )


def watch_decoder() -> LineDecoder[models.WatchEvent]:
    """The lines of ``GET …/watch``."""
    return LineDecoder(models.WatchEvent.from_json)


# ports

#: How long ``GET …/ports/{port}/wait`` waits when not told, in seconds.
DEFAULT_PORT_WAIT_S = 30.0
#: Characters a proxied path keeps as they are: RFC 3986's path characters
#: and ``%``, so an already encoded path is not encoded twice.
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"


def _port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port must be an int between 1 and 65535, got {port!r}")
    return port


def port_path(sandbox_id: str, port: int, path: str = "/") -> str:
    """``/v1/sandboxes/{id}/ports/{port}/{path}``: ``path`` without its query."""
    if "?" in path or "#" in path:
        raise ValueError("give the query as params, not in the path")
    tail = quote(path.lstrip("/"), safe=_PATH_SAFE)
    return sandbox_path(sandbox_id, f"/ports/{_port(port)}/{tail}")


def wait_port(
    sandbox_id: str, port: int, timeout: Optional[float], request_timeout: TimeoutArg
) -> Call[models.PortStatus]:
    """``GET …/ports/{port}/wait``: the HTTP call waits as long as the server may."""
    params: Dict[str, str] = {}
    timeout_ms = command_timeout_ms(timeout)
    if timeout_ms is not None:
        params["timeout_ms"] = str(timeout_ms)
    waits = DEFAULT_PORT_WAIT_S if timeout is None else timeout
    request = Request(
        "GET",
        sandbox_path(sandbox_id, f"/ports/{_port(port)}/wait"),
        params=params,
        timeout=request_timeout,
        at_least=waits + EXEC_GRACE_S,
    )
    return Call(request, _json(models.PortStatus.from_json))


def port_request(
    sandbox_id: str,
    port: int,
    method: str,
    path: str,
    *,
    params: Optional[Mapping[str, Any]],
    headers: Optional[Mapping[str, str]],
    content: Union[str, bytes, None],
    request_timeout: TimeoutArg,
) -> Request:
    """Any request to ``127.0.0.1:{port}`` inside the sandbox, through its agent."""
    body = content.encode() if isinstance(content, str) else content
    return Request(
        method.upper(),
        port_path(sandbox_id, port, path),
        params=_clean(params),
        content=body,
        headers=_clean(headers),
        timeout=request_timeout,
    )


# previews


def previews_path(sandbox_id: str, rest: str = "") -> str:
    return sandbox_path(sandbox_id, f"/previews{rest}")


def preview_id(preview: PreviewRef) -> str:
    return preview.id if isinstance(preview, models.PreviewInfo) else preview


def _absolute_preview(base_url: str) -> Callable[[Any], models.PreviewInfo]:
    """Decodes a preview, its ``url`` made absolute against ``base_url``
    should the server give only a path."""

    def decode(data: Any) -> models.PreviewInfo:
        preview = models.PreviewInfo.from_json(data)
        if preview.url is not None and preview.url.startswith("/"):
            preview = replace(preview, url=base_url.rstrip("/") + preview.url)
        return preview

    return decode


def create_preview(
    sandbox_id: str, port: int, ttl_s: Optional[Seconds], base_url: str
) -> Call[models.PreviewInfo]:
    body = _drop_none({"port": _port(port), "ttl_s": whole_seconds(ttl_s, "ttl_s", minimum=1)})
    request = Request("POST", previews_path(sandbox_id), json=body)
    return Call(request, _json(_absolute_preview(base_url)))


def list_previews(sandbox_id: str) -> Call[List[models.PreviewInfo]]:
    return Call(
        Request("GET", previews_path(sandbox_id)),
        _json(lambda data: models.decode_list(data, "previews", models.PreviewInfo.from_json)),
    )


def revoke_preview(sandbox_id: str, preview: PreviewRef) -> Call[None]:
    path = previews_path(sandbox_id, f"/{_quote(preview_id(preview))}")
    return Call(Request("DELETE", path), _nothing)


# terminals


def pty_id(pty: PtyRef) -> str:
    return pty.id if isinstance(pty, models.PtyInfo) else pty


def pty_path(sandbox_id: str, pty: PtyRef, rest: str = "") -> str:
    return sandbox_path(sandbox_id, f"/pty/{_quote(pty_id(pty))}{rest}")


def _size(cols: int, rows: int) -> Dict[str, int]:
    for name, value in (("cols", cols), ("rows", rows)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
            raise ValueError(f"{name} must be an int between 1 and 1000, got {value!r}")
    return {"cols": cols, "rows": rows}


def create_pty(
    sandbox_id: str,
    *,
    cols: int,
    rows: int,
    cmd: Optional[Sequence[str]],
    env: Optional[Mapping[str, str]],
    cwd: Optional[str],
    user: Optional[str],
) -> Call[models.PtyInfo]:
    if isinstance(cmd, (str, bytes, bytearray)):
        raise TypeError("a terminal's cmd is an argv (a list of str), not one string")
    argv = None if cmd is None else [str(arg) for arg in cmd]
    if argv is not None and not argv:
        raise ValueError("cmd must name a program")
    body = _drop_none(
        {**_size(cols, rows), "cmd": argv, "env": _clean(env), "cwd": cwd, "user": user}
    )
    request = Request("POST", sandbox_path(sandbox_id, "/pty"), json=body)
    return Call(request, _json(models.PtyInfo.from_json))


def list_ptys(sandbox_id: str) -> Call[List[models.PtyInfo]]:
    return Call(
        Request("GET", sandbox_path(sandbox_id, "/pty")),
        _json(lambda data: models.decode_list(data, "terminals", models.PtyInfo.from_json)),
    )


def resize_pty(sandbox_id: str, pty: PtyRef, cols: int, rows: int) -> Call[None]:
    request = Request("POST", pty_path(sandbox_id, pty, "/resize"), json=_size(cols, rows))
    return Call(request, _nothing)


def kill_pty(sandbox_id: str, pty: PtyRef) -> Call[None]:
    return Call(Request("DELETE", pty_path(sandbox_id, pty)), _nothing)


def websocket_url(base_url: str, path: str) -> str:
    """The API's URL with ``ws://`` (``wss://`` for ``https://``)."""
    scheme, sep, rest = base_url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise ValueError(f"the server URL {base_url!r} is neither http:// nor https://")
    return ("wss" if scheme.lower() == "https" else "ws") + "://" + rest.rstrip("/") + path


def resize_frame(cols: int, rows: int) -> str:
    """The text frame that resizes an attached terminal."""
    return json.dumps({"type": "resize", **_size(cols, rows)})


def pty_exit_code(frame: str) -> Optional[int]:
    """A terminal's text frame: the exit code of an ``exit`` frame, ``None``
    for a frame of a type this SDK does not know (a newer server)."""
    try:
        data = json.loads(frame)
    except ValueError as err:
        raise ProtocolError(f"invalid terminal frame {frame[:200]!r}: {err}") from err
    if _line_type(data, "terminal frame") != "exit":
        return None
    code = data.get("exit_code")
    if isinstance(code, bool) or not isinstance(code, int):
        raise ProtocolError(f"a terminal's exit frame has no exit_code: {frame[:200]!r}")
    return code


def missing_websockets(err: ImportError) -> ImportError:
    """What attaching to a terminal raises without the ``websockets`` package."""
    return ImportError(f"attaching to a terminal needs websockets: pip install 'sbx[pty]' ({err})")


# server, tokens, audit


def server_info() -> Call[models.ServerInfo]:
    return Call(Request("GET", "/v1/info"), _json(models.ServerInfo.from_json))


def metrics() -> Call[str]:
    return Call(Request("GET", "/metrics"), lambda body: body.decode("utf-8", "replace"))


def create_token(
    name: str,
    scopes: Sequence[str],
    ttl: Union[int, float, timedelta, None],
    sandbox: Optional[str],
) -> Call[models.CreatedToken]:
    if isinstance(scopes, str):
        raise TypeError("scopes is a list of scope names, not one string")
    if isinstance(ttl, timedelta):
        ttl = ttl.total_seconds()
    body = _drop_none(
        {
            "name": name,
            "scopes": list(scopes),
            "ttl_s": None if ttl is None else max(1, math.ceil(ttl)),
            "sandbox": sandbox,
        }
    )
    return Call(Request("POST", "/v1/tokens", json=body), _json(models.CreatedToken.from_json))


def list_tokens() -> Call[List[models.TokenInfo]]:
    return Call(
        Request("GET", "/v1/tokens"),
        _json(lambda data: models.decode_list(data, "tokens", models.TokenInfo.from_json)),
    )


def revoke_token(token_id: str) -> Call[None]:
    return Call(Request("DELETE", f"/v1/tokens/{_quote(token_id)}"), _nothing)


def audit(
    sandbox: Optional[str], since: Union[datetime, str, None], limit: Optional[int]
) -> Call[List[models.AuditRecord]]:
    params: Dict[str, str] = {}
    if sandbox is not None:
        params["sandbox"] = sandbox
    if since is not None:
        params["since"] = since if isinstance(since, str) else models.format_time(since)
    if limit is not None:
        params["limit"] = str(int(limit))
    return Call(
        Request("GET", "/v1/audit", params=params),
        _json(lambda data: models.decode_list(data, "records", models.AuditRecord.from_json)),
    )


# --- streams ---------------------------------------------------------------


class LineDecoder(Generic[T]):
    """Bytes in, values out: one JSON object per line, split anywhere."""

    def __init__(self, decode: Callable[[Any], T]) -> None:
        self._decode_value = decode
        self._pending = bytearray()

    def feed(self, chunk: bytes) -> List[T]:
        self._pending += chunk
        events: List[T] = []
        while True:
            newline = self._pending.find(b"\n")
            if newline < 0:
                break
            line = bytes(self._pending[:newline])
            del self._pending[: newline + 1]
            if line.strip():
                events.append(self._decode(line))
        if len(self._pending) > MAX_EVENT_LINE:
            raise ProtocolError(f"an event line is longer than {MAX_EVENT_LINE} bytes")
        return events

    def finish(self) -> List[T]:
        """The last line, if the stream ended without a newline."""
        rest, self._pending = bytes(self._pending), bytearray()
        return [self._decode(rest)] if rest.strip() else []

    def _decode(self, line: bytes) -> T:
        try:
            return self._decode_value(json.loads(line))
        except ValueError as err:
            raise ProtocolError(f"invalid event line {line[:200]!r}: {err}") from err


class NdjsonDecoder(LineDecoder[ExecEvent]):
    """The events of an exec or of process logs."""

    def __init__(self) -> None:
        super().__init__(models.parse_event)


def sandbox_event_decoder() -> LineDecoder[models.SandboxEvent]:
    """The lines of ``GET /v1/events``."""
    return LineDecoder(models.SandboxEvent.from_json)


#: One line of an image pull: a blob's progress, the image, the error, or
#: ``None`` for a line of a type this SDK does not know (a newer server).
PullLine = Union[models.PullProgress, models.ImageInfo, ApiError, None]
#: One line of a build: a step, output, the image, the error, or ``None``.
BuildLine = Union[models.BuildStep, models.BuildOutput, models.ImageInfo, ApiError, None]


def _line_type(data: Any, what: str) -> str:
    kind = data.get("type") if isinstance(data, dict) else None
    if not isinstance(kind, str):
        raise ProtocolError(f"a {what} line has no type: {data!r:.200}")
    return kind


def _outcome(kind: str, data: Any) -> Union[models.ImageInfo, ApiError, None]:
    """The ``done`` or ``error`` line that ends a pull or a build."""
    if kind == "done":
        return models.ImageInfo.from_json(data.get("image"))
    if kind == "error":
        return error_body(data.get("error"))
    return None


def _pull_line(data: Any) -> PullLine:
    kind = _line_type(data, "pull")
    if kind == "blob":
        return models.PullProgress.from_json(data)
    return _outcome(kind, data)


def _build_line(data: Any) -> BuildLine:
    kind = _line_type(data, "build")
    if kind == "step":
        return models.BuildStep.from_json(data)
    if kind in ("stdout", "stderr"):
        return models.BuildOutput.from_json(data)
    return _outcome(kind, data)


def pull_decoder() -> LineDecoder[PullLine]:
    """The lines of ``POST /v1/images/pull`` with ``Accept: application/x-ndjson``."""
    return LineDecoder(_pull_line)


def build_decoder() -> LineDecoder[BuildLine]:
    """The lines of ``POST /v1/images/build`` with ``Accept: application/x-ndjson``."""
    return LineDecoder(_build_line)


ProgressCallback = Callable[[models.PullProgress], Any]
BuildCallback = Callable[[models.BuildEvent], Any]


class OutcomeLog:
    """Follows the lines of a pull or a build to its outcome: the image or
    the error. Lines of the ``progress`` types go to the callback."""

    progress: Tuple[type, ...] = ()
    #: What the stream is, for its errors.
    what = "image"

    def __init__(self, callback: Optional[Callable[[Any], Any]]) -> None:
        self.callback = callback
        self.image: Optional[models.ImageInfo] = None
        self.error: Optional[ApiError] = None

    def observe(self, line: Any) -> Optional[Callable[[], Any]]:
        """Records the line; returns the callback call it asks for, if any.
        Only the first outcome counts."""
        if self.image is not None or self.error is not None:
            return None
        if isinstance(line, self.progress):
            if self.callback is not None:
                callback = self.callback
                return lambda: callback(line)
        elif isinstance(line, models.ImageInfo):
            self.image = line
        elif isinstance(line, ApiError):
            self.error = line
        return None

    def result(self, request_id: Optional[str] = None) -> models.ImageInfo:
        """The image, once the stream has ended; the error line raised as an
        error answer with that body would be (``request_id``, the answer's
        header, when the line has none)."""
        if self.error is not None:
            if self.error.request_id is None:
                self.error.request_id = request_id
            raise self.error
        if self.image is None:
            raise ProtocolError(f"the {self.what} stream ended without the image or an error")
        return self.image


class PullLog(OutcomeLog):
    """Follows an image pull's lines to its outcome."""

    progress = (models.PullProgress,)
    what = "pull"

    def __init__(self, on_progress: Optional[ProgressCallback]) -> None:
        super().__init__(on_progress)


class BuildLog(OutcomeLog):
    """Follows a build's lines to its outcome."""

    progress = (models.BuildStep, models.BuildOutput)
    what = "build"

    def __init__(self, on_event: Optional[BuildCallback]) -> None:
        super().__init__(on_event)


OutputCallback = Callable[[str], Any]


class EventLog:
    """Sums up a stream of events into an :class:`ExecResult`."""

    def __init__(
        self, on_stdout: Optional[OutputCallback], on_stderr: Optional[OutputCallback]
    ) -> None:
        self.on_stdout = on_stdout
        self.on_stderr = on_stderr
        self.stdout: List[str] = []
        self.stderr: List[str] = []
        self.pid: Optional[int] = None
        self.exit: Optional[ExitEvent] = None
        self.error: Optional[ErrorEvent] = None

    def observe(self, event: ExecEvent) -> Optional[Callable[[], Any]]:
        """Records the event; returns the callback call it asks for, if any."""
        if isinstance(event, StartEvent):
            self.pid = event.pid
        elif isinstance(event, StdoutEvent):
            self.stdout.append(event.data)
            if self.on_stdout is not None:
                callback, data = self.on_stdout, event.data
                return lambda: callback(data)
        elif isinstance(event, StderrEvent):
            self.stderr.append(event.data)
            if self.on_stderr is not None:
                callback, data = self.on_stderr, event.data
                return lambda: callback(data)
        elif isinstance(event, ExitEvent):
            self.exit = event
        elif isinstance(event, ErrorEvent):
            self.error = event
        return None

    def result(self) -> ExecResult:
        """The outcome, once the stream has ended."""
        if self.error is not None:
            raise error_for(self.error.error_code, self.error.message)
        if self.exit is None:
            raise ProtocolError("the event stream ended without an exit event")
        return ExecResult(
            exit_code=self.exit.exit_code,
            stdout="".join(self.stdout),
            stderr="".join(self.stderr),
            duration_ms=self.exit.duration_ms,
            timed_out=self.exit.timed_out,
            truncated=False,
        )


def closed_stream_error() -> SbxError:
    return ProtocolError("the stream is closed")

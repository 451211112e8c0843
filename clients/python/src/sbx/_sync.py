"""The blocking API: :class:`Client`, :class:`Sandbox` and their parts.

Every method builds its request with :mod:`sbx._core` and runs it on one
``httpx.Client`` (a pooled keep-alive connection per server), so this
module holds only the blocking I/O; :mod:`sbx._async` is its twin.
"""

from __future__ import annotations

import builtins
import os
from datetime import datetime, timedelta
from types import TracebackType
from typing import (
    IO,
    Any,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Type,
    TypeVar,
    Union,
)

import httpx

from . import _core
from ._context import BuildContext
from ._core import (
    DEFAULT,
    BuildCallback,
    Call,
    Command,
    ImageArchive,
    ImageRef,
    OutputCallback,
    PreviewRef,
    ProgressCallback,
    PtyRef,
    Request,
    Seconds,
    SignalArg,
    SnapshotRef,
    TimeoutArg,
)
from ._tar import extract_tar, spool, write_tar
from ._terminal import Terminal
from ._terminal import connect as connect_terminal
from .errors import ApiError, NotFound
from .models import (
    ArchiveSummary,
    AuditRecord,
    CreatedToken,
    ExecEvent,
    ExecResult,
    FileInfo,
    ImageInfo,
    OnTimeout,
    PortStatus,
    PreviewInfo,
    ProcessInfo,
    PtyInfo,
    SandboxEvent,
    SandboxInfo,
    ServerInfo,
    SessionInfo,
    SnapshotInfo,
    TokenInfo,
    WatchEvent,
)

T = TypeVar("T")
FileContent = Union[bytes, bytearray, memoryview, str, IO[bytes], Iterable[bytes]]


class Client:
    """A connection to ``sbx serve``: the admin calls, and what sandboxes run on.

    ``url`` defaults to ``SBX_URL``, then ``http://127.0.0.1:7070``;
    ``token`` to ``SBX_TOKEN``, then the local admin token (as the CLI).
    ``timeout`` is every call's HTTP timeout in seconds (``None``: no
    limit); calls that wait for something longer raise it as needed (see
    :meth:`Sandbox.exec`). Close it, or use it as a context manager.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        timeout: Optional[float] = _core.DEFAULT_TIMEOUT,
    ) -> None:
        self.url = _core.resolve_url(url)
        self.token = _core.resolve_token(token)
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.url,
            headers=_core.client_headers(self.token),
            timeout=timeout,
            verify=_core.needs_tls(self.url),
        )
        self.tokens = Tokens(self)
        self.snapshots = Snapshots(self)
        self.images = Images(self)

    def __repr__(self) -> str:
        return f"Client(url={self.url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # transport

    def _build(self, request: Request) -> httpx.Request:
        content = request.content
        if content is not None and hasattr(content, "read"):
            content = _file_chunks(content)
        return self._http.build_request(
            request.method,
            request.path,
            params=request.params or None,
            json=request.json,
            content=content,
            headers=request.headers or None,
            timeout=request.timeout_for(self.timeout),
        )

    def _run(self, call: Call[T]) -> T:
        with _core.transport_errors():
            response = self._http.send(self._build(call.request))
        _core.raise_for_status(response)
        return call.decode(response.content)

    def _open(self, request: Request) -> httpx.Response:
        """Sends the request and returns the answer with its body unread."""
        with _core.transport_errors():
            response = self._http.send(self._build(request), stream=True)
            if not response.is_success:
                try:
                    response.read()
                finally:
                    response.close()
        _core.raise_for_status(response)
        return response

    def _exchange(self, request: Request) -> httpx.Response:
        """Sends the request; the answer read whole, whatever its status."""
        with _core.transport_errors():
            return self._http.send(self._build(request))

    # calls

    def info(self) -> ServerInfo:
        """``GET /v1/info``: the server's version and runtime isolation."""
        return self._run(_core.server_info())

    def metrics(self) -> str:
        """``GET /metrics``: the Prometheus text exposition (needs ``metrics:read``)."""
        return self._run(_core.metrics())

    def audit(
        self,
        *,
        sandbox: Optional[str] = None,
        since: Union[datetime, str, None] = None,
        limit: Optional[int] = None,
    ) -> List[AuditRecord]:
        """``GET /v1/audit``: records, newest first (needs ``audit:read``).

        ``since`` is inclusive (a naive datetime is taken as UTC);
        ``limit`` is 1 to 1000, 100 when absent.
        """
        return self._run(_core.audit(sandbox, since, limit))

    def list_sandboxes(self) -> List[SandboxInfo]:
        return self._run(_core.list_sandboxes())

    def events(
        self,
        *,
        sandbox: Optional[str] = None,
        since: Optional[int] = None,
        follow: bool = False,
        request_timeout: TimeoutArg = DEFAULT,
    ) -> SandboxEventStream:
        """``GET /v1/events``: what happened to sandboxes, oldest first.

        ``sandbox`` keeps one sandbox's events, ``since`` those after that
        ``seq``. Without ``follow`` the stream ends with the last event so
        far; with it, it stays open for new ones (no HTTP read timeout
        unless ``request_timeout``) until closed.
        """
        return SandboxEventStream(self, _core.events(sandbox, since, follow, request_timeout))


class Tokens:
    """``/v1/tokens``: mint, list and revoke scoped tokens (needs ``tokens:admin``)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self,
        name: str,
        scopes: Sequence[str],
        *,
        ttl: Union[int, float, timedelta, None] = None,
        sandbox: Optional[str] = None,
    ) -> CreatedToken:
        """Mints a token; its ``secret`` is in the answer and never shown again.

        ``ttl`` in seconds (or a timedelta): no expiry when absent.
        ``sandbox`` binds the token to one sandbox.
        """
        return self._client._run(_core.create_token(name, scopes, ttl, sandbox))

    def list(self) -> builtins.list[TokenInfo]:
        return self._client._run(_core.list_tokens())

    def revoke(self, token_id: str) -> None:
        self._client._run(_core.revoke_token(token_id))


class Snapshots:
    """``/v1/snapshots``: the saved filesystems :meth:`Sandbox.snapshot` makes."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self) -> builtins.list[SnapshotInfo]:
        return self._client._run(_core.list_snapshots())

    def get(self, name: SnapshotRef) -> SnapshotInfo:
        return self._client._run(_core.get_snapshot(name))

    def delete(self, name: SnapshotRef) -> None:
        """Deletes the snapshot; sandboxes made from it keep their files."""
        self._client._run(_core.delete_snapshot(name))


class Images:
    """``/v1/images``: what sandboxes are made from (``image=`` in :meth:`Sandbox.create`).

    Listing and reading need ``images:read``, importing, pulling, building
    and deleting ``images:write``. Images are server-wide; ``base`` is the default one.
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    def import_image(
        self,
        source: ImageArchive,
        name: Optional[str] = None,
        *,
        request_timeout: TimeoutArg = DEFAULT,
    ) -> ImageInfo:
        """``POST /v1/images/import``: an image from a tar, ready when this returns.

        ``source`` is ``docker save`` output or an OCI image layout tarball:
        a path, bytes, or a binary file object (files are streamed, never
        read whole). ``name`` (``[registry/]repository[:tag]``) defaults to
        the one the archive gives it; ``:latest`` is added to a name without
        a tag. The server checks every blob and applies every layer before
        it answers, so a big image may need a longer ``request_timeout``.
        """
        with _core.image_archive(source) as content:
            return self._client._run(_core.import_image(content, name, request_timeout))

    def pull(
        self,
        reference: str,
        *,
        name: Optional[str] = None,
        username: Optional[str] = None,
        password: Optional[str] = None,
        token: Optional[str] = None,
        insecure: bool = False,
        on_progress: Optional[ProgressCallback] = None,
        request_timeout: TimeoutArg = DEFAULT,
    ) -> ImageInfo:
        """``POST /v1/images/pull``: an image from a registry, ready when this returns.

        ``reference`` is ``registry[:port]/repository[:tag][@digest]``
        (``:latest`` without tag or digest); ``name`` is the one to give the
        image here, the reference by default. Anonymous, or ``username``
        with ``password`` (basic auth, which also gets a token service's
        bearer token), or a bearer ``token``: giving half a pair or both
        kinds raises :class:`ValueError`. Plain HTTP only for a registry on
        loopback or with ``insecure=True``. ``on_progress`` gets a
        :class:`~sbx.PullProgress` as each blob arrives (about every MiB).
        A failed pull raises the :class:`~sbx.ApiError` of its code
        (:class:`~sbx.NotFound` for an image the registry lacks,
        :class:`~sbx.Unavailable` for a registry out of reach) and leaves
        nothing. There is no HTTP read timeout unless ``request_timeout``:
        the server is quiet while it applies the layers.
        """
        request = _core.pull_image(
            reference,
            name=name,
            username=username,
            password=password,
            token=token,
            insecure=insecure,
            request_timeout=request_timeout,
        )
        log = _core.PullLog(on_progress)
        with _ImageStream(self._client, request, log, _core.pull_decoder()) as stream:
            return stream.wait()

    def build(
        self,
        context_dir: Union[str, os.PathLike[str]],
        name: str,
        *,
        dockerfile: Optional[Union[str, os.PathLike[str]]] = None,
        build_args: Optional[Mapping[str, str]] = None,
        allow: Optional[Sequence[str]] = None,
        no_cache: bool = False,
        on_event: Optional[BuildCallback] = None,
        request_timeout: TimeoutArg = DEFAULT,
    ) -> ImageInfo:
        """``POST /v1/images/build``: an image built by the server from a
        Dockerfile, ready when this returns.

        ``context_dir`` is sent as a tar, as ``sbx image build`` sends it:
        sorted, symlinks as symlinks, without what its ``.dockerignore``
        leaves out (but always with the Dockerfile and ``.dockerignore``).
        ``dockerfile`` is a path inside the context (``Dockerfile`` by
        default): one outside it raises :class:`ValueError`, a missing one
        :class:`FileNotFoundError`, before anything is sent. ``name`` gets
        ``:latest`` without a tag. ``build_args`` are the ``ARG`` values;
        ``allow`` the hosts ``RUN`` steps may reach through the egress proxy
        (none by default); ``no_cache`` runs every step even where the build
        cache holds its result. ``on_event`` gets a :class:`~sbx.BuildStep`
        as each instruction starts and a :class:`~sbx.BuildOutput` for its
        command's output as it happens. A failed build raises the
        :class:`~sbx.ApiError` of its code (:class:`~sbx.InvalidRequest`
        naming the Dockerfile line for an unsupported instruction or a
        failing ``RUN``) and names no image. There is no HTTP read timeout
        unless ``request_timeout``.
        """
        context = BuildContext(context_dir, dockerfile)
        with spool() as tar:
            context.write_tar(tar)
            tar.seek(0)
            request = _core.build_image(
                name,
                content=tar,
                dockerfile=context.dockerfile,
                build_args=build_args,
                allow=allow,
                no_cache=no_cache,
                request_timeout=request_timeout,
            )
            log = _core.BuildLog(on_event)
            with _ImageStream(self._client, request, log, _core.build_decoder()) as stream:
                return stream.wait()

    def list(self) -> builtins.list[ImageInfo]:
        return self._client._run(_core.list_images())

    def get(self, name: ImageRef) -> ImageInfo:
        """One image; a name without a tag means ``:latest`` (but ``base`` is ``base``)."""
        return self._client._run(_core.get_image(name))

    def delete(self, name: ImageRef) -> None:
        """Deletes the image; :class:`~sbx.Conflict` while a sandbox or
        snapshot is made from it, and for the default image."""
        self._client._run(_core.delete_image(name))


def _file_chunks(file: IO[bytes]) -> Iterator[bytes]:
    while True:
        chunk = file.read(_core.CHUNK)
        if not chunk:
            return
        yield chunk


def _client_for(
    client: Optional[Client], url: Optional[str], token: Optional[str], http_timeout: TimeoutArg
) -> tuple[Client, bool]:
    """The client to use, and whether the caller now owns it."""
    if client is not None:
        return client, False
    if isinstance(http_timeout, _core._Default):
        return Client(url, token), True
    return Client(url, token, timeout=http_timeout), True


class Sandbox:
    """One sandbox: run commands (or keep a shell in :attr:`sessions`), manage
    processes and files, watch them, reach its :attr:`ports` (and
    :attr:`previews`), attach to terminals (:attr:`pty`), change egress,
    stop, pause, snapshot and fork it.

    Make one with :meth:`create` or :meth:`connect`. A ``with`` block around
    a created sandbox deletes it on exit; around a connected one, it only
    closes the connection (the sandbox belongs to whoever created it).
    """

    def __init__(
        self,
        sandbox_id: str,
        client: Client,
        *,
        token: Optional[str] = None,
        owns_client: bool = False,
        delete_on_exit: bool = False,
    ) -> None:
        self.id = sandbox_id
        #: The sandbox's own token (``sandboxes:read`` + ``sandboxes:exec`` on
        #: this sandbox only), when this object created it; hand it to the
        #: agent working inside. ``None`` for a connected sandbox.
        self.token = token
        self.client = client
        self._owns_client = owns_client
        self._delete_on_exit = delete_on_exit
        self.processes = Processes(self)
        self.files = Files(self)
        self.sessions = Sessions(self)
        self.ports = Ports(self)
        self.previews = Previews(self)
        self.pty = Terminals(self)

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r})"

    @classmethod
    def create(
        cls,
        *,
        image: Optional[ImageRef] = None,
        memory_mb: Optional[int] = None,
        cpus: Optional[float] = None,
        disk_mb: Optional[int] = None,
        egress: Optional[Sequence[str]] = None,
        env: Optional[Mapping[str, str]] = None,
        labels: Optional[Mapping[str, str]] = None,
        timeout_s: Optional[Seconds] = None,
        idle_timeout_s: Optional[Seconds] = None,
        on_timeout: Optional[OnTimeout] = None,
        auto_resume: Optional[bool] = None,
        snapshot: Optional[SnapshotRef] = None,
        url: Optional[str] = None,
        token: Optional[str] = None,
        http_timeout: TimeoutArg = DEFAULT,
        client: Optional[Client] = None,
        request_timeout: TimeoutArg = DEFAULT,
    ) -> Sandbox:
        """``POST /v1/sandboxes``: a new sandbox, running and ready for exec.

        Every field is optional: ``image`` (a name or an
        :class:`~sbx.ImageInfo`, default ``base``; see ``client.images``),
        ``memory_mb``, ``cpus``, ``disk_mb``, ``env`` (every command's
        environment), ``labels``, and ``egress``, the hosts its proxy may
        reach (``"pypi.org"``, ``"*.github.com"``, ``"host:443"``; none when
        absent). Its lifetime: ``timeout_s`` (seconds or a timedelta until
        ``on_timeout`` acts), ``idle_timeout_s`` (seconds without API use),
        ``on_timeout`` (``"delete"``, ``"stop"`` or ``"pause"``) and
        ``auto_resume`` (exec, files and processes wake a stopped or paused
        sandbox); absent ones take the server's defaults, and 0 turns a
        timeout off. ``snapshot`` starts from a snapshot's filesystem.
        Connection: ``client``, or ``url``/``token``/``http_timeout`` for a
        client of its own that the sandbox closes with itself.
        """
        call = _core.create_sandbox(
            image=image,
            memory_mb=memory_mb,
            cpus=cpus,
            disk_mb=disk_mb,
            egress=egress,
            env=env,
            labels=labels,
            timeout_s=timeout_s,
            idle_timeout_s=idle_timeout_s,
            on_timeout=on_timeout,
            auto_resume=auto_resume,
            snapshot=snapshot,
            request_timeout=request_timeout,
        )
        http, owned = _client_for(client, url, token, http_timeout)
        try:
            created = http._run(call)
        except BaseException:
            if owned:
                http.close()
            raise
        return cls(
            created.info.id, http, token=created.token, owns_client=owned, delete_on_exit=True
        )

    @classmethod
    def connect(
        cls,
        sandbox_id: str,
        *,
        url: Optional[str] = None,
        token: Optional[str] = None,
        http_timeout: TimeoutArg = DEFAULT,
        client: Optional[Client] = None,
    ) -> Sandbox:
        """An existing sandbox; :class:`~sbx.NotFound` if there is none.

        ``token`` may be the sandbox's own token.
        """
        http, owned = _client_for(client, url, token, http_timeout)
        try:
            http._run(_core.get_sandbox(sandbox_id))
        except BaseException:
            if owned:
                http.close()
            raise
        return cls(sandbox_id, http, owns_client=owned)

    @classmethod
    def list(
        cls,
        *,
        url: Optional[str] = None,
        token: Optional[str] = None,
        http_timeout: TimeoutArg = DEFAULT,
        client: Optional[Client] = None,
    ) -> builtins.list[SandboxInfo]:
        """``GET /v1/sandboxes`` (needs ``sandboxes:read``)."""
        http, owned = _client_for(client, url, token, http_timeout)
        try:
            return http.list_sandboxes()
        finally:
            if owned:
                http.close()

    def get_info(self) -> SandboxInfo:
        """The sandbox as the server reports it now."""
        return self.client._run(_core.get_sandbox(self.id))

    def update_egress(self, egress: Sequence[str]) -> SandboxInfo:
        """Replaces the egress allowlist, live; ``[]`` denies everything."""
        return self.client._run(_core.update_egress(self.id, egress))

    def delete(self, *, request_timeout: TimeoutArg = DEFAULT) -> None:
        """Deletes the sandbox (its processes, files and token go with it)."""
        self.client._run(_core.delete_sandbox(self.id, request_timeout))
        self._delete_on_exit = False

    def close(self) -> None:
        """Closes the connection if this sandbox opened it; the sandbox stays."""
        if self._owns_client:
            self.client.close()

    # lifecycle

    def stop(self, *, request_timeout: TimeoutArg = DEFAULT) -> SandboxInfo:
        """Stops it: its processes end and its memory is freed; the disk stays."""
        return self.client._run(_core.change_state(self.id, "stop", request_timeout))

    def start(self, *, request_timeout: TimeoutArg = DEFAULT) -> SandboxInfo:
        """Boots a stopped sandbox again, on the disk it had."""
        return self.client._run(_core.change_state(self.id, "start", request_timeout))

    def pause(self, *, request_timeout: TimeoutArg = DEFAULT) -> SandboxInfo:
        """Freezes its processes, memory kept; :meth:`resume` thaws them."""
        return self.client._run(_core.change_state(self.id, "pause", request_timeout))

    def resume(self, *, request_timeout: TimeoutArg = DEFAULT) -> SandboxInfo:
        return self.client._run(_core.change_state(self.id, "resume", request_timeout))

    def set_timeout(self, timeout_s: Seconds) -> SandboxInfo:
        """Sets its timeout to ``timeout_s`` (seconds or a timedelta) from now;
        the answer's ``expires_at`` says when ``on_timeout`` acts."""
        return self.client._run(_core.set_timeout(self.id, timeout_s))

    def snapshot(self, name: str, *, request_timeout: TimeoutArg = DEFAULT) -> SnapshotInfo:
        """Saves its filesystem as it is now under ``name`` (unique on the
        server; :class:`~sbx.Conflict` if taken), for :meth:`create`,
        :meth:`restore` and ``client.snapshots``."""
        return self.client._run(_core.create_snapshot(self.id, name, request_timeout))

    def fork(
        self, count: int = 1, *, request_timeout: TimeoutArg = DEFAULT
    ) -> builtins.list[Union[Sandbox, ApiError]]:
        """``count`` (1 to 100) new sandboxes, each with a copy of this one's disk.

        One entry per copy, in order: a :class:`Sandbox` (with its own
        ``token``, on this sandbox's client, deleted at the end of a
        ``with`` block), or the :class:`~sbx.ApiError` saying why that copy
        failed; the others still exist.
        """
        outcomes = self.client._run(_core.fork(self.id, count, request_timeout))
        return [
            outcome
            if isinstance(outcome, ApiError)
            else type(self)(outcome.info.id, self.client, token=outcome.token, delete_on_exit=True)
            for outcome in outcomes
        ]

    def restore(
        self, snapshot: SnapshotRef, *, request_timeout: TimeoutArg = DEFAULT
    ) -> SandboxInfo:
        """Rolls its filesystem back to ``snapshot``, in place (same id and token)."""
        return self.client._run(_core.restore(self.id, snapshot, request_timeout))

    def events(
        self,
        *,
        since: Optional[int] = None,
        follow: bool = False,
        request_timeout: TimeoutArg = DEFAULT,
    ) -> SandboxEventStream:
        """This sandbox's lifecycle events; see :meth:`Client.events`."""
        return self.client.events(
            sandbox=self.id, since=since, follow=follow, request_timeout=request_timeout
        )

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        try:
            if self._delete_on_exit:
                try:
                    self.delete()
                except NotFound:
                    pass
        finally:
            self.close()

    # exec

    def exec(
        self,
        cmd: Command,
        *,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
        stdin: Optional[str] = None,
        user: Optional[str] = None,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        request_timeout: TimeoutArg = DEFAULT,
    ) -> ExecResult:
        """Runs a command to completion.

        A ``str`` runs through the shell (``bash -c``), a list as an argv.
        ``timeout`` (seconds) is the command's own: the server kills its
        process group and the result says ``timed_out``; the HTTP call waits
        that long plus a grace period even when the client's timeout is
        shorter. Without it the client's timeout bounds the call. With
        ``on_stdout``/``on_stderr`` the output streams to them as it comes
        (the result then still has all of it).
        """
        streaming = on_stdout is not None or on_stderr is not None
        request = _core.exec_request(
            self.id,
            cmd,
            cwd=cwd,
            env=env,
            timeout=timeout,
            stdin=stdin,
            user=user,
            stream=streaming,
            request_timeout=request_timeout,
        )
        if streaming:
            with EventStream(self.client, request, on_stdout, on_stderr) as stream:
                return stream.wait()
        return self.client._run(_core.exec_buffered(request))

    def exec_stream(
        self,
        cmd: Command,
        *,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
        stdin: Optional[str] = None,
        user: Optional[str] = None,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        request_timeout: TimeoutArg = DEFAULT,
    ) -> EventStream:
        """Runs a command, yielding its events as they happen.

        The command starts when the stream is first iterated (or
        :meth:`EventStream.wait` is called); closing the stream early
        disconnects, and the server then kills the command. See
        :meth:`exec` for the arguments.
        """
        request = _core.exec_request(
            self.id,
            cmd,
            cwd=cwd,
            env=env,
            timeout=timeout,
            stdin=stdin,
            user=user,
            stream=True,
            request_timeout=request_timeout,
        )
        return EventStream(self.client, request, on_stdout, on_stderr)

    # watch

    def watch(
        self, path: str, *, recursive: bool = False, request_timeout: TimeoutArg = DEFAULT
    ) -> WatchStream:
        """Changes under the directory ``path`` as they happen (inotify inside
        the sandbox), as :class:`~sbx.WatchEvent`\\ s.

        With ``recursive`` the directories under it too, new ones included.
        The stream never ends by itself: close it, or use it as a context
        manager. ``with sb.watch(…) as changes:`` returns once every
        directory is watched, so whatever happens after that is reported
        (iterating an unopened stream opens it first). There is no HTTP read
        timeout unless ``request_timeout``.
        """
        return WatchStream(self.client, _core.watch(self.id, path, recursive, request_timeout))

    # archives

    def upload_dir(
        self,
        local: Union[str, os.PathLike[str]],
        remote: str,
        *,
        request_timeout: TimeoutArg = DEFAULT,
    ) -> ArchiveSummary:
        """Copies the tree under the local directory into ``remote`` (created if missing)."""
        with spool() as tar:
            write_tar(local, tar)
            tar.seek(0)
            return self.client._run(_core.upload_archive(self.id, remote, tar, request_timeout))

    def download_dir(
        self,
        remote: str,
        local: Union[str, os.PathLike[str]],
        *,
        request_timeout: TimeoutArg = DEFAULT,
    ) -> None:
        """Copies the tree under ``remote`` into the local directory (created if missing).

        The sandbox is not trusted: an archive with an entry that would land
        or point outside ``local`` raises :class:`~sbx.UnsafeArchiveError`
        before anything is written.
        """
        with spool() as tar:
            with ByteStream(
                self.client, _core.download_archive(self.id, remote, request_timeout)
            ) as body:
                for chunk in body:
                    tar.write(chunk)
            tar.seek(0)
            extract_tar(tar, local, strip_top=True)


class Processes:
    """Background processes: they outlive the call that started them."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    def _run(self, call: Call[T]) -> T:
        return self._sandbox.client._run(call)

    def start(
        self,
        cmd: Command,
        *,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        user: Optional[str] = None,
        name: Optional[str] = None,
    ) -> ProcessInfo:
        """Starts a command in the background (a ``str`` through the shell)."""
        return self._run(
            _core.start_process(self._sandbox.id, cmd, cwd=cwd, env=env, user=user, name=name)
        )

    def list(self) -> builtins.list[ProcessInfo]:
        return self._run(_core.list_processes(self._sandbox.id))

    def get(self, pid: int) -> ProcessInfo:
        return self._run(_core.get_process(self._sandbox.id, pid))

    def logs(
        self,
        pid: int,
        *,
        follow: bool = False,
        tail: Optional[int] = None,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        request_timeout: TimeoutArg = DEFAULT,
    ) -> EventStream:
        """Its output as events: what is kept (1 MiB per stream, the last
        ``tail`` bytes if given), then with ``follow`` live output until
        the ``exit`` event (no HTTP read timeout unless ``request_timeout``)."""
        request = _core.process_logs(
            self._sandbox.id, pid, follow=follow, tail=tail, request_timeout=request_timeout
        )
        return EventStream(self._sandbox.client, request, on_stdout, on_stderr)

    def write_stdin(self, pid: int, data: Union[bytes, str], *, close: bool = False) -> None:
        """Writes to its stdin; ``close=True`` closes stdin afterwards."""
        self._run(_core.write_stdin(self._sandbox.id, pid, data, close))

    def close_stdin(self, pid: int) -> None:
        self.write_stdin(pid, b"", close=True)

    def signal(self, pid: int, signal: SignalArg = "TERM") -> None:
        """Sends a signal (``"TERM"``, ``"SIGKILL"``, ``signal.SIGINT``, 9) to its process group."""
        self._run(_core.signal_process(self._sandbox.id, pid, signal))

    def wait(self, pid: int, *, timeout: TimeoutArg = DEFAULT) -> ProcessInfo:
        """Blocks until it exits; ``timeout`` (seconds) bounds the wait with
        :class:`~sbx.RequestTimeout`. No limit by default."""
        return self._run(_core.wait_process(self._sandbox.id, pid, timeout))

    def kill_all(self) -> int:
        """Kills every process in the sandbox but its agent; returns how many ran."""
        return self._run(_core.kill_all(self._sandbox.id))


class Sessions:
    """Persistent shells: ``cd``, ``export``, functions and ``$?`` carry over
    from one command to the next, as in a terminal."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    def create(
        self,
        *,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        user: Optional[str] = None,
    ) -> Session:
        """Starts a shell (in ``/workspace`` unless ``cwd``, as root unless
        ``user``); a ``with`` block around it deletes it on exit."""
        call = _core.create_session(self._sandbox.id, cwd=cwd, env=env, user=user)
        return Session(self._sandbox, self._sandbox.client._run(call))

    def list(self) -> builtins.list[SessionInfo]:
        return self._sandbox.client._run(_core.list_sessions(self._sandbox.id))

    def get(self, session_id: str) -> Session:
        """A handle on an existing session; :class:`~sbx.NotFound` if there is none."""
        for info in self.list():
            if info.id == session_id:
                return Session(self._sandbox, info)
        raise _core.no_session(session_id)


class Session:
    """One persistent shell (see :class:`Sessions`).

    Each :meth:`exec` is shell text typed into the same shell, with empty
    stdin; one runs at a time (another one meanwhile gets
    :class:`~sbx.Conflict`). A command that ends the shell (``exit 3``)
    gets its result, and the session is gone afterwards.
    """

    def __init__(self, sandbox: Sandbox, info: SessionInfo) -> None:
        self.id = info.id
        #: The session as it was when this handle was made.
        self.info = info
        self._sandbox = sandbox

    def __repr__(self) -> str:
        return f"Session(id={self.id!r}, sandbox={self._sandbox.id!r})"

    def exec(
        self,
        command: str,
        *,
        timeout: Optional[float] = None,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        request_timeout: TimeoutArg = DEFAULT,
    ) -> ExecResult:
        """Runs shell text in the session to completion.

        ``timeout`` (seconds) is the command's own: the server kills the
        command, not the session. Output, callbacks and timeouts as in
        :meth:`Sandbox.exec`.
        """
        streaming = on_stdout is not None or on_stderr is not None
        request = _core.session_exec_request(
            self._sandbox.id,
            self.id,
            command,
            timeout=timeout,
            stream=streaming,
            request_timeout=request_timeout,
        )
        client = self._sandbox.client
        if streaming:
            with EventStream(client, request, on_stdout, on_stderr) as stream:
                return stream.wait()
        return client._run(_core.exec_buffered(request))

    def exec_stream(
        self,
        command: str,
        *,
        timeout: Optional[float] = None,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        request_timeout: TimeoutArg = DEFAULT,
    ) -> EventStream:
        """Runs shell text in the session, yielding its events as they happen
        (as :meth:`Sandbox.exec_stream`)."""
        request = _core.session_exec_request(
            self._sandbox.id,
            self.id,
            command,
            timeout=timeout,
            stream=True,
            request_timeout=request_timeout,
        )
        return EventStream(self._sandbox.client, request, on_stdout, on_stderr)

    def signal(self, signal: SignalArg = "INT") -> None:
        """Signals the running command (not the shell), by default as Ctrl-C
        would; :class:`~sbx.Conflict` when none runs."""
        self._sandbox.client._run(_core.signal_session(self._sandbox.id, self.id, signal))

    def delete(self) -> None:
        """Ends the shell and whatever it runs."""
        self._sandbox.client._run(_core.delete_session(self._sandbox.id, self.id))

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_: object) -> None:
        try:
            self.delete()
        except NotFound:
            pass


class Ports:
    """The sandbox's TCP ports, reached through its agent: no address needed."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    def wait(
        self, port: int, *, timeout: Optional[float] = None, request_timeout: TimeoutArg = DEFAULT
    ) -> PortStatus:
        """Blocks until something listens on ``127.0.0.1:{port}`` inside the
        sandbox; :class:`~sbx.Unavailable` after ``timeout`` seconds (the
        server's 30 s when absent, 600 s at most)."""
        call = _core.wait_port(self._sandbox.id, port, timeout, request_timeout)
        return self._sandbox.client._run(call)

    def request(
        self,
        port: int,
        method: str,
        path: str = "/",
        *,
        params: Optional[Mapping[str, Any]] = None,
        headers: Optional[Mapping[str, str]] = None,
        content: Union[str, bytes, None] = None,
        request_timeout: TimeoutArg = DEFAULT,
    ) -> httpx.Response:
        """An HTTP request to ``http://127.0.0.1:{port}/{path}`` inside the sandbox.

        The answer is returned read, whatever its status (no exception for
        a 4xx or 5xx: it is the server's in the sandbox); nothing listening
        is a 502 with the API's ``unavailable`` error body. ``path`` is
        taken as given (``%`` escapes kept), its query goes in ``params``.
        ``GET {port}/wait`` is :meth:`wait`'s route, not a proxied path.
        """
        request = _core.port_request(
            self._sandbox.id,
            port,
            method,
            path,
            params=params,
            headers=headers,
            content=content,
            request_timeout=request_timeout,
        )
        return self._sandbox.client._exchange(request)

    def url(self, port: int, path: str = "/") -> str:
        """The port's URL through the API. Calls to it need the bearer token
        (``Authorization: Bearer …``), so a browser cannot open it: make a
        preview (``sb.previews.create(port)``) for that."""
        return self._sandbox.client.url + _core.port_path(self._sandbox.id, port, path)


class Previews:
    """Preview URLs: one port, reachable without a token by whoever holds the URL.

    For browsers and webhooks; the URL's secret is shown once, in
    :meth:`create`'s answer.
    """

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    def create(self, port: int, *, ttl_s: Optional[Seconds] = None) -> PreviewInfo:
        """A preview of ``port`` lasting ``ttl_s`` (seconds or a timedelta;
        an hour when absent, seven days at most); its ``url`` is absolute."""
        client = self._sandbox.client
        return client._run(_core.create_preview(self._sandbox.id, port, ttl_s, client.url))

    def list(self) -> builtins.list[PreviewInfo]:
        """The sandbox's previews, without their URLs (the server keeps hashes)."""
        return self._sandbox.client._run(_core.list_previews(self._sandbox.id))

    def revoke(self, preview: PreviewRef) -> None:
        """Ends a preview now: its URL answers 404 from then on."""
        self._sandbox.client._run(_core.revoke_preview(self._sandbox.id, preview))


class Terminals:
    """Terminals (PTYs): interactive programs, attached over a WebSocket.

    :meth:`connect` needs the ``websockets`` package (``pip install
    'sbx[pty]'``); the rest is plain HTTP.
    """

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    def _run(self, call: Call[T]) -> T:
        return self._sandbox.client._run(call)

    def create(
        self,
        cols: int = 80,
        rows: int = 24,
        *,
        cmd: Optional[Sequence[str]] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        user: Optional[str] = None,
    ) -> PtyInfo:
        """Starts ``cmd`` (an argv; the user's login shell when absent) on a
        terminal of ``cols`` × ``rows`` cells, ``TERM=xterm-256color``."""
        return self._run(
            _core.create_pty(
                self._sandbox.id, cols=cols, rows=rows, cmd=cmd, env=env, cwd=cwd, user=user
            )
        )

    def list(self) -> builtins.list[PtyInfo]:
        """The terminals, exited ones too until they are killed."""
        return self._run(_core.list_ptys(self._sandbox.id))

    def resize(self, pty: PtyRef, cols: int, rows: int) -> None:
        self._run(_core.resize_pty(self._sandbox.id, pty, cols, rows))

    def kill(self, pty: PtyRef) -> None:
        """Kills its process group and forgets it."""
        self._run(_core.kill_pty(self._sandbox.id, pty))

    def connect(self, pty: PtyRef) -> Terminal:
        """Attaches to it: a :class:`~sbx.Terminal` that sends keystrokes
        and receives output. Several may attach at once; detaching does not
        end it. The handshake's refusal raises the API's error
        (:class:`~sbx.NotFound` for an unknown terminal)."""
        client = self._sandbox.client
        url = _core.websocket_url(client.url, _core.pty_path(self._sandbox.id, pty))
        return connect_terminal(url, client.token, client.timeout, _core.pty_id(pty))


class Files:
    """Files inside the sandbox, by absolute path. Contents are raw bytes."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    def _run(self, call: Call[T]) -> T:
        return self._sandbox.client._run(call)

    def read(self, path: str, *, request_timeout: TimeoutArg = DEFAULT) -> bytes:
        with self.read_stream(path, request_timeout=request_timeout) as chunks:
            return b"".join(chunks)

    def read_text(
        self,
        path: str,
        *,
        encoding: str = "utf-8",
        errors: str = "strict",
        request_timeout: TimeoutArg = DEFAULT,
    ) -> str:
        return self.read(path, request_timeout=request_timeout).decode(encoding, errors)

    def read_stream(self, path: str, *, request_timeout: TimeoutArg = DEFAULT) -> ByteStream:
        """The file's bytes in chunks, as they arrive; the file is never held whole."""
        request = _core.read_file(self._sandbox.id, path, request_timeout)
        return ByteStream(self._sandbox.client, request)

    def write(
        self,
        path: str,
        data: FileContent,
        *,
        mode: Optional[int] = None,
        owner: Optional[str] = None,
        request_timeout: TimeoutArg = DEFAULT,
    ) -> FileInfo:
        """Writes a file atomically (parents created): bytes, str (UTF-8), a
        binary file object or an iterable of bytes (both streamed).
        ``mode`` is the permission bits, e.g. ``0o755``; ``owner``
        (``user[:group]``) owns the file and the parents made for it."""
        content: Any = data.encode() if isinstance(data, str) else data
        if isinstance(content, (bytearray, memoryview)):
            content = bytes(content)
        return self._run(
            _core.write_file(self._sandbox.id, path, content, mode, request_timeout, owner)
        )

    def list(self, path: str, *, depth: Optional[int] = None) -> builtins.list[FileInfo]:
        """The entries under a directory, ``depth`` levels down (default 1)."""
        return self._run(_core.list_files(self._sandbox.id, path, depth))

    def stat(self, path: str) -> FileInfo:
        return self._run(_core.stat_file(self._sandbox.id, path))

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except NotFound:
            return False
        return True

    def mkdir(
        self, path: str, *, mode: Optional[int] = None, owner: Optional[str] = None
    ) -> FileInfo:
        """Creates a directory and its parents (``mkdir -p``)."""
        return self._run(_core.mkdir(self._sandbox.id, path, mode, owner))

    def move(self, source: str, destination: str) -> None:
        self._run(_core.move_file(self._sandbox.id, source, destination))

    def remove(self, path: str, *, recursive: bool = False) -> None:
        """Removes a file or link; a directory needs ``recursive=True``."""
        self._run(_core.remove_file(self._sandbox.id, path, recursive))


class _Stream:
    """A streamed answer, opened lazily and closed at its end or by ``close``."""

    def __init__(self, client: Client, request: Request) -> None:
        self._client = client
        self._request = request
        self._response: Optional[httpx.Response] = None
        self._closed = False

    def _chunks(self) -> Iterator[bytes]:
        if self._closed:
            raise _core.closed_stream_error()
        if self._response is None:
            self._response = self._client._open(self._request)
        try:
            with _core.transport_errors():
                for chunk in self._response.iter_bytes():
                    yield chunk
                    if self._closed:
                        return
        finally:
            self.close()

    def close(self) -> None:
        """Ends the stream; for an exec, the server then kills the command."""
        self._closed = True
        if self._response is not None:
            self._response.close()

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class ByteStream(_Stream):
    """A file's or archive's bytes, chunk by chunk."""

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks()


class EventStream(_Stream):
    """Events of an exec or of process logs, in order, as they happen.

    Iterate it for :data:`~sbx.ExecEvent`\\ s, or call :meth:`wait` for the
    summed-up :class:`~sbx.ExecResult`; the output callbacks are called
    either way. Use it as a context manager to close it early.
    """

    def __init__(
        self,
        client: Client,
        request: Request,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
    ) -> None:
        super().__init__(client, request)
        self._log = _core.EventLog(on_stdout, on_stderr)
        self._events: Optional[Iterator[ExecEvent]] = None

    @property
    def pid(self) -> Optional[int]:
        """The command's pid, once its ``start`` event was read."""
        return self._log.pid

    def __iter__(self) -> Iterator[ExecEvent]:
        if self._events is None:
            self._events = self._generate()
        return self._events

    def _generate(self) -> Iterator[ExecEvent]:
        decoder = _core.NdjsonDecoder()
        for chunk in self._chunks():
            for event in decoder.feed(chunk):
                yield self._observe(event)
        for event in decoder.finish():
            yield self._observe(event)

    def _observe(self, event: ExecEvent) -> ExecEvent:
        callback = self._log.observe(event)
        if callback is not None:
            callback()
        return event

    def wait(self) -> ExecResult:
        """Reads to the end; the result (output joined, ``truncated`` False).

        Raises the matching :class:`~sbx.ApiError` for an ``error`` event
        and :class:`~sbx.ProtocolError` when no ``exit`` came (logs of a
        running process without ``follow``).
        """
        for _ in self:
            pass
        return self._log.result()


class SandboxEventStream(_Stream):
    """Lifecycle events (:class:`~sbx.SandboxEvent`), oldest first.

    Without ``follow`` it ends after the last event so far; with it, it
    waits for new ones until closed (use it as a context manager).
    """

    def __init__(self, client: Client, request: Request) -> None:
        super().__init__(client, request)
        self._events: Optional[Iterator[SandboxEvent]] = None

    def __iter__(self) -> Iterator[SandboxEvent]:
        if self._events is None:
            self._events = self._generate()
        return self._events

    def _generate(self) -> Iterator[SandboxEvent]:
        decoder = _core.sandbox_event_decoder()
        for chunk in self._chunks():
            yield from decoder.feed(chunk)
        yield from decoder.finish()


class WatchStream(_Stream):
    """Changes under a directory (:class:`~sbx.WatchEvent`), as they happen.

    It never ends by itself: use it as a context manager (entering it waits
    until every directory is watched) or call :meth:`close`.
    """

    def __init__(self, client: Client, request: Request) -> None:
        super().__init__(client, request)
        self._events: Optional[Iterator[WatchEvent]] = None

    def open(self) -> WatchStream:
        """Starts the watch, if it has not started; returns once every
        directory is watched."""
        if self._closed:
            raise _core.closed_stream_error()
        if self._response is None:
            self._response = self._client._open(self._request)
        return self

    def __enter__(self) -> WatchStream:
        return self.open()

    def __iter__(self) -> Iterator[WatchEvent]:
        if self._events is None:
            self._events = self._generate()
        return self._events

    def _generate(self) -> Iterator[WatchEvent]:
        decoder = _core.watch_decoder()
        for chunk in self._chunks():
            yield from decoder.feed(chunk)
        yield from decoder.finish()


class _ImageStream(_Stream):
    """An image pull's or build's lines, read to its outcome."""

    def __init__(
        self,
        client: Client,
        request: Request,
        log: _core.OutcomeLog,
        decoder: _core.LineDecoder[Any],
    ) -> None:
        super().__init__(client, request)
        self._log = log
        self._decoder = decoder

    def _observe(self, line: Any) -> None:
        callback = self._log.observe(line)
        if callback is not None:
            callback()

    def wait(self) -> ImageInfo:
        decoder = self._decoder
        for chunk in self._chunks():
            for line in decoder.feed(chunk):
                self._observe(line)
        for line in decoder.finish():
            self._observe(line)
        response = self._response
        return self._log.result(None if response is None else response.headers.get("x-request-id"))

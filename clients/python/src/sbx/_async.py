"""The asyncio (and trio) API: :class:`AsyncClient`, :class:`AsyncSandbox`.

The twin of :mod:`sbx._sync`, method for method, on ``httpx.AsyncClient``;
requests, decoding, errors and timeouts come from :mod:`sbx._core`. Local
file work (building and checking tars) runs in a worker thread so it never
blocks the event loop. Output callbacks may be plain functions or
coroutine functions.
"""

from __future__ import annotations

import builtins
import inspect
import os
from datetime import datetime, timedelta
from types import TracebackType
from typing import (
    IO,
    Any,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Type,
    TypeVar,
    Union,
)

import anyio.to_thread
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
from ._terminal import AsyncTerminal, connect_async
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
AsyncFileContent = Union[
    bytes, bytearray, memoryview, str, IO[bytes], Iterable[bytes], AsyncIterable[bytes]
]


class AsyncClient:
    """The async :class:`~sbx.Client`: same settings, same calls, awaited."""

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
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=_core.client_headers(self.token),
            timeout=timeout,
            verify=_core.needs_tls(self.url),
        )
        self.tokens = AsyncTokens(self)
        self.snapshots = AsyncSnapshots(self)
        self.images = AsyncImages(self)

    def __repr__(self) -> str:
        return f"AsyncClient(url={self.url!r})"

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # transport

    def _build(self, request: Request) -> httpx.Request:
        content = request.content
        if content is not None and not isinstance(content, bytes):
            content = _async_chunks(content)
        return self._http.build_request(
            request.method,
            request.path,
            params=request.params or None,
            json=request.json,
            content=content,
            headers=request.headers or None,
            timeout=request.timeout_for(self.timeout),
        )

    async def _run(self, call: Call[T]) -> T:
        with _core.transport_errors():
            response = await self._http.send(self._build(call.request))
        _core.raise_for_status(response)
        return call.decode(response.content)

    async def _open(self, request: Request) -> httpx.Response:
        with _core.transport_errors():
            response = await self._http.send(self._build(request), stream=True)
            if not response.is_success:
                try:
                    await response.aread()
                finally:
                    await response.aclose()
        _core.raise_for_status(response)
        return response

    async def _exchange(self, request: Request) -> httpx.Response:
        """Sends the request; the answer read whole, whatever its status."""
        with _core.transport_errors():
            return await self._http.send(self._build(request))

    # calls

    async def info(self) -> ServerInfo:
        return await self._run(_core.server_info())

    async def metrics(self) -> str:
        return await self._run(_core.metrics())

    async def audit(
        self,
        *,
        sandbox: Optional[str] = None,
        since: Union[datetime, str, None] = None,
        limit: Optional[int] = None,
    ) -> List[AuditRecord]:
        return await self._run(_core.audit(sandbox, since, limit))

    async def list_sandboxes(self) -> List[SandboxInfo]:
        return await self._run(_core.list_sandboxes())

    def events(
        self,
        *,
        sandbox: Optional[str] = None,
        since: Optional[int] = None,
        follow: bool = False,
        request_timeout: TimeoutArg = DEFAULT,
    ) -> AsyncSandboxEventStream:
        """See :meth:`sbx.Client.events`: ``async for event in client.events(…)``."""
        request = _core.events(sandbox, since, follow, request_timeout)
        return AsyncSandboxEventStream(self, request)


class AsyncTokens:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(
        self,
        name: str,
        scopes: Sequence[str],
        *,
        ttl: Union[int, float, timedelta, None] = None,
        sandbox: Optional[str] = None,
    ) -> CreatedToken:
        return await self._client._run(_core.create_token(name, scopes, ttl, sandbox))

    async def list(self) -> builtins.list[TokenInfo]:
        return await self._client._run(_core.list_tokens())

    async def revoke(self, token_id: str) -> None:
        await self._client._run(_core.revoke_token(token_id))


class AsyncSnapshots:
    """See :class:`sbx.Snapshots`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self) -> builtins.list[SnapshotInfo]:
        return await self._client._run(_core.list_snapshots())

    async def get(self, name: SnapshotRef) -> SnapshotInfo:
        return await self._client._run(_core.get_snapshot(name))

    async def delete(self, name: SnapshotRef) -> None:
        await self._client._run(_core.delete_snapshot(name))


class AsyncImages:
    """See :class:`sbx.Images`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def import_image(
        self,
        source: ImageArchive,
        name: Optional[str] = None,
        *,
        request_timeout: TimeoutArg = DEFAULT,
    ) -> ImageInfo:
        """See :meth:`sbx.Images.import_image`; a file is read in a worker thread."""
        with _core.image_archive(source) as content:
            return await self._client._run(_core.import_image(content, name, request_timeout))

    async def pull(
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
        """See :meth:`sbx.Images.pull`; ``on_progress`` may be a coroutine function."""
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
        async with _AsyncImageStream(self._client, request, log, _core.pull_decoder()) as stream:
            return await stream.wait()

    async def build(
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
        """See :meth:`sbx.Images.build`; the context is read in a worker
        thread, and ``on_event`` may be a coroutine function."""
        context = await anyio.to_thread.run_sync(BuildContext, context_dir, dockerfile)
        with spool() as tar:
            await anyio.to_thread.run_sync(context.write_tar, tar)
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
            async with _AsyncImageStream(
                self._client, request, log, _core.build_decoder()
            ) as stream:
                return await stream.wait()

    async def list(self) -> builtins.list[ImageInfo]:
        return await self._client._run(_core.list_images())

    async def get(self, name: ImageRef) -> ImageInfo:
        return await self._client._run(_core.get_image(name))

    async def delete(self, name: ImageRef) -> None:
        await self._client._run(_core.delete_image(name))


async def _async_chunks(content: Any) -> AsyncIterator[bytes]:
    """Any body the sync API takes, as the async iterator httpx wants."""
    if hasattr(content, "__aiter__"):
        async for chunk in content:
            yield chunk
    elif hasattr(content, "read"):
        while True:
            chunk = await anyio.to_thread.run_sync(content.read, _core.CHUNK)
            if not chunk:
                return
            yield chunk
    else:
        for chunk in content:
            yield chunk


def _client_for(
    client: Optional[AsyncClient],
    url: Optional[str],
    token: Optional[str],
    http_timeout: TimeoutArg,
) -> tuple[AsyncClient, bool]:
    if client is not None:
        return client, False
    if isinstance(http_timeout, _core._Default):
        return AsyncClient(url, token), True
    return AsyncClient(url, token, timeout=http_timeout), True


class _Pending:
    """What :meth:`AsyncSandbox.create` returns: await it, or ``async with`` it.

    ``sb = await AsyncSandbox.create()`` and ``async with
    AsyncSandbox.create() as sb:`` both work; the second deletes on exit.
    """

    def __init__(self, opening: Callable[[], Awaitable[AsyncSandbox]]) -> None:
        self._opening = opening
        self._sandbox: Optional[AsyncSandbox] = None

    def __await__(self) -> Generator[Any, None, AsyncSandbox]:
        return self._opening().__await__()

    async def __aenter__(self) -> AsyncSandbox:
        self._sandbox = await self._opening()
        return self._sandbox

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self._sandbox is not None:
            await self._sandbox.__aexit__(exc_type, exc, tb)


class AsyncSandbox:
    """The async :class:`~sbx.Sandbox`."""

    def __init__(
        self,
        sandbox_id: str,
        client: AsyncClient,
        *,
        token: Optional[str] = None,
        owns_client: bool = False,
        delete_on_exit: bool = False,
    ) -> None:
        self.id = sandbox_id
        self.token = token
        self.client = client
        self._owns_client = owns_client
        self._delete_on_exit = delete_on_exit
        self.processes = AsyncProcesses(self)
        self.files = AsyncFiles(self)
        self.sessions = AsyncSessions(self)
        self.ports = AsyncPorts(self)
        self.previews = AsyncPreviews(self)
        self.pty = AsyncTerminals(self)

    def __repr__(self) -> str:
        return f"AsyncSandbox(id={self.id!r})"

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
        client: Optional[AsyncClient] = None,
        request_timeout: TimeoutArg = DEFAULT,
    ) -> _Pending:
        """See :meth:`sbx.Sandbox.create`. Await the result, or ``async with`` it."""
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

        async def opening() -> AsyncSandbox:
            http, owned = _client_for(client, url, token, http_timeout)
            try:
                created = await http._run(call)
            except BaseException:
                if owned:
                    await http.close()
                raise
            return cls(
                created.info.id,
                http,
                token=created.token,
                owns_client=owned,
                delete_on_exit=True,
            )

        return _Pending(opening)

    @classmethod
    async def connect(
        cls,
        sandbox_id: str,
        *,
        url: Optional[str] = None,
        token: Optional[str] = None,
        http_timeout: TimeoutArg = DEFAULT,
        client: Optional[AsyncClient] = None,
    ) -> AsyncSandbox:
        http, owned = _client_for(client, url, token, http_timeout)
        try:
            await http._run(_core.get_sandbox(sandbox_id))
        except BaseException:
            if owned:
                await http.close()
            raise
        return cls(sandbox_id, http, owns_client=owned)

    @classmethod
    async def list(
        cls,
        *,
        url: Optional[str] = None,
        token: Optional[str] = None,
        http_timeout: TimeoutArg = DEFAULT,
        client: Optional[AsyncClient] = None,
    ) -> builtins.list[SandboxInfo]:
        http, owned = _client_for(client, url, token, http_timeout)
        try:
            return await http.list_sandboxes()
        finally:
            if owned:
                await http.close()

    async def get_info(self) -> SandboxInfo:
        return await self.client._run(_core.get_sandbox(self.id))

    async def update_egress(self, egress: Sequence[str]) -> SandboxInfo:
        return await self.client._run(_core.update_egress(self.id, egress))

    async def delete(self, *, request_timeout: TimeoutArg = DEFAULT) -> None:
        await self.client._run(_core.delete_sandbox(self.id, request_timeout))
        self._delete_on_exit = False

    async def close(self) -> None:
        if self._owns_client:
            await self.client.close()

    # lifecycle

    async def stop(self, *, request_timeout: TimeoutArg = DEFAULT) -> SandboxInfo:
        """See :meth:`sbx.Sandbox.stop`."""
        return await self.client._run(_core.change_state(self.id, "stop", request_timeout))

    async def start(self, *, request_timeout: TimeoutArg = DEFAULT) -> SandboxInfo:
        return await self.client._run(_core.change_state(self.id, "start", request_timeout))

    async def pause(self, *, request_timeout: TimeoutArg = DEFAULT) -> SandboxInfo:
        return await self.client._run(_core.change_state(self.id, "pause", request_timeout))

    async def resume(self, *, request_timeout: TimeoutArg = DEFAULT) -> SandboxInfo:
        return await self.client._run(_core.change_state(self.id, "resume", request_timeout))

    async def set_timeout(self, timeout_s: Seconds) -> SandboxInfo:
        return await self.client._run(_core.set_timeout(self.id, timeout_s))

    async def snapshot(self, name: str, *, request_timeout: TimeoutArg = DEFAULT) -> SnapshotInfo:
        return await self.client._run(_core.create_snapshot(self.id, name, request_timeout))

    async def fork(
        self, count: int = 1, *, request_timeout: TimeoutArg = DEFAULT
    ) -> builtins.list[Union[AsyncSandbox, ApiError]]:
        """See :meth:`sbx.Sandbox.fork`."""
        outcomes = await self.client._run(_core.fork(self.id, count, request_timeout))
        return [
            outcome
            if isinstance(outcome, ApiError)
            else type(self)(outcome.info.id, self.client, token=outcome.token, delete_on_exit=True)
            for outcome in outcomes
        ]

    async def restore(
        self, snapshot: SnapshotRef, *, request_timeout: TimeoutArg = DEFAULT
    ) -> SandboxInfo:
        return await self.client._run(_core.restore(self.id, snapshot, request_timeout))

    def events(
        self,
        *,
        since: Optional[int] = None,
        follow: bool = False,
        request_timeout: TimeoutArg = DEFAULT,
    ) -> AsyncSandboxEventStream:
        """See :meth:`sbx.Sandbox.events`: ``async for event in sb.events(…)``."""
        return self.client.events(
            sandbox=self.id, since=since, follow=follow, request_timeout=request_timeout
        )

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        try:
            if self._delete_on_exit:
                try:
                    await self.delete()
                except NotFound:
                    pass
        finally:
            await self.close()

    async def exec(
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
        """See :meth:`sbx.Sandbox.exec`."""
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
            async with AsyncEventStream(self.client, request, on_stdout, on_stderr) as stream:
                return await stream.wait()
        return await self.client._run(_core.exec_buffered(request))

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
    ) -> AsyncEventStream:
        """See :meth:`sbx.Sandbox.exec_stream`: ``async for event in sb.exec_stream(…)``."""
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
        return AsyncEventStream(self.client, request, on_stdout, on_stderr)

    def watch(
        self, path: str, *, recursive: bool = False, request_timeout: TimeoutArg = DEFAULT
    ) -> AsyncWatchStream:
        """See :meth:`sbx.Sandbox.watch`: ``async with sb.watch(…) as changes:``
        returns once every directory is watched, then ``async for event in changes``."""
        request = _core.watch(self.id, path, recursive, request_timeout)
        return AsyncWatchStream(self.client, request)

    async def upload_dir(
        self,
        local: Union[str, os.PathLike[str]],
        remote: str,
        *,
        request_timeout: TimeoutArg = DEFAULT,
    ) -> ArchiveSummary:
        """See :meth:`sbx.Sandbox.upload_dir`."""
        with spool() as tar:
            await anyio.to_thread.run_sync(write_tar, local, tar)
            tar.seek(0)
            return await self.client._run(
                _core.upload_archive(self.id, remote, tar, request_timeout)
            )

    async def download_dir(
        self,
        remote: str,
        local: Union[str, os.PathLike[str]],
        *,
        request_timeout: TimeoutArg = DEFAULT,
    ) -> None:
        """See :meth:`sbx.Sandbox.download_dir`."""
        with spool() as tar:
            request = _core.download_archive(self.id, remote, request_timeout)
            async with AsyncByteStream(self.client, request) as body:
                async for chunk in body:
                    await anyio.to_thread.run_sync(tar.write, chunk)
            tar.seek(0)
            await anyio.to_thread.run_sync(lambda: extract_tar(tar, local, strip_top=True))


class AsyncProcesses:
    """See :class:`sbx.Processes`."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sandbox = sandbox

    async def _run(self, call: Call[T]) -> T:
        return await self._sandbox.client._run(call)

    async def start(
        self,
        cmd: Command,
        *,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        user: Optional[str] = None,
        name: Optional[str] = None,
    ) -> ProcessInfo:
        return await self._run(
            _core.start_process(self._sandbox.id, cmd, cwd=cwd, env=env, user=user, name=name)
        )

    async def list(self) -> builtins.list[ProcessInfo]:
        return await self._run(_core.list_processes(self._sandbox.id))

    async def get(self, pid: int) -> ProcessInfo:
        return await self._run(_core.get_process(self._sandbox.id, pid))

    def logs(
        self,
        pid: int,
        *,
        follow: bool = False,
        tail: Optional[int] = None,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        request_timeout: TimeoutArg = DEFAULT,
    ) -> AsyncEventStream:
        request = _core.process_logs(
            self._sandbox.id, pid, follow=follow, tail=tail, request_timeout=request_timeout
        )
        return AsyncEventStream(self._sandbox.client, request, on_stdout, on_stderr)

    async def write_stdin(self, pid: int, data: Union[bytes, str], *, close: bool = False) -> None:
        await self._run(_core.write_stdin(self._sandbox.id, pid, data, close))

    async def close_stdin(self, pid: int) -> None:
        await self.write_stdin(pid, b"", close=True)

    async def signal(self, pid: int, signal: SignalArg = "TERM") -> None:
        await self._run(_core.signal_process(self._sandbox.id, pid, signal))

    async def wait(self, pid: int, *, timeout: TimeoutArg = DEFAULT) -> ProcessInfo:
        return await self._run(_core.wait_process(self._sandbox.id, pid, timeout))

    async def kill_all(self) -> int:
        return await self._run(_core.kill_all(self._sandbox.id))


class AsyncSessions:
    """See :class:`sbx.Sessions`."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sandbox = sandbox

    async def create(
        self,
        *,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        user: Optional[str] = None,
    ) -> AsyncSession:
        """See :meth:`sbx.Sessions.create`; ``async with`` the session deletes it on exit."""
        call = _core.create_session(self._sandbox.id, cwd=cwd, env=env, user=user)
        return AsyncSession(self._sandbox, await self._sandbox.client._run(call))

    async def list(self) -> builtins.list[SessionInfo]:
        return await self._sandbox.client._run(_core.list_sessions(self._sandbox.id))

    async def get(self, session_id: str) -> AsyncSession:
        """See :meth:`sbx.Sessions.get`."""
        for info in await self.list():
            if info.id == session_id:
                return AsyncSession(self._sandbox, info)
        raise _core.no_session(session_id)


class AsyncSession:
    """See :class:`sbx.Session`."""

    def __init__(self, sandbox: AsyncSandbox, info: SessionInfo) -> None:
        self.id = info.id
        self.info = info
        self._sandbox = sandbox

    def __repr__(self) -> str:
        return f"AsyncSession(id={self.id!r}, sandbox={self._sandbox.id!r})"

    async def exec(
        self,
        command: str,
        *,
        timeout: Optional[float] = None,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        request_timeout: TimeoutArg = DEFAULT,
    ) -> ExecResult:
        """See :meth:`sbx.Session.exec`."""
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
            async with AsyncEventStream(client, request, on_stdout, on_stderr) as stream:
                return await stream.wait()
        return await client._run(_core.exec_buffered(request))

    def exec_stream(
        self,
        command: str,
        *,
        timeout: Optional[float] = None,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        request_timeout: TimeoutArg = DEFAULT,
    ) -> AsyncEventStream:
        """See :meth:`sbx.Session.exec_stream`: ``async for event in session.exec_stream(…)``."""
        request = _core.session_exec_request(
            self._sandbox.id,
            self.id,
            command,
            timeout=timeout,
            stream=True,
            request_timeout=request_timeout,
        )
        return AsyncEventStream(self._sandbox.client, request, on_stdout, on_stderr)

    async def signal(self, signal: SignalArg = "INT") -> None:
        await self._sandbox.client._run(_core.signal_session(self._sandbox.id, self.id, signal))

    async def delete(self) -> None:
        await self._sandbox.client._run(_core.delete_session(self._sandbox.id, self.id))

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *_: object) -> None:
        try:
            await self.delete()
        except NotFound:
            pass


class AsyncPorts:
    """See :class:`sbx.Ports`."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sandbox = sandbox

    async def wait(
        self, port: int, *, timeout: Optional[float] = None, request_timeout: TimeoutArg = DEFAULT
    ) -> PortStatus:
        call = _core.wait_port(self._sandbox.id, port, timeout, request_timeout)
        return await self._sandbox.client._run(call)

    async def request(
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
        """See :meth:`sbx.Ports.request`."""
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
        return await self._sandbox.client._exchange(request)

    def url(self, port: int, path: str = "/") -> str:
        """See :meth:`sbx.Ports.url`: it needs the bearer token; browsers need a preview."""
        return self._sandbox.client.url + _core.port_path(self._sandbox.id, port, path)


class AsyncPreviews:
    """See :class:`sbx.Previews`."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sandbox = sandbox

    async def create(self, port: int, *, ttl_s: Optional[Seconds] = None) -> PreviewInfo:
        client = self._sandbox.client
        return await client._run(_core.create_preview(self._sandbox.id, port, ttl_s, client.url))

    async def list(self) -> builtins.list[PreviewInfo]:
        return await self._sandbox.client._run(_core.list_previews(self._sandbox.id))

    async def revoke(self, preview: PreviewRef) -> None:
        await self._sandbox.client._run(_core.revoke_preview(self._sandbox.id, preview))


class AsyncTerminals:
    """See :class:`sbx.Terminals`; :meth:`connect` runs on asyncio only."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sandbox = sandbox

    async def _run(self, call: Call[T]) -> T:
        return await self._sandbox.client._run(call)

    async def create(
        self,
        cols: int = 80,
        rows: int = 24,
        *,
        cmd: Optional[Sequence[str]] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        user: Optional[str] = None,
    ) -> PtyInfo:
        return await self._run(
            _core.create_pty(
                self._sandbox.id, cols=cols, rows=rows, cmd=cmd, env=env, cwd=cwd, user=user
            )
        )

    async def list(self) -> builtins.list[PtyInfo]:
        return await self._run(_core.list_ptys(self._sandbox.id))

    async def resize(self, pty: PtyRef, cols: int, rows: int) -> None:
        await self._run(_core.resize_pty(self._sandbox.id, pty, cols, rows))

    async def kill(self, pty: PtyRef) -> None:
        await self._run(_core.kill_pty(self._sandbox.id, pty))

    async def connect(self, pty: PtyRef) -> AsyncTerminal:
        """See :meth:`sbx.Terminals.connect`: ``async with await sb.pty.connect(…) as term:``."""
        client = self._sandbox.client
        url = _core.websocket_url(client.url, _core.pty_path(self._sandbox.id, pty))
        return await connect_async(url, client.token, client.timeout, _core.pty_id(pty))


class AsyncFiles:
    """See :class:`sbx.Files`."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sandbox = sandbox

    async def _run(self, call: Call[T]) -> T:
        return await self._sandbox.client._run(call)

    async def read(self, path: str, *, request_timeout: TimeoutArg = DEFAULT) -> bytes:
        parts = []
        async with self.read_stream(path, request_timeout=request_timeout) as chunks:
            async for chunk in chunks:
                parts.append(chunk)
        return b"".join(parts)

    async def read_text(
        self,
        path: str,
        *,
        encoding: str = "utf-8",
        errors: str = "strict",
        request_timeout: TimeoutArg = DEFAULT,
    ) -> str:
        return (await self.read(path, request_timeout=request_timeout)).decode(encoding, errors)

    def read_stream(self, path: str, *, request_timeout: TimeoutArg = DEFAULT) -> AsyncByteStream:
        request = _core.read_file(self._sandbox.id, path, request_timeout)
        return AsyncByteStream(self._sandbox.client, request)

    async def write(
        self,
        path: str,
        data: AsyncFileContent,
        *,
        mode: Optional[int] = None,
        owner: Optional[str] = None,
        request_timeout: TimeoutArg = DEFAULT,
    ) -> FileInfo:
        content: Any = data.encode() if isinstance(data, str) else data
        if isinstance(content, (bytearray, memoryview)):
            content = bytes(content)
        return await self._run(
            _core.write_file(self._sandbox.id, path, content, mode, request_timeout, owner)
        )

    async def list(self, path: str, *, depth: Optional[int] = None) -> builtins.list[FileInfo]:
        return await self._run(_core.list_files(self._sandbox.id, path, depth))

    async def stat(self, path: str) -> FileInfo:
        return await self._run(_core.stat_file(self._sandbox.id, path))

    async def exists(self, path: str) -> bool:
        try:
            await self.stat(path)
        except NotFound:
            return False
        return True

    async def mkdir(
        self, path: str, *, mode: Optional[int] = None, owner: Optional[str] = None
    ) -> FileInfo:
        return await self._run(_core.mkdir(self._sandbox.id, path, mode, owner))

    async def move(self, source: str, destination: str) -> None:
        await self._run(_core.move_file(self._sandbox.id, source, destination))

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        await self._run(_core.remove_file(self._sandbox.id, path, recursive))


class _AsyncStream:
    def __init__(self, client: AsyncClient, request: Request) -> None:
        self._client = client
        self._request = request
        self._response: Optional[httpx.Response] = None
        self._closed = False

    async def _chunks(self) -> AsyncIterator[bytes]:
        if self._closed:
            raise _core.closed_stream_error()
        if self._response is None:
            self._response = await self._client._open(self._request)
        try:
            with _core.transport_errors():
                async for chunk in self._response.aiter_bytes():
                    yield chunk
                    if self._closed:
                        return
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Ends the stream; for an exec, the server then kills the command."""
        self._closed = True
        if self._response is not None:
            await self._response.aclose()

    async def __aenter__(self: T) -> T:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


class AsyncByteStream(_AsyncStream):
    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()


class AsyncEventStream(_AsyncStream):
    """See :class:`sbx.EventStream`: ``async for``, or ``await stream.wait()``."""

    def __init__(
        self,
        client: AsyncClient,
        request: Request,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
    ) -> None:
        super().__init__(client, request)
        self._log = _core.EventLog(on_stdout, on_stderr)
        self._events: Optional[AsyncIterator[ExecEvent]] = None

    @property
    def pid(self) -> Optional[int]:
        return self._log.pid

    def __aiter__(self) -> AsyncIterator[ExecEvent]:
        if self._events is None:
            self._events = self._generate()
        return self._events

    async def _generate(self) -> AsyncIterator[ExecEvent]:
        decoder = _core.NdjsonDecoder()
        async for chunk in self._chunks():
            for event in decoder.feed(chunk):
                yield await self._observe(event)
        for event in decoder.finish():
            yield await self._observe(event)

    async def _observe(self, event: ExecEvent) -> ExecEvent:
        callback = self._log.observe(event)
        if callback is not None:
            outcome = callback()
            if inspect.isawaitable(outcome):
                await outcome
        return event

    async def wait(self) -> ExecResult:
        async for _ in self:
            pass
        return self._log.result()


class AsyncSandboxEventStream(_AsyncStream):
    """See :class:`sbx.SandboxEventStream`: ``async for``, ``async with`` to close early."""

    def __init__(self, client: AsyncClient, request: Request) -> None:
        super().__init__(client, request)
        self._events: Optional[AsyncIterator[SandboxEvent]] = None

    def __aiter__(self) -> AsyncIterator[SandboxEvent]:
        if self._events is None:
            self._events = self._generate()
        return self._events

    async def _generate(self) -> AsyncIterator[SandboxEvent]:
        decoder = _core.sandbox_event_decoder()
        async for chunk in self._chunks():
            for event in decoder.feed(chunk):
                yield event
        for event in decoder.finish():
            yield event


class AsyncWatchStream(_AsyncStream):
    """See :class:`sbx.WatchStream`: ``async with`` opens it, ``async for`` reads it."""

    def __init__(self, client: AsyncClient, request: Request) -> None:
        super().__init__(client, request)
        self._events: Optional[AsyncIterator[WatchEvent]] = None

    async def open(self) -> AsyncWatchStream:
        """See :meth:`sbx.WatchStream.open`."""
        if self._closed:
            raise _core.closed_stream_error()
        if self._response is None:
            self._response = await self._client._open(self._request)
        return self

    async def __aenter__(self) -> AsyncWatchStream:
        return await self.open()

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        if self._events is None:
            self._events = self._generate()
        return self._events

    async def _generate(self) -> AsyncIterator[WatchEvent]:
        decoder = _core.watch_decoder()
        async for chunk in self._chunks():
            for event in decoder.feed(chunk):
                yield event
        for event in decoder.finish():
            yield event


class _AsyncImageStream(_AsyncStream):
    """See :class:`sbx._sync._ImageStream`."""

    def __init__(
        self,
        client: AsyncClient,
        request: Request,
        log: _core.OutcomeLog,
        decoder: _core.LineDecoder[Any],
    ) -> None:
        super().__init__(client, request)
        self._log = log
        self._decoder = decoder

    async def _observe(self, line: Any) -> None:
        callback = self._log.observe(line)
        if callback is not None:
            outcome = callback()
            if inspect.isawaitable(outcome):
                await outcome

    async def wait(self) -> ImageInfo:
        decoder = self._decoder
        async for chunk in self._chunks():
            for line in decoder.feed(chunk):
                await self._observe(line)
        for line in decoder.finish():
            await self._observe(line)
        response = self._response
        return self._log.result(None if response is None else response.headers.get("x-request-id"))

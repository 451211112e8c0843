"""Terminals attached over a WebSocket: :class:`Terminal` and :class:`AsyncTerminal`.

``GET /v1/sandboxes/{id}/pty/{tid}`` with a WebSocket handshake attaches
to a terminal: binary frames carry its bytes both ways, text frames carry
control messages (``{"type":"resize",…}`` from the client, ``{"type":
"exit","exit_code":N}`` from the server, last, before it closes). The
``websockets`` package speaks the protocol; it is imported only here and
only when a terminal is attached, so the SDK's one hard dependency stays
``httpx`` (``pip install 'sbx[pty]'`` adds it).
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, AsyncIterator, Dict, Iterator, Optional, Union

import anyio

from . import _core
from .errors import ProtocolError, RequestTimeout, TransportError, error_from_response

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection as AsyncConnection
    from websockets.sync.client import ClientConnection as SyncConnection

__all__ = ["Terminal", "AsyncTerminal", "connect", "connect_async"]

#: What the SDK calls itself in the handshake, as in its HTTP calls.
USER_AGENT = "sbx-python"


def _payload(data: Union[bytes, bytearray, memoryview, str]) -> bytes:
    """What is typed: a str as UTF-8. Always a binary frame: text frames
    are control messages."""
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"a terminal takes bytes or str, got {type(data).__name__}")


def _auth(token: Optional[str]) -> Dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


@contextlib.contextmanager
def _handshake_errors() -> Iterator[None]:
    """A refused handshake as the API's error; no answer as a transport error."""
    from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

    try:
        yield
    except InvalidStatus as err:
        response = err.response
        raise error_from_response(
            response.status_code, bytes(response.body or b""), response.headers
        ) from err
    except TimeoutError as err:
        raise RequestTimeout(f"timed out attaching to the terminal: {err}") from err
    except (OSError, InvalidHandshake, InvalidURI) as err:
        raise TransportError(f"{type(err).__name__}: {err}") from err


def _closed_error(err: Exception) -> TransportError:
    return TransportError(f"the terminal's connection broke: {err}")


class _Frames:
    """What both kinds of terminal share: reading frames into output and an exit code."""

    def __init__(self, pty_id: str) -> None:
        #: The terminal's id.
        self.id = pty_id
        #: Its command's exit status (``128 + N`` for signal N), once the
        #: server said so; it then closes the connection.
        self.exit_code: Optional[int] = None
        self._ended = False

    def _output(self, frame: Union[str, bytes]) -> Optional[bytes]:
        """A frame's output; ``None`` for a control frame (noted) or an empty one."""
        if isinstance(frame, str):
            code = _core.pty_exit_code(frame)
            if code is not None:
                self.exit_code = code
            return None
        return bytes(frame) or None

    def _end(self, err: Exception, clean: bool) -> bytes:
        """The connection closed: the end of the output, unless it broke
        before the terminal's command exited."""
        self._ended = True
        if not clean and self.exit_code is None:
            raise _closed_error(err) from err
        return b""

    def _result(self) -> int:
        if self.exit_code is None:
            raise ProtocolError("the terminal's connection closed without its exit code")
        return self.exit_code


class Terminal(_Frames):
    """An attached terminal (see :meth:`sbx.Terminals.connect`).

    :meth:`send` types into it, :meth:`resize` changes its size,
    :meth:`recv` (or iterating) gives its output as it comes: first the
    scrollback (what it printed lately), then live output. Once its command
    exits, :meth:`recv` gives ``b""`` and :attr:`exit_code` is set.
    Closing it detaches; the terminal goes on (``pty.kill`` ends it). Use
    it as a context manager.
    """

    def __init__(
        self, connection: SyncConnection, pty_id: str, stack: contextlib.ExitStack
    ) -> None:
        super().__init__(pty_id)
        self._ws = connection
        self._stack = stack

    def __repr__(self) -> str:
        return f"Terminal(id={self.id!r}, exit_code={self.exit_code!r})"

    def send(self, data: Union[bytes, bytearray, memoryview, str]) -> None:
        """Types ``data`` (a str as UTF-8): ``"ls\\n"``, ``b"\\x03"`` for Ctrl-C."""
        self._send(_payload(data))

    def resize(self, cols: int, rows: int) -> None:
        """Changes its size, in cells (1 to 1000 each way)."""
        self._send(_core.resize_frame(cols, rows))

    def _send(self, frame: Union[str, bytes]) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            self._ws.send(frame)
        except ConnectionClosed as err:
            raise _closed_error(err) from err

    def recv(self, timeout: Optional[float] = None) -> bytes:
        """The next output, waiting up to ``timeout`` seconds (no limit by
        default; :class:`~sbx.RequestTimeout` after it); ``b""`` once the
        terminal's command has exited (or the server closed the connection)."""
        from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ended:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                frame = self._ws.recv(remaining)
            except TimeoutError as err:
                raise RequestTimeout(f"no terminal output within {timeout} s") from err
            except ConnectionClosed as err:
                return self._end(err, isinstance(err, ConnectionClosedOK))
            output = self._output(frame)
            if output is not None:
                return output
        return b""

    def __iter__(self) -> Iterator[bytes]:
        """Its output, chunk by chunk, until its command exits."""
        while True:
            chunk = self.recv()
            if not chunk:
                return
            yield chunk

    def wait(self, timeout: Optional[float] = None) -> int:
        """Reads (and drops) the output up to the end; the exit code.
        :class:`~sbx.ProtocolError` if the server closed without one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ended:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            self.recv(remaining)
        return self._result()

    def close(self) -> None:
        """Detaches; the terminal and its command go on."""
        self._ended = True
        self._stack.close()

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncTerminal(_Frames):
    """The async :class:`Terminal` (asyncio only: ``websockets`` runs on asyncio)."""

    def __init__(
        self, connection: AsyncConnection, pty_id: str, stack: contextlib.AsyncExitStack
    ) -> None:
        super().__init__(pty_id)
        self._ws = connection
        self._stack = stack

    def __repr__(self) -> str:
        return f"AsyncTerminal(id={self.id!r}, exit_code={self.exit_code!r})"

    async def send(self, data: Union[bytes, bytearray, memoryview, str]) -> None:
        await self._send(_payload(data))

    async def resize(self, cols: int, rows: int) -> None:
        await self._send(_core.resize_frame(cols, rows))

    async def _send(self, frame: Union[str, bytes]) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await self._ws.send(frame)
        except ConnectionClosed as err:
            raise _closed_error(err) from err

    async def recv(self, timeout: Optional[float] = None) -> bytes:
        """See :meth:`Terminal.recv`."""
        from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

        try:
            with anyio.fail_after(timeout):
                while not self._ended:
                    try:
                        frame = await self._ws.recv()
                    except ConnectionClosed as err:
                        return self._end(err, isinstance(err, ConnectionClosedOK))
                    output = self._output(frame)
                    if output is not None:
                        return output
        except TimeoutError as err:
            raise RequestTimeout(f"no terminal output within {timeout} s") from err
        return b""

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self.recv()
            if not chunk:
                return
            yield chunk

    async def wait(self, timeout: Optional[float] = None) -> int:
        """See :meth:`Terminal.wait`."""
        try:
            with anyio.fail_after(timeout):
                while not self._ended:
                    await self.recv()
        except TimeoutError as err:
            raise RequestTimeout(f"the terminal did not exit within {timeout} s") from err
        return self._result()

    async def aclose(self) -> None:
        """Detaches; the terminal and its command go on."""
        self._ended = True
        await self._stack.aclose()

    async def __aenter__(self) -> AsyncTerminal:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


def connect(url: str, token: Optional[str], timeout: Optional[float], pty_id: str) -> Terminal:
    """Attaches to the terminal at ``url`` (``ws://…/pty/{tid}``)."""
    try:
        from websockets.sync.client import connect as ws_connect
    except ImportError as err:
        raise _core.missing_websockets(err) from err
    # Entered as a context manager, as websockets wants; Terminal.close exits it.
    with contextlib.ExitStack() as stack, _handshake_errors():
        connection = stack.enter_context(
            ws_connect(
                url,
                additional_headers=_auth(token),
                user_agent_header=USER_AGENT,
                open_timeout=timeout,
            )
        )
        return Terminal(connection, pty_id, stack.pop_all())


async def connect_async(
    url: str, token: Optional[str], timeout: Optional[float], pty_id: str
) -> AsyncTerminal:
    """See :func:`connect`."""
    try:
        from websockets.asyncio.client import connect as ws_connect
    except ImportError as err:
        raise _core.missing_websockets(err) from err
    async with contextlib.AsyncExitStack() as stack:
        with _handshake_errors():
            connection = await stack.enter_async_context(
                ws_connect(
                    url,
                    additional_headers=_auth(token),
                    user_agent_header=USER_AGENT,
                    open_timeout=timeout,
                )
            )
        return AsyncTerminal(connection, pty_id, stack.pop_all())

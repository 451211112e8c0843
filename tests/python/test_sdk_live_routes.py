"""Sessions, watch, ports, previews and terminals in the SDK, without a server.

Every call is checked against a mocked httpx transport (the request it
sends, how it decodes the answer), sync and async; terminals are attached
to a small WebSocket server here that speaks the agent's terminal protocol.
The same calls against a real server are in test_sdk_interactive.py.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import anyio
import httpx
import pytest
import sbx
from sbx import _core
from websockets.datastructures import Headers
from websockets.http11 import Response as WsResponse
from websockets.sync.server import Server, ServerConnection, serve

URL = "http://sbx.invalid"
T0 = "2026-11-30T16:04:25.5Z"
WHEN = datetime(2026, 11, 30, 16, 4, 25, 500000, tzinfo=timezone.utc)

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def mocked(answer: Handler) -> sbx.Sandbox:
    client = sbx.Client(URL, "sbx_test")
    client._http.close()
    client._http = httpx.Client(
        base_url=URL,
        headers=_core.client_headers("sbx_test"),
        transport=httpx.MockTransport(answer),
    )
    return sbx.Sandbox("sb/1", client, owns_client=True)


def mocked_async(answer: Handler) -> sbx.AsyncSandbox:
    client = sbx.AsyncClient(URL, "sbx_test")
    client._http = httpx.AsyncClient(
        base_url=URL,
        headers=_core.client_headers("sbx_test"),
        transport=httpx.MockTransport(answer),
    )
    return sbx.AsyncSandbox("sb/1", client, owns_client=True)


class Recorder:
    """Answers by (method, path) and keeps every request it saw."""

    def __init__(self, routes: Dict[Tuple[str, str], Any]) -> None:
        self.routes = routes
        self.seen: List[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        answer = self.routes[(request.method, request.url.raw_path.decode().split("?")[0])]
        if callable(answer):
            answer = answer(request)
        if isinstance(answer, httpx.Response):
            return answer
        if answer is None:
            return httpx.Response(204)
        return httpx.Response(200, json=answer)

    def bodies(self) -> List[Tuple[str, str, Any]]:
        return [
            (r.method, r.url.raw_path.decode(), json.loads(r.content) if r.content else None)
            for r in self.seen
        ]


def error(status: int, code: str, message: str = "no") -> httpx.Response:
    return httpx.Response(status, json={"error_code": code, "message": message})


SESSION = {"id": "s1", "pid": 42, "busy": False, "commands": 0, "created_at": T0}
RESULT = {
    "exit_code": 3,
    "stdout": "/tmp\n",
    "stderr": "",
    "duration_ms": 4,
    "timed_out": False,
    "truncated": False,
}
EVENTS = [
    {"type": "start", "pid": 43},
    {"type": "stdout", "data": "a\n"},
    {"type": "stderr", "data": "e"},
    {"type": "exit", "exit_code": 0, "duration_ms": 2, "timed_out": False},
]
NDJSON = b"".join(json.dumps(line).encode() + b"\n" for line in EVENTS)


def session_routes() -> Dict[Tuple[str, str], Any]:
    base = "/v1/sandboxes/sb%2F1/sessions"
    return {
        ("POST", base): lambda r: httpx.Response(201, json=SESSION),
        ("GET", base): {"sessions": [SESSION, dict(SESSION, id="s2", busy=True, commands=5)]},
        ("DELETE", f"{base}/s1"): None,
        ("POST", f"{base}/s1/signal"): None,
        ("POST", f"{base}/s1/exec"): lambda r: (
            httpx.Response(200, content=NDJSON, headers={"content-type": "application/x-ndjson"})
            if json.loads(r.content).get("stream")
            else httpx.Response(200, json=RESULT)
        ),
        ("POST", f"{base}/busy/exec"): error(409, "conflict", "a command is running"),
        ("DELETE", f"{base}/gone"): error(404, "not_found"),
    }


def test_sessions_send_what_the_api_says():
    recorder = Recorder(session_routes())
    with mocked(recorder) as sb:
        session = sb.sessions.create(cwd="/tmp", env={"A": 1}, user="nobody")  # type: ignore[dict-item]
        assert isinstance(session, sbx.Session) and session.id == "s1"
        assert session.info == sbx.SessionInfo("s1", 42, False, 0, WHEN)
        assert sb.sessions.create().id == "s1"
        listed = sb.sessions.list()
        assert [(s.id, s.busy, s.commands) for s in listed] == [("s1", False, 0), ("s2", True, 5)]
        assert sb.sessions.get("s2").info.commands == 5
        with pytest.raises(sbx.NotFound):
            sb.sessions.get("nope")

        result = session.exec("cd /tmp && pwd; false", timeout=1.5)
        assert result == sbx.ExecResult(3, "/tmp\n", "", 4, False, False)
        events = list(session.exec_stream("echo a"))
        assert events[0] == sbx.StartEvent(pid=43) and events[-1].type == "exit"
        out: List[str] = []
        summed = session.exec("echo a", on_stdout=out.append)
        assert (summed.stdout, summed.stderr, out) == ("a\n", "e", ["a\n"])
        session.signal()
        session.signal("KILL")
        with session:
            pass
        with sbx.Session(sb, dict_info("gone")):
            pass  # an ended session's delete on exit is quiet
        with pytest.raises(sbx.Conflict) as caught:
            sbx.Session(sb, dict_info("busy")).exec("true")
        assert caught.value.status == 409
        with pytest.raises(TypeError):
            session.exec(["ls"])  # type: ignore[arg-type]

    base = "/v1/sandboxes/sb%2F1/sessions"
    assert recorder.bodies()[:2] == [
        ("POST", base, {"cwd": "/tmp", "env": {"A": "1"}, "user": "nobody"}),
        ("POST", base, {}),
    ]
    execs = [r for r in recorder.seen if r.url.path.endswith("/s1/exec")]
    assert [json.loads(r.content) for r in execs] == [
        {"command": "cd /tmp && pwd; false", "timeout_ms": 1500},
        {"command": "echo a", "stream": True},
        {"command": "echo a", "stream": True},
    ]
    assert execs[0].headers.get("accept") != "application/x-ndjson"
    assert execs[1].headers["accept"] == "application/x-ndjson"
    # The HTTP call outlasts the command's own timeout.
    assert execs[0].extensions["timeout"]["read"] >= 1.5 + _core.EXEC_GRACE_S
    signals = [json.loads(r.content) for r in recorder.seen if r.url.path.endswith("/signal")]
    assert signals == [{"signal": "INT"}, {"signal": "KILL"}]
    deletes = [r.url.raw_path.decode() for r in recorder.seen if r.method == "DELETE"]
    assert deletes == [f"{base}/s1", f"{base}/gone"]
    assert all(r.headers["authorization"] == "Bearer sbx_test" for r in recorder.seen)


def dict_info(session_id: str) -> sbx.SessionInfo:
    return sbx.SessionInfo(session_id, 1, False, 0, WHEN)


@pytest.mark.anyio
async def test_async_sessions_send_the_same():
    recorder = Recorder(session_routes())
    sb = mocked_async(recorder)
    async with sb:
        async with await sb.sessions.create(cwd="/tmp") as session:
            assert isinstance(session, sbx.AsyncSession)
            assert (await session.exec("pwd")).exit_code == 3
            events = [event async for event in session.exec_stream("echo a")]
            assert events[1] == sbx.StdoutEvent(data="a\n")
            seen: List[str] = []

            async def on_stderr(data: str) -> None:
                seen.append(data)

            assert (await session.exec("x", on_stderr=on_stderr)).stderr == "e" == "".join(seen)
            await session.signal(9)
        assert [s.id for s in await sb.sessions.list()] == ["s1", "s2"]
        assert (await sb.sessions.get("s1")).id == "s1"
        with pytest.raises(sbx.NotFound):
            await sb.sessions.get("nope")
        with pytest.raises(sbx.Conflict):
            await sbx.AsyncSession(sb, dict_info("busy")).exec("true")
    methods = [(r.method, r.url.raw_path.decode().rsplit("/", 1)[-1]) for r in recorder.seen]
    assert methods[:5] == [
        ("POST", "sessions"),
        ("POST", "exec"),
        ("POST", "exec"),
        ("POST", "exec"),
        ("POST", "signal"),
    ]
    assert ("DELETE", "s1") in methods
    signal = next(r for r in recorder.seen if r.url.path.endswith("/signal"))
    assert json.loads(signal.content) == {"signal": "9"}


WATCH_LINES = [
    {"type": "create", "path": "/workspace/a", "is_dir": False},
    {"type": "move", "path": "/workspace/b", "from": "/workspace/a", "is_dir": False},
    {"type": "create", "path": "/workspace/d", "is_dir": True},
    {"type": "overflow"},
    {"type": "renamed_later", "path": "/workspace/x"},
]
WATCH_WIRE = b"".join(json.dumps(line).encode() + b"\n" for line in WATCH_LINES)
WATCHED = [
    sbx.WatchEvent("create", "/workspace/a"),
    sbx.WatchEvent("move", "/workspace/b", from_path="/workspace/a"),
    sbx.WatchEvent("create", "/workspace/d", is_dir=True),
    sbx.WatchEvent("overflow", ""),
    sbx.WatchEvent("renamed_later", "/workspace/x"),
]


def pieces(wire: bytes, size: int = 7) -> List[bytes]:
    return [wire[at : at + size] for at in range(0, len(wire), size)]


class Endless(httpx.SyncByteStream):
    """A body that, after its chunks, stays open until closed, as a watch does."""

    def __init__(self, chunks: List[bytes]) -> None:
        self.chunks = chunks
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        assert self.closed.wait(10), "the SDK read past the events it was given"

    def close(self) -> None:
        self.closed.set()


class AsyncEndless(httpx.AsyncByteStream):
    def __init__(self, chunks: List[bytes]) -> None:
        self.chunks = chunks
        self.closed = False

    async def __aiter__(self):
        for chunk in self.chunks:
            yield chunk
        deadline = time.monotonic() + 10
        while not self.closed:
            assert time.monotonic() < deadline, "the SDK read past the events it was given"
            await anyio.sleep(0.01)

    async def aclose(self) -> None:
        self.closed = True


def test_watch_streams_events_from_a_body_that_never_ends():
    bodies: List[Endless] = []

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.raw_path.decode().startswith("/v1/sandboxes/sb%2F1/watch?")
        assert request.headers["accept"] == "application/x-ndjson"
        # No read timeout: a quiet directory is not a dead server.
        assert request.extensions["timeout"]["read"] is None
        body = Endless(pieces(WATCH_WIRE))
        bodies.append(body)
        return httpx.Response(200, stream=body, headers={"content-type": "application/x-ndjson"})

    with mocked(answer) as sb:
        stream = sb.watch("/workspace", recursive=True)
        assert isinstance(stream, sbx.WatchStream) and not bodies
        with stream as changes:
            # Entering waits for the answer's head: the watch is in place.
            assert len(bodies) == 1
            events = []
            for event in changes:
                events.append(event)
                if len(events) == len(WATCHED):
                    break
        assert events == WATCHED
        assert bodies[0].closed.is_set()
        assert list(stream) == []
        with pytest.raises(sbx.ProtocolError):
            stream.open()

        # Iterating an unopened stream opens it; close ends it.
        lazy = sb.watch("/tmp")
        first = next(iter(lazy))
        assert first == WATCHED[0]
        lazy.close()
        assert bodies[1].closed.is_set()


def test_watch_sends_its_query_and_raises_the_apis_errors():
    seen: List[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.params["path"] == "relative":
            return error(400, "invalid_request", "path must be absolute")
        return httpx.Response(200, content=WATCH_WIRE[: WATCH_WIRE.index(b"\n") + 1])

    with mocked(answer) as sb:
        assert list(sb.watch("/w d")) == WATCHED[:1]
        with pytest.raises(sbx.InvalidRequest):
            with sb.watch("relative"):
                pass
    assert dict(seen[0].url.params) == {"path": "/w d", "recursive": "false"}


@pytest.mark.anyio
async def test_async_watch_streams_too():
    bodies: List[AsyncEndless] = []

    def answer(request: httpx.Request) -> httpx.Response:
        assert dict(request.url.params) == {"path": "/workspace", "recursive": "true"}
        body = AsyncEndless(pieces(WATCH_WIRE, 5))
        bodies.append(body)
        return httpx.Response(200, stream=body)

    async with mocked_async(answer) as sb:
        stream = sb.watch("/workspace", recursive=True)
        assert isinstance(stream, sbx.AsyncWatchStream)
        async with stream as changes:
            assert len(bodies) == 1
            events = []
            async for event in changes:
                events.append(event)
                if len(events) == len(WATCHED):
                    break
        assert events == WATCHED
        assert bodies[0].closed


def port_routes() -> Dict[Tuple[str, str], Any]:
    base = "/v1/sandboxes/sb%2F1/ports"
    return {
        ("GET", f"{base}/8000/wait"): {"port": 8000, "listening": True, "waited_ms": 120},
        ("GET", f"{base}/9/wait"): error(503, "unavailable", "nothing listens on port 9"),
        ("POST", f"{base}/8000/api/a%20b/c"): lambda r: httpx.Response(
            201, content=b"made:" + r.content, headers={"x-app": "yes"}
        ),
        ("GET", f"{base}/8000/"): httpx.Response(200, text="<html>root</html>"),
        ("GET", f"{base}/8001/missing"): httpx.Response(404, text="app says no"),
        ("GET", f"{base}/9/"): error(502, "unavailable", "nothing listens"),
    }


def test_ports_wait_request_and_url():
    recorder = Recorder(port_routes())
    with mocked(recorder) as sb:
        status = sb.ports.wait(8000, timeout=2)
        assert status == sbx.PortStatus(port=8000, listening=True, waited_ms=120)
        assert sb.ports.wait(8000).listening
        with pytest.raises(sbx.Unavailable) as caught:
            sb.ports.wait(9, timeout=0.2)
        assert caught.value.status == 503

        made = sb.ports.request(
            8000,
            "post",
            "/api/a b/c",
            params={"q": 1, "r": "x y"},
            headers={"content-type": "text/plain", "x-trace": "t"},
            content="body",
        )
        assert isinstance(made, httpx.Response)
        assert (made.status_code, made.text, made.headers["x-app"]) == (201, "made:body", "yes")
        assert sb.ports.request(8000, "GET").text == "<html>root</html>"
        # The app's own errors, and the proxy's, are answers, not exceptions.
        assert sb.ports.request(8001, "GET", "missing").status_code == 404
        failed = sb.ports.request(9, "GET", "/")
        assert failed.status_code == 502 and failed.json()["error_code"] == "unavailable"

        assert sb.ports.url(8000) == f"{URL}/v1/sandboxes/sb%2F1/ports/8000/"
        assert sb.ports.url(3000, "/a/b%2Fc") == f"{URL}/v1/sandboxes/sb%2F1/ports/3000/a/b%2Fc"
        for bad in (0, 65536, True, "80"):
            with pytest.raises(ValueError):
                sb.ports.url(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            sb.ports.request(8000, "GET", "/x?y=1")

    waits = [r for r in recorder.seen if r.url.path.endswith("/wait")]
    assert [dict(r.url.params) for r in waits] == [
        {"timeout_ms": "2000"},
        {},
        {"timeout_ms": "200"},
    ]
    # The HTTP call waits as long as the server may, plus grace.
    assert waits[0].extensions["timeout"]["read"] >= 2 + _core.EXEC_GRACE_S
    assert waits[1].extensions["timeout"]["read"] >= _core.DEFAULT_PORT_WAIT_S
    made_request = recorder.seen[3]
    assert made_request.method == "POST"
    assert made_request.url.raw_path.decode() == (
        "/v1/sandboxes/sb%2F1/ports/8000/api/a%20b/c?q=1&r=x+y"
    )
    assert made_request.headers["x-trace"] == "t"
    assert made_request.headers["authorization"] == "Bearer sbx_test"
    assert made_request.content == b"body"


@pytest.mark.anyio
async def test_async_ports():
    recorder = Recorder(port_routes())
    async with mocked_async(recorder) as sb:
        assert (await sb.ports.wait(8000, timeout=1)).waited_ms == 120
        with pytest.raises(sbx.Unavailable):
            await sb.ports.wait(9)
        made = await sb.ports.request(8000, "POST", "api/a b/c", content=b"raw")
        assert made.text == "made:raw"
        assert (await sb.ports.request(8001, "GET", "/missing")).status_code == 404
        assert sb.ports.url(8000, "x") == f"{URL}/v1/sandboxes/sb%2F1/ports/8000/x"


PREVIEW = {
    "id": "pv_1",
    "sandbox_id": "sb/1",
    "port": 8000,
    "url": "https://sbx.example.com/p/secret-token/",
    "created_at": T0,
    "expires_at": "2026-11-30T17:04:25.5Z",
}


def preview_routes() -> Dict[Tuple[str, str], Any]:
    base = "/v1/sandboxes/sb%2F1/previews"

    def created(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["port"] == 3000:
            return httpx.Response(201, json=dict(PREVIEW, url="/p/relative-token/", port=3000))
        return httpx.Response(201, json=PREVIEW)

    listed = {k: v for k, v in PREVIEW.items() if k != "url"}
    return {
        ("POST", base): created,
        ("GET", base): {"previews": [listed]},
        ("DELETE", f"{base}/pv_1"): None,
        ("DELETE", f"{base}/pv%2F2"): error(404, "not_found"),
    }


def test_previews_create_list_and_revoke():
    recorder = Recorder(preview_routes())
    with mocked(recorder) as sb:
        preview = sb.previews.create(8000, ttl_s=timedelta(minutes=10))
        assert preview.url == PREVIEW["url"]
        assert (preview.id, preview.sandbox_id, preview.port) == ("pv_1", "sb/1", 8000)
        assert preview.expires_at - preview.created_at == timedelta(hours=1)
        # The URL holds a secret: it stays out of reprs and logs.
        assert "secret-token" not in repr(preview)
        relative = sb.previews.create(3000, ttl_s=59.5)
        assert relative.url == f"{URL}/p/relative-token/"
        listed = sb.previews.list()
        assert [(p.id, p.url) for p in listed] == [("pv_1", None)]
        sb.previews.revoke(preview)
        sb.previews.revoke("pv_1")
        with pytest.raises(sbx.NotFound):
            sb.previews.revoke("pv/2")
        with pytest.raises(ValueError):
            sb.previews.create(0)
        with pytest.raises(ValueError):
            sb.previews.create(80, ttl_s=0)
    assert recorder.bodies()[:2] == [
        ("POST", "/v1/sandboxes/sb%2F1/previews", {"port": 8000, "ttl_s": 600}),
        ("POST", "/v1/sandboxes/sb%2F1/previews", {"port": 3000, "ttl_s": 60}),
    ]
    assert [r.url.raw_path.decode() for r in recorder.seen if r.method == "DELETE"] == [
        "/v1/sandboxes/sb%2F1/previews/pv_1",
        "/v1/sandboxes/sb%2F1/previews/pv_1",
        "/v1/sandboxes/sb%2F1/previews/pv%2F2",
    ]


@pytest.mark.anyio
async def test_async_previews():
    recorder = Recorder(preview_routes())
    async with mocked_async(recorder) as sb:
        preview = await sb.previews.create(8000)
        assert preview.url == PREVIEW["url"]
        assert [p.url for p in await sb.previews.list()] == [None]
        await sb.previews.revoke(preview)
    assert recorder.bodies()[0] == ("POST", "/v1/sandboxes/sb%2F1/previews", {"port": 8000})


PTY = {
    "id": "t1",
    "pid": 77,
    "cmd": ["/bin/bash", "-l"],
    "cols": 80,
    "rows": 24,
    "viewers": 0,
    "created_at": T0,
}


def pty_routes() -> Dict[Tuple[str, str], Any]:
    base = "/v1/sandboxes/sb%2F1/pty"
    return {
        ("POST", base): lambda r: httpx.Response(201, json=PTY),
        ("GET", base): {"terminals": [PTY, dict(PTY, id="t2", exit_code=3, viewers=2)]},
        ("POST", f"{base}/t1/resize"): None,
        ("DELETE", f"{base}/t1"): None,
        ("DELETE", f"{base}/t9"): error(404, "not_found"),
    }


def test_terminals_over_http():
    recorder = Recorder(pty_routes())
    with mocked(recorder) as sb:
        pty = sb.pty.create()
        assert pty == sbx.PtyInfo("t1", 77, ["/bin/bash", "-l"], 80, 24, 0, WHEN)
        assert pty.exit_code is None
        sb.pty.create(
            120, 40, cmd=("python3", "-q"), env={"X": "1"}, cwd="/workspace", user="nobody"
        )
        listed = sb.pty.list()
        assert [(t.id, t.exit_code, t.viewers) for t in listed] == [("t1", None, 0), ("t2", 3, 2)]
        sb.pty.resize(pty, 100, 30)
        sb.pty.kill("t1")
        with pytest.raises(sbx.NotFound):
            sb.pty.kill("t9")
        with pytest.raises(ValueError):
            sb.pty.create(0, 24)
        with pytest.raises(ValueError):
            sb.pty.resize("t1", 80, 1001)
        with pytest.raises(TypeError):
            sb.pty.create(cmd="bash -l")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            sb.pty.create(cmd=[])
    assert recorder.bodies()[:2] == [
        ("POST", "/v1/sandboxes/sb%2F1/pty", {"cols": 80, "rows": 24}),
        (
            "POST",
            "/v1/sandboxes/sb%2F1/pty",
            {
                "cols": 120,
                "rows": 40,
                "cmd": ["python3", "-q"],
                "env": {"X": "1"},
                "cwd": "/workspace",
                "user": "nobody",
            },
        ),
    ]
    assert recorder.bodies()[3] == (
        "POST",
        "/v1/sandboxes/sb%2F1/pty/t1/resize",
        {"cols": 100, "rows": 30},
    )


@pytest.mark.anyio
async def test_async_terminals_over_http():
    recorder = Recorder(pty_routes())
    async with mocked_async(recorder) as sb:
        pty = await sb.pty.create(100, 50, cmd=["sh"])
        assert pty.id == "t1"
        assert len(await sb.pty.list()) == 2
        await sb.pty.resize("t1", 10, 10)
        await sb.pty.kill(pty)
    assert [(m, p.rsplit("/", 1)[-1], b) for m, p, b in recorder.bodies()] == [
        ("POST", "pty", {"cols": 100, "rows": 50, "cmd": ["sh"]}),
        ("GET", "pty", None),
        ("POST", "resize", {"cols": 10, "rows": 10}),
        ("DELETE", "t1", None),
    ]


def test_wire_helpers_of_terminals():
    assert _core.websocket_url("http://h:7070", "/v1/x") == "ws://h:7070/v1/x"
    assert _core.websocket_url("HTTPS://h/base/", "/v1/x") == "wss://h/base/v1/x"
    with pytest.raises(ValueError):
        _core.websocket_url("ftp://h", "/v1/x")
    assert json.loads(_core.resize_frame(120, 40)) == {"type": "resize", "cols": 120, "rows": 40}
    assert _core.pty_exit_code('{"type":"exit","exit_code":130}') == 130
    assert _core.pty_exit_code('{"type":"title","text":"vim"}') is None
    for broken in (
        "not json",
        '{"type":"exit"}',
        '{"exit_code":1}',
        '{"type":"exit","exit_code":true}',
    ):
        with pytest.raises(sbx.ProtocolError):
            _core.pty_exit_code(broken)


def test_new_models_decode_and_reject_what_breaks_the_api():
    assert sbx.WatchEvent.from_json({"type": "delete", "path": "/a", "is_dir": True}) == (
        sbx.WatchEvent("delete", "/a", None, True)
    )
    assert sbx.SessionInfo.from_json(dict(SESSION, extra="ignored")).pid == 42
    assert sbx.PtyInfo.from_json(dict(PTY, exit_code=0)).exit_code == 0
    for decode, data in (
        (sbx.SessionInfo.from_json, {k: v for k, v in SESSION.items() if k != "pid"}),
        (sbx.WatchEvent.from_json, {"path": "/a"}),
        (sbx.PortStatus.from_json, {"port": 1, "listening": True}),
        (sbx.PreviewInfo.from_json, {k: v for k, v in PREVIEW.items() if k != "expires_at"}),
        (sbx.PtyInfo.from_json, dict(PTY, cols="80")),
    ):
        with pytest.raises(sbx.ProtocolError):
            decode(data)
    for name in (
        "Sessions Session Ports Previews Terminals Terminal WatchStream AsyncSessions "
        "AsyncSession AsyncPorts AsyncPreviews AsyncTerminals AsyncTerminal AsyncWatchStream "
        "SessionInfo WatchEvent WatchEventType PortStatus PreviewInfo PtyInfo"
    ).split():
        assert name in sbx.__all__ and hasattr(sbx, name), name


# --- terminals over a WebSocket ------------------------------------------------


def api_error(status: int, reason: str, code: str) -> WsResponse:
    body = json.dumps({"error_code": code, "message": "refused", "request_id": "r1"}).encode()
    headers = Headers({"content-type": "application/json", "content-length": str(len(body))})
    return WsResponse(status, reason, headers, body)


class FakeAgent:
    """A WebSocket server speaking the agent's terminal protocol: the
    scrollback first, typed bytes echoed, ``exit N`` ends the command."""

    def __init__(self) -> None:
        self.requests: List[Tuple[str, Headers]] = []
        self.typed: List[bytes] = []
        self.controls: List[Any] = []
        self.server: Server = serve(
            self.handle, "127.0.0.1", 0, process_request=self.check, compression=None
        )
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def check(self, connection: ServerConnection, request: Any) -> Optional[WsResponse]:
        """Refuses handshakes as the API does: with its error body."""
        self.requests.append((request.path, request.headers))
        if request.headers.get("authorization") != "Bearer sbx_test":
            return api_error(401, "Unauthorized", "unauthorized")
        if request.path.endswith("/pty/missing"):
            return api_error(404, "Not Found", "not_found")
        return None

    def handle(self, ws: ServerConnection) -> None:
        if ws.request is not None and ws.request.path.endswith("/pty/cut"):
            ws.send(b"partial")
            ws.socket.close()
            return
        ws.send(b"scrollback$ ")
        for message in ws:
            if isinstance(message, str):
                self.controls.append(json.loads(message))
                ws.send(b"[resized]")
                continue
            self.typed.append(message)
            if message.startswith(b"exit "):
                code = int(message.split()[1])
                ws.send(b"logout\r\n")
                ws.send(json.dumps({"type": "title", "text": "ignored"}))
                ws.send(json.dumps({"type": "exit", "exit_code": code}))
                ws.close()
                return
            ws.send(b"echo:" + message)

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(10)


@pytest.fixture
def agent() -> Iterator[FakeAgent]:
    fake = FakeAgent()
    try:
        yield fake
    finally:
        fake.close()


def terminal_sandbox(url: str, token: Optional[str] = "sbx_test") -> sbx.Sandbox:
    return sbx.Sandbox("sb/1", sbx.Client(url, token or "wrong", timeout=10), owns_client=True)


def test_a_terminal_types_reads_resizes_and_exits(agent: FakeAgent):
    with terminal_sandbox(agent.url) as sb:
        pty = sbx.PtyInfo("t/1", 1, ["bash"], 80, 24, 0, WHEN)
        with sb.pty.connect(pty) as term:
            assert isinstance(term, sbx.Terminal) and term.id == "t/1"
            assert term.recv(timeout=5) == b"scrollback$ "
            term.send("echo hi\n")
            assert term.recv(timeout=5) == b"echo:echo hi\n"
            term.send(b"\x03")
            assert term.recv(timeout=5) == b"echo:\x03"
            term.resize(120, 40)
            assert term.recv(timeout=5) == b"[resized]"
            with pytest.raises(sbx.RequestTimeout):
                term.recv(timeout=0.05)
            assert term.exit_code is None
            term.send("exit 3\n")
            rest = b"".join(term)
            assert rest == b"logout\r\n"
            assert term.exit_code == 3
            assert term.recv() == b""
            assert term.wait() == 3
    path, headers = agent.requests[0]
    assert path == "/v1/sandboxes/sb%2F1/pty/t%2F1"
    assert headers["authorization"] == "Bearer sbx_test"
    assert headers["user-agent"] == "sbx-python"
    assert agent.typed == [b"echo hi\n", b"\x03", b"exit 3\n"]
    assert agent.controls == [{"type": "resize", "cols": 120, "rows": 40}]


def test_a_terminal_wait_reads_to_the_exit(agent: FakeAgent):
    with terminal_sandbox(agent.url) as sb:
        term = sb.pty.connect("t1")
        term.send(b"exit 130\n")
        assert term.wait(timeout=10) == 130
        term.close()


def test_attaching_errors_are_the_apis(agent: FakeAgent):
    with terminal_sandbox(agent.url) as sb:
        with pytest.raises(sbx.NotFound) as caught:
            sb.pty.connect("missing")
        assert caught.value.status == 404 and caught.value.request_id == "r1"
        # A connection cut before the exit frame is a transport failure.
        cut = sb.pty.connect("cut")
        assert cut.recv(timeout=5) == b"partial"
        with pytest.raises(sbx.TransportError):
            cut.recv(timeout=5)
        cut.close()
    with terminal_sandbox(agent.url, token=None) as stranger:
        with pytest.raises(sbx.Unauthorized):
            stranger.pty.connect("t1")
    closed = terminal_sandbox("http://127.0.0.1:1")
    with pytest.raises(sbx.TransportError):
        closed.pty.connect("t1")
    closed.close()


def test_attaching_without_websockets_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "websockets.sync.client", None)
    with terminal_sandbox("http://127.0.0.1:1") as sb:
        with pytest.raises(ImportError, match=r"sbx\[pty\]"):
            sb.pty.connect("t1")


@pytest.mark.anyio
async def test_an_async_terminal(agent: FakeAgent):
    async with sbx.AsyncSandbox(
        "sb/1", sbx.AsyncClient(agent.url, "sbx_test", timeout=10), owns_client=True
    ) as sb:
        async with await sb.pty.connect("t1") as term:
            assert isinstance(term, sbx.AsyncTerminal)
            assert await term.recv(timeout=5) == b"scrollback$ "
            await term.send("ls\n")
            assert await term.recv(timeout=5) == b"echo:ls\n"
            await term.resize(90, 30)
            assert await term.recv(timeout=5) == b"[resized]"
            with pytest.raises(sbx.RequestTimeout):
                await term.recv(timeout=0.05)
            await term.send("exit 7\n")
            assert [chunk async for chunk in term] == [b"logout\r\n"]
            assert term.exit_code == 7 and await term.wait() == 7
        with pytest.raises(sbx.NotFound):
            await sb.pty.connect("missing")
    assert agent.controls == [{"type": "resize", "cols": 90, "rows": 30}]

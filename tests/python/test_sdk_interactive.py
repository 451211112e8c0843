"""The interactive routes through the SDK, against a real server: shell
sessions, file watches, ports and previews, and terminals over a WebSocket
(with the ``websockets`` package, as ``pip install 'sbx[pty]'`` brings)."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from typing import Callable, List

import anyio
import httpx
import pytest
import sbx
from waiting import wait_until

# --- sessions -------------------------------------------------------------------


def test_a_session_keeps_cd_exports_functions_and_status(sandbox):
    with sandbox.sessions.create(env={"GREETING": "hello"}) as session:
        assert isinstance(session, sbx.Session)
        assert session.info.pid > 0 and session.info.commands == 0
        assert session.exec("pwd").stdout == "/workspace\n"
        setup = session.exec('cd /tmp && export COLOR=blue && greet() { echo "$GREETING $1"; }')
        assert setup.ok, setup.stderr
        state = session.exec("pwd; echo $COLOR; greet you")
        assert state.stdout == "/tmp\nblue\nhello you\n"
        assert session.exec("false").exit_code == 1
        assert session.exec("echo $?").stdout == "1\n"
        # Output on both streams, and callbacks, as a plain exec has them.
        out: List[str] = []
        mixed = session.exec("echo out; echo err >&2", on_stdout=out.append)
        assert (mixed.stdout, mixed.stderr, "".join(out)) == ("out\n", "err\n", "out\n")
        listed = {s.id: s for s in sandbox.sessions.list()}
        assert listed[session.id].commands >= 6 and not listed[session.id].busy
        assert sandbox.sessions.get(session.id).exec("echo $COLOR").stdout == "blue\n"
    assert session.id not in {s.id for s in sandbox.sessions.list()}
    with pytest.raises(sbx.NotFound):
        session.exec("true")


def test_a_session_runs_one_command_at_a_time(sandbox):
    with sandbox.sessions.create(cwd="/tmp") as session:
        with session.exec_stream("echo started; sleep 60") as stream:
            for event in stream:
                if isinstance(event, sbx.StdoutEvent) and "started" in event.data:
                    break
            with pytest.raises(sbx.Conflict) as caught:
                session.exec("true")
            assert caught.value.status == 409
            assert {s.id: s.busy for s in sandbox.sessions.list()}[session.id]
            # The signal reaches the command, not the shell.
            session.signal("INT")
            interrupted = stream.wait()
        assert interrupted.exit_code == 128 + 2
        assert interrupted.stdout == "started\n"
        assert session.exec("pwd").stdout == "/tmp\n"
        with pytest.raises(sbx.Conflict):
            session.signal()
        # A command's own timeout kills the command; the shell lives on.
        timed = session.exec("sleep 60", timeout=0.5)
        assert timed.timed_out
        assert session.exec("echo alive").stdout == "alive\n"


def test_exit_ends_a_session_with_its_status(sandbox):
    session = sandbox.sessions.create()
    ended = session.exec("echo bye; exit 3")
    assert (ended.exit_code, ended.stdout) == (3, "bye\n")
    wait_until(lambda: session.id not in {s.id for s in sandbox.sessions.list()})
    with pytest.raises(sbx.NotFound):
        session.exec("true")
    with pytest.raises(sbx.NotFound):
        session.delete()
    with pytest.raises(sbx.NotFound):
        sandbox.sessions.get(session.id)


def test_session_options_and_errors(sandbox):
    with sandbox.sessions.create(user="nobody", cwd="/tmp", env={"A": "1"}) as session:
        result = session.exec("id -u; pwd; echo $A")
        assert result.stdout == "65534\n/tmp\n1\n"
    with pytest.raises(sbx.InvalidRequest):
        sandbox.sessions.create(cwd="relative")
    with pytest.raises(sbx.NotFound):
        unknown = sbx.SessionInfo("no-such-session", 1, False, 0, datetime.now(timezone.utc))
        sbx.Session(sandbox, unknown).exec("true")


# --- watch --------------------------------------------------------------------


def collect_until(
    changes: sbx.WatchStream, done: Callable[[List[sbx.WatchEvent]], bool]
) -> List[sbx.WatchEvent]:
    seen: List[sbx.WatchEvent] = []
    for event in changes:
        seen.append(event)
        if done(seen):
            return seen
    raise AssertionError(f"the watch ended first: {seen}")


def touched(path: str) -> Callable[[List[sbx.WatchEvent]], bool]:
    """A create of ``path``, or a rename onto it (an atomic write)."""
    return lambda seen: any(e.path == path and e.type in ("create", "move") for e in seen)


def test_watch_sees_changes_made_after_it_opened(sandbox):
    sandbox.files.mkdir("/workspace/watched")
    # A read timeout, so a missing event fails the test instead of hanging it.
    with sandbox.watch("/workspace/watched", request_timeout=30) as changes:
        sandbox.exec("echo one > /workspace/watched/new.txt")
        seen = collect_until(changes, touched("/workspace/watched/new.txt"))
        assert not seen[-1].is_dir and seen[-1].from_path is None
        sandbox.exec("mv /workspace/watched/new.txt /workspace/watched/moved.txt")
        moved = collect_until(changes, lambda s: any(e.type == "move" for e in s))[-1]
        assert moved.path == "/workspace/watched/moved.txt"
        assert moved.from_path == "/workspace/watched/new.txt"
        sandbox.files.remove("/workspace/watched/moved.txt")
        collect_until(
            changes,
            lambda s: any(e.type == "delete" and e.path.endswith("/moved.txt") for e in s),
        )
        # Not recursive: a new subdirectory is reported, what happens in it is not.
        sandbox.exec("mkdir /workspace/watched/sub")
        made = collect_until(changes, touched("/workspace/watched/sub"))[-1]
        assert made.is_dir
        sandbox.exec("touch /workspace/watched/sub/inner; touch /workspace/watched/marker")
        later = collect_until(changes, touched("/workspace/watched/marker"))
        assert not any(e.path.startswith("/workspace/watched/sub/") for e in later), later


def test_a_recursive_watch_follows_new_directories(sandbox):
    sandbox.files.mkdir("/workspace/tree/a")
    with sandbox.watch("/workspace/tree", recursive=True, request_timeout=30) as changes:
        sandbox.exec("echo x > /workspace/tree/a/deep.txt")
        collect_until(changes, touched("/workspace/tree/a/deep.txt"))
        # A directory made while the watch runs is watched too, from the
        # moment its create event is reported.
        sandbox.exec("mkdir /workspace/tree/b")
        made = collect_until(changes, touched("/workspace/tree/b"))[-1]
        assert made.is_dir
        sandbox.exec("touch /workspace/tree/b/later")
        collect_until(changes, touched("/workspace/tree/b/later"))
    with pytest.raises((sbx.NotFound, sbx.InvalidRequest)):
        with sandbox.watch("/workspace/missing"):
            pass


# --- ports and previews --------------------------------------------------------


def serve_site(sandbox, port: int) -> sbx.ProcessInfo:
    sandbox.files.write("/workspace/site/hello.txt", "hello from inside\n")
    web = sandbox.processes.start(
        f"exec python3 -m http.server {port} --bind 127.0.0.1",
        cwd="/workspace/site",
        name=f"web-{port}",
    )
    status = sandbox.ports.wait(port, timeout=60)
    assert status.port == port and status.listening, status
    return web


def test_a_server_in_the_sandbox_is_reached_through_its_port(server, sandbox):
    with pytest.raises(sbx.Unavailable):
        sandbox.ports.wait(8000, timeout=0.5)
    nothing = sandbox.ports.request(8000, "GET", "/")
    assert nothing.status_code == 502

    web = serve_site(sandbox, 8000)
    page = sandbox.ports.request(8000, "GET", "/hello.txt")
    assert (page.status_code, page.text) == (200, "hello from inside\n")
    listing = sandbox.ports.request(8000, "GET", "/", params={"q": "1"})
    assert listing.status_code == 200 and "hello.txt" in listing.text
    assert sandbox.ports.request(8000, "GET", "/missing.txt").status_code == 404
    # The method gets there as sent: http.server does not do POST.
    posted = sandbox.ports.request(8000, "POST", "/hello.txt", content=b"x")
    assert posted.status_code == 501
    assert sandbox.ports.wait(8000).waited_ms < 5000

    # The plain URL needs the bearer token.
    url = sandbox.ports.url(8000, "/hello.txt")
    with httpx.Client(timeout=30) as anonymous:
        assert anonymous.get(url).status_code == 401
    with server.client() as admin:
        assert admin.get(url).text == "hello from inside\n"
    sandbox.processes.signal(web.pid, "KILL")


def test_a_preview_url_works_without_a_token_until_revoked(sandbox):
    serve_site(sandbox, 8001)
    preview = sandbox.previews.create(8001, ttl_s=600)
    assert (preview.sandbox_id, preview.port) == (sandbox.id, 8001)
    assert preview.url is not None and preview.url.startswith("http")
    lifetime = (preview.expires_at - preview.created_at).total_seconds()
    assert 590 <= lifetime <= 610
    page_url = preview.url.rstrip("/") + "/hello.txt"
    with httpx.Client(timeout=30) as browser:
        page = browser.get(page_url)
        assert (page.status_code, page.text) == (200, "hello from inside\n")
        assert "authorization" not in page.request.headers
        listed = {p.id: p for p in sandbox.previews.list()}
        assert listed[preview.id].port == 8001 and listed[preview.id].url is None

        sandbox.previews.revoke(preview)
        assert browser.get(page_url).status_code == 404
        assert preview.id not in {p.id for p in sandbox.previews.list()}
        # A made-up token is refused just the same.
        assert browser.get(preview.url.split("/p/")[0] + "/p/not-a-token/").status_code == 404


# --- terminals --------------------------------------------------------------------


def read_until(term: sbx.Terminal, pattern: bytes, timeout: float = 30.0) -> bytes:
    """The terminal's output until it matches ``pattern`` (a regex)."""
    deadline = time.monotonic() + timeout
    output = b""
    while not re.search(pattern, output):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {pattern!r} in the terminal's output: {output!r}"
        try:
            chunk = term.recv(timeout=remaining)
        except sbx.RequestTimeout:
            continue
        assert chunk, f"the terminal ended before {pattern!r}: {output!r}"
        output += chunk
    return output


def terminal(sandbox, pty_id: str) -> sbx.PtyInfo:
    return next(t for t in sandbox.pty.list() if t.id == pty_id)


def test_a_terminal_runs_a_shell_to_its_exit_code(sandbox):
    pty = sandbox.pty.create(100, 30)
    assert (pty.cols, pty.rows, pty.exit_code) == (100, 30, None)
    assert pty.pid > 0 and pty.cmd
    with sandbox.pty.connect(pty) as term:
        term.send("echo hi\n")
        # The line "hi" alone: the command's output, not the typed echo.
        read_until(term, rb"(^|[\r\n])hi\r?\n")
        term.resize(120, 40)
        term.send("stty size\n")
        read_until(term, rb"40 120")
        sandbox.pty.resize(pty, 90, 20)
        term.send(b"stty size\n")
        read_until(term, rb"20 90")
        term.send("exit 3\n")
        assert term.wait(timeout=30) == 3
        assert term.exit_code == 3
    wait_until(lambda: terminal(sandbox, pty.id).exit_code == 3)
    # An exited terminal is still there to attach to: its scrollback, then its exit.
    with sandbox.pty.connect(pty.id) as again:
        replay = b"".join(again)
        assert b"hi" in replay and again.exit_code == 3
    sandbox.pty.kill(pty)
    assert pty.id not in {t.id for t in sandbox.pty.list()}
    with pytest.raises(sbx.NotFound):
        sandbox.pty.connect(pty)


def test_terminal_viewers_come_and_go_without_ending_it(sandbox):
    pty = sandbox.pty.create(cmd=["/bin/sh"], env={"MARK": "m4rk"}, cwd="/tmp")
    assert pty.cmd == ["/bin/sh"]
    first = sandbox.pty.connect(pty)
    second = sandbox.pty.connect(pty)
    try:
        wait_until(lambda: terminal(sandbox, pty.id).viewers == 2)
        first.send("echo $MARK-$(pwd)-$((40+2))\n")
        read_until(first, rb"m4rk-/tmp-42")
        read_until(second, rb"m4rk-/tmp-42")
        first.close()
        wait_until(lambda: terminal(sandbox, pty.id).viewers == 1)
        second.send("echo still-$((6*7))\n")
        read_until(second, rb"still-42")
    finally:
        first.close()
        second.close()
    wait_until(lambda: terminal(sandbox, pty.id).viewers == 0)
    assert terminal(sandbox, pty.id).exit_code is None
    sandbox.pty.kill(pty.id)
    with pytest.raises(sbx.NotFound):
        sandbox.pty.kill(pty.id)
    with pytest.raises(sbx.InvalidRequest):
        sandbox.pty.create(cmd=["/bin/sh"], cwd="relative")


def test_a_terminal_needs_a_token(server, sandbox):
    pty = sandbox.pty.create(cmd=["/bin/sh"])
    try:
        with sbx.Client(server.url, "sbx_not_a_token") as stranger:
            with pytest.raises(sbx.Unauthorized):
                sbx.Sandbox(sandbox.id, stranger).pty.connect(pty)
        # The sandbox's own token may attach.
        assert sandbox.token is not None
        with sbx.Sandbox.connect(sandbox.id, url=server.url, token=sandbox.token) as own:
            with own.pty.connect(pty) as term:
                term.send("echo own-$((1+1))\n")
                read_until(term, rb"own-2")
    finally:
        sandbox.pty.kill(pty)


# --- the async API ------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_async_api_drives_the_same_routes(server):
    async with sbx.AsyncClient(server.url, server.admin_token) as client:
        async with sbx.AsyncSandbox.create(client=client) as sb:
            async with await sb.sessions.create() as session:
                await session.exec("cd /tmp; x=5")
                assert (await session.exec("echo $x-$(pwd)")).stdout == "5-/tmp\n"
                events = [e async for e in session.exec_stream("echo s")]
                assert isinstance(events[-1], sbx.ExitEvent)

            await sb.files.mkdir("/workspace/aw")
            async with sb.watch("/workspace/aw", request_timeout=30) as changes:
                await sb.exec("touch /workspace/aw/f")
                async for event in changes:
                    if event.path == "/workspace/aw/f":
                        break

            await sb.files.write("/workspace/s/i.txt", "async page\n")
            await sb.processes.start(
                "exec python3 -m http.server 8002 --bind 127.0.0.1", cwd="/workspace/s"
            )
            assert (await sb.ports.wait(8002, timeout=60)).listening
            page = await sb.ports.request(8002, "GET", "/i.txt")
            assert page.text == "async page\n"
            preview = await sb.previews.create(8002)
            assert preview.url is not None
            async with httpx.AsyncClient(timeout=30) as browser:
                assert (await browser.get(preview.url.rstrip("/") + "/i.txt")).status_code == 200
                await sb.previews.revoke(preview)
                assert (await browser.get(preview.url.rstrip("/") + "/i.txt")).status_code == 404

            pty = await sb.pty.create(cmd=["/bin/sh"])
            async with await sb.pty.connect(pty) as term:
                await term.send("echo a-$((2+3))\n")
                output = b""
                with anyio.fail_after(30):
                    while b"a-5" not in output:
                        chunk = await term.recv()
                        assert chunk, f"the terminal ended first: {output!r}"
                        output += chunk
                await term.send("exit 4\n")
                assert await term.wait(timeout=30) == 4
            await sb.pty.kill(pty)

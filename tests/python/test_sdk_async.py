"""The async API, call for call, against the same real server."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import AsyncIterator, List

import anyio
import pytest
import sbx

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def async_client(server, **kwargs) -> sbx.AsyncClient:
    return sbx.AsyncClient(server.url, server.admin_token, **kwargs)


async def wait_until_async(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await anyio.sleep(0.02)


async def test_lifecycle_both_ways_of_creating(server):
    async with async_client(server) as client:
        async with sbx.AsyncSandbox.create(
            client=client, labels={"api": "async"}, egress=["Example.com"], env={"V": "1"}
        ) as sb:
            info = await sb.get_info()
            assert info.labels == {"api": "async"} and info.egress == ["example.com"]
            assert (await sb.exec("echo $V")).stdout == "1\n"
            assert sb.token is not None and sb.token.startswith("sbx_")
            assert sb.id in {s.id for s in await sbx.AsyncSandbox.list(client=client)}
            first_id = sb.id
        with pytest.raises(sbx.NotFound):
            await sbx.AsyncSandbox.connect(first_id, client=client)

        sb = await sbx.AsyncSandbox.create(client=client)
        try:
            again = await sbx.AsyncSandbox.connect(sb.id, client=client)
            assert (await again.exec(["echo", "again"])).stdout == "again\n"
            updated = await sb.update_egress(["*.PyPI.org:443"])
            assert updated.egress == ["*.pypi.org:443"]
        finally:
            await sb.delete()
        with pytest.raises(sbx.NotFound):
            await sb.get_info()
        # `async with await …` works too, as with E2B.
        async with await sbx.AsyncSandbox.create(client=client) as third:
            assert (await third.exec("true")).ok
        with pytest.raises(sbx.NotFound):
            await third.get_info()


async def test_settings_from_the_environment_and_sandbox_token(server, monkeypatch):
    monkeypatch.setenv("SBX_URL", server.url)
    monkeypatch.setenv("SBX_TOKEN", server.admin_token)
    async with sbx.AsyncSandbox.create() as sb:
        assert sb.token is not None
        own = await sbx.AsyncSandbox.connect(sb.id, token=sb.token)
        try:
            assert (await own.exec("echo own")).stdout == "own\n"
        finally:
            await own.close()
        with pytest.raises(sbx.Forbidden):
            await sbx.AsyncSandbox.list(token=sb.token)


async def test_exec_and_streams(server):
    async with async_client(server) as client, sbx.AsyncSandbox.create(client=client) as sb:
        result = await sb.exec("echo out; echo err >&2; exit 3")
        assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")

        seen: List[str] = []

        async def on_stdout(data: str) -> None:
            seen.append(data)

        errors: List[str] = []
        events = []
        script = "echo ready; while [ ! -e /tmp/go ]; do sleep 0.01; done; echo late >&2; echo end"
        async with sb.exec_stream(script, on_stdout=on_stdout, on_stderr=errors.append) as stream:
            async for event in stream:
                events.append(event)
                if isinstance(event, sbx.StdoutEvent) and event.data == "ready\n":
                    await sb.files.write("/tmp/go", b"")
        assert isinstance(events[0], sbx.StartEvent) and events[0].pid == stream.pid
        assert isinstance(events[-1], sbx.ExitEvent) and events[-1].exit_code == 0
        assert "".join(seen) == "ready\nend\n"
        assert "".join(errors) == "late\n"

        summed = await sb.exec("printf abc", on_stdout=on_stdout)
        assert summed.stdout == "abc" and seen[-1] == "abc"
        waited = await sb.exec_stream(["sh", "-c", "echo x; exit 9"]).wait()
        assert (waited.exit_code, waited.stdout) == (9, "x\n")


async def test_timeouts(server):
    async with async_client(server) as client, sbx.AsyncSandbox.create(client=client) as owner:
        async with async_client(server, timeout=2) as impatient:
            sb = await sbx.AsyncSandbox.connect(owner.id, client=impatient)
            with pytest.raises(sbx.RequestTimeout):
                await sb.exec("sleep 20")
            timed = await sb.exec("sleep 20", timeout=3)
            assert timed.timed_out and timed.exit_code == 137
            proc = await sb.processes.start("sleep 300")
            with pytest.raises(sbx.RequestTimeout):
                await sb.processes.wait(proc.pid, timeout=0.3)


async def test_processes(server):
    async with async_client(server) as client, sbx.AsyncSandbox.create(client=client) as sb:
        cat = await sb.processes.start(["cat"], name="cat")
        assert cat.running and cat.name == "cat"
        assert cat.pid in {p.pid for p in await sb.processes.list()}
        await sb.processes.write_stdin(cat.pid, "one\n")
        await sb.processes.write_stdin(cat.pid, b"two\n", close=True)
        result = await sb.processes.logs(cat.pid, follow=True).wait()
        assert (result.exit_code, result.stdout) == (0, "one\ntwo\n")
        assert (await sb.processes.get(cat.pid)).exit_code == 0

        chunks = []
        async for event in sb.processes.logs(cat.pid, tail=4):
            if isinstance(event, sbx.StdoutEvent):
                chunks.append(event.data)
        assert "".join(chunks) == "two\n"

        sleeper = await sb.processes.start("sleep 300")
        await sb.processes.signal(sleeper.pid, "INT")
        assert (await sb.processes.wait(sleeper.pid, timeout=30)).exit_code == 130

        pids = [(await sb.processes.start(["sleep", "300"])).pid for _ in range(2)]
        assert await sb.processes.kill_all() >= 2

        async def all_exited() -> bool:
            states = [(await sb.processes.get(pid)).state for pid in pids]
            return all(state == "exited" for state in states)

        await wait_until_async(all_exited)
        with pytest.raises(sbx.NotFound):
            await sb.processes.get(999999)


async def _chunks() -> AsyncIterator[bytes]:
    for part in (b"async ", b"iterable ", b"body"):
        yield part


async def test_files(server):
    data = os.urandom(2 * 1024 * 1024 + 3)
    async with async_client(server) as client, sbx.AsyncSandbox.create(client=client) as sb:
        info = await sb.files.write("/workspace/x/blob", data, mode=0o600)
        assert info.size == len(data) and info.mode == 0o600
        assert await sb.files.read("/workspace/x/blob") == data
        parts = []
        async with sb.files.read_stream("/workspace/x/blob") as stream:
            async for chunk in stream:
                parts.append(chunk)
        assert len(parts) > 1 and b"".join(parts) == data
        await sb.files.write("/workspace/text", "tëxt")
        assert await sb.files.read_text("/workspace/text") == "tëxt"
        await sb.files.write("/workspace/streamed", _chunks())
        assert await sb.files.read("/workspace/streamed") == b"async iterable body"

        made = await sb.files.mkdir("/workspace/d/e")
        assert made.is_dir
        await sb.files.move("/workspace/text", "/workspace/d/e/text")
        names = {e.name for e in await sb.files.list("/workspace/d", depth=2)}
        assert names == {"e", "text"}
        assert (await sb.files.stat("/workspace/d/e/text")).size == len("tëxt".encode())
        await sb.files.remove("/workspace/d", recursive=True)
        assert not await sb.files.exists("/workspace/d")
        with pytest.raises(sbx.NotFound):
            await sb.files.read("/workspace/d/e/text")


async def test_archives(server, tmp_path: Path):
    source = tmp_path / "src"
    (source / "a" / "b").mkdir(parents=True)
    (source / "a" / "b" / "f.txt").write_text("deep\n")
    (source / "top.bin").write_bytes(bytes(range(256)))
    (source / "a" / "rel").symlink_to("b/f.txt")
    async with async_client(server) as client, sbx.AsyncSandbox.create(client=client) as sb:
        summary = await sb.upload_dir(source, "/workspace/up")
        assert summary.entries == 5
        assert (await sb.exec("cat /workspace/up/a/rel")).stdout == "deep\n"
        back = tmp_path / "back"
        await sb.download_dir("/workspace/up", back)
        assert (back / "a" / "b" / "f.txt").read_text() == "deep\n"
        assert (back / "top.bin").read_bytes() == bytes(range(256))
        assert os.readlink(back / "a" / "rel") == "b/f.txt"

        await sb.exec("mkdir -p /workspace/evil && ln -s /etc /workspace/evil/etc")
        with pytest.raises(sbx.UnsafeArchiveError):
            await sb.download_dir("/workspace/evil", tmp_path / "evil")
        assert not (tmp_path / "evil").exists() or not any((tmp_path / "evil").iterdir())


async def test_admin_calls(server):
    async with async_client(server) as client:
        info = await client.info()
        assert info.runtime.name == "youki"
        since = datetime.now(timezone.utc) - timedelta(seconds=1)
        token = await client.tokens.create("sdk-async", ["audit:read"], ttl=600)
        assert token.id in {t.id for t in await client.tokens.list()}
        async with sbx.AsyncClient(server.url, token.secret) as auditor:
            records = await auditor.audit(since=since, limit=50)
            assert any(r.route == "/v1/tokens" and r.method == "POST" for r in records)
            with pytest.raises(sbx.Forbidden):
                await auditor.tokens.list()
        await client.tokens.revoke(token.id)
        async with sbx.AsyncClient(server.url, token.secret) as revoked:
            with pytest.raises(sbx.Unauthorized):
                await revoked.audit()

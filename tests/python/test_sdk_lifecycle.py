"""The SDK's lifecycle calls: stop and start, pause and resume, timeouts,
snapshots, fork, restore and events, against the session's real `sbx
serve`; and their wire decoding, without it."""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest
import sbx
from sbx import _core
from sbx.errors import error_for
from waiting import wait_until

KEPT = "/workspace/kept.txt"


@pytest.fixture
def snapshot_name(client):
    """A fresh snapshot name per call; whatever was made under them is deleted after."""
    names = []

    def fresh() -> str:
        names.append(f"sdk-{uuid.uuid4().hex[:16]}")
        return names[-1]

    yield fresh
    for name in names:
        with contextlib.suppress(sbx.NotFound):
            client.snapshots.delete(name)


def test_stop_and_start_keep_the_disk(sandbox):
    sandbox.files.write(KEPT, "written before the stop\n")
    stopped = sandbox.stop()
    assert stopped.id == sandbox.id
    assert stopped.state == "stopped"
    assert sandbox.get_info().state == "stopped"
    started = sandbox.start()
    assert started.state == "running"
    assert sandbox.get_info().state == "running"
    assert sandbox.files.read_text(KEPT) == "written before the stop\n"
    assert sandbox.exec(["cat", KEPT]).stdout == "written before the stop\n"


def test_pause_and_resume_keep_the_processes(client):
    with sbx.Sandbox.create(client=client, auto_resume=False) as sb:
        process = sb.processes.start("sleep 600", name="sleeper")
        sb.files.write(KEPT, "kept across the pause\n")
        paused = sb.pause()
        assert paused.state == "paused"
        assert sb.get_info().state == "paused"
        with pytest.raises(sbx.Conflict):
            sb.exec("true")
        resumed = sb.resume()
        assert resumed.state == "running"
        # Frozen, not stopped: the same process is still there.
        assert sb.processes.get(process.pid).state == "running"
        assert sb.files.read_text(KEPT) == "kept across the pause\n"
        assert sb.exec("echo thawed").stdout == "thawed\n"


def test_create_applies_the_lifecycle_and_set_timeout_moves_expires_at(client):
    before = datetime.now(timezone.utc)
    with sbx.Sandbox.create(
        client=client, timeout_s=600, idle_timeout_s=0, on_timeout="stop", auto_resume=True
    ) as sb:
        info = sb.get_info()
        assert info.lifecycle == sbx.Lifecycle(
            timeout_s=600, idle_timeout_s=None, on_timeout="stop", auto_resume=True
        )
        assert info.expires_at is not None
        after = datetime.now(timezone.utc)
        slack = timedelta(seconds=5)
        assert before + timedelta(seconds=600) - slack <= info.expires_at
        assert info.expires_at <= after + timedelta(seconds=600) + slack

        asked = datetime.now(timezone.utc)
        extended = sb.set_timeout(timedelta(hours=1))
        answered = datetime.now(timezone.utc)
        assert extended.expires_at is not None
        assert extended.expires_at > info.expires_at
        assert asked + timedelta(hours=1) - slack <= extended.expires_at
        assert extended.expires_at <= answered + timedelta(hours=1) + slack
        now_expires = sb.get_info().expires_at
        assert now_expires is not None
        assert abs(now_expires - extended.expires_at) < timedelta(seconds=1)

        shortened = sb.set_timeout(120)
        assert shortened.expires_at is not None
        assert shortened.expires_at < extended.expires_at
        assert shortened.state == "running"
        with pytest.raises(ValueError):
            sb.set_timeout(0)


def test_snapshot_then_create_from_it(client, sandbox, snapshot_name):
    sandbox.files.write(KEPT, "in the snapshot\n")
    name = snapshot_name()
    snap = sandbox.snapshot(name)
    assert snap.name == name
    assert snap.sandbox_id == sandbox.id
    assert snap.image == sandbox.get_info().image
    assert snap.created_at.tzinfo is not None
    assert snap.size_bytes >= 0 and isinstance(snap.disk_mb, int)
    fetched = client.snapshots.get(name)
    assert (fetched.name, fetched.sandbox_id, fetched.image) == (name, sandbox.id, snap.image)
    assert name in {listed.name for listed in client.snapshots.list()}
    # Later changes to the source are not in the snapshot.
    sandbox.files.write(KEPT, "after the snapshot\n")

    with sbx.Sandbox.create(client=client, snapshot=name) as copy:
        assert copy.id != sandbox.id
        assert copy.get_info().state == "running"
        assert copy.files.read_text(KEPT) == "in the snapshot\n"
        assert copy.exec(["cat", KEPT]).stdout == "in the snapshot\n"
        copy.files.write(KEPT, "changed in the copy\n")
    assert sandbox.files.read_text(KEPT) == "after the snapshot\n"
    # A SnapshotInfo names its snapshot too.
    with sbx.Sandbox.create(client=client, snapshot=snap) as again:
        assert again.files.read_text(KEPT) == "in the snapshot\n"


def test_fork_makes_independent_copies(server, sandbox):
    sandbox.files.write(KEPT, "before the fork\n")
    with contextlib.ExitStack() as cleanup:
        forks = sandbox.fork(count=2)
        for fork in forks:
            if isinstance(fork, sbx.Sandbox):
                cleanup.enter_context(fork)
        assert len(forks) == 2
        assert all(isinstance(fork, sbx.Sandbox) for fork in forks), forks
        ids = {fork.id for fork in forks}
        tokens = {fork.token for fork in forks}
        assert len(ids) == 2 and sandbox.id not in ids
        assert len(tokens) == 2 and None not in tokens and sandbox.token not in tokens
        for fork in forks:
            assert fork.get_info().state == "running"
            assert fork.files.read_text(KEPT) == "before the fork\n"
        forks[0].files.write(KEPT, "changed in the first fork\n")
        assert forks[1].files.read_text(KEPT) == "before the fork\n"
        assert sandbox.files.read_text(KEPT) == "before the fork\n"
        # Each fork's token is its own.
        with sbx.Sandbox.connect(forks[1].id, url=server.url, token=forks[1].token) as own:
            assert own.exec("echo mine").stdout == "mine\n"
        # The source's events name every fork.
        wait_until(
            lambda: {e.detail for e in sandbox.events() if e.kind == "forked"} >= ids, timeout=10
        )
    with pytest.raises(sbx.InvalidRequest):
        sandbox.fork(count=0)
    with pytest.raises(sbx.InvalidRequest):
        sandbox.fork(count=101)


def test_restore_rolls_back_in_place(sandbox, snapshot_name):
    sandbox.files.write(KEPT, "version 1\n")
    name = snapshot_name()
    sandbox.snapshot(name)
    sandbox.files.write(KEPT, "version 2\n")
    sandbox.files.write("/workspace/extra.txt", "made after the snapshot\n")
    restored = sandbox.restore(name)
    assert restored.id == sandbox.id
    assert restored.state == "running"
    assert sandbox.files.read_text(KEPT) == "version 1\n"
    assert not sandbox.files.exists("/workspace/extra.txt")
    assert sandbox.exec(["cat", KEPT]).stdout == "version 1\n"


def test_a_taken_snapshot_name_is_a_conflict(client, sandbox, snapshot_name):
    name = snapshot_name()
    sandbox.snapshot(name)
    with pytest.raises(sbx.Conflict) as caught:
        sandbox.snapshot(name)
    assert caught.value.status == 409
    assert caught.value.error_code == "conflict"
    with sbx.Sandbox.create(client=client) as other:
        with pytest.raises(sbx.Conflict):
            other.snapshot(name)
    with pytest.raises(sbx.InvalidRequest):
        sandbox.snapshot("../escape")


def test_an_unknown_snapshot_is_not_found(client, sandbox, snapshot_name):
    missing = f"sdk-missing-{uuid.uuid4().hex[:16]}"
    with pytest.raises(sbx.NotFound) as caught:
        client.snapshots.get(missing)
    assert caught.value.status == 404
    assert caught.value.error_code == "not_found"
    with pytest.raises(sbx.NotFound):
        client.snapshots.delete(missing)
    with pytest.raises(sbx.NotFound):
        sandbox.restore(missing)
    with pytest.raises(sbx.NotFound):
        sbx.Sandbox.create(client=client, snapshot=missing)
    # A deleted snapshot is gone.
    name = snapshot_name()
    sandbox.snapshot(name)
    client.snapshots.delete(name)
    with pytest.raises(sbx.NotFound):
        client.snapshots.get(name)
    assert name not in {listed.name for listed in client.snapshots.list()}


def test_events_report_the_lifecycle_in_order(server, client):
    with sbx.Sandbox.create(client=client) as sb:
        sb.stop()
        sb.start()
        wanted = ["created", "stopped", "started"]

        def lifecycle_events():
            return [event for event in sb.events() if event.kind in wanted]

        wait_until(lambda: len(lifecycle_events()) >= 3)
        events = list(sb.events())
        assert all(event.sandbox_id == sb.id for event in events)
        assert [event.kind for event in events if event.kind in wanted] == wanted
        seqs = [event.seq for event in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        times = [event.time for event in events]
        assert times == sorted(times) and times[0].tzinfo is not None
        # The server-wide stream has them too; `since` skips what came before.
        created = next(event for event in events if event.kind == "created")
        assert created.seq in {event.seq for event in client.events()}
        later = list(sb.events(since=created.seq))
        assert [event.kind for event in later if event.kind in wanted] == wanted[1:]
        assert all(event.seq > created.seq for event in later)
        last = events[-1].seq

        # With follow, the stream sends what comes next, as it comes.
        sb.pause()
        with sb.events(since=last, follow=True, request_timeout=30) as stream:
            live = iter(stream)
            assert next(live).kind == "paused"
            with sbx.Sandbox.connect(sb.id, url=server.url, token=server.admin_token) as other:
                resumer = threading.Thread(target=other.resume)
                resumer.start()
                try:
                    assert next(live).kind == "resumed"
                finally:
                    resumer.join()


def test_exec_on_a_stopped_sandbox_with_auto_resume_starts_it(client):
    with sbx.Sandbox.create(client=client, auto_resume=True) as sb:
        assert sb.get_info().lifecycle.auto_resume is True
        sb.files.write(KEPT, "woken up\n")
        assert sb.stop().state == "stopped"
        result = sb.exec(["cat", KEPT])
        assert result.ok and result.stdout == "woken up\n"
        assert sb.get_info().state == "running"
        assert sb.pause().state == "paused"
        assert sb.exec("echo resumed").stdout == "resumed\n"
        assert sb.get_info().state == "running"


def test_exec_on_a_stopped_sandbox_without_auto_resume_conflicts(client):
    with sbx.Sandbox.create(client=client, auto_resume=False) as sb:
        assert sb.get_info().lifecycle.auto_resume is False
        sb.files.write(KEPT, "still here\n")
        sb.stop()
        with pytest.raises(sbx.Conflict) as caught:
            sb.exec("true")
        assert caught.value.status == 409
        assert caught.value.error_code == "conflict"
        with pytest.raises(sbx.Conflict):
            sb.files.read(KEPT)
        assert sb.get_info().state == "stopped"
        sb.start()
        assert sb.exec(["cat", KEPT]).stdout == "still here\n"


def test_a_sandbox_token_cannot_change_its_lifecycle(server, sandbox):
    assert sandbox.token is not None
    with sbx.Sandbox.connect(sandbox.id, url=server.url, token=sandbox.token) as own:
        for call in (own.stop, own.pause, lambda: own.set_timeout(86400)):
            with pytest.raises(sbx.Forbidden):
                call()
    assert sandbox.get_info().state == "running"


def test_a_sandbox_token_reads_its_own_events_only(server, client, sandbox):
    with sbx.Sandbox.create(client=client) as neighbour:
        with sbx.Sandbox.connect(sandbox.id, url=server.url, token=sandbox.token) as own:
            events = list(own.events())
            assert events and events[0].kind == "created"
            assert {event.sandbox_id for event in events} == {sandbox.id}
            with pytest.raises(sbx.Forbidden):
                list(own.client.events())
            with pytest.raises(sbx.Forbidden):
                list(own.client.events(sandbox=neighbour.id))


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_async_api_stops_starts_snapshots_and_forks(server, snapshot_name):
    async with sbx.AsyncClient(server.url, server.admin_token) as client:
        async with sbx.AsyncSandbox.create(client=client, timeout_s=900) as sb:
            assert (await sb.get_info()).lifecycle.timeout_s == 900
            await sb.files.write(KEPT, "async\n")
            assert (await sb.stop()).state == "stopped"
            assert (await sb.start()).state == "running"
            assert (await sb.pause()).state == "paused"
            assert (await sb.resume()).state == "running"
            assert (await sb.set_timeout(1800)).expires_at is not None
            name = snapshot_name()
            snap = await sb.snapshot(name)
            assert (await client.snapshots.get(name)).sandbox_id == sb.id
            assert snap.name in {s.name for s in await client.snapshots.list()}
            await sb.files.write(KEPT, "changed\n")
            assert (await sb.restore(name)).id == sb.id
            assert await sb.files.read_text(KEPT) == "async\n"
            forks = await sb.fork()
            assert len(forks) == 1 and isinstance(forks[0], sbx.AsyncSandbox), forks
            async with forks[0] as fork:
                assert await fork.files.read_text(KEPT) == "async\n"
            kinds = [event.kind async for event in sb.events()]
            for kind in ("created", "stopped", "started", "paused", "resumed", "snapshot"):
                assert kind in kinds, kinds


# --- without a server ------------------------------------------------------


def test_insufficient_storage_has_its_class():
    err = error_for("insufficient_storage", "pool full", status=507, request_id="r")
    assert type(err) is sbx.InsufficientStorage
    assert isinstance(err, sbx.ApiError)
    assert (err.error_code, err.status, err.request_id) == ("insufficient_storage", 507, "r")


def test_create_sends_the_lifecycle_only_when_asked():
    plain = _core.create_sandbox(
        image=None,
        memory_mb=None,
        cpus=None,
        disk_mb=None,
        egress=None,
        env=None,
        labels=None,
        timeout_s=None,
        idle_timeout_s=None,
        on_timeout=None,
        auto_resume=None,
        snapshot=None,
        request_timeout=sbx.DEFAULT,
    )
    assert plain.request.json == {}
    asked = _core.create_sandbox(
        image=None,
        memory_mb=None,
        cpus=None,
        disk_mb=None,
        egress=None,
        env=None,
        labels=None,
        timeout_s=timedelta(minutes=1, milliseconds=1),
        idle_timeout_s=0,
        on_timeout="pause",
        auto_resume=False,
        snapshot="base-1.2",
        request_timeout=sbx.DEFAULT,
    )
    assert asked.request.json == {
        "lifecycle": {
            "timeout_s": 61,
            "idle_timeout_s": 0,
            "on_timeout": "pause",
            "auto_resume": False,
        },
        "snapshot": "base-1.2",
    }
    assert _core.set_timeout("id", 1.5).request.json == {"timeout_s": 2}
    for bad in (0, -1):
        with pytest.raises(ValueError):
            _core.set_timeout("id", bad)
    with pytest.raises(TypeError):
        _core.set_timeout("id", "60")  # type: ignore[arg-type]


def test_fork_outcomes_and_events_decode():
    sandbox = {
        "id": "f1",
        "state": "running",
        "image": "base",
        "created_at": "2026-11-30T16:04:25.573177659Z",
        "memory_mb": 512,
        "cpus": 1.0,
        "lifecycle": {"idle_timeout_s": 60, "on_timeout": "pause", "auto_resume": True},
        "idle_since": "2026-11-30T16:04:26Z",
        "token": "sbx_f1",
    }
    body = {
        "forks": [
            {"sandbox": sandbox},
            {"error": {"error_code": "insufficient_storage", "message": "full", "request_id": "r"}},
        ]
    }
    created, failed = _core.fork("src", 2, sbx.DEFAULT).decode(json.dumps(body).encode())
    assert isinstance(created, _core.Created) and created.token == "sbx_f1"
    assert created.info.lifecycle == sbx.Lifecycle(None, 60, "pause", True)
    assert created.info.idle_since == datetime(2026, 11, 30, 16, 4, 26, tzinfo=timezone.utc)
    assert created.info.expires_at is None and created.info.ended_reason is None
    assert isinstance(failed, sbx.InsufficientStorage) and failed.request_id == "r"
    with pytest.raises(sbx.ProtocolError):
        _core.fork("src", 1, sbx.DEFAULT).decode(b'{"forks":[{}]}')

    lines = [
        {"seq": 7, "time": "2026-11-30T16:04:25Z", "sandbox_id": "a", "kind": "created"},
        {
            "seq": 9,
            "time": "2026-11-30T16:05:25Z",
            "sandbox_id": "a",
            "kind": "expiring",
            "at": "2026-11-30T16:06:25Z",
        },
        {"seq": 10, "time": "2026-11-30T16:06:25Z", "sandbox_id": "a", "kind": "hibernated"},
    ]
    wire = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    decoder = _core.sandbox_event_decoder()
    events = decoder.feed(wire[:30]) + decoder.feed(wire[30:]) + decoder.finish()
    assert [(e.seq, e.kind) for e in events] == [
        (7, "created"),
        (9, "expiring"),
        (10, "hibernated"),
    ]
    assert events[1].at == datetime(2026, 11, 30, 16, 6, 25, tzinfo=timezone.utc)

    request = _core.events("a", 7, True, sbx.DEFAULT)
    assert (request.path, request.params) == (
        "/v1/sandboxes/a/events",
        {"follow": "true", "since": "7"},
    )
    everything = _core.events(None, None, False, sbx.DEFAULT)
    assert (everything.path, everything.params) == ("/v1/events", {"follow": "false"})
    assert request.timeout_for(60.0).read is None


def test_the_sdk_sends_lifecycle_calls_as_the_api_says():
    seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.raw_path.decode(), request.content))
        return httpx.Response(
            200,
            json={
                "id": "a/b",
                "state": "stopped",
                "image": "base",
                "created_at": "2026-11-30T16:04:25Z",
                "memory_mb": 512,
                "cpus": 1.0,
            },
        )

    with sbx.Client("http://sbx.invalid", "token") as client:
        client._http.close()
        client._http = httpx.Client(
            base_url="http://sbx.invalid", transport=httpx.MockTransport(answer)
        )
        sb = sbx.Sandbox("a/b", client)
        for call in (sb.stop, sb.start, sb.pause, sb.resume):
            assert call().lifecycle == sbx.Lifecycle()
        sb.restore("snap-1")
    assert seen == [
        ("POST", "/v1/sandboxes/a%2Fb/stop", b""),
        ("POST", "/v1/sandboxes/a%2Fb/start", b""),
        ("POST", "/v1/sandboxes/a%2Fb/pause", b""),
        ("POST", "/v1/sandboxes/a%2Fb/resume", b""),
        ("POST", "/v1/sandboxes/a%2Fb/restore", b'{"snapshot":"snap-1"}'),
    ]

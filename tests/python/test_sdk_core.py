"""The SDK's I/O-free core: what both APIs share, checked without a server."""

from __future__ import annotations

import io
import json
import signal
import tarfile
from datetime import datetime, timedelta, timezone

import httpx
import pytest

import sbx
from sbx import _core
from sbx.models import format_time, parse_time


def test_ndjson_lines_split_anywhere_decode_in_order():
    lines = [
        {"type": "start", "pid": 7},
        {"type": "stdout", "data": "héllo\n"},
        {"type": "stderr", "data": "oops"},
        {"type": "exit", "exit_code": 3, "duration_ms": 12, "timed_out": False},
    ]
    wire = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    for size in (1, 2, 7, len(wire)):
        decoder = _core.NdjsonDecoder()
        events = []
        for start in range(0, len(wire), size):
            events += decoder.feed(wire[start : start + size])
        events += decoder.finish()
        assert events == [
            sbx.StartEvent(pid=7),
            sbx.StdoutEvent(data="héllo\n"),
            sbx.StderrEvent(data="oops"),
            sbx.ExitEvent(exit_code=3, duration_ms=12, timed_out=False),
        ]


def test_unknown_and_error_events_and_a_last_line_without_newline():
    decoder = _core.NdjsonDecoder()
    events = decoder.feed(b'\n{"type":"progress","percent":50}\n{"type":"error",')
    events += decoder.feed(b'"error_code":"unavailable","message":"agent stopping"}')
    events += decoder.finish()
    assert events == [
        sbx.UnknownEvent(type="progress", data={"type": "progress", "percent": 50}),
        sbx.ErrorEvent(error_code="unavailable", message="agent stopping"),
    ]
    log = _core.EventLog(None, None)
    for event in events:
        log.observe(event)
    with pytest.raises(sbx.Unavailable, match="agent stopping"):
        log.result()
    with pytest.raises(sbx.ProtocolError):
        _core.NdjsonDecoder().feed(b"not json\n")


def test_event_log_sums_up_and_calls_back():
    out, err = [], []
    log = _core.EventLog(out.append, err.append)
    for event in [
        sbx.StartEvent(pid=1),
        sbx.StdoutEvent(data="a"),
        sbx.StderrEvent(data="b"),
        sbx.StdoutEvent(data="c"),
        sbx.ExitEvent(exit_code=0, duration_ms=5, timed_out=False),
    ]:
        callback = log.observe(event)
        if callback is not None:
            callback()
    assert log.pid == 1
    assert log.result() == sbx.ExecResult(0, "ac", "b", 5, False, False)
    assert (out, err) == (["a", "c"], ["b"])
    with pytest.raises(sbx.ProtocolError):
        _core.EventLog(None, None).result()


def test_times_parse_as_the_server_writes_them():
    nanos = parse_time("2026-11-30T16:04:25.573177659Z")
    assert nanos == datetime(2026, 11, 30, 16, 4, 25, 573177, tzinfo=timezone.utc)
    assert parse_time("2026-01-02T03:04:05Z").microsecond == 0
    offset = parse_time("2026-01-02T03:04:05.5+02:00")
    assert offset.utcoffset() == timedelta(hours=2) and offset.microsecond == 500000
    with pytest.raises(sbx.ProtocolError):
        parse_time("yesterday")
    assert format_time(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05Z"
    aware = datetime(2026, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(aware) == "2026-01-02T03:04:05Z"


def test_commands_signals_and_bodies():
    assert _core.command_fields("echo hi | wc") == {"shell": "echo hi | wc"}
    assert _core.command_fields(["echo", "hi"]) == {"cmd": ["echo", "hi"]}
    assert _core.command_fields(("ls",)) == {"cmd": ["ls"]}
    with pytest.raises(ValueError):
        _core.command_fields([])
    with pytest.raises(TypeError):
        _core.command_fields(b"echo")  # type: ignore[arg-type]
    assert _core.signal_name("TERM") == "TERM"
    assert _core.signal_name(signal.SIGKILL) == "SIGKILL"
    assert _core.signal_name(9) == "9"
    request = _core.exec_request(
        "abc",
        "sleep 1",
        cwd=None,
        env={"A": "1"},
        timeout=1.5,
        stdin=None,
        user=None,
        stream=True,
        request_timeout=_core.DEFAULT,
    )
    assert request.json == {
        "shell": "sleep 1",
        "env": {"A": "1"},
        "timeout_ms": 1500,
        "stream": True,
    }
    assert request.headers == {"accept": "application/x-ndjson"}
    assert request.path == "/v1/sandboxes/abc/exec"
    assert _core.command_timeout_ms(0.0001) == 1
    with pytest.raises(ValueError):
        _core.command_timeout_ms(0)
    created = _core.create_sandbox(
        image=None,
        memory_mb=512,
        cpus=None,
        disk_mb=None,
        egress=[],
        env=None,
        labels=None,
        request_timeout=_core.DEFAULT,
    )
    # An empty allowlist is sent (and means "nothing"), absent fields are not.
    assert created.request.json == {"memory_mb": 512, "network": {"egress": []}}
    assert _core.sandbox_path("a/b") == "/v1/sandboxes/a%2Fb"


def test_http_timeouts_cover_the_command():
    assert _core.http_timeout(5.0, _core.DEFAULT) == httpx.Timeout(5.0)
    assert _core.http_timeout(5.0, _core.DEFAULT, at_least=70.0) == httpx.Timeout(70.0)
    assert _core.http_timeout(90.0, _core.DEFAULT, at_least=70.0) == httpx.Timeout(90.0)
    assert _core.http_timeout(5.0, 1.0, at_least=70.0) == httpx.Timeout(1.0)
    assert _core.http_timeout(None, _core.DEFAULT, at_least=70.0) == httpx.Timeout(None)
    unbounded = _core.http_timeout(5.0, _core.DEFAULT, unbounded_read=True)
    assert unbounded.read is None and unbounded.connect == 5.0


def test_settings_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("SBX_URL", raising=False)
    monkeypatch.delenv("SBX_TOKEN", raising=False)
    monkeypatch.setenv("SBX_DATA_DIR", str(tmp_path))
    assert _core.resolve_url(None) == sbx.DEFAULT_URL == "http://127.0.0.1:7070"
    assert _core.resolve_token(None) is None
    (tmp_path / "admin.token").write_text("sbx_local\n")
    assert _core.resolve_token(None) == "sbx_local"
    monkeypatch.setenv("SBX_TOKEN", "sbx_env")
    monkeypatch.setenv("SBX_URL", "http://10.0.0.1:1/")
    assert _core.resolve_token(None) == "sbx_env"
    assert _core.resolve_url(None) == "http://10.0.0.1:1"
    assert _core.resolve_token("sbx_arg") == "sbx_arg"
    assert _core.resolve_url("http://h:2") == "http://h:2"
    assert not _core.needs_tls("http://127.0.0.1:7070")
    assert _core.needs_tls("https://sbx.example.com")


def tar_of(*members: tarfile.TarInfo) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isreg() else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 1):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = size if kind == tarfile.REGTYPE else 0
    info.mode = 0o4755
    return info


def test_extract_keeps_allowed_shapes_and_drops_setuid(tmp_path):
    data = tar_of(
        member("top", tarfile.DIRTYPE),
        member("top/a/b.txt"),
        member("top/a/up", tarfile.SYMTYPE, "../a/b.txt"),
        member("top/a/hard", tarfile.LNKTYPE, "top/a/b.txt"),
        member("top/fifo", tarfile.FIFOTYPE),
    )
    sbx.extract_tar(data, tmp_path / "out", strip_top=True)
    out = tmp_path / "out"
    assert (out / "a" / "b.txt").read_bytes() == b"x"
    assert (out / "a" / "b.txt").stat().st_mode & 0o7777 == 0o755
    assert (out / "a" / "up").read_bytes() == b"x"
    assert (out / "a" / "hard").stat().st_ino == (out / "a" / "b.txt").stat().st_ino
    assert not (out / "fifo").exists()


def test_extract_never_writes_through_an_existing_symlink(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "planted").symlink_to(outside)
    with pytest.raises(sbx.UnsafeArchiveError):
        sbx.extract_tar(tar_of(member("planted/x")), dest)
    assert list(outside.iterdir()) == []
    # A file entry replaces a symlink at its own path instead of following it.
    (dest / "victim").symlink_to(outside / "target")
    sbx.extract_tar(tar_of(member("victim")), dest)
    assert not (dest / "victim").is_symlink()
    assert not (outside / "target").exists()


def test_strip_top_needs_one_directory(tmp_path):
    with pytest.raises(NotADirectoryError):
        sbx.extract_tar(tar_of(member("file")), tmp_path / "x", strip_top=True)
    with pytest.raises(sbx.UnsafeArchiveError):
        sbx.extract_tar(
            tar_of(member("top", tarfile.DIRTYPE), member("other/x")),
            tmp_path / "y",
            strip_top=True,
        )
    with pytest.raises(sbx.UnsafeArchiveError):
        sbx.extract_tar(b"this is not a tar", tmp_path / "z")

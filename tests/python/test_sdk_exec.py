"""Exec through the SDK: buffered and streamed, and the timeouts around it."""

from __future__ import annotations

import time
from typing import List

import pytest
import sbx
from waiting import wait_until


def test_a_string_runs_through_the_shell(sandbox):
    result = sandbox.exec("echo out; echo err >&2; echo hi | tr a-z A-Z; exit 3")
    assert result.exit_code == 3
    assert result.stdout == "out\nHI\n"
    assert result.stderr == "err\n"
    assert not result.timed_out and not result.truncated
    assert not result.ok
    assert result.duration_ms >= 0


def test_a_list_runs_as_an_argv(sandbox):
    literal = sandbox.exec(["echo", "$HOME", "a  b", ";", "true"])
    assert literal.stdout == "$HOME a  b ; true\n"
    assert literal.ok
    assert sandbox.exec(["sh", "-c", "exit 7"]).exit_code == 7
    missing = sandbox.exec(["no-such-program-here"])
    assert missing.exit_code == 127
    assert "no-such-program-here" in missing.stderr
    with pytest.raises(ValueError):
        sandbox.exec([])


def test_cwd_env_stdin_and_user(sandbox):
    sandbox.files.mkdir("/workspace/sub")
    assert sandbox.exec("pwd").stdout == "/workspace\n"
    assert sandbox.exec("pwd", cwd="/workspace/sub").stdout == "/workspace/sub\n"
    assert sandbox.exec("echo $A-$B", env={"A": "1", "B": "two"}).stdout == "1-two\n"
    assert sandbox.exec(["cat"], stdin="fed through stdin").stdout == "fed through stdin"
    assert sandbox.exec(["id", "-u"], user="nobody").stdout == "65534\n"
    assert sandbox.exec(["id", "-u"], user="1234:1234").stdout == "1234\n"
    with pytest.raises(sbx.InvalidRequest):
        sandbox.exec("true", cwd="/does/not/exist")
    with pytest.raises(sbx.InvalidRequest):
        sandbox.exec("true", cwd="relative")


# The client timeouts here are short enough to fire, and long enough that
# a plain call on a busy machine does not hit them by accident.
IMPATIENT = 2.0


def test_the_commands_own_timeout_outlasts_a_shorter_client_timeout(server, sandbox):
    with sbx.Client(server.url, server.admin_token, timeout=IMPATIENT) as impatient:
        same = sbx.Sandbox.connect(sandbox.id, client=impatient)
        started = time.monotonic()
        result = same.exec("echo before; sleep 30", timeout=IMPATIENT + 1)
        elapsed = time.monotonic() - started
    assert result.timed_out
    assert result.exit_code == 128 + 9
    assert result.stdout == "before\n"
    assert IMPATIENT < elapsed < 20


def test_a_configured_client_timeout_fires(server, sandbox):
    with sbx.Client(server.url, server.admin_token, timeout=IMPATIENT) as impatient:
        same = sbx.Sandbox.connect(sandbox.id, client=impatient)
        started = time.monotonic()
        with pytest.raises(sbx.RequestTimeout) as caught:
            same.exec("sleep 20")
        assert time.monotonic() - started < 15
        assert isinstance(caught.value, TimeoutError)
        assert isinstance(caught.value, sbx.TransportError)
        # A per-call timeout wins over the client's.
        assert same.exec(f"sleep {IMPATIENT + 1}; echo slow", request_timeout=30).stdout == "slow\n"
    with pytest.raises(sbx.RequestTimeout):
        sandbox.exec("sleep 20", request_timeout=0.5)
    # The same setting for the client a sandbox opens for itself.
    with sbx.Sandbox.connect(
        sandbox.id, url=server.url, token=server.admin_token, http_timeout=IMPATIENT
    ) as own:
        assert own.client.timeout == IMPATIENT
        with pytest.raises(sbx.RequestTimeout):
            own.exec("sleep 20")


def test_exec_stream_yields_events_as_they_happen(sandbox):
    seen_stdout: List[str] = []
    seen_stderr: List[str] = []
    script = (
        "echo ready; while [ ! -e /tmp/go ]; do sleep 0.01; done; echo after >&2; echo done; exit 5"
    )
    events: List[sbx.ExecEvent] = []
    with sandbox.exec_stream(
        script, on_stdout=seen_stdout.append, on_stderr=seen_stderr.append
    ) as stream:
        for event in stream:
            events.append(event)
            if isinstance(event, sbx.StdoutEvent) and event.data == "ready\n":
                # The command is blocked until this file exists: the event
                # arrived while it ran, not with its end.
                assert stream.pid is not None
                sandbox.files.write("/tmp/go", b"")
    assert isinstance(events[0], sbx.StartEvent)
    assert events[0].pid == stream.pid
    assert isinstance(events[-1], sbx.ExitEvent)
    assert events[-1].exit_code == 5 and not events[-1].timed_out
    assert all(not isinstance(event, (sbx.StartEvent, sbx.ExitEvent)) for event in events[1:-1])
    stdout = "".join(e.data for e in events if isinstance(e, sbx.StdoutEvent))
    stderr = "".join(e.data for e in events if isinstance(e, sbx.StderrEvent))
    assert stdout == "ready\ndone\n"
    assert stderr == "after\n"
    assert "".join(seen_stdout) == stdout
    assert "".join(seen_stderr) == stderr
    first_stderr = next(i for i, e in enumerate(events) if isinstance(e, sbx.StderrEvent))
    ready = next(i for i, e in enumerate(events) if isinstance(e, sbx.StdoutEvent))
    assert ready < first_stderr


def test_exec_stream_wait_sums_up_and_exec_takes_callbacks(sandbox):
    stream = sandbox.exec_stream(["sh", "-c", "printf 'a\\nb\\n'; printf e >&2; exit 2"])
    result = stream.wait()
    assert (result.exit_code, result.stdout, result.stderr) == (2, "a\nb\n", "e")
    assert stream.pid is not None

    lines: List[str] = []
    errors: List[str] = []
    result = sandbox.exec(
        "for i in 1 2 3; do echo $i; done; echo oops >&2",
        on_stdout=lines.append,
        on_stderr=errors.append,
    )
    assert result.ok
    assert "".join(lines) == "1\n2\n3\n" == result.stdout
    assert "".join(errors) == "oops\n" == result.stderr

    timed = sandbox.exec_stream("sleep 30", timeout=0.5).wait()
    assert timed.timed_out and timed.exit_code == 137


def test_closing_an_exec_stream_kills_the_command(sandbox):
    stream = sandbox.exec_stream("echo $$ > /tmp/streamed.pid; echo started; sleep 300")
    for event in stream:
        if isinstance(event, sbx.StdoutEvent):
            break
    stream.close()
    pid = sandbox.files.read_text("/tmp/streamed.pid").strip()
    wait_until(lambda: sandbox.exec(["kill", "-0", pid]).exit_code != 0)
    assert list(stream) == []


def test_exec_stream_errors_raise_on_iteration(sandbox):
    stream = sandbox.exec_stream("true", cwd="/nowhere")
    with pytest.raises(sbx.InvalidRequest):
        next(iter(stream))

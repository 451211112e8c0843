"""Background processes through the SDK: start, list, logs, stdin, signals,
wait and kill-all."""

from __future__ import annotations

import signal
import time
from typing import List

import pytest
import sbx
from waiting import wait_until


def test_start_list_get_and_stdin(sandbox):
    cat = sandbox.processes.start(["cat"], name="echoer")
    assert cat.state == "running" and cat.running
    assert cat.name == "echoer"
    assert cat.cmd == ["cat"]
    assert cat.exit_code is None and cat.exited_at is None
    assert cat.pid in {p.pid for p in sandbox.processes.list()}
    assert sandbox.processes.get(cat.pid).state == "running"

    sandbox.processes.write_stdin(cat.pid, "hello\n")
    sandbox.processes.write_stdin(cat.pid, b"\x00bytes\n")
    logs = sandbox.processes.logs(cat.pid, follow=True)
    seen = ""
    for event in logs:
        if isinstance(event, sbx.StdoutEvent):
            seen += event.data
            if seen == "hello\n\x00bytes\n":
                break
    logs.close()
    sandbox.processes.close_stdin(cat.pid)
    done = sandbox.processes.wait(cat.pid, timeout=30)
    assert done.state == "exited" and done.exit_code == 0
    assert done.exited_at is not None and done.exited_at >= done.started_at
    with pytest.raises(sbx.Conflict) as caught:
        sandbox.processes.write_stdin(cat.pid, "too late")
    assert caught.value.status == 409


def test_logs_follow_until_exit(sandbox):
    script = "for i in 1 2 3; do echo line$i; echo warn$i >&2; sleep 0.05; done; exit 4"
    started = sandbox.processes.start(script, cwd="/tmp", env={"X": "y"})
    out: List[str] = []
    result = sandbox.processes.logs(started.pid, follow=True, on_stdout=out.append).wait()
    assert result.exit_code == 4
    assert result.stdout == "line1\nline2\nline3\n"
    assert result.stderr == "warn1\nwarn2\nwarn3\n"
    assert "".join(out) == result.stdout
    # Kept output, cut to the last bytes of each stream with tail.
    tail = [
        e for e in sandbox.processes.logs(started.pid, tail=6) if isinstance(e, sbx.StdoutEvent)
    ]
    assert "".join(e.data for e in tail) == "line3\n"
    assert sandbox.processes.get(started.pid).exit_code == 4


def test_logs_without_follow_of_a_running_process_end_without_exit(sandbox):
    proc = sandbox.processes.start("echo first; exec sleep 300")
    wait_until(
        lambda: any(isinstance(e, sbx.StdoutEvent) for e in sandbox.processes.logs(proc.pid))
    )
    events = list(sandbox.processes.logs(proc.pid))
    assert not any(isinstance(e, sbx.ExitEvent) for e in events)
    with pytest.raises(sbx.ProtocolError):
        sandbox.processes.logs(proc.pid).wait()
    sandbox.processes.signal(proc.pid, "KILL")
    assert sandbox.processes.wait(proc.pid, timeout=30).exit_code == 137


def test_signals_reach_the_process_group(sandbox):
    term = sandbox.processes.start("sleep 300")
    sandbox.processes.signal(term.pid)
    assert sandbox.processes.wait(term.pid, timeout=30).exit_code == 128 + 15
    by_enum = sandbox.processes.start(["sleep", "300"])
    sandbox.processes.signal(by_enum.pid, signal.SIGKILL)
    assert sandbox.processes.wait(by_enum.pid, timeout=30).exit_code == 128 + 9
    by_number = sandbox.processes.start(["sleep", "300"])
    sandbox.processes.signal(by_number.pid, 2)
    assert sandbox.processes.wait(by_number.pid, timeout=30).exit_code == 128 + 2
    with pytest.raises(sbx.InvalidRequest):
        sandbox.processes.signal(by_number.pid, "NOT-A-SIGNAL")


def test_wait_with_a_timeout_fires(sandbox):
    proc = sandbox.processes.start("sleep 300")
    started = time.monotonic()
    with pytest.raises(sbx.RequestTimeout):
        sandbox.processes.wait(proc.pid, timeout=0.5)
    assert time.monotonic() - started < 10
    assert sandbox.processes.get(proc.pid).running


def test_kill_all_ends_every_process(sandbox):
    pids = [sandbox.processes.start(["sleep", "300"]).pid for _ in range(3)]
    assert sandbox.processes.kill_all() >= 3
    wait_until(lambda: all(not sandbox.processes.get(pid).running for pid in pids))
    assert sandbox.exec("echo alive").stdout == "alive\n"
    assert sandbox.processes.kill_all() == 0


def test_unknown_pid_is_not_found(sandbox):
    with pytest.raises(sbx.NotFound):
        sandbox.processes.get(999999)
    with pytest.raises(sbx.NotFound):
        list(sandbox.processes.logs(999999))
    with pytest.raises(sbx.NotFound):
        sandbox.processes.signal(999999)

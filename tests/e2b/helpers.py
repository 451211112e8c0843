"""Small helpers shared by the E2B suites."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Union

import httpx
from dateutil.parser import isoparse

# Slack for comparing a deadline the server computed with one computed
# here: both clocks are this machine's, and the server may round to seconds.
CLOCK_SLACK_S = 15


def wait_until(
    condition: Callable[[], bool], timeout: float, what: Union[str, Callable[[], str]]
) -> None:
    """Polls ``condition`` every 50 ms until it holds; fails after
    ``timeout`` s, naming what was awaited (``what``, or what it returns
    then: the state at the deadline)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"not in {timeout} s: {described}")
        time.sleep(0.05)


def rest_sandbox(admin: httpx.Client, sandbox_id: str) -> Optional[Dict[str, Any]]:
    """The sandbox as sbx's REST API reports it, or None for a 404."""
    answer = admin.get(f"/v1/sandboxes/{sandbox_id}")
    if answer.status_code == 404:
        return None
    assert answer.status_code == 200, answer.text
    return answer.json()


def rest_gone(admin: httpx.Client, sandbox_id: str) -> bool:
    """Whether sbx no longer runs the sandbox: deleted (a 404), or kept as
    ``deleted`` for its history (a timeout's deletion is)."""
    found = rest_sandbox(admin, sandbox_id)
    return found is None or found["state"] == "deleted"


def rest_create(admin: httpx.Client, **body: Any) -> Dict[str, Any]:
    """``POST /v1/sandboxes``: the sandbox and its bound ``token``."""
    answer = admin.post("/v1/sandboxes", json=body)
    assert answer.status_code == 201, answer.text
    created = answer.json()
    assert created["id"] and created["token"], created
    return created


def parse_time(value: str) -> datetime:
    return isoparse(value)


def seconds_until(when: datetime) -> float:
    """Seconds from now until ``when`` (an aware datetime)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return (when - datetime.now(timezone.utc)).total_seconds()


def assert_expires_in(when: datetime, seconds: float, what: str) -> None:
    """``when`` is ``seconds`` from now, give or take the time the test has
    taken since it asked (up to CLOCK_SLACK_S)."""
    left = seconds_until(when)
    assert seconds - CLOCK_SLACK_S <= left <= seconds + 2, (
        f"{what}: {left:.1f} s from now, expected about {seconds} s"
    )


def list_all(paginator) -> List[Any]:
    """Every item of an E2B paginator (``Sandbox.list()``), page by page."""
    items: List[Any] = []
    pages = 0
    while paginator.has_next:
        items.extend(paginator.next_items())
        pages += 1
        assert pages < 100, "Sandbox.list() pages without end"
    return items

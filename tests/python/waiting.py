"""Waiting for a condition the server brings about after it has answered."""

import time
from typing import Callable


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Polls ``condition`` every 20 ms until it holds; fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)

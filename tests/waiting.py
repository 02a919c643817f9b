"""Waiting on a condition with a deadline: the tests' only way to wait for the server."""

from __future__ import annotations

import time
from collections.abc import Callable

POLL_S = 0.05


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(POLL_S)

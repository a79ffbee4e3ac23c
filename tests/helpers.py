"""Test helpers shared by every app's tests (and the fault and simulator fixtures)."""
from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimedOut(AssertionError, TimeoutError):
    """A `wait_until` deadline passed: a test failure, and catchable as TimeoutError by fixtures."""


def wait_until(predicate: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.05,
               message: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy, or fail after `timeout` seconds.
    This is synchronisation by observation with a deadline, not a sleep standing in for it."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise WaitTimedOut(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def free_port() -> int:
    """A loopback TCP port nothing listens on right now (for a server a test starts, or a closed port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

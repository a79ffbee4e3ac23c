"""Test helpers shared by every app's tests."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


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
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)

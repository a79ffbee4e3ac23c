"""Project-wide pytest fixtures. App-specific ones live in each app's tests/conftest.py."""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
import time_machine
from django.utils import timezone

pytest_plugins = ["tests.celery_fixtures", "tests.stripe_fixtures"]

NOW = timezone.make_aware(dt.datetime(2026, 11, 10, 12, 0, 0), dt.timezone.utc)


@pytest.fixture
def now() -> Iterator[dt.datetime]:
    """A fixed 'now' for services, and the process clock moved to it for the test.

    Services take time as an argument, but commands, admin actions and views read the clock;
    a test that lets them must see the same instant its fixtures were built at, whatever
    today's date is. The clock ticks on from `now` (deadline polls keep working) in every
    thread of this process; other processes (Celery worker, gunicorn) keep the real clock.
    """
    with time_machine.travel(NOW, tick=True):
        yield NOW

"""Project-wide pytest fixtures. App-specific ones live in each app's tests/conftest.py."""
from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

pytest_plugins = ["tests.celery_fixtures", "tests.stripe_fixtures"]


@pytest.fixture
def now() -> dt.datetime:
    """A fixed 'now' for services (they take time as an argument; nothing reads the clock)."""
    return timezone.make_aware(dt.datetime(2026, 11, 10, 12, 0, 0), dt.timezone.utc)

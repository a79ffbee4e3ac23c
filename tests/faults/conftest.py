"""Fault tests run against one private stack per session (tests/faults/stack.py): its own
MariaDB, Redis, simulator, gunicorn and Celery worker, never the shared services."""
from __future__ import annotations

import shutil

import pytest

from .stack import Stack


@pytest.fixture(scope="session")
def _private_stack(tmp_path_factory):
    for tool in ("mariadbd", "mariadb-install-db", "redis-server"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make test installs it)")
    stack = Stack(tmp_path_factory.mktemp("faults"))
    try:
        yield stack.start()
    finally:
        stack.stop()


@pytest.fixture
def stack(_private_stack):
    """The private stack, every part up (a previous test may have killed one)."""
    _private_stack.ensure_up()
    return _private_stack

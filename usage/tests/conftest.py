"""Fixtures of the usage tests."""
from __future__ import annotations

import pytest
from django.db import connection


@pytest.fixture(params=["returning", "select"], ids=["insert-returning", "insert-then-select"])
def insert_path(request, monkeypatch) -> str:
    """Run the test over both ways a multi-row INSERT of `billable_actions` gets its ids back:
    MariaDB's `INSERT … RETURNING id`, and the path MySQL 8 takes (it has no RETURNING). Our flag
    is forced; both paths run for real on this MariaDB."""
    from usage import services

    if request.param == "returning" and not connection.features.can_return_rows_from_bulk_insert:
        pytest.skip("this engine has no INSERT … RETURNING")
    monkeypatch.setattr(services, "bulk_insert_returning", lambda: request.param == "returning")
    return request.param

"""Reading Stripe payloads: ids, timestamps, and our ISO dates. Pure functions (no Django, no
`stripe`), shared by the gateway, the services and reconcile."""
from __future__ import annotations

import datetime as dt
from typing import Any


def stripe_id(value: Any) -> str | None:
    """`"cus_1"` or `{"id": "cus_1", …}` (an expanded object) -> `"cus_1"`; None/"" -> None."""
    if isinstance(value, dict):
        value = value.get("id")
    return str(value) if value else None


def stripe_ts(value: Any) -> dt.datetime | None:
    """Unix seconds -> aware UTC datetime (None stays None)."""
    if value in (None, "", 0):
        return None
    return dt.datetime.fromtimestamp(int(value), tz=dt.timezone.utc)


def iso(value: dt.datetime | None) -> str | None:
    """A datetime as ISO 8601 (emails, API bodies); None stays None."""
    return value.isoformat() if value else None

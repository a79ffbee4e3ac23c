"""Structured logs for money movements and webhooks: one `key=value` line per event.

    from billing.logging import log_money, log_webhook
    log_money("credits.granted", org=org.pk, credits=amount, purchase=p.pk, by=user.email, reason=reason)
    log_webhook("webhook.processed", event_id=evt.stripe_event_id, type=evt.type, status=evt.status)

Lines look like `event=credits.granted org=3f2… credits=500.00 purchase=12 by=ops@x reason="goodwill"`
on logger `billing.money` (resp. `billing.webhooks`), so `grep event=credits.` or any log
pipeline that parses logfmt can follow the money. Values are rendered exactly (Decimal stays
`500.00`, never a float); values with spaces, quotes or `=` are quoted. Keys are also passed as
`extra={"money": {...}}` for JSON formatters.

Who calls it (every money movement and every webhook transition):
- credits granted / balance recomputed / reconcile fixes: ADMIN (billing.admin, usage.services_reconcile)
- top-up purchase started / succeeded / failed, credits applied: TOPUP (billing.services.topup_purchases)
- plan charge / overage recorded, period rolled, plan set: ENGINE (billing.services.balance)
- webhook received / processed / failed / reprocessed: HOOKS (billing.webhook_views, billing.services.webhooks)
- subscription synced (tier/status change): HOOKS (billing.services.subscription_sync)
"""
from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal
from typing import Any

money_logger = logging.getLogger("billing.money")
webhook_logger = logging.getLogger("billing.webhooks")

_NEEDS_QUOTES = set(' "=\t\n')


def _render(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):  # money is never a float; render anyway rather than lose a log line
        return repr(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    text = str(value)
    if text == "" or any(c in _NEEDS_QUOTES for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def format_kv(event: str, fields: dict[str, Any]) -> str:
    """`event=<event> k1=v1 k2=v2 …` (keys in the given order)."""
    parts = [f"event={_render(event)}"]
    parts.extend(f"{key}={_render(value)}" for key, value in fields.items())
    return " ".join(parts)


def _emit(logger: logging.Logger, level: int, event: str, fields: dict[str, Any]) -> str:
    line = format_kv(event, fields)
    logger.log(level, line, extra={"event": event, "money": {k: _render(v) for k, v in fields.items()}})
    return line


def log_money(event: str, *, level: int = logging.INFO, **fields: Any) -> str:
    """Log one money movement on `billing.money`. Returns the line (handy in tests)."""
    return _emit(money_logger, level, event, fields)


def log_webhook(event: str, *, level: int = logging.INFO, **fields: Any) -> str:
    """Log one webhook transition on `billing.webhooks`. Returns the line."""
    return _emit(webhook_logger, level, event, fields)

"""Shared helpers for the hardening tests: database snapshots and the closed sets of error codes."""
from __future__ import annotations

from billing.models import CreditBalance
from billing.models.webhooks import WebhookEvent
from usage.models import BillableAction

ORCHESTRATOR_TOKEN = "test-orchestrator-token"  # settings.test ORCHESTRATOR_SERVICE_TOKEN

#: Every error code the usage API may answer with. A new code must be added here on purpose.
USAGE_API_CODES = {
    "INVALID_REQUEST",        # 400 malformed body / field (with `field`)
    "INVALID_ACTION_TIER",    # 400 actionTier not one of small/medium/large/xl
    "PAYLOAD_TOO_LARGE",      # 413 body over 64 KiB (1 MiB for record-batch)
    "MISSING_TOKEN",          # 401 no Bearer token
    "INVALID_SERVICE_TOKEN",  # 401 unknown token / revoked key
    "ORG_NOT_FOUND",          # 404 no such org, or not the API key's org
    "METHOD_NOT_ALLOWED",     # 405
    "CREDITS_EXHAUSTED",      # 402 allowance + buffer + credits used up
    "IDEMPOTENCY_KEY_REUSED",  # 409 idempotencyKey already recorded for another request (user, tier, agent, actionKey)
    "RATE_LIMITED",           # 429 over USAGE_API_RATE_LIMIT_PER_MINUTE
}
#: Every rejection code of the webhook endpoint (billing.services.webhooks.webhook_event_verify).
WEBHOOK_CODES = {
    "WEBHOOK_PAYLOAD_TOO_LARGE", "WEBHOOK_SIGNATURE_MISSING", "WEBHOOK_TIMESTAMP_STALE",
    "WEBHOOK_SIGNATURE_INVALID", "WEBHOOK_PAYLOAD_INVALID", "WEBHOOK_API_VERSION_MISMATCH",
}


def db_snapshot() -> tuple:
    """What a rejected request must not change: actions, balances (and their versions), webhook events."""
    return (
        BillableAction.objects.count(),
        tuple(CreditBalance.objects.order_by("pk").values_list("pk", "version", "topup_used")),
        tuple(WebhookEvent.objects.order_by("pk").values_list("pk", "status")),
    )


def assert_stable_error(response, codes: set[str]) -> str:
    """A 4xx JSON error whose code is in `codes`; returns the code."""
    assert 400 <= response.status_code < 500, (response.status_code, response.content[:500])
    body = response.json()
    code = body["error"]["code"]
    assert code in codes, (response.status_code, body)
    assert body["success"] is False
    return code


def url_routes(*, include_admin: bool = False) -> list[tuple[str, str, object]]:
    """Every route of the URLConf as (name, route pattern, callback), walked recursively, so a new
    page or endpoint shows up in the security tests without anyone remembering to add it."""
    from django.urls import URLPattern, URLResolver, get_resolver

    found: list[tuple[str, str, object]] = []

    def walk(patterns, prefix: str) -> None:
        for p in patterns:
            if isinstance(p, URLResolver):
                if not include_admin and getattr(p, "app_name", None) == "admin":
                    continue
                walk(p.url_patterns, prefix + str(p.pattern))
            elif isinstance(p, URLPattern):
                found.append((p.name or "", prefix + str(p.pattern), p.callback))

    walk(get_resolver().url_patterns, "")
    return found

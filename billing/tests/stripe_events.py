"""Helpers for the webhook / subscription-sync / dunning tests: Stripe-shaped objects (current API
shapes: periods on the subscription item, invoice.parent.subscription_details) and events signed
exactly like Stripe signs them (`t=<ts>,v1=<hex HMAC-SHA256(secret, f"{t}.{body}")>`)."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import itertools
import json
import time

import pytest
from tests import stripe_calls

TEST_WEBHOOK_SECRET = "whsec_hooks_test_secret"
PRICES = {"starter": "price_hooks_starter", "pro": "price_hooks_pro", "max": "price_hooks_max"}
DAY = 86400

_seq = itertools.count(1)


def uid(prefix: str) -> str:
    return f"{prefix}_hooks{next(_seq):06d}{int(time.time() * 1000) % 100000:05d}"


def ts(value: dt.datetime) -> int:
    return int(value.timestamp())


@pytest.fixture
def hooks_stripe_settings(settings):
    settings.STRIPE_WEBHOOK_SECRET = TEST_WEBHOOK_SECRET
    settings.STRIPE_PRICE_STARTER = PRICES["starter"]
    settings.STRIPE_PRICE_PRO = PRICES["pro"]
    settings.STRIPE_PRICE_MAX = PRICES["max"]
    return settings


@pytest.fixture
def org():
    """An org with a Stripe customer id and an owner (webhook, subscription sync and dunning tests)."""
    from organizations.tests.factories import MembershipFactory, OrganizationFactory

    org = OrganizationFactory(stripe_customer_id=uid("cus"))
    MembershipFactory(organization=org)
    return org


@pytest.fixture
def deliver(client, django_capture_on_commit_callbacks):
    """POST a signed event; run what was queued on commit (the eager processing task, emails).
    Asserts the HTTP status (`expect`) and returns the JSON answer."""

    def _deliver(event: dict, *, expect: int = 200):
        with django_capture_on_commit_callbacks(execute=True):
            response = post_event(client, event)
        assert response.status_code == expect, response.content
        return response.json()

    return _deliver


def sign(body: bytes, *, secret: str = TEST_WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def api_version() -> str:
    from billing import stripe_gateway

    return stripe_gateway.STRIPE_API_VERSION


def make_event(event_type: str, obj: dict, *, created: int, event_id: str | None = None,
               version: str | None = None) -> dict:
    return {"id": event_id or uid("evt"), "object": "event", "api_version": version or api_version(),
            "created": created, "type": event_type, "livemode": False, "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None}, "data": {"object": obj}}


def post_event(client, event: dict | bytes, *, secret: str = TEST_WEBHOOK_SECRET, timestamp: int | None = None,
               signature: str | None = None):
    body = event if isinstance(event, bytes) else json.dumps(event, default=str).encode()  # SDK dicts hold Decimals
    header = signature if signature is not None else sign(body, secret=secret, timestamp=timestamp)
    return client.post("/api/webhooks/stripe", data=body, content_type="application/json",
                       HTTP_STRIPE_SIGNATURE=header)


def subscription_obj(*, sub_id: str, customer: str, org=None, tier: str = "pro", status: str = "active",
                     period_start: int, period_end: int, trial_start: int | None = None,
                     trial_end: int | None = None, cancel_at_period_end: bool = False,
                     canceled_at: int | None = None, ended_at: int | None = None,
                     default_payment_method: str | None = "pm_card_visa", price_id: str | None = None,
                     lookup_key: str | None = None) -> dict:
    return {
        "id": sub_id, "object": "subscription", "customer": customer, "status": status,
        "metadata": {"orgId": str(org.pk), "planTier": tier} if org is not None else {},
        "items": {"object": "list", "data": [{
            "id": f"si_{sub_id[4:]}", "object": "subscription_item", "subscription": sub_id, "quantity": 1,
            "price": {"id": price_id or PRICES[tier], "object": "price", "lookup_key": lookup_key or tier,
                      "unit_amount": {"starter": 999, "pro": 9900, "max": 49999}[tier], "currency": "usd"},
            "current_period_start": period_start, "current_period_end": period_end,
        }]},
        "trial_start": trial_start, "trial_end": trial_end, "cancel_at_period_end": cancel_at_period_end,
        "canceled_at": canceled_at, "ended_at": ended_at, "default_payment_method": default_payment_method,
        "created": period_start, "start_date": period_start, "livemode": False,
    }


def invoice_obj(*, inv_id: str, customer: str, sub_id: str | None, status: str, amount_due: int,
                amount_paid: int = 0, period_start: int, period_end: int, created: int,
                paid_at: int | None = None, billing_reason: str = "subscription_cycle") -> dict:
    return {
        "id": inv_id, "object": "invoice", "customer": customer, "status": status, "currency": "usd",
        "amount_due": amount_due, "amount_paid": amount_paid, "amount_remaining": amount_due - amount_paid,
        "billing_reason": billing_reason, "created": created, "due_date": None,
        "hosted_invoice_url": f"http://127.0.0.1:9/invoices/{inv_id}",
        "invoice_pdf": f"http://127.0.0.1:9/invoices/{inv_id}.pdf",
        "period_start": period_start, "period_end": period_end,
        "parent": ({"type": "subscription_details", "subscription_details": {"subscription": sub_id, "metadata": {}}}
                   if sub_id else None),
        "lines": {"object": "list", "data": [{"id": f"il_{inv_id[3:]}", "amount": amount_due,
                                               "period": {"start": period_start, "end": period_end}}]},
        "status_transitions": {"finalized_at": created, "paid_at": paid_at},
        "metadata": {},
    }


def _sim_event_seq(event: dict) -> int:
    """The simulator's ids end in a global sequence number: `evt_<14 hex><seq>`."""
    return int(event["id"].split("_", 1)[1][14:])


def replay_sim_events(client, seen: set[str]) -> list[dict]:
    """POST every simulator event not yet in `seen`, oldest first, signed with the configured
    webhook secret, to the real endpoint (what the simulator's delivery would do, synchronously)."""
    from django.conf import settings

    from billing import stripe_gateway as gw

    events = sorted((e for e in stripe_calls.event_list(limit=100) if e["id"] not in seen), key=_sim_event_seq)
    for event in events:
        response = post_event(client, event, secret=settings.STRIPE_WEBHOOK_SECRET)
        assert response.status_code == 200, (event["type"], response.content)
        seen.add(event["id"])
    return events

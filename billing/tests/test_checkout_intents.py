"""Checkout idempotency from an intent row: committed before the Stripe call, key `checkout:{pk}`,
double clicks reuse the open session, the completion webhook closes it, stuck rows are listed.
Simulator over real HTTP via the SDK; webhooks are the simulator's own events, signed."""
from __future__ import annotations

import datetime as dt
import json

import pytest
from django.conf import settings
from django.utils import timezone

from billing import stripe_gateway as gw
from billing.models import CheckoutIntent
from billing.services.plan_changes import checkout_start
from billing.services.health import checkout_intents_stuck
from organizations.models import Role
from organizations.tests.factories import MembershipFactory

from .stripe_events import replay_sim_events

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def owner(stripe_settings):
    return MembershipFactory(role=Role.OWNER)


def _checkout(client, org, tier="pro"):
    resp = client.post("/api/billing/checkout", data=json.dumps({"orgId": str(org.pk), "planTier": tier}),
                       content_type="application/json")
    return resp.status_code, resp.json()


def test_double_click_reuses_the_open_session_and_webhook_completes_the_intent(client, owner, stripe_settings):
    org = owner.organization
    client.force_login(owner.user)
    status, first = _checkout(client, org)
    assert status == 200 and first["reused"] is False
    intent = CheckoutIntent.objects.get(organization=org)
    assert intent.status == "started" and intent.stripe_checkout_session_id == first["sessionId"]
    assert intent.checkout_url == first["url"] and intent.started_at is not None and intent.trial_days == 7
    assert gw.checkout_session_retrieve(first["sessionId"]).metadata["checkoutIntentId"] == str(intent.pk)

    status, second = _checkout(client, org)  # the double click, a minute later or not
    assert status == 200 and second["reused"] is True
    assert (second["sessionId"], second["url"]) == (first["sessionId"], first["url"])
    assert CheckoutIntent.objects.filter(organization=org).count() == 1

    # A Stripe retry of the same intent (same key) gets the same session back, never a second one.
    base = settings.APP_BASE_URL.rstrip("/")
    again = gw.checkout_session_create(
        mode="subscription", customer_id=org.__class__.objects.get(pk=org.pk).stripe_customer_id,
        price_id=stripe_settings.prices["STRIPE_PRICE_PRO"],
        success_url=f"{base}/settings/billing?checkout=success&session_id={{CHECKOUT_SESSION_ID}}",
        cancel_url=f"{base}/settings/billing?checkout=canceled",
        metadata={"orgId": str(org.pk), "planTier": "pro", "checkoutIntentId": str(intent.pk)},
        trial_period_days=7, idempotency_key=f"checkout:{intent.pk}")
    assert again.id == first["sessionId"]

    stripe_settings.sim.complete_checkout(first["sessionId"], card="")
    replay_sim_events(client, set())
    intent.refresh_from_db()
    assert intent.status == "completed" and intent.open_slot is None and intent.completed_at is not None
    org.refresh_from_db()
    assert org.subscription_tier == "pro"
    status, body = _checkout(client, org)
    assert status == 409 and body["error"]["code"] == "ALREADY_SUBSCRIBED"


def test_other_plan_supersedes_the_open_intent_and_expired_session_closes_it(client, owner, stripe_settings):
    org = owner.organization
    client.force_login(owner.user)
    _, pro = _checkout(client, org, "pro")
    _, starter = _checkout(client, org, "starter")
    assert starter["sessionId"] != pro["sessionId"] and starter["reused"] is False
    rows = {i.plan_tier: i for i in CheckoutIntent.objects.filter(organization=org)}
    assert (rows["pro"].status, rows["pro"].open_slot) == ("expired", None)
    assert (rows["starter"].status, rows["starter"].open_slot) == ("started", True)

    gw.get_client().v1.checkout.sessions.expire(starter["sessionId"])  # Stripe expires it (24 h later)
    replay_sim_events(client, set())
    rows["starter"].refresh_from_db()
    assert rows["starter"].status == "expired"
    _, fresh = _checkout(client, org, "starter")
    assert fresh["sessionId"] not in (pro["sessionId"], starter["sessionId"])


def test_intent_left_started_is_listed_not_reused_and_its_webhook_still_closes_it(client, owner, stripe_settings):
    from billing.services.health import stripe_compare

    org = owner.organization
    now = timezone.now()
    start = checkout_start(organization=org, plan_tier="max", email=None, now=now)
    intent = CheckoutIntent.objects.get(pk=start["intentId"])
    # Crash between Stripe's answer and recording it (cannot be caused from outside): forget the session id.
    CheckoutIntent.objects.filter(pk=intent.pk).update(stripe_checkout_session_id=None, checkout_url="",
                                                       created_at=now - dt.timedelta(hours=1),
                                                       started_at=now - dt.timedelta(hours=1))
    assert [i.pk for i in checkout_intents_stuck(now=now)] == [intent.pk]
    report = stripe_compare(now=now, org_slug=org.slug)
    assert [c["id"] for c in report.stuck_checkouts] == [intent.pk] and report.problems >= 1
    assert report.stuck_checkouts[0]["idempotencyKey"] == f"checkout:{intent.pk}"
    from billing.services.health import health_summary_build

    summary = health_summary_build(now=now)
    assert not summary.healthy and f"key=checkout:{intent.pk}" in summary.body()

    # The user pays on the session anyway (e.g. a link kept elsewhere): the webhook finds the row by metadata.
    stripe_settings.sim.complete_checkout(start["sessionId"])
    replay_sim_events(client, set())
    intent.refresh_from_db()
    assert intent.status == "completed" and intent.stripe_checkout_session_id == start["sessionId"]
    assert list(checkout_intents_stuck(now=now)) == []

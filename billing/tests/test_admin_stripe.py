"""Admin re-sync and reconcile --stripe against the Stripe simulator (real SDK over HTTP)."""
from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from billing import stripe_gateway as gw
from billing.models import Subscription, WebhookEvent
from organizations.models import Role
from organizations.tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def subscribed(client, stripe_settings):
    owner = MembershipFactory(role=Role.OWNER)
    client.force_login(owner.user)
    resp = client.post("/api/billing/checkout", data=json.dumps({"orgId": str(owner.organization_id),
                                                                  "planTier": "pro"}),
                       content_type="application/json")
    assert resp.status_code == 200, resp.content
    session_id = resp.json()["sessionId"]
    stripe_settings.sim.complete_checkout(session_id)
    sub_id = gw.checkout_session_retrieve(session_id).subscription_id
    from billing.services.subscription_sync import subscription_sync

    subscription_sync(stripe_subscription=gw.subscription_retrieve(sub_id), now=timezone.now())
    client.logout()
    return owner.organization, sub_id


def _reconcile_stripe(*args):
    out = io.StringIO()
    try:
        call_command("reconcile", "--stripe", "--json", *args, stdout=out, stderr=io.StringIO())
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, json.loads(out.getvalue())


def test_stripe_drift_is_reported_then_resynced_from_admin(client, subscribed):
    org, sub_id = subscribed
    code, doc = _reconcile_stripe("--org", org.slug)
    assert code == 0 and doc["stripe"]["checkedSubscriptions"] == 1 and doc["stripe"]["mismatches"] == []

    # Changed in Stripe behind our back (the webhook was lost).
    gw.subscription_cancel(subscription_id=sub_id, idempotency_key="test-admin-cancel", at_period_end=True)
    code, doc = _reconcile_stripe("--org", org.slug)
    assert code == 1
    assert [(m["field"], m["local"], m["stripe"]) for m in doc["stripe"]["mismatches"]] == [
        ("cancel_at_period_end", False, True)]

    staff = UserFactory(username="staff-sync@example.test", is_staff=True, is_superuser=True)
    client.force_login(staff)
    sub = Subscription.objects.get(stripe_subscription_id=sub_id)
    resp = client.post(reverse("admin:billing_subscription_changelist"),
                       {"action": "resync_from_stripe", "_selected_action": [sub.pk]}, follow=True)
    assert resp.status_code == 200 and b"Re-synced from Stripe: 1 done" in resp.content
    sub.refresh_from_db()
    assert sub.cancel_at_period_end is True
    code, doc = _reconcile_stripe("--org", org.slug)
    assert code == 0 and doc["stripe"]["mismatches"] == []


def test_reprocess_action_runs_a_failed_event_again(client, subscribed, now):
    org, sub_id = subscribed
    obj = json.loads(json.dumps(gw.subscription_retrieve(sub_id).obj, default=str))  # as delivered: plain JSON
    event = WebhookEvent.objects.create(
        stripe_event_id="evt_admin_reprocess", type="customer.subscription.updated", event_created=1,
        payload={"id": "evt_admin_reprocess", "type": "customer.subscription.updated", "created": 1,
                 "data": {"object": obj}}, status="failed", error="Timeout", received_at=now)
    staff = UserFactory(username="staff-rp@example.test", is_staff=True, is_superuser=True)
    client.force_login(staff)
    resp = client.post(reverse("admin:billing_webhookevent_changelist"),
                       {"action": "reprocess", "_selected_action": [event.pk]}, follow=True)
    assert resp.status_code == 200
    event.refresh_from_db()
    assert event.status == "processed", event.error

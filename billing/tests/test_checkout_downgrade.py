"""Downgrade at period end (DESIGN: "Downgrade: at period end"), against the simulator over real HTTP
with the simulator's own signed events posted to the real webhook endpoint (MariaDB, eager Celery).

The design: Stripe's price is switched at once with proration_behavior=none (nothing charged or
refunded now; the next renewal invoices the lower price); subscription_sync keeps the higher plan's
allowances until the period ends (pending_plan_tier) and applies the lower plan with the new period."""
from __future__ import annotations


import pytest
from django.db import transaction
from django.utils import timezone

from billing.models import CreditBalance, Invoice, Subscription, WebhookEvent
from billing.services.balance import balance_charge
from organizations.models import Role
from organizations.tests.factories import MembershipFactory
from tests import stripe_calls

from .paid_org import DAY, owner, post_json, stripe_price, subscribe  # noqa: F401 - owner is a fixture
from .stripe_events import post_event, replay_sim_events

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]



def test_downgrade_keeps_allowances_until_renewal_then_bills_the_lower_price(client, owner, stripe_settings):
    sim, prices, seen = stripe_settings.sim, stripe_settings.prices, set()
    org = owner.organization
    client.force_login(owner.user)
    sub_id = subscribe(client, owner, sim, seen)
    org.refresh_from_db()
    assert org.subscription_tier == "pro"
    with transaction.atomic():
        balance_charge(organization_id=org.pk, tier="small", now=timezone.now())
    invoices_before = len(stripe_calls.invoice_list(customer_id=org.stripe_customer_id))

    status, body = post_json(client, "/api/billing/subscription/downgrade", {"orgId": str(org.pk), "plan": "starter"})
    assert status == 200, body
    sub = Subscription.objects.get(stripe_subscription_id=sub_id)
    assert body["subscription"]["planTier"] == "pro" and body["subscription"]["pendingPlanTier"] == "starter"
    assert body["subscription"]["pendingPlanAt"] == sub.current_period_end.isoformat()
    assert stripe_price(sub_id) == prices["STRIPE_PRICE_STARTER"]  # Stripe bills starter from the next period
    assert len(stripe_calls.invoice_list(customer_id=org.stripe_customer_id)) == invoices_before  # nothing charged now

    # The webhooks for that change (and every earlier event again) change nothing: still Pro until the end.
    replay_sim_events(client, seen)
    for event_id in list(seen):
        seen.discard(event_id)
    replay_sim_events(client, seen)
    org.refresh_from_db()
    sub.refresh_from_db()
    bal = CreditBalance.objects.get(organization_id=org.pk)
    assert (org.subscription_tier, sub.plan_tier, sub.pending_plan_tier) == ("pro", "pro", "starter")
    assert bal.plan_tier == "pro" and bal.used_small == 1  # allowances and used counts unchanged
    assert not WebhookEvent.objects.filter(status__in=["failed", "pending"]).exists()

    body = client.get(f"/api/billing/subscription/status?orgId={org.pk}").json()
    assert body["subscription"]["pendingPlanTier"] == "starter"
    page = client.get(f"/settings/billing?org={org.slug}").content.decode()
    assert f"Changes to Starter on {sub.current_period_end:%b} " in page
    assert 'data-testid="pending-plan"' in page and 'data-action="keep"' in page

    # Renewal: the org is on Starter, counters reset, the renewal invoice is Starter's price.
    sim.advance_clock(32 * DAY)
    events = replay_sim_events(client, seen)
    assert "invoice.paid" in [e["type"] for e in events]
    org.refresh_from_db()
    sub.refresh_from_db()
    bal = CreditBalance.objects.get(organization_id=org.pk)
    assert (org.subscription_tier, sub.plan_tier, sub.pending_plan_tier) == ("starter", "starter", "")
    assert bal.plan_tier == "starter" and bal.used_small == 0 and bal.period_start == sub.current_period_start
    renewal = Invoice.objects.filter(organization=org).order_by("-created_at", "-id").first()
    assert renewal.amount_due_cents == 999 and renewal.status == "paid"
    page = client.get(f"/settings/billing?org={org.slug}").content.decode()
    assert "Changes to" not in page

    # An older event delivered late (the downgrade's own update) never undoes the renewal.
    old = next(e for e in stripe_calls.event_list(types=["customer.subscription.updated"], limit=100)
               if (e["data"].get("previous_attributes") or {}).get("items")
               and e["data"]["object"]["items"]["data"][0]["current_period_start"] < int(sub.current_period_start.timestamp()))
    seen.discard(old["id"])
    WebhookEvent.objects.filter(stripe_event_id=old["id"]).delete()  # as if it had never arrived
    assert post_event(client, old, secret=stripe_settings_secret()).status_code == 200
    sub.refresh_from_db()
    org.refresh_from_db()
    assert (org.subscription_tier, sub.plan_tier, sub.pending_plan_tier) == ("starter", "starter", "")
    assert CreditBalance.objects.get(organization_id=org.pk).period_start == sub.current_period_start


def stripe_settings_secret() -> str:
    from django.conf import settings

    return settings.STRIPE_WEBHOOK_SECRET


def test_keep_plan_then_downgrade_again_then_upgrade_prorates_from_the_paid_plan(client, owner, stripe_settings):
    sim, prices, seen = stripe_settings.sim, stripe_settings.prices, set()
    org = owner.organization
    client.force_login(owner.user)
    sub_id = subscribe(client, owner, sim, seen)

    # Plan picker: the lower plan's button posts to the downgrade endpoint (a form post).
    page = client.get(f"/billing?org={org.slug}").content.decode()
    assert 'action="/api/billing/subscription/downgrade"' in page and "Downgrade to Starter" in page
    resp = client.post("/api/billing/subscription/downgrade", {"org": org.slug, "plan": "starter"})
    assert resp.status_code == 302 and resp["Location"] == f"/settings/billing?org={org.slug}"
    assert Subscription.objects.get(stripe_subscription_id=sub_id).pending_plan_tier == "starter"
    page = client.get(f"/billing?org={org.slug}").content.decode()
    assert "Keep Pro" in page and 'action="/api/billing/subscription/downgrade/cancel"' in page

    # Keep the plan (form post from the dashboard): Stripe back on Pro, nothing pending, nothing charged.
    invoices_before = len(stripe_calls.invoice_list(customer_id=org.stripe_customer_id))
    resp = client.post("/api/billing/subscription/downgrade/cancel", {"org": org.slug})
    assert resp.status_code == 302
    sub = Subscription.objects.get(stripe_subscription_id=sub_id)
    assert (sub.plan_tier, sub.pending_plan_tier) == ("pro", "") and stripe_price(sub_id) == prices["STRIPE_PRICE_PRO"]
    assert len(stripe_calls.invoice_list(customer_id=org.stripe_customer_id)) == invoices_before

    # The same downgrade again is a new Stripe request (not a replay of the first answer).
    status, body = post_json(client, "/api/billing/subscription/downgrade", {"orgId": str(org.pk), "plan": "starter"})
    assert status == 200 and body["subscription"]["pendingPlanTier"] == "starter"
    assert stripe_price(sub_id) == prices["STRIPE_PRICE_STARTER"]
    # Double click: already scheduled, same answer.
    status, again = post_json(client, "/api/billing/subscription/downgrade", {"orgId": str(org.pk), "plan": "starter"})
    assert status == 200 and again["subscription"]["pendingPlanTier"] == "starter"

    # Upgrading to Max while the downgrade is pending: prorated from Pro (what was paid), at once.
    status, body = post_json(client, "/api/billing/subscription/upgrade", {"orgId": str(org.pk), "planTier": "max"})
    assert status == 200 and body["subscription"]["planTier"] == "max" and body["subscription"]["pendingPlanTier"] is None
    org.refresh_from_db()
    assert org.subscription_tier == "max"
    upgrade_invoice = stripe_calls.invoice_list(customer_id=org.stripe_customer_id)[0]
    assert upgrade_invoice["billing_reason"] == "subscription_update" and upgrade_invoice["status"] == "paid"
    descriptions = [line["description"] for line in upgrade_invoice["lines"]["data"]]
    assert any("Unused time on Pro" in d for d in descriptions), descriptions
    replay_sim_events(client, seen)
    sub.refresh_from_db()
    assert (sub.plan_tier, sub.pending_plan_tier) == ("max", "")
    assert not WebhookEvent.objects.filter(status__in=["failed", "pending"]).exists()


def test_downgrade_refusals(client, owner, stripe_settings):
    sim, seen = stripe_settings.sim, set()
    org = owner.organization
    client.force_login(owner.user)
    status, body = post_json(client, "/api/billing/subscription/downgrade", {"orgId": str(org.pk), "plan": "starter"})
    assert status == 409 and body["error"]["code"] == "NO_SUBSCRIPTION"
    subscribe(client, owner, sim, seen, tier="starter")
    status, body = post_json(client, "/api/billing/subscription/downgrade", {"orgId": str(org.pk), "plan": "max"})
    assert status == 400 and body["error"]["code"] == "NOT_A_DOWNGRADE"
    status, body = post_json(client, "/api/billing/subscription/downgrade", {"orgId": str(org.pk), "plan": "gold"})
    assert status == 400 and body["error"]["code"] == "INVALID_PLAN"
    member = MembershipFactory(organization=org, role=Role.MEMBER)
    client.force_login(member.user)
    status, body = post_json(client, "/api/billing/subscription/downgrade", {"orgId": str(org.pk), "plan": "starter"})
    assert status == 403

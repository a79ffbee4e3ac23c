"""Money edges of plan changes at Stripe's boundary (issue "Money edges", items 2-4), against the
simulator over real HTTP with its own signed events posted to the real webhook endpoint.

- An upgrade is only granted once Stripe has been paid for it (`payment_behavior=pending_if_incomplete`):
  a declined or 3-D-Secure upgrade leaves plan, allowances and status unchanged and says why.
- The *added* allowance of an upgrade is prorated by the time left in the period (rounded up).
- A past-due org cannot upgrade.
"""
from __future__ import annotations

import datetime as dt
import json
import urllib.parse
import urllib.request

import pytest
from django.utils import timezone

from billing import stripe_gateway as gw
from billing.models import CreditBalance, Invoice, Subscription
from billing.plans import PLANS, TIERS
from organizations.models import Role
from usage.services_reconcile import reconcile_orgs
from organizations.tests.factories import MembershipFactory

from .webhook_support import replay_sim_events

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

DAY = 86400
DECLINES_ON_CHARGE = "4000000000000341"   # attaches fine, every charge is declined
NEEDS_AUTH_OFF_SESSION = "4000002760003184"  # off-session charges need 3-D Secure


@pytest.fixture
def owner(stripe_settings):
    membership = MembershipFactory(role=Role.OWNER)
    org = membership.organization
    org.trial_ends_at = timezone.now() - dt.timedelta(days=90)  # trial used: paid from day one
    org.save(update_fields=["trial_ends_at"])
    return membership


def _post(client, path, body):
    resp = client.post(path, data=json.dumps(body), content_type="application/json")
    return resp.status_code, resp.json()


def _post_form(url: str, fields: dict) -> int:
    req = urllib.request.Request(url, data=urllib.parse.urlencode(fields).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _subscribe(client, owner, sim, seen, tier="starter"):
    status, body = _post(client, "/api/billing/checkout", {"orgId": str(owner.organization_id), "planTier": tier})
    assert status == 200, body
    cs = sim.complete_checkout(body["sessionId"], card="4242424242424242")
    replay_sim_events(client, seen)
    return cs["subscription"]


def _replace_card(org, card: str) -> None:
    """The customer puts another card on file in the billing portal (default of customer and subscription)."""
    org.refresh_from_db()
    portal = gw.billing_portal_session_create(customer_id=org.stripe_customer_id, return_url="http://app.test/",
                                              idempotency_key=f"t-portal-{card}")
    assert _post_form(f"{portal['url']}/card", {"card_number": card}) == 200


def _included(org) -> dict[str, int]:
    balance = CreditBalance.objects.get(organization=org)
    return {t: balance.included(t) for t in TIERS}


def _stripe_price(sub_id: str) -> str:
    return gw.subscription_retrieve(sub_id).obj["items"]["data"][0]["price"]["id"]


def test_declined_upgrade_changes_nothing_says_why_and_is_never_dunned(client, owner, stripe_settings):
    sim, prices, seen = stripe_settings.sim, stripe_settings.prices, set()
    org = owner.organization
    client.force_login(owner.user)
    sub_id = _subscribe(client, owner, sim, seen)
    _replace_card(org, DECLINES_ON_CHARGE)
    replay_sim_events(client, seen)

    status, body = _post(client, "/api/billing/subscription/upgrade", {"orgId": str(org.pk), "planTier": "max"})
    assert status == 402, body
    assert body["error"]["code"] == "CARD_DECLINED" and "declined" in body["error"]["message"].lower()
    assert body["planTier"] == "starter" and body["hostedInvoiceUrl"]
    replay_sim_events(client, seen)  # subscription.updated with pending_update, invoice.payment_failed, ...

    # Stripe kept the old price (pending update); so do we: plan, allowances and status unchanged.
    remote = gw.subscription_retrieve(sub_id).obj
    assert _stripe_price(sub_id) == prices["STRIPE_PRICE_STARTER"] and remote["status"] == "active"
    assert remote["pending_update"]["subscription_items"][0]["price"]["id"] == prices["STRIPE_PRICE_MAX"]
    org.refresh_from_db()
    assert (org.subscription_tier, org.subscription_status) == ("starter", "active")
    assert _included(org) == PLANS["starter"].included
    sub = Subscription.objects.get(stripe_subscription_id=sub_id)
    assert sub.plan_tier == "starter" and sub.status == "active" and sub.grace_period_ends_at is None
    assert sub.pending_update_plan_tier == "max"
    unpaid = Invoice.objects.get(organization=org, status="open")
    assert unpaid.billing_reason == "subscription_update" and unpaid.amount_due_cents > 0
    page = client.get("/settings/billing").content.decode()
    assert 'data-banner="upgrade-pending"' in page and unpaid.hosted_invoice_url in page

    # The pending update expires (Stripe: at most 23 h): the invoice is voided, the starter plan stays.
    sim.advance_clock(DAY)
    replay_sim_events(client, seen)
    sub.refresh_from_db()
    unpaid.refresh_from_db()
    assert unpaid.status == "void" and sub.pending_update_plan_tier == "" and sub.status == "active"
    org.refresh_from_db()
    assert (org.subscription_tier, org.subscription_status) == ("starter", "active")
    assert 'data-banner="upgrade-pending"' not in client.get("/settings/billing").content.decode()


def test_three_d_secure_upgrade_waits_for_payment_then_grants_prorated_allowance(client, owner, stripe_settings):
    sim, prices, seen = stripe_settings.sim, stripe_settings.prices, set()
    org = owner.organization
    client.force_login(owner.user)
    sub_id = _subscribe(client, owner, sim, seen)
    _replace_card(org, NEEDS_AUTH_OFF_SESSION)
    replay_sim_events(client, seen)
    sim.advance_clock(10 * DAY)  # a third of a 30/31-day period gone

    status, body = _post(client, "/api/billing/subscription/upgrade", {"orgId": str(org.pk), "planTier": "pro"})
    assert status == 402 and body["error"]["code"] == "AUTHENTICATION_REQUIRED", body
    finish_url = body["hostedInvoiceUrl"]
    assert finish_url.startswith(sim.base_url + "/invoice/")
    replay_sim_events(client, seen)
    org.refresh_from_db()
    assert org.subscription_tier == "starter" and _included(org) == PLANS["starter"].included

    # The holder authenticates on the hosted invoice page (on session): Stripe applies the pending update.
    assert _post_form(finish_url + "/pay", {"card_number": NEEDS_AUTH_OFF_SESSION}) == 200
    replay_sim_events(client, seen)
    assert _stripe_price(sub_id) == prices["STRIPE_PRICE_PRO"]
    org.refresh_from_db()
    assert (org.subscription_tier, org.subscription_status) == ("pro", "active")
    sub = Subscription.objects.get(stripe_subscription_id=sub_id)
    start, end = sub.current_period_start, sub.current_period_end
    included = _included(org)
    # Prorated from when the upgrade was asked for (what Stripe charged for), not from the payment.
    for tier in TIERS:
        added = PLANS["pro"].included[tier] - PLANS["starter"].included[tier]
        assert PLANS["starter"].included[tier] < included[tier] < PLANS["pro"].included[tier]
        share = included[tier] - PLANS["starter"].included[tier]
        assert abs(share - added * 2 / 3) <= added * 0.05 + 1, (tier, share, added)
    assert start < end


def test_upgrade_on_the_last_day_grants_only_the_last_day_of_added_allowance(client, owner, stripe_settings):
    sim, seen = stripe_settings.sim, set()
    org = owner.organization
    client.force_login(owner.user)
    sub_id = _subscribe(client, owner, sim, seen)
    sub = Subscription.objects.get(stripe_subscription_id=sub_id)
    period = int((sub.current_period_end - sub.current_period_start).total_seconds())
    sim.advance_clock(period - DAY)  # one day left

    status, body = _post(client, "/api/billing/subscription/upgrade", {"orgId": str(org.pk), "planTier": "max"})
    assert status == 200, body
    assert body["subscription"]["planTier"] == "max"
    replay_sim_events(client, seen)
    included = _included(org)
    for tier in TIERS:
        added = PLANS["max"].included[tier] - PLANS["starter"].included[tier]
        # ceil(added * left / period), left is one day minus the seconds the test took
        assert included[tier] - PLANS["starter"].included[tier] <= -(-added * DAY // period), tier
        assert included[tier] > PLANS["starter"].included[tier], tier
    # 49,500 credits of max allowance would be a month of max for ~$16: not any more.
    assert included["small"] < 1000 and included["xl"] < 50
    # reconcile expects the prorated allowance (recorded with the upgrade), not the plan's full one
    assert reconcile_orgs(now=timezone.now(), org_slug=org.slug).drifts == []

    # The next period brings the full max allowance.
    sim.advance_clock(2 * DAY)
    replay_sim_events(client, seen)
    assert _included(org) == PLANS["max"].included


def test_past_due_org_cannot_upgrade(client, owner, stripe_settings):
    sim, seen = stripe_settings.sim, set()
    org = owner.organization
    client.force_login(owner.user)
    sub_id = _subscribe(client, owner, sim, seen)
    _replace_card(org, DECLINES_ON_CHARGE)
    sub = Subscription.objects.get(stripe_subscription_id=sub_id)
    sim.advance_clock(int((sub.current_period_end - sub.current_period_start).total_seconds()) + 60)  # renewal fails
    replay_sim_events(client, seen)
    org.refresh_from_db()
    assert org.subscription_status == "past_due"
    invoices_before = len(gw.invoice_list(customer_id=org.stripe_customer_id))

    status, body = _post(client, "/api/billing/subscription/upgrade", {"orgId": str(org.pk), "planTier": "max"})
    assert status == 409 and body["error"]["code"] == "SUBSCRIPTION_PAST_DUE", body
    assert len(gw.invoice_list(customer_id=org.stripe_customer_id)) == invoices_before  # Stripe not called
    assert _stripe_price(sub_id) == stripe_settings.prices["STRIPE_PRICE_STARTER"]
    org.refresh_from_db()
    assert org.subscription_tier == "starter"


def test_dashboard_form_upgrade_needing_3ds_sends_the_holder_to_the_invoice_page(client, owner, stripe_settings):
    sim, seen = stripe_settings.sim, set()
    org = owner.organization
    client.force_login(owner.user)
    _subscribe(client, owner, sim, seen)
    _replace_card(org, NEEDS_AUTH_OFF_SESSION)
    replay_sim_events(client, seen)
    resp = client.post("/api/billing/subscription/upgrade", {"orgId": str(org.pk), "planTier": "pro"})
    assert resp.status_code == 302 and resp["Location"].startswith(sim.base_url + "/invoice/")
    org.refresh_from_db()
    assert org.subscription_tier == "starter"

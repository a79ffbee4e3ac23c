"""Money edges of plan changes at Stripe's boundary, against the
simulator over real HTTP with its own signed events posted to the real webhook endpoint.

- An upgrade is only granted once Stripe has been paid for it (`payment_behavior=pending_if_incomplete`):
  a declined or 3-D-Secure upgrade leaves plan, allowances and status unchanged and says why.
- The *added* allowance of an upgrade is prorated by the time left in the period (rounded up).
- A past-due org cannot upgrade.
"""
from __future__ import annotations

import pytest
from django.utils import timezone

from billing import stripe_gateway as gw
from billing.models import CreditBalance, Invoice, Subscription
from billing.plans import PLANS, TIERS
from tests import stripe_calls
from usage.services_reconcile import reconcile_orgs

from .paid_org import DAY, owner, post_form, post_json, replace_card, stripe_price, subscribe  # noqa: F401 - owner is a fixture
from .stripe_events import replay_sim_events

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

DECLINES_ON_CHARGE = "4000000000000341"   # attaches fine, every charge is declined
NEEDS_AUTH_OFF_SESSION = "4000002760003184"  # off-session charges need 3-D Secure


@pytest.fixture
def starter_with(client, owner, stripe_settings):
    """A logged-in owner on Starter whose card on file is then replaced by `card`; (org, sub id, seen)."""
    def make(card: str | None = None):
        seen: set = set()
        client.force_login(owner.user)
        sub_id = subscribe(client, owner, stripe_settings.sim, seen, tier="starter")
        if card:
            replace_card(owner.organization, card)
            replay_sim_events(client, seen)
        return owner.organization, sub_id, seen
    return make


def _included(org) -> dict[str, int]:
    balance = CreditBalance.objects.get(organization=org)
    return {t: balance.included(t) for t in TIERS}



def test_declined_upgrade_changes_nothing_says_why_and_is_never_dunned(client, starter_with, stripe_settings):
    sim, prices = stripe_settings.sim, stripe_settings.prices
    org, sub_id, seen = starter_with(DECLINES_ON_CHARGE)

    status, body = post_json(client, "/api/billing/subscription/upgrade", {"orgId": str(org.pk), "planTier": "max"})
    assert status == 402, body
    assert body["error"]["code"] == "CARD_DECLINED" and "declined" in body["error"]["message"].lower()
    assert body["planTier"] == "starter" and body["hostedInvoiceUrl"]
    replay_sim_events(client, seen)  # subscription.updated with pending_update, invoice.payment_failed, ...

    # Stripe kept the old price (pending update); so do we: plan, allowances and status unchanged.
    remote = gw.subscription_retrieve(sub_id).obj
    assert stripe_price(sub_id) == prices["STRIPE_PRICE_STARTER"] and remote["status"] == "active"
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


def test_three_d_secure_upgrade_waits_for_payment_then_grants_prorated_allowance(client, starter_with,
                                                                                  stripe_settings):
    sim, prices = stripe_settings.sim, stripe_settings.prices
    org, sub_id, seen = starter_with(NEEDS_AUTH_OFF_SESSION)
    sim.advance_clock(10 * DAY)  # a third of a 30/31-day period gone

    status, body = post_json(client, "/api/billing/subscription/upgrade", {"orgId": str(org.pk), "planTier": "pro"})
    assert status == 402 and body["error"]["code"] == "AUTHENTICATION_REQUIRED", body
    finish_url = body["hostedInvoiceUrl"]
    assert finish_url.startswith(sim.base_url + "/invoice/")
    replay_sim_events(client, seen)
    org.refresh_from_db()
    assert org.subscription_tier == "starter" and _included(org) == PLANS["starter"].included

    # The holder authenticates on the hosted invoice page (on session): Stripe applies the pending update.
    assert post_form(finish_url + "/pay", {"card_number": NEEDS_AUTH_OFF_SESSION}) == 200
    replay_sim_events(client, seen)
    assert stripe_price(sub_id) == prices["STRIPE_PRICE_PRO"]
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


def test_upgrade_on_the_last_day_grants_only_the_last_day_of_added_allowance(client, starter_with, stripe_settings):
    sim = stripe_settings.sim
    org, sub_id, seen = starter_with()
    sub = Subscription.objects.get(stripe_subscription_id=sub_id)
    period = int((sub.current_period_end - sub.current_period_start).total_seconds())
    sim.advance_clock(period - DAY)  # one day left

    status, body = post_json(client, "/api/billing/subscription/upgrade", {"orgId": str(org.pk), "planTier": "max"})
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


def test_past_due_org_cannot_upgrade(client, starter_with, stripe_settings):
    sim = stripe_settings.sim
    org, sub_id, seen = starter_with(DECLINES_ON_CHARGE)
    sub = Subscription.objects.get(stripe_subscription_id=sub_id)
    sim.advance_clock(int((sub.current_period_end - sub.current_period_start).total_seconds()) + 60)  # renewal fails
    replay_sim_events(client, seen)
    org.refresh_from_db()
    assert org.subscription_status == "past_due"
    invoices_before = len(stripe_calls.invoice_list(customer_id=org.stripe_customer_id))

    status, body = post_json(client, "/api/billing/subscription/upgrade", {"orgId": str(org.pk), "planTier": "max"})
    assert status == 409 and body["error"]["code"] == "SUBSCRIPTION_PAST_DUE", body
    assert len(stripe_calls.invoice_list(customer_id=org.stripe_customer_id)) == invoices_before  # Stripe not called
    assert stripe_price(sub_id) == stripe_settings.prices["STRIPE_PRICE_STARTER"]
    org.refresh_from_db()
    assert org.subscription_tier == "starter"


def test_dashboard_form_upgrade_needing_3ds_sends_the_holder_to_the_invoice_page(client, starter_with,
                                                                                   stripe_settings):
    sim = stripe_settings.sim
    org, _, seen = starter_with(NEEDS_AUTH_OFF_SESSION)
    resp = client.post("/api/billing/subscription/upgrade", {"orgId": str(org.pk), "planTier": "pro"})
    assert resp.status_code == 302 and resp["Location"].startswith(sim.base_url + "/invoice/")
    org.refresh_from_db()
    assert org.subscription_tier == "starter"


def test_declined_upgrade_keeps_a_scheduled_cancel_and_says_so(client, starter_with, stripe_settings):
    org, sub_id, seen = starter_with(DECLINES_ON_CHARGE)
    status, body = post_json(client, "/api/billing/subscription/cancel", {"orgId": str(org.pk)})
    assert status == 200, body
    replay_sim_events(client, seen)
    status, body = post_json(client, "/api/billing/subscription/upgrade", {"orgId": str(org.pk), "planTier": "pro"})
    assert status == 402 and body["error"]["code"] == "CARD_DECLINED", body
    assert body["cancelAtPeriodEnd"] is True and "still ends on" in body["error"]["message"]
    replay_sim_events(client, seen)
    assert gw.subscription_retrieve(sub_id).obj["cancel_at_period_end"] is True  # the cancel was not undone
    assert Subscription.objects.get(stripe_subscription_id=sub_id).cancel_at_period_end is True


def test_asking_again_for_a_waiting_upgrade_does_not_invoice_it_twice(client, starter_with, stripe_settings):
    org, sub_id, seen = starter_with(NEEDS_AUTH_OFF_SESSION)
    status, first = post_json(client, "/api/billing/subscription/upgrade", {"orgId": str(org.pk), "planTier": "pro"})
    assert status == 402, first
    replay_sim_events(client, seen)
    invoices = len(stripe_calls.invoice_list(customer_id=org.stripe_customer_id))
    status, again = post_json(client, "/api/billing/subscription/upgrade", {"orgId": str(org.pk), "planTier": "pro"})
    assert status == 409 and again["error"]["code"] == "UPGRADE_PENDING", again
    assert again["hostedInvoiceUrl"] == first["hostedInvoiceUrl"]
    assert len(stripe_calls.invoice_list(customer_id=org.stripe_customer_id)) == invoices


def test_a_replayed_stripe_answer_is_read_afresh_not_taken_as_the_newest_state(starter_with, stripe_settings):
    org, sub_id, _ = starter_with()
    first = gw.subscription_cancel(subscription_id=sub_id, at_period_end=True, idempotency_key="t-replay-cancel")
    assert first.obj["cancel_at_period_end"] is True
    gw.subscription_resume(subscription_id=sub_id, idempotency_key="t-replay-resume")
    # The same key again: Stripe replays the first body (cancel_at_period_end: true), dated now.
    again = gw.subscription_cancel(subscription_id=sub_id, at_period_end=True, idempotency_key="t-replay-cancel")
    assert again.obj["cancel_at_period_end"] is False and again.as_of >= first.as_of

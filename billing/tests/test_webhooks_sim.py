"""Webhooks with the simulator's own events (current API shapes, signed with its secret), posted
to the real endpoint; handlers read back from the simulator through the real gateway.
Transactional: processing runs after the commit, as in production (eager Celery)."""
from __future__ import annotations

import datetime as dt

import pytest
from django.core import mail
from django.db import transaction
from django.utils import timezone

from billing import stripe_gateway as gw
from billing.models import CreditBalance, Invoice, Subscription, WebhookEvent
from billing.services.balance import balance_charge
from billing.services.plan_changes import checkout_start
from organizations.tests.factories import MembershipFactory, OrganizationFactory

from .stripe_events import replay_sim_events

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def org():
    org = OrganizationFactory()
    MembershipFactory(organization=org)
    return org


def _subscribe(org, sim, *, tier="pro", card="4242424242424242") -> str:
    start = checkout_start(organization=org, plan_tier=tier, email="owner@example.test", now=timezone.now())
    cs = sim.complete_checkout(start["sessionId"], card=card)
    return cs["subscription"]


def test_trial_checkout_then_trial_end_renewal(org, stripe_settings, client):
    sim, seen = stripe_settings.sim, set()
    sub_id = _subscribe(org, sim)
    events = replay_sim_events(client, seen)
    assert "checkout.session.completed" in [e["type"] for e in events]
    org.refresh_from_db()
    assert (org.subscription_tier, org.subscription_status) == ("pro", "trialing") and org.trial_ends_at
    sub = Subscription.objects.get(stripe_subscription_id=sub_id)
    assert sub.organization_id == org.pk and sub.status == "trialing"
    assert not WebhookEvent.objects.filter(status__in=["failed", "pending"]).exists()
    # every event again: duplicates, nothing changes
    for event_id in list(seen):
        seen.discard(event_id)
    assert {e["id"] for e in replay_sim_events(client, seen)} == {e["id"] for e in events}
    assert WebhookEvent.objects.count() == len(events)

    with transaction.atomic():
        balance_charge(organization_id=org.pk, tier="small", now=timezone.now())
    trial_period_start = CreditBalance.objects.get(organization_id=org.pk).period_start
    sim.advance_clock(7 * 86400 + 1)  # trial ends: first paid invoice, a new period
    replay_sim_events(client, seen)
    org.refresh_from_db()
    sub.refresh_from_db()
    bal = CreditBalance.objects.get(organization_id=org.pk)
    assert (org.subscription_status, sub.status) == ("active", "active")
    assert bal.used_small == 0 and bal.period_start > trial_period_start
    assert bal.period_start == sub.current_period_start
    paid = Invoice.objects.get(organization=org, amount_due_cents=9900)
    assert paid.status == "paid" and paid.subscription_id == sub.pk and paid.hosted_invoice_url
    assert any("$99.00" in m.body for m in mail.outbox)  # receipt
    assert not WebhookEvent.objects.filter(status__in=["failed", "pending"]).exists()


def test_trial_without_card_ends_on_free_with_emails(org, stripe_settings, client):
    sim, seen = stripe_settings.sim, set()
    sub_id = _subscribe(org, sim, tier="starter", card="")
    replay_sim_events(client, seen)
    assert Subscription.objects.get(stripe_subscription_id=sub_id).status == "trialing"
    sim.advance_clock(5 * 86400)
    types = [e["type"] for e in replay_sim_events(client, seen)]
    assert "customer.subscription.trial_will_end" in types
    assert len(mail.outbox) == 1 and "trial" in mail.outbox[0].subject.lower()
    sim.advance_clock(2 * 86400 + 60)
    replay_sim_events(client, seen)
    org.refresh_from_db()
    assert (org.subscription_tier, org.subscription_status) == ("free", "active")
    assert Subscription.objects.get(stripe_subscription_id=sub_id).status == "canceled"
    assert len(mail.outbox) == 2
    assert CreditBalance.objects.get(organization_id=org.pk).plan_tier == "free"


def test_missed_trial_end_is_resolved_by_the_dunning_pass(org, stripe_settings, client):
    from billing.services.dunning import dunning_enforce

    sim, seen = stripe_settings.sim, set()
    sub_id = _subscribe(org, sim, tier="pro", card="")
    replay_sim_events(client, seen)
    sim.advance_clock(7 * 86400 + 60)  # the sim cancels the trial; we never hear about it
    sim_now = dt.datetime.fromtimestamp(sim.now(), tz=dt.timezone.utc)
    result = dunning_enforce(now=sim_now + dt.timedelta(hours=2))
    assert result.trials_resolved == [sub_id] and result.errors == []
    org.refresh_from_db()
    assert org.subscription_tier == "free"
    assert gw.subscription_retrieve(sub_id).obj["status"] == "canceled"


def test_missed_renewal_is_resynced_by_the_dunning_pass(org, stripe_settings, client):
    """A paid period ends and the renewal's webhooks never reach us: the dunning pass re-reads the
    subscription from Stripe, so the org gets its new period (usage reset) instead of spending the
    old period's allowance."""
    from billing.services.dunning import dunning_enforce

    sim, seen = stripe_settings.sim, set()
    sub_id = _subscribe(org, sim, tier="starter")
    sim.advance_clock(7 * 86400 + 60)  # trial ends with a card: active, first paid period
    replay_sim_events(client, seen)
    sub = Subscription.objects.get(stripe_subscription_id=sub_id)
    assert sub.status == "active"
    with transaction.atomic():
        balance_charge(organization_id=org.pk, tier="small", now=timezone.now())
    paid_period_start = CreditBalance.objects.get(organization_id=org.pk).period_start
    assert CreditBalance.objects.get(organization_id=org.pk).used_small == 1

    # Renewal at Stripe (its events are never delivered), at the period's real end: a month is 28 to
    # 31 days depending on today's date, so the test steps relative to it, not by a fixed 31 days.
    period_end = sub.current_period_end
    sim.advance_clock(int((period_end - dt.datetime.fromtimestamp(sim.now(), tz=dt.timezone.utc)).total_seconds()) + 60)
    assert dunning_enforce(now=period_end + dt.timedelta(minutes=59)).renewals_resynced == []  # not overdue yet
    sim_now = dt.datetime.fromtimestamp(sim.now(), tz=dt.timezone.utc)
    result = dunning_enforce(now=sim_now + dt.timedelta(hours=2))
    assert result.renewals_resynced == [sub_id] and result.errors == []
    sub.refresh_from_db()
    balance = CreditBalance.objects.get(organization_id=org.pk)
    assert balance.period_start > paid_period_start and balance.period_start == sub.current_period_start
    assert (balance.used_small, balance.plan_tier) == (0, "starter")
    assert dunning_enforce(now=sim_now + dt.timedelta(hours=3)).renewals_resynced == []  # idempotent

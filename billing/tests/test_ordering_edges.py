"""Periods and plan state never move backwards, and a downgrade to
Free keeps the org's monthly anchor (item 11). Signed events through the real webhook endpoint and
fresh reads (what the gateway returns: the object and Stripe's time of the answer), MariaDB.

One ordering rule per object stream: subscription events and fresh reads advance the subscription's
mark; invoice events advance the invoice stream's own (dunning) mark.
"""
from __future__ import annotations

import datetime as dt
import time

import pytest

from billing.models import CreditBalance, Subscription
from billing.plans import PLANS
from billing.services.balance import balance_charge, balance_set_plan, free_period
from billing.services.subscription_sync import subscription_sync
from billing.stripe_gateway import SubscriptionSnapshot

from .stripe_events import (  # noqa: F401 - fixtures are used by name
    DAY,
    deliver,
    hooks_stripe_settings,
    invoice_obj,
    make_event,
    org,
    subscription_obj,
    uid,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("hooks_stripe_settings")]


def _utc(ts: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc)


def _sub(org, *, sub_id, period_start, tier="pro", **kw):
    kw.setdefault("period_end", period_start + 30 * DAY)
    return subscription_obj(sub_id=sub_id, customer=org.stripe_customer_id, org=org, tier=tier,
                            period_start=period_start, **kw)


def _charge(org, n, now):
    for _ in range(n):
        balance_charge(organization_id=org.pk, tier="small", now=now)


def test_a_delayed_older_event_after_a_fresh_read_never_moves_the_period_back(org, deliver, now):
    t0, sub_id = int(time.time()) - 40 * DAY, uid("sub")
    p1, p2 = t0, t0 + 30 * DAY
    deliver(make_event("customer.subscription.created", _sub(org, sub_id=sub_id, period_start=p1), created=t0))
    _charge(org, 3, _utc(p1 + DAY))
    # The renewal webhook is late: dunning's overdue re-sync reads the subscription (period 2).
    read_at = p2 + 3600
    subscription_sync(stripe_subscription=SubscriptionSnapshot(obj=_sub(org, sub_id=sub_id, period_start=p2),
                                                               as_of=read_at), now=_utc(read_at))
    _charge(org, 5, _utc(read_at + 60))
    # ...then an update of period 1 (a card change two days before the renewal) finally arrives.
    deliver(make_event("customer.subscription.updated", _sub(org, sub_id=sub_id, period_start=p1,
                                                             default_payment_method="pm_new"), created=p2 - 2 * DAY))
    balance = CreditBalance.objects.get(organization_id=org.pk)
    assert balance.period_start == _utc(p2) and balance.used_small == 5
    sub = Subscription.objects.get(stripe_subscription_id=sub_id)
    assert sub.current_period_start == _utc(p2) and sub.last_event_created == read_at


def test_a_state_of_an_earlier_period_is_refused_even_at_the_same_second(org, deliver):
    t0, sub_id = int(time.time()) - 40 * DAY, uid("sub")
    p2 = t0 + 30 * DAY
    deliver(make_event("customer.subscription.updated", _sub(org, sub_id=sub_id, period_start=p2), created=p2))
    _charge(org, 2, _utc(p2 + 10))
    deliver(make_event("customer.subscription.updated", _sub(org, sub_id=sub_id, period_start=t0), created=p2))
    balance = CreditBalance.objects.get(organization_id=org.pk)
    assert balance.period_start == _utc(p2) and balance.used_small == 2


def test_a_stale_event_cannot_schedule_a_downgrade_after_a_fresh_read(org, deliver):
    t0, sub_id = int(time.time()) - 10 * DAY, uid("sub")
    deliver(make_event("customer.subscription.created", _sub(org, sub_id=sub_id, period_start=t0, tier="pro"),
                       created=t0))
    # A downgrade to starter, then "keep pro": the read after "keep" shows pro again.
    read_at = t0 + 2 * DAY
    subscription_sync(stripe_subscription=SubscriptionSnapshot(
        obj=_sub(org, sub_id=sub_id, period_start=t0, tier="pro"), as_of=read_at), now=_utc(read_at))
    # The downgrade's own (older) event is delivered late: it must not bring the downgrade back.
    deliver(make_event("customer.subscription.updated", _sub(org, sub_id=sub_id, period_start=t0, tier="starter"),
                       created=read_at - 30))
    sub = Subscription.objects.get(stripe_subscription_id=sub_id)
    assert (sub.plan_tier, sub.pending_plan_tier) == ("pro", "")


def test_invoice_events_do_not_hide_a_newer_subscription_event(org, deliver):
    t0, sub_id = int(time.time()) - 20 * DAY, uid("sub")
    deliver(make_event("customer.subscription.created", _sub(org, sub_id=sub_id, period_start=t0), created=t0))
    renewal = t0 + 5 * DAY
    failed = invoice_obj(inv_id=uid("in"), customer=org.stripe_customer_id, sub_id=sub_id, status="open",
                         amount_due=9900, period_start=renewal, period_end=renewal + 30 * DAY, created=renewal)
    deliver(make_event("invoice.payment_failed", failed, created=renewal + 1))
    sub = Subscription.objects.get(stripe_subscription_id=sub_id)
    assert sub.status == "past_due" and sub.grace_period_ends_at is not None
    # The customer cancels at period end while past due: Stripe's event is one second older than
    # the invoice event applied first, but newer than every subscription state we have.
    deliver(make_event("customer.subscription.updated",
                       _sub(org, sub_id=sub_id, period_start=t0, status="past_due", cancel_at_period_end=True),
                       created=renewal))
    sub.refresh_from_db()
    assert sub.cancel_at_period_end is True and sub.status == "past_due"
    assert sub.dunning_event_created == renewal + 1 and sub.last_event_created == renewal


def test_an_active_state_not_newer_than_the_failure_does_not_end_the_grace(org, deliver):
    t0, sub_id = int(time.time()) - 20 * DAY, uid("sub")
    deliver(make_event("customer.subscription.created", _sub(org, sub_id=sub_id, period_start=t0), created=t0))
    at = t0 + 5 * DAY
    failed = invoice_obj(inv_id=uid("in"), customer=org.stripe_customer_id, sub_id=sub_id, status="open",
                         amount_due=9900, period_start=at, period_end=at + 30 * DAY, created=at)
    deliver(make_event("invoice.payment_failed", failed, created=at))
    # The renewal's `active` of the same second, delivered after the failure.
    deliver(make_event("customer.subscription.updated", _sub(org, sub_id=sub_id, period_start=t0), created=at))
    sub = Subscription.objects.get(stripe_subscription_id=sub_id)
    org.refresh_from_db()
    assert sub.status == "past_due" and sub.grace_period_ends_at is not None
    assert org.subscription_status == "past_due"
    # A later `active` (Stripe got paid) ends it.
    deliver(make_event("customer.subscription.updated", _sub(org, sub_id=sub_id, period_start=t0), created=at + 60))
    sub.refresh_from_db()
    assert sub.status == "active" and sub.grace_period_ends_at is None


def test_the_balance_never_resets_to_an_earlier_period_of_the_same_plan(org, now):
    start = now - dt.timedelta(days=3)
    balance_set_plan(organization_id=org.pk, plan_tier="pro", now=now, period_start=start,
                     period_end=start + dt.timedelta(days=30), reset_usage=True)
    _charge(org, 4, now)
    earlier = start - dt.timedelta(days=30)
    balance_set_plan(organization_id=org.pk, plan_tier="pro", now=now, period_start=earlier, period_end=start,
                     reset_usage=True)
    balance = CreditBalance.objects.get(organization_id=org.pk)
    assert balance.period_start == start and balance.used_small == 4


def test_a_downgrade_to_free_keeps_the_monthly_anchor(org, deliver):
    t0, sub_id = int(time.time()) - 10 * DAY, uid("sub")
    deliver(make_event("customer.subscription.created", _sub(org, sub_id=sub_id, period_start=t0), created=t0))
    ended = t0 + 3 * DAY + 3600
    deliver(make_event("customer.subscription.deleted",
                       _sub(org, sub_id=sub_id, period_start=t0, status="canceled", canceled_at=ended,
                            ended_at=ended), created=ended))
    org.refresh_from_db()
    balance = CreditBalance.objects.get(organization_id=org.pk)
    assert balance.plan_tier == "free" and balance.included_small == PLANS["free"].included["small"]
    _, anchored_end = free_period(anchor=org.created_at, now=balance.period_start)
    assert balance.period_end == anchored_end  # not a month after the downgrade
    assert balance.period_end.day == org.created_at.day or balance.period_end.day >= 28

"""Dunning through the real webhook endpoint: failed invoice -> past_due + grace + email; paid in
time -> active; reminders; out-of-order delivery. (Cancel-after-grace against the simulator:
test_dunning_sim.py; the whole story with a real worker: test_webhooks_e2e.py.)"""
from __future__ import annotations

import datetime as dt
import time

import pytest
from django.core import mail
from django.utils import timezone

from billing.models import Subscription
from billing.services.dunning import dunning_enforce

from .stripe_events import (  # noqa: F401 - fixtures are used by name
    DAY,
    deliver,
    hooks_stripe_settings,
    invoice_obj,
    make_event,
    org,
    post_event,
    subscription_obj,
    uid,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("hooks_stripe_settings")]


@pytest.fixture
def subscribed(org, deliver):
    t = int(time.time())
    sub_id = uid("sub")
    deliver(make_event("customer.subscription.created", subscription_obj(
        sub_id=sub_id, customer=org.stripe_customer_id, org=org, tier="pro", period_start=t - 30 * DAY,
        period_end=t), created=t - 30 * DAY))
    return Subscription.objects.get(stripe_subscription_id=sub_id)


def invoice_event(org, sub, event_type, *, inv_id, created, status, amount_paid=0):
    t = int(sub.current_period_end.timestamp())
    obj = invoice_obj(inv_id=inv_id, customer=org.stripe_customer_id, sub_id=sub.stripe_subscription_id,
                      status=status, amount_due=9900, amount_paid=amount_paid, period_start=t,
                      period_end=t + 30 * DAY, created=created, paid_at=created if status == "paid" else None)
    return make_event(event_type, obj, created=created)


def test_failed_invoice_starts_grace_and_emails_amount_and_link_once(org, subscribed, deliver, settings):
    t, inv_id = int(time.time()), uid("in")
    before = timezone.now()
    failed = invoice_event(org, subscribed, "invoice.payment_failed", inv_id=inv_id, created=t, status="open")
    deliver(failed)
    deliver(failed)  # redelivery
    deliver(invoice_event(org, subscribed, "invoice.payment_failed", inv_id=inv_id, created=t + 3 * 3600,
                          status="open"))  # Stripe's automatic retry failed again: same grace, no new email
    sub = Subscription.objects.get(pk=subscribed.pk)
    org.refresh_from_db()
    assert (sub.status, org.subscription_status, org.subscription_tier) == ("past_due", "past_due", "pro")
    days = dt.timedelta(days=settings.BILLING_GRACE_PERIOD_DAYS)
    assert before + days <= sub.grace_period_ends_at <= timezone.now() + days
    assert len(mail.outbox) == 1
    body = mail.outbox[0].body
    assert "$99.00" in body and f"/invoices/{inv_id}" in body


def test_paid_within_grace_clears_it(org, subscribed, deliver):
    t, inv_id = int(time.time()), uid("in")
    deliver(invoice_event(org, subscribed, "invoice.payment_failed", inv_id=inv_id, created=t, status="open"))
    assert Subscription.objects.get(pk=subscribed.pk).grace_period_ends_at is not None
    deliver(invoice_event(org, subscribed, "invoice.paid", inv_id=inv_id, created=t + 60, status="paid",
                          amount_paid=9900))
    sub = Subscription.objects.get(pk=subscribed.pk)
    org.refresh_from_db()
    assert sub.grace_period_ends_at is None and sub.status == "active" and org.subscription_status == "active"
    assert len(mail.outbox) == 2  # payment_failed, then the receipt
    assert "$99.00" in mail.outbox[1].body


def test_failure_delivered_after_the_payment_changes_nothing(org, subscribed, deliver):
    t, inv_id = int(time.time()), uid("in")
    paid = invoice_event(org, subscribed, "invoice.paid", inv_id=inv_id, created=t + 60, status="paid",
                         amount_paid=9900)
    failed = invoice_event(org, subscribed, "invoice.payment_failed", inv_id=inv_id, created=t, status="open")
    deliver(paid)
    deliver(failed)
    sub = Subscription.objects.get(pk=subscribed.pk)
    org.refresh_from_db()
    assert sub.grace_period_ends_at is None and (sub.status, org.subscription_status) == ("active", "active")
    assert len(mail.outbox) == 1  # only the receipt


def test_stale_active_subscription_update_does_not_clear_grace(org, subscribed, deliver):
    t, inv_id = int(time.time()), uid("in")
    deliver(invoice_event(org, subscribed, "invoice.payment_failed", inv_id=inv_id, created=t, status="open"))
    stale = make_event("customer.subscription.updated", subscription_obj(
        sub_id=subscribed.stripe_subscription_id, customer=org.stripe_customer_id, org=org, tier="pro",
        status="active", period_start=t - 30 * DAY, period_end=t), created=t - 10)
    deliver(stale)
    sub = Subscription.objects.get(pk=subscribed.pk)
    assert sub.status == "past_due" and sub.grace_period_ends_at is not None


def test_grace_ending_reminder_is_sent_once(org, subscribed, deliver, django_capture_on_commit_callbacks):
    t, inv_id = int(time.time()), uid("in")
    deliver(invoice_event(org, subscribed, "invoice.payment_failed", inv_id=inv_id, created=t, status="open"))
    grace_end = Subscription.objects.get(pk=subscribed.pk).grace_period_ends_at
    mail.outbox.clear()
    assert dunning_enforce(now=grace_end - dt.timedelta(days=3)).reminded == []  # too early
    with django_capture_on_commit_callbacks(execute=True):
        first = dunning_enforce(now=grace_end - dt.timedelta(days=1))
        second = dunning_enforce(now=grace_end - dt.timedelta(hours=2))
    assert first.reminded == [subscribed.stripe_subscription_id] and second.reminded == []
    assert first.canceled == [] and first.errors == []
    assert len(mail.outbox) == 1 and f"/invoices/{inv_id}" in mail.outbox[0].body  # the link to pay
    org.refresh_from_db()
    assert org.subscription_tier == "pro"  # still in grace: plan keeps working

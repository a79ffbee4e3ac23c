"""Dunning against the simulator (eager processing, the simulator's own signed events replayed):
the grace-end pass must not cancel a subscription Stripe says is paid up when the invoice.paid
webhook never reached us (lost, or FAILED and not yet reprocessed)."""
from __future__ import annotations

import datetime as dt
import urllib.parse
import urllib.request

import pytest
from django.utils import timezone

from billing import stripe_gateway as gw
from billing.models import Subscription
from billing.services.plan_changes import checkout_start
from billing.services.dunning import dunning_enforce
from organizations.models import Organization
from organizations.tests.factories import MembershipFactory, OrganizationFactory
from tests import stripe_calls

from .stripe_events import deliver, hooks_stripe_settings, org, replay_sim_events  # noqa: F401 - fixtures

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

PAST = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def test_grace_end_does_not_cancel_a_subscription_paid_at_stripe_whose_webhook_was_missed(stripe_settings, client):
    sim, seen = stripe_settings.sim, set()
    org = OrganizationFactory(trial_ends_at=PAST)  # trialed before: charged at once
    MembershipFactory(organization=org)
    start = checkout_start(organization=org, plan_tier="pro", email="o@example.test", now=timezone.now())
    sub_id = sim.complete_checkout(start["sessionId"], card="4242424242424242")["subscription"]
    replay_sim_events(client, seen)
    sub = Subscription.objects.get(stripe_subscription_id=sub_id)
    assert sub.status == "active"

    bad = stripe_calls.payment_method_attach(payment_method_id="pm_card_chargeCustomerFail", customer_id=sub.stripe_customer_id,
                                   idempotency_key=f"review-bad:{sub.pk}")
    gw.get_client().v1.subscriptions.update(sub_id, params={"default_payment_method": bad["id"]})
    period_end = gw.subscription_retrieve(sub_id).obj["items"]["data"][0]["current_period_end"]
    sim.advance_clock(period_end - sim.now() + 1)  # renewal fails
    replay_sim_events(client, seen)
    sub.refresh_from_db()
    assert sub.status == "past_due" and sub.grace_period_ends_at is not None

    # The customer pays on the hosted invoice page; the invoice.paid / subscription.updated
    # webhooks never reach us (not replayed here).
    open_invoice = stripe_calls.invoice_list(customer_id=sub.stripe_customer_id)[0]
    request = urllib.request.Request(f"{open_invoice['hosted_invoice_url']}/pay", method="POST",
                                     data=urllib.parse.urlencode({"card_number": "4242424242424242"}).encode())
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    assert gw.subscription_retrieve(sub_id).obj["status"] == "active"

    result = dunning_enforce(now=sub.grace_period_ends_at + dt.timedelta(seconds=1))
    assert result.canceled == [] and result.errors == []
    assert gw.subscription_retrieve(sub_id).obj["status"] == "active"  # the paying customer keeps the plan
    sub.refresh_from_db()
    org = Organization.objects.get(pk=org.pk)
    assert (sub.status, sub.grace_period_ends_at) == ("active", None)
    assert (org.subscription_tier, org.subscription_status) == ("pro", "active")


@pytest.mark.usefixtures("hooks_stripe_settings")
def test_late_paid_event_of_the_previous_invoice_does_not_clear_the_grace_of_the_failed_one(org, deliver):
    """invoice.paid of last month's invoice delivered late (Stripe retries deliveries for days)
    after this month's invoice.payment_failed: the failed invoice is still open, the grace stays."""
    import time

    from .stripe_events import DAY, invoice_obj, make_event, subscription_obj, uid

    t, sub_id = int(time.time()) - 60, uid("sub")
    deliver(make_event("customer.subscription.created", subscription_obj(
        sub_id=sub_id, customer=org.stripe_customer_id, org=org, tier="pro", period_start=t - 30 * DAY,
        period_end=t), created=t - 30 * DAY))
    common = dict(customer=org.stripe_customer_id, sub_id=sub_id, amount_due=9900)
    previous_paid = make_event("invoice.paid", invoice_obj(
        inv_id=uid("in"), status="paid", amount_paid=9900, period_start=t - 30 * DAY, period_end=t,
        created=t - 30 * DAY, paid_at=t - 30 * DAY, **common), created=t - 30 * DAY)
    failed_id = uid("in")
    deliver(make_event("invoice.payment_failed", invoice_obj(
        inv_id=failed_id, status="open", period_start=t, period_end=t + 30 * DAY, created=t, **common), created=t))
    deliver(previous_paid)
    sub = Subscription.objects.get(stripe_subscription_id=sub_id)
    org.refresh_from_db()
    assert sub.status == "past_due" and sub.grace_period_ends_at is not None
    assert org.subscription_status == "past_due"

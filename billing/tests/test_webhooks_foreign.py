"""Events that are not (or not yet) ours, and errors retrying cannot fix, through the real endpoint.

A Stripe account shared with other products delivers their events too. Signed like Stripe signs
them, posted to /api/webhooks/stripe, processed by the eager Celery task on commit. The simulator
answers the one question only Stripe can: has this customer a checkout session of ours in flight?
"""
from __future__ import annotations

import logging
import time

import pytest

from billing import stripe_gateway as gw
from billing.models import CheckoutIntent, Subscription, WebhookEvent
from billing.services.webhooks import WEBHOOK_MAX_RETRIES, webhook_event_reprocess
from organizations.tests.factories import MembershipFactory, OrganizationFactory

from .stripe_events import (  # noqa: F401 - fixtures are used by name
    DAY,
    PRICES,
    TEST_WEBHOOK_SECRET,
    deliver,
    invoice_obj,
    make_event,
    org,
    post_event,
    subscription_obj,
    uid,
)

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def hooks(stripe_settings, settings):
    """The simulator behind the gateway; events signed with the test secret, the test price ids."""
    settings.STRIPE_WEBHOOK_SECRET = TEST_WEBHOOK_SECRET
    for tier, price_id in PRICES.items():
        setattr(settings, f"STRIPE_PRICE_{tier.upper()}", price_id)
    return stripe_settings


def row(event: dict) -> WebhookEvent:
    return WebhookEvent.objects.get(stripe_event_id=event["id"])


def attempts(caplog, event: dict) -> int:
    """Failed processing attempts logged for the event (a retry is announced, the last one is final)."""
    return sum(1 for r in caplog.records
               if r.getMessage().startswith((f"event=webhook.retrying event_id={event['id']} ",
                                             f"event=webhook.failed event_id={event['id']} ")))


def foreign_subscription(*, t: int, customer: str, price_id: str = "price_1OtherProduct") -> dict:
    """Another product's subscription on the shared account: its own price, no orgId metadata."""
    return subscription_obj(sub_id=uid("sub"), customer=customer, tier="pro", price_id=price_id,
                            lookup_key="other_product_monthly", period_start=t, period_end=t + 30 * DAY)


@pytest.mark.parametrize("event_type", ["customer.subscription.created", "customer.subscription.updated",
                                        "customer.subscription.deleted", "customer.subscription.trial_will_end"])
def test_foreign_customer_subscription_event_is_ignored_with_the_reason_not_retried(hooks, deliver, caplog,
                                                                                   event_type):
    caplog.set_level(logging.INFO)
    t, customer = int(time.time()), uid("cus")
    event = make_event(event_type, foreign_subscription(t=t, customer=customer), created=t)
    deliver(event)
    deliver(event)  # a redelivery: stored once
    r = row(event)
    assert WebhookEvent.objects.filter(stripe_event_id=event["id"]).count() == 1
    assert r.status == "ignored" and r.processed_at is not None
    assert "not ours" in r.error and customer in r.error
    assert "price" not in r.error  # the real cause is the customer, not the other product's price
    assert r.retry_count == 0 and attempts(caplog, event) == 0
    assert not Subscription.objects.exists()
    assert not [x for x in caplog.records if x.levelno >= logging.ERROR]


def test_foreign_invoice_and_checkout_events_are_ignored_without_asking_stripe_for_their_objects(hooks, deliver):
    t, customer, sub_id = int(time.time()), uid("cus"), uid("sub")
    invoice = invoice_obj(inv_id=uid("in"), customer=customer, sub_id=sub_id, status="open", amount_due=1500,
                          period_start=t, period_end=t + 30 * DAY, created=t)
    session = {"id": uid("cs"), "object": "checkout.session", "mode": "subscription", "customer": customer,
               "subscription": sub_id, "status": "complete", "metadata": {}}
    events = [make_event("invoice.payment_failed", invoice, created=t),  # would read sub_id back from Stripe
              make_event("invoice.paid", invoice, created=t + 1),
              make_event("checkout.session.completed", session, created=t + 2)]
    for event in events:
        deliver(event)
    for event in events:
        r = row(event)
        assert (r.status, r.retry_count) == ("ignored", 0), (event["type"], r.error)
        assert "not ours" in r.error and customer in r.error


def test_customer_of_a_pending_checkout_of_ours_stays_retryable_then_processes(hooks, deliver, now):
    """The customer is not linked to the org yet, but a checkout session we created for the org names it:
    the event can become ours (checkout.session.completed links the customer), so it is retried."""
    org = OrganizationFactory()
    MembershipFactory(organization=org)
    customer = gw.customer_create(email="pending@example.test", name=None, metadata={},
                                  idempotency_key=f"test-pending-customer:{org.pk}").id
    intent = CheckoutIntent.objects.create(organization=org, plan_tier="pro", status="started", open_slot=True,
                                           created_at=now, started_at=now)
    session = gw.checkout_session_create(
        mode="subscription", customer_id=customer, price_id=hooks.prices["STRIPE_PRICE_PRO"],
        success_url="http://testserver/ok", cancel_url="http://testserver/no",
        metadata={"orgId": str(org.pk), "planTier": "pro", "checkoutIntentId": str(intent.pk)},
        idempotency_key=f"checkout:{intent.pk}")
    CheckoutIntent.objects.filter(pk=intent.pk).update(stripe_checkout_session_id=session.id)
    t = int(time.time())
    obj = subscription_obj(sub_id=uid("sub"), customer=customer, tier="pro", period_start=t, period_end=t + 30 * DAY)
    event = make_event("customer.subscription.created", obj, created=t)
    deliver(event)
    r = row(event)
    assert r.status != "ignored"
    assert r.retry_count == WEBHOOK_MAX_RETRIES + 1  # retried (eager: all attempts inline)
    assert "no organization" in r.error and session.id in r.error
    # checkout.session.completed links the customer to the org; the event is ours now.
    org.stripe_customer_id = customer
    org.save(update_fields=["stripe_customer_id"])
    assert webhook_event_reprocess(event_id=r.pk, now=now).status == "processed"
    org.refresh_from_db()
    assert org.subscription_tier == "pro"


def test_unknown_price_for_our_org_fails_once_with_the_price_named(hooks, org, deliver, caplog):
    caplog.set_level(logging.INFO)
    t = int(time.time())
    obj = subscription_obj(sub_id=uid("sub"), customer=org.stripe_customer_id, org=org, tier="pro",
                           price_id="price_gold_legacy", lookup_key="gold", period_start=t, period_end=t + 30 * DAY)
    obj["metadata"] = {"orgId": str(org.pk)}  # no planTier hint either
    event = make_event("customer.subscription.created", obj, created=t)
    deliver(event)
    r = row(event)
    assert r.status == "failed" and r.retry_count == 1 and attempts(caplog, event) == 1
    assert "UNKNOWN_PRICE" in r.error and "price_gold_legacy" in r.error
    org.refresh_from_db()
    assert org.subscription_tier == "free"


def test_bare_deletion_of_a_known_subscription_downgrades_the_org(hooks, org, deliver):
    t, sub_id = int(time.time()), uid("sub")
    created = subscription_obj(sub_id=sub_id, customer=org.stripe_customer_id, org=org, tier="pro",
                               period_start=t, period_end=t + 30 * DAY)
    deliver(make_event("customer.subscription.created", created, created=t))
    org.refresh_from_db()
    assert org.subscription_tier == "pro"
    bare = {"id": sub_id, "object": "subscription", "customer": org.stripe_customer_id, "status": "canceled",
            "canceled_at": t + 60, "ended_at": t + 60, "metadata": {}}  # no items, no price, no period
    event = make_event("customer.subscription.deleted", bare, created=t + 60)
    deliver(event)
    r = row(event)
    assert (r.status, r.error) == ("processed", "")
    org.refresh_from_db()
    sub = Subscription.objects.get(stripe_subscription_id=sub_id)
    assert (org.subscription_tier, sub.status, sub.plan_tier) == ("free", "canceled", "pro")
    assert sub.current_period_start is not None and sub.ended_at is not None


def test_api_version_refusal_is_a_warning_not_an_error(client, settings, caplog):
    settings.STRIPE_WEBHOOK_SECRET = TEST_WEBHOOK_SECRET
    caplog.set_level(logging.INFO)
    event = make_event("customer.subscription.updated", {"id": "sub_x", "object": "subscription"},
                       created=int(time.time()), version="2019-02-19")
    response = post_event(client, event)
    assert response.status_code == 400 and response.json()["error"]["code"] == "WEBHOOK_API_VERSION_MISMATCH"
    refusals = [x for x in caplog.records if "2019-02-19" in x.getMessage()]
    assert refusals and all(x.levelno == logging.WARNING for x in refusals)
    assert not [x for x in caplog.records if x.levelno >= logging.ERROR]

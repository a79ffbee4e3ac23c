"""End to end: the simulator delivers signed webhooks over HTTP to the live app; a real Celery
worker (Redis, own queue) processes them; the simulator's clock drives renewals and failures.

1. subscribe -> renewal (usage reset) -> failed renewal -> past_due + grace + email -> the dunning
   pass after the grace period cancels in Stripe -> free + email, idempotently.
2. failed renewal -> paid on the hosted invoice page within grace -> active, grace cleared.
"""
from __future__ import annotations

import datetime as dt
import urllib.parse
import urllib.request

import pytest
from django.db import transaction
from django.utils import timezone

from billing import stripe_gateway as gw
from billing.models import CreditBalance, Subscription, WebhookEvent
from billing.services.balance import balance_charge
from billing.services.plan_changes import checkout_start, stripe_portal_configuration_ensure, stripe_prices_ensure
from billing.services.dunning import dunning_enforce
from organizations.models import Organization
from organizations.tests.factories import MembershipFactory, OrganizationFactory
from tests.helpers import wait_until
from tests import stripe_calls
from tests.stripe_fixtures import StripeSim

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker, pytest.mark.slow]

PAST = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


@pytest.fixture
def env(stripe_settings, celery_worker, live_server, settings):
    sim = stripe_settings.sim
    if celery_worker.stripe_api_base and celery_worker.stripe_api_base != sim.base_url:
        # The session's worker was started against another simulator process (a fixture exported
        # its URL first): use that one, so the worker and this test see the same Stripe.
        sim = StripeSim(celery_worker.stripe_api_base, proc=None)
        settings.STRIPE_API_BASE = sim.base_url
        gw.reset_client()
        for name, price_id in stripe_prices_ensure().items():
            setattr(settings, name, price_id)
        settings.STRIPE_PORTAL_CONFIGURATION = stripe_portal_configuration_ensure()
    sim.configure_webhooks(f"{live_server.url}/api/webhooks/stripe", settings.STRIPE_WEBHOOK_SECRET,
                           backoff_seconds=0.05)
    yield sim, celery_worker
    sim.configure_webhooks(None, settings.STRIPE_WEBHOOK_SECRET)


def _org() -> Organization:
    org = OrganizationFactory(trial_ends_at=PAST)  # already trialed once: checkout charges at once
    MembershipFactory(organization=org, user__email="owner-e2e@example.test", user__username="owner-e2e@example.test")
    return org


def _settled(sim) -> None:
    """Simulator has delivered everything and the worker has processed every stored event."""
    sim.wait_webhooks_idle(timeout=30)
    wait_until(lambda: not WebhookEvent.objects.filter(status="pending").exists(), timeout=60,
               message="webhook events processed by the worker")
    failed = list(WebhookEvent.objects.filter(status="failed").values_list("type", "error"))
    assert failed == []


def _subscribe(org, sim) -> Subscription:
    start = checkout_start(organization=org, plan_tier="pro", email="owner-e2e@example.test", now=timezone.now())
    sub_id = sim.complete_checkout(start["sessionId"], card="4242424242424242")["subscription"]
    wait_until(lambda: Organization.objects.get(pk=org.pk).subscription_tier == "pro", timeout=60,
               message="the org to be on pro")
    _settled(sim)
    return Subscription.objects.get(stripe_subscription_id=sub_id)


def _period_end(sub_id: str) -> int:
    return gw.subscription_retrieve(sub_id).obj["items"]["data"][0]["current_period_end"]


def _fail_next_renewal(sim, sub: Subscription) -> None:
    bad = stripe_calls.payment_method_attach(payment_method_id="pm_card_chargeCustomerFail", customer_id=sub.stripe_customer_id,
                                   idempotency_key=f"e2e-bad:{sub.pk}")
    gw.get_client().v1.subscriptions.update(sub.stripe_subscription_id, params={"default_payment_method": bad["id"]})
    sim.advance_clock(_period_end(sub.stripe_subscription_id) - sim.now() + 1)
    wait_until(lambda: Subscription.objects.get(pk=sub.pk).grace_period_ends_at is not None, timeout=60,
               message="the grace period to start")
    _settled(sim)


def _mails(worker, fragment: str) -> list:
    return [m for m in worker.outbox() if fragment in str(m["Subject"]) and "owner-e2e@example.test" in str(m["To"])]


def test_subscribe_renew_fail_grace_downgrade(env):
    sim, worker = env
    org = _org()
    sub = _subscribe(org, sim)
    assert sub.status == "active"

    with transaction.atomic():
        balance_charge(organization_id=org.pk, tier="small", now=timezone.now())
    first_period = sub.current_period_start
    sim.advance_clock(_period_end(sub.stripe_subscription_id) - sim.now() + 1)  # renewal, paid
    wait_until(lambda: Subscription.objects.get(pk=sub.pk).current_period_start != first_period, timeout=60,
               message="the renewal to land")
    _settled(sim)
    bal = CreditBalance.objects.get(organization_id=org.pk)
    assert bal.used_small == 0 and bal.plan_tier == "pro"
    assert bal.period_start == Subscription.objects.get(pk=sub.pk).current_period_start

    _fail_next_renewal(sim, sub)
    sub.refresh_from_db()
    org.refresh_from_db()
    assert (sub.status, org.subscription_status, org.subscription_tier) == ("past_due", "past_due", "pro")
    failed_mails = wait_until(lambda: _mails(worker, "Payment failed"), timeout=30, message="payment_failed email")
    assert len(failed_mails) == 1
    body = failed_mails[0].get_payload() if not failed_mails[0].is_multipart() else \
        failed_mails[0].get_payload(0).get_payload()
    assert "99.00" in body

    # Still inside the grace period: nothing happens.
    assert dunning_enforce(now=sub.grace_period_ends_at - dt.timedelta(hours=1)).canceled == []
    after_grace = sub.grace_period_ends_at + dt.timedelta(seconds=1)
    result = dunning_enforce(now=after_grace)
    assert result.canceled == [sub.stripe_subscription_id] and result.errors == []
    assert gw.subscription_retrieve(sub.stripe_subscription_id).obj["status"] == "canceled"
    _settled(sim)  # customer.subscription.deleted comes back through the webhook: idempotent
    org.refresh_from_db()
    assert (org.subscription_tier, org.subscription_status) == ("free", "active")
    assert CreditBalance.objects.get(organization_id=org.pk).plan_tier == "free"
    assert dunning_enforce(now=after_grace + dt.timedelta(hours=1)).canceled == []  # idempotent
    wait_until(lambda: _mails(worker, "Free plan"), timeout=30, message="downgraded_free email")
    assert len(_mails(worker, "Free plan")) == 1


def test_failed_renewal_paid_within_grace(env):
    sim, worker = env
    org = _org()
    sub = _subscribe(org, sim)
    _fail_next_renewal(sim, sub)
    sub.refresh_from_db()
    open_invoice = stripe_calls.invoice_list(customer_id=sub.stripe_customer_id)[0]
    assert open_invoice["status"] == "open"
    request = urllib.request.Request(f"{open_invoice['hosted_invoice_url']}/pay", method="POST",
                                     data=urllib.parse.urlencode({"card_number": "4242424242424242"}).encode())
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    wait_until(lambda: Subscription.objects.get(pk=sub.pk).grace_period_ends_at is None, timeout=60,
               message="the grace period to be cleared")
    _settled(sim)
    sub.refresh_from_db()
    org.refresh_from_db()
    assert (sub.status, org.subscription_status, org.subscription_tier) == ("active", "active", "pro")
    assert dunning_enforce(now=timezone.now() + dt.timedelta(days=30)).canceled == []
    assert gw.subscription_retrieve(sub.stripe_subscription_id).obj["status"] == "active"

"""Money flows in the browser, end to end through the bundled Stripe simulator (a test double run as
its own process, reached by the real `stripe` SDK): its hosted Checkout page, its signed webhooks
delivered over HTTP to the live server's /api/webhooks/stripe, its clock for renewals.

Webhook handlers run eagerly in the live server (test settings: CELERY_TASK_ALWAYS_EAGER), queued
on commit of the stored event; the tests wait for what a person would wait for: the page to show it.
"""
from __future__ import annotations

import datetime as dt
import re

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from billing import stripe_gateway as gw
from billing.models import CreditPurchase, Subscription
from billing.services.plan_changes import checkout_start
from organizations.models import Organization
from tests.helpers import wait_until
from tests import stripe_calls

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PAST = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def sim(stripe_settings, live_server, settings):
    """Simulator reset, its webhooks pointed at the live server, Checkout returning to the live server."""
    settings.APP_BASE_URL = live_server.url
    stripe_settings.sim.configure_webhooks(f"{live_server.url}/api/webhooks/stripe", settings.STRIPE_WEBHOOK_SECRET,
                                           backoff_seconds=0.05)
    yield stripe_settings.sim
    stripe_settings.sim.wait_webhooks_idle(timeout=30)
    stripe_settings.sim.configure_webhooks(None)


def _reload_until(page, predicate, *, message: str, timeout: float = 30.0) -> None:
    def check():
        page.reload()
        return predicate()
    wait_until(check, timeout=timeout, interval=0.3, message=message)


def test_free_to_pro_trial_through_hosted_checkout_and_back(logged_in_page, live_server, sim, screenshot):
    page = logged_in_page
    page.goto("/billing")
    pro = page.locator("li[data-plan=pro]")

    # Leave Checkout without paying: back on the dashboard, still Free.
    pro.get_by_role("button", name="Start 7-day trial").click()
    page.wait_for_url(re.compile(rf"^{re.escape(sim.base_url)}/checkout/cs_"))
    expect(page.locator("#trial")).to_contain_text("7-day free trial")
    page.locator("#cancel").click()
    page.wait_for_url(re.compile(rf"^{re.escape(live_server.url)}/settings/billing\?checkout=canceled"))
    expect(page.get_by_test_id("plan-badge")).to_have_text("Free")

    # Now subscribe: the trial needs no card on the hosted page.
    page.goto("/billing")
    page.locator("li[data-plan=pro]").get_by_role("button", name="Start 7-day trial").click()
    page.wait_for_url(re.compile(rf"^{re.escape(sim.base_url)}/checkout/cs_"))
    page.locator("#card_number").fill("4242 4242 4242 4242")
    screenshot(page, "sim-checkout-pro-trial")
    page.locator("#pay").click()
    page.wait_for_url(re.compile(rf"^{re.escape(live_server.url)}/settings/billing\?checkout=success"))

    _reload_until(page, lambda: page.get_by_test_id("plan-badge").inner_text() == "Pro",
                  message="the dashboard to show Pro once the webhook landed")
    expect(page.get_by_test_id("plan-status")).to_have_text("Trialing")
    expect(page.get_by_test_id("trial-countdown")).to_contain_text("7 days left")
    expect(page.locator("[data-banner=trialing]")).to_contain_text("Pro trial ends in 7 days")
    expect(page.get_by_test_id("bar-small")).to_have_attribute("aria-valuemax", "2500")
    screenshot(page, "dashboard-pro-trialing")

    page.goto("/billing")
    expect(page.locator("li[data-plan=pro] [data-testid=current-plan]")).to_be_visible()
    expect(page.get_by_text("Start 7-day trial")).to_have_count(0)  # one trial per org
    screenshot(page, "plans-pro-trialing")
    page.goto("/settings/invoices")
    expect(page.get_by_test_id("events")).to_contain_text("Subscribed to Pro with a free trial")


def test_buy_credits_through_hosted_checkout(logged_in_page, live_server, owner_membership, sim, screenshot):
    page = logged_in_page
    page.get_by_role("button", name=re.compile(r"^Buy 500 credits \(\$20\.00\)")).click()
    page.wait_for_url(re.compile(rf"^{re.escape(sim.base_url)}/checkout/cs_"))
    expect(page.locator("#total")).to_have_text("$20.00")
    page.locator("#card_number").fill("4242 4242 4242 4242")
    page.locator("#pay").click()
    page.wait_for_url(re.compile(rf"^{re.escape(live_server.url)}/settings/billing"))

    _reload_until(page, lambda: page.get_by_test_id("bar-topup").get_attribute("aria-valuemax") == "500.00",
                  message="the purchased credits on the dashboard")
    expect(page.get_by_test_id("topup-text")).to_have_text("0 of 500 used · 500 left")
    expect(page.get_by_test_id("spendable-credits")).to_have_text("500")  # the Free allowance is per tier
    purchase = CreditPurchase.objects.get(organization=owner_membership.organization)
    assert (purchase.status, purchase.amount_cents, purchase.credits_applied_at is not None) == ("succeeded", 2000, True)

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Invoices").click()
    row = page.locator(f"tr[data-purchase='{purchase.pk}']")
    expect(row).to_contain_text("Manual")
    expect(row).to_contain_text("$20.00")
    expect(row).to_contain_text("Succeeded")
    expect(page.get_by_test_id("events")).to_contain_text("Manual: 1 pack (500 credits, $20.00) — succeeded")
    screenshot(page, "invoices-after-topup")


def test_failed_renewal_shows_past_due_banner(page, login, live_server, owner_membership, sim, screenshot):
    org = owner_membership.organization
    org.trial_ends_at = PAST  # trialed before: Checkout charges at once
    org.save(update_fields=["trial_ends_at"])
    start = checkout_start(organization=org, plan_tier="pro", email=owner_membership.user.email, now=timezone.now())
    sub_id = sim.complete_checkout(start["sessionId"], card="4242424242424242")["subscription"]
    wait_until(lambda: Organization.objects.get(pk=org.pk).subscription_status == "active", timeout=30,
               message="the org to be on an active Pro subscription")
    sim.wait_webhooks_idle(timeout=30)

    # The renewal is charged to a card that attaches but declines every charge.
    sub = Subscription.objects.get(stripe_subscription_id=sub_id)
    bad = stripe_calls.payment_method_attach(payment_method_id="pm_card_chargeCustomerFail", customer_id=sub.stripe_customer_id,
                                   idempotency_key=f"browser-bad:{sub.pk}")
    gw.get_client().v1.subscriptions.update(sub_id, params={"default_payment_method": bad["id"]})
    period_end = gw.subscription_retrieve(sub_id).obj["items"]["data"][0]["current_period_end"]
    sim.advance_clock(period_end - sim.now() + 1)

    login(owner_membership)
    _reload_until(page, lambda: page.locator("[data-banner=past_due]").count() == 1,
                  message="the past_due banner after the failed renewal")
    banner = page.locator("[data-banner=past_due]")
    expect(banner).to_have_attribute("role", "alert")
    expect(banner).to_contain_text("Your last payment failed. The Pro plan keeps working until")
    expect(page.get_by_test_id("plan-status")).to_have_text("Past due")
    screenshot(page, "dashboard-past-due")

    page.goto("/settings/invoices")
    table = page.get_by_test_id("invoices-table")
    expect(table.locator("tbody tr")).to_have_count(2)  # the first (paid) and the renewal (open)
    expect(table.locator("tbody tr").first).to_contain_text("Open")
    expect(table.locator("tbody tr").first).to_contain_text("$99.00")
    expect(table.locator("tbody tr").first.get_by_role("link", name=re.compile("^View"))).to_have_attribute(
        "href", re.compile(rf"^{re.escape(sim.base_url)}/invoice/in_"))
    expect(page.get_by_test_id("events")).to_contain_text("Pro payment failed; grace period until")
    screenshot(page, "invoices-past-due")

"""Checkout / portal / upgrade / cancel / status: services and JSON endpoints, MariaDB + simulator."""
from __future__ import annotations

import datetime as dt
import json

import pytest
from django.utils import timezone

from billing import stripe_gateway as gw
from billing.models import Subscription
from billing.services import plan_changes
from organizations.models import Role
from organizations.tests.factories import MembershipFactory
from tests import stripe_calls

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner(stripe_settings):
    membership = MembershipFactory(role=Role.OWNER)
    return membership


def _api(client, method, path, body=None):
    if method == "GET":
        resp = client.get(path)
    else:
        resp = client.post(path, data=json.dumps(body or {}), content_type="application/json")
    return resp.status_code, resp.json()


def _subscribe(client, membership, sim, *, tier="pro", card=""):
    status, body = _api(client, "POST", "/api/billing/checkout", {"orgId": str(membership.organization_id),
                                                                   "planTier": tier})
    assert status == 200, body
    sim.complete_checkout(body["sessionId"], card=card)
    sub_id = gw.checkout_session_retrieve(body["sessionId"]).subscription_id
    # What the webhook handler would do once checkout.session.completed lands (tested by the hooks' suite):
    from billing.services.subscription_sync import subscription_sync
    subscription_sync(stripe_subscription=gw.subscription_retrieve(sub_id), now=timezone.now())
    return body, sub_id


def test_checkout_creates_customer_once_with_trial_and_metadata(client, owner, stripe_settings):
    client.force_login(owner.user)
    org = owner.organization
    status, body = _api(client, "POST", "/api/billing/checkout", {"orgId": str(org.pk), "planTier": "pro"})
    assert status == 200 and body["url"].startswith(stripe_settings.sim.base_url + "/checkout/")
    assert body["trialDays"] == 7
    org.refresh_from_db()
    customer_id = org.stripe_customer_id
    assert customer_id and gw.customer_retrieve(customer_id).metadata["orgId"] == str(org.pk)
    cs = gw.checkout_session_retrieve(body["sessionId"])
    assert cs.customer_id == customer_id and cs.metadata == {"orgId": str(org.pk), "planTier": "pro",
                                                             "checkoutIntentId": str(body["intentId"])}
    assert cs.obj["payment_method_collection"] == "if_required"
    # a second start reuses the customer
    status, again = _api(client, "POST", "/api/billing/checkout", {"orgId": str(org.pk), "planTier": "starter"})
    org.refresh_from_db()
    assert status == 200 and org.stripe_customer_id == customer_id


def test_no_second_trial(client, owner, stripe_settings):
    org = owner.organization
    org.trial_ends_at = timezone.now() - dt.timedelta(days=30)
    org.save(update_fields=["trial_ends_at"])
    client.force_login(owner.user)
    status, body = _api(client, "POST", "/api/billing/checkout", {"orgId": str(org.pk), "planTier": "starter"})
    assert status == 200 and body["trialDays"] == 0
    cs = gw.checkout_session_retrieve(body["sessionId"])
    assert cs.obj["amount_total"] == 999 and cs.obj["payment_method_collection"] == "always"


def test_members_cannot_start_checkout_and_bad_plan_is_400(client, owner, stripe_settings):
    member = MembershipFactory(organization=owner.organization, role=Role.MEMBER)
    client.force_login(member.user)
    status, body = _api(client, "POST", "/api/billing/checkout", {"orgId": str(owner.organization_id),
                                                                   "planTier": "pro"})
    assert status == 403
    status, body = _api(client, "GET", f"/api/billing/subscription/status?orgId={owner.organization_id}")
    assert status == 200 and body["planTier"] == "free"  # members may read
    client.force_login(owner.user)
    status, body = _api(client, "POST", "/api/billing/checkout", {"orgId": str(owner.organization_id),
                                                                   "planTier": "gold"})
    assert status == 400 and body["error"]["code"] == "INVALID_PLAN"


def test_trial_then_upgrade_then_cancel_flow(client, owner, stripe_settings):
    sim = stripe_settings.sim
    org = owner.organization
    client.force_login(owner.user)
    _, sub_id = _subscribe(client, owner, sim, tier="starter")
    status, body = _api(client, "GET", f"/api/billing/subscription/status?orgId={org.pk}")
    assert body["subscription"]["status"] == "trialing" and body["planTier"] == "starter"
    status, body = _api(client, "POST", "/api/billing/checkout", {"orgId": str(org.pk), "planTier": "pro"})
    assert status == 409 and body["error"]["code"] == "ALREADY_SUBSCRIBED"

    status, body = _api(client, "POST", "/api/billing/subscription/upgrade", {"orgId": str(org.pk), "planTier": "pro"})
    assert status == 200 and body["subscription"]["planTier"] == "pro"
    org.refresh_from_db()
    assert org.subscription_tier == "pro"  # allowances at once, before any webhook
    assert gw.subscription_retrieve(sub_id).obj["items"]["data"][0]["price"]["id"] == stripe_settings.prices["STRIPE_PRICE_PRO"]
    status, body = _api(client, "POST", "/api/billing/subscription/upgrade", {"orgId": str(org.pk),
                                                                              "planTier": "starter"})
    assert status == 400 and body["error"]["code"] == "NOT_AN_UPGRADE"

    status, body = _api(client, "POST", "/api/billing/subscription/cancel", {"orgId": str(org.pk)})
    assert status == 200 and body["subscription"]["cancelAtPeriodEnd"] is True
    assert Subscription.objects.get(stripe_subscription_id=sub_id).cancel_at_period_end is True
    status, body = _api(client, "POST", "/api/billing/subscription/cancel", {"orgId": str(org.pk), "now": True})
    assert status == 200 and body["subscription"]["status"] == "canceled"
    assert gw.subscription_retrieve(sub_id).obj["status"] == "canceled"
    org.refresh_from_db()
    assert org.subscription_tier == "free"


def test_paid_upgrade_charges_proration(client, owner, stripe_settings):
    sim = stripe_settings.sim
    org = owner.organization
    org.trial_ends_at = timezone.now() - dt.timedelta(days=60)
    org.save(update_fields=["trial_ends_at"])
    client.force_login(owner.user)
    _, sub_id = _subscribe(client, owner, sim, tier="starter", card="4242424242424242")
    assert Subscription.objects.get(stripe_subscription_id=sub_id).status == "active"
    status, body = _api(client, "POST", "/api/billing/subscription/upgrade", {"orgId": str(org.pk), "planTier": "max"})
    assert status == 200 and body["subscription"]["planTier"] == "max"
    invoices = stripe_calls.invoice_list(customer_id=org.stripe_customer_id)
    assert invoices[0]["billing_reason"] == "subscription_update" and invoices[0]["status"] == "paid"
    assert invoices[0]["amount_paid"] > 0


def test_portal_and_form_posts_redirect(client, owner, stripe_settings):
    org = owner.organization
    client.force_login(owner.user)
    status, body = _api(client, "POST", "/api/billing/portal", {"orgId": str(org.pk)})
    assert status == 409 and body["error"]["code"] == "NO_BILLING_ACCOUNT"
    resp = client.post("/api/billing/checkout", {"org": org.slug, "planTier": "pro"})
    assert resp.status_code == 302 and resp["Location"].startswith(stripe_settings.sim.base_url + "/checkout/")
    resp = client.post("/api/billing/portal", {"org": org.slug})
    assert resp.status_code == 302 and resp["Location"].startswith(stripe_settings.sim.base_url + "/portal/")
    resp = client.post("/api/billing/subscription/cancel", {"org": org.slug})
    assert resp.status_code == 302 and resp["Location"] == f"/settings/billing?org={org.slug}"  # error flashed


def test_stripe_setup_command_prints_env_lines(stripe_settings, capsys):
    from django.core.management import call_command
    from django.conf import settings
    call_command("stripe_setup")
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"{k}={v}" for k, v in stripe_settings.prices.items()] + [
        f"STRIPE_PORTAL_CONFIGURATION={settings.STRIPE_PORTAL_CONFIGURATION}"]


def test_services_refuse_to_call_stripe_inside_a_transaction(owner, stripe_settings):
    from django.db import transaction
    with pytest.raises(RuntimeError), transaction.atomic():
        plan_changes.stripe_customer_ensure(organization=owner.organization, email=None, now=timezone.now())

"""The billing portal runs on our own configuration: no plan switching (switching goes through our
confirmed flow, which bills upgrades before granting them and defers downgrades), cancellation at
period end without proration (no refund of unused time while the allowance stays).

The simulator's default configuration allows switching with prorations, like Stripe's dashboard
default; the pages are fetched over HTTP as a browser would get them.
"""
from __future__ import annotations

import re

import pytest
import requests
from django.core.management import call_command
from django.utils import timezone

from billing import stripe_gateway as gw
from billing.services import plan_changes
from organizations.models import Role
from organizations.tests.factories import MembershipFactory
from tests import stripe_calls

pytestmark = pytest.mark.django_db

SWITCH_FORM = re.compile(r'<form[^>]+action="/portal/[^"]+/switch"')


@pytest.fixture
def subscribed_org(stripe_settings):
    """An org with a paying pro subscription at the simulator (checkout completed with a card)."""
    org = MembershipFactory(role=Role.OWNER, organization__trial_ends_at=timezone.now()).organization
    start = plan_changes.checkout_start(organization=org, plan_tier="pro", email="owner@example.test",
                                        now=timezone.now())
    sub_id = stripe_settings.sim.complete_checkout(start["sessionId"], card="4242424242424242")["subscription"]
    org.refresh_from_db()
    return org, sub_id


def _page(url: str) -> str:
    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    return response.text


def test_our_portal_offers_no_plan_switch_and_cancels_at_period_end(subscribed_org, stripe_settings, settings):
    org, sub_id = subscribed_org
    assert settings.STRIPE_PORTAL_CONFIGURATION.startswith("bpc_")
    url = plan_changes.billing_portal_open(organization=org, now=timezone.now())["url"]
    html = _page(url)
    assert 'action="/portal/' in html and "/cancel" in html  # the page is the portal, with its cancel form
    assert not SWITCH_FORM.search(html) and "Switch to" not in html
    conf = {c.id: c for c in gw.billing_portal_configuration_list()}[settings.STRIPE_PORTAL_CONFIGURATION].obj
    assert conf["features"]["subscription_update"]["enabled"] is False
    assert (conf["features"]["subscription_cancel"]["mode"],
            conf["features"]["subscription_cancel"]["proration_behavior"]) == ("at_period_end", "none")
    # The customer cancels in the portal: the subscription runs (and stays paid for) until the period ends.
    bps_id = url.rsplit("/", 1)[1]
    requests.post(f"{stripe_settings.sim.base_url}/portal/{bps_id}/cancel", data={"subscription": sub_id},
                  timeout=10).raise_for_status()
    sub = gw.subscription_retrieve(sub_id).obj
    assert (sub["status"], sub["cancel_at_period_end"]) == ("active", True)
    assert not [i for i in stripe_calls.invoice_list(customer_id=org.stripe_customer_id) if i["amount_due"] < 0]


def test_the_simulator_default_portal_does_offer_switching(subscribed_org):
    """The same page under Stripe's (simulated) default configuration: switch forms present, so the
    assertion above can fail."""
    org, _sub_id = subscribed_org
    session = gw.billing_portal_session_create(customer_id=org.stripe_customer_id, return_url="http://testserver/b",
                                               idempotency_key=f"test-portal-default:{org.pk}")
    assert session.obj["configuration"] == "bpc_sim_default"
    html = _page(session.url)
    assert SWITCH_FORM.search(html) and "Switch to" in html


def test_configuration_is_found_by_metadata_when_the_setting_is_empty(subscribed_org, settings):
    org, _sub_id = subscribed_org
    ours = settings.STRIPE_PORTAL_CONFIGURATION
    settings.STRIPE_PORTAL_CONFIGURATION = ""
    url = plan_changes.billing_portal_open(organization=org, now=timezone.now())["url"]
    assert not SWITCH_FORM.search(_page(url))
    assert ours in {c.id for c in gw.billing_portal_configuration_list()}


def test_portal_endpoint_without_a_configuration_is_503(client, stripe_settings, settings):
    stripe_settings.sim.reset()  # a Stripe account where stripe_setup never ran
    settings.STRIPE_PORTAL_CONFIGURATION = ""
    owner = MembershipFactory(role=Role.OWNER)
    org = owner.organization
    org.stripe_customer_id = gw.customer_create(email=None, name=None, metadata={},
                                                idempotency_key=f"test-portal-503:{org.pk}").id
    org.save(update_fields=["stripe_customer_id"])
    client.force_login(owner.user)
    response = client.post("/api/billing/portal", data={"orgId": str(org.pk)}, content_type="application/json")
    assert response.status_code == 503 and response.json()["error"]["code"] == "PORTAL_NOT_CONFIGURED"


def test_stripe_setup_creates_the_configuration_once(stripe_settings, settings, capsys):
    call_command("stripe_setup")
    call_command("stripe_setup")
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("STRIPE_PORTAL_CONFIGURATION=")]
    assert lines == [f"STRIPE_PORTAL_CONFIGURATION={settings.STRIPE_PORTAL_CONFIGURATION}"] * 2
    assert [c.id for c in gw.billing_portal_configuration_list() if c.metadata] == [
        settings.STRIPE_PORTAL_CONFIGURATION]

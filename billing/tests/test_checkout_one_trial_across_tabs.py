"""One trial (and one subscription) per org across two tabs: a checkout for another plan supersedes the
open intent locally AND at Stripe, so the first tab's session can no longer be completed.
Simulator over real HTTP via the SDK; webhooks are the simulator's own events, signed."""
from __future__ import annotations

import json

import pytest

from billing import stripe_gateway as gw
from billing.models import CheckoutIntent, Subscription
from organizations.models import Role
from organizations.tests.factories import MembershipFactory
from tests import stripe_calls

from .stripe_events import replay_sim_events

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def owner(stripe_settings):
    return MembershipFactory(role=Role.OWNER)


def _checkout(client, org, tier):
    resp = client.post("/api/billing/checkout", data=json.dumps({"orgId": str(org.pk), "planTier": tier}),
                       content_type="application/json")
    return resp.status_code, resp.json()


def test_two_tabs_cannot_both_complete_a_trial_checkout(client, owner, stripe_settings):
    org = owner.organization
    client.force_login(owner.user)
    status, pro = _checkout(client, org, "pro")          # tab 1
    assert status == 200 and pro["trialDays"] == 7
    status, starter = _checkout(client, org, "starter")  # tab 2, before tab 1 was paid
    assert status == 200 and starter["trialDays"] == 7

    # Tab 1's session is dead at Stripe too, not only in our table.
    assert gw.checkout_session_retrieve(pro["sessionId"]).status == "expired"
    with pytest.raises(Exception):  # noqa: B017 - the simulator refuses to complete an expired session
        stripe_settings.sim.complete_checkout(pro["sessionId"], card="")
    stripe_settings.sim.complete_checkout(starter["sessionId"], card="")
    replay_sim_events(client, set())
    subs = list(Subscription.objects.filter(organization=org))
    assert [(s.plan_tier, s.status) for s in subs] == [("starter", "trialing")]
    customer = org.__class__.objects.get(pk=org.pk).stripe_customer_id
    assert len(stripe_calls.subscription_list(customer_id=customer)) == 1


def test_superseding_a_session_already_paid_is_refused(client, owner, stripe_settings):
    org = owner.organization
    client.force_login(owner.user)
    _, pro = _checkout(client, org, "pro")
    stripe_settings.sim.complete_checkout(pro["sessionId"], card="")  # paid; our webhook has not landed yet
    status, body = _checkout(client, org, "starter")
    assert status == 409 and body["error"]["code"] == "ALREADY_SUBSCRIBED", body
    customer = org.__class__.objects.get(pk=org.pk).stripe_customer_id
    assert len(stripe_calls.subscription_list(customer_id=customer)) == 1
    replay_sim_events(client, set())
    assert CheckoutIntent.objects.get(stripe_checkout_session_id=pro["sessionId"]).status == "completed"

"""Cancel at period end is keyed on the subscription row's state, not on the subscription alone:
cancel -> (undone by a downgrade) -> cancel again must reach Stripe again, not replay the first
answer from Stripe's 24 h idempotency cache. Simulator over real HTTP via the SDK."""
from __future__ import annotations

import json

import pytest

from billing import stripe_gateway as gw
from billing.models import Subscription
from organizations.models import Role
from organizations.tests.factories import MembershipFactory

from .stripe_events import replay_sim_events

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def owner(stripe_settings):
    return MembershipFactory(role=Role.OWNER)


def _post(client, path, body):
    resp = client.post(path, data=json.dumps(body), content_type="application/json")
    return resp.status_code, resp.json()


def test_cancel_again_after_it_was_undone_reaches_stripe(client, owner, stripe_settings):
    org = owner.organization
    client.force_login(owner.user)
    seen: set[str] = set()
    status, body = _post(client, "/api/billing/checkout", {"orgId": str(org.pk), "planTier": "pro"})
    assert status == 200, body
    stripe_settings.sim.complete_checkout(body["sessionId"], card="4242424242424242")
    replay_sim_events(client, seen)
    sub_id = Subscription.objects.get(organization=org).stripe_subscription_id

    status, body = _post(client, "/api/billing/subscription/cancel", {"orgId": str(org.pk)})
    assert status == 200 and body["subscription"]["cancelAtPeriodEnd"] is True, body
    replay_sim_events(client, seen)
    status, body = _post(client, "/api/billing/subscription/downgrade", {"orgId": str(org.pk), "planTier": "starter"})
    assert status == 200 and body["subscription"]["cancelAtPeriodEnd"] is False, body  # the downgrade undid it
    replay_sim_events(client, seen)
    assert gw.subscription_retrieve(sub_id).obj["cancel_at_period_end"] is False

    status, body = _post(client, "/api/billing/subscription/cancel", {"orgId": str(org.pk)})
    assert status == 200 and body["subscription"]["cancelAtPeriodEnd"] is True, body
    assert gw.subscription_retrieve(sub_id).obj["cancel_at_period_end"] is True  # Stripe really ends it

"""A paid org driven through the real endpoints against the simulator (plan-change tests): its owner
(trial already used, so checkout bills from day one), JSON posts, a subscription paid by card, the
price Stripe bills, and a card swap in the billing portal."""
from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.parse
import urllib.request

import pytest
from django.utils import timezone

from billing import stripe_gateway as gw
from organizations.models import Role
from organizations.tests.factories import MembershipFactory

from .stripe_events import replay_sim_events

DAY = 86400
GOOD_CARD = "4242424242424242"


@pytest.fixture
def owner(stripe_settings):
    membership = MembershipFactory(role=Role.OWNER)
    org = membership.organization
    org.trial_ends_at = timezone.now() - dt.timedelta(days=90)  # trial used: paid from day one
    org.save(update_fields=["trial_ends_at"])
    return membership


def post_json(client, path: str, body: dict) -> tuple[int, dict]:
    resp = client.post(path, data=json.dumps(body), content_type="application/json")
    return resp.status_code, resp.json()


def post_form(url: str, fields: dict) -> int:
    """A form post to one of the simulator's hosted pages (portal, invoice), as a browser would."""
    req = urllib.request.Request(url, data=urllib.parse.urlencode(fields).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def subscribe(client, owner, sim, seen: set, tier: str = "pro") -> str:
    """Checkout for `tier` completed with a good card, its events delivered; the Stripe subscription id."""
    status, body = post_json(client, "/api/billing/checkout", {"orgId": str(owner.organization_id), "planTier": tier})
    assert status == 200, body
    cs = sim.complete_checkout(body["sessionId"], card=GOOD_CARD)
    replay_sim_events(client, seen)
    return cs["subscription"]


def stripe_price(sub_id: str) -> str:
    return gw.subscription_retrieve(sub_id).obj["items"]["data"][0]["price"]["id"]


def replace_card(org, card: str) -> None:
    """The customer puts another card on file in the billing portal (default of customer and subscription)."""
    org.refresh_from_db()
    portal = gw.billing_portal_session_create(customer_id=org.stripe_customer_id, return_url="http://app.test/",
                                              idempotency_key=f"t-portal-{card}")
    assert post_form(f"{portal.url}/card", {"card_number": card}) == 200

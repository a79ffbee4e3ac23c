"""Saved test cards for the top-up tests, on top of the simulator fixtures (tests/stripe_fixtures.py):
`topup_sim` = `stripe_settings` (fresh simulator, settings pointed at it, prices incl. the credit
pack) plus a `control(path, body)` shortcut; `customer_with_card` gives an org a Stripe customer
whose default card is one of CARDS. Database rows come from billing/tests/factories.py.
"""
from __future__ import annotations

import itertools
from decimal import Decimal

import pytest

from tests import stripe_calls
from tests.stripe_fixtures import SIM_WEBHOOK_SECRET  # noqa: F401 - re-exported for the tests

_seq = itertools.count(1)

#: test card -> simulator payment method id
CARDS = {
    "4242424242424242": "pm_card_visa",
    "4000000000000341": "pm_card_chargeCustomerFail",
    "4000002500003155": "pm_card_authenticationRequiredOnSetup",
    "4000000000000002": "pm_card_chargeDeclined",
    "4000000000009995": "pm_card_chargeDeclinedInsufficientFunds",
}


class _Sim:
    def __init__(self, env) -> None:
        self.env = env
        self.sim = env.sim

    def control(self, path: str, body: dict | None = None):
        return self.sim.control("POST" if body is not None else "GET", path, body)


@pytest.fixture
def topup_sim(stripe_settings, settings):
    assert settings.STRIPE_PRICE_CREDITS_500, "stripe_prices_ensure should create the credit pack price"
    return _Sim(stripe_settings)


def customer_with_card(org, card: str) -> str:
    """Create a simulator customer whose default card is `card`; store it on the org."""
    from billing import stripe_gateway

    n = next(_seq)
    cus = stripe_gateway.customer_create(email=f"billing{n}@example.test", name=org.name,
                                         metadata={"orgId": str(org.pk)}, idempotency_key=f"topup-test-cus:{org.pk}")
    pm = stripe_calls.payment_method_attach(payment_method_id=CARDS[card], customer_id=cus.id,
                                              idempotency_key=f"topup-test-pm:{org.pk}")
    stripe_calls.customer_set_default_payment_method(customer_id=cus.id, payment_method_id=pm["id"],
                                                       idempotency_key=f"topup-test-default:{org.pk}")
    org.stripe_customer_id = cus.id
    org.save(update_fields=["stripe_customer_id"])
    return cus.id


def topup_purchased(org) -> Decimal:
    from billing.models import CreditBalance

    return CreditBalance.objects.get(organization=org).topup_purchased

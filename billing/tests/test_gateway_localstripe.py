"""The same gateway calls against localstripe (third-party fake, PyPI) to keep the simulator honest.

localstripe covers customers, cards and off-session PaymentIntents only (2017-era shapes); it
answers 200 `requires_action` where Stripe answers 402 `authentication_required` off session —
the gateway turns both into AUTHENTICATION_REQUIRED.
"""
from __future__ import annotations

import pytest

from billing import stripe_gateway as gw
from billing.stripe_gateway import StripeCardError
from tests import stripe_calls
from tests.stripe_calls import card_payment_method_create


@pytest.fixture(params=["simulator", "localstripe"])
def fake_stripe(request, settings):
    if request.param == "simulator":
        env = request.getfixturevalue("stripe_settings")
        yield env.sim.base_url
        return
    base = request.getfixturevalue("localstripe_server")
    settings.STRIPE_API_BASE = base
    settings.STRIPE_SECRET_KEY = "sk_test_localstripe"
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    gw.reset_client()
    yield base
    gw.reset_client()


def _card(number: str, key: str) -> dict:
    return card_payment_method_create(number=number, idempotency_key=key)


def test_customer_card_and_off_session_charges(fake_stripe):
    cus = gw.customer_create(email="x@example.test", name="X", metadata={"orgId": "1"}, idempotency_key="cus")
    assert cus.id.startswith("cus_") and gw.customer_retrieve(cus.id).email == "x@example.test"

    visa = _card("4242424242424242", "pm1")
    attached = stripe_calls.payment_method_attach(payment_method_id=visa["id"], customer_id=cus.id, idempotency_key="a1")
    assert attached["customer"] == cus.id and attached["card"]["last4"] == "4242"
    assert [pm.id for pm in gw.payment_method_list(customer_id=cus.id)] == [visa["id"]]
    pi = gw.payment_intent_create_off_session(customer_id=cus.id, amount_cents=2000, metadata={"k": "v"},
                                              idempotency_key="pi1", payment_method_id=visa["id"])
    assert pi.status == "succeeded" and pi.amount_cents == 2000

    declined = _card("4000000000000002", "pm2")
    with pytest.raises(StripeCardError) as exc:
        stripe_calls.payment_method_attach(payment_method_id=declined["id"], customer_id=cus.id, idempotency_key="a2")
    assert exc.value.code == "CARD_DECLINED"

    fails = _card("4000000000000341", "pm3")
    stripe_calls.payment_method_attach(payment_method_id=fails["id"], customer_id=cus.id, idempotency_key="a3")
    with pytest.raises(StripeCardError) as exc:
        gw.payment_intent_create_off_session(customer_id=cus.id, amount_cents=2000, metadata={},
                                             idempotency_key="pi3", payment_method_id=fails["id"])
    assert exc.value.code == "CARD_DECLINED"

    auth = _card("4000002500003155", "pm4")
    stripe_calls.payment_method_attach(payment_method_id=auth["id"], customer_id=cus.id, idempotency_key="a4")
    with pytest.raises(StripeCardError) as exc:
        gw.payment_intent_create_off_session(customer_id=cus.id, amount_cents=2000, metadata={},
                                             idempotency_key="pi4", payment_method_id=auth["id"])
    assert exc.value.code == "AUTHENTICATION_REQUIRED" and exc.value.payment_intent_id

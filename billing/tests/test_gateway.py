"""billing.stripe_gateway against the bundled simulator over real HTTP through the real `stripe` SDK."""
from __future__ import annotations

import json

import pytest
import stripe

from billing import stripe_gateway as gw
from billing.errors import BillingError
from billing.stripe_gateway import StripeCardError
from billing.stripe_payloads import Customer
from stripe_sim.webhooks import sign
from tests import stripe_calls


def _customer(key: str = "c1") -> Customer:
    return gw.customer_create(email="owner@example.test", name="Acme", metadata={"orgId": "org-1"},
                              idempotency_key=f"test:{key}")


def test_customer_create_retrieve_and_idempotency(stripe_settings):
    first = _customer()
    again = _customer()
    assert first.id.startswith("cus_") and again.id == first.id  # same key + params -> same customer
    assert gw.customer_retrieve(first.id).metadata == {"orgId": "org-1"}
    other = _customer("c2")
    assert other.id != first.id
    with pytest.raises(BillingError) as exc:  # same key, other params -> Stripe's idempotency_error
        gw.customer_create(email="x@example.test", name="Other", metadata={}, idempotency_key="test:c1")
    assert exc.value.code == "STRIPE_IDEMPOTENCY_ERROR"


def test_not_found_and_auth_errors_map_to_codes(stripe_settings, settings):
    with pytest.raises(BillingError) as exc:
        gw.customer_retrieve("cus_missing")
    assert exc.value.code == "STRIPE_NOT_FOUND"
    settings.STRIPE_SECRET_KEY = "sk_live_wrong"
    with pytest.raises(BillingError) as exc:
        gw.customer_retrieve("cus_missing")
    assert exc.value.code == "STRIPE_AUTH_ERROR"


def test_unreachable_stripe_is_unavailable(stripe_settings, settings):
    from tests.helpers import free_port
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(BillingError) as exc:
        gw.customer_retrieve("cus_x")
    assert exc.value.code == "STRIPE_UNAVAILABLE" and exc.value.http_status == 503


def test_missing_idempotency_key_is_refused(stripe_settings):
    with pytest.raises(ValueError):
        gw.customer_create(email=None, name=None, metadata={}, idempotency_key="")


@pytest.mark.parametrize("pm,code", [
    ("pm_card_chargeDeclined", "CARD_DECLINED"),
    ("pm_card_chargeDeclinedInsufficientFunds", "INSUFFICIENT_FUNDS"),
])
def test_cards_declined_on_attach(stripe_settings, pm, code):
    cus = _customer()
    with pytest.raises(StripeCardError) as exc:
        stripe_calls.payment_method_attach(payment_method_id=pm, customer_id=cus.id, idempotency_key=f"attach:{pm}")
    assert exc.value.code == code and exc.value.http_status == 402
    assert gw.payment_method_list(customer_id=cus.id) == []


@pytest.mark.parametrize("pm,code,decline", [
    ("pm_card_visa", None, None),
    ("pm_card_chargeDeclined", "CARD_DECLINED", "generic_decline"),
    ("pm_card_chargeDeclinedInsufficientFunds", "INSUFFICIENT_FUNDS", "insufficient_funds"),
    ("pm_card_chargeCustomerFail", "CARD_DECLINED", "generic_decline"),
    ("pm_card_authenticationRequiredOnSetup", "AUTHENTICATION_REQUIRED", "authentication_required"),
])
def test_off_session_payment_intent_per_test_card(stripe_settings, pm, code, decline):
    cus = _customer()
    kwargs = dict(customer_id=cus.id, amount_cents=2000, metadata={"purpose": "test"},
                  idempotency_key=f"pi:{pm}", payment_method_id=pm)
    if code is None:
        pi = gw.payment_intent_create_off_session(**kwargs)
        assert pi.status == "succeeded" and pi.obj["amount_received"] == 2000 and pi.metadata == {"purpose": "test"}
        return
    with pytest.raises(StripeCardError) as exc:
        gw.payment_intent_create_off_session(**kwargs)
    assert exc.value.code == code and exc.value.decline_code == decline
    pi = gw.payment_intent_retrieve(exc.value.payment_intent_id)
    assert pi.status == "requires_payment_method" and pi.last_error.decline_code == decline


def test_saved_cards_attach_default_and_charge(stripe_settings):
    cus = _customer()
    assert gw.payment_method_default(customer_id=cus.id) is None
    with pytest.raises(StripeCardError) as exc:
        gw.payment_intent_create_off_session(customer_id=cus.id, amount_cents=2000, metadata={},
                                             idempotency_key="pi:none")
    assert exc.value.code == "NO_PAYMENT_METHOD"
    fail = stripe_calls.payment_method_attach(payment_method_id="pm_card_chargeCustomerFail", customer_id=cus.id,
                                    idempotency_key="attach:0341")  # 0341 attaches fine...
    stripe_calls.customer_set_default_payment_method(customer_id=cus.id, payment_method_id=fail["id"],
                                           idempotency_key="default:0341")
    assert gw.payment_method_default(customer_id=cus.id).card_last4 == "0341"
    with pytest.raises(StripeCardError) as exc:  # ...but every charge fails
        gw.payment_intent_create_off_session(customer_id=cus.id, amount_cents=2000, metadata={},
                                             idempotency_key="pi:0341")
    assert exc.value.code == "CARD_DECLINED"
    visa = stripe_calls.payment_method_attach(payment_method_id="pm_card_visa", customer_id=cus.id,
                                    idempotency_key="attach:visa")
    stripe_calls.customer_set_default_payment_method(customer_id=cus.id, payment_method_id=visa["id"],
                                           idempotency_key="default:visa")
    pi = gw.payment_intent_create_off_session(customer_id=cus.id, amount_cents=4000, metadata={"n": "1"},
                                              idempotency_key="pi:visa")
    again = gw.payment_intent_create_off_session(customer_id=cus.id, amount_cents=4000, metadata={"n": "1"},
                                                 idempotency_key="pi:visa")
    assert pi.status == "succeeded" and pi.obj["payment_method"] == visa["id"] and again.id == pi.id
    assert {pm.id for pm in gw.payment_method_list(customer_id=cus.id)} == {fail["id"], visa["id"]}


def test_price_lookup_and_setup_is_idempotent(stripe_settings):
    from billing.services.plan_changes import stripe_prices_ensure
    prices = stripe_settings.prices
    assert set(prices) == {"STRIPE_PRICE_STARTER", "STRIPE_PRICE_PRO", "STRIPE_PRICE_MAX", "STRIPE_PRICE_CREDITS_500"}
    assert stripe_prices_ensure() == prices  # second run creates nothing new
    pro = gw.price_by_lookup_key("plan_pro_monthly")
    assert pro.id == prices["STRIPE_PRICE_PRO"] and pro.unit_amount_cents == 9900
    assert pro.recurring_interval == "month"
    pack = gw.price_by_lookup_key("credits_500_pack")
    assert pack.unit_amount_cents == 2000 and pack.recurring_interval is None and pack.obj["type"] == "one_time"
    assert gw.price_by_lookup_key("nope") is None


def test_subscription_checkout_trial_then_upgrade_and_cancel(stripe_settings):
    sim = stripe_settings.sim
    cus = _customer()
    cs = gw.checkout_session_create(mode="subscription", customer_id=cus.id,
                                    price_id=stripe_settings.prices["STRIPE_PRICE_STARTER"],
                                    success_url="http://app/ok?cs={CHECKOUT_SESSION_ID}", cancel_url="http://app/no",
                                    metadata={"orgId": "org-1", "planTier": "starter"}, trial_period_days=7,
                                    idempotency_key="cs:1")
    assert cs.url.startswith(sim.base_url + "/checkout/") and cs.status == "open"
    done = sim.complete_checkout(cs.id, card="")  # trial + if_required: no card needed
    assert done["status"] == "complete" and done["payment_status"] == "no_payment_required"
    sub = gw.subscription_retrieve(done["subscription"]).obj
    assert sub["status"] == "trialing" and sub["metadata"] == {"orgId": "org-1", "planTier": "starter"}
    assert sub["trial_end"] - sub["trial_start"] == 7 * 86400
    assert gw.checkout_session_retrieve(cs.id).subscription_id == sub["id"]

    up, pending = gw.subscription_upgrade_price(subscription_id=sub["id"],
                                                price_id=stripe_settings.prices["STRIPE_PRICE_PRO"],
                                                idempotency_key="up:1")
    up = up.obj
    assert pending is None
    assert up["items"]["data"][0]["price"]["id"] == stripe_settings.prices["STRIPE_PRICE_PRO"]
    assert up["status"] == "trialing"  # upgrading during the trial keeps the trial, nothing charged
    later = gw.subscription_cancel(subscription_id=sub["id"], at_period_end=True, idempotency_key="cancel:1").obj
    assert later["cancel_at_period_end"] is True and later["status"] == "trialing"
    now = gw.subscription_cancel(subscription_id=sub["id"], idempotency_key="cancel:2").obj
    assert now["status"] == "canceled" and now["ended_at"]
    assert [s["id"] for s in stripe_calls.subscription_list(customer_id=cus.id)] == [sub["id"]]


def test_paid_subscription_upgrade_prorates_now(stripe_settings):
    sim = stripe_settings.sim
    cus = _customer()
    cs = gw.checkout_session_create(mode="subscription", customer_id=cus.id,
                                    price_id=stripe_settings.prices["STRIPE_PRICE_STARTER"], success_url="http://a/ok",
                                    cancel_url="http://a/no", metadata={"orgId": "o"}, trial_period_days=None,
                                    idempotency_key="cs:paid")
    done = sim.complete_checkout(cs.id, card="4242424242424242")
    sub = gw.subscription_retrieve(done["subscription"]).obj
    assert sub["status"] == "active" and sub["default_payment_method"]
    first = stripe_calls.invoice_list(customer_id=cus.id)
    assert [i["amount_paid"] for i in first] == [999] and first[0]["status"] == "paid"
    assert first[0]["hosted_invoice_url"] and first[0]["invoice_pdf"]
    sim.advance_clock(10 * 86400)
    _, pending = gw.subscription_upgrade_price(subscription_id=sub["id"],
                                               price_id=stripe_settings.prices["STRIPE_PRICE_MAX"],
                                               idempotency_key="up:max")
    assert pending is None  # paid at once: applied
    invoices = stripe_calls.invoice_list(customer_id=cus.id, subscription_id=sub["id"])
    proration = invoices[0]
    assert proration["billing_reason"] == "subscription_update" and proration["status"] == "paid"
    # unused starter credited, remaining max charged: strictly between 0 and a full month of max
    assert 0 < proration["amount_paid"] < 49999
    assert {line["parent"]["subscription_item_details"]["proration"] for line in proration["lines"]["data"]} == {True}
    assert gw.invoice_retrieve(proration["id"]).id == proration["id"]


def test_payment_mode_checkout_and_portal(stripe_settings):
    sim = stripe_settings.sim
    cus = _customer()
    cs = gw.checkout_session_create(mode="payment", customer_id=cus.id, quantity=2,
                                    price_id=stripe_settings.prices["STRIPE_PRICE_CREDITS_500"],
                                    success_url="http://a/ok", cancel_url="http://a/no",
                                    metadata={"purpose": "credit_topup", "purchase_id": "7"}, idempotency_key="cs:pay")
    assert cs.obj["amount_total"] == 4000
    declined = None
    try:
        sim.complete_checkout(cs.id, card="4000000000009995")
    except Exception as exc:  # the control endpoint answers 402 like the page
        declined = exc
    assert declined is not None and gw.checkout_session_retrieve(cs.id).status == "open"
    done = sim.complete_checkout(cs.id, card="4242424242424242")
    pi = gw.payment_intent_retrieve(done["payment_intent"])
    assert pi.status == "succeeded" and pi.amount_cents == 4000 and pi.metadata["purchase_id"] == "7"
    portal = gw.billing_portal_session_create(customer_id=cus.id, return_url="http://a/back",
                                              idempotency_key="portal:1")
    assert portal.url.startswith(sim.base_url + "/portal/") and portal.obj["return_url"] == "http://a/back"


def test_events_retrieve_and_list(stripe_settings):
    cus = _customer()
    events = stripe_calls.event_list(types=["customer.created"])
    assert events and events[0]["data"]["object"]["id"] == cus.id
    event = stripe_calls.event_retrieve(events[0]["id"])
    assert event["api_version"] == gw.STRIPE_API_VERSION and event["type"] == "customer.created"


def test_webhook_construct_event_verifies_signature(stripe_settings, settings):
    payload = json.dumps({"id": "evt_1", "object": "event", "type": "invoice.paid",
                          "api_version": gw.STRIPE_API_VERSION, "data": {"object": {}}}).encode()
    header = sign(payload, settings.STRIPE_WEBHOOK_SECRET)
    stripe.WebhookSignature.verify_header(payload.decode(), header, settings.STRIPE_WEBHOOK_SECRET, 300)
    assert gw.webhook_construct_event(payload, header)["id"] == "evt_1"
    for bad in (sign(payload, "whsec_other"), "", sign(payload, settings.STRIPE_WEBHOOK_SECRET, timestamp=1)):
        with pytest.raises(BillingError) as exc:
            gw.webhook_construct_event(payload, bad)
        assert exc.value.code == "STRIPE_SIGNATURE_INVALID"
    old = payload.replace(gw.STRIPE_API_VERSION.encode(), b"2020-08-27")
    with pytest.raises(BillingError) as exc:
        gw.webhook_construct_event(old, sign(old, settings.STRIPE_WEBHOOK_SECRET))
    assert exc.value.code == "STRIPE_API_VERSION_MISMATCH"


def test_webhook_timestamps_outside_the_tolerance_either_side_of_now_are_stale(stripe_settings, settings):
    """The gateway is the one place for the tolerance: measured from the caller's `now`, in the past and
    in the future (stripe's own verifier only looks back), before the signature."""
    import datetime as dt

    payload = json.dumps({"id": "evt_1", "object": "event", "type": "invoice.paid",
                          "api_version": gw.STRIPE_API_VERSION, "data": {"object": {}}}).encode()
    now = dt.datetime(2026, 11, 10, 12, 0, tzinfo=dt.timezone.utc)
    t = int(now.timestamp())
    for signed_at in (t - gw.WEBHOOK_TOLERANCE_SECONDS - 1, t + gw.WEBHOOK_TOLERANCE_SECONDS + 1):
        for secret in (settings.STRIPE_WEBHOOK_SECRET, "whsec_other"):
            with pytest.raises(BillingError) as exc:
                gw.webhook_construct_event(payload, sign(payload, secret, timestamp=signed_at), now=now)
            assert exc.value.code == "STRIPE_SIGNATURE_INVALID"
            assert exc.value.extra == {"stale": True, "timestamp": signed_at}
    edge = t + gw.WEBHOOK_TOLERANCE_SECONDS
    header = sign(payload, settings.STRIPE_WEBHOOK_SECRET, timestamp=edge)
    assert gw.webhook_construct_event(payload, header, now=now)["id"] == "evt_1"

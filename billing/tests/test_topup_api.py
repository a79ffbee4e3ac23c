"""Top-up endpoints and flows on MariaDB + the Stripe simulator (real SDK over HTTP), tasks eager.

The async (real Celery worker) outcomes live in test_topup_worker.py."""
from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import stripe_gateway
from billing.models import AutoTopupSettingsChange, CreditBalance, CreditPurchase, PurchaseStatus
from billing.services import topup_purchases
from billing.services.balance import balance_for_update
from billing.tests.saved_cards import SIM_WEBHOOK_SECRET, customer_with_card, topup_purchased
from billing.tests.saved_cards import topup_sim  # noqa: F401 - fixture
from billing.tests.stripe_events import post_event, sign  # noqa: F401
from organizations.models import Role
from organizations.tests.factories import MembershipFactory
from tests import stripe_calls

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner_client(client):
    m = MembershipFactory(role=Role.OWNER)
    client.force_login(m.user)
    client.org = m.organization
    return client


def _post(client, url, body):
    return client.post(url, data=json.dumps(body), content_type="application/json")


def _settings_body(org, **kw):
    body = {"orgId": str(org.pk), "enabled": True, "threshold": 50, "packs": 1, "monthlyCapPacks": 10}
    body.update(kw)
    return body


# --- auto top-up settings validation ------------------------------------------------------------

@pytest.mark.parametrize("override,code", [
    ({"threshold": 9}, "INVALID_AUTO_TOPUP_THRESHOLD"),
    ({"threshold": 500.01}, "INVALID_AUTO_TOPUP_THRESHOLD"),
    ({"threshold": "abc"}, "INVALID_AUTO_TOPUP_THRESHOLD"),
    ({"packs": 0}, "INVALID_AUTO_TOPUP_PACKS"),
    ({"packs": 11}, "INVALID_AUTO_TOPUP_PACKS"),
    ({"packs": 1.5}, "INVALID_AUTO_TOPUP_PACKS"),
    ({"packs": 3, "monthlyCapPacks": 2}, "INVALID_AUTO_TOPUP_CAP"),
    ({"enabled": "maybe"}, "INVALID_REQUEST"),
])
def test_auto_topup_settings_validation(owner_client, override, code):
    org = owner_client.org
    org.stripe_customer_id = "cus_not_called"
    org.save()
    resp = _post(owner_client, "/api/billing/credits/auto-topup", _settings_body(org, **override))
    assert resp.status_code == 400, resp.content
    assert resp.json()["error"]["code"] == code
    assert not AutoTopupSettingsChange.objects.filter(organization=org).exists()


@pytest.mark.parametrize("data,json_body,code,message", [
    # the first bad field, in the form's order, is the one reported (bounds included)
    ({"enabled": True, "threshold": 9, "packs": "abc", "monthlyCapPacks": 1}, True,
     "INVALID_AUTO_TOPUP_THRESHOLD", "threshold must be between 10 and 500 credits"),
    ({"enabled": "yes", "threshold": 50, "packs": 1, "monthlyCapPacks": 1}, True,
     "INVALID_REQUEST", "enabled must be true or false"),
    ({"enabled": "on", "threshold": "12.345", "packs": "1", "monthly_cap_packs": "1"}, False,
     "INVALID_AUTO_TOPUP_THRESHOLD", "threshold must have at most two decimal places"),
    ({"threshold": "50", "packs": "2.0", "monthly_cap_packs": "1"}, False,
     "INVALID_AUTO_TOPUP_CAP", "the monthly cap must be at least the packs per top-up"),
    ({"threshold": "50", "packs": True, "monthly_cap_packs": "1"}, False,
     "INVALID_AUTO_TOPUP_PACKS", "packs must be a whole number"),
])
def test_auto_topup_form_refusals_have_stable_codes(data, json_body, code, message):
    from billing.forms import AutoTopupSettingsForm
    from billing_project.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as err:
        AutoTopupSettingsForm(data, json_body=json_body).parse()
    assert (err.value.code, err.value.message) == (code, message)


def test_auto_topup_form_parses_typed_values():
    from billing.forms import AutoTopupSettingsForm

    parsed = AutoTopupSettingsForm({"enabled": "on", "threshold": "12.50", "packs": "2.00", "monthly_cap_packs": "4"},
                                   json_body=False).parse()
    assert parsed == {"enabled": True, "threshold": Decimal("12.50"), "packs": 2, "monthlyCapPacks": 4}
    assert AutoTopupSettingsForm({"threshold": 50, "packs": 1, "monthlyCapPacks": 1},
                                 json_body=False).parse()["enabled"] is False  # an unchecked checkbox is absent


def test_auto_topup_threshold_is_read_exactly_from_json(owner_client):
    """JSON numbers are parsed as decimals: 10.000000000000000001 is not the float 10.0 (accepted as 10.00)."""
    org = owner_client.org
    org.stripe_customer_id = "cus_not_called"
    org.save()
    raw = json.dumps(_settings_body(org)).replace('"threshold": 50', '"threshold": 10.000000000000000001')
    resp = owner_client.post("/api/billing/credits/auto-topup", data=raw, content_type="application/json")
    assert resp.status_code == 400, resp.content
    assert resp.json()["error"] == {"code": "INVALID_AUTO_TOPUP_THRESHOLD",
                                    "message": "threshold must have at most two decimal places"}
    raw = json.dumps(_settings_body(org)).replace('"threshold": 50', '"threshold": 12.50')
    resp = owner_client.post("/api/billing/credits/auto-topup", data=raw, content_type="application/json")
    assert resp.status_code == 200 and resp.json()["autoTopup"]["threshold"] == "12.50"


def test_auto_topup_settings_saved_and_audited(owner_client):
    org = owner_client.org
    org.stripe_customer_id = "cus_not_called"
    org.save()
    resp = _post(owner_client, "/api/billing/credits/auto-topup",
                 _settings_body(org, threshold=10, packs=10, monthlyCapPacks=10))
    assert resp.status_code == 200, resp.content
    assert resp.json()["autoTopup"] == {"enabled": True, "threshold": "10.00", "packs": 10, "monthlyCapPacks": 10}
    b = CreditBalance.objects.get(organization=org)
    assert (b.auto_topup_enabled, b.auto_topup_threshold, b.auto_topup_packs, b.auto_topup_monthly_cap_packs) == (
        True, Decimal("10.00"), 10, 10)
    change = AutoTopupSettingsChange.objects.get(organization=org)
    assert change.reason == "admin" and change.enabled


def test_auto_topup_needs_a_saved_card_and_an_admin(client):
    member = MembershipFactory(role=Role.MEMBER)
    client.force_login(member.user)
    resp = _post(client, "/api/billing/credits/auto-topup", _settings_body(member.organization))
    assert resp.status_code == 403
    owner = MembershipFactory(role=Role.OWNER)
    client.force_login(owner.user)
    resp = _post(client, "/api/billing/credits/auto-topup", _settings_body(owner.organization))
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "NO_PAYMENT_METHOD"
    resp = _post(client, "/api/billing/credits/topup", {"orgId": str(owner.organization.pk), "packs": 11})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "INVALID_PACKS"


def test_auto_topup_form_post_redirects_back(owner_client):
    org = owner_client.org
    org.stripe_customer_id = "cus_not_called"
    org.save()
    resp = owner_client.post("/api/billing/credits/auto-topup", {
        "orgId": str(org.pk), "enabled": "on", "threshold": "75", "packs": "2", "monthlyCapPacks": "4"})
    assert resp.status_code == 302 and resp["Location"].startswith("/settings/billing")
    b = CreditBalance.objects.get(organization=org)
    assert b.auto_topup_enabled and b.auto_topup_threshold == Decimal("75.00") and b.auto_topup_monthly_cap_packs == 4


# --- manual top-up: Checkout, webhook twice --------------------------------------------------------

def _sim_events(types):
    return stripe_calls.event_list(types=types, limit=100)


def test_checkout_topup_credits_once_on_double_webhook(owner_client, topup_sim, django_capture_on_commit_callbacks):
    org = owner_client.org
    resp = _post(owner_client, "/api/billing/credits/topup", {"orgId": str(org.pk), "packs": 2})
    assert resp.status_code == 200, resp.content
    url, pid = resp.json()["url"], resp.json()["purchaseId"]
    purchase = CreditPurchase.objects.get(pk=pid)
    assert purchase.status == PurchaseStatus.STARTED and purchase.stripe_checkout_session_id in url
    assert (purchase.credits, purchase.amount_cents) == (Decimal("1000.00"), 4000)

    topup_sim.control(f"/_sim/checkout/{purchase.stripe_checkout_session_id}/complete",
                      {"card": "4242424242424242"})
    completed = [e for e in _sim_events(["checkout.session.completed"])
                 if e["data"]["object"]["id"] == purchase.stripe_checkout_session_id]
    assert len(completed) == 1
    event = completed[0]
    for _ in range(2):  # Stripe delivers at least once: the same event twice
        with django_capture_on_commit_callbacks(execute=True):
            r = post_event(owner_client, event, secret=SIM_WEBHOOK_SECRET)
        assert r.status_code == 200, r.content
    # ...and the PaymentIntent's own success event too (a different event, same payment)
    pi_events = [e for e in _sim_events(["payment_intent.succeeded"])
                 if (e["data"]["object"].get("metadata") or {}).get("purchase_id") == str(pid)]
    assert pi_events
    with django_capture_on_commit_callbacks(execute=True):
        assert post_event(owner_client, pi_events[0], secret=SIM_WEBHOOK_SECRET).status_code == 200
    # and the service entry points called again directly
    now = timezone.now()
    topup_purchases.topup_checkout_completed(stripe_session=event["data"]["object"], now=now)
    topup_purchases.topup_payment_succeeded(stripe_payment_intent=pi_events[0]["data"]["object"], now=now)

    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.SUCCEEDED and purchase.credits_applied_at is not None
    assert purchase.stripe_payment_intent_id == pi_events[0]["data"]["object"]["id"]
    assert topup_purchased(org) == Decimal("1000.00")
    org.refresh_from_db()
    assert org.stripe_customer_id  # the card saved by Checkout is now the org's saved card

    history = owner_client.get(f"/api/billing/credits/history?orgId={org.pk}").json()["purchases"]
    assert [(h["id"], h["status"], h["credits"]) for h in history] == [(pid, "succeeded", "1000.00")]


# --- manual top-up with the saved card ------------------------------------------------------------

@pytest.mark.parametrize("card,status,code,http", [
    ("4242424242424242", "succeeded", None, 201),
    ("4000000000000341", "failed", "CARD_DECLINED", 402),
    ("4000002500003155", "requires_action", "AUTHENTICATION_REQUIRED", 202),
])
def test_saved_card_topup_outcomes(owner_client, topup_sim, card, status, code, http):
    org = owner_client.org
    customer_with_card(org, card)
    resp = _post(owner_client, "/api/billing/credits/topup", {"orgId": str(org.pk), "packs": 1, "useSavedCard": True})
    assert resp.status_code == http, resp.content
    body = resp.json()
    assert body["status"] == status and body["failureCode"] == code
    purchase = CreditPurchase.objects.get(pk=body["purchaseId"])
    assert purchase.status == status and purchase.stripe_payment_intent_id
    expected = Decimal("500.00") if status == "succeeded" else Decimal("0.00")
    assert CreditBalance.objects.filter(organization=org, topup_purchased=expected).exists() or (
        expected == 0 and not CreditBalance.objects.filter(organization=org).exists())
    if status == "requires_action":
        assert body["finishUrl"].endswith(f"/billing/topups/{purchase.pk}/finish?org={org.slug}")
        # the finish link sends the admin to Checkout for the same purchase; paying there succeeds it
        r = owner_client.get(f"/billing/topups/{purchase.pk}/finish?org={org.slug}")
        assert r.status_code == 302 and "/checkout/" in r["Location"]
        purchase.refresh_from_db()
        topup_sim.control(f"/_sim/checkout/{purchase.stripe_checkout_session_id}/complete",
                          {"card": "4242424242424242"})
        ev = [e for e in _sim_events(["checkout.session.completed"])
              if e["data"]["object"]["id"] == purchase.stripe_checkout_session_id][0]
        topup_purchases.topup_checkout_completed(stripe_session=ev["data"]["object"], now=timezone.now())
        purchase.refresh_from_db()
        assert purchase.status == "succeeded" and topup_purchased(org) == Decimal("500.00")


def test_success_after_api_response_is_a_no_op_and_overage_is_settled_first(owner_client, topup_sim, now):
    org = owner_client.org
    customer_with_card(org, "4242424242424242")
    with __import__("django.db").db.transaction.atomic():
        b = balance_for_update(organization_id=org.pk, now=now)
        CreditBalance.objects.filter(pk=b.pk).update(overage_credits_owed=Decimal("12.50"))
    purchase = topup_purchases.topup_saved_card_purchase(organization_id=org.pk, packs=1, now=now)
    assert purchase.status == "succeeded"
    pi = stripe_gateway.payment_intent_retrieve(purchase.stripe_payment_intent_id)
    assert topup_purchases.topup_payment_succeeded(stripe_payment_intent=pi.obj, now=now).status == "succeeded"
    b = CreditBalance.objects.get(organization=org)
    assert (b.topup_purchased, b.topup_used, b.overage_credits_owed) == (
        Decimal("500.00"), Decimal("12.50"), Decimal("0.00"))


def test_insufficient_funds_maps_to_failed(owner_client, topup_sim, now):
    """The simulator refuses to *attach* 4000…9995 (as a saved card), so this outcome is driven with
    the card given explicitly to the gateway, and the resulting failed PaymentIntent delivered
    through the payment_failed entry point (as the webhook does)."""
    org = owner_client.org
    customer_with_card(org, "4242424242424242")
    with __import__("django.db").db.transaction.atomic():
        purchase = topup_purchases._new_manual(organization_id=org.pk, packs=1, method="saved_card", user=None, now=now)
    CreditPurchase.objects.filter(pk=purchase.pk).update(status="started", started_at=now)
    with pytest.raises(stripe_gateway.StripeCardError) as info:
        stripe_gateway.payment_intent_create_off_session(
            customer_id=org.stripe_customer_id, amount_cents=2000, metadata=topup_purchases._stripe_metadata(purchase),
            idempotency_key=f"topup:{purchase.pk}", payment_method_id="pm_card_chargeDeclinedInsufficientFunds")
    assert info.value.code == "INSUFFICIENT_FUNDS"
    pi = stripe_gateway.payment_intent_retrieve(info.value.payment_intent_id)
    topup_purchases.topup_payment_failed(stripe_payment_intent=pi.obj, now=now)
    purchase.refresh_from_db()
    assert (purchase.status, purchase.failure_code) == ("failed", "INSUFFICIENT_FUNDS")
    # a late success for the same row would still win (money taken = credits given), exactly once
    assert not CreditBalance.objects.filter(organization=org, topup_purchased__gt=0).exists()

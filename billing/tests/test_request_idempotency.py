"""Idempotency of the money-moving browser endpoints: an `Idempotency-Key` header on
the JSON endpoints, a one-time form token on the dashboard forms. A repeat returns the first result
(same status and body, or the same redirect and message) and charges nothing; the same key with
another request is 409 IDEMPOTENCY_KEY_REUSED. Real MariaDB, real SDK against the simulator."""
from __future__ import annotations

import json
import re
import threading
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client

from billing import stripe_gateway
from billing.models import CreditBalance, CreditPurchase
from billing.tests.saved_cards import customer_with_card, topup_purchased
from billing.tests.saved_cards import topup_sim  # noqa: F401 - fixture
from organizations.models import Role
from organizations.tests.factories import MembershipFactory
from tests import stripe_calls

TOPUP = "/api/billing/credits/topup"


@pytest.fixture
def owner_client(client):
    m = MembershipFactory(role=Role.OWNER)
    client.force_login(m.user)
    client.org = m.organization
    client.user = m.user
    return client


def _post(client, url, body, key=None):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return client.post(url, data=json.dumps(body), content_type="application/json", **headers)


def _charges(org) -> list[dict]:
    """PaymentIntents the simulator created for this org's customer (what the card was charged)."""
    events = stripe_calls.event_list(types=["payment_intent.succeeded", "payment_intent.payment_failed"], limit=100)
    return [e["data"]["object"] for e in events if e["data"]["object"].get("customer") == org.stripe_customer_id]


def _topup_body(org, **kw):
    return {"orgId": str(org.pk), "packs": 1, "useSavedCard": True, **kw}


# --- JSON endpoints: the header ---------------------------------------------------------------------

@pytest.mark.django_db
def test_repeated_saved_card_topup_with_one_key_charges_once(owner_client, topup_sim):
    org = owner_client.org
    customer_with_card(org, "4242424242424242")
    first = _post(owner_client, TOPUP, _topup_body(org), key="buy-1")
    again = _post(owner_client, TOPUP, _topup_body(org), key="buy-1")
    assert first.status_code == 201, first.content
    assert (again.status_code, again.json()) == (201, first.json())
    assert again["Idempotent-Replayed"] == "true" and not first.has_header("Idempotent-Replayed")
    assert CreditPurchase.objects.filter(organization=org).count() == 1
    assert len(_charges(org)) == 1 and topup_purchased(org) == Decimal("500.00")
    from billing.models import RequestIdempotency  # noqa: PLC0415 - the table this fix adds

    row = RequestIdempotency.objects.get(organization=org)
    assert (row.key, row.status, row.response_status, row.user_id) == ("buy-1", "completed", 201, owner_client.user.pk)
    # the same key with another request (2 packs) is refused, nothing charged
    other = _post(owner_client, TOPUP, _topup_body(org, packs=2), key="buy-1")
    assert other.status_code == 409 and other.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    # ... so is the same key on another endpoint
    other = _post(owner_client, "/api/billing/credits/auto-topup", {"orgId": str(org.pk), "enabled": False,
                                                                     "threshold": 50, "packs": 1,
                                                                     "monthlyCapPacks": 10}, key="buy-1")
    assert other.status_code == 409 and other.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    # without a key, a second click is a second purchase (the documented behaviour)
    assert _post(owner_client, TOPUP, _topup_body(org)).status_code == 201
    assert len(_charges(org)) == 2 and topup_purchased(org) == Decimal("1000.00")


@pytest.mark.django_db
def test_keys_are_case_and_space_sensitive_and_scoped_per_org_and_user(owner_client, topup_sim, client):
    org = owner_client.org
    customer_with_card(org, "4242424242424242")
    for key in ("run-Ab12", "run-aB12", "run-Ab12 "):
        assert _post(owner_client, TOPUP, _topup_body(org), key=key).status_code == 201
    assert _post(owner_client, TOPUP, _topup_body(org), key="run-aB12").status_code == 201  # replay
    assert len(_charges(org)) == 3 and topup_purchased(org) == Decimal("1500.00")
    # another admin of the same org with the same key: their own request
    admin = MembershipFactory(organization=org, role=Role.ADMIN)
    other = Client()
    other.force_login(admin.user)
    assert _post(other, TOPUP, _topup_body(org), key="run-Ab12").status_code == 201
    assert len(_charges(org)) == 4
    from billing.models import RequestIdempotency  # noqa: PLC0415

    assert RequestIdempotency.objects.filter(organization=org).count() == 4


@pytest.mark.django_db
def test_bad_keys_are_refused(owner_client, topup_sim):
    org = owner_client.org
    customer_with_card(org, "4242424242424242")
    for key in ("", "x" * 256):
        resp = _post(owner_client, TOPUP, _topup_body(org), key=key)
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "INVALID_IDEMPOTENCY_KEY"
    assert not CreditPurchase.objects.filter(organization=org).exists()


@pytest.mark.django_db
def test_a_declined_charge_replays_the_decline_and_a_new_key_tries_again(owner_client, topup_sim):
    """docs/billing-rules.md: the outcome of a keyed request is final for that key, a decline too (as
    Stripe does); trying again after fixing the card is a new request with a new key."""
    org = owner_client.org
    customer_with_card(org, "4000000000000341")
    first = _post(owner_client, TOPUP, _topup_body(org), key="k1")
    again = _post(owner_client, TOPUP, _topup_body(org), key="k1")
    assert first.status_code == 402 and first.json()["failureCode"] == "CARD_DECLINED"
    assert (again.status_code, again.json()) == (402, first.json())
    assert CreditPurchase.objects.filter(organization=org).count() == 1 and len(_charges(org)) == 1
    assert _post(owner_client, TOPUP, _topup_body(org), key="k2").status_code == 402
    assert CreditPurchase.objects.filter(organization=org).count() == 2


@pytest.mark.django_db
def test_invalid_request_does_not_use_up_the_key(owner_client, topup_sim):
    org = owner_client.org
    customer_with_card(org, "4242424242424242")
    bad = _post(owner_client, TOPUP, _topup_body(org, packs=11), key="k")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "INVALID_PACKS"
    good = _post(owner_client, TOPUP, _topup_body(org), key="k")  # fixed body, same key: runs
    assert good.status_code == 201 and len(_charges(org)) == 1


@pytest.mark.django_db
def test_retry_after_stripe_unavailable_finishes_the_same_purchase(owner_client, topup_sim):
    """Stripe did the charge but its answer was lost (500 after processing): the purchase stays
    started. The client's retry with the same key re-drives that purchase with the same Stripe key
    (Stripe replays the charge) instead of buying again."""
    org = owner_client.org
    customer_with_card(org, "4242424242424242")
    topup_sim.control("/_sim/faults", {"mode": "500", "process": True, "path_prefix": "/v1/payment_intents",
                                       "method": "POST", "count": 1})
    first = _post(owner_client, TOPUP, _topup_body(org), key="k")
    assert first.status_code == 503 and first.json()["error"]["code"] == "STRIPE_UNAVAILABLE"
    purchase = CreditPurchase.objects.get(organization=org)
    assert purchase.status == "started"
    assert not CreditBalance.objects.filter(organization=org, topup_purchased__gt=0).exists()
    again = _post(owner_client, TOPUP, _topup_body(org), key="k")
    assert again.status_code == 201, again.content
    assert again.json()["purchaseId"] == purchase.pk
    assert CreditPurchase.objects.filter(organization=org).count() == 1
    assert len(_charges(org)) == 1 and topup_purchased(org) == Decimal("500.00")
    assert _post(owner_client, TOPUP, _topup_body(org), key="k").json() == again.json()


@pytest.mark.django_db
def test_subscription_downgrade_and_cancel_replay(owner_client, topup_sim):
    """A late repeat of a plan change must not redo it after another change happened since."""
    from billing.tests.test_checkout import _subscribe  # noqa: PLC0415 - the subscribe-through-sim helper

    org = owner_client.org
    membership = org.memberships.get(user=owner_client.user)
    _subscribe(owner_client, membership, topup_sim.sim, tier="pro", card="4242424242424242")
    body = {"orgId": str(org.pk), "planTier": "starter"}
    first = _post(owner_client, "/api/billing/subscription/downgrade", body, key="down")
    assert first.status_code == 200, first.content
    assert first.json()["subscription"]["pendingPlanTier"] == "starter"
    keep = _post(owner_client, "/api/billing/subscription/downgrade/cancel", {"orgId": str(org.pk)}, key="keep")
    assert keep.status_code == 200 and keep.json()["subscription"]["pendingPlanTier"] is None
    # a late repeat of the first click replays its answer: it does not schedule the downgrade again
    again = _post(owner_client, "/api/billing/subscription/downgrade", body, key="down")
    assert (again.status_code, again.json()) == (200, first.json())
    from billing.models import Subscription  # noqa: PLC0415

    assert Subscription.objects.get(organization=org).pending_plan_tier == ""
    first = _post(owner_client, "/api/billing/subscription/cancel", {"orgId": str(org.pk)}, key="bye")
    again = _post(owner_client, "/api/billing/subscription/cancel", {"orgId": str(org.pk)}, key="bye")
    assert first.status_code == 200 and (again.status_code, again.json()) == (200, first.json())


@pytest.mark.django_db
def test_subscription_upgrade_repeat_invoices_the_proration_once(owner_client, topup_sim):
    from billing.tests.test_checkout import _subscribe  # noqa: PLC0415

    org = owner_client.org
    org.trial_ends_at = org.created_at  # trial used: the subscription is paid at once
    org.save(update_fields=["trial_ends_at"])
    _subscribe(owner_client, org.memberships.get(user=owner_client.user), topup_sim.sim, tier="starter",
               card="4242424242424242")
    body = {"orgId": str(org.pk), "planTier": "pro"}
    first = _post(owner_client, "/api/billing/subscription/upgrade", body, key="up")
    again = _post(owner_client, "/api/billing/subscription/upgrade", body, key="up")
    assert first.status_code == 200, first.content
    assert (again.status_code, again.json()) == (200, first.json())
    invoices = [i for i in stripe_calls.invoice_list(customer_id=org.stripe_customer_id)
                if i["billing_reason"] == "subscription_update"]
    assert len(invoices) == 1


def test_every_money_endpoint_is_keyed():
    """Every POST endpoint that moves money or changes what is billed goes through the wrapper."""
    from django.urls import resolve  # noqa: PLC0415

    for path in ("/api/billing/checkout", "/api/billing/subscription/upgrade", "/api/billing/subscription/downgrade",
                 "/api/billing/subscription/downgrade/cancel", "/api/billing/subscription/cancel",
                 "/api/billing/credits/topup", "/api/billing/credits/auto-topup"):
        assert getattr(resolve(path).func, "idempotent_endpoint", None), path


# --- concurrency: two requests at once with one key --------------------------------------------------

@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("threads", [2, 6])
def test_concurrent_duplicates_charge_exactly_once(topup_sim, threads):
    m = MembershipFactory(role=Role.OWNER)
    org = m.organization
    customer_with_card(org, "4242424242424242")
    barrier = threading.Barrier(threads)
    responses: list = []
    errors: list = []

    def post() -> None:
        try:
            c = Client()
            c.force_login(m.user)
            barrier.wait(timeout=30)
            responses.append(_post(c, TOPUP, _topup_body(org), key="same-click"))
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=post) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not errors, errors
    assert [r.status_code for r in responses] == [201] * threads, [r.content for r in responses]
    assert len({r.content for r in responses}) == 1  # every one answered with the first body
    assert sum(1 for r in responses if r.has_header("Idempotent-Replayed")) == threads - 1
    assert CreditPurchase.objects.filter(organization=org).count() == 1
    assert len(_charges(org)) == 1 and topup_purchased(org) == Decimal("500.00")


# --- dashboard forms: the one-time token --------------------------------------------------------------

def _form_token(html: str, action: str) -> str:
    form = re.search(r'<form method="post" action="' + re.escape(action) + r'".*?</form>', html, re.S)
    assert form, f"no form posting to {action}"
    token = re.search(r'name="idempotencyKey" value="([^"]+)"', form.group(0))
    assert token, "the form carries no one-time token"
    return token.group(1)


@pytest.mark.django_db
def test_dashboard_topup_form_double_submit_buys_once(owner_client, topup_sim):
    org = owner_client.org
    page = owner_client.get(f"/settings/billing?org={org.slug}").content.decode()
    token = _form_token(page, TOPUP)
    assert token != _form_token(owner_client.get(f"/settings/billing?org={org.slug}").content.decode(), TOPUP)
    form = {"org": org.slug, "packs": "1", "idempotencyKey": token}
    first = owner_client.post(TOPUP, form)
    again = owner_client.post(TOPUP, form)
    assert first.status_code == 302 and "/checkout/" in first["Location"]
    assert (again.status_code, again["Location"]) == (302, first["Location"])
    assert CreditPurchase.objects.filter(organization=org).count() == 1


@pytest.mark.django_db
def test_saved_card_form_double_submit_shows_the_first_outcome_and_charges_once(owner_client, topup_sim):
    org = owner_client.org
    customer_with_card(org, "4242424242424242")
    form = {"org": org.slug, "packs": "1", "useSavedCard": "on", "idempotencyKey": "tok-1"}
    for _ in range(2):  # the second post (a double click, a browser re-post) shows the same page and message
        resp = owner_client.post(TOPUP, form)
        assert resp.status_code == 302 and resp["Location"] == f"/settings/billing?org={org.slug}"
        page = owner_client.get(resp["Location"]).content.decode()
        assert page.count("500.00 credits added.") == 1
    assert len(_charges(org)) == 1 and topup_purchased(org) == Decimal("500.00")


@pytest.mark.django_db
def test_saved_card_form_resubmitted_after_stripe_was_unavailable_finishes_the_same_purchase(owner_client,
                                                                                             topup_sim):
    """The form path keeps the JSON path's rule: an unknown outcome (5xx) does not use the token up."""
    org = owner_client.org
    customer_with_card(org, "4242424242424242")
    topup_sim.control("/_sim/faults", {"mode": "500", "process": True, "path_prefix": "/v1/payment_intents",
                                       "method": "POST", "count": 1})
    form = {"org": org.slug, "packs": "1", "useSavedCard": "on", "idempotencyKey": "tok-5xx"}
    first = owner_client.post(TOPUP, form)
    assert first.status_code == 302
    assert not CreditBalance.objects.filter(organization=org, topup_purchased__gt=0).exists()
    again = owner_client.post(TOPUP, form)
    assert again.status_code == 302
    assert "500.00 credits added." in owner_client.get(again["Location"]).content.decode()
    assert CreditPurchase.objects.filter(organization=org).count() == 1
    assert len(_charges(org)) == 1 and topup_purchased(org) == Decimal("500.00")


@pytest.mark.django_db
def test_every_money_form_carries_a_fresh_token(owner_client, topup_sim):
    org = owner_client.org
    org.stripe_customer_id = "cus_not_called"
    org.save(update_fields=["stripe_customer_id"])
    dashboard = owner_client.get(f"/settings/billing?org={org.slug}").content.decode()
    _form_token(dashboard, TOPUP)
    _form_token(dashboard, "/api/billing/credits/auto-topup")
    plans = owner_client.get(f"/billing?org={org.slug}").content.decode()
    assert _form_token(plans, "/api/billing/checkout")


@pytest.mark.django_db
def test_a_used_token_posted_with_other_values_changes_nothing_and_shows_the_page_afresh(owner_client):
    """Back button, edit, submit: the old page's token is used up; the user gets the current page
    (with a fresh token) and a message instead of a silent replay or a second change."""
    from billing.models import AutoTopupSettingsChange  # noqa: PLC0415

    org = owner_client.org
    org.stripe_customer_id = "cus_not_called"
    org.save(update_fields=["stripe_customer_id"])
    url = "/api/billing/credits/auto-topup"
    form = {"org": org.slug, "enabled": "true", "threshold": "75", "packs": "2", "monthly_cap_packs": "4",
            "idempotencyKey": _form_token(owner_client.get(f"/settings/billing?org={org.slug}").content.decode(), url)}
    assert owner_client.post(url, form).status_code == 302
    resp = owner_client.post(url, {**form, "threshold": "90"})
    assert resp.status_code == 302 and resp["Location"] == f"/settings/billing?org={org.slug}"
    page = owner_client.get(resp["Location"]).content.decode()
    assert "This form was already submitted" in page and _form_token(page, url) != form["idempotencyKey"]
    assert AutoTopupSettingsChange.objects.filter(organization=org).count() == 1
    assert CreditBalance.objects.get(organization=org).auto_topup_threshold == Decimal("75.00")


@pytest.mark.django_db
def test_keys_are_kept_30_days_then_purged_by_the_daily_task(owner_client, now):
    import datetime as dt

    from django.conf import settings

    from billing.idempotency import request_idempotency_purge
    from billing.models import RequestIdempotency
    from billing.tasks import request_idempotency_purge_task

    def row(key, age_days):
        return RequestIdempotency.objects.create(
            organization=owner_client.org, user=owner_client.user, key_hash=f"{key:0>64}", key=key,
            endpoint="credits-topup", fingerprint="f" * 64, created_at=now - dt.timedelta(days=age_days),
            updated_at=now)

    kept, gone = row("a", 30), row("b", 32)
    assert request_idempotency_purge(now=now) == 1
    assert set(RequestIdempotency.objects.values_list("pk", flat=True)) == {kept.pk}
    assert gone.pk not in set(RequestIdempotency.objects.values_list("pk", flat=True))
    assert request_idempotency_purge_task.apply().get() == 0  # the beat task runs the same service
    assert settings.CELERY_BEAT_SCHEDULE["billing-request-idempotency-purge"]["task"] == \
        "billing.tasks.request_idempotency_purge_task"

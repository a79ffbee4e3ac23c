"""The Stripe simulator failing (injected with POST /_sim/faults) while an org admin buys credits
with the saved card over real HTTP. The gateway retries a bounded number of times (the SDK's
max_network_retries = 2 here, so 3 attempts) with the same idempotency key `topup:<purchase id>`;
a persisting fault surfaces as 503 STRIPE_UNAVAILABLE, the intent row stays STARTED (not lost),
the sweeper flags it, `reconcile --stripe` lists it, and re-driving it with the same key after the
fault clears charges the card once."""
from __future__ import annotations

from decimal import Decimal

import pytest

pytestmark = [pytest.mark.slow]

ATTEMPTS = 3  # STRIPE_MAX_NETWORK_RETRIES=2 in tests/faults/fault_settings.py
PI_PATH = "/v1/payment_intents"


def _buy(stack, session, org) -> tuple[int, dict]:
    r = session.post(stack.app.url + "/api/billing/credits/topup", json={"orgId": org["id"], "packs": 1,
                                                                        "useSavedCard": True}, timeout=60)
    return r.status_code, r.json()


def _purchases(stack, org) -> list[tuple]:
    return stack.sql("SELECT id, status, credits_applied_at IS NOT NULL, stripe_payment_intent_id, flagged_at "
                     "IS NOT NULL FROM credit_purchases WHERE organization_id=%s AND kind <> 'grant' ORDER BY id",
                     (stack.org_hex(org["id"]),))


def _topup_purchased(stack, org) -> Decimal:
    return stack.sql("SELECT topup_purchased FROM credit_balances WHERE organization_id=%s",
                     (stack.org_hex(org["id"]),))[0][0]


def _intents(stack, org) -> list[dict]:
    return stack.sim_get(PI_PATH, customer=org["customer"], limit=100)["data"]


def _fault_hits(stack) -> int:
    return sum(f["hits"] for f in stack.sim_control("GET", "/_sim/faults")["faults"])


@pytest.mark.parametrize("mode,charged_before_failing", [("500", False), ("timeout", True), ("reset", False)])
def test_stripe_down_for_every_attempt_leaves_a_started_row_redriven_once(stack, mode, charged_before_failing):
    org = stack.ctl("org", f"stripe-down-{mode}", "--card", "4242424242424242")
    session = stack.login(org["email"], org["password"])
    # `timeout`: Stripe does the work, then the answer never comes within the 2 s read timeout.
    stack.sim_control("POST", "/_sim/faults", {"path_prefix": PI_PATH, "method": "POST", "mode": mode,
                                               "count": ATTEMPTS + 5, "delay_seconds": 4})

    status, body = _buy(stack, session, org)

    assert (status, body["error"]["code"]) == (503, "STRIPE_UNAVAILABLE"), body
    assert _fault_hits(stack) == ATTEMPTS, "bounded retries: one try + max_network_retries"
    stack.sim_control("DELETE", "/_sim/faults")
    [(pk, pstatus, applied, _pi, flagged)] = _purchases(stack, org)
    assert (pstatus, applied, flagged) == ("started", 0, 0)  # the intent row is kept, no credits yet
    # The retries reused one idempotency key: at most one PaymentIntent, whatever Stripe saw.
    assert len(_intents(stack, org)) == (1 if charged_before_failing else 0)

    # Ops' view: the sweeper flags it (after its 15 min), reconcile --stripe lists it as stuck.
    assert stack.ctl("sweep", "--ahead", str(16 * 60))["flagged"] == 1
    report = stack.reconcile("--stripe", "--org", org["slug"])
    assert [p for p in report["stripe"]["stuckPurchases"] if str(p.get("id")) == str(pk)], report["stripe"]

    # Fault cleared: re-driving the row with the same key charges exactly once.
    redriven = stack.ctl("charge", str(pk))
    assert redriven["status"] == "succeeded"
    intents = _intents(stack, org)
    assert len(intents) == 1 and intents[0]["id"] == redriven["payment_intent"]
    assert intents[0]["status"] == "succeeded" and intents[0]["amount"] == 2000
    assert _topup_purchased(stack, org) == Decimal("500.00")
    assert stack.ctl("charge", str(pk))["status"] == "succeeded"  # a second re-drive is a no-op
    assert len(_intents(stack, org)) == 1 and _topup_purchased(stack, org) == Decimal("500.00")
    stack.assert_zero_drift()


@pytest.mark.parametrize("mode", ["timeout", "reset", "500"])
def test_one_failed_attempt_is_retried_with_the_same_key_and_charges_once(stack, mode):
    org = stack.ctl("org", f"stripe-blip-{mode}", "--card", "4242424242424242")
    session = stack.login(org["email"], org["password"])
    stack.sim_control("POST", "/_sim/faults", {"path_prefix": PI_PATH, "method": "POST", "mode": mode,
                                               "count": 1, "delay_seconds": 4})

    status, body = _buy(stack, session, org)

    assert status == 201 and body["status"] == "succeeded", body
    assert _fault_hits(stack) == 1
    intents = _intents(stack, org)
    assert len(intents) == 1 and intents[0]["status"] == "succeeded"
    [(_pk, pstatus, applied, pi, _flagged)] = _purchases(stack, org)
    assert (pstatus, applied, pi) == ("succeeded", 1, intents[0]["id"])
    assert _topup_purchased(stack, org) == Decimal("500.00")
    stack.assert_zero_drift()

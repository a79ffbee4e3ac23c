"""The private Redis (broker + cache) stopped while traffic goes on, then started again.

While it is down: usage records still succeed (the auto top-up it triggers is an intent row whose
enqueue failure is logged; warning emails likewise), and a Stripe webhook is still stored and
acknowledged. After it is back: the top-up sweeper re-queues the charge and the webhook re-queue
sends the event, both run on the private Celery worker; reconcile reports zero drift."""
from __future__ import annotations

import hashlib
import hmac
import json
import time
from decimal import Decimal

import pytest
import requests

from .stack import WEBHOOK_SECRET

pytestmark = [pytest.mark.slow]


def _signed_event(event_type: str, obj: dict) -> tuple[bytes, str]:
    from billing import stripe_gateway

    event = {"id": f"evt_faults_{int(time.time() * 1000)}", "object": "event", "type": event_type,
             "api_version": stripe_gateway.STRIPE_API_VERSION, "created": int(time.time()), "livemode": False,
             "pending_webhooks": 1, "request": {"id": None, "idempotency_key": None}, "data": {"object": obj}}
    body = json.dumps(event).encode()
    t = int(time.time())
    mac = hmac.new(WEBHOOK_SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return body, f"t={t},v1={mac}"


def test_redis_down_actions_recorded_async_work_done_after_restart(stack):
    # Free plan (45 small credits of allowance) below the auto top-up threshold of 50: the first
    # action queues an auto top-up.
    org = stack.ctl("org", "redis-down", "--card", "4242424242424242", "--auto-topup", "50")
    hexid = stack.org_hex(org["id"])
    log_mark = len(stack.app.log())
    stack.redis.stop()
    assert not stack.redis.ping()

    statuses = [stack.api("/api/billing/usage/record", {"orgId": org["id"], "userId": "u1", "actionTier": "small",
                                                        "idempotencyKey": f"redis-down-{i}"}).status_code
                for i in range(10)]
    body, sig = _signed_event("payment_intent.succeeded", {
        "id": "pi_faults_unrelated", "object": "payment_intent", "status": "succeeded", "amount": 100,
        "currency": "usd", "metadata": {}})
    hook = requests.post(stack.app.url + "/api/webhooks/stripe", data=body, timeout=30,
                         headers={"Stripe-Signature": sig, "Content-Type": "application/json"})
    health = requests.get(stack.app.url + "/healthz", timeout=10)

    assert statuses == [201] * 10
    assert hook.status_code == 200, hook.text
    assert health.status_code == 503 and health.json()["checks"]["redis"]["status"] == "down"
    assert stack.sql("SELECT COUNT(*) FROM billable_actions WHERE organization_id=%s", (hexid,))[0][0] == 10
    [(purchase_id, status, queued)] = stack.sql(
        "SELECT id, status, queued_at IS NOT NULL FROM credit_purchases WHERE organization_id=%s "
        "AND kind='auto_topup'", (hexid,))
    assert (status, queued) == ("pending", 0)
    [(event_status,)] = stack.sql("SELECT status FROM webhook_events WHERE stripe_event_id=%s",
                                  (json.loads(body)["id"],))
    assert event_status == "pending"
    log = stack.app.log()[log_mark:]
    assert f"could not queue top-up {purchase_id}" in log  # logged, not raised

    stack.redis.start()
    stack.wait(stack.healthy, timeout=30, message="/healthz 200 with Redis back")
    # The periodic jobs (beat) run here by hand, with their clocks moved past the staleness windows.
    assert stack.ctl("sweep", "--ahead", "180")["requeued"] == 1
    assert stack.ctl("requeue-webhooks", "--ahead", "900")["requeued"] >= 1

    stack.wait(lambda: stack.sql("SELECT status FROM credit_purchases WHERE id=%s", (purchase_id,))[0][0]
               == "succeeded", timeout=60, message="the worker to charge the re-queued auto top-up")
    stack.wait(lambda: stack.sql("SELECT status FROM webhook_events WHERE stripe_event_id=%s",
                                 (json.loads(body)["id"],))[0][0] == "processed",
               timeout=60, message="the worker to process the re-queued webhook")
    [(purchased,)] = stack.sql("SELECT topup_purchased FROM credit_balances WHERE organization_id=%s", (hexid,))
    assert purchased == Decimal("500.00")
    intents = stack.sim_get("/v1/payment_intents", customer=org["customer"])["data"]
    assert len(intents) == 1 and intents[0]["status"] == "succeeded"
    # Traffic after the restart is recorded as before.
    r = stack.api("/api/billing/usage/record", {"orgId": org["id"], "userId": "u1", "actionTier": "small",
                                                "idempotencyKey": "redis-back"})
    assert r.status_code == 201, r.text
    stack.assert_zero_drift()

"""A Celery worker process SIGKILLed while it is inside the Stripe call of an auto top-up charge.

The simulator is told to carry the PaymentIntent out and then hold its answer, so the task is
observably in flight (the fault's hit count) when the pool process is killed. With acks_late +
reject_on_worker_lost the message goes back to the queue and the restarted pool process runs it
again; the re-run calls Stripe with the same idempotency key `topup:<id>` and gets the first
PaymentIntent back: one charge, credits added once, zero drift."""
from __future__ import annotations

import os
import signal
from decimal import Decimal

import pytest

pytestmark = [pytest.mark.slow]


def test_worker_killed_inside_the_stripe_call_rerun_charges_once(stack):
    org = stack.ctl("org", "worker-kill", "--card", "4242424242424242", "--auto-topup", "50")
    hexid = stack.org_hex(org["id"])
    stack.sim_control("POST", "/_sim/faults", {"path_prefix": "/v1/payment_intents", "method": "POST",
                                               "mode": "timeout", "process": True, "delay_seconds": 60, "count": 1})
    pool_pid = stack.wait(lambda: len(stack.worker.children()) == 1 and stack.worker.children()[0], timeout=30,
                          message="the worker's one pool process")
    log_mark = len(stack.worker.log())

    r = stack.api("/api/billing/usage/record", {"orgId": org["id"], "userId": "u1", "actionTier": "small"})
    assert r.status_code == 201, r.text
    stack.wait(lambda: stack.sim_control("GET", "/_sim/faults")["faults"][0]["hits"] == 1, timeout=60,
               message="the worker to be inside the Stripe call")
    [(purchase_id, status)] = stack.sql("SELECT id, status FROM credit_purchases WHERE organization_id=%s "
                                        "AND kind='auto_topup'", (hexid,))
    assert status == "started"
    assert len(stack.sim_get("/v1/payment_intents", customer=org["customer"])["data"]) == 1  # Stripe charged

    os.kill(pool_pid, signal.SIGKILL)

    stack.wait(lambda: stack.sql("SELECT status FROM credit_purchases WHERE id=%s", (purchase_id,))[0][0]
               == "succeeded", timeout=60, message="the redelivered task to finish the top-up")
    log = stack.worker.log()[log_mark:]
    assert "WorkerLostError" in log or "SIGKILL" in log, log[-3000:]
    assert pool_pid not in stack.worker.children()  # a new pool process ran the re-delivered task
    intents = stack.sim_get("/v1/payment_intents", customer=org["customer"])["data"]
    assert len(intents) == 1 and intents[0]["status"] == "succeeded"  # one charge
    [(purchased, applied)] = stack.sql(
        "SELECT b.topup_purchased, (SELECT COUNT(*) FROM credit_purchases p WHERE p.organization_id=b.organization_id "
        "AND p.credits_applied_at IS NOT NULL) FROM credit_balances b WHERE b.organization_id=%s", (hexid,))
    assert (purchased, applied) == (Decimal("500.00"), 1)  # credits once
    stack.assert_zero_drift()

"""Fixtures for the top-up tests: the bundled Stripe simulator (`python -m stripe_sim`, a test
double reached through the real `stripe` SDK), a credit-pack price, orgs with a saved test card.

The simulator process is per session; its URL/key go into os.environ before any Celery worker is
started (the worker inherits the environment), so list `topup_sim` before `celery_worker`.
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]
SIM_KEY = "sk_test_topup"
SIM_WEBHOOK_SECRET = "whsec_topup_test"
_seq = itertools.count(1)

#: test card -> simulator payment method id
CARDS = {
    "4242424242424242": "pm_card_visa",
    "4000000000000341": "pm_card_chargeCustomerFail",
    "4000002500003155": "pm_card_authenticationRequiredOnSetup",
    "4000000000000002": "pm_card_chargeDeclined",
    "4000000000009995": "pm_card_chargeDeclinedInsufficientFunds",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Sim:
    url: str
    process: subprocess.Popen
    price_id: str = ""

    def control(self, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(self.url + path, method="POST" if body is not None else "GET",
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - local simulator
            return json.loads(resp.read() or b"{}")


@pytest.fixture(scope="session")
def _topup_sim_process(tmp_path_factory):
    port = _free_port()
    log = (ROOT / "test-artifacts")
    log.mkdir(exist_ok=True)
    logf = open(log / f"stripe-sim-topup-{os.getpid()}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "stripe_sim", "--port", str(port), "--webhook-secret",
                             SIM_WEBHOOK_SECRET], cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT,
                            start_new_session=True)
    sim = Sim(url=f"http://127.0.0.1:{port}", process=proc)

    def healthy():
        if proc.poll() is not None:
            raise RuntimeError("stripe_sim exited at start")
        try:
            return sim.control("/_sim/health")
        except OSError:
            return None

    wait_until(healthy, timeout=30, message="the Stripe simulator to start")
    old = {k: os.environ.get(k) for k in ("STRIPE_API_BASE", "STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET")}
    os.environ.update({"STRIPE_API_BASE": sim.url, "STRIPE_SECRET_KEY": SIM_KEY,
                       "STRIPE_WEBHOOK_SECRET": SIM_WEBHOOK_SECRET})
    try:
        yield sim
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        logf.close()


@pytest.fixture
def topup_sim(_topup_sim_process, settings):
    """Point the app's gateway at the simulator and make sure a credit-pack price exists."""
    from billing import stripe_gateway

    sim = _topup_sim_process
    settings.STRIPE_API_BASE = sim.url
    settings.STRIPE_SECRET_KEY = SIM_KEY
    settings.STRIPE_WEBHOOK_SECRET = SIM_WEBHOOK_SECRET
    stripe_gateway.reset_client()
    if not sim.price_id:
        product = stripe_gateway.product_create(name="Credits 500", metadata={}, idempotency_key="topup-test-product")
        price = stripe_gateway.price_create(product_id=product["id"], unit_amount_cents=2000, currency="usd",
                                            lookup_key="topup_test_credits_500", recurring_interval=None,
                                            metadata={}, idempotency_key="topup-test-price")
        sim.price_id = price["id"]
    settings.STRIPE_PRICE_CREDITS_500 = sim.price_id
    yield sim
    stripe_gateway.reset_client()


def customer_with_card(org, card: str) -> str:
    """Create a simulator customer whose default card is `card`; store it on the org."""
    from billing import stripe_gateway

    n = next(_seq)
    cus = stripe_gateway.customer_create(email=f"billing{n}@example.test", name=org.name,
                                         metadata={"orgId": str(org.pk)}, idempotency_key=f"topup-test-cus:{org.pk}")
    pm = stripe_gateway.payment_method_attach(payment_method_id=CARDS[card], customer_id=cus["id"],
                                              idempotency_key=f"topup-test-pm:{org.pk}")
    stripe_gateway.customer_set_default_payment_method(customer_id=cus["id"], payment_method_id=pm["id"],
                                                       idempotency_key=f"topup-test-default:{org.pk}")
    org.stripe_customer_id = cus["id"]
    org.save(update_fields=["stripe_customer_id"])
    return cus["id"]


def topup_purchased(org) -> Decimal:
    from billing.models import CreditBalance

    return CreditBalance.objects.get(organization=org).topup_purchased

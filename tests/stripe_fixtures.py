"""Pytest fixtures for the bundled Stripe simulator (a test double; see stripe_sim/README.md).

    def test_x(stripe_settings):          # sim reset, settings pointed at it, prices created
        stripe_settings.sim.advance_clock(8 * 86400)

- `stripe_sim` (session): a `python -m stripe_sim` subprocess on a free loopback port.
- `stripe_settings` (function): resets the simulator, points Django settings at it
  (STRIPE_API_BASE / STRIPE_SECRET_KEY / STRIPE_WEBHOOK_SECRET, no network retries) and runs the
  setup `stripe_setup` does (STRIPE_PRICE_* settings, the STRIPE_PORTAL_CONFIGURATION).
  Yields a `StripeTestEnv(sim, prices)`.
- `localstripe_server` (function): the third-party fake localstripe on a free port with its state
  file in a tmp dir (its default is a shared /tmp path), for cross-checks.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
SIM_SECRET_KEY = "sk_test_simulator"
SIM_WEBHOOK_SECRET = "whsec_test_simulator"



def _http_json(method: str, url: str, body: dict | None = None, timeout: float = 10.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def _wait_ready(url: str, proc: subprocess.Popen, deadline_s: float, what: str) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before becoming ready")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except urllib.error.HTTPError:
            return  # it answers HTTP: ready
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready after {deadline_s}s") from None
            time.sleep(0.05)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class StripeSim:
    """Handle on a running simulator process."""

    def __init__(self, base_url: str, proc: subprocess.Popen) -> None:
        self.base_url = base_url
        self.proc = proc

    def control(self, method: str, path: str, body: dict | None = None) -> Any:
        return _http_json(method, f"{self.base_url}{path}", body)

    def reset(self) -> None:
        self.control("POST", "/_sim/reset", {})

    def configure_webhooks(self, url: str | None, secret: str | None = SIM_WEBHOOK_SECRET, *,
                           max_attempts: int | None = None, backoff_seconds: float | None = None) -> dict:
        body: dict[str, Any] = {"webhook_url": url, "webhook_secret": secret}
        if max_attempts is not None:
            body["webhook_max_attempts"] = max_attempts
        if backoff_seconds is not None:
            body["webhook_backoff_seconds"] = backoff_seconds
        return self.control("POST", "/_sim/config", body)

    def advance_clock(self, seconds: int) -> dict:
        """Move the simulated clock; renewals / trial ends due on the way happen (returns {now, events})."""
        return self.control("POST", "/_sim/clock/advance", {"seconds": int(seconds)})

    def now(self) -> int:
        return self.control("GET", "/_sim/clock")["now"]

    def complete_checkout(self, session_id: str, card: str = "4242424242424242", email: str | None = None) -> dict:
        return self.control("POST", f"/_sim/checkout/{session_id}/complete", {"card": card, "email": email})

    def webhooks(self) -> dict:
        return self.control("GET", "/_sim/webhooks")

    def wait_webhooks_idle(self, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            state = self.webhooks()
            if state["pending"] == 0:
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"webhooks still pending after {timeout}s: {state}")
            time.sleep(0.05)

    def resend_event(self, event_id: str) -> None:
        self.control("POST", f"/_sim/events/{event_id}/resend", {})


@pytest.fixture(scope="session")
def stripe_sim(tmp_path_factory) -> StripeSim:
    port = free_port()
    log = tmp_path_factory.mktemp("stripe_sim") / "sim.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "stripe_sim", "--host", "127.0.0.1", "--port", str(port),
                                 "--log-level", "WARNING"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(f"http://127.0.0.1:{port}/_sim/health", proc, 20, "stripe_sim")
        yield StripeSim(f"http://127.0.0.1:{port}", proc)
    finally:
        _stop(proc)


@dataclass
class StripeTestEnv:
    sim: StripeSim
    prices: dict[str, str]  # STRIPE_PRICE_* -> price id


@pytest.fixture
def stripe_settings(stripe_sim: StripeSim, settings) -> StripeTestEnv:
    """Fresh simulator state, settings pointed at it, catalog prices created (no DB needed)."""
    from billing import stripe_gateway
    from billing.services.plan_changes import stripe_portal_configuration_ensure, stripe_prices_ensure

    stripe_sim.reset()
    stripe_sim.configure_webhooks(None, SIM_WEBHOOK_SECRET)
    settings.STRIPE_API_BASE = stripe_sim.base_url
    settings.STRIPE_SECRET_KEY = SIM_SECRET_KEY
    settings.STRIPE_WEBHOOK_SECRET = SIM_WEBHOOK_SECRET
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    stripe_gateway.reset_client()
    prices = stripe_prices_ensure()
    for name, price_id in prices.items():
        setattr(settings, name, price_id)
    settings.STRIPE_PORTAL_CONFIGURATION = stripe_portal_configuration_ensure()
    yield StripeTestEnv(sim=stripe_sim, prices=prices)
    stripe_gateway.reset_client()


@pytest.fixture
def localstripe_server(tmp_path) -> str:
    """localstripe (PyPI) on a free port, state file in tmp_path. Yields its base URL."""
    port = free_port()
    state = tmp_path / "localstripe.pickle"
    code = (
        "import sys, localstripe.resources as r\n"
        f"P = {str(state)!r}\n"
        "import pickle\n"
        "def _load(self):\n"
        "    try:\n"
        "        with open(P, 'rb') as f: self.clear(); self.update(pickle.load(f))\n"
        "    except FileNotFoundError: pass\n"
        "def _dump(self):\n"
        "    with open(P, 'wb') as f: pickle.dump(self, f, protocol=pickle.HIGHEST_PROTOCOL)\n"
        "r.Store.try_load_from_disk = _load\n"
        "r.Store.dump_to_disk = _dump\n"
        "from localstripe.server import start\n"
        f"sys.argv = ['localstripe', '--port', '{port}', '--from-scratch']\n"
        "start()\n"
    )
    log = tmp_path / "localstripe.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_ready(f"http://127.0.0.1:{port}/v1/customers", proc, 30, "localstripe")
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)

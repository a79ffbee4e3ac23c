"""STRIPE_MAX_NETWORK_RETRIES: the gateway reads it (capped to 0..5) and the SDK really retries.
A tiny local HTTP server answers 500 with `Stripe-Should-Retry: true` (a Stripe outage we cannot
cause in the simulator) and counts the attempts."""
from __future__ import annotations

import http.server
import json
import threading

import pytest

from billing import stripe_gateway as gw
from billing.errors import BillingError


class _Flaky(http.server.BaseHTTPRequestHandler):
    attempts: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server API
        type(self).attempts.append(self.headers.get("Idempotency-Key") or self.path)
        body = json.dumps({"error": {"type": "api_error", "message": "down"}}).encode()
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Stripe-Should-Retry", "true")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky_stripe(settings):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.STRIPE_SECRET_KEY = "sk_test_flaky"
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{server.server_address[1]}"
    _Flaky.attempts = []
    try:
        yield settings
    finally:
        server.shutdown()
        server.server_close()
        gw.reset_client()


@pytest.mark.parametrize(("configured", "expected_attempts"), [(0, 1), (2, 3)])
def test_configured_retries_are_used(flaky_stripe, configured, expected_attempts):
    flaky_stripe.STRIPE_MAX_NETWORK_RETRIES = configured
    with pytest.raises(BillingError) as excinfo:
        gw.customer_retrieve("cus_x")
    assert excinfo.value.code == "STRIPE_UNAVAILABLE"
    assert len(_Flaky.attempts) == expected_attempts


@pytest.mark.parametrize(("configured", "effective"), [(99, 5), (-3, 0), (2, 2)])
def test_retries_are_capped(flaky_stripe, configured, effective):
    flaky_stripe.STRIPE_MAX_NETWORK_RETRIES = configured
    assert gw.get_client()._requestor._options.max_network_retries == effective


"""The simulator itself: hosted pages by plain HTTP form posts, the clock, signed webhook delivery."""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import stripe

from billing import stripe_gateway as gw
from tests.helpers import wait_until
from tests import stripe_calls


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _post_form(url: str, fields: dict) -> tuple[int, dict, str]:
    opener = urllib.request.build_opener(_NoRedirect)
    req = urllib.request.Request(url, data=urllib.parse.urlencode(fields).encode(), method="POST")
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def _get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.headers.get("Content-Type"), resp.read()


def _subscription_checkout(env, *, trial: int | None, tier: str = "PRO") -> gw.CheckoutSession:
    cus = gw.customer_create(email="o@example.test", name="Org", metadata={"orgId": "o1"}, idempotency_key="c")
    return gw.checkout_session_create(mode="subscription", customer_id=cus.id,
                                      price_id=env.prices[f"STRIPE_PRICE_{tier}"],
                                      success_url="http://app.test/ok?session_id={CHECKOUT_SESSION_ID}",
                                      cancel_url="http://app.test/canceled", metadata={"orgId": "o1"},
                                      trial_period_days=trial, idempotency_key=f"cs:{trial}:{tier}")


def test_checkout_page_completable_by_form_post(stripe_settings):
    cs = _subscription_checkout(stripe_settings, trial=None)
    status, ctype, body = _get(cs.url)
    page = body.decode()
    assert status == 200 and "text/html" in ctype
    assert 'name=card_number' in page and 'id=pay' in page and 'href="http://app.test/canceled"' in page
    status, _, html = _post_form(cs.url, {"card_number": "4000 0000 0000 0002"})
    assert status == 402 and "declined" in html  # the page shows the decline; the session stays open
    assert gw.checkout_session_retrieve(cs.id).status == "open"
    status, headers, _ = _post_form(cs.url, {"card_number": "4242 4242 4242 4242", "email": "o@example.test"})
    assert status == 303 and headers["Location"] == f"http://app.test/ok?session_id={cs.id}"
    done = gw.checkout_session_retrieve(cs.id, expand=["subscription"])
    assert done.status == "complete" and done.obj["subscription"]["status"] == "active"
    assert done.obj["subscription"]["items"]["data"][0]["price"]["unit_amount"] == 9900


def test_trial_without_card_is_canceled_at_trial_end(stripe_settings):
    sim = stripe_settings.sim
    cs = _subscription_checkout(stripe_settings, trial=7)
    status, headers, _ = _post_form(cs.url, {"card_number": ""})
    assert status == 303
    sub_id = gw.checkout_session_retrieve(cs.id).subscription_id
    assert gw.subscription_retrieve(sub_id).obj["status"] == "trialing"
    result = sim.advance_clock(5 * 86400)  # crosses trial_end - 3 days
    types = [stripe_calls.event_retrieve(e)["type"] for e in result["events"]]
    assert types == ["customer.subscription.trial_will_end"]
    sim.advance_clock(2 * 86400 + 60)
    sub = gw.subscription_retrieve(sub_id).obj
    assert sub["status"] == "canceled" and sub["ended_at"] == sub["trial_end"]


def test_trial_with_card_becomes_active_and_renews_then_fails(stripe_settings):
    sim = stripe_settings.sim
    cs = _subscription_checkout(stripe_settings, trial=7, tier="STARTER")
    sim.complete_checkout(cs.id, card="4242424242424242")
    sub_id = gw.checkout_session_retrieve(cs.id).subscription_id
    sim.advance_clock(7 * 86400 + 1)
    sub = gw.subscription_retrieve(sub_id).obj
    assert sub["status"] == "active"
    invoices = stripe_calls.invoice_list(customer_id=sub["customer"])
    assert [(i["amount_due"], i["status"]) for i in invoices] == [(999, "paid"), (0, "paid")]
    period_end = sub["items"]["data"][0]["current_period_end"]
    sim.advance_clock(period_end - sim.now() + 1)  # renewal paid with the saved card
    renewed = gw.subscription_retrieve(sub_id).obj
    assert renewed["items"]["data"][0]["current_period_start"] == period_end and renewed["status"] == "active"
    # swap in a card that attaches but cannot be charged: the next renewal fails -> past_due
    bad = stripe_calls.payment_method_attach(payment_method_id="pm_card_chargeCustomerFail", customer_id=sub["customer"],
                                   idempotency_key="bad")
    stripe_calls.customer_set_default_payment_method(customer_id=sub["customer"], payment_method_id=bad["id"],
                                           idempotency_key="bad-default")
    stripe_client = gw.get_client()
    stripe_client.v1.subscriptions.update(sub_id, params={"default_payment_method": bad["id"]})
    sim.advance_clock(renewed["items"]["data"][0]["current_period_end"] - sim.now() + 1)
    failed = gw.subscription_retrieve(sub_id).obj
    assert failed["status"] == "past_due"
    open_invoice = stripe_calls.invoice_list(customer_id=sub["customer"])[0]
    assert open_invoice["status"] == "open" and open_invoice["attempt_count"] == 1
    # the hosted invoice page pays it with a good card -> paid, subscription active again
    status, _, html = _post_form(f"{open_invoice['hosted_invoice_url']}/pay", {"card_number": "4242424242424242"})
    assert status == 200 and "paid" in html
    assert gw.invoice_retrieve(open_invoice["id"]).status == "paid"
    assert gw.subscription_retrieve(sub_id).obj["status"] == "active"
    status, ctype, pdf = _get(open_invoice["invoice_pdf"])
    assert status == 200 and ctype == "application/pdf" and pdf.startswith(b"%PDF-")


def test_portal_page_updates_card_and_cancels(stripe_settings):
    sim = stripe_settings.sim
    cs = _subscription_checkout(stripe_settings, trial=None)
    sim.complete_checkout(cs.id, card="4242424242424242")
    sub_id = gw.checkout_session_retrieve(cs.id).subscription_id
    cus_id = gw.subscription_retrieve(sub_id).obj["customer"]
    portal = gw.billing_portal_session_create(customer_id=cus_id, return_url="http://app.test/back",
                                              idempotency_key="p")
    status, _, page = _get(portal.url)
    assert status == 200 and b"4242" in page and b'href="http://app.test/back"' in page
    status, _, html = _post_form(f"{portal.url}/card", {"card_number": "5555555555554444"})
    assert status == 200 and "4444" in html
    assert gw.payment_method_default(customer_id=cus_id).card_last4 == "4444"
    status, _, html = _post_form(f"{portal.url}/cancel", {"subscription": sub_id})
    assert status == 200
    assert gw.subscription_retrieve(sub_id).obj["cancel_at_period_end"] is True


class _Receiver:
    def __init__(self, fail_first: int = 0):
        self.received: list[tuple[bytes, str]] = []
        self.fail_first = fail_first
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.fail_first > 0:
                    outer.fail_first -= 1
                    self.send_response(500)
                else:
                    outer.received.append((body, self.headers["Stripe-Signature"]))
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver():
    r = _Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def test_webhooks_signed_and_verified_by_stripe(stripe_settings, receiver, settings):
    sim = stripe_settings.sim
    sim.configure_webhooks(receiver.url, settings.STRIPE_WEBHOOK_SECRET, backoff_seconds=0.05)
    receiver.fail_first = 2  # the first two deliveries get a 500: retried with backoff
    cs = _subscription_checkout(stripe_settings, trial=7)
    sim.complete_checkout(cs.id, card="")
    sim.wait_webhooks_idle()
    events = []
    for body, header in receiver.received:
        stripe.WebhookSignature.verify_header(body.decode(), header, settings.STRIPE_WEBHOOK_SECRET, 300)
        events.append(gw.webhook_construct_event(body, header))
    types = [e["type"] for e in events]
    for expected in ("customer.subscription.created", "invoice.created", "invoice.finalized", "invoice.paid",
                     "invoice.payment_succeeded", "checkout.session.completed"):
        assert expected in types
    assert all(e["api_version"] == gw.STRIPE_API_VERSION and e["created"] for e in events)
    completed = next(e for e in events if e["type"] == "checkout.session.completed")
    assert completed["data"]["object"]["metadata"] == {"orgId": "o1"}
    log = sim.webhooks()["deliveries"]
    assert max(entry["attempts"] for entry in log.values()) >= 2  # retried after the 500s
    assert all(entry["status"] == "delivered" for entry in log.values())
    # updates carry previous_attributes
    before = len(receiver.received)
    gw.subscription_cancel(subscription_id=completed["data"]["object"]["subscription"], at_period_end=True,
                           idempotency_key="cancel")
    wait_until(lambda: len(receiver.received) > before, message="update webhook")
    update = json.loads(receiver.received[-1][0])
    assert update["type"] == "customer.subscription.updated"
    assert update["data"]["previous_attributes"]["cancel_at_period_end"] is False


def test_form_encoding_and_idempotency_raw(stripe_settings):
    base = stripe_settings.sim.base_url

    def post(path, body, key=None):
        headers = {"Authorization": "Bearer sk_test_x", "Content-Type": "application/x-www-form-urlencoded"}
        if key:
            headers["Idempotency-Key"] = key
        req = urllib.request.Request(base + path, data=body.encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, dict(resp.headers), json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), json.loads(exc.read())

    status, _, cus = post("/v1/customers", "email=a%40b.test&metadata[orgId]=42&expand[]=invoice_settings", "k1")
    assert status == 200 and cus["metadata"] == {"orgId": "42"}
    status, headers, again = post("/v1/customers", "email=a%40b.test&metadata[orgId]=42&expand[]=invoice_settings",
                                  "k1")
    assert again["id"] == cus["id"] and headers.get("Idempotent-Replayed") == "true"
    status, _, err = post("/v1/customers", "email=other%40b.test", "k1")
    assert status == 400 and err["error"]["type"] == "idempotency_error"
    status, _, err = post("/v1/payment_intents", f"amount=2000&currency=usd&customer={cus['id']}"
                          "&payment_method=pm_card_authenticationRequiredOnSetup&off_session=true&confirm=true")
    assert status == 402 and err["error"]["code"] == "authentication_required"
    assert err["error"]["decline_code"] == "authentication_required" and err["error"]["type"] == "card_error"
    assert err["error"]["payment_intent"]["status"] == "requires_payment_method"
    status, _, err = post("/v1/customers/cus_nope", "name=x")
    assert status == 404 and err["error"]["code"] == "resource_missing"

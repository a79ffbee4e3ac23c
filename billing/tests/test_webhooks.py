"""POST /api/webhooks/stripe with payloads signed like Stripe signs them, through the real endpoint.

Processing runs through the on-commit Celery task (eager in test settings; the captured on-commit
callbacks are executed). Every handler, each event twice, pairs out of order, refusals."""
from __future__ import annotations

import json
import logging
import time

import pytest
from django.core import mail
from django.core.management import call_command

from billing.models import Invoice, Subscription, WebhookEvent
from billing.services.webhooks import WEBHOOK_MAX_RETRIES, webhook_event_reprocess
from organizations.tests.factories import OrganizationFactory

from .stripe_events import (  # noqa: F401 - fixtures are used by name
    DAY,
    deliver,
    hooks_stripe_settings,
    invoice_obj,
    make_event,
    org,
    post_event,
    sign,
    subscription_obj,
    uid,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("hooks_stripe_settings")]


@pytest.fixture
def webhook_log(caplog):
    caplog.set_level(logging.INFO, logger="billing.webhooks")

    def processed(event_id: str) -> int:
        return sum(1 for r in caplog.records if r.getMessage().startswith(f"event=webhook.processed event_id={event_id} "))

    return processed


def sub_event(org, event_type, *, sub_id, created, **kw):
    kw.setdefault("period_start", created)
    kw.setdefault("period_end", kw["period_start"] + 30 * DAY)
    return make_event(event_type, subscription_obj(sub_id=sub_id, customer=org.stripe_customer_id, org=org, **kw),
                      created=created)


def row(event: dict) -> WebhookEvent:
    return WebhookEvent.objects.get(stripe_event_id=event["id"])


# --- refusals: 400, stable code, nothing stored -----------------------------------------------------

def _assert_refused(response, code: str):
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert WebhookEvent.objects.count() == 0


def test_bad_signature_is_refused(client, org, caplog):
    event = make_event("customer.created", {"id": "cus_x", "object": "customer"}, created=int(time.time()))
    _assert_refused(post_event(client, event, secret="whsec_wrong"), "WEBHOOK_SIGNATURE_INVALID")
    assert any("WEBHOOK_SIGNATURE_INVALID" in r.getMessage() for r in caplog.records)


def test_tampered_body_is_refused(client):
    event = make_event("customer.created", {"id": "cus_x", "object": "customer"}, created=int(time.time()))
    body = json.dumps(event).encode()
    header = sign(body)
    _assert_refused(post_event(client, body.replace(b"cus_x", b"cus_y"), signature=header), "WEBHOOK_SIGNATURE_INVALID")


def test_missing_signature_is_refused(client):
    event = make_event("customer.created", {"id": "cus_x"}, created=int(time.time()))
    _assert_refused(post_event(client, event, signature=""), "WEBHOOK_SIGNATURE_MISSING")


def test_stale_timestamp_is_refused(client):
    event = make_event("customer.created", {"id": "cus_x"}, created=int(time.time()))
    _assert_refused(post_event(client, event, timestamp=int(time.time()) - 301 - 60), "WEBHOOK_TIMESTAMP_STALE")


def test_non_json_body_is_refused(client):
    _assert_refused(post_event(client, b"this is not json {"), "WEBHOOK_PAYLOAD_INVALID")


def test_json_that_is_not_an_event_is_refused(client):
    _assert_refused(post_event(client, json.dumps({"hello": "world"}).encode()), "WEBHOOK_PAYLOAD_INVALID")


def test_wrong_api_version_is_refused(client):
    event = make_event("customer.created", {"id": "cus_x"}, created=int(time.time()), version="2019-02-19")
    _assert_refused(post_event(client, event), "WEBHOOK_API_VERSION_MISMATCH")


def test_get_is_not_allowed(client):
    assert client.get("/api/webhooks/stripe").status_code == 405


# --- storing, duplicates, unknown types --------------------------------------------------------------

def test_unknown_type_is_stored_as_ignored(deliver):
    event = make_event("customer.tax_id.created", {"id": "txi_1", "object": "tax_id"}, created=int(time.time()))
    body = deliver(event)
    assert body == {"received": True, "duplicate": False, "eventId": event["id"]}
    r = row(event)
    assert r.status == "ignored" and r.type == "customer.tax_id.created" and r.payload["id"] == event["id"]
    assert r.processed_at is not None and r.api_version == event["api_version"]


def test_subscription_created_twice_is_stored_and_processed_once(org, deliver, webhook_log):
    t = int(time.time())
    event = sub_event(org, "customer.subscription.created", sub_id=uid("sub"), created=t, tier="starter")
    first = deliver(event)
    second = deliver(event)
    assert (first["duplicate"], second["duplicate"]) == (False, True)
    assert WebhookEvent.objects.filter(stripe_event_id=event["id"]).count() == 1
    assert row(event).status == "processed"
    assert webhook_log(event["id"]) == 1
    org.refresh_from_db()
    assert org.subscription_tier == "starter"


def test_subscription_updated_out_of_order_keeps_newer_state(org, deliver):
    t, sub_id = int(time.time()), uid("sub")
    deliver(sub_event(org, "customer.subscription.created", sub_id=sub_id, created=t, tier="starter", period_start=t))
    newer = sub_event(org, "customer.subscription.updated", sub_id=sub_id, created=t + 20, tier="max", period_start=t)
    older = sub_event(org, "customer.subscription.updated", sub_id=sub_id, created=t + 10, tier="pro", period_start=t,
                      cancel_at_period_end=True)
    for event in (newer, older, newer, older):
        deliver(event)
    sub = Subscription.objects.get(stripe_subscription_id=sub_id)
    org.refresh_from_db()
    assert (sub.plan_tier, sub.cancel_at_period_end, sub.last_event_created) == ("max", False, t + 20)
    assert org.subscription_tier == "max"
    assert row(older).status == "processed"  # processed = looked at; it changed nothing
    assert len(mail.outbox) == 0  # the stale cancel_at_period_end did not email


def test_subscription_deleted_downgrades_to_free_once(org, deliver):
    t, sub_id = int(time.time()), uid("sub")
    deliver(sub_event(org, "customer.subscription.created", sub_id=sub_id, created=t, tier="pro"))
    deleted = sub_event(org, "customer.subscription.deleted", sub_id=sub_id, created=t + 5, tier="pro",
                        period_start=t, status="canceled", canceled_at=t + 5, ended_at=t + 5)
    deliver(deleted)
    deliver(deleted)
    org.refresh_from_db()
    assert (org.subscription_tier, org.subscription_status) == ("free", "active")
    assert Subscription.objects.get(stripe_subscription_id=sub_id).ended_at is not None
    assert len(mail.outbox) == 1 and org.memberships.first().user.email in mail.outbox[0].to


def test_trial_will_end_emails_trial_ending_once(org, deliver):
    t, sub_id = int(time.time()), uid("sub")
    kw = dict(sub_id=sub_id, tier="pro", status="trialing", period_start=t - 4 * DAY, period_end=t + 3 * DAY,
              trial_start=t - 4 * DAY, trial_end=t + 3 * DAY, default_payment_method=None)
    deliver(sub_event(org, "customer.subscription.created", created=t - 4 * DAY, **kw))
    event = sub_event(org, "customer.subscription.trial_will_end", created=t, **kw)
    deliver(event)
    deliver(event)
    assert len(mail.outbox) == 1
    text = (mail.outbox[0].subject + mail.outbox[0].body).lower()
    assert "trial" in text
    assert row(event).status == "processed"


def _invoice_events(org, sub_id, t, inv_id, *, amount=9900):
    common = dict(inv_id=inv_id, customer=org.stripe_customer_id, sub_id=sub_id, amount_due=amount,
                  period_start=t, period_end=t + 30 * DAY, created=t)
    return {
        "invoice.created": make_event("invoice.created", invoice_obj(status="draft", **common), created=t),
        "invoice.finalized": make_event("invoice.finalized", invoice_obj(status="open", **common), created=t + 1),
        "invoice.paid": make_event("invoice.paid", invoice_obj(status="paid", amount_paid=amount, paid_at=t + 2,
                                                               **common), created=t + 2),
        "invoice.payment_succeeded": make_event(
            "invoice.payment_succeeded", invoice_obj(status="paid", amount_paid=amount, paid_at=t + 2, **common),
            created=t + 2),
    }


def test_invoice_events_are_cached_and_receipt_sent_once(org, deliver):
    t, sub_id, inv_id = int(time.time()), uid("sub"), uid("in")
    deliver(sub_event(org, "customer.subscription.created", sub_id=sub_id, created=t, tier="pro"))
    events = _invoice_events(org, sub_id, t, inv_id)
    deliver(events["invoice.created"])
    inv = Invoice.objects.get(stripe_invoice_id=inv_id)
    assert (inv.status, inv.amount_due_cents, inv.type) == ("draft", 9900, "subscription")
    assert inv.subscription.stripe_subscription_id == sub_id and inv.organization_id == org.pk
    for name in ("invoice.finalized", "invoice.paid", "invoice.payment_succeeded", "invoice.paid"):
        deliver(events[name])
    deliver(events["invoice.finalized"])  # late and older: must not reopen a paid invoice
    inv.refresh_from_db()
    assert (inv.status, inv.amount_paid_cents, inv.currency) == ("paid", 9900, "usd")
    assert inv.paid_at is not None and inv.hosted_invoice_url.endswith(inv_id) and inv.invoice_pdf.endswith(".pdf")
    assert inv.period_start is not None and inv.period_end > inv.period_start
    receipts = [m for m in mail.outbox if "$99.00" in m.body]
    assert len(mail.outbox) == 1 and len(receipts) == 1
    assert all(WebhookEvent.objects.get(stripe_event_id=e["id"]).status == "processed" for e in events.values())


def test_invoice_without_subscription_is_a_credit_purchase(org, deliver):
    t, inv_id = int(time.time()), uid("in")
    deliver(make_event("invoice.paid", invoice_obj(inv_id=inv_id, customer=org.stripe_customer_id, sub_id=None,
                                                   status="paid", amount_due=2000, amount_paid=2000, period_start=t,
                                                   period_end=t, created=t, paid_at=t), created=t))
    inv = Invoice.objects.get(stripe_invoice_id=inv_id)
    assert (inv.type, inv.subscription_id, inv.amount_paid_cents) == ("credit_purchase", None, 2000)
    assert len(mail.outbox) == 0  # the top-up flow sends its own confirmation


def test_checkout_session_payment_mode_goes_to_the_topup_hook(org, deliver):
    t = int(time.time())
    session = {"id": uid("cs"), "object": "checkout.session", "mode": "payment", "customer": org.stripe_customer_id,
               "payment_status": "paid", "payment_intent": uid("pi"), "metadata": {"orgId": str(org.pk)}}
    event = make_event("checkout.session.completed", session, created=t)
    deliver(event)
    deliver(event)
    assert row(event).status == "processed"  # not a purchase we know: the hook returns None, logged


@pytest.mark.parametrize("event_type", ["payment_intent.succeeded", "payment_intent.payment_failed"])
def test_payment_intent_events_go_to_the_topup_hook(org, deliver, event_type):
    pi = {"id": uid("pi"), "object": "payment_intent", "amount": 2000, "currency": "usd",
          "customer": org.stripe_customer_id, "status": "succeeded", "metadata": {}}
    event = make_event(event_type, pi, created=int(time.time()))
    deliver(event)
    deliver(event)
    assert row(event).status == "processed"


# --- failures, retries, reprocessing ------------------------------------------------------------------

def test_failing_handler_retries_then_fails_and_staff_can_reprocess(deliver, now):
    t, customer = int(time.time()), uid("cus")
    obj = subscription_obj(sub_id=uid("sub"), customer=customer, tier="pro", period_start=t, period_end=t + DAY)
    event = make_event("customer.subscription.created", obj, created=t)
    deliver(event)  # 200: stored; processing fails (no org for this customer) on every attempt
    r = row(event)
    assert r.status == "failed" and "no organization" in r.error
    assert r.retry_count == WEBHOOK_MAX_RETRIES + 1
    # The org shows up (e.g. created by checkout): staff reprocess.
    org = OrganizationFactory(stripe_customer_id=customer)
    processed = webhook_event_reprocess(event_id=r.pk, now=now)
    assert processed.status == "processed" and processed.error == ""
    org.refresh_from_db()
    assert org.subscription_tier == "pro"


def test_webhooks_replay_command_reprocesses_failed_events(deliver, capsys):
    t, customer = int(time.time()), uid("cus")
    obj = subscription_obj(sub_id=uid("sub"), customer=customer, tier="starter", period_start=t, period_end=t + DAY)
    event = make_event("customer.subscription.updated", obj, created=t)
    deliver(event)
    assert row(event).status == "failed"
    with pytest.raises(SystemExit) as exit_info:
        call_command("webhooks_replay", "--failed")
    assert exit_info.value.code == 1
    assert row(event).status == "failed"  # still no org: stays failed, error kept
    out = capsys.readouterr().out
    assert "1 failed" in out
    OrganizationFactory(stripe_customer_id=customer)
    call_command("webhooks_replay", "--failed", "--id", event["id"])
    assert row(event).status == "processed"
    assert "1 processed" in capsys.readouterr().out


def test_pending_events_left_behind_are_requeued_and_processed_once(org, now, webhook_log,
                                                                     django_capture_on_commit_callbacks):
    """A lost on-commit send (broker down) leaves the row pending; the periodic sweep re-queues it."""
    import datetime as dt

    from billing.services.webhooks import WEBHOOK_REQUEUE_AFTER, webhook_event_process, webhook_events_requeue_stale

    t = int(time.time())
    event = sub_event(org, "customer.subscription.created", sub_id=uid("sub"), created=t, tier="max")
    stale = WebhookEvent.objects.create(stripe_event_id=event["id"], type=event["type"], payload=event,
                                        event_created=t, received_at=now - WEBHOOK_REQUEUE_AFTER - dt.timedelta(seconds=1))
    fresh_event = make_event("customer.tax_id.created", {"id": "txi_2"}, created=t)
    WebhookEvent.objects.create(stripe_event_id=fresh_event["id"], type=fresh_event["type"], payload=fresh_event,
                                received_at=now)
    with django_capture_on_commit_callbacks(execute=True):
        assert webhook_events_requeue_stale(now=now) == 1
    stale.refresh_from_db()
    assert stale.status == "processed" and WebhookEvent.objects.get(stripe_event_id=fresh_event["id"]).status == "pending"
    webhook_event_process(event_id=stale.pk, now=now)  # a second run (double send) does nothing
    assert webhook_log(event["id"]) == 1
    org.refresh_from_db()
    assert org.subscription_tier == "max"

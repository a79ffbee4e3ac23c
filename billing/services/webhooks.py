"""Stripe webhooks: receive (verify + store), process (dispatch to handlers), reprocess.

Flow (DESIGN "Webhooks"): the view hands the raw body to `webhook_event_receive`, which verifies
the signature through the gateway, checks the API version, and INSERTs the event; the UNIQUE
stripe_event_id makes a duplicate (or a racing twin) delivery fail the INSERT, which we
acknowledge without processing. On commit the Celery task `webhook_process` runs
`webhook_event_process`, which dispatches by type. Handlers are idempotent (a retried or
reprocessed event re-applies the same state) and never let an older event overwrite newer
state (rows keep the `created` of the newest event applied). Handlers never call Stripe inside a
transaction: reads happen first, then the locked write.

Statuses: pending -> processed | ignored (unknown type, or provably not ours: `WebhookNotOurs`,
reason kept in `error`) | failed (after the last retry, or at once for an error retrying cannot fix:
`WebhookNotRetryable` / NON_RETRYABLE_CODES; error kept); staff reprocess failed events with
`webhook_event_reprocess` (admin action, `manage.py webhooks_replay`).

Not ours: a Stripe account shared with other products delivers their events too. An event whose
object names no org of ours (metadata, customer, a subscription/checkout session we know) is
ignored, unless its customer has a checkout session we created that is still open or completed
(Stripe does not order events: its checkout.session.completed may link the customer next), which
keeps it retryable.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from django.db import IntegrityError, transaction
from django.db.models import F, Q

from organizations.models import Organization

from .. import enqueue, stripe_gateway
from ..errors import BillingError
from ..logging import log_webhook
from ..models.checkout_intents import CheckoutIntent
from ..models.invoices import Invoice, InvoiceStatus, InvoiceType
from ..models.subscriptions import Subscription
from ..models.webhooks import WebhookEvent, WebhookEventStatus
from ..notifications import notify_org_admins
from ..plans import PLANS, format_cents
from ..stripe_payloads import iso, stripe_id, stripe_ts
from .dunning import dunning_invoice_paid, dunning_invoice_payment_failed
from .plan_changes import checkout_intent_complete, checkout_intent_expire
from .subscription_sync import organization_id_for_stripe, subscription_organization_id, subscription_sync
from .topup_purchases import topup_checkout_completed, topup_payment_failed, topup_payment_succeeded

logger = logging.getLogger("billing.webhooks")

#: Largest body we accept (Stripe events are a few KB).
WEBHOOK_MAX_BODY_BYTES = 512 * 1024
#: Processing attempts after the first one, with exponential backoff (see billing.tasks.webhook_process).
WEBHOOK_MAX_RETRIES = 5
#: Pending events older than this are re-queued by the periodic sweep (a lost on-commit send).
WEBHOOK_REQUEUE_AFTER = dt.timedelta(minutes=10)


class WebhookRejected(BillingError):
    """A delivery we refuse with 400 (nothing stored). `code` says why, stably."""

    http_status = 400


class WebhookNotOurs(BillingError):
    """The event is provably about another product's Stripe objects: stored IGNORED with this
    message as the reason, never retried."""

    code = "WEBHOOK_NOT_OURS"


class WebhookNotRetryable(BillingError):
    """Retrying cannot make the event succeed (e.g. a price we do not know for one of our orgs):
    FAILED at the first attempt, the error kept for staff (who fix the cause, then reprocess)."""


#: Handler error codes that no retry can fix (the object itself is the problem); FAILED at once.
NON_RETRYABLE_CODES = frozenset({"UNKNOWN_PRICE", "STRIPE_OBJECT_INVALID", "ORG_MISMATCH"})


@dataclass(frozen=True)
class WebhookReceipt:
    event: WebhookEvent
    created: bool  # False = duplicate delivery (already stored; not processed again)


# --- receive ---------------------------------------------------------------------------------------

#: Gateway error code -> our stable rejection code.
_GATEWAY_REJECTIONS = {
    "STRIPE_SIGNATURE_INVALID": "WEBHOOK_SIGNATURE_INVALID",
    "STRIPE_INVALID_PAYLOAD": "WEBHOOK_PAYLOAD_INVALID",
    "STRIPE_API_VERSION_MISMATCH": "WEBHOOK_API_VERSION_MISMATCH",
}


def _reject(code: str, reason: str, **fields: Any) -> WebhookRejected:
    log_webhook("webhook.rejected", level=logging.WARNING, code=code, reason=reason, **fields)
    return WebhookRejected(reason, code=code)


def webhook_event_verify(*, payload: bytes, sig_header: str, now: dt.datetime) -> dict:
    """The verified event as a dict, or WebhookRejected with one of the stable codes
    WEBHOOK_PAYLOAD_TOO_LARGE, WEBHOOK_SIGNATURE_MISSING, WEBHOOK_TIMESTAMP_STALE,
    WEBHOOK_SIGNATURE_INVALID, WEBHOOK_PAYLOAD_INVALID, WEBHOOK_API_VERSION_MISMATCH."""
    if len(payload) > WEBHOOK_MAX_BODY_BYTES:
        raise _reject("WEBHOOK_PAYLOAD_TOO_LARGE", f"body of {len(payload)} bytes")
    if not sig_header:
        raise _reject("WEBHOOK_SIGNATURE_MISSING", "no Stripe-Signature header")
    try:
        # The gateway owns the tolerance, the signature and the API version check.
        event = stripe_gateway.webhook_construct_event(payload, sig_header, now=now)
    except BillingError as exc:
        code = _GATEWAY_REJECTIONS.get(exc.code)
        if code is None:
            raise  # e.g. STRIPE_NOT_CONFIGURED: our problem, not the sender's (503)
        if exc.extra.get("stale"):
            raise _reject("WEBHOOK_TIMESTAMP_STALE", exc.message, timestamp=exc.extra["timestamp"]) from exc
        raise _reject(code, f"{exc.code}: {exc.message}") from exc
    event_id, event_type = event.get("id"), event.get("type")
    data = event.get("data")
    data_object = data.get("object") if isinstance(data, dict) else None
    created = event.get("created") or 0
    if not (isinstance(event_id, str) and event_id.startswith("evt_") and len(event_id) <= 255
            and isinstance(event_type, str) and 0 < len(event_type) <= 100 and isinstance(data_object, dict)
            and isinstance(created, int) and not isinstance(created, bool) and 0 <= created < 2**63):
        raise _reject("WEBHOOK_PAYLOAD_INVALID", "not a Stripe event (id/type/created/data.object)",
                      event_id=str(event_id)[:80])
    return event


def webhook_event_receive(*, payload: bytes, sig_header: str, now: dt.datetime) -> WebhookReceipt:
    """Verify and store one delivery; queue its processing once the INSERT commits.
    A duplicate (also a concurrent one) hits the unique constraint and is returned with created=False."""
    event = webhook_event_verify(payload=payload, sig_header=sig_header, now=now)
    row = WebhookEvent(stripe_event_id=event["id"], type=event["type"], api_version=event.get("api_version") or "",
                       event_created=event.get("created") or 0, payload=event,
                       status=WebhookEventStatus.PENDING, received_at=now)
    try:
        with transaction.atomic():
            row.save(force_insert=True)
            transaction.on_commit(lambda: _enqueue(row.pk))
    except IntegrityError:
        existing = WebhookEvent.objects.filter(stripe_event_id=event["id"]).first()
        if existing is None:  # not a duplicate after all: a real integrity problem
            raise
        log_webhook("webhook.duplicate", event_id=existing.stripe_event_id, type=existing.type, status=existing.status)
        return WebhookReceipt(event=existing, created=False)
    log_webhook("webhook.received", event_id=row.stripe_event_id, type=row.type, created=row.event_created)
    return WebhookReceipt(event=row, created=True)


def _enqueue(event_pk: int) -> None:
    try:
        enqueue.webhook_process(event_id=event_pk)
    except Exception:  # noqa: BLE001 - broker down: the row stays pending and the sweep re-queues it
        logger.exception("could not queue webhook event %s; the periodic sweep will retry", event_pk)


# --- process ---------------------------------------------------------------------------------------

def webhook_event_process(*, event_id: int, now: dt.datetime) -> WebhookEvent:
    """Run the handler of a stored event (by our pk). Idempotent: processed/ignored events are left
    alone. A retryable handler error propagates (the task records it and retries); `WebhookNotOurs`
    ends the event IGNORED with its reason, a non-retryable error ends it FAILED (both returned)."""
    event = WebhookEvent.objects.get(pk=event_id)
    if event.status in (WebhookEventStatus.PROCESSED, WebhookEventStatus.IGNORED):
        return event
    handler = HANDLERS.get(event.type)
    if handler is None:
        WebhookEvent.objects.filter(pk=event.pk, status__in=[WebhookEventStatus.PENDING, WebhookEventStatus.FAILED]) \
            .update(status=WebhookEventStatus.IGNORED, processed_at=now, error="")
        log_webhook("webhook.ignored", event_id=event.stripe_event_id, type=event.type)
    else:
        try:
            handler(event=event.payload, now=now)
        except WebhookNotOurs as exc:
            WebhookEvent.objects.filter(pk=event.pk,
                                        status__in=[WebhookEventStatus.PENDING, WebhookEventStatus.FAILED]) \
                .update(status=WebhookEventStatus.IGNORED, processed_at=now, error=exc.message[:10000])
            log_webhook("webhook.ignored", event_id=event.stripe_event_id, type=event.type, reason=exc.message[:500])
        except BillingError as exc:
            if not isinstance(exc, WebhookNotRetryable) and exc.code not in NON_RETRYABLE_CODES:
                raise  # may succeed later: the task records it and retries
            webhook_event_record_failure(event_id=event.pk, error=f"{exc.code}: {exc.message}", final=True, now=now)
        else:
            WebhookEvent.objects.filter(pk=event.pk,
                                        status__in=[WebhookEventStatus.PENDING, WebhookEventStatus.FAILED]) \
                .update(status=WebhookEventStatus.PROCESSED, processed_at=now, error="")
            log_webhook("webhook.processed", event_id=event.stripe_event_id, type=event.type)
    event.refresh_from_db()
    return event


def webhook_event_record_failure(*, event_id: int, error: str, final: bool, now: dt.datetime) -> None:
    """Count a failed attempt and keep the error; on the last attempt mark the event FAILED."""
    updates: dict[str, Any] = {"retry_count": F("retry_count") + 1, "error": error[:10000]}
    if final:
        updates["status"] = WebhookEventStatus.FAILED
    WebhookEvent.objects.filter(pk=event_id, status__in=[WebhookEventStatus.PENDING, WebhookEventStatus.FAILED]) \
        .update(**updates)
    event = WebhookEvent.objects.filter(pk=event_id).values_list("stripe_event_id", "type").first()
    log_webhook("webhook.failed" if final else "webhook.retrying", level=logging.ERROR if final else logging.WARNING,
                event_id=event[0] if event else event_id, type=event[1] if event else "-", error=error[:500])


def webhook_event_reprocess(*, event_id: int, now: dt.datetime) -> WebhookEvent:
    """Staff reprocessing (admin action, `manage.py webhooks_replay`): run the handler again now, in
    this process. A processed/ignored event is left as it is. On failure the event is FAILED with the
    new error and BillingError(WEBHOOK_REPROCESS_FAILED) is raised."""
    event = WebhookEvent.objects.filter(pk=event_id).first()
    if event is None:
        raise BillingError(f"webhook event {event_id} not found", code="WEBHOOK_EVENT_NOT_FOUND", http_status=404)
    if event.status in (WebhookEventStatus.PROCESSED, WebhookEventStatus.IGNORED):
        return event
    WebhookEvent.objects.filter(pk=event.pk).update(status=WebhookEventStatus.PENDING)
    log_webhook("webhook.reprocessing", event_id=event.stripe_event_id, type=event.type)
    try:
        result = webhook_event_process(event_id=event.pk, now=now)
    except Exception as exc:
        logger.exception("reprocessing %s failed", event.stripe_event_id)
        webhook_event_record_failure(event_id=event.pk, error=f"{exc.__class__.__name__}: {exc}", final=True, now=now)
        raise BillingError(f"reprocessing {event.stripe_event_id} failed: {exc}",
                           code="WEBHOOK_REPROCESS_FAILED") from exc
    if result.status == WebhookEventStatus.FAILED:  # a non-retryable error, already recorded
        raise BillingError(f"reprocessing {event.stripe_event_id} failed: {result.error}",
                           code="WEBHOOK_REPROCESS_FAILED")
    return result


def webhook_events_requeue_stale(*, now: dt.datetime) -> int:
    """Re-queue pending events received more than WEBHOOK_REQUEUE_AFTER ago (their on-commit send
    was lost, e.g. the broker was down). Processing is idempotent, so a double send is harmless."""
    pks = list(WebhookEvent.objects.filter(status=WebhookEventStatus.PENDING,
                                           received_at__lte=now - WEBHOOK_REQUEUE_AFTER)
               .values_list("pk", flat=True)[:500])
    for pk in pks:
        _enqueue(pk)
    if pks:
        log_webhook("webhook.requeued", count=len(pks))
    return len(pks)


# --- handlers --------------------------------------------------------------------------------------

def _object(event: dict) -> dict:
    return event["data"]["object"]


def _created(event: dict) -> int:
    return int(event.get("created") or 0)


def _subscription_from_stripe(*, subscription_id: str, now: dt.datetime) -> Subscription:
    """Fresh read of a subscription from Stripe (no transaction open), then sync it."""
    obj = stripe_gateway.subscription_retrieve(subscription_id=subscription_id)
    return subscription_sync(stripe_subscription=obj, now=now)


def _not_ours_unless_pending(*, what: str, customer_id: str | None) -> NoReturn:
    """`what` names no org of ours. Retryable ORG_NOT_FOUND if its customer has a checkout session we
    created that is open or complete (its completion links the customer to the org: the event is ours
    then), or if Stripe cannot tell us now; otherwise WebhookNotOurs (ignored with the reason)."""
    if customer_id:
        try:
            sessions = stripe_gateway.checkout_session_list(customer_id=customer_id)
        except BillingError as exc:
            raise BillingError(f"no organization for {what} (customer {customer_id}); its checkout sessions "
                               f"could not be checked: {exc.code}", code="ORG_NOT_FOUND", http_status=404) from exc
        for session in sessions:
            if session.status not in ("open", "complete"):
                continue
            ours = (CheckoutIntent.objects.filter(stripe_checkout_session_id=session.id).exists()
                    or organization_id_for_stripe(metadata=session.metadata, customer_id=None) is not None)
            if ours:
                raise BillingError(f"no organization for {what} yet: customer {customer_id} has our checkout "
                                   f"session {session.id} ({session.status}), which links it",
                                   code="ORG_NOT_FOUND", http_status=404)
    raise WebhookNotOurs(f"not ours: no organization for {what} (customer {customer_id or '-'} is none of our "
                         f"orgs' and has no checkout session of ours)")


def _require_our_subscription(obj: dict) -> None:
    """Org first, before the price or anything else of another product's subscription is looked at."""
    if subscription_organization_id(stripe_subscription=obj) is None:
        _not_ours_unless_pending(what=f"subscription {stripe_id(obj.get('id'))}",
                                 customer_id=stripe_id(obj.get("customer")))


def handle_checkout_session_completed(*, event: dict, now: dt.datetime) -> None:
    session = _object(event)
    mode = session.get("mode")
    if mode == "subscription":
        org_id = organization_id_for_stripe(metadata=session.get("metadata"), customer_id=stripe_id(session.get("customer")))
        if org_id is None and session.get("client_reference_id"):
            org_id = organization_id_for_stripe(metadata={"orgId": session["client_reference_id"]}, customer_id=None)
        customer_id = stripe_id(session.get("customer"))
        intent_ref = str((session.get("metadata") or {}).get("checkoutIntentId") or "")
        our_intent = Q(stripe_checkout_session_id=str(session.get("id") or ""))
        if intent_ref.isdigit():
            our_intent |= Q(pk=int(intent_ref))
        if org_id is None and not CheckoutIntent.objects.filter(our_intent).exists():
            raise WebhookNotOurs(f"not ours: checkout session {session.get('id')} (customer {customer_id or '-'}) "
                                 f"names none of our orgs and no checkout intent of ours")
        if org_id is not None and customer_id:
            # Remember the customer if checkout created it (only where none is set: never steal one).
            Organization.objects.filter(pk=org_id, stripe_customer_id__isnull=True).update(stripe_customer_id=customer_id)
        sub_id = stripe_id(session.get("subscription"))
        if not sub_id:
            raise BillingError(f"checkout session {session.get('id')} completed without a subscription",
                               code="STRIPE_OBJECT_INVALID")
        _subscription_from_stripe(subscription_id=sub_id, now=now)
        checkout_intent_complete(stripe_session=session, now=now)
    elif mode == "payment":
        topup_checkout_completed(stripe_session=session, now=now)
    else:
        logger.info("checkout session %s in mode %r: nothing to do", session.get("id"), mode)


def handle_checkout_session_expired(*, event: dict, now: dt.datetime) -> None:
    session = _object(event)
    if session.get("mode") == "subscription":
        checkout_intent_expire(stripe_session=session, now=now)
    else:
        logger.info("checkout session %s (%s) expired: nothing to do", session.get("id"), session.get("mode"))


def handle_subscription_event(*, event: dict, now: dt.datetime) -> None:
    _require_our_subscription(_object(event))
    subscription_sync(stripe_subscription=_object(event), now=now, event_created=_created(event))


def handle_subscription_trial_will_end(*, event: dict, now: dt.datetime) -> None:
    obj = _object(event)
    _require_our_subscription(obj)
    sub = subscription_sync(stripe_subscription=obj, now=now, event_created=_created(event))
    if sub.status != "trialing":
        # Late delivery: the trial already ended (canceled, or converted to paid): nothing to announce.
        logger.info("trial_will_end for %s ignored: subscription is %s", sub.stripe_subscription_id, sub.status)
        return
    has_card = bool(obj.get("default_payment_method") or obj.get("default_source"))
    notify_org_admins(organization_id=sub.organization_id, kind="trial_ending", context={
        "plan": PLANS[sub.plan_tier].name, "trial_end": iso(sub.trial_end), "has_payment_method": has_card,
        "price": format_cents(PLANS[sub.plan_tier].price_cents),
    })


def _invoice_subscription_id(invoice: dict) -> str | None:
    """The subscription of an invoice: `subscription` (API < 2025-03-31) or `parent.subscription_details`."""
    sub = invoice.get("subscription")
    if not sub:
        parent = invoice.get("parent") or {}
        sub = (parent.get("subscription_details") or {}).get("subscription")
    return stripe_id(sub)


#: Order of Stripe's invoice lifecycle (draft -> open -> uncollectible -> paid | void); never backwards.
_INVOICE_STATUS_RANK = {InvoiceStatus.DRAFT: 0, InvoiceStatus.OPEN: 1, InvoiceStatus.UNCOLLECTIBLE: 2,
                        InvoiceStatus.PAID: 3, InvoiceStatus.VOID: 3}


def invoice_sync(*, stripe_invoice: dict, now: dt.datetime, event_created: int | None = None) -> tuple[Invoice, str | None]:
    """Upsert the cached invoice. Returns (row, previous status or None if new). Older events than
    the newest applied one change nothing. Raises BillingError ORG_NOT_FOUND for an unknown customer."""
    inv_id = stripe_id(stripe_invoice.get("id"))
    if not inv_id:
        raise BillingError("invoice without id", code="STRIPE_OBJECT_INVALID")
    sub_id = _invoice_subscription_id(stripe_invoice)
    subscription = Subscription.objects.filter(stripe_subscription_id=sub_id).first() if sub_id else None
    org_id = organization_id_for_stripe(metadata=stripe_invoice.get("metadata"),
                                        customer_id=stripe_id(stripe_invoice.get("customer")))
    if org_id is None and subscription is not None:
        org_id = subscription.organization_id
    if org_id is None:
        raise BillingError(f"no organization for invoice {inv_id} (customer {stripe_invoice.get('customer')})",
                           code="ORG_NOT_FOUND", http_status=404)
    lines = ((stripe_invoice.get("lines") or {}).get("data") or [])
    line_period = (lines[0].get("period") or {}) if lines else {}
    status_transitions = stripe_invoice.get("status_transitions") or {}
    status = stripe_invoice.get("status") or InvoiceStatus.DRAFT
    values = {
        "organization_id": org_id,
        "subscription": subscription,
        "amount_due_cents": int(stripe_invoice.get("amount_due") or 0),
        "amount_paid_cents": int(stripe_invoice.get("amount_paid") or 0),
        "currency": (stripe_invoice.get("currency") or "usd").lower(),
        "status": status,
        "type": InvoiceType.SUBSCRIPTION if sub_id else InvoiceType.CREDIT_PURCHASE,
        "billing_reason": str(stripe_invoice.get("billing_reason") or "")[:40],
        "hosted_invoice_url": stripe_invoice.get("hosted_invoice_url") or "",
        "invoice_pdf": stripe_invoice.get("invoice_pdf") or "",
        "period_start": stripe_ts(line_period.get("start") or stripe_invoice.get("period_start")),
        "period_end": stripe_ts(line_period.get("end") or stripe_invoice.get("period_end")),
        "due_date": stripe_ts(stripe_invoice.get("due_date")),
        "paid_at": stripe_ts(status_transitions.get("paid_at")) if status == InvoiceStatus.PAID else None,
    }
    if values["status"] == InvoiceStatus.PAID and values["paid_at"] is None:
        values["paid_at"] = now
    with transaction.atomic():
        Organization.objects.select_for_update().filter(pk=org_id).first()  # lock order: organization first
        row = Invoice.objects.select_for_update().filter(stripe_invoice_id=inv_id).first()
        if row is not None and event_created is not None and event_created < row.last_event_created:
            logger.info("stale invoice state ignored: %s event created %s < applied %s", inv_id, event_created,
                        row.last_event_created)
            return row, row.status
        if row is not None and _INVOICE_STATUS_RANK.get(values["status"], 0) < _INVOICE_STATUS_RANK.get(row.status, 0):
            # Stripe's lifecycle only moves forward (draft -> open -> uncollectible -> paid | void); an
            # event of the same `created` second saying an earlier status is older news: change nothing.
            logger.info("invoice %s: %s state of event created %s ignored, row is %s", inv_id, values["status"],
                        event_created, row.status)
            return row, row.status
        previous_status = row.status if row is not None else None
        if row is None:
            row = Invoice(stripe_invoice_id=inv_id, created_at=stripe_ts(stripe_invoice.get("created")) or now)
        for url_field in ("hosted_invoice_url", "invoice_pdf"):
            if not values[url_field] and getattr(row, url_field):
                values.pop(url_field)  # a finalized invoice's links never go away
        if values["subscription"] is None and row.subscription_id is not None:
            values.pop("subscription")
        for key, value in values.items():
            setattr(row, key, value)
        if event_created is not None:
            row.last_event_created = max(row.last_event_created, int(event_created))
        row.updated_at = now
        row.full_clean(validate_unique=False)
        row.save()
    return row, previous_status


def handle_invoice_event(*, event: dict, now: dt.datetime) -> None:
    obj = _object(event)
    event_type = event["type"]
    sub_id = _invoice_subscription_id(obj)
    customer_id = stripe_id(obj.get("customer"))
    parent_metadata = ((obj.get("parent") or {}).get("subscription_details") or {}).get("metadata")
    if (organization_id_for_stripe(metadata=obj.get("metadata"), customer_id=customer_id) is None
            and organization_id_for_stripe(metadata=parent_metadata, customer_id=None) is None
            and not (sub_id and Subscription.objects.filter(stripe_subscription_id=sub_id).exists())):
        # Org first: another product's invoice must not make us read its subscription from Stripe.
        _not_ours_unless_pending(what=f"invoice {stripe_id(obj.get('id'))}", customer_id=customer_id)
    if (event_type == "invoice.payment_failed" and sub_id
            and not Subscription.objects.filter(stripe_subscription_id=sub_id).exists()):
        _subscription_from_stripe(subscription_id=sub_id, now=now)  # dunning needs the row
    invoice, previous_status = invoice_sync(stripe_invoice=obj, now=now, event_created=_created(event))
    if event_type == "invoice.payment_failed":
        dunning_invoice_payment_failed(invoice_id=invoice.pk, event_created=_created(event), now=now)
    elif event_type in ("invoice.paid", "invoice.payment_succeeded"):
        dunning_invoice_paid(invoice_id=invoice.pk, event_created=_created(event), now=now)
        if (invoice.status == InvoiceStatus.PAID and previous_status != InvoiceStatus.PAID
                and invoice.amount_paid_cents > 0 and invoice.type == InvoiceType.SUBSCRIPTION):
            # Stripe sends invoice.paid and invoice.payment_succeeded for one payment: one receipt.
            notify_org_admins(organization_id=invoice.organization_id, kind="receipt", context={
                "amount": format_cents(invoice.amount_paid_cents, invoice.currency),
                "amount_paid_cents": invoice.amount_paid_cents, "invoice_url": invoice.hosted_invoice_url,
                "invoice_pdf": invoice.invoice_pdf, "stripe_invoice_id": invoice.stripe_invoice_id,
                "period_start": iso(invoice.period_start), "period_end": iso(invoice.period_end),
            })


def handle_payment_intent_succeeded(*, event: dict, now: dt.datetime) -> None:
    # Subscription invoices' intents are no top-up: the handler returns None for them (invoice.* carry those).
    topup_payment_succeeded(stripe_payment_intent=_object(event), now=now)


def handle_payment_intent_failed(*, event: dict, now: dt.datetime) -> None:
    topup_payment_failed(stripe_payment_intent=_object(event), now=now)


HANDLERS: dict[str, Callable[..., None]] = {
    "checkout.session.completed": handle_checkout_session_completed,
    "checkout.session.expired": handle_checkout_session_expired,
    "customer.subscription.created": handle_subscription_event,
    "customer.subscription.updated": handle_subscription_event,
    "customer.subscription.deleted": handle_subscription_event,
    "customer.subscription.paused": handle_subscription_event,
    "customer.subscription.resumed": handle_subscription_event,
    "customer.subscription.pending_update_applied": handle_subscription_event,
    "customer.subscription.pending_update_expired": handle_subscription_event,
    "customer.subscription.trial_will_end": handle_subscription_trial_will_end,
    "invoice.created": handle_invoice_event,
    "invoice.finalized": handle_invoice_event,
    "invoice.updated": handle_invoice_event,
    "invoice.voided": handle_invoice_event,
    "invoice.marked_uncollectible": handle_invoice_event,
    "invoice.paid": handle_invoice_event,
    "invoice.payment_succeeded": handle_invoice_event,
    "invoice.payment_failed": handle_invoice_event,
    "payment_intent.succeeded": handle_payment_intent_succeeded,
    "payment_intent.payment_failed": handle_payment_intent_failed,
}

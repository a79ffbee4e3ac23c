"""Credit purchases: manual ones (Checkout or saved card), the off-session charge (manual and auto
top-up), recording outcomes, the webhook entry points and the sweeper. Auto top-up's settings and
trigger: billing.services.auto_topup. (Staff grants: billing.services.grants.)

Rules kept here:
- No Stripe call inside a DB transaction. Every payment starts with an intent row (PENDING) that is
  committed, then marked STARTED (committed), then Stripe is called with
  `idempotency_key=f"topup:{row.pk}"`, then the result is recorded.
- Credits land exactly once: `_purchase_succeed` flips `credits_applied_at` from NULL with a
  conditional UPDATE and calls the engine's `balance_add_topup_credits` in the same transaction.
  The API response and the webhook both call it; the second is a no-op.
- Lock order: balance row (engine's `balance_for_update`) -> purchase row, everywhere.
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q

from organizations.models import Organization

from .. import stripe_gateway
from ..errors import BillingError
from ..logging import log_money
from ..models import (
    CreditPurchase,
    PurchaseKind,
    PurchaseMethod,
    PurchaseStatus,
    RequestIdempotency,
)
from ..notifications import notify_org_admins
from ..plans import CURRENCY, TOPUP_PACK_CREDITS, topup_price
from ..stripe_payloads import CheckoutSession, PaymentError, PaymentIntent
from .auto_topup import auto_topup_failure_streak, auto_topup_maybe_disable, billing_page_url, enqueue_charge
from .balance import balance_add_topup_credits, balance_for_update

logger = logging.getLogger("billing.topups")

MANUAL_PACKS_MIN = 1
MANUAL_PACKS_MAX = 10
#: Sweeper: a PENDING auto row not charged after this long is re-queued (the broker was down).
SWEEP_REQUEUE_PENDING_AFTER = dt.timedelta(minutes=2)
#: Sweeper: a STARTED saved-card row (Stripe called, no outcome recorded) is flagged after this long.
SWEEP_FLAG_STARTED_AFTER = dt.timedelta(minutes=15)
#: Sweeper: REQUIRES_ACTION rows nobody finished are canceled after this long (frees the slot).
SWEEP_EXPIRE_REQUIRES_ACTION_AFTER = dt.timedelta(hours=24)
#: Sweeper: Checkout sessions expire after 24 h at Stripe; rows never completed are canceled.
SWEEP_EXPIRE_CHECKOUT_AFTER = dt.timedelta(hours=25)

#: Gateway error codes after which the charge may be retried with the same idempotency key
#: (Stripe may or may not have seen the request).
TRANSIENT_CODES = frozenset({"STRIPE_UNAVAILABLE", "RATE_LIMITED", "STRIPE_RATE_LIMITED"})
AUTH_CODES = frozenset({"AUTHENTICATION_REQUIRED"})


def _idempotency_key(purchase: CreditPurchase, suffix: str = "") -> str:
    return f"topup:{purchase.pk}{(':' + suffix) if suffix else ''}"


def topup_finish_url(*, purchase: CreditPurchase) -> str:
    """Link (emails, API) where an admin finishes a purchase whose card needs authentication."""
    return f"{settings.APP_BASE_URL}/billing/topups/{purchase.pk}/finish?org={purchase.organization.slug}"


# ==================================================================================================
# Gateway adapters (the only place this module talks to billing.stripe_gateway)
# ==================================================================================================

def _charge_off_session(*, purchase: CreditPurchase, customer_id: str, idempotency_key: str) -> PaymentIntent:
    return stripe_gateway.payment_intent_create_off_session(
        customer_id=customer_id,
        amount_cents=purchase.amount_cents,
        currency=purchase.currency,
        idempotency_key=idempotency_key,
        description=f"{purchase.packs} x {TOPUP_PACK_CREDITS} credits",
        metadata=_stripe_metadata(purchase),
    )


def _create_checkout(*, purchase: CreditPurchase, customer_id: str | None, idempotency_key: str,
                     success_url: str, cancel_url: str) -> CheckoutSession:
    return stripe_gateway.checkout_session_create(
        mode="payment",
        customer_id=customer_id,
        price_id=settings.STRIPE_PRICE_CREDITS_500,
        quantity=purchase.packs,
        success_url=success_url,
        cancel_url=cancel_url,
        metadata=_stripe_metadata(purchase),
        idempotency_key=idempotency_key,
    )


def _stripe_metadata(purchase: CreditPurchase) -> dict[str, str]:
    return {"purpose": "credit_topup", "purchase_id": str(purchase.pk),
            "orgId": str(purchase.organization_id), "kind": purchase.kind}


# ==================================================================================================
# Success / failure recording (idempotent; shared by API responses, webhooks, tasks)
# ==================================================================================================

def _purchase_succeed(*, purchase_id: int, now: dt.datetime, payment_intent_id: str | None = None,
                      checkout_session_id: str | None = None, invoice_id: str | None = None) -> bool:
    """Mark the purchase succeeded and add its credits, exactly once. Returns True when this call
    applied the credits (False: already applied by someone else)."""
    org_id, kind, credits_amount, packs, amount_cents = CreditPurchase.objects.filter(pk=purchase_id).values_list(
        "organization_id", "kind", "credits", "packs", "amount_cents").get()
    with transaction.atomic():
        balance_for_update(organization_id=org_id, now=now)  # lock order: balance -> purchase
        _record_stripe_ids(purchase_id=purchase_id, payment_intent_id=payment_intent_id,
                           checkout_session_id=checkout_session_id, invoice_id=invoice_id)
        previous = CreditPurchase.objects.filter(pk=purchase_id).values_list("status", flat=True).get()
        applied = CreditPurchase.objects.filter(pk=purchase_id, credits_applied_at__isnull=True).update(
            status=PurchaseStatus.SUCCEEDED, credits_applied_at=now, completed_at=now, open_slot=None,
            failure_code="", failure_message="")
        if not applied:
            return False
        if previous in (PurchaseStatus.FAILED, PurchaseStatus.CANCELED):
            # Stripe says the money was taken: Stripe wins, the customer gets the credits.
            logger.warning("top-up %s succeeded at Stripe after being recorded %s", purchase_id, previous)
        result = balance_add_topup_credits(organization_id=org_id, amount=credits_amount, now=now)
        # The settlement is a fact of this application (reconcile rebuilds the balance from it).
        CreditPurchase.objects.filter(pk=purchase_id).update(overage_settled=result.settled_overage)
        notify_org_admins(organization_id=org_id, kind="topup_done", context={
            "purchase_id": purchase_id, "kind": kind, "auto": kind == PurchaseKind.AUTO_TOPUP, "packs": packs,
            "credits": str(credits_amount), "amount_cents": amount_cents})
    log_money("topup.succeeded", org=org_id, purchase=purchase_id, kind=kind, credits=credits_amount,
              amount_cents=amount_cents, settled_overage=result.settled_overage,
              topup_remaining=result.balance.topup_remaining, payment_intent=payment_intent_id)
    return True


def _record_stripe_ids(*, purchase_id: int, payment_intent_id: str | None, checkout_session_id: str | None,
                       invoice_id: str | None) -> None:
    """Fill Stripe ids not yet known (never overwrite one that is)."""
    qs = CreditPurchase.objects.filter(pk=purchase_id)
    if payment_intent_id:
        qs.filter(stripe_payment_intent_id__isnull=True).update(stripe_payment_intent_id=payment_intent_id)
    if checkout_session_id:
        qs.filter(stripe_checkout_session_id__isnull=True).update(stripe_checkout_session_id=checkout_session_id)
    if invoice_id:
        qs.filter(stripe_invoice_id__isnull=True).update(stripe_invoice_id=invoice_id)


def _purchase_fail(*, purchase_id: int, code: str, message: str, now: dt.datetime,
                   payment_intent_id: str | None = None, requires_action: bool = False,
                   from_statuses: tuple[str, ...] = (PurchaseStatus.PENDING, PurchaseStatus.STARTED)) -> bool:
    """Record a failed (or authentication-required) outcome, once; emails the admins for auto
    top-ups and counts the failure streak. Returns True when this call made the transition."""
    org_id, kind, packs = CreditPurchase.objects.filter(pk=purchase_id).values_list(
        "organization_id", "kind", "packs").get()
    with transaction.atomic():
        balance = balance_for_update(organization_id=org_id, now=now)
        _record_stripe_ids(purchase_id=purchase_id, payment_intent_id=payment_intent_id,
                           checkout_session_id=None, invoice_id=None)
        status = PurchaseStatus.REQUIRES_ACTION if requires_action else PurchaseStatus.FAILED
        changed = CreditPurchase.objects.filter(
            pk=purchase_id, status__in=list(from_statuses), credits_applied_at__isnull=True,
        ).update(status=status, failure_code=code[:64], failure_message=message[:2000], completed_at=now,
                 # requires_action keeps the auto slot: no new auto purchase while one waits for the admin
                 open_slot=F("open_slot") if requires_action else None)
        if not changed:
            return False
        purchase = CreditPurchase.objects.select_related("organization").get(pk=purchase_id)
        if kind == PurchaseKind.AUTO_TOPUP:
            disabled = auto_topup_maybe_disable(balance=balance, now=now, reason=message)
            context = {"purchase_id": purchase_id, "packs": packs, "credits": str(purchase.credits),
                       "amount_cents": purchase.amount_cents, "failure_code": code, "reason": message,
                       "failures": auto_topup_failure_streak(organization_id=org_id, now=now),
                       "disabled": disabled, "billing_url": billing_page_url(purchase.organization)}
            if requires_action:
                notify_org_admins(organization_id=org_id, kind="topup_needs_auth", context={
                    **context, "action_url": topup_finish_url(purchase=purchase)})
            elif not disabled:  # when it switched auto top-up off, the topup_auto_disabled email says it all
                notify_org_admins(organization_id=org_id, kind="topup_failed", context=context)
    log_money(f"topup.{status}", org=org_id, purchase=purchase_id, kind=kind, code=code, message=message,
              payment_intent=payment_intent_id)
    return True


# ==================================================================================================
# Off-session charge (auto top-up task, and the manual "buy with saved card" path)
# ==================================================================================================

def topup_purchase_charge(*, purchase_id: int, now: dt.datetime, allow_started: bool = False) -> CreditPurchase:
    """Charge a saved-card purchase off session and record the outcome.

    PENDING -> STARTED (committed) -> Stripe call (no transaction open) -> outcome. A row already
    STARTED is charged again only with `allow_started` (a task retry after STRIPE_UNAVAILABLE: same
    idempotency key, so Stripe answers with the first attempt's result). Any other status: no-op.
    Transient gateway errors propagate (row stays STARTED; the task retries, the sweeper flags it)."""
    with transaction.atomic():
        purchase = CreditPurchase.objects.select_for_update().select_related("organization").get(pk=purchase_id)
        if purchase.method != PurchaseMethod.SAVED_CARD:
            raise BillingError(f"purchase {purchase_id} is not a saved-card purchase", code="INVALID_PURCHASE")
        if purchase.status == PurchaseStatus.PENDING:
            purchase.status = PurchaseStatus.STARTED
            purchase.started_at = now
            purchase.save(update_fields=["status", "started_at"])
        elif not (purchase.status == PurchaseStatus.STARTED and allow_started):
            return purchase
        customer_id = purchase.organization.stripe_customer_id
    if not customer_id:
        _purchase_fail(purchase_id=purchase_id, code="NO_PAYMENT_METHOD",
                       message="the organization has no saved card", now=now)
        return CreditPurchase.objects.get(pk=purchase_id)

    try:
        intent = _charge_off_session(purchase=purchase, customer_id=customer_id,
                                     idempotency_key=_idempotency_key(purchase))
    except BillingError as exc:
        if exc.code in TRANSIENT_CODES:
            logger.warning("top-up %s: Stripe unavailable (%s); will retry with the same key", purchase_id, exc.code)
            raise
        pi_id = getattr(exc, "payment_intent_id", None)  # StripeCardError carries the failed PaymentIntent
        _purchase_fail(purchase_id=purchase_id, code=exc.code, message=exc.message, now=now,
                       payment_intent_id=pi_id, requires_action=exc.code in AUTH_CODES)
        return CreditPurchase.objects.get(pk=purchase_id)

    _record_intent_outcome(purchase_id=purchase_id, intent=intent, now=now)
    return CreditPurchase.objects.get(pk=purchase_id)


def _record_intent_outcome(*, purchase_id: int, intent: PaymentIntent, now: dt.datetime) -> None:
    status, pi_id, err = intent.status, intent.id, intent.last_error
    if status == "succeeded":
        _purchase_succeed(purchase_id=purchase_id, now=now, payment_intent_id=pi_id)
    elif status == "requires_action" or (err is not None and err.code == "authentication_required"):
        _purchase_fail(purchase_id=purchase_id, code="AUTHENTICATION_REQUIRED",
                       message="the card needs authentication", now=now, payment_intent_id=pi_id,
                       requires_action=True)
    elif status in ("requires_payment_method", "canceled"):
        _purchase_fail(purchase_id=purchase_id, code=_failure_code_from_stripe(err),
                       message=(err.message if err else "") or f"payment {status}", now=now, payment_intent_id=pi_id)
    else:  # processing / requires_confirmation: the webhook finishes it
        _record_stripe_ids(purchase_id=purchase_id, payment_intent_id=pi_id, checkout_session_id=None,
                           invoice_id=None)
        logger.info("top-up %s: payment intent %s is %s; waiting for the webhook", purchase_id, pi_id, status)


def _failure_code_from_stripe(err: PaymentError | None) -> str:
    if err is None:
        return "PAYMENT_FAILED"
    code = err.decline_code or err.code
    if code == "insufficient_funds":
        return "INSUFFICIENT_FUNDS"
    if code == "authentication_required":
        return "AUTHENTICATION_REQUIRED"
    if code in ("card_declined", "generic_decline", "do_not_honor") or err.type == "card_error":
        return "CARD_DECLINED"
    return "PAYMENT_FAILED"


# ==================================================================================================
# Manual purchases
# ==================================================================================================

def manual_packs_check(packs: int) -> int:
    """The bounds of a manual purchase (browser input is parsed by billing.forms.TopupForm)."""
    if not (MANUAL_PACKS_MIN <= packs <= MANUAL_PACKS_MAX):
        raise BillingError(f"packs must be between {MANUAL_PACKS_MIN} and {MANUAL_PACKS_MAX}", code="INVALID_PACKS")
    return packs


def _new_manual(*, organization_id, packs: int, method: str, user, now: dt.datetime) -> CreditPurchase:
    credits_amount, amount_cents = topup_price(packs)
    purchase = CreditPurchase(
        organization_id=organization_id, kind=PurchaseKind.MANUAL, method=method, packs=packs,
        credits=credits_amount, amount_cents=amount_cents, currency=CURRENCY, status=PurchaseStatus.PENDING,
        created_by=user if getattr(user, "pk", None) else None, created_at=now)
    purchase.full_clean()
    purchase.save(force_insert=True)
    return purchase


def topup_checkout_start(*, organization_id, packs: int, user=None, now: dt.datetime) -> dict[str, Any]:
    """Manual top-up through Stripe Checkout (payment mode). Returns {purchase, url}. Credits land
    when `checkout.session.completed` (paid) arrives."""
    p = manual_packs_check(packs)
    if not settings.STRIPE_PRICE_CREDITS_500:
        raise BillingError("the credit pack price is not configured (run manage.py stripe_setup)",
                           code="STRIPE_NOT_CONFIGURED", http_status=503)
    org = Organization.objects.get(pk=organization_id)
    with transaction.atomic():
        purchase = _new_manual(organization_id=organization_id, packs=p, method=PurchaseMethod.CHECKOUT,
                               user=user, now=now)
    return _checkout_for(purchase=purchase, org=org, now=now, idempotency_suffix="")


def _checkout_for(*, purchase: CreditPurchase, org: Organization, now: dt.datetime,
                  idempotency_suffix: str) -> dict[str, Any]:
    if purchase.status == PurchaseStatus.PENDING:
        CreditPurchase.objects.filter(pk=purchase.pk, status=PurchaseStatus.PENDING).update(
            status=PurchaseStatus.STARTED, started_at=now)
    try:
        session = _create_checkout(
            purchase=purchase, customer_id=org.stripe_customer_id or None,
            idempotency_key=_idempotency_key(purchase, idempotency_suffix),
            success_url=billing_page_url(org, topup="success", purchase=str(purchase.pk)),
            cancel_url=billing_page_url(org, topup="canceled", purchase=str(purchase.pk)))
    except BillingError as exc:
        if purchase.kind == PurchaseKind.MANUAL:
            CreditPurchase.objects.filter(pk=purchase.pk, status=PurchaseStatus.STARTED,
                                          stripe_checkout_session_id__isnull=True).update(
                status=PurchaseStatus.FAILED, failure_code=exc.code[:64], failure_message=exc.message[:2000],
                completed_at=now)
        raise
    if purchase.stripe_checkout_session_id and purchase.stripe_checkout_session_id != session.id:
        logger.warning("top-up %s: new checkout session %s replaces %s", purchase.pk, session.id,
                       purchase.stripe_checkout_session_id)
        CreditPurchase.objects.filter(pk=purchase.pk).update(stripe_checkout_session_id=session.id)
    else:
        _record_stripe_ids(purchase_id=purchase.pk, payment_intent_id=None, checkout_session_id=session.id,
                           invoice_id=None)
    purchase.refresh_from_db()
    return {"purchase": purchase, "url": session.url}


def topup_saved_card_purchase(*, organization_id, packs: int, user=None, now: dt.datetime,
                              request_idempotency_id: int | None = None) -> CreditPurchase:
    """Manual top-up charged at once to the org's saved card (off-session PaymentIntent). The
    returned row says what happened (succeeded / failed / requires_action).

    `request_idempotency_id`: the claimed RequestIdempotency row of a keyed request (billing.idempotency).
    The purchase is linked to it in the transaction that creates it; a retry of that request (after a
    5xx or a crash) charges the linked purchase again with the same Stripe idempotency key (Stripe
    replays the first charge) instead of creating a second purchase."""
    p = manual_packs_check(packs)
    if request_idempotency_id is not None:
        linked = RequestIdempotency.objects.filter(pk=request_idempotency_id).values_list(
            "credit_purchase_id", flat=True).first()
        if linked is not None:
            logger.info("top-up %s: retried request, charging the same purchase again", linked)
            return topup_purchase_charge(purchase_id=linked, now=now, allow_started=True)
    org = Organization.objects.get(pk=organization_id)
    if not org.stripe_customer_id:
        raise BillingError("no saved card: buy through Checkout first", code="NO_PAYMENT_METHOD", http_status=409)
    with transaction.atomic():
        purchase = _new_manual(organization_id=organization_id, packs=p, method=PurchaseMethod.SAVED_CARD,
                               user=user, now=now)
        if request_idempotency_id is not None:
            RequestIdempotency.objects.filter(pk=request_idempotency_id).update(credit_purchase=purchase)
    return topup_purchase_charge(purchase_id=purchase.pk, now=now)


def topup_finish_checkout(*, purchase_id: int, organization_id, now: dt.datetime) -> str:
    """For a purchase whose card needed authentication: a Checkout session (user present, 3-D Secure
    on the hosted page) for the same packs. Completing it succeeds the same row. Returns the URL."""
    purchase = CreditPurchase.objects.select_related("organization").filter(
        pk=purchase_id, organization_id=organization_id).first()
    if purchase is None:
        raise BillingError("purchase not found", code="PURCHASE_NOT_FOUND", http_status=404)
    if purchase.status != PurchaseStatus.REQUIRES_ACTION:
        raise BillingError(f"this purchase is {purchase.status}; nothing to finish", code="PURCHASE_NOT_ACTIONABLE",
                           http_status=409)
    return _checkout_for(purchase=purchase, org=purchase.organization, now=now, idempotency_suffix="finish")["url"]


# ==================================================================================================
# Webhook entry points (called by billing.services.webhooks' dispatcher; all idempotent)
# ==================================================================================================

def _purchase_from_stripe_object(obj: PaymentIntent | CheckoutSession, *, id_field: str) -> CreditPurchase | None:
    pid = obj.metadata.get("purchase_id")
    if pid and str(pid).isdigit():
        purchase = CreditPurchase.objects.filter(pk=int(pid)).first()
        if purchase is not None:
            return purchase
    if obj.id:
        return CreditPurchase.objects.filter(**{id_field: obj.id}).first()
    return None


def topup_checkout_completed(*, stripe_session: dict[str, Any], now: dt.datetime) -> CreditPurchase | None:
    """`checkout.session.completed` (payment mode). Returns the purchase, or None if the session is
    not a top-up. Credits land when the session is paid."""
    session = CheckoutSession.from_stripe(stripe_session)
    if session.mode not in (None, "payment"):
        return None
    purchase = _purchase_from_stripe_object(session, id_field="stripe_checkout_session_id")
    if purchase is None:
        return None
    if session.customer_id:  # the card was saved for off-session use: remember the customer (never steal one)
        Organization.objects.filter(pk=purchase.organization_id, stripe_customer_id__isnull=True).update(
            stripe_customer_id=session.customer_id)
    if session.payment_status in ("paid", "no_payment_required"):
        _purchase_succeed(purchase_id=purchase.pk, now=now, payment_intent_id=session.payment_intent_id,
                          checkout_session_id=session.id, invoice_id=session.invoice_id)
    else:
        _record_stripe_ids(purchase_id=purchase.pk, payment_intent_id=session.payment_intent_id,
                           checkout_session_id=session.id, invoice_id=session.invoice_id)
        logger.info("top-up %s: checkout completed with payment_status=%s; waiting", purchase.pk,
                    session.payment_status)
    return CreditPurchase.objects.get(pk=purchase.pk)


def topup_payment_succeeded(*, stripe_payment_intent: dict[str, Any], now: dt.datetime) -> CreditPurchase | None:
    """`payment_intent.succeeded`. Returns the purchase, or None if the intent is not a top-up."""
    intent = PaymentIntent.from_stripe(stripe_payment_intent)
    purchase = _purchase_from_stripe_object(intent, id_field="stripe_payment_intent_id")
    if purchase is None:
        return None
    _purchase_succeed(purchase_id=purchase.pk, now=now, payment_intent_id=intent.id)
    return CreditPurchase.objects.get(pk=purchase.pk)


def topup_payment_failed(*, stripe_payment_intent: dict[str, Any], now: dt.datetime) -> CreditPurchase | None:
    """`payment_intent.payment_failed`. A no-op when the API response already recorded the outcome,
    and for Checkout purchases (the customer can retry on the hosted page)."""
    intent = PaymentIntent.from_stripe(stripe_payment_intent)
    purchase = _purchase_from_stripe_object(intent, id_field="stripe_payment_intent_id")
    if purchase is None:
        return None
    if purchase.method == PurchaseMethod.SAVED_CARD:
        code = _failure_code_from_stripe(intent.last_error)
        _purchase_fail(purchase_id=purchase.pk, code=code,
                       message=(intent.last_error.message if intent.last_error else "") or "payment failed", now=now,
                       payment_intent_id=intent.id, requires_action=code == "AUTHENTICATION_REQUIRED")
    return CreditPurchase.objects.get(pk=purchase.pk)


# ==================================================================================================
# Reads
# ==================================================================================================

def topup_history(*, organization_id, limit: int = 100) -> list[CreditPurchase]:
    """The org's purchases, newest first."""
    return list(CreditPurchase.objects.select_related("organization").filter(
        organization_id=organization_id).order_by("-created_at", "-id")[:limit])


# ==================================================================================================
# Sweeper (periodic)
# ==================================================================================================

def topup_sweep(*, now: dt.datetime) -> dict[str, int]:
    """Repair what the happy path could not finish:
    - PENDING auto top-ups never charged (broker down when queued): re-queue the charge task;
    - PENDING manual saved-card rows (the request died before calling Stripe): cancel, never charge
      a customer who is no longer waiting for the answer;
    - STARTED saved-card rows with no outcome (Stripe called, result unknown): flag + log ERROR for ops
      (not blindly retried; the same idempotency key makes a manual re-drive safe within 24 h);
    - REQUIRES_ACTION rows nobody finished in 24 h, Checkout rows never completed: cancel."""
    counts = {"requeued": 0, "canceled": 0, "flagged": 0, "expired": 0}
    stale = now - SWEEP_REQUEUE_PENDING_AFTER
    pending_auto = list(CreditPurchase.objects.filter(
        status=PurchaseStatus.PENDING, kind=PurchaseKind.AUTO_TOPUP, method=PurchaseMethod.SAVED_CARD,
    ).filter(Q(queued_at__lt=stale) | Q(queued_at__isnull=True, created_at__lt=stale)).values_list("pk", flat=True)[:500])
    for pk in pending_auto:
        if enqueue_charge(pk):
            CreditPurchase.objects.filter(pk=pk, status=PurchaseStatus.PENDING).update(queued_at=now)
            counts["requeued"] += 1
    counts["canceled"] += CreditPurchase.objects.filter(
        status=PurchaseStatus.PENDING, kind=PurchaseKind.MANUAL, method=PurchaseMethod.SAVED_CARD, created_at__lt=stale,
    ).update(status=PurchaseStatus.CANCELED, failure_code="ABANDONED",
             failure_message="the request ended before Stripe was called", completed_at=now)
    stuck = list(CreditPurchase.objects.filter(
        status=PurchaseStatus.STARTED, method=PurchaseMethod.SAVED_CARD, flagged_at__isnull=True,
        started_at__lt=now - SWEEP_FLAG_STARTED_AFTER).values_list("pk", "organization_id", "started_at")[:500])
    for pk, org_id, started_at in stuck:
        logger.error("top-up %s for org %s STARTED at %s with no outcome recorded: check Stripe for "
                     "idempotency key topup:%s", pk, org_id, started_at.isoformat(), pk)
        counts["flagged"] += CreditPurchase.objects.filter(pk=pk, flagged_at__isnull=True).update(flagged_at=now)
    for pk in CreditPurchase.objects.filter(
            status=PurchaseStatus.REQUIRES_ACTION,
            completed_at__lt=now - SWEEP_EXPIRE_REQUIRES_ACTION_AFTER).values_list("pk", flat=True)[:500]:
        if _purchase_cancel(purchase_id=pk, code="AUTHENTICATION_NOT_COMPLETED",
                            message="the card was not authenticated in time", now=now,
                            from_statuses=(PurchaseStatus.REQUIRES_ACTION,)):
            counts["expired"] += 1
    for pk in CreditPurchase.objects.filter(
            status__in=[PurchaseStatus.PENDING, PurchaseStatus.STARTED], method=PurchaseMethod.CHECKOUT,
            created_at__lt=now - SWEEP_EXPIRE_CHECKOUT_AFTER).values_list("pk", flat=True)[:500]:
        if _purchase_cancel(purchase_id=pk, code="CHECKOUT_EXPIRED", message="checkout was not completed", now=now,
                            from_statuses=(PurchaseStatus.PENDING, PurchaseStatus.STARTED)):
            counts["expired"] += 1
    if any(counts.values()):
        logger.info("top-up sweep: %s", counts)
    return counts


def _purchase_cancel(*, purchase_id: int, code: str, message: str, now: dt.datetime,
                     from_statuses: tuple[str, ...]) -> bool:
    return bool(CreditPurchase.objects.filter(
        pk=purchase_id, status__in=list(from_statuses), credits_applied_at__isnull=True,
    ).update(status=PurchaseStatus.CANCELED, failure_code=code, failure_message=message, completed_at=now,
             open_slot=None))

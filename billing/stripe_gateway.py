"""The Stripe gateway: the ONLY module that imports `stripe`.

- The API version is pinned (`STRIPE_API_VERSION`): every request sends it, and webhook events
  carrying another version are refused.
- The client is built lazily from settings (`STRIPE_SECRET_KEY`, `STRIPE_API_BASE` — the bundled
  simulator in dev/tests —, timeouts, bounded retries); nothing happens at import time.
- Every `stripe` error becomes a `BillingError` with a stable code (CARD_DECLINED, INSUFFICIENT_FUNDS,
  AUTHENTICATION_REQUIRED, STRIPE_INVALID_REQUEST, STRIPE_NOT_FOUND, STRIPE_IDEMPOTENCY_ERROR,
  STRIPE_RATE_LIMITED, STRIPE_UNAVAILABLE, STRIPE_AUTH_ERROR, STRIPE_PERMISSION_ERROR,
  STRIPE_SIGNATURE_INVALID, STRIPE_API_VERSION_MISMATCH, STRIPE_NOT_CONFIGURED).
- Callers never touch stripe objects: every call returns typed frozen dataclasses (billing.stripe_payloads'
  `Customer`, `PaymentMethod`, `Product`, `Price`, `CheckoutSession`, `PortalSession`,
  `PortalConfiguration`, `Invoice`, `PaymentIntent`; subscription calls a `SubscriptionSnapshot`: the
  object + Stripe's time of the answer), each keeping Stripe's whole answer in `obj`. Only
  `webhook_construct_event` returns a plain dict: the verified event, stored as it came.
- Every mutating call takes an `idempotency_key` (derive it from your own intent row).
"""
from __future__ import annotations

import datetime as dt
import email.utils
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import stripe
from django.conf import settings

from billing_project.api import json_loads_strict

from .errors import BillingError
from .stripe_payloads import (CheckoutSession, Customer, Invoice, PaymentError, PaymentIntent, PaymentMethod,
                              PortalConfiguration, PortalSession, Price, Product, stripe_id)

logger = logging.getLogger("billing.stripe")

#: The pinned Stripe API version (the one `stripe==16.1.0` is generated for).
STRIPE_API_VERSION = "2026-10-28.endive"
#: Seconds allowed between a webhook's signed timestamp and now.
WEBHOOK_TOLERANCE_SECONDS = 300
#: Network retries (on connection errors / 409 / 429 / 5xx; the SDK adds an idempotency key for POSTs).
MAX_NETWORK_RETRIES = 2
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 30.0

_client: stripe.StripeClient | None = None
_client_key: tuple | None = None
_client_lock = threading.Lock()


class StripeCardError(BillingError):
    """A card was declined / needs authentication. `payment_intent_id`, `decline_code` and
    `stripe_code` say what Stripe said (the PaymentIntent, if any, is left requires_payment_method)."""

    http_status = 402

    def __init__(self, message: str, *, code: str, stripe_code: str | None = None, decline_code: str | None = None,
                 payment_intent_id: str | None = None) -> None:
        super().__init__(message, code=code)
        self.stripe_code = stripe_code
        self.decline_code = decline_code
        self.payment_intent_id = payment_intent_id


def _settings_key() -> tuple:
    return (settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE,
            getattr(settings, "STRIPE_MAX_NETWORK_RETRIES", MAX_NETWORK_RETRIES),
            # Seconds to wait for Stripe's answer per attempt (fault tests shorten it).
            float(getattr(settings, "STRIPE_READ_TIMEOUT_SECONDS", READ_TIMEOUT_SECONDS)))


def get_client() -> stripe.StripeClient:
    """The process-wide client, rebuilt when the settings it depends on change (tests override them)."""
    global _client, _client_key
    key = _settings_key()
    with _client_lock:
        if _client is None or _client_key != key:
            secret, api_base, retries, read_timeout = key
            if not secret:
                raise BillingError("Stripe is not configured (STRIPE_SECRET_KEY is empty)",
                                   code="STRIPE_NOT_CONFIGURED", http_status=503)
            base_addresses = {"api": api_base} if api_base else None
            _client = stripe.StripeClient(
                secret, stripe_version=STRIPE_API_VERSION, base_addresses=base_addresses,
                max_network_retries=max(0, min(int(retries), 5)),
                http_client=stripe.RequestsClient(timeout=(CONNECT_TIMEOUT_SECONDS, read_timeout)),
            )
            _client_key = key
        return _client


def reset_client() -> None:
    global _client, _client_key
    with _client_lock:
        _client, _client_key = None, None


# --- error mapping --------------------------------------------------------------------------------
_DECLINE_CODES = {"insufficient_funds": "INSUFFICIENT_FUNDS", "authentication_required": "AUTHENTICATION_REQUIRED",
                  "expired_card": "EXPIRED_CARD"}


def _map_error(exc: stripe.StripeError, op: str) -> BillingError:
    err = getattr(exc, "error", None)
    stripe_code = getattr(exc, "code", None) or getattr(err, "code", None)
    message = getattr(exc, "user_message", None) or str(exc) or exc.__class__.__name__
    status = getattr(exc, "http_status", None)
    if isinstance(exc, stripe.CardError):
        decline = getattr(err, "decline_code", None) or stripe_code
        pi = getattr(err, "payment_intent", None)
        code = (_DECLINE_CODES.get(decline or "") or _DECLINE_CODES.get(stripe_code or "") or
                ("INCORRECT_CARD" if stripe_code in ("incorrect_number", "invalid_number", "incorrect_cvc")
                 else "CARD_DECLINED"))
        logger.info("stripe %s card error code=%s decline=%s", op, stripe_code, decline)
        return StripeCardError(message, code=code, stripe_code=stripe_code, decline_code=decline,
                               payment_intent_id=getattr(pi, "id", None) if pi else None)
    if isinstance(exc, stripe.AuthenticationError):
        logger.error("stripe %s authentication error: %s", op, exc)
        return BillingError("payment provider rejected our credentials", code="STRIPE_AUTH_ERROR", http_status=503)
    if isinstance(exc, stripe.PermissionError):
        logger.error("stripe %s permission error: %s", op, exc)
        return BillingError("payment provider refused the operation", code="STRIPE_PERMISSION_ERROR",
                            http_status=503)
    if isinstance(exc, stripe.RateLimitError):
        logger.warning("stripe %s rate limited", op)
        return BillingError("payment provider is busy, try again", code="STRIPE_RATE_LIMITED", http_status=503)
    if isinstance(exc, stripe.IdempotencyError):
        logger.error("stripe %s idempotency error: %s", op, exc)
        return BillingError(message, code="STRIPE_IDEMPOTENCY_ERROR", http_status=409)
    if isinstance(exc, stripe.InvalidRequestError):
        if status == 404 or stripe_code == "resource_missing":
            logger.warning("stripe %s not found: %s", op, exc)
            return BillingError(message, code="STRIPE_NOT_FOUND", http_status=404)
        logger.error("stripe %s invalid request (%s): %s", op, stripe_code, exc)
        return BillingError(message, code="STRIPE_INVALID_REQUEST", http_status=400)
    if isinstance(exc, stripe.SignatureVerificationError):
        return BillingError("invalid Stripe signature", code="STRIPE_SIGNATURE_INVALID", http_status=400)
    # APIConnectionError, APIError (5xx), anything else: the provider is unavailable right now.
    logger.warning("stripe %s unavailable: %s: %s", op, exc.__class__.__name__, exc)
    return BillingError("payment provider unavailable, try again", code="STRIPE_UNAVAILABLE", http_status=503)


def _call(op: str, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    try:
        result = fn(*args, **kwargs)
    except stripe.StripeError as exc:
        raise _map_error(exc, op) from exc
    logger.info("stripe %s ok id=%s", op, getattr(result, "id", None))
    return result.to_dict()


def _opts(idempotency_key: str | None) -> dict[str, Any]:
    return {"idempotency_key": idempotency_key} if idempotency_key else {}


def _require_key(idempotency_key: str) -> str:
    if not idempotency_key:
        raise ValueError("mutating Stripe calls need an idempotency_key derived from an intent row")
    return idempotency_key


# --- customers ------------------------------------------------------------------------------------
def customer_create(*, email: str | None, name: str | None, metadata: dict[str, str],
                    idempotency_key: str) -> Customer:
    params: dict[str, Any] = {"metadata": metadata}
    if email:
        params["email"] = email
    if name:
        params["name"] = name
    return Customer.from_stripe(_call("customer_create", get_client().v1.customers.create, params=params,
                                      options=_opts(_require_key(idempotency_key))))


def customer_retrieve(customer_id: str) -> Customer:
    return Customer.from_stripe(_call("customer_retrieve", get_client().v1.customers.retrieve, customer_id))


# --- payment methods ------------------------------------------------------------------------------
def payment_method_list(*, customer_id: str, limit: int = 10) -> list[PaymentMethod]:
    return [PaymentMethod.from_stripe(pm) for pm in _call(
        "payment_method_list", get_client().v1.payment_methods.list,
        params={"customer": customer_id, "type": "card", "limit": limit})["data"]]


def payment_method_default(*, customer_id: str) -> PaymentMethod | None:
    """The card an off-session charge should use: the customer's invoice default, else their
    newest attached card, else None."""
    customer = customer_retrieve(customer_id)
    default = (customer.obj.get("invoice_settings") or {}).get("default_payment_method")
    if isinstance(default, dict):
        return PaymentMethod.from_stripe(default)
    methods = payment_method_list(customer_id=customer_id)
    if customer.default_payment_method_id:
        for pm in methods:
            if pm.id == customer.default_payment_method_id:
                return pm
        return PaymentMethod.from_stripe(_call("payment_method_retrieve", get_client().v1.payment_methods.retrieve,
                                               customer.default_payment_method_id))
    return methods[0] if methods else None


# --- products and prices --------------------------------------------------------------------------
def price_by_lookup_key(lookup_key: str) -> Price | None:
    data = _call("price_by_lookup_key", get_client().v1.prices.list,
                 params={"lookup_keys": [lookup_key], "active": True, "limit": 1})["data"]
    return Price.from_stripe(data[0]) if data else None


def prices_by_lookup_keys(lookup_keys: list[str]) -> dict[str, Price]:
    """The active prices carrying these lookup keys, by lookup key."""
    data = _call("prices_by_lookup_keys", get_client().v1.prices.list,
                 params={"lookup_keys": list(lookup_keys), "active": True, "limit": 100})["data"]
    return {p["lookup_key"]: Price.from_stripe(p) for p in data}


def product_create(*, name: str, metadata: dict[str, str], idempotency_key: str) -> Product:
    return Product.from_stripe(_call("product_create", get_client().v1.products.create,
                                     params={"name": name, "metadata": metadata},
                                     options=_opts(_require_key(idempotency_key))))


def price_create(*, product_id: str, unit_amount_cents: int, currency: str, lookup_key: str,
                 recurring_interval: str | None, metadata: dict[str, str], idempotency_key: str) -> Price:
    params: dict[str, Any] = {"product": product_id, "unit_amount": unit_amount_cents, "currency": currency,
                              "lookup_key": lookup_key, "transfer_lookup_key": True, "metadata": metadata}
    if recurring_interval:
        params["recurring"] = {"interval": recurring_interval}
    return Price.from_stripe(_call("price_create", get_client().v1.prices.create, params=params,
                                   options=_opts(_require_key(idempotency_key))))


# --- checkout and portal --------------------------------------------------------------------------
def checkout_session_create(*, mode: str, customer_id: str | None, price_id: str, success_url: str,
                            cancel_url: str, metadata: dict[str, str], idempotency_key: str, quantity: int = 1,
                            trial_period_days: int | None = None) -> CheckoutSession:
    """A hosted Checkout Session (typed: id, url, …; `obj` is Stripe's whole answer).

    mode="subscription": one plan price; `metadata` goes on the session and the subscription; with
    `trial_period_days`, no card is required (`payment_method_collection=if_required`) and a trial
    ending without a card cancels the subscription.
    mode="payment": `quantity` × a one-time price (credit packs); `metadata` goes on the session and
    its PaymentIntent, and the card is saved for off-session use.
    """
    if mode not in ("subscription", "payment"):
        raise ValueError(f"bad checkout mode {mode!r}")
    params: dict[str, Any] = {"mode": mode, "line_items": [{"price": price_id, "quantity": quantity}],
                              "success_url": success_url, "cancel_url": cancel_url, "metadata": metadata}
    if customer_id:
        params["customer"] = customer_id
    org_ref = metadata.get("orgId") or metadata.get("org_id")
    if org_ref:
        params["client_reference_id"] = org_ref
    if mode == "subscription":
        sub_data: dict[str, Any] = {"metadata": metadata}
        if trial_period_days:
            sub_data["trial_period_days"] = trial_period_days
            sub_data["trial_settings"] = {"end_behavior": {"missing_payment_method": "cancel"}}
            params["payment_method_collection"] = "if_required"
        params["subscription_data"] = sub_data
    else:
        params["payment_intent_data"] = {"metadata": metadata, "setup_future_usage": "off_session"}
    return CheckoutSession.from_stripe(_call(f"checkout_session_create_{mode}", get_client().v1.checkout.sessions.create,
                                             params=params, options=_opts(_require_key(idempotency_key))))


def checkout_session_list(*, customer_id: str, limit: int = 20) -> list[CheckoutSession]:
    """The customer's Checkout Sessions, newest first (does a checkout of ours link this customer?)."""
    return [CheckoutSession.from_stripe(cs) for cs in _call(
        "checkout_session_list", get_client().v1.checkout.sessions.list,
        params={"customer": customer_id, "limit": limit})["data"]]


def checkout_session_retrieve(session_id: str, *, expand: list[str] | None = None) -> CheckoutSession:
    """The session (typed; linked objects as ids — an expanded one stays whole in `obj`)."""
    return CheckoutSession.from_stripe(_call("checkout_session_retrieve", get_client().v1.checkout.sessions.retrieve,
                                             session_id, params={"expand": expand} if expand else None))


def checkout_session_expire(*, session_id: str, idempotency_key: str) -> CheckoutSession:
    """Expire an open Checkout Session so it can no longer be completed. Stripe answers 400 for a
    session that is not open (complete / already expired): read it back to tell which."""
    return CheckoutSession.from_stripe(_call("checkout_session_expire", get_client().v1.checkout.sessions.expire,
                                             session_id, options=_opts(_require_key(idempotency_key))))


def billing_portal_session_create(*, customer_id: str, return_url: str, idempotency_key: str,
                                  configuration: str | None = None) -> PortalSession:
    """A portal session; `configuration` (bpc_…) says what the customer may do there (without it,
    Stripe uses the account's default configuration)."""
    params: dict[str, Any] = {"customer": customer_id, "return_url": return_url}
    if configuration:
        params["configuration"] = configuration
    return PortalSession.from_stripe(_call("billing_portal_session_create",
                                           get_client().v1.billing_portal.sessions.create,
                                           params=params, options=_opts(_require_key(idempotency_key))))


def billing_portal_configuration_create(*, features: dict[str, Any], metadata: dict[str, str],
                                        idempotency_key: str,
                                        business_profile: dict[str, Any] | None = None) -> PortalConfiguration:
    params: dict[str, Any] = {"features": features, "metadata": metadata}
    if business_profile:
        params["business_profile"] = business_profile
    return PortalConfiguration.from_stripe(_call(
        "billing_portal_configuration_create", get_client().v1.billing_portal.configurations.create,
        params=params, options=_opts(_require_key(idempotency_key))))


def billing_portal_configuration_list(*, active: bool = True, limit: int = 100) -> list[PortalConfiguration]:
    """The account's portal configurations (Stripe cannot filter by metadata: callers do)."""
    return [PortalConfiguration.from_stripe(conf) for conf in _call(
        "billing_portal_configuration_list", get_client().v1.billing_portal.configurations.list,
        params={"active": active, "limit": limit})["data"]]


# --- subscriptions --------------------------------------------------------------------------------
@dataclass(frozen=True)
class SubscriptionSnapshot:
    """A subscription as Stripe answered it, and when (Stripe's clock, unix seconds: the response's
    `Date` header). A fresh read is the newest state there is: events created before `as_of` are
    older news (subscription_sync orders them by it)."""

    obj: dict[str, Any]
    as_of: int


@dataclass(frozen=True)
class PendingUpgrade:
    """Why Stripe holds an upgrade back (`pending_update`): its proration invoice is unpaid.
    `code` CARD_DECLINED / INSUFFICIENT_FUNDS / AUTHENTICATION_REQUIRED / …; `hosted_invoice_url`
    is where the holder finishes (3-D Secure) or pays it with another card before `expires_at`."""

    code: str
    message: str
    invoice_id: str
    hosted_invoice_url: str
    amount_due_cents: int
    expires_at: int | None


def _response_time(result: Any) -> int:
    header = None
    response = getattr(result, "last_response", None)
    if response is not None:
        header = (getattr(response, "headers", None) or {}).get("Date") or (
            getattr(response, "headers", None) or {}).get("date")
    if header:
        try:
            return int(email.utils.parsedate_to_datetime(header).timestamp())
        except (TypeError, ValueError):
            logger.warning("unparseable Date header from Stripe: %r", header)
    return int(time.time())


def _snapshot(op: str, fn: Any, *args: Any, **kwargs: Any) -> SubscriptionSnapshot:
    try:
        result = fn(*args, **kwargs)
    except stripe.StripeError as exc:
        raise _map_error(exc, op) from exc
    logger.info("stripe %s ok id=%s", op, getattr(result, "id", None))
    if _replayed(result):
        # Stripe answered a repeated idempotency key with the FIRST answer's body, dated now: that body is
        # not the newest state (events may have come since). Read the subscription afresh instead.
        logger.info("stripe %s: idempotent replay; reading %s afresh", op, getattr(result, "id", None))
        return subscription_retrieve(result["id"])
    return SubscriptionSnapshot(obj=result.to_dict(), as_of=_response_time(result))


def _replayed(result: Any) -> bool:
    headers = getattr(getattr(result, "last_response", None), "headers", None) or {}
    return str(headers.get("Idempotent-Replayed") or headers.get("idempotent-replayed") or "").lower() == "true"


def subscription_retrieve(subscription_id: str) -> SubscriptionSnapshot:
    return _snapshot("subscription_retrieve", get_client().v1.subscriptions.retrieve, subscription_id)


def subscription_update_price(*, subscription_id: str, price_id: str, proration_behavior: str = "none",
                              idempotency_key: str) -> SubscriptionSnapshot:
    """Switch the (single) item to `price_id` without charging now (downgrade at period end, keep
    plan): `proration_behavior` none (or create_prorations). Clears a pending cancel. Upgrades, which
    charge, go through `subscription_upgrade_price`."""
    if proration_behavior not in ("create_prorations", "none"):
        raise ValueError(f"bad proration_behavior {proration_behavior!r} (upgrades: subscription_upgrade_price)")
    current = subscription_retrieve(subscription_id).obj
    item_id = current["items"]["data"][0]["id"]
    return _snapshot("subscription_update_price", get_client().v1.subscriptions.update, subscription_id,
                     params={"items": [{"id": item_id, "price": price_id}], "proration_behavior": proration_behavior,
                             "cancel_at_period_end": False},
                     options=_opts(_require_key(idempotency_key)))


def subscription_upgrade_price(*, subscription_id: str, price_id: str,
                               idempotency_key: str) -> tuple[SubscriptionSnapshot, PendingUpgrade | None]:
    """Switch to a higher price and invoice the prorated difference now, with
    `payment_behavior=pending_if_incomplete`: Stripe applies the new price only once that invoice is
    paid; until then the subscription keeps its price and carries `pending_update` (discarded, the
    invoice voided, at `pending_update.expires_at`). Returns Stripe's answer and, when the change is
    pending, why (read from the proration invoice and its payment). A pending cancel-at-period-end is
    undone by the caller first (not allowed together with a pending update)."""
    current = subscription_retrieve(subscription_id).obj
    item_id = current["items"]["data"][0]["id"]
    snap = _snapshot("subscription_upgrade_price", get_client().v1.subscriptions.update, subscription_id,
                     params={"items": [{"id": item_id, "price": price_id}], "proration_behavior": "always_invoice",
                             "payment_behavior": "pending_if_incomplete"},
                     options=_opts(_require_key(idempotency_key)))
    pending = snap.obj.get("pending_update")
    if not pending:
        return snap, None
    return snap, _pending_reason(snap.obj, expires_at=pending.get("expires_at"))


def _pending_reason(sub: dict[str, Any], *, expires_at: int | None) -> PendingUpgrade:
    invoice_id = stripe_id(sub.get("latest_invoice"))
    invoice = invoice_retrieve(invoice_id) if invoice_id else None
    code, message = "CARD_DECLINED", "the card was declined; pay the invoice with another card"
    pi_id = invoice.payment_intent_ids[-1] if invoice and invoice.payment_intent_ids else None
    if pi_id:
        pi = payment_intent_retrieve(pi_id)
        last = pi.last_error or PaymentError()
        decline = last.decline_code or last.code
        if pi.status == "requires_action" or decline == "authentication_required":
            code = "AUTHENTICATION_REQUIRED"
            message = "the card needs authentication by its holder: finish the payment on the invoice page"
        else:
            code = _DECLINE_CODES.get(decline or "", "CARD_DECLINED")
            message = last.message or message
    elif invoice is not None and not invoice.payment_count and invoice.status == "open":
        code, message = "NO_PAYMENT_METHOD", "no card on file to pay the upgrade"
    return PendingUpgrade(code=code, message=message, invoice_id=invoice_id or "",
                          hosted_invoice_url=(invoice.hosted_invoice_url if invoice else None) or "",
                          amount_due_cents=invoice.amount_due_cents if invoice else 0, expires_at=expires_at)


def subscription_cancel(*, subscription_id: str, idempotency_key: str,
                        at_period_end: bool = False) -> SubscriptionSnapshot:
    """At period end: sets `cancel_at_period_end` (undo with `subscription_resume`). Now: deletes it."""
    client = get_client()
    if at_period_end:
        return _snapshot("subscription_cancel_at_period_end", client.v1.subscriptions.update, subscription_id,
                         params={"cancel_at_period_end": True}, options=_opts(_require_key(idempotency_key)))
    return _snapshot("subscription_cancel_now", client.v1.subscriptions.cancel, subscription_id,
                     options=_opts(_require_key(idempotency_key)))


def subscription_extend_trial(*, subscription_id: str, trial_end: int, idempotency_key: str) -> SubscriptionSnapshot:
    """Move a subscription's trial end to `trial_end` (unix seconds, in the future) without prorating:
    the first paid invoice simply comes later. Stripe emits customer.subscription.updated."""
    if not isinstance(trial_end, int) or isinstance(trial_end, bool) or trial_end <= 0:
        raise ValueError("trial_end must be unix seconds")
    return _snapshot("subscription_extend_trial", get_client().v1.subscriptions.update, subscription_id,
                     params={"trial_end": trial_end, "proration_behavior": "none"},
                     options=_opts(_require_key(idempotency_key)))


def subscription_resume(*, subscription_id: str, idempotency_key: str) -> SubscriptionSnapshot:
    """Undo a pending cancel-at-period-end."""
    return _snapshot("subscription_resume", get_client().v1.subscriptions.update, subscription_id,
                     params={"cancel_at_period_end": False}, options=_opts(_require_key(idempotency_key)))


# --- invoices -------------------------------------------------------------------------------------
def invoice_retrieve(invoice_id: str) -> Invoice:
    return Invoice.from_stripe(_call("invoice_retrieve", get_client().v1.invoices.retrieve, invoice_id))


# --- payment intents ------------------------------------------------------------------------------
def payment_intent_create_off_session(*, customer_id: str, amount_cents: int, metadata: dict[str, str],
                                      idempotency_key: str, payment_method_id: str | None = None,
                                      currency: str = "usd", description: str | None = None) -> PaymentIntent:
    """Charge a saved card now, off session. Returns the PaymentIntent (typed; succeeded, or processing) or raises
    StripeCardError (CARD_DECLINED / INSUFFICIENT_FUNDS / AUTHENTICATION_REQUIRED, with
    `payment_intent_id`). Without `payment_method_id`, the customer's default card is used."""
    if not isinstance(amount_cents, int) or amount_cents <= 0:
        raise ValueError("amount_cents must be a positive int")
    _require_key(idempotency_key)
    if payment_method_id is None:
        pm = payment_method_default(customer_id=customer_id)
        if pm is None:
            raise StripeCardError("no saved card to charge", code="NO_PAYMENT_METHOD")
        payment_method_id = pm.id
    params: dict[str, Any] = {"amount": amount_cents, "currency": currency, "customer": customer_id,
                              "payment_method": payment_method_id, "off_session": True, "confirm": True,
                              "metadata": metadata}
    if description:
        params["description"] = description
    pi = _call("payment_intent_create_off_session", get_client().v1.payment_intents.create, params=params,
               options=_opts(idempotency_key))
    return PaymentIntent.from_stripe(_check_payment_intent(pi))


def _check_payment_intent(pi: dict[str, Any]) -> dict[str, Any]:
    # Stripe answers 402 off session; some fakes (localstripe) answer 200 requires_action instead.
    if pi.get("status") == "requires_action":
        raise StripeCardError("the card needs authentication by its holder", code="AUTHENTICATION_REQUIRED",
                              stripe_code="authentication_required", decline_code="authentication_required",
                              payment_intent_id=pi["id"])
    if pi.get("status") == "requires_payment_method":
        last = pi.get("last_payment_error") or {}
        decline = last.get("decline_code") or last.get("code")
        raise StripeCardError(last.get("message") or "card declined",
                              code=_DECLINE_CODES.get(decline or "", "CARD_DECLINED"), stripe_code=last.get("code"),
                              decline_code=decline, payment_intent_id=pi["id"])
    return pi


def payment_intent_retrieve(payment_intent_id: str) -> PaymentIntent:
    return PaymentIntent.from_stripe(_call("payment_intent_retrieve", get_client().v1.payment_intents.retrieve,
                                           payment_intent_id))


# --- events and webhooks --------------------------------------------------------------------------
def _signed_timestamp(sig_header: str) -> int | None:
    """The `t=` of a Stripe-Signature header (None when absent or not a number)."""
    for part in (sig_header or "").split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def webhook_construct_event(payload: bytes, sig_header: str, *, now: dt.datetime | None = None,
                            secret: str | None = None) -> dict[str, Any]:
    """Verify `Stripe-Signature` on the raw body and return the event as a dict. The one place for the
    webhook rules: the signed timestamp within WEBHOOK_TOLERANCE_SECONDS of `now` (either side; the
    process clock when omitted; checked first, so a stale replay is refused as stale), stripe's own
    signature verifier, and the pinned API version. Raises BillingError STRIPE_SIGNATURE_INVALID
    (bad/missing/stale signature; a stale one carries extra {"stale": True, "timestamp": t}),
    STRIPE_INVALID_PAYLOAD (not a JSON event) or STRIPE_API_VERSION_MISMATCH."""
    signed_at = _signed_timestamp(sig_header)
    now_ts = int(now.timestamp()) if now is not None else int(time.time())
    if signed_at is not None and abs(now_ts - signed_at) > WEBHOOK_TOLERANCE_SECONDS:
        logger.warning("webhook signature rejected: timestamp %s is %ss from now", signed_at, now_ts - signed_at)
        raise BillingError(f"signature timestamp {signed_at} is outside the {WEBHOOK_TOLERANCE_SECONDS}s tolerance",
                           code="STRIPE_SIGNATURE_INVALID", extra={"stale": True, "timestamp": signed_at})
    secret = secret if secret is not None else settings.STRIPE_WEBHOOK_SECRET
    if not secret:
        raise BillingError("STRIPE_WEBHOOK_SECRET is not set", code="STRIPE_NOT_CONFIGURED", http_status=503)
    try:
        # tolerance=None: the timestamp was checked above, against `now`.
        stripe.WebhookSignature.verify_header(payload.decode("utf-8"), sig_header or "", secret, None)
    except stripe.SignatureVerificationError as exc:
        logger.warning("webhook signature rejected: %s", exc)
        raise BillingError(f"invalid Stripe signature: {exc}", code="STRIPE_SIGNATURE_INVALID") from exc
    except UnicodeDecodeError as exc:
        raise BillingError("webhook body is not UTF-8", code="STRIPE_INVALID_PAYLOAD") from exc
    try:
        # Strict: no NaN/Infinity, lone surrogates or deep nesting - the event is stored in a JSON column.
        event = json_loads_strict(payload, exact_numbers=False)
    except ValueError as exc:
        raise BillingError(f"webhook body is not JSON we can store: {exc}", code="STRIPE_INVALID_PAYLOAD") from exc
    if not isinstance(event, dict) or event.get("object") != "event" or not event.get("id") or not event.get("type"):
        raise BillingError("webhook body is not a Stripe event", code="STRIPE_INVALID_PAYLOAD")
    if event.get("api_version") != STRIPE_API_VERSION:
        # The sender's configuration, not our failure: a warning (the endpoint answers 400 and says why).
        logger.warning("webhook %s refused: api_version %s != pinned %s", event.get("id"), event.get("api_version"),
                       STRIPE_API_VERSION)
        raise BillingError(f"event api_version {event.get('api_version')} != {STRIPE_API_VERSION}",
                           code="STRIPE_API_VERSION_MISMATCH")
    return event

"""Reading Stripe payloads: ids, timestamps, our ISO dates, and the typed objects callers decide on
(PaymentIntent, CheckoutSession, Customer, PaymentMethod, Product, Price, PortalSession,
PortalConfiguration, Invoice; each keeps Stripe's whole answer in `obj`). Pure (no Django, no
`stripe`), shared by the gateway, the services (webhook payloads) and reconcile."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any


def stripe_id(value: Any) -> str | None:
    """`"cus_1"` or `{"id": "cus_1", …}` (an expanded object) -> `"cus_1"`; None/"" -> None."""
    if isinstance(value, dict):
        value = value.get("id")
    return str(value) if value else None


def stripe_ts(value: Any) -> dt.datetime | None:
    """Unix seconds -> aware UTC datetime (None stays None)."""
    if value in (None, "", 0):
        return None
    return dt.datetime.fromtimestamp(int(value), tz=dt.timezone.utc)


def iso(value: dt.datetime | None) -> str | None:
    """A datetime as ISO 8601 (emails, API bodies); None stays None."""
    return value.isoformat() if value else None


# --- typed Stripe objects (what callers decide on; `obj` keeps the whole answer) ------------------
@dataclass(frozen=True)
class PaymentError:
    """A PaymentIntent's `last_payment_error` (or a card error)."""
    code: str = ""             # Stripe's code, e.g. card_declined, authentication_required
    decline_code: str = ""     # e.g. insufficient_funds, generic_decline
    type: str = ""             # e.g. card_error
    message: str = ""

    @classmethod
    def from_stripe(cls, err: Any) -> PaymentError | None:
        if not isinstance(err, dict) or not err:
            return None
        return cls(code=err.get("code") or "", decline_code=err.get("decline_code") or "", type=err.get("type") or "",
                   message=err.get("message") or "")


@dataclass(frozen=True)
class PaymentIntent:
    """A PaymentIntent, from the API or a webhook event."""
    id: str | None
    status: str | None           # succeeded | processing | requires_action | requires_payment_method | canceled | …
    amount_cents: int | None
    metadata: dict[str, str]
    last_error: PaymentError | None
    obj: dict[str, Any] = field(repr=False)

    @classmethod
    def from_stripe(cls, obj: dict[str, Any]) -> PaymentIntent:
        return cls(id=stripe_id(obj), status=obj.get("status"), amount_cents=obj.get("amount"),
                   metadata=dict(obj.get("metadata") or {}), last_error=PaymentError.from_stripe(
                       obj.get("last_payment_error")), obj=obj)


@dataclass(frozen=True)
class CheckoutSession:
    """A Checkout Session, from the API or a webhook event; linked objects as ids (expanded or not)."""
    id: str | None
    url: str | None
    mode: str | None             # payment | subscription
    status: str | None           # open | complete | expired
    payment_status: str | None   # paid | unpaid | no_payment_required
    payment_intent_id: str | None
    invoice_id: str | None
    customer_id: str | None
    subscription_id: str | None
    expires_at: dt.datetime | None
    metadata: dict[str, str]
    obj: dict[str, Any] = field(repr=False)

    @classmethod
    def from_stripe(cls, obj: dict[str, Any]) -> CheckoutSession:
        return cls(id=stripe_id(obj), url=obj.get("url"), mode=obj.get("mode"), status=obj.get("status"),
                   payment_status=obj.get("payment_status"), payment_intent_id=stripe_id(obj.get("payment_intent")),
                   invoice_id=stripe_id(obj.get("invoice")), customer_id=stripe_id(obj.get("customer")),
                   subscription_id=stripe_id(obj.get("subscription")), expires_at=stripe_ts(obj.get("expires_at")),
                   metadata=dict(obj.get("metadata") or {}), obj=obj)


@dataclass(frozen=True)
class Customer:
    """A Customer; `default_payment_method_id` is its invoice default (expanded or not), if any."""
    id: str | None
    email: str | None
    name: str | None
    metadata: dict[str, str]
    default_payment_method_id: str | None
    obj: dict[str, Any] = field(repr=False)

    @classmethod
    def from_stripe(cls, obj: dict[str, Any]) -> Customer:
        return cls(id=stripe_id(obj), email=obj.get("email"), name=obj.get("name"),
                   metadata=dict(obj.get("metadata") or {}), default_payment_method_id=stripe_id(
                       (obj.get("invoice_settings") or {}).get("default_payment_method")), obj=obj)


@dataclass(frozen=True)
class PaymentMethod:
    """A (card) PaymentMethod."""
    id: str | None
    customer_id: str | None
    card_brand: str | None
    card_last4: str | None
    obj: dict[str, Any] = field(repr=False)

    @classmethod
    def from_stripe(cls, obj: dict[str, Any]) -> PaymentMethod:
        card = obj.get("card") or {}
        return cls(id=stripe_id(obj), customer_id=stripe_id(obj.get("customer")), card_brand=card.get("brand"),
                   card_last4=card.get("last4"), obj=obj)


@dataclass(frozen=True)
class Product:
    id: str | None
    name: str | None
    metadata: dict[str, str]
    obj: dict[str, Any] = field(repr=False)

    @classmethod
    def from_stripe(cls, obj: dict[str, Any]) -> Product:
        return cls(id=stripe_id(obj), name=obj.get("name"), metadata=dict(obj.get("metadata") or {}), obj=obj)


@dataclass(frozen=True)
class Price:
    """A Price; `recurring_interval` is None for a one-time price (credit packs)."""
    id: str | None
    lookup_key: str | None
    product_id: str | None
    unit_amount_cents: int | None
    currency: str | None
    recurring_interval: str | None   # month | year | … | None
    active: bool
    metadata: dict[str, str]
    obj: dict[str, Any] = field(repr=False)

    @classmethod
    def from_stripe(cls, obj: dict[str, Any]) -> Price:
        return cls(id=stripe_id(obj), lookup_key=obj.get("lookup_key"), product_id=stripe_id(obj.get("product")),
                   unit_amount_cents=obj.get("unit_amount"), currency=obj.get("currency"),
                   recurring_interval=(obj.get("recurring") or {}).get("interval"),
                   active=bool(obj.get("active", True)), metadata=dict(obj.get("metadata") or {}), obj=obj)


@dataclass(frozen=True)
class PortalSession:
    """A billing portal session: where to send the customer."""
    id: str | None
    url: str | None
    obj: dict[str, Any] = field(repr=False)

    @classmethod
    def from_stripe(cls, obj: dict[str, Any]) -> PortalSession:
        return cls(id=stripe_id(obj), url=obj.get("url"), obj=obj)


@dataclass(frozen=True)
class PortalConfiguration:
    """A billing portal configuration (what customers may do in the portal)."""
    id: str | None
    active: bool
    metadata: dict[str, str]
    obj: dict[str, Any] = field(repr=False)

    @classmethod
    def from_stripe(cls, obj: dict[str, Any]) -> PortalConfiguration:
        return cls(id=stripe_id(obj), active=bool(obj.get("active", True)), metadata=dict(obj.get("metadata") or {}),
                   obj=obj)


@dataclass(frozen=True)
class Invoice:
    """An Invoice; `payment_count` is how many payments it lists, `payment_intent_ids` their
    PaymentIntents (oldest first; a payment without one is left out)."""
    id: str | None
    status: str | None           # draft | open | paid | void | uncollectible
    amount_due_cents: int
    hosted_invoice_url: str | None
    payment_count: int
    payment_intent_ids: tuple[str, ...]
    obj: dict[str, Any] = field(repr=False)

    @classmethod
    def from_stripe(cls, obj: dict[str, Any]) -> Invoice:
        payments = (obj.get("payments") or {}).get("data") or []
        pi_ids = tuple(pi for pi in (stripe_id((p.get("payment") or {}).get("payment_intent")) for p in payments) if pi)
        return cls(id=stripe_id(obj), status=obj.get("status"), amount_due_cents=int(obj.get("amount_due") or 0),
                   hosted_invoice_url=obj.get("hosted_invoice_url"), payment_count=len(payments),
                   payment_intent_ids=pi_ids, obj=obj)

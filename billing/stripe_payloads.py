"""Reading Stripe payloads: ids, timestamps, our ISO dates, and the typed objects callers decide on
(PaymentIntent, CheckoutSession). Pure (no Django, no `stripe`), shared by the gateway, the services
(webhook payloads) and reconcile."""
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

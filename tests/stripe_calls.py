"""Stripe calls only tests make: saving a card on a customer (in production a card arrives through
Checkout or the portal) and reads that check what Stripe holds (events, a customer's subscriptions
and invoices). They go through the gateway's client and its error mapping (`BillingError` codes), so a
test sees the same errors production would; the gateway itself keeps only what the app calls.
"""
from __future__ import annotations

from typing import Any

from billing import stripe_gateway as gw


def payment_method_attach(*, payment_method_id: str, customer_id: str, idempotency_key: str) -> dict[str, Any]:
    return gw._call("payment_method_attach", gw.get_client().v1.payment_methods.attach, payment_method_id,
                    params={"customer": customer_id}, options=gw._opts(gw._require_key(idempotency_key)))


def customer_set_default_payment_method(*, customer_id: str, payment_method_id: str,
                                        idempotency_key: str) -> dict[str, Any]:
    return gw._call("customer_set_default_payment_method", gw.get_client().v1.customers.update, customer_id,
                    params={"invoice_settings": {"default_payment_method": payment_method_id}},
                    options=gw._opts(gw._require_key(idempotency_key)))


def subscription_list(*, customer_id: str, status: str = "all") -> list[dict[str, Any]]:
    return gw._call("subscription_list", gw.get_client().v1.subscriptions.list,
                    params={"customer": customer_id, "status": status, "limit": 20})["data"]


def invoice_list(*, customer_id: str, subscription_id: str | None = None, limit: int = 24) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"customer": customer_id, "limit": limit}
    if subscription_id:
        params["subscription"] = subscription_id
    return gw._call("invoice_list", gw.get_client().v1.invoices.list, params=params)["data"]


def event_retrieve(event_id: str) -> dict[str, Any]:
    return gw._call("event_retrieve", gw.get_client().v1.events.retrieve, event_id)


def event_list(*, types: list[str] | None = None, limit: int = 100) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"limit": limit}
    if types:
        params["types"] = types
    return gw._call("event_list", gw.get_client().v1.events.list, params=params)["data"]


def card_payment_method_create(*, number: str, idempotency_key: str, exp_month: int = 12, exp_year: int = 2034,
                               cvc: str = "123") -> dict[str, Any]:
    """A card PaymentMethod from a raw card number. Only test fakes (the simulator, localstripe) accept
    raw numbers."""
    return gw._call("payment_method_create_card", gw.get_client().v1.payment_methods.create,
                    params={"type": "card", "card": {"number": number, "exp_month": exp_month,
                                                     "exp_year": exp_year, "cvc": cvc}},
                    options=gw._opts(gw._require_key(idempotency_key)))

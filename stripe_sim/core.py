"""The simulator's state and behaviour (TEST DOUBLE of Stripe; see stripe_sim/__init__.py).

Everything lives in one `Sim` object guarded by one re-entrant lock. Object shapes follow the
current API version (e.g. billing periods on subscription items, `invoice.parent`), trimmed to
the fields this project reads. Money is integer cents, times are Unix seconds of the simulated
clock (real time + an offset that `advance_clock` moves forward).
"""
from __future__ import annotations

import calendar
import copy
import datetime as dt
import hashlib
import json
import secrets
import threading
import time
from typing import Any, Callable

from . import DEFAULT_API_VERSION

Obj = dict[str, Any]


class StripeError(Exception):
    """Rendered as Stripe's error JSON: {"error": {type, code, decline_code, message, param, ...}}."""

    def __init__(self, status: int, type_: str, message: str, *, code: str | None = None,
                 decline_code: str | None = None, param: str | None = None, extra: Obj | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.message = status, type_, message
        self.code, self.decline_code, self.param, self.extra = code, decline_code, param, extra or {}

    def body(self) -> Obj:
        err: Obj = {"type": self.type, "message": self.message}
        if self.code:
            err["code"] = self.code
        if self.decline_code:
            err["decline_code"] = self.decline_code
        if self.param:
            err["param"] = self.param
        err.update(self.extra)
        return {"error": err}


def invalid(message: str, *, param: str | None = None, code: str | None = "parameter_invalid",
            status: int = 400) -> StripeError:
    return StripeError(status, "invalid_request_error", message, code=code, param=param)


def missing(kind: str, obj_id: str, param: str = "id") -> StripeError:
    return StripeError(404, "invalid_request_error", f"No such {kind}: '{obj_id}'", code="resource_missing",
                       param=param)


# --- test cards -------------------------------------------------------------------------------
class Card:
    """Behaviour of one of Stripe's test card numbers."""

    def __init__(self, number: str, brand: str = "visa", *, attach_decline: str | None = None,
                 charge_decline: str | None = None, auth_off_session: bool = False, funding: str = "credit"):
        self.number, self.brand, self.funding = number, brand, funding
        self.attach_decline = attach_decline    # decline code when attaching/saving (None = ok)
        self.charge_decline = charge_decline    # decline code on any charge
        self.auth_off_session = auth_off_session  # 402 authentication_required when charged off session


CARDS: dict[str, Card] = {c.number: c for c in [
    Card("4242424242424242"),
    Card("4000056655665556", funding="debit"),
    Card("5555555555554444", "mastercard"),
    Card("378282246310005", "amex"),
    Card("4000000000000002", attach_decline="generic_decline", charge_decline="generic_decline"),
    Card("4000000000009995", attach_decline="insufficient_funds", charge_decline="insufficient_funds"),
    Card("4000000000000069", attach_decline="expired_card", charge_decline="expired_card"),
    Card("4000000000000341", charge_decline="generic_decline"),
    Card("4000002500003155", auth_off_session=True),
    Card("4000002760003184", auth_off_session=True),
]}

#: Stripe's test PaymentMethod ids; each use creates a fresh PaymentMethod, like Stripe.
TEST_PM_TOKENS = {
    "pm_card_visa": "4242424242424242",
    "pm_card_visa_debit": "4000056655665556",
    "pm_card_mastercard": "5555555555554444",
    "pm_card_amex": "378282246310005",
    "pm_card_chargeDeclined": "4000000000000002",
    "pm_card_visa_chargeDeclined": "4000000000000002",
    "pm_card_chargeDeclinedInsufficientFunds": "4000000000009995",
    "pm_card_visa_chargeDeclinedInsufficientFunds": "4000000000009995",
    "pm_card_chargeDeclinedExpiredCard": "4000000000000069",
    "pm_card_chargeCustomerFail": "4000000000000341",
    "pm_card_authenticationRequiredOnSetup": "4000002500003155",
    "pm_card_authenticationRequired": "4000002760003184",
}
TEST_TOKENS = {"tok_visa": "4242424242424242", "tok_mastercard": "5555555555554444",
               "tok_chargeDeclined": "4000000000000002",
               "tok_chargeDeclinedInsufficientFunds": "4000000000009995"}

DECLINE_MESSAGES = {
    "generic_decline": ("card_declined", "Your card was declined."),
    "insufficient_funds": ("card_declined", "Your card has insufficient funds."),
    "expired_card": ("expired_card", "Your card has expired."),
}


def luhn_ok(number: str) -> bool:
    digits = [int(c) for c in number]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_for(number: str) -> Card:
    number = "".join(ch for ch in str(number) if ch.isdigit())
    if number in CARDS:
        return CARDS[number]
    if len(number) < 12 or not luhn_ok(number):
        raise StripeError(402, "card_error", "Your card number is incorrect.", code="incorrect_number",
                          param="number")
    brand = {"4": "visa", "5": "mastercard", "3": "amex"}.get(number[0], "unknown")
    return Card(number, brand)


def card_decline_error(decline_code: str, *, extra: Obj | None = None) -> StripeError:
    code, message = DECLINE_MESSAGES.get(decline_code, ("card_declined", "Your card was declined."))
    return StripeError(402, "card_error", message, code=code, decline_code=decline_code, extra=extra)


# --- time helpers -----------------------------------------------------------------------------
def add_months(ts: int, months: int, anchor_day: int | None = None) -> int:
    d = dt.datetime.fromtimestamp(ts, dt.timezone.utc)
    month0 = d.month - 1 + months
    year, month = d.year + month0 // 12, month0 % 12 + 1
    day = min(anchor_day or d.day, calendar.monthrange(year, month)[1])
    return int(d.replace(year=year, month=month, day=day).timestamp())


PREFIX = {
    "customer": "cus", "payment_method": "pm", "product": "prod", "price": "price",
    "checkout.session": "cs_test", "billing_portal.session": "bps", "subscription": "sub",
    "subscription_item": "si", "invoice": "in", "payment_intent": "pi", "charge": "ch", "event": "evt",
    "line_item": "il",
}
COLLECTION = {  # object type -> state collection
    "customer": "customers", "payment_method": "payment_methods", "product": "products", "price": "prices",
    "checkout.session": "checkout_sessions", "billing_portal.session": "portal_sessions",
    "subscription": "subscriptions", "invoice": "invoices", "payment_intent": "payment_intents",
    "event": "events", "billing_portal.configuration": "portal_configurations",
}
ID_PREFIX_TO_COLLECTION = {
    "cus_": "customers", "pm_": "payment_methods", "prod_": "products", "price_": "prices",
    "cs_": "checkout_sessions", "bps_": "portal_sessions", "sub_": "subscriptions", "in_": "invoices",
    "pi_": "payment_intents", "evt_": "events", "bpc_": "portal_configurations",
}


def as_bool(value: Any, param: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "True", "1"):
        return True
    if value in ("false", "False", "0", ""):
        return False
    raise invalid(f"Invalid boolean: {value}", param=param)


def as_int(value: Any, param: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise invalid(f"Invalid integer: {value}", param=param) from None


class Sim:
    def __init__(self, *, public_url: str, api_version: str = DEFAULT_API_VERSION,
                 on_event: Callable[[Obj], None] | None = None) -> None:
        self.lock = threading.RLock()
        self.public_url = public_url.rstrip("/")
        self.api_version = api_version
        self.on_event = on_event or (lambda event: None)
        self.reset()

    # -- state ---------------------------------------------------------------------------------
    def reset(self) -> None:
        with self.lock:
            self.clock_offset = 0
            self.seq = 0
            self.db: dict[str, dict[str, Obj]] = {name: {} for name in set(COLLECTION.values())}
            self.line_items: dict[str, list[Obj]] = {}     # checkout session id -> line items
            self.idempotency: dict[str, tuple[str, int, Obj]] = {}  # key -> (fingerprint, status, body)
            self.private: dict[str, Obj] = {}             # per-object sim bookkeeping (card numbers, …)

    def snapshot(self) -> Obj:
        with self.lock:
            return {"clock_offset": self.clock_offset, "seq": self.seq, "db": self.db,
                    "line_items": self.line_items, "private": self.private,
                    "idempotency": {k: list(v) for k, v in self.idempotency.items()}}

    def restore(self, data: Obj) -> None:
        with self.lock:
            self.clock_offset, self.seq = data["clock_offset"], data["seq"]
            self.db = {name: data["db"].get(name, {}) for name in set(COLLECTION.values())}
            self.line_items, self.private = data["line_items"], data["private"]
            self.idempotency = {k: tuple(v) for k, v in data["idempotency"].items()}  # type: ignore[misc]

    def now(self) -> int:
        return int(time.time()) + self.clock_offset

    def new_id(self, kind: str) -> str:
        self.seq += 1
        return f"{PREFIX[kind]}_{secrets.token_hex(7)}{self.seq:04d}"

    def store(self, obj: Obj) -> Obj:
        obj.setdefault("livemode", False)
        self.db[COLLECTION[obj["object"]]][obj["id"]] = obj
        self.private.setdefault(obj["id"], {})["seq"] = self.seq = self.seq + 1
        return obj

    def get(self, collection: str, obj_id: str, kind: str | None = None, param: str = "id") -> Obj:
        obj = self.db[collection].get(obj_id)
        if obj is None:
            raise missing(kind or collection.rstrip("s").replace("_", " "), obj_id, param)
        return obj

    def lookup_any(self, obj_id: str) -> Obj | None:
        for prefix, collection in ID_PREFIX_TO_COLLECTION.items():
            if obj_id.startswith(prefix):
                return self.db[collection].get(obj_id)
        return None

    # -- idempotency ---------------------------------------------------------------------------
    def idempotent(self, key: str | None, fingerprint: str, run: Callable[[], tuple[int, Obj]]) -> tuple[int, Obj, bool]:
        """Same key + same request -> the stored response (replayed=True); same key, other request -> 400."""
        with self.lock:
            if key:
                hit = self.idempotency.get(key)
                if hit is not None:
                    if hit[0] != fingerprint:
                        return 400, {"error": {
                            "type": "idempotency_error",
                            "message": "Keys for idempotent requests can only be used with the same parameters "
                                       f"they were first used with. Try using a key other than '{key}' if you "
                                       "meant to execute a different request."}}, False
                    return hit[1], copy.deepcopy(hit[2]), True
            status, body = run()
            if key and status < 500:
                self.idempotency[key] = (fingerprint, status, copy.deepcopy(body))
            return status, body, False

    @staticmethod
    def fingerprint(method: str, path: str, params: Obj) -> str:
        return hashlib.sha256(json.dumps([method, path, params], sort_keys=True).encode()).hexdigest()

    # -- events --------------------------------------------------------------------------------
    def emit(self, type_: str, obj: Obj, previous_attributes: Obj | None = None,
             request_key: str | None = None) -> Obj:
        data: Obj = {"object": copy.deepcopy(obj)}
        if previous_attributes is not None:
            data["previous_attributes"] = copy.deepcopy(previous_attributes)
        event = self.store({
            "id": self.new_id("event"), "object": "event", "api_version": self.api_version,
            "created": self.now(), "data": data, "pending_webhooks": 1, "type": type_,
            "request": {"id": None, "idempotency_key": request_key},
        })
        self.on_event(event)
        return event

    # -- listing / expansion -------------------------------------------------------------------
    def ordered(self, collection: str) -> list[Obj]:
        objs = list(self.db[collection].values())
        objs.sort(key=lambda o: (o.get("created", 0), self.private.get(o["id"], {}).get("seq", 0)), reverse=True)
        return objs

    def paginate(self, objs: list[Obj], params: Obj, url: str) -> Obj:
        limit = max(1, min(100, as_int(params.get("limit", 10), "limit")))
        after = params.get("starting_after")
        if after:
            ids = [o["id"] for o in objs]
            if after not in ids:
                raise missing("object", after, "starting_after")
            objs = objs[ids.index(after) + 1:]
        return {"object": "list", "data": objs[:limit], "has_more": len(objs) > limit, "url": url}

    def expand(self, obj: Obj, paths: list[str]) -> Obj:
        obj = copy.deepcopy(obj)
        for path in paths:
            self._expand_path(obj, path.split("."))
        return obj

    def _expand_path(self, node: Any, parts: list[str]) -> None:
        if not parts or not isinstance(node, dict):
            return
        head, rest = parts[0], parts[1:]
        if head == "data" and isinstance(node.get("data"), list):
            for item in node["data"]:
                self._expand_path(item, rest)
            return
        if head == "line_items" and node.get("object") == "checkout.session":
            node["line_items"] = {"object": "list", "data": copy.deepcopy(self.line_items.get(node["id"], [])),
                                  "has_more": False, "url": f"/v1/checkout/sessions/{node['id']}/line_items"}
            return
        value = node.get(head)
        if isinstance(value, str):
            target = self.lookup_any(value)
            if target is not None:
                node[head] = copy.deepcopy(target)
                value = node[head]
        if rest:
            self._expand_path(value, rest)

    # -- customers -----------------------------------------------------------------------------
    def customer_create(self, p: Obj) -> Obj:
        cus = self.store({
            "id": self.new_id("customer"), "object": "customer", "created": self.now(),
            "email": p.get("email") or None, "name": p.get("name") or None, "description": p.get("description"),
            "metadata": dict(p.get("metadata") or {}), "currency": None, "delinquent": False,
            "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None,
                                 "rendering_options": None},
        })
        pm = (p.get("invoice_settings") or {}).get("default_payment_method") or p.get("payment_method")
        if pm:
            attached = self.payment_method_attach(self.resolve_pm(pm)["id"], {"customer": cus["id"]})
            cus["invoice_settings"]["default_payment_method"] = attached["id"]
        self.emit("customer.created", cus)
        return cus

    def customer_update(self, cus_id: str, p: Obj) -> Obj:
        cus = self.get("customers", cus_id, "customer")
        prev: Obj = {}
        for field in ("email", "name", "description"):
            if field in p:
                prev[field] = cus[field]
                cus[field] = p[field] or None
        if "metadata" in p:
            prev["metadata"] = dict(cus["metadata"])
            cus["metadata"].update(p["metadata"] or {})
            cus["metadata"] = {k: v for k, v in cus["metadata"].items() if v != ""}
        inv = p.get("invoice_settings") or {}
        if "default_payment_method" in inv:
            pm_id = inv["default_payment_method"]
            if pm_id:
                pm = self.get("payment_methods", pm_id, "PaymentMethod", "invoice_settings[default_payment_method]")
                if pm["customer"] != cus_id:
                    raise invalid(f"The customer does not have a payment method with the ID {pm_id}.",
                                  param="invoice_settings[default_payment_method]", code="resource_missing")
            prev["invoice_settings"] = dict(cus["invoice_settings"])
            cus["invoice_settings"]["default_payment_method"] = pm_id or None
        self.emit("customer.updated", cus, prev)
        return cus

    # -- payment methods -----------------------------------------------------------------------
    def pm_from_card(self, number: str, exp_month: Any = 12, exp_year: Any = None) -> Obj:
        card = card_for(number)
        now = self.now()
        pm = self.store({
            "id": self.new_id("payment_method"), "object": "payment_method", "type": "card", "created": now,
            "customer": None, "metadata": {}, "allow_redisplay": "unspecified",
            "billing_details": {"address": None, "email": None, "name": None, "phone": None},
            "card": {"brand": card.brand, "display_brand": card.brand, "last4": card.number[-4:],
                     "exp_month": int(exp_month or 12),
                     "exp_year": int(exp_year or dt.datetime.fromtimestamp(now, dt.timezone.utc).year + 3),
                     "funding": card.funding, "country": "US",
                     "fingerprint": hashlib.sha256(card.number.encode()).hexdigest()[:16],
                     "checks": {"address_line1_check": None, "address_postal_code_check": None,
                                "cvc_check": "pass"}},
        })
        self.private[pm["id"]]["number"] = card.number
        return pm

    def resolve_pm(self, ref: str, param: str = "payment_method") -> Obj:
        """A PaymentMethod id, or one of Stripe's test ids (pm_card_visa…) which mint a new one."""
        if ref in TEST_PM_TOKENS:
            return self.pm_from_card(TEST_PM_TOKENS[ref])
        return self.get("payment_methods", ref, "PaymentMethod", param)

    def card_of(self, pm: Obj) -> Card:
        return CARDS.get(self.private[pm["id"]]["number"]) or card_for(self.private[pm["id"]]["number"])

    def payment_method_create(self, p: Obj) -> Obj:
        if p.get("type", "card") != "card":
            raise invalid("Only type=card is simulated.", param="type")
        card = p.get("card") or {}
        if isinstance(card, dict) and card.get("token"):
            if card["token"] not in TEST_TOKENS:
                raise missing("token", card["token"], "card[token]")
            return self.pm_from_card(TEST_TOKENS[card["token"]])
        if not isinstance(card, dict) or not card.get("number"):
            raise invalid("Missing required param: card[number].", param="card[number]", code="parameter_missing")
        pm = self.pm_from_card(card["number"], card.get("exp_month"), card.get("exp_year"))
        pm["metadata"] = dict(p.get("metadata") or {})
        return pm

    def payment_method_attach(self, pm_id: str, p: Obj) -> Obj:
        cus_id = p.get("customer")
        if not cus_id:
            raise invalid("Missing required param: customer.", param="customer", code="parameter_missing")
        self.get("customers", cus_id, "customer", "customer")
        pm = self.resolve_pm(pm_id, "payment_method")
        if pm["customer"] and pm["customer"] != cus_id:
            raise invalid("The payment method you provided has already been attached to a customer.",
                          code="payment_method_unexpected_state")
        card = self.card_of(pm)
        if card.attach_decline:
            raise card_decline_error(card.attach_decline)
        if pm["customer"] != cus_id:
            pm["customer"] = cus_id
            self.emit("payment_method.attached", pm)
        return pm

    def payment_method_detach(self, pm_id: str) -> Obj:
        pm = self.get("payment_methods", pm_id, "PaymentMethod")
        cus_id, pm["customer"] = pm["customer"], None
        if cus_id:
            cus = self.db["customers"].get(cus_id)
            if cus and cus["invoice_settings"]["default_payment_method"] == pm_id:
                cus["invoice_settings"]["default_payment_method"] = None
            self.emit("payment_method.detached", pm, {"customer": cus_id})
        return pm

    def customer_payment_methods(self, cus_id: str) -> list[Obj]:
        self.get("customers", cus_id, "customer", "customer")
        return [pm for pm in self.ordered("payment_methods") if pm["customer"] == cus_id]

    # -- products / prices ---------------------------------------------------------------------
    def product_create(self, p: Obj) -> Obj:
        if not p.get("name"):
            raise invalid("Missing required param: name.", param="name", code="parameter_missing")
        now = self.now()
        prod_id = p.get("id") or self.new_id("product")
        if prod_id in self.db["products"]:
            raise invalid(f"Product already exists: {prod_id}", param="id", code="resource_already_exists")
        return self.store({"id": prod_id, "object": "product", "name": p["name"], "active": True,
                           "description": p.get("description"), "metadata": dict(p.get("metadata") or {}),
                           "created": now, "updated": now, "default_price": None, "type": "service"})

    def price_create(self, p: Obj) -> Obj:
        product = p.get("product")
        if isinstance(product, str):
            self.get("products", product, "product", "product")
        elif isinstance(p.get("product_data"), dict):
            product = self.product_create(p["product_data"])["id"]
        else:
            raise invalid("Missing required param: product.", param="product", code="parameter_missing")
        if "unit_amount" not in p:
            raise invalid("Missing required param: unit_amount.", param="unit_amount", code="parameter_missing")
        amount = as_int(p["unit_amount"], "unit_amount")
        lookup_key = p.get("lookup_key") or None
        if lookup_key:
            for other in self.db["prices"].values():
                if other["lookup_key"] == lookup_key and other["active"]:
                    if not as_bool(p.get("transfer_lookup_key", False), "transfer_lookup_key"):
                        raise invalid(f"A price (`{other['id']}`) already uses that lookup key.",
                                      param="lookup_key", code="lookup_key_already_exists" if False else None)
                    other["lookup_key"] = None
        recurring = None
        if isinstance(p.get("recurring"), dict):
            interval = p["recurring"].get("interval", "month")
            if interval not in ("day", "week", "month", "year"):
                raise invalid("Invalid recurring[interval]", param="recurring[interval]")
            recurring = {"interval": interval,
                         "interval_count": as_int(p["recurring"].get("interval_count", 1), "interval_count"),
                         "usage_type": "licensed", "meter": None, "trial_period_days": None}
        return self.store({
            "id": self.new_id("price"), "object": "price", "active": True, "billing_scheme": "per_unit",
            "created": self.now(), "currency": (p.get("currency") or "usd").lower(), "product": product,
            "unit_amount": amount, "unit_amount_decimal": str(amount), "lookup_key": lookup_key,
            "metadata": dict(p.get("metadata") or {}), "nickname": p.get("nickname"),
            "recurring": recurring, "type": "recurring" if recurring else "one_time",
            "tax_behavior": "unspecified",
        })

    # -- charging ------------------------------------------------------------------------------
    def default_pm_id(self, cus_id: str, subscription: Obj | None = None) -> str | None:
        if subscription and subscription.get("default_payment_method"):
            return subscription["default_payment_method"]
        cus = self.db["customers"].get(cus_id)
        return cus["invoice_settings"]["default_payment_method"] if cus else None

    def _charge(self, pi: Obj, *, off_session: bool) -> StripeError | None:
        """Confirm a PaymentIntent with its payment method. Returns the card error, if any."""
        pm = self.db["payment_methods"].get(pi["payment_method"] or "")
        if pm is None:
            err = StripeError(400, "invalid_request_error",
                              "You cannot confirm this PaymentIntent because it's missing a payment method.",
                              code="payment_intent_unexpected_state")
            return err
        card = self.card_of(pm)
        err = None
        if card.charge_decline:
            err = card_decline_error(card.charge_decline)
        elif off_session and card.auth_off_session:
            err = StripeError(402, "card_error", "Your card was declined. This transaction requires authentication.",
                              code="authentication_required", decline_code="authentication_required")
        if err is None:
            pi.update(status="succeeded", amount_received=pi["amount"], last_payment_error=None,
                      latest_charge=self.new_id("charge"))
            self.emit("payment_intent.succeeded", pi)
            return None
        pi.update(status="requires_payment_method", payment_method=None, last_payment_error={
            "type": err.type, "code": err.code, "decline_code": err.decline_code, "message": err.message,
            "payment_method": copy.deepcopy(pm)}, latest_charge=self.new_id("charge"))
        self.emit("payment_intent.payment_failed", pi)
        err.extra["payment_intent"] = copy.deepcopy(pi)
        err.extra["payment_method"] = copy.deepcopy(pm)
        return err

    def payment_intent_create(self, p: Obj) -> Obj:
        if "amount" not in p:
            raise invalid("Missing required param: amount.", param="amount", code="parameter_missing")
        amount = as_int(p["amount"], "amount")
        if amount < 50:
            raise invalid("Amount must be at least $0.50 usd", param="amount", code="amount_too_small")
        cus_id = p.get("customer") or None
        if cus_id:
            self.get("customers", cus_id, "customer", "customer")
        pm_id = p.get("payment_method") or None
        if pm_id:
            pm = self.resolve_pm(pm_id)
            if pm["customer"] and pm["customer"] != cus_id:
                raise invalid("The provided PaymentMethod belongs to another customer.", param="payment_method")
            pm_id = pm["id"]
        elif cus_id:
            pm_id = self.default_pm_id(cus_id)
        off_session = as_bool(p.get("off_session", False), "off_session")
        confirm = as_bool(p.get("confirm", False), "confirm")
        if off_session and not confirm:
            raise invalid("off_session may only be used with confirm=true.", param="off_session")
        pi = self.store({
            "id": self.new_id("payment_intent"), "object": "payment_intent", "amount": amount,
            "amount_received": 0, "currency": (p.get("currency") or "usd").lower(), "customer": cus_id,
            "payment_method": pm_id, "description": p.get("description"), "metadata": dict(p.get("metadata") or {}),
            "created": self.now(), "status": "requires_confirmation" if pm_id else "requires_payment_method",
            "capture_method": "automatic", "confirmation_method": "automatic", "latest_charge": None,
            "last_payment_error": None, "next_action": None, "payment_method_types": ["card"],
            "setup_future_usage": p.get("setup_future_usage"), "canceled_at": None, "cancellation_reason": None,
        })
        pi["client_secret"] = f"{pi['id']}_secret_{secrets.token_hex(8)}"
        self.emit("payment_intent.created", pi)
        if confirm:
            err = self._charge(pi, off_session=off_session)
            if err is not None:
                raise err
        return pi

    def payment_intent_confirm(self, pi_id: str, p: Obj) -> Obj:
        pi = self.get("payment_intents", pi_id, "payment_intent")
        if pi["status"] not in ("requires_confirmation", "requires_payment_method"):
            raise invalid(f"This PaymentIntent's status is {pi['status']}, it cannot be confirmed.",
                          code="payment_intent_unexpected_state")
        if p.get("payment_method"):
            pi["payment_method"] = self.resolve_pm(p["payment_method"])["id"]
        err = self._charge(pi, off_session=as_bool(p.get("off_session", False), "off_session"))
        if err is not None:
            raise err
        return pi

    def payment_intent_cancel(self, pi_id: str) -> Obj:
        pi = self.get("payment_intents", pi_id, "payment_intent")
        if pi["status"] == "succeeded":
            raise invalid("You cannot cancel this PaymentIntent because it has a status of succeeded.",
                          code="payment_intent_unexpected_state")
        pi.update(status="canceled", canceled_at=self.now(), cancellation_reason="requested_by_customer")
        self.emit("payment_intent.canceled", pi)
        return pi

    # -- invoices ------------------------------------------------------------------------------
    def invoice_new(self, *, cus_id: str, sub: Obj | None, lines: list[Obj], billing_reason: str,
                    period_start: int, period_end: int, metadata: Obj | None = None) -> Obj:
        now = self.now()
        amount = sum(line["amount"] for line in lines)
        inv_id = self.new_id("invoice")
        cus = self.db["customers"][cus_id]
        for line in lines:
            line.setdefault("id", self.new_id("line_item"))
            line.setdefault("object", "line_item")
            line.setdefault("currency", "usd")
            line.setdefault("quantity", 1)
            line["invoice"] = inv_id
        inv = self.store({
            "id": inv_id, "object": "invoice", "customer": cus_id, "customer_email": cus.get("email"),
            "currency": "usd", "status": "draft", "billing_reason": billing_reason,
            "collection_method": "charge_automatically", "amount_due": amount, "amount_paid": 0,
            "amount_remaining": amount, "subtotal": amount, "total": amount, "created": now,
            "period_start": period_start, "period_end": period_end, "number": None,
            "hosted_invoice_url": None, "invoice_pdf": None, "attempt_count": 0, "attempted": False,
            "auto_advance": True, "next_payment_attempt": None, "due_date": None,
            "metadata": dict(metadata or {}), "description": None,
            "parent": ({"type": "subscription_details", "quote_details": None,
                        "subscription_details": {"subscription": sub["id"], "metadata": dict(sub["metadata"])}}
                       if sub else None),
            "lines": {"object": "list", "data": lines, "has_more": False, "url": f"/v1/invoices/{inv_id}/lines"},
            "payments": {"object": "list", "data": [], "has_more": False, "url": "/v1/invoice_payments"},
            "status_transitions": {"finalized_at": None, "marked_uncollectible_at": None, "paid_at": None,
                                   "voided_at": None},
        })
        self.emit("invoice.created", inv)
        return inv

    def invoice_finalize(self, inv: Obj) -> None:
        now = self.now()
        self.private.setdefault("_counters", {})
        n = self.private["_counters"]["invoice_number"] = self.private["_counters"].get("invoice_number", 0) + 1
        inv.update(status="open", number=f"SIM-{n:06d}",
                   hosted_invoice_url=f"{self.public_url}/invoice/{inv['id']}",
                   invoice_pdf=f"{self.public_url}/invoice/{inv['id']}/pdf")
        inv["status_transitions"]["finalized_at"] = now
        self.emit("invoice.finalized", inv)
        if inv["amount_due"] == 0:
            self._invoice_mark_paid(inv, None)

    def _invoice_mark_paid(self, inv: Obj, pi: Obj | None) -> None:
        prev = {"status": inv["status"], "amount_paid": inv["amount_paid"], "amount_remaining": inv["amount_remaining"]}
        inv.update(status="paid", amount_paid=inv["amount_due"], amount_remaining=0, next_payment_attempt=None)
        inv["status_transitions"]["paid_at"] = self.now()
        if pi is not None:
            inv["payments"]["data"].append({"object": "invoice_payment", "amount_paid": pi["amount_received"],
                                            "currency": pi["currency"], "is_default": True, "status": "paid",
                                            "payment": {"type": "payment_intent", "payment_intent": pi["id"]}})
        self.emit("invoice.paid", inv, prev)
        self.emit("invoice.payment_succeeded", inv, prev)

    def invoice_attempt(self, inv: Obj, *, pm_id: str | None, off_session: bool) -> StripeError | None:
        """Try to pay an open invoice; on failure the invoice stays open and payment_failed is emitted."""
        if inv["status"] != "open":
            raise invalid(f"Invoice is already {inv['status']}.", code="invoice_not_open")
        inv["attempt_count"] += 1
        inv["attempted"] = True
        err: StripeError | None
        pi = None
        if pm_id is None:
            err = StripeError(402, "card_error", "The customer has no attached payment source or default payment "
                              "method.", code="invoice_no_payment_method_types")
        else:
            pi = self.store({
                "id": self.new_id("payment_intent"), "object": "payment_intent", "amount": inv["amount_remaining"],
                "amount_received": 0, "currency": inv["currency"], "customer": inv["customer"],
                "payment_method": pm_id, "description": f"Invoice {inv['number']}", "metadata": {},
                "created": self.now(), "status": "requires_confirmation", "capture_method": "automatic",
                "confirmation_method": "automatic", "latest_charge": None, "last_payment_error": None,
                "next_action": None, "payment_method_types": ["card"], "setup_future_usage": None,
                "canceled_at": None, "cancellation_reason": None,
                "client_secret": None,
            })
            err = self._charge(pi, off_session=off_session)
        pending_update = bool(self.private.get(inv["id"], {}).get("pending_update_for"))
        if err is None:
            self._invoice_mark_paid(inv, pi)
            sub = self._invoice_subscription(inv)
            if sub and pending_update:
                self._pending_update_apply(sub)
            elif sub and sub["status"] in ("past_due", "unpaid", "incomplete"):
                self._sub_set(sub, status="active")
            return None
        inv["next_payment_attempt"] = None
        if pi is not None:
            inv["payments"]["data"].append({"object": "invoice_payment", "amount_paid": None, "currency": pi["currency"],
                                            "is_default": True, "status": "open",
                                            "payment": {"type": "payment_intent", "payment_intent": pi["id"]}})
        self.emit("invoice.payment_failed", inv)
        sub = self._invoice_subscription(inv)
        if sub and sub["status"] in ("active", "trialing") and not pending_update:
            self._sub_set(sub, status="past_due")
        return err

    def _invoice_subscription(self, inv: Obj) -> Obj | None:
        parent = inv.get("parent") or {}
        sub_id = (parent.get("subscription_details") or {}).get("subscription")
        return self.db["subscriptions"].get(sub_id) if sub_id else None

    def invoice_pay(self, inv_id: str, p: Obj, *, off_session: bool = True) -> Obj:
        inv = self.get("invoices", inv_id, "invoice")
        pm_id = p.get("payment_method")
        if pm_id:
            pm_id = self.resolve_pm(pm_id)["id"]
        else:
            pm_id = self.default_pm_id(inv["customer"], self._invoice_subscription(inv))
        err = self.invoice_attempt(inv, pm_id=pm_id, off_session=off_session)
        if err is not None:
            raise err
        return inv

    # -- subscriptions -------------------------------------------------------------------------
    def _sub_set(self, sub: Obj, **changes: Any) -> None:
        prev = {k: copy.deepcopy(sub.get(k)) for k in changes if sub.get(k) != changes[k]}
        if not prev:
            return
        sub.update(changes)
        self.emit("customer.subscription.updated", sub, prev)

    def _sub_period(self, sub: Obj) -> tuple[int, int]:
        item = sub["items"]["data"][0]
        return item["current_period_start"], item["current_period_end"]

    def _sub_set_period(self, sub: Obj, start: int, end: int) -> None:
        for item in sub["items"]["data"]:
            item["current_period_start"], item["current_period_end"] = start, end

    def _price_line(self, price: Obj, sub: Obj | None, start: int, end: int, amount: int | None = None,
                    description: str | None = None, proration: bool = False) -> Obj:
        product = self.db["products"].get(price["product"], {})
        return {
            "amount": price["unit_amount"] if amount is None else amount,
            "description": description or f"1 × {product.get('name', 'Product')}",
            "period": {"start": start, "end": end},
            "pricing": {"type": "price_details", "unit_amount_decimal": price["unit_amount_decimal"],
                        "price_details": {"price": price["id"], "product": price["product"]}},
            "parent": ({"type": "subscription_item_details", "subscription_item_details": {
                "subscription": sub["id"], "subscription_item": sub["items"]["data"][0]["id"],
                "proration": proration, "invoice_item": None}} if sub else None),
        }

    def subscription_create(self, p: Obj, *, checkout_pm: str | None = None, off_session: bool = True) -> Obj:
        cus_id = p.get("customer")
        if not cus_id:
            raise invalid("Missing required param: customer.", param="customer", code="parameter_missing")
        self.get("customers", cus_id, "customer", "customer")
        items = p.get("items") or []
        if not items or not isinstance(items, list) or not items[0].get("price"):
            raise invalid("Missing required param: items[0][price].", param="items", code="parameter_missing")
        price = self.get("prices", items[0]["price"], "price", "items[0][price]")
        if price["type"] != "recurring":
            raise invalid("The price specified is set to `type=one_time` but this field only accepts prices "
                          "with `type=recurring`.", param="items[0][price]")
        now = self.now()
        trial_end = None
        if p.get("trial_period_days"):
            trial_end = now + as_int(p["trial_period_days"], "trial_period_days") * 86400
        elif p.get("trial_end") and p["trial_end"] != "now":
            trial_end = as_int(p["trial_end"], "trial_end")
        pm_id = checkout_pm or p.get("default_payment_method") or None
        if pm_id and not checkout_pm:
            pm_id = self.get("payment_methods", pm_id, "PaymentMethod", "default_payment_method")["id"]
        missing_pm = ((p.get("trial_settings") or {}).get("end_behavior") or {}).get("missing_payment_method",
                                                                                     "create_invoice")
        sub_id = self.new_id("subscription")
        period_end = trial_end or add_months(now, 1)
        sub = {
            "id": sub_id, "object": "subscription", "customer": cus_id, "created": now, "start_date": now,
            "status": "incomplete", "billing_cycle_anchor": period_end if trial_end else now,
            "cancel_at_period_end": False, "cancel_at": None, "canceled_at": None, "ended_at": None,
            "cancellation_details": {"comment": None, "feedback": None, "reason": None},
            "collection_method": "charge_automatically", "currency": price["currency"],
            "default_payment_method": pm_id, "latest_invoice": None, "metadata": dict(p.get("metadata") or {}),
            "trial_start": now if trial_end else None, "trial_end": trial_end,
            "trial_settings": {"end_behavior": {"missing_payment_method": missing_pm}},
            "pending_update": None, "description": p.get("description"),
            "items": {"object": "list", "has_more": False, "url": f"/v1/subscription_items?subscription={sub_id}",
                      "data": [{"id": self.new_id("subscription_item"), "object": "subscription_item",
                                "created": now, "metadata": {}, "price": copy.deepcopy(price), "quantity": 1,
                                "subscription": sub_id, "current_period_start": now,
                                "current_period_end": period_end}]},
        }
        self.store(sub)
        self.private[sub_id]["pending_prorations"] = []
        if trial_end:
            sub["status"] = "trialing"
            self.emit("customer.subscription.created", sub)
            inv = self.invoice_new(cus_id=cus_id, sub=sub, billing_reason="subscription_create",
                                   period_start=now, period_end=now,
                                   lines=[self._price_line(price, sub, now, trial_end, amount=0,
                                                           description=f"Trial period for {self._product_name(price)}")])
            sub["latest_invoice"] = inv["id"]
            self.invoice_finalize(inv)
            return sub
        self.emit("customer.subscription.created", sub)
        inv = self.invoice_new(cus_id=cus_id, sub=sub, billing_reason="subscription_create", period_start=now,
                               period_end=now, lines=[self._price_line(price, sub, now, period_end)])
        sub["latest_invoice"] = inv["id"]
        self.invoice_finalize(inv)
        err = self.invoice_attempt(inv, pm_id=pm_id or self.default_pm_id(cus_id), off_session=off_session)
        if err is None:
            self._sub_set(sub, status="active")
        elif p.get("payment_behavior") == "error_if_incomplete":
            raise err
        return sub

    def _product_name(self, price: Obj) -> str:
        return self.db["products"].get(price["product"], {}).get("name", "Product")

    #: Parameters Stripe accepts together with payment_behavior=pending_if_incomplete (pending updates).
    PENDING_UPDATE_PARAMS = frozenset({"payment_behavior", "proration_behavior", "proration_date",
                                       "billing_cycle_anchor", "items", "trial_end", "trial_from_plan",
                                       "add_invoice_items", "expand"})
    #: A pending update is discarded (its invoice voided) at most this long after the update call.
    PENDING_UPDATE_LIFETIME = 23 * 3600

    def subscription_update(self, sub_id: str, p: Obj) -> Obj:
        sub = self.get("subscriptions", sub_id, "subscription")
        if sub["status"] in ("canceled", "incomplete_expired"):
            raise invalid("A canceled subscription can only update its cancellation_details and metadata.",
                          code="resource_missing" if False else None)
        now = self.now()
        behavior_p = p.get("payment_behavior", "allow_incomplete")
        if behavior_p not in ("allow_incomplete", "default_incomplete", "error_if_incomplete",
                              "pending_if_incomplete"):
            raise invalid("Invalid payment_behavior", param="payment_behavior")
        pending_mode = behavior_p == "pending_if_incomplete"
        if pending_mode:
            unsupported = sorted(set(p) - self.PENDING_UPDATE_PARAMS)
            if unsupported:
                raise invalid(f"The following parameters cannot be used with payment_behavior="
                              f"pending_if_incomplete: {', '.join(unsupported)}.", param=unsupported[0])
        prev: Obj = {}
        if "metadata" in p:
            prev["metadata"] = dict(sub["metadata"])
            sub["metadata"] = {k: v for k, v in {**sub["metadata"], **(p["metadata"] or {})}.items() if v != ""}
        if "default_payment_method" in p:
            pm_id = p["default_payment_method"] or None
            if pm_id:
                self.get("payment_methods", pm_id, "PaymentMethod", "default_payment_method")
            prev["default_payment_method"] = sub["default_payment_method"]
            sub["default_payment_method"] = pm_id
        if "cancel_at_period_end" in p:
            flag = as_bool(p["cancel_at_period_end"], "cancel_at_period_end")
            if flag != sub["cancel_at_period_end"]:
                prev.update(cancel_at_period_end=sub["cancel_at_period_end"], cancel_at=sub["cancel_at"],
                            canceled_at=sub["canceled_at"])
                sub["cancel_at_period_end"] = flag
                sub["cancel_at"] = self._sub_period(sub)[1] if flag else None
                sub["canceled_at"] = now if flag else None
                sub["cancellation_details"]["reason"] = "cancellation_requested" if flag else None
        if "trial_end" in p:
            self._sub_set_trial_end(sub, p["trial_end"], prev, now)
        invoice_now = None
        new_price = None
        items = p.get("items")
        if items:
            item_p = items[0]
            item = sub["items"]["data"][0]
            if item_p.get("id") and item_p["id"] != item["id"]:
                raise invalid(f"No such subscription item: '{item_p['id']}'", param="items[0][id]",
                              code="resource_missing")
            if item_p.get("price") and sub.get("pending_update"):
                self._pending_update_expire(sub)  # a new change replaces the unpaid one
            if item_p.get("price") and item_p["price"] != item["price"]["id"]:
                new_price = self.get("prices", item_p["price"], "price", "items[0][price]")
                if new_price["type"] != "recurring":
                    raise invalid("Price must be recurring.", param="items[0][price]")
                old_price = item["price"]
                behavior = p.get("proration_behavior", "create_prorations")
                if behavior not in ("create_prorations", "always_invoice", "none"):
                    raise invalid("Invalid proration_behavior", param="proration_behavior")
                start, end = self._sub_period(sub)
                at = as_int(p["proration_date"], "proration_date") if p.get("proration_date") else now
                if not start <= at <= max(now, start):
                    raise invalid("proration_date must be within the current period and not in the future.",
                                  param="proration_date")
                if sub["status"] != "trialing" and behavior != "none" and end > at:
                    frac_num, frac_den = end - at, max(1, end - start)
                    unused = -(old_price["unit_amount"] * frac_num // frac_den)
                    remaining = new_price["unit_amount"] * frac_num // frac_den
                    lines = [
                        self._price_line(old_price, sub, at, end, amount=unused, proration=True,
                                         description=f"Unused time on {self._product_name(old_price)}"),
                        self._price_line(new_price, sub, at, end, amount=remaining, proration=True,
                                         description=f"Remaining time on {self._product_name(new_price)}"),
                    ]
                    if behavior == "always_invoice":
                        invoice_now = lines
                    else:
                        self.private[sub_id]["pending_prorations"].extend(lines)
                if not (pending_mode and invoice_now is not None and sum(li["amount"] for li in invoice_now) > 0):
                    # Applied at once; a pending update waits for its invoice to be paid (below).
                    prev["items"] = copy.deepcopy(sub["items"])
                    item["price"] = copy.deepcopy(new_price)
                    new_price = None
        if prev:
            self.emit("customer.subscription.updated", sub, prev)
        if invoice_now is not None:
            inv = self.invoice_new(cus_id=sub["customer"], sub=sub, billing_reason="subscription_update",
                                   period_start=now, period_end=now, lines=invoice_now)
            self._sub_set(sub, latest_invoice=inv["id"])
            if new_price is not None:
                # Pending update (Stripe's "pending updates"): the change applies only once this invoice
                # is paid; a failed payment leaves the subscription as it was (no past_due).
                self.private[inv["id"]]["pending_update_for"] = sub_id
                self.private[sub_id]["pending_update_price"] = copy.deepcopy(new_price)
                self.private[sub_id]["pending_update_invoice"] = inv["id"]
            self.invoice_finalize(inv)
            if inv["status"] == "open" and inv["amount_due"] > 0:
                self.invoice_attempt(inv, pm_id=self.default_pm_id(sub["customer"], sub), off_session=True)
            elif inv["status"] == "open":  # net credit: Stripe keeps it as customer balance; we close it
                self._invoice_mark_paid(inv, None)
            if new_price is not None and inv["status"] == "open":
                trial_end = sub["trial_end"] if sub["status"] == "trialing" else None
                expires = min(x for x in (now + self.PENDING_UPDATE_LIFETIME, self._sub_period(sub)[1], trial_end)
                              if x)
                item = sub["items"]["data"][0]
                self._sub_set(sub, pending_update={
                    "billing_cycle_anchor": None, "expires_at": expires, "trial_end": None,
                    "trial_from_plan": None,
                    "subscription_items": [{"id": item["id"], "object": "subscription_item",
                                            "price": copy.deepcopy(new_price), "quantity": item["quantity"]}]})
        return sub

    def _pending_update_apply(self, sub: Obj) -> None:
        """The pending update's invoice got paid: apply the change (Stripe: pending_update_applied)."""
        price = self.private[sub["id"]].pop("pending_update_price", None)
        self.private[sub["id"]].pop("pending_update_invoice", None)
        if price is None:
            return
        prev = {"items": copy.deepcopy(sub["items"]), "pending_update": copy.deepcopy(sub.get("pending_update"))}
        sub["items"]["data"][0]["price"] = copy.deepcopy(price)
        sub["pending_update"] = None
        self.emit("customer.subscription.updated", sub, prev)
        self.emit("customer.subscription.pending_update_applied", sub, prev)

    def _pending_update_expire(self, sub: Obj) -> None:
        """No payment before `pending_update.expires_at`: the invoice is voided, the change discarded."""
        self.private[sub["id"]].pop("pending_update_price", None)
        inv = self.db["invoices"].get(self.private[sub["id"]].pop("pending_update_invoice", None) or "")
        if inv is not None and inv["status"] == "open":
            self.invoice_void(inv)
        prev = {"pending_update": copy.deepcopy(sub.get("pending_update"))}
        sub["pending_update"] = None
        self.emit("customer.subscription.pending_update_expired", sub, prev)

    def invoice_void(self, inv: Obj) -> Obj:
        if inv["status"] != "open":
            raise invalid(f"You can only void open invoices; this one is {inv['status']}.", code="invoice_not_open")
        prev = {"status": inv["status"]}
        inv.update(status="void", amount_remaining=0, next_payment_attempt=None)
        inv["status_transitions"]["voided_at"] = self.now()
        self.emit("invoice.voided", inv, prev)
        return inv

    def _sub_set_trial_end(self, sub: Obj, value: Any, prev: Obj, now: int) -> None:
        """`trial_end` on update: a future timestamp moves (or starts) the trial, and the period with
        it (the first paid invoice comes at the new trial end); "now" ends the trial at once."""
        if value == "now":
            if sub["status"] == "trialing":
                prev.update(trial_end=sub["trial_end"])
                sub["trial_end"] = now
                self._end_trial(sub)
            return
        trial_end = as_int(value, "trial_end")
        if trial_end <= now:
            raise invalid("Invalid timestamp: must be an integer Unix timestamp in the future.", param="trial_end")
        if trial_end > now + 730 * 86400:
            raise invalid("trial_end can be no more than 730 days in the future.", param="trial_end")
        if trial_end == sub["trial_end"] and sub["status"] == "trialing":
            return
        prev.update(trial_end=sub["trial_end"], items=copy.deepcopy(sub["items"]))
        if sub["status"] != "trialing":
            prev.update(status=sub["status"], trial_start=sub["trial_start"])
            sub["status"], sub["trial_start"] = "trialing", now
            self._sub_set_period(sub, now, trial_end)
        else:
            self._sub_set_period(sub, self._sub_period(sub)[0], trial_end)
        sub["trial_end"] = trial_end
        sub["billing_cycle_anchor"] = trial_end
        if trial_end - 3 * 86400 > now:  # the 3-day warning is due again for the new end
            self.private[sub["id"]]["trial_will_end_sent"] = False

    def subscription_cancel(self, sub_id: str, p: Obj | None = None, *, reason: str = "cancellation_requested") -> Obj:
        sub = self.get("subscriptions", sub_id, "subscription")
        if sub["status"] == "canceled":
            raise invalid(f"No such subscription: '{sub_id}'", code="resource_missing", status=404)
        now = self.now()
        sub.update(status="canceled", canceled_at=sub["canceled_at"] or now, ended_at=now,
                   cancel_at_period_end=False)
        sub["cancellation_details"]["reason"] = reason
        self.emit("customer.subscription.deleted", sub)
        return sub

    # -- the clock -----------------------------------------------------------------------------
    def _next_due(self, until: int) -> tuple[int, str, Obj] | None:
        best: tuple[int, str, Obj] | None = None
        for sub in self.db["subscriptions"].values():
            if sub["status"] in ("canceled", "incomplete_expired", "incomplete"):
                continue
            candidates = []
            if sub["status"] == "trialing" and sub["trial_end"]:
                warn_at = sub["trial_end"] - 3 * 86400
                if not self.private[sub["id"]].get("trial_will_end_sent") and warn_at > sub["trial_start"]:
                    candidates.append((warn_at, "trial_will_end"))
                candidates.append((sub["trial_end"], "trial_end"))
            else:
                candidates.append((self._sub_period(sub)[1], "period_end"))
            if sub.get("pending_update"):
                candidates.insert(0, (sub["pending_update"]["expires_at"], "pending_update_expired"))
            for at, what in candidates:
                if at <= until and (best is None or at < best[0]):
                    best = (at, what, sub)
        return best

    def advance_clock(self, seconds: int) -> Obj:
        if seconds < 0:
            raise invalid("The clock only moves forward.", param="seconds")
        with self.lock:
            target = self.now() + seconds
            first_event = self.seq
            while True:
                due = self._next_due(target)
                if due is None:
                    break
                at, what, sub = due
                self.clock_offset += max(0, at - self.now())
                if what == "trial_will_end":
                    self.private[sub["id"]]["trial_will_end_sent"] = True
                    self.emit("customer.subscription.trial_will_end", sub)
                elif what == "trial_end":
                    self._end_trial(sub)
                elif what == "pending_update_expired":
                    self._pending_update_expire(sub)
                else:
                    self._renew(sub)
            self.clock_offset += max(0, target - self.now())
            events = [e["id"] for e in self.ordered("events")
                      if self.private.get(e["id"], {}).get("seq", 0) > first_event]
            return {"now": self.now(), "events": list(reversed(events))}

    def _end_trial(self, sub: Obj) -> None:
        pm_id = self.default_pm_id(sub["customer"], sub)
        if pm_id is None and sub["trial_settings"]["end_behavior"]["missing_payment_method"] == "cancel":
            self.subscription_cancel(sub["id"], reason="cancellation_requested")
            sub["cancellation_details"]["reason"] = "payment_disabled"
            return
        self._renew(sub, from_trial=True)

    def _renew(self, sub: Obj, *, from_trial: bool = False) -> None:
        start, end = self._sub_period(sub)
        if sub["cancel_at_period_end"] or (sub["cancel_at"] and sub["cancel_at"] <= end):
            self.subscription_cancel(sub["id"])
            return
        new_start = sub["trial_end"] if from_trial else end
        anchor_day = dt.datetime.fromtimestamp(sub["billing_cycle_anchor"], dt.timezone.utc).day
        new_end = add_months(new_start, 1, anchor_day)
        prev_items = copy.deepcopy(sub["items"])
        self._sub_set_period(sub, new_start, new_end)
        prev: Obj = {"items": prev_items}
        if from_trial:
            prev["status"] = sub["status"]
            sub["status"] = "active"
        self.emit("customer.subscription.updated", sub, prev)
        price = sub["items"]["data"][0]["price"]
        lines = self.private[sub["id"]].pop("pending_prorations", []) + [self._price_line(price, sub, new_start, new_end)]
        self.private[sub["id"]]["pending_prorations"] = []
        inv = self.invoice_new(cus_id=sub["customer"], sub=sub, billing_reason="subscription_cycle",
                               period_start=start, period_end=new_start, lines=lines)
        self._sub_set(sub, latest_invoice=inv["id"])
        self.invoice_finalize(inv)
        if inv["status"] == "open":
            self.invoice_attempt(inv, pm_id=self.default_pm_id(sub["customer"], sub), off_session=True)

    # -- checkout ------------------------------------------------------------------------------
    def checkout_session_create(self, p: Obj) -> Obj:
        mode = p.get("mode")
        if mode not in ("subscription", "payment", "setup"):
            raise invalid("Missing required param: mode.", param="mode", code="parameter_missing")
        if mode == "setup":
            raise invalid("mode=setup is not simulated.", param="mode")
        if not p.get("success_url"):
            raise invalid("Missing required param: success_url.", param="success_url", code="parameter_missing")
        items = p.get("line_items") or []
        if not isinstance(items, list) or not items:
            raise invalid("Missing required param: line_items.", param="line_items", code="parameter_missing")
        cus_id = p.get("customer") or None
        if cus_id:
            self.get("customers", cus_id, "customer", "customer")
        lines, total = [], 0
        for i, li in enumerate(items):
            price = self.get("prices", li.get("price", ""), "price", f"line_items[{i}][price]")
            qty = as_int(li.get("quantity", 1), f"line_items[{i}][quantity]")
            if mode == "subscription" and price["type"] != "recurring":
                raise invalid("You must provide at least one recurring price in `subscription` mode when using "
                              "prices.", param=f"line_items[{i}][price]")
            if mode == "payment" and price["type"] == "recurring":
                raise invalid("You specified `payment` mode but passed a recurring price.",
                              param=f"line_items[{i}][price]")
            amount = price["unit_amount"] * qty
            total += amount
            lines.append({"id": self.new_id("line_item"), "object": "item", "amount_total": amount,
                          "amount_subtotal": amount, "currency": price["currency"],
                          "description": self._product_name(price), "price": copy.deepcopy(price),
                          "quantity": qty})
        sub_data = p.get("subscription_data") or {}
        trial_days = as_int(sub_data["trial_period_days"], "subscription_data[trial_period_days]") \
            if sub_data.get("trial_period_days") else None
        pmc = p.get("payment_method_collection", "always")
        if pmc not in ("always", "if_required"):
            raise invalid("Invalid payment_method_collection", param="payment_method_collection")
        if pmc == "if_required" and mode != "subscription":
            raise invalid("payment_method_collection can only be used in subscription mode.",
                          param="payment_method_collection")
        now = self.now()
        cs_id = self.new_id("checkout.session")
        amount_total = 0 if trial_days else total
        cs = self.store({
            "id": cs_id, "object": "checkout.session", "mode": mode, "status": "open",
            "payment_status": "unpaid", "url": f"{self.public_url}/checkout/{cs_id}",
            "success_url": p["success_url"], "cancel_url": p.get("cancel_url"), "customer": cus_id,
            "customer_email": p.get("customer_email") or None, "client_reference_id": p.get("client_reference_id"),
            "metadata": dict(p.get("metadata") or {}), "subscription": None, "payment_intent": None,
            "invoice": None, "amount_subtotal": total, "amount_total": amount_total, "currency": "usd",
            "created": now, "expires_at": now + 86400, "payment_method_collection": pmc,
            "customer_creation": p.get("customer_creation") or ("always" if mode == "subscription" else "if_required"),
            "customer_details": None, "setup_intent": None,
        })
        self.line_items[cs_id] = lines
        self.private[cs_id].update(subscription_data={"trial_period_days": trial_days,
                                                      "metadata": dict(sub_data.get("metadata") or {}),
                                                      "trial_settings": sub_data.get("trial_settings")},
                                   payment_intent_data=dict(p.get("payment_intent_data") or {}))
        return cs

    def checkout_complete(self, cs_id: str, *, card_number: str, email: str | None = None) -> Obj:
        """The hosted page's Pay button. Raises StripeError (shown on the page) on a declined card."""
        with self.lock:
            cs = self.get("checkout_sessions", cs_id, "checkout session")
            if cs["status"] != "open":
                raise invalid(f"This Checkout Session is {cs['status']}.", code="checkout_session_not_open")
            if cs["expires_at"] < self.now():
                cs["status"] = "expired"
                raise invalid("This Checkout Session has expired.", code="checkout_session_expired")
            extra = self.private[cs_id]
            trial_days = extra["subscription_data"]["trial_period_days"]
            card_needed = not (cs["mode"] == "subscription" and trial_days and
                               cs["payment_method_collection"] == "if_required")
            card_number = "".join(c for c in (card_number or "") if c.isdigit())
            if card_needed and not card_number:
                raise StripeError(402, "card_error", "Your card number is incomplete.", code="incomplete_number")
            card = card_for(card_number) if card_number else None
            # Fail before creating anything, like Checkout (the page shows the error, the session stays open).
            if card is not None:
                if card.attach_decline:
                    raise card_decline_error(card.attach_decline)
                if card.charge_decline and cs["amount_total"] > 0:
                    raise card_decline_error(card.charge_decline)
            cus_id = cs["customer"]
            if cus_id is None:
                cus_id = self.customer_create({"email": email or cs["customer_email"]})["id"]
            cus = self.db["customers"][cus_id]
            pm = None
            if card is not None:
                pm = self.pm_from_card(card.number)
                self.payment_method_attach(pm["id"], {"customer": cus_id})
                if not cus["invoice_settings"]["default_payment_method"]:
                    # Simplification (README): Checkout's card becomes the customer's default too.
                    self.customer_update(cus_id, {"invoice_settings": {"default_payment_method": pm["id"]}})
            prev = {"status": "open"}
            cs.update(customer=cus_id, status="complete",
                      customer_details={"email": cus.get("email") or email, "name": None, "address": None,
                                        "phone": None, "tax_exempt": "none", "tax_ids": []})
            lines = self.line_items[cs_id]
            if cs["mode"] == "subscription":
                sub_data = extra["subscription_data"]
                params: Obj = {"customer": cus_id, "items": [{"price": lines[0]["price"]["id"]}],
                               "metadata": sub_data["metadata"] or {}}
                if trial_days:
                    params["trial_period_days"] = trial_days
                    params["trial_settings"] = sub_data.get("trial_settings") or {
                        "end_behavior": {"missing_payment_method": "cancel" if pm is None else "create_invoice"}}
                sub = self.subscription_create(params, checkout_pm=pm["id"] if pm else None, off_session=False)
                cs.update(subscription=sub["id"], invoice=sub["latest_invoice"],
                          payment_status="paid" if not trial_days else "no_payment_required")
            else:
                pid = extra["payment_intent_data"]
                pi = self.payment_intent_create({
                    "amount": cs["amount_total"], "currency": cs["currency"], "customer": cus_id,
                    "payment_method": pm["id"], "metadata": pid.get("metadata") or {},
                    "description": pid.get("description"), "setup_future_usage": pid.get("setup_future_usage"),
                    "confirm": "true"})
                cs.update(payment_intent=pi["id"], payment_status="paid")
            self.emit("checkout.session.completed", cs, None)
            _ = prev
            return cs

    def checkout_expire(self, cs_id: str) -> Obj:
        cs = self.get("checkout_sessions", cs_id, "checkout session")
        if cs["status"] != "open":
            raise invalid(f"Only open sessions can be expired; this one is {cs['status']}.")
        cs["status"] = "expired"
        self.emit("checkout.session.expired", cs)
        return cs

    # -- billing portal ------------------------------------------------------------------------
    #: The account's default portal configuration when a session names none. Like a dashboard
    #: default with plan switching turned on, it lets customers switch prices with prorations.
    DEFAULT_PORTAL_CONFIGURATION = "bpc_sim_default"

    def _portal_default_configuration(self) -> Obj:
        conf = self.db["portal_configurations"].get(self.DEFAULT_PORTAL_CONFIGURATION)
        if conf is None:
            conf = self.portal_configuration_create({"features": {
                "invoice_history": {"enabled": True}, "payment_method_update": {"enabled": True},
                "subscription_cancel": {"enabled": True, "mode": "at_period_end", "proration_behavior": "none"},
                "subscription_update": {"enabled": True, "default_allowed_updates": ["price"],
                                        "proration_behavior": "create_prorations", "products": []}}},
                conf_id=self.DEFAULT_PORTAL_CONFIGURATION, is_default=True)
        return conf

    def portal_configuration_create(self, p: Obj, *, conf_id: str | None = None, is_default: bool = False) -> Obj:
        features = p.get("features") or {}
        if not isinstance(features, dict):
            raise invalid("Invalid features", param="features")

        def flag(name: str, default: bool = False) -> bool:
            return as_bool((features.get(name) or {}).get("enabled", default), f"features[{name}][enabled]")

        cancel = features.get("subscription_cancel") or {}
        update = features.get("subscription_update") or {}
        for name, value in (("subscription_cancel", cancel.get("proration_behavior", "none")),
                            ("subscription_update", update.get("proration_behavior", "create_prorations"))):
            if value not in ("create_prorations", "always_invoice", "none"):
                raise invalid("Invalid proration_behavior", param=f"features[{name}][proration_behavior]")
        if cancel.get("mode", "at_period_end") not in ("at_period_end", "immediately"):
            raise invalid("Invalid mode", param="features[subscription_cancel][mode]")
        now = self.now()
        return self.store({
            "id": conf_id or f"bpc_{secrets.token_hex(7)}{self.seq:04d}", "object": "billing_portal.configuration",
            "active": True, "is_default": is_default, "created": now, "updated": now, "default_return_url":
            p.get("default_return_url"), "metadata": dict(p.get("metadata") or {}),
            "business_profile": dict(p.get("business_profile") or {}),
            "features": {
                "customer_update": {"enabled": flag("customer_update"), "allowed_updates": []},
                "invoice_history": {"enabled": flag("invoice_history")},
                "payment_method_update": {"enabled": flag("payment_method_update")},
                "subscription_cancel": {"enabled": flag("subscription_cancel"),
                                        "mode": cancel.get("mode", "at_period_end"),
                                        "proration_behavior": cancel.get("proration_behavior", "none")},
                "subscription_update": {"enabled": flag("subscription_update"),
                                        "default_allowed_updates": list(update.get("default_allowed_updates") or []),
                                        "proration_behavior": update.get("proration_behavior", "create_prorations"),
                                        "products": list(update.get("products") or [])},
            },
        })

    def portal_session_create(self, p: Obj) -> Obj:
        cus_id = p.get("customer")
        if not cus_id:
            raise invalid("Missing required param: customer.", param="customer", code="parameter_missing")
        self.get("customers", cus_id, "customer", "customer")
        if p.get("configuration"):
            conf = self.get("portal_configurations", p["configuration"], "billing portal configuration",
                            "configuration")
            if not conf["active"]:
                raise invalid("This configuration is not active.", param="configuration")
        else:
            conf = self._portal_default_configuration()
        bps_id = self.new_id("billing_portal.session")
        return self.store({"id": bps_id, "object": "billing_portal.session", "customer": cus_id,
                           "return_url": p.get("return_url"), "url": f"{self.public_url}/portal/{bps_id}",
                           "created": self.now(), "configuration": conf["id"], "flow": None,
                           "locale": None, "on_behalf_of": None})

    def portal_configuration(self, bps: Obj) -> Obj:
        return self.db["portal_configurations"].get(bps["configuration"]) or self._portal_default_configuration()

    def portal_switch_price(self, bps_id: str, sub_id: str, price_id: str) -> Obj:
        """The portal's plan switch, as its configuration allows (proration behaviour included)."""
        with self.lock:
            bps = self.get("portal_sessions", bps_id, "billing portal session")
            update = self.portal_configuration(bps)["features"]["subscription_update"]
            if not update["enabled"]:
                raise invalid("This portal does not allow plan changes.")
            sub = self.get("subscriptions", sub_id, "subscription")
            if sub["customer"] != bps["customer"]:
                raise missing("subscription", sub_id)
            return self.subscription_update(sub_id, {
                "items": [{"id": sub["items"]["data"][0]["id"], "price": price_id}],
                "proration_behavior": update["proration_behavior"]})

    def portal_update_card(self, bps_id: str, card_number: str) -> Obj:
        with self.lock:
            bps = self.get("portal_sessions", bps_id, "billing portal session")
            cus_id = bps["customer"]
            pm = self.pm_from_card(card_number)
            self.payment_method_attach(pm["id"], {"customer": cus_id})
            self.customer_update(cus_id, {"invoice_settings": {"default_payment_method": pm["id"]}})
            for sub in self.db["subscriptions"].values():
                if sub["customer"] == cus_id and sub["status"] not in ("canceled", "incomplete_expired"):
                    self._sub_set(sub, default_payment_method=pm["id"])
            # Like Stripe's "retry past-due invoices when the card changes": one on-session attempt each.
            for inv in list(self.db["invoices"].values()):
                if inv["customer"] == cus_id and inv["status"] == "open" and inv["amount_remaining"] > 0:
                    self.invoice_attempt(inv, pm_id=pm["id"], off_session=False)
            return pm

    def portal_cancel(self, bps_id: str, sub_id: str) -> Obj:
        with self.lock:
            bps = self.get("portal_sessions", bps_id, "billing portal session")
            sub = self.get("subscriptions", sub_id, "subscription")
            if sub["customer"] != bps["customer"]:
                raise missing("subscription", sub_id)
            cancel = self.portal_configuration(bps)["features"]["subscription_cancel"]
            if not cancel["enabled"]:
                raise invalid("This portal does not allow cancellations.")
            if cancel["mode"] == "immediately":  # as the configuration says (no prorated refund modelled)
                return self.subscription_cancel(sub_id)
            return self.subscription_update(sub_id, {"cancel_at_period_end": "true"})

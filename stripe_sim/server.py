"""HTTP front of the Stripe simulator (TEST DOUBLE): the REST subset, hosted pages, `/_sim/*` controls.

REST bodies are form-encoded with Stripe's bracket notation; `/_sim/*` control endpoints take JSON.
"""
from __future__ import annotations

import email.utils
import html
import json
import logging
import os
import re
import secrets
import socket
import struct
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import urlsplit

from . import DEFAULT_API_VERSION
from .core import Obj, Sim, StripeError, as_bool, invalid
from .forms import decode
from .webhooks import Deliverer

logger = logging.getLogger("stripe_sim")

Route = tuple[str, re.Pattern[str], Callable[..., Any], bool]  # method, path, handler, mutating

FAULT_MODES = ("500", "timeout", "reset")


class Faults:
    """Injected REST failures (`POST /_sim/faults`), for fault tests of the app's gateway:

    - `500`: answer `500 api_error` (with `process: true` the request is carried out first, as when
      Stripe fails after doing the work);
    - `timeout`: carry the request out (unless `process: false`), then hold the answer for
      `delay_seconds` (default 10) — the client's read timeout fires first — then answer (or drop);
    - `reset`: close the connection with a TCP RST and no answer (`process` defaults to false).
    Each fault applies to the next `count` REST requests whose path starts with `path_prefix` (and
    whose method is `method`, if given); `hits` counts the ones it caught."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[dict[str, Any]] = []

    def add(self, data: dict[str, Any]) -> dict[str, Any]:
        mode = str(data.get("mode", ""))
        if mode not in FAULT_MODES:
            raise ValueError(f"mode must be one of {', '.join(FAULT_MODES)}")
        prefix = data.get("path_prefix") or "/v1/"
        if not isinstance(prefix, str) or not prefix.startswith("/v1/"):
            raise ValueError("path_prefix must start with /v1/")
        count = int(data.get("count", 1))
        if count < 1:
            raise ValueError("count must be >= 1")
        method = data.get("method")
        fault = {"id": f"flt_{secrets.token_hex(4)}", "path_prefix": prefix, "mode": mode, "count": count,
                 "method": method.upper() if isinstance(method, str) else None,
                 "process": bool(data.get("process", mode == "timeout")),
                 "delay_seconds": float(data.get("delay_seconds", 10.0)), "hits": 0}
        with self.lock:
            self.items.append(fault)
        return dict(fault)

    def take(self, method: str, path: str) -> dict[str, Any] | None:
        with self.lock:
            for fault in self.items:
                if fault["hits"] >= fault["count"] or not path.startswith(fault["path_prefix"]):
                    continue
                if fault["method"] and fault["method"] != method:
                    continue
                fault["hits"] += 1
                return dict(fault)
        return None

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return [{**f, "remaining": f["count"] - f["hits"]} for f in self.items]

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


class App:
    def __init__(self, *, public_url: str, webhook_url: str | None, webhook_secret: str | None,
                 api_version: str = DEFAULT_API_VERSION, state_file: str | None = None) -> None:
        self.deliverer = Deliverer(url=webhook_url, secret=webhook_secret)
        self.faults = Faults()
        self.sim = Sim(public_url=public_url, api_version=api_version, on_event=self.deliverer.enqueue)
        self.state_file = state_file
        if state_file and os.path.exists(state_file):
            with open(state_file) as f:
                self.sim.restore(json.load(f))
        self.routes: list[Route] = []
        s = self.sim
        api = self._api
        api("POST", r"/v1/customers", lambda p: s.customer_create(p))
        api("GET", r"/v1/customers", lambda p: s.paginate(
            [c for c in s.ordered("customers") if not p.get("email") or c["email"] == p["email"]], p, "/v1/customers"))
        api("GET", r"/v1/customers/(?P<id>[^/]+)", lambda p, id: s.get("customers", id, "customer"))
        api("POST", r"/v1/customers/(?P<id>[^/]+)", lambda p, id: s.customer_update(id, p))
        api("GET", r"/v1/customers/(?P<id>[^/]+)/payment_methods",
            lambda p, id: s.paginate(s.customer_payment_methods(id), p, f"/v1/customers/{id}/payment_methods"))
        api("POST", r"/v1/payment_methods", lambda p: s.payment_method_create(p))
        api("GET", r"/v1/payment_methods", lambda p: s.paginate(
            s.customer_payment_methods(p.get("customer") or ""), p, "/v1/payment_methods"))
        api("GET", r"/v1/payment_methods/(?P<id>[^/]+)", lambda p, id: s.resolve_pm(id, "id"))
        api("POST", r"/v1/payment_methods/(?P<id>[^/]+)/attach", lambda p, id: s.payment_method_attach(id, p))
        api("POST", r"/v1/payment_methods/(?P<id>[^/]+)/detach", lambda p, id: s.payment_method_detach(id))
        api("POST", r"/v1/products", lambda p: s.product_create(p))
        api("GET", r"/v1/products", lambda p: s.paginate(s.ordered("products"), p, "/v1/products"))
        api("GET", r"/v1/products/(?P<id>[^/]+)", lambda p, id: s.get("products", id, "product"))
        api("POST", r"/v1/prices", lambda p: s.price_create(p))
        api("GET", r"/v1/prices", self._price_list)
        api("GET", r"/v1/prices/(?P<id>[^/]+)", lambda p, id: s.get("prices", id, "price"))
        api("POST", r"/v1/prices/(?P<id>[^/]+)", self._price_update)
        api("POST", r"/v1/checkout/sessions", lambda p: s.checkout_session_create(p))
        api("GET", r"/v1/checkout/sessions", lambda p: s.paginate(
            [c for c in s.ordered("checkout_sessions") if not p.get("customer") or c["customer"] == p["customer"]],
            p, "/v1/checkout/sessions"))
        api("GET", r"/v1/checkout/sessions/(?P<id>[^/]+)", lambda p, id: s.get("checkout_sessions", id,
                                                                               "checkout session"))
        api("GET", r"/v1/checkout/sessions/(?P<id>[^/]+)/line_items", lambda p, id: s.paginate(
            (s.get("checkout_sessions", id, "checkout session") and s.line_items.get(id, [])), p,
            f"/v1/checkout/sessions/{id}/line_items"))
        api("POST", r"/v1/checkout/sessions/(?P<id>[^/]+)/expire", lambda p, id: s.checkout_expire(id))
        api("POST", r"/v1/billing_portal/sessions", lambda p: s.portal_session_create(p))
        api("POST", r"/v1/billing_portal/configurations", lambda p: s.portal_configuration_create(p))
        api("GET", r"/v1/billing_portal/configurations", lambda p: s.paginate(
            [c for c in s.ordered("portal_configurations")
             if "active" not in p or c["active"] == as_bool(p["active"], "active")], p,
            "/v1/billing_portal/configurations"))
        api("GET", r"/v1/billing_portal/configurations/(?P<id>[^/]+)",
            lambda p, id: s.get("portal_configurations", id, "billing portal configuration"))
        api("POST", r"/v1/subscriptions", lambda p: s.subscription_create(p))
        api("GET", r"/v1/subscriptions", self._subscription_list)
        api("GET", r"/v1/subscriptions/(?P<id>[^/]+)", lambda p, id: s.get("subscriptions", id, "subscription"))
        api("POST", r"/v1/subscriptions/(?P<id>[^/]+)", lambda p, id: s.subscription_update(id, p))
        api("DELETE", r"/v1/subscriptions/(?P<id>[^/]+)", lambda p, id: s.subscription_cancel(id, p))
        api("GET", r"/v1/invoices", self._invoice_list)
        api("GET", r"/v1/invoices/(?P<id>[^/]+)", lambda p, id: s.get("invoices", id, "invoice"))
        api("POST", r"/v1/invoices/(?P<id>[^/]+)/pay", lambda p, id: s.invoice_pay(id, p))
        api("POST", r"/v1/payment_intents", lambda p: s.payment_intent_create(p))
        api("GET", r"/v1/payment_intents", lambda p: s.paginate(
            [x for x in s.ordered("payment_intents") if not p.get("customer") or x["customer"] == p["customer"]],
            p, "/v1/payment_intents"))
        api("GET", r"/v1/payment_intents/(?P<id>[^/]+)", lambda p, id: s.get("payment_intents", id,
                                                                             "payment_intent"))
        api("POST", r"/v1/payment_intents/(?P<id>[^/]+)/confirm", lambda p, id: s.payment_intent_confirm(id, p))
        api("POST", r"/v1/payment_intents/(?P<id>[^/]+)/cancel", lambda p, id: s.payment_intent_cancel(id))
        api("GET", r"/v1/events", self._event_list)
        api("GET", r"/v1/events/(?P<id>[^/]+)", lambda p, id: s.get("events", id, "event"))

    def _api(self, method: str, pattern: str, handler: Callable[..., Any]) -> None:
        self.routes.append((method, re.compile(pattern + r"/?$"), handler, method != "GET"))

    # -- list helpers --------------------------------------------------------------------------
    def _price_list(self, p: Obj) -> Obj:
        prices = self.sim.ordered("prices")
        keys = p.get("lookup_keys")
        if keys:
            keys = keys if isinstance(keys, list) else [keys]
            prices = [x for x in prices if x["lookup_key"] in keys]
        if "active" in p:
            active = as_bool(p["active"], "active")
            prices = [x for x in prices if x["active"] == active]
        if p.get("product"):
            prices = [x for x in prices if x["product"] == p["product"]]
        return self.sim.paginate(prices, p, "/v1/prices")

    def _price_update(self, p: Obj, id: str) -> Obj:
        price = self.sim.get("prices", id, "price")
        if "active" in p:
            price["active"] = as_bool(p["active"], "active")
        if "metadata" in p:
            price["metadata"].update(p["metadata"] or {})
        if "lookup_key" in p:
            if p["lookup_key"] and as_bool(p.get("transfer_lookup_key", False), "transfer_lookup_key"):
                for other in self.sim.db["prices"].values():
                    if other["lookup_key"] == p["lookup_key"]:
                        other["lookup_key"] = None
            price["lookup_key"] = p["lookup_key"] or None
        return price

    def _subscription_list(self, p: Obj) -> Obj:
        subs = self.sim.ordered("subscriptions")
        if p.get("customer"):
            subs = [x for x in subs if x["customer"] == p["customer"]]
        status = p.get("status")
        if status and status != "all":
            subs = [x for x in subs if x["status"] == status]
        elif not status:
            subs = [x for x in subs if x["status"] != "canceled"]
        if p.get("price"):
            subs = [x for x in subs if x["items"]["data"][0]["price"]["id"] == p["price"]]
        return self.sim.paginate(subs, p, "/v1/subscriptions")

    def _invoice_list(self, p: Obj) -> Obj:
        invs = self.sim.ordered("invoices")
        if p.get("customer"):
            invs = [x for x in invs if x["customer"] == p["customer"]]
        if p.get("subscription"):
            invs = [x for x in invs if ((x.get("parent") or {}).get("subscription_details") or {})
                    .get("subscription") == p["subscription"]]
        if p.get("status"):
            invs = [x for x in invs if x["status"] == p["status"]]
        return self.sim.paginate(invs, p, "/v1/invoices")

    def _event_list(self, p: Obj) -> Obj:
        events = self.sim.ordered("events")
        types = p.get("types") or ([p["type"]] if p.get("type") else None)
        if types:
            def match(t: str) -> bool:
                return any(t == pat or (pat.endswith("*") and t.startswith(pat[:-1])) for pat in types)
            events = [e for e in events if match(e["type"])]
        created = p.get("created")
        if isinstance(created, dict):
            for op, fn in (("gt", lambda a, b: a > b), ("gte", lambda a, b: a >= b),
                           ("lt", lambda a, b: a < b), ("lte", lambda a, b: a <= b)):
                if op in created:
                    events = [e for e in events if fn(e["created"], int(created[op]))]
        return self.sim.paginate(events, p, "/v1/events")

    # -- persistence ---------------------------------------------------------------------------
    def save(self) -> None:
        if not self.state_file:
            return
        with self.sim.lock:
            data = json.dumps(self.sim.snapshot())
        directory = os.path.dirname(os.path.abspath(self.state_file))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".stripe_sim.")
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.replace(tmp, self.state_file)

    # -- dispatch ------------------------------------------------------------------------------
    def handle_api(self, method: str, path: str, params: Obj, idem_key: str | None) -> tuple[int, Obj, dict]:
        for r_method, pattern, handler, mutating in self.routes:
            m = pattern.match(path)
            if not m or r_method != method:
                continue
            expand = params.pop("expand", None) or []
            if isinstance(expand, str):
                expand = [expand]

            def run() -> tuple[int, Obj]:
                try:
                    with self.sim.lock:
                        result = handler(params, **m.groupdict())
                        return 200, self.sim.expand(result, expand)
                except StripeError as exc:
                    return exc.status, exc.body()

            headers = {}
            if mutating and method == "POST":
                fp = self.sim.fingerprint(method, path, {**params, "expand": expand})
                status, body, replayed = self.sim.idempotent(idem_key, fp, run)
                if replayed:
                    headers["Idempotent-Replayed"] = "true"
            else:
                status, body = run()
            if mutating:
                self.save()
            return status, body, headers
        known_path = any(p.match(path) for _, p, _, _ in self.routes)
        if known_path:
            return 405, invalid(f"Unrecognized request URL ({method}: {path}).", code=None).body(), {}
        return 404, invalid(f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
                            "or we can help at https://support.stripe.com/.", code=None, status=404).body(), {}


# --- HTML pages ---------------------------------------------------------------------------------
PAGE_CSS = """body{font-family:system-ui,sans-serif;max-width:34rem;margin:2rem auto;padding:0 1rem;color:#1a1f36}
.banner{background:#fff4e5;border:1px solid #f5a623;padding:.4rem .6rem;font-size:.8rem;margin-bottom:1rem}
.error{background:#fde8e8;border:1px solid #e02424;padding:.5rem;margin:.5rem 0}
label{display:block;margin:.6rem 0 .2rem}input{width:100%;padding:.5rem;font-size:1rem;box-sizing:border-box}
button{margin-top:1rem;padding:.6rem 1.2rem;font-size:1rem;background:#635bff;color:#fff;border:0;border-radius:4px}
table{width:100%;border-collapse:collapse}td,th{text-align:left;padding:.3rem;border-bottom:1px solid #e3e8ee}"""


def page(title: str, body: str) -> bytes:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{PAGE_CSS}</style></head><body><div class=banner>Stripe simulator — test double, "
            f"no real payment</div>{body}</body></html>").encode()


def money(cents: int, currency: str = "usd") -> str:
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return f"{sign}{'$' if currency == 'usd' else currency.upper() + ' '}{cents // 100:,}.{cents % 100:02d}"


def esc(value: Any) -> str:
    return html.escape(str(value if value is not None else ""))


def minimal_pdf(lines: list[str]) -> bytes:
    """A valid one-page PDF with the given text lines (Helvetica)."""
    def pdf_str(s: str) -> str:
        return s.encode("latin-1", "replace").decode("latin-1").replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    content = "BT /F1 12 Tf 50 780 Td 16 TL " + " ".join(f"({pdf_str(x)}) Tj T*" for x in lines) + " ET"
    objs = ["<< /Type /Catalog /Pages 2 0 R >>", "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 842] /Contents 4 0 R "
            "/Resources << /Font << /F1 5 0 R >> >> >>",
            f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
            "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = b"%PDF-1.4\n", []
    for i, obj in enumerate(objs, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{obj}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


class Handler(BaseHTTPRequestHandler):
    server_version = "stripe-sim/1.0"
    protocol_version = "HTTP/1.1"
    app: App  # set on the subclass by make_server

    def date_time_string(self, timestamp: float | None = None) -> str:
        # Stripe's `Date` header is Stripe's clock: here the simulated one (events' `created` use it too).
        return email.utils.formatdate(self.app.sim.now() if timestamp is None else timestamp, usegmt=True)

    def log_message(self, fmt: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), fmt % args)

    # -- plumbing ------------------------------------------------------------------------------
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj, indent=2).encode(), "application/json", headers)

    def _html(self, status: int, body: bytes) -> None:
        self._send(status, body, "text/html; charset=utf-8")

    def _redirect(self, url: str) -> None:
        self._send(303, b"", "text/plain", {"Location": url})

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path = url.path
        try:
            if path.startswith("/v1/"):
                return self._api(method, path, url.query)
            if path.startswith("/_sim/"):
                return self._control(method, path)
            return self._pages(method, path)
        except Exception:  # a bug in the simulator: answer like Stripe's api_error, and log it
            logger.exception("simulator error on %s %s", method, self.path)
            self._json(500, {"error": {"type": "api_error", "message": "An unknown error occurred (simulator bug)."}})

    # -- REST ----------------------------------------------------------------------------------
    def _api(self, method: str, path: str, query: str) -> None:
        body = self._body()
        auth = self.headers.get("Authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else ""
        req_id = f"req_{secrets.token_hex(7)}"
        headers = {"Request-Id": req_id, "Stripe-Version": self.headers.get("Stripe-Version") or self.app.sim.api_version}
        if not key.startswith(("sk_test_", "rk_test_")):
            return self._json(401, {"error": {
                "type": "invalid_request_error",
                "message": f"Invalid API Key provided: {key[:8]}{'*' * max(0, len(key) - 8)}"}}, headers)
        params = decode(query) if method == "GET" or not body else decode(body.decode())
        if method == "DELETE" and query:
            params = {**decode(query), **params}
        fault = self.app.faults.take(method, path)
        if fault is not None:
            return self._api_fault(fault, method, path, params, headers)
        status, obj, extra = self.app.handle_api(method, path, params, self.headers.get("Idempotency-Key"))
        if isinstance(obj.get("error"), dict):
            obj["error"].setdefault("request_log_url", f"{self.app.sim.public_url}/logs/{req_id}")
        self._json(status, obj, {**headers, **extra})

    def _api_fault(self, fault: dict[str, Any], method: str, path: str, params: Obj, headers: dict) -> None:
        logger.warning("injected fault %s (%s) on %s %s", fault["id"], fault["mode"], method, path)
        status, obj, extra = 500, {}, {}
        if fault["process"]:
            status, obj, extra = self.app.handle_api(method, path, params, self.headers.get("Idempotency-Key"))
        self.close_connection = True
        if fault["mode"] == "500":
            return self._json(500, {"error": {"type": "api_error", "message": "Injected fault (simulator)."}},
                              headers)
        if fault["mode"] == "timeout":
            time.sleep(fault["delay_seconds"])
            try:
                if fault["process"]:
                    self._json(status, obj, {**headers, **extra})
            except OSError:
                pass  # the client gave up long ago
            return None
        # reset: RST instead of an answer
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        return None

    # -- control -------------------------------------------------------------------------------
    def _control(self, method: str, path: str) -> None:
        app, sim = self.app, self.app.sim
        raw = self._body()
        try:
            data = json.loads(raw or b"{}") if method == "POST" else {}
        except ValueError:
            return self._json(400, {"error": "body must be JSON"})
        if path == "/_sim/health":
            return self._json(200, {"ok": True, "api_version": sim.api_version, "now": sim.now()})
        if path == "/_sim/config":
            d = app.deliverer
            if method == "POST":
                d.configure(url=data.get("webhook_url", d.url), secret=data.get("webhook_secret", d.secret),
                            max_attempts=data.get("webhook_max_attempts"),
                            backoff_base=data.get("webhook_backoff_seconds"))
                if data.get("api_version"):
                    sim.api_version = data["api_version"]
            return self._json(200, {"webhook_url": d.url, "webhook_secret_set": bool(d.secret),
                                    "webhook_max_attempts": d.max_attempts, "api_version": sim.api_version,
                                    "public_url": sim.public_url})
        if path == "/_sim/faults":
            if method == "POST":
                try:
                    return self._json(200, app.faults.add(data))
                except (TypeError, ValueError) as exc:
                    return self._json(400, {"error": str(exc)})
            if method == "DELETE":
                app.faults.clear()
            return self._json(200, {"faults": app.faults.snapshot()})
        if path == "/_sim/reset" and method == "POST":
            app.faults.clear()
            app.deliverer.clear()
            sim.reset()
            app.save()
            return self._json(200, {"ok": True})
        if path == "/_sim/clock":
            return self._json(200, {"now": sim.now(), "offset": sim.clock_offset})
        if path == "/_sim/clock/advance" and method == "POST":
            try:
                result = sim.advance_clock(int(data.get("seconds", 0)))
            except (StripeError, ValueError) as exc:
                return self._json(400, {"error": str(exc)})
            app.save()
            return self._json(200, result)
        if path == "/_sim/webhooks":
            return self._json(200, {"pending": app.deliverer.pending(), "deliveries": app.deliverer.log})
        m = re.fullmatch(r"/_sim/events/([^/]+)/resend", path)
        if m and method == "POST":
            with sim.lock:
                event = sim.db["events"].get(m.group(1))
            if event is None:
                return self._json(404, {"error": "no such event"})
            app.deliverer.enqueue(event)
            return self._json(200, {"ok": True})
        m = re.fullmatch(r"/_sim/checkout/([^/]+)/complete", path)
        if m and method == "POST":
            try:
                cs = sim.checkout_complete(m.group(1), card_number=data.get("card", ""), email=data.get("email"))
            except StripeError as exc:
                return self._json(exc.status, exc.body())
            app.save()
            return self._json(200, cs)
        return self._json(404, {"error": f"unknown control endpoint {method} {path}"})

    # -- hosted pages --------------------------------------------------------------------------
    def _form(self) -> Obj:
        return decode(self._body().decode())

    def _pages(self, method: str, path: str) -> None:
        sim = self.app.sim
        if path in ("/", "/favicon.ico"):
            return self._html(200 if path == "/" else 404, page("Stripe simulator", "<h1>Stripe simulator</h1>"))
        m = re.fullmatch(r"/checkout/([^/]+)", path)
        if m:
            cs_id = m.group(1)
            if method == "POST":
                form = self._form()
                try:
                    cs = sim.checkout_complete(cs_id, card_number=form.get("card_number", ""),
                                               email=form.get("email"))
                except StripeError as exc:
                    return self._html(exc.status, self._checkout_page(cs_id, error=exc.message))
                self.app.save()
                return self._redirect(cs["success_url"].replace("{CHECKOUT_SESSION_ID}", cs["id"]))
            return self._html(200, self._checkout_page(cs_id))
        m = re.fullmatch(r"/portal/([^/]+)(?:/(card|cancel|switch))?", path)
        if m:
            bps_id, action = m.groups()
            if method == "POST" and action:
                form = self._form()
                try:
                    if action == "card":
                        sim.portal_update_card(bps_id, form.get("card_number", ""))
                        notice = "Payment method updated."
                    elif action == "switch":
                        sim.portal_switch_price(bps_id, form.get("subscription", ""), form.get("price", ""))
                        notice = "Plan changed."
                    else:
                        sim.portal_cancel(bps_id, form.get("subscription", ""))
                        notice = "Subscription canceled."
                except StripeError as exc:
                    return self._html(exc.status, self._portal_page(bps_id, error=exc.message))
                self.app.save()
                return self._html(200, self._portal_page(bps_id, notice=notice))
            return self._html(200, self._portal_page(bps_id))
        m = re.fullmatch(r"/invoice/([^/]+)(?:/(pdf|pay))?", path)
        if m:
            inv_id, action = m.groups()
            with sim.lock:
                inv = sim.db["invoices"].get(inv_id)
            if inv is None:
                return self._html(404, page("Not found", "<h1>Invoice not found</h1>"))
            if action == "pdf":
                lines = [f"Invoice {inv['number']}", f"Status: {inv['status']}",
                         f"Amount due: {money(inv['amount_due'])}", f"Amount paid: {money(inv['amount_paid'])}"]
                lines += [f"{li['description']}: {money(li['amount'])}" for li in inv["lines"]["data"]]
                return self._send(200, minimal_pdf(lines), "application/pdf")
            error = None
            if action == "pay" and method == "POST":
                form = self._form()
                try:
                    with sim.lock:
                        pm = sim.pm_from_card(form.get("card_number", ""))
                        sim.invoice_pay(inv_id, {"payment_method": pm["id"]}, off_session=False)
                    self.app.save()
                except StripeError as exc:
                    error = exc.message
            return self._html(200 if not error else 402, self._invoice_page(inv_id, error=error))
        return self._html(404, page("Not found", "<h1>Not found</h1>"))

    def _checkout_page(self, cs_id: str, error: str | None = None) -> bytes:
        sim = self.app.sim
        with sim.lock:
            cs = sim.db["checkout_sessions"].get(cs_id)
            if cs is None:
                return page("Not found", "<h1>Checkout session not found</h1>")
            lines = sim.line_items.get(cs_id, [])
            trial = sim.private[cs_id]["subscription_data"]["trial_period_days"]
            cus = sim.db["customers"].get(cs["customer"] or "")
        if cs["status"] != "open":
            return page("Checkout", f"<h1>This checkout session is {esc(cs['status'])}.</h1>")
        items = "".join(f"<tr><td>{esc(li['description'])}</td><td>{money(li['amount_total'])}"
                        f"{' / month' if li['price']['type'] == 'recurring' else ''}</td></tr>" for li in lines)
        trial_note = f"<p id=trial>{trial}-day free trial — nothing is charged today.</p>" if trial else ""
        optional = cs["mode"] == "subscription" and trial and cs["payment_method_collection"] == "if_required"
        email = (cus or {}).get("email") or cs["customer_email"] or ""
        cancel = (f'<p><a id=cancel href="{esc(cs["cancel_url"])}">Cancel and go back</a></p>'
                  if cs["cancel_url"] else "")
        err = f"<div class=error role=alert id=error>{esc(error)}</div>" if error else ""
        return page("Checkout", f"""<h1>Checkout</h1><table>{items}</table>{trial_note}
<p>Total due today: <strong id=total>{money(cs['amount_total'])}</strong></p>{err}
<form method=post action="/checkout/{esc(cs_id)}">
<label for=email>Email</label><input id=email name=email type=email value="{esc(email)}">
<label for=card_number>Card number{' (optional during the trial)' if optional else ''}</label>
<input id=card_number name=card_number inputmode=numeric autocomplete=cc-number placeholder="4242 4242 4242 4242">
<label for=exp>Expiry</label><input id=exp name=exp placeholder="12 / 34">
<label for=cvc>CVC</label><input id=cvc name=cvc placeholder="123">
<button type=submit id=pay>Pay</button></form>{cancel}""")

    def _portal_page(self, bps_id: str, *, error: str | None = None, notice: str | None = None) -> bytes:
        sim = self.app.sim
        with sim.lock:
            bps = sim.db["portal_sessions"].get(bps_id)
            if bps is None:
                return page("Not found", "<h1>Portal session not found</h1>")
            cus = sim.db["customers"][bps["customer"]]
            pm = sim.db["payment_methods"].get(cus["invoice_settings"]["default_payment_method"] or "")
            subs = [s for s in sim.ordered("subscriptions") if s["customer"] == cus["id"]]
            invoices = [i for i in sim.ordered("invoices") if i["customer"] == cus["id"]][:12]
            names = {s["id"]: sim._product_name(s["items"]["data"][0]["price"]) for s in subs}
            update = sim.portal_configuration(bps)["features"]["subscription_update"]
            switchable = ([(p["id"], sim._product_name(p)) for p in sim.ordered("prices")
                           if p["active"] and p["type"] == "recurring"
                           and (not update["products"] or p["product"] in {x.get("product") for x in update["products"]})]
                          if update["enabled"] else [])
        rows = []
        for s in subs:
            start, end = s["items"]["data"][0]["current_period_start"], s["items"]["data"][0]["current_period_end"]
            form = ""
            if s["status"] not in ("canceled",) and not s["cancel_at_period_end"]:
                form = (f'<form method=post action="/portal/{esc(bps_id)}/cancel"><input type=hidden name=subscription '
                        f'value="{esc(s["id"])}"><button type=submit id="cancel-{esc(s["id"])}" class=cancel>Cancel '
                        f'subscription</button></form>')
            if s["status"] not in ("canceled", "incomplete_expired"):
                current = s["items"]["data"][0]["price"]["id"]
                form += "".join(
                    f'<form method=post action="/portal/{esc(bps_id)}/switch" class=switch><input type=hidden '
                    f'name=subscription value="{esc(s["id"])}"><input type=hidden name=price value="{esc(pid)}">'
                    f'<button type=submit id="switch-{esc(pid)}">Switch to {esc(name)}</button></form>'
                    for pid, name in switchable if pid != current)
            note = " (cancels at period end)" if s["cancel_at_period_end"] else ""
            rows.append(f"<tr><td>{esc(names[s['id']])}</td><td class=status>{esc(s['status'])}{note}</td>"
                        f"<td>renews/ends {end}</td><td>{form}</td></tr>")
            _ = start
        inv_rows = "".join(
            f"<tr><td>{esc(i['number'])}</td><td>{money(i['amount_due'])}</td><td>{esc(i['status'])}</td>"
            f"<td><a href=\"{esc(i['hosted_invoice_url'])}\">view</a></td></tr>" for i in invoices if i["number"])
        card = f"{esc(pm['card']['brand'])} •••• {esc(pm['card']['last4'])}" if pm else "none"
        err = f"<div class=error role=alert id=error>{esc(error)}</div>" if error else ""
        ok = f"<p id=notice>{esc(notice)}</p>" if notice else ""
        back = f'<p><a id=return href="{esc(bps["return_url"])}">Return to the app</a></p>' if bps["return_url"] else ""
        return page("Billing portal", f"""<h1>Billing portal</h1>{err}{ok}
<h2>Subscriptions</h2><table id=subscriptions>{''.join(rows) or '<tr><td>none</td></tr>'}</table>
<h2>Payment method</h2><p id=card>{card}</p>
<form method=post action="/portal/{esc(bps_id)}/card"><label for=card_number>New card number</label>
<input id=card_number name=card_number inputmode=numeric><button type=submit id=update-card>Update card</button></form>
<h2>Invoices</h2><table id=invoices>{inv_rows}</table>{back}""")

    def _invoice_page(self, inv_id: str, error: str | None = None) -> bytes:
        sim = self.app.sim
        with sim.lock:
            inv = sim.db["invoices"][inv_id]
        lines = "".join(f"<tr><td>{esc(li['description'])}</td><td>{money(li['amount'])}</td></tr>"
                        for li in inv["lines"]["data"])
        pay = ""
        if inv["status"] == "open":
            pay = (f'<form method=post action="/invoice/{esc(inv_id)}/pay"><label for=card_number>Card number</label>'
                   f'<input id=card_number name=card_number><button type=submit id=pay>Pay '
                   f'{money(inv["amount_remaining"])}</button></form>')
        err = f"<div class=error role=alert id=error>{esc(error)}</div>" if error else ""
        return page(f"Invoice {inv['number']}", f"""<h1>Invoice {esc(inv['number'])}</h1>{err}
<p>Status: <strong id=status>{esc(inv['status'])}</strong></p><table>{lines}</table>
<p>Amount due {money(inv['amount_due'])}, paid {money(inv['amount_paid'])}</p>{pay}
<p><a href="{esc(inv['invoice_pdf'])}">Download PDF</a></p>""")


def make_server(*, host: str, port: int, app: App) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"app": app})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="stripe-sim-http", daemon=True)
    thread.start()
    return thread

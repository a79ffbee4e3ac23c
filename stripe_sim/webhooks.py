"""Signed webhook delivery from a background thread, with retries and backoff (TEST DOUBLE).

Signature like Stripe's: `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<payload>")>`;
`t` is real wall-clock time (the receiver checks it against its own clock), not the simulated one.
"""
from __future__ import annotations

import hashlib
import hmac
import heapq
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from typing import Any

logger = logging.getLogger("stripe_sim.webhooks")


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


class Deliverer:
    """A min-heap of (due_time, seq, event) worked by one thread. Failed deliveries are retried with
    exponential backoff (base * 2**attempt, capped) up to `max_attempts`; the log is queryable."""

    def __init__(self, *, url: str | None = None, secret: str | None = None, max_attempts: int = 8,
                 backoff_base: float = 0.5, backoff_cap: float = 30.0, timeout: float = 10.0) -> None:
        self.url, self.secret = url, secret
        self.max_attempts, self.backoff_base, self.backoff_cap, self.timeout = (
            max_attempts, backoff_base, backoff_cap, timeout)
        self.cond = threading.Condition()
        self.heap: list[tuple[float, int, dict[str, Any]]] = []
        self.seq = 0
        self.log: dict[str, dict[str, Any]] = {}  # event id -> {type, attempts, status, last_status, last_error}
        self.in_flight = 0
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="stripe-sim-webhooks", daemon=True)
        self.thread.start()

    def configure(self, *, url: str | None, secret: str | None, max_attempts: int | None = None,
                  backoff_base: float | None = None) -> None:
        with self.cond:
            self.url, self.secret = url, secret
            if max_attempts is not None:
                self.max_attempts = max_attempts
            if backoff_base is not None:
                self.backoff_base = backoff_base

    def enqueue(self, event: dict[str, Any]) -> None:
        with self.cond:
            if not self.url:
                self.log[event["id"]] = {"type": event["type"], "attempts": 0, "status": "no_endpoint"}
                return
            self.log[event["id"]] = {"type": event["type"], "attempts": 0, "status": "pending",
                                     "last_status": None, "last_error": None}
            self.seq += 1
            heapq.heappush(self.heap, (time.monotonic(), self.seq, event))
            self.cond.notify()

    def clear(self) -> None:
        with self.cond:
            self.heap.clear()
            self.log.clear()

    def pending(self) -> int:
        with self.cond:
            return len(self.heap) + self.in_flight

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.stopped and (not self.heap or self.heap[0][0] > time.monotonic()):
                    self.cond.wait(None if not self.heap else max(0.0, self.heap[0][0] - time.monotonic()))
                if self.stopped:
                    return
                _, _, event = heapq.heappop(self.heap)
                url, secret = self.url, self.secret or ""
                self.in_flight += 1
            try:
                ok, status, error = self._post(url, secret, event)
            finally:
                with self.cond:
                    self.in_flight -= 1
            with self.cond:
                entry = self.log.setdefault(event["id"], {"type": event["type"], "attempts": 0})
                entry["attempts"] = entry.get("attempts", 0) + 1
                entry.update(last_status=status, last_error=error)
                if ok:
                    entry["status"] = "delivered"
                elif entry["attempts"] >= self.max_attempts:
                    entry["status"] = "failed"
                    logger.warning("giving up on %s after %s attempts", event["id"], entry["attempts"])
                else:
                    entry["status"] = "retrying"
                    delay = min(self.backoff_cap, self.backoff_base * (2 ** (entry["attempts"] - 1)))
                    self.seq += 1
                    heapq.heappush(self.heap, (time.monotonic() + delay, self.seq, event))
                self.cond.notify_all()

    def _post(self, url: str | None, secret: str, event: dict[str, Any]) -> tuple[bool, int | None, str | None]:
        if not url:
            return False, None, "no endpoint configured"
        payload = json.dumps(event, indent=2).encode()
        req = urllib.request.Request(url, data=payload, method="POST", headers={
            "Content-Type": "application/json; charset=utf-8", "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "Stripe-Signature": sign(payload, secret)})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return 200 <= resp.status < 300, resp.status, None
        except urllib.error.HTTPError as exc:
            logger.info("webhook %s %s -> %s", event["type"], event["id"], exc.code)
            return False, exc.code, f"HTTP {exc.code}"
        except OSError as exc:
            logger.info("webhook %s %s failed: %s", event["type"], event["id"], exc)
            return False, None, str(exc)

"""Top-up Celery tasks (imported at the bottom of billing/tasks.py so autodiscovery finds them).

Thin: take ids, call one service. The charge is idempotent (status guard + Stripe idempotency key
`topup:<pk>`), so redelivery and retries are harmless.
"""
from __future__ import annotations

import logging

from celery import shared_task
from django.utils import timezone

from .errors import BillingError
from .services import topups

logger = logging.getLogger("billing.tasks")


@shared_task(bind=True, max_retries=5)
def topup_charge(self, purchase_id: int) -> str:
    """Charge a saved-card purchase off session. Stripe unavailable -> retry with backoff, calling
    Stripe again with the same idempotency key (allow_started); after the last retry the row stays
    STARTED and the sweeper flags it. A message redelivered because its worker died (acks_late +
    reject_on_worker_lost, or the broker's visibility timeout) may find the row STARTED mid-call:
    it calls Stripe again with the same key too, and gets the first attempt's PaymentIntent back."""
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    if redelivered:
        logger.warning("top-up %s: redelivered charge task (a worker died); re-driving with the same key",
                       purchase_id)
    try:
        purchase = topups.topup_purchase_charge(purchase_id=purchase_id, now=timezone.now(),
                                                allow_started=self.request.retries > 0 or redelivered)
    except BillingError as exc:
        if exc.code in topups.TRANSIENT_CODES:
            raise self.retry(exc=exc, countdown=min(300, 5 * 2 ** self.request.retries)) from exc
        raise
    return purchase.status


@shared_task
def topup_sweep() -> dict:
    """Periodic (CELERY_BEAT_SCHEDULE): re-queue stuck pending rows, flag stuck started ones."""
    return topups.topup_sweep(now=timezone.now())

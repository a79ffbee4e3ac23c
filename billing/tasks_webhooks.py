"""Celery tasks of the webhook/dunning area (imported at the bottom of billing/tasks.py).

Tasks take ids, call one service, and are idempotent. `webhook_process` retries with exponential
backoff (WEBHOOK_MAX_RETRIES); after the last attempt the event is FAILED with its error kept and
the task returns normally (staff reprocess it: admin action or `manage.py webhooks_replay`). Only
errors that may succeed later reach the retry: the service ends an event that is provably not ours
IGNORED, and one retrying cannot fix (WebhookNotRetryable / NON_RETRYABLE_CODES) FAILED at once,
and returns it.
"""
from __future__ import annotations

import logging

from celery import shared_task
from django.utils import timezone

from .services.webhooks import (
    WEBHOOK_MAX_RETRIES,
    webhook_event_process,
    webhook_event_record_failure,
    webhook_events_requeue_stale,
)

logger = logging.getLogger("billing.tasks")


def webhook_retry_countdown(retries: int) -> int:
    """Seconds before attempt `retries + 1`: 10, 20, 40, 80, 160 … capped at 10 minutes."""
    return min(10 * (2 ** retries), 600)


@shared_task(bind=True, max_retries=WEBHOOK_MAX_RETRIES, acks_late=True)
def webhook_process(self, event_id: int) -> str:
    eager = bool(self.request.is_eager)
    # Eager mode (no broker: `make run` defaults, tests) cannot re-run a retried task inline while
    # EAGER_PROPAGATES is on, so the attempts loop here without waiting; a worker uses self.retry.
    attempts = range(self.max_retries + 1) if eager else [self.request.retries]
    for attempt in attempts:
        try:
            return webhook_event_process(event_id=event_id, now=timezone.now()).status
        except Exception as exc:  # noqa: BLE001 - every handler error is recorded, then retried or FAILED
            final = attempt >= self.max_retries
            logger.warning("webhook event %s attempt %s failed: %r", event_id, attempt + 1, exc)
            webhook_event_record_failure(event_id=event_id, error=f"{exc.__class__.__name__}: {exc}", final=final,
                                         now=timezone.now())
            if final:
                return "failed"
            if not eager:
                raise self.retry(exc=exc, countdown=webhook_retry_countdown(attempt)) from exc
    return "failed"


@shared_task(acks_late=True)
def webhook_requeue_stale() -> int:
    return webhook_events_requeue_stale(now=timezone.now())


@shared_task(acks_late=True)
def dunning_enforce_task() -> dict:
    from .services.dunning import dunning_enforce  # noqa: PLC0415

    result = dunning_enforce(now=timezone.now())
    return {"reminded": result.reminded, "canceled": result.canceled, "trials_resolved": result.trials_resolved,
            "recovered": result.recovered,
            "errors": result.errors}

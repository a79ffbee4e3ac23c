"""Billing's Celery tasks. Tasks take ids, call one service, retry with backoff, and are idempotent.
Services queue them through `billing.enqueue`; the periodic ones run from CELERY_BEAT_SCHEDULE.

Each task keeps the name it was registered under when it lived in `billing/tasks_webhooks.py` or
`billing/tasks_topups.py` (explicit `name=`), so messages already queued in production and the beat
schedule keep finding it.

`webhook_process` retries with exponential backoff (WEBHOOK_MAX_RETRIES); after the last attempt
the event is FAILED with its error kept and the task returns normally (staff reprocess it: admin
action or `manage.py webhooks_replay`). Only errors that may succeed later reach the retry: the
service ends an event that is provably not ours IGNORED, and one retrying cannot fix
(WebhookNotRetryable / NON_RETRYABLE_CODES) FAILED at once, and returns it.

`topup_charge` is idempotent (status guard + Stripe idempotency key `topup:<pk>`), so redelivery
and retries are harmless.
"""
from __future__ import annotations

import logging

from celery import shared_task
from django.utils import timezone

from organizations.models import Organization

from . import enqueue
from .emails import email_send_to_org_admins
from .errors import BillingError
from .idempotency import request_idempotency_purge
from .services import topup_purchases
from .services.dunning import dunning_enforce
from .services.webhooks import (
    WEBHOOK_MAX_RETRIES,
    webhook_event_process,
    webhook_event_record_failure,
    webhook_events_requeue_stale,
)

logger = logging.getLogger("billing.tasks")


@shared_task(bind=True, name=enqueue.SEND_ORG_ADMIN_EMAIL, autoretry_for=(ConnectionError, TimeoutError, OSError),
             retry_backoff=True, retry_backoff_max=300, max_retries=5)
def send_org_admin_email(self, organization_id: str, kind: str, context: dict) -> int:
    org = Organization.objects.filter(pk=organization_id).first()
    if org is None:
        logger.warning("email %s for missing org %s dropped", kind, organization_id)
        return 0
    return email_send_to_org_admins(organization=org, kind=kind, context=context)


@shared_task(name="billing.tasks.request_idempotency_purge_task")
def request_idempotency_purge_task() -> int:
    """Daily (CELERY_BEAT_SCHEDULE): forget browser idempotency keys past their retention."""
    return request_idempotency_purge(now=timezone.now())



# --- webhooks and dunning --------------------------------------------------------------------------

def webhook_retry_countdown(retries: int) -> int:
    """Seconds before attempt `retries + 1`: 10, 20, 40, 80, 160 … capped at 10 minutes."""
    return min(10 * (2 ** retries), 600)


@shared_task(bind=True, name=enqueue.WEBHOOK_PROCESS, max_retries=WEBHOOK_MAX_RETRIES, acks_late=True)
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


@shared_task(name="billing.tasks_webhooks.webhook_requeue_stale", acks_late=True)
def webhook_requeue_stale() -> int:
    return webhook_events_requeue_stale(now=timezone.now())


@shared_task(name="billing.tasks_webhooks.dunning_enforce_task", acks_late=True)
def dunning_enforce_task() -> dict:
    result = dunning_enforce(now=timezone.now())
    return {"reminded": result.reminded, "canceled": result.canceled, "trials_resolved": result.trials_resolved,
            "recovered": result.recovered,
            "errors": result.errors}


# --- top-ups ---------------------------------------------------------------------------------------

@shared_task(bind=True, name=enqueue.TOPUP_CHARGE, max_retries=5)
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
        purchase = topup_purchases.topup_purchase_charge(purchase_id=purchase_id, now=timezone.now(),
                                                allow_started=self.request.retries > 0 or redelivered)
    except BillingError as exc:
        if exc.code in topup_purchases.TRANSIENT_CODES:
            raise self.retry(exc=exc, countdown=min(300, 5 * 2 ** self.request.retries)) from exc
        raise
    return purchase.status


@shared_task(name="billing.tasks_topups.topup_sweep")
def topup_sweep() -> dict:
    """Periodic (CELERY_BEAT_SCHEDULE): re-queue stuck pending rows, flag stuck started ones."""
    return topup_purchases.topup_sweep(now=timezone.now())

"""Billing Celery tasks. Tasks take ids, call one service, retry with backoff, and are idempotent."""
from __future__ import annotations

import logging

from celery import shared_task
from django.utils import timezone

from organizations.models import Organization

from .emails import email_send_to_org_admins
from .idempotency import request_idempotency_purge

logger = logging.getLogger("billing.tasks")


@shared_task(bind=True, autoretry_for=(ConnectionError, TimeoutError, OSError), retry_backoff=True,
             retry_backoff_max=300, max_retries=5)
def send_org_admin_email(self, organization_id: str, kind: str, context: dict) -> int:
    org = Organization.objects.filter(pk=organization_id).first()
    if org is None:
        logger.warning("email %s for missing org %s dropped", kind, organization_id)
        return 0
    return email_send_to_org_admins(organization=org, kind=kind, context=context)


@shared_task
def request_idempotency_purge_task() -> int:
    """Daily (CELERY_BEAT_SCHEDULE): forget browser idempotency keys past their retention."""
    return request_idempotency_purge(now=timezone.now())


from .tasks_webhooks import dunning_enforce_task, webhook_process, webhook_requeue_stale  # noqa: E402,F401
from .tasks_topups import topup_charge, topup_sweep  # noqa: E402,F401

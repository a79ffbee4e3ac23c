"""The daily health summary task (scheduled in settings.CELERY_BEAT_SCHEDULE, "billing-daily-health").

Lives in usage because the drift count comes from reconcile (usage owns the facts); billing
builds and emails the summary. Registered through settings.CELERY_IMPORTS.
"""
from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from .services_reconcile import health_summary_daily_send


@shared_task(autoretry_for=(ConnectionError, TimeoutError, OSError), retry_backoff=True, retry_backoff_max=600,
             max_retries=3)
def send_daily_health_summary() -> dict:
    summary = health_summary_daily_send(now=timezone.now())
    return {"healthy": summary.healthy, "failedWebhooks": len(summary.failed_webhooks),
            "stuckPurchases": len(summary.stuck_purchases), "driftedOrgs": summary.drifted_orgs}

"""The one place billing queues its Celery tasks (defined in `billing/tasks.py`).

Services call these functions; they raise what the broker raises, and each caller decides what a
broker outage means for it (notifications log it, a webhook event stays pending for the re-queue
sweep, a top-up stays pending for the top-up sweeper). Callers inside a transaction call them from
`transaction.on_commit`, so a rolled-back change queues nothing.

The tasks are looked up by their registered name in the Celery app, not imported: `billing.tasks`
imports the services that call these functions, and importing it here would close that cycle. The
names are the contract with messages already queued (they are the modules the tasks lived in
before `billing/tasks.py` held them all), `billing/tasks.py` registers each task under the constant
below, and `BillingConfig.ready()` imports it so every process (web, worker, command) has them; an
unregistered name raises LookupError here, at the call.
"""
from __future__ import annotations

from typing import Any

from celery import current_app

SEND_ORG_ADMIN_EMAIL = "billing.tasks.send_org_admin_email"
WEBHOOK_PROCESS = "billing.tasks_webhooks.webhook_process"
TOPUP_CHARGE = "billing.tasks_topups.topup_charge"


def _task(name: str):
    try:
        return current_app.tasks[name]
    except KeyError:
        raise LookupError(f"Celery task {name!r} is not registered (billing.tasks not imported?)") from None


def send_org_admin_email(*, organization_id: str, kind: str, context: dict[str, Any]) -> None:
    _task(SEND_ORG_ADMIN_EMAIL).delay(organization_id, kind, context)


def webhook_process(*, event_id: int) -> None:
    _task(WEBHOOK_PROCESS).delay(event_id)


def topup_charge(*, purchase_id: int) -> None:
    # retry=False: with Redis down, fail fast instead of holding the caller for kombu's retries.
    _task(TOPUP_CHARGE).apply_async(args=[purchase_id], retry=False)

"""Emails to an org's owners/admins. Callers inside a transaction use `notify_org_admins`, which
queues the Celery task on commit (a rolled-back change sends nothing).

Templates: `templates/emails/<kind>.subject.txt`, `<kind>.txt` and optionally `<kind>.html`,
rendered with the given context plus `org` and `app_base_url`. A kind without templates falls
back to a plain generic body, so services can emit a new kind before its template exists.
"""
from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from . import enqueue

logger = logging.getLogger("billing.notifications")


def notify_org_admins(*, organization_id, kind: str, context: dict[str, Any] | None = None) -> None:
    """Queue an email of `kind` to the org's owners and admins once the current transaction commits.
    `context` must be JSON-serializable (it crosses the broker)."""
    payload = dict(context or {})
    org_id = str(organization_id)

    def _enqueue() -> None:
        try:
            enqueue.send_org_admin_email(organization_id=org_id, kind=kind, context=payload)
        except Exception:  # noqa: BLE001 - the broker being down must not fail the business write
            logger.exception("could not queue %s email for org %s", kind, org_id)

    transaction.on_commit(_enqueue)

"""Reprocess stored Stripe webhook events (staff/ops): `manage.py webhooks_replay --failed [--id evt_…]`.

Runs each event's handler again, now, in this process (webhook_event_reprocess). Processed and
ignored events are never re-run. Exit status 1 if any event failed again.
"""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing.errors import BillingError
from billing.models import WebhookEvent, WebhookEventStatus
from billing.services.webhooks import webhook_event_reprocess


class Command(BaseCommand):
    help = "Reprocess failed (or stuck pending) Stripe webhook events."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--failed", action="store_true", help="reprocess events in status failed")
        parser.add_argument("--pending", action="store_true", help="also reprocess events still pending")
        parser.add_argument("--id", action="append", dest="ids", default=[], metavar="EVT",
                            help="only this Stripe event id (repeatable)")
        parser.add_argument("--limit", type=int, default=1000)

    def handle(self, *args, failed: bool, pending: bool, ids: list[str], limit: int, **options) -> None:
        statuses = ([WebhookEventStatus.FAILED] if failed else []) + ([WebhookEventStatus.PENDING] if pending else [])
        if not statuses and not ids:
            raise CommandError("say which events: --failed, --pending and/or --id evt_…")
        qs = WebhookEvent.objects.all()
        if statuses:
            qs = qs.filter(status__in=statuses)
        else:
            qs = qs.filter(status__in=[WebhookEventStatus.FAILED, WebhookEventStatus.PENDING])
        if ids:
            qs = qs.filter(stripe_event_id__in=ids)
            missing = set(ids) - set(WebhookEvent.objects.filter(stripe_event_id__in=ids)
                                     .values_list("stripe_event_id", flat=True))
            for evt in sorted(missing):
                self.stderr.write(f"{evt}: not stored")
        counts = {"processed": 0, "ignored": 0, "failed": 0}
        for event in qs.order_by("event_created", "pk")[:limit]:
            try:
                result = webhook_event_reprocess(event_id=event.pk, now=timezone.now())
            except BillingError as exc:
                counts["failed"] += 1
                self.stderr.write(f"{event.stripe_event_id} {event.type}: FAILED {exc.message}")
                continue
            counts[result.status if result.status in counts else "processed"] += 1
            self.stdout.write(f"{event.stripe_event_id} {event.type}: {result.status}")
        self.stdout.write(f"{counts['processed']} processed, {counts['ignored']} ignored, {counts['failed']} failed")
        if counts["failed"]:
            raise SystemExit(1)

"""Usage history pages (server-rendered) and the CSV export. Thin: resolve the org, read, render.

Any member of the org may look (analytics, no money controls); other orgs are 404 (`org_view`)."""
from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterator

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from organizations.access import org_view

from .forms import ActionFilterForm
from .page_context import history_context
from .selectors import actions_iter

CSV_COLUMNS = ["id", "created_at_utc", "user_id", "agent_id", "agent_name", "tier", "paid_from",
               "credits_charged", "action_key", "description"]
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


@require_GET
@org_view()
def usage_history(request: HttpRequest, membership) -> HttpResponse:
    return render(request, "usage/history.html",
                  history_context(membership=membership, now=timezone.now(), params=request.GET))


class _Echo:
    def write(self, value: str) -> str:
        return value


def _text(value: str | None) -> str:
    """Free text from the orchestrator, defused for spreadsheets (no formula injection)."""
    value = value or ""
    return "'" + value if value.startswith(_FORMULA_PREFIXES) else value


def _csv_rows(rows) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    for a in rows:
        yield writer.writerow([
            a.id, a.created_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), _text(a.user_id),
            _text(a.agent_id), _text(a.agent_name), a.tier, a.paid_from,
            str(a.credits_charged),  # Decimal -> exact "2.50", never a float
            _text(a.action_key), _text(a.description),
        ])


@require_GET
@org_view()
def usage_export_csv(request: HttpRequest, membership) -> StreamingHttpResponse:
    """Every action matching the page's filters, newest first, streamed in keyset chunks."""
    form = ActionFilterForm(request.GET)
    form.is_valid()
    org = membership.organization
    rows = actions_iter(organization_id=org.pk, filters=form.filters())
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response = StreamingHttpResponse(_csv_rows(rows), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="usage-{org.slug}-{stamp}.csv"'
    response["Cache-Control"] = "no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response

"""Reads for the usage history page and its CSV export. No writes.

Aggregates over a period come from `usage_daily_rollups` for the whole UTC days inside it and
from the facts (`billable_actions`, index (organization, created_at)) only for the partial days at
its edges, so a page costs a few hundred rollup rows plus at most two days of facts, whatever the
org's volume. Lists of actions use keyset pagination on (created_at, id), newest first.
"""
from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Count, Q, QuerySet, Sum

from billing.plans import TIER_CREDIT_COST, TIERS

from .models import BillableAction, UsageDailyRollup

ZERO = Decimal("0.00")


@dataclass
class Bucket:
    actions: int = 0
    credits_charged: Decimal = ZERO   # top-up credits + overage actually charged (plan actions are 0)


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def _split(start: dt.datetime, end: dt.datetime) -> tuple[tuple[dt.date, dt.date] | None, list[tuple[dt.datetime, dt.datetime]]]:
    """[start, end) as (whole UTC days [first, stop) read from rollups, partial ranges read from facts)."""
    start, end = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
    first = start.date() if start == _midnight(start.date()) else start.date() + dt.timedelta(days=1)
    stop = end.date()  # days before end's day are whole (end's own day is partial unless end is midnight)
    if first >= stop:
        return None, [(start, end)] if start < end else []
    edges = []
    if start < _midnight(first):
        edges.append((start, _midnight(first)))
    if _midnight(stop) < end:
        edges.append((_midnight(stop), end))
    return (first, stop), edges


def _usage_by(*, organization_id, start: dt.datetime, end: dt.datetime, key: str) -> dict[tuple, Bucket]:
    """{(day or user_id, tier): Bucket} for actions created in [start, end)."""
    days, edges = _split(start, end)
    out: dict[tuple, Bucket] = defaultdict(Bucket)
    if days is not None:
        rows = (UsageDailyRollup.objects.filter(organization_id=organization_id, day__gte=days[0], day__lt=days[1])
                .values(key, "tier").annotate(n=Sum("actions"), c=Sum("credits_charged")).order_by())
        for row in rows:
            b = out[(row[key], row["tier"])]
            b.actions += int(row["n"])
            b.credits_charged += row["c"] or ZERO
    for lo, hi in edges:
        facts = BillableAction.objects.filter(organization_id=organization_id, created_at__gte=lo, created_at__lt=hi)
        group = ["tier"] if key == "day" else ["user_id", "tier"]
        for row in facts.values(*group).annotate(n=Count("id"), c=Sum("credits_charged")).order_by():
            b = out[(lo.date() if key == "day" else row["user_id"], row["tier"])]
            b.actions += int(row["n"])
            b.credits_charged += row["c"] or ZERO
    return out


def daily_usage(*, organization_id, start: dt.datetime, end: dt.datetime) -> dict[dt.date, dict[str, Bucket]]:
    """{UTC day: {tier: Bucket}} for actions created in [start, end); days without actions are absent."""
    out: dict[dt.date, dict[str, Bucket]] = defaultdict(dict)
    for (day, tier), bucket in _usage_by(organization_id=organization_id, start=start, end=end, key="day").items():
        out[day][tier] = bucket
    return dict(out)


@dataclass(frozen=True)
class UserUsage:
    user_id: str
    actions: int
    by_tier: dict[str, int]
    credits_value: Decimal     # the actions' worth at tier rates (plan actions included)
    credits_charged: Decimal   # top-up credits + overage actually charged


def user_usage(*, organization_id, start: dt.datetime, end: dt.datetime) -> list[UserUsage]:
    """Per platform user id: actions and credits in [start, end), biggest spender first."""
    per_user: dict[str, dict[str, Bucket]] = defaultdict(dict)
    for (user_id, tier), bucket in _usage_by(organization_id=organization_id, start=start, end=end,
                                             key="user_id").items():
        per_user[user_id][tier] = bucket
    rows = []
    for user_id, tiers in per_user.items():
        rows.append(UserUsage(
            user_id=user_id,
            actions=sum(b.actions for b in tiers.values()),
            by_tier={t: tiers[t].actions if t in tiers else 0 for t in TIERS},
            credits_value=sum((TIER_CREDIT_COST[t] * b.actions for t, b in tiers.items()), ZERO),
            credits_charged=sum((b.credits_charged for b in tiers.values()), ZERO),
        ))
    rows.sort(key=lambda r: (-r.credits_value, -r.actions, r.user_id))
    return rows


# --------------------------------------------------------------------------------------------
# Lists of actions (page + CSV)

@dataclass(frozen=True)
class ActionFilters:
    tier: str | None = None
    agent_id: str | None = None
    date_from: dt.date | None = None   # inclusive, UTC
    date_to: dt.date | None = None     # inclusive, UTC


@dataclass(frozen=True)
class Cursor:
    """Position after (older direction) or before (newer direction) the row (created_at, id)."""
    created_at: dt.datetime
    id: int

    def encode(self) -> str:
        return f"{_micros(self.created_at)}-{self.id}"

    @classmethod
    def decode(cls, raw: str | None) -> Cursor | None:
        try:
            micros, pk = (raw or "").split("-", 1)
            when = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=int(micros))
            return cls(created_at=when, id=int(pk))
        except (ValueError, OverflowError):
            return None


def _micros(value: dt.datetime) -> int:
    delta = value.astimezone(dt.UTC) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def actions_filtered(*, organization_id, filters: ActionFilters) -> QuerySet[BillableAction]:
    qs = BillableAction.objects.filter(organization_id=organization_id)
    if filters.tier:
        qs = qs.filter(tier=filters.tier)
    if filters.agent_id:
        qs = qs.filter(agent_id=filters.agent_id)
    if filters.date_from:
        qs = qs.filter(created_at__gte=_midnight(filters.date_from))
    if filters.date_to and filters.date_to < dt.date.max:  # the last day there is = no upper bound
        qs = qs.filter(created_at__lt=_midnight(filters.date_to + dt.timedelta(days=1)))
    return qs


LIST_FIELDS = ("id", "created_at", "user_id", "tier", "agent_id", "agent_name", "action_key", "description",
               "paid_from", "credits_charged")


@dataclass(frozen=True)
class ActionsPage:
    rows: list[BillableAction]
    older: Cursor | None    # cursor for the next (older) page, None on the last page
    newer: Cursor | None    # cursor for the previous (newer) page, None on the first page


def actions_page(*, organization_id, filters: ActionFilters, after: Cursor | None = None,
                 before: Cursor | None = None, limit: int = 50) -> ActionsPage:
    """One page, newest first. `after`: rows older than the cursor; `before`: rows newer than it.
    Keyset on (created_at, id), so pages stay stable while new actions arrive."""
    qs = actions_filtered(organization_id=organization_id, filters=filters).only(*LIST_FIELDS)
    if before is not None:
        newer_q = Q(created_at__gt=before.created_at) | Q(created_at=before.created_at, id__gt=before.id)
        rows = list(qs.filter(newer_q).order_by("created_at", "id")[: limit + 1])
        has_newer = len(rows) > limit
        rows = list(reversed(rows[:limit]))
        has_older = True
    else:
        if after is not None:
            qs = qs.filter(Q(created_at__lt=after.created_at) | Q(created_at=after.created_at, id__lt=after.id))
        rows = list(qs.order_by("-created_at", "-id")[: limit + 1])
        has_older = len(rows) > limit
        rows = rows[:limit]
        has_newer = after is not None
    if not rows:
        return ActionsPage(rows=[], older=None, newer=None)
    return ActionsPage(
        rows=rows,
        older=Cursor(rows[-1].created_at, rows[-1].id) if has_older else None,
        newer=Cursor(rows[0].created_at, rows[0].id) if has_newer else None,
    )


def actions_iter(*, organization_id, filters: ActionFilters, chunk: int = 2000) -> Iterator[BillableAction]:
    """Every matching action, newest first, read in keyset chunks (bounded memory for the CSV export)."""
    after: Cursor | None = None
    while True:
        page = actions_page(organization_id=organization_id, filters=filters, after=after, limit=chunk)
        yield from page.rows
        if page.older is None:
            return
        after = page.older


def recent_agents(*, organization_id, sample: int = 2000) -> list[str]:
    """Distinct agent ids among the org's newest actions (suggestions for the agent filter)."""
    ids = (BillableAction.objects.filter(organization_id=organization_id).exclude(agent_id=None)
           .order_by("-created_at", "-id").values_list("agent_id", flat=True)[:sample])
    return sorted(set(ids))

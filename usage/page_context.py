"""Context of the usage history page: the period's daily chart (server-rendered SVG geometry), the
per-user table and one page of recent actions. Reads only (plus the engine's lazy period roll
inside `balance_summary`)."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.urls import reverse

from billing.plans import TIER_CREDIT_COST, TIERS
from billing.selectors import balance_summary
from organizations.models import Membership

from .forms import TIER_LABELS, ActionFilterForm
from .selectors import Cursor, actions_page, daily_usage, recent_agents, user_usage

ZERO = Decimal("0.00")
TIER_COLORS = {"small": "#0b57d0", "medium": "#1a7f37", "large": "#b35900", "xl": "#8250df"}
USERS_SHOWN = 50
PAGE_SIZE = 50

# SVG geometry (viewBox units; the SVG scales to its box, min 600 px wide, scrolls on phones).
W, H = 760, 280
LEFT, RIGHT, TOP, BOTTOM = 60, 12, 14, 44


@dataclass(frozen=True)
class Segment:
    tier: str
    label: str
    color: str
    actions: int
    credits: Decimal
    y: str
    height: str


@dataclass(frozen=True)
class DayBar:
    day: dt.date
    x: str
    width: str
    label_x: str
    show_label: bool
    total: Decimal
    actions: int
    segments: list[Segment]


@dataclass(frozen=True)
class Tick:
    value: Decimal
    y: str


def _nice_ceiling(value: Decimal) -> Decimal:
    """Smallest 1 / 2 / 2.5 / 5 x 10^k >= value (at least 1)."""
    if value <= 1:
        return Decimal(1)
    exp = len(str(int(value))) - 1
    base = Decimal(10) ** exp
    for step in (1, 2, Decimal("2.5"), 5, 10):
        if base * step >= value:
            return base * step
    return base * 10


def _f(value: float) -> str:
    return f"{value:.2f}"


def chart_context(*, days: list[dt.date], usage: dict[dt.date, dict]) -> dict[str, Any]:
    totals = {d: sum((TIER_CREDIT_COST[t] * b.actions for t, b in usage.get(d, {}).items()), ZERO) for d in days}
    peak = max(totals.values(), default=ZERO)
    top = _nice_ceiling(peak)
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    band = plot_w / max(len(days), 1)
    bar_w = band * 0.7
    label_every = 1 if len(days) <= 31 else 2
    bars = []
    for i, day in enumerate(days):
        tiers = usage.get(day, {})
        if not tiers:
            continue
        x = LEFT + i * band + (band - bar_w) / 2
        bottom = float(TOP + plot_h)
        segments = []
        for t in TIERS:
            if t not in tiers or not tiers[t].actions:
                continue
            credits = TIER_CREDIT_COST[t] * tiers[t].actions
            height = float(credits / top) * plot_h
            bottom -= height
            segments.append(Segment(tier=t, label=TIER_LABELS[t], color=TIER_COLORS[t], actions=tiers[t].actions,
                                    credits=credits, y=_f(bottom), height=_f(max(height, 0.5))))
        bars.append(DayBar(day=day, x=_f(x), width=_f(bar_w), label_x=_f(x + bar_w / 2), show_label=True,
                           total=totals[day], actions=sum(s.actions for s in segments), segments=segments))
    labels = [{"day": d, "x": _f(LEFT + i * band + band / 2)} for i, d in enumerate(days) if i % label_every == 0]
    ticks = [Tick(value=top * k / 4, y=_f(TOP + plot_h - plot_h * k / 4)) for k in range(5)]
    total_credits = sum(totals.values(), ZERO)
    return {
        "width": W, "height": H, "left": LEFT, "right": W - RIGHT, "top": TOP, "baseline": TOP + plot_h,
        "label_y": TOP + plot_h + 16, "axis_title_y": H - 6, "axis_mid_x": LEFT + plot_w / 2,
        "y_title_y": TOP + plot_h / 2,
        "bars": bars, "labels": labels, "ticks": ticks, "days": days,
        "legend": [{"tier": t, "label": TIER_LABELS[t], "color": TIER_COLORS[t],
                    "credits": sum((TIER_CREDIT_COST[t] * usage[d][t].actions for d in usage if t in usage[d]), ZERO)}
                   for t in TIERS],
        "total_credits": total_credits,
        "total_actions": sum(b.actions for b in bars),
        "peak_day": max(bars, key=lambda b: b.total).day if bars else None,
        "peak": peak,
        "table": [{"day": d, "by_tier": [usage.get(d, {}).get(t).actions if t in usage.get(d, {}) else 0
                                         for t in TIERS], "total": totals[d]} for d in days if usage.get(d)],
    }


def _period_days(start: dt.datetime, end: dt.datetime) -> list[dt.date]:
    first = start.astimezone(dt.UTC).date()
    last = (end.astimezone(dt.UTC) - dt.timedelta(microseconds=1)).date()
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def history_context(*, membership: Membership, now: dt.datetime, params) -> dict[str, Any]:
    org = membership.organization
    summary = balance_summary(organization=org, now=now)
    start, end = summary.period_start, summary.period_end
    upto = min(now, end)
    usage = daily_usage(organization_id=org.pk, start=start, end=upto)
    users = user_usage(organization_id=org.pk, start=start, end=upto)

    form = ActionFilterForm(params)
    form.is_valid()
    filters = form.filters()
    page = actions_page(organization_id=org.pk, filters=filters, after=Cursor.decode(params.get("after")),
                        before=Cursor.decode(params.get("before")) if not params.get("after") else None,
                        limit=PAGE_SIZE)
    qs = form.querystring()
    base = f"?org={org.slug}" + (f"&{qs}" if qs else "")
    return {
        "org": org,
        "membership": membership,
        "period_start": start,
        "period_end": end,
        "chart": chart_context(days=_period_days(start, end), usage=usage),
        "users": users[:USERS_SHOWN],
        "users_total": len(users),
        "tier_labels": [TIER_LABELS[t] for t in TIERS],
        "form": form,
        "filters": filters,
        "filtered": any([filters.tier, filters.agent_id, filters.date_from, filters.date_to]),
        "agents": recent_agents(organization_id=org.pk),
        "page": page,
        "older_url": f"{base}&after={page.older.encode()}" if page.older else None,
        "newer_url": f"{base}&before={page.newer.encode()}" if page.newer else None,
        "first_url": base if page.newer else None,
        "export_url": reverse("usage-export") + base,
        "reset_url": f"?org={org.slug}",
    }

"""Filters for the email templates. Email contexts cross the Celery broker as JSON, so dates arrive
as ISO strings and plans as tier values or names; these filters accept both forms."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation

from django import template

from ..plans import PLANS, format_cents

register = template.Library()

TIER_LABELS = {"small": "Small", "medium": "Medium", "large": "Large", "xl": "XL"}


@register.filter
def when(value) -> str:
    """A datetime or ISO-8601 string -> 'Nov 17, 2026 at 12:00 UTC' (or '' when missing)."""
    if isinstance(value, str) and value:
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if not isinstance(value, datetime):
        return ""
    return f"{value:%b} {value.day}, {value:%Y at %H:%M} UTC" if value.tzinfo is not None else f"{value:%b} {value.day}, {value:%Y}"


@register.filter
def money(amount_cents) -> str:
    """Integer cents -> '$20.00' (display only)."""
    try:
        return format_cents(int(amount_cents))
    except (TypeError, ValueError):
        return ""


@register.filter
def plan_name(value) -> str:
    """A plan tier ('pro') or an already-display name ('Pro') -> 'Pro'."""
    plan = PLANS.get(str(value)) if value else None
    return plan.name if plan else (str(value) if value else "")


@register.filter
def tier_name(value) -> str:
    return TIER_LABELS.get(str(value), str(value or ""))


@register.filter
def credits_fmt(value) -> str:
    """Decimal or string credits -> '1,500' / '2.50'."""
    try:
        d = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return str(value or "")
    return f"{d:,.0f}" if d == d.to_integral_value() else f"{d:,.2f}"


@register.filter
def allowance(tier) -> str:
    """A plan's monthly allowance from the catalog: 'free' -> '10 small, 4 medium, 2 large and 1 XL'."""
    plan = PLANS.get(str(tier))
    if plan is None:
        return ""
    parts = [f"{n:,} {TIER_LABELS[t] if t == 'xl' else t}" for t, n in plan.included.items()]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


@register.filter
def day(value) -> str:
    """A datetime or ISO-8601 string -> 'Nov 17, 2026'."""
    if isinstance(value, str) and value:
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    return f"{value:%b} {value.day}, {value:%Y}" if isinstance(value, datetime) else ""

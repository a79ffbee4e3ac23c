"""The invoices page (/billing/invoices): cached Stripe invoices, credit purchases, and an event history
built from the rows."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from organizations.models import Membership

from ..models import AutoTopupSettingsChange, CreditPurchase, Invoice, Subscription
from ..plans import PLANS, format_cents
from .common import PORTAL_URL, date_text

INVOICES_SHOWN = 100
PURCHASES_SHOWN = 100
EVENTS_SHOWN = 100


@dataclass(frozen=True)
class InvoiceRow:
    stripe_invoice_id: str
    created_at: datetime
    kind: str
    amount: str               # format_cents(amount_due_cents)
    paid: str                 # format_cents(amount_paid_cents)
    status: str
    status_label: str
    period_start: datetime | None
    period_end: datetime | None
    hosted_url: str
    pdf_url: str


@dataclass(frozen=True)
class PurchaseRow:
    id: int
    created_at: datetime
    kind_label: str
    method_label: str
    packs: int
    credits: Decimal
    amount: str               # format_cents(amount_cents)
    status: str
    status_label: str
    failure: str


@dataclass(frozen=True)
class HistoryEvent:
    at: datetime
    kind: str                 # subscription | purchase | invoice | settings
    text: str


def _safe_url(url: str) -> str:
    """Only http(s) links from Stripe's cached fields reach an href."""
    return url if url.startswith(("https://", "http://")) else ""


def _plan_name(tier: str) -> str:
    plan = PLANS.get(tier)
    return plan.name if plan else tier


def _subscription_events(subs, now: datetime) -> list[HistoryEvent]:
    out = []
    for s in subs:
        name = _plan_name(s.plan_tier)
        started = f"Subscribed to {name}" + (" with a free trial" if s.trial_end else "")
        out.append(HistoryEvent(s.created_at, "subscription", started))
        if s.trial_end and s.trial_end <= now:
            out.append(HistoryEvent(s.trial_end, "subscription", f"{name} trial ended"))
        if s.grace_period_ends_at:
            out.append(HistoryEvent(s.updated_at, "subscription",
                                    f"{name} payment failed; grace period until {date_text(s.grace_period_ends_at)}"))
        if s.cancel_at_period_end and s.current_period_end and not s.ended_at:
            out.append(HistoryEvent(s.canceled_at or s.updated_at, "subscription",
                                    f"{name} set to end on {date_text(s.current_period_end)}"))
        elif s.canceled_at and not s.ended_at:
            out.append(HistoryEvent(s.canceled_at, "subscription", f"{name} subscription canceled"))
        if s.ended_at:
            out.append(HistoryEvent(s.ended_at, "subscription", f"{name} subscription ended; moved to Free"))
    return out


def invoices_context(*, membership: Membership, now: datetime) -> dict[str, Any]:
    org = membership.organization
    invoices = list(Invoice.objects.filter(organization=org).order_by("-created_at", "-id")[:INVOICES_SHOWN])
    purchases = list(CreditPurchase.objects.filter(organization=org).order_by("-created_at", "-id")[:PURCHASES_SHOWN])
    subs = list(Subscription.objects.filter(organization=org).order_by("-created_at")[:50])
    changes = list(AutoTopupSettingsChange.objects.filter(organization=org).order_by("-created_at", "-id")[:50])

    invoice_rows = [InvoiceRow(
        stripe_invoice_id=i.stripe_invoice_id, created_at=i.created_at, kind=i.get_type_display(),
        amount=format_cents(i.amount_due_cents, i.currency), paid=format_cents(i.amount_paid_cents, i.currency),
        status=i.status, status_label=i.get_status_display(), period_start=i.period_start, period_end=i.period_end,
        hosted_url=_safe_url(i.hosted_invoice_url), pdf_url=_safe_url(i.invoice_pdf),
    ) for i in invoices]
    purchase_rows = [PurchaseRow(
        id=p.pk, created_at=p.created_at, kind_label=p.get_kind_display(), method_label=p.get_method_display(),
        packs=p.packs, credits=p.credits, amount=format_cents(p.amount_cents, p.currency), status=p.status,
        status_label=p.get_status_display(), failure=p.failure_message or p.failure_code,
    ) for p in purchases]

    events = _subscription_events(subs, now)
    for p in purchases:
        what = (f"{p.credits.normalize():f} credits granted by staff" if p.kind == "grant"
                else f"{p.get_kind_display()}: {p.packs} pack{'s' if p.packs != 1 else ''} "
                     f"({p.credits.normalize():f} credits, {format_cents(p.amount_cents, p.currency)})")
        events.append(HistoryEvent(p.completed_at or p.created_at, "purchase",
                                   f"{what} — {p.get_status_display().lower()}"))
    for i in invoices:
        amount = format_cents(i.amount_due_cents, i.currency)
        if i.status == "paid":
            events.append(HistoryEvent(i.paid_at or i.updated_at, "invoice", f"Invoice {amount} paid"))
        else:
            events.append(HistoryEvent(i.created_at, "invoice", f"Invoice {amount} {i.get_status_display().lower()}"))
    for c in changes:
        state = (f"on (below {c.threshold.normalize():f} credits, {c.packs} pack{'s' if c.packs != 1 else ''}, "
                 f"cap {c.monthly_cap_packs}/month)" if c.enabled else "off")
        who = " after three failed payments" if c.reason == "three_failures" else ""
        events.append(HistoryEvent(c.created_at, "settings", f"Auto top-up turned {state}{who}"))
    events.sort(key=lambda e: e.at, reverse=True)
    return {
        "org": org,
        "membership": membership,
        "can_manage": membership.is_admin,
        "invoices": invoice_rows,
        "purchases": purchase_rows,
        "events": events[:EVENTS_SHOWN],
        "portal_url": PORTAL_URL,
    }

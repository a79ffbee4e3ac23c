"""Page contexts for the billing pages (dashboard, plan picker): all the arithmetic and decisions
the templates need, so templates only print. Reads only; no writes, no Stripe.

The balance comes from the credit engine's `billing.selectors.balance_summary` (camelCase, the
shape of GET /api/billing/usage). Endpoints other issues add (checkout, portal, top-up, auto
top-up) are linked only once their URL resolves; until then the control renders disabled.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.urls import Resolver404, resolve, reverse

from billing_project.errors import AppError
from organizations.models import Membership, Organization, PlanTier, SubscriptionStatus

from .plans import (
    AUTO_TOPUP_DEFAULT_MONTHLY_CAP_PACKS,
    AUTO_TOPUP_DEFAULT_PACKS,
    AUTO_TOPUP_DEFAULT_THRESHOLD,
    PLANS,
    TIER_CREDIT_COST,
    TIERS,
    TOPUP_PACK_CREDITS,
    TOPUP_PACK_PRICE_CENTS,
    TRIAL_DAYS,
    Plan,
    format_cents,
)
from .models import AutoTopupSettingsChange, CreditPurchase, Invoice, Subscription
from .models.subscriptions import LIVE_SUBSCRIPTION_STATUSES
from .selectors import BalanceStatus, TierStatus, balance_status, balance_summary
from .services.topups import (
    AUTO_TOPUP_CAP_MAX,
    AUTO_TOPUP_PACKS_MAX,
    AUTO_TOPUP_PACKS_MIN,
    AUTO_TOPUP_THRESHOLD_MAX,
    AUTO_TOPUP_THRESHOLD_MIN,
)

logger = logging.getLogger("billing.pages")

# Browser endpoints (JSON + form posts) owned by the checkout / top-up issues.
CHECKOUT_URL = "/api/billing/checkout"
PORTAL_URL = "/api/billing/portal"
UPGRADE_URL = "/api/billing/subscription/upgrade"
CANCEL_URL = "/api/billing/subscription/cancel"
DOWNGRADE_URL = "/api/billing/subscription/downgrade"
KEEP_PLAN_URL = "/api/billing/subscription/downgrade/cancel"
TOPUP_URL = "/api/billing/credits/topup"
AUTO_TOPUP_URL = "/api/billing/credits/auto-topup"

WARN_PERCENT = 80
TIER_LABELS = {"small": "Small", "medium": "Medium", "large": "Large", "xl": "XL"}


def endpoint_available(path: str) -> bool:
    """True when some view answers `path` (another issue may not have landed it yet)."""
    try:
        resolve(path)
    except Resolver404:
        return False
    return True


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(Decimal(str(value)))
    except (InvalidOperation, TypeError, ValueError):
        return default


def _dec(value: Any, default: str = "0.00") -> Decimal:
    try:
        return Decimal(str(value)).quantize(Decimal("0.01"))
    except (InvalidOperation, TypeError, ValueError):
        return Decimal(default)


def _fill(used: int | Decimal, total: int | Decimal) -> tuple[int, str]:
    """(bar width percent 0..100, state ok|warn|full) for `used` of `total`."""
    if total <= 0:
        return (100, "full") if used > 0 else (0, "ok")
    percent = min(100, int(Decimal(used) * 100 / Decimal(total)))
    if used >= total:
        return 100, "full"
    if Decimal(used) * 100 >= Decimal(total) * WARN_PERCENT:
        return percent, "warn"
    return percent, "ok"


@dataclass(frozen=True)
class TierBar:
    tier: str
    label: str
    used: int
    included: int
    remaining: int
    overage: int
    percent: int           # bar width, 0..100 (capped)
    state: str             # ok (<80 %), warn (>=80 %), full (>=100 %)
    credit_cost: Decimal   # credits per action of this tier
    # What happens to the next action (billing.selectors.TierStatus): plan | credits | overage | blocked,
    # said as a sentence; blocked_since = the first refusal this period (None: not refused yet).
    next_kind: str = ""
    next_text: str = ""
    blocked_since: datetime | None = None


@dataclass(frozen=True)
class CreditsBar:
    purchased: Decimal
    used: Decimal
    remaining: Decimal
    percent: int
    state: str


@dataclass(frozen=True)
class PlanCard:
    plan: Plan
    price: str                     # "$99.00"
    status: str                    # organizations SubscriptionStatus value
    status_label: str
    next_billing_at: datetime | None
    trial_ends_at: datetime | None
    trial_days_left: int | None
    grace_ends_at: datetime | None
    cancel_at_period_end: bool
    period_start: datetime | None
    period_end: datetime | None
    pending_plan: Plan | None = None        # deferred downgrade: the plan from pending_plan_at on
    pending_plan_at: datetime | None = None  # = the subscription's current period end
    has_payment_method: bool = False         # the subscription has a default card (trial converts to paid)
    # An upgrade Stripe holds until its proration invoice is paid (plan above unchanged meanwhile).
    pending_upgrade: Plan | None = None
    pending_upgrade_expires_at: datetime | None = None
    pending_upgrade_invoice_url: str = ""


@dataclass(frozen=True)
class Banner:
    level: str     # info | warning | error
    text: str
    kind: str = ""                          # data-banner; "" = the subscription status
    links: tuple[tuple[str, str], ...] = ()  # (label, href): the fix, as links next to the text


@dataclass
class AutoTopup:
    enabled: bool
    threshold: Decimal | str        # str: what the admin typed, shown again after a refused submission
    packs: int | str
    monthly_cap_packs: int | str
    available: bool                 # the settings endpoint exists
    pack_credits: Decimal = TOPUP_PACK_CREDITS
    pack_price: str = field(default_factory=lambda: format_cents(TOPUP_PACK_PRICE_CENTS))
    # The service's bounds, so the browser refuses what the server would (billing.services.topups).
    threshold_min: Decimal = AUTO_TOPUP_THRESHOLD_MIN
    threshold_max: Decimal = AUTO_TOPUP_THRESHOLD_MAX
    packs_min: int = AUTO_TOPUP_PACKS_MIN
    packs_max: int = AUTO_TOPUP_PACKS_MAX
    cap_max: int = AUTO_TOPUP_CAP_MAX
    error: str = ""                 # why the last submission was refused (a sentence)
    error_field: str = ""           # enabled | threshold | packs | cap | "" (the whole form)


#: BillingError code of a refused auto top-up submission -> the form field it is about.
AUTO_TOPUP_ERROR_FIELDS = {"INVALID_AUTO_TOPUP_THRESHOLD": "threshold", "INVALID_AUTO_TOPUP_PACKS": "packs",
                           "INVALID_AUTO_TOPUP_CAP": "cap", "NO_PAYMENT_METHOD": "enabled"}


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[:1].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")) if text else text


def auto_topup_resubmitted(state: AutoTopup, *, data: dict[str, Any], error: AppError) -> AutoTopup:
    """The form as the admin submitted it, with the refusal next to the field it is about."""
    def typed(name: str, *aliases: str) -> str:
        for key in (name, *aliases):
            if isinstance(data.get(key), str):
                return data[key]
        return ""

    return replace(
        state, enabled=typed("enabled").strip().lower() in {"1", "true", "on", "yes"},
        threshold=typed("threshold"), packs=typed("packs"),
        monthly_cap_packs=typed("monthly_cap_packs", "monthlyCapPacks"),
        error=_sentence(error.message), error_field=AUTO_TOPUP_ERROR_FIELDS.get(error.code, ""))


def _balance_summary(*, organization: Organization, now: datetime, status: BalanceStatus | None = None
                     ) -> dict | None:
    """The engine's summary."""
    return balance_summary(organization=organization, now=now, status=status)


def _current_subscription(organization: Organization):
    subs = Subscription.objects.filter(organization=organization)
    return (subs.filter(status__in=list(LIVE_SUBSCRIPTION_STATUSES)).order_by("-created_at").first()
            or subs.order_by("-created_at").first())


def _parse_dt(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def tier_bars(summary: dict | None, plan: Plan) -> list[TierBar]:
    tiers = (summary or {}).get("tiers") or {}
    bars = []
    for tier in TIERS:
        row = tiers.get(tier) or {}
        included = _int(row.get("included"), plan.included[tier])
        used = _int(row.get("used"))
        overage = _int(row.get("overage"))
        remaining = _int(row.get("remaining"), max(included - used, 0))
        percent, state = _fill(used + overage, included)
        bars.append(TierBar(tier=tier, label=TIER_LABELS[tier], used=used, included=included, remaining=remaining,
                            overage=overage, percent=percent, state=state, credit_cost=TIER_CREDIT_COST[tier]))
    return bars


def credits_bar(summary: dict | None) -> CreditsBar:
    topup = (summary or {}).get("topupCredits") or {}
    purchased, used = _dec(topup.get("purchased")), _dec(topup.get("used"))
    remaining = _dec(topup.get("remaining"), str(purchased - used))
    percent, state = _fill(used, purchased) if purchased > 0 else (0, "ok")
    return CreditsBar(purchased=purchased, used=used, remaining=remaining, percent=percent, state=state)


def _warnings(status: BalanceStatus) -> list[str]:
    """One line per tier worth a warning, from what its next action does (a blocked tier has the
    banner and its own line instead: it is not "running on overage")."""
    out = []
    for s in status.tiers:
        label, included = TIER_LABELS[s.tier], status.balance.included(s.tier)
        if s.next_paid_from == "overage":
            out.append(f"{label}: allowance and credits used up, running on overage "
                       f"({s.buffer_left} buffer action{'s' if s.buffer_left != 1 else ''} left)")
        elif s.next_paid_from == "credits":
            out.append(f"{label}: allowance used up, now paid from top-up credits")
        elif s.next_paid_from == "plan" and included and (included - s.plan_left) * 100 >= WARN_PERCENT * included:
            out.append(f"{label}: 80 % of the allowance used")
    return out


def _since(at: datetime, now: datetime) -> str:
    """'14:05 UTC' today, 'Nov 9, 14:05 UTC' another day (TIME_ZONE is UTC)."""
    return f"{at:%H:%M} UTC" if at.date() == now.date() else f"{at:%b} {at.day}, {at:%H:%M} UTC"


def next_action(s: TierStatus, *, now: datetime) -> tuple[str, str]:
    """(kind, sentence) for the next action of one tier: plan | credits | overage | blocked."""
    if s.next_paid_from == "plan":
        return "plan", f"Paid from the plan allowance ({s.plan_left:,} left)"
    if s.next_paid_from == "credits":
        cost = TIER_CREDIT_COST[s.tier].normalize()
        return "credits", (f"Paid from credits ({cost:f} each; the credits left pay for "
                           f"{s.credit_actions:,} more)")
    if s.next_paid_from == "overage":
        return "overage", (f"Runs on the overage buffer: {s.buffer_left} buffer (overage) "
                           f"action{'s' if s.buffer_left != 1 else ''} left, then refused")
    when = f"Blocked since {_since(s.blocked_since, now)}" if s.blocked_since else "Blocked"
    return "blocked", f"{when}: refused until you buy credits or upgrade"


def blocked_banner(status: BalanceStatus, *, org: Organization, can_manage: bool, now: datetime) -> Banner | None:
    """The error banner for the tiers whose next action is refused, with the fix as links."""
    blocked = [s for s in status.tiers if s.blocked]
    if not blocked:
        return None
    phrases = [f"{TIER_LABELS[s.tier]} actions are blocked" + (f" since {_since(s.blocked_since, now)}"
                                                               if s.blocked_since else "") for s in blocked]
    upgrade = PLANS[status.suggested_plan] if status.suggested_plan else None
    text = ("; ".join(phrases) + ": the plan allowance, top-up credits and overage buffer are used up, so "
            "the platform refuses them until you buy credits" + (" or upgrade" if upgrade else "") + ".")
    packs = max(s.packs_to_unblock for s in blocked)
    if packs > 1:
        owed = status.balance.overage_credits_owed.normalize()
        text += (f" A purchase first settles the {owed:f} credits of overage owed: "
                 f"{packs} packs of {TOPUP_PACK_CREDITS.normalize():f} are needed.")
    if not can_manage:
        return Banner("error", text + " Ask an owner or admin of the organization.", kind="tier-blocked")
    links = [("Buy credits", "#credits")]
    if upgrade:
        links.append((f"Upgrade to {upgrade.name}", f"{reverse('billing-plans')}?org={org.slug}"))
    return Banner("error", text, kind="tier-blocked", links=tuple(links))


def plan_card(*, organization: Organization, summary: dict | None, now: datetime) -> PlanCard:
    plan = PLANS[organization.subscription_tier]
    sub = _current_subscription(organization)
    period = (summary or {}).get("period") or {}
    period_start = _parse_dt(period.get("start")) or (sub.current_period_start if sub else None)
    period_end = _parse_dt(period.get("end")) or (sub.current_period_end if sub else None)
    status = organization.subscription_status
    trial_ends_at = None
    if status == SubscriptionStatus.TRIALING:
        trial_ends_at = (sub.trial_end if sub and sub.trial_end else None) or organization.trial_ends_at
    days_left = None
    if trial_ends_at is not None:
        days_left = max(0, math.ceil((trial_ends_at - now).total_seconds() / 86400))
    cancel_at_end = bool(sub and sub.cancel_at_period_end)
    next_billing = None
    if sub is not None and plan.price_cents > 0 and not cancel_at_end and status in (
            SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE):
        next_billing = sub.current_period_end
    elif sub is not None and status == SubscriptionStatus.TRIALING and not cancel_at_end:
        next_billing = trial_ends_at
    return PlanCard(
        plan=plan, price=format_cents(plan.price_cents), status=status,
        status_label=SubscriptionStatus(status).label, next_billing_at=next_billing,
        trial_ends_at=trial_ends_at, trial_days_left=days_left,
        grace_ends_at=sub.grace_period_ends_at if sub else None, cancel_at_period_end=cancel_at_end,
        period_start=period_start, period_end=period_end,
        pending_plan=PLANS[sub.pending_plan_tier] if _pending(sub) else None,
        pending_plan_at=sub.current_period_end if _pending(sub) else None,
        has_payment_method=bool(sub and sub.default_payment_method_id),
        **_pending_upgrade(sub, now=now),
    )


def _pending_upgrade(sub, *, now: datetime) -> dict[str, Any]:
    if sub is None or not sub.pending_update_plan_tier or (
            sub.pending_update_expires_at is not None and sub.pending_update_expires_at <= now):
        return {}
    invoice = sub.invoices.filter(status="open", billing_reason="subscription_update").order_by("-created_at").first()
    return {"pending_upgrade": PLANS[sub.pending_update_plan_tier],
            "pending_upgrade_expires_at": sub.pending_update_expires_at,
            "pending_upgrade_invoice_url": invoice.hosted_invoice_url if invoice else ""}


def _pending(sub) -> bool:
    """A live subscription with a downgrade scheduled for its period end."""
    return bool(sub is not None and getattr(sub, "pending_plan_tier", "") and sub.status in LIVE_SUBSCRIPTION_STATUSES
                and sub.current_period_end and not sub.cancel_at_period_end)


def _date(value: datetime | None) -> str:
    return value.strftime("%b %-d, %Y") if value else ""


def banners(card: PlanCard) -> list[Banner]:
    out: list[Banner] = []
    if card.status == SubscriptionStatus.TRIALING:
        days = card.trial_days_left
        when = f"in {days} day{'s' if days != 1 else ''}" if days else "today"
        if card.has_payment_method:
            out.append(Banner("info", f"Your {card.plan.name} trial ends {when} ({_date(card.trial_ends_at)}). "
                                      f"Your card on file will then be charged {card.price} a month."))
        else:
            out.append(Banner("info", f"Your {card.plan.name} trial ends {when} ({_date(card.trial_ends_at)}). "
                                      "Add a payment method to keep the plan; otherwise the org moves to Free."))
    elif card.status in (SubscriptionStatus.PAST_DUE, SubscriptionStatus.UNPAID):
        grace = f" The {card.plan.name} plan keeps working until {_date(card.grace_ends_at)}." \
            if card.grace_ends_at else ""
        out.append(Banner("error", f"Your last payment failed.{grace} Update your payment method to avoid "
                                   "being moved to the Free plan."))
    elif card.status in (SubscriptionStatus.CANCELED, SubscriptionStatus.INCOMPLETE_EXPIRED):
        out.append(Banner("warning", "Your subscription was canceled. You are on the Free plan's allowances."))
    elif card.status == SubscriptionStatus.INCOMPLETE:
        out.append(Banner("warning", "Your subscription is waiting for the first payment to complete."))
    if card.pending_plan is not None:
        out.append(Banner("info", f"Changes to {card.pending_plan.name} on {_date(card.pending_plan_at)}. "
                                  f"Your {card.plan.name} allowances stay until then."))
    if card.cancel_at_period_end and card.period_end:
        out.append(Banner("warning", f"Your {card.plan.name} plan ends on {_date(card.period_end)}; "
                                     "the org then moves to the Free plan."))
    if card.pending_upgrade is not None:
        until = (f" before {card.pending_upgrade_expires_at:%b %-d, %H:%M} UTC"
                 if card.pending_upgrade_expires_at else "")
        out.append(Banner("warning", f"Your upgrade to {card.pending_upgrade.name} is waiting for its payment: "
                                     f"you stay on {card.plan.name} until it is paid{until}.", kind="upgrade-pending",
                          links=((("Pay the invoice", card.pending_upgrade_invoice_url),)
                                 if card.pending_upgrade_invoice_url else ())))
    return out


def auto_topup_state(*, summary: dict | None) -> AutoTopup:
    """The org's auto top-up settings from the balance summary's `autoTopup` (defaults without one)."""
    s = (summary or {}).get("autoTopup") or {}
    return AutoTopup(
        enabled=bool(s.get("enabled", False)),
        threshold=_dec(s.get("threshold", AUTO_TOPUP_DEFAULT_THRESHOLD)),
        packs=_int(s.get("packs"), AUTO_TOPUP_DEFAULT_PACKS),
        monthly_cap_packs=_int(s.get("monthlyCapPacks"), AUTO_TOPUP_DEFAULT_MONTHLY_CAP_PACKS),
        available=endpoint_available(AUTO_TOPUP_URL),
    )


def dashboard_context(*, membership: Membership, now: datetime, auto_topup_submitted: dict[str, Any] | None = None,
                      auto_topup_error: AppError | None = None) -> dict[str, Any]:
    """`auto_topup_submitted` + `auto_topup_error`: the refused auto top-up form, shown again as typed."""
    org = membership.organization
    status = balance_status(organization_id=org.pk, now=now)
    summary = _balance_summary(organization=org, now=now, status=status)
    card = plan_card(organization=org, summary=summary, now=now)
    bars = []
    for bar, tier_state in zip(tier_bars(summary, card.plan), status.tiers, strict=True):
        kind, text = next_action(tier_state, now=now)
        bars.append(replace(bar, next_kind=kind, next_text=text, blocked_since=tier_state.blocked_since))
    blocked = blocked_banner(status, org=org, can_manage=membership.is_admin, now=now)
    return {
        "org": org,
        "membership": membership,
        "page_path": "/settings/billing",  # also when rendered as the answer to the auto top-up form's POST
        "can_manage": membership.is_admin,
        "card": card,
        "banners": banners(card) + ([blocked] if blocked else []),
        "blocked_fix": blocked.links if blocked else (),
        "tier_bars": bars,
        "credits": credits_bar(summary),
        "overage_total": sum(b.overage for b in bars),
        # The headline: credits any tier's next action can spend. Plan allowance is per tier, in
        # actions (plan_left), never added in as "credits" (another tier cannot spend it).
        "spendable_credits": status.spendable_credits,
        "plan_left": [(b.label, b.remaining) for b in bars if b.remaining],
        "balance_available": summary is not None,
        "usage_warnings": _warnings(status),
        "auto_topup": auto_topup_resubmitted(auto_topup_state(summary=summary), data=auto_topup_submitted or {},
                                             error=auto_topup_error)
        if auto_topup_error is not None else auto_topup_state(summary=summary),
        "portal_url": PORTAL_URL if endpoint_available(PORTAL_URL) else None,
        "keep_plan_url": KEEP_PLAN_URL,
        "topup_url": TOPUP_URL if endpoint_available(TOPUP_URL) else None,
        "auto_topup_url": AUTO_TOPUP_URL,
        "topup_pack_credits": TOPUP_PACK_CREDITS,
        "topup_pack_price": format_cents(TOPUP_PACK_PRICE_CENTS),
    }


@dataclass(frozen=True)
class PlanOption:
    plan: Plan
    price: str
    is_current: bool
    action: str | None        # "trial" | "upgrade" | "downgrade" | "scheduled" (pending downgrade) |
                              # "keep" (current plan, cancels a pending downgrade) | None (current)
    action_label: str
    action_url: str | None    # None = endpoint not landed yet (button disabled)
    allowances: list[tuple[str, int]]


def plan_picker_context(*, membership: Membership, now: datetime) -> dict[str, Any]:
    org = membership.organization
    current = PLANS[org.subscription_tier]
    trial_available = org.trial_ends_at is None
    has_paid_sub = current.price_cents > 0 and org.subscription_status in (
        SubscriptionStatus.ACTIVE, SubscriptionStatus.TRIALING, SubscriptionStatus.PAST_DUE)
    sub = _current_subscription(org) if has_paid_sub else None
    pending_tier = sub.pending_plan_tier if _pending(sub) else ""
    options = []
    for plan in PLANS.values():
        is_current = plan.tier == current.tier
        action = url = None
        label = "Current plan"
        if not is_current:
            going_up = plan.rank > current.rank
            if not has_paid_sub and plan.tier != PlanTier.FREE:
                # From Free (or a dead subscription) every paid plan starts in Checkout.
                url = CHECKOUT_URL
                if trial_available and plan.trial_eligible:
                    action, label = "trial", f"Start {TRIAL_DAYS}-day trial"
                else:
                    action, label = "upgrade", f"Upgrade to {plan.name}"
            elif plan.tier == PlanTier.FREE:
                action, label, url = "downgrade", "Downgrade to Free", CANCEL_URL
            elif plan.tier == pending_tier:
                action, label = "scheduled", f"Starts {_date(sub.current_period_end)}"
            else:
                action = "upgrade" if going_up else "downgrade"
                label = f"{'Upgrade' if going_up else 'Downgrade'} to {plan.name}"
                url = UPGRADE_URL if going_up else DOWNGRADE_URL
        elif pending_tier:
            action, label, url = "keep", f"Keep {plan.name}", KEEP_PLAN_URL
        if url and not endpoint_available(url):
            url = None
        options.append(PlanOption(plan=plan, price=format_cents(plan.price_cents), is_current=is_current,
                                  action=action, action_label=label, action_url=url,
                                  allowances=[(TIER_LABELS[t], plan.included[t]) for t in TIERS]))
    return {
        "org": org,
        "membership": membership,
        "can_manage": membership.is_admin,
        "options": options,
        "current_plan": current,
        "trial_available": trial_available,
        "trial_days": TRIAL_DAYS,
        "tier_costs": [(TIER_LABELS[t], TIER_CREDIT_COST[t]) for t in TIERS],
        "topup_pack_credits": TOPUP_PACK_CREDITS,
        "topup_pack_price": format_cents(TOPUP_PACK_PRICE_CENTS),
    }


# --------------------------------------------------------------------------------------------
# Invoices page: cached Stripe invoices, credit purchases, and an event history built from the rows.

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
                                    f"{name} payment failed; grace period until {_date(s.grace_period_ends_at)}"))
        if s.cancel_at_period_end and s.current_period_end and not s.ended_at:
            out.append(HistoryEvent(s.canceled_at or s.updated_at, "subscription",
                                    f"{name} set to end on {_date(s.current_period_end)}"))
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
        "portal_url": PORTAL_URL if endpoint_available(PORTAL_URL) else None,
    }

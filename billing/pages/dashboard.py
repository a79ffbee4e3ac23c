"""The billing dashboard (/settings/billing): plan card, banners, credits, tier bars and the auto
top-up form, from the typed `billing.selectors.balance_status` / `balance_summary` (read once)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.urls import reverse

from billing_project.errors import AppError
from organizations.models import Membership, Organization, SubscriptionStatus

from ..forms import FlagField
from ..plans import PLANS, TIER_CREDIT_COST, TOPUP_PACK_CREDITS, TOPUP_PACK_PRICE_CENTS, Plan, format_cents
from ..services.balance_rules import WARN_AT_PERCENT, Warning_, usage_warning
from ..selectors import AutoTopupSettings, BalanceStatus, BalanceSummary, TierStatus, balance_status, balance_summary
from ..services.auto_topup import (
    AUTO_TOPUP_CAP_MAX,
    AUTO_TOPUP_PACKS_MAX,
    AUTO_TOPUP_PACKS_MIN,
    AUTO_TOPUP_THRESHOLD_MAX,
    AUTO_TOPUP_THRESHOLD_MIN,
)
from .common import (
    AUTO_TOPUP_URL,
    KEEP_PLAN_URL,
    PORTAL_URL,
    TIER_LABELS,
    TOPUP_URL,
    current_subscription,
    date_text,
    pending_downgrade,
)


def _fill(used: int | Decimal, total: int | Decimal) -> tuple[int, str]:
    """(bar width percent 0..100, state ok|warn|full) for `used` of `total`."""
    if total <= 0:
        return (100, "full") if used > 0 else (0, "ok")
    percent = min(100, int(Decimal(used) * 100 / Decimal(total)))
    if used >= total:
        return 100, "full"
    if Decimal(used) * 100 >= Decimal(total) * WARN_AT_PERCENT:  # the bar turns amber where the warning starts
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
    pack_credits: Decimal = TOPUP_PACK_CREDITS
    pack_price: str = field(default_factory=lambda: format_cents(TOPUP_PACK_PRICE_CENTS))
    # The service's bounds, so the browser refuses what the server would (billing.services.auto_topup).
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
        state, enabled=FlagField().to_python(typed("enabled")),
        threshold=typed("threshold"), packs=typed("packs"),
        monthly_cap_packs=typed("monthly_cap_packs", "monthlyCapPacks"),
        error=_sentence(error.message), error_field=AUTO_TOPUP_ERROR_FIELDS.get(error.code, ""))


def tier_bars(summary: BalanceSummary) -> list[TierBar]:
    bars = []
    for row in summary.tiers:
        percent, state = _fill(row.used + row.overage, row.included)
        bars.append(TierBar(tier=row.tier, label=TIER_LABELS[row.tier], used=row.used, included=row.included,
                            remaining=row.remaining, overage=row.overage, percent=percent, state=state,
                            credit_cost=row.credit_cost))
    return bars


def credits_bar(summary: BalanceSummary) -> CreditsBar:
    purchased, used = summary.topup_purchased, summary.topup_used
    percent, state = _fill(used, purchased) if purchased > 0 else (0, "ok")
    return CreditsBar(purchased=purchased, used=used, remaining=summary.topup_remaining, percent=percent, state=state)


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
        elif s.next_paid_from == "plan" and usage_warning(used=included - s.plan_left, included=included) == Warning_.P80:
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


def plan_card(*, organization: Organization, summary: BalanceSummary, now: datetime) -> PlanCard:
    plan = PLANS[organization.subscription_tier]
    sub = current_subscription(organization)
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
        period_start=summary.period_start, period_end=summary.period_end,
        pending_plan=PLANS[sub.pending_plan_tier] if pending_downgrade(sub) else None,
        pending_plan_at=sub.current_period_end if pending_downgrade(sub) else None,
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


def banners(card: PlanCard) -> list[Banner]:
    out: list[Banner] = []
    if card.status == SubscriptionStatus.TRIALING:
        days = card.trial_days_left
        when = f"in {days} day{'s' if days != 1 else ''}" if days else "today"
        if card.has_payment_method:
            out.append(Banner("info", f"Your {card.plan.name} trial ends {when} ({date_text(card.trial_ends_at)}). "
                                      f"Your card on file will then be charged {card.price} a month."))
        else:
            out.append(Banner("info", f"Your {card.plan.name} trial ends {when} ({date_text(card.trial_ends_at)}). "
                                      "Add a payment method to keep the plan; otherwise the org moves to Free."))
    elif card.status in (SubscriptionStatus.PAST_DUE, SubscriptionStatus.UNPAID):
        grace = f" The {card.plan.name} plan keeps working until {date_text(card.grace_ends_at)}." \
            if card.grace_ends_at else ""
        out.append(Banner("error", f"Your last payment failed.{grace} Update your payment method to avoid "
                                   "being moved to the Free plan."))
    elif card.status in (SubscriptionStatus.CANCELED, SubscriptionStatus.INCOMPLETE_EXPIRED):
        out.append(Banner("warning", "Your subscription was canceled. You are on the Free plan's allowances."))
    elif card.status == SubscriptionStatus.INCOMPLETE:
        out.append(Banner("warning", "Your subscription is waiting for the first payment to complete."))
    if card.pending_plan is not None:
        out.append(Banner("info", f"Changes to {card.pending_plan.name} on {date_text(card.pending_plan_at)}. "
                                  f"Your {card.plan.name} allowances stay until then."))
    if card.cancel_at_period_end and card.period_end:
        out.append(Banner("warning", f"Your {card.plan.name} plan ends on {date_text(card.period_end)}; "
                                     "the org then moves to the Free plan."))
    if card.pending_upgrade is not None:
        until = (f" before {card.pending_upgrade_expires_at:%b %-d, %H:%M} UTC"
                 if card.pending_upgrade_expires_at else "")
        out.append(Banner("warning", f"Your upgrade to {card.pending_upgrade.name} is waiting for its payment: "
                                     f"you stay on {card.plan.name} until it is paid{until}.", kind="upgrade-pending",
                          links=((("Pay the invoice", card.pending_upgrade_invoice_url),)
                                 if card.pending_upgrade_invoice_url else ())))
    return out


def auto_topup_state(settings: AutoTopupSettings) -> AutoTopup:
    """The org's auto top-up settings as the form shows them."""
    return AutoTopup(enabled=settings.enabled, threshold=settings.threshold, packs=settings.packs,
                     monthly_cap_packs=settings.monthly_cap_packs)


def dashboard_context(*, membership: Membership, now: datetime, auto_topup_submitted: dict[str, Any] | None = None,
                      auto_topup_error: AppError | None = None) -> dict[str, Any]:
    """`auto_topup_submitted` + `auto_topup_error`: the refused auto top-up form, shown again as typed."""
    org = membership.organization
    status = balance_status(organization_id=org.pk, now=now)
    summary = balance_summary(organization=org, now=now, status=status)
    card = plan_card(organization=org, summary=summary, now=now)
    bars = []
    for bar, tier_state in zip(tier_bars(summary), status.tiers, strict=True):
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
        "usage_warnings": _warnings(status),
        "auto_topup": auto_topup_resubmitted(auto_topup_state(summary.auto_topup), data=auto_topup_submitted or {},
                                             error=auto_topup_error)
        if auto_topup_error is not None else auto_topup_state(summary.auto_topup),
        "portal_url": PORTAL_URL,
        "keep_plan_url": KEEP_PLAN_URL,
        "topup_url": TOPUP_URL,
        "auto_topup_url": AUTO_TOPUP_URL,
        "topup_pack_credits": TOPUP_PACK_CREDITS,
        "topup_pack_price": format_cents(TOPUP_PACK_PRICE_CENTS),
    }



"""The credit engine: charge an action tier against an org's cached balance, under a row lock.

Rules (../shared/DESIGN.md, "Rules of the credit engine"), for an action of tier T costing c(T):
  1. used[T] < included[T]            -> used[T] += 1, paid from the plan (0 credits; the last
                                         included action is free of credits too).
  2. top-up remaining >= c(T)         -> topup_used += c(T), paid from credits.
  3. overage[T] < ceil(BUFFER% * included[T])
                                      -> overage[T] += 1, owed += c(T), paid as overage
                                         (BILLING_SOFT_LIMIT_BUFFER=0 is a hard limit).
  4. else                             -> BillingError CREDITS_EXHAUSTED (HTTP 402), nothing written.

Concurrency: every writer locks the balance row (`SELECT … FOR UPDATE`) and writes it back in
the same transaction as the caller's fact row, so N parallel charges equal some serial order.
Lock order where both are needed: organization -> balance. The hot path (an existing balance in
its period) locks only the balance row and issues exactly one locked SELECT and one UPDATE, in
hand-written SQL: the ORM's per-query overhead is paid while the row lock is held, and the lock
hold time is what bounds a hot org's throughput.

Periods: paid plans get theirs from `balance_set_plan` (the Stripe subscription period); free
orgs get monthly periods anchored on the org's creation, rolled lazily here on the first read or
write after the end. A roll resets used/overage counters and keeps top-up credits.
"""
from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from dateutil.relativedelta import relativedelta
from django.conf import settings
from django.db import DatabaseError, connection, models, transaction

from billing_project.errors import NotFound
from organizations.models import Organization, PlanTier

from ..errors import BillingError
from ..models import AllowanceChange, CreditBalance
from ..notifications import notify_org_admins
from ..plans import PLANS, TIER_CREDIT_COST, TIERS, plan_for, soft_limit_buffer

logger = logging.getLogger("billing.balance")

_ZERO = Decimal("0.00")
UTC = dt.timezone.utc


class PaidFrom:
    PLAN = "plan"
    CREDITS = "credits"
    OVERAGE = "overage"


class Warning_:  # noqa: N801 - the API's warning values, not Python's Warning
    P80 = "80percent"
    P100 = "100percent"
    TOPUP = "using_topup_credits"
    BUFFER = "buffer"


#: Email kinds queued through billing.notifications (one per tier per cooldown).
EMAIL_USAGE_80 = "usage_80"
EMAIL_USAGE_100 = "usage_100"
EMAIL_OVERAGE = "overage"
EMAIL_TIER_BLOCKED = "tier_blocked"
_EMAIL_FIELD = {EMAIL_USAGE_80: "warned_80_{tier}_at", EMAIL_USAGE_100: "warned_100_{tier}_at",
                EMAIL_OVERAGE: "warned_overage_{tier}_at", EMAIL_TIER_BLOCKED: "warned_blocked_{tier}_at"}
_BLOCKED_FIELDS = tuple(f"blocked_{t}_at" for t in TIERS)


@dataclass(frozen=True)
class ChargeResult:
    tier: str
    paid_from: str              # "plan" | "credits" | "overage"
    credits_charged: Decimal    # plan: 0.00; credits: c(T) from top-up; overage: c(T) owed
    warning: str | None         # "80percent" | "100percent" | "using_topup_credits" | "buffer" | None
    balance: CreditBalance      # the balance after this charge (same object for a batch; read promptly)
    remaining: dict[str, int] = field(default_factory=dict)   # plan actions left per tier, after
    topup_remaining: Decimal = _ZERO                          # top-up credits left, after
    auto_topup_due: bool = False  # enabled and total remaining < threshold: hook for the top-up issue


@dataclass(frozen=True)
class CheckResult:
    allowed: bool
    tier: str
    paid_from: str | None       # where the next action of this tier would be paid from
    warning: str | None
    balance: CreditBalance


@dataclass(frozen=True)
class TopupCreditResult:
    balance: CreditBalance
    credited: Decimal           # credits added to topup_purchased
    settled_overage: Decimal    # of which immediately used to settle owed overage


# ---------------------------------------------------------------------------------------------
# Row <-> object, hand-written SQL for the hot path.

_FIELDS: list[models.Field] = list(CreditBalance._meta.concrete_fields)
_ATTNAMES = [f.attname for f in _FIELDS]
_COLUMN = {f.attname: f.column for f in _FIELDS}
_DT_IDX = [i for i, f in enumerate(_FIELDS) if isinstance(f, models.DateTimeField)]
_BOOL_IDX = [i for i, f in enumerate(_FIELDS) if isinstance(f, models.BooleanField)]
_ORG_IDX = _ATTNAMES.index("organization_id")
_TABLE = CreditBalance._meta.db_table
_SELECT = f"SELECT {', '.join(f.column for f in _FIELDS)} FROM {_TABLE} WHERE organization_id = %s"
_SELECT_FOR_UPDATE = _SELECT + " FOR UPDATE"
_UPDATE_SQL_CACHE: dict[tuple[str, ...], str] = {}


def org_id_hex(organization_id: Any) -> str:
    """The DB form of an org id (char(32) hex on MariaDB); NotFound for anything not a UUID."""
    if isinstance(organization_id, uuid.UUID):
        return organization_id.hex
    try:
        return uuid.UUID(str(organization_id)).hex
    except (ValueError, AttributeError, TypeError):
        raise NotFound("organization not found", code="ORG_NOT_FOUND") from None


def db_datetime(value: dt.datetime) -> dt.datetime:
    """Aware -> naive UTC, the MySQL backend's storage form under USE_TZ."""
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def _from_row(row: tuple) -> CreditBalance:
    values = list(row)
    for i in _DT_IDX:
        if values[i] is not None:
            values[i] = values[i].replace(tzinfo=UTC)
    for i in _BOOL_IDX:
        values[i] = bool(values[i])
    values[_ORG_IDX] = uuid.UUID(values[_ORG_IDX])
    balance = CreditBalance.from_db("default", _ATTNAMES, values)
    balance._changed = set()  # attnames written since the read (see _save_changes)
    return balance


def _fetch(org_hex: str, *, lock: bool) -> CreditBalance | None:
    if connection.vendor != "mysql":  # SQLite (make run's default): the ORM, which converts types
        qs = CreditBalance.objects.filter(organization_id=uuid.UUID(org_hex))
        balance = (qs.select_for_update() if lock else qs).first()
        if balance is not None:
            balance._changed = set()
        return balance
    with connection.cursor() as cursor:
        cursor.execute(_SELECT_FOR_UPDATE if lock else _SELECT, [org_hex])
        row = cursor.fetchone()
    return _from_row(row) if row is not None else None


def _mark(balance: CreditBalance, attname: str, value: Any) -> None:
    setattr(balance, attname, value)
    balance._changed.add(attname)


def balance_update_statement(balance: CreditBalance, *, now: dt.datetime) -> tuple[str, list] | None:
    """The one UPDATE (changed columns + version + updated_at) that writes `balance`'s pending
    changes, or None. The in-memory balance counts as written: the caller must execute the
    statement in the same transaction, under the lock it holds (e.g. sent together with its own
    INSERT as one multi-statement round trip, which shortens the time the row stays locked)."""
    changed = tuple(sorted(getattr(balance, "_changed", ()) or ()))
    if not changed:
        return None
    sql = _UPDATE_SQL_CACHE.get(changed)
    if sql is None:
        sets = ", ".join(f"{_COLUMN[a]} = %s" for a in changed)
        sql = f"UPDATE {_TABLE} SET {sets}, version = version + 1, updated_at = %s WHERE id = %s"
        _UPDATE_SQL_CACHE[changed] = sql
    params = [_db_value(getattr(balance, a)) for a in changed]
    params += [db_datetime(now), balance.pk]
    balance.version += 1
    balance.updated_at = now
    balance._changed = set()
    return sql, params


def _save_changes(balance: CreditBalance, *, now: dt.datetime) -> None:
    """One UPDATE of the changed columns (+ version, updated_at). Caller holds the row lock."""
    statement = balance_update_statement(balance, now=now)
    if statement is None:
        return
    with connection.cursor() as cursor:
        cursor.execute(*statement)


def _db_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return db_datetime(value)
    return value


# ---------------------------------------------------------------------------------------------
# Periods.

def free_period(*, anchor: dt.datetime, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The monthly period containing `now`, anchored on `anchor` (the org's creation). Each
    boundary is `anchor + k months` (day clamped, so a 31st anchor gives Feb 28 then Mar 31)."""
    months = max((now.year - anchor.year) * 12 + (now.month - anchor.month), 0)
    start = anchor + relativedelta(months=months)
    while months > 0 and start > now:
        months -= 1
        start = anchor + relativedelta(months=months)
    end = anchor + relativedelta(months=months + 1)
    while end <= now:
        months += 1
        start, end = end, anchor + relativedelta(months=months + 1)
    return start, end


def _set_included(balance: CreditBalance, plan_tier: str) -> None:
    plan = plan_for(plan_tier)
    _mark(balance, "plan_tier", plan_tier)
    for t in TIERS:
        _mark(balance, f"included_{t}", plan.included[t])
    _clear_unblocked(balance)


def _reset_usage(balance: CreditBalance) -> None:
    for t in TIERS:
        _mark(balance, f"used_{t}", 0)
        _mark(balance, f"overage_{t}", 0)
        if balance.blocked_at(t) is not None:  # a new period: nothing is blocked yet
            _mark(balance, f"blocked_{t}_at", None)


def _clear_unblocked(balance: CreditBalance) -> None:
    """Forget the block of every tier whose next action would now be accepted (a purchase, a plan
    change, or credits still there), so "blocked since" and the next refusal's record stay true.
    In memory (caller saves); free unless some tier is marked blocked."""
    for t, attname in zip(TIERS, _BLOCKED_FIELDS, strict=True):
        if getattr(balance, attname) is not None and _decide(balance, t) is not None:
            _mark(balance, attname, None)


def _roll_if_due(balance: CreditBalance, *, now: dt.datetime, org_created_at: dt.datetime | None = None) -> bool:
    """Free orgs: move to the period containing `now` (in memory; caller saves). Paid orgs keep
    their period until balance_set_plan brings the next one from the subscription."""
    if now < balance.period_end or balance.plan_tier != PlanTier.FREE:
        return False
    if org_created_at is None:
        org_created_at = Organization.objects.values_list("created_at", flat=True).get(pk=balance.organization_id)
    start, end = free_period(anchor=org_created_at, now=now)
    _mark(balance, "period_start", start)
    _mark(balance, "period_end", end)
    _reset_usage(balance)
    _set_included(balance, PlanTier.FREE)
    return True


def _new_balance(org: Organization, *, now: dt.datetime) -> CreditBalance:
    """A fresh balance for `org` (unsaved): its plan's allowances, a monthly period anchored on
    the org's creation (paid orgs get the real one from balance_set_plan)."""
    start, end = free_period(anchor=org.created_at, now=now)
    balance = CreditBalance(organization_id=org.pk, period_start=start, period_end=end,
                            plan_tier=org.subscription_tier, updated_at=now)
    for t in TIERS:
        setattr(balance, f"included_{t}", plan_for(org.subscription_tier).included[t])
    balance._changed = set()
    return balance


# ---------------------------------------------------------------------------------------------
# Locking and reading.

def balance_for_update(*, organization_id: Any, now: dt.datetime) -> CreditBalance:
    """Lock the org's balance row for this transaction (create it, or roll a free org's period,
    if needed) and return it. Must run inside transaction.atomic(). NotFound ORG_NOT_FOUND."""
    if not connection.in_atomic_block:
        raise RuntimeError("balance_for_update must be called inside transaction.atomic()")
    org_hex = org_id_hex(organization_id)
    balance = _fetch(org_hex, lock=True)
    if balance is None:
        # Lock order organization -> balance; the org lock also serializes concurrent creators.
        org = Organization.objects.select_for_update().filter(pk=uuid.UUID(org_hex)).first()
        if org is None:
            raise NotFound("organization not found", code="ORG_NOT_FOUND")
        balance = _fetch(org_hex, lock=True)
        if balance is None:
            balance = _new_balance(org, now=now)
            balance.full_clean(exclude=["organization"])
            balance.save(force_insert=True)
            balance._changed = set()
            logger.info("credit balance created for org %s (%s)", org.pk, org.subscription_tier)
            return balance
    if _roll_if_due(balance, now=now):
        _save_changes(balance, now=now)
        logger.info("free period rolled for org %s to %s", balance.organization_id, balance.period_start)
    return balance


def balance_read(*, organization_id: Any, now: dt.datetime) -> CreditBalance:
    """The balance as it stands at `now`, without writing or locking: a missing row or an ended
    free period is computed in memory (the next write persists it)."""
    org_hex = org_id_hex(organization_id)
    balance = _fetch(org_hex, lock=False)
    if balance is None:
        org = Organization.objects.filter(pk=uuid.UUID(org_hex)).first()
        if org is None:
            raise NotFound("organization not found", code="ORG_NOT_FOUND")
        return _new_balance(org, now=now)
    _roll_if_due(balance, now=now)
    return balance


# ---------------------------------------------------------------------------------------------
# The rules.

def balance_total_remaining(balance: CreditBalance) -> Decimal:
    """Plan remainder at tier rates + top-up remainder (what auto top-up compares to its threshold)."""
    plan_part = sum((TIER_CREDIT_COST[t] * balance.plan_remaining(t) for t in TIERS), _ZERO)
    return plan_part + balance.topup_remaining


def buffer_actions(balance: CreditBalance, tier: str) -> int:
    """Overage actions the soft-limit buffer allows this period for `tier`."""
    return soft_limit_buffer(included=balance.included(tier), buffer_percent=settings.BILLING_SOFT_LIMIT_BUFFER)


def _plan_warning(used_after: int, included: int) -> str | None:
    if used_after >= included:
        return Warning_.P100
    if used_after * 100 >= 80 * included:
        return Warning_.P80
    return None


def _decide(balance: CreditBalance, tier: str) -> tuple[str, Decimal, str | None] | None:
    """(paid_from, credits, warning) for the next action of `tier`, or None when refused."""
    used, included = balance.used(tier), balance.included(tier)
    if used < included:
        return PaidFrom.PLAN, _ZERO, _plan_warning(used + 1, included)
    cost = TIER_CREDIT_COST[tier]
    if balance.topup_remaining >= cost:
        return PaidFrom.CREDITS, cost, Warning_.TOPUP
    if balance.overage(tier) < buffer_actions(balance, tier):
        return PaidFrom.OVERAGE, cost, Warning_.BUFFER
    return None


def next_paid_from(balance: CreditBalance, tier: str) -> str | None:
    """Where the next action of `tier` would be paid from ("plan" | "credits" | "overage"), or None
    when it would be refused (the tier is blocked)."""
    decision = _decide(balance, tier)
    return decision[0] if decision is not None else None


def validate_tier(tier: Any) -> str:
    if not isinstance(tier, str) or tier not in TIER_CREDIT_COST:
        raise BillingError(f"actionTier must be one of {', '.join(TIERS)}", code="INVALID_ACTION_TIER",
                           http_status=400)
    return tier


def _next_plan(plan_tier: str) -> str | None:
    rank = PLANS[plan_tier].rank
    higher = sorted((p for p in PLANS.values() if p.rank > rank), key=lambda p: p.rank)
    return higher[0].tier if higher else None


def remaining_by_tier(balance: CreditBalance) -> dict[str, int]:
    return {t: balance.plan_remaining(t) for t in TIERS}


def credits_exhausted_error(balance: CreditBalance, tier: str) -> BillingError:
    org = balance.organization_id
    base = settings.APP_BASE_URL.rstrip("/")
    return BillingError(
        f"no {tier} actions left: plan allowance, top-up credits and soft-limit buffer are used up",
        code="CREDITS_EXHAUSTED", http_status=402,
        extra={
            "actionTier": tier,
            "creditsRequired": str(TIER_CREDIT_COST[tier]),
            "remainingCredits": remaining_by_tier(balance),
            "topupRemaining": str(balance.topup_remaining),
            "suggestedPlan": _next_plan(balance.plan_tier),
            "canTopUp": True,
            "upgradeUrl": f"{base}/settings/billing?org={org}#plans",
            "topUpUrl": f"{base}/settings/billing?org={org}#credits",
        },
    )


def _email_context(balance: CreditBalance, *, kind: str, tier: str, now: dt.datetime) -> dict[str, Any]:
    context = {
        "tier": tier, "used": balance.used(tier), "included": balance.included(tier),
        "overage": balance.overage(tier), "topup_remaining": str(balance.topup_remaining),
        "period_end": balance.period_end.isoformat(),
    }
    if kind == EMAIL_TIER_BLOCKED:
        context.update(blocked_at=now.isoformat(), limit=buffer_actions(balance, tier),
                       credit_cost=str(TIER_CREDIT_COST[tier]), owed=str(balance.overage_credits_owed),
                       suggested_plan=_next_plan(balance.plan_tier))
    return context


def _maybe_email(balance: CreditBalance, *, kind: str, tier: str, now: dt.datetime, notify: bool = True) -> None:
    attname = _EMAIL_FIELD[kind].format(tier=tier)
    last = getattr(balance, attname)
    if last is not None and now - last < dt.timedelta(hours=settings.BILLING_WARNING_COOLDOWN_HOURS):
        return
    _mark(balance, attname, now)
    balance._email_due = True
    if not notify:
        return
    notify_org_admins(organization_id=balance.organization_id, kind=kind,
                      context=_email_context(balance, kind=kind, tier=tier, now=now))


def _apply(balance: CreditBalance, tier: str, *, now: dt.datetime, notify: bool = True) -> ChargeResult:
    """Charge one action in memory (caller holds the lock and saves). Raises CREDITS_EXHAUSTED.
    notify=False: a due warning email is only flagged (balance._email_due), not queued."""
    if balance.blocked_small_at or balance.blocked_medium_at or balance.blocked_large_at or balance.blocked_xl_at:
        _clear_unblocked(balance)
    decision = _decide(balance, tier)
    if decision is None:
        error = credits_exhausted_error(balance, tier)
        error.refused_balance = balance  # for balance_record_refusal, once the caller rolled back
        raise error
    paid_from, cost, warning = decision
    if paid_from == PaidFrom.PLAN:
        before, included = balance.used(tier), balance.included(tier)
        _mark(balance, f"used_{tier}", before + 1)
        if before + 1 == included:
            _maybe_email(balance, kind=EMAIL_USAGE_100, tier=tier, now=now, notify=notify)
        elif before * 100 < 80 * included <= (before + 1) * 100:
            _maybe_email(balance, kind=EMAIL_USAGE_80, tier=tier, now=now, notify=notify)
    elif paid_from == PaidFrom.CREDITS:
        _mark(balance, "topup_used", balance.topup_used + cost)
    else:
        before = balance.overage(tier)
        _mark(balance, f"overage_{tier}", before + 1)
        _mark(balance, "overage_credits_owed", balance.overage_credits_owed + cost)
        if before == 0:
            _maybe_email(balance, kind=EMAIL_OVERAGE, tier=tier, now=now, notify=notify)
    auto_due = balance.auto_topup_enabled and balance_total_remaining(balance) < balance.auto_topup_threshold
    return ChargeResult(tier=tier, paid_from=paid_from, credits_charged=cost, warning=warning, balance=balance,
                        remaining=remaining_by_tier(balance), topup_remaining=balance.topup_remaining,
                        auto_topup_due=auto_due)


def balance_charge(*, organization_id: Any, tier: str, now: dt.datetime, write: bool = True) -> ChargeResult:
    """Lock the org's balance and charge one action of `tier` (rules above). Must be called
    inside transaction.atomic(), which must also write the action's fact row. Raises
    BillingError INVALID_ACTION_TIER (400) / CREDITS_EXHAUSTED (402), NotFound ORG_NOT_FOUND.
    write=False leaves the UPDATE to the caller: execute balance_update_statement(result.balance)
    in the same transaction."""
    validate_tier(tier)
    balance = balance_for_update(organization_id=organization_id, now=now)
    result = _apply(balance, tier, now=now)
    if write:
        _save_changes(balance, now=now)
    return result


#: The hot path's locking read, for a caller that sends it in one round trip with START TRANSACTION.
BALANCE_LOCK_SQL = _SELECT_FOR_UPDATE


def balance_charge_row(*, row: tuple, tier: str, now: dt.datetime) -> ChargeResult | None:
    """The hot path's charge: `row` is this org's balance as read by BALANCE_LOCK_SQL in the
    caller's open transaction (so locked). Applies the rules in memory; the caller writes
    balance_update_statement(result.balance) in the same transaction. Returns None - the caller
    then rolls back and uses balance_charge - when this charge needs more than one UPDATE and a
    fact row: a free period to roll, a warning email to queue on commit, or an auto top-up due.
    Raises CREDITS_EXHAUSTED like balance_charge."""
    validate_tier(tier)
    balance = _from_row(row)
    if now >= balance.period_end and balance.plan_tier == PlanTier.FREE:
        return None
    balance._email_due = False
    result = _apply(balance, tier, now=now, notify=False)
    if balance._email_due or result.auto_topup_due:
        return None
    return result


def balance_charge_many(*, balance: CreditBalance, tiers: list[str], now: dt.datetime, write: bool = True
                        ) -> list[ChargeResult | BillingError]:
    """Charge several actions, in order, against a balance the caller locked with
    balance_for_update in this transaction; one UPDATE at the end (write=False: the caller
    executes balance_update_statement). Per item: the ChargeResult, or the CREDITS_EXHAUSTED
    error (nothing charged for that item; later items still tried)."""
    out: list[ChargeResult | BillingError] = []
    for tier in tiers:
        validate_tier(tier)
        try:
            out.append(_apply(balance, tier, now=now))
        except BillingError as exc:
            out.append(exc)
            if exc.code == "CREDITS_EXHAUSTED" and balance.blocked_at(tier) is None:
                # This transaction commits (other items were charged): the block goes in its UPDATE.
                _mark(balance, f"blocked_{tier}_at", now)
                _maybe_email(balance, kind=EMAIL_TIER_BLOCKED, tier=tier, now=now)
    if write:
        _save_changes(balance, now=now)
    return out


def balance_record_refusal(*, error: BillingError, now: dt.datetime) -> bool:
    """Record a refused action (402 CREDITS_EXHAUSTED from balance_charge / balance_charge_row) once
    its transaction rolled back: the first refusal of the tier in the period sets blocked_<tier>_at
    and queues the tier_blocked email to the admins (BILLING_WARNING_COOLDOWN_HOURS per tier, like
    the warnings). Returns True when this call recorded the block.

    Cheap on the hot path: a refusal whose locked read already showed the tier blocked does no I/O;
    the first one is a conditional UPDATE (… WHERE blocked_<tier>_at IS NULL and the row is still
    in the state that was refused, so a purchase landing meanwhile is not overwritten by a stale
    block), then, if it won, a second conditional UPDATE that claims the email's cooldown slot.
    Concurrent first refusals: one UPDATE matches, one email."""
    balance: CreditBalance | None = getattr(error, "refused_balance", None)
    tier = (error.extra or {}).get("actionTier")
    if balance is None or tier not in TIER_CREDIT_COST or balance.blocked_at(tier) is not None:
        return False
    rows = CreditBalance.objects.filter(
        pk=balance.pk, period_start=balance.period_start, plan_tier=balance.plan_tier,
        **{f"blocked_{tier}_at__isnull": True, f"included_{tier}": balance.included(tier),
           f"used_{tier}__gte": balance.included(tier), f"overage_{tier}__gte": buffer_actions(balance, tier)},
        topup_purchased__lt=models.F("topup_used") + TIER_CREDIT_COST[tier])
    cutoff = now - dt.timedelta(hours=settings.BILLING_WARNING_COOLDOWN_HOURS)
    warned = f"warned_blocked_{tier}_at"
    try:
        with transaction.atomic():
            if not rows.update(**{f"blocked_{tier}_at": now}, version=models.F("version") + 1, updated_at=now):
                return False
            emailed = (CreditBalance.objects.filter(pk=balance.pk)
                       .filter(models.Q(**{f"{warned}__isnull": True}) | models.Q(**{f"{warned}__lte": cutoff}))
                       .update(**{warned: now}))
            if emailed:  # queued on commit, through the Celery task, like the warnings
                notify_org_admins(organization_id=balance.organization_id, kind=EMAIL_TIER_BLOCKED,
                                  context=_email_context(balance, kind=EMAIL_TIER_BLOCKED, tier=tier, now=now))
    except DatabaseError:  # the caller's 402 still goes out; the next refusal tries again
        logger.exception("could not record the %s block of org %s", tier, balance.organization_id)
        return False
    logger.info("tier blocked org=%s tier=%s at=%s emailed=%s", balance.organization_id, tier, now, bool(emailed))
    return True


def balance_check(*, organization_id: Any, tier: str, now: dt.datetime) -> CheckResult:
    """Would an action of `tier` be accepted now, and paid from where? Reads only."""
    validate_tier(tier)
    balance = balance_read(organization_id=organization_id, now=now)
    decision = _decide(balance, tier)
    if decision is None:
        return CheckResult(allowed=False, tier=tier, paid_from=None, warning=None, balance=balance)
    return CheckResult(allowed=True, tier=tier, paid_from=decision[0], warning=decision[2], balance=balance)


# ---------------------------------------------------------------------------------------------
# Plan changes and top-ups (called by the subscription / top-up services).

def balance_set_plan(*, organization_id: Any, plan_tier: str, now: dt.datetime,
                     period_start: dt.datetime | None = None, period_end: dt.datetime | None = None,
                     reset_usage: bool = False) -> CreditBalance:
    """Apply `plan_tier`'s allowances.

    reset_usage=True: a new period starts (Stripe renewal, downgrade at period end, new
    subscription): used/overage reset, top-up credits roll over. Idempotent for a redelivered
    event: the same period_start again does not reset twice.
    reset_usage=False: upgrade now, used counts kept; period bounds updated only if given.
    """
    if plan_tier not in PLANS:
        raise BillingError(f"unknown plan {plan_tier!r}", code="INVALID_PLAN")
    with transaction.atomic():
        balance = balance_for_update(organization_id=organization_id, now=now)
        if reset_usage:
            start = period_start or now
            end = period_end or (start + relativedelta(months=1))
            if start < balance.period_start and plan_tier == balance.plan_tier:
                # Periods never move back: the same plan's earlier period is older news (a delayed
                # event); resetting to it would drop this period's usage.
                logger.info("balance org=%s: earlier period %s of plan %s ignored (period %s applied)",
                            balance.organization_id, start, plan_tier, balance.period_start)
                return balance
            if start != balance.period_start:
                _reset_usage(balance)
            _mark(balance, "period_start", start)
            _mark(balance, "period_end", end)
        else:
            if period_start is not None:
                _mark(balance, "period_start", period_start)
            if period_end is not None:
                _mark(balance, "period_end", period_end)
        if balance.period_end <= balance.period_start:
            raise BillingError("period_end must be after period_start", code="INVALID_PERIOD")
        _set_included(balance, plan_tier)
        _save_changes(balance, now=now)
    logger.info("balance plan set org=%s plan=%s reset=%s period=%s..%s", balance.organization_id, plan_tier,
                reset_usage, balance.period_start, balance.period_end)
    return balance


def prorated_included(*, from_plan: str, plan_tier: str, base: dict[str, int], period_start: dt.datetime,
                      period_end: dt.datetime, effective_at: dt.datetime) -> dict[str, int]:
    """The allowances after an upgrade inside a period: `base` (what the period had) plus each tier's
    added allowance (new plan's included - old plan's) prorated by the time left, rounded up — as
    Stripe prorates the price: ceil(added * left / period), in whole seconds."""
    length = max(1, int((period_end - period_start).total_seconds()))
    left = min(length, max(0, int((period_end - effective_at).total_seconds())))
    out = {}
    for t in TIERS:
        added = max(0, PLANS[plan_tier].included[t] - PLANS[from_plan].included[t])
        out[t] = min(PLANS[plan_tier].included[t], base[t] + -(-added * left // length))
    return out


def allowances_in_effect(*, balances: list[CreditBalance]) -> dict[Any, dict[str, int]]:
    """org id -> the allowances an upgrade within the balance's current period left it with (the
    recorded AllowanceChange for that period and plan), for the balances that have one. One query."""
    if not balances:
        return {}
    wanted = {(b.organization_id, b.period_start, b.plan_tier) for b in balances}
    rows = AllowanceChange.objects.filter(organization_id__in=[b.organization_id for b in balances],
                                          period_start__in={b.period_start for b in balances})
    return {row.organization_id: row.included() for row in rows
            if (row.organization_id, row.period_start, row.to_plan_tier) in wanted}


def balance_upgrade_prorated(*, organization_id: Any, from_plan: str, plan_tier: str, period_start: dt.datetime,
                             period_end: dt.datetime, effective_at: dt.datetime, now: dt.datetime,
                             included: dict[str, int] | None = None) -> dict[str, int]:
    """Upgrade within the balance's current period: used counts kept, allowances = `included` if given
    (a recorded change, replayed) else `prorated_included` from the balance's allowances now. A balance
    in another period (the upgrade came with a new period) gets the plan's full allowance instead.
    Returns the allowances set."""
    if plan_tier not in PLANS or from_plan not in PLANS:
        raise BillingError(f"unknown plan {plan_tier!r}/{from_plan!r}", code="INVALID_PLAN")
    with transaction.atomic():
        balance = balance_for_update(organization_id=organization_id, now=now)
        if balance.period_start != period_start:
            logger.info("balance org=%s: upgrade to %s with another period %s (balance %s): full allowance",
                        balance.organization_id, plan_tier, period_start, balance.period_start)
            if period_start > balance.period_start:
                _reset_usage(balance)
                _mark(balance, "period_start", period_start)
            _mark(balance, "period_end", period_end)
            _set_included(balance, plan_tier)
            _save_changes(balance, now=now)
            return {t: balance.included(t) for t in TIERS}
        if included is None:
            included = prorated_included(from_plan=from_plan, plan_tier=plan_tier,
                                         base={t: balance.included(t) for t in TIERS}, period_start=period_start,
                                         period_end=period_end, effective_at=effective_at)
        _mark(balance, "plan_tier", plan_tier)
        _mark(balance, "period_end", period_end)
        for t in TIERS:
            _mark(balance, f"included_{t}", included[t])
        _save_changes(balance, now=now)
    logger.info("balance upgraded org=%s %s->%s prorated from %s: %s", balance.organization_id, from_plan,
                plan_tier, effective_at, included)
    return dict(included)


def balance_add_topup_credits(*, organization_id: Any, amount: Decimal, now: dt.datetime) -> TopupCreditResult:
    """Credit purchased top-up credits; owed overage is settled from them first."""
    if not isinstance(amount, Decimal) or amount <= 0 or amount != amount.quantize(Decimal("0.01")):
        raise BillingError("top-up amount must be a positive Decimal with 2 places", code="INVALID_AMOUNT")
    with transaction.atomic():
        balance = balance_for_update(organization_id=organization_id, now=now)
        _mark(balance, "topup_purchased", balance.topup_purchased + amount)
        settle = min(balance.overage_credits_owed, balance.topup_remaining)
        if settle > 0:
            _mark(balance, "topup_used", balance.topup_used + settle)
            _mark(balance, "overage_credits_owed", balance.overage_credits_owed - settle)
        _clear_unblocked(balance)
        _save_changes(balance, now=now)
    logger.info("top-up credited org=%s amount=%s settled_overage=%s", balance.organization_id, amount, settle)
    return TopupCreditResult(balance=balance, credited=amount, settled_overage=settle)

"""The credit engine's storage: an org's cached balance row, locked and written with hand-written
SQL, and its lifecycle (creation, the free period's lazy roll, plan changes, top-up credits, the
record of a refused tier). The engine in three modules, each small enough to hold in one's head:

- `billing.services.balance_rules`: the rules, pure (which bucket pays, the API's warnings - the
  80 % rule lives there once -, which email is due, what a refusal says). No I/O.
- this module: the storage - the row <-> object conversion, the locking read and the one UPDATE of
  the changed columns - and the services that lock the row and apply the rules to it. SQL that
  differs between engines is chosen here, from the connection's vendor and features, when a
  statement is built; everything else runs the same on MariaDB, MySQL 8 and SQLite (`make run`).
- `billing.services.charge`: the charge unit of work (`balance_charge_session`) through which the
  usage API records actions. It owns the lock, the UPDATE, the single round trip that carries the
  caller's fact INSERT with them, the auto top-up trigger and the refusal record, so `usage`
  never handles billing's SQL or finishes billing's work.

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
from collections.abc import Sequence
from dataclasses import dataclass
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
from ..plans import PLANS, TIER_CREDIT_COST, TIERS, plan_for
from .balance_rules import (
    EMAIL_FIELD,
    EMAIL_OVERAGE,
    EMAIL_TIER_BLOCKED,
    ChargeResult,
    CheckResult,
    PaidFrom,
    Warning_,
    balance_total_remaining,
    buffer_actions,
    credits_exhausted_error,
    decide,
    email_context,
    email_cooled_down,
    free_period,
    next_paid_from,
    next_plan,
    prorated_included,
    remaining_by_tier,
    usage_email_crossed,
    validate_tier,
)

__all__ = [  # the rules' names, re-exported: callers import the engine from here
    "ChargeResult", "CheckResult", "PaidFrom", "Warning_", "balance_total_remaining", "buffer_actions",
    "free_period", "next_paid_from", "prorated_included", "remaining_by_tier", "validate_tier",
]
_next_plan = next_plan  # billing.selectors imports it under this name

logger = logging.getLogger("billing.balance")

UTC = dt.timezone.utc
_BLOCKED_FIELDS = tuple(f"blocked_{t}_at" for t in TIERS)


@dataclass(frozen=True)
class TopupCreditResult:
    balance: CreditBalance
    credited: Decimal           # credits added to topup_purchased
    settled_overage: Decimal    # of which immediately used to settle owed overage


# ---------------------------------------------------------------------------------------------
# Storage: row <-> object, the locking read, the one UPDATE, one round trip.

_FIELDS: list[models.Field] = list(CreditBalance._meta.concrete_fields)
_ATTNAMES = [f.attname for f in _FIELDS]
_COLUMN = {f.attname: f.column for f in _FIELDS}
_TABLE = CreditBalance._meta.db_table
_SELECT = f"SELECT {', '.join(f.column for f in _FIELDS)} FROM {_TABLE} WHERE organization_id = %s"
_SELECT_FOR_UPDATE = _SELECT + " FOR UPDATE"  # also what bench/engine_bench.py's raw ceiling issues
_UPDATE_SQL_CACHE: dict[tuple[str, ...], str] = {}
_CONVERTERS: dict[str, list[tuple[int, list, Any]]] = {}  # vendor -> [(column index, converters, expression)]


def org_id_hex(organization_id: Any) -> str:
    """The DB form of an org id (char(32) hex on MariaDB); NotFound for anything not a UUID."""
    if isinstance(organization_id, uuid.UUID):
        return organization_id.hex
    try:
        return uuid.UUID(str(organization_id)).hex
    except (ValueError, AttributeError, TypeError):
        raise NotFound("organization not found", code="ORG_NOT_FOUND") from None


def db_datetime(value: dt.datetime) -> dt.datetime:
    """Aware -> naive UTC, the storage form of Django's MySQL and SQLite backends under USE_TZ."""
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def balance_lock_sql() -> str:
    """The locking read of an org's balance row. SQLite has no FOR UPDATE (it locks the database
    for a writing transaction), so there the same SELECT goes without it."""
    return _SELECT_FOR_UPDATE if connection.features.has_select_for_update else _SELECT


def _converters() -> list[tuple[int, list, Any]]:
    """The backend's own converters for the balance's columns (what the ORM applies to a row: aware
    datetimes, bools, UUIDs; exact decimals on SQLite), looked up once per engine."""
    found = _CONVERTERS.get(connection.vendor)
    if found is None:
        found = []
        for i, f in enumerate(_FIELDS):
            expression = f.get_col(_TABLE)
            converters = connection.ops.get_db_converters(expression) + f.get_db_converters(connection)
            if converters:
                found.append((i, converters, expression))
        _CONVERTERS[connection.vendor] = found
    return found


def balance_from_row(row: Sequence) -> CreditBalance:
    """The balance of a row read by balance_lock_sql() (columns in model order)."""
    values = list(row)
    for i, converters, expression in _converters():
        value = values[i]
        for convert in converters:
            value = convert(value, expression, connection)
        values[i] = value
    balance = CreditBalance.from_db("default", _ATTNAMES, values)
    balance._changed = set()  # attnames written since the read (see balance_update_statement)
    return balance


def _fetch(org_hex: str, *, lock: bool) -> CreditBalance | None:
    with connection.cursor() as cursor:
        cursor.execute(balance_lock_sql() if lock else _SELECT, [org_hex])
        row = cursor.fetchone()
    return balance_from_row(row) if row is not None else None


def _mark(balance: CreditBalance, attname: str, value: Any) -> None:
    setattr(balance, attname, value)
    balance._changed.add(attname)


def balance_update_statement(balance: CreditBalance, *, now: dt.datetime) -> tuple[str, list] | None:
    """The one UPDATE (changed columns + version + updated_at) that writes `balance`'s pending
    changes, or None. The in-memory balance counts as written: the statement must run in the same
    transaction, under the lock (the charge session sends it with the caller's statements)."""
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


@dataclass(frozen=True)
class Sent:
    """What each statement of one round trip answered (by position)."""
    rows: list[list]            # fetched rows (INSERT … RETURNING, SELECT); [] for none
    rowcounts: list[int]
    lastrowids: list[int | None]


def statements_send(cursor, statements: list[tuple[str, list]]) -> Sent:
    """Run (sql, params) statements in order: on MariaDB/MySQL as ONE multi-statement round trip
    (mysqlclient connects with CLIENT_MULTI_STATEMENTS; every value is still escaped by the
    driver; the server stops at the first failing statement), elsewhere one by one."""
    rows: list[list] = []
    counts: list[int] = []
    ids: list[int | None] = []
    multi = connection.vendor == "mysql"
    if multi:
        cursor.execute("; ".join(sql for sql, _ in statements), [p for _, params in statements for p in params])
    for n, (sql, params) in enumerate(statements):
        if not multi:
            cursor.execute(sql, params)
        elif n:
            cursor.nextset()
        rows.append(list(cursor.fetchall()) if cursor.description else [])
        counts.append(cursor.rowcount)
        ids.append(cursor.lastrowid)
    return Sent(rows=rows, rowcounts=counts, lastrowids=ids)


# ---------------------------------------------------------------------------------------------
# Periods and the balance's lifecycle.

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
        if getattr(balance, attname) is not None and decide(balance, t) is not None:
            _mark(balance, attname, None)


def free_period_roll_if_due(balance: CreditBalance, *, now: dt.datetime, org_created_at: dt.datetime | None = None) -> bool:
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
    if free_period_roll_if_due(balance, now=now):
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
    free_period_roll_if_due(balance, now=now)
    return balance


# ---------------------------------------------------------------------------------------------
# Charging a locked balance in memory (the rules applied; the caller writes the UPDATE).

@dataclass(frozen=True)
class DueEmail:
    """An email the rules made due, claimed in the balance (its warned_*_at is set in the same
    UPDATE) and queued once that UPDATE's transaction commits."""
    kind: str
    tier: str
    context: dict[str, Any]


def _email_due(balance: CreditBalance, *, kind: str, tier: str, now: dt.datetime, due: list[DueEmail]) -> None:
    if not email_cooled_down(balance, kind=kind, tier=tier, now=now):
        return
    _mark(balance, EMAIL_FIELD[kind].format(tier=tier), now)
    due.append(DueEmail(kind=kind, tier=tier, context=email_context(balance, kind=kind, tier=tier, now=now)))


def emails_queue(balance: CreditBalance, emails: list[DueEmail]) -> None:
    """Queue `emails` to the org's admins (on commit of the current transaction; at once outside one)."""
    for email in emails:
        notify_org_admins(organization_id=balance.organization_id, kind=email.kind, context=email.context)


def charge_apply(balance: CreditBalance, tier: str, *, now: dt.datetime, emails: list[DueEmail]) -> ChargeResult:
    """Charge one action of a valid `tier` to a locked `balance`, in memory (the caller writes the
    UPDATE). A warning email made due goes to `emails`. Raises CREDITS_EXHAUSTED, nothing charged;
    the error carries the refused balance for balance_record_refusal."""
    if balance.blocked_small_at or balance.blocked_medium_at or balance.blocked_large_at or balance.blocked_xl_at:
        _clear_unblocked(balance)
    decision = decide(balance, tier)
    if decision is None:
        error = credits_exhausted_error(balance, tier)
        error.refused_balance = balance  # for balance_record_refusal, once the caller rolled back
        raise error
    cost = decision.credits
    if decision.paid_from == PaidFrom.PLAN:
        before, included = balance.used(tier), balance.included(tier)
        _mark(balance, f"used_{tier}", before + 1)
        kind = usage_email_crossed(used_before=before, included=included)
        if kind is not None:
            _email_due(balance, kind=kind, tier=tier, now=now, due=emails)
    elif decision.paid_from == PaidFrom.CREDITS:
        _mark(balance, "topup_used", balance.topup_used + cost)
    else:
        before = balance.overage(tier)
        _mark(balance, f"overage_{tier}", before + 1)
        _mark(balance, "overage_credits_owed", balance.overage_credits_owed + cost)
        if before == 0:
            _email_due(balance, kind=EMAIL_OVERAGE, tier=tier, now=now, due=emails)
    return ChargeResult(tier=tier, paid_from=decision.paid_from, credits_charged=cost, warning=decision.warning,
                        balance=balance, remaining=remaining_by_tier(balance),
                        topup_remaining=balance.topup_remaining)


def charge_apply_or_block(balance: CreditBalance, tier: str, *, now: dt.datetime, emails: list[DueEmail]
                          ) -> ChargeResult | BillingError:
    """charge_apply for one item of a transaction that commits anyway (a batch): a refusal is
    returned, not raised, and the tier's first refusal this period is recorded in the balance
    (blocked_<tier>_at, in the same UPDATE) with its tier_blocked email."""
    try:
        return charge_apply(balance, tier, now=now, emails=emails)
    except BillingError as exc:
        if exc.code == "CREDITS_EXHAUSTED" and balance.blocked_at(tier) is None:
            _mark(balance, f"blocked_{tier}_at", now)
            _email_due(balance, kind=EMAIL_TIER_BLOCKED, tier=tier, now=now, due=emails)
        return exc


def balance_charge(*, organization_id: Any, tier: str, now: dt.datetime) -> ChargeResult:
    """Lock the org's balance and charge one action of `tier` (rules in balance_rules), writing
    the balance. Must be called inside transaction.atomic(), which must also write the action's
    fact row (the usage API goes through billing.services.charge instead, which sends both in one
    round trip). Raises BillingError INVALID_ACTION_TIER (400) / CREDITS_EXHAUSTED (402), NotFound
    ORG_NOT_FOUND."""
    validate_tier(tier)
    balance = balance_for_update(organization_id=organization_id, now=now)
    emails: list[DueEmail] = []
    result = charge_apply(balance, tier, now=now, emails=emails)
    _save_changes(balance, now=now)
    emails_queue(balance, emails)
    return result


def balance_charge_many(*, balance: CreditBalance, tiers: list[str], now: dt.datetime
                        ) -> list[ChargeResult | BillingError]:
    """Charge several actions, in order, against a balance the caller locked with
    balance_for_update in this transaction; one UPDATE at the end. Per item: the ChargeResult, or
    the CREDITS_EXHAUSTED error (nothing charged for that item; later items still tried; the tier's
    first refusal recorded as blocked)."""
    emails: list[DueEmail] = []
    out = [charge_apply_or_block(balance, validate_tier(tier), now=now, emails=emails) for tier in tiers]
    _save_changes(balance, now=now)
    emails_queue(balance, emails)
    return out


def balance_record_refusal(*, error: BillingError, now: dt.datetime) -> bool:
    """Record a refused action (402 CREDITS_EXHAUSTED raised by charge_apply) once
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
                                  context=email_context(balance, kind=EMAIL_TIER_BLOCKED, tier=tier, now=now))
    except DatabaseError:  # the caller's 402 still goes out; the next refusal tries again
        logger.exception("could not record the %s block of org %s", tier, balance.organization_id)
        return False
    logger.info("tier blocked org=%s tier=%s at=%s emailed=%s", balance.organization_id, tier, now, bool(emailed))
    return True


def balance_check(*, organization_id: Any, tier: str, now: dt.datetime) -> CheckResult:
    """Would an action of `tier` be accepted now, and paid from where? Reads only."""
    validate_tier(tier)
    balance = balance_read(organization_id=organization_id, now=now)
    decision = decide(balance, tier)
    if decision is None:
        return CheckResult(allowed=False, tier=tier, paid_from=None, warning=None, balance=balance)
    return CheckResult(allowed=True, tier=tier, paid_from=decision.paid_from, warning=decision.warning,
                       balance=balance)


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
        if period_start < balance.period_start:  # older news than the balance's period: never moves back
            logger.info("balance org=%s: upgrade to %s of an earlier period %s ignored (balance %s)",
                        balance.organization_id, plan_tier, period_start, balance.period_start)
            return {t: balance.included(t) for t in TIERS}
        if balance.period_start != period_start:
            logger.info("balance org=%s: upgrade to %s with another period %s (balance %s): full allowance",
                        balance.organization_id, plan_tier, period_start, balance.period_start)
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

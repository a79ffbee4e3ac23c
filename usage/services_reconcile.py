"""Reconcile: rebuild every org's cached balance (billing's `credit_balances`) from the facts.

The facts are `billable_actions` (usage) and credit purchases/grants whose credits were applied
(billing). For one org with balance `b` (period P = b.period_start), the rebuilt values are:

    included_T            = PLANS[b.plan_tier].included[T]  (or, after an upgrade within P, the
                            prorated allowances billing recorded for P: AllowanceChange)
    used_T / overage_T    = COUNT(actions of P, tier T, paid from plan / overage)
    topup_purchased       = SUM(credits of purchases with credits_applied_at set)       (all time)
    overage_credits_owed  = O - S                                                         (all time)
    topup_used            = C + S                                                         (all time)

where C / O are the credits charged by `credits` / `overage` actions ever and S is the overage the
applied top-ups and grants settled (their `overage_settled`, written under the balance lock when
their credits were applied). S is recorded, not derived from timestamps: which overage a top-up
settles depends on the order the balance lock saw actions and top-ups in, and every writer takes
its `now` before it waits for that lock (the auto top-up task even before its Stripe call), so
created_at / credits_applied_at do not give that order. The checks still hold the conservation
owed - remaining = C + O - purchased, and the balance's constraints (owed >= 0, used <= purchased).

Everything is computed by SQL aggregates per chunk of orgs (one GROUP BY over the chunk's
actions joined with its balances, one over its purchases); Python only sees a few rows per org,
so memory stays flat whatever the number of actions. Orgs are streamed by keyset pagination.

The daily usage rollups (`usage_daily_rollups`, a derived cache for the usage pages) are checked
too: one SQL comparison per chunk returns only the buckets that disagree with the facts; a drifted
bucket is reported as field `rollup:<day>/<tier>/<user>` and fixed by rebuilding the org's rollups.

Fixing happens per org under the balance row lock (billing's balance_for_update, which also rolls
a free org's ended period): the facts are re-aggregated inside the lock (READ COMMITTED, and every
fact writer holds that lock), and only the drifted columns are written, each logged on
billing.money.
"""
from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, connection, transaction

from billing.logging import log_money
from billing.models import CreditBalance, CreditPurchase
from billing.plans import PLANS, TIERS
from billing.services.balance import allowances_in_effect, balance_for_update
from billing.services.health import health_summary_build, health_summary_send, report_value
from organizations.models import Organization

from .models import BillableAction
from .rollups import rollup_drifts, rollups_rebuild

logger = logging.getLogger("usage.reconcile")

_ZERO = Decimal("0.00")
DEFAULT_CHUNK_SIZE = 500

#: The balance columns reconcile rebuilds, in report order.
COUNTER_FIELDS: tuple[str, ...] = (
    *(f"included_{t}" for t in TIERS),
    *(f"used_{t}" for t in TIERS),
    *(f"overage_{t}" for t in TIERS),
    "topup_purchased",
    "topup_used",
    "overage_credits_owed",
)
MISSING_BALANCE = "balance"
ROLLUP_FIELD_PREFIX = "rollup:"


@dataclass
class OrgFacts:
    """Aggregates of one org's facts (relative to its cached balance's period)."""

    used: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIERS, 0))
    overage: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIERS, 0))
    action_count: int = 0
    credits_spent: Decimal = _ZERO     # C: credits charged by `credits` actions, ever
    overage_total: Decimal = _ZERO     # O: credits charged by `overage` actions, ever
    purchased: Decimal = _ZERO         # SUM(applied purchase credits)
    overage_settled: Decimal = _ZERO   # S: SUM(overage_settled of applied purchases)
    purchase_count: int = 0

    @property
    def has_any(self) -> bool:
        return bool(self.action_count or self.purchase_count)

    def expected(self, *, plan_tier: str, included: dict[str, int] | None = None) -> dict[str, Any]:
        """The rebuilt value of every COUNTER_FIELDS column for a balance on `plan_tier`; `included`:
        the period's allowances when an upgrade within it prorated them (billing's AllowanceChange)."""
        out: dict[str, Any] = {}
        plan = PLANS[plan_tier]
        for t in TIERS:
            out[f"included_{t}"] = included[t] if included is not None else plan.included[t]
        for t in TIERS:
            out[f"used_{t}"] = self.used[t]
        for t in TIERS:
            out[f"overage_{t}"] = self.overage[t]
        out["topup_purchased"] = self.purchased
        out["topup_used"] = self.credits_spent + self.overage_settled
        out["overage_credits_owed"] = self.overage_total - self.overage_settled
        return out


@dataclass(frozen=True)
class Drift:
    organization_id: uuid.UUID
    org_slug: str
    field: str
    cached: Any      # None when the balance row is missing
    expected: Any

    def as_dict(self) -> dict[str, Any]:
        return {"orgId": str(self.organization_id), "org": self.org_slug, "field": self.field,
                "cached": report_value(self.cached), "expected": report_value(self.expected),
                "difference": report_value(_difference(self.cached, self.expected))}


@dataclass
class ReconcileReport:
    checked_orgs: int = 0
    drifts: list[Drift] = field(default_factory=list)
    fixed_orgs: list[str] = field(default_factory=list)       # slugs
    unfixable: list[dict[str, str]] = field(default_factory=list)

    @property
    def drifted_orgs(self) -> int:
        return len({d.organization_id for d in self.drifts})

    def as_dict(self) -> dict[str, Any]:
        return {"checkedOrgs": self.checked_orgs, "driftedOrgs": self.drifted_orgs,
                "drifts": [d.as_dict() for d in self.drifts], "fixedOrgs": list(self.fixed_orgs),
                "unfixable": list(self.unfixable)}


def _difference(cached: Any, expected: Any) -> Any:
    if not isinstance(cached, (int, Decimal)) or not isinstance(expected, (int, Decimal)):
        return None  # a missing row, or a rollup bucket described as text
    return cached - expected


def _dec(value: Any) -> Decimal:
    """A SUM from the DB as an exact 2-place Decimal (SQLite may hand back a float)."""
    if value is None:
        return _ZERO
    if isinstance(value, float):
        value = repr(value)
    return Decimal(value).quantize(Decimal("0.01"))


# --- the aggregates ----------------------------------------------------------------------------

_BA = BillableAction._meta.db_table
_CB = CreditBalance._meta.db_table
_CP = CreditPurchase._meta.db_table


def _facts_sql(n: int) -> tuple[str, str]:
    marks = ", ".join(["%s"] * n)
    purchases = (
        f"SELECT organization_id, SUM(credits), SUM(overage_settled), COUNT(*) FROM {_CP} "
        f"WHERE credits_applied_at IS NOT NULL AND organization_id IN ({marks}) GROUP BY organization_id"
    )
    # One pass over the chunk's actions: grouped by tier, paid_from and "in the cached period".
    actions = (
        f"SELECT ba.organization_id, ba.tier, ba.paid_from,"
        f" CASE WHEN ba.period_start = cb.period_start THEN 1 ELSE 0 END AS cur,"
        f" COUNT(*), SUM(ba.credits_charged)"
        f" FROM {_BA} ba"
        f" LEFT JOIN {_CB} cb ON cb.organization_id = ba.organization_id"
        f" WHERE ba.organization_id IN ({marks})"
        f" GROUP BY ba.organization_id, ba.tier, ba.paid_from, cur"
    )
    return purchases, actions


def org_facts(organization_ids: list[uuid.UUID]) -> dict[uuid.UUID, OrgFacts]:
    """Aggregate the facts of these orgs (two small result sets, whatever the number of rows)."""
    facts = {org_id: OrgFacts() for org_id in organization_ids}
    if not organization_ids:
        return facts
    hexes = [org_id.hex for org_id in organization_ids]
    purchases_sql, actions_sql = _facts_sql(len(hexes))
    with connection.cursor() as cursor:
        cursor.execute(purchases_sql, hexes)
        for org_hex, total, settled, count in cursor.fetchall():
            f = facts[uuid.UUID(org_hex)]
            f.purchased, f.overage_settled, f.purchase_count = _dec(total), _dec(settled), int(count)
        cursor.execute(actions_sql, hexes)
        for org_hex, tier, paid_from, cur, count, total in cursor.fetchall():
            f = facts[uuid.UUID(org_hex)]
            count, total = int(count), _dec(total)
            f.action_count += count
            if paid_from == "plan":
                if cur:
                    f.used[tier] += count
            elif paid_from == "overage":
                if cur:
                    f.overage[tier] += count
                f.overage_total += total
            elif paid_from == "credits":
                f.credits_spent += total
    return facts


def balance_drifts(*, organization: tuple[uuid.UUID, str], balance: CreditBalance | None,
                   facts: OrgFacts, included: dict[str, int] | None = None) -> list[Drift]:
    """Compare one cached balance with what its facts say. No balance: a drift only if facts exist."""
    org_id, slug = organization
    if balance is None:
        if facts.has_any:
            return [Drift(org_id, slug, MISSING_BALANCE, None, "present")]
        return []
    expected = facts.expected(plan_tier=balance.plan_tier, included=included)
    return [Drift(org_id, slug, name, getattr(balance, name), expected[name])
            for name in COUNTER_FIELDS if getattr(balance, name) != expected[name]]


# --- streaming ----------------------------------------------------------------------------------

def _org_chunks(*, org_slug: str | None, chunk_size: int) -> Iterator[list[tuple[uuid.UUID, str]]]:
    """(id, slug) of orgs, by primary key, `chunk_size` at a time (keyset pagination)."""
    qs = Organization.objects.order_by("pk")
    if org_slug is not None:
        qs = qs.filter(slug=org_slug)
    last: uuid.UUID | None = None
    while True:
        page = qs.filter(pk__gt=last) if last is not None else qs
        rows = list(page.values_list("pk", "slug")[:chunk_size])
        if not rows:
            return
        yield rows
        if len(rows) < chunk_size:
            return
        last = rows[-1][0]


def reconcile_orgs(*, now: dt.datetime, org_slug: str | None = None, fix: bool = False,
                   chunk_size: int = DEFAULT_CHUNK_SIZE, actor: str = "reconcile",
                   progress: Callable[[int], None] | None = None) -> ReconcileReport:
    """Check (and with `fix`, repair) every org's cached balance against its facts.

    Drifts are reported as found before fixing. `progress(done_orgs)` is called after each chunk.
    """
    report = ReconcileReport()
    for orgs in _org_chunks(org_slug=org_slug, chunk_size=chunk_size):
        ids = [org_id for org_id, _ in orgs]
        drifted: list[tuple[uuid.UUID, str]] = []
        with _one_snapshot():
            balances = {b.organization_id: b for b in CreditBalance.objects.filter(organization_id__in=ids)}
            allowances = allowances_in_effect(balances=list(balances.values()))
            facts = org_facts(ids)
            rollups = rollup_drifts(ids)
        for org in orgs:
            drifts = balance_drifts(organization=org, balance=balances.get(org[0]), facts=facts[org[0]],
                                    included=allowances.get(org[0]))
            drifts += _rollup_drifts(organization=org, buckets=rollups.get(org[0], []))
            report.checked_orgs += 1
            if not drifts:
                continue
            report.drifts.extend(drifts)
            drifted.append(org)
        if fix:  # outside the snapshot: the rebuild re-reads the latest facts under the balance lock
            for org in drifted:
                _fix_one(org=org, now=now, actor=actor, report=report)
        if progress is not None:
            progress(report.checked_orgs)
    return report


@contextmanager
def _one_snapshot() -> Iterator[None]:
    """A read-only transaction in which the balances, facts and rollups are read as of one instant.
    Every writer changes the cache and the facts in one transaction, but reconcile reads them with
    separate statements; under the connection's READ COMMITTED each would see a different moment,
    and an action committed in between by live traffic would look like drift. InnoDB's REPEATABLE
    READ takes one read view at the first read and keeps it (no locks taken, writers not blocked).
    SQLite's deferred read transaction is a snapshot already."""
    if connection.in_atomic_block:  # a caller's transaction (e.g. a test): its isolation stands
        yield
        return
    with transaction.atomic():
        if connection.vendor == "mysql":
            with connection.cursor() as cursor:  # applies to the transaction the next read starts
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


def _rollup_drifts(*, organization: tuple[uuid.UUID, str], buckets: list[tuple]) -> list[Drift]:
    """One drift per disagreeing rollup bucket: cached = (actions, credits) in the rollup."""
    org_id, slug = organization
    return [Drift(org_id, slug, f"{ROLLUP_FIELD_PREFIX}{day}/{tier}/{user_id}", f"{ra} actions / {rc} credits",
                  f"{fa} actions / {fc} credits")
            for day, tier, user_id, fa, fc, ra, rc in buckets]


def _fix_one(*, org: tuple[uuid.UUID, str], now: dt.datetime, actor: str, report: ReconcileReport) -> None:
    org_id, slug = org
    try:
        changed = balance_rebuild(organization_id=org_id, now=now, actor=actor)
    except IntegrityError as exc:  # the facts themselves break an invariant: a human must look
        logger.error("reconcile could not fix org %s: %s", slug, exc)
        report.unfixable.append({"org": slug, "error": str(exc)})
        return
    report.fixed_orgs.append(slug)
    logger.info("reconcile fixed org %s: %s", slug, ", ".join(changed) or "(nothing left to fix)")


def balance_rebuild(*, organization_id: uuid.UUID, now: dt.datetime, actor: str = "reconcile") -> list[str]:
    """Rewrite one org's cached balance (and its usage rollups) from its facts, under the balance
    row lock (created, or a free period rolled, as balance_for_update does). Returns the columns
    changed (plus "usage_daily_rollups" when those were rebuilt); each is logged on billing.money.
    Raises IntegrityError if the rebuilt values break a balance constraint."""
    with transaction.atomic():
        balance = balance_for_update(organization_id=organization_id, now=now)
        # Re-aggregated inside the lock: every writer of facts for this org holds it.
        facts = org_facts([organization_id])[organization_id]
        expected = facts.expected(plan_tier=balance.plan_tier,
                                  included=allowances_in_effect(balances=[balance]).get(balance.organization_id))
        changed = [name for name in COUNTER_FIELDS if getattr(balance, name) != expected[name]]
        if changed:
            for name in changed:
                log_money("balance.reconciled", org=organization_id, field=name, cached=getattr(balance, name),
                          rebuilt=expected[name], period_start=balance.period_start, by=actor)
                setattr(balance, name, expected[name])
            balance.version += 1
            balance.updated_at = now
            balance.save(update_fields=[*changed, "version", "updated_at"])
        if rollup_drifts([organization_id]):
            buckets = rollups_rebuild(org_hex=organization_id.hex)
            log_money("rollups.rebuilt", org=organization_id, buckets=buckets, by=actor)
            changed.append("usage_daily_rollups")
    return changed


# --- daily health summary (billing builds and sends it; the drift count comes from here) ---------

def health_summary_daily_send(*, now: dt.datetime):
    """Count balance drift (a read-only reconcile of every org), add billing's stuck/failed lists,
    and email the summary to settings.BILLING_ADMIN_EMAIL. Returns the HealthSummary."""
    report = reconcile_orgs(now=now, fix=False, actor="daily-health")
    slugs = list(dict.fromkeys(d.org_slug for d in report.drifts))
    summary = health_summary_build(now=now, drifted_orgs=report.drifted_orgs, drift_fields=len(report.drifts),
                                   drift_orgs=slugs[:50])
    health_summary_send(summary=summary)
    return summary

"""Keeping `usage_daily_rollups` equal to the facts (see `UsageDailyRollup`).

`rollup_add` runs inside the transaction that inserts the `billable_actions` rows, after the org's
balance row is locked: no other writer of the same org can touch the same buckets meanwhile, and
buckets of different orgs never share a key. One upsert statement per call (buckets sorted, so
concurrent batches always take row locks in the same order).
"""
from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal

from django.db import connection

from billing.models import CreditBalance

from .models import BillableAction, UsageDailyRollup

_TABLE = UsageDailyRollup._meta.db_table
_COLUMNS = "(organization_id, day, tier, user_id, actions, credits_charged)"


def rollup_statement(*, org_hex: str, rows: Iterable[tuple[str, str, Decimal]],
                     now: dt.datetime) -> tuple[str, list] | None:
    """(sql, params) of the upsert counting `rows` = (user_id, tier, credits_charged) actions created at
    `now` (aware) into the org's buckets for now's UTC day; None when there is nothing to count.
    Exposed so the hot path may send it in the same round trip as its other statements."""
    day = now.astimezone(dt.UTC).date()
    buckets: dict[tuple[str, str], list] = defaultdict(lambda: [0, Decimal("0.00")])
    for user_id, tier, credits in rows:
        bucket = buckets[(tier, user_id)]
        bucket[0] += 1
        bucket[1] += Decimal(credits)
    if not buckets:
        return None
    params: list = []
    for (tier, user_id), (count, credits) in sorted(buckets.items()):
        params += [org_hex, day, tier, user_id, count, credits]
    values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(buckets))
    if connection.vendor == "mysql":
        sql = (f"INSERT INTO {_TABLE} {_COLUMNS} VALUES {values} ON DUPLICATE KEY UPDATE "
               "actions = actions + VALUES(actions), credits_charged = credits_charged + VALUES(credits_charged)")
    else:  # SQLite (local dev) / PostgreSQL
        sql = (f"INSERT INTO {_TABLE} {_COLUMNS} VALUES {values} "
               "ON CONFLICT (organization_id, day, tier, user_id) DO UPDATE SET "
               f"actions = {_TABLE}.actions + excluded.actions, "
               f"credits_charged = {_TABLE}.credits_charged + excluded.credits_charged")
    return sql, params


def rollup_add(*, org_hex: str, rows: Iterable[tuple[str, str, Decimal]], now: dt.datetime) -> None:
    """Run `rollup_statement` (inside the caller's transaction, under the org's balance lock)."""
    statement = rollup_statement(org_hex=org_hex, rows=rows, now=now)
    if statement is not None:
        with connection.cursor() as cursor:
            cursor.execute(*statement)


# --- reconcile: the rollups are a derived cache, checked and rebuilt from the facts -------------

_BA = BillableAction._meta.db_table
_CB = CreditBalance._meta.db_table


def _day_expr(column: str = "created_at") -> str:
    # created_at is stored as naive UTC (MySQL backend under USE_TZ) or an ISO string (SQLite).
    return f"DATE({column})"


def rollup_drifts(organization_ids: list) -> dict:
    """{org uuid.UUID: [(day, tier, user_id, fact_actions, fact_credits, rollup_actions, rollup_credits)]}
    for every bucket of the orgs' current period (whole UTC days from the day the cached balance's
    period started: what the usage pages read) where the rollup disagrees with the facts.

    Two passes, both compared in SQL so only mismatches reach Python (memory stays flat): totals per
    (org, day, tier) for the whole chunk, then the per-user buckets of just the orgs that disagree.
    A drift that moves actions between users of one day and tier with unchanged totals is the one
    kind the first pass cannot see (no writer of ours can make it; `rollups_rebuild` repairs it)."""
    if not organization_ids:
        return {}
    coarse = _compare(organization_ids, by_user=False)
    drifted = sorted({org for org, _row in coarse})
    out: dict = {}
    for org, row in _compare(drifted, by_user=True) if drifted else []:
        out.setdefault(org, []).append(row)
    return out


def _compare(organization_ids: list, *, by_user: bool) -> list[tuple]:
    """(org, (day, tier, user_id | "*", fact_actions, fact_credits, rollup_actions, rollup_credits)) of
    the mismatched buckets, grouped per user or per (day, tier)."""
    hexes = [getattr(o, "hex", o) for o in organization_ids]
    marks = ", ".join(["%s"] * len(hexes))
    user = "user_id" if by_user else "'*'"
    since = "DATE(b.period_start)"
    sql = (
        f"SELECT organization_id, day, tier, u, SUM(fa), SUM(fc), SUM(ra), SUM(rc) FROM ("
        f" SELECT a.organization_id, {_day_expr('a.created_at')} AS day, a.tier, {user} AS u, COUNT(*) AS fa,"
        f"  SUM(a.credits_charged) AS fc, 0 AS ra, 0 AS rc"
        f" FROM {_BA} a JOIN {_CB} b ON b.organization_id = a.organization_id"
        f" WHERE a.organization_id IN ({marks}) AND a.created_at >= {since}"
        f" GROUP BY a.organization_id, {_day_expr('a.created_at')}, a.tier, u"
        " UNION ALL"
        f" SELECT r.organization_id, r.day, r.tier, {user} AS u, 0, 0, SUM(r.actions), SUM(r.credits_charged)"
        f" FROM {_TABLE} r JOIN {_CB} b ON b.organization_id = r.organization_id"
        f" WHERE r.organization_id IN ({marks}) AND r.day >= {since}"
        " GROUP BY r.organization_id, r.day, r.tier, u"
        ") x GROUP BY organization_id, day, tier, u"
        " HAVING SUM(fa) <> SUM(ra) OR SUM(fc) <> SUM(rc)"
        " ORDER BY organization_id, day, tier, u"
    )
    q = Decimal("0.01")
    with connection.cursor() as cursor:
        cursor.execute(sql, hexes + hexes)
        return [(uuid.UUID(str(org)), (str(day), tier, u, int(fa), Decimal(fc or 0).quantize(q), int(ra),
                                       Decimal(rc or 0).quantize(q)))
                for org, day, tier, u, fa, fc, ra, rc in cursor.fetchall()]


def rollups_rebuild(*, org_hex: str) -> int:
    """Replace an org's rollups by GROUP BY over its facts. The caller holds the org's balance lock
    (every writer of facts and rollups does), so nothing changes underneath. Returns buckets written."""
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {_TABLE} WHERE organization_id = %s", [org_hex])
        cursor.execute(
            f"INSERT INTO {_TABLE} {_COLUMNS}"
            f" SELECT organization_id, {_day_expr()}, tier, user_id, COUNT(*), SUM(credits_charged)"
            f" FROM {_BA} WHERE organization_id = %s GROUP BY organization_id, {_day_expr()}, tier, user_id",
            [org_hex])
        return cursor.rowcount

"""Keeping `usage_daily_rollups` equal to the facts (see `UsageDailyRollup`).

`rollup_add` runs inside the transaction that inserts the `billable_actions` rows, after the org's
balance row is locked: no other writer of the same org can touch the same buckets meanwhile, and
buckets of different orgs never share a key. One upsert statement per call (buckets sorted, so
concurrent batches always take row locks in the same order).
"""
from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal

from django.db import connection

from .models import UsageDailyRollup

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

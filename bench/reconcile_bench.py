"""Reconcile benchmark: N billable actions, then time `manage.py reconcile` and report its peak RSS.

    DATABASE_URL=mysql://… .venv/bin/python bench/reconcile_bench.py            # 100k and 1M rows
    BENCH_RECONCILE_ROWS=1000000 BENCH_RECONCILE_ORGS=1000 … reconcile_bench.py

Runs against its own database (BENCH_DB_NAME, default `bench_reconcile`, recreated per size and dropped at the end
unless BENCH_KEEP_DB=1),
migrated with the project's migrations. For each size it bulk-inserts the facts with raw
multi-row INSERTs (orgs, consistent balances, a grant per org, actions spread over two periods and
paid from plan / credits), plants drift in 3 orgs, then runs `reconcile --json` (must find
exactly those) and `reconcile --fix` in child processes, timing them and reading the child's peak
RSS (getrusage). Figures are printed, never asserted: target ≤ 10 s for 1M actions, with peak RSS
flat across sizes (the command only ever holds one chunk's aggregate rows).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import random
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH = 2000
TIERS = ("small", "medium", "large", "xl")
COST = {"small": Decimal("1.00"), "medium": Decimal("2.50"), "large": Decimal("5.00"), "xl": Decimal("15.00")}
TIER_WEIGHTS = (70, 20, 8, 2)


def _bench_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("mysql://", "mariadb://")):
        sys.exit("reconcile bench needs DATABASE_URL=mysql://… (scripts/services.sh env prints it)")
    parsed = urlparse(url)
    return urlunparse(parsed._replace(path="/" + os.environ.get("BENCH_DB_NAME", "bench_reconcile")))


def _child_env(url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(DATABASE_URL=url, DJANGO_SETTINGS_MODULE="billing_project.settings.local", REDIS_URL="",
               LOG_LEVEL="WARNING")
    return env


def _recreate_database(url: str) -> None:
    import MySQLdb  # noqa: PLC0415

    p = urlparse(url)
    conn = MySQLdb.connect(host=p.hostname, port=p.port or 3306, user=p.username, passwd=p.password or "")
    cur = conn.cursor()
    name = p.path.strip("/")
    cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    conn.close()


def _drop_database(url: str) -> None:
    import MySQLdb  # noqa: PLC0415

    p = urlparse(url)
    conn = MySQLdb.connect(host=p.hostname, port=p.port or 3306, user=p.username, passwd=p.password or "")
    conn.cursor().execute(f"DROP DATABASE IF EXISTS `{p.path.strip('/')}`")
    conn.close()


def _manage(url: str, *args: str, check: bool = True) -> tuple[int, str, float, int]:
    """Run manage.py in a child; returns (exit code, stdout, seconds, peak RSS KiB of that child)."""
    import tempfile  # noqa: PLC0415

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), *args], env=_child_env(url), cwd=ROOT,
                                stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (ru_maxrss in KiB on Linux)
        seconds = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if check and proc.returncode not in (0, 1):
        sys.stderr.write(stderr)
        sys.exit(f"manage.py {' '.join(args)} failed ({proc.returncode})")
    return proc.returncode, stdout, seconds, usage.ru_maxrss


def _populate(url: str, *, rows: int, orgs: int, seed: int = 7, now: dt.datetime | None = None) -> dict[str, float]:
    """The facts and consistent balances of `orgs` max orgs, `rows` actions; drift planted in 3 orgs.

    The current period contains `now` (default: the real clock, UTC, naive as stored): `reconcile`
    reads the clock, so fixed dates would put every balance in a period that has ended."""
    import MySQLdb  # noqa: PLC0415

    p = urlparse(url)
    conn = MySQLdb.connect(host=p.hostname, port=p.port or 3306, user=p.username, passwd=p.password or "",
                           db=p.path.strip("/"), charset="utf8mb4")
    try:  # closed also on an error: an open transaction would hold its locks (and a test DB's flush)
        return _fill(conn, rows=rows, orgs=orgs, seed=seed, now=now)
    finally:
        conn.close()


def _fill(conn, *, rows: int, orgs: int, seed: int, now: dt.datetime | None) -> dict[str, float]:
    from dateutil.relativedelta import relativedelta  # noqa: PLC0415

    cur = conn.cursor()
    rng = random.Random(seed)
    started = time.monotonic()
    now = (now or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)).replace(microsecond=0)
    cur_start = (now - dt.timedelta(days=19)).replace(hour=0, minute=0, second=0)
    cur_end = cur_start + relativedelta(months=1)  # > now: a month is at least 28 days
    prev_start = cur_start - relativedelta(months=1)
    org_ids = [uuid.UUID(int=rng.getrandbits(128), version=4).hex for _ in range(orgs)]
    cur.executemany(
        "INSERT INTO organizations (id, name, slug, stripe_customer_id, subscription_tier, subscription_status,"
        " trial_ends_at, created_at) VALUES (%s, %s, %s, NULL, 'max', 'active', NULL, %s)",
        [(oid, f"Bench {i}", f"bench-{i}", prev_start - dt.timedelta(days=300)) for i, oid in enumerate(org_ids)])
    per_org = rows // orgs
    grant = Decimal("5000.00")
    balances = []
    purchases = []
    action_sql = ("INSERT INTO billable_actions (organization_id, user_id, tier, credits_charged, paid_from,"
                  " payout_cents, period_start, period_end, created_at) VALUES ")
    buffer: list[str] = []
    inserted = 0

    def flush() -> None:
        nonlocal inserted
        if buffer:
            cur.execute(action_sql + ",".join(buffer))
            inserted += len(buffer)
            buffer.clear()

    for i, oid in enumerate(org_ids):
        n = per_org + (1 if i < rows - per_org * orgs else 0)
        used = dict.fromkeys(TIERS, 0)
        credits_used = Decimal("0.00")
        granted_at = cur_start + dt.timedelta(hours=1)
        purchases.append((oid, granted_at))
        for k in range(n):
            tier = rng.choices(TIERS, TIER_WEIGHTS)[0]
            previous = k < n // 4  # a quarter of the rows belong to last period
            paid_from = "credits" if (not previous and k % 50 == 0 and credits_used + COST[tier] <= grant) else "plan"
            charged = COST[tier] if paid_from == "credits" else Decimal("0.00")
            if paid_from == "credits":
                credits_used += charged
            elif not previous:
                used[tier] += 1
            start, end = (prev_start, cur_start) if previous else (cur_start, cur_end)
            created = min(start + dt.timedelta(seconds=3600 * 2 + k), now)  # past, inside its period
            buffer.append(f"('{oid}','u{k % 17}','{tier}',{charged},'{paid_from}',2,'{start:%Y-%m-%d %H:%M:%S}',"
                          f"'{end:%Y-%m-%d %H:%M:%S}','{created:%Y-%m-%d %H:%M:%S}')")
            if len(buffer) >= BATCH:
                flush()
        balances.append((oid, used, credits_used))
    flush()
    cur.executemany(
        "INSERT INTO credit_purchases (organization_id, kind, method, packs, credits, amount_cents, currency, status,"
        " open_slot, failure_code, failure_message, reason, created_at, completed_at, credits_applied_at,"
        " overage_settled)"
        " VALUES (%s, 'grant', 'none', 0, %s, 0, 'usd', 'succeeded', NULL, '', '', 'bench', %s, %s, %s, 0)",
        [(oid, grant, at, at, at) for oid, at in purchases])
    max_included = {"small": 12500, "medium": 5000, "large": 2500, "xl": 800}
    cur.executemany(
        "INSERT INTO credit_balances (organization_id, period_start, period_end, plan_tier,"
        " included_small, included_medium, included_large, included_xl, used_small, used_medium, used_large, used_xl,"
        " overage_small, overage_medium, overage_large, overage_xl, topup_purchased, topup_used,"
        " overage_credits_owed, auto_topup_enabled, auto_topup_threshold, auto_topup_packs,"
        " auto_topup_monthly_cap_packs, version, updated_at)"
        " VALUES (%s, %s, %s, 'max', %s, %s, %s, %s, %s, %s, %s, %s, 0, 0, 0, 0, %s, %s, 0, 0, 50, 1, 10, 0, %s)",
        [(oid, cur_start, cur_end, *max_included.values(), *(u[t] for t in TIERS), grant, cu, now)
         for oid, u, cu in balances])
    # The daily usage rollups the services keep in the same transaction as each action.
    cur.execute("INSERT INTO usage_daily_rollups (organization_id, day, tier, user_id, actions, credits_charged)"
                " SELECT organization_id, DATE(created_at), tier, user_id, COUNT(*), SUM(credits_charged)"
                " FROM billable_actions GROUP BY organization_id, DATE(created_at), tier, user_id")
    # Plant drift in three orgs (reconcile must find exactly these); the first also in a rollup bucket.
    drifted = org_ids[: min(3, orgs)]
    cur.execute("UPDATE credit_balances SET used_small = used_small + 1 WHERE organization_id = %s", [drifted[0]])
    cur.execute("UPDATE usage_daily_rollups SET actions = actions + 1 WHERE organization_id = %s LIMIT 1",
                [drifted[0]])
    if len(drifted) > 1:
        cur.execute("UPDATE credit_balances SET topup_used = topup_used + 2.5 WHERE organization_id = %s",
                    [drifted[1]])
    if len(drifted) > 2:
        cur.execute("UPDATE credit_balances SET included_xl = 7 WHERE organization_id = %s", [drifted[2]])
    conn.commit()
    cur.execute("ANALYZE TABLE billable_actions")
    cur.fetchall()
    return {"insert_seconds": time.monotonic() - started, "rows": inserted, "drifted": len(drifted)}


def _fmt_rss(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB"


def run(url: str, *, sizes: list[int], orgs: int, fresh_database: bool = True) -> list[dict]:
    """For each size: (a fresh, migrated database unless `fresh_database` is False: `url` is then an
    already migrated, empty one), populate, time `reconcile --json`, `--fix`, a re-check. Prints the
    figures and returns them (never judged here)."""
    print(f"reconcile bench: sizes {sizes}, {orgs} orgs, database {urlparse(url).path.strip('/')}")
    results = []
    for rows in sizes:
        if fresh_database:
            _recreate_database(url)
            code, _, _, _ = _manage(url, "migrate", "--noinput")
            if code:
                raise SystemExit("migrate failed")
        fill = _populate(url, rows=rows, orgs=orgs)
        code, out, seconds, rss = _manage(url, "reconcile", "--json")
        doc = json.loads(out)
        found = doc["driftedOrgs"]
        fcode, _, fix_seconds, fix_rss = _manage(url, "reconcile", "--fix")
        acode, _, again_seconds, _ = _manage(url, "reconcile")
        results.append({"rows": rows, "inserted": fill["rows"], "seconds": seconds, "exit": code, "rss_kib": rss,
                        "found": found, "planted": fill["drifted"], "fix_seconds": fix_seconds, "fix_exit": fcode,
                        "recheck_exit": acode, "recheck_seconds": again_seconds,
                        "insert_seconds": fill["insert_seconds"]})
        print(f"  {rows:>9,} actions: insert {fill['insert_seconds']:.1f}s | reconcile {seconds:.2f}s "
              f"(exit {code}, drifted orgs found {found}/{fill['drifted']}), peak RSS {_fmt_rss(rss)} | "
              f"--fix {fix_seconds:.2f}s (exit {fcode}) | re-check {again_seconds:.2f}s (exit {acode})")
    print("reconcile figures:")
    for r in results:
        verdict = ("OK" if r["seconds"] <= 10 and r["found"] == r["planted"] and r["fix_exit"] == 0
                   and r["recheck_exit"] == 0 else "CHECK")
        print(f"  {r['rows']:,} actions / {orgs} orgs: {r['seconds']:.2f}s (target ≤ 10 s), peak RSS "
              f"{_fmt_rss(r['rss_kib'])}, {r['found']}/{r['planted']} drifted orgs found, fixed (exit "
              f"{r['fix_exit']}), clean re-check (exit {r['recheck_exit']}) -> {verdict}")
    return results


def main() -> int:
    url = _bench_url()
    sizes = [int(s) for s in os.environ.get("BENCH_RECONCILE_ROWS", "100000,1000000").split(",") if s.strip()]
    orgs = int(os.environ.get("BENCH_RECONCILE_ORGS", "1000"))
    run(url, sizes=sizes, orgs=orgs)
    if not os.environ.get("BENCH_KEEP_DB"):
        _drop_database(url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

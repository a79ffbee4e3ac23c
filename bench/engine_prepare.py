"""Bench helper run inside Django (DJANGO_SETTINGS_MODULE + DATABASE_URL from scripts/bench.sh).

    engine_prepare.py setup   -> creates the bench orgs, prints {"hot": id, "orgs": [...], "raw": id} as JSON
    engine_prepare.py drift   -> compares every cached balance with its fact rows; prints a summary as
                                 JSON; exit 1 on any drift
"""
from __future__ import annotations

import datetime as dt
import json
import os
import sys
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_project.settings.local")

import django  # noqa: E402

django.setup()

from dateutil.relativedelta import relativedelta  # noqa: E402
from django.db.models import Count, Sum  # noqa: E402
from django.utils import timezone  # noqa: E402

from billing.models import CreditBalance  # noqa: E402
from billing.plans import TIERS  # noqa: E402
from billing.services.balance import balance_add_topup_credits, balance_set_plan  # noqa: E402
from organizations.models import Organization, PlanTier  # noqa: E402
from organizations.services import organization_create  # noqa: E402
from usage.models import BillableAction  # noqa: E402

N_ORGS = int(os.environ.get("BENCH_ORGS", "100"))


def _org(name: str, credits: Decimal, now: dt.datetime) -> str:
    org = organization_create(name=name, slug=name, now=now)
    Organization.objects.filter(pk=org.pk).update(subscription_tier=PlanTier.MAX)
    balance_set_plan(organization_id=org.pk, plan_tier=PlanTier.MAX, period_start=now,
                     period_end=now + relativedelta(months=1), reset_usage=True, now=now)
    balance_add_topup_credits(organization_id=org.pk, amount=credits, now=now)
    return str(org.pk)


def create_orgs(n_orgs: int = N_ORGS) -> dict:
    """The bench orgs (max plan, period from now, plenty of credits): {"hot", "raw", "orgs": [...]} ids."""
    now = timezone.now() - dt.timedelta(minutes=1)
    return {
        "hot": _org("bench-hot", Decimal("5000000.00"), now),
        "raw": _org("bench-raw", Decimal("5000000.00"), now),
        "orgs": [_org(f"bench-org-{i:03d}", Decimal("200000.00"), now) for i in range(n_orgs)],
    }


def setup() -> None:
    print(json.dumps(create_orgs()))


def drift_report() -> dict:
    """Every cached balance against its fact rows: {"balances", "actions", "drifted": [...]}."""
    bad = []
    n_actions = 0
    for b in CreditBalance.objects.all():
        rows = BillableAction.objects.filter(organization_id=b.organization_id)
        period_rows = rows.filter(period_start=b.period_start)
        counts = {(r["tier"], r["paid_from"]): r["n"]
                  for r in period_rows.values("tier", "paid_from").annotate(n=Count("id"))}
        sums = {r["paid_from"]: r["s"] for r in rows.values("paid_from").annotate(s=Sum("credits_charged"))}
        n_actions += rows.count()
        problems = []
        for t in TIERS:
            if counts.get((t, "plan"), 0) != b.used(t):
                problems.append(f"used_{t} cache={b.used(t)} rows={counts.get((t, 'plan'), 0)}")
            if counts.get((t, "overage"), 0) != b.overage(t):
                problems.append(f"overage_{t} cache={b.overage(t)} rows={counts.get((t, 'overage'), 0)}")
            if b.used(t) > b.included(t):
                problems.append(f"used_{t} over included")
        settled = (sums.get("overage") or 0) - b.overage_credits_owed
        if b.topup_used != (sums.get("credits") or 0) + settled:
            problems.append(f"topup_used cache={b.topup_used} rows={sums.get('credits') or 0}+{settled}")
        if b.topup_used > b.topup_purchased:
            problems.append("top-up over-spent")
        if problems:
            bad.append({"org": str(b.organization_id), "problems": problems})
    return {"balances": CreditBalance.objects.count(), "actions": n_actions, "drifted": bad}


def drift() -> int:
    report = drift_report()
    print(json.dumps(report))
    return 1 if report["drifted"] else 0


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "setup":
        setup()
    elif cmd == "drift":
        sys.exit(drift())
    else:
        sys.exit(__doc__)

"""seed_demo seeds usage through the real engine and is idempotent."""
from __future__ import annotations

import pytest
from django.core.management import call_command

from billing.models import CreditBalance
from usage.models import BillableAction

pytestmark = pytest.mark.django_db


def test_seed_demo_records_usage_once_and_balances_match_the_rows(capsys):
    call_command("seed_demo")
    first = BillableAction.objects.count()
    assert first > 500
    out = capsys.readouterr().out
    assert "demo-pro: 300/300 actions (300 recorded" in out
    call_command("seed_demo")
    assert BillableAction.objects.count() == first
    for b in CreditBalance.objects.all():
        rows = BillableAction.objects.filter(organization_id=b.organization_id, period_start=b.period_start)
        for t in ("small", "medium", "large", "xl"):
            assert rows.filter(tier=t, paid_from="plan").count() == b.used(t)
            assert rows.filter(tier=t, paid_from="overage").count() == b.overage(t)

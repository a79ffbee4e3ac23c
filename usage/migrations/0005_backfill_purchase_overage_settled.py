"""Backfill credit_purchases.overage_settled for top-ups and grants applied before the column existed.

Replays each org's facts in timestamp order (an action stamped exactly at a purchase's
credits_applied_at counts as before it), which is the order reconcile assumed until then: credits
actions spend top-up credits, overage actions add to what is owed, and each applied purchase
settles min(owed, remaining) - exactly what balance_add_topup_credits does. Orgs that never ran
into overage settle nothing and are skipped.
"""
from __future__ import annotations

from decimal import Decimal

from django.db import migrations

_ZERO = Decimal("0.00")


def _dec(value) -> Decimal:
    if value is None:
        return _ZERO
    if isinstance(value, float):
        value = repr(value)
    return Decimal(value).quantize(Decimal("0.01"))


def backfill(apps, schema_editor):
    CreditPurchase = apps.get_model("billing", "CreditPurchase")
    BillableAction = apps.get_model("usage", "BillableAction")
    orgs = set(BillableAction.objects.filter(paid_from="overage").values_list("organization_id", flat=True).distinct())
    for org_id in orgs:
        purchases = list(CreditPurchase.objects.filter(organization_id=org_id, credits_applied_at__isnull=False)
                         .order_by("credits_applied_at", "id").values_list("pk", "credits", "credits_applied_at"))
        if not purchases:
            continue
        remaining = owed = _ZERO
        previous = None
        for pk, credits, applied_at in purchases:
            window = BillableAction.objects.filter(organization_id=org_id, paid_from__in=["credits", "overage"],
                                                   created_at__lte=applied_at)
            if previous is not None:
                window = window.filter(created_at__gt=previous)
            for paid_from, charged in window.values_list("paid_from", "credits_charged"):
                if paid_from == "credits":
                    remaining -= _dec(charged)
                else:
                    owed += _dec(charged)
            remaining += _dec(credits)
            settle = max(_ZERO, min(owed, remaining))
            remaining -= settle
            owed -= settle
            if settle:
                CreditPurchase.objects.filter(pk=pk).update(overage_settled=settle)
            previous = applied_at


class Migration(migrations.Migration):

    dependencies = [
        ("usage", "0004_billable_actions_immutable"),
        ("billing", "0009_credit_purchase_overage_settled"),
    ]

    operations = [migrations.RunPython(backfill, migrations.RunPython.noop)]

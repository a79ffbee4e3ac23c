"""CreditPurchase invariants enforced by MariaDB (not by Python)."""
from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction

from billing.models import CreditPurchase, PurchaseKind, PurchaseMethod, PurchaseStatus
from organizations.tests.factories import OrganizationFactory

pytestmark = pytest.mark.django_db


def _row(org, now, **kw):
    fields = dict(organization=org, kind=PurchaseKind.AUTO_TOPUP, method=PurchaseMethod.SAVED_CARD, packs=1,
                  credits=Decimal("500.00"), amount_cents=2000, status=PurchaseStatus.PENDING, open_slot=True,
                  created_at=now)
    fields.update(kw)
    return CreditPurchase.objects.create(**fields)


def test_one_open_auto_topup_per_org_is_a_db_constraint(now):
    org, other = OrganizationFactory(), OrganizationFactory()
    _row(org, now)
    with pytest.raises(IntegrityError), transaction.atomic():
        _row(org, now)
    _row(other, now)  # another org has its own slot
    # closed rows (open_slot NULL) never collide
    _row(org, now, status=PurchaseStatus.FAILED, open_slot=None)
    _row(org, now, status=PurchaseStatus.SUCCEEDED, open_slot=None)
    assert CreditPurchase.objects.filter(organization=org).count() == 3


@pytest.mark.parametrize("bad", [
    {"status": "bogus"},
    {"status": PurchaseStatus.FAILED},                      # open slot on a closed row
    {"kind": PurchaseKind.MANUAL},                          # open slot on a manual row
    {"credits_applied_at": "NOW"},                          # credits applied to a pending row
    {"packs": 0},
    {"credits": Decimal("0.00")},
    {"kind": PurchaseKind.GRANT, "method": PurchaseMethod.NONE, "open_slot": None, "reason": ""},
])
def test_check_constraints_refuse_bad_rows(now, bad):
    org = OrganizationFactory()
    bad = {k: (now if v == "NOW" else v) for k, v in bad.items()}
    with pytest.raises(IntegrityError), transaction.atomic():
        _row(org, now, **bad)

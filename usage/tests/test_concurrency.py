"""Many threads hammering one org: the result must equal some serial order (nothing lost,
double-counted or over-spent), and the cached balance must equal what the fact rows say."""
from __future__ import annotations

import threading
from collections import Counter
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Sum

from billing_project.errors import AppError
from billing.models import CreditBalance
from billing.plans import TIER_CREDIT_COST, TIERS, soft_limit_buffer
from billing.services.balance import balance_add_topup_credits
from organizations.tests.factories import FIXED_CREATED, OrganizationFactory
from usage.models import BillableAction
from usage.coalesce import action_record_coalesced
from usage.services import ActionInput, action_record, actions_record_batch

THREADS = 20
PER_THREAD = 24
NOW = FIXED_CREATED.replace(day=10)


def _direct(org, tier, user, key):
    return action_record(organization_id=org.pk, user_id=user, tier=tier, now=NOW, idempotency_key=key)


def _coalesced(org, tier, user, key):
    return action_record_coalesced(org_hex=org.pk.hex, now=NOW,
                                   action=ActionInput(user_id=user, tier=tier, idempotency_key=key))


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("record", [_direct, _coalesced], ids=["direct", "coalesced"])
def test_parallel_records_equal_a_serial_order_and_the_rows(settings, record):
    settings.BILLING_SOFT_LIMIT_BUFFER = 50  # buffers 5/2/1/1 on free: all three payment paths get hit
    org = OrganizationFactory()  # free: 10/4/2/1 included; no balance row yet (creation races too)
    balance_add_topup_credits(organization_id=org.pk, amount=Decimal("60.00"), now=NOW)
    barrier = threading.Barrier(THREADS)
    outcomes: list[tuple] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        try:
            barrier.wait(timeout=30)
            for i in range(PER_THREAD):
                tier = TIERS[(n + i) % 4]
                # Every 4th action of each thread reuses a key shared by all threads: a replay race,
                # half of the threads sending another request (tier) with it: a reuse race.
                key = f"shared-{i}" if i % 4 == 0 else None
                if key:
                    tier = "small" if n % 2 else "medium"
                user = "shared" if key else f"t{n}"
                try:
                    if i % 6 == 5:  # some batches too
                        res = actions_record_batch(organization_id=org.pk, now=NOW, actions=[
                            ActionInput(user_id=f"t{n}", tier=tier), ActionInput(user_id=f"t{n}", tier="small")])
                        got = [("batch", it["status"], it.get("actionId"), None) for it in res.items]
                    else:
                        r = record(org, tier, user, key)
                        got = [(key, 201 if r.created else 200, r.action_id, tier)]
                except AppError as exc:
                    assert exc.code in ("CREDITS_EXHAUSTED", "IDEMPOTENCY_KEY_REUSED"), exc.code
                    got = [(key, 402 if exc.code == "CREDITS_EXHAUSTED" else 409, None, tier)]
                with lock:
                    outcomes.extend(got)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors, errors
    assert all(not t.is_alive() for t in threads)

    rows = BillableAction.objects.filter(organization=org)
    b = CreditBalance.objects.get(organization=org)
    created = [o for o in outcomes if o[1] == 201]
    assert len(created) == rows.count() and len({o[2] for o in created}) == len(created)
    # Each shared key: exactly one row; every 200 answered with that row's id, and only to the
    # request that recorded it; every 409 went to the other request, and only once the row existed.
    for key in {o[0] for o in outcomes if o[0] and o[0] != "batch"}:
        ids = {o[2] for o in outcomes if o[0] == key and o[1] in (200, 201)}
        assert rows.filter(idempotency_key=key).count() == len(ids) <= 1
        row = rows.filter(idempotency_key=key).first()
        for _, status, _, tier in (o for o in outcomes if o[0] == key):
            if status in (200, 201):
                assert tier == row.tier
            elif status == 409:
                assert row is not None and tier != row.tier
    by = Counter(rows.values_list("tier", "paid_from"))
    for t in TIERS:
        assert by[(t, "plan")] == b.used(t) == b.included(t)  # demand exceeded supply: all used, none extra
        assert by[(t, "overage")] == b.overage(t) == soft_limit_buffer(included=b.included(t), buffer_percent=50)
    credits_rows = rows.filter(paid_from="credits").aggregate(s=Sum("credits_charged"))["s"] or Decimal("0")
    owed_rows = rows.filter(paid_from="overage").aggregate(s=Sum("credits_charged"))["s"] or Decimal("0")
    assert b.topup_used == credits_rows <= b.topup_purchased == Decimal("60.00")
    assert b.topup_purchased - b.topup_used < TIER_CREDIT_COST["small"]  # credits ran dry, never negative
    assert b.overage_credits_owed == owed_rows
    # Refusals only happened because everything was used up for that tier.
    assert any(o[1] == 402 for o in outcomes)
    # One bump per write transaction (batches write once), plus the first refusal of each tier,
    # which records the block (blocked_<tier>_at) once per period.
    assert 0 < b.version <= len(created) + 1 + len(TIERS)

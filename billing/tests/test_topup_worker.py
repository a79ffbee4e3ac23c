"""Auto top-up end to end: action_record (engine) -> trigger -> Redis -> a real Celery worker ->
off-session charge at the Stripe simulator -> outcome + email. MariaDB, transactional tests."""
from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.utils import timezone

from billing.models import AutoTopupSettingsChange, CreditBalance, CreditPurchase, PurchaseKind, PurchaseStatus
from billing.services import auto_topup, topup_purchases
from billing.services.balance import balance_for_update
from billing.services.grants import credit_grant_create
from billing.tests.saved_cards import customer_with_card, topup_sim  # noqa: F401
from organizations.models import Role
from organizations.tests.factories import MembershipFactory, UserFactory
from tests.helpers import free_port, wait_until
from usage.services import action_record

pytestmark = pytest.mark.django_db(transaction=True)


def _org_with_auto_topup(card: str | None, *, grant: str = "0", threshold: int = 50, packs: int = 1, cap: int = 10):
    owner = MembershipFactory(role=Role.OWNER)
    org = owner.organization
    now = timezone.now()
    if card:
        customer_with_card(org, card)
    else:
        org.stripe_customer_id = "cus_not_used"
        org.save(update_fields=["stripe_customer_id"])
    if Decimal(grant) > 0:
        credit_grant_create(organization_id=org.pk, credits=Decimal(grant), reason="test setup",
                            granted_by=UserFactory(is_staff=True), now=now)
    auto_topup.auto_topup_settings_update(organization_id=org.pk, enabled=False, threshold=threshold, packs=packs,
                                      monthly_cap_packs=cap, now=now)
    with transaction.atomic():
        b = balance_for_update(organization_id=org.pk, now=now)
        CreditBalance.objects.filter(pk=b.pk).update(auto_topup_enabled=True)  # no trigger yet: the action does it
    return owner, org


def _emails(worker, subject_part: str, to: str):
    return [m for m in worker.outbox() if subject_part in m["Subject"] and to in m["To"]]


@pytest.mark.worker
@pytest.mark.parametrize("card,status,code,subject", [
    ("4242424242424242", "succeeded", "", "credits added"),
    ("4000000000000341", "failed", "CARD_DECLINED", "failed"),
    ("4000002500003155", "requires_action", "AUTHENTICATION_REQUIRED", "Confirm"),
])
def test_auto_topup_outcomes_through_the_worker(topup_sim, celery_worker, card, status, code, subject):
    owner, org = _org_with_auto_topup(card)  # free plan: 45 credits of allowance < threshold 50
    result = action_record(organization_id=org.pk, user_id="u1", tier="small", now=timezone.now())
    assert result.created
    purchase = CreditPurchase.objects.get(organization=org, kind=PurchaseKind.AUTO_TOPUP)
    wait_until(lambda: CreditPurchase.objects.filter(pk=purchase.pk, status=status).exists(), timeout=60,
               message=f"the worker to record {status}")
    purchase.refresh_from_db()
    assert purchase.failure_code == code and purchase.stripe_payment_intent_id
    b = CreditBalance.objects.get(organization=org)
    assert b.topup_purchased == (Decimal("500.00") if status == "succeeded" else Decimal("0.00"))
    assert (purchase.open_slot is True) == (status == "requires_action")
    mails = wait_until(lambda: _emails(celery_worker, subject, owner.user.email), timeout=60,
                       message=f"the {status} email")
    if status == "requires_action":
        body = mails[0].get_payload(0).get_payload() if mails[0].is_multipart() else mails[0].get_payload()
        assert f"/billing/topups/{purchase.pk}/finish?org={org.slug}" in body


@pytest.mark.worker
def test_broker_down_then_up_sweeper_does_the_topup(topup_sim, celery_worker, settings):
    from billing_project.celery import app

    owner, org = _org_with_auto_topup("4242424242424242")
    # Point the app at a closed Redis port for the record (the real outage can't be caused otherwise
    # without stopping the shared Redis, which other people's tests use).
    good = app.conf.broker_url
    closed_port = free_port()
    app.conf.broker_url = f"redis://127.0.0.1:{closed_port}/0"
    app._pool = None
    app.amqp._producer_pool = None
    try:
        result = action_record(organization_id=org.pk, user_id="u1", tier="small", now=timezone.now())
    finally:
        app.conf.broker_url = good
        app._pool = None
        app.amqp._producer_pool = None
    assert result.created and result.body["success"]
    purchase = CreditPurchase.objects.get(organization=org, kind=PurchaseKind.AUTO_TOPUP)
    assert purchase.status == PurchaseStatus.PENDING and purchase.queued_at is None
    # Too early for the sweeper: nothing re-queued.
    assert topup_purchases.topup_sweep(now=timezone.now())["requeued"] == 0
    counts = topup_purchases.topup_sweep(now=timezone.now() + dt.timedelta(minutes=3))
    assert counts["requeued"] == 1
    wait_until(lambda: CreditPurchase.objects.filter(pk=purchase.pk, status="succeeded").exists(), timeout=60,
               message="the re-queued top-up to succeed")
    assert CreditBalance.objects.get(organization=org).topup_purchased == Decimal("500.00")


def test_32_parallel_actions_crossing_the_threshold_create_one_purchase(topup_sim):
    # 45 plan credits + 30 granted = 75 > threshold 50; 32 small actions cross it once.
    _owner, org = _org_with_auto_topup("4242424242424242", grant="30")
    now = timezone.now()
    barrier = threading.Barrier(32)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            action_record(organization_id=org.pk, user_id=f"u{i}", tier="small", now=now)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    purchases = list(CreditPurchase.objects.filter(organization=org, kind=PurchaseKind.AUTO_TOPUP))
    assert len(purchases) == 1
    assert purchases[0].status == PurchaseStatus.SUCCEEDED  # eager task in the committing thread
    b = CreditBalance.objects.get(organization=org)
    from usage.models import BillableAction
    facts = list(BillableAction.objects.filter(organization_id=org.pk).values_list("paid_from", flat=True))
    assert len(facts) == 32 and facts.count("plan") == b.used_small, (facts, b.used_small, b.included_small)
    assert b.used_small <= b.included_small, (b.used_small, b.included_small)
    assert b.topup_purchased == Decimal("530.00")


def test_three_failures_in_a_row_switch_auto_topup_off(topup_sim):
    from django.db.models import F

    owner, org = _org_with_auto_topup("4000000000000341")
    pause = auto_topup.AUTO_TOPUP_RETRY_AFTER + dt.timedelta(minutes=1)
    for i in range(3):
        action_record(organization_id=org.pk, user_id="u", tier="small", now=timezone.now())  # eager charge: declined
        assert CreditPurchase.objects.filter(organization=org, status="failed").count() == i + 1
        if i < 2:
            # the retry pause: another action right after a failure does not try again
            action_record(organization_id=org.pk, user_id="u", tier="small", now=timezone.now())
            assert CreditPurchase.objects.filter(organization=org).count() == i + 1
            # let the pause pass (the charge task records outcomes with the real clock)
            CreditPurchase.objects.filter(organization=org).update(completed_at=F("completed_at") - pause)
    b = CreditBalance.objects.get(organization=org)
    assert not b.auto_topup_enabled
    assert AutoTopupSettingsChange.objects.filter(organization=org, reason="three_failures", enabled=False).exists()
    later = timezone.now() + dt.timedelta(hours=10)
    action_record(organization_id=org.pk, user_id="u", tier="small", now=later)
    assert CreditPurchase.objects.filter(organization=org).count() == 3
    # re-enabling starts a new count: enabling below the threshold triggers at once, and that one
    # more failure does not switch it off again
    auto_topup.auto_topup_settings_update(organization_id=org.pk, enabled=True, threshold=50, packs=1,
                                      monthly_cap_packs=10, now=later + dt.timedelta(minutes=1))
    assert CreditPurchase.objects.filter(organization=org).count() == 4
    assert CreditBalance.objects.get(organization=org).auto_topup_enabled


def test_monthly_cap_counts_this_calendar_months_auto_packs(topup_sim):
    _owner, org = _org_with_auto_topup(None, threshold=50, packs=2, cap=3)
    now = timezone.now().replace(day=15, hour=12)
    last_month = now.replace(day=1) - dt.timedelta(days=3)

    def auto(created_at, status, packs=2):
        return CreditPurchase.objects.create(
            organization=org, kind=PurchaseKind.AUTO_TOPUP, method="saved_card", packs=packs,
            credits=Decimal(500 * packs), amount_cents=2000 * packs, status=status, created_at=created_at,
            completed_at=created_at)

    auto(last_month, "succeeded")            # last month: does not count
    auto(now - dt.timedelta(days=2), "failed")  # failed: bought nothing, does not count
    auto(now - dt.timedelta(days=1), "succeeded")  # 2 of 3 packs used
    with transaction.atomic():
        b = balance_for_update(organization_id=org.pk, now=now)
        p = auto_topup.topup_maybe_trigger(balance=b, now=now)
        assert p is not None and p.packs == 1  # only what fits under the cap
        transaction.set_rollback(True)
    auto(now - dt.timedelta(hours=1), "succeeded", packs=1)  # cap reached
    with transaction.atomic():
        b = balance_for_update(organization_id=org.pk, now=now)
        assert auto_topup.topup_maybe_trigger(balance=b, now=now) is None
        transaction.set_rollback(True)

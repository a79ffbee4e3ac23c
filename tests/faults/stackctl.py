"""Run inside Django against a private stack (env from tests/faults/stack.py): set-up and repair
steps a fault test needs, through the real services. Prints one JSON document.

    stackctl.py org SLUG [--plan pro] [--grant 100] [--card 4242424242424242] [--auto-topup 50]
    stackctl.py sweep [--ahead SECONDS]          # billing.services.topup_purchases.topup_sweep(now=now+ahead)
    stackctl.py charge PURCHASE_ID               # ops re-drive of a STARTED saved-card row (same key)
    stackctl.py requeue-webhooks [--ahead SECONDS]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

import django  # noqa: E402

django.setup()

from dateutil.relativedelta import relativedelta  # noqa: E402
from django.db import transaction  # noqa: E402
from django.utils import timezone  # noqa: E402

from billing import stripe_gateway  # noqa: E402
from billing.models import CreditBalance  # noqa: E402
from billing.services import auto_topup, topup_purchases  # noqa: E402
from billing.services.balance import balance_for_update, balance_set_plan  # noqa: E402
from billing.services.grants import credit_grant_create  # noqa: E402
from billing.services.webhooks import webhook_events_requeue_stale  # noqa: E402
from organizations.models import Organization, PlanTier, Role  # noqa: E402
from organizations.services import membership_add, organization_create, user_create  # noqa: E402
from tests import stripe_calls  # noqa: E402

CARDS = {"4242424242424242": "pm_card_visa", "4000000000000341": "pm_card_chargeCustomerFail"}
PASSWORD = "faults-pw-123456"


def cmd_org(a: argparse.Namespace) -> dict:
    now = timezone.now()
    org = organization_create(name=a.slug, slug=a.slug, now=now)
    user = user_create(email=f"owner@{a.slug}.test", password=PASSWORD)
    membership_add(organization=org, user=user, role=Role.OWNER, now=now)
    if a.plan != "free":
        tier = PlanTier(a.plan)
        Organization.objects.filter(pk=org.pk).update(subscription_tier=tier)
        balance_set_plan(organization_id=org.pk, plan_tier=tier, period_start=now,
                         period_end=now + relativedelta(months=1), reset_usage=True, now=now)
    if Decimal(a.grant) > 0:
        staff = user_create(email=f"staff@{a.slug}.test", password=PASSWORD)
        credit_grant_create(organization_id=org.pk, credits=Decimal(a.grant), reason="fault test setup",
                            granted_by=staff, now=now)
    customer_id = None
    if a.card:
        cus = stripe_gateway.customer_create(email=user.email, name=org.name, metadata={"orgId": str(org.pk)},
                                             idempotency_key=f"faults-cus:{org.pk}")
        pm = stripe_calls.payment_method_attach(payment_method_id=CARDS[a.card], customer_id=cus.id,
                                                  idempotency_key=f"faults-pm:{org.pk}")
        stripe_calls.customer_set_default_payment_method(customer_id=cus.id, payment_method_id=pm["id"],
                                                           idempotency_key=f"faults-default:{org.pk}")
        Organization.objects.filter(pk=org.pk).update(stripe_customer_id=cus.id)
        customer_id = cus.id
    if a.auto_topup is not None:
        auto_topup.auto_topup_settings_update(organization_id=org.pk, enabled=False, threshold=a.auto_topup, packs=1,
                                          monthly_cap_packs=10, now=now)
        with transaction.atomic():  # enabled without triggering now: the next action below it does
            b = balance_for_update(organization_id=org.pk, now=now)
            CreditBalance.objects.filter(pk=b.pk).update(auto_topup_enabled=True)
    return {"id": str(org.pk), "slug": org.slug, "email": user.email, "password": PASSWORD,
            "customer": customer_id}


def cmd_sweep(a: argparse.Namespace) -> dict:
    return topup_purchases.topup_sweep(now=timezone.now() + dt.timedelta(seconds=a.ahead))


def cmd_charge(a: argparse.Namespace) -> dict:
    p = topup_purchases.topup_purchase_charge(purchase_id=a.purchase_id, now=timezone.now(), allow_started=True)
    return {"id": p.pk, "status": p.status, "payment_intent": p.stripe_payment_intent_id}


def cmd_requeue_webhooks(a: argparse.Namespace) -> dict:
    return {"requeued": webhook_events_requeue_stale(now=timezone.now() + dt.timedelta(seconds=a.ahead))}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("org")
    p.add_argument("slug")
    p.add_argument("--plan", default="free")
    p.add_argument("--grant", default="0")
    p.add_argument("--card")
    p.add_argument("--auto-topup", type=int)
    p = sub.add_parser("sweep")
    p.add_argument("--ahead", type=int, default=0)
    p = sub.add_parser("charge")
    p.add_argument("purchase_id", type=int)
    p = sub.add_parser("requeue-webhooks")
    p.add_argument("--ahead", type=int, default=0)
    a = parser.parse_args()
    result = {"org": cmd_org, "sweep": cmd_sweep, "charge": cmd_charge,
              "requeue-webhooks": cmd_requeue_webhooks}[a.cmd](a)
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()

"""Seed a demo (lives in `usage`, the top layer, so it may seed every app): one owner login, an org on each plan, an API key,
and a few hundred agent actions per org spread over its current period, recorded through the real engine
(usage.services.action_record). Idempotent: re-running keeps the data (an org that already has actions gets
no more) and issues a fresh demo API key (the secret is only ever shown at creation)."""
from __future__ import annotations

import datetime as dt
import random

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from billing.errors import BillingError
from billing.services.accounts import billing_account_open
from billing.services.balance import balance_read, balance_set_plan
from organizations.models import ApiKey, Organization, PlanTier, Role
from organizations.services import api_key_create, api_key_revoke, membership_add, organization_create, user_create
from usage.models import BillableAction
from usage.services import action_record

DEMO_EMAIL = "owner@demo.example"
DEMO_PASSWORD = "demo-billing-2026"
DEMO_ORGS = [
    ("demo-free", "Demo Free Co", PlanTier.FREE),
    ("demo-starter", "Demo Starter Co", PlanTier.STARTER),
    ("demo-pro", "Demo Pro Co", PlanTier.PRO),
    ("demo-max", "Demo Max Co", PlanTier.MAX),
]
#: Actions seeded per org (the free plan runs out early: the rest are refused with 402, as in real life).
DEMO_ACTIONS = {PlanTier.FREE: 30, PlanTier.STARTER: 200, PlanTier.PRO: 300, PlanTier.MAX: 300}
DEMO_AGE = dt.timedelta(days=20)  # demo orgs were "created" this long ago, so their period has history
DEMO_USERS = ("alice", "bob", "carol", "dan")
DEMO_AGENTS = (("agt-research", "Research agent"), ("agt-support", "Support agent"), ("agt-code", "Code agent"))
DEMO_TIER_WEIGHTS = (("small", 60), ("medium", 25), ("large", 10), ("xl", 5))


class Command(BaseCommand):
    help = "Create the demo owner, one org per plan and an API key; print how to log in."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--base-url", default=settings.APP_BASE_URL)

    def handle(self, *args, base_url: str, **options) -> None:
        now = timezone.now()
        User = get_user_model()
        with transaction.atomic():
            user = User.objects.filter(username=DEMO_EMAIL).first()
            if user is None:
                user = user_create(email=DEMO_EMAIL, password=DEMO_PASSWORD, first_name="Demo")
            orgs = []
            for i, (slug, name, tier) in enumerate(DEMO_ORGS, start=1):
                org = Organization.objects.filter(slug=slug).first()
                if org is None:
                    org = organization_create(name=name, slug=slug, owner=user, now=now - DEMO_AGE)
                    billing_account_open(organization_id=org.pk, now=now - DEMO_AGE)  # balance + welcome email
                    Organization.objects.filter(pk=org.pk).update(subscription_tier=tier)
                    org.refresh_from_db()
                    if tier != PlanTier.FREE:  # paid: a (pretend) subscription period that began with the org
                        balance_set_plan(organization_id=org.pk, plan_tier=tier, now=now - DEMO_AGE,
                                         period_start=now - DEMO_AGE, period_end=now - DEMO_AGE + dt.timedelta(days=30),
                                         reset_usage=True)
                membership_add(organization=org, user=user, role=Role.OWNER, now=now)
                orgs.append(org)
                self.stdout.write(f"  [{i}/{len(DEMO_ORGS)}] {org.slug}: {org.subscription_tier}")
            main_org = next(o for o in orgs if o.slug == "demo-pro")
            for old in ApiKey.objects.filter(organization=main_org, name="demo", revoked_at__isnull=True):
                api_key_revoke(organization=main_org, key_id=old.pk, now=now)
            issued = api_key_create(organization=main_org, name="demo", created_by=user, now=now)

        for org in orgs:
            self._seed_usage(org=org, now=now)
        self.stdout.write(self.style.SUCCESS("\nDemo ready"))
        self.stdout.write(f"  dashboard:          {base_url}/settings/billing")
        self.stdout.write(f"  login:              {DEMO_EMAIL}")
        self.stdout.write(f"  password:           {DEMO_PASSWORD}")
        self.stdout.write(f"  API token ({main_org.slug}, orgId {main_org.pk}):")
        self.stdout.write(f"                      {issued.token}")
        if settings.ORCHESTRATOR_SERVICE_TOKEN and settings.DEBUG:
            self.stdout.write(f"  orchestrator token: {settings.ORCHESTRATOR_SERVICE_TOKEN}")

    def _seed_usage(self, *, org: Organization, now: dt.datetime) -> None:
        """DEMO_ACTIONS[plan] actions at even steps from the period start to now, via the engine."""
        if BillableAction.objects.filter(organization=org).exists():
            self.stdout.write(f"  {org.slug}: usage already seeded")
            return
        start = balance_read(organization_id=org.pk, now=now).period_start
        n = DEMO_ACTIONS[org.subscription_tier]
        rng = random.Random(org.slug)
        tiers = [t for t, _ in DEMO_TIER_WEIGHTS]
        weights = [w for _, w in DEMO_TIER_WEIGHTS]
        step = (now - start) / (n + 1)
        recorded = refused = 0
        for i in range(n):
            agent_id, agent_name = rng.choice(DEMO_AGENTS)
            try:
                action_record(organization_id=org.pk, user_id=rng.choice(DEMO_USERS), tier=rng.choices(tiers, weights)[0],
                              now=start + step * (i + 1), agent_id=agent_id, agent_name=agent_name,
                              action_key=rng.choice(("web.search", "doc.summarize", "code.review", "ticket.reply")),
                              idempotency_key=f"seed-{org.slug}-{i}")
                recorded += 1
            except BillingError as exc:
                if exc.code != "CREDITS_EXHAUSTED":
                    raise
                refused += 1
            if (i + 1) % 100 == 0 or i + 1 == n:
                self.stdout.write(f"  {org.slug}: {i + 1}/{n} actions ({recorded} recorded, {refused} refused: 402)")

"""Seed a demo (lives in `usage`, the top layer, so it may seed every app): one owner login, an org on each plan, an API key. Idempotent: re-running keeps
the data and issues a fresh demo API key (the secret is only ever shown at creation)."""
from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from organizations.models import ApiKey, Organization, PlanTier, Role
from organizations.services import api_key_create, api_key_revoke, membership_add, organization_create, user_create

DEMO_EMAIL = "owner@demo.example"
DEMO_PASSWORD = "demo-billing-2026"
DEMO_ORGS = [
    ("demo-free", "Demo Free Co", PlanTier.FREE),
    ("demo-starter", "Demo Starter Co", PlanTier.STARTER),
    ("demo-pro", "Demo Pro Co", PlanTier.PRO),
    ("demo-max", "Demo Max Co", PlanTier.MAX),
]


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
                    org = organization_create(name=name, slug=slug, owner=user, now=now)
                    Organization.objects.filter(pk=org.pk).update(subscription_tier=tier)
                    org.refresh_from_db()
                membership_add(organization=org, user=user, role=Role.OWNER, now=now)
                orgs.append(org)
                self.stdout.write(f"  [{i}/{len(DEMO_ORGS)}] {org.slug}: {org.subscription_tier}")
            main_org = next(o for o in orgs if o.slug == "demo-pro")
            for old in ApiKey.objects.filter(organization=main_org, name="demo", revoked_at__isnull=True):
                api_key_revoke(organization=main_org, key_id=old.pk, now=now)
            issued = api_key_create(organization=main_org, name="demo", created_by=user, now=now)

        self.stdout.write(self.style.SUCCESS("\nDemo ready"))
        self.stdout.write(f"  dashboard:          {base_url}/settings/billing")
        self.stdout.write(f"  login:              {DEMO_EMAIL}")
        self.stdout.write(f"  password:           {DEMO_PASSWORD}")
        self.stdout.write(f"  API token ({main_org.slug}, orgId {main_org.pk}):")
        self.stdout.write(f"                      {issued.token}")
        if settings.ORCHESTRATOR_SERVICE_TOKEN and settings.DEBUG:
            self.stdout.write(f"  orchestrator token: {settings.ORCHESTRATOR_SERVICE_TOKEN}")

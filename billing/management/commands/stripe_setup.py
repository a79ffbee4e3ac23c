"""`manage.py stripe_setup`: create the plan and credit-pack prices (idempotent, by lookup key) and the
billing portal configuration (idempotent, by metadata) in whichever Stripe the settings point at, and
print the `STRIPE_PRICE_*=` and `STRIPE_PORTAL_CONFIGURATION=` env lines."""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from billing.errors import BillingError
from billing.services.plan_changes import stripe_portal_configuration_ensure, stripe_prices_ensure


class Command(BaseCommand):
    help = ("Create the Stripe products/prices for starter/pro/max and the 500-credit pack and the billing portal "
            "configuration; print the STRIPE_PRICE_* and STRIPE_PORTAL_CONFIGURATION lines.")

    def handle(self, *args, **options):
        try:
            ids = stripe_prices_ensure()
            ids["STRIPE_PORTAL_CONFIGURATION"] = stripe_portal_configuration_ensure()
        except BillingError as exc:
            raise CommandError(f"{exc.code}: {exc.message}") from exc
        for setting, price_id in ids.items():
            self.stdout.write(f"{setting}={price_id}")

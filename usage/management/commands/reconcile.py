"""`manage.py reconcile [--org SLUG] [--fix] [--json] [--stripe]`: rebuild balances from the facts.

Exit status: 0 when every balance matches its facts (or every drift was fixed with --fix) and,
with --stripe, nothing disagrees with Stripe or is stuck; 1 otherwise. The logic lives in
usage.services_reconcile (balances from facts) and billing.services.health (Stripe and stuck work);
this command parses, calls them, and prints.
"""
from __future__ import annotations

import json
import sys
import time

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing.services.health import stripe_compare
from organizations.models import Organization
from usage.services_reconcile import DEFAULT_CHUNK_SIZE, reconcile_orgs

#: Without a terminal, a progress line every this many orgs (to stderr).
PROGRESS_EVERY = 10_000


class Command(BaseCommand):
    help = "Rebuild each org's current-period balance from billable actions and purchases; report or fix drift."

    def add_arguments(self, parser):
        parser.add_argument("--org", metavar="SLUG", help="only this organization")
        parser.add_argument("--fix", action="store_true", help="rewrite drifted balances under the row lock")
        parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
        parser.add_argument("--stripe", action="store_true",
                            help="also compare subscriptions with Stripe and list stuck purchases/webhook events")
        parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="orgs per SQL aggregate")

    def handle(self, *args, **opts):
        now = timezone.now()
        slug = opts["org"]
        if slug is not None and not Organization.objects.filter(slug=slug).exists():
            raise CommandError(f"no organization with slug {slug!r}")
        progress = self._progress_printer()
        started = time.monotonic()
        report = reconcile_orgs(now=now, org_slug=slug, fix=opts["fix"], chunk_size=opts["chunk_size"],
                                actor="manage.py reconcile", progress=progress)
        progress(report.checked_orgs, final=True)
        stripe_report = stripe_compare(now=now, org_slug=slug) if opts["stripe"] else None
        elapsed = time.monotonic() - started

        if opts["json"]:
            doc = {"fix": opts["fix"], **report.as_dict(), "seconds": round(elapsed, 3)}
            if stripe_report is not None:
                doc["stripe"] = stripe_report.as_dict()
            self.stdout.write(json.dumps(doc, indent=2))
        else:
            self._print_table(report, fix=opts["fix"], elapsed=elapsed)
            if stripe_report is not None:
                self._print_stripe(stripe_report)

        unresolved = bool(report.drifts) and (not opts["fix"] or bool(report.unfixable))
        if unresolved or (stripe_report is not None and stripe_report.problems):
            sys.exit(1)

    # --- output ---------------------------------------------------------------------------------

    def _progress_printer(self):
        tty = sys.stderr.isatty()
        state = {"last": 0}

        def progress(done: int, final: bool = False) -> None:
            if tty:
                sys.stderr.write(f"\rreconcile: {done} orgs checked")
                if final:
                    sys.stderr.write("\n")
                sys.stderr.flush()
            elif done - state["last"] >= PROGRESS_EVERY or (final and done >= PROGRESS_EVERY):
                sys.stderr.write(f"reconcile: {done} orgs checked\n")
                state["last"] = done

        return progress

    def _print_table(self, report, *, fix: bool, elapsed: float) -> None:
        out = self.stdout
        if not report.drifts:
            out.write(f"No drift: {report.checked_orgs} orgs checked in {elapsed:.2f}s.")
            return
        rows = [("org", "field", "cached", "expected", "difference")]
        for d in report.drifts:
            j = d.as_dict()
            rows.append((d.org_slug, d.field, _s(j["cached"]), _s(j["expected"]), _s(j["difference"])))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for n, r in enumerate(rows):
            out.write("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
            if n == 0:
                out.write("  ".join("-" * w for w in widths))
        out.write(f"{len(report.drifts)} drifted fields in {report.drifted_orgs} of {report.checked_orgs} orgs "
                  f"({elapsed:.2f}s).")
        if fix:
            out.write(f"Fixed {len(report.fixed_orgs)} orgs under the balance lock.")
            for u in report.unfixable:
                out.write(self.style.ERROR(f"NOT fixed {u['org']}: {u['error']}"))
        else:
            out.write("Run with --fix to rewrite them from the facts.")

    def _print_stripe(self, r) -> None:
        out = self.stdout
        out.write(f"\nStripe: {r.checked_subscriptions} subscriptions compared, {len(r.mismatches)} mismatches, "
                  f"{len(r.errors)} errors.")
        for m in r.mismatches:
            out.write(f"  {m['org']} {m['subscription']} {m['field']}: local={m['local']} stripe={m['stripe']}")
        for e in r.errors:
            out.write(f"  {e['org']} {e['subscription']}: {e['error']} {e['message']}")
        out.write(f"Stuck purchases: {len(r.stuck_purchases)}")
        for p in r.stuck_purchases:
            out.write(f"  #{p['id']} {p['org']} {p['kind']} {p['status']} {p['credits']} credits, {p['ageMinutes']} min")
        out.write(f"Checkout intents stuck mid-way: {len(r.stuck_checkouts)}")
        for c in r.stuck_checkouts:
            out.write(f"  #{c['id']} {c['org']} {c['planTier']} {c['status']}, {c['ageMinutes']} min "
                      f"(idempotency key {c['idempotencyKey']})")
        out.write(f"Failed webhook events (7 days): {len(r.failed_webhooks)}")
        for w in r.failed_webhooks:
            out.write(f"  {w['stripeEventId']} {w['type']}: {w['error']}")
        out.write(f"Webhook events pending too long: {len(r.stuck_webhooks)}")
        for w in r.stuck_webhooks:
            out.write(f"  {w['stripeEventId']} {w['type']}, {w['ageMinutes']} min")


def _s(value) -> str:
    return "-" if value is None else str(value)

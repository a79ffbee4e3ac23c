"""Staff admin for billing: subscriptions, invoices, webhook events, balances, purchases.

Stripe-synced fields are read-only (Stripe is the source of truth; a re-sync rewrites them).
Facts (credit purchases) cannot be added, changed or deleted here: corrections are new rows
(a grant). Actions call services; Stripe reads happen outside any DB transaction (admin
actions are not wrapped in one), then the sync service writes under its own transaction.

The organization page is extended here (billing may import organizations, not the reverse):
balance inline, subscriptions inline, Stripe customer link, grant credits / extend trial.
usage.admin extends it once more with "recompute balance" (usage owns the facts).
"""
from __future__ import annotations

import json
import logging

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html

from organizations.admin import OrganizationAdmin
from organizations.models import Organization

from .admin_links import stripe_link
from .errors import BillingError
from .models import Invoice, Subscription, WebhookEvent
from .plans import format_cents

logger = logging.getLogger("billing.admin")

ORG_SEARCH = ("organization__name", "organization__slug", "organization__stripe_customer_id",
              "organization__memberships__user__email")


class ReadOnlyMixin:
    """Every field read-only, no add, no delete (Stripe mirrors and facts)."""

    def get_readonly_fields(self, request, obj=None):
        declared = tuple(getattr(self, "readonly_fields", ()))
        return declared + tuple(f.name for f in self.model._meta.fields if f.name not in declared)

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class FactAdminMixin(ReadOnlyMixin):
    """Facts: not addable, changeable or deletable in admin; staff can only view them."""

    def has_change_permission(self, request, obj=None) -> bool:
        return False


def _report(modeladmin, request, ok: int, failures: list[str], verb: str) -> None:
    if ok:
        modeladmin.message_user(request, f"{verb}: {ok} done.", messages.SUCCESS)
    for failure in failures:
        modeladmin.message_user(request, failure, messages.ERROR)


# --- Subscriptions ----------------------------------------------------------------------------

def subscription_resync(subscription: Subscription, *, now) -> Subscription:
    """Re-read the subscription from Stripe (no transaction open) and apply it with subscription_sync."""
    from . import stripe_gateway  # noqa: PLC0415 - only module importing stripe; lazy keeps admin light
    from .services.subscriptions import subscription_sync  # noqa: PLC0415

    stripe_subscription = stripe_gateway.subscription_retrieve(subscription_id=subscription.stripe_subscription_id)
    return subscription_sync(stripe_subscription=stripe_subscription, now=now)


@admin.register(Subscription)
class SubscriptionAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("stripe_subscription_id", "organization", "plan_tier", "status", "current_period_end",
                    "trial_end", "cancel_at_period_end", "grace_period_ends_at", "stripe", "updated_at")
    list_filter = ("plan_tier", "status", "cancel_at_period_end", "current_period_end", "trial_end")
    search_fields = ("stripe_subscription_id", "stripe_customer_id", "stripe_price_id", *ORG_SEARCH)
    list_select_related = ("organization",)
    date_hierarchy = "created_at"
    readonly_fields = ("stripe", "stripe_customer")
    actions = ["resync_from_stripe"]

    @admin.display(description="Stripe")
    def stripe(self, obj: Subscription):
        return stripe_link("subscription", obj.stripe_subscription_id)

    @admin.display(description="Stripe customer")
    def stripe_customer(self, obj: Subscription):
        return stripe_link("customer", obj.stripe_customer_id)

    @admin.action(description="Re-sync selected subscriptions from Stripe")
    def resync_from_stripe(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        ok, failures = 0, []
        for subscription in queryset:
            try:
                subscription_resync(subscription, now=timezone.now())
                ok += 1
            except BillingError as exc:
                logger.warning("admin re-sync of %s failed: %s", subscription.stripe_subscription_id, exc)
                failures.append(f"{subscription.stripe_subscription_id}: {exc.code} {exc.message}")
        _report(self, request, ok, failures, "Re-synced from Stripe")


class SubscriptionInline(admin.TabularInline):
    model = Subscription
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("stripe_subscription_id", "plan_tier", "status", "current_period_end", "trial_end",
              "cancel_at_period_end", "grace_period_ends_at")
    readonly_fields = fields
    ordering = ("-created_at",)

    def has_add_permission(self, request, obj=None) -> bool:
        return False


# --- Invoices ---------------------------------------------------------------------------------

@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("stripe_invoice_id", "organization", "type", "status", "amount_due", "amount_paid",
                    "created_at", "paid_at", "stripe")
    list_filter = ("status", "type", "created_at", "paid_at")
    search_fields = ("stripe_invoice_id", "subscription__stripe_subscription_id", *ORG_SEARCH)
    list_select_related = ("organization",)
    date_hierarchy = "created_at"
    readonly_fields = ("stripe",)

    @admin.display(description="Due", ordering="amount_due_cents")
    def amount_due(self, obj: Invoice) -> str:
        return format_cents(obj.amount_due_cents, obj.currency)

    @admin.display(description="Paid", ordering="amount_paid_cents")
    def amount_paid(self, obj: Invoice) -> str:
        return format_cents(obj.amount_paid_cents, obj.currency)

    @admin.display(description="Stripe")
    def stripe(self, obj: Invoice):
        return stripe_link("invoice", obj.stripe_invoice_id)


# --- Webhook events ---------------------------------------------------------------------------

@admin.register(WebhookEvent)
class WebhookEventAdmin(FactAdminMixin, admin.ModelAdmin):
    list_display = ("stripe_event_id", "type", "status", "retry_count", "received_at", "processed_at",
                    "short_error", "stripe")
    list_filter = ("status", "type", "received_at")
    search_fields = ("stripe_event_id", "type", "error")
    date_hierarchy = "received_at"
    readonly_fields = ("stripe", "pretty_payload")
    exclude = ("payload",)
    actions = ["reprocess"]

    def get_readonly_fields(self, request, obj=None):
        return tuple(f for f in super().get_readonly_fields(request, obj) if f != "payload")

    @admin.display(description="Error")
    def short_error(self, obj: WebhookEvent) -> str:
        return (obj.error[:80] + "…") if len(obj.error) > 80 else obj.error

    @admin.display(description="Stripe")
    def stripe(self, obj: WebhookEvent):
        return stripe_link("event", obj.stripe_event_id)

    @admin.display(description="Payload")
    def pretty_payload(self, obj: WebhookEvent):
        return format_html("<pre style='white-space:pre-wrap'>{}</pre>", json.dumps(obj.payload, indent=2))

    @admin.action(description="Reprocess selected webhook events")
    def reprocess(self, request: HttpRequest, queryset: QuerySet[WebhookEvent]) -> None:
        from .logging import log_webhook  # noqa: PLC0415
        from .services.webhooks import webhook_event_reprocess  # noqa: PLC0415

        ok, failures = 0, []
        for event in queryset:
            try:
                webhook_event_reprocess(event_id=event.pk, now=timezone.now())
                log_webhook("webhook.reprocess_requested", event_id=event.stripe_event_id, type=event.type,
                            by=request.user.get_username())
                ok += 1
            except BillingError as exc:
                failures.append(f"{event.stripe_event_id}: {exc.code} {exc.message}")
        _report(self, request, ok, failures, "Reprocessing")


# --- Organization page, extended with billing ---------------------------------------------------

class BillingOrganizationAdmin(OrganizationAdmin):
    list_display = (*OrganizationAdmin.list_display, "stripe_customer")
    readonly_fields = (*OrganizationAdmin.readonly_fields, "stripe_customer", "subscription_tier",
                       "subscription_status", "trial_ends_at")
    inlines = [*OrganizationAdmin.inlines, SubscriptionInline]

    @admin.display(description="Stripe customer")
    def stripe_customer(self, obj: Organization):
        return stripe_link("customer", obj.stripe_customer_id)


admin.site.unregister(Organization)
admin.site.register(Organization, BillingOrganizationAdmin)

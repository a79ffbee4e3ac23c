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
from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html

from billing_project.errors import AppError
from organizations.admin import OrganizationAdmin
from organizations.models import Organization

from . import stripe_gateway
from .admin_links import stripe_link
from .errors import BillingError
from .logging import log_webhook
from .models import (
    AllowanceChange,
    AutoTopupSettingsChange,
    CreditBalance,
    CreditPurchase,
    Invoice,
    Subscription,
    WebhookEvent,
)
from .plans import TIERS, format_cents
from .services.accounts import billing_account_open
from .services.grants import MAX_GRANT_CREDITS, credit_grant_create
from .services.plan_changes import subscription_trial_extend
from .services.subscription_sync import subscription_sync
from .services.webhooks import webhook_event_reprocess

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
    stripe_subscription = stripe_gateway.subscription_retrieve(subscription_id=subscription.stripe_subscription_id)
    return subscription_sync(stripe_subscription=stripe_subscription, now=now)


@admin.register(AllowanceChange)
class AllowanceChangeAdmin(FactAdminMixin, admin.ModelAdmin):
    """Prorated upgrades within a period: what each tier's allowance became, and why (read-only)."""

    list_display = ("organization", "from_plan_tier", "to_plan_tier", "effective_at", "period_start",
                    "included_small", "included_medium", "included_large", "included_xl")
    list_filter = ("to_plan_tier",)
    search_fields = ORG_SEARCH
    list_select_related = ("organization",)


@admin.register(Subscription)
class SubscriptionAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("stripe_subscription_id", "organization", "plan_tier", "status", "current_period_end",
                    "trial_end", "cancel_at_period_end", "pending_update_plan_tier", "grace_period_ends_at", "stripe",
                    "updated_at")
    list_filter = ("plan_tier", "status", "cancel_at_period_end", "current_period_end", "trial_end")
    search_fields = ("stripe_subscription_id", "stripe_customer_id", "stripe_price_id", *ORG_SEARCH)
    list_select_related = ("organization",)
    date_hierarchy = "created_at"
    readonly_fields = ("stripe", "stripe_customer")
    actions = ["resync_from_stripe", "extend_trial"]

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


    @admin.action(description="Extend trial…", permissions=["change"])
    def extend_trial(self, request: HttpRequest, queryset: QuerySet[Subscription]):
        """Intermediate form (days 1-30), then Stripe (no transaction open here) and subscription_sync."""
        form = ExtendTrialForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            return _intermediate(self, request, queryset, form=form, action="extend_trial",
                                 title="Extend trial", template="admin/billing/extend_trial.html")
        ok, failures = 0, []
        for subscription in queryset:
            try:
                subscription_trial_extend(subscription=subscription, days=form.cleaned_data["days"],
                                          now=timezone.now())
                ok += 1
            except AppError as exc:
                logger.warning("admin extend trial of %s failed: %s", subscription.stripe_subscription_id, exc)
                failures.append(f"{subscription.stripe_subscription_id}: {exc.code} {exc.message}")
        _report(self, request, ok, failures, f"Trial extended by {form.cleaned_data['days']} days")
        return None


class ExtendTrialForm(forms.Form):
    days = forms.IntegerField(min_value=1, max_value=30, initial=7,
                              help_text="Days added to each selected subscription's trial end (1-30). "
                                        "Stripe moves the first invoice; nothing is prorated.")


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


# --- Balances (a cache: read-only here; changed by grants and "recompute balance") ----------------

def _tier_counts(balance: CreditBalance) -> str:
    return " · ".join(f"{t} {balance.used(t)}/{balance.included(t)}"
                      + (f"+{balance.overage(t)}" if balance.overage(t) else "") for t in TIERS)


@admin.register(CreditBalance)
class CreditBalanceAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("organization", "plan_tier", "period_start", "period_end", "usage", "topup_remaining_display",
                    "overage_credits_owed", "auto_topup_enabled", "updated_at")
    list_filter = ("plan_tier", "auto_topup_enabled", "period_end")
    search_fields = ORG_SEARCH
    list_select_related = ("organization",)
    readonly_fields = ("usage", "topup_remaining_display")

    @admin.display(description="Used / included (+overage)")
    def usage(self, obj: CreditBalance) -> str:
        return _tier_counts(obj)

    @admin.display(description="Top-up remaining")
    def topup_remaining_display(self, obj: CreditBalance) -> Decimal:
        return obj.topup_remaining


class CreditBalanceInline(admin.StackedInline):
    model = CreditBalance
    can_delete = False
    extra = 0
    fields = ("plan_tier", ("period_start", "period_end"), "usage", ("topup_purchased", "topup_used",
              "topup_remaining_display"), "overage_credits_owed",
              ("auto_topup_enabled", "auto_topup_threshold", "auto_topup_packs", "auto_topup_monthly_cap_packs"),
              "updated_at")
    readonly_fields = ("plan_tier", "period_start", "period_end", "usage", "topup_purchased", "topup_used",
                       "topup_remaining_display", "overage_credits_owed", "auto_topup_enabled", "auto_topup_threshold",
                       "auto_topup_packs", "auto_topup_monthly_cap_packs", "updated_at")
    usage = CreditBalanceAdmin.usage
    topup_remaining_display = CreditBalanceAdmin.topup_remaining_display

    def has_add_permission(self, request, obj=None) -> bool:
        return False


# --- Purchases and grants (facts) ----------------------------------------------------------------

@admin.register(CreditPurchase)
class CreditPurchaseAdmin(FactAdminMixin, admin.ModelAdmin):
    list_display = ("id", "organization", "kind", "status", "credits", "amount", "created_by", "short_reason",
                    "created_at", "credits_applied_at", "stripe")
    list_filter = ("kind", "status", "method", "created_at", "credits_applied_at")
    search_fields = ("stripe_payment_intent_id", "stripe_checkout_session_id", "stripe_invoice_id",
                     "created_by__email", "reason", *ORG_SEARCH)
    list_select_related = ("organization", "created_by")
    date_hierarchy = "created_at"
    readonly_fields = ("stripe", "stripe_checkout")

    @admin.display(description="Charged", ordering="amount_cents")
    def amount(self, obj: CreditPurchase) -> str:
        return format_cents(obj.amount_cents, obj.currency)

    @admin.display(description="Reason")
    def short_reason(self, obj: CreditPurchase) -> str:
        return (obj.reason[:60] + "…") if len(obj.reason) > 60 else obj.reason

    @admin.display(description="Stripe payment")
    def stripe(self, obj: CreditPurchase):
        return stripe_link("payment_intent", obj.stripe_payment_intent_id)

    @admin.display(description="Stripe checkout")
    def stripe_checkout(self, obj: CreditPurchase):
        return stripe_link("checkout_session", obj.stripe_checkout_session_id)


@admin.register(AutoTopupSettingsChange)
class AutoTopupSettingsChangeAdmin(FactAdminMixin, admin.ModelAdmin):
    list_display = ("organization", "enabled", "threshold", "packs", "monthly_cap_packs", "reason", "changed_by",
                    "created_at")
    list_filter = ("enabled", "reason", "created_at")
    search_fields = ("changed_by__email", *ORG_SEARCH)
    list_select_related = ("organization", "changed_by")


# --- Organization page, extended with billing ---------------------------------------------------

class GrantCreditsForm(forms.Form):
    credits = forms.DecimalField(min_value=Decimal("0.01"), max_value=MAX_GRANT_CREDITS, decimal_places=2,
                                 max_digits=12, help_text="Credits added to each selected organization's top-up credits.")
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=2000,
                             help_text="Recorded on the grant (audit trail); shown to staff only.")


def _intermediate(modeladmin, request, queryset, *, form, action: str, title: str, template: str):
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title, "form": form, "queryset": queryset, "action": action,
        "opts": modeladmin.model._meta, "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(request, template, context)


class BillingOrganizationAdmin(OrganizationAdmin):
    list_display = (*OrganizationAdmin.list_display, "stripe_customer")
    readonly_fields = (*OrganizationAdmin.readonly_fields, "stripe_customer", "subscription_tier",
                       "subscription_status", "trial_ends_at")
    inlines = [CreditBalanceInline, *OrganizationAdmin.inlines, SubscriptionInline]
    actions = ["grant_credits"]

    def save_model(self, request: HttpRequest, obj: Organization, form, change: bool) -> None:
        if not change and obj.created_at is None:
            obj.created_at = timezone.now()  # read-only in the form; services stamp it, so does the admin
        super().save_model(request, obj, form, change)
        if not change:
            # Members are saved by the inlines after this, in the same transaction; the welcome email
            # is queued on commit, so it reaches the owners added on this very form.
            billing_account_open(organization_id=obj.pk, now=obj.created_at)

    @admin.display(description="Stripe customer")
    def stripe_customer(self, obj: Organization):
        return stripe_link("customer", obj.stripe_customer_id)

    @admin.action(description="Grant credits…", permissions=["change"])
    def grant_credits(self, request: HttpRequest, queryset: QuerySet[Organization]):
        form = GrantCreditsForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            return _intermediate(self, request, queryset, form=form, action="grant_credits",
                                 title="Grant credits", template="admin/billing/grant_credits.html")
        ok, failures = 0, []
        for org in queryset:
            try:
                credit_grant_create(organization_id=org.pk, credits=form.cleaned_data["credits"],
                                    reason=form.cleaned_data["reason"], granted_by=request.user, now=timezone.now())
                ok += 1
            except BillingError as exc:
                failures.append(f"{org.slug}: {exc.code} {exc.message}")
        _report(self, request, ok, failures, f"Granted {form.cleaned_data['credits']} credits")
        return None


admin.site.unregister(Organization)
admin.site.register(Organization, BillingOrganizationAdmin)

"""Staff admin for usage facts, and "recompute balance" (usage owns the facts the balance is rebuilt from).

Billable actions are append-only facts: viewable, never added, changed or deleted here.
"""
from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from billing.admin import BillingOrganizationAdmin, CreditBalanceAdmin, FactAdminMixin
from billing.models import CreditBalance
from organizations.models import Organization

from .models import BillableAction
from .services_reconcile import balance_rebuild


@admin.register(BillableAction)
class BillableActionAdmin(FactAdminMixin, admin.ModelAdmin):
    list_display = ("id", "organization", "tier", "paid_from", "credits_charged", "user_id", "agent_name",
                    "period_start", "created_at")
    list_filter = ("tier", "paid_from", "created_at")
    search_fields = ("=id", "user_id", "agent_id", "agent_name", "action_key", "idempotency_key",
                     "organization__name", "organization__slug")
    list_select_related = ("organization",)
    ordering = ("-id",)
    show_full_result_count = False  # COUNT(*) over millions of facts on every page is wasted work
    list_per_page = 50


def _recompute(modeladmin, request: HttpRequest, organization_ids: list) -> None:
    actor = f"admin:{request.user.get_username()}"
    fixed, clean = [], 0
    for org_id in organization_ids:
        changed = balance_rebuild(organization_id=org_id, now=timezone.now(), actor=actor)
        if changed:
            fixed.append(f"{org_id}: {', '.join(changed)}")
        else:
            clean += 1
    if clean:
        modeladmin.message_user(request, f"{clean} balance(s) already matched their facts.", messages.SUCCESS)
    for line in fixed:
        modeladmin.message_user(request, f"Rebuilt from facts — {line}", messages.WARNING)


class UsageOrganizationAdmin(BillingOrganizationAdmin):
    actions = [*BillingOrganizationAdmin.actions, "recompute_balance"]

    @admin.action(description="Recompute balance from facts (reconcile --fix)", permissions=["change"])
    def recompute_balance(self, request: HttpRequest, queryset: QuerySet[Organization]) -> None:
        _recompute(self, request, list(queryset.values_list("pk", flat=True)))


class UsageCreditBalanceAdmin(CreditBalanceAdmin):
    actions = ["recompute_balance"]

    @admin.action(description="Recompute balance from facts (reconcile --fix)", permissions=["change"])
    def recompute_balance(self, request: HttpRequest, queryset: QuerySet[CreditBalance]) -> None:
        _recompute(self, request, list(queryset.values_list("organization_id", flat=True)))


admin.site.unregister(Organization)
admin.site.register(Organization, UsageOrganizationAdmin)
admin.site.unregister(CreditBalance)
admin.site.register(CreditBalance, UsageCreditBalanceAdmin)

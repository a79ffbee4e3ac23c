from django.contrib import admin

from .models import ApiKey, Membership, Organization


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    raw_id_fields = ("user",)


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "subscription_tier", "subscription_status", "trial_ends_at", "created_at")
    list_filter = ("subscription_tier", "subscription_status")
    search_fields = ("name", "slug", "stripe_customer_id", "memberships__user__email")
    readonly_fields = ("id", "stripe_customer_id", "created_at")
    inlines = [MembershipInline]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "organization", "prefix", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "prefix", "organization__name", "organization__slug")
    readonly_fields = ("prefix", "secret_hash", "created_at", "last_used_at")

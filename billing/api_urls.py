"""Browser JSON endpoints for subscriptions (included from billing_project/urls.py)."""
from django.urls import path

from . import api_views

urlpatterns = [
    path("api/billing/checkout", api_views.checkout_create, name="billing-api-checkout"),
    path("api/billing/portal", api_views.portal_create, name="billing-api-portal"),
    path("api/billing/subscription/upgrade", api_views.subscription_upgrade, name="billing-api-upgrade"),
    path("api/billing/subscription/downgrade", api_views.subscription_downgrade, name="billing-api-downgrade"),
    path("api/billing/subscription/downgrade/cancel", api_views.subscription_downgrade_cancel,
         name="billing-api-downgrade-cancel"),
    path("api/billing/subscription/cancel", api_views.subscription_cancel, name="billing-api-cancel"),
    path("api/billing/subscription/status", api_views.subscription_status, name="billing-api-status"),
]

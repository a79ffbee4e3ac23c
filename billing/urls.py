from django.urls import path

from . import topup_views, views, webhook_views

urlpatterns = [
    path("settings/billing", views.dashboard, name="billing-dashboard"),
    path("billing", views.plans, name="billing-plans"),
    path("settings/invoices", views.invoices, name="billing-invoices"),
    path("api/webhooks/stripe", webhook_views.stripe_webhook, name="stripe-webhook"),
    path("api/billing/credits/topup", topup_views.credits_topup, name="credits-topup"),
    path("api/billing/credits/auto-topup", topup_views.credits_auto_topup, name="credits-auto-topup"),
    path("api/billing/credits/history", topup_views.credits_history, name="credits-history"),
    path("billing/topups/<int:purchase_id>/finish", topup_views.topup_finish, name="topup-finish"),
]

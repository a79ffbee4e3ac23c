from django.urls import path

from . import views, webhook_views

urlpatterns = [
    path("settings/billing", views.dashboard, name="billing-dashboard"),
    path("billing", views.plans, name="billing-plans"),
    path("api/webhooks/stripe", webhook_views.stripe_webhook, name="stripe-webhook"),
]

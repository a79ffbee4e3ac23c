from django.urls import path

from . import views

urlpatterns = [
    path("api/billing/usage/record", views.usage_record, name="usage-record"),
    path("api/billing/usage/record-batch", views.usage_record_batch, name="usage-record-batch"),
    path("api/billing/usage/check", views.usage_check, name="usage-check"),
    path("api/billing/usage", views.usage_summary, name="usage-summary"),
]

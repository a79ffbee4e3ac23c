from django.urls import path

from . import views, views_pages

urlpatterns = [
    path("api/billing/usage/record", views.usage_record, name="usage-record"),
    path("api/billing/usage/record-batch", views.usage_record_batch, name="usage-record-batch"),
    path("api/billing/usage/check", views.usage_check, name="usage-check"),
    path("api/billing/usage", views.usage_summary, name="usage-summary"),
    # Pages (usage history + CSV export).
    path("usage", views_pages.usage_history, name="usage-history"),
    path("usage/export.csv", views_pages.usage_export_csv, name="usage-export"),
]

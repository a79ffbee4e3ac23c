from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from .health import healthz

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("", include("organizations.urls")),
    path("", include("billing.urls")),
    path("", include("billing.api_urls")),
    path("", include("usage.urls")),
    path("", RedirectView.as_view(url="/settings/billing", permanent=False), name="home"),
]

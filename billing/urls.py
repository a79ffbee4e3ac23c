from django.urls import path

from . import views

urlpatterns = [
    path("settings/billing", views.dashboard, name="billing-dashboard"),
    path("billing", views.plans, name="billing-plans"),
]

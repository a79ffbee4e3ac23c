"""Billing pages (server-rendered). Thin: resolve the org, build the context in billing.pages, render."""
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from organizations.access import org_view

from .pages.dashboard import dashboard_context
from .pages.invoices import invoices_context
from .pages.plans import plan_picker_context


@org_view()
def dashboard(request: HttpRequest, membership) -> HttpResponse:
    return render(request, "billing/dashboard.html", dashboard_context(membership=membership, now=timezone.now()))


@org_view()
def plans(request: HttpRequest, membership) -> HttpResponse:
    return render(request, "billing/plans.html", plan_picker_context(membership=membership, now=timezone.now()))


@org_view()
def invoices(request: HttpRequest, membership) -> HttpResponse:
    return render(request, "billing/invoices.html", invoices_context(membership=membership, now=timezone.now()))

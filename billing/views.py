from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from organizations.access import org_view


@org_view()
def dashboard(request: HttpRequest, membership) -> HttpResponse:
    # Placeholder until the dashboard issue: proves login + org resolution end to end.
    return render(request, "billing/dashboard_placeholder.html",
                  {"org": membership.organization, "membership": membership})

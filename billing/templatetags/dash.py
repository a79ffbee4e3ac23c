"""Template helpers for the dashboard pages: the main navigation with its org switcher."""
from __future__ import annotations

from django import template
from django.urls import reverse

from organizations.selectors import memberships_for_user

register = template.Library()

#: (label, url name) of the main navigation, in order.
NAV_ITEMS = (
    ("Billing", "billing-dashboard"),
    ("Plans", "billing-plans"),
    ("Usage", "usage-history"),
    ("Invoices", "billing-invoices"),
    ("API keys", "api-keys"),
)


@register.inclusion_tag("includes/nav.html", takes_context=True)
def main_nav(context) -> dict:
    request = context["request"]
    current = getattr(request, "membership", None)
    # The page this is (for the switcher's GET form and the current nav item): a page rendered as the
    # answer to a POST (a created API key, a refused form) names its GET page in `page_path`.
    page_path = context.get("page_path") or (request.path if request.method in ("GET", "HEAD") else "/settings/billing")
    memberships = list(memberships_for_user(user=request.user)) if request.user.is_authenticated else []
    org_qs = f"?org={current.organization.slug}" if current is not None and len(memberships) > 1 else ""
    items = []
    for label, name in NAV_ITEMS:
        url = reverse(name)
        items.append({"label": label, "url": url + org_qs, "active": page_path == url})
    return {
        "items": items,
        "memberships": memberships if len(memberships) > 1 else [],
        "current": current,
        "path": page_path,
        "request": request,
    }

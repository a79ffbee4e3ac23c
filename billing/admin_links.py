"""Links from the Django admin to the Stripe dashboard (display only; no Stripe call)."""
from __future__ import annotations

from django.conf import settings
from django.utils.html import format_html

#: Dashboard path of each Stripe object kind we store ids of.
_DASHBOARD_PATHS = {
    "customer": "customers",
    "subscription": "subscriptions",
    "invoice": "invoices",
    "event": "events",
    "payment_intent": "payments",
    "price": "prices",
    "checkout_session": "checkout/sessions",
}


def stripe_dashboard_url(kind: str, stripe_id: str | None) -> str:
    """`https://dashboard.stripe.com/[test/]<path>/<id>`; test mode unless the secret key is live."""
    if not stripe_id:
        return ""
    live = (settings.STRIPE_SECRET_KEY or "").startswith(("sk_live_", "rk_live_"))
    mode = "" if live else "test/"
    return f"https://dashboard.stripe.com/{mode}{_DASHBOARD_PATHS[kind]}/{stripe_id}"


def stripe_link(kind: str, stripe_id: str | None):
    """An `<a>` to the object in the Stripe dashboard, or `-` when there is no id."""
    url = stripe_dashboard_url(kind, stripe_id)
    if not url:
        return "-"
    return format_html('<a href="{}" target="_blank" rel="noopener noreferrer">{} ↗</a>', url, stripe_id)

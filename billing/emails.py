"""Rendering and sending billing emails (called by the Celery task, not by request code)."""
from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.template import TemplateDoesNotExist
from django.template.loader import render_to_string

from organizations.models import ADMIN_ROLES, Membership, Organization

from .plans import TOPUP_PACK_PRICE_CENTS

logger = logging.getLogger("billing.emails")


def org_admin_emails(*, organization: Organization) -> list[str]:
    return sorted({
        m.user.email for m in Membership.objects.filter(organization=organization, role__in=list(ADMIN_ROLES))
        .select_related("user") if m.user.email
    })


def _render(name: str, context: dict[str, Any]) -> str | None:
    try:
        return render_to_string(name, context)
    except TemplateDoesNotExist:
        return None


#: Context keys producers send -> the names the templates use (templates/emails/*: see their headers).
_CONTEXT_ALIASES = {
    "trial_end": "trial_ends_at",
    "grace_period_ends_at": "grace_ends_at",
    "invoice_url": "hosted_invoice_url",
    "amount_due_cents": "amount_cents",
    "amount_paid_cents": "amount_cents",
    "failure_message": "reason",
    "finish_url": "action_url",
}
_DEFAULT_PERCENT = {"usage_80": 80, "usage_100": 100}


def email_template_context(*, kind: str, context: dict[str, Any]) -> dict[str, Any]:
    """The template context for `kind`: aliases filled in, top-up amounts derived from packs."""
    ctx = dict(context)
    for src, dst in _CONTEXT_ALIASES.items():
        if src in ctx and ctx.get(dst) in (None, ""):
            ctx[dst] = ctx[src]
    if kind in _DEFAULT_PERCENT:
        ctx.setdefault("percent", _DEFAULT_PERCENT[kind])
    if kind.startswith("topup_") and ctx.get("amount_cents") is None and ctx.get("packs"):
        try:
            ctx["amount_cents"] = int(ctx["packs"]) * TOPUP_PACK_PRICE_CENTS
        except (TypeError, ValueError):
            pass
    return ctx


def email_send_to_org_admins(*, organization: Organization, kind: str, context: dict[str, Any]) -> int:
    """Render `emails/<kind>.*` and send one message to every owner/admin. Returns recipients count."""
    recipients = org_admin_emails(organization=organization)
    if not recipients:
        logger.warning("no owner/admin email for org %s; %s email not sent", organization.pk, kind)
        return 0
    ctx = {**email_template_context(kind=kind, context=context), "org": organization,
           "app_base_url": settings.APP_BASE_URL, "kind": kind}
    subject = (_render(f"emails/{kind}.subject.txt", ctx) or f"[{organization.name}] Billing: {kind.replace('_', ' ')}")
    body = _render(f"emails/{kind}.txt", ctx) or "\n".join(
        [f"Billing notice for {organization.name}: {kind.replace('_', ' ')}.", ""]
        + [f"{k}: {v}" for k, v in context.items()]
        + ["", f"Manage billing: {settings.APP_BASE_URL}/settings/billing?org={organization.slug}"]
    )
    html = _render(f"emails/{kind}.html", ctx)
    msg = EmailMultiAlternatives(subject=" ".join(subject.split()), body=body,
                                 from_email=settings.DEFAULT_FROM_EMAIL, to=recipients)
    if html:
        msg.attach_alternative(html, "text/html")
    msg.send()
    logger.info("email sent", extra={"kind": kind, "org": str(organization.pk), "recipients": len(recipients)})
    return len(recipients)

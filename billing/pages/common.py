"""What more than one billing page needs: the browser endpoints the pages post to, tier labels, dates,
and the org's current subscription."""
from __future__ import annotations

from datetime import datetime

from organizations.models import Organization

from ..models import Subscription
from ..models.subscriptions import LIVE_SUBSCRIPTION_STATUSES
from ..services.plan_changes import subscription_shown

# Browser endpoints (JSON + form posts, billing.api_urls) the pages' forms post to.
CHECKOUT_URL = "/api/billing/checkout"
PORTAL_URL = "/api/billing/portal"
UPGRADE_URL = "/api/billing/subscription/upgrade"
CANCEL_URL = "/api/billing/subscription/cancel"
DOWNGRADE_URL = "/api/billing/subscription/downgrade"
KEEP_PLAN_URL = "/api/billing/subscription/downgrade/cancel"
TOPUP_URL = "/api/billing/credits/topup"
AUTO_TOPUP_URL = "/api/billing/credits/auto-topup"

TIER_LABELS = {"small": "Small", "medium": "Medium", "large": "Large", "xl": "XL"}


def current_subscription(organization: Organization) -> Subscription | None:
    return subscription_shown(organization=organization)


def pending_downgrade(sub: Subscription | None) -> bool:
    """A live subscription with a downgrade scheduled for its period end."""
    return bool(sub is not None and sub.pending_plan_tier and sub.status in LIVE_SUBSCRIPTION_STATUSES
                and sub.current_period_end and not sub.cancel_at_period_end)


def date_text(value: datetime | None) -> str:
    return value.strftime("%b %-d, %Y") if value else ""

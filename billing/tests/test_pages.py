"""Dashboard page states rendered by the server: trial countdown, past-due banner with grace end,
canceled banner, overage; members without money controls."""
import datetime as dt

import pytest
from django.db import transaction
from django.utils import timezone

from billing.models import Subscription
from billing.services.balance import balance_charge, balance_set_plan
from organizations.models import PlanTier, Role, SubscriptionStatus
from organizations.tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db


def _sub(org, *, status, now, **extra):
    return Subscription.objects.create(
        organization=org, stripe_subscription_id=f"sub_{status}", stripe_customer_id="cus_1", plan_tier=PlanTier.PRO,
        status=status, current_period_start=now - dt.timedelta(days=3), current_period_end=now + dt.timedelta(days=27),
        created_at=now, updated_at=now, **extra)


@pytest.fixture
def owner(client):
    m = MembershipFactory()
    client.force_login(m.user)
    return m


def test_trialing_shows_countdown_and_banner(client, owner):
    now = timezone.now()
    org = owner.organization
    org.subscription_tier, org.subscription_status = PlanTier.PRO, SubscriptionStatus.TRIALING
    org.trial_ends_at = now + dt.timedelta(days=2, hours=3)
    org.save()
    _sub(org, status="trialing", now=now, trial_end=org.trial_ends_at)
    html = client.get("/settings/billing").content.decode()
    assert "3 days left" in html
    assert "trial ends in 3 days" in html
    assert "$99.00" in html


def test_past_due_shows_grace_end_banner(client, owner):
    now = timezone.now()
    org = owner.organization
    org.subscription_tier, org.subscription_status = PlanTier.PRO, SubscriptionStatus.PAST_DUE
    org.save()
    grace = dt.datetime(2030, 1, 9, 12, 0, tzinfo=dt.timezone.utc)
    _sub(org, status="past_due", now=now, grace_period_ends_at=grace)
    html = client.get("/settings/billing").content.decode()
    assert 'role="alert"' in html
    assert "Your last payment failed. The Pro plan keeps working until Jan 9, 2030." in html


def test_cancel_at_period_end_banner(client, owner):
    now = timezone.now()
    org = owner.organization
    org.subscription_tier = PlanTier.PRO
    org.save()
    sub = _sub(org, status="active", now=now, cancel_at_period_end=True)
    html = client.get("/settings/billing").content.decode()
    assert "plan ends on" in html and "moves to the Free plan" in html
    assert "Next billing date" not in html
    assert sub.current_period_end is not None


def test_overage_is_shown(client, owner, settings):
    settings.BILLING_SOFT_LIMIT_BUFFER = 100  # xl: 1 included -> 1 action of overage allowed
    org = owner.organization
    now = timezone.now()
    balance_set_plan(organization_id=org.pk, plan_tier=PlanTier.FREE, now=now)
    for _ in range(2):
        with transaction.atomic():
            balance_charge(organization_id=org.pk, tier="xl", now=now)
    html = client.get("/settings/billing").content.decode()
    assert 'data-testid="overage"' in html
    assert "1 overage" in html


def test_member_page_has_no_money_forms(client):
    m = MembershipFactory(role=Role.MEMBER)
    client.force_login(m.user)
    html = client.get("/settings/billing").content.decode()
    assert "/api/billing/" not in html  # no form posts to money endpoints
    assert "Change plan" not in html
    assert client.post("/settings/api-keys/create", {"name": "x"}).status_code == 403

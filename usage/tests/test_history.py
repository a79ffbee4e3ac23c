"""Usage history: daily rollups kept equal to the facts, the page's aggregates, keyset pages, CSV export."""
from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal

import pytest
from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from billing.services.balance import balance_add_topup_credits
from organizations.models import Role
from organizations.tests.factories import MembershipFactory, OrganizationFactory, UserFactory
from usage.models import BillableAction, UsageDailyRollup
from usage.selectors import ActionFilters, Cursor, _split, actions_page, daily_usage, user_usage
from usage.services import ActionInput, action_record, actions_record_batch

pytestmark = pytest.mark.django_db
UTC = dt.UTC


def _facts_grouped(org) -> dict:
    rows = (BillableAction.objects.filter(organization=org).annotate(day=TruncDate("created_at"))
            .values("day", "tier", "user_id").annotate(n=Count("id"), c=Sum("credits_charged")).order_by())
    return {(r["day"], r["tier"], r["user_id"]): (r["n"], r["c"]) for r in rows}


def _rollups(org) -> dict:
    return {(r.day, r.tier, r.user_id): (r.actions, r.credits_charged)
            for r in UsageDailyRollup.objects.filter(organization=org)}


def test_rollups_equal_the_facts_after_single_and_batch_records():
    org = OrganizationFactory(created_at=dt.datetime(2026, 11, 1, 9, 30, tzinfo=UTC))
    balance_add_topup_credits(organization_id=org.pk, amount=Decimal("500.00"),
                              now=dt.datetime(2026, 11, 1, 10, tzinfo=UTC))
    day1 = dt.datetime(2026, 11, 2, 23, 59, tzinfo=UTC)
    for i in range(12):  # 10 from the plan, 2 from credits
        action_record(organization_id=org.pk, user_id=f"u{i % 2}", tier="small", now=day1)
    action_record(organization_id=org.pk, user_id="u1", tier="xl", now=day1, idempotency_key="k")
    action_record(organization_id=org.pk, user_id="u1", tier="xl", now=day1, idempotency_key="k")  # replay
    day2 = dt.datetime(2026, 11, 3, 0, 0, tzinfo=UTC)
    actions_record_batch(organization_id=org.pk, now=day2, actions=[
        ActionInput(user_id="u2", tier="medium"), ActionInput(user_id="u2", tier="medium"),
        ActionInput(user_id="u3", tier="xl", idempotency_key="k"),  # replay of day 1's action
        ActionInput(user_id="u3", tier="large"),
    ])
    assert _rollups(org) == _facts_grouped(org)
    assert _rollups(org)[(dt.date(2026, 11, 2), "small", "u0")] == (6, Decimal("1.00"))
    assert sum(n for n, _ in _rollups(org).values()) == BillableAction.objects.count() == 16


@pytest.mark.parametrize(("start", "end", "days", "edges"), [
    ("2026-11-01T09:30", "2026-12-01T09:30", ("2026-11-02", "2026-12-01"),
     [("2026-11-01T09:30", "2026-11-02T00:00"), ("2026-12-01T00:00", "2026-12-01T09:30")]),
    ("2026-11-01T00:00", "2026-11-25T00:00", ("2026-11-01", "2026-11-25"), []),
    ("2026-11-01T09:30", "2026-11-01T18:00", None, [("2026-11-01T09:30", "2026-11-01T18:00")]),
    ("2026-11-01T09:30", "2026-11-02T03:00", None, [("2026-11-01T09:30", "2026-11-02T03:00")]),
])
def test_split_reads_whole_days_from_rollups_and_edges_from_facts(start, end, days, edges):
    def t(s):
        return dt.datetime.fromisoformat(s).replace(tzinfo=UTC)

    got_days, got_edges = _split(t(start), t(end))
    assert got_days == (tuple(dt.date.fromisoformat(d) for d in days) if days else None)
    assert got_edges == [(t(a), t(b)) for a, b in edges]


def test_period_aggregates_exclude_the_previous_periods_part_of_the_first_day():
    org = OrganizationFactory(created_at=dt.datetime(2026, 10, 1, 12, 0, tzinfo=UTC))
    before = dt.datetime(2026, 11, 1, 8, 0, tzinfo=UTC)   # previous period (ends Nov 1 12:00)
    after = dt.datetime(2026, 11, 1, 13, 0, tzinfo=UTC)   # this period, same UTC day
    later = dt.datetime(2026, 11, 4, 13, 0, tzinfo=UTC)
    action_record(organization_id=org.pk, user_id="old", tier="xl", now=before)
    action_record(organization_id=org.pk, user_id="new", tier="medium", now=after)
    action_record(organization_id=org.pk, user_id="new", tier="small", now=later)
    action_record(organization_id=org.pk, user_id="new", tier="small", now=later)
    start, end = dt.datetime(2026, 11, 1, 12, 0, tzinfo=UTC), dt.datetime(2026, 11, 5, tzinfo=UTC)
    daily = daily_usage(organization_id=org.pk, start=start, end=end)
    assert {d: {t: b.actions for t, b in v.items()} for d, v in daily.items()} == {
        dt.date(2026, 11, 1): {"medium": 1}, dt.date(2026, 11, 4): {"small": 2}}
    users = user_usage(organization_id=org.pk, start=start, end=end)
    assert [(u.user_id, u.actions, u.credits_value) for u in users] == [("new", 3, Decimal("4.50"))]


def _org_with_actions(n: int, now: dt.datetime):
    org = OrganizationFactory(created_at=now - dt.timedelta(days=10))
    balance_add_topup_credits(organization_id=org.pk, amount=Decimal("5000.00"), now=now - dt.timedelta(days=10))
    tiers = ["small", "medium", "large", "xl"]
    for i in range(n):
        action_record(organization_id=org.pk, user_id=f"user-{i % 3}", tier=tiers[i % 4],
                      agent_id=f"agent-{i % 2}", description=f"action {i}",
                      now=now - dt.timedelta(days=9) + dt.timedelta(hours=i * 3))
    return org


def test_keyset_pages_are_stable_while_new_actions_arrive():
    now = timezone.now()
    org = _org_with_actions(12, now)
    p1 = actions_page(organization_id=org.pk, filters=ActionFilters(), limit=5)
    p2 = actions_page(organization_id=org.pk, filters=ActionFilters(), after=p1.older, limit=5)
    action_record(organization_id=org.pk, user_id="late", tier="small", now=now)  # a new newest action
    p2_again = actions_page(organization_id=org.pk, filters=ActionFilters(), after=p1.older, limit=5)
    assert [a.id for a in p2.rows] == [a.id for a in p2_again.rows]
    p3 = actions_page(organization_id=org.pk, filters=ActionFilters(), after=p2.older, limit=5)
    assert len(p3.rows) == 2 and p3.older is None
    all_ids = [a.id for a in p1.rows + p2.rows + p3.rows]
    assert len(set(all_ids)) == 12
    back = actions_page(organization_id=org.pk, filters=ActionFilters(), before=p2.newer, limit=5)
    assert [a.id for a in back.rows] == [a.id for a in p1.rows]
    assert Cursor.decode(p1.older.encode()) == p1.older
    xl = actions_page(organization_id=org.pk, filters=ActionFilters(tier="xl", agent_id="agent-1"), limit=50)
    assert [a.description for a in xl.rows] == ["action 11", "action 7", "action 3"]


@pytest.fixture
def member_client(client):
    def _for(org, role=Role.MEMBER):
        m = MembershipFactory(organization=org, role=role, user=UserFactory())
        client.force_login(m.user)
        return client
    return _for


def test_history_page_renders_chart_users_and_filters(member_client):
    now = timezone.now()
    org = _org_with_actions(12, now)  # every 3 hours from 9 days ago: 2 UTC days (or 3 across midnights)
    client = member_client(org)
    resp = client.get(f"/usage?org={org.slug}")
    assert resp.status_code == 200
    html = resp.content.decode()
    days = {(now - dt.timedelta(days=9) + dt.timedelta(hours=i * 3)).astimezone(UTC).date() for i in range(12)}
    assert html.count('<g class="bar"') == len(days)
    assert 'role="img"' in html and "<title id=\"chart-title\">" in html
    assert 'data-user="user-0"' in html and 'data-user="user-2"' in html
    assert html.count("<tr data-action=") == 12
    filtered = client.get(f"/usage?org={org.slug}&tier=xl").content.decode()
    assert filtered.count("<tr data-action=") == 3
    bad = client.get(f"/usage?org={org.slug}&date_from=2026-11-20&date_to=2026-11-01")
    assert "The end date is before the start date." in bad.content.decode()


def test_csv_export_streams_filtered_rows_with_exact_decimals(member_client):
    now = timezone.now()
    org = _org_with_actions(12, now)
    action_record(organization_id=org.pk, user_id="u", tier="medium", now=now - dt.timedelta(hours=2))
    action_record(organization_id=org.pk, user_id="=cmd", tier="medium", description="=HYPERLINK(1)",
                  now=now - dt.timedelta(hours=1))
    client = member_client(org)
    resp = client.get(f"/usage/export.csv?org={org.slug}&tier=medium")
    assert resp.status_code == 200 and resp.streaming
    assert resp["Content-Type"] == "text/csv; charset=utf-8"
    assert resp["Content-Disposition"].startswith(f'attachment; filename="usage-{org.slug}-')
    rows = list(csv.reader(io.StringIO(b"".join(resp.streaming_content).decode())))
    assert rows[0][:3] == ["id", "created_at_utc", "user_id"]
    body = rows[1:]
    assert len(body) == 5 and {r[5] for r in body} == {"medium"}
    # Newest first; credits as exact decimal strings (the Free plan pays 4 medium actions, the 5th is credits).
    assert body[0][2] == "'=cmd" and body[0][9] == "'=HYPERLINK(1)"
    assert [r[7] for r in body] == ["2.50", "0.00", "0.00", "0.00", "0.00"]


def test_other_orgs_usage_is_404(member_client):
    org = OrganizationFactory()
    client = member_client(org)
    other = OrganizationFactory()
    assert client.get(f"/usage?org={other.slug}").status_code == 404
    assert client.get(f"/usage/export.csv?org={other.slug}").status_code == 404


@pytest.mark.parametrize("query", [
    "date_from=abc&date_to=zzz", "tier=huge", "tier=", "agent=" + "a" * 300, "agent=%00", "date_from=2026-02-30",
    "after=99999999999999999999999-1", "after=1-99999999999999999999999", "after=-1-1", "before=abc",
    "after=253402300800000000-1", "page=999999999", "date_from=0001-01-01", "date_to=9999-12-31",
    "date_from=9999-12-31&date_to=9999-12-31", "date_from=0001-01-01&date_to=0001-01-01",
])
def test_bad_or_extreme_query_params_never_500(member_client, query):
    now = timezone.now()
    org = _org_with_actions(3, now)
    client = member_client(org)
    page = client.get(f"/usage?org={org.slug}&{query}")
    assert page.status_code == 200, query
    export = client.get(f"/usage/export.csv?org={org.slug}&{query}")
    assert export.status_code == 200, query
    rows = list(csv.reader(io.StringIO(b"".join(export.streaming_content).decode())))
    assert rows[0][0] == "id"  # the header is always there, also for 0 rows


def test_open_ended_date_to_shows_and_exports_every_action(member_client):
    """The last day the date picker allows (9999-12-31) means "no upper bound": its midnight + 1 day
    overflowed a datetime (a 500 on the page, a CSV cut after its header)."""
    now = timezone.now()
    org = _org_with_actions(3, now)
    client = member_client(org)
    html = client.get(f"/usage?org={org.slug}&date_to=9999-12-31").content.decode()
    assert html.count("<tr data-action=") == 3
    export = client.get(f"/usage/export.csv?org={org.slug}&date_from=2000-01-01&date_to=9999-12-31")
    rows = list(csv.reader(io.StringIO(b"".join(export.streaming_content).decode())))
    assert len(rows) == 1 + 3


def test_csv_export_of_zero_rows_is_just_the_header(member_client):
    org = OrganizationFactory()
    client = member_client(org)
    export = client.get(f"/usage/export.csv?org={org.slug}")
    assert export.status_code == 200
    assert b"".join(export.streaming_content).decode().splitlines() == [",".join([
        "id", "created_at_utc", "user_id", "agent_id", "agent_name", "tier", "paid_from", "credits_charged",
        "action_key", "description"])]


def test_history_page_query_count_does_not_grow_with_rows(member_client, django_assert_max_num_queries):
    now = timezone.now()
    org = _org_with_actions(40, now)
    client = member_client(org)
    with django_assert_max_num_queries(14):
        assert client.get(f"/usage?org={org.slug}").status_code == 200
    with django_assert_max_num_queries(5):
        resp = client.get(f"/usage/export.csv?org={org.slug}")
        assert len(b"".join(resp.streaming_content).splitlines()) == 41

"""Browser tests: Playwright (pytest-playwright) driving Debian's Chromium against pytest-django's
live server on MariaDB. Mark every test here `@pytest.mark.browser`.

The live server runs in a thread of this process, so its DB writes and the test's factories share
the test database; `live_server` implies a transactional DB (tables flushed after each test).
Playwright's sync API runs an asyncio loop in this thread, so Django's async-safety guard must be
relaxed for ORM calls made from the test body.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

ROOT = Path(__file__).resolve().parent.parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
PASSWORD = "pw-12345-secret"  # organizations.tests.factories.UserFactory's password
PHONE = {"width": 375, "height": 812}


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "headless": True,
        "args": [
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
        ],
    }


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1280, "height": 900}, "locale": "en-US"}


@pytest.fixture(scope="session")
def base_url(live_server) -> str:
    """pytest-playwright resolves relative `page.goto("/x")` against this."""
    return live_server.url


@pytest.fixture
def screenshot() -> Callable[..., Path]:
    """`screenshot(page, "dashboard")` -> test-artifacts/<name>.png (full page). Returns the path."""
    ARTIFACTS.mkdir(exist_ok=True)

    def _shot(page, name: str, *, full_page: bool = True) -> Path:
        path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}.png"
        page.screenshot(path=str(path), full_page=full_page)
        return path

    return _shot


def log_in(page, *, email: str, password: str = PASSWORD, next_url: str | None = None) -> None:
    """Log in through the real login form and wait until we left /login."""
    page.goto("/login" + (f"?next={next_url}" if next_url else ""))
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: "/login" not in url)


@pytest.fixture
def login(page, live_server) -> Callable[..., object]:
    """`login(membership)` logs that membership's user in through the form; returns the page."""

    def _login(membership, *, next_url: str | None = None):
        log_in(page, email=membership.user.email, next_url=next_url)
        return page

    return _login


@pytest.fixture
def owner_membership(transactional_db):
    from organizations.tests.factories import MembershipFactory, OrganizationFactory, UserFactory

    org = OrganizationFactory(name="Acme Robotics", slug="acme")
    return MembershipFactory(organization=org, user=UserFactory(username="owner@acme.test"), role="owner")


@pytest.fixture
def logged_in_page(login, owner_membership):
    """A page logged in as the owner of org `acme` (on the dashboard)."""
    return login(owner_membership)

"""The engine's pure rules (billing.services.balance_rules): no database needed."""
from __future__ import annotations

import pytest

from billing.services.balance_rules import usage_email_crossed, usage_warning


@pytest.mark.parametrize(("used", "included", "warning"), [
    (199, 250, None), (200, 250, "80percent"), (249, 250, "80percent"), (250, 250, "100percent"),
    (3, 4, None), (4, 4, "100percent"),          # free medium: 80 % of 4 is 3.2, so no 80 % step
    (0, 1, None), (1, 1, "100percent"), (0, 0, None), (5, 0, None),  # no allowance: nothing to warn of
])
def test_the_allowance_warning_is_80_percent_then_100_percent(used, included, warning):
    assert usage_warning(used=used, included=included) == warning


@pytest.mark.parametrize(("used_before", "included", "email"), [
    (198, 250, None), (199, 250, "usage_80"), (200, 250, None), (248, 250, None), (249, 250, "usage_100"),
    (2, 4, None), (3, 4, "usage_100"), (0, 1, "usage_100"), (7, 10, "usage_80"),
])
def test_the_usage_email_is_due_on_the_action_that_changes_the_warning(used_before, included, email):
    assert usage_email_crossed(used_before=used_before, included=included) == email

"""usage.coalesce: what a coalesced batch does when it fails, per kind of failure."""
from __future__ import annotations

import datetime as dt

import pytest
from django.db import IntegrityError, OperationalError

from organizations.tests.factories import OrganizationFactory
from usage import coalesce
from usage.models import BillableAction
from usage.services import ActionInput, action_record

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 11, 10, 12, tzinfo=dt.timezone.utc)


def _waiters(n: int, *, key_prefix: str | None = None) -> list[coalesce._Waiter]:
    return [coalesce._Waiter(action=ActionInput(user_id=f"u{i}", tier="small",
                                                idempotency_key=f"{key_prefix}{i}" if key_prefix else None), now=NOW)
            for i in range(n)]


def test_a_batch_of_several_records_each_caller_its_own_result(insert_path):
    org = OrganizationFactory()
    batch = _waiters(3, key_prefix="k")
    coalesce._run(org.pk.hex, batch)
    assert [w.error for w in batch] == [None] * 3
    assert sorted(w.result.action_id for w in batch) == sorted(
        BillableAction.objects.filter(organization_id=org.pk).values_list("pk", flat=True))
    assert all(w.result.created and w.result.body["paidFrom"] == "plan" for w in batch)


def _fail_batches_with(monkeypatch, exc: Exception) -> None:
    def fail(**kwargs):
        raise exc

    monkeypatch.setattr(coalesce, "actions_record_batch", fail)


def test_unique_key_race_retries_each_item_alone_and_a_replay_answers_its_first_body(monkeypatch):
    org = OrganizationFactory()
    first = action_record(organization_id=org.pk, user_id="u0", tier="small", now=NOW, idempotency_key="k0")
    batch = _waiters(2, key_prefix="k")  # k0 was recorded by "another process" meanwhile

    # Simulated: the batch losing the race to the unique key; the real race needs another process to
    # commit between this batch's key read and its INSERT, which cannot be timed deterministically.
    _fail_batches_with(monkeypatch, IntegrityError("duplicate key"))
    coalesce._run(org.pk.hex, batch)
    assert batch[0].result.created is False and batch[0].result.action_id == first.action_id
    assert batch[1].result.created is True
    assert BillableAction.objects.filter(organization_id=org.pk).count() == 2


def test_other_failures_reach_every_caller_and_nothing_is_rerun(monkeypatch):
    """A connection lost at COMMIT leaves the outcome unknown: re-running actions without keys could
    record them twice, so every caller gets the error (503) instead."""
    org = OrganizationFactory()
    batch = _waiters(3)
    # Simulated: a connection lost during COMMIT (cannot be caused at an exact statement otherwise).
    _fail_batches_with(monkeypatch, OperationalError(2013, "lost connection"))
    coalesce._run(org.pk.hex, batch)
    assert all(isinstance(w.error, OperationalError) and w.result is None for w in batch)
    assert BillableAction.objects.filter(organization_id=org.pk).count() == 0


def test_a_leader_dying_mid_round_leaves_no_waiter_without_an_answer(monkeypatch):
    """A non-Exception (e.g. a gunicorn worker timeout) escaping the leader's round: every waiter still
    gets an answer, a retryable 503, instead of hanging or crashing on a missing result."""
    from billing_project.errors import ServiceUnavailable

    org = OrganizationFactory()

    class WorkerTimeout(BaseException):
        pass

    def die(org_hex, batch):
        raise WorkerTimeout()

    # Simulated: a BaseException in the leader thread cannot be raised at that point otherwise.
    monkeypatch.setattr(coalesce, "_run", die)
    me, other = _waiters(2)
    coalesce._queues[org.pk.hex] = [other]
    coalesce._leading.add(org.pk.hex)
    with pytest.raises(WorkerTimeout):
        coalesce._lead(org.pk.hex, me)
    assert other.done.is_set() and other.result is None
    assert isinstance(other.error, ServiceUnavailable) and other.error.code == "RECORDING_INTERRUPTED"
    assert org.pk.hex not in coalesce._leading and org.pk.hex not in coalesce._queues

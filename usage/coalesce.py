"""Coalescing concurrent single-action records of one org into one batch transaction.

Every action of an org serializes on its balance row lock, so a hot org's throughput is bounded by
how long each transaction holds that lock - mostly database round trips and, on a busy machine,
the scheduling delay of every hand-off. Within one process (gunicorn gthread workers run several
requests at once) concurrent `record` calls for the same org are therefore queued: one caller, the
leader, runs everything queued so far through `actions_record_batch` (one lock, one multi-row
INSERT + UPDATE, one COMMIT) and hands each caller its own result; then, if more arrived meanwhile,
it passes the leadership to the oldest waiter. A caller alone in the queue goes straight through
`action_record`, so an idle org pays nothing extra.

Semantics are unchanged: the batch charges items in queue order, exactly like sequential
requests (same rules, same bodies, replays of an idempotency key answer the first body, a key
reused for another request is 409 IDEMPOTENCY_KEY_REUSED), and if
the batch hits the unique idempotency key (a replay racing another process; the batch rolled
back) every item is retried on its own through `action_record`. Any other failure goes to every
caller unchanged: it may have struck at COMMIT with the outcome unknown, so nothing is re-run.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass, field

from django.db import IntegrityError

from billing.errors import BillingError
from billing_project.errors import AppError, ServiceUnavailable

from .services import MAX_BATCH_ACTIONS, ActionInput, RecordResult, action_record, actions_record_batch

logger = logging.getLogger("usage.coalesce")

#: Largest coalesced batch; bigger queues are drained in several rounds.
MAX_COALESCED = 64
assert MAX_COALESCED <= MAX_BATCH_ACTIONS


@dataclass(eq=False)
class _Waiter:
    action: ActionInput
    now: dt.datetime
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False                      # set by the previous leader: run the next round
    result: RecordResult | None = None
    error: BaseException | None = None


_mutex = threading.Lock()
_queues: dict[str, list[_Waiter]] = {}      # org hex -> waiters not yet taken by a leader
_leading: set[str] = set()                  # orgs whose queue a leader is draining right now


def action_record_coalesced(*, org_hex: str, action: ActionInput, now: dt.datetime) -> RecordResult:
    """Like usage.services.action_record (same result or exception), batched with concurrent
    calls for the same org in this process. Call outside any transaction."""
    me = _Waiter(action=action, now=now)
    with _mutex:
        if org_hex not in _leading:
            _leading.add(org_hex)
            me.lead = True
        else:
            _queues.setdefault(org_hex, []).append(me)
    if not me.lead:
        me.done.wait()
    if me.lead:
        _lead(org_hex, me)
    if me.error is not None:
        raise me.error
    return me.result


def _lead(org_hex: str, me: _Waiter) -> None:
    """Run one round: my action + whatever is queued, then hand the leadership over or retire."""
    batch: list[_Waiter] = [me]
    try:
        with _mutex:
            queued = _queues.pop(org_hex, [])
            batch = [me] + queued[:MAX_COALESCED - 1]
            if queued[MAX_COALESCED - 1:]:
                _queues[org_hex] = queued[MAX_COALESCED - 1:]
        _run(org_hex, batch)
    finally:
        with _mutex:
            rest = _queues.get(org_hex)
            if rest:
                nxt = rest.pop(0)
                if not rest:
                    del _queues[org_hex]
                nxt.lead = True
                nxt.done.set()  # wakes it as the next leader (it runs its own action first)
            else:
                _leading.discard(org_hex)
        for w in batch:
            if w.result is None and w.error is None:
                # The leader died mid-round (e.g. a non-Exception such as a worker timeout): the
                # outcome is unknown, so the caller retries with its idempotency key.
                w.error = ServiceUnavailable("recording was interrupted; retry with the same idempotencyKey",
                                             code="RECORDING_INTERRUPTED")
            if w is not me:
                w.done.set()


def _single(w: _Waiter, org_hex: str) -> None:
    a = w.action
    try:
        w.result = action_record(organization_id=org_hex, user_id=a.user_id, tier=a.tier, now=w.now,
                                 agent_id=a.agent_id, agent_name=a.agent_name, action_key=a.action_key,
                                 description=a.description, metadata=a.metadata, idempotency_key=a.idempotency_key)
    except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller, who raises it
        w.error = exc


def _run(org_hex: str, batch: list[_Waiter]) -> None:
    if len(batch) == 1:
        _single(batch[0], org_hex)
        return
    try:
        result = actions_record_batch(organization_id=org_hex, actions=[w.action for w in batch],
                                      now=max(w.now for w in batch))
    except AppError as exc:  # e.g. ORG_NOT_FOUND: the same answer for everyone
        for w in batch:
            w.error = exc
        return
    except IntegrityError:
        # A replay racing another process hit the unique key: the batch rolled back, nothing of it
        # was kept, so each item can safely go through on its own (a replay then answers its body).
        logger.warning("coalesced batch of %d for org %s hit a unique key; recording one by one", len(batch),
                       org_hex, exc_info=True)
        for w in batch:
            _single(w, org_hex)
        return
    except Exception as exc:  # noqa: BLE001 - handed to every caller, as if each had run alone
        # Any other failure (connection lost, lock wait timeout, ...) may have happened at COMMIT with
        # the outcome unknown: re-running the items here could record actions without an
        # idempotency key twice. Each caller gets the error (503 via billing_project.api) and retries
        # with its key, exactly as without coalescing.
        for w in batch:
            w.error = exc
        return
    for w, item in zip(batch, result.items, strict=True):
        item = dict(item)
        item.pop("index")
        status = item.pop("status")
        if status in (200, 201):
            w.result = RecordResult(action_id=item["actionId"], created=status == 201,
                                    body={"success": True, "actionId": item["actionId"],
                                          **{k: v for k, v in item.items() if k not in ("success", "actionId")}})
        else:
            error = item.pop("error")
            item.pop("success", None)
            w.error = BillingError(error["message"], code=error["code"], http_status=status, extra=item)

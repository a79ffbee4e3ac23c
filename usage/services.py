"""Recording agent actions: charge billing's balance and write the fact row, in one transaction.

Two ways to record - one action (`action_record`; `usage.coalesce` batches concurrent ones) and a
batch (`actions_record_batch`) - and both go through billing's charge session
(`billing.services.charge`): billing locks the balance, applies its rules, and sends its UPDATE in
the same round trip as the fact INSERT and rollup upsert added here. This module never sees the
balance's SQL; it owns the facts, their idempotency keys and the API bodies.

Idempotency rests on the unique (organization, idempotency_key) constraint, not on an exists()
check: a replay (also one racing the first request) fails its INSERT, the whole transaction -
balance change included - rolls back, and the first row's stored body is returned. Keys are
opaque and compared byte for byte (binary NO PAD collation, usage migration 0006), and bound to
their request by a fingerprint stored on the row: the same key with another request is refused
409 IDEMPOTENCY_KEY_REUSED, nothing recorded.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, connection

from billing.errors import BillingError
from billing.plans import TIER_PAYOUT_CENTS
from billing.services.balance import (
    ChargeResult,
    balance_check,
    db_datetime,
    org_id_hex,
    remaining_by_tier,
    validate_tier,
)
from billing.services.charge import balance_charge_session
from billing_project.errors import Conflict, InvalidRequest

from .models import IDEMPOTENCY_KEY_MAX_LENGTH, BillableAction
from .rollups import rollup_statement

logger = logging.getLogger("usage.services")

MAX_BATCH_ACTIONS = 1000
MAX_METADATA_BYTES = 16 * 1024
_TEXT_LIMITS = {"user_id": 255, "agent_id": 255, "agent_name": 255, "action_key": 255, "description": 1000,
                "idempotency_key": IDEMPOTENCY_KEY_MAX_LENGTH}
_API_NAMES = {"user_id": "userId", "agent_id": "agentId", "agent_name": "agentName", "action_key": "actionKey",
              "description": "description", "idempotency_key": "idempotencyKey", "metadata": "metadata"}


@dataclass(frozen=True)
class ActionInput:
    user_id: str
    tier: str
    agent_id: str | None = None
    agent_name: str | None = None
    action_key: str | None = None
    description: str | None = None
    metadata: dict | None = None
    idempotency_key: str | None = None

    def validated(self) -> ActionInput:
        """Refuse bad fields with stable codes (INVALID_ACTION_TIER, INVALID_REQUEST + field)."""
        validate_tier(self.tier)
        for name, limit in _TEXT_LIMITS.items():
            value = getattr(self, name)
            if value is None and name != "user_id":
                continue
            api = _API_NAMES[name]
            if not isinstance(value, str) or (name in ("user_id", "idempotency_key") and not value):
                raise InvalidRequest(f"{api} must be a non-empty string", extra={"field": api})
            if len(value) > limit:
                raise InvalidRequest(f"{api} is longer than {limit} characters", extra={"field": api})
        if self.metadata is not None:
            if not isinstance(self.metadata, dict):
                raise InvalidRequest("metadata must be a JSON object", extra={"field": "metadata"})
            if len(json.dumps(self.metadata)) > MAX_METADATA_BYTES:
                raise InvalidRequest(f"metadata is larger than {MAX_METADATA_BYTES} bytes", extra={"field": "metadata"})
        return self


@dataclass(frozen=True)
class RecordResult:
    action_id: int
    created: bool               # False: an idempotent replay, nothing recorded
    body: dict[str, Any]        # the API body (camelCase); a replay returns the first one


@dataclass(frozen=True)
class BatchResult:
    recorded: int
    replayed: int
    refused: int
    items: list[dict[str, Any]]  # per action, in order: {index, status, ...body or error}


# --------------------------------------------------------------------------------------------
# The fact row, inserted with hand-written SQL (the hot path holds the balance lock meanwhile).

_INSERT_COLUMNS = ["organization_id", "user_id", "tier", "credits_charged", "paid_from", "payout_cents", "agent_id",
                   "agent_name", "action_key", "description", "metadata", "period_start", "period_end",
                   "idempotency_key", "request_fingerprint", "response_body", "created_at"]
assert set(_INSERT_COLUMNS) == {f.column for f in BillableAction._meta.concrete_fields} - {"id"}
_TABLE = BillableAction._meta.db_table
_ROW_PLACEHOLDER = "(" + ", ".join(["%s"] * len(_INSERT_COLUMNS)) + ")"
_INSERT_SQL = f"INSERT INTO {_TABLE} ({', '.join(_INSERT_COLUMNS)}) VALUES "
# Without RETURNING (MySQL 8), the ids of the multi-row INSERT just sent: LAST_INSERT_ID() is its first
# row's id, and while the org's balance row is locked no other writer can add rows of this org, so
# this org's rows from that id on are exactly the inserted ones, in VALUES order (whatever
# auto_increment_increment or the interleaved lock mode leave between them).
_IDS_SINCE_INSERT_SQL = f"SELECT id FROM {_TABLE} WHERE organization_id = %s AND id >= LAST_INSERT_ID() ORDER BY id"


def bulk_insert_returning() -> bool:
    """Can a multi-row INSERT hand back its ids itself (`INSERT … RETURNING id`: MariaDB 10.5+,
    SQLite 3.35+)? MySQL 8 cannot: its batches read them back with _IDS_SINCE_INSERT_SQL. From
    Django's feature flag of this connection; the tests force it both ways (usage/tests/conftest.py)."""
    return bool(connection.features.can_return_rows_from_bulk_insert) or connection.vendor != "mysql"


# --------------------------------------------------------------------------------------------
# Idempotency keys are bound to their request.

def request_fingerprint(*, org_hex: str, user_id: str, tier: str, agent_id: str | None,
                        action_key: str | None) -> str:
    """SHA-256 hex of what makes a request the same request for its idempotency key (DESIGN: org,
    user, tier, agent, actionKey). Not agentName, description or metadata: a retry may refresh those
    (timestamps, attempt counters) and is still the same action."""
    # Length-prefixed fields (None apart from ""): unambiguous, and cheaper than json.dumps on the
    # batch path (1,000 fingerprints per request).
    canonical = "|".join("-" if v is None else f"{len(str(v))}:{v}"
                         for v in (org_hex, user_id, tier, agent_id, action_key))
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def _fingerprint(org_hex: str, action: ActionInput) -> str:
    return request_fingerprint(org_hex=org_hex, user_id=action.user_id, tier=action.tier, agent_id=action.agent_id,
                               action_key=action.action_key)


def key_reused_error() -> Conflict:
    return Conflict("this idempotencyKey was already used for another request (userId, actionTier, agentId or "
                    "actionKey differ); send a new key for a new action", code="IDEMPOTENCY_KEY_REUSED",
                    extra={"field": "idempotencyKey"})


#: What a replay reads of the row holding a key (the key itself: as stored, byte for byte).
_STORED_FIELDS = ("idempotency_key", "pk", "response_body", "request_fingerprint", "user_id", "tier", "agent_id",
                  "action_key")


def _stored(org_hex: str, row: tuple) -> tuple[str, int, dict, str]:
    """(key, action id, first body, fingerprint) of a _STORED_FIELDS row. Rows recorded before the
    fingerprint column existed have none: it is computed from their own columns."""
    key, pk, body, fingerprint, user_id, tier, agent_id, action_key = row
    if fingerprint is None:
        fingerprint = request_fingerprint(org_hex=org_hex, user_id=user_id, tier=tier, agent_id=agent_id,
                                          action_key=action_key)
    return key, pk, body or {}, fingerprint


def _body(charge: ChargeResult) -> dict[str, Any]:
    body: dict[str, Any] = {
        "success": True,
        "creditsUsed": str(charge.credits_charged),
        "paidFrom": charge.paid_from,
        "remainingCredits": charge.remaining,
        "topupRemaining": str(charge.topup_remaining),
    }
    if charge.warning:
        body["warning"] = charge.warning
    return body


def _row_params(org_hex: str, action: ActionInput, charge: ChargeResult, body: dict | None, now_db,
                fingerprint: str | None) -> list:
    balance = charge.balance
    return [
        org_hex, action.user_id, action.tier, charge.credits_charged, charge.paid_from,
        TIER_PAYOUT_CENTS[action.tier], action.agent_id, action.agent_name, action.action_key, action.description,
        json.dumps(action.metadata) if action.metadata is not None else None,
        db_datetime(balance.period_start), db_datetime(balance.period_end), action.idempotency_key,
        fingerprint, json.dumps(body) if body is not None else None, now_db,
    ]


def _replay(*, org_hex: str, action: ActionInput) -> RecordResult | None:
    """The first result of `action`'s key, None if the key is unused; Conflict IDEMPOTENCY_KEY_REUSED
    (409) if the key was used for another request. The lookup compares like the unique key (binary)."""
    row = (BillableAction.objects.filter(organization_id=org_hex, idempotency_key=action.idempotency_key)
           .values_list(*_STORED_FIELDS).first())
    if row is None:
        return None
    _, pk, body, fingerprint = _stored(org_hex, row)
    if fingerprint != _fingerprint(org_hex, action):
        raise key_reused_error()
    return RecordResult(action_id=pk, created=False, body={**body, "actionId": pk})


def action_record(*, organization_id: Any, user_id: str, tier: str, now: dt.datetime, agent_id: str | None = None,
                  agent_name: str | None = None, action_key: str | None = None, description: str | None = None,
                  metadata: dict | None = None, idempotency_key: str | None = None) -> RecordResult:
    """Charge one action and record it (one transaction). Replay of `idempotency_key` returns
    the first result and records nothing. Raises INVALID_ACTION_TIER / INVALID_REQUEST (400),
    CREDITS_EXHAUSTED (402), ORG_NOT_FOUND (404).

    Through billing's charge session: on MariaDB/MySQL outside a transaction that is two round
    trips, `START TRANSACTION; SELECT … FOR UPDATE`, then `INSERT fact; upsert rollup; UPDATE
    balance; COMMIT`. A duplicate idempotency key fails the INSERT, the rest never runs, the session
    rolls back and the first result is answered (also when a refusal meets a replayed key)."""
    action = ActionInput(user_id=user_id, tier=tier, agent_id=agent_id, agent_name=agent_name, action_key=action_key,
                         description=description, metadata=metadata, idempotency_key=idempotency_key).validated()
    org_hex = org_id_hex(organization_id)
    replay = (lambda: _replay(org_hex=org_hex, action=action)) if idempotency_key else None
    session = balance_charge_session(organization_id=org_hex, now=now, replay=replay)
    with session:
        charge = session.charge(tier)
        body = _body(charge)
        insert = session.add(_INSERT_SQL + _ROW_PLACEHOLDER,
                             _row_params(org_hex, action, charge, body if idempotency_key else None, db_datetime(now),
                                         _fingerprint(org_hex, action) if idempotency_key else None))
        session.add(*rollup_statement(org_hex=org_hex, rows=[(action.user_id, tier, charge.credits_charged)], now=now))
        sent = session.send()
    if session.replayed is not None:
        return session.replayed
    action_id = sent.lastrowids[insert]
    return RecordResult(action_id=action_id, created=True, body={"success": True, "actionId": action_id, **body})


def actions_record_batch(*, organization_id: Any, actions: list[ActionInput], now: dt.datetime) -> BatchResult:
    """Record up to MAX_BATCH_ACTIONS actions in one transaction: one balance lock, one UPDATE,
    one multi-row INSERT. Items are charged in order, as if sent one by one: each gets 201 (its
    record body), 200 (idempotent replay: the first body), 402 (refused, nothing recorded) or 409
    IDEMPOTENCY_KEY_REUSED (its key was recorded for another request, before or earlier in this
    batch; nothing recorded). Refused items count in `refused`. Any invalid item refuses the whole
    batch (400) before anything is written."""
    if not actions:
        raise InvalidRequest("actions must be a non-empty list", extra={"field": "actions"})
    if len(actions) > MAX_BATCH_ACTIONS:
        raise InvalidRequest(f"at most {MAX_BATCH_ACTIONS} actions per batch", extra={"field": "actions"})
    for i, action in enumerate(actions):
        try:
            action.validated()
        except (InvalidRequest, BillingError) as exc:
            exc.extra = {**exc.extra, "index": i}
            raise
    org_hex = org_id_hex(organization_id)
    now_db = db_datetime(now)
    prints = [_fingerprint(org_hex, a) if a.idempotency_key else None for a in actions]
    with balance_charge_session(organization_id=org_hex, now=now) as session:
        # Under the balance lock no other writer can add rows for this org, so this read is exact;
        # the unique constraint still backs it (an IntegrityError aborts the batch, nothing kept).
        # Keys come back byte for byte as stored, and the column compares them bytewise, so these
        # dicts agree with the unique key (no two keys differing in case or trailing spaces merge).
        keys = list({a.idempotency_key for a in actions if a.idempotency_key})
        existing: dict[str, tuple[int, dict, str]] = {}  # key -> (action id, first body, fingerprint)
        if keys:
            for row in (BillableAction.objects.filter(organization_id=org_hex, idempotency_key__in=keys)
                        .values_list(*_STORED_FIELDS)):
                key, pk, body, fingerprint = _stored(org_hex, row)
                existing[key] = (pk, body, fingerprint)
        items: list[dict[str, Any] | None] = [None] * len(actions)
        bound: dict[str, int] = {}      # key -> the item of this batch recorded with it
        replay_of: dict[int, int] = {}  # item -> the earlier item of this batch it replays
        params: list[Any] = []
        inserted: list[int] = []
        rollup_rows: list[tuple[str, str, Any]] = []
        refused = replayed = 0
        # In order, as if sent one by one: a key already recorded (before or earlier in this batch)
        # replays for the same request and is refused 409 for another; a refused item binds nothing.
        for i, action in enumerate(actions):
            key = action.idempotency_key
            if key and (key in existing or key in bound):
                if key in existing:
                    pk, body, fingerprint = existing[key]
                else:
                    fingerprint = prints[bound[key]]
                if fingerprint != prints[i]:
                    items[i] = {"index": i, "status": 409, **key_reused_error().to_dict()}
                    refused += 1
                elif key in existing:
                    items[i] = {"index": i, "status": 200, **body, "actionId": pk}
                    replayed += 1
                else:
                    replay_of[i] = bound[key]
                    replayed += 1
                continue
            charge = session.try_charge(action.tier)
            if isinstance(charge, BillingError):
                items[i] = {"index": i, "status": charge.http_status, **charge.to_dict()}
                refused += 1
                continue
            body = _body(charge)
            items[i] = {"index": i, "status": 201, **body}
            params += _row_params(org_hex, action, charge, body if key else None, now_db, prints[i])
            rollup_rows.append((action.user_id, action.tier, charge.credits_charged))
            inserted.append(i)
            if key:
                bound[key] = i
        if inserted:
            # The multi-row INSERT and the rollup upsert go with the balance UPDATE in the session's
            # one round trip; the ids come from RETURNING where the engine has it, else from a SELECT
            # in the same trip.
            sql = _INSERT_SQL + ", ".join([_ROW_PLACEHOLDER] * len(inserted))
            returning = bulk_insert_returning()
            insert = session.add(sql + " RETURNING id", params) if returning else session.add(sql, params)
            ids_at = insert if returning else session.add(_IDS_SINCE_INSERT_SQL, [org_hex])
            session.add(*rollup_statement(org_hex=org_hex, now=now, rows=rollup_rows))
            ids = [row[0] for row in session.send().rows[ids_at]]
            if len(ids) != len(inserted):  # impossible under the lock; never answer a wrong id
                raise RuntimeError(f"{len(inserted)} actions inserted for org {org_hex}, {len(ids)} ids read back")
            for i, action_id in zip(inserted, ids, strict=True):
                items[i]["actionId"] = action_id
        # (nothing accepted: the session still writes what changed, e.g. a tier's block)
    for i, first in replay_of.items():
        items[i] = {**items[first], "index": i, "status": 200}
    return BatchResult(recorded=len(inserted), replayed=replayed, refused=refused, items=items)  # type: ignore[arg-type]


def action_check(*, organization_id: Any, tier: str, now: dt.datetime) -> dict[str, Any]:
    """Body of POST /api/billing/usage/check: {allowed, paidFrom, remainingCredits, topupRemaining, warning?}."""
    result = balance_check(organization_id=organization_id, tier=tier, now=now)
    body: dict[str, Any] = {
        "success": True,
        "allowed": result.allowed,
        "actionTier": tier,
        "paidFrom": result.paid_from,
        "remainingCredits": remaining_by_tier(result.balance),
        "topupRemaining": str(result.balance.topup_remaining),
    }
    if result.warning:
        body["warning"] = result.warning
    return body

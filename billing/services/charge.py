"""The charge unit of work: how another app charges actions to an org's balance.

    with balance_charge_session(organization_id=org, now=now, replay=...) as session:
        charge = session.charge("small")                 # or session.try_charge(tier) per batch item
        insert = session.add(fact_insert_sql, params)    # the caller's own statements (its fact rows)
        sent = session.send()                            # caller's statements + balance UPDATE (+ COMMIT)
    action_id = sent.lastrowids[insert]

Billing owns everything about the balance in it: the row lock, the rules (balance_rules), the one
UPDATE, the single round trip that carries the caller's statements with that UPDATE, the warning
emails, the auto top-up trigger and, when an action is refused, the record of the blocked tier.
The caller adds its fact rows and reads back what its statements answered; it never sees SQL of
the balance.

One object, two ways to frame the transaction (the rules, statements and results are the same):
- Own transaction, on MariaDB/MySQL outside any atomic block (the API's hot path): the locking
  read goes with `START TRANSACTION` as one round trip, and the caller's statements, the UPDATE
  and `COMMIT` as a second one, so the row lock is held for one round trip. Emails are queued and
  an auto top-up is triggered (in its own short transaction; the purchase's unique open slot keeps
  it to one in flight) once that COMMIT returned.
- Django's `transaction.atomic()` everywhere else: SQLite (`make run`), inside a caller's
  transaction (tests, services), and for an org without a balance row yet (its creation locks the
  organization first). The same statements go in one round trip on MariaDB, one by one on SQLite;
  emails queue on commit and the auto top-up is triggered inside the transaction.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from django.db import IntegrityError, connection, transaction

from ..errors import BillingError
from ..models import CreditBalance
from .balance import (
    DueEmail,
    Sent,
    balance_for_update,
    balance_from_row,
    balance_lock_sql,
    balance_record_refusal,
    balance_update_statement,
    charge_apply,
    charge_apply_or_block,
    emails_queue,
    free_period_roll_if_due,
    org_id_hex,
    statements_send,
)
from .balance_rules import ChargeResult, auto_topup_due, validate_tier
from .auto_topup import topup_maybe_trigger

logger = logging.getLogger("billing.charge")


class ChargeSession:
    """One org's charge: open with balance_charge_session (a context manager). Not reusable."""

    def __init__(self, *, organization_id: Any, now: dt.datetime, replay: Callable[[], Any] | None) -> None:
        self.org_hex = org_id_hex(organization_id)
        self.now = now
        self.balance: CreditBalance | None = None   # locked while the session is open
        #: What `replay` answered when the unit rolled back for a request already answered before.
        self.replayed: Any = None
        self._replay = replay
        self._own = False           # True: this session framed the transaction itself (START … COMMIT)
        self._own_committed = False
        self._atomic: transaction.Atomic | None = None
        self._statements: list[tuple[str, list]] = []
        self._emails: list[DueEmail] = []
        self._accepted = 0
        self._sent: Sent | None = None

    # -- the caller's side ----------------------------------------------------------------------

    def charge(self, tier: str) -> ChargeResult:
        """Charge one action of `tier` (in memory until send). Raises INVALID_ACTION_TIER (400) /
        CREDITS_EXHAUSTED (402): let it leave the `with` - the session rolls back and records the
        refusal (first one per tier per period)."""
        result = charge_apply(self.balance, validate_tier(tier), now=self.now, emails=self._emails)
        self._accepted += 1
        return result

    def try_charge(self, tier: str) -> ChargeResult | BillingError:
        """charge() for one item of several: a refusal is returned (nothing charged for it), and the
        tier's first refusal this period is recorded in this session's own UPDATE."""
        result = charge_apply_or_block(self.balance, validate_tier(tier), now=self.now, emails=self._emails)
        if isinstance(result, ChargeResult):
            self._accepted += 1
        return result

    def add(self, sql: str, params: list) -> int:
        """Queue one of the caller's statements for send(); returns its position in Sent."""
        self._statements.append((sql, params))
        return len(self._statements) - 1

    def send(self) -> Sent:
        """Send the caller's statements, in order, then the balance UPDATE - one round trip, COMMIT
        included when the session framed its own transaction. A unique key failing in one of them
        (IntegrityError) leaves the `with` and rolls everything back. Call once."""
        if self._sent is not None:
            raise RuntimeError("a charge session sends once")
        statements = list(self._statements)
        update = balance_update_statement(self.balance, now=self.now)
        if update is not None:
            statements.append(update)
        if self._own:
            statements.append(("COMMIT", []))
        elif not statements:  # nothing accepted, nothing changed: no round trip at all
            self._sent = Sent(rows=[], rowcounts=[], lastrowids=[])
            self._after_charges()
            return self._sent
        with connection.cursor() as cursor:
            sent = statements_send(cursor, statements)
        if self._own:
            self._own_committed = True
        if update is not None:
            matched = sent.rowcounts[len(self._statements)]
            if matched != 1:  # impossible under the lock
                if self._own:  # already committed: loud, reconcile would show it
                    logger.error("balance UPDATE matched %s rows for org %s", matched, self.org_hex)
                else:
                    raise RuntimeError(f"balance UPDATE matched {matched} rows for org {self.org_hex}")
        if not self._own:
            self._after_charges()
        self._sent = sent
        return sent

    # -- billing's side -------------------------------------------------------------------------

    def _after_charges(self) -> None:
        """Warning emails and the auto top-up trigger. Inside the transaction, emails queue on its
        commit; after an own COMMIT they queue at once and the trigger takes its own transaction."""
        emails_queue(self.balance, self._emails)
        if self._accepted and auto_topup_due(self.balance):
            if self._own:
                try:
                    with transaction.atomic():
                        topup_maybe_trigger(balance=balance_for_update(organization_id=self.org_hex, now=self.now),
                                            now=self.now)
                except Exception:  # noqa: BLE001 - the action is committed: its answer must go out
                    # The next action below the threshold triggers again (no purchase row was written).
                    logger.exception("auto top-up trigger failed for org %s after its action committed",
                                     self.org_hex)
            else:
                topup_maybe_trigger(balance=self.balance, now=self.now)

    def _open_own(self) -> bool:
        """START TRANSACTION and the locking read in one round trip; False (rolled back) when the
        org has no balance row yet (its creation takes the atomic path)."""
        with connection.cursor() as cursor:
            cursor.execute(f"START TRANSACTION; {balance_lock_sql()}", [self.org_hex])
            cursor.nextset()
            row = cursor.fetchone()
            if row is None:
                cursor.execute("ROLLBACK")
                return False
        balance = balance_from_row(row)
        if free_period_roll_if_due(balance, now=self.now):  # a free period ended: the roll goes in the one UPDATE
            logger.info("free period rolled for org %s to %s", balance.organization_id, balance.period_start)
        self.balance = balance
        self._own = True
        return True

    def __enter__(self) -> ChargeSession:
        if connection.vendor == "mysql" and not connection.in_atomic_block:
            try:
                if self._open_own():
                    return self
            except BaseException:
                self._rollback_own()
                raise
        self._atomic = transaction.atomic()
        self._atomic.__enter__()
        try:
            self.balance = balance_for_update(organization_id=self.org_hex, now=self.now)
        except BaseException as exc:
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def _rollback_own(self) -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - the connection is gone; the server rolled back
            logger.warning("charge session: ROLLBACK failed for org %s", self.org_hex, exc_info=True)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._own:
            if exc is None and self._sent is None:
                try:
                    self.send()
                except BaseException:
                    if not self._own_committed:
                        self._rollback_own()
                    raise
            if not self._own_committed:
                self._rollback_own()
            else:
                self._after_charges()
        else:
            if exc is None and self._sent is None:
                try:
                    self.send()
                except BaseException as error:
                    self._atomic.__exit__(type(error), error, error.__traceback__)
                    raise
            self._atomic.__exit__(exc_type, exc, tb)  # commits, or rolls back on exc
        if exc is None:
            return False
        return self._after_rollback(exc)

    def _after_rollback(self, exc: BaseException) -> bool:
        """A request answered before (a replayed idempotency key) is answered again, not refused;
        a refused action records its tier's block. True: the exception is replaced by `replayed`."""
        refused = isinstance(exc, BillingError) and exc.code == "CREDITS_EXHAUSTED"
        if self._replay is not None and (refused or isinstance(exc, IntegrityError)):
            self.replayed = self._replay()
            if self.replayed is not None:
                return True
        if refused:
            balance_record_refusal(error=exc, now=self.now)  # after the rollback; no I/O once recorded
        return False


def balance_charge_session(*, organization_id: Any, now: dt.datetime,
                           replay: Callable[[], Any] | None = None) -> ChargeSession:
    """Open a charge session on the org's balance (use it as a context manager; module docstring).
    `replay`: called after the session rolled back for a refusal (402) or a unique-key failure of
    the caller's statements, to ask whether this request was answered before (an idempotency key
    replayed): a value it returns lands in `session.replayed` and the exception is dropped; None
    keeps the exception (and a refusal is recorded). Raises NotFound ORG_NOT_FOUND on entering."""
    return ChargeSession(organization_id=organization_id, now=now, replay=replay)

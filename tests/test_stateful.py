"""Random sequences of ledger operations against the real database and a model of what they should do.

A Hypothesis state machine books accruals, partial and full refunds, holds,
captures and voids for one member (a fresh one per example, so examples do
not disturb each other), and after every step checks that the member's
balance, held points, lots and holds are what an in-memory model says, and
that every ``loyalty verify`` check passes over the whole database.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from loyalty.accrual import service as accrual
from loyalty.accrual.service import ReversalCommand, TransactionCommand
from loyalty.calendar import add_months
from loyalty.db import transaction
from loyalty.errors import HoldNotPending, InsufficientPoints, ValidationError
from loyalty.ledger import service as ledger
from loyalty.ledger import verify
from loyalty.ledger.models import holds, member_accounts, point_lots
from loyalty.members import service as members
from loyalty.members.service import Enrolment
from loyalty.runtime import Runtime
from tests.helpers import BANK_ZONE, BASE

REDEEMED = "redeemed:unspecified"
EXPIRY_MONTHS = 24
WELCOME_POINTS = 500


@dataclass
class Lot:
    id: str
    remaining: int
    earned_at: dt.datetime

    @property
    def expires_at(self) -> dt.datetime:
        return add_months(self.earned_at, EXPIRY_MONTHS, BANK_ZONE)


@dataclass
class Txn:
    cmd: TransactionCommand
    points: int
    lot: str | None
    balance_after: int
    refunded: int = 0

    @property
    def amount(self) -> int:
        return self.cmd.amount


@dataclass
class Hold:
    points: int
    status: str = "pending"
    taken: list[tuple[str, int]] = field(default_factory=list)


class LedgerModel:
    """What the ledger should hold for one member, computed independently of it."""

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.balance = 0
        self.held = 0
        self.lots: dict[str, Lot] = {}
        self.txns: dict[str, Txn] = {}
        self.holds: dict[str, Hold] = {}

    def credit(self, lot_id: str, points: int, earned_at: dt.datetime) -> None:
        """New points: a negative balance's debt is paid from them first."""
        debt = max(0, -self.balance)
        self.balance += points
        self.lots[lot_id] = Lot(lot_id, points - min(debt, points), earned_at)

    def spend_order(self, prefer: str | None = None) -> list[Lot]:
        fifo = sorted(self.lots.values(), key=lambda lot: (lot.expires_at, lot.earned_at, lot.id))
        return sorted(fifo, key=lambda lot: lot.id != prefer)  # stable: the preferred lot first

    def take(self, points: int, prefer: str | None = None) -> list[tuple[str, int]]:
        taken = []
        for lot in self.spend_order(prefer):
            n = min(points, lot.remaining)
            if n:
                lot.remaining -= n
                points -= n
                taken.append((lot.id, n))
        return taken

    def refund(self, tid: str, amount: int) -> tuple[int, int]:
        """(points due, points taken back) for refunding ``amount`` more of ``tid``."""
        t = self.txns[tid]
        due = t.points * (t.refunded + amount) // t.amount - t.points * t.refunded // t.amount
        t.refunded += amount
        taken = due if self.policy == "negative" else min(due, max(0, self.balance))
        if taken:
            self.balance -= taken
            self.take(taken, prefer=t.lot)
        return due, taken

    def hold(self, hold_id: str, points: int) -> None:
        self.balance -= points
        self.held += points
        self.holds[hold_id] = Hold(points, taken=self.take(points))

    def capture(self, hold_id: str) -> None:
        h = self.holds[hold_id]
        h.status = "captured"
        self.held -= h.points

    def void(self, hold_id: str) -> None:
        h = self.holds[hold_id]
        h.status = "voided"
        self.held -= h.points
        self.balance += h.points
        # What the debt does not absorb goes back, latest-expiring lot first.
        restore = min(h.points, max(0, self.balance))
        for lot_id, n in sorted(h.taken, key=lambda x: (-self.lots[x[0]].expires_at.timestamp(), x[0])):
            back = min(restore, n)
            self.lots[lot_id].remaining += back
            restore -= back


class LedgerMachine(RuleBasedStateMachine):
    rt: Runtime  # set by the test that runs the machine

    def __init__(self) -> None:
        super().__init__()
        self.member = f"sm-{uuid.uuid4().hex[:16]}"
        self.counter = 0
        self.model = LedgerModel("negative")

    def next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{self.member}-{prefix}{self.counter}"

    def now(self) -> dt.datetime:
        return self.rt.now()

    @initialize(policy=st.sampled_from(ledger.CLAWBACK_POLICIES))
    def enrol(self, policy: str) -> None:
        self.model = LedgerModel(policy)
        with transaction(self.rt.engine) as conn:
            created, view = members.enrol(conn, Enrolment(self.member), programme=BASE, now=self.now())
        assert created and view["balance"] == WELCOME_POINTS
        (lot_id,) = self.lot_ids_of(None)
        self.model.credit(lot_id, WELCOME_POINTS, self.now())

    def lot_ids_of(self, entry_id: str | None) -> list[str]:
        pl = point_lots.c
        with transaction(self.rt.engine, readonly=True) as conn:
            q = sa.select(pl.id).where(pl.member_id == self.member)
            if entry_id is not None:
                q = q.where(pl.entry_id == entry_id)
            return list(conn.execute(q).scalars())

    # --- operations --------------------------------------------------------

    @rule(fen=st.integers(1, 30_000), days_ago=st.integers(0, 720), minutes=st.integers(0, 3))
    def accrue(self, fen: int, days_ago: int, minutes: int) -> None:
        self.rt.clock.advance(minutes=1)  # type: ignore[attr-defined]
        tid = self.next_id("t")
        occurred = self.now() - dt.timedelta(days=days_ago, minutes=minutes)
        cmd = TransactionCommand(tid, self.member, "card_purchase", fen, "CNY", occurred)
        with transaction(self.rt.engine) as conn:
            result = accrual.record_transaction(conn, cmd, programme=BASE, now=self.now())
        points = fen // 100
        lot = None
        if points:
            (lot,) = self.lot_ids_of(result.body["entry_id"])
            self.model.credit(lot, points, occurred)
        # The answer's balance is the points the member owns: the account's balance and the held points.
        owned = self.model.balance + self.model.held
        self.model.txns[tid] = Txn(cmd, points, lot, owned)
        assert (result.created, result.body["points"], result.body["balance"]) == (True, points, owned)

    @precondition(lambda self: self.model.txns)
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        """A retried transaction answers as it did the first time and changes nothing."""
        t = self.model.txns[data.draw(st.sampled_from(sorted(self.model.txns)), label="transaction")]
        with transaction(self.rt.engine) as conn:
            result = accrual.record_transaction(conn, t.cmd, programme=BASE, now=self.now())
        assert (result.created, result.replayed) == (False, True)
        assert (result.body["points"], result.body["balance"]) == (t.points, t.balance_after)

    @precondition(lambda self: self.model.txns)
    @rule(data=st.data(), full=st.booleans())
    def refund(self, data: st.DataObject, full: bool) -> None:
        tid = data.draw(st.sampled_from(sorted(self.model.txns)), label="transaction")
        t = self.model.txns[tid]
        left = t.amount - t.refunded
        amount = left if full and left else data.draw(st.integers(1, left + 50), label="amount")
        rid = self.next_id("r")
        if amount > left:
            try:
                self.reverse(tid, rid, amount)
            except ValidationError as err:
                assert err.field == "amount"
            else:
                raise AssertionError(f"refund of {amount} with only {left} left was accepted")
            return
        result = self.reverse(tid, rid, amount)
        due, taken = self.model.refund(tid, amount)
        assert result.created
        assert (result.body["points_due"], result.body["points_reversed"]) == (due, taken)
        assert result.body["balance"] == self.model.balance + self.model.held
        assert (result.body["entry_id"] is None) == (taken == 0)

    def reverse(self, tid: str, rid: str, amount: int) -> accrual.Result:
        with transaction(self.rt.engine) as conn:
            return accrual.reverse(conn, ReversalCommand(tid, rid, amount), policy=self.model.policy, now=self.now())

    @rule(data=st.data(), size=st.sampled_from(["all", "all", "some", "some", "more"]))
    def hold(self, data: st.DataObject, size: str) -> None:
        # Sized from the model's balance, so holds of everything (and refusals just over it) are common.
        available = max(0, self.model.balance)
        if size == "all" and available:
            points = available
        elif size == "some" and available > 1:
            points = data.draw(st.integers(1, available - 1), label="points")
        else:
            points = available + data.draw(st.integers(1, 100), label="over by")
        hold_id = self.next_id("h")
        try:
            with transaction(self.rt.engine) as conn:
                posted = ledger.hold(conn, self.member, hold_id, points, capture_account=REDEEMED, now=self.now())
        except InsufficientPoints:
            assert self.model.balance < points
            return
        assert self.model.balance >= points, "a hold beyond the balance was accepted"
        self.model.hold(hold_id, points)
        assert posted.balance_after == self.model.balance

    @precondition(lambda self: self.model.holds)
    @rule(data=st.data(), capture=st.booleans())
    def settle(self, data: st.DataObject, capture: bool) -> None:
        pending = sorted(h for h, v in self.model.holds.items() if v.status == "pending")
        # Mostly pending holds; sometimes one already settled, which must be refused.
        pool = pending if pending and data.draw(st.integers(0, 3), label="settled?") else sorted(self.model.holds)
        hold_id = data.draw(st.sampled_from(pool), label="hold")
        operation = ledger.capture if capture else ledger.void
        was = self.model.holds[hold_id].status
        try:
            with transaction(self.rt.engine) as conn:
                operation(conn, self.member, hold_id, now=self.now())
        except HoldNotPending as err:
            assert was != "pending" and err.extra["status"] == was
            return
        assert was == "pending", f"hold {hold_id} settled twice"
        (self.model.capture if capture else self.model.void)(hold_id)

    # --- what must hold after every step ---------------------------------------

    @invariant()
    def database_matches_the_model(self) -> None:
        if not self.model.lots:  # before enrolment
            return
        ma, pl, h = member_accounts.c, point_lots.c, holds.c
        with transaction(self.rt.engine, readonly=True) as conn:
            account = conn.execute(sa.select(ma.balance, ma.held).where(ma.member_id == self.member)).one()
            lots = {
                r.id: (int(r.remaining), r.expires_at)
                for r in conn.execute(sa.select(pl.id, pl.remaining, pl.expires_at).where(pl.member_id == self.member))
            }
            statuses = dict(conn.execute(sa.select(h.id, h.status).where(h.member_id == self.member)).all())
            outcomes = verify.run(conn)
        assert (account.balance, account.held) == (self.model.balance, self.model.held)
        assert lots == {lot.id: (lot.remaining, lot.expires_at) for lot in self.model.lots.values()}
        assert statuses == {hold_id: v.status for hold_id, v in self.model.holds.items()}
        assert all(o.ok for o in outcomes), verify.report(outcomes)


# Committed: its many steps, rolled back, would be one transaction of several seconds, and on
# PostgreSQL a transaction that long holds back every event feed on the server.
@pytest.mark.committed
def test_random_ledger_operations_match_the_model_and_keep_every_invariant(runtime):
    machine = type("Machine", (LedgerMachine,), {"rt": runtime})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=40,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )

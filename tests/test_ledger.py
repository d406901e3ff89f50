"""The ledger's operations, through the services, on SQLite and PostgreSQL.

Every scenario ends by running ``loyalty verify``'s checks over the database.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa

from loyalty.accrual import service as accrual
from loyalty.accrual.service import ReversalCommand, TransactionCommand
from loyalty.calendar import add_months
from loyalty.db import transaction
from loyalty.errors import (
    HoldNotPending,
    IdempotencyConflict,
    InsufficientPoints,
    NotFound,
    UnknownMember,
    ValidationError,
)
from loyalty.idempotency import idempotency_keys
from loyalty.ledger import service as ledger
from loyalty.ledger import verify
from loyalty.ledger.models import holds, journal_entries, lot_consumptions, member_accounts, point_lots, postings
from loyalty.members import service as members
from loyalty.members.service import Enrolment
from loyalty.records.models import reversals, transactions
from loyalty.runtime import Runtime
from rules import Award
from tests.helpers import BANK_ZONE, BASE

REDEEMED = "redeemed:unspecified"
WELCOME = "account_opened"  # the welcome bonus lot's source


class Books:
    """The services, each call in its own transaction, and ways to look at the result."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def now(self) -> dt.datetime:
        return self.rt.now()

    # --- operations ---------------------------------------------------------

    def enrol(self, member_id: str = "m1") -> tuple[bool, dict[str, Any]]:
        with transaction(self.rt.engine) as conn:
            return members.enrol(conn, Enrolment(member_id), programme=BASE, now=self.now())

    def buy(
        self,
        transaction_id: str,
        fen: int,
        *,
        member_id: str = "m1",
        type: str = "card_purchase",
        occurred_at: dt.datetime | None = None,
    ) -> accrual.Result:
        cmd = TransactionCommand(
            transaction_id=transaction_id,
            member_id=member_id,
            type=type,
            amount=fen,
            currency="CNY",
            occurred_at=occurred_at or self.now() - dt.timedelta(hours=1),
        )
        with transaction(self.rt.engine) as conn:
            return accrual.record_transaction(conn, cmd, programme=BASE, now=self.now())

    def refund(self, transaction_id: str, reversal_id: str, fen: int, *, policy: str = "negative") -> accrual.Result:
        with transaction(self.rt.engine) as conn:
            cmd = ReversalCommand(transaction_id, reversal_id, fen)
            return accrual.reverse(conn, cmd, policy=policy, now=self.now())

    def hold(self, hold_id: str, points: int, member_id: str = "m1") -> ledger.Posted:
        with transaction(self.rt.engine) as conn:
            return ledger.hold(conn, member_id, hold_id, points, capture_account=REDEEMED, now=self.now())

    def capture(self, hold_id: str, member_id: str = "m1") -> ledger.Posted:
        with transaction(self.rt.engine) as conn:
            return ledger.capture(conn, member_id, hold_id, now=self.now())

    def void(self, hold_id: str, member_id: str = "m1") -> ledger.Posted:
        with transaction(self.rt.engine) as conn:
            return ledger.void(conn, member_id, hold_id, now=self.now())

    # --- looking ------------------------------------------------------------

    def read(self, stmt: Any) -> list[Any]:
        with transaction(self.rt.engine, readonly=True) as conn:
            return conn.execute(stmt).all()

    def account(self, member_id: str = "m1") -> tuple[int, int]:
        """(balance, held)"""
        ma = member_accounts.c
        (row,) = self.read(sa.select(ma.balance, ma.held).where(ma.member_id == member_id))
        return int(row.balance), int(row.held)

    def balance(self, member_id: str = "m1") -> int:
        return self.account(member_id)[0]

    def lots(self, member_id: str = "m1") -> dict[str, int]:
        """Remaining points of each lot, by the source of the entry that earned it."""
        pl, je = point_lots.c, journal_entries.c
        rows = self.read(
            sa.select(je.source_ref, pl.remaining)
            .join(journal_entries, sa.and_(je.member_id == pl.member_id, je.id == pl.entry_id))
            .where(pl.member_id == member_id)
        )
        return {r.source_ref: int(r.remaining) for r in rows}

    def lot_expiry(self, source_ref: str, member_id: str = "m1") -> dt.datetime:
        pl, je = point_lots.c, journal_entries.c
        (row,) = self.read(
            sa.select(pl.expires_at)
            .join(journal_entries, sa.and_(je.member_id == pl.member_id, je.id == pl.entry_id))
            .where(pl.member_id == member_id, je.source_ref == source_ref)
        )
        return row.expires_at  # type: ignore[no-any-return]

    def consumed_by(self, entry_id: str, member_id: str = "m1") -> dict[str, int]:
        """What an entry took from (positive) or gave back to (negative) each lot, by the lot's source."""
        lc, pl, je = lot_consumptions.c, point_lots.c, journal_entries.c
        rows = self.read(
            sa.select(je.source_ref, lc.points)
            .select_from(lot_consumptions)
            .join(point_lots, sa.and_(pl.member_id == lc.member_id, pl.id == lc.lot_id))
            .join(journal_entries, sa.and_(je.member_id == pl.member_id, je.id == pl.entry_id))
            .where(lc.member_id == member_id, lc.entry_id == entry_id)
        )
        return {r.source_ref: int(r.points) for r in rows}

    def entries(self, member_id: str = "m1") -> list[Any]:
        je = journal_entries.c
        return self.read(sa.select(journal_entries).where(je.member_id == member_id).order_by(je.seq))

    def account_total(self, account: str) -> int:
        p = postings.c
        return int(self.read(sa.select(sa.func.coalesce(sa.func.sum(p.amount), 0)).where(p.account == account))[0][0])

    def hold_status(self, hold_id: str, member_id: str = "m1") -> str:
        h = holds.c
        return self.read(sa.select(h.status).where(h.member_id == member_id, h.id == hold_id))[0][0]  # type: ignore[no-any-return]

    def assert_verified(self) -> None:
        with transaction(self.rt.engine, readonly=True) as conn:
            outcomes = verify.run(conn)
        assert [o.check.name for o in outcomes] == [c.name for c in verify.CHECKS]
        assert all(o.ok for o in outcomes), verify.report(outcomes)


@pytest.fixture
def books(runtime: Runtime) -> Books:
    return Books(runtime)


# --- enrolment and accrual --------------------------------------------------


def test_enrolment_credits_the_welcome_bonus_as_one_lot(books):
    created, view = books.enrol()
    assert created is True
    assert (view["balance"], view["held"], view["available"]) == (500, 0, 500)
    assert books.lots() == {WELCOME: 500}
    assert books.lot_expiry(WELCOME) == add_months(books.now(), 24, BANK_ZONE)
    (entry,) = books.entries()
    assert (entry.kind, entry.seq, entry.points, entry.balance_after) == ("bonus", 1, 500, 500)
    assert books.account_total("issued:bank") == -500
    books.assert_verified()


def test_enrolling_twice_gives_one_welcome_bonus(books, clock):
    books.enrol()
    clock.advance(days=1)
    created, view = books.enrol()
    assert created is False
    assert view["balance"] == 500
    assert len(books.entries()) == 1
    books.assert_verified()


def test_card_spend_earns_one_point_per_yuan_into_its_own_lot(books):
    books.enrol()
    occurred = books.now() - dt.timedelta(days=3)
    result = books.buy("t1", 12_345, occurred_at=occurred)
    assert result.created and not result.replayed
    assert result.body["points"] == 123
    assert result.body["balance"] == 623
    assert books.lots() == {WELCOME: 500, "t1": 123}
    assert books.lot_expiry("t1") == add_months(occurred, 24, BANK_ZONE)
    entry = books.entries()[-1]
    assert (entry.kind, entry.seq, entry.points, entry.balance_after, entry.transaction_id) == (
        "accrual",
        2,
        123,
        623,
        "t1",
    )
    books.assert_verified()


def test_transaction_that_earns_nothing_is_recorded_without_an_entry(books):
    books.enrol()
    result = books.buy("x1", 50_000, type="bill_payment")
    assert result.created
    assert (result.body["points"], result.body["entry_id"], result.body["balance"]) == (0, None, 500)
    assert len(books.entries()) == 1
    (row,) = books.read(sa.select(transactions.c.points, transactions.c.entry_id))
    assert (row.points, row.entry_id) == (0, None)
    books.assert_verified()


def test_replayed_transaction_posts_once_and_answers_the_same(books, clock):
    books.enrol()
    occurred = books.now() - dt.timedelta(hours=1)
    first = books.buy("t1", 12_345, occurred_at=occurred)
    clock.advance(minutes=5)
    again = books.buy("t1", 12_345, occurred_at=occurred)
    assert again.replayed and not again.created
    assert again.body == first.body
    assert books.balance() == 623
    assert [e.kind for e in books.entries()] == ["bonus", "accrual"]
    books.assert_verified()


def test_same_transaction_id_with_a_different_body_is_refused(books):
    books.enrol()
    occurred = books.now() - dt.timedelta(hours=1)
    books.buy("t1", 12_345, occurred_at=occurred)
    with pytest.raises(IdempotencyConflict):
        books.buy("t1", 99_900, occurred_at=occurred)
    assert books.balance() == 623
    assert len(books.entries()) == 2
    books.assert_verified()


def test_transaction_for_an_unknown_member_leaves_no_trace(books):
    with pytest.raises(UnknownMember):
        books.buy("t1", 12_345, member_id="ghost")
    assert books.read(sa.select(idempotency_keys)) == []
    assert books.read(sa.select(transactions)) == []
    # The id was not used up: once the member exists, the same transaction books.
    books.enrol("ghost")
    assert books.buy("t1", 12_345, member_id="ghost").created
    assert books.balance("ghost") == 623
    books.assert_verified()


# --- holds: two-phase, at most once -----------------------------------------


def test_hold_moves_points_to_held_and_capture_settles_them(books):
    books.enrol()
    held = books.hold("h1", 200)
    assert (held.points, held.balance_after) == (-200, 300)
    assert books.account() == (300, 200)
    assert books.account_total("holds") == 200
    assert books.hold_status("h1") == "pending"

    captured = books.capture("h1")
    assert (captured.points, captured.balance_after) == (0, 300)
    assert books.account() == (300, 0)
    assert books.hold_status("h1") == "captured"
    assert books.account_total("holds") == 0
    assert books.account_total(REDEEMED) == 200
    # The captured points stay out of the lots.
    assert books.lots() == {WELCOME: 300}
    assert [e.kind for e in books.entries()] == ["bonus", "hold", "capture"]
    books.assert_verified()


def test_void_gives_held_points_back(books):
    books.enrol()
    books.hold("h1", 200)
    voided = books.void("h1")
    assert (voided.points, voided.balance_after) == (200, 500)
    assert books.account() == (500, 0)
    assert books.hold_status("h1") == "voided"
    assert books.account_total(REDEEMED) == 0
    assert books.lots() == {WELCOME: 500}
    books.assert_verified()


def test_hold_cannot_be_captured_twice(books):
    books.enrol()
    books.hold("h1", 100)
    books.capture("h1")
    with pytest.raises(HoldNotPending) as err:
        books.capture("h1")
    assert err.value.extra["status"] == "captured"
    assert books.account() == (400, 0)
    assert books.account_total(REDEEMED) == 100
    assert len(books.entries()) == 3
    books.assert_verified()


def test_captured_hold_cannot_be_voided(books):
    books.enrol()
    books.hold("h1", 100)
    books.capture("h1")
    with pytest.raises(HoldNotPending):
        books.void("h1")
    assert books.account() == (400, 0)
    assert books.lots() == {WELCOME: 400}
    books.assert_verified()


def test_voided_hold_cannot_be_voided_again_or_captured(books):
    books.enrol()
    books.hold("h1", 100)
    books.void("h1")
    with pytest.raises(HoldNotPending):
        books.void("h1")
    with pytest.raises(HoldNotPending):
        books.capture("h1")
    assert books.account() == (500, 0)
    assert books.lots() == {WELCOME: 500}
    assert books.account_total(REDEEMED) == 0
    assert len(books.entries()) == 3
    books.assert_verified()


def test_settling_an_unknown_hold_is_not_found(books):
    books.enrol()
    with pytest.raises(NotFound):
        books.capture("nope")
    with pytest.raises(NotFound):
        books.void("nope")
    books.assert_verified()


def test_refused_second_phase_writes_nothing_even_if_the_caller_commits(books, runtime):
    books.enrol()
    books.hold("h1", 100)
    books.capture("h1")
    with transaction(runtime.engine) as conn, pytest.raises(HoldNotPending):
        ledger.void(conn, "m1", "h1", now=books.now())
    assert len(books.entries()) == 3
    assert books.account() == (400, 0)
    books.assert_verified()


def test_hold_beyond_the_balance_is_refused_and_writes_nothing(books, runtime):
    books.enrol()
    books.buy("t1", 12_345)
    # The caller even commits after the refusal: there must be nothing to commit.
    with transaction(runtime.engine) as conn, pytest.raises(InsufficientPoints):
        ledger.hold(conn, "m1", "h1", 624, capture_account=REDEEMED, now=books.now())
    assert books.account() == (623, 0)
    assert len(books.entries()) == 2
    assert books.read(sa.select(holds)) == []
    assert books.lots() == {WELCOME: 500, "t1": 123}
    (seq,) = books.read(sa.select(member_accounts.c.entry_seq))
    assert seq[0] == 2
    books.assert_verified()


def test_hold_of_the_whole_balance_is_allowed(books):
    books.enrol()
    books.hold("h1", 500)
    assert books.account() == (0, 500)
    assert books.lots() == {WELCOME: 0}
    with pytest.raises(InsufficientPoints):
        books.hold("h2", 1)
    books.assert_verified()


def test_holds_count_against_the_balance(books):
    books.enrol()
    books.hold("h1", 300)
    with pytest.raises(InsufficientPoints):
        books.hold("h2", 201)
    books.hold("h2", 200)
    assert books.account() == (0, 500)
    books.assert_verified()


def test_hold_for_an_unknown_member_is_refused(books):
    with pytest.raises(UnknownMember):
        books.hold("h1", 1, member_id="ghost")
    books.assert_verified()


def test_reusing_a_hold_id_is_refused(books):
    books.enrol()
    books.hold("h1", 100)
    with pytest.raises(sa.exc.IntegrityError):
        books.hold("h1", 50)
    assert books.account() == (400, 100)
    books.assert_verified()


# --- lots: first-expiring-first, restored on void ---------------------------


@pytest.fixture
def three_lots(books: Books) -> Books:
    """Welcome (500, expires in 24 months), old (123, expires in 4), recent (200, expires in 18)."""
    books.enrol()
    books.buy("old", 12_345, occurred_at=books.now() - dt.timedelta(days=600))
    books.buy("recent", 20_000, occurred_at=books.now() - dt.timedelta(days=180))
    assert books.lots() == {WELCOME: 500, "old": 123, "recent": 200}
    assert books.lot_expiry("old") < books.lot_expiry("recent") < books.lot_expiry(WELCOME)
    return books


def test_hold_consumes_the_first_expiring_lots_first(three_lots):
    books = three_lots
    held = books.hold("h1", 150)
    assert books.consumed_by(held.entry_id) == {"old": 123, "recent": 27}
    assert books.lots() == {WELCOME: 500, "old": 0, "recent": 173}
    held2 = books.hold("h2", 300)
    assert books.consumed_by(held2.entry_id) == {"recent": 173, WELCOME: 127}
    assert books.lots() == {WELCOME: 373, "old": 0, "recent": 0}
    books.assert_verified()


def test_void_gives_points_back_to_the_lots_they_came_from(three_lots):
    books = three_lots
    books.hold("h1", 150)
    held2 = books.hold("h2", 300)
    voided = books.void("h2")
    assert books.consumed_by(voided.entry_id) == {"recent": -173, WELCOME: -127}
    assert books.lots() == {WELCOME: 500, "old": 0, "recent": 173}
    assert books.consumed_by(held2.entry_id) == {"recent": 173, WELCOME: 127}
    books.void("h1")
    assert books.lots() == {WELCOME: 500, "old": 123, "recent": 200}
    assert books.account() == (823, 0)
    books.assert_verified()


def test_capture_leaves_the_lots_as_the_hold_left_them(three_lots):
    books = three_lots
    books.hold("h1", 150)
    captured = books.capture("h1")
    assert books.consumed_by(captured.entry_id) == {}
    assert books.lots() == {WELCOME: 500, "old": 0, "recent": 173}
    books.assert_verified()


# --- refunds -----------------------------------------------------------------


def test_partial_refunds_claw_back_in_proportion(books):
    books.enrol()
    books.buy("t1", 12_345)  # 123 points
    first = books.refund("t1", "r1", 5_000)
    assert (first.created, first.body["points_due"], first.body["points_reversed"]) == (True, 49, 49)
    assert first.body["balance"] == 623 - 49
    second = books.refund("t1", "r2", 5_000)
    assert second.body["points_reversed"] == 50  # floor(123 * 10000 / 12345) - 49
    last = books.refund("t1", "r3", 2_345)
    assert last.body["points_reversed"] == 24
    assert books.balance() == 500
    assert books.lots() == {WELCOME: 500, "t1": 0}
    (t,) = books.read(sa.select(transactions.c.reversed_amount, transactions.c.reversed_points))
    assert (t.reversed_amount, t.reversed_points) == (12_345, 123)
    assert books.account_total("issued:bank") == -500
    assert [e.kind for e in books.entries()] == ["bonus", "accrual", "reversal", "reversal", "reversal"]
    books.assert_verified()


def test_full_refund_takes_back_exactly_what_was_earned(books):
    books.enrol()
    books.buy("t1", 12_345)
    result = books.refund("t1", "r1", 12_345)
    assert result.body["points_reversed"] == 123
    assert books.balance() == 500
    reversal = books.entries()[-1]
    assert (reversal.kind, reversal.points, reversal.transaction_id) == ("reversal", -123, "t1")
    assert reversal.related_entry_id == books.entries()[1].id
    books.assert_verified()


def test_split_refunds_never_take_back_more_than_earned(books):
    books.enrol()
    books.buy("t1", 300)  # 3 points; half of it is 1.5 points
    a = books.refund("t1", "r1", 150)
    b = books.refund("t1", "r2", 150)
    assert (a.body["points_reversed"], b.body["points_reversed"]) == (1, 2)
    assert books.balance() == 500
    books.buy("t2", 999)  # 9 points, three thirds
    taken = [books.refund("t2", f"r2-{i}", 333).body["points_reversed"] for i in range(3)]
    assert taken == [3, 3, 3]
    books.buy("t3", 1_000)  # 10 points, refunded a fen at a time then the rest
    tiny = [books.refund("t3", f"r3-{i}", 1).body["points_reversed"] for i in range(9)]
    rest = books.refund("t3", "r3-rest", 991).body["points_reversed"]
    assert sum(tiny) + rest == 10
    assert books.balance() == 500
    books.assert_verified()


def test_refunds_of_the_largest_amounts_claw_back_exactly(books):
    # points * amount passes 2**63 here: PostgreSQL would refuse the product, SQLite would round it.
    books.enrol()
    amount, part = 999_999_999_998, 806_122_448_979
    points = amount // 100
    assert books.buy("t1", amount).body["points"] == points
    first = books.refund("t1", "r1", part)
    assert first.body["points_reversed"] == points * part // amount == 8_061_224_488
    rest = books.refund("t1", "r2", amount - part)
    assert first.body["points_reversed"] + rest.body["points_reversed"] == points
    (t,) = books.read(sa.select(transactions.c.reversed_points))
    assert t.reversed_points == points and isinstance(t.reversed_points, int)
    assert books.balance() == 500
    books.assert_verified()


def test_refund_beyond_the_unrefunded_amount_is_refused_and_writes_nothing(books):
    books.enrol()
    books.buy("t1", 12_345)
    books.refund("t1", "r1", 12_000)
    with pytest.raises(ValidationError) as err:
        books.refund("t1", "r2", 346)
    assert err.value.field == "amount"
    assert books.balance() == 623 - 119
    assert len(books.read(sa.select(reversals))) == 1
    # The refused reversal id was not used up.
    assert books.refund("t1", "r2", 345).body["points_reversed"] == 4
    assert books.balance() == 500
    books.assert_verified()


def test_refund_of_an_unknown_transaction_is_not_found(books):
    books.enrol()
    with pytest.raises(NotFound):
        books.refund("nope", "r1", 100)
    books.assert_verified()


def test_replayed_refund_posts_once(books):
    books.enrol()
    books.buy("t1", 12_345)
    first = books.refund("t1", "r1", 5_000)
    again = books.refund("t1", "r1", 5_000)
    assert again.replayed and not again.created
    assert again.body == first.body
    assert books.balance() == 623 - 49
    with pytest.raises(IdempotencyConflict):
        books.refund("t1", "r1", 6_000)
    books.assert_verified()


def test_refund_claws_back_from_the_transaction_own_lot_first(books, clock):
    # The welcome lot is older and expires first, yet the refund takes the transaction's own points.
    books.enrol()
    clock.advance(days=60)
    books.buy("t1", 12_345)
    assert books.lot_expiry(WELCOME) < books.lot_expiry("t1")
    refund = books.refund("t1", "r1", 5_000)
    assert books.consumed_by(refund.body["entry_id"]) == {"t1": 49}
    assert books.lots() == {WELCOME: 500, "t1": 74}
    books.assert_verified()


def test_refund_of_spent_own_points_takes_them_from_other_lots(three_lots):
    books = three_lots
    books.hold("h1", 150)  # old: 123 -> 0, recent: 200 -> 173
    books.capture("h1")
    refund = books.refund("old", "r1", 12_345)
    assert books.consumed_by(refund.body["entry_id"]) == {"recent": 123}
    assert books.lots() == {WELCOME: 500, "old": 0, "recent": 50}
    assert books.balance() == 550
    books.assert_verified()


def test_refund_after_spend_leaves_negative_balance(books):
    books.enrol()
    books.buy("t1", 12_345)
    books.hold("h1", 600)
    books.capture("h1")
    assert books.balance() == 23
    result = books.refund("t1", "r1", 12_345, policy="negative")
    assert (result.body["points_due"], result.body["points_reversed"], result.body["balance"]) == (123, 123, -100)
    assert books.account() == (-100, 0)
    assert books.lots() == {WELCOME: 0, "t1": 0}
    (row,) = books.read(sa.select(reversals.c.points_due, reversals.c.points))
    assert (row.points_due, row.points) == (123, 123)
    assert books.entries()[-1].balance_after == -100
    books.assert_verified()


def test_negative_balance_blocks_spending(books):
    books.enrol()
    books.buy("t1", 12_345)
    books.hold("h1", 600)
    books.capture("h1")
    books.refund("t1", "r1", 12_345, policy="negative")
    with pytest.raises(InsufficientPoints):
        books.hold("h2", 1)
    _, view = books.enrol()
    assert (view["balance"], view["held"], view["available"]) == (-100, 0, -100)
    books.assert_verified()


def test_refund_after_spend_under_available_policy_takes_only_what_is_left(books):
    books.enrol()
    books.buy("t1", 12_345)
    books.hold("h1", 600)
    books.capture("h1")
    result = books.refund("t1", "r1", 12_345, policy="available")
    assert (result.body["points_due"], result.body["points_reversed"], result.body["balance"]) == (123, 23, 0)
    assert books.account() == (0, 0)
    assert books.lots() == {WELCOME: 0, "t1": 0}
    assert books.entries()[-1].points == -23
    # What was forgiven stays forgiven: the issued account got back only 23.
    assert books.account_total("issued:bank") == -623 + 23
    books.assert_verified()


def test_refund_under_available_policy_with_nothing_left_takes_nothing(books):
    books.enrol()
    books.buy("t1", 12_345)
    books.hold("h1", 623)
    books.capture("h1")
    result = books.refund("t1", "r1", 6_000, policy="available")
    assert (result.body["points_due"], result.body["points_reversed"], result.body["entry_id"]) == (59, 0, None)
    assert books.account() == (0, 0)
    assert [e.kind for e in books.entries()] == ["bonus", "accrual", "hold", "capture"]
    # The rest of the refund is still measured against the whole transaction.
    rest = books.refund("t1", "r2", 6_345, policy="available")
    assert (rest.body["points_due"], rest.body["points_reversed"]) == (64, 0)
    books.assert_verified()


def test_refund_under_available_policy_without_spending_takes_everything(books):
    books.enrol()
    books.buy("t1", 12_345)
    result = books.refund("t1", "r1", 12_345, policy="available")
    assert result.body["points_reversed"] == 123
    assert books.balance() == 500
    books.assert_verified()


def test_later_accrual_pays_a_negative_balance_debt_first(books):
    books.enrol()
    books.buy("t1", 12_345)
    books.hold("h1", 600)
    books.capture("h1")
    books.refund("t1", "r1", 12_345)
    assert books.balance() == -100
    result = books.buy("t2", 30_000)
    assert (result.body["points"], result.body["balance"]) == (300, 200)
    assert books.lots()["t2"] == 200
    assert books.consumed_by(result.body["entry_id"]) == {"t2": 100}
    # Only the remainder is spendable.
    with pytest.raises(InsufficientPoints):
        books.hold("h2", 201)
    books.hold("h2", 200)
    books.assert_verified()


def test_accrual_smaller_than_the_debt_is_absorbed_whole(books):
    books.enrol()
    books.buy("t1", 12_345)
    books.hold("h1", 600)
    books.capture("h1")
    books.refund("t1", "r1", 12_345)
    result = books.buy("t2", 3_000)
    assert (result.body["points"], result.body["balance"]) == (30, -70)
    assert books.lots()["t2"] == 0
    assert books.consumed_by(result.body["entry_id"]) == {"t2": 30}
    books.assert_verified()


def test_accrual_of_several_awards_pays_the_debt_from_them_in_order(books, runtime):
    books.enrol()
    books.buy("t1", 12_345)
    books.hold("h1", 600)
    books.capture("h1")
    books.refund("t1", "r1", 12_345)  # balance -100
    awards = [
        Award("promo-a", 60, "bank", False, "first award"),
        Award("promo-b", 70, "bank", True, "second award"),
    ]
    with transaction(runtime.engine) as conn:
        posted = ledger.accrue(
            conn,
            "m1",
            awards,
            kind="bonus",
            source_ref="promo",
            earned_at=books.now(),
            expires_at=add_months(books.now(), 24, BANK_ZONE),
            now=books.now(),
        )
    assert (posted.points, posted.balance_after) == (130, 30)
    assert [(lot["rule_id"], lot["original"], lot["remaining"]) for lot in posted.lots] == [
        ("promo-a", 60, 0),
        ("promo-b", 70, 30),
    ]
    lc = lot_consumptions.c
    taken = dict(books.read(sa.select(lc.lot_id, lc.points).where(lc.entry_id == posted.entry_id)))
    assert taken == {posted.lots[0]["id"]: 60, posted.lots[1]["id"]: 40}
    books.assert_verified()


def test_accrual_refuses_awards_that_are_not_positive(books, runtime):
    books.enrol()
    for awards in ([], [Award("zero", 0, "bank", False, "nothing")]):
        with pytest.raises(ValueError), transaction(runtime.engine) as conn:
            ledger.accrue(
                conn,
                "m1",
                awards,
                kind="bonus",
                source_ref="x",
                earned_at=books.now(),
                expires_at=add_months(books.now(), 24, BANK_ZONE),
                now=books.now(),
            )
    assert books.balance() == 500
    books.assert_verified()


def test_void_after_a_refund_pays_the_debt_first(books):
    books.enrol()
    books.buy("t1", 12_345)
    books.hold("h1", 600)
    books.refund("t1", "r1", 12_345)
    assert books.account() == (-100, 600)
    voided = books.void("h1")
    assert voided.balance_after == 500
    assert books.account() == (500, 0)
    # 600 came back and 100 of it paid the debt. The hold took t1's 123 (expiring first) and 477 of
    # the welcome lot; the refund then emptied the welcome lot. The 500 go back latest-expiring first.
    assert books.consumed_by(voided.entry_id) == {WELCOME: -477, "t1": -23}
    assert books.lots() == {WELCOME: 477, "t1": 23}
    books.assert_verified()


def test_void_of_less_than_the_debt_restores_no_lot(books):
    books.enrol()
    books.buy("t1", 60_000)  # 600 points
    books.hold("h1", 100)
    books.hold("h2", 1_000)
    books.capture("h2")
    books.refund("t1", "r1", 60_000)
    assert books.account() == (-600, 100)
    voided = books.void("h1")
    assert voided.balance_after == -500
    assert books.consumed_by(voided.entry_id) == {}
    assert sum(books.lots().values()) == 0
    books.assert_verified()


# --- statement and the system accounts ---------------------------------------


def test_statement_numbers_entries_and_chains_balances(books, runtime, clock):
    books.enrol()
    clock.advance(minutes=1)
    books.buy("t1", 12_345)
    books.hold("h1", 600)
    books.capture("h1")
    books.refund("t1", "r1", 12_345)
    books.buy("t2", 30_000)
    books.hold("h2", 50)
    books.void("h2")
    books.buy("x1", 1_000, type="bill_payment")  # no entry
    with transaction(runtime.engine, readonly=True) as conn:
        page = members.statement(conn, "m1", limit=50, before_seq=None)
        older = members.statement(conn, "m1", limit=3, before_seq=6)
    entries = list(reversed(page["entries"]))
    kinds = ["bonus", "accrual", "hold", "capture", "reversal", "accrual", "hold", "void"]
    assert [e["kind"] for e in entries] == kinds
    assert [e["seq"] for e in entries] == list(range(1, 9))
    # The balance counts held points: a hold moves points from available to held, a capture spends them.
    assert [e["points"] for e in entries] == [500, 123, 0, -600, -123, 300, 0, 0]
    assert [e["balance_after"] for e in entries] == [500, 623, 623, 23, -100, 200, 200, 200]
    assert [e["held_after"] for e in entries] == [0, 0, 600, 0, 0, 0, 50, 0]
    assert [e["available_after"] for e in entries] == [500, 623, 23, 23, -100, 200, 150, 200]
    previous = 0
    for e in entries:
        assert e["balance_after"] == previous + e["points"]
        assert e["available_after"] == e["balance_after"] - e["held_after"]
        previous = e["balance_after"]
    assert previous == books.balance()
    assert page["next_cursor"] is None
    assert [e["seq"] for e in older["entries"]] == [5, 4, 3]
    assert [e["held_after"] for e in older["entries"]] == [0, 0, 600], "a page counts what was held before it"
    assert older["entries"] == page["entries"][3:6]
    assert older["next_cursor"] == "3"
    assert entries[3]["related_entry_id"] == entries[2]["entry_id"]
    assert entries[7]["related_entry_id"] == entries[6]["entry_id"]
    books.assert_verified()


def test_system_accounts_mirror_the_member_movements(books):
    books.enrol("m1")
    books.enrol("m2")
    books.buy("t1", 12_345, member_id="m1")
    books.buy("t2", 20_000, member_id="m2")
    books.hold("h1", 300, member_id="m1")
    books.capture("h1", member_id="m1")
    books.hold("h2", 100, member_id="m2")
    books.refund("t2", "r2", 10_000)
    assert books.account_total("issued:bank") == -(500 + 123 + 500 + 200) + 100
    assert books.account_total(REDEEMED) == 300
    assert books.account_total("holds") == 100
    assert books.account_total("member") == books.balance("m1") + books.balance("m2") == 323 + 500
    assert (
        books.account_total("issued:bank")
        + books.account_total(REDEEMED)
        + books.account_total("holds")
        + books.account_total("member")
        == 0
    )
    books.assert_verified()

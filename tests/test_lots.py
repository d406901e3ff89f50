"""The ledger's pure lot arithmetic: no database."""

from __future__ import annotations

import datetime as dt

import pytest

from loyalty.ledger.lots import OpenLot, check_balanced, fifo_order, take

UTC = dt.UTC


def at(year: int, month: int, day: int, hour: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, tzinfo=UTC)


def lot(id: str, remaining: int, expires: dt.datetime, earned: dt.datetime | None = None) -> OpenLot:
    return OpenLot(id, remaining, expires, earned or expires - dt.timedelta(days=730))


# --- FIFO order -----------------------------------------------------------


def test_fifo_spends_soonest_expiring_lot_first():
    late = lot("a", 10, at(2028, 6, 1))
    soon = lot("b", 10, at(2027, 1, 1))
    middle = lot("c", 10, at(2027, 6, 1))
    assert [x.id for x in fifo_order([late, soon, middle])] == ["b", "c", "a"]


def test_fifo_breaks_expiry_ties_by_oldest_earned():
    expires = at(2027, 2, 28)
    newer = lot("a", 10, expires, earned=at(2025, 2, 28))
    older = lot("b", 10, expires, earned=at(2025, 2, 27))
    assert [x.id for x in fifo_order([newer, older])] == ["b", "a"]


def test_fifo_breaks_full_ties_by_id():
    expires, earned = at(2027, 1, 1), at(2025, 1, 1)
    lots = [lot(i, 1, expires, earned) for i in ("c", "a", "b")]
    assert [x.id for x in fifo_order(lots)] == ["a", "b", "c"]


def test_fifo_order_does_not_depend_on_input_order():
    lots = [lot(str(i), i + 1, at(2027, 1 + i % 12, 1), at(2025, 1, 1 + i)) for i in range(12)]
    assert fifo_order(lots) == fifo_order(list(reversed(lots)))


# --- take -----------------------------------------------------------------


def test_take_draws_from_soonest_expiring_first():
    lots = [lot("late", 100, at(2028, 1, 1)), lot("soon", 30, at(2027, 1, 1))]
    assert take(lots, 50) == [("soon", 30), ("late", 20)]


def test_take_partial_leaves_later_lots_untouched():
    lots = [lot("soon", 100, at(2027, 1, 1)), lot("late", 100, at(2028, 1, 1))]
    assert take(lots, 40) == [("soon", 40)]


def test_take_exact_total_empties_every_lot():
    lots = [lot("a", 10, at(2027, 1, 1)), lot("b", 15, at(2027, 2, 1))]
    assert take(lots, 25) == [("a", 10), ("b", 15)]


def test_take_more_than_lots_hold_takes_all_there_is():
    lots = [lot("a", 10, at(2027, 1, 1)), lot("b", 15, at(2027, 2, 1))]
    plan = take(lots, 100)
    assert plan == [("a", 10), ("b", 15)]
    assert sum(n for _, n in plan) == 25


def test_take_from_no_lots_takes_nothing():
    assert take([], 10) == []


def test_take_zero_points_takes_nothing():
    assert take([lot("a", 10, at(2027, 1, 1))], 0) == []


def test_take_skips_empty_lots():
    lots = [lot("empty", 0, at(2026, 12, 1)), lot("full", 5, at(2027, 1, 1))]
    assert take(lots, 5) == [("full", 5)]


def test_take_refuses_negative_points():
    with pytest.raises(ValueError, match="negative"):
        take([lot("a", 10, at(2027, 1, 1))], -1)


def test_take_prefers_named_lots_even_if_they_expire_later():
    lots = [lot("soon", 50, at(2027, 1, 1)), lot("own", 30, at(2028, 1, 1))]
    assert take(lots, 40, prefer=["own"]) == [("own", 30), ("soon", 10)]


def test_take_orders_preferred_lots_among_themselves_fifo():
    lots = [
        lot("other", 50, at(2026, 12, 1)),
        lot("own-late", 10, at(2028, 1, 1)),
        lot("own-soon", 10, at(2027, 1, 1)),
    ]
    assert take(lots, 25, prefer={"own-late", "own-soon"}) == [("own-soon", 10), ("own-late", 10), ("other", 5)]


def test_take_accepts_a_one_shot_iterator_as_prefer():
    lots = [lot("soon", 50, at(2027, 1, 1)), lot("own", 30, at(2028, 1, 1))]
    assert take(lots, 10, prefer=iter(["own"])) == [("own", 10)]


def test_take_ignores_preferred_ids_that_are_not_open():
    lots = [lot("a", 5, at(2027, 1, 1))]
    assert take(lots, 5, prefer=["gone"]) == [("a", 5)]


def test_take_never_takes_more_than_a_lot_holds_or_returns_zero_amounts():
    lots = [lot(str(i), i % 4, at(2027, 1 + i % 12, 1), at(2025, 1, 1 + i)) for i in range(20)]
    for points in range(0, 40):
        plan = take(lots, points)
        remaining = {x.id: x.remaining for x in lots}
        assert all(0 < n <= remaining[i] for i, n in plan)
        assert len({i for i, _ in plan}) == len(plan)
        assert sum(n for _, n in plan) == min(points, sum(remaining.values()))


# --- check_balanced -------------------------------------------------------


def test_check_balanced_accepts_postings_that_sum_to_zero():
    check_balanced([500, -500])
    check_balanced([100, 23, -123])


def test_check_balanced_refuses_a_sum_other_than_zero():
    with pytest.raises(ValueError, match="sum to 1"):
        check_balanced([100, -99])


def test_check_balanced_refuses_a_single_posting():
    with pytest.raises(ValueError, match="at least two"):
        check_balanced([0])


def test_check_balanced_refuses_no_postings():
    with pytest.raises(ValueError, match="at least two"):
        check_balanced([])


def test_check_balanced_refuses_a_zero_line_even_if_balanced():
    with pytest.raises(ValueError, match="zero"):
        check_balanced([5, -5, 0])


def test_check_balanced_accepts_a_generator():
    check_balanced(x for x in (7, -3, -4))

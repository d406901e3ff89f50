"""Reports read from the ledger: the trial balance and the roll-forward of outstanding points.

Every figure is a sum of postings over a local period of the bank's calendar
(posting dates: when the ledger moved). Points the bank owes its members are
the balances of the member accounts and of ``holds`` (points held by
redemptions in flight are still owed until captured): the *outstanding*
points.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty.calendar import iso
from loyalty.finance import balances, snapshots
from loyalty.finance.models import daily_balances
from loyalty.ledger.models import POSTING_ENTRY, accounts, journal_entries, postings

OUTSTANDING = snapshots.OUTSTANDING


def trial_balance(conn: Connection, *, end: dt.datetime) -> dict[str, Any]:
    """Every account's balance from the postings before ``end``; they sum to zero."""
    a = accounts.c
    codes = {r.code: r.kind for r in conn.execute(sa.select(a.code, a.kind).order_by(a.code))}
    found = _sums(conn, None, end, (), tuple(codes))
    balances: dict[str, int] = defaultdict(int)
    for (account,), amount in found.items():
        balances[account] += amount
    lines = [{"account": code, "kind": kind, "balance": balances.get(code, 0)} for code, kind in codes.items()]
    return {"as_of": iso(end), "accounts": lines, "total": sum(line["balance"] for line in lines)}


def outstanding(conn: Connection, *, end: dt.datetime) -> int:
    """Points owed to members from the postings before ``end``."""
    return sum(_sums(conn, None, end, (), OUTSTANDING).values())


def _sums(
    conn: Connection, start: dt.datetime | None, end: dt.datetime, by: tuple[str, ...], codes: tuple[str, ...]
) -> dict[tuple[str, ...], int]:
    """The postings to ``codes`` posted in ``[start, end)`` summed by account and ``by`` (``kind``,
    ``rule_id``): the whole days the ``balances`` job rolled up from :data:`daily_balances`, the
    rest from the postings (through the index on account and posting date)."""
    d, p, je = daily_balances.c, postings.c, journal_entries.c
    out: dict[tuple[str, ...], int] = defaultdict(int)
    how = balances.split(conn, start, end)
    if how.days is not None:
        keys = [d.account, *(getattr(d, k) for k in by)]
        q = sa.select(*keys, sa.func.sum(d.amount)).where(balances.in_days(how.days), d.account.in_(codes))
        for row in conn.execute(q.group_by(*keys)):
            out[_key(row)] += int(row[-1])
    for span in how.live:
        columns = {"kind": je.kind, "rule_id": sa.func.coalesce(p.rule_id, "")}
        keys = [p.account, *(columns[k] for k in by)]
        q = sa.select(*keys, sa.func.sum(p.amount)).where(balances.posted_in(span), p.account.in_(codes))
        if by:
            q = q.select_from(postings.join(journal_entries, POSTING_ENTRY)).where(
                balances.posted_in(span, je.posted_at)
            )
        for row in conn.execute(q.group_by(*keys)):
            out[_key(row)] += int(row[-1])
    return dict(out)


def _key(row: Any) -> tuple[str, ...]:
    return tuple(row[:-1])


def rollforward(conn: Connection, *, start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
    """Outstanding points at ``start``, what moved them until ``end`` by kind, and at ``end``:

    opening + earned - redeemed - expired - reversed +/- adjusted = closing,

    earned by funding source and by rule, redeemed by the account (benefit) it went to. The
    closing figure is then tied out against the members' own balances at ``end`` (each
    member's balance after its last entry before ``end``, plus its holds pending then), and
    every member whose figures differ is listed: nothing is netted or hidden."""
    opening = outstanding(conn, end=start)
    codes = tuple(conn.execute(sa.select(accounts.c.code)).scalars())
    moved_by = _sums(conn, start, end, ("kind", "rule_id"), codes)
    earned_by_funding: dict[str, int] = defaultdict(int)
    earned_by_rule: dict[str, int] = defaultdict(int)
    redeemed_by_account: dict[str, int] = defaultdict(int)
    moved: dict[str, int] = defaultdict(int)  # by entry kind, change of the outstanding points
    for (account, kind, rule_id), amount in moved_by.items():
        if account in OUTSTANDING:
            moved[kind] += amount
            if kind in ("accrual", "bonus") and account == "member":
                earned_by_rule[rule_id or "unspecified"] += amount
        elif kind in ("accrual", "bonus") and account.startswith("issued:"):
            earned_by_funding[account.removeprefix("issued:")] -= amount
        elif kind == "capture":
            redeemed_by_account[account] += amount
    earned = moved["accrual"] + moved["bonus"]
    redeemed = -moved["capture"]
    expired = -moved["expiry"]
    reversed_ = -moved["reversal"]
    adjusted = moved["adjustment"]
    closing = opening + earned - redeemed - expired - reversed_ + adjusted
    ledger_closing = outstanding(conn, end=end)
    members_total, differences = _members_at(conn, end)
    return {
        "from": iso(start),
        "to": iso(end),
        "opening": opening,
        "earned": {
            "total": earned,
            "by_funding_source": dict(sorted(earned_by_funding.items())),
            "by_rule": dict(sorted(earned_by_rule.items())),
        },
        "redeemed": {"total": redeemed, "by_account": dict(sorted(redeemed_by_account.items()))},
        "expired": expired,
        "reversed": reversed_,
        "adjusted": adjusted,
        # holds and voids move points between a member and ``holds``: both owed, so they net to zero
        "closing": closing,
        "tie_out": {
            "closing_from_postings": ledger_closing,
            "sum_of_member_balances": members_total,
            "differences": differences
            + (
                [{"what": "roll-forward against the postings at the end", "expected": closing, "found": ledger_closing}]
                if closing != ledger_closing
                else []
            ),
            "tied": closing == ledger_closing == members_total and not differences,
        },
    }


def _members_at(conn: Connection, end: dt.datetime) -> tuple[int, list[dict[str, Any]]]:
    """The sum over members of what they owned at ``end`` (their balance after their last entry
    before it, plus their holds pending then), read from the entries and the holds, not the
    postings; and each member whose postings say otherwise (:func:`snapshots.members_at`)."""
    figures = snapshots.members_at(conn, end)
    differences = [
        {"member_id": m, "balance": f.owned, "postings": f.posted}
        for m, f in sorted(figures.items())
        if f.owned != f.posted
    ]
    return sum(f.owned for f in figures.values()), differences

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
from loyalty.ledger.models import accounts, holds, journal_entries, postings

#: The accounts whose balances the bank owes its members.
OUTSTANDING = ("member", "holds")


def trial_balance(conn: Connection, *, end: dt.datetime) -> dict[str, Any]:
    """Every account's balance from the postings before ``end``; they sum to zero."""
    p, a = postings.c, accounts.c
    rows = conn.execute(
        sa.select(a.code, a.kind, sa.func.coalesce(sa.func.sum(p.amount), 0).label("balance"))
        .select_from(accounts.outerjoin(postings, sa.and_(p.account == a.code, p.posted_at < end)))
        .group_by(a.code, a.kind)
        .order_by(a.code)
    ).all()
    lines = [{"account": r.code, "kind": r.kind, "balance": int(r.balance)} for r in rows]
    return {"as_of": iso(end), "accounts": lines, "total": sum(line["balance"] for line in lines)}


def outstanding(conn: Connection, *, end: dt.datetime) -> int:
    """Points owed to members from the postings before ``end``."""
    p = postings.c
    total = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(p.amount), 0)).where(p.account.in_(OUTSTANDING), p.posted_at < end)
    ).scalar_one()
    return int(total)


def rollforward(conn: Connection, *, start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
    """Outstanding points at ``start``, what moved them until ``end`` by kind, and at ``end``:

    opening + earned - redeemed - expired - reversed +/- adjusted = closing,

    earned by funding source and by rule, redeemed by the account (benefit) it went to. The
    closing figure is then tied out against the members' own balances at ``end`` (each
    member's balance after its last entry before ``end``, plus its holds pending then), and
    every member whose figures differ is listed: nothing is netted or hidden."""
    p, je = postings.c, journal_entries.c
    in_period = sa.and_(p.posted_at >= start, p.posted_at < end)
    opening = outstanding(conn, end=start)
    rows = conn.execute(
        sa.select(je.kind, p.account, p.rule_id, sa.func.sum(p.amount).label("amount"))
        .select_from(postings.join(journal_entries, sa.and_(je.member_id == p.member_id, je.id == p.entry_id)))
        .where(in_period)
        .group_by(je.kind, p.account, p.rule_id)
    ).all()
    earned_by_funding: dict[str, int] = defaultdict(int)
    earned_by_rule: dict[str, int] = defaultdict(int)
    redeemed_by_account: dict[str, int] = defaultdict(int)
    moved: dict[str, int] = defaultdict(int)  # by entry kind, change of the outstanding points
    for r in rows:
        amount = int(r.amount)
        if r.account in OUTSTANDING:
            moved[r.kind] += amount
            if r.kind in ("accrual", "bonus") and r.account == "member":
                earned_by_rule[r.rule_id or "unspecified"] += amount
        elif r.kind in ("accrual", "bonus") and r.account.startswith("issued:"):
            earned_by_funding[r.account.removeprefix("issued:")] -= amount
        elif r.kind == "capture":
            redeemed_by_account[r.account] += amount
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
    postings; and each member whose postings say otherwise."""
    je, h, p = journal_entries.c, holds.c, postings.c
    last = (
        sa.select(je.member_id, sa.func.max(je.seq).label("seq"))
        .where(je.posted_at < end)
        .group_by(je.member_id)
        .subquery()
    )
    balances = sa.select(je.member_id, je.balance_after.label("amount")).join(
        last, sa.and_(last.c.member_id == je.member_id, last.c.seq == je.seq)
    )
    pending = sa.select(h.member_id, h.points.label("amount")).where(
        h.created_at < end, sa.or_(h.resolved_at.is_(None), h.resolved_at >= end)
    )
    owned = sa.union_all(balances, pending).subquery()
    by_member = sa.select(owned.c.member_id, sa.func.sum(owned.c.amount).label("owned")).group_by(owned.c.member_id)
    posted = (
        sa.select(p.member_id, sa.func.sum(p.amount).label("posted"))
        .where(p.account.in_(OUTSTANDING), p.posted_at < end)
        .group_by(p.member_id)
    )
    owned_rows = {r.member_id: int(r.owned) for r in conn.execute(by_member)}
    posted_rows = {r.member_id: int(r.posted) for r in conn.execute(posted)}
    differences = [
        {"member_id": m, "balance": owned_rows.get(m, 0), "postings": posted_rows.get(m, 0)}
        for m in sorted(set(owned_rows) | set(posted_rows))
        if owned_rows.get(m, 0) != posted_rows.get(m, 0)
    ]
    return sum(owned_rows.values()), differences

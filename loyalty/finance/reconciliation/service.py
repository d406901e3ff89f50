"""Reconciling a partner's statement with the redemptions that partner fulfilled.

**What we expect to pay** for a redemption is the unit cost of the benefit
version it was redeemed under, times its quantity, in fen: the price the bank
agreed for one unit when the member redeemed it, whatever the benefit costs
now.

**Which redemptions count** on our side: those of the partner that it
delivered by our records, ``fulfilled`` (settled or not) or ``cancelled``
after fulfilment (the engine tells partners nothing of a cancellation, so the
partner delivered those), fulfilled within the statement's period of local
dates. A statement line is matched by redemption id to our redemption of that
partner whenever it was delivered, so a delivery the partner dates a day later
than we do still matches.

Each statement line is then ``matched`` (same amount), an ``amount_mismatch``
(both have it, the amounts differ) or ``missing_on_our_side`` (we have no
delivered redemption of that id with that partner; the line names our
redemption's status if we have one, ``pending`` or ``failed``); each of our
redemptions of the period not in the statement is ``missing_on_their_side``.
The result is stored with every line, and audited, in the caller's transaction.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty import audit, calendar
from loyalty.calendar import iso
from loyalty.catalogue.models import benefit_versions, benefits
from loyalty.errors import NotFound
from loyalty.finance.reconciliation.models import (
    AMOUNT_MISMATCH,
    CATEGORIES,
    MATCHED,
    MISSING_ON_OUR_SIDE,
    MISSING_ON_THEIR_SIDE,
    reconciliation_lines,
    reconciliations,
)
from loyalty.finance.reconciliation.statement import Statement
from loyalty.idempotency import idempotency_keys
from loyalty.redemption.models import redemptions
from loyalty.redemption.service import SCOPE as REDEMPTION_SCOPE

#: Redemptions the partner delivered, by our records.
DELIVERED = ("fulfilled", "cancelled")
#: Ids looked up per query.
CHUNK = 500

r = redemptions.c


class ReconciliationNotFound(NotFound):
    code = "reconciliation_not_found"
    title = "No such reconciliation"


def reconcile(
    conn: Connection, statement: Statement, *, zone: ZoneInfo, actor: str, now: dt.datetime
) -> dict[str, Any]:
    """Compare ``statement`` with our redemptions of its partner, store the result and audit it;
    returns the stored reconciliation as :func:`get` shows it."""
    start, end = calendar.start_of(statement.start, zone), calendar.day_of(statement.end, zone).end
    ours = {
        row.id: row
        for row in conn.execute(
            sa.select(redemptions)
            .where(
                r.partner == statement.partner,
                r.fulfilled_at >= start,
                r.fulfilled_at < end,
                r.status.in_(DELIVERED),
            )
            .order_by(r.fulfilled_at, r.id)
        )
    }
    elsewhere = [x.redemption_id for x in statement.lines if x.redemption_id not in ours]
    known = {**ours, **_by_id(conn, statement.partner, elsewhere)}
    costs = _unit_costs(conn, {(row.benefit_code, int(row.benefit_version)) for row in known.values()})

    lines: list[dict[str, Any]] = []
    for item in statement.lines:
        row = known.get(item.redemption_id)
        theirs = {
            "statement_line": item.line,
            "partner_reference": item.partner_reference,
            "statement_date": item.date,
            "statement_fen": item.amount_fen,
        }
        if row is None:
            lines.append({"category": MISSING_ON_OUR_SIDE, "redemption_id": item.redemption_id, **theirs})
            continue
        described = _ours(row, costs)
        if row.status not in DELIVERED:
            described["ours_fen"] = None
            category = MISSING_ON_OUR_SIDE
        else:
            category = MATCHED if described["ours_fen"] == item.amount_fen else AMOUNT_MISMATCH
        lines.append({"category": category, "redemption_id": item.redemption_id, **theirs, **described})
    billed = {x.redemption_id for x in statement.lines}
    for row in ours.values():
        if row.id not in billed:
            lines.append({"category": MISSING_ON_THEIR_SIDE, "redemption_id": row.id, **_ours(row, costs)})

    reconciliation_id = str(uuid.uuid4())
    conn.execute(
        reconciliations.insert().values(
            id=reconciliation_id,
            partner=statement.partner,
            from_date=statement.start,
            to_date=statement.end,
            timezone=zone.key,
            statement_sha256=statement.sha256,
            created_by=actor,
            created_at=now,
        )
    )
    if lines:
        empty = dict.fromkeys(c.name for c in reconciliation_lines.columns)
        conn.execute(
            reconciliation_lines.insert(),
            [
                {**empty, **line, "reconciliation_id": reconciliation_id, "seq": i}
                for i, line in enumerate(lines, start=1)
            ],
        )
    result = get(conn, reconciliation_id)
    audit.record(
        conn,
        actor=actor,
        action="reconciliation.created",
        object_type="reconciliation",
        object_id=reconciliation_id,
        after={k: v for k, v in result.items() if k != "lines"},
        now=now,
    )
    return result


def _by_id(conn: Connection, partner: str, ids: Sequence[str]) -> dict[str, Any]:
    """Our redemptions of ``partner`` among ``ids``, whatever their status or date, found through
    the redemption ids' idempotency keys (which name the member: the redemptions' key)."""
    ik = idempotency_keys.c
    found: dict[str, Any] = {}
    for i in range(0, len(ids), CHUNK):
        chunk = ids[i : i + CHUNK]
        rows = conn.execute(
            sa.select(redemptions)
            .join(idempotency_keys, sa.and_(ik.member_id == r.member_id, ik.key == r.id))
            .where(ik.scope == REDEMPTION_SCOPE, ik.key.in_(chunk), r.partner == partner)
        )
        found.update({row.id: row for row in rows})
    return found


def _unit_costs(conn: Connection, versions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """The unit cost of each benefit version, from the catalogue's stored versions. A benefit
    written outside the catalogue has no stored versions: its current unit cost stands in."""
    wanted = set(versions)
    costs: dict[tuple[str, int], int] = {}
    codes = sorted({code for code, _ in wanted})
    bv, b = benefit_versions.c, benefits.c
    for i in range(0, len(codes), CHUNK):
        chunk = codes[i : i + CHUNK]
        for row in conn.execute(sa.select(bv.code, bv.version, bv.document).where(bv.code.in_(chunk))):
            key = (row.code, int(row.version))
            if key in wanted:
                costs[key] = int(json.loads(row.document)["unit_cost"])
        current = dict(conn.execute(sa.select(b.code, b.unit_cost).where(b.code.in_(chunk))).tuples().all())
        for code, version in wanted:
            if code in current and (code, version) not in costs:
                costs[(code, version)] = int(current[code])
    return costs


def _ours(row: Any, costs: dict[tuple[str, int], int]) -> dict[str, Any]:
    unit_cost = costs[(row.benefit_code, int(row.benefit_version))]
    return {
        "member_id": row.member_id,
        "benefit_code": row.benefit_code,
        "benefit_version": int(row.benefit_version),
        "quantity": int(row.quantity),
        "unit_cost_fen": unit_cost,
        "ours_fen": unit_cost * int(row.quantity),
        "our_status": row.status,
        "our_reference": row.partner_ref,
        "fulfilled_at": row.fulfilled_at,
    }


# ---- reading ----------------------------------------------------------------------------------------------------


def get(conn: Connection, reconciliation_id: str) -> dict[str, Any]:
    """A stored reconciliation: its summary and every line."""
    row = conn.execute(sa.select(reconciliations).where(reconciliations.c.id == reconciliation_id)).first()
    if row is None:
        raise ReconciliationNotFound(f"no reconciliation {reconciliation_id!r}", field="reconciliation_id")
    zone = ZoneInfo(row.timezone)
    rl = reconciliation_lines.c
    lines = conn.execute(
        sa.select(reconciliation_lines).where(rl.reconciliation_id == reconciliation_id).order_by(rl.seq)
    )
    return {**_summaries(conn, [row])[0], "lines": [_line_view(line, zone) for line in lines]}


def list_reconciliations(conn: Connection, *, partner: str | None, limit: int) -> list[dict[str, Any]]:
    """The latest reconciliations, newest first, optionally of one partner; summaries only."""
    rc = reconciliations.c
    query = sa.select(reconciliations).order_by(rc.created_at.desc(), rc.id.desc()).limit(limit)
    if partner is not None:
        query = query.where(rc.partner == partner)
    return _summaries(conn, conn.execute(query).all())


def _summaries(conn: Connection, rows: Sequence[Any]) -> list[dict[str, Any]]:
    """Each reconciliation's summary, summed from its stored lines, so it can never disagree with them."""
    rl = reconciliation_lines.c
    ids = [row.id for row in rows]
    figures: dict[str, dict[str, Any]] = {i: {} for i in ids}
    differ: dict[str, int] = dict.fromkeys(ids, 0)
    for i in range(0, len(ids), CHUNK):
        chunk = ids[i : i + CHUNK]
        sums = conn.execute(
            sa.select(
                rl.reconciliation_id,
                rl.category,
                sa.func.count().label("lines"),
                sa.func.coalesce(sa.func.sum(rl.statement_fen), 0).label("statement_fen"),
                sa.func.coalesce(sa.func.sum(rl.ours_fen), 0).label("ours_fen"),
            )
            .where(rl.reconciliation_id.in_(chunk))
            .group_by(rl.reconciliation_id, rl.category)
        )
        for s in sums:
            figures[s.reconciliation_id][s.category] = _figures(int(s.lines), int(s.statement_fen), int(s.ours_fen))
        references = conn.execute(
            sa.select(rl.reconciliation_id, sa.func.count())
            .where(
                rl.reconciliation_id.in_(chunk),
                rl.category.in_((MATCHED, AMOUNT_MISMATCH)),
                rl.our_reference.is_not(None),
                rl.partner_reference != rl.our_reference,
            )
            .group_by(rl.reconciliation_id)
        )
        differ.update({rid: int(n) for rid, n in references})
    out = []
    for row in rows:
        by_category = {c: figures[row.id].get(c, _figures(0, 0, 0)) for c in CATEGORIES}
        statement_lines = sum(by_category[c]["count"] for c in (MATCHED, AMOUNT_MISMATCH, MISSING_ON_OUR_SIDE))
        ours_count = sum(by_category[c]["count"] for c in (MATCHED, AMOUNT_MISMATCH, MISSING_ON_THEIR_SIDE))
        statement_fen = sum(f["statement_fen"] for f in by_category.values())
        ours_fen = sum(f["ours_fen"] for f in by_category.values())
        out.append(
            {
                "reconciliation_id": row.id,
                "partner": row.partner,
                "from": row.from_date.isoformat(),
                "to": row.to_date.isoformat(),
                "timezone": row.timezone,
                "statement_sha256": row.statement_sha256,
                "created_by": row.created_by,
                "created_at": iso(row.created_at),
                "statement": {"lines": statement_lines, "total_fen": statement_fen},
                "ours": {"redemptions": ours_count, "total_fen": ours_fen},
                "difference_fen": statement_fen - ours_fen,
                "categories": by_category,
                "references_differ": differ[row.id],
                "reconciled": by_category[MATCHED]["count"] == statement_lines == ours_count,
            }
        )
    return out


def _figures(count: int, statement_fen: int, ours_fen: int) -> dict[str, int]:
    return {
        "count": count,
        "statement_fen": statement_fen,
        "ours_fen": ours_fen,
        "difference_fen": statement_fen - ours_fen,
    }


def _line_view(line: Any, zone: dt.tzinfo) -> dict[str, Any]:
    statement_fen = None if line.statement_fen is None else int(line.statement_fen)
    ours_fen = None if line.ours_fen is None else int(line.ours_fen)
    return {
        "category": line.category,
        "redemption_id": line.redemption_id,
        "statement_line": line.statement_line,
        "partner_reference": line.partner_reference,
        "statement_date": None if line.statement_date is None else line.statement_date.isoformat(),
        "statement_fen": statement_fen,
        "ours_fen": ours_fen,
        "difference_fen": (statement_fen or 0) - (ours_fen or 0),
        "member_id": line.member_id,
        "benefit_code": line.benefit_code,
        "benefit_version": line.benefit_version,
        "quantity": line.quantity,
        "unit_cost_fen": None if line.unit_cost_fen is None else int(line.unit_cost_fen),
        "our_status": line.our_status,
        "our_reference": line.our_reference,
        "fulfilled_at": iso(line.fulfilled_at),
        "fulfilled_on": None if line.fulfilled_at is None else calendar.local_date(line.fulfilled_at, zone).isoformat(),
    }

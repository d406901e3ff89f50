"""Valuation settings: what a point is worth, how many will be redeemed, and the value allocated
to a point when issued, per funding source, versioned by the local date they take effect.

Each change is audited. A setting applies from its ``effective_from`` until the next one of the
same kind and funding source; setting one for the same date again replaces it (audited too).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty import audit
from loyalty.calendar import iso
from loyalty.errors import ValidationError
from loyalty.finance.models import SETTING_KINDS, valuation_settings

#: The largest value of a point (or allocated to one) accepted, in fen.
MAX_POINT_FEN = Decimal(1_000_000)


def parse_value(kind: str, raw: Any, *, field: str = "value") -> Decimal:
    """A setting's value: a decimal written as a string (floats are inexact), within its kind's range."""
    if not isinstance(raw, str):
        raise ValidationError.one(field, 'must be a decimal written as a string, e.g. "0.85"')
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ValidationError.one(field, f"{raw!r} is not a decimal number") from None
    if not value.is_finite() or value < 0:
        raise ValidationError.one(field, "must be a finite number, not negative")
    if value.as_tuple().exponent < -6:  # type: ignore[operator]
        raise ValidationError.one(field, "must have at most 6 decimal places")
    if kind == "redemption_rate" and value > 1:
        raise ValidationError.one(field, "a redemption rate is a share of the points: from 0 to 1")
    if kind != "redemption_rate" and value > MAX_POINT_FEN:
        raise ValidationError.one(field, f"must be at most {MAX_POINT_FEN} fen")
    return value


def set_value(
    conn: Connection,
    *,
    kind: str,
    funding_source: str,
    effective_from: dt.date,
    value: Decimal,
    actor: str,
    now: dt.datetime,
) -> tuple[bool, dict[str, Any]]:
    """Set a valuation from ``effective_from``; returns ``(created, setting)``."""
    if kind not in SETTING_KINDS:
        raise ValidationError.one("kind", f"must be one of {', '.join(SETTING_KINDS)}")
    vs = valuation_settings.c
    key = (vs.kind == kind, vs.funding_source == funding_source, vs.effective_from == effective_from)
    before = conn.execute(sa.select(valuation_settings).where(*key)).first()
    row = {"value": str(value), "created_by": actor, "created_at": now}
    if before is None:
        conn.execute(
            valuation_settings.insert().values(
                kind=kind, funding_source=funding_source, effective_from=effective_from, **row
            )
        )
    else:
        conn.execute(valuation_settings.update().where(*key).values(**row))
    after = _json(conn.execute(sa.select(valuation_settings).where(*key)).one())
    audit.record(
        conn,
        actor=actor,
        action="set" if before is None else "replace",
        object_type="valuation_setting",
        object_id=f"{kind}:{funding_source}:{effective_from.isoformat()}",
        before=None if before is None else _json(before),
        after=after,
        now=now,
    )
    return before is None, after


def all_settings(conn: Connection) -> list[dict[str, Any]]:
    vs = valuation_settings.c
    rows = conn.execute(sa.select(valuation_settings).order_by(vs.kind, vs.funding_source, vs.effective_from))
    return [_json(r) for r in rows]


def in_force(conn: Connection, on: dt.date) -> dict[str, dict[str, Decimal]]:
    """kind -> funding source -> the value in force on local date ``on``."""
    vs = valuation_settings.c
    rows = conn.execute(
        sa.select(vs.kind, vs.funding_source, vs.value)
        .where(vs.effective_from <= on)
        .order_by(vs.kind, vs.funding_source, vs.effective_from)
    )
    out: dict[str, dict[str, Decimal]] = defaultdict(dict)
    for r in rows:  # later dates overwrite earlier ones
        out[r.kind][r.funding_source] = Decimal(r.value)
    return out


def _json(row: Any) -> dict[str, Any]:
    return {
        "kind": row.kind,
        "funding_source": row.funding_source,
        "effective_from": row.effective_from.isoformat(),
        "value": row.value,
        "created_by": row.created_by,
        "created_at": iso(row.created_at),
    }

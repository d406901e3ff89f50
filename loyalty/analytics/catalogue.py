"""What the catalogue looked like in a period: each benefit's versions in force, read from
``benefit_versions``, and a literal table of their unit costs for set-based joins."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty.calendar import Period
from loyalty.catalogue import service
from loyalty.catalogue.models import benefit_versions, benefits


@dataclass(frozen=True)
class Version:
    code: str
    version: int
    #: in force from then until the next version
    since: dt.datetime
    until: dt.datetime | None
    doc: dict[str, Any]

    def open_in(self, bounds: Period) -> bool:
        """Active, redeemable and in force at some moment of ``bounds``."""
        doc = self.doc
        start = max(bounds.start, self.since, _moment(doc.get("valid_from")) or bounds.start)
        ends = [bounds.end, self.until, _moment(doc.get("valid_until"))]
        end = min(e for e in ends if e is not None)
        return doc.get("status") == "active" and start < end

    def eligible(self, tier: str) -> bool:
        tiers = self.doc.get("eligible_tiers") or []
        return not tiers or tier in tiers


def _moment(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def versions(conn: Connection) -> dict[str, list[Version]]:
    """Every benefit's versions, oldest first, each with the interval it was in force."""
    bv = benefit_versions.c
    out: dict[str, list[Version]] = {}
    rows = list(conn.execute(sa.select(bv.code, bv.version, bv.changed_at, bv.document).order_by(bv.code, bv.version)))
    for i, r in enumerate(rows):
        if r.code in out and out[r.code][-1].version == r.version:
            continue
        nxt = rows[i + 1] if i + 1 < len(rows) and rows[i + 1].code == r.code else None
        out.setdefault(r.code, []).append(
            Version(r.code, int(r.version), r.changed_at, nxt.changed_at if nxt else None, json.loads(r.document))
        )
    # A benefit written without its version history (by an older release) is its current row.
    for row in conn.execute(sa.select(benefits).order_by(benefits.c.code)):
        if not any(v.version == row.version for v in out.get(row.code, [])):
            out.setdefault(row.code, []).append(
                Version(row.code, int(row.version), row.updated_at, None, service.document(row))
            )
    return out


@dataclass(frozen=True)
class Offer:
    """A benefit as open to one tier in a period: the versions that were, and the last of them."""

    code: str
    tier: str
    latest: Version

    @property
    def entitlement(self) -> dict[str, Any] | None:
        return (self.latest.doc.get("entitlements") or {}).get(self.tier)

    @property
    def unit_cost(self) -> int:
        return int(self.latest.doc["unit_cost"])

    @property
    def points_price(self) -> int | None:
        price = (self.latest.doc.get("tier_prices") or {}).get(self.tier, self.latest.doc.get("points_price"))
        return None if price is None else int(price)


def offers(catalogue: dict[str, list[Version]], tiers: list[str], bounds: Period) -> dict[tuple[str, str], Offer]:
    """(tier, benefit) -> the offer, for every benefit open to the tier at some moment of ``bounds``."""
    out: dict[tuple[str, str], Offer] = {}
    for code, vs in catalogue.items():
        for tier in tiers:
            open_ = [v for v in vs if v.open_in(bounds) and v.eligible(tier)]
            if open_:
                out[(tier, code)] = Offer(code, tier, open_[-1])
    return out


def cost_table(catalogue: dict[str, list[Version]]) -> sa.Subquery:
    """``(code, version, unit_cost, funding_source)`` of every version, as a literal table in SQL."""
    rows = [
        sa.select(
            sa.literal(v.code, sa.String).label("code"),
            sa.literal(v.version, sa.Integer).label("version"),
            sa.literal(int(v.doc["unit_cost"]), sa.BigInteger).label("unit_cost"),
            sa.literal(v.doc["funding_source"], sa.String).label("funding_source"),
        )
        for vs in catalogue.values()
        for v in vs
    ]
    if not rows:
        empty = sa.select(
            sa.literal("", sa.String).label("code"),
            sa.literal(0, sa.Integer).label("version"),
            sa.literal(0, sa.BigInteger).label("unit_cost"),
            sa.literal("", sa.String).label("funding_source"),
        ).where(sa.false())
        return empty.subquery("costs")
    return sa.union_all(*rows).subquery("costs")

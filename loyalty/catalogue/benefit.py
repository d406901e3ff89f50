"""A benefit as the services see it: read from its row, with its price and entitlement per tier."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty.catalogue.models import BENEFIT_COLUMNS, benefits
from loyalty.errors import NotFound


@dataclass(frozen=True)
class Entitlement:
    """Units a tier gets without points, per period."""

    quota: int
    period: str  # day, month, year


@dataclass(frozen=True)
class Benefit:
    code: str
    version: int
    name: str
    description: str
    kind: str
    fulfilment: str
    partner: str | None
    face_value: int
    unit_cost: int
    funding_source: str
    points_price: int | None
    tier_prices: dict[str, int] = field(default_factory=dict)
    eligible_tiers: tuple[str, ...] = ()
    entitlements: dict[str, Entitlement] = field(default_factory=dict)
    stock: int | None = None
    low_stock_threshold: int | None = None
    limits: dict[str, int] = field(default_factory=dict)
    valid_from: dt.datetime | None = None
    valid_until: dt.datetime | None = None
    status: str = "draft"
    cancel_hours: int = 0

    def eligible(self, tier: str) -> bool:
        return not self.eligible_tiers or tier in self.eligible_tiers

    def price(self, tier: str) -> int | None:
        """Points per unit for ``tier``; ``None`` if it is not for sale to that tier."""
        return self.tier_prices.get(tier, self.points_price)

    def entitlement(self, tier: str) -> Entitlement | None:
        return self.entitlements.get(tier)

    def in_window(self, now: dt.datetime) -> bool:
        return (self.valid_from is None or self.valid_from <= now) and (
            self.valid_until is None or now < self.valid_until
        )

    @property
    def capture_account(self) -> str:
        """The ledger account its points are redeemed to."""
        return f"redeemed:{self.code}"


def benefit_from_row(row: Any) -> Benefit:
    return Benefit(
        code=row.code,
        version=int(row.version),
        name=row.name,
        description=row.description,
        kind=row.kind,
        fulfilment=row.fulfilment,
        partner=row.partner,
        face_value=int(row.face_value),
        unit_cost=int(row.unit_cost),
        funding_source=row.funding_source,
        points_price=None if row.points_price is None else int(row.points_price),
        tier_prices={k: int(v) for k, v in json.loads(row.tier_prices).items()},
        eligible_tiers=tuple(json.loads(row.eligible_tiers)),
        entitlements={k: Entitlement(int(v["quota"]), v["period"]) for k, v in json.loads(row.entitlements).items()},
        stock=None if row.stock is None else int(row.stock),
        low_stock_threshold=None if row.low_stock_threshold is None else int(row.low_stock_threshold),
        limits={k: int(v) for k, v in json.loads(row.limits).items()},
        valid_from=row.valid_from,
        valid_until=row.valid_until,
        status=row.status,
        cancel_hours=int(row.cancel_hours),
    )


class BenefitNotFound(NotFound):
    code = "benefit_not_found"
    title = "No such benefit"


def load_benefit(conn: Connection, code: str, *, field: str = "benefit_code") -> Benefit:
    row = conn.execute(sa.select(*BENEFIT_COLUMNS).where(benefits.c.code == code)).first()
    if row is None:
        raise BenefitNotFound(f"no benefit {code!r}", field=field)
    return benefit_from_row(row)


def all_benefits(conn: Connection) -> list[Benefit]:
    return [benefit_from_row(r) for r in conn.execute(sa.select(*BENEFIT_COLUMNS).order_by(benefits.c.code))]

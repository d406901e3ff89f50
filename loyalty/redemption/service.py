"""Redemptions: a member spends points, or a tier entitlement, on a benefit.

:func:`redeem` does everything in the caller's one transaction, in this order:

1. one statement claims the redemption id (``idempotency_keys``, scope
   ``redemption``) and locks the member's rows as bookings lock them: a retry
   with the same body replays, a different body is a 409; then one statement
   reads the member's tier and points, the benefit and the member's usage of it;
2. refuse what cannot be had, each with its own problem type:
   ``benefit_not_found``, a missing or unwanted ``delivery`` field,
   ``benefit_inactive``, ``not_eligible``, ``limit_reached``, ``out_of_stock``,
   ``insufficient_points``;
3. move the points (none for an entitlement): a benefit fulfilled at once that
   cannot be cancelled spends them in one entry (member to ``redeemed:<benefit>``);
   any other holds them until it is fulfilled or its cancellation window ends;
4. insert the redemption and fulfil it: voucher codes taken from the pool by one
   ``UPDATE ... RETURNING`` that skips codes other redemptions are taking (the
   pool is the stock: no row is updated by every redemption of the benefit), or
   the bank's own booking, at once; a partner later, through the fulfilment job;
5. last, a counted stock is taken with one conditional ``UPDATE``, so its row
   stays locked only until the commit.

The answer is built from what was written, not read back.

A refusal raises, so the transaction rolls back and nothing is written; the API then keeps
the refusal itself (:func:`record_refusal`), for the analytics of turned-away demand.

Limits and entitlement quotas count the units of the member's ``pending`` and
``fulfilled`` redemptions of the benefit created in the current local day,
month or year of the programme's time zone. Everything is read under the
member's lock, so two redemptions of one member cannot both pass a limit.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty import calendar
from loyalty.calendar import iso
from loyalty.catalogue import codes
from loyalty.catalogue.benefit import Benefit, Entitlement, all_benefits, benefit_from_row
from loyalty.catalogue.models import PERIODS, benefits, voucher_codes
from loyalty.db import insert_ignore
from loyalty.errors import InsufficientPoints, MemberNotFound, UnknownMember, ValidationError
from loyalty.events.service import emit
from loyalty.idempotency import Result, claim_key, idempotency_keys, request_hash
from loyalty.ledger import service as ledger
from loyalty.ledger.models import member_accounts
from loyalty.records.models import members
from loyalty.redemption import states
from loyalty.redemption.errors import (
    BenefitInactive,
    LimitReached,
    NotCancellable,
    NotEligible,
    OutOfStock,
    RedemptionNotFound,
    Refused,
)
from loyalty.redemption.models import REFUSAL_REASONS, redemption_refusals, redemptions

#: The idempotency scope of redemption ids.
SCOPE = "redemption"
#: Redemptions that count toward limits and quotas: those not given back.
LIVE = ("pending", "fulfilled")
#: A mainland China mobile number.
PHONE_NUMBER = re.compile(r"^1[3-9]\d{9}$")


class UnknownBenefit(Refused):
    """A benefit named in a request body does not exist (like an unknown member, a 422)."""

    code = "benefit_not_found"
    title = "No such benefit"


@dataclass(frozen=True)
class RedemptionCommand:
    redemption_id: str
    member_id: str
    benefit_code: str
    quantity: int = 1
    #: ``{"phone_number": ...}`` or ``{"account_ref": ...}``; ``None`` when nothing is sent
    delivery: dict[str, str] | None = None


def delivery_field(benefit: Benefit) -> str | None:
    """The delivery detail a benefit needs: a partner tops up a phone or credits a membership account."""
    if benefit.fulfilment != "partner":
        return None
    return {"phone_credit": "phone_number", "membership": "account_ref"}.get(benefit.kind)


def check_delivery(benefit: Benefit, delivery: dict[str, str] | None) -> None:
    """The delivery details must be exactly those the benefit needs: nothing more is stored."""
    needed = delivery_field(benefit)
    given = delivery or {}
    errors: dict[str, list[str]] = {}
    for name in given:
        if name != needed:
            errors[f"delivery.{name}"] = [f"is not used by benefit {benefit.code!r}; leave it out"]
    if needed is not None and needed not in given:
        errors[f"delivery.{needed}"] = [f"is required for benefit {benefit.code!r}"]
    if errors:
        raise ValidationError(errors)


# ---- periods and usage ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """Units of a benefit a member has in live redemptions in the current periods."""

    #: period -> all units
    units: dict[str, int]
    #: period -> units claimed as an entitlement
    entitled: dict[str, int]


NO_USAGE = Usage({p: 0 for p in PERIODS}, {p: 0 for p in PERIODS})


def usage(
    conn: Connection, member_id: str, *, now: dt.datetime, zone: dt.tzinfo, benefit_code: str | None = None
) -> dict[str, Usage]:
    """The member's usage of each benefit (or of one) in the day, month and year containing ``now``."""
    r = redemptions.c
    bounds = {p: calendar.period(p, now, zone) for p in PERIODS}
    columns = []
    for p, (start, end) in bounds.items():
        inside = sa.and_(r.created_at >= start, r.created_at < end)
        columns.append(sa.func.sum(sa.case((inside, r.quantity), else_=0)).label(f"units_{p}"))
        entitled = sa.and_(inside, r.entitlement.is_(True))
        columns.append(sa.func.sum(sa.case((entitled, r.quantity), else_=0)).label(f"entitled_{p}"))
    widest = (min(s for s, _ in bounds.values()), max(e for _, e in bounds.values()))
    query = (
        sa.select(r.benefit_code, *columns)
        .where(
            r.member_id == member_id,
            r.status.in_(LIVE),
            r.created_at >= widest[0],
            r.created_at < widest[1],
        )
        .group_by(r.benefit_code)
    )
    if benefit_code is not None:
        query = query.where(r.benefit_code == benefit_code)
    return {
        row.benefit_code: Usage(
            {p: int(getattr(row, f"units_{p}") or 0) for p in PERIODS},
            {p: int(getattr(row, f"entitled_{p}") or 0) for p in PERIODS},
        )
        for row in conn.execute(query)
    }


@dataclass(frozen=True)
class Terms:
    """What redeeming ``quantity`` units of a benefit would mean for a member now."""

    #: claimed as a tier entitlement, at no points
    entitlement: bool
    #: points in all
    points: int


def limit_left(benefit: Benefit, used: Usage) -> tuple[str, int, int] | None:
    """The tightest personal limit: ``(period, limit, units left)``; ``None`` without limits."""
    tightest = None
    for period in PERIODS:
        if period in benefit.limits:
            limit = benefit.limits[period]
            left = max(0, limit - used.units[period])
            if tightest is None or left < tightest[2]:
                tightest = (period, limit, left)
    return tightest


def quota_left(entitlement: Entitlement | None, used: Usage) -> int:
    if entitlement is None:
        return 0
    return max(0, entitlement.quota - used.entitled[entitlement.period])


def terms(benefit: Benefit, tier: str, quantity: int, used: Usage) -> Terms:
    """Eligibility, limits and entitlement, in that order; raises the first refusal that applies.

    An entitlement whose quota still covers every unit asked for is claimed at
    no points; otherwise the tier's price applies to all of them. A benefit that
    is only an entitlement (no price for the tier) is refused with
    ``limit_reached`` once its quota cannot cover the quantity."""
    price = benefit.price(tier)
    entitlement = benefit.entitlement(tier)
    if not benefit.eligible(tier):
        raise NotEligible(
            f"benefit {benefit.code!r} is not offered to the {tier} tier", field="benefit_code", tier=tier
        )
    if price is None and entitlement is None:
        raise NotEligible(
            f"benefit {benefit.code!r} has neither a price nor an entitlement for the {tier} tier",
            field="benefit_code",
            tier=tier,
        )
    tightest = limit_left(benefit, used)
    if tightest is not None and quantity > tightest[2]:
        period, limit, left = tightest
        raise LimitReached(
            f"at most {limit} of {benefit.code!r} per {period}; {left} left this {period}",
            field="quantity",
            period=period,
            limit=limit,
            remaining=left,
        )
    if entitlement is not None and quantity <= quota_left(entitlement, used):
        return Terms(entitlement=True, points=0)
    if price is None:
        assert entitlement is not None
        left = quota_left(entitlement, used)
        raise LimitReached(
            f"the {tier} tier gets {entitlement.quota} of {benefit.code!r} per {entitlement.period}; {left} left",
            field="quantity",
            period=entitlement.period,
            limit=entitlement.quota,
            remaining=left,
        )
    return Terms(entitlement=False, points=price * quantity)


# ---- redeeming ------------------------------------------------------------------------------------------------


def _member(conn: Connection, member_id: str) -> Any:
    m, a = members.c, member_accounts.c
    return conn.execute(
        sa.select(m.tier, a.balance).join(member_accounts, a.member_id == m.member_id).where(m.member_id == member_id)
    ).first()


def _reserve_stock(conn: Connection, benefit: Benefit, quantity: int) -> int:
    """Take ``quantity`` units of a counted stock in one conditional UPDATE; returns the stock before.
    The last write of a redemption: the benefit's row stays locked only until the commit."""
    left = conn.execute(RESERVE, {"benefit": benefit.code, "units": quantity}).scalar()
    if left is None:
        raise OutOfStock(f"benefit {benefit.code!r} has fewer than {quantity} left", field="benefit_code")
    return int(left) + quantity


RESERVE = (
    benefits.update()
    .where(
        benefits.c.code == sa.bindparam("benefit"),
        benefits.c.stock.is_not(None),
        benefits.c.stock >= sa.bindparam("units"),
    )
    .values(stock=benefits.c.stock - sa.bindparam("units"))
    .returning(benefits.c.stock)
)


def _redeem_query() -> sa.Select[Any]:
    """Everything a redemption decides on, in one statement made once the claim of the redemption
    id has locked the member's rows (:func:`loyalty.idempotency.claim_key`): the member's tier and
    available points, the
    benefit (``NULL`` columns if there is none), and the member's live units of it in the current
    day, month and year (``<period>0`` to ``<period>1``, within ``since`` to ``until``)."""
    m, a, r, b = members.c, member_accounts.c, redemptions.c, benefits.c
    columns = []
    for p in PERIODS:
        inside = sa.and_(
            r.created_at >= sa.bindparam(f"{p}0", type_=r.created_at.type),
            r.created_at < sa.bindparam(f"{p}1", type_=r.created_at.type),
        )
        columns.append(sa.func.sum(sa.case((inside, r.quantity), else_=0)).label(f"units_{p}"))
        entitled = sa.and_(inside, r.entitlement.is_(True))
        columns.append(sa.func.sum(sa.case((entitled, r.quantity), else_=0)).label(f"entitled_{p}"))
    used = (
        sa.select(*columns)
        .where(
            r.member_id == sa.bindparam("member_id"),
            r.benefit_code == sa.bindparam("benefit_code"),
            r.status.in_(LIVE),
            r.created_at >= sa.bindparam("since", type_=r.created_at.type),
            r.created_at < sa.bindparam("until", type_=r.created_at.type),
        )
        .subquery("used")
    )
    return (
        sa.select(m.tier.label("member_tier"), a.balance.label("member_balance"), *benefits.c, *used.c)
        .select_from(
            member_accounts.join(members, m.member_id == a.member_id)
            .outerjoin(benefits, b.code == sa.bindparam("benefit_code"))
            .join(used, sa.true())
        )
        .where(a.member_id == sa.bindparam("member_id"))
    )


REDEEM_READ = _redeem_query()
INSERT_REDEMPTION = redemptions.insert()


@dataclass(frozen=True)
class Redeemed:
    """A redemption's answer, and the voucher codes it gives (decrypted) for the caller to show."""

    result: Result
    codes: list[str]


def redeem(
    conn: Connection,
    cmd: RedemptionCommand,
    *,
    zone: dt.tzinfo,
    now: dt.datetime,
    deadline_seconds: int,
    secret_key: str,
) -> Redeemed:
    """Redeem a benefit for a member; see the module's description. Returns the redemption's view
    and its voucher codes, decrypted with ``secret_key``."""
    bounds = {p: calendar.period(p, now, zone) for p in PERIODS}
    params: dict[str, Any] = {"member_id": cmd.member_id, "benefit_code": cmd.benefit_code}
    for p, (start, end) in bounds.items():
        params[f"{p}0"], params[f"{p}1"] = start, end
    params["since"] = min(start for start, _ in bounds.values())
    params["until"] = max(end for _, end in bounds.values())
    digest = request_hash(asdict(cmd))
    existing = claim_key(
        conn,
        SCOPE,
        cmd.redemption_id,
        digest,
        field="redemption_id",
        member_id=cmd.member_id,
        now=now,
        lock_member=True,
    )
    if existing is not None:
        view = redemption_view(conn, existing.member_id, cmd.redemption_id, now=now)
        return Redeemed(Result(view, replayed=True), issued_codes(conn, secret_key, view))
    row = conn.execute(REDEEM_READ, params).first()
    if row is None:
        raise UnknownMember(f"member {cmd.member_id!r} is not enrolled", field="member_id")
    if row.code is None:
        raise UnknownBenefit(f"no benefit {cmd.benefit_code!r}", field="benefit_code")
    benefit = benefit_from_row(row)
    check_delivery(benefit, cmd.delivery)
    if benefit.status != "active" or not benefit.in_window(now):
        raise BenefitInactive(f"benefit {benefit.code!r} cannot be redeemed now", field="benefit_code")
    used = Usage(
        {p: int(getattr(row, f"units_{p}") or 0) for p in PERIODS},
        {p: int(getattr(row, f"entitled_{p}") or 0) for p in PERIODS},
    )
    deal = terms(benefit, row.member_tier, cmd.quantity, used)
    if benefit.stock is not None and benefit.stock < cmd.quantity:
        raise OutOfStock(f"benefit {benefit.code!r} has fewer than {cmd.quantity} left", field="benefit_code")
    available = int(row.member_balance)  # what holds leave on the member account
    if deal.points > available:
        raise InsufficientPoints(
            f"{deal.points} points needed, {available} available",
            field="quantity",
            required=deal.points,
            available=available,
        )
    partner = benefit.fulfilment == "partner"
    # Fulfilled at once (a code from the pool, the bank's own booking) and not cancellable: the points
    # are spent for good now, in one entry. Otherwise they are held until fulfilment or the window ends.
    settled = not partner and not benefit.cancel_hours
    hold_id = None
    if deal.points:
        if settled:
            ledger.spend(conn, cmd.member_id, cmd.redemption_id, deal.points, account=benefit.capture_account, now=now)
        else:
            account = benefit.capture_account
            ledger.hold(conn, cmd.member_id, cmd.redemption_id, deal.points, capture_account=account, now=now)
            hold_id = cmd.redemption_id
    values = {
        "member_id": cmd.member_id,
        "id": cmd.redemption_id,
        "benefit_code": benefit.code,
        "benefit_version": benefit.version,
        "quantity": cmd.quantity,
        "points": deal.points,
        "entitlement": deal.entitlement,
        "status": "pending" if partner else "fulfilled",
        "hold_id": hold_id,
        "settled": settled,
        "delivery": json.dumps(cmd.delivery, ensure_ascii=False, sort_keys=True) if cmd.delivery else None,
        "partner": benefit.partner if partner else None,
        "partner_ref": f"BANK-{cmd.redemption_id}" if benefit.fulfilment == "bank" else None,
        "failure_reason": None,
        "next_attempt_at": now if partner else None,
        "deadline": now + dt.timedelta(seconds=deadline_seconds) if partner else None,
        "cancel_until": None if partner or settled else now + dt.timedelta(hours=benefit.cancel_hours),
        "created_at": now,
        "updated_at": now,
        "fulfilled_at": None if partner else now,
    }
    conn.execute(INSERT_REDEMPTION, values)
    plain: list[str] = []
    if benefit.fulfilment == "pool":
        sealed = codes.take_codes(
            conn, benefit.code, member_id=cmd.member_id, redemption_id=cmd.redemption_id, quantity=cmd.quantity, now=now
        )
        if sealed is None:
            raise OutOfStock(f"benefit {benefit.code!r} has fewer than {cmd.quantity} codes left", field="benefit_code")
        codes.check_pool_low_stock(
            conn, benefit.code, threshold=benefit.low_stock_threshold, taken=cmd.quantity, now=now
        )
        box = codes.CodeBox(secret_key)
        plain = [box.open(benefit.code, secret) for secret in sealed]
    if not partner:
        emit(
            conn,
            "redemption.fulfilled",
            member_id=cmd.member_id,
            payload={"redemption_id": cmd.redemption_id, "benefit_code": benefit.code, "points": deal.points},
            now=now,
        )
    if benefit.stock is not None:
        before = _reserve_stock(conn, benefit, cmd.quantity)
        codes.check_low_stock(
            conn,
            benefit.code,
            before=before,
            after=before - cmd.quantity,
            threshold=benefit.low_stock_threshold,
            now=now,
        )
    view = _view(SimpleNamespace(**values), benefit.name, benefit.kind, benefit.fulfilment, now)
    return Redeemed(Result(view, created=True), plain)


def record_refusal(conn: Connection, cmd: RedemptionCommand, reason: str, *, now: dt.datetime) -> bool:
    """Keep a refused redemption (in its own transaction: the refusal rolled the request back), so
    turned-away demand can be counted; the first refusal of a redemption id is kept. Refusals of an
    unknown member or benefit, and of reasons other than :data:`REFUSAL_REASONS`, are not kept.
    Returns whether a row was written."""
    if reason not in REFUSAL_REASONS:
        return False
    known = conn.execute(
        sa.select(
            sa.exists().where(members.c.member_id == cmd.member_id),
            sa.exists().where(benefits.c.code == cmd.benefit_code),
        )
    ).one()
    if not all(known):
        return False
    written = conn.execute(
        insert_ignore(conn, redemption_refusals).values(
            member_id=cmd.member_id,
            redemption_id=cmd.redemption_id,
            benefit_code=cmd.benefit_code,
            quantity=cmd.quantity,
            reason=reason,
            refused_at=now,
        )
    )
    return bool(written.rowcount)


# ---- reading --------------------------------------------------------------------------------------------------


def find_redemption_member(conn: Connection, redemption_id: str) -> str:
    """The member a redemption id belongs to, found through its idempotency key."""
    ik = idempotency_keys.c
    member_id = conn.execute(sa.select(ik.member_id).where(ik.scope == SCOPE, ik.key == redemption_id)).scalar()
    if member_id is None or states.current(conn, member_id, redemption_id) is None:
        # (a key without its row was claimed by a request still in flight)
        raise RedemptionNotFound(f"no redemption {redemption_id!r}", field="redemption_id")
    return str(member_id)


def cancellation_refusal(row: Any, now: dt.datetime) -> str | None:
    """Why a redemption cannot be cancelled now, or ``None`` if it can."""
    if row.status != "fulfilled":
        return str(row.status)
    if row.settled:
        return "settled"
    if row.cancel_until is None or now >= row.cancel_until:
        return "window_closed"
    return None


def redemption_view(conn: Connection, member_id: str, redemption_id: str, *, now: dt.datetime) -> dict[str, Any]:
    """A redemption as the API shows it, without its voucher codes."""
    r, b = redemptions.c, benefits.c
    row = conn.execute(
        sa.select(redemptions, b.name, b.kind, b.fulfilment)
        .join(benefits, b.code == r.benefit_code)
        .where(r.member_id == member_id, r.id == redemption_id)
    ).one()
    return _view(row, row.name, row.kind, row.fulfilment, now)


def _view(row: Any, name: str, kind: str, fulfilment: str, now: dt.datetime) -> dict[str, Any]:
    return {
        "redemption_id": row.id,
        "member_id": row.member_id,
        "benefit": {
            "code": row.benefit_code,
            "version": int(row.benefit_version),
            "name": name,
            "kind": kind,
            "fulfilment": fulfilment,
        },
        "quantity": int(row.quantity),
        "points": int(row.points),
        "entitlement": bool(row.entitlement),
        "status": row.status,
        "partner": row.partner,
        "reference": row.partner_ref,
        "failure_reason": row.failure_reason,
        "settled": bool(row.settled),
        "cancel_until": iso(row.cancel_until),
        "cancellable": cancellation_refusal(row, now) is None,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
        "fulfilled_at": iso(row.fulfilled_at),
    }


def issued_codes(conn: Connection, secret_key: str, view: dict[str, Any]) -> list[str]:
    """The voucher codes issued to the redemption ``view`` shows, decrypted; none once it is cancelled."""
    if view["benefit"]["fulfilment"] != "pool":
        return []
    box = codes.CodeBox(secret_key)
    return codes.reveal(
        conn, box, view["benefit"]["code"], member_id=view["member_id"], redemption_id=view["redemption_id"]
    )


def issued_count(conn: Connection, view: dict[str, Any]) -> int:
    """How many voucher codes the redemption ``view`` shows holds, without decrypting any."""
    if view["benefit"]["fulfilment"] != "pool":
        return 0
    vc = voucher_codes.c
    count = sa.select(sa.func.count()).where(
        vc.benefit_code == view["benefit"]["code"],
        vc.member_id == view["member_id"],
        vc.redemption_id == view["redemption_id"],
    )
    return int(conn.execute(count).scalar_one())


# ---- cancelling -----------------------------------------------------------------------------------------------


def cancel(conn: Connection, redemption_id: str, *, now: dt.datetime) -> Result:
    """Cancel a fulfilled redemption within its window: points back to their lots, codes back to
    the pool, stock back. Refused with ``not_cancellable`` and the reason otherwise."""
    member_id = find_redemption_member(conn, redemption_id)
    states.lock_member(conn, member_id)
    row = states.current(conn, member_id, redemption_id)
    reason = cancellation_refusal(row, now)
    if reason is not None:
        detail = {
            "pending": "it is still being fulfilled",
            "failed": "it failed, and its points were already returned",
            "cancelled": "it is already cancelled",
            "settled": "its points are spent for good",
            "window_closed": "its cancellation window has closed",
        }[reason]
        raise NotCancellable(f"redemption {redemption_id!r} cannot be cancelled: {detail}", reason=reason)
    states.cancelled(conn, member_id, redemption_id, now=now)
    return Result(redemption_view(conn, member_id, redemption_id, now=now))


# ---- what a member can get ------------------------------------------------------------------------------------


def offer(benefit: Benefit, tier: str, available_points: int, used: Usage) -> dict[str, Any]:
    """One benefit as a member sees it: price or entitlement, stock, limits left, and whether one
    unit can be redeemed now (with every reason it cannot)."""
    eligible = benefit.eligible(tier)
    price = benefit.price(tier) if eligible else None
    entitlement = benefit.entitlement(tier) if eligible else None
    quota = quota_left(entitlement, used)
    tightest = limit_left(benefit, used)
    covered = entitlement is not None and quota >= 1
    reasons = []
    if price is None and entitlement is None:
        reasons.append("not_eligible")
    else:
        if (tightest is not None and tightest[2] < 1) or (not covered and price is None):
            reasons.append("limit_reached")
        if benefit.stock is not None and benefit.stock < 1:
            reasons.append("out_of_stock")
        if not covered and price is not None and price > available_points:
            reasons.append("insufficient_points")
    return {
        "code": benefit.code,
        "name": benefit.name,
        "description": benefit.description,
        "kind": benefit.kind,
        "fulfilment": benefit.fulfilment,
        "face_value": benefit.face_value,
        "price": price,
        "points": 0 if covered else price,
        "entitlement": None
        if entitlement is None
        else {
            "quota": entitlement.quota,
            "period": entitlement.period,
            "used": used.entitled[entitlement.period],
            "remaining": quota,
        },
        "stock": benefit.stock,
        "limits": [
            {
                "period": p,
                "limit": benefit.limits[p],
                "used": used.units[p],
                "remaining": max(0, benefit.limits[p] - used.units[p]),
            }
            for p in PERIODS
            if p in benefit.limits
        ],
        "delivery": delivery_field(benefit),
        "cancel_hours": benefit.cancel_hours,
        "valid_until": iso(benefit.valid_until),
        "available": not reasons,
        "reasons": reasons,
    }


def member_benefits(conn: Connection, member_id: str, *, zone: dt.tzinfo, now: dt.datetime) -> dict[str, Any]:
    """Every active benefit in its validity window, as ``member_id`` sees it now."""
    member = _member(conn, member_id)
    if member is None:
        raise MemberNotFound(f"member {member_id!r} is not enrolled", field="member_id")
    available = int(member.balance)  # balance - held: what holds leave on the member account
    used = usage(conn, member_id, now=now, zone=zone)
    return {
        "member_id": member_id,
        "tier": member.tier,
        "available_points": available,
        "benefits": [
            offer(b, member.tier, available, used.get(b.code, NO_USAGE))
            for b in all_benefits(conn)
            if b.status == "active" and b.in_window(now)
        ],
    }


def usage_by_tier(conn: Connection, *, since: dt.datetime) -> dict[str, int]:
    """Members of each tier (as stored now) who redeemed anything since ``since``, cancelled or not."""
    m, r = members.c, redemptions.c
    tier = sa.func.coalesce(m.override_tier, m.tier)
    rows = conn.execute(
        sa.select(tier.label("tier"), sa.func.count(sa.distinct(r.member_id)).label("members"))
        .select_from(redemptions.join(members, m.member_id == r.member_id))
        .where(r.created_at >= since)
        .group_by(tier)
    )
    return {row.tier: int(row.members) for row in rows}


def stuck(conn: Connection, *, before: dt.datetime, limit: int = 20) -> list[dict[str, Any]]:
    """Redemptions still pending fulfilment that were made before ``before``, oldest first."""
    r = redemptions.c
    rows = conn.execute(
        sa.select(r.member_id, r.id, r.benefit_code, r.created_at, r.attempts)
        .where(r.status == "pending", r.created_at < before)
        .order_by(r.created_at)
        .limit(limit)
    )
    return [
        {"member_id": x.member_id, "redemption_id": x.id, "benefit": x.benefit_code,
         "created_at": iso(x.created_at), "attempts": int(x.attempts)}
        for x in rows
    ]


def member_redemptions(conn: Connection, member_id: str, *, now: dt.datetime, limit: int = 50) -> list[dict[str, Any]]:
    """A member's latest redemptions, newest first, each as :func:`redemption_view` shows it."""
    r = redemptions.c
    ids = conn.execute(
        sa.select(r.id).where(r.member_id == member_id).order_by(r.created_at.desc(), r.id).limit(limit)
    ).scalars()
    return [redemption_view(conn, member_id, i, now=now) for i in list(ids)]

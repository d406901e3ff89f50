"""Member profiles: what the bank tells the programme about a member's value and needs.

A profile holds assets under management and profit contribution (in fen),
the products the member holds, and a few descriptive fields. Each update
carries the date of the bank's data (``as_of``); an update older than the
stored one is refused, so a system sending stale data cannot overwrite newer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from loyalty.calendar import iso
from loyalty.db import is_postgres
from loyalty.errors import Conflict, MemberNotFound
from loyalty.ledger.models import journal_entries, member_accounts
from loyalty.members.service import credit_bonus
from loyalty.records.models import member_profiles, members
from loyalty.tiers.service import reassess
from rules import Programme, evaluate

#: The bank's product codes a member may hold.
PRODUCTS = ("deposit", "wealth", "fund", "credit_card", "loan", "insurance", "mortgage", "pension")
#: The channels a member may prefer.
CHANNELS = ("app", "mini_program", "online", "wechat", "branch", "phone")
#: The bank's investor risk profiles, from the most to the least cautious.
RISK_PROFILES = ("conservative", "cautious", "balanced", "growth", "aggressive")
#: The columns of ``member_profiles`` an update may set (besides ``as_of``).
PROFILE_FIELDS = (
    "aum",
    "profit_contribution",
    "products_held",
    "occupation",
    "region",
    "preferred_channel",
    "risk_profile",
)


class StaleProfile(Conflict):
    """An update whose ``as_of`` is older than the stored profile's."""

    code = "stale_profile"
    title = "Older than the stored profile"


@dataclass(frozen=True)
class ProfileUpdate:
    """A change to a member's profile, holding only the fields that were sent.

    ``changes`` maps a field of :data:`PROFILE_FIELDS`, or ``birth_date``, to
    its new value; ``None`` clears the field and a field not in ``changes`` is
    left as it is. ``products_held`` is a sorted tuple of product codes.
    ``as_of`` is the date of the data; ``None`` means today in the programme's
    time zone.
    """

    changes: Mapping[str, Any] = field(default_factory=dict)
    as_of: dt.date | None = None


def encode_products(products: Iterable[str] | None) -> str | None:
    """``("deposit", "wealth")`` -> ``",deposit,wealth,"``, sorted; ``()`` -> ``","``."""
    if products is None:
        return None
    return "," + "".join(f"{p}," for p in sorted(products))


def decode_products(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [p for p in text.split(",") if p]


def local_today(now: dt.datetime, zone: dt.tzinfo) -> dt.date:
    return now.astimezone(zone).date()


def profile_insert(conn: Connection) -> Any:
    """``INSERT INTO member_profiles`` in the connection's dialect, for an upsert."""
    dialect = postgresql if is_postgres(conn) else sqlite
    return dialect.insert(member_profiles)


def column_values(changes: Mapping[str, Any]) -> dict[str, Any]:
    """The ``member_profiles`` columns of ``changes``, as stored."""
    values = {name: changes[name] for name in PROFILE_FIELDS if name in changes}
    if "products_held" in values:
        values["products_held"] = encode_products(values["products_held"])
    return values


def put_profile(
    conn: Connection, member_id: str, cmd: ProfileUpdate, *, programme: Programme, now: dt.datetime
) -> dict[str, Any]:
    """Create or update the member's profile, and their birth date if sent.

    Refuses (:class:`StaleProfile`) an update whose ``as_of`` is older than
    the stored profile's. Then reassesses the member's tier, so a profile that
    qualifies them for a higher tier upgrades them at once. Returns the
    stored profile.
    """
    # Lock the member first, with the lock bookings and tier changes take, so none waits on another in a cycle.
    locked = conn.execute(
        sa.select(members.c.member_id)
        .join(member_accounts, member_accounts.c.member_id == members.c.member_id)
        .where(members.c.member_id == member_id)
        .with_for_update(of=[member_accounts, members], key_share=True)
    ).first()
    if locked is None:
        raise MemberNotFound(f"member {member_id!r} is not enrolled")
    as_of = cmd.as_of or local_today(now, programme.zone)
    values = column_values(cmd.changes)
    mp = member_profiles.c
    insert = profile_insert(conn).values(member_id=member_id, **values, as_of=as_of, updated_at=now)
    upsert = insert.on_conflict_do_update(
        index_elements=[mp.member_id],
        set_={name: insert.excluded[name] for name in [*values, "as_of", "updated_at"]},
        where=sa.or_(mp.as_of.is_(None), mp.as_of <= insert.excluded.as_of),
    ).returning(mp.member_id)
    if conn.execute(upsert).first() is None:
        stored = conn.execute(sa.select(mp.as_of).where(mp.member_id == member_id)).scalar_one()
        raise StaleProfile(
            f"as_of {as_of.isoformat()} is older than the stored profile's {stored.isoformat()}; "
            "send data at least as recent as what is stored",
            field="as_of",
        )
    if "birth_date" in cmd.changes:
        conn.execute(
            sa.update(members).where(members.c.member_id == member_id).values(birth_date=cmd.changes["birth_date"])
        )
    reassess(conn, member_id, programme=programme, now=now, source="event")
    profile = get_profile(conn, member_id)
    if all(profile[name] is not None for name in COMPLETE_WHEN):
        award_completion(conn, member_id, programme=programme, now=now)
    return profile


#: The fields the member provides; with all of them the profile is complete (the
#: bank's own figures, assets and products, come from its systems, not the member).
COMPLETE_WHEN = ("birth_date", "occupation", "region", "preferred_channel", "risk_profile")


def award_completion(conn: Connection, member_id: str, *, programme: Programme, now: dt.datetime) -> None:
    """Credit the programme's ``profile_completed`` awards, once per member ever."""
    je = journal_entries.c
    done = conn.execute(
        sa.select(je.id).where(je.member_id == member_id, je.kind == "bonus", je.source_ref == "profile_completed")
    ).first()
    if done is not None:
        return
    awards = evaluate(programme, "profile_completed", {"occurred_at": now})
    credit_bonus(conn, member_id, awards, source="profile_completed", programme=programme, now=now)


def get_profile(conn: Connection, member_id: str) -> dict[str, Any]:
    """The member's profile; every field is ``null`` until the bank has sent one."""
    mp, m = member_profiles.c, members.c
    row = conn.execute(
        sa.select(m.member_id, m.birth_date, *[mp[name] for name in PROFILE_FIELDS], mp.as_of, mp.updated_at)
        .select_from(members.outerjoin(member_profiles, mp.member_id == m.member_id))
        .where(m.member_id == member_id)
    ).first()
    if row is None:
        raise MemberNotFound(f"member {member_id!r} is not enrolled")
    return {
        "member_id": row.member_id,
        "as_of": row.as_of.isoformat() if row.as_of else None,
        "aum": row.aum,
        "profit_contribution": row.profit_contribution,
        "products_held": decode_products(row.products_held),
        "birth_date": row.birth_date.isoformat() if row.birth_date else None,
        "occupation": row.occupation,
        "region": row.region,
        "preferred_channel": row.preferred_channel,
        "risk_profile": row.risk_profile,
        "updated_at": iso(row.updated_at),
    }

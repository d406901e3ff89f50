"""Tiers and lifecycle stages: decided from the member's metrics, recorded, emitted.

- Upgrades take effect at once: after each transaction and profile update
  (:func:`reassess`, :func:`after_transaction`) and for whole imports
  (:func:`reassess_members`, set-based).
- Downgrades happen only at the quarterly review (:mod:`loyalty.tiers.jobs`),
  by at most one step. Tiers use qualifying points *earned*, never the
  balance, so spending points cannot lower a tier.
- An override pins the tier until it ends: neither events nor the review
  move it. Once it has ended the member is treated like anyone else.
- Every change is a row in ``tier_changes`` / ``lifecycle_changes`` and an
  event in the outbox, in the same transaction.

Single members are decided in Python (:meth:`rules.tiers.Ladder.qualify`);
many members at once in SQL (:mod:`loyalty.tiers.sql`). Both read the same
metrics from :func:`loyalty.tiers.sql.metrics_query`.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty import audit, calendar
from loyalty.calendar import iso
from loyalty.db import UTCDateTime, is_postgres
from loyalty.db import scratch as scratch_table
from loyalty.errors import MemberNotFound, ValidationError
from loyalty.events.models import events
from loyalty.events.service import emit, json_object
from loyalty.ledger.models import member_accounts
from loyalty.records.models import members
from loyalty.tiers import sql as tsql
from loyalty.tiers.models import lifecycle_changes, tier_changes
from rules import Programme
from rules.tiers import Ladder, stage

#: How the set-based writer decides: ``event`` only upgrades, ``review`` also steps down.
MODES = ("event", "review")


@dataclass(frozen=True)
class MemberState:
    """The tier and lifecycle columns of a member's row."""

    tier: str
    override_tier: str | None
    override_until: dt.datetime | None
    first_transaction_at: dt.datetime | None
    last_transaction_at: dt.datetime | None
    lifecycle_stage: str

    def pinned(self, now: dt.datetime) -> bool:
        """Whether an override holds the tier at ``now``."""
        return self.override_tier is not None and self.override_until is not None and self.override_until > now


STATE_COLUMNS = (
    members.c.tier,
    members.c.override_tier,
    members.c.override_until,
    members.c.first_transaction_at,
    members.c.last_transaction_at,
    members.c.lifecycle_stage,
)


def state_of(row: Any) -> MemberState:
    return MemberState(**{c.name: getattr(row, c.name) for c in STATE_COLUMNS})


def new_change_id() -> str:
    return str(uuid.uuid4())


# ---- one member -----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _one_member(ladder: Ladder) -> sa.Select[Any]:
    """Built once per ladder with bound parameters, so it keeps its cache key and runs on
    every booking without being rebuilt or recompiled."""
    return tsql.one_member_query(ladder)


def metrics(conn: Connection, member_id: str, *, programme: Programme, now: dt.datetime) -> dict[str, Any]:
    """The member's tier metrics at ``now``, as :meth:`rules.tiers.Ladder.qualify` takes them."""
    window = tsql.Window.at(programme.ladder, now, programme.zone)
    params = {
        "member_id": member_id,
        "as_of": window.as_of,
        "qualifying_since": window.qualifying_since,
        "activity_since": window.activity_since,
    }
    row = conn.execute(_one_member(programme.ladder), params).first()
    if row is None:
        raise MemberNotFound(f"member {member_id!r} is not enrolled")
    return metrics_dict(row, window.local_day)


@dataclass(frozen=True)
class TierInputs:
    """A member's tier metrics as read together with a booking (:func:`loyalty.tiers.sql.tier_parts`),
    before it: :meth:`after` adds the booking's own share, so the tier is decided without reading
    the member's history a second time."""

    window: tsql.Window
    aum: int
    profit_contribution: int
    qualifying_points: int
    recent: int
    digital: int
    products: str
    birth_date: dt.date | None

    @classmethod
    def of(cls, row: Any, window: tsql.Window) -> TierInputs:
        return cls(
            window,
            int(row.aum),
            int(row.profit_contribution),
            int(row.earned) - int(row.refunded),
            int(row.recent),
            int(row.digital),
            row.products_held or "",
            row.birth_date,
        )

    def after(
        self, ladder: Ladder, *, occurred_at: dt.datetime, channel: str | None, qualifying: int
    ) -> dict[str, Any]:
        """The metrics once a transaction at ``occurred_at`` through ``channel`` that earned ``qualifying``
        qualifying points is booked: what :func:`metrics` would read then, as its windows count it."""
        w = self.window
        earned = qualifying if w.qualifying_since < occurred_at <= w.as_of else 0
        recent = w.activity_since < occurred_at <= w.as_of
        n = self.recent + recent
        digital = self.digital + (recent and channel in ladder.digital_channels)
        return {
            "aum": self.aum,
            "profit_contribution": self.profit_contribution,
            "qualifying_points": self.qualifying_points + earned,
            "transactions_90d": n,
            "digital_share": None if n == 0 else digital * 100 // n,
            "products_held": [p for p in self.products.split(",") if p],
            "product_count": 0 if self.products == "" else self.products.count(",") - 1,
            "age": calendar.age_on(self.birth_date, w.local_day),
        }


def metrics_dict(row: Any, day: dt.date) -> dict[str, Any]:
    share = row.digital_share
    return {
        "aum": int(row.aum),
        "profit_contribution": int(row.profit_contribution),
        "qualifying_points": int(row.qualifying_points),
        "transactions_90d": int(row.transactions_90d),
        "digital_share": None if share is None else int(share),
        "products_held": [p for p in row.products_held.split(",") if p],
        "product_count": int(row.product_count),
        "age": calendar.age_on(row.birth_date, day),
    }


def _record_tier_change(
    conn: Connection,
    member_id: str,
    *,
    old: str | None,
    new: str,
    source: str,
    reason: str,
    programme: Programme,
    now: dt.datetime,
) -> dict[str, Any]:
    change = {"from": old, "to": new, "source": source, "reason": reason}
    conn.execute(
        tier_changes.insert().values(
            member_id=member_id,
            id=new_change_id(),
            from_tier=old,
            to_tier=new,
            source=source,
            reason=reason[:500],
            programme_version=programme.version,
            changed_at=now,
        )
    )
    emit(conn, "tier.changed", member_id=member_id, payload=change, now=now)
    return change


def _record_stage_change(
    conn: Connection, member_id: str, *, old: str | None, new: str, source: str, now: dt.datetime
) -> None:
    conn.execute(
        lifecycle_changes.insert().values(
            member_id=member_id, id=new_change_id(), from_stage=old, to_stage=new, source=source, changed_at=now
        )
    )
    emit(conn, "lifecycle.changed", member_id=member_id, payload={"from": old, "to": new, "source": source}, now=now)


def on_enrolment(conn: Connection, member_id: str, *, programme: Programme, now: dt.datetime) -> None:
    """A new member starts in the floor tier, in the acquisition stage."""
    floor = programme.ladder.floor
    conn.execute(
        members.update()
        .where(members.c.member_id == member_id)
        .values(tier=floor, tier_since=now, lifecycle_stage="acquisition", lifecycle_since=now)
    )
    _record_tier_change(
        conn, member_id, old=None, new=floor, source="enrolment", reason="enrolled", programme=programme, now=now
    )
    _record_stage_change(conn, member_id, old=None, new="acquisition", source="event", now=now)


def _upgrade(
    conn: Connection,
    member_id: str,
    state: MemberState,
    *,
    programme: Programme,
    now: dt.datetime,
    known: dict[str, Any] | None = None,
) -> tuple[str, str] | None:
    """The tier the member should move up to now, with the criterion met; ``None`` if none.
    ``known``: the member's metrics at ``now``, when the caller has them."""
    ladder = programme.ladder
    if state.pinned(now) or ladder.rank(state.tier) >= len(ladder.tiers) - 1 and state.tier in ladder.codes:
        return None
    qualified, reason = ladder.qualify(known or metrics(conn, member_id, programme=programme, now=now))
    if ladder.rank(qualified) > ladder.rank(state.tier) or state.tier not in ladder.codes:
        return (qualified, reason) if qualified != state.tier else None
    return None


def reassess(
    conn: Connection, member_id: str, *, programme: Programme, now: dt.datetime, source: str = "event"
) -> dict[str, Any] | None:
    """Upgrade one member at once if their metrics now qualify them for a higher tier.

    Call it in the transaction of the change (a profile update); it locks the
    member's account row. Returns the change, or ``None``."""
    row = conn.execute(
        sa.select(*STATE_COLUMNS)
        .select_from(members.join(member_accounts, member_accounts.c.member_id == members.c.member_id))
        .where(members.c.member_id == member_id)
        .with_for_update(of=[member_accounts, members], key_share=True)
    ).first()
    if row is None:
        raise MemberNotFound(f"member {member_id!r} is not enrolled")
    state = state_of(row)
    decision = _upgrade(conn, member_id, state, programme=programme, now=now)
    if decision is None:
        return None
    tier, reason = decision
    conn.execute(members.update().where(members.c.member_id == member_id).values(tier=tier, tier_since=now))
    change = _record_tier_change(
        conn, member_id, old=state.tier, new=tier, source=source, reason=reason, programme=programme, now=now
    )
    _restage_one(conn, member_id, state, tier=tier, programme=programme, now=now)
    return change


def after_transaction(
    conn: Connection,
    member_id: str,
    state: MemberState,
    *,
    occurred_at: dt.datetime,
    programme: Programme,
    now: dt.datetime,
    known: dict[str, Any] | None = None,
) -> None:
    """Bring the member's tier and stage up to date after a transaction, under its row lock.

    ``state`` is the member's row as read before the transaction was booked; ``known`` the
    member's tier metrics after it (:meth:`TierInputs.after`), if the caller has them."""
    first = state.first_transaction_at
    last = state.last_transaction_at
    first = occurred_at if first is None or occurred_at < first else first
    last = occurred_at if last is None or occurred_at > last else last
    values: dict[str, Any] = {}
    if first != state.first_transaction_at:
        values["first_transaction_at"] = first
    if last != state.last_transaction_at:
        values["last_transaction_at"] = last
    tier = state.tier
    decision = _upgrade(conn, member_id, state, programme=programme, now=now, known=known)
    if decision is not None:
        tier, reason = decision
        values.update(tier=tier, tier_since=now)
        _record_tier_change(
            conn, member_id, old=state.tier, new=tier, source="event", reason=reason, programme=programme, now=now
        )
    new_stage = stage(
        programme.lifecycle,
        first_transaction_at=first,
        last_transaction_at=last,
        tier=tier,
        bounds=tsql.stage_bounds(programme.lifecycle, now, programme.zone),
    )
    if new_stage != state.lifecycle_stage:
        values.update(lifecycle_stage=new_stage, lifecycle_since=now)
        _record_stage_change(conn, member_id, old=state.lifecycle_stage, new=new_stage, source="event", now=now)
    if values:
        conn.execute(members.update().where(members.c.member_id == member_id).values(**values))


def _restage_one(
    conn: Connection, member_id: str, state: MemberState, *, tier: str, programme: Programme, now: dt.datetime
) -> None:
    """Move the member's stage if a tier change moved it (maturity depends on the tier)."""
    new_stage = stage(
        programme.lifecycle,
        first_transaction_at=state.first_transaction_at,
        last_transaction_at=state.last_transaction_at,
        tier=tier,
        bounds=tsql.stage_bounds(programme.lifecycle, now, programme.zone),
    )
    if new_stage != state.lifecycle_stage:
        conn.execute(
            members.update()
            .where(members.c.member_id == member_id)
            .values(lifecycle_stage=new_stage, lifecycle_since=now)
        )
        _record_stage_change(conn, member_id, old=state.lifecycle_stage, new=new_stage, source="event", now=now)


# ---- overrides --------------------------------------------------------------------------------------------------


def set_override(
    conn: Connection,
    member_id: str,
    *,
    tier: str,
    until: dt.datetime,
    reason: str,
    actor: str,
    programme: Programme,
    now: dt.datetime,
) -> dict[str, Any]:
    """Pin the member's tier to ``tier`` until ``until``, with a reason; audited."""
    if tier not in programme.ladder.codes:
        raise ValidationError.one("tier", f"must be one of {', '.join(programme.ladder.codes)}")
    if until <= now:
        raise ValidationError.one("until", "must be in the future")
    row = conn.execute(
        sa.select(*STATE_COLUMNS, members.c.override_reason)
        .select_from(members.join(member_accounts, member_accounts.c.member_id == members.c.member_id))
        .where(members.c.member_id == member_id)
        .with_for_update(of=[member_accounts, members], key_share=True)
    ).first()
    if row is None:
        raise MemberNotFound(f"member {member_id!r} is not enrolled")
    state = state_of(row)
    values: dict[str, Any] = {"override_tier": tier, "override_until": until, "override_reason": reason}
    if tier != state.tier:
        values.update(tier=tier, tier_since=now)
    conn.execute(members.update().where(members.c.member_id == member_id).values(**values))
    if tier != state.tier:
        _record_tier_change(
            conn,
            member_id,
            old=state.tier,
            new=tier,
            source="override",
            reason=f"override by {actor} until {until.date().isoformat()}: {reason}",
            programme=programme,
            now=now,
        )
        _restage_one(conn, member_id, state, tier=tier, programme=programme, now=now)
    override = {"tier": tier, "until": iso(until), "reason": reason}
    audit.record(
        conn,
        actor=actor,
        action="tier.override",
        object_type="member",
        object_id=member_id,
        before={"tier": state.tier, "override_tier": state.override_tier, "override_until": iso(state.override_until)},
        after=override,
        now=now,
    )
    return override


def end_override(conn: Connection, member_id: str, *, actor: str, now: dt.datetime) -> None:
    """End an override now; the tier stays until an event or the next review moves it. Audited."""
    row = conn.execute(
        sa.select(members.c.override_tier, members.c.override_until).where(members.c.member_id == member_id)
    ).first()
    if row is None:
        raise MemberNotFound(f"member {member_id!r} is not enrolled")
    conn.execute(
        members.update()
        .where(members.c.member_id == member_id)
        .values(override_tier=None, override_until=None, override_reason=None)
    )
    audit.record(
        conn,
        actor=actor,
        action="tier.override_ended",
        object_type="member",
        object_id=member_id,
        before={"override_tier": row.override_tier, "override_until": iso(row.override_until)},
        after=None,
        now=now,
    )


# ---- views ------------------------------------------------------------------------------------------------------


def tier_view(conn: Connection, member_id: str, *, programme: Programme, now: dt.datetime) -> dict[str, Any]:
    """The member's tier (since when, any override, what they need for the next one) and lifecycle stage."""
    m = members.c
    row = conn.execute(
        sa.select(
            m.tier,
            m.tier_since,
            m.override_tier,
            m.override_until,
            m.override_reason,
            m.lifecycle_stage,
            m.lifecycle_since,
        ).where(m.member_id == member_id)
    ).first()
    if row is None:
        raise MemberNotFound(f"member {member_id!r} is not enrolled")
    figures = metrics(conn, member_id, programme=programme, now=now)
    pinned = row.override_tier is not None and row.override_until is not None and row.override_until > now
    return {
        "tier": {
            "code": row.tier,
            "since": iso(row.tier_since),
            "override": (
                {"tier": row.override_tier, "until": iso(row.override_until), "reason": row.override_reason}
                if pinned
                else None
            ),
            "progress": programme.ladder.progress(row.tier, figures),
            "metrics": figures,
        },
        "lifecycle": {"stage": row.lifecycle_stage, "since": iso(row.lifecycle_since)},
    }


def history(conn: Connection, member_id: str, *, limit: int) -> dict[str, Any]:
    """The member's tier and lifecycle changes, newest first."""
    if conn.execute(sa.select(members.c.member_id).where(members.c.member_id == member_id)).first() is None:
        raise MemberNotFound(f"member {member_id!r} is not enrolled")
    tc, lc = tier_changes.c, lifecycle_changes.c
    tiers = conn.execute(
        sa.select(tier_changes).where(tc.member_id == member_id).order_by(tc.changed_at.desc(), tc.id).limit(limit)
    )
    stages = conn.execute(
        sa.select(lifecycle_changes).where(lc.member_id == member_id).order_by(lc.changed_at.desc(), lc.id).limit(limit)
    )
    return {
        "member_id": member_id,
        "tiers": [
            {
                "from": r.from_tier,
                "to": r.to_tier,
                "source": r.source,
                "reason": r.reason,
                "programme_version": r.programme_version,
                "changed_at": iso(r.changed_at),
            }
            for r in tiers
        ],
        "lifecycle": [
            {"from": r.from_stage, "to": r.to_stage, "source": r.source, "changed_at": iso(r.changed_at)}
            for r in stages
        ],
    }


# ---- many members at once ---------------------------------------------------------------------------------------


def _uuid_sql(conn: Connection) -> sa.ColumnElement[str]:
    if is_postgres(conn):
        return sa.cast(sa.func.gen_random_uuid(), sa.String)
    return sa.func.lower(sa.func.hex(sa.func.randomblob(16)))


def apply_tiers(
    conn: Connection,
    members_filter: Any,
    *,
    mode: str,
    programme: Programme,
    as_of: dt.datetime,
    now: dt.datetime,
    key_range: tsql.KeyRange | None = None,
) -> int:
    """Decide the tier of every member matching ``members_filter`` in SQL and write the changes
    (members, history, events). ``mode`` ``event`` only upgrades; ``review`` also moves members
    who no longer qualify down one step and clears ended overrides. Returns how many changed.

    ``key_range``: a range of member ids every member ``members_filter`` selects lies in
    (a job's chunk), so the metrics read only that range (:func:`loyalty.tiers.sql.metrics_query`)."""
    assert mode in MODES
    ladder = programme.ladder
    window = tsql.Window.at(ladder, as_of, programme.zone)
    m = members.c
    pinned = sa.and_(m.override_tier.is_not(None), m.override_until > as_of)
    if mode == "review":
        conn.execute(
            members.update()
            .where(members_filter, m.override_tier.is_not(None), m.override_until <= as_of)
            .values(override_tier=None, override_until=None, override_reason=None)
        )
    row = tsql.metrics_query(ladder, window, sa.and_(members_filter, sa.not_(pinned)), key_range).c
    qualified, reason = tsql.qualification(ladder, row, window)
    current = tsql.rank_of(ladder, row.tier)
    known = row.tier.in_(ladder.codes)
    if mode == "event":
        new_rank = sa.case((sa.or_(qualified > current, sa.not_(known)), qualified), else_=current)
        why = reason
    else:
        new_rank = sa.case(
            (sa.or_(qualified >= current, sa.not_(known)), qualified),
            else_=current - 1,
        )
        why = sa.case(
            (sa.or_(qualified >= current, sa.not_(known)), reason),
            else_=sa.literal("quarterly review: no longer meets the criteria of ", sa.String) + row.tier,
        )
    decisions = sa.select(row.member_id, row.tier, tsql.code_of(ladder, new_rank).label("to_tier"), why.label("why"))
    decided = decisions.subquery("decided")
    scratch = scratch_table(
        conn,
        "tier_decisions",
        sa.Column("member_id", sa.String(64), primary_key=True),
        sa.Column("from_tier", sa.String(64)),
        sa.Column("to_tier", sa.String(64)),
        sa.Column("reason", sa.String(500)),
    )
    conn.execute(
        scratch.insert().from_select(
            ["member_id", "from_tier", "to_tier", "reason"],
            sa.select(
                decided.c.member_id, decided.c.tier, decided.c.to_tier, sa.func.substr(decided.c.why, 1, 500)
            ).where(decided.c.to_tier != decided.c.tier),
        )
    )
    changed = conn.execute(sa.select(sa.func.count()).select_from(scratch)).scalar_one()
    if not changed:
        return 0
    s = scratch.c
    source = "event" if mode == "event" else "review"
    stamp = sa.literal(now, UTCDateTime)
    # Only where the tier is still the one decided from: a booking that moved the
    # member meanwhile wins, and the decision is dropped with its history and event.
    conn.execute(
        members.update()
        .where(m.member_id == s.member_id, m.tier == s.from_tier)
        .values(tier=s.to_tier, tier_since=stamp)
    )
    applied = sa.exists().where(m.member_id == s.member_id, m.tier == s.to_tier, m.tier_since == stamp)
    changed = changed - conn.execute(scratch.delete().where(sa.not_(applied))).rowcount
    conn.execute(
        tier_changes.insert().from_select(
            ["member_id", "id", "from_tier", "to_tier", "source", "reason", "programme_version", "changed_at"],
            sa.select(
                s.member_id,
                _uuid_sql(conn),
                s.from_tier,
                s.to_tier,
                sa.literal(source),
                s.reason,
                sa.literal(programme.version),
                stamp,
            ),
        )
    )
    payload = json_object(conn, "from", s.from_tier, "to", s.to_tier, "source", source, "reason", s.reason)
    conn.execute(
        events.insert().from_select(
            ["type", "member_id", "payload", "occurred_at"],
            sa.select(sa.literal("tier.changed"), s.member_id, payload, stamp),
        )
    )
    return int(changed)


def reassess_members(conn: Connection, member_ids: Sequence[str], *, programme: Programme, now: dt.datetime) -> int:
    """Upgrade at once every listed member whose metrics now qualify them (bulk imports).
    Returns how many changed tier."""
    if not member_ids:
        return 0
    return apply_tiers(
        conn, members.c.member_id.in_(list(member_ids)), mode="event", programme=programme, as_of=now, now=now
    )


def apply_stages(
    conn: Connection, members_filter: Any, *, programme: Programme, as_of: dt.datetime, now: dt.datetime, source: str
) -> int:
    """Recompute the lifecycle stage of every member matching ``members_filter`` in SQL and write
    the changes (members, history, events). Returns how many changed."""
    lc = programme.lifecycle
    b = tsql.stage_bounds(lc, as_of, programme.zone)
    m = members.c
    computed = sa.case(
        (sa.or_(m.first_transaction_at.is_(None), m.last_transaction_at.is_(None)), "acquisition"),
        (m.last_transaction_at <= b.churn_before, "win_back"),
        (m.last_transaction_at <= b.decline_before, "decline"),
        (m.first_transaction_at > b.activation_since, "activation"),
        (sa.and_(m.first_transaction_at <= b.maturity_before, m.tier.in_(lc.maturity_tiers)), "maturity"),
        else_="growth",
    )
    scratch = scratch_table(
        conn,
        "stage_decisions",
        sa.Column("member_id", sa.String(64), primary_key=True),
        sa.Column("from_stage", sa.String(16)),
        sa.Column("to_stage", sa.String(16)),
    )
    decided = sa.select(m.member_id, m.lifecycle_stage, computed.label("to_stage")).where(members_filter).subquery()
    conn.execute(
        scratch.insert().from_select(
            ["member_id", "from_stage", "to_stage"],
            sa.select(decided.c.member_id, decided.c.lifecycle_stage, decided.c.to_stage).where(
                decided.c.to_stage != decided.c.lifecycle_stage
            ),
        )
    )
    changed = conn.execute(sa.select(sa.func.count()).select_from(scratch)).scalar_one()
    if not changed:
        return 0
    s = scratch.c
    stamp = sa.literal(now, UTCDateTime)
    conn.execute(
        members.update()
        .where(m.member_id == s.member_id, m.lifecycle_stage == s.from_stage)
        .values(lifecycle_stage=s.to_stage, lifecycle_since=stamp)
    )
    applied = sa.exists().where(m.member_id == s.member_id, m.lifecycle_stage == s.to_stage, m.lifecycle_since == stamp)
    changed = changed - conn.execute(scratch.delete().where(sa.not_(applied))).rowcount
    conn.execute(
        lifecycle_changes.insert().from_select(
            ["member_id", "id", "from_stage", "to_stage", "source", "changed_at"],
            sa.select(s.member_id, _uuid_sql(conn), s.from_stage, s.to_stage, sa.literal(source), stamp),
        )
    )
    payload = json_object(conn, "from", s.from_stage, "to", s.to_stage, "source", source)
    conn.execute(
        events.insert().from_select(
            ["type", "member_id", "payload", "occurred_at"],
            sa.select(sa.literal("lifecycle.changed"), s.member_id, payload, stamp),
        )
    )
    return int(changed)

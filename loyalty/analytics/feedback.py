"""Member feedback: a score of 0 to 10, optionally about a benefit or one of the member's
redemptions, with a short comment; idempotent on ``feedback_id``."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty.analytics import metrics
from loyalty.analytics.models import ALL, feedback
from loyalty.analytics.periods import Span
from loyalty.analytics.report import NPS_MINIMUM_ANSWERS, nps
from loyalty.calendar import iso
from loyalty.catalogue.models import benefits
from loyalty.errors import UnknownMember, ValidationError
from loyalty.idempotency import Result, claim_key, request_hash
from loyalty.records.models import members
from loyalty.redemption.models import redemptions

#: The idempotency scope of feedback ids.
SCOPE = "feedback"
MAX_COMMENT = 500
#: Most answers one listing returns.
MAX_LISTED = 500


@dataclass(frozen=True)
class FeedbackCommand:
    feedback_id: str
    member_id: str
    score: int
    answered_at: dt.datetime
    benefit_code: str | None = None
    redemption_id: str | None = None
    comment: str | None = None


def view(row: Any) -> dict[str, Any]:
    return {
        "feedback_id": row.feedback_id,
        "member_id": row.member_id,
        "score": int(row.score),
        "benefit_code": row.benefit_code,
        "redemption_id": row.redemption_id,
        "comment": row.comment,
        "answered_at": iso(row.answered_at),
        "received_at": iso(row.received_at),
    }


def _one(conn: Connection, member_id: str, feedback_id: str) -> dict[str, Any]:
    fb = feedback.c
    return view(conn.execute(sa.select(feedback).where(fb.member_id == member_id, fb.feedback_id == feedback_id)).one())


def record(conn: Connection, cmd: FeedbackCommand, *, now: dt.datetime) -> Result:
    """Store an answer; the same ``feedback_id`` with the same body replays, with another is a 409."""
    if cmd.answered_at > now:
        raise ValidationError.one("answered_at", "must not be in the future")
    if conn.execute(sa.select(members.c.member_id).where(members.c.member_id == cmd.member_id)).first() is None:
        raise UnknownMember(f"member {cmd.member_id!r} is not enrolled", field="member_id")
    payload = asdict(cmd)
    payload["answered_at"] = iso(cmd.answered_at)
    existing = claim_key(
        conn, SCOPE, cmd.feedback_id, request_hash(payload), field="feedback_id", member_id=cmd.member_id, now=now
    )
    if existing is not None:
        return Result(_one(conn, existing.member_id, cmd.feedback_id), replayed=True)
    code = cmd.benefit_code
    if code is not None and conn.execute(sa.select(benefits.c.code).where(benefits.c.code == code)).first() is None:
        raise ValidationError.one("benefit_code", f"no benefit {code!r}")
    if cmd.redemption_id is not None:
        r = redemptions.c
        found = conn.execute(
            sa.select(r.benefit_code).where(r.member_id == cmd.member_id, r.id == cmd.redemption_id)
        ).first()
        if found is None:
            raise ValidationError.one("redemption_id", f"the member has no redemption {cmd.redemption_id!r}")
        if code is not None and found.benefit_code != code:
            raise ValidationError.one("benefit_code", f"redemption {cmd.redemption_id!r} was of {found.benefit_code!r}")
        code = found.benefit_code
    conn.execute(
        feedback.insert().values(
            member_id=cmd.member_id,
            feedback_id=cmd.feedback_id,
            score=cmd.score,
            benefit_code=code,
            redemption_id=cmd.redemption_id,
            comment=cmd.comment,
            answered_at=cmd.answered_at,
            received_at=now,
        )
    )
    return Result(_one(conn, cmd.member_id, cmd.feedback_id), created=True)


def listing(
    conn: Connection,
    span: Span,
    *,
    tier: str = ALL,
    benefit_code: str | None = None,
    limit: int = 100,
    minimum_answers: int = NPS_MINIMUM_ANSWERS,
) -> dict[str, Any]:
    """The answers given in ``span`` (oldest first, up to ``limit``), of members in ``tier`` when they
    answered (``*``: any), about ``benefit_code`` when given; with their count and NPS."""
    fb = feedback.c
    tier_then = metrics.tier_at(fb.member_id, fb.answered_at)
    rows = sa.select(feedback, tier_then.label("tier")).where(metrics.in_span(fb.answered_at, span))
    if benefit_code is not None:
        rows = rows.where(fb.benefit_code == benefit_code)
    chosen = rows.subquery("chosen")
    picked = sa.select(chosen).where(chosen.c.tier == tier).subquery("picked") if tier != ALL else chosen
    p = picked.c
    totals = conn.execute(
        sa.select(
            sa.func.count().label("answers"),
            sa.func.sum(sa.case((p.score >= metrics.PROMOTER, 1), else_=0)).label("promoters"),
            sa.func.sum(sa.case((p.score <= metrics.DETRACTOR, 1), else_=0)).label("detractors"),
        )
    ).one()
    counts = {k: int(getattr(totals, k) or 0) for k in ("answers", "promoters", "detractors")}
    listed = conn.execute(sa.select(picked).order_by(p.answered_at, p.member_id, p.feedback_id).limit(limit))
    return {
        "period": span.label,
        "tier": tier,
        "benefit_code": benefit_code,
        "nps": nps(counts, minimum_answers),
        "feedback": [{**view(r), "tier": r.tier} for r in listed],
        "truncated": counts["answers"] > limit,
    }

"""Benefit-usage analytics, member feedback and tuning advice (``docs/analytics.md``)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from flask import Response
from marshmallow import fields, post_load, validate
from sqlalchemy.engine import Connection

from loyalty.analytics import advice, export, feedback, periods, service
from loyalty.analytics.feedback import MAX_COMMENT, FeedbackCommand
from loyalty.analytics.jobs import programme_at
from loyalty.analytics.models import ALL, DECISIONS
from loyalty.analytics.report import NPS_MINIMUM_ANSWERS
from loyalty.api.base import bp, execute, int_arg, json_body, json_response, query_arg, requires, runtime
from loyalty.api.finance import report_response
from loyalty.api.programmes import actor
from loyalty.db import transaction
from loyalty.errors import ValidationError
from loyalty.idempotency import Result
from loyalty.members.schemas import no_identifying_numbers
from loyalty.validation import ID, Base, StrictInteger, StrictString, load

#: A tier or benefit code named in a query, or ``*`` for all.
CODE = re.compile(r"^(\*|[A-Za-z0-9._:\-]{1,64})$")


def period_arg(name: str, *, required: bool = True) -> str | None:
    raw = query_arg(name)
    if raw is None:
        if required:
            raise ValidationError.one(
                name, "is required: a day YYYY-MM-DD, week YYYY-Www, month YYYY-MM, quarter YYYY-Qn or year YYYY"
            )
        return None
    if not re.fullmatch(periods.LABEL_PATTERN, raw):
        raise ValidationError.one(
            name, "must be a day YYYY-MM-DD, week YYYY-Www, month YYYY-MM, quarter YYYY-Qn or year YYYY"
        )
    return raw


def code_arg(name: str) -> str | None:
    raw = query_arg(name)
    if raw is not None and not CODE.fullmatch(raw):
        raise ValidationError.one(name, "must be * or a code of 1-64 letters, digits and . _ : -")
    return raw


@bp.get("/analytics/report")
@requires("read")
def get_analytics_report() -> Response:
    """Every figure of each period from ``period`` to ``to``, per tier and benefit."""
    period = period_arg("period")
    assert period is not None
    to = period_arg("to", required=False)
    tier, benefit = code_arg("tier"), code_arg("benefit_code")
    minimum = int_arg("minimum_answers", NPS_MINIMUM_ANSWERS, 1, 100_000)
    rt = runtime()
    report = service.report(rt, period, to, tier=tier, benefit=benefit, minimum_answers=minimum)
    return report_response(report, export.report_table, f"analytics-{period}" + (f"-{to}" if to else ""))


@bp.get("/analytics/explain")
@requires("read")
def get_analytics_explain() -> Response:
    """The ids a figure counts: members, redemptions, refusals, answers or entries."""
    period = period_arg("period")
    assert period is not None
    metric = query_arg("metric")
    if metric is None or metric not in service.EXPLAINED:
        raise ValidationError.one("metric", f"must be one of {', '.join(service.EXPLAINED)}")
    rt = runtime()
    result = service.explain(
        rt,
        period,
        metric,
        tier=code_arg("tier") or ALL,
        benefit=code_arg("benefit_code") or ALL,
        limit=int_arg("limit", service.MAX_IDS, 1, service.MAX_IDS),
    )
    return json_response(result)


class FeedbackSchema(Base):
    feedback_id = StrictString(required=True, validate=ID)
    member_id = StrictString(required=True, validate=ID)
    score = StrictInteger(required=True, validate=validate.Range(min=0, max=10))
    benefit_code = StrictString(load_default=None, allow_none=True, validate=ID)
    redemption_id = StrictString(load_default=None, allow_none=True, validate=ID)
    comment = StrictString(
        load_default=None,
        allow_none=True,
        validate=validate.And(
            validate.Length(min=1, max=MAX_COMMENT),
            validate.Regexp(r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$", error="must not contain control characters"),
            no_identifying_numbers,
        ),
    )
    answered_at = fields.AwareDateTime(required=True)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> FeedbackCommand:
        data["answered_at"] = data["answered_at"].astimezone(dt.UTC)
        return FeedbackCommand(**data)


FEEDBACK_SCHEMA = FeedbackSchema()


@bp.post("/feedback")
@requires("accrue", "feedback")
def post_feedback() -> Response:
    body = json_body()
    cmd: FeedbackCommand = load(FEEDBACK_SCHEMA, body)
    return execute(lambda conn, now: feedback.record(conn, cmd, now=now), body)


@bp.get("/feedback")
@requires("read")
def get_feedback() -> Response:
    period = period_arg("period")
    assert period is not None
    rt = runtime()
    span = periods.parse(period, programme_at(rt, rt.now()).zone)
    with transaction(rt.engine, readonly=True) as conn:
        result = feedback.listing(
            conn,
            span,
            tier=code_arg("tier") or ALL,
            benefit_code=code_arg("benefit_code"),
            limit=int_arg("limit", 100, 1, feedback.MAX_LISTED),
            minimum_answers=int_arg("minimum_answers", NPS_MINIMUM_ANSWERS, 1, 100_000),
        )
    return json_response(result)


@bp.get("/analytics/advice")
@requires("read")
def get_advice() -> Response:
    period = period_arg("period")
    assert period is not None
    return json_response(advice.advice(runtime(), period))


class DecisionSchema(Base):
    decision = StrictString(required=True, validate=validate.OneOf(DECISIONS))
    note = StrictString(required=True, validate=validate.Length(min=1, max=1000))


@bp.post("/analytics/advice/<finding_id>/decision")
@requires("admin")
def post_advice_decision(finding_id: str) -> Response:
    body = json_body()
    data = load(DecisionSchema(), body)
    name = actor()

    def operation(conn: Connection, now: dt.datetime) -> Result:
        return Result(advice.decide(conn, finding_id, data["decision"], data["note"], actor=name, now=now))

    return execute(operation, body)

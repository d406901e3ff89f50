"""Earning programmes: versions, publication, simulation, backtests, the rule catalogue."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Response, g
from marshmallow import fields, validate
from sqlalchemy.engine import Connection

from loyalty import audit
from loyalty.accrual import backtest, simulate
from loyalty.api.base import bp, execute, int_arg, json_body, json_response, query_arg, requires, runtime
from loyalty.db import transaction
from loyalty.errors import ValidationError
from loyalty.idempotency import Result
from loyalty.programmes import service
from loyalty.validation import Base, StrictInteger, StrictString, load
from rules import export_catalogue


def actor() -> str:
    return f"{g.api_key.name} ({g.api_key.id})"


def _document(body: Any) -> Any:
    if not isinstance(body, dict):
        raise ValidationError.one("body", 'must be a JSON object: send the programme as {"document": {...}}')
    unknown = sorted(set(body) - {"document"})
    if unknown:
        raise ValidationError({name: ['unknown field; the body is {"document": {...}}'] for name in unknown})
    if "document" not in body:
        raise ValidationError.one("document", 'send the programme as {"document": {...}}')
    return body["document"]


@bp.get("/rules/catalogue")
@requires("read")
def catalogue() -> Response:
    return json_response(export_catalogue())


@bp.post("/rules/validate")
@requires("admin")
def validate_document() -> Response:
    programme = service.parse(_document(json_body()))
    return json_response({"valid": True, "version": programme.version, "rules": len(programme.rules)})


@bp.get("/programmes")
@requires("admin")
def list_programmes() -> Response:
    rt = runtime()
    with transaction(rt.engine, readonly=True) as conn:
        return json_response({"versions": service.list_versions(conn)})


@bp.post("/programmes")
@requires("admin")
def create_programme() -> Response:
    body = json_body()
    document = _document(body)

    def operation(conn: Connection, now: dt.datetime) -> Result:
        return Result(service.create_draft(conn, document, actor=actor(), now=now), created=True)

    return execute(operation, body)


@bp.get("/programmes/<version>")
@requires("admin")
def get_programme(version: str) -> Response:
    rt = runtime()
    with transaction(rt.engine, readonly=True) as conn:
        return json_response(service.version_view(conn, version))


@bp.put("/programmes/<version>")
@requires("admin")
def replace_programme(version: str) -> Response:
    document = _document(json_body())
    rt = runtime()
    with transaction(rt.engine) as conn:
        view = service.replace_draft(conn, version, document, actor=actor(), now=rt.now())
    return json_response(view)


class PublishSchema(Base):
    effective_from = fields.AwareDateTime(load_default=None, allow_none=True)


@bp.post("/programmes/<version>/publish")
@requires("admin")
def publish_programme(version: str) -> Response:
    body = json_body()
    data = load(PublishSchema(), body)
    rt = runtime()

    def operation(conn: Connection, now: dt.datetime) -> Result:
        effective = data["effective_from"].astimezone(dt.UTC) if data["effective_from"] else None
        return Result(service.publish(conn, version, effective_from=effective, actor=actor(), now=now))

    response = execute(operation, body)
    rt.programmes.invalidate()
    return response


class SimulateSchema(Base):
    member_id = StrictString(load_default=None, allow_none=True, validate=validate.Length(min=1, max=64))
    version = StrictString(load_default=None, allow_none=True, validate=validate.Length(min=1, max=32))
    event = StrictString(
        load_default="transaction",
        validate=validate.OneOf(["transaction", "account_opened", "birthday", "profile_completed"]),
    )
    transaction = fields.Dict(load_default=None, allow_none=True)
    context = fields.Dict(load_default=None, allow_none=True)


@bp.post("/rules/simulate")
@requires("read")
def simulate_event() -> Response:
    """What an event would earn now, under the version in force or a named draft; writes nothing."""
    data = load(SimulateSchema(), json_body())
    rt = runtime()
    with transaction(rt.engine, readonly=True) as conn:
        return json_response(simulate.simulate(conn, rt, **data))


class BacktestSchema(Base):
    version = StrictString(load_default=None, allow_none=True, validate=validate.Length(min=1, max=32))
    document = fields.Dict(load_default=None, allow_none=True)
    start = fields.AwareDateTime(required=True, data_key="from")
    end = fields.AwareDateTime(required=True, data_key="to")
    top = StrictInteger(load_default=10, validate=validate.Range(min=1, max=100))


@bp.post("/rules/backtest")
@requires("admin")
def run_backtest() -> Response:
    """Replay the stored transactions of a period under a candidate programme; writes nothing."""
    data = load(BacktestSchema(), json_body())
    if (data["version"] is None) == (data["document"] is None):
        raise ValidationError.one("version", "name a saved version or send a document, not both")
    if data["end"] <= data["start"]:
        raise ValidationError.one("to", "must be after from")
    rt = runtime()
    with transaction(rt.engine, readonly=True) as conn:
        candidate = service.draft(conn, data["version"]) if data["version"] else service.parse(data["document"])
        report = backtest.run(
            conn,
            candidate,
            start=data["start"],
            end=data["end"],
            point_value_fen=rt.settings.point_value_fen,
            top=data["top"],
        )
    return json_response(report)


@bp.get("/audit")
@requires("admin")
def audit_entries() -> Response:
    limit = int_arg("limit", 50, 1, 500)
    rt = runtime()
    with transaction(rt.engine, readonly=True) as conn:
        lines = audit.entries(conn, object_type=query_arg("object_type"), object_id=query_arg("object_id"), limit=limit)
    return json_response({"entries": lines})

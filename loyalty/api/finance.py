"""Finance: revenue recognition and its what-if."""

from __future__ import annotations

from dataclasses import asdict

from flask import Response

from loyalty.api.base import bp, json_body, json_response, requires
from loyalty.finance import recognition
from loyalty.finance.schemas import WHAT_IF_SCHEMA
from loyalty.validation import load


@bp.post("/finance/recognition/what-if")
@requires("finance")
def recognition_what_if() -> Response:
    """Each period's revenue for a cohort under the figures given, by the report's own arithmetic;
    nothing is stored."""
    data = load(WHAT_IF_SCHEMA, json_body())
    periods = recognition.recognise(data["allocated_fen"], data["periods"])
    return json_response({"allocated_fen": data["allocated_fen"], "periods": [asdict(p) for p in periods]})

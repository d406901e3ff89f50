"""Transactions: accrual one at a time or in batches, refunds."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Response
from sqlalchemy.engine import Connection

from loyalty import idempotency
from loyalty.accrual import service
from loyalty.accrual.schemas import BATCH_SCHEMA, REVERSAL_SCHEMA, load_transaction
from loyalty.accrual.service import ReversalCommand
from loyalty.api import ops
from loyalty.api.base import (
    bp,
    execute,
    idempotency_key,
    json_body,
    json_response,
    key_scope,
    replay,
    request_digest,
    requires,
    result_response,
    runtime,
    status_of,
)
from loyalty.db import transaction
from loyalty.errors import LoyaltyError
from loyalty.idempotency import Result
from loyalty.validation import check_storable, load


@bp.post("/transactions")
@requires("accrue")
def post_transaction() -> Response:
    body = json_body()
    rt = runtime()
    cmd = load_transaction(body, rt.now())
    def operation(conn: Connection, now: dt.datetime) -> Result:
        result = service.record_transaction(
            conn, cmd, programme=rt.programmes.at(cmd.occurred_at), now=now, current=rt.programme
        )
        ops.note_tier(cmd.member_id, result.labels.get("tier"))
        return result

    return execute(operation, body)


@bp.get("/transactions/<transaction_id:transaction_id>")
@requires("read")
def get_transaction(transaction_id: str) -> Response:
    rt = runtime()
    with transaction(rt.engine, readonly=True) as conn:
        member_id = service.find_transaction_member(conn, transaction_id)
        return json_response(service.transaction_body(conn, member_id, transaction_id))


@bp.post("/transactions/<transaction_id:transaction_id>/reversals")
@requires("accrue")
def post_reversal(transaction_id: str) -> Response:
    body = json_body()
    data = load(REVERSAL_SCHEMA, body)
    cmd = ReversalCommand(transaction_id=transaction_id, **data)
    rt = runtime()

    def operation(conn: Connection, now: dt.datetime) -> Result:
        return service.reverse(conn, cmd, policy=rt.settings.clawback_policy, now=now)

    return execute(operation, body)


@bp.post("/transactions/batch")
@requires("accrue")
def post_batch() -> Response:
    """Up to 1,000 transactions, each booked in its own database transaction.

    One bad item does not stop the others; results come back in order.
    """
    # An item holding what no database can store is that item's problem, not the batch's.
    body = json_body(storable=False)
    check_storable({k: v for k, v in body.items() if k != "transactions"} if isinstance(body, dict) else body)
    items = load(BATCH_SCHEMA, body)["transactions"]
    rt = runtime()
    key = idempotency_key()
    if key is not None:
        with transaction(rt.engine, readonly=True) as conn:
            existing = idempotency.find(conn, key_scope(), key)
        if existing is not None:
            idempotency.check_same(existing, request_digest(body), "Idempotency-Key", field="Idempotency-Key")
            return replay(existing)
    results: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            check_storable(item)
            cmd = load_transaction(item, rt.now())
            with transaction(rt.engine) as conn:
                programme = rt.programmes.at(cmd.occurred_at)
                result = service.record_transaction(conn, cmd, programme=programme, now=rt.now(), current=rt.programme)
                ops.note_tier(cmd.member_id, result.labels.get("tier"))
            results.append({"index": index, "status": status_of(result), "result": result.body})
        except LoyaltyError as err:
            # The item's problem is the one POST /v1/transactions would give it alone: its fields are
            # named within the item (`amount`), in `field` and `errors` alike; `index` says which item.
            results.append({"index": index, "status": err.status, "problem": err.problem()})
    out = Result({"results": results})
    if key is not None:
        with transaction(rt.engine) as conn:
            idempotency.record_answer(
                conn, key_scope(), key, request_digest(body), status_of(out), out.body, now=rt.now()
            )
    return result_response(out)

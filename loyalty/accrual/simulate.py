"""What an event would earn, explained, without writing anything."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.engine import Connection

from loyalty.accrual import context as member_context
from loyalty.accrual.schemas import SIMULATED_TRANSACTION_SCHEMA
from loyalty.accrual.service import award_json
from loyalty.calendar import iso
from loyalty.errors import ValidationError
from loyalty.programmes import service
from loyalty.runtime import Runtime
from loyalty.validation import load
from rules import Step, Usage, evaluate
from rules.catalogue import VARIABLES
from rules.evaluate import compiled


def simulate(
    conn: Connection,
    rt: Runtime,
    *,
    member_id: str | None,
    version: str | None,
    event: str,
    transaction: dict[str, Any] | None,
    context: dict[str, Any] | None,
) -> dict[str, Any]:
    now = rt.now()
    facts: dict[str, Any] = {"occurred_at": now}
    if event == "transaction":
        if transaction is None:
            raise ValidationError.one("transaction", "is required for a transaction event")
        try:
            facts.update(load(SIMULATED_TRANSACTION_SCHEMA, transaction))
        except ValidationError as exc:
            raise ValidationError({f"transaction.{k}": v for k, v in exc.errors.items()}) from None
    moment = facts["occurred_at"]
    programme = service.draft(conn, version) if version else rt.programmes.at(moment)
    used = Usage()
    if member_id is not None:
        member, _state = member_context.read_facts(
            conn, member_id, txn_type=facts.get("type", ""), moment=moment, programme=programme
        )
        facts.update(member)
        used = member_context.usage(conn, member_id, moment=moment, programme=programme)
    else:
        facts.update(member_context.member_facts(None, moment, moment, programme.zone, tier=programme.ladder.floor))
        facts.update(transactions_this_month=1, first_of_type=True, days_since_last_transaction=None)
    for name, value in (context or {}).items():
        if name not in VARIABLES or VARIABLES[name].source != "member":
            raise ValidationError.one(f"context.{name}", "is not a member variable of the rule catalogue")
        facts[name] = value
    trace: list[Step] = []
    awards = evaluate(programme, event, facts, used, trace)
    shown = compiled(programme).facts(facts)
    return {
        "programme_version": programme.version,
        "event": event,
        "facts": {k: (iso(v) if isinstance(v, dt.datetime) else v) for k, v in shown.items()},
        "points": sum(a.points for a in awards),
        "awards": [award_json(a) for a in awards],
        "trace": [{"rule_id": s.rule_id, "matched": s.matched, "points": s.points, "note": s.note} for s in trace],
    }

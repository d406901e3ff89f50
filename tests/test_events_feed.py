"""The event feed: paging in commit order with cursors, type filters, bad input, scopes.

Tests that read events back are marked ``committed``: on PostgreSQL the feed shows only events
of transactions that have ended."""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa

from loyalty.db import is_postgres, make_engine, transaction
from loyalty.events.models import events
from loyalty.events.service import emit, horizon
from tests.conftest import make_key

WRITTEN = ("events", "audit_log", "idempotency_keys", "webhook_subscriptions", "webhook_deliveries")


def emit_all(engine: sa.Engine, *events: tuple[str, str | None], now: Any) -> None:
    """Write events, one transaction for all of them."""
    with transaction(engine) as conn:
        for i, (type_, member_id) in enumerate(events):
            emit(conn, type_, member_id=member_id, payload={"n": i}, now=now)


def settle(engine: sa.Engine, timeout: float = 180) -> None:
    """Wait until every committed event is visible in the feed.

    On PostgreSQL an event shows once every transaction older than it has
    ended, on the whole server: a transaction left open in another database
    holds the feed back until it ends."""
    if not is_postgres(engine):
        return
    deadline = time.monotonic() + timeout
    query = sa.select(sa.func.coalesce(sa.func.max(events.c.tx), 0) < horizon())
    while True:
        with engine.connect() as conn:
            if conn.execute(query).scalar_one():
                return
            if time.monotonic() > deadline:
                blockers = conn.execute(
                    sa.text(
                        "SELECT datname, pid, state, now() - xact_start AS age FROM pg_stat_activity "
                        "WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()"
                    )
                ).all()
                pytest.fail(f"events still hidden after {timeout} s by open transactions: {blockers}")
        time.sleep(0.05)


def counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in WRITTEN}


def page(client: Any, query: str = "", status: int = 200) -> Any:
    r = client.get(f"/v1/events{query}")
    assert r.status_code == status, r.get_json()
    return r.get_json()


def test_an_empty_feed_starts_at_zero(client):
    assert page(client) == {"events": [], "next_cursor": "0.0"}


@pytest.mark.committed
def test_pages_follow_each_other_with_cursors_in_commit_order(client, runtime, clock):
    emit_all(runtime.engine, ("member.enrolled", "m1"), ("points.accrued", "m1"), now=clock())
    clock.advance(minutes=1)
    emit_all(runtime.engine, ("points.accrued", "m2"), ("tier.changed", "m1"), ("points.expiring", None), now=clock())
    settle(runtime.engine)

    seen, cursor, pages = [], None, 0
    while True:
        body = page(client, "?limit=2" + (f"&after={cursor}" if cursor else ""))
        if not body["events"]:
            assert body["next_cursor"] == cursor
            break
        pages += 1
        assert len(body["events"]) <= 2
        assert body["next_cursor"] == body["events"][-1]["cursor"]
        seen += body["events"]
        cursor = body["next_cursor"]
    assert pages == 3
    assert [(e["type"], e["member_id"], e["data"]) for e in seen] == [
        ("member.enrolled", "m1", {"n": 0}),
        ("points.accrued", "m1", {"n": 1}),
        ("points.accrued", "m2", {"n": 0}),
        ("tier.changed", "m1", {"n": 1}),
        ("points.expiring", None, {"n": 2}),
    ]
    assert len({e["event_id"] for e in seen}) == 5
    assert seen[0]["occurred_at"] == "2026-06-15T10:00:00Z"
    assert seen[2]["occurred_at"] == "2026-06-15T10:01:00Z"
    # The whole feed in one page is the same sequence.
    assert page(client, "?limit=500")["events"] == seen


@pytest.mark.committed
def test_the_types_filter_keeps_only_those_types_and_pages_with_cursors(client, runtime, clock):
    emit_all(
        runtime.engine,
        ("member.enrolled", "m1"),
        ("points.accrued", "m1"),
        ("tier.changed", "m1"),
        ("points.accrued", "m2"),
        ("lifecycle.changed", "m2"),
        now=clock(),
    )
    settle(runtime.engine)
    first = page(client, "?types=points.accrued,tier.changed&limit=2")
    assert [(e["type"], e["member_id"]) for e in first["events"]] == [("points.accrued", "m1"), ("tier.changed", "m1")]
    rest = page(client, f"?types=points.accrued,tier.changed&after={first['next_cursor']}")
    assert [(e["type"], e["member_id"]) for e in rest["events"]] == [("points.accrued", "m2")]
    assert page(client, "?types=member.birthday")["events"] == []
    assert len(page(client)["events"]) == 5


@pytest.mark.committed
def test_a_cursor_at_the_largest_position_is_valid_and_past_everything(client, runtime, clock):
    """Each half of a cursor has at most 18 digits, as openapi.yaml's pattern says: below 2**63."""
    emit_all(runtime.engine, ("points.accrued", "m1"), now=clock())
    settle(runtime.engine)
    top = "999999999999999999.999999999999999999"
    assert page(client, f"?after={top}") == {"events": [], "next_cursor": top}


BAD_QUERIES = [
    ("unknown type", "?types=points.stolen", "types"),
    ("one unknown type among known", "?types=points.accrued,nope", "types"),
    ("cursor not a cursor", "?after=abc", "after"),
    ("cursor without a dot", "?after=12", "after"),
    ("cursor with three parts", "?after=1.2.3", "after"),
    ("negative cursor", "?after=-1.5", "after"),
    ("cursor with non-ASCII digits", "?after=%C2%B2.1", "after"),
    ("cursor beyond bigint", "?after=9223372036854775808.1", "after"),
    ("cursor with 20 digits", "?after=1.00000000000000000001", "after"),
    ("cursor with 19 digits", "?after=1000000000000000000.1", "after"),
    ("empty cursor", "?after=", "after"),
    ("empty types", "?types=", "types"),
    ("a space after a comma in types", "?types=points.accrued,%20tier.changed", "types"),
    ("an empty type among types", "?types=points.accrued,,tier.changed", "types"),
    ("empty limit", "?limit=", "limit"),
    ("limit zero", "?limit=0", "limit"),
    ("limit above 500", "?limit=501", "limit"),
    ("limit not a number", "?limit=ten", "limit"),
    ("negative limit", "?limit=-1", "limit"),
]


@pytest.mark.parametrize(("case", "query", "field"), BAD_QUERIES, ids=[c[0] for c in BAD_QUERIES])
def test_bad_feed_query_is_a_problem_naming_the_field(client, runtime, clock, case, query, field):
    emit_all(runtime.engine, ("points.accrued", "m1"), now=clock())
    before = counts(runtime.engine)
    r = client.get(f"/v1/events{query}")
    assert r.status_code == 422
    assert r.content_type == "application/problem+json"
    problem = r.get_json()
    assert problem["type"] == "/problems/validation_error"
    assert problem["field"] == field
    assert counts(runtime.engine) == before


def test_the_feed_needs_the_read_scope(client, runtime):
    assert client.get("/v1/events", key=None).status_code == 401
    assert client.get("/v1/events", key="lk_nothing_here").status_code == 401
    assert client.get("/v1/events", key=make_key(runtime, "accrue", "admin")).status_code == 403
    assert client.get("/v1/events", key=make_key(runtime, "read")).status_code == 200


@pytest.mark.postgres_only
@pytest.mark.committed
def test_a_reader_never_sees_a_later_commit_behind_its_cursor(client, runtime, clock, settings):
    """T1 writes an event and stays open; T2 writes one and commits. The feed shows neither
    until T1 ends, then both, T1's first: a cursor taken meanwhile can never skip T1's."""
    settle(runtime.engine)
    other = make_engine(settings.database_url, pool_size=1)
    try:
        with other.connect() as t1_conn:
            t1 = t1_conn.begin()
            emit(t1_conn, "points.accrued", member_id="m1", payload={"by": "T1"}, now=clock())
            emit_all(runtime.engine, ("points.accrued", "m2"), now=clock())  # T2, committed

            hidden = page(client)
            assert hidden == {"events": [], "next_cursor": "0.0"}
            with runtime.engine.connect() as conn:
                assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one() == 1  # T2's is committed
            t1.commit()
    finally:
        other.dispose()
    settle(runtime.engine)
    both = page(client, f"?after={hidden['next_cursor']}")
    assert [(e["member_id"], e["data"]) for e in both["events"]] == [("m1", {"by": "T1"}), ("m2", {"n": 0})]

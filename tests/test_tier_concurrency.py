"""Tier and stage jobs racing bookings on PostgreSQL: each change is made once, history matches state."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from loyalty.db import transaction
from loyalty.jobs.runner import run_job
from loyalty.records.models import member_profiles
from loyalty.runtime import Runtime
from tests.test_concurrency import assert_verified, book, enrol, race, rt  # noqa: F401  (fixture)

#: Threads with connections of their own race each other: the data they race for is committed.
pytestmark = [pytest.mark.postgres_only, pytest.mark.committed, pytest.mark.xdist_group("races")]

MEMBERS = 60


def tier_rows(runtime: Runtime) -> tuple[dict[str, str], dict[str, list[tuple[str, str]]], list[dict[str, str]]]:
    with transaction(runtime.engine, readonly=True) as conn:
        tiers = dict(conn.execute(sa.text("SELECT member_id, tier FROM members")).all())
        history: dict[str, list[tuple[str, str]]] = {}
        for m, old, new in conn.execute(
            sa.text("SELECT member_id, from_tier, to_tier FROM tier_changes WHERE source != 'enrolment'")
        ):
            history.setdefault(m, []).append((old, new))
        events = [
            json.loads(p) for (p,) in conn.execute(sa.text("SELECT payload FROM events WHERE type = 'tier.changed'"))
        ]
    return tiers, history, [e for e in events if e["source"] != "enrolment"]


def test_a_review_racing_bookings_upgrades_each_member_once(rt):  # noqa: F811
    for i in range(MEMBERS):
        enrol(rt, f"m{i:03d}")
    with transaction(rt.engine) as conn:
        conn.execute(
            member_profiles.insert(),
            [{"member_id": f"m{i:03d}", "aum": 6_000_000, "updated_at": rt.now()} for i in range(MEMBERS)],
        )
    workers = 8

    def work(i: int) -> object:
        if i == 0:
            return run_job(rt, "tier_review", rt.now())
        for j in range(i - 1, MEMBERS, workers - 1):
            book(rt, f"t{j}", 1_000, f"m{j:03d}")
        return None

    results = race(work, workers)
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert results[0]["status"] == "succeeded"  # type: ignore[index]
    tiers, history, events = tier_rows(rt)
    assert set(tiers.values()) == {"mass"}
    assert all(h == [("basic", "mass")] for h in history.values()), history
    assert len(history) == MEMBERS
    assert len(events) == MEMBERS
    assert_verified(rt)


def test_the_lifecycle_job_racing_bookings_records_each_stage_change_once(rt, clock):  # noqa: F811
    for i in range(MEMBERS):
        enrol(rt, f"m{i:03d}")
    for i in range(MEMBERS):
        book(rt, f"t{i}", 1_000, f"m{i:03d}")
    clock.advance(days=100)  # activation has ended: growth is due
    workers = 8

    def work(i: int) -> object:
        if i == 0:
            return run_job(rt, "lifecycle", rt.now())
        for j in range(i - 1, MEMBERS, workers - 1):
            book(rt, f"u{j}", 1_000, f"m{j:03d}")
        return None

    results = race(work, workers)
    assert not [r for r in results if isinstance(r, BaseException)], results
    with transaction(rt.engine, readonly=True) as conn:
        stages = dict(conn.execute(sa.text("SELECT member_id, lifecycle_stage FROM members")).all())
        moves = conn.execute(
            sa.text(
                "SELECT member_id, count(*) FROM lifecycle_changes WHERE from_stage = 'activation' GROUP BY member_id"
            )
        ).all()
        emitted = conn.execute(
            sa.text("SELECT count(*) FROM events WHERE type = 'lifecycle.changed' AND payload LIKE '%\"growth\"%'")
        ).scalar_one()
    assert set(stages.values()) == {"growth"}
    assert sorted(n for _m, n in moves) == [1] * MEMBERS
    assert emitted == MEMBERS

"""Tier override requests with four eyes: asked for by one principal, approved (and the override
set once, exactly as a direct override sets it) or rejected by another; audited; refused to the
one who asked, by the service, the API and the database."""

from __future__ import annotations

import datetime as dt
import json
import threading
from typing import Any

import pytest
import sqlalchemy as sa

from loyalty.audit import audit_log
from loyalty.auth.service import create_key
from loyalty.db import transaction
from loyalty.errors import FourEyes, MemberNotFound, NotFound, OverrideRequestNotPending, ValidationError
from loyalty.events.models import events
from loyalty.members import service as members
from loyalty.members.service import Enrolment
from loyalty.records.models import members as member_rows
from loyalty.runtime import Runtime
from loyalty.tiers import override_requests
from loyalty.tiers import service as tiers
from loyalty.tiers.models import tier_changes, tier_override_requests
from tests.helpers import enrol

UNTIL = dt.datetime(2026, 12, 31, 16, 0, tzinfo=dt.UTC)
REASON = "private banking referral"


def enrolled(rt: Runtime, *member_ids: str) -> None:
    with transaction(rt.engine) as conn:
        for member_id in member_ids:
            members.enrol(conn, Enrolment(member_id), programme=rt.programme, now=rt.now())


def ask(
    rt: Runtime,
    *,
    member_id: str = "m1",
    tier: str = "hnw",
    until: dt.datetime = UNTIL,
    reason: str = REASON,
    by: str = "alice",
) -> str:
    with transaction(rt.engine) as conn:
        made = override_requests.request(
            conn, member_id, tier=tier, until=until, reason=reason, principal=by, programme=rt.programme, now=rt.now()
        )
    return str(made["override_request_id"])


def approve(rt: Runtime, request_id: str, *, by: str = "bob", note: str | None = None) -> dict[str, Any]:
    with transaction(rt.engine) as conn:
        return override_requests.approve(
            conn, request_id, principal=by, programme=rt.programme, now=rt.now(), note=note
        )


def reject(rt: Runtime, request_id: str, *, by: str = "bob", note: str = "not eligible") -> dict[str, Any]:
    with transaction(rt.engine) as conn:
        return override_requests.reject(conn, request_id, principal=by, note=note, now=rt.now())


def member_state(rt: Runtime, member_id: str = "m1") -> tuple[Any, ...]:
    m = member_rows.c
    with transaction(rt.engine, readonly=True) as conn:
        row = conn.execute(
            sa.select(m.tier, m.tier_since, m.override_tier, m.override_until, m.override_reason).where(
                m.member_id == member_id
            )
        ).one()
    return tuple(row)


def tier_history(rt: Runtime, member_id: str = "m1") -> list[tuple[str | None, str, str, str]]:
    t = tier_changes.c
    with transaction(rt.engine, readonly=True) as conn:
        rows = conn.execute(
            sa.select(t.from_tier, t.to_tier, t.source, t.reason).where(t.member_id == member_id).order_by(t.changed_at)
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def tier_events(rt: Runtime, member_id: str = "m1") -> list[dict[str, Any]]:
    e = events.c
    with transaction(rt.engine, readonly=True) as conn:
        payloads = conn.execute(
            sa.select(e.payload).where(e.type == "tier.changed", e.member_id == member_id).order_by(e.id)
        ).scalars()
        return [json.loads(p) for p in payloads]


def audit_lines(rt: Runtime, object_type: str, object_id: str) -> list[tuple[str, str, Any]]:
    a = audit_log.c
    with transaction(rt.engine, readonly=True) as conn:
        rows = conn.execute(
            sa.select(a.action, a.actor, a.after)
            .where(a.object_type == object_type, a.object_id == object_id)
            .order_by(a.id)
        ).all()
    return [(r.action, r.actor, None if r.after is None else json.loads(r.after)) for r in rows]


def test_a_request_changes_nothing_about_the_member_and_is_audited(runtime):
    enrolled(runtime, "m1")
    before = member_state(runtime)
    request_id = ask(runtime)
    assert member_state(runtime) == before
    assert tier_history(runtime) == [(None, "basic", "enrolment", "enrolled")]
    with transaction(runtime.engine, readonly=True) as conn:
        made = override_requests.get(conn, request_id)
    assert made == {
        "override_request_id": request_id,
        "member_id": "m1",
        "tier": "hnw",
        "until": "2026-12-31T16:00:00Z",
        "reason": REASON,
        "status": "pending",
        "requested_by": "alice",
        "requested_at": "2026-06-15T10:00:00Z",
        "decided_by": None,
        "decided_at": None,
        "note": None,
    }
    assert audit_lines(runtime, "tier_override_request", request_id) == [
        ("tier_override_request.requested", "alice", made)
    ]
    assert audit_lines(runtime, "member", "m1") == []


def test_an_approval_sets_the_override_once_exactly_as_a_direct_override_does(runtime, clock):
    enrolled(runtime, "m1", "m2")
    request_id = ask(runtime, member_id="m1")
    clock.advance(minutes=5)
    done = approve(runtime, request_id, by="bob", note="checked with the branch")
    assert (done["status"], done["requested_by"], done["decided_by"], done["note"]) == (
        "approved",
        "alice",
        "bob",
        "checked with the branch",
    )
    assert done["decided_at"] == "2026-06-15T10:05:00Z"
    # the same override set directly on another member, by the same actor, at the same moment
    with transaction(runtime.engine) as conn:
        tiers.set_override(
            conn, "m2", tier="hnw", until=UNTIL, reason=REASON, actor="bob", programme=runtime.programme, now=clock.now
        )
    assert member_state(runtime, "m1") == member_state(runtime, "m2")
    assert member_state(runtime, "m1")[0] == "hnw"
    assert tier_history(runtime, "m1") == tier_history(runtime, "m2")
    assert tier_history(runtime, "m1")[-1] == (
        "basic",
        "hnw",
        "override",
        f"override by bob until 2026-12-31: {REASON}",
    )
    assert tier_events(runtime, "m1") == tier_events(runtime, "m2")
    assert [e["source"] for e in tier_events(runtime, "m1")] == ["enrolment", "override"]
    assert [line[:2] for line in audit_lines(runtime, "member", "m1")] == [("tier.override", "bob")]
    assert audit_lines(runtime, "member", "m1")[0][2] == audit_lines(runtime, "member", "m2")[0][2]
    steps = audit_lines(runtime, "tier_override_request", request_id)
    assert [s[:2] for s in steps] == [
        ("tier_override_request.requested", "alice"),
        ("tier_override_request.approved", "bob"),
    ]
    assert steps[-1][2] == done
    with pytest.raises(OverrideRequestNotPending) as err:
        approve(runtime, request_id, by="carol")
    assert err.value.extra == {"override_request_status": "approved"}
    assert len(tier_history(runtime, "m1")) == 2  # once


def test_a_rejection_changes_nothing_and_is_final(runtime):
    enrolled(runtime, "m1")
    before = member_state(runtime)
    request_id = ask(runtime)
    rejected = reject(runtime, request_id, by="carol", note="  no referral on file  ")
    assert (rejected["status"], rejected["decided_by"]) == ("rejected", "carol")
    assert rejected["note"] == "no referral on file"  # stripped
    assert member_state(runtime) == before
    assert [e["source"] for e in tier_events(runtime)] == ["enrolment"]
    with pytest.raises(OverrideRequestNotPending):
        approve(runtime, request_id)
    with pytest.raises(OverrideRequestNotPending):
        reject(runtime, request_id)
    assert member_state(runtime) == before
    assert [s[:2] for s in audit_lines(runtime, "tier_override_request", request_id)] == [
        ("tier_override_request.requested", "alice"),
        ("tier_override_request.rejected", "carol"),
    ]
    assert audit_lines(runtime, "member", "m1") == []


def test_the_requester_may_not_decide_whatever_the_case_of_their_name(runtime):
    enrolled(runtime, "m1")
    before = member_state(runtime)
    request_id = ask(runtime, by="alice")
    with pytest.raises(FourEyes) as err:
        approve(runtime, request_id, by="Alice")
    assert (err.value.status, err.value.code, err.value.field) == (403, "four_eyes", "principal")
    with pytest.raises(FourEyes):
        reject(runtime, request_id, by=" alice ")
    assert member_state(runtime) == before
    with transaction(runtime.engine, readonly=True) as conn:
        assert override_requests.get(conn, request_id)["status"] == "pending"
    assert [s[0] for s in audit_lines(runtime, "tier_override_request", request_id)] == [
        "tier_override_request.requested"
    ]


def test_the_database_refuses_a_decision_by_the_requester(runtime):
    enrolled(runtime, "m1")
    request_id = ask(runtime, by="alice")
    with pytest.raises(sa.exc.IntegrityError), transaction(runtime.engine) as conn:
        conn.execute(
            tier_override_requests.update()
            .where(tier_override_requests.c.id == request_id)
            .values(status="approved", decided_by="alice", decided_at=runtime.now())
        )
    with pytest.raises(sa.exc.IntegrityError), transaction(runtime.engine) as conn:
        conn.execute(  # nor a decision without a decider
            tier_override_requests.update().where(tier_override_requests.c.id == request_id).values(status="rejected")
        )


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"tier": "platinum"}, "tier"),
        ({"until": dt.datetime(2026, 6, 15, 10, 0, tzinfo=dt.UTC)}, "until"),  # now is not the future
        ({"until": dt.datetime(2025, 1, 1, tzinfo=dt.UTC)}, "until"),
        ({"reason": "   "}, "reason"),
        ({"reason": "x" * 501}, "reason"),
    ],
)
def test_a_bad_request_names_its_field_and_writes_nothing(runtime, over, field):
    enrolled(runtime, "m1")
    with pytest.raises(ValidationError) as err:
        ask(runtime, **over)
    assert err.value.field == field
    with pytest.raises(MemberNotFound):
        ask(runtime, member_id="nobody")
    with transaction(runtime.engine, readonly=True) as conn:
        assert override_requests.list_(conn) == []
        written = sa.select(sa.func.count()).where(audit_log.c.object_type == "tier_override_request")
        assert conn.execute(written).scalar_one() == 0


def test_a_request_whose_end_has_passed_is_refused_on_approval_and_can_be_rejected(runtime, clock):
    enrolled(runtime, "m1")
    before = member_state(runtime)
    request_id = ask(runtime, until=clock.now + dt.timedelta(hours=1))
    clock.advance(hours=2)
    with pytest.raises(ValidationError) as err:
        approve(runtime, request_id)
    assert err.value.field == "until" and "reject this request" in err.value.detail
    assert member_state(runtime) == before
    with transaction(runtime.engine, readonly=True) as conn:
        assert override_requests.get(conn, request_id)["status"] == "pending"
    assert reject(runtime, request_id, note="too late")["status"] == "rejected"


def test_unknown_requests_are_not_found(runtime):
    with transaction(runtime.engine, readonly=True) as conn:
        for request_id in ("not-a-uuid", "00000000-0000-4000-8000-000000000000"):
            with pytest.raises(NotFound) as err:
                override_requests.get(conn, request_id)
            assert err.value.field == "override_request_id"
    with pytest.raises(ValidationError) as bad, transaction(runtime.engine, readonly=True) as conn:
        override_requests.list_(conn, status="requested")
    assert bad.value.field == "status"


def test_listing_filters_by_status_and_member_newest_first(runtime, clock):
    enrolled(runtime, "m1", "m2")
    first = ask(runtime, member_id="m1")
    clock.advance(minutes=1)
    second = ask(runtime, member_id="m2", tier="potential")
    clock.advance(minutes=1)
    third = ask(runtime, member_id="m1", tier="mass")
    approve(runtime, third)
    with transaction(runtime.engine, readonly=True) as conn:
        assert [r["override_request_id"] for r in override_requests.list_(conn)] == [third, second, first]
        assert [r["override_request_id"] for r in override_requests.list_(conn, status="pending")] == [second, first]
        assert [r["override_request_id"] for r in override_requests.list_(conn, member_id="m1")] == [third, first]
        assert [r["override_request_id"] for r in override_requests.list_(conn, limit=1)] == [third]


# ---- the API -------------------------------------------------------------------------------------------------------


def key(runtime: Runtime, name: str, *scopes: str) -> str:
    with transaction(runtime.engine) as conn:
        return create_key(conn, name=name, scopes=frozenset(scopes), now=runtime.now())


BODY = {"tier": "hnw", "until": "2027-01-01T00:00:00+08:00", "reason": "relationship manager's request"}


def test_the_api_requests_with_support_and_approves_with_another_admin_key(client, runtime, clock):
    enrol(client, "m1")
    support, admin, also_agent = (
        key(runtime, "agent", "support"),
        key(runtime, "supervisor", "admin"),
        key(runtime, "agent", "admin"),
    )
    clock.advance(minutes=1)  # after the enrolment, so the history has an order
    headers = {"Idempotency-Key": "override-1"}
    r = client.post("/v1/members/m1/tier-override-requests", json=BODY, key=support, headers=headers)
    assert r.status_code == 201, r.get_json()
    made = r.get_json()
    assert (made["status"], made["requested_by"], made["tier"], made["until"]) == (
        "pending",
        "agent",
        "hnw",
        "2026-12-31T16:00:00Z",
    )
    again = client.post("/v1/members/m1/tier-override-requests", json=BODY, key=support, headers=headers)
    assert again.get_json() == made and again.headers["Idempotent-Replayed"] == "true"
    assert client.get("/v1/members/m1").get_json()["tier"]["override"] is None  # nothing set yet
    path = f"/v1/tier-override-requests/{made['override_request_id']}"
    refused = client.post(f"{path}/approve", json={}, key=support)  # support may ask, not decide
    assert (refused.status_code, refused.get_json()["type"]) == (403, "/problems/forbidden")
    own = client.post(f"{path}/approve", json={}, key=also_agent)  # the same name on an admin key
    assert (own.status_code, own.get_json()["type"]) == (403, "/problems/four_eyes")
    r = client.post(f"{path}/approve", json={"note": "ok"}, key=admin)
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["status"], r.get_json()["decided_by"]) == ("approved", "supervisor")
    tier = client.get("/v1/members/m1").get_json()["tier"]
    assert (tier["code"], tier["override"]) == (
        "hnw",
        {"tier": "hnw", "until": "2026-12-31T16:00:00Z", "reason": "relationship manager's request"},
    )
    history = client.get("/v1/members/m1/history").get_json()["tiers"]
    assert [(c["to"], c["source"]) for c in history] == [("hnw", "override"), ("basic", "enrolment")]
    twice = client.post(f"{path}/approve", json={}, key=admin)
    assert (twice.status_code, twice.get_json()["type"]) == (409, "/problems/override_request_not_pending")
    listed = client.get("/v1/tier-override-requests?status=approved&member_id=m1", key=support).get_json()
    assert [r["override_request_id"] for r in listed["override_requests"]] == [made["override_request_id"]]
    assert client.get("/v1/tier-override-requests?status=pending", key=support).get_json() == {"override_requests": []}
    audit = client.get("/v1/audit?object_type=tier_override_request").get_json()["entries"]
    assert sorted((e["action"], e["actor"]) for e in audit) == [
        ("tier_override_request.approved", "supervisor"),
        ("tier_override_request.requested", "agent"),
    ]


def test_the_api_rejects_with_a_note_and_the_tier_stays(client, runtime):
    enrol(client, "m1")
    admin = key(runtime, "supervisor", "admin")
    made = client.post("/v1/members/m1/tier-override-requests", json=BODY, key=key(runtime, "agent", "support"))
    path = f"/v1/tier-override-requests/{made.get_json()['override_request_id']}"
    r = client.post(f"{path}/reject", json={}, key=admin)
    assert (r.status_code, r.get_json()["field"]) == (422, "note")
    r = client.post(f"{path}/reject", json={"note": "no referral on file"}, key=admin)
    assert r.status_code == 200 and r.get_json()["status"] == "rejected"
    tier = client.get("/v1/members/m1").get_json()["tier"]
    assert (tier["code"], tier["override"]) == ("basic", None)
    again = client.post(f"{path}/approve", json={}, key=admin)
    assert (again.status_code, again.get_json()["type"]) == (409, "/problems/override_request_not_pending")


def test_the_api_refuses_bad_input_unknown_things_and_other_scopes(client, runtime):
    enrol(client, "m1")
    for body, field in (
        ({**BODY, "tier": "platinum"}, "tier"),
        ({**BODY, "until": "2020-01-01T00:00:00Z"}, "until"),
        ({**BODY, "until": "2027-01-01T00:00:00"}, "until"),  # no offset
        ({k: v for k, v in BODY.items() if k != "reason"}, "reason"),
        ({**BODY, "reason": "     "}, "reason"),
    ):
        r = client.post("/v1/members/m1/tier-override-requests", json=body)
        assert (r.status_code, r.get_json()["field"]) == (422, field), body
    assert client.post("/v1/members/nobody/tier-override-requests", json=BODY).status_code == 404
    for scopes in (("finance",), ("read", "accrue")):
        other = key(runtime, "someone", *scopes)
        assert client.post("/v1/members/m1/tier-override-requests", json=BODY, key=other).status_code == 403
        assert client.get("/v1/tier-override-requests", key=other).status_code == 403
    assert client.get("/v1/tier-override-requests").get_json() == {"override_requests": []}  # nothing written
    admin = key(runtime, "supervisor", "admin")
    assert client.post("/v1/tier-override-requests/not-a-uuid/approve", json={}, key=admin).status_code == 404
    missing = "00000000-0000-4000-8000-000000000000"
    r = client.post(f"/v1/tier-override-requests/{missing}/reject", json={"note": "x"}, key=admin)
    assert (r.status_code, r.get_json()["field"]) == (404, "override_request_id")
    r = client.get("/v1/tier-override-requests?status=requested")
    assert (r.status_code, r.get_json()["field"]) == (422, "status")


# ---- racing approvals ----------------------------------------------------------------------------------------------


@pytest.mark.committed
@pytest.mark.postgres_only
def test_concurrent_approvals_set_each_override_once(runtime, backend):
    member_ids = ["m1", "m2", "m3"]
    enrolled(runtime, *member_ids)
    ids = [ask(runtime, member_id=m, tier=t) for m, t in zip(member_ids, ("hnw", "potential", "mass"), strict=True)]
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def decide(i: int) -> None:
        barrier.wait()
        for request_id in ids:
            try:
                approve(runtime, request_id, by=f"approver-{i}")
                outcomes.append("approved")
            except OverrideRequestNotPending:
                outcomes.append("already")
            except BaseException as exc:  # noqa: BLE001  (reported below)
                outcomes.append(repr(exc))

    threads = [threading.Thread(target=decide, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(set(outcomes)) == ["already", "approved"] and outcomes.count("approved") == 3, outcomes
    for member_id, tier in zip(member_ids, ("hnw", "potential", "mass"), strict=True):
        assert member_state(runtime, member_id)[0] == tier
        assert [(c[1], c[2]) for c in tier_history(runtime, member_id)] == [("basic", "enrolment"), (tier, "override")]
        assert [e["source"] for e in tier_events(runtime, member_id)] == ["enrolment", "override"]
        assert [line[0] for line in audit_lines(runtime, "member", member_id)] == ["tier.override"]
    with transaction(runtime.engine, readonly=True) as conn:
        decided = override_requests.list_(conn)
    assert {r["status"] for r in decided} == {"approved"}
    for r in decided:  # the one who set the override is the one the request names as its approver
        (line,) = audit_lines(runtime, "member", r["member_id"])
        assert line[1] == r["decided_by"]

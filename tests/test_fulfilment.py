"""Fulfilment through partners: the ``fulfilment`` job, partners' callbacks and the sandbox
partner, which runs as a real process on loopback (see :mod:`tests.sandbox`).

The engine runs on the real clock here: the sandbox checks signatures and
deadlines against its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from loyalty.catalogue.models import benefits
from loyalty.config import DEFAULT_PARTNERS, DEV_PARTNER_SECRET, Settings, parse_partners
from loyalty.events.models import events
from loyalty.fulfilment import protocol
from loyalty.fulfilment.adapters import FAILED, NOT_FOUND, SUCCEEDED, Order, adapter_for
from loyalty.fulfilment.jobs import DEADLINE_REASON, fulfil
from loyalty.jobs.runner import run_job
from loyalty.ledger.models import holds, journal_entries, member_accounts, point_lots
from loyalty.runtime import Runtime
from tests.conftest import Clock
from tests.helpers import eventually
from tests.sandbox import (
    LOYALTY,
    SECRET,
    STOCK,
    LiveServer,
    SandboxPartner,
    assert_all_settled,
    benefit_code,
    environment,
    http_json,
    pending_redemption,
    redemption,
)

#: The job calls partners from threads, and the sandbox calls back into a live server: what a
#: test writes is committed where they can see it.
pytestmark = pytest.mark.committed

#: the engine's HTTP timeout for partners in these tests, in seconds
TIMEOUT = 2
#: how late the sandbox answers a "timeout then succeed" order: well past TIMEOUT
HANG_MS = (TIMEOUT + 2) * 1000
WELCOME = 500
#: secrets that are not the sandbox's
WRONG_SECRET = "someone-elses-secret-0123456789"  # noqa: S105  (test secrets)
VIDEO_SECRET = "the-video-partners-own-secret"  # noqa: S105
CMCC_SECRET = "cmcc-own-secret-0123456789"  # noqa: S105


class RealClock(Clock):
    """The wall clock: the sandbox partner checks times against its own."""

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


@pytest.fixture
def clock() -> Clock:
    return RealClock()


@pytest.fixture(scope="module")
def sandbox_process(tmp_path_factory: pytest.TempPathFactory, live_server: LiveServer) -> Iterator[SandboxPartner]:
    log = tmp_path_factory.mktemp("sandbox") / "sandbox.log"
    partner = SandboxPartner(log, "--callback-url", f"{live_server.url}/v1/partners/{{partner}}/callbacks")
    try:
        yield partner
    finally:
        partner.close()


@pytest.fixture(scope="module")
def live_server() -> Iterator[LiveServer]:
    server = LiveServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def sandbox(sandbox_process: SandboxPartner) -> SandboxPartner:
    """The sandbox partner, with no orders and its start-up behaviour."""
    sandbox_process.control(reset=True)
    return sandbox_process


@pytest.fixture
def rt(runtime: Runtime, sandbox: SandboxPartner, app: Any, live_server: LiveServer) -> Runtime:
    """The runtime the job and the API run with, pointed at the sandbox; the live server serves
    this test's app, for the sandbox's callbacks."""
    runtime.settings = dataclasses.replace(
        runtime.settings,
        partners=sandbox.partners(),
        partner_secret=SECRET,
        partner_timeout_seconds=TIMEOUT,
        partner_backoff_seconds=1,
        partner_backoff_max_seconds=2,
    )
    live_server.app = app
    return runtime


def run(rt: Runtime, as_of: dt.datetime | None = None) -> dict[str, Any]:
    result = run_job(rt, "fulfilment", as_of)
    assert result["status"] == "succeeded", result
    return result


def account(rt: Runtime, member_id: str) -> tuple[int, int, int]:
    """The member's balance, held points, and the points left in their lots."""
    with rt.engine.connect() as conn:
        balance, held = conn.execute(
            sa.select(member_accounts.c.balance, member_accounts.c.held).where(member_accounts.c.member_id == member_id)
        ).one()
        lots = conn.execute(
            sa.select(sa.func.sum(point_lots.c.remaining)).where(point_lots.c.member_id == member_id)
        ).scalar_one()
    return int(balance), int(held), int(lots)


def hold_status(rt: Runtime, member_id: str, hold_id: str) -> str:
    with rt.engine.connect() as conn:
        return str(
            conn.execute(
                sa.select(holds.c.status).where(holds.c.member_id == member_id, holds.c.id == hold_id)
            ).scalar()
        )


def stock(rt: Runtime, code: str) -> int:
    with rt.engine.connect() as conn:
        return int(conn.execute(sa.select(benefits.c.stock).where(benefits.c.code == code)).scalar_one())


def event_types(rt: Runtime, member_id: str) -> list[str]:
    with rt.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(events.c.type)
                .where(events.c.member_id == member_id, events.c.type.like("redemption.%"))
                .order_by(events.c.id)
            ).scalars()
        )


def entry_count(rt: Runtime) -> int:
    with rt.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(journal_entries)).scalar_one())


def retried(rt: Runtime, redemption_id: str) -> dt.datetime:
    """When the redemption is next due; fails unless it is still pending."""
    row = redemption(rt, redemption_id)
    assert row.status == "pending", row
    return row.next_attempt_at  # type: ignore[no-any-return]


# --- the job against the sandbox -----------------------------------------------------------------


def test_orders_are_delivered_and_their_redemptions_fulfilled(rt, sandbox):
    phone = pending_redemption(rt, "m1", partner="telecom", delivery={"phone_number": "13912345678"})
    video = pending_redemption(rt, "m2", partner="video", points=200)
    cancellable = pending_redemption(rt, "m3", partner="telecom", cancel_hours=24)

    result = run(rt)

    assert result["rows"] == 3 and result["errors"] == 0, result
    assert result["detail"].startswith("3 fulfilled, 0 failed")
    for rid, member, left in ((phone, "m1", 200), (video, "m2", 300)):
        row = redemption(rt, rid)
        assert (row.status, row.attempts, row.next_attempt_at) == ("fulfilled", 1, None)
        assert row.partner_ref.startswith("TEL-" if rid == phone else "VID-")
        assert row.settled  # not cancellable: the points are spent for good
        assert hold_status(rt, member, rid) == "captured"
        assert account(rt, member) == (left, 0, left)
        assert event_types(rt, member) == ["redemption.fulfilled"]
    row = redemption(rt, cancellable)
    assert row.status == "fulfilled" and not row.settled and row.cancel_until is not None
    assert hold_status(rt, "m3", cancellable) == "pending"  # held until the cancellation window ends
    assert account(rt, "m3") == (200, 300, 200)

    deliveries = {d["order_id"]: d for d in sandbox.deliveries()}
    assert set(deliveries) == {phone, video, cancellable}
    assert deliveries[phone] == {
        "partner": "telecom",
        "order_id": phone,
        "product": benefit_code("telecom", 0),
        "face_value": 5000,
        "quantity": 1,
        "phone_number": "13912345678",
        "reference": redemption(rt, phone).partner_ref,
        "delivered_at": deliveries[phone]["delivered_at"],
    }
    assert deliveries[video]["account_ref"] == "acct-m2"
    assert all(o["submissions"] == 1 and o["queries"] == 0 for o in sandbox.orders().values())

    assert run(rt)["rows"] == 0  # nothing is due any more
    assert len(sandbox.deliveries()) == 3
    assert_all_settled(rt, sandbox)


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: What a misbehaving partner sends on every connection (None: nothing, the connection is held open).
MISBEHAVIOURS = {
    # an HTTP answer whose body is not the partner protocol's JSON
    "garbage": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{not json",
    # bytes that are not HTTP at all
    "noise": b"\x00\xff SSH-2.0-OpenSSH \x07\r\n\r\n",
    # the connection reset (RST) as soon as the request has arrived
    "reset": b"",
    # accepted and never answered
    "hang": None,
}


@contextlib.contextmanager
def misbehaving_partner(mode: str) -> Iterator[str]:
    """A partner on a loopback port that answers every request as ``mode`` says (:data:`MISBEHAVIOURS`)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    done = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                conn.recv(65536)
                answer = MISBEHAVIOURS[mode]
                if answer is None:
                    held.append(conn)
                    continue
                if mode == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    conn.sendall(answer)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


@pytest.mark.parametrize("down", ["503", "close", "refused", *MISBEHAVIOURS])
def test_a_partner_that_is_down_leaves_the_redemption_pending_until_the_deadline_fails_it(rt, sandbox, down):
    with contextlib.ExitStack() as stack:
        if down == "refused":
            rt.settings = dataclasses.replace(rt.settings, partners={"telecom": f"http://127.0.0.1:{closed_port()}"})
        elif down in MISBEHAVIOURS:
            url = stack.enter_context(misbehaving_partner(down))
            rt.settings = dataclasses.replace(rt.settings, partners={"telecom": url})
        else:
            sandbox.control(down=down)
        down_until_the_deadline(rt, sandbox)


def down_until_the_deadline(rt: Runtime, sandbox: SandboxPartner) -> None:
    """The redemption stays pending through four unconfirmed attempts, each run over within the
    partner timeout (no run blocked past it), and fails at its deadline, giving everything back."""
    rid = pending_redemption(rt, "m1", points=300)
    code = benefit_code("telecom", 0)
    assert stock(rt, code) == STOCK - 1

    started = time.monotonic()
    result = run(rt)
    assert time.monotonic() - started < TIMEOUT + 5, "a run was blocked past the partner timeout"
    assert (result["rows"], result["errors"]) == (1, 1) and "1 unconfirmed" in result["detail"]
    for attempts in (2, 3, 4):
        started = time.monotonic()
        run(rt, retried(rt, rid))
        assert time.monotonic() - started < TIMEOUT + 5, "a run was blocked past the partner timeout"
        assert redemption(rt, rid).attempts == attempts
    assert account(rt, "m1") == (WELCOME - 300, 300, WELCOME - 300)

    result = run(rt, redemption(rt, rid).deadline)

    assert "1 failed at the deadline" in result["detail"]
    row = redemption(rt, rid)
    assert (row.status, row.failure_reason, row.attempts) == ("failed", DEADLINE_REASON, 5)
    assert hold_status(rt, "m1", rid) == "voided"
    assert account(rt, "m1") == (WELCOME, 0, WELCOME)  # the points are back in the lots
    assert stock(rt, code) == STOCK
    assert event_types(rt, "m1") == ["redemption.failed"]
    assert sandbox.orders() == {}
    assert_all_settled(rt, sandbox)


def test_after_the_last_attempt_the_job_waits_for_the_deadline(rt, sandbox):
    rt.settings = dataclasses.replace(rt.settings, partner_max_attempts=2)
    sandbox.control(down="503")
    rid = pending_redemption(rt, "m1")
    run(rt)
    assert retried(rt, rid) < redemption(rt, rid).deadline
    run(rt, retried(rt, rid))
    row = redemption(rt, rid)
    assert (row.attempts, row.next_attempt_at) == (2, row.deadline)

    sandbox.control(down=None)  # the partner is back by the deadline, and never got the order
    run(rt, row.deadline)
    assert redemption(rt, rid).failure_reason == DEADLINE_REASON
    assert sandbox.orders() == {}
    assert_all_settled(rt, sandbox)


def test_an_order_answered_after_the_timeout_is_confirmed_by_a_status_query(rt, sandbox):
    sandbox.control(timeout_then_succeed=1, hang_ms=HANG_MS)
    rid = pending_redemption(rt, "m1")

    started = time.monotonic()
    result = run(rt)
    assert time.monotonic() - started >= TIMEOUT
    assert "1 unconfirmed" in result["detail"]
    assert sandbox.delivered(rid) == 1  # the partner delivered it; the engine does not know yet
    assert account(rt, "m1") == (200, 300, 200)

    result = run(rt, retried(rt, rid))

    assert result["detail"].startswith("1 fulfilled")
    row = redemption(rt, rid)
    assert (row.status, row.attempts) == ("fulfilled", 2)
    assert row.partner_ref == sandbox.orders()[rid]["reference"]
    assert {k: sandbox.orders()[rid][k] for k in ("submissions", "queries")} == {"submissions": 1, "queries": 1}
    assert sandbox.delivered(rid) == 1
    assert account(rt, "m1") == (200, 0, 200)
    assert_all_settled(rt, sandbox)


def test_at_the_deadline_a_definite_answer_still_settles_the_redemption(rt, sandbox):
    sandbox.control(timeout_then_succeed=1, hang_ms=HANG_MS)
    late = pending_redemption(rt, "m1")
    assert "1 unconfirmed" in run(rt)["detail"]

    result = run(rt, redemption(rt, late).deadline + dt.timedelta(seconds=1))

    assert result["detail"].startswith("1 fulfilled")
    assert redemption(rt, late).status == "fulfilled"  # the final status query said so
    assert sandbox.delivered(late) == 1
    assert_all_settled(rt, sandbox)


def test_a_redemption_first_due_after_its_deadline_fails_without_a_call(rt, sandbox):
    rid = pending_redemption(rt, "m1")
    result = run(rt, redemption(rt, rid).deadline)
    assert "1 failed at the deadline" in result["detail"]
    assert redemption(rt, rid).failure_reason == DEADLINE_REASON
    assert account(rt, "m1") == (WELCOME, 0, WELCOME)
    assert sandbox.orders() == {}
    assert_all_settled(rt, sandbox)


def test_an_order_the_partner_declines_fails_and_gives_the_points_back(rt, sandbox):
    sandbox.control(failure_rate=1)
    rid = pending_redemption(rt, "m1", points=400)
    code = benefit_code("telecom", 0)

    result = run(rt)

    assert result["detail"].startswith("0 fulfilled, 1 failed") and result["errors"] == 0
    row = redemption(rt, rid)
    assert (row.status, row.failure_reason, row.attempts) == ("failed", "declined by the provider", 1)
    assert hold_status(rt, "m1", rid) == "voided"
    assert account(rt, "m1") == (WELCOME, 0, WELCOME)
    assert stock(rt, code) == STOCK
    assert event_types(rt, "m1") == ["redemption.failed"]
    assert sandbox.deliveries() == []
    assert_all_settled(rt, sandbox)


def test_a_refused_request_fails_the_redemption_and_a_missing_delivery_detail_is_never_sent(rt, sandbox):
    rt.settings = dataclasses.replace(rt.settings, partner_secret=WRONG_SECRET)
    unsigned = pending_redemption(rt, "m1")
    no_phone = pending_redemption(rt, "m2", delivery={"account_ref": "a-1"})

    run(rt)

    assert redemption(rt, unsigned).failure_reason == "the partner refused the order with HTTP 401"
    assert redemption(rt, no_phone).failure_reason == "the redemption has no phone_number for a telecom partner"
    assert account(rt, "m1") == (WELCOME, 0, WELCOME) and account(rt, "m2") == (WELCOME, 0, WELCOME)
    assert sandbox.orders() == {}
    assert_all_settled(rt, sandbox)


def test_an_order_still_processing_is_asked_about_until_it_completes(rt, sandbox):
    sandbox.control(processing_ms=300)
    rid = pending_redemption(rt, "m1", partner="video")

    assert "1 unconfirmed" in run(rt)["detail"]
    eventually("the sandbox to complete the order", lambda: sandbox.orders()[rid]["status"] == "succeeded")
    assert run(rt, retried(rt, rid))["detail"].startswith("1 fulfilled")

    assert redemption(rt, rid).status == "fulfilled"
    assert sandbox.orders()[rid]["queries"] == 1
    assert_all_settled(rt, sandbox)


def test_a_partner_not_configured_is_not_called_and_its_redemption_fails_at_the_deadline(rt, sandbox):
    rid = pending_redemption(rt, "m1", partner="telecom-gone")
    assert "1 unconfirmed" in run(rt)["detail"]
    run(rt, redemption(rt, rid).deadline)
    assert redemption(rt, rid).failure_reason == DEADLINE_REASON
    assert_all_settled(rt, sandbox)


# --- crashes and overlapping runs ----------------------------------------------------------------


def test_a_run_killed_during_its_call_leaves_the_order_to_the_next_run(rt, sandbox, database_url, tmp_path):
    sandbox.control(timeout_then_succeed=1, hang_ms=120_000)
    rid = pending_redemption(rt, "m1")
    env = environment(
        LOYALTY_DATABASE_URL=database_url,
        LOYALTY_PARTNERS=",".join(f"{k}={v}" for k, v in sandbox.partners().items()),
        LOYALTY_PARTNER_SECRET=SECRET,
        LOYALTY_PARTNER_TIMEOUT_SECONDS="60",
    )
    with (tmp_path / "job.log").open("wb") as log:
        job = subprocess.Popen([LOYALTY, "jobs", "run", "fulfilment"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while rid not in sandbox.orders():
            assert job.poll() is None and time.monotonic() < deadline, (tmp_path / "job.log").read_text()
            time.sleep(0.05)
        job.send_signal(signal.SIGKILL)  # mid-call: the partner has the order, the engine has no answer
    finally:
        job.wait(timeout=60)
    row = redemption(rt, rid)
    assert (row.status, row.attempts) == ("pending", 1)
    assert run(rt)["rows"] == 0  # its claim still stands

    run(rt, row.next_attempt_at)

    assert redemption(rt, rid).status == "fulfilled"
    assert {k: sandbox.orders()[rid][k] for k in ("submissions", "queries")} == {"submissions": 1, "queries": 1}
    assert sandbox.delivered(rid) == 1
    assert_all_settled(rt, sandbox)


def test_a_redemption_claimed_but_never_sent_is_placed_by_the_next_run(rt, sandbox):
    claimed = pending_redemption(rt, "m1", attempts=1)  # a run counted its attempt, then died before calling
    untouched = pending_redemption(rt, "m2")  # the engine died between the hold and its first run

    run(rt)

    assert redemption(rt, claimed).status == redemption(rt, untouched).status == "fulfilled"
    assert sandbox.requests(claimed) == [("GET", 404), ("POST", 201)]  # asked, heard it never got it, placed it
    assert sandbox.requests(untouched) == [("POST", 201)]
    assert redemption(rt, claimed).attempts == 2
    assert_all_settled(rt, sandbox)


@pytest.mark.postgres_only
@pytest.mark.xdist_group("races")
def test_overlapping_runs_place_each_order_once(rt, sandbox):
    sandbox.control(latency_ms=30)
    ids = [pending_redemption(rt, f"m{i % 8}", points=50) for i in range(40)]
    as_of = rt.now()
    barrier = threading.Barrier(4)

    def one_run() -> None:
        barrier.wait()
        fulfil(rt, as_of)

    threads = [threading.Thread(target=one_run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for _ in range(5):  # an answer lost to a slow machine is confirmed by a status query, never resent
        pending = [i for i in ids if redemption(rt, i).status == "pending"]
        if not pending:
            break
        run(rt, max(retried(rt, i) for i in pending))

    assert all(redemption(rt, i).status == "fulfilled" for i in ids)
    orders = sandbox.orders()
    assert sorted(orders) == sorted(ids)
    assert all(o["submissions"] == 1 for o in orders.values()), orders
    assert sorted(d["order_id"] for d in sandbox.deliveries()) == sorted(ids)
    assert_all_settled(rt, sandbox)


# --- callbacks -------------------------------------------------------------------------------------


def callback(
    client: Any,
    partner: str,
    body: Any,
    *,
    secret: str = SECRET,
    at: float | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    """POST a callback signed as the partner would sign it (``at``: when, in Unix seconds)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {
        **protocol.signed_headers(secret, raw, time.time() if at is None else at, partner=True),
        **(headers or {}),
    }
    return client.post(
        f"/v1/partners/{partner}/callbacks", data=raw, headers=headers, content_type="application/json", key=None
    )


def test_a_callback_before_the_answer_settles_the_redemption_once(rt, sandbox):
    sandbox.control(callbacks="before")
    rid = pending_redemption(rt, "m1")

    result = run(rt)

    assert result["rows"] == 1
    assert sandbox.orders()[rid]["callbacks"] == [200]  # the engine took the callback first
    row = redemption(rt, rid)
    assert row.status == "fulfilled" and row.settled
    assert event_types(rt, "m1") == ["redemption.fulfilled"]
    assert sandbox.delivered(rid) == 1
    assert account(rt, "m1") == (200, 0, 200)
    assert_all_settled(rt, sandbox)


def test_a_callback_after_a_processing_answer_settles_the_redemption(rt, sandbox):
    sandbox.control(processing_ms=200, callbacks="after")
    rid = pending_redemption(rt, "m1", partner="video")
    assert "1 unconfirmed" in run(rt)["detail"]
    eventually("the callback to settle the redemption", lambda: redemption(rt, rid).status != "pending")
    assert redemption(rt, rid).status == "fulfilled"
    # the sandbox records the engine's answer once it has read it, a moment after the engine committed
    eventually("the sandbox to record the callback's answer", lambda: sandbox.orders()[rid]["callbacks"])
    assert sandbox.orders()[rid]["callbacks"] == [200]
    assert run(rt, rt.now() + dt.timedelta(days=1))["rows"] == 0
    assert_all_settled(rt, sandbox)


def test_duplicate_and_late_callbacks_change_nothing(rt, sandbox, client):
    done = pending_redemption(rt, "m1")
    refused = pending_redemption(rt, "m2")
    body = {"order_id": done, "status": "succeeded", "reference": "TEL-42"}

    first = callback(client, "telecom", body)
    assert first.status_code == 200
    assert first.get_json() == {"order_id": done, "status": "fulfilled", "partner_ref": "TEL-42", "changed": True}
    entries = entry_count(rt)
    again = callback(client, "telecom", body)
    assert again.get_json() == {**first.get_json(), "changed": False}
    contrary = callback(client, "telecom", {"order_id": done, "status": "failed", "reason": "no"})
    assert contrary.status_code == 200 and contrary.get_json()["status"] == "fulfilled"
    assert entry_count(rt) == entries
    assert event_types(rt, "m1") == ["redemption.fulfilled"]

    processing = callback(client, "telecom", {"order_id": refused, "status": "processing"})
    assert processing.get_json() == {"order_id": refused, "status": "pending", "partner_ref": None, "changed": False}
    failed = callback(client, "telecom", {"order_id": refused, "status": "failed", "reason": "number not in service"})
    assert failed.get_json()["changed"] is True
    row = redemption(rt, refused)
    assert (row.status, row.failure_reason) == ("failed", "number not in service")
    assert account(rt, "m2") == (WELCOME, 0, WELCOME)
    late = callback(client, "telecom", {"order_id": refused, "status": "succeeded", "reference": "TEL-43"})
    assert late.get_json() == {"order_id": refused, "status": "failed", "partner_ref": None, "changed": False}

    assert run(rt)["rows"] == 0  # nothing left for the job
    assert_all_settled(rt, sandbox)


def test_a_callback_that_is_not_properly_signed_is_refused_and_changes_nothing(rt, sandbox, client):
    rid = pending_redemption(rt, "m1")
    body = {"order_id": rid, "status": "succeeded"}
    raw = json.dumps(body).encode()
    entries = entry_count(rt)
    refusals = [
        callback(client, "telecom", body, secret=WRONG_SECRET),
        callback(client, "telecom", body, at=time.time() - 301),
        callback(client, "telecom", body, at=time.time() + 301),
        callback(client, "telecom", body, headers={protocol.PARTNER_SIGNATURE: "v1=" + "0" * 64}),
        client.post("/v1/partners/telecom/callbacks", data=raw, content_type="application/json", key=None),
        client.post(  # signed for another body
            "/v1/partners/telecom/callbacks",
            data=json.dumps({**body, "status": "failed"}).encode(),
            headers=protocol.signed_headers(SECRET, raw, time.time(), partner=True),
            content_type="application/json",
            key=None,
        ),
    ]
    for r in refusals:
        assert r.status_code == 401, r.get_json()
        assert r.get_json()["type"] == "/problems/bad_signature"
    assert redemption(rt, rid).status == "pending" and entry_count(rt) == entries

    assert callback(client, "video", body).status_code == 404  # another partner's order
    assert callback(client, "nobody", body).get_json()["type"] == "/problems/partner_not_found"
    unknown = callback(client, "telecom", {"order_id": "r-none", "status": "succeeded"})
    assert (unknown.status_code, unknown.get_json()["type"]) == (404, "/problems/redemption_not_found")
    bad = callback(client, "telecom", {"order_id": rid, "status": "done", "extra": 1})
    assert bad.status_code == 422
    assert {e["field"] for e in bad.get_json()["errors"]} == {"status", "extra"}
    assert callback(client, "telecom", b"{not json").status_code == 400
    assert redemption(rt, rid).status == "pending" and entry_count(rt) == entries

    run(rt)
    assert_all_settled(rt, sandbox)


def test_each_partner_may_have_its_own_secret(rt, sandbox, client):
    rt.settings = dataclasses.replace(rt.settings, partner_secrets={"video": VIDEO_SECRET})
    rid = pending_redemption(rt, "m1", partner="video")
    body = {"order_id": rid, "status": "succeeded"}
    assert callback(client, "video", body).status_code == 401
    assert callback(client, "video", body, secret=VIDEO_SECRET).status_code == 200
    assert_all_settled(rt, sandbox)


# --- the sandbox partner itself ---------------------------------------------------------------------


def order(rid: str, deadline: dt.datetime | None = None, **delivery: str) -> Order:
    return Order(rid, "topup-50", 5000, 1, delivery or {"phone_number": "13800138000"}, deadline)


def test_the_sandbox_is_idempotent_and_refuses_late_unsigned_and_conflicting_orders(sandbox):
    telecom = adapter_for(Settings(partners=sandbox.partners(), partner_secret=SECRET), "telecom")
    assert telecom is not None
    now = dt.datetime.now(dt.UTC)
    soon = now + dt.timedelta(minutes=5)

    first = telecom.submit(order("o-1", soon), now)
    assert first.outcome == SUCCEEDED and first.reference
    assert telecom.submit(order("o-1", soon), now) == first  # the same order, not a second one
    assert telecom.status("o-1", now) == first
    assert sandbox.delivered("o-1") == 1

    late = telecom.submit(order("o-2", now - dt.timedelta(seconds=1)), now)
    assert (late.outcome, late.reason) == (FAILED, "the order arrived after its deadline")
    assert telecom.status("o-2", now).outcome == FAILED
    assert telecom.status("o-3", now).outcome == NOT_FOUND

    conflict = telecom.submit(order("o-1", soon, phone_number="13900000000"), now)
    assert conflict.outcome == "unknown" and conflict.reason == "HTTP 409"

    status, answer = http_json("POST", f"{sandbox.url}/telecom/orders", {"order_id": "o-4"})
    assert (status, answer["error"]) == (401, "the request is not signed: send the timestamp and signature headers")
    stale = protocol.signed_headers(SECRET, b"", time.time() - 600)
    assert http_json("GET", f"{sandbox.url}/telecom/orders/o-1", headers=stale)[0] == 401
    assert [d["order_id"] for d in sandbox.deliveries()] == ["o-1"]


def test_the_sandbox_takes_its_behaviour_from_the_command_line_and_a_seed_makes_it_repeatable(tmp_path):
    def declined(run: int) -> set[str]:
        partner = SandboxPartner(tmp_path / f"seeded-{run}.log", "--failure-rate", "0.5", "--seed", "7")
        try:
            assert partner.control()["failure_rate"] == 0.5
            settings = Settings(partners=partner.partners(), partner_secret=SECRET, partner_timeout_seconds=TIMEOUT)
            video = adapter_for(settings, "video")
            assert video is not None
            now = dt.datetime.now(dt.UTC)
            answers = {f"o-{i}": video.submit(order(f"o-{i}", account_ref="a"), now) for i in range(20)}
            assert len(partner.deliveries()) == sum(a.outcome == SUCCEEDED for a in answers.values())
            return {k for k, a in answers.items() if a.outcome == FAILED}
        finally:
            partner.close()

    first = declined(1)
    assert 0 < len(first) < 20
    assert declined(2) == first


def test_the_sandbox_refuses_a_bad_control_request(sandbox):
    status, answer = http_json("POST", f"{sandbox.url}/_control", {"failure_rate": 2})
    assert (status, answer["error"]) == (400, "failure_rate: must be a number from 0 to 1")
    assert http_json("POST", f"{sandbox.url}/_control", {"colour": "red"})[0] == 400
    assert sandbox.control()["failure_rate"] == 0


# --- settings ---------------------------------------------------------------------------------------


def test_partner_settings_come_from_the_environment():
    defaults = Settings()
    assert (
        defaults.partners
        == DEFAULT_PARTNERS
        == parse_partners("telecom=http://127.0.0.1:8090/telecom,video=http://127.0.0.1:8090/video")
    )
    assert defaults.partner_secret_for("telecom") == DEV_PARTNER_SECRET
    assert (defaults.partner_timeout_seconds, defaults.partner_max_attempts) == (5, 10)

    s = Settings.from_env(
        {
            "LOYALTY_PARTNERS": " telecom-cmcc=https://cmcc.example/api/ , video=http://v.example ",
            "LOYALTY_PARTNER_SECRET": "shared-secret-0123456789",
            "LOYALTY_PARTNER_SECRET_TELECOM_CMCC": CMCC_SECRET,
            "LOYALTY_PARTNER_TIMEOUT_SECONDS": "3",
            "LOYALTY_PARTNER_BACKOFF_SECONDS": "2",
            "LOYALTY_PARTNER_BACKOFF_MAX_SECONDS": "60",
            "LOYALTY_PARTNER_MAX_ATTEMPTS": "4",
        }
    )
    assert s.partners == {"telecom-cmcc": "https://cmcc.example/api", "video": "http://v.example"}
    assert s.partner_secret_for("telecom-cmcc") == CMCC_SECRET
    assert s.partner_secret_for("video") == "shared-secret-0123456789"
    assert (s.partner_timeout_seconds, s.partner_backoff_seconds, s.partner_backoff_max_seconds) == (3, 2, 60)
    assert s.partner_max_attempts == 4
    cmcc = adapter_for(s, "telecom-cmcc")
    assert cmcc is not None and cmcc.target == "phone_number" and cmcc.secret == CMCC_SECRET
    assert Settings.from_env({"LOYALTY_PARTNERS": ""}).partners == {}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LOYALTY_PARTNERS": "gym=http://g.example"}, "starts with no partner kind"),
        ({"LOYALTY_PARTNERS": "telecom"}, "is not NAME=URL"),
        ({"LOYALTY_PARTNERS": "telecom=ftp://t.example"}, "is not an http(s) URL"),
        ({"LOYALTY_PARTNERS": "telecom=http://user:pw@t.example"}, "without credentials"),
        ({"LOYALTY_PARTNERS": "Telecom=http://t.example"}, "is not a partner name"),
        ({"LOYALTY_PARTNER_SECRET": "short"}, "LOYALTY_PARTNER_SECRET must be at least 16"),
        ({"LOYALTY_PARTNER_SECRET_VIDEO": "short"}, "LOYALTY_PARTNER_SECRET_VIDEO must be at least 16"),
        ({"LOYALTY_PARTNER_TIMEOUT_SECONDS": "1.5"}, "must be an integer"),
        ({"LOYALTY_PARTNER_MAX_ATTEMPTS": "0"}, "must be a positive integer"),
        ({"LOYALTY_PARTNER_BACKOFF_SECONDS": "10", "LOYALTY_PARTNER_BACKOFF_MAX_SECONDS": "5"}, "at least"),
    ],
)
def test_bad_partner_settings_are_refused(env, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Settings.from_env(env)

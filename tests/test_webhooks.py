"""Webhooks: subscriptions through the API, and the delivery job against a real HTTP receiver on loopback.

Tests of the job are marked ``committed``: it sends from threads, and it reads the feed, which
on PostgreSQL shows only events of transactions that have ended."""

from __future__ import annotations

import base64
import collections
import dataclasses
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from loyalty.config import Settings
from loyalty.db import transaction
from loyalty.events import webhooks
from loyalty.events.models import events
from loyalty.events.service import emit
from loyalty.jobs.runner import run_job
from loyalty.runtime import Outcome, Runtime
from tests.conftest import make_key
from tests.helpers import enrol, txn
from tests.probe_jobs import environment
from tests.test_events_feed import settle

SECRET = "whsec-0123456789abcdef"  # noqa: S105  (a test secret)
#: the senders' HTTP timeout in these tests, in seconds
TIMEOUT = 2
#: attempts before a delivery is dead in these tests
ATTEMPTS = 4


# --- a webhook receiver ------------------------------------------------------------------------


@dataclasses.dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event_id(self) -> str:
        return self.headers["X-Loyalty-Event-Id"]


class Receiver:
    """An HTTP/1.1 server on 127.0.0.1 that keeps connections open, records every request and
    answers as it is told.

    It answers 200 unless ``script`` holds answers for the next requests (a
    status, or ``"hang"``: nothing until well past the sender's timeout) or
    ``by_event`` an answer for every request of one event id. With
    ``drop_after_answer`` it closes each connection after answering without
    saying so (as a server whose keep-alive time ran out)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.received: list[Received] = []
        #: the answer to each request, in the order of ``received``
        self.answers: list[int | str] = []
        self.script: list[int | str] = []
        self.by_event: dict[str, int] = {}
        #: (path, event id) answered 503 the first time, as they come
        self.fail_once: set[tuple[str, str]] = set()
        #: seconds to wait before each answer
        self.delay = 0.0
        self.drop_after_answer = False
        #: TCP connections accepted
        self.connections = 0
        self.lock = threading.Lock()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with receiver.lock:
                    receiver.connections += 1

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                answer = receiver.answer(Received(self.path, dict(self.headers), body))
                if answer == "hang":
                    receiver.release.wait(TIMEOUT + 2)
                    answer = 200
                time.sleep(receiver.delay)
                self.send_response(int(answer))
                if 300 <= int(answer) < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()
                if receiver.drop_after_answer:
                    self.wfile.flush()
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (the base class's name)
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 64  # the listen backlog: room for every sender of several runs at once

            def handle_error(self, request: Any, client_address: Any) -> None:
                # A sender that gave up has closed its end: no fault of the receiver's.
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_port}/hooks/loyalty"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def answer(self, request: Received) -> int | str:
        with self.lock:
            self.received.append(request)
            if request.event_id in self.by_event:
                answer = self.by_event[request.event_id]
            elif (request.path, request.event_id) in self.fail_once:
                self.fail_once.discard((request.path, request.event_id))
                answer = 503
            else:
                answer = self.script.pop(0) if self.script else 200
            self.answers.append(answer)
            return answer

    def ids(self) -> list[str]:
        with self.lock:
            return [r.event_id for r in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.release.set()
    r.server.shutdown()
    r.server.server_close()
    r.thread.join(timeout=5)


def tuned(runtime: Runtime, **settings: Any) -> Runtime:
    """The runtime with other settings (same engine, programmes and clock)."""
    return dataclasses.replace(runtime, settings=dataclasses.replace(runtime.settings, **settings))


@pytest.fixture
def rt(runtime: Runtime) -> Runtime:
    """The runtime the delivery job runs with: a short HTTP timeout, few attempts."""
    return tuned(runtime, webhook_timeout_seconds=TIMEOUT, webhook_max_attempts=ATTEMPTS)


# --- helpers -------------------------------------------------------------------------------------


def subscribe(client: Any, url: str, **over: Any) -> dict[str, Any]:
    r = client.post("/v1/webhooks", json={"url": url, "secret": SECRET, **over})
    assert r.status_code == 201, r.get_json()
    return r.get_json()  # type: ignore[no-any-return]


def event(rt: Runtime, type_: str = "points.accrued", member_id: str | None = "m1", **payload: Any) -> str:
    """Emit one event now, in its own transaction; returns its id."""
    with transaction(rt.engine) as conn:
        emit(conn, type_, member_id=member_id, payload=payload or {"points": 100}, now=rt.now())
        return str(conn.execute(sa.select(sa.func.max(events.c.id))).scalar_one())


def run(rt: Runtime) -> dict[str, Any]:
    """Run the webhooks job as the scheduler does, once every emitted event is in the feed."""
    settle(rt.engine)
    result = run_job(rt, "webhooks")
    assert result["status"] == "succeeded", result
    return result


def deliveries(client: Any, subscription_id: str, query: str = "") -> list[dict[str, Any]]:
    r = client.get(f"/v1/webhooks/{subscription_id}/deliveries{query}")
    assert r.status_code == 200, r.get_json()
    return r.get_json()["deliveries"]  # type: ignore[no-any-return]


def delivery(client: Any, subscription_id: str, event_id: str) -> dict[str, Any]:
    return next(d for d in deliveries(client, subscription_id, "?limit=200") if d["event_id"] == event_id)


def when(timestamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(timestamp)


def iso(moment: dt.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def verify(secret: str, headers: dict[str, str], body: bytes, now: float, tolerance: int = 300) -> bool:
    """The README's receiver-side check, with the time passed in."""
    timestamp = headers["X-Loyalty-Timestamp"]
    expected = "v1=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return abs(now - int(timestamp)) <= tolerance and hmac.compare_digest(expected, headers["X-Loyalty-Signature"])


def audit_lines(runtime: Runtime) -> list[Any]:
    """The audit lines about webhooks, oldest first."""
    with runtime.engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT actor, action, object_type, object_id, before, after FROM audit_log "
                    "WHERE action LIKE 'webhook.%' ORDER BY id"
                )
            )
        )


def table_counts(runtime: Runtime) -> dict[str, int]:
    tables = ("webhook_subscriptions", "webhook_deliveries", "audit_log", "idempotency_keys")
    with runtime.engine.connect() as conn:
        return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in tables}


# --- subscriptions through the API ---------------------------------------------------------------


def test_a_subscription_is_created_listed_and_shown_without_its_secret(client, runtime, receiver):
    sub = subscribe(client, receiver.url, event_types=["points.accrued", "tier.changed", "points.accrued"])
    assert sub["url"] == receiver.url
    assert sub["event_types"] == ["points.accrued", "tier.changed"]
    assert sub["active"] is True
    assert sub["secret_hint"] == "****cdef"  # noqa: S105  (its last four characters)
    assert sub["created_by"] == "test"
    assert sub["created_at"] == "2026-06-15T10:00:00Z"

    listed = client.get("/v1/webhooks")
    assert listed.status_code == 200
    assert listed.get_json()["subscriptions"] == [sub]
    shown = client.get(f"/v1/webhooks/{sub['subscription_id']}")
    assert shown.status_code == 200
    assert shown.get_json() == {**sub, "deliveries": {"pending": 0, "delivered": 0, "dead": 0}}
    for response in (listed, shown):
        assert SECRET not in response.get_data(as_text=True)

    [line] = audit_lines(runtime)
    assert (line.actor, line.action, line.object_type, line.object_id) == (
        "test",
        "webhook.created",
        "webhook_subscription",
        sub["subscription_id"],
    )
    assert json.loads(line.after)["url"] == receiver.url
    assert SECRET not in line.after


def test_an_idempotency_key_creates_one_subscription_and_stores_no_secret(client, runtime, receiver):
    headers = {"Idempotency-Key": "create-hook-1"}
    body = {"url": receiver.url, "secret": SECRET}
    first = client.post("/v1/webhooks", json=body, headers=headers)
    again = client.post("/v1/webhooks", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert table_counts(runtime)["webhook_subscriptions"] == 1
    with runtime.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT response_body FROM idempotency_keys")).scalar_one()
    assert SECRET not in stored


def hook(**fields: Any) -> dict[str, Any]:
    """A subscription request, valid unless ``fields`` say otherwise (None: leave the field out)."""
    body = {"url": "https://example.com/hook", "secret": SECRET, **fields}
    return {k: v for k, v in body.items() if v is not None}


BAD_SUBSCRIPTIONS = [
    ("missing url", hook(url=None), "url"),
    ("url not a string", hook(url=42), "url"),
    ("ftp url", hook(url="ftp://example.com/hook"), "url"),
    ("url without scheme", hook(url="example.com/hook"), "url"),
    ("url without host", hook(url="https:///hook"), "url"),
    ("url with credentials", hook(url="https://user:pw@example.com/hook"), "url"),
    ("url with a space", hook(url="https://example.com/a hook"), "url"),
    ("url not ASCII", hook(url="https://例子.测试/hook"), "url"),
    ("url with a bad port", hook(url="https://example.com:99999/hook"), "url"),
    ("url with port 0", hook(url="https://example.com:0/hook"), "url"),
    ("url with an IPv6 literal", hook(url="https://[::1]/hook"), "url"),
    ("url with a broken bracket host", hook(url="https://[zz/hook"), "url"),
    ("url with an empty host and a port", hook(url="https://:443/hook"), "url"),
    ("url with an upper-case scheme", hook(url="HTTPS://example.com/hook"), "url"),
    ("empty url", hook(url=""), "url"),
    ("url too long", hook(url="https://example.com/" + "a" * 1981), "url"),
    ("missing secret", hook(secret=None), "secret"),
    ("secret of 15 characters", hook(secret="s" * 15), "secret"),
    ("secret of 201 characters", hook(secret="s" * 201), "secret"),
    ("secret not a string", hook(secret=1234567890123456789), "secret"),
    ("unknown event type", hook(event_types=["points.accrued", "x.y"]), "event_types.1"),
    ("event_types not a list", hook(event_types="points.accrued"), "event_types"),
    ("event_types null", {**hook(), "event_types": None}, "event_types"),
    ("unknown field", hook(active=False), "active"),
    ("not an object", ["https://example.com/hook"], "body"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_SUBSCRIPTIONS, ids=[c[0] for c in BAD_SUBSCRIPTIONS])
def test_a_bad_subscription_is_refused_naming_the_field_and_writes_nothing(client, runtime, case, body, field):
    before = table_counts(runtime)
    r = client.post("/v1/webhooks", json=body)
    assert r.status_code == 422
    assert r.content_type == "application/problem+json"
    assert r.get_json()["field"] == field
    assert table_counts(runtime) == before


def test_the_longest_url_is_accepted(client):
    url = "https://example.com/" + "a" * 1980
    assert len(url) == 2000
    assert subscribe(client, url)["url"] == url


def test_webhook_endpoints_need_the_admin_scope(client, runtime, receiver):
    sub = subscribe(client, receiver.url)["subscription_id"]
    reader = make_key(runtime, "read", "accrue")
    calls = [
        ("GET", "/v1/webhooks", None),
        ("POST", "/v1/webhooks", {"url": receiver.url, "secret": SECRET}),
        ("GET", f"/v1/webhooks/{sub}", None),
        ("DELETE", f"/v1/webhooks/{sub}", None),
        ("GET", f"/v1/webhooks/{sub}/deliveries", None),
        ("POST", f"/v1/webhooks/{sub}/deliveries/1/redeliver", None),
    ]
    before = table_counts(runtime)
    for method, path, body in calls:
        assert client.open(method, path, json=body, key=None).status_code == 401, path
        assert client.open(method, path, json=body, key=reader).status_code == 403, path
    assert table_counts(runtime) == before
    assert client.get(f"/v1/webhooks/{sub}").get_json()["active"] is True


def test_unknown_subscriptions_and_deliveries_are_not_found(client, rt, receiver):
    sub = subscribe(client, receiver.url)["subscription_id"]
    for method, path in [
        ("GET", "/v1/webhooks/nope"),
        ("DELETE", "/v1/webhooks/nope"),
        ("GET", "/v1/webhooks/nope/deliveries"),
        ("POST", "/v1/webhooks/nope/deliveries/1/redeliver"),
    ]:
        r = client.open(method, path)
        assert r.status_code == 404, path
        assert r.get_json()["field"] == "subscription_id"
    for event_id in ("1", "abc", "99999999999999999999", "9223372036854775808"):
        r = client.post(f"/v1/webhooks/{sub}/deliveries/{event_id}/redeliver")
        assert r.status_code == 404, event_id
        assert r.get_json()["field"] == "event_id"


@pytest.mark.committed
def test_deactivating_stops_deliveries_and_keeps_the_history(client, rt, clock, receiver):
    sub = subscribe(client, receiver.url)["subscription_id"]
    first = event(rt)
    receiver.by_event[first] = 500
    run(rt)
    assert receiver.ids() == [first]

    r = client.open("DELETE", f"/v1/webhooks/{sub}")
    assert r.status_code == 200
    assert r.get_json()["active"] is False
    assert r.get_json()["deliveries"] == {"pending": 1, "delivered": 0, "dead": 0}
    assert client.open("DELETE", f"/v1/webhooks/{sub}").status_code == 200  # again: no change

    receiver.by_event.clear()
    event(rt)
    clock.advance(days=1)
    run(rt)
    assert receiver.ids() == [first]  # neither the pending delivery nor the new event
    assert [d["event_id"] for d in deliveries(client, sub)] == [first]
    assert client.get("/v1/webhooks").get_json()["subscriptions"][0]["active"] is False

    refused = client.post(f"/v1/webhooks/{sub}/deliveries/{first}/redeliver")
    assert refused.status_code == 409
    assert refused.get_json()["field"] == "subscription_id"
    deactivations = [line for line in audit_lines(rt) if line.action == "webhook.deactivated"]
    assert len(deactivations) == 1
    assert json.loads(deactivations[0].before)["active"] is True
    assert json.loads(deactivations[0].after)["active"] is False


@pytest.mark.committed
def test_deliveries_page_newest_first_and_filter_by_status(client, rt, receiver):
    sub = subscribe(client, receiver.url)["subscription_id"]
    ids = [event(rt, member_id=f"m{i}") for i in range(5)]
    receiver.by_event[ids[1]] = 500
    receiver.by_event[ids[3]] = 500
    run(rt)

    r = client.get(f"/v1/webhooks/{sub}/deliveries?limit=2").get_json()
    seen = [d["event_id"] for d in r["deliveries"]]
    while r["next_cursor"]:
        r = client.get(f"/v1/webhooks/{sub}/deliveries?limit=2&cursor={r['next_cursor']}").get_json()
        seen += [d["event_id"] for d in r["deliveries"]]
    assert seen == ids[::-1]
    assert [d["event_id"] for d in deliveries(client, sub, "?status=pending")] == [ids[3], ids[1]]
    assert [d["event_id"] for d in deliveries(client, sub, "?status=delivered")] == [ids[4], ids[2], ids[0]]
    assert deliveries(client, sub, "?status=dead") == []
    assert client.get(f"/v1/webhooks/{sub}").get_json()["deliveries"] == {"pending": 2, "delivered": 3, "dead": 0}
    for query, field in [
        ("?status=lost", "status"),
        ("?limit=0", "limit"),
        ("?limit=201", "limit"),
        ("?cursor=x", "cursor"),
    ]:
        bad = client.get(f"/v1/webhooks/{sub}/deliveries{query}")
        assert bad.status_code == 422, query
        assert bad.get_json()["field"] == field


# --- delivery ------------------------------------------------------------------------------------


@pytest.mark.committed
def test_a_delivery_is_the_feed_event_signed_with_the_secret(client, rt, clock, receiver):
    sub = subscribe(client, receiver.url)["subscription_id"]
    event_id = event(rt, member_id="m1", points=120)
    result = run(rt)
    assert (result["rows"], result["errors"]) == (2, 0)  # one queued, one delivered
    assert result["detail"].startswith("1 queued, 1 delivered")

    [request] = receiver.received
    headers = request.headers
    assert request.path == "/hooks/loyalty"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Loyalty-Event-Id"] == event_id
    assert headers["X-Loyalty-Event-Type"] == "points.accrued"
    assert headers["X-Loyalty-Timestamp"] == str(int(clock().timestamp()))
    [in_feed] = client.get("/v1/events").get_json()["events"]
    assert json.loads(request.body) == in_feed
    assert in_feed["event_id"] == event_id
    assert in_feed["data"] == {"points": 120}

    now = clock().timestamp()
    assert verify(SECRET, headers, request.body, now)
    assert not verify("another-secret-0123456789", headers, request.body, now)
    assert not verify(SECRET, headers, request.body.replace(b"120", b"999"), now)
    assert not verify(SECRET, {**headers, "X-Loyalty-Timestamp": str(int(now) + 1)}, request.body, now)
    assert not verify(SECRET, headers, request.body, now + 301)  # a replay after the tolerance

    assert delivery(client, sub, event_id) == {
        "subscription_id": sub,
        "event_id": event_id,
        "event_type": "points.accrued",
        "member_id": "m1",
        "status": "delivered",
        "attempts": 1,
        "next_attempt_at": None,
        "last_status": 200,
        "last_error": None,
        "delivered_at": iso(clock()),
        "created_at": iso(clock()),
    }
    clock.advance(days=1)
    assert run(rt)["rows"] == 0
    assert receiver.ids() == [event_id]  # a 2xx is final


@pytest.mark.committed
def test_a_members_events_from_the_api_arrive_in_feed_order(client, rt, receiver):
    subscribe(client, receiver.url)
    enrol(client, "C0001")
    enrol(client, "C0002")
    for i in range(3):
        r = client.post("/v1/transactions", json=txn(f"T{i}", "C0001", amount=10_000 * (i + 1)))
        assert r.status_code == 201, r.get_json()
    run(rt)

    feed = client.get("/v1/events?limit=500").get_json()["events"]
    assert {"member.enrolled", "points.accrued"} <= {e["type"] for e in feed}
    with receiver.lock:
        received = list(receiver.received)
    assert sorted(r.event_id for r in received) == sorted(e["event_id"] for e in feed)
    for member in ("C0001", "C0002"):
        in_feed = [e["event_id"] for e in feed if e["member_id"] == member]
        assert [r.event_id for r in received if json.loads(r.body)["member_id"] == member] == in_feed
    assert all(verify(SECRET, r.headers, r.body, rt.now().timestamp()) for r in received)


@pytest.mark.committed
def test_a_new_subscription_receives_events_from_its_creation_on(client, rt, receiver):
    event(rt, member_id="before")
    settle(rt.engine)
    end = client.get("/v1/events").get_json()["next_cursor"]
    sub = subscribe(client, receiver.url)
    assert sub["cursor"] == end
    later = event(rt, member_id="after")
    run(rt)
    assert receiver.ids() == [later]


@pytest.mark.committed
def test_only_the_subscribed_types_are_delivered(client, rt, receiver):
    sub = subscribe(client, receiver.url, event_types=["points.accrued", "tier.changed"])["subscription_id"]
    event(rt, "member.enrolled")
    accrued = event(rt, "points.accrued")
    event(rt, "member.birthday")
    tier = event(rt, "tier.changed")
    event(rt, "lifecycle.changed")
    run(rt)
    assert receiver.ids() == [accrued, tier] or receiver.ids() == [tier, accrued]
    assert {r.headers["X-Loyalty-Event-Type"] for r in receiver.received} == {"points.accrued", "tier.changed"}
    assert {d["event_id"] for d in deliveries(client, sub)} == {accrued, tier}
    # The cursor moved past the events it does not want too.
    assert client.get(f"/v1/webhooks/{sub}").get_json()["cursor"] == client.get("/v1/events").get_json()["next_cursor"]


@pytest.mark.committed
def test_fan_out_goes_in_chunks_one_transaction_each(client, rt, receiver, monkeypatch):
    monkeypatch.setattr(webhooks, "FANOUT_CHUNK", 2)
    sub = subscribe(client, receiver.url)["subscription_id"]
    ids = [event(rt, member_id=f"m{i}") for i in range(5)]
    assert run(rt)["detail"].startswith("5 queued, 5 delivered")
    assert sorted(receiver.ids(), key=int) == ids
    assert client.get(f"/v1/webhooks/{sub}").get_json()["cursor"] == client.get("/v1/events").get_json()["next_cursor"]


@pytest.mark.committed
def test_failures_are_retried_after_an_exponential_backoff(client, rt, clock, receiver, caplog):
    sub = subscribe(client, receiver.url)["subscription_id"]
    event_id = event(rt)
    receiver.script = [500, 503]
    start = clock()

    result = run(rt)
    assert (result["rows"], result["errors"]) == (2, 1)
    first = delivery(client, sub, event_id)
    assert (first["status"], first["attempts"], first["last_status"], first["last_error"]) == (
        "pending",
        1,
        500,
        "HTTP 500",
    )
    due = when(first["next_attempt_at"])
    assert start < due <= start + dt.timedelta(seconds=30)

    run(rt)  # not due yet
    assert len(receiver.received) == 1
    clock.now = due
    run(rt)
    second = delivery(client, sub, event_id)
    assert (second["status"], second["attempts"], second["last_status"]) == ("pending", 2, 503)
    again = when(second["next_attempt_at"])
    assert due < again <= due + dt.timedelta(seconds=60)

    clock.now = again - dt.timedelta(microseconds=1)
    run(rt)
    assert len(receiver.received) == 2
    clock.now = again
    run(rt)
    third = delivery(client, sub, event_id)
    assert (third["status"], third["attempts"], third["last_status"], third["last_error"]) == (
        "delivered",
        3,
        200,
        None,
    )
    assert receiver.ids() == [event_id] * 3

    failures = [r for r in caplog.records if r.name == "loyalty.events.webhooks"]
    assert len(failures) == 2
    assert all(sub in r.getMessage() and event_id in r.getMessage() for r in failures)
    assert SECRET not in caplog.text


@pytest.mark.committed
def test_a_delivery_is_dead_after_the_last_attempt(client, rt, clock, receiver):
    sub = subscribe(client, receiver.url)["subscription_id"]
    event_id = event(rt)
    receiver.by_event[event_id] = 500
    for attempt in range(1, ATTEMPTS + 1):
        assert run(rt)["errors"] == 1
        current = delivery(client, sub, event_id)
        assert current["attempts"] == attempt
        if attempt < ATTEMPTS:
            assert current["status"] == "pending"
            clock.now = when(current["next_attempt_at"])
    assert (current["status"], current["last_status"], current["next_attempt_at"]) == ("dead", 500, None)
    assert client.get(f"/v1/webhooks/{sub}").get_json()["deliveries"] == {"pending": 0, "delivered": 0, "dead": 1}

    clock.advance(days=30)
    assert run(rt)["rows"] == 0
    assert receiver.ids() == [event_id] * ATTEMPTS


@pytest.mark.committed
def test_a_timeout_is_a_failure_and_the_retry_carries_the_same_event_id(client, rt, clock, receiver):
    """At least once: the receiver got the event but the answer came too late, so it gets it again
    and deduplicates on X-Loyalty-Event-Id."""
    sub = subscribe(client, receiver.url)["subscription_id"]
    event_id = event(rt)
    receiver.script = ["hang"]
    started = time.monotonic()
    run(rt)
    assert time.monotonic() - started >= TIMEOUT
    first = delivery(client, sub, event_id)
    assert (first["status"], first["attempts"], first["last_status"]) == ("pending", 1, None)
    assert first["last_error"] == f"no answer within {TIMEOUT} s"

    clock.now = when(first["next_attempt_at"])
    run(rt)
    assert delivery(client, sub, event_id)["status"] == "delivered"
    assert receiver.ids() == [event_id, event_id]
    assert receiver.received[0].body == receiver.received[1].body
    assert len({r.event_id for r in receiver.received}) == 1
    assert all(verify(SECRET, r.headers, r.body, clock().timestamp()) for r in receiver.received)


@pytest.mark.committed
def test_a_refused_connection_is_a_failure(client, rt):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sub = subscribe(client, f"http://127.0.0.1:{port}/hook")["subscription_id"]
    event_id = event(rt)
    assert run(rt)["errors"] == 1
    failed = delivery(client, sub, event_id)
    assert (failed["status"], failed["attempts"], failed["last_status"]) == ("pending", 1, None)
    assert failed["last_error"].startswith("connection failed")


@pytest.mark.committed
def test_a_redirect_is_not_followed_and_is_a_failure(client, rt, receiver):
    sub = subscribe(client, receiver.url)["subscription_id"]
    event_id = event(rt)
    receiver.script = [302]
    run(rt)
    assert [r.path for r in receiver.received] == ["/hooks/loyalty"]
    failed = delivery(client, sub, event_id)
    assert (failed["status"], failed["last_status"], failed["last_error"]) == ("pending", 302, "HTTP 302")


@pytest.mark.committed
def test_redelivery_by_hand_sends_a_dead_or_delivered_delivery_again(client, runtime, clock, receiver):
    rt = tuned(runtime, webhook_timeout_seconds=TIMEOUT, webhook_max_attempts=1)
    sub = subscribe(client, receiver.url)["subscription_id"]
    event_id = event(rt)
    receiver.by_event[event_id] = 500
    run(rt)
    assert delivery(client, sub, event_id)["status"] == "dead"

    receiver.by_event.clear()
    clock.advance(hours=1)
    r = client.post(f"/v1/webhooks/{sub}/deliveries/{event_id}/redeliver")
    assert r.status_code == 200
    pending = r.get_json()
    assert (pending["status"], pending["attempts"], pending["next_attempt_at"], pending["delivered_at"]) == (
        "pending",
        0,
        iso(clock()),
        None,
    )
    run(rt)
    assert delivery(client, sub, event_id)["status"] == "delivered"

    assert client.post(f"/v1/webhooks/{sub}/deliveries/{event_id}/redeliver").get_json()["status"] == "pending"
    run(rt)
    done = delivery(client, sub, event_id)
    assert (done["status"], done["attempts"], done["delivered_at"]) == ("delivered", 1, iso(clock()))
    assert receiver.ids() == [event_id] * 3

    lines = [line for line in audit_lines(rt) if line.action == "webhook.redelivery_requested"]
    assert [(line.actor, line.object_id) for line in lines] == [("test", f"{sub}:{event_id}")] * 2
    assert [json.loads(line.before)["status"] for line in lines] == ["dead", "delivered"]


@pytest.mark.committed
def test_a_members_next_event_waits_while_an_earlier_one_is_failing(client, rt, clock, receiver):
    sub = subscribe(client, receiver.url)["subscription_id"]
    a1 = event(rt, member_id="A")
    b1 = event(rt, member_id="B")
    a2 = event(rt, member_id="A")
    receiver.by_event[a1] = 500

    run(rt)
    assert sorted(receiver.ids()) == sorted([a1, b1])  # B's goes; A's second waits
    assert delivery(client, sub, a2)["attempts"] == 0
    clock.now = when(delivery(client, sub, a1)["next_attempt_at"])
    run(rt)
    assert receiver.ids()[2:] == [a1]

    del receiver.by_event[a1]
    clock.now = when(delivery(client, sub, a1)["next_attempt_at"])
    run(rt)  # A's first, then in the same run its second
    assert receiver.ids()[3:] == [a1, a2]
    assert [delivery(client, sub, i)["status"] for i in (a1, b1, a2)] == ["delivered"] * 3


@pytest.mark.committed
def test_a_dead_delivery_no_longer_holds_back_the_members_next_event(client, runtime, receiver):
    rt = tuned(runtime, webhook_timeout_seconds=TIMEOUT, webhook_max_attempts=1)
    sub = subscribe(client, receiver.url)["subscription_id"]
    a1 = event(rt, member_id="A")
    a2 = event(rt, member_id="A")
    receiver.by_event[a1] = 500
    run(rt)
    assert receiver.ids() == [a1, a2]
    assert [delivery(client, sub, i)["status"] for i in (a1, a2)] == ["dead", "delivered"]


@pytest.mark.committed
@pytest.mark.xdist_group("races")
def test_overlapping_runs_send_each_delivery_once(client, runtime, clock, receiver, monkeypatch):
    """Four runs at once, fanning out in small chunks: each event is queued once and sent once,
    each member's in order."""
    monkeypatch.setattr(webhooks, "FANOUT_CHUNK", 4)
    rt = tuned(runtime, webhook_timeout_seconds=10)
    subscribe(client, receiver.url)
    members = [f"m{i}" for i in range(8)]
    with transaction(rt.engine) as conn:
        for n in range(5):
            for member in members:
                emit(conn, "points.accrued", member_id=member, payload={"n": n}, now=clock())
    settle(rt.engine)
    receiver.delay = 0.01
    barrier = threading.Barrier(4)

    def one_run(_: int) -> Outcome:
        barrier.wait(timeout=10)
        return webhooks.deliver(rt, clock())

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(one_run, range(4)))

    ids = receiver.ids()
    assert len(ids) == len(set(ids)) == 40
    assert sum(o.rows for o in outcomes) == 80  # 40 queued and 40 delivered, between them
    assert sum(o.errors for o in outcomes) == 0
    with rt.engine.connect() as conn:
        statuses = conn.execute(sa.text("SELECT status, count(*) FROM webhook_deliveries GROUP BY status")).all()
    assert [tuple(s) for s in statuses] == [("delivered", 40)]
    by_member: dict[str, list[int]] = {}
    for r in receiver.received:
        body = json.loads(r.body)
        by_member.setdefault(body["member_id"], []).append(body["data"]["n"])
    assert by_member == {m: [0, 1, 2, 3, 4] for m in members}


def subscribe_many(client: Any, receiver: Receiver, count: int) -> dict[str, str]:
    """``count`` subscriptions to the receiver, each at a path of its own: path -> subscription id."""
    return {f"/hooks/loyalty/{i}": subscribe(client, f"{receiver.url}/{i}")["subscription_id"] for i in range(count)}


def emit_for(rt: Runtime, members: list[str], per_member: int) -> dict[str, list[str]]:
    """``per_member`` events of each member, in transactions of a few events of several members
    each (as bookings write them); returns each member's event ids in feed order."""
    ids: dict[str, list[str]] = {m: [] for m in members}
    for n in range(per_member):
        for start in range(0, len(members), 5):
            with transaction(rt.engine) as conn:
                for member in members[start : start + 5]:
                    emit(conn, "points.accrued", member_id=member, payload={"n": n}, now=rt.now())
                    ids[member].append(str(conn.execute(sa.select(sa.func.max(events.c.id))).scalar_one()))
    settle(rt.engine)
    return ids


def undelivered(rt: Runtime) -> int:
    with rt.engine.connect() as conn:
        query = sa.text("SELECT count(*) FROM webhook_deliveries WHERE status <> 'delivered'")
        return int(conn.execute(query).scalar_one())


def assert_in_order_once(receiver: Receiver, paths: list[str], feed: dict[str, list[str]]) -> None:
    """For every subscription: each event answered 2xx exactly once, and no event of a member sent
    before every earlier event of the member had been answered 2xx (requests in arrival order)."""
    with receiver.lock:
        requests = list(zip(receiver.received, receiver.answers, strict=True))
    place = {event_id: (member, i) for member, ids in feed.items() for i, event_id in enumerate(ids)}
    for path in paths:
        accepted: set[str] = set()
        for request, answer in ((r, a) for r, a in requests if r.path == path):
            member, i = place[request.event_id]
            earlier = feed[member][:i]
            assert set(earlier) <= accepted, f"{path}: event {request.event_id} of {member} sent before {earlier}"
            if answer == 200:
                assert request.event_id not in accepted, f"{path}: event {request.event_id} delivered twice"
                accepted.add(request.event_id)
        assert accepted == set(place), path


@pytest.mark.committed
@pytest.mark.xdist_group("races")
def test_concurrent_runs_send_each_members_events_once_in_order_through_failures(
    client, rt, clock, receiver, monkeypatch
):
    """Four runs at once over three subscriptions, in small claims, while a fifth of the deliveries
    fail at their first attempt: each event is delivered once to each subscription, and a member's
    next event is never sent before the previous one was delivered."""
    monkeypatch.setattr(webhooks, "BATCH", 16)
    monkeypatch.setattr(webhooks, "FANOUT_CHUNK", 40)
    rt = tuned(rt, webhook_timeout_seconds=10)  # no timeout on a loaded machine: only the failures made here
    paths = list(subscribe_many(client, receiver, 3))
    members = [f"m{i:02d}" for i in range(24)]
    feed = emit_for(rt, members, 6)
    every = [event_id for ids in feed.values() for event_id in ids]
    receiver.fail_once = {(path, event_id) for path in paths for event_id in every[::5]}
    failures = len(receiver.fail_once)
    receiver.delay = 0.002

    def one_run(barrier: threading.Barrier) -> Outcome:
        barrier.wait(timeout=30)
        return webhooks.deliver(rt, clock())

    outcomes: list[Outcome] = []
    for _ in range(10):
        with ThreadPoolExecutor(max_workers=4) as pool:
            outcomes += pool.map(one_run, [threading.Barrier(4)] * 4)
        if undelivered(rt) == 0:
            break
        clock.advance(hours=2)  # past every backoff

    assert_in_order_once(receiver, paths, feed)
    assert sum(o.errors for o in outcomes) == failures
    with rt.engine.connect() as conn:
        statuses = conn.execute(sa.text("SELECT status, count(*) FROM webhook_deliveries GROUP BY status")).all()
        attempts = conn.execute(sa.text("SELECT max(attempts) FROM webhook_deliveries")).scalar_one()
    assert [tuple(s) for s in statuses] == [("delivered", 3 * len(every))]
    assert attempts == 2
    assert len(receiver.received) == 3 * len(every) + failures


@pytest.mark.postgres_only
@pytest.mark.committed
@pytest.mark.xdist_group("races")
def test_runs_in_separate_processes_send_each_members_events_once_in_order(client, rt, receiver, database_url):
    """Three processes run the job over and over at once (``loyalty jobs run webhooks``, each on its own
    connections), taking turns on two subscriptions in claims of eight: each event reaches each
    subscription once, each member's in feed order."""
    paths = list(subscribe_many(client, receiver, 2))
    members = [f"p{i:02d}" for i in range(30)]
    feed = emit_for(rt, members, 10)
    receiver.delay = 0.005
    env = environment(
        database_url,
        LOYALTY_SECRET_KEY=rt.settings.secret_key,
        LOYALTY_WEBHOOK_TIMEOUT_SECONDS="10",
        PROBE_WEBHOOK_BATCH="8",
    )

    def runs() -> list[dict[str, Any]]:
        done = []
        for _ in range(20):
            job = subprocess.run(
                [sys.executable, "-m", "tests.probe_jobs", "jobs", "run", "webhooks"],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert job.returncode == 0, job.stderr
            done.append(json.loads(job.stdout))
            if " 0 delivered" in done[-1]["detail"] and "more due" not in done[-1]["detail"]:
                break
        return done

    with ThreadPoolExecutor(max_workers=3) as pool:
        done = [run for process in pool.map(lambda _: runs(), range(3)) for run in process]

    assert_in_order_once(receiver, paths, feed)
    assert len(receiver.received) == 2 * 300  # no failure, no repeat
    working = {run["runner"] for run in done if not run["detail"].startswith("0 queued, 0 delivered")}
    assert len(working) >= 2, done  # the processes took turns
    assert undelivered(rt) == 0


@pytest.mark.committed
def test_deliveries_share_a_few_kept_connections(client, rt, receiver):
    subscribe(client, receiver.url)
    ids = [event(rt, member_id=f"m{i}") for i in range(40)]
    result = run(rt)
    assert result["detail"].startswith("40 queued, 40 delivered")
    assert sorted(receiver.ids(), key=int) == ids
    assert receiver.connections <= webhooks.SENDERS  # one per sender, not one per delivery


@pytest.mark.committed
def test_a_kept_connection_the_receiver_closed_is_opened_again_without_a_failed_attempt(client, rt, receiver):
    sub = subscribe(client, receiver.url)["subscription_id"]
    receiver.drop_after_answer = True
    ids = [event(rt, member_id="m1") for _ in range(4)]  # one member: one sender, one connection
    result = run(rt)
    assert (result["errors"], result["detail"][:22]) == (0, "4 queued, 4 delivered,")
    assert receiver.ids() == ids
    assert receiver.connections == 4
    assert [(d["status"], d["attempts"]) for d in deliveries(client, sub)] == [("delivered", 1)] * 4


@pytest.mark.committed
def test_deliveries_go_through_the_proxy_the_environment_names(client, rt, receiver, monkeypatch):
    """``http_proxy`` is used for http URLs, with its credentials; ``no_proxy`` hosts are reached directly."""
    proxy = receiver.url.rsplit("/hooks/", 1)[0].replace("http://", "http://relay:pa%40ss@")
    monkeypatch.setenv("http_proxy", proxy)
    monkeypatch.setenv("no_proxy", "hooks.direct.test")
    subscribe(client, "http://hooks.example.test:8080/in?via=proxy")
    proxied = event(rt)
    run(rt)
    [request] = receiver.received
    assert (request.event_id, request.path) == (proxied, "http://hooks.example.test:8080/in?via=proxy")
    assert request.headers["Proxy-Authorization"] == "Basic " + base64.b64encode(b"relay:pa@ss").decode()

    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens there
    direct = subscribe(client, receiver.url)["subscription_id"]
    event(rt)
    assert run(rt)["errors"] == 1  # the proxied subscription's, through a proxy that is gone
    assert receiver.received[-1].path == "/hooks/loyalty"
    assert "Proxy-Authorization" not in receiver.received[-1].headers
    assert [d["status"] for d in deliveries(client, direct)] == ["delivered"]


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: (certificate, key) in PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "receiver.pem", folder / "receiver.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@pytest.mark.committed
def test_an_https_receiver_is_reached_only_with_a_certificate_it_can_verify(client, rt, clock, tmp_path, monkeypatch):
    cert_file, key_file = self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert_file, key_file)
    receiver = Receiver(tls)
    receiver.thread.start()
    try:
        sub = subscribe(client, receiver.url)["subscription_id"]
        ids = [event(rt, member_id=f"m{i % 2}") for i in range(6)]
        assert run(rt)["errors"] == 2  # the first of each member's: the certificate is not trusted
        failed = deliveries(client, sub, "?status=pending")
        assert all("CERTIFICATE_VERIFY_FAILED" in d["last_error"] for d in failed if d["attempts"])
        assert receiver.received == []

        monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))  # trusted from now on
        clock.advance(hours=2)
        assert run(rt)["detail"].startswith("0 queued, 6 delivered")
        assert sorted(receiver.ids(), key=int) == ids
        assert receiver.connections <= 2  # a kept connection for each member's sender
        assert all(verify(SECRET, r.headers, r.body, clock().timestamp()) for r in receiver.received)
    finally:
        receiver.release.set()
        receiver.server.shutdown()
        receiver.server.server_close()
        receiver.thread.join(timeout=5)


@pytest.mark.committed
def test_a_run_stops_after_its_time_and_says_more_is_due(client, rt, clock, receiver, monkeypatch):
    monkeypatch.setattr(webhooks, "BATCH", 3)
    monkeypatch.setattr(webhooks, "RUN_SECONDS", 0)
    subscribe(client, receiver.url)
    ids = [event(rt, member_id=f"m{i % 4}") for i in range(10)]
    settle(rt.engine)
    outcomes = [webhooks.deliver(rt, clock())]
    while outcomes[-1].more:
        outcomes.append(webhooks.deliver(rt, clock()))
    assert [o.detail for o in outcomes] == [
        "10 queued, 3 delivered, 0 failed attempts (0 now dead); more due",
        "0 queued, 3 delivered, 0 failed attempts (0 now dead); more due",
        "0 queued, 3 delivered, 0 failed attempts (0 now dead); more due",
        "0 queued, 1 delivered, 0 failed attempts (0 now dead)",
    ]
    with receiver.lock:
        rounds = [{r.event_id for r in receiver.received[i : i + 3]} for i in range(0, 10, 3)]
    assert rounds == [set(ids[i : i + 3]) for i in range(0, 10, 3)]  # the earliest in the feed first
    for member in ("m0", "m1", "m2", "m3"):
        mine = [r.event_id for r in receiver.received if json.loads(r.body)["member_id"] == member]
        assert mine == [i for n, i in enumerate(ids) if n % 4 == int(member[1])]


@pytest.mark.committed
def test_a_sender_out_of_time_gives_its_claims_back_unattempted(client, rt, clock, receiver, monkeypatch):
    """A sender starts no delivery past its window (so none is still sending when its claim runs out):
    the rest go back to due, with no attempt spent, and a later round sends them in order."""
    monkeypatch.setattr(webhooks, "SEND_WINDOW", dt.timedelta(seconds=1.2))
    monkeypatch.setattr(webhooks, "RUN_SECONDS", 0)
    sub = subscribe(client, receiver.url)["subscription_id"]
    ids = [event(rt, member_id="m1") for _ in range(5)]  # one member: one sender, one after the other
    receiver.delay = 0.5  # three answers fit in the window (at 0, 0.5 and 1 s), the fourth would not
    settle(rt.engine)
    box = webhooks.optional_sealer(rt.settings.secret_key)
    assert webhooks.fan_out(rt.engine, clock()) == 5
    assert webhooks.send_due(rt, clock(), webhooks.Tally(), box) is True  # one round, and more due
    sent = len(receiver.ids())
    assert 1 <= sent <= 3 and receiver.ids() == ids[:sent]
    assert [(d["status"], d["attempts"]) for d in deliveries(client, sub)][::-1] == [("delivered", 1)] * sent + [
        ("pending", 0)
    ] * (5 - sent)
    assert all(when(d["next_attempt_at"]) <= clock() for d in deliveries(client, sub, "?status=pending"))
    for _ in range(5):
        if not webhooks.send_due(rt, clock(), webhooks.Tally(), box):
            break
    assert receiver.ids() == ids


def test_senders_share_the_deliveries_out_keeping_each_members_together_and_in_order():
    Row = collections.namedtuple("Row", "id member_id")
    rows = [Row(i, f"m{i % 5}" if i % 7 else None) for i in range(1, 61)]
    split = webhooks.lanes(rows, 4)
    assert len(split) == 4
    assert sorted(r.id for lane in split for r in lane) == [r.id for r in rows]
    for lane in split:
        assert [r.id for r in lane] == sorted(r.id for r in lane)
    for member in {r.member_id for r in rows} - {None}:
        assert sum(any(r.member_id == member for r in lane) for lane in split) == 1, member
    assert max(map(len, split)) - min(map(len, split)) <= 12  # a member's share at most
    assert webhooks.lanes(rows[:2], 8) == [[rows[0]], [rows[1]]]
    assert webhooks.lanes([], 8) == []


# --- settings and backoff ------------------------------------------------------------------------


def test_webhook_settings_come_from_the_environment_as_integers():
    defaults = Settings()
    assert (
        defaults.webhook_max_attempts,
        defaults.webhook_timeout_seconds,
        defaults.webhook_backoff_seconds,
        defaults.webhook_backoff_max_seconds,
    ) == (8, 5, 30, 3600)
    s = Settings.from_env(
        {
            "LOYALTY_WEBHOOK_MAX_ATTEMPTS": "3",
            "LOYALTY_WEBHOOK_TIMEOUT_SECONDS": "2",
            "LOYALTY_WEBHOOK_BACKOFF_SECONDS": "10",
            "LOYALTY_WEBHOOK_BACKOFF_MAX_SECONDS": "600",
        }
    )
    assert (s.webhook_max_attempts, s.webhook_timeout_seconds, s.webhook_backoff_seconds) == (3, 2, 10)
    assert s.webhook_backoff_max_seconds == 600
    for env, match in [
        ({"LOYALTY_WEBHOOK_TIMEOUT_SECONDS": "2.5"}, "LOYALTY_WEBHOOK_TIMEOUT_SECONDS must be an integer"),
        ({"LOYALTY_WEBHOOK_MAX_ATTEMPTS": "many"}, "LOYALTY_WEBHOOK_MAX_ATTEMPTS must be an integer"),
        ({"LOYALTY_WEBHOOK_MAX_ATTEMPTS": "0"}, "LOYALTY_WEBHOOK_MAX_ATTEMPTS must be a positive"),
        ({"LOYALTY_WEBHOOK_BACKOFF_MAX_SECONDS": "10"}, "LOYALTY_WEBHOOK_BACKOFF_MAX_SECONDS must be at least"),
    ]:
        with pytest.raises(ValueError, match=match):
            Settings.from_env(env)


def test_backoff_is_full_jitter_doubling_up_to_the_cap():
    settings = Settings(webhook_backoff_seconds=30, webhook_backoff_max_seconds=3600)
    for failures, ceiling in [(1, 30), (2, 60), (3, 120), (7, 1920), (8, 3600), (40, 3600)]:
        delays = [webhooks.backoff(failures, settings).total_seconds() for _ in range(300)]
        assert all(0 < x <= ceiling for x in delays), failures
        assert min(delays) < ceiling * 0.2 and max(delays) > ceiling * 0.8, failures

#!/usr/bin/env python3
"""Webhook delivery throughput: events per second from the outbox to a local HTTP receiver.

    PYTHONPATH=. .venv/bin/python bench/webhooks.py                      # PostgreSQL, both paths
    PYTHONPATH=. .venv/bin/python bench/webhooks.py --events 2000 --paths new --subscriptions 3
    PYTHONPATH=. .venv/bin/python bench/webhooks.py --backend sqlite

On a scratch database (PostgreSQL at ``--pg``, default ``BENCH_POSTGRES_URL`` or the local
server; or a SQLite file with ``--backend sqlite``) it subscribes ``--subscriptions`` receivers,
writes ``--events`` events spread over ``--members`` members (one transaction per
``--per-transaction`` events, as bookings write them), and runs the ``webhooks`` job back to back,
as the scheduler does while there is a backlog, until every event has reached every
subscription. The receiver is a real HTTP/1.1 server on a free loopback port, in a process of its
own (it shares this machine's cores, as a receiver on the same host would): it checks every
signature, and records each subscription's deliveries so that duplicates and any member whose
events arrived out of feed order are counted. ``--receiver-ms`` makes it take that long per
answer, like a receiver that does some work.

``--profile`` also prints, per path, the time spent in each kind of SQL statement (the rest of a
path's time is the HTTP requests, Python and waiting for the CPU).

``--paths old,new`` measures both senders in one run on the same data: ``new`` is the shipped
job (:func:`loyalty.events.webhooks.deliver`); ``old`` is the sender it replaced, kept below
(:func:`old_deliver`): one delivery claimed, sent and recorded at a time by 8 threads, in rounds of
100, a new HTTP connection for each. Each path gets subscriptions and events of its own.

Per path it prints events/s, job runs, SQL statements per delivery (a ``before_cursor_execute``
listener: an ``executemany`` counts once; on SQLite each transaction's ``BEGIN`` counts too) and
the TCP connections that carried deliveries to the receiver, and judges
every path on: every event received, no bad signature, no member's events out of order (a
repeat, at least once, is counted, not judged).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import http.client
import json
import multiprocessing
import os
import random
import secrets
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# bench/ holds a rules.py of its own: the rules engine must come from the repository root.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import sqlalchemy as sa  # noqa: E402
from sqlalchemy import event  # noqa: E402
from sqlalchemy.engine import Engine, make_url  # noqa: E402

import loyalty.models  # noqa: E402, F401  (fills the metadata)
from loyalty.config import Settings  # noqa: E402
from loyalty.db import make_engine, transaction, utcnow  # noqa: E402
from loyalty.events import webhooks  # noqa: E402
from loyalty.events.models import events, webhook_deliveries, webhook_subscriptions  # noqa: E402
from loyalty.events.service import event_json, event_row, horizon  # noqa: E402
from loyalty.migrate import upgrade  # noqa: E402
from loyalty.programmes.service import ProgrammeStore  # noqa: E402
from loyalty.runtime import Outcome, Runtime  # noqa: E402

DEFAULT_PG = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SECRET = "bench-webhook-secret-0123456789"  # noqa: S105  (the bench receiver's key)


# --- the receiver (a process of its own) ------------------------------------------------------


def receive(port: multiprocessing.sharedctypes.Synchronized, delay: float) -> None:  # type: ignore[name-defined]
    """Serve until killed: POST /hook/<name> records a delivery, GET /_stats tells what came."""
    lock = threading.Lock()
    state: dict[str, Any] = {"connections": 0, "bad_signatures": 0, "requests": 0, "deliveries": {}}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do

        delivering = False

        def do_POST(self) -> None:  # noqa: N802  (http.server's name)
            if not self.delivering:  # a connection that carried deliveries (not the bench's own questions)
                self.delivering = True
                with lock:
                    state["connections"] += 1
            body = self.rfile.read(int(self.headers["Content-Length"]))
            timestamp = self.headers["X-Loyalty-Timestamp"]
            digest = hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
            good = hmac.compare_digest("v1=" + digest, self.headers["X-Loyalty-Signature"])
            payload = json.loads(body)
            with lock:
                state["requests"] += 1
                state["bad_signatures"] += not good
                state["deliveries"].setdefault(self.path, []).append([payload["member_id"], int(payload["event_id"])])
            if delay:
                time.sleep(delay)
            self.send_response(204)
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802
            with lock:
                body = json.dumps(state).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128

    server = Server(("127.0.0.1", 0), Handler)
    port.value = server.server_port
    server.serve_forever()


@contextmanager
def receiver(delay: float) -> Iterator[int]:
    context = multiprocessing.get_context("spawn")
    port = context.Value("i", 0)
    process = context.Process(target=receive, args=(port, delay), daemon=True)
    process.start()
    try:
        deadline = time.monotonic() + 30
        while not port.value:
            if time.monotonic() > deadline or not process.is_alive():
                raise SystemExit("the receiver did not start")
            time.sleep(0.05)
        yield int(port.value)
    finally:
        process.terminate()
        process.join(timeout=10)


def stats(port: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/_stats")
    return json.loads(conn.getresponse().read())  # type: ignore[no-any-return]


# --- the sender the job used to have -----------------------------------------------------------
# One delivery at a time per thread: a claim (one transaction), a POST on a new connection, a record
# (another transaction); 8 threads, rounds of 100 due deliveries, one member's next event in the
# round after its previous one. Kept here to measure the shipped sender against it.

OLD_ROUND = 100
OLD_SENDERS = 8
s, d, e = webhook_subscriptions.c, webhook_deliveries.c, events.c


def old_held_back(position: Sequence[Any]) -> sa.Exists:
    p = webhook_deliveries.alias("earlier")
    pe = events.alias("earlier_event")
    return sa.exists().where(
        p.c.subscription_id == d.subscription_id,
        p.c.member_id == d.member_id,
        p.c.status == "pending",
        pe.c.id == p.c.event_id,
        sa.tuple_(sa.func.coalesce(pe.c.tx, 0), pe.c.id) < sa.tuple_(*position),
    )


def old_due(engine: Engine, as_of: dt.datetime) -> list[Any]:
    q = (
        sa.select(d.subscription_id, s.url, s.secret, s.secret_sealed, *events.c)
        .join(webhook_subscriptions, s.id == d.subscription_id)
        .join(events, e.id == d.event_id)
        .where(
            d.status == "pending",
            d.next_attempt_at <= as_of,
            s.active,
            ~old_held_back((sa.func.coalesce(e.tx, 0), e.id)),
        )
        .order_by(d.next_attempt_at, d.event_id)
        .limit(OLD_ROUND)
    )
    with transaction(engine, readonly=True) as conn:
        return list(conn.execute(q))


def old_post(row: Any, secret: str, *, timeout: int, now: dt.datetime) -> tuple[int | None, str | None]:
    body = json.dumps(event_json(row), ensure_ascii=False, separators=(",", ":")).encode()
    timestamp = str(int(now.timestamp()))
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    request = urllib.request.Request(  # noqa: S310  (http only, to the bench receiver)
        row.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "X-Loyalty-Event-Id": str(row.id),
            "X-Loyalty-Event-Type": row.type,
            "X-Loyalty-Timestamp": timestamp,
            "X-Loyalty-Signature": webhooks.signature(secret, timestamp, body),
        },
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            return int(response.status), None
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code, f"HTTP {exc.code}"
    except (OSError, http.client.HTTPException) as exc:
        return None, str(exc)


def old_attempt(rt: Runtime, row: Any, as_of: dt.datetime, box: Any) -> str | None:
    secret = webhooks.signing_secret(row, box)
    settings = rt.settings
    key = (d.subscription_id == row.subscription_id, d.event_id == row.id)
    lease = max(as_of, rt.now()) + dt.timedelta(seconds=settings.webhook_timeout_seconds + 60)
    active = sa.exists().where(s.id == d.subscription_id, s.active)
    with transaction(rt.engine) as conn:
        attempts = conn.execute(
            webhook_deliveries.update()
            .where(
                *key, d.status == "pending", d.next_attempt_at <= as_of, active, ~old_held_back((row.tx or 0, row.id))
            )
            .values(next_attempt_at=lease)
            .returning(d.attempts)
        ).scalar()
    if attempts is None:
        return None
    status, error = old_post(row, secret, timeout=settings.webhook_timeout_seconds, now=rt.now())
    attempts += 1
    values: dict[str, Any] = {"attempts": attempts, "last_status": status, "last_error": error}
    if error is None:
        values.update(status="delivered", delivered_at=rt.now())
    else:
        values.update(next_attempt_at=as_of + webhooks.backoff(attempts, settings))
    with transaction(rt.engine) as conn:
        conn.execute(
            webhook_deliveries.update().where(*key, d.status == "pending", d.next_attempt_at == lease).values(**values)
        )
    return "delivered" if error is None else "failed"


def old_deliver(rt: Runtime, as_of: dt.datetime) -> Outcome:
    box = webhooks.optional_sealer(rt.settings.secret_key)
    queued = webhooks.fan_out(rt.engine, as_of)
    delivered = 0
    with ThreadPoolExecutor(max_workers=OLD_SENDERS) as pool:
        while batch := old_due(rt.engine, as_of):
            results = list(pool.map(lambda row: old_attempt(rt, row, as_of, box), batch))
            delivered += results.count("delivered")
            if all(r is None for r in results):
                break
    return Outcome(rows=queued + delivered)


# --- the measurement ---------------------------------------------------------------------------


@dataclass
class Figure:
    path: str
    events: int
    seconds: float
    runs: int
    statements: int
    connections: int
    received: int
    duplicates: int
    out_of_order: int
    bad_signatures: int
    #: statement kind -> (how many, seconds in them)
    sql: dict[str, tuple[int, float]]

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def ok(self) -> bool:
        return self.received >= self.events and self.out_of_order == 0 and self.bad_signatures == 0


class Statements:
    """Counts the statements sent, and times them by kind (``--profile``): the wall time from sending
    one to its result, summed over every thread that sends."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def before(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        conn.info["bench_started"] = time.perf_counter()
        with self.lock:
            self.count += 1

    def after(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        took = time.perf_counter() - conn.info.pop("bench_started")
        words = statement.split()
        table = next((w for w in words[1:] if w in TABLES), "")
        kind = f"{words[0]} {table}".strip()
        with self.lock:
            self.seconds[kind] = self.seconds.get(kind, 0.0) + took
            self.calls[kind] = self.calls.get(kind, 0) + 1

    def listen(self, engine: Engine) -> None:
        event.listen(engine, "before_cursor_execute", self.before)
        event.listen(engine, "after_cursor_execute", self.after)

    def remove(self, engine: Engine) -> None:
        event.remove(engine, "before_cursor_execute", self.before)
        event.remove(engine, "after_cursor_execute", self.after)


TABLES = ("webhook_deliveries", "webhook_subscriptions", "events", "job_runs")


@contextmanager
def scratch_database(args: argparse.Namespace) -> Iterator[str]:
    if args.backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as folder:
            yield f"sqlite:///{folder}/loyalty.db"
        return
    admin = sa.create_engine(args.pg, isolation_level="AUTOCOMMIT")
    name = f"bench_webhooks_{os.getpid()}_{secrets.token_hex(3)}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(args.pg).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def settle(engine: Engine) -> None:
    """Wait until every committed event is in the feed (PostgreSQL shows an event once every older
    transaction on the server has ended)."""
    if engine.dialect.name != "postgresql":
        return
    query = sa.select(sa.func.coalesce(sa.func.max(e.tx), 0) < horizon())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if conn.execute(query).scalar_one():
                return
        time.sleep(0.05)
    raise SystemExit("events still hidden after 120 s by another transaction on the server")


def prepare(rt: Runtime, args: argparse.Namespace, port: int, path: str) -> list[str]:
    """Subscribe the receiver for this path (the others' subscriptions stopped), then write the events."""
    box = webhooks.secret_sealer(rt.settings.secret_key)
    names = [f"/hook/{path}-{i}" for i in range(args.subscriptions)]
    with transaction(rt.engine) as conn:
        conn.execute(webhook_subscriptions.update().values(active=False))
        for name in names:
            webhooks.create_subscription(
                conn,
                webhooks.NewSubscription(url=f"http://127.0.0.1:{port}{name}", event_types=[], secret=SECRET),
                box=box,
                actor="bench",
                now=rt.now(),
            )
    rng = random.Random(args.seed)
    members = [f"M{i:06d}" for i in range(args.members)]
    for first in range(0, args.events, args.per_transaction):
        rows = [
            event_row(
                "points.accrued", member_id=rng.choice(members), payload={"points": rng.randint(1, 5000)}, now=rt.now()
            )
            for _ in range(min(args.per_transaction, args.events - first))
        ]
        with transaction(rt.engine) as conn:
            conn.execute(events.insert(), rows)
    settle(rt.engine)
    return names


def measure(rt: Runtime, args: argparse.Namespace, port: int, path: str, deliver: Callable[..., Outcome]) -> Figure:
    names = prepare(rt, args, port, path)
    before = stats(port)
    counter = Statements()
    counter.listen(rt.engine)
    expected = args.events * args.subscriptions
    started, runs = time.perf_counter(), 0
    try:
        while True:
            deliver(rt, rt.now())
            runs += 1
            with rt.engine.connect() as conn:
                left = conn.execute(
                    sa.select(sa.func.count()).select_from(webhook_deliveries).where(d.status != "delivered")
                ).scalar_one()
            if left == 0 and stats(port)["requests"] - before["requests"] >= expected:
                break
            if time.perf_counter() - started > args.timeout:
                raise SystemExit(f"{path}: not every event delivered after {args.timeout} s")
    finally:
        counter.remove(rt.engine)
    seconds = time.perf_counter() - started
    after = stats(port)
    received = duplicates = out_of_order = 0
    for name in names:
        got = after["deliveries"].get(name, [])
        received += len({event_id for _, event_id in got})
        duplicates += len(got) - len({event_id for _, event_id in got})
        last: dict[str, int] = {}
        seen: set[int] = set()
        for member, event_id in got:
            if event_id in seen:
                continue  # a repeat (at least once), not disorder
            seen.add(event_id)
            if event_id < last.get(member, 0):
                out_of_order += 1
            last[member] = max(last.get(member, 0), event_id)
    return Figure(
        path=path,
        events=expected,
        seconds=seconds,
        runs=runs,
        statements=counter.count,
        sql={kind: (counter.calls[kind], seconds) for kind, seconds in counter.seconds.items()},
        connections=after["connections"] - before["connections"],
        received=received,
        duplicates=duplicates,
        out_of_order=out_of_order,
        bad_signatures=after["bad_signatures"] - before["bad_signatures"],
    )


PATHS: dict[str, Callable[[Runtime, dt.datetime], Outcome]] = {"old": old_deliver, "new": webhooks.deliver}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--pg", default=DEFAULT_PG, help="a PostgreSQL server where this role may create databases")
    parser.add_argument("--events", type=int, default=3000, help="events written per path")
    parser.add_argument("--members", type=int, default=500)
    parser.add_argument("--subscriptions", type=int, default=1)
    parser.add_argument("--per-transaction", type=int, default=3, help="events per writing transaction")
    parser.add_argument("--receiver-ms", type=float, default=0.0, help="the receiver's time per answer")
    parser.add_argument("--paths", default="old,new", help="comma-separated: old, new")
    parser.add_argument("--timeout", type=float, default=600, help="give up on a path after this many seconds")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", action="store_true", help="also print the time spent in SQL, by statement")
    args = parser.parse_args(argv)
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = set(paths) - set(PATHS)
    if unknown:
        parser.error(f"unknown paths {', '.join(sorted(unknown))}; known: {', '.join(PATHS)}")

    with receiver(args.receiver_ms / 1000) as port, scratch_database(args) as url:
        engine = make_engine(url)
        upgrade(engine)
        settings = Settings(database_url=url, secret_key=secrets.token_urlsafe(32))
        rt = Runtime(settings=settings, engine=engine, programmes=ProgrammeStore(engine, utcnow), clock=utcnow)
        figures = [measure(rt, args, port, path, PATHS[path]) for path in paths]
        engine.dispose()

    print(
        f"{args.backend}: {args.events} events x {args.subscriptions} subscription(s), {args.members} members, "
        f"{args.per_transaction} events a transaction, receiver {args.receiver_ms:g} ms an answer, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"{'path':<5} {'events/s':>9} {'seconds':>8} {'runs':>5} {'stmts/delivery':>15} {'connections':>12} "
        f"{'received':>9} {'repeats':>8} {'disorder':>9} {'bad sig':>8}"
    )
    for f in figures:
        print(
            f"{f.path:<5} {f.rate:>9.0f} {f.seconds:>8.2f} {f.runs:>5} {f.statements / f.events:>15.2f} "
            f"{f.connections:>12} {f.received:>9} {f.duplicates:>8} {f.out_of_order:>9} {f.bad_signatures:>8}"
            f"  {'PASS' if f.ok else 'FAIL'}"
        )
    if len(figures) == 2:
        print(f"{figures[1].path} / {figures[0].path}: {figures[1].rate / figures[0].rate:.1f}x")
    if args.profile:
        for f in figures:
            print(f"\n{f.path}: SQL by kind, {f.seconds:.2f} s in all (statement times add up over the senders)")
            for kind, (calls, seconds) in sorted(f.sql.items(), key=lambda item: -item[1][1])[:8]:
                print(f"  {kind:<34} {calls:>6} x {seconds / calls * 1000:7.2f} ms = {seconds:6.2f} s")
    return 0 if all(f.ok for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())

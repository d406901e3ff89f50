#!/usr/bin/env python3
"""Soak: mixed load against `make run`'s server on PostgreSQL, with the scheduler running its jobs.

    .venv/bin/python bench/soak.py                  # 5 minutes (--seconds 300), 16 connections
    .venv/bin/python bench/soak.py --seconds 60     # shorter

It makes a scratch database and drops it afterwards, by default on a private PostgreSQL server it
starts from a data directory of its own (``--pg private``, tests/faults.py): the outbox's event
feed waits for every transaction older than an event to end, server-wide, so on a server shared
with others a long transaction of theirs holds the outbox back and the lag measures them, not
this service. ``--pg URL`` uses that server instead (e.g. postgresql://postgres@127.0.0.1:5432/postgres).
It starts ``make run`` on a
free port (gunicorn with gunicorn.conf.py, the scheduler with every job on a short interval, the
sandbox partner on a free port) in a process group of its own, and stops that group at the end;
subscribes a local webhook receiver, so the outbox has somewhere to deliver; enrols members; then
runs ``--connections`` clients for ``--seconds``: 80% accruals, 10% redemptions (a partner's phone
credit, fulfilled by the sandbox partner), 10% balance reads.

It prints, and judges:

- errors: answers that are neither 2xx nor a business refusal (422), and failed connections: 0;
- p50 / p99 latency per kind, next to the baseline measured in the same run: ``GET /healthz``
  (the HTTP stack and gunicorn, no database) at the same concurrency;
- the service's memory: resident size of gunicorn's master and workers after ``--warmup`` and at
  the end: the end within 10% of after warm-up;
- the outbox lag (``loyalty_outbox_lag_seconds`` from /metrics, sampled every 5 s): its maximum
  and the lag at the end, both under 60 s (bounded: the webhook job keeps up with the load);
- every event written after the receiver subscribed (read from the database at the end) received;
- job runs that failed (0).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg2
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PG = os.environ.get("BENCH_POSTGRES_URL", "private")
#: Jobs every few seconds instead of daily, so the soak runs each of them many times.
JOB_INTERVALS = "webhooks=1,fulfilment=2,redemptions=5,lifecycle=30,birthdays=30,expiry=30,tier_review=60"
MEMORY_GROWTH_LIMIT = 0.10
OUTBOX_LAG_LIMIT_SECONDS = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Receiver(BaseHTTPRequestHandler):
    """A webhook receiver that accepts everything, keeping connections open as HTTP/1.1 servers do,
    and notes each event id it is sent."""

    protocol_version = "HTTP/1.1"
    received = 0
    event_ids: set[int] = set()
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802  (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with Receiver.lock:
            Receiver.received += 1
            Receiver.event_ids.add(int(self.headers["X-Loyalty-Event-Id"]))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class Client:
    def __init__(self, port: int, key: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=data, headers=self.headers)
                r = self.conn.getresponse()
                return r.status, r.read()
            except (http.client.HTTPException, OSError):
                self.conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        m = re.search(r"VmRSS:\s+(\d+) kB", status)
        total += int(m.group(1)) * 1024 if m else 0
    return total


def gunicorn_pids(group: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        pgrp = int(stat.rsplit(")", 1)[1].split()[2])
        if pgrp == group and b"gunicorn" in cmdline:
            pids.append(int(entry.name))
    return pids


def metric(port: int, name: str, **labels: str) -> float:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    total = 0.0
    for line in text.splitlines():
        named = line.startswith(name + "{") or line.startswith(name + " ")
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=300, help="measured load, after the warm-up")
    parser.add_argument("--warmup", type=int, default=30, help="load before memory is first measured")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--pg", default=DEFAULT_PG)
    args = parser.parse_args()

    private = None
    if args.pg == "private":
        sys.path.insert(0, str(ROOT))
        from tests.faults import PrivatePostgres

        private = PrivatePostgres()
        args.pg = private.admin_url
    admin = make_url(args.pg)
    name = f"loyalty_soak_{uuid.uuid4().hex[:8]}"
    db_url = admin.set(database=name).render_as_string(hide_password=False)
    con = psycopg2.connect(admin.render_as_string(hide_password=False))
    con.autocommit = True
    con.cursor().execute(f'CREATE DATABASE "{name}"')

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    port, sandbox = free_port(), free_port()
    env = {
        **os.environ,
        "LOYALTY_DATABASE_URL": db_url,
        "LOYALTY_SECRET_KEY": os.environ.get("LOYALTY_SECRET_KEY") or uuid.uuid4().hex,
        "LOYALTY_JOB_INTERVALS": JOB_INTERVALS,
        "LOYALTY_PARTNERS": f"telecom=http://127.0.0.1:{sandbox}/telecom,video=http://127.0.0.1:{sandbox}/video",
    }
    log = open(ROOT / "var" / f"soak-{name}.log", "w") if (ROOT / "var").is_dir() else open(os.devnull, "w")  # noqa: SIM115
    make = subprocess.Popen(
        ["make", "run", f"PORT={port}", f"SANDBOX_PORT={sandbox}", f"WORKERS={args.workers}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,
    )
    try:
        key = ""
        assert make.stdout is not None
        for line in make.stdout:
            if line.startswith("demo API key"):
                key = line.rsplit(" ", 1)[1].strip()
                break
        assert key, "make run printed no demo API key"
        threading.Thread(target=lambda: [None for _ in make.stdout], daemon=True).start()  # type: ignore[union-attr]
        deadline = time.monotonic() + 120
        while True:
            try:
                if Client(port, key).call("GET", "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not become ready in 120 s")
            time.sleep(0.5)
        setup = Client(port, key)
        status, body = setup.call(
            "POST",
            "/v1/webhooks",
            {"url": f"http://127.0.0.1:{receiver.server_address[1]}/hook", "secret": uuid.uuid4().hex},
        )
        assert status == 201, body
        subscribed_at = tuple(int(n) for n in json.loads(body)["cursor"].split("."))
        members = [f"soak-{i}" for i in range(args.members)]
        for m in members:
            assert setup.call("POST", "/v1/members", {"member_id": m})[0] in (200, 201)
        print(f"server on :{port} ({args.workers} workers), {len(members)} members, scheduler jobs {JOB_INTERVALS}")

        # Baseline: the HTTP stack alone, at the same concurrency.
        baseline = run_load(port, key, members, args.connections, 10, lambda c, m, r: c.call("GET", "/healthz"))
        base = baseline["healthz"]
        print(f"baseline GET /healthz: p50 {ms(percentile(base, 50))}, p99 {ms(percentile(base, 99))}")

        group = os.getpgid(make.pid)
        lags: list[float] = []
        stop_sampling = threading.Event()
        memory: dict[str, int] = {}

        def sample() -> None:
            started = time.monotonic()
            while not stop_sampling.wait(5):
                with contextlib.suppress(OSError):  # a scrape that failed is a sample missed
                    lags.append(metric(port, "loyalty_outbox_lag_seconds"))
                if "warm" not in memory and time.monotonic() - started >= args.warmup:
                    memory["warm"] = rss_bytes(gunicorn_pids(group))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        results = run_load(port, key, members, args.connections, args.warmup + args.seconds, mixed)
        memory["end"] = rss_bytes(gunicorn_pids(group))
        stop_sampling.set()
        sampler.join()
        time.sleep(3)
        end_lag = metric(port, "loyalty_outbox_lag_seconds")
        failed_jobs = metric(port, "loyalty_job_runs_total", status="failed")
        runs = metric(port, "loyalty_job_runs_total", status="succeeded")
        with contextlib.closing(psycopg2.connect(db_url)) as db, db.cursor() as cur:
            cur.execute("SELECT id FROM events WHERE (coalesce(tx, 0), id) > (%s, %s)", subscribed_at)
            written = {int(row[0]) for row in cur.fetchall()}
    finally:
        with_group_stopped(make)
        log.close()
        con.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        con.close()
        receiver.shutdown()
        if private is not None:
            private.close()

    errors = results["errors"]
    total = sum(len(results[k]) for k in ("accrual", "redemption", "read"))
    print(f"\nmixed load, {args.connections} connections, {args.warmup} s warm-up + {args.seconds} s:")
    print(f"  requests {total} ({total / (args.warmup + args.seconds):.0f}/s), statuses {dict(results['statuses'])}")
    for kind in ("accrual", "redemption", "read"):
        v = results[kind]
        print(f"  {kind:<10} n={len(v):<7} p50 {ms(percentile(v, 50))}  p99 {ms(percentile(v, 99))}")
    print(f"  baseline   GET /healthz p99 {ms(percentile(baseline['healthz'], 99))}")
    print(f"  errors {errors} -> {'PASS' if errors == 0 else 'FAIL'}")
    warm, end = memory.get("warm", 0), memory["end"]
    growth = (end - warm) / warm if warm else float("nan")
    print(
        f"  memory (RSS, gunicorn master + workers): after warm-up {warm / 2**20:.1f} MiB, end {end / 2**20:.1f} MiB, "
        f"growth {growth:+.1%} -> {'PASS' if abs(growth) <= MEMORY_GROWTH_LIMIT else 'FAIL'}"
    )
    max_lag = max([*lags, end_lag])
    lag_ok = max_lag < OUTBOX_LAG_LIMIT_SECONDS
    print(
        f"  outbox lag: max {max_lag:.1f} s, at the end {end_lag:.1f} s -> "
        f"{'PASS' if lag_ok else 'FAIL'}; webhooks received {Receiver.received}"
    )
    missing = written - Receiver.event_ids
    print(
        f"  events written after the subscription {len(written)}, received {len(Receiver.event_ids)}, "
        f"missing {len(missing)} -> {'PASS' if not missing else 'FAIL'}"
        + (f" (e.g. {sorted(missing)[:10]})" if missing else "")
    )
    print(f"  job runs: {runs:.0f} succeeded, {failed_jobs:.0f} failed -> {'PASS' if failed_jobs == 0 else 'FAIL'}")
    ok = errors == 0 and abs(growth) <= MEMORY_GROWTH_LIMIT and lag_ok and not missing and failed_jobs == 0
    return 0 if ok else 1


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def mixed(client: Client, members: list[str], rng: random.Random) -> tuple[str, int, bytes]:
    member = rng.choice(members)
    roll = rng.random()
    if roll < 0.8:
        body = {
            "transaction_id": uuid.uuid4().hex,
            "member_id": member,
            "type": "card_purchase",
            "amount": rng.randint(100, 500_000),
            "currency": "CNY",
            "occurred_at": (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)).isoformat(),
        }
        return ("accrual", *client.call("POST", "/v1/transactions", body))
    if roll < 0.9:
        body = {
            "redemption_id": uuid.uuid4().hex,
            "member_id": member,
            "benefit_code": "phone-credit-10",
            "delivery": {"phone_number": "13800000000"},
        }
        return ("redemption", *client.call("POST", "/v1/redemptions", body))
    return ("read", *client.call("GET", f"/v1/members/{member}"))


def run_load(port: int, key: str, members: list[str], connections: int, seconds: int, action) -> dict:  # type: ignore[no-untyped-def]
    out: dict = {"accrual": [], "redemption": [], "read": [], "healthz": [], "errors": 0, "statuses": Counter()}
    lock = threading.Lock()
    until = time.monotonic() + seconds

    def worker() -> None:
        client, rng = Client(port, key), random.Random()
        while time.monotonic() < until:
            started = time.perf_counter()
            try:
                result = action(client, members, rng)
            except OSError:
                with lock:
                    out["errors"] += 1
                continue
            took = time.perf_counter() - started
            kind, status, body = result if len(result) == 3 else ("healthz", *result)
            refused = status == 422 and b"/problems/validation_error" not in body
            with lock:
                out[kind].append(took)
                out["statuses"][status] += 1
                if not (200 <= status < 300 or refused):
                    out["errors"] += 1

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def with_group_stopped(make: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """Stop `make run` and everything it started (its own process group), gracefully first."""
    try:
        os.killpg(make.pid, signal.SIGTERM)
        make.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(make.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())

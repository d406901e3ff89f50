#!/usr/bin/env python3
"""Redemption benchmark on PostgreSQL: voucher redemptions under load, partner redemptions end to end.

Run from the repository root with the project's virtualenv::

    PYTHONPATH=. .venv/bin/python bench/redemption.py            # full sizes (see --help)
    PYTHONPATH=. .venv/bin/python bench/redemption.py --quick    # a few minutes

What it measures, in one run on one scratch database:

1. **Voucher redemptions**: ``POST /v1/redemptions`` of the default catalogue's
   code-pool benefits, 16 concurrent connections from ``wrk``, against gunicorn
   started as ``make run`` starts it. Each request takes an unused
   (member, benefit) slot, so no member ever reaches a benefit's personal
   limit and no request is refused: every one books a hold, takes a unit of
   stock and issues a voucher code. Target: p99 <= 50 ms.
2. **Baselines**, with the same harness (``bench/accrual.py``'s wrk script and
   counters) against the same server and data: ``POST /v1/transactions`` (an
   accrual) and ``GET /health``.
3. **Partner redemptions end to end**: ``loyalty sandbox-partner`` with 20 ms
   latency, ``LOYALTY_PARTNERS`` pointing at it, ``loyalty scheduler`` running
   the ``fulfilment`` job every second; M phone-credit redemptions through the
   API, timed from each request until the redemption is final.

Every database it uses is a scratch database it creates and drops; every
process it starts it stops. All traffic is on the loopback interface. See
bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import accrual  # bench/accrual.py: scratch databases, gunicorn, wrk, CPU accounting
from accrual import (
    DEFAULT_PG,
    ROOT,
    BenchError,
    CpuMeter,
    PgbenchResult,
    Scratch,
    WrkResult,
    bench_pgbench,
    code_fingerprint,
    code_version,
    count_rows,
    enrol_members,
    log,
    loyalty_cli,
    member_id,
    percentile,
    prepare_service_db,
    require_tool,
    run_wrk,
    start_gunicorn,
    wait_for_quiet,
)
from sqlalchemy.engine import make_url

#: The target the voucher redemptions are judged against.
TARGET_P99_MS = 50.0
#: voucher redemptions per second against pgbench TPC-B TPS in the same run
TARGET_RATIO = 0.20
#: The benefit the table's figure redeems: a pool voucher at 10 points, no personal limits, not
#: cancellable, so every redemption of the run is of this one benefit.
TABLE_VOUCHER = {
    "code": "bench-voucher-10",
    "status": "active",
    "name": "Bench voucher, 10 points",
    "kind": "voucher",
    "fulfilment": "pool",
    "face_value": 100,
    "unit_cost": 50,
    "points_price": 10,
    "cancel_hours": 0,
}
#: The partner latency the end-to-end phase is measured with.
SANDBOX_LATENCY_MS = 20
#: The partner benefit redeemed end to end (default catalogue: 1,000 points, telecom, 5 a month).
PARTNER_BENEFIT = "phone-credit-10"
#: The tier enrolled members have (no profile, one purchase): prices and eligibility are read for it.
TIER = "basic"
#: The card purchase each member gets after enrolment, in fen: 20,000 CNY earns the default
#: programme's per-transaction and per-day maximum of 20,000 points.
TOP_UP_FEN = 2_000_000
#: Transactions per top-up request: a batch may hold 1,000, but one that takes longer than
#: gunicorn's worker timeout (30 s) is cut off with a 500, which a loaded machine can reach.
TOP_UP_BATCH = 200
#: Points kept aside per member for the partner phase and anything else.
RESERVE_POINTS = 2_000
#: The `make run` server: `gunicorn --config gunicorn.conf.py --bind HOST:PORT --workers 4` (gunicorn reads
#: ./gunicorn.conf.py by itself: its worker class, timeouts, logging and metrics directory).
MAKE_RUN_GUNICORN = "workers=4"
#: wrk threads, as bench/accrual.py's run_wrk starts it (`wrk -t 2`).
WRK_THREADS = 2

# --------------------------------------------------------------------------- wrk scripts

#: Appended to bench/accrual.py's generated wrk script: Lua's last definition of request() wins,
#: so its setup/init/response/done hooks (per-status counters, the BENCH_JSON line) stay as they are.
REDEEM_LUA = r"""
-- Appended by bench/redemption.py: POST /v1/redemptions, each request one unused slot
-- ("<member> <benefit>" lines of SLOTS_FILE); thread t takes slots t, t + THREADS, ...
local SLOTS_FILE = "@SLOTS@"
local THREADS = @THREADS@
local slots = nil

function request()
  if slots == nil then
    slots = {}
    for line in io.lines(SLOTS_FILE) do slots[#slots + 1] = line end
  end
  counter = counter + 1
  local i = (counter - 1) * THREADS + tid
  local member, benefit = "M00000001", "bench-slots-exhausted"
  if slots[i] ~= nil then member, benefit = string.match(slots[i], "^(%S+) (%S+)$") end
  local body = string.format('{"redemption_id":"%s-%d","member_id":"%s","benefit_code":"%s"}',
    PREFIX, i, member, benefit)
  return wrk.format("POST", "/v1/redemptions", HEADERS, body)
end
"""

HEALTH_LUA = r"""
-- Appended by bench/redemption.py: GET /health (no database work), counted like the others.
function request()
  counter = counter + 1
  return wrk.format("GET", "/health")
end
"""


@contextlib.contextmanager
def wrk_requests(lua: str) -> Any:
    """While active, ``accrual.run_wrk`` sends the requests of ``lua`` (a ``request()`` appended
    to its generated script) instead of accruals; it counts and reports them the same way."""
    original = accrual.write_wrk_script

    def write(path: Path, key: str, members: int, prefix: str) -> None:
        original(path, key, members, prefix)
        with path.open("a") as f:
            f.write(lua)

    accrual.write_wrk_script = write
    try:
        yield
    finally:
        accrual.write_wrk_script = original


# --------------------------------------------------------------------------- small HTTP client


class Api:
    """One keep-alive connection to the service per thread."""

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {key}"}
        self.local = threading.local()

    def call(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json", timeout: float = 120
    ) -> tuple[int, Any]:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = None
        headers = dict(self.headers)
        if body is not None:
            data = body if isinstance(body, (bytes, str)) else json.dumps(body)
            headers["Content-Type"] = content_type
        try:
            conn.request(method, path, data, headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            self.local.conn = None
            raise
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, raw.decode(errors="replace")[:500]


def http_get_json(url: str, timeout: float = 30) -> Any:
    """GET a JSON document from a loopback URL (the sandbox's unsigned endpoints)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise BenchError(f"GET {url}: HTTP {resp.status} {body[:300]!r}")
        return json.loads(body)
    finally:
        conn.close()


# --------------------------------------------------------------------------- data set-up


@dataclass
class Voucher:
    """A pool benefit the load spreads over: its price for TIER and how many a member may have now."""

    code: str
    price: int
    per_member: int


def top_up(api: Api, members: int, threads: int) -> float:
    """One 20,000 CNY card purchase per member through POST /v1/transactions/batch; returns members/s."""
    tz = dt.timezone(dt.timedelta(hours=8))
    when = (dt.datetime.now(tz) - dt.timedelta(hours=2)).replace(microsecond=0).isoformat()
    prefix = uuid.uuid4().hex[:6]

    def batch(start: int) -> None:
        items = [
            {
                "transaction_id": f"topup-{prefix}-{i}",
                "member_id": member_id(i),
                "type": "card_purchase",
                "amount": TOP_UP_FEN,
                "currency": "CNY",
                "occurred_at": when,
                "channel": "pos",
            }
            for i in range(start, min(start + TOP_UP_BATCH, members + 1))
        ]
        status, body = api.call("POST", "/v1/transactions/batch", {"transactions": items}, timeout=600)
        if status != 200:
            raise BenchError(f"top-up batch from {member_id(start)}: HTTP {status} {str(body)[:300]}")
        bad = [r for r in body["results"] if r["status"] != 201]
        if bad:
            raise BenchError(f"top-up: {len(bad)} transactions not booked, e.g. {bad[0]}")

    t0 = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(batch, range(1, members + 1, TOP_UP_BATCH)))
    return members / (time.monotonic() - t0)


def choose_vouchers(api: Api, budget: int) -> list[Voucher]:
    """The active pool benefits TIER may redeem, cheapest first, as many units of each as the
    benefit's tightest personal limit allows, while the points budget per member lasts."""
    status, body = api.call("GET", "/v1/benefits?status=active")
    if status != 200:
        raise BenchError(f"GET /v1/benefits: HTTP {status} {body}")
    chosen = []
    for b in sorted(body["benefits"], key=lambda b: b["tier_prices"].get(TIER, b["points_price"] or 10**12)):
        if b["fulfilment"] != "pool" or (b["eligible_tiers"] and TIER not in b["eligible_tiers"]):
            continue
        price = b["tier_prices"].get(TIER, b["points_price"])
        if price is None:
            continue
        units = min(b["limits"].values()) if b["limits"] else 4
        units = min(units, budget // price)
        if units <= 0:
            continue
        chosen.append(Voucher(b["code"], price, units))
        budget -= units * price
    if not chosen:
        raise BenchError(f"no active pool benefit in the catalogue a {TIER} member can afford")
    return chosen


def upload_codes(api: Api, vouchers: list[Voucher], members: int, pool_codes: int) -> tuple[int, float]:
    """Codes for every slot (at least ``pool_codes`` per pool), uploaded as CSV through
    POST /v1/benefits/{code}/codes; returns (codes, seconds)."""
    total = 0
    t0 = time.monotonic()
    for v in vouchers:
        need = max(pool_codes, members * v.per_member)
        for start in range(0, need, 5000):
            n = min(5000, need - start)
            csv_text = "code\n" + "".join(f"RB-{secrets.token_hex(10).upper()}\n" for _ in range(n))
            status, body = api.call("POST", f"/v1/benefits/{v.code}/codes", csv_text, content_type="text/csv")
            if status not in (200, 201) or body.get("added") != n:
                raise BenchError(f"uploading codes to {v.code}: HTTP {status} {body}")
        total += need
    return total, time.monotonic() - t0


def settle(s: Scratch, db: str, quiet_s: float = 1.0, timeout_s: float = 30.0) -> None:
    """Wait until requests still in flight when wrk stopped have finished on the server: no
    redemption written for ``quiet_s`` and no busy session on the database."""
    deadline = time.monotonic() + timeout_s
    last = None
    with contextlib.closing(s.connect(db)) as conn, conn.cursor() as cur:
        while time.monotonic() < deadline:
            cur.execute(
                "SELECT (SELECT count(*) FROM redemptions), (SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() AND state <> 'idle')"
            )
            count, busy = cur.fetchone()
            if count == last and busy == 0:
                return
            last = count
            time.sleep(quiet_s)


def write_slots(s: Scratch, db: str, vouchers: list[Voucher], members: int, path: Path, rng: random.Random) -> int:
    """Every (member, benefit) unit still allowed, shuffled, one per line; returns how many."""
    settle(s, db)
    with contextlib.closing(s.connect(db)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT member_id, benefit_code, sum(quantity) FROM redemptions "
            "WHERE status IN ('pending', 'fulfilled') GROUP BY member_id, benefit_code"
        )
        used = {(m, b): int(n) for m, b, n in cur.fetchall()}
    lines = [
        f"{member_id(i)} {v.code}\n"
        for v in vouchers
        for i in range(1, members + 1)
        for _ in range(v.per_member - used.get((member_id(i), v.code), 0))
    ]
    rng.shuffle(lines)
    path.write_text("".join(lines))
    return len(lines)


# --------------------------------------------------------------------------- API load


@dataclass
class Run:
    """One measured wrk run and what the database says about it."""

    name: str
    result: WrkResult
    slots: int = 0
    db_check: str = ""
    db_errors: list[str] = field(default_factory=list)
    by_benefit: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return self.result.errors + len(self.db_errors)


def check_vouchers(s: Scratch, db: str, prefix: str, n201: int, clients: int) -> tuple[str, list[str], dict[str, int]]:
    """The redemptions of a run as stored: all fulfilled, one code each, as many as wrk saw 201s
    (plus at most one in flight per connection when wrk stopped)."""
    settle(s, db)
    like = prefix + "-%"
    with contextlib.closing(s.connect(db)) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, count(*) FROM redemptions WHERE id LIKE %s GROUP BY status", (like,))
        statuses = dict(cur.fetchall())
        cur.execute("SELECT benefit_code, count(*) FROM redemptions WHERE id LIKE %s GROUP BY 1 ORDER BY 1", (like,))
        by_benefit = {b: int(n) for b, n in cur.fetchall()}
        cur.execute(
            """SELECT count(*) FROM redemptions r
                 LEFT JOIN (SELECT redemption_id, count(*) AS n FROM voucher_codes
                             WHERE redemption_id LIKE %s GROUP BY 1) c ON c.redemption_id = r.id
                WHERE r.id LIKE %s AND r.status = 'fulfilled' AND coalesce(c.n, 0) <> r.quantity""",
            (like, like),
        )
        wrong_codes = int(cur.fetchone()[0])
        cur.execute(
            # A pool's stock is its available codes: counted when shown (NULL stored), or, as earlier
            # releases kept it, stored and equal to them.
            """SELECT count(*) FROM benefits b WHERE b.fulfilment = 'pool' AND b.stock IS NOT NULL AND b.stock <>
                 (SELECT count(*) FROM voucher_codes v WHERE v.benefit_code = b.code AND v.status = 'available')"""
        )
        bad_stock = int(cur.fetchone()[0])
    fulfilled = int(statuses.get("fulfilled", 0))
    other = {k: int(v) for k, v in statuses.items() if k != "fulfilled"}
    errors = []
    if other:
        errors.append(f"redemptions not fulfilled: {other}")
    if not 0 <= fulfilled - n201 <= clients:
        errors.append(f"{fulfilled} fulfilled in the database against {n201} x 201 from wrk")
    if wrong_codes:
        errors.append(f"{wrong_codes} fulfilled redemptions without exactly one code per unit")
    if bad_stock:
        errors.append(f"{bad_stock} pool benefits whose stock differs from their available codes")
    note = (
        f"{fulfilled:,} redemptions fulfilled (wrk saw {n201:,} x 201), each with its code; "
        f"pool stock = available codes for every pool"
        if not errors
        else "; ".join(errors)
    )
    return note, errors, by_benefit


def measure(
    s: Scratch,
    args: argparse.Namespace,
    name: str,
    port: int,
    key: str,
    lua: str | None,
    before_each: Any = None,
) -> tuple[WrkResult, str]:
    """Warm-up, then the measured run, with ``accrual.run_wrk``; repeated if other processes
    were busy (``--noisy-retries``). ``before_each(prefix)`` runs before each wrk run, whose
    request ids start with ``prefix``. Returns the measured run and its prefix."""
    ctx = wrk_requests(lua) if lua else contextlib.nullcontext()
    with ctx:
        for attempt in range(args.noisy_retries + 1):
            wait_for_quiet(args.quiet_wait)
            run_id = uuid.uuid4().hex[:6]
            if args.warmup > 0:
                prefix = f"w{name[0]}{run_id}"
                if before_each:
                    before_each(prefix)
                log(f"{name}: warm-up {args.warmup} s")
                warm = run_wrk(s, port, key, args.members, args.clients, args.warmup, prefix, args.gunicorn)
                if warm.errors:
                    log(f"{name}: warm-up had {warm.errors} errors, e.g. {warm.sample!r}")
            prefix = f"m{name[0]}{run_id}"
            if before_each:
                before_each(prefix)
            log(f"{name}: measuring {args.seconds} s at {args.clients} connections")
            r = run_wrk(s, port, key, args.members, args.clients, args.seconds, prefix, args.gunicorn)
            log(f"{name}: {r.rps:,.1f} req/s, p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms, errors {r.errors}; {r.cpu}")
            if not r.noisy or attempt == args.noisy_retries:
                return r, prefix
            log(f"{name}: other processes were busy during the run; repeating it")
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- partner redemptions


@dataclass
class PartnerResult:
    submitted: int
    accepted: int
    rejected: list[str]
    submit_seconds: float
    submit_p50_ms: float
    submit_p99_ms: float
    final_within_wait: bool
    statuses: dict[str, int]
    span_seconds: float
    per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    attempts: int
    deliveries: int
    delivered_twice: int
    delivered_not_fulfilled: int
    fulfilled_not_delivered: int
    job_runs: int
    failure_reasons: dict[str, int]
    cpu: str
    noisy: bool

    @property
    def consistent(self) -> bool:
        return (
            self.deliveries == self.statuses.get("fulfilled", 0)
            and not self.delivered_twice
            and not self.delivered_not_fulfilled
            and not self.fulfilled_not_delivered
        )


def start_sandbox(s: Scratch, latency_ms: int) -> str:
    """``loyalty sandbox-partner`` on a free loopback port; returns its base URL."""
    exe = require_tool("loyalty", "pip install -e . into the virtualenv")
    log_path = s.tmp / "sandbox.log"
    with log_path.open("w") as out:
        proc = s.spawn(
            [exe, "sandbox-partner", "--port", "0", "--latency-ms", str(latency_ms)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in log_path.read_text().splitlines():
            if line.startswith("sandbox partner listening on "):
                return line.split()[4]
        if proc.poll() is not None:
            raise BenchError(f"the sandbox partner exited:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.1)
    raise BenchError("the sandbox partner did not start within 60 s")


def start_scheduler(s: Scratch, url: str, interval: int) -> subprocess.Popen[Any]:
    """``loyalty scheduler`` with the fulfilment job every ``interval`` s; returns once it runs jobs."""
    exe = require_tool("loyalty", "pip install -e . into the virtualenv")
    log_path = s.tmp / "scheduler.log"
    env = dict(os.environ, LOYALTY_DATABASE_URL=url, LOYALTY_JOB_INTERVALS=f"fulfilment={interval}")
    with log_path.open("w") as out:
        proc = s.spawn([exe, "scheduler"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if "leader: running" in log_path.read_text():
            return proc
        if proc.poll() is not None:
            raise BenchError(f"the scheduler exited:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)
    raise BenchError(f"the scheduler did not start running jobs within 90 s:\n{log_path.read_text()[-3000:]}")


def epoch(moment: dt.datetime) -> float:
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()


def bench_partner(
    s: Scratch, args: argparse.Namespace, db: str, url: str, port: int, key: str, sandbox_url: str
) -> PartnerResult:
    """M phone-credit redemptions through the API while the scheduler runs the fulfilment job;
    waits until every one is final and compares the database with what the sandbox delivered."""
    prefix = f"p{uuid.uuid4().hex[:6]}"
    count = args.partner_redemptions
    if count > args.members:
        raise BenchError(f"--partner-redemptions {count} needs at least as many members (--members {args.members})")
    log(f"partner: starting the scheduler (fulfilment every {args.fulfilment_interval} s)")
    scheduler = start_scheduler(s, url, args.fulfilment_interval)
    api = Api(port, key)
    sent: dict[str, float] = {}
    answered: list[float] = []
    rejected: list[str] = []
    lock = threading.Lock()
    step = max(1, args.members // count)  # spread over the members

    def redeem(i: int) -> None:
        rid = f"{prefix}-{i}"
        body = {
            "redemption_id": rid,
            "member_id": member_id(1 + (i * step) % args.members),
            "benefit_code": PARTNER_BENEFIT,
            "delivery": {"phone_number": f"139{i:08d}"},
        }
        t0 = time.time()
        status, answer = api.call("POST", "/v1/redemptions", body)
        t1 = time.time()
        with lock:
            sent[rid] = t0
            answered.append((t1 - t0) * 1000)
            if status != 201 or answer.get("status") != "pending":
                rejected.append(f"{rid}: HTTP {status} {str(answer)[:300]}")

    wait_for_quiet(args.quiet_wait)
    with CpuMeter() as meter:
        log(f"partner: {count} redemptions of {PARTNER_BENEFIT} from {args.partner_clients} clients")
        t_start = time.time()
        with ThreadPoolExecutor(args.partner_clients) as pool:
            list(pool.map(redeem, range(count)))
        submit_seconds = time.time() - t_start
        log(f"partner: submitted in {submit_seconds:.1f} s; waiting until every one is final")
        like = prefix + "-%"
        deadline = time.monotonic() + args.partner_wait
        final = False
        with contextlib.closing(s.connect(db)) as conn, conn.cursor() as cur:
            while time.monotonic() < deadline:
                cur.execute("SELECT count(*) FROM redemptions WHERE id LIKE %s AND status = 'pending'", (like,))
                if int(cur.fetchone()[0]) == 0:
                    final = True
                    break
                time.sleep(0.1)
    s.stop(scheduler)
    with contextlib.closing(s.connect(db)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id, status, coalesce(fulfilled_at, updated_at), attempts, failure_reason "
            "FROM redemptions WHERE id LIKE %s",
            (like,),
        )
        rows = cur.fetchall()
        cur.execute(
            "SELECT count(*) FROM job_runs WHERE job = 'fulfilment' AND started_at >= %s",
            (dt.datetime.fromtimestamp(t_start, dt.UTC),),
        )
        job_runs = int(cur.fetchone()[0])
    statuses = Counter(r[1] for r in rows)
    done = [epoch(r[2]) for r in rows if r[1] in ("fulfilled", "failed")]
    latencies = sorted((epoch(r[2]) - sent[r[0]]) * 1000 for r in rows if r[1] in ("fulfilled", "failed"))
    first = min(sent.values())
    span = (max(done) - first) if done else float("nan")
    fulfilled_ids = {r[0] for r in rows if r[1] == "fulfilled"}
    deliveries = [d for d in http_get_json(f"{sandbox_url}/_deliveries")["deliveries"] if d["order_id"] in sent]
    per_order = Counter(d["order_id"] for d in deliveries)
    answered.sort()
    return PartnerResult(
        submitted=count,
        accepted=count - len(rejected),
        rejected=rejected,
        submit_seconds=submit_seconds,
        submit_p50_ms=percentile(answered, 50),
        submit_p99_ms=percentile(answered, 99),
        final_within_wait=final,
        statuses=dict(statuses),
        span_seconds=span,
        per_second=len(done) / span if done else 0.0,
        p50_ms=percentile(latencies, 50),
        p90_ms=percentile(latencies, 90),
        p99_ms=percentile(latencies, 99),
        max_ms=latencies[-1] if latencies else float("nan"),
        attempts=sum(int(r[3]) for r in rows),
        deliveries=len(deliveries),
        delivered_twice=sum(1 for n in per_order.values() if n > 1),
        delivered_not_fulfilled=len(set(per_order) - fulfilled_ids),
        fulfilled_not_delivered=len(fulfilled_ids - set(per_order)),
        job_runs=job_runs,
        failure_reasons=dict(Counter(r[4] for r in rows if r[1] == "failed")),
        cpu=meter.summary(),
        noisy=meter.other_cores() >= accrual.NOISE_CORES,
    )


# --------------------------------------------------------------------------- verify


def verify(s: Scratch, url: str) -> tuple[bool, str]:
    """``loyalty verify`` over the whole database: (clean, its report)."""
    exe = require_tool("loyalty", "pip install -e . into the virtualenv")
    res = subprocess.run(
        [exe, "verify"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=dict(os.environ, LOYALTY_DATABASE_URL=url),
    )
    return res.returncode == 0, (res.stdout + res.stderr).strip()


# --------------------------------------------------------------------------- report


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return f.read().strip()


def report(
    args: argparse.Namespace,
    setup: dict[str, Any],
    vouchers: list[Voucher],
    red: Run | None,
    acc: WrkResult | None,
    health: WrkResult | None,
    partner: PartnerResult | None,
    verified: tuple[bool, str],
) -> dict[str, Any]:
    def ms(x: float) -> str:
        return f"{x:.1f} ms"

    def verdict(ok: bool, invalid: bool = False, noisy: bool = False) -> str:
        return "INVALID" if invalid else ("met" if ok else "missed") + (" (noisy)" if noisy else "")

    rows: list[tuple[str, str, str, str]] = []
    if red:
        r = red.result
        base = []
        if acc:
            base.append(f"accrual {acc.rps:,.0f}/s")
        if health:
            base.append(f"/health {health.rps:,.0f}/s")
        pg: PgbenchResult | None = setup.get("pgbench")
        if pg is not None:
            rows.append(
                (
                    f"baseline: pgbench TPC-B -s {args.pgbench_scale} -c {args.clients} -j 2",
                    f"{pg.tps:,.1f} tps, p50 {pg.p50_ms:.1f} / p99 {pg.p99_ms:.1f} ms",
                    "-",
                    "baseline" + (" (noisy)" if pg.noisy else ""),
                )
            )
        rows.append((f"voucher redemptions/s, {args.clients} clients", f"{r.rps:,.1f}/s", "-", "info"))
        if pg is not None:
            ratio = r.rps / pg.tps
            rows.append(
                (
                    "voucher redemptions / pgbench TPS",
                    f"{ratio:.3f}",
                    f">= {TARGET_RATIO:.2f}",
                    verdict(ratio >= TARGET_RATIO, bool(red.errors), r.noisy or pg.noisy),
                )
            )
        rows.append(("voucher redemption p50", ms(r.p50_ms), "-", "info"))
        rows.append(
            (
                "voucher redemption p99",
                ms(r.p99_ms),
                f"<= {TARGET_P99_MS:.0f} ms",
                verdict(r.p99_ms <= TARGET_P99_MS, bool(red.errors), r.noisy),
            )
        )
        rows.append(("voucher redemption errors", str(red.errors), "0", verdict(red.errors == 0)))
    if acc:
        rows.append(
            (
                "baseline: accrual POST /v1/transactions",
                f"{acc.rps:,.1f}/s, p50 {acc.p50_ms:.1f} / p99 {acc.p99_ms:.1f} ms",
                "-",
                "baseline" + (" (noisy)" if acc.noisy else ""),
            )
        )
    if health:
        rows.append(
            (
                "baseline: GET /health",
                f"{health.rps:,.1f}/s, p50 {health.p50_ms:.1f} / p99 {health.p99_ms:.1f} ms",
                "-",
                "baseline" + (" (noisy)" if health.noisy else ""),
            )
        )
    if partner:
        p = partner
        rows.append(
            (
                f"partner e2e: {p.submitted} redemptions, first request -> last final",
                f"{p.span_seconds:.2f} s = {p.per_second:,.1f}/s",
                "-",
                "info" + (" (noisy)" if p.noisy else ""),
            )
        )
        rows.append(("partner e2e latency request -> final p50", ms(p.p50_ms), "-", "info"))
        rows.append(("partner e2e latency request -> final p99", ms(p.p99_ms), "-", "info"))
        f_ok = p.statuses.get("fulfilled", 0) == p.submitted and p.final_within_wait and not p.rejected
        rows.append(
            (
                "partner fulfilled / failed / pending",
                f"{p.statuses.get('fulfilled', 0)} / {p.statuses.get('failed', 0)} / {p.statuses.get('pending', 0)}",
                f"{p.submitted} / 0 / 0",
                verdict(f_ok),
            )
        )
        rows.append(
            (
                "sandbox deliveries (= fulfilled, none twice)",
                f"{p.deliveries} ({p.delivered_twice} twice)",
                f"{p.statuses.get('fulfilled', 0)}, 0 twice",
                verdict(p.consistent),
            )
        )
    rows.append(("loyalty verify", "clean" if verified[0] else "BROKEN", "clean", verdict(verified[0])))

    print()
    print(
        f"loyalty redemption benchmark -- {dt.datetime.now().isoformat(timespec='seconds')}, "
        f"{os.cpu_count()} CPUs, PostgreSQL at {make_url(args.pg).render_as_string(hide_password=True)}"
    )
    print(
        f"code under test: {args.code_version}"
        + (
            ""
            if args.code_fingerprint == args.code_fingerprint_end
            else " -- WARNING: the service code changed during the run"
        )
    )
    print(f"load average at the start: {args.loadavg_start}; at the end: {loadavg()}")
    print(f"gunicorn: {setup.get('gunicorn', '?')}")
    print(
        f"members {args.members:,} (enrolled through the API at {setup.get('enrol_rate', 0):,.0f}/s, topped up "
        f"with {TOP_UP_FEN // 100:,} CNY of card spend each through the batch API at "
        f"{setup.get('topup_rate', 0):,.0f}/s); "
        f"tiers {setup.get('tiers')}; points per member min {setup.get('min_points', 0):,}"
    )
    print(
        "voucher slots per member: "
        + ", ".join(f"{v.code} x{v.per_member} at {v.price:,} points" for v in vouchers)
        + f"; {setup.get('codes', 0):,} codes uploaded through the API in {setup.get('upload_s', 0):.1f} s "
        f"({', '.join(f'{v.code} {max(args.pool_codes, args.members * v.per_member):,}' for v in vouchers)})"
    )
    print(f"clients {args.clients}, measure {args.seconds} s (warm-up {args.warmup} s) per API run")
    print()
    header = ("figure", "value", "target", "result")
    widths = [max(len(r[i]) for r in [*rows, header]) for i in range(4)]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print()
    for name, w in (("voucher redemptions", red.result if red else None), ("accrual", acc), ("GET /health", health)):
        if w is None:
            continue
        print(
            f"{name}: {w.rps:,.1f} req/s, p50 {w.p50_ms:.1f} / p90 {w.p90_ms:.1f} / p99 {w.p99_ms:.1f} / "
            f"max {w.max_ms:.1f} ms; {w.requests:,} requests: {w.n201:,} x 201, {w.other_2xx:,} other 2xx, "
            f"{w.non_2xx} non-2xx, {w.socket_errors} socket errors/timeouts"
        )
        print(f"      {w.cpu}")
        if w.non_2xx or w.socket_errors:
            print(f"      ERRORS, e.g. {w.sample}")
        if name == "voucher redemptions" and red:
            print(f"      db check: {red.db_check}" + (" -- MISMATCH" if red.db_errors else " (ok)"))
            print(f"      by benefit: {red.by_benefit}; {red.slots:,} unused slots before the run")
    if partner:
        p = partner
        print(
            f"partner: {p.submitted} x {PARTNER_BENEFIT}, sandbox latency {args.partner_latency_ms} ms, fulfilment job "
            f"every {args.fulfilment_interval} s by `loyalty scheduler` ({p.job_runs} runs)"
        )
        print(
            f"      submitting: {p.submit_seconds:.2f} s from {args.partner_clients} clients, API answer p50 "
            f"{p.submit_p50_ms:.1f} / p99 {p.submit_p99_ms:.1f} ms; {p.accepted} accepted as pending"
        )
        print(
            f"      request -> final: p50 {p.p50_ms:.0f} / p90 {p.p90_ms:.0f} / p99 {p.p99_ms:.0f} / "
            f"max {p.max_ms:.0f} ms; partner calls (attempts) {p.attempts}"
        )
        print(
            f"      sandbox: {p.deliveries} deliveries, {p.delivered_twice} delivered twice, "
            f"{p.delivered_not_fulfilled} delivered but not fulfilled, "
            f"{p.fulfilled_not_delivered} fulfilled but not delivered"
        )
        if not p.final_within_wait:
            print(f"      NOT FINAL after {args.partner_wait} s: {p.statuses}")
        if p.failure_reasons:
            print(f"      failures: {p.failure_reasons}")
        if p.rejected:
            print(f"      {len(p.rejected)} refused by the API, e.g. {p.rejected[0]}")
        print(f"      {p.cpu}")
    print("loyalty verify:")
    for line in verified[1].splitlines():
        if not line.startswith("ok  ") or not verified[0]:
            print(f"      {line}")
    return {
        "args": {k: v for k, v in vars(args).items()},
        "setup": setup,
        "vouchers": [vars(v) for v in vouchers],
        "redemptions": vars(red.result) if red else None,
        "redemptions_db_check": red.db_check if red else None,
        "accrual": vars(acc) if acc else None,
        "health": vars(health) if health else None,
        "partner": vars(partner) if partner else None,
        "verify_clean": verified[0],
        "verify": verified[1],
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--pg",
        default=os.environ.get("BENCH_POSTGRES_URL", DEFAULT_PG),
        help="admin URL of the PostgreSQL server (a scratch database is made there) [%(default)s]",
    )
    p.add_argument("--members", type=int, default=1000, help="members enrolled and topped up [%(default)s]")
    p.add_argument(
        "--voucher",
        choices=["table", "catalogue"],
        default="table",
        help="table: one pool voucher at 10 points, every request the same benefit (the issue's figure); "
        "catalogue: the default catalogue's pool benefits within their limits [%(default)s]",
    )
    p.add_argument(
        "--slots-per-member", type=int, default=20, help="redemptions of the table's voucher per member [%(default)s]"
    )
    p.add_argument("--pgbench-scale", type=int, default=10, help="pgbench -i -s, the baseline [%(default)s]")
    p.add_argument(
        "--pool-codes",
        type=int,
        default=0,
        help="codes uploaded to each pool benefit, at least as many as its slots (members x units) [%(default)s]",
    )
    p.add_argument("--clients", type=int, default=16, help="wrk connections for every API run [%(default)s]")
    p.add_argument("--seconds", type=int, default=15, help="measured seconds of pgbench and each API run [%(default)s]")
    p.add_argument("--warmup", type=int, default=5, help="warm-up seconds before each API run [%(default)s]")
    p.add_argument(
        "--gunicorn",
        default=MAKE_RUN_GUNICORN,
        metavar="CONFIG",
        help="gunicorn options as name=value pairs [%(default)s: the `make run` command line]",
    )
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["pgbench", "accrual", "health", "partner"],
        help="leave out a baseline or the partner phase (repeatable)",
    )
    p.add_argument("--partner-redemptions", type=int, default=500, help="phone-credit redemptions [%(default)s]")
    p.add_argument("--partner-clients", type=int, default=16, help="clients submitting them [%(default)s]")
    p.add_argument("--partner-latency-ms", type=int, default=SANDBOX_LATENCY_MS, help="sandbox latency [%(default)s]")
    p.add_argument(
        "--fulfilment-interval", type=int, default=1, help="seconds between fulfilment job runs [%(default)s]"
    )
    p.add_argument(
        "--partner-wait", type=int, default=300, help="give up waiting for final redemptions after [%(default)s] s"
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=30,
        help="before each measurement, wait up to this many s for unrelated CPU load to stop [%(default)s]",
    )
    p.add_argument(
        "--noisy-retries",
        type=int,
        default=1,
        help="repeat an API run this many times if unrelated processes used the CPUs [%(default)s]",
    )
    p.add_argument("--seed", type=int, default=1, help="shuffles the voucher slots [%(default)s]")
    p.add_argument(
        "--quick",
        action="store_true",
        help="small defaults: --seconds 10 --warmup 3 --partner-redemptions 200 --pgbench-scale 4",
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch database and files for inspection")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    if "--quick" in (sys.argv[1:] if argv is None else argv):
        p.set_defaults(seconds=10, warmup=3, partner_redemptions=200, pgbench_scale=4)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        require_tool("wrk", "install it with `apt-get install -y wrk` (Debian/Ubuntu package 'wrk')")
        require_tool("gunicorn", "pip install -e . into the virtualenv")
        require_tool("loyalty", "pip install -e . into the virtualenv")
    except BenchError as exc:
        print(f"bench/redemption.py: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    args.code_version, args.code_fingerprint = code_version(), code_fingerprint()
    args.loadavg_start = loadavg()
    log(f"code under test: {args.code_version}; load average {args.loadavg_start}")
    # Every process started from here on (gunicorn, the sandbox, the scheduler, the CLI) sees these.
    os.environ.setdefault("LOYALTY_SECRET_KEY", secrets.token_urlsafe(32))
    s = Scratch(make_url(args.pg), keep=args.keep)
    setup: dict[str, Any] = {}
    vouchers: list[Voucher] = []
    red = None
    acc = health = None
    partner = None
    verified = (False, "not run")
    try:
        if "pgbench" not in args.skip:
            setup["pgbench"] = bench_pgbench(s, args)
            log(f"pgbench: {setup['pgbench'].tps:,.1f} tps")
        sandbox_url = start_sandbox(s, args.partner_latency_ms)
        os.environ["LOYALTY_PARTNERS"] = f"telecom={sandbox_url}/telecom,video={sandbox_url}/video"
        log(f"sandbox partner at {sandbox_url}, latency {args.partner_latency_ms} ms")

        db, url, accrue_key = prepare_service_db(s)
        loyalty_cli(s, url, "catalogue", "install-default", timeout=120, what="loyalty catalogue install-default")
        out = loyalty_cli(
            s,
            url,
            "api-keys",
            "create",
            "--name",
            "bench-redemption",
            "--scopes",
            "accrue,read,redeem,admin",
            timeout=120,
            what="loyalty api-keys create",
        )
        key = out.stdout.strip().splitlines()[-1].strip()
        g = start_gunicorn(s, url, args.gunicorn)
        setup["gunicorn"] = " ".join([Path(g.cmd[0]).name, *g.cmd[1:]])
        log(f"gunicorn on port {g.port}: {setup['gunicorn']}")
        api = Api(g.port, key)

        log(f"enrolling {args.members:,} members through POST /v1/members")
        setup["enrol_rate"] = enrol_members(g.port, key, args.members, 8)
        log(f"topping up {args.members:,} members through POST /v1/transactions/batch")
        setup["topup_rate"] = top_up(api, args.members, 4)
        with contextlib.closing(s.connect(db)) as conn, conn.cursor() as cur:
            cur.execute("SELECT tier, count(*) FROM members GROUP BY tier ORDER BY tier")
            setup["tiers"] = {t: int(n) for t, n in cur.fetchall()}
            cur.execute("SELECT min(balance) FROM member_accounts")
            setup["min_points"] = int(cur.fetchone()[0])
        if set(setup["tiers"]) != {TIER}:
            raise BenchError(f"members are expected to be {TIER} after the top-up, not {setup['tiers']}")
        if args.voucher == "table":
            status, created = api.call("POST", "/v1/benefits", TABLE_VOUCHER)
            if status != 201:
                raise BenchError(f"POST /v1/benefits: HTTP {status} {created}")
            vouchers = [Voucher(TABLE_VOUCHER["code"], TABLE_VOUCHER["points_price"], args.slots_per_member)]
        else:
            vouchers = choose_vouchers(api, setup["min_points"] - RESERVE_POINTS)
        log("voucher slots: " + ", ".join(f"{v.code} x{v.per_member}" for v in vouchers))
        setup["codes"], setup["upload_s"] = upload_codes(api, vouchers, args.members, args.pool_codes)
        log(f"uploaded {setup['codes']:,} codes in {setup['upload_s']:.1f} s")

        # Each wrk run gets the slots still unused when it starts (the warm-up takes some).
        slots_path = s.tmp / "slots.txt"
        rng = random.Random(args.seed)
        slots_left = [0]

        def fresh_slots(prefix: str) -> None:
            slots_left[0] = write_slots(s, db, vouchers, args.members, slots_path, rng)
            log(f"{slots_left[0]:,} unused voucher slots")

        lua = REDEEM_LUA.replace("@SLOTS@", str(slots_path)).replace("@THREADS@", str(WRK_THREADS))
        r, prefix = measure(s, args, "redemption", g.port, key, lua, fresh_slots)
        note, errors, by_benefit = check_vouchers(s, db, prefix, r.n201, args.clients)
        if "bench-slots-exhausted" in r.sample:
            errors.append(f"the run used up its {slots_left[0]:,} slots: raise --members")
        red = Run("redemption", r, slots_left[0], note, errors, by_benefit)

        if "accrual" not in args.skip:
            acc = measure(s, args, "accrual", g.port, accrue_key, None)[0]
        if "health" not in args.skip:
            health = measure(s, args, "health", g.port, key, HEALTH_LUA)[0]
        if "partner" not in args.skip:
            partner = bench_partner(s, args, db, url, g.port, key, sandbox_url)
            log(
                f"partner: {partner.statuses} in {partner.span_seconds:.2f} s, p50 {partner.p50_ms:.0f} ms, "
                f"p99 {partner.p99_ms:.0f} ms; {partner.deliveries} deliveries"
            )
        s.stop(g.proc)
        log("loyalty verify")
        verified = verify(s, url)
        setup["redemptions_in_db"] = count_rows(s, db, "redemptions")
        args.code_version_end, args.code_fingerprint_end = code_version(), code_fingerprint()
        out_json = report(args, setup, vouchers, red, acc, health, partner, verified)
        if args.json:
            args.json.write_text(json.dumps(out_json, indent=2, default=str))
    except BenchError as exc:
        print(f"bench/redemption.py: FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench/redemption.py: interrupted, cleaning up", file=sys.stderr)
        return 130
    finally:
        s.close()
    invalid = (
        (red is not None and red.errors > 0)
        or not verified[0]
        or (partner is not None and not (partner.consistent and partner.final_within_wait))
    )
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Accrual benchmark on PostgreSQL: pgbench baseline, the API under load, the CSV importer.

Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/accrual.py                  # full sizes (see --help)
    .venv/bin/python bench/accrual.py --quick          # a couple of minutes

Every database it uses is a scratch database it creates and drops; every
process it starts (pgbench, gunicorn, wrk, the loyalty CLI) it stops. All
traffic is on the loopback interface. See bench/README.md for what each
figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import http.client
import json
import math
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
from sqlalchemy.engine import URL, make_url

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"

#: Targets the figures are judged against.
TARGET_API_RATIO = 0.33  # API req/s >= 33% of pgbench TPS at the same concurrency
TARGET_API_P99_MS = 50.0
TARGET_IMPORT_RPS = 10_000.0

TX_PATH = "/v1/transactions"


class BenchError(RuntimeError):
    """A step failed; the message says which and why."""


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def require_tool(name: str, hint: str) -> str:
    path = shutil.which(name) or (str(VENV_BIN / name) if (VENV_BIN / name).exists() else None)
    if path is None:
        raise BenchError(f"'{name}' is not installed: {hint}")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_env(url: URL) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PGHOST=url.host or "127.0.0.1", PGPORT=str(url.port or 5432), PGUSER=url.username or "postgres")
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return env


def percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(pct / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def proc_cpu_by_pid() -> dict[tuple[int, int], tuple[str, float, int]]:
    """CPU seconds (user+system) of every process, by (pid, start time), with its command name and parent."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        if comm == "postgres":
            comm = _postgres_owner(entry)
        out[(int(entry), int(fields[19]))] = (comm, (int(fields[11]) + int(fields[12])) / ticks, int(fields[1]))
    return out


#: Scratch databases of this run: PostgreSQL backends serving other databases are someone else's load.
OUR_DATABASES: set[str] = set()
_BACKEND_DB: dict[str, str] = {}


def _postgres_owner(pid: str) -> str:
    """``postgres`` for the server's own processes and backends of our databases,
    ``postgres:<db>`` for a backend serving another database."""
    db = _BACKEND_DB.get(pid)
    if db is None:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace").split()
        except OSError:
            title = []
        # A backend's title: "postgres: 15/main: <user> <database> <host(port)> <state>"
        db = title[3] if len(title) >= 5 and title[0] == "postgres:" and "(" in title[4] else ""
        if db:
            _BACKEND_DB[pid] = db
    return "postgres" if not db or db in OUR_DATABASES else f"postgres:{db}"


def system_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


class CpuMeter:
    """Samples every process's CPU time while a phase runs, so processes that
    exit before the end (pgbench's backends, the importer's) are counted too."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.first: dict[tuple[int, int], tuple[str, float, int]] = {}
        self.last: dict[tuple[int, int], tuple[str, float, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        self.last.update(proc_cpu_by_pid())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> CpuMeter:
        self.first = proc_cpu_by_pid()
        self.last = dict(self.first)
        self.sys0 = system_cpu()
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.wall = time.monotonic() - self.t0
        busy1, total1 = system_cpu()
        self.machine_busy = (busy1 - self.sys0[0]) / max(1.0, total1 - self.sys0[1])

    def groups(self) -> dict[str, float]:
        """CPU seconds spent during the phase, by command name (this script itself left out;
        another program it started, such as ``python bench/whatif.py``, counts as ``loyalty``)."""
        out: dict[str, float] = {}
        me = os.getpid()
        for key, (comm, secs, ppid) in self.last.items():
            if key[0] == me:
                continue
            if comm not in OURS and ppid == me:
                comm = "loyalty"
            prev = self.first.get(key)
            spent = secs - prev[1] if prev else secs
            out[comm] = out.get(comm, 0.0) + max(0.0, spent)
        return out

    def other_cores(self) -> float:
        """Cores used by processes that are not part of the benchmark."""
        return sum(v for k, v in self.groups().items() if k not in OURS) / self.wall

    def summary(self, extra: dict[str, float] | None = None) -> str:
        groups = self.groups()
        groups.update(extra or {})
        parts = [f"{k} {groups.get(k, 0.0) / self.wall:.2f}" for k in OURS if groups.get(k, 0.0) / self.wall >= 0.01]
        rest = sorted(((v, k) for k, v in groups.items() if k not in OURS), reverse=True)
        top = ", ".join(f"{k} {v / self.wall:.2f}" for v, k in rest[:2] if v / self.wall >= 0.01)
        other = sum(v for v, _ in rest) / self.wall
        parts.append(f"other {other:.2f}" + (f" ({top})" if top else ""))
        return (
            "cores busy: "
            + ", ".join(parts)
            + f"; machine {self.machine_busy:.0%} busy of {os.cpu_count()} CPUs"
            + (f" -- {NOISY}" if other >= NOISE_CORES else "")
        )


#: Command names of the processes a phase is made of; anything else is noise.
OURS = ("postgres", "gunicorn", "loyalty", "wrk", "pgbench")
#: Unrelated processes using this many cores make a figure noisy.
NOISE_CORES = 0.15
NOISY = "WARNING: unrelated processes were busy, figures are noisy"


def wait_for_quiet(max_wait: float) -> None:
    """Wait (up to ``max_wait`` s) until processes outside the benchmark leave the CPUs alone.

    On a 2-core machine one busy neighbour (a test suite, a build) halves what
    is left for the service, so measuring then would say little about it.
    """
    deadline = time.monotonic() + max_wait
    said = False
    while True:
        with CpuMeter() as meter:
            time.sleep(2)
        other = meter.other_cores()
        if other < NOISE_CORES:
            if said:
                log("the machine is quiet again")
            return
        busiest = sorted(((v, k) for k, v in meter.groups().items() if k not in OURS), reverse=True)[:3]
        names = ", ".join(f"{k} {v / meter.wall:.2f} cores" for v, k in busiest)
        if time.monotonic() >= deadline:
            log(f"WARNING: unrelated processes still busy ({names}); measuring anyway, figures will be noisy")
            return
        if not said:
            log(f"waiting up to {max_wait:.0f} s for unrelated load to stop ({names})")
            said = True
        time.sleep(3)


# --------------------------------------------------------------------------- scratch databases


class Scratch:
    """Creates databases and processes and undoes all of it on close()."""

    def __init__(self, admin_url: URL, keep: bool) -> None:
        self.admin_url = admin_url
        self.keep = keep
        self.databases: list[str] = []
        self.procs: list[subprocess.Popen[Any]] = []
        self.tag = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.tmp = Path(tempfile.mkdtemp(prefix="loyalty-bench-"))

    def admin(self) -> Any:
        conn = psycopg2.connect(
            host=self.admin_url.host,
            port=self.admin_url.port or 5432,
            user=self.admin_url.username,
            password=self.admin_url.password,
            dbname=self.admin_url.database or "postgres",
        )
        conn.autocommit = True
        return conn

    def create_database(self, prefix: str) -> str:
        name = f"{prefix}_{self.tag}"
        with contextlib.closing(self.admin()) as conn, conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        OUR_DATABASES.add(name)
        return name

    def drop_database(self, name: str) -> None:
        if self.keep:
            return
        with contextlib.closing(self.admin()) as conn, conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.databases:
            self.databases.remove(name)

    def url(self, database: str) -> str:
        return self.admin_url.set(database=database).render_as_string(hide_password=False)

    def connect(self, database: str) -> Any:
        conn = psycopg2.connect(self.url(database))
        conn.autocommit = True
        return conn

    def spawn(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], timeout: float = 15) -> None:
        """Stop one process we started (its whole session: gunicorn's workers too)."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # The session may outlive its leader for a moment (workers exiting).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        for proc in list(self.procs):
            with contextlib.suppress(Exception):
                self.stop(proc)
        if self.keep:
            log(f"--keep: databases {', '.join(self.databases) or '(none)'} and files in {self.tmp} are left")
            return
        for name in list(self.databases):
            try:
                self.drop_database(name)
            except Exception as exc:  # noqa: BLE001 - report and carry on cleaning
                log(f"could not drop database {name}: {exc}")
        shutil.rmtree(self.tmp, ignore_errors=True)


def run(
    cmd: list[str], *, timeout: float, env: dict[str, str] | None = None, what: str
) -> subprocess.CompletedProcess[str]:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what} did not finish within {timeout:.0f} s") from None
    if res.returncode != 0:
        raise BenchError(f"{what} failed (exit {res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    return res


# --------------------------------------------------------------------------- (a) pgbench


@dataclass
class PgbenchResult:
    tps: float
    p50_ms: float
    p99_ms: float
    transactions: int
    failed: int
    cpu: str
    noisy: bool


def bench_pgbench(s: Scratch, args: argparse.Namespace) -> PgbenchResult:
    pgbench = require_tool("pgbench", "install PostgreSQL's client tools (apt-get install -y postgresql-client)")
    env = pg_env(s.admin_url)
    db = s.create_database("bench_pgbench")
    log(f"pgbench: initialising scale {args.pgbench_scale} in {db}")
    run([pgbench, "-i", "-q", "-s", str(args.pgbench_scale), db], timeout=900, env=env, what="pgbench -i")
    for attempt in range(args.noisy_retries + 1):
        logdir = s.tmp / f"pgbench-log-{attempt}"
        logdir.mkdir()
        wait_for_quiet(args.quiet_wait)
        log(f"pgbench: {args.clients} clients, -j 2, {args.seconds} s")
        with CpuMeter() as meter:
            res = run(
                [
                    pgbench,
                    "-c",
                    str(args.clients),
                    "-j",
                    "2",
                    "-T",
                    str(args.seconds),
                    "-l",
                    "--log-prefix",
                    str(logdir / "pgbench_log"),
                    db,
                ],
                timeout=args.seconds + 300,
                env=env,
                what="pgbench",
            )
        noisy = meter.other_cores() >= NOISE_CORES
        if not noisy or attempt == args.noisy_retries:
            break
        log(f"pgbench run was noisy ({meter.summary()}); repeating it")
    cpu = meter.summary()
    tps = None
    processed = failed = 0
    for line in res.stdout.splitlines():
        if line.startswith("tps =") and "without initial connection time" in line:
            tps = float(line.split()[2])
        elif line.startswith("number of transactions actually processed:"):
            processed = int(line.split(":")[1].split()[0])
        elif line.startswith("number of failed transactions:"):
            failed = int(line.split(":")[1].split()[0])
    if tps is None:
        raise BenchError(f"no tps line in pgbench output:\n{res.stdout}")
    latencies = []
    for path in logdir.iterdir():
        with path.open() as f:
            latencies.extend(int(line.split()[2]) / 1000 for line in f if line.strip())
    latencies.sort()
    s.drop_database(db)
    return PgbenchResult(tps, percentile(latencies, 50), percentile(latencies, 99), processed, failed, cpu, noisy)


# --------------------------------------------------------------------------- the service database


def loyalty_cli(s: Scratch, db_url: str, *cmd: str, timeout: float, what: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LOYALTY_DATABASE_URL=db_url)
    exe = require_tool("loyalty", "pip install -e . into the virtualenv")
    return run([exe, *cmd], timeout=timeout, env=env, what=what)


def has_command(*words: str) -> bool:
    """Whether this version of the loyalty CLI has the (sub)command ``words``."""
    exe = require_tool("loyalty", "pip install -e . into the virtualenv")
    res = subprocess.run([exe, *words, "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    return res.returncode == 0


SERVICE_PATHS = ("loyalty", "rules", "migrations", "wsgi.py")


def code_version() -> str:
    """The commit under test, and whether the service code differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", *SERVICE_PATHS], capture_output=True, text=True, cwd=ROOT, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git)"
    return f"{head or 'unknown'}" + (" + uncommitted changes in the service code" if dirty else "")


def code_fingerprint() -> str:
    """Changes whenever the service code does (committed or not), and only then."""
    try:
        trees = subprocess.run(
            ["git", "rev-parse", *(f"HEAD:{p}" for p in SERVICE_PATHS)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=10,
        ).stdout
        diff = subprocess.run(
            ["git", "diff", "HEAD", "--", *SERVICE_PATHS], capture_output=True, text=True, cwd=ROOT, timeout=30
        ).stdout
        untracked = subprocess.run(
            ["git", "ls-files", "--others", "--exclude-standard", "--", *SERVICE_PATHS],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=10,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return str(zlib.crc32((trees + diff + untracked).encode()))


def prepare_service_db(s: Scratch) -> tuple[str, str, str]:
    """A fresh migrated database and an API key; returns (name, url, key)."""
    db = s.create_database("bench_loyalty")
    with contextlib.closing(s.admin()) as conn, conn.cursor() as cur:
        # Per-function timings (pg_stat_user_functions) for the ledger trigger.
        cur.execute(f"ALTER DATABASE \"{db}\" SET track_functions = 'pl'")
    url = s.url(db)
    loyalty_cli(s, url, "db", "upgrade", timeout=300, what="loyalty db upgrade")
    # `make run` publishes the shipped programme next (versions that have the command).
    if has_command("rules", "install-default"):
        loyalty_cli(s, url, "rules", "install-default", timeout=120, what="loyalty rules install-default")
    out = loyalty_cli(
        s,
        url,
        "api-keys",
        "create",
        "--name",
        "bench",
        "--scopes",
        "accrue,read",
        timeout=120,
        what="loyalty api-keys create",
    )
    key = out.stdout.strip().splitlines()[-1].strip()
    return db, url, key


def function_stats(s: Scratch, db: str) -> dict[str, tuple[int, float, float]]:
    """``pg_stat_user_functions``: name -> (calls, total ms, self ms)."""
    with contextlib.closing(s.connect(db)) as conn, conn.cursor() as cur:
        cur.execute("SELECT funcname, calls, total_time, self_time FROM pg_stat_user_functions")
        return {r[0]: (int(r[1]), float(r[2]), float(r[3])) for r in cur.fetchall()}


def count_rows(s: Scratch, db: str, table: str) -> int:
    with contextlib.closing(s.connect(db)) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return int(cur.fetchone()[0])


def trigger_note(
    before: dict[str, tuple[int, float, float]], after: dict[str, tuple[int, float, float]], wall_s: float
) -> str:
    name = "ledger_entry_balanced"
    c0, t0, _ = before.get(name, (0, 0.0, 0.0))
    c1, t1, _ = after.get(name, (0, 0.0, 0.0))
    calls, ms = c1 - c0, t1 - t0
    if calls <= 0:
        return "trigger ledger_entry_balanced: no calls recorded"
    return (
        f"trigger ledger_entry_balanced (postings_balanced): {calls:,} calls, {ms / 1000:.2f} s total, "
        f"{ms * 1000 / calls:.1f} us/call = {ms / 10 / wall_s:.1f}% of wall time"
    )


# --------------------------------------------------------------------------- (b) the API


@dataclass
class Gunicorn:
    proc: subprocess.Popen[Any]
    port: int
    cmd: list[str]
    log_path: Path


def parse_config(text: str) -> tuple[list[str], str | None]:
    """``workers=4,worker-class=gthread,threads=8`` -> gunicorn long options; the
    pseudo-option ``whatif=claim+noping`` picks bench/whatif.py patches instead."""
    flags: list[str] = []
    whatif = None
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise BenchError(f"--gunicorn {text!r}: expected name=value pairs, e.g. workers=4,threads=2")
        if name.strip() == "whatif":
            whatif = value.strip().replace("+", ",")
            continue
        flags += [f"--{name.strip()}", value.strip()]
    if "--workers" not in flags:
        flags = ["--workers", "4", *flags]
    return flags, whatif


def start_gunicorn(s: Scratch, db_url: str, config: str, whatif: str | None = None) -> Gunicorn:
    gunicorn = require_tool("gunicorn", "pip install -e . into the virtualenv")
    port = free_port()
    flags, config_whatif = parse_config(config)
    whatif = config_whatif or whatif
    env = dict(os.environ, LOYALTY_DATABASE_URL=db_url)
    # The server of `make run`: gunicorn reads ./gunicorn.conf.py (its worker class, timeouts, logging,
    # metrics directory) by itself, from the repository root it runs in.
    app = ["wsgi:app"]
    if whatif:  # the same app with candidate fixes patched in (bench/whatif.py)
        # On PYTHONPATH, after the repository root that gunicorn puts first: with
        # --pythonpath, bench/rules.py would shadow the `rules` package.
        app = ["whatif:app"]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "bench"), env.get("PYTHONPATH")]))
        env["BENCH_WHATIF"] = whatif
    cmd = [gunicorn, "--bind", f"127.0.0.1:{port}", *flags, *app]
    log_path = s.tmp / f"gunicorn-{port}.log"
    logf = log_path.open("w")
    proc = s.spawn(cmd, cwd=ROOT, env=env, stdout=logf, stderr=logf)
    logf.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"gunicorn exited (code {proc.returncode}):\n{log_path.read_text()[-4000:]}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                conn.close()
                return Gunicorn(proc, port, cmd, log_path)
        time.sleep(0.2)
    raise BenchError(f"gunicorn did not answer /health within 60 s:\n{log_path.read_text()[-4000:]}")


def member_id(i: int) -> str:
    return f"M{i:08d}"


def enrol_members(port: int, key: str, count: int, threads: int, first: int = 1) -> float:
    """POST /v1/members for M<first>..M<count>, a few threads; returns members/s."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    local = threading.local()
    errors: list[str] = []

    def enrol(i: int) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        body = json.dumps({"member_id": member_id(i), "channel": "app"})
        for attempt in range(3):
            try:
                conn.request("POST", "/v1/members", body, headers)
                resp = conn.getresponse()
                text = resp.read()
                if resp.status in (200, 201):
                    return
                errors.append(f"{member_id(i)}: HTTP {resp.status} {text[:300]!r}")
                return
            except (OSError, http.client.HTTPException):
                conn.close()
                if attempt == 2:
                    raise

    t0 = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(enrol, range(first, count + 1)):
            pass
    elapsed = time.monotonic() - t0
    if errors:
        raise BenchError(f"{len(errors)} enrolments failed, e.g. {errors[0]}")
    return (count - first + 1) / elapsed


WRK_LUA = r"""
-- Generated by bench/accrual.py: POST /v1/transactions with unique ids, random members.
local threads = {}
local counter = 0

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  math.randomseed(tid * 7919 + os.time())
  n201, n2xx, nbad, sample = 0, 0, 0, ""
end

-- Card spend, log-uniform from 1 to 2,000 CNY (in fen): mostly small, some large.
local LOG_LO, LOG_HI = math.log(AMOUNT_MIN), math.log(AMOUNT_MAX)
function amount()
  return math.floor(math.exp(LOG_LO + math.random() * (LOG_HI - LOG_LO)))
end

-- A moment in the last DAYS days (at least an hour ago), written in UTC+8.
function occurred()
  local t = NOW - math.random(3600, DAYS * 86400)
  return os.date("!%Y-%m-%dT%H:%M:%S+08:00", t + 8 * 3600)
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"transaction_id":"%s-%d-%d","member_id":"M%08d","type":"card_purchase","amount":%d,'
    .. '"currency":"CNY","occurred_at":"%s","channel":"pos","mcc":"5411"}',
    PREFIX, tid, counter, math.random(1, MEMBERS), amount(), occurred())
  return wrk.format("POST", PATH, HEADERS, body)
end

function response(status, headers, body)
  if status == 201 then
    n201 = n201 + 1
  elseif status >= 200 and status < 300 then
    n2xx = n2xx + 1
  else
    nbad = nbad + 1
    if sample == "" then sample = status .. " " .. string.sub(body or "", 1, 200) end
  end
end

function done(summary, latency, requests)
  local c201, c2xx, cbad, sample = 0, 0, 0, ""
  for _, t in ipairs(threads) do
    c201 = c201 + t:get("n201")
    c2xx = c2xx + t:get("n2xx")
    cbad = cbad + t:get("nbad")
    if sample == "" then sample = t:get("sample") end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"n201":%d,"other_2xx":%d,"non_2xx":%d,'
    .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,"status_errors":%d,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,"sample":"%s"}\n',
    summary.requests, summary.duration, c201, c2xx, cbad,
    e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    string.gsub(sample, '[%c"\\]', "?")))
end
"""


#: Amounts in fen, log-uniform (most purchases are small), for the API and the import file.
AMOUNT_MIN, AMOUNT_MAX = 100, 200_000
#: Transactions are spread over this many past days, so that the programme's
#: per-day and per-month caps rarely stop a transaction from earning: every
#: booked transaction then writes a full ledger entry (the expensive case).
API_DAYS, IMPORT_DAYS = 30, 60


def write_wrk_script(path: Path, key: str, members: int, prefix: str) -> None:
    headers = f'{{["Authorization"] = "Bearer {key}", ["Content-Type"] = "application/json"}}'
    consts = (
        f'PREFIX = "{prefix}"\nMEMBERS = {members}\nNOW = {int(time.time())}\nDAYS = {API_DAYS}\n'
        f"AMOUNT_MIN = {AMOUNT_MIN}\nAMOUNT_MAX = {AMOUNT_MAX}\n"
        f'PATH = "{TX_PATH}"\nHEADERS = {headers}\n'
    )
    path.write_text(consts + WRK_LUA)


@dataclass
class WrkResult:
    config: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    n201: int
    other_2xx: int
    non_2xx: int
    socket_errors: int
    sample: str
    cpu: str = ""
    trigger: str = ""
    db_check: str = ""
    db_mismatch: bool = False
    noisy: bool = False

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors + int(self.db_mismatch)


def run_wrk(
    s: Scratch, port: int, key: str, members: int, clients: int, seconds: int, prefix: str, config: str
) -> WrkResult:
    wrk = require_tool("wrk", "install it with `apt-get install -y wrk` (Debian/Ubuntu package 'wrk')")
    script = s.tmp / f"wrk-{prefix}.lua"
    write_wrk_script(script, key, members, prefix)
    cmd = [
        wrk,
        "-t",
        "2",
        "-c",
        str(clients),
        "-d",
        f"{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}",
    ]
    with CpuMeter() as meter:
        res = run(cmd, timeout=seconds + 120, what="wrk")
    cpu = meter.summary()
    noisy = meter.other_cores() >= NOISE_CORES
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise BenchError(f"wrk printed no BENCH_JSON line:\n{res.stdout}\n{res.stderr}")
    d = json.loads(line.split(" ", 1)[1])
    secs = d["duration_us"] / 1e6
    return WrkResult(
        config=config,
        requests=d["requests"],
        seconds=secs,
        rps=d["requests"] / secs,
        p50_ms=d["p50_us"] / 1000,
        p90_ms=d["p90_us"] / 1000,
        p99_ms=d["p99_us"] / 1000,
        max_ms=d["max_us"] / 1000,
        n201=d["n201"],
        other_2xx=d["other_2xx"],
        non_2xx=d["non_2xx"],
        socket_errors=d["connect_errors"] + d["read_errors"] + d["write_errors"] + d["timeouts"],
        sample=d["sample"],
        cpu=cpu,
        noisy=noisy,
    )


def bench_api(s: Scratch, args: argparse.Namespace, db: str, url: str, key: str) -> tuple[list[WrkResult], float]:
    results: list[WrkResult] = []
    enrol_rate = float("nan")
    for n, config in enumerate(args.gunicorn):
        g = start_gunicorn(s, url, config, args.whatif)
        shown = " ".join([Path(g.cmd[0]).name, *g.cmd[1:]])
        log(f"gunicorn [{config}] on port {g.port}: {shown}")
        if n == 0:
            log(f"enrolling {args.members:,} members through POST /v1/members ({args.enrol_threads} threads)")
            enrol_rate = enrol_members(g.port, key, args.members, args.enrol_threads)
            log(f"enrolled at {enrol_rate:,.0f} members/s")
        for attempt in range(args.noisy_retries + 1):
            wait_for_quiet(args.quiet_wait)
            run_id = uuid.uuid4().hex[:6]
            if args.warmup > 0:
                log(f"warm-up {args.warmup} s")
                warm = run_wrk(s, g.port, key, args.members, args.clients, args.warmup, f"w{n}{run_id}", config)
                if warm.errors:
                    log(f"warm-up had {warm.errors} errors, e.g. {warm.sample!r}")
            log(f"measuring {args.seconds} s at {args.clients} connections")
            stats0 = function_stats(s, db)
            tx0 = count_rows(s, db, "transactions")
            entries0 = count_rows(s, db, "journal_entries")
            r = run_wrk(s, g.port, key, args.members, args.clients, args.seconds, f"m{n}{run_id}", config)
            # Requests in flight when wrk stops still complete on the server (up to one per
            # connection, at the start and at the end of the window), so allow that much slack.
            time.sleep(0.5)
            booked = count_rows(s, db, "transactions") - tx0
            entries = count_rows(s, db, "journal_entries") - entries0
            r.db_check = (
                f"transactions table grew by {booked:,} during the window; wrk saw {r.n201:,} x 201; "
                f"{entries:,} ledger entries written ({entries / max(1, booked):.0%} of the transactions "
                "earned points)"
            )
            r.db_mismatch = not 0 <= booked - r.n201 <= 2 * args.clients
            if not r.noisy or attempt == args.noisy_retries:
                break
            log(f"[{config}] noisy run ({r.rps:,.1f} req/s; {r.cpu}); repeating it")
        s.stop(g.proc)  # backends exit, so their function stats are flushed
        time.sleep(1.5)
        r.trigger = trigger_note(stats0, function_stats(s, db), r.seconds)
        log(f"[{config}] {r.rps:,.1f} req/s, p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms, errors {r.errors}; {r.cpu}")
        results.append(r)
    return results, enrol_rate


# --------------------------------------------------------------------------- (c) the importer


def generate_csv(path: Path, rows: int, members: int, seed: int = 42) -> None:
    rnd = random.Random(seed)
    tz = dt.timezone(dt.timedelta(hours=8))
    now = dt.datetime.now(tz).replace(microsecond=0)
    lo, hi = math.log(AMOUNT_MIN), math.log(AMOUNT_MAX)
    channels = ["pos", "online", "app", "", ""]
    mccs = ["5411", "5812", "5541", "4111", "5999", ""]
    merchants = ["Walmart Shenzhen", "Starbucks", "Sinopec", "Metro", "Taobao", ""]
    prefix = uuid.uuid4().hex[:6]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            ["transaction_id", "member_id", "type", "amount", "currency", "occurred_at", "channel", "mcc", "merchant"]
        )
        for i in range(rows):
            when = now - dt.timedelta(seconds=rnd.randrange(3600, IMPORT_DAYS * 86_400))
            w.writerow(
                [
                    f"imp-{prefix}-{i}",
                    member_id(rnd.randint(1, members)),
                    "card_purchase",
                    int(math.exp(rnd.uniform(lo, hi))),
                    "CNY",
                    when.isoformat(),
                    rnd.choice(channels),
                    rnd.choice(mccs),
                    rnd.choice(merchants),
                ]
            )


@dataclass
class ImportResult:
    rows: int
    seconds: float
    rps: float
    posted: int
    replayed: int
    rejected: int
    copy_rps: float
    copy_seconds: float
    cpu: str
    importer_cpu_s: float
    trigger: str
    output: str
    noisy: bool
    entries: int
    parallel: str = ""


def parallel_import(s: Scratch, args: argparse.Namespace, db: str, cmd0: list[str], env: dict[str, str]) -> str:
    """What-if: the same kind of file split by member into N parts, imported by N
    concurrent processes (members never straddle parts, so their order is kept).
    Measures what a parallel importer could gain on this machine."""
    n = args.import_parallel
    path = s.tmp / "parallel.csv"
    generate_csv(path, args.rows, args.import_members, seed=7)
    parts = [s.tmp / f"parallel-{i}.csv" for i in range(n)]
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        files = [p.open("w", newline="", encoding="utf-8") for p in parts]
        writers = [csv.writer(fh) for fh in files]
        for w in writers:
            w.writerow(header)
        for row in reader:
            writers[zlib.crc32(row[1].encode()) % n].writerow(row)
        for fh in files:
            fh.close()
    path.unlink()
    with contextlib.closing(s.connect(db)) as conn, conn.cursor() as cur:
        cur.execute("CHECKPOINT")
    wait_for_quiet(args.quiet_wait)
    log(f"what-if: {n} importer processes on member-disjoint parts of a {args.rows:,}-row file")
    with CpuMeter() as meter:
        t0 = time.monotonic()
        procs = [
            s.spawn(
                [*cmd0, "import-transactions", str(p), "--no-progress"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for p in parts
        ]
        outs = []
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=args.import_timeout)
            except subprocess.TimeoutExpired:
                raise BenchError("parallel import timed out") from None
            if proc.returncode != 0:
                raise BenchError(f"parallel import failed (exit {proc.returncode}):\n{err[-3000:]}")
            outs.append(out.strip().splitlines()[-1] if out.strip() else "")
            s.procs.remove(proc)
        elapsed = time.monotonic() - t0
    posted = sum(int(o.split()[1].rstrip(",")) for o in outs if o.startswith("posted "))
    note = "" if posted == args.rows else f" -- only {posted:,} of {args.rows:,} rows posted"
    return (
        f"what-if, {n} importer processes on member partitions: {args.rows:,} rows in {elapsed:.1f} s = "
        f"{args.rows / elapsed:,.0f} rows/s{note}; {meter.summary()}"
    )


def copy_baseline(s: Scratch, db: str, path: Path) -> float:
    """Seconds PostgreSQL takes to COPY the same CSV into one plain table keyed like ``transactions``."""
    with contextlib.closing(s.connect(db)) as conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE bench_copy_baseline (transaction_id varchar(64), member_id varchar(64), type varchar(32),"
            " amount bigint, currency varchar(3), occurred_at timestamptz, channel varchar(32), mcc varchar(4),"
            " merchant varchar(128), PRIMARY KEY (member_id, transaction_id))"
        )
        t0 = time.monotonic()
        with path.open(encoding="utf-8") as f:
            cur.copy_expert("COPY bench_copy_baseline FROM STDIN (FORMAT csv, HEADER true)", f)
        elapsed = time.monotonic() - t0
        cur.execute("DROP TABLE bench_copy_baseline")
    return elapsed


def bench_import(s: Scratch, args: argparse.Namespace, db: str, url: str) -> ImportResult:
    env = dict(os.environ, LOYALTY_DATABASE_URL=url)
    if args.whatif:
        cmd0 = [sys.executable, str(ROOT / "bench" / "whatif.py")]
        env["BENCH_WHATIF"] = args.whatif
    else:
        cmd0 = [require_tool("loyalty", "pip install -e . into the virtualenv")]
    for attempt in range(args.noisy_retries + 1):
        path = s.tmp / f"settlement-{attempt}.csv"
        log(f"generating {args.rows:,} CSV rows over {args.import_members:,} members")
        generate_csv(path, args.rows, args.import_members)
        copy_s = copy_baseline(s, db, path)
        log(f"baseline: raw COPY of the file into one table took {copy_s:.1f} s")
        with contextlib.closing(s.connect(db)) as conn, conn.cursor() as cur:
            cur.execute("CHECKPOINT")
        stats0 = function_stats(s, db)
        entries0 = count_rows(s, db, "journal_entries")
        wait_for_quiet(args.quiet_wait)
        log(f"timing: {Path(cmd0[-1]).name} import-transactions {path.name} --no-progress")
        usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        with CpuMeter() as meter:
            t0 = time.monotonic()
            res = run(
                [*cmd0, "import-transactions", str(path), "--no-progress"],
                timeout=args.import_timeout,
                env=env,
                what="loyalty import-transactions",
            )
            elapsed = time.monotonic() - t0
        usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        noisy = meter.other_cores() >= NOISE_CORES
        if not noisy or attempt == args.noisy_retries:
            break
        log(f"import was noisy ({args.rows / elapsed:,.0f} rows/s; {meter.summary()}); repeating it")
        path.unlink()
    importer_cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    time.sleep(1.5)
    trig = trigger_note(stats0, function_stats(s, db), elapsed)
    entries = count_rows(s, db, "journal_entries") - entries0
    parallel = parallel_import(s, args, db, cmd0, env) if args.import_parallel > 1 else ""
    out = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    counts = {"posted": 0, "replayed": 0, "rejected": 0}
    for part in out.replace("(", ",").split(","):
        words = part.split()
        if len(words) >= 2 and words[0] in counts and words[1].isdigit():
            counts[words[0]] = int(words[1])
    return ImportResult(
        rows=args.rows,
        seconds=elapsed,
        rps=args.rows / elapsed,
        copy_rps=args.rows / copy_s,
        copy_seconds=copy_s,
        cpu=meter.summary({"loyalty": importer_cpu}),
        importer_cpu_s=importer_cpu,
        trigger=trig,
        output=out,
        noisy=noisy,
        entries=entries,
        parallel=parallel,
        **counts,
    )


# --------------------------------------------------------------------------- report


def verdict(ok: bool, noisy: bool = False) -> str:
    return ("PASS" if ok else "MISS") + (" (noisy)" if noisy else "")


def report(
    args: argparse.Namespace,
    pg: PgbenchResult | None,
    api: list[WrkResult],
    enrol_rate: float,
    imp: ImportResult | None,
) -> dict[str, Any]:
    rows: list[tuple[str, str, str, str, str, str]] = []
    out: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "func"}}
    if pg:
        rows.append(
            (
                "(a) pgbench TPC-B TPS",
                f"{pg.tps:,.1f} tps",
                "-",
                "-",
                "-",
                "baseline" + (" (noisy)" if pg.noisy else ""),
            )
        )
        rows.append(("    pgbench p50 / p99", f"{pg.p50_ms:.1f} / {pg.p99_ms:.1f} ms", "-", "-", "-", "baseline"))
        out["pgbench"] = vars(pg)
    if api:
        a = api[0]
        ratio = a.rps / pg.tps if pg else float("nan")
        errs = f" ({a.errors} ERRORS)" if a.errors else ""
        rows.append(
            (
                "(b) API POST /v1/transactions",
                f"{a.rps:,.1f} req/s{errs}",
                f"{pg.tps:,.1f} tps (pgbench)" if pg else "- (pgbench skipped)",
                f"{ratio:.1%}" if pg else "-",
                f">= {TARGET_API_RATIO:.0%} of pgbench",
                "INVALID" if a.errors else (verdict(ratio >= TARGET_API_RATIO, a.noisy or pg.noisy) if pg else "n/a"),
            )
        )
        rows.append(
            (
                "    API p50 latency",
                f"{a.p50_ms:.1f} ms",
                f"{pg.p50_ms:.1f} ms" if pg else "-",
                f"{a.p50_ms / pg.p50_ms:.1f}x" if pg else "-",
                "-",
                "-",
            )
        )
        rows.append(
            (
                "    API p99 latency",
                f"{a.p99_ms:.1f} ms",
                f"{pg.p99_ms:.1f} ms" if pg else "-",
                f"{a.p99_ms / pg.p99_ms:.1f}x" if pg else "-",
                f"<= {TARGET_API_P99_MS:.0f} ms",
                "INVALID" if a.errors else verdict(a.p99_ms <= TARGET_API_P99_MS, a.noisy),
            )
        )
        out["api"] = [vars(r) for r in api]
        out["enrol_members_per_s"] = enrol_rate
    if imp:
        ok = imp.posted == imp.rows and imp.rejected == 0
        rows.append(
            (
                "(c) import-transactions",
                f"{imp.rps:,.0f} rows/s",
                f"{imp.copy_rps:,.0f} rows/s (COPY)",
                f"{imp.rps / imp.copy_rps:.1%}",
                f">= {TARGET_IMPORT_RPS:,.0f} rows/s",
                verdict(imp.rps >= TARGET_IMPORT_RPS, imp.noisy) if ok else "INVALID",
            )
        )
        out["import"] = vars(imp)

    print()
    print(
        f"loyalty accrual benchmark -- {dt.datetime.now().isoformat(timespec='seconds')}, "
        f"{os.cpu_count()} CPUs, PostgreSQL at {make_url(args.pg).render_as_string(hide_password=True)}"
    )
    print(
        f"code under test: {args.code_version}"
        + (
            ""
            if args.code_fingerprint == args.code_fingerprint_end
            else f" -- WARNING: the service code changed during the run (now {args.code_version_end}); "
            "figures may mix versions"
        )
    )
    print(
        f"clients {args.clients}, measure {args.seconds} s (warm-up {args.warmup} s), members {args.members:,}, "
        f"import rows {args.rows:,}"
    )
    if args.whatif:
        print(
            f"WHAT-IF RUN: service code patched in memory with '{args.whatif}' (bench/whatif.py); "
            "these are not the shipped code's figures"
        )
    elif any("whatif=" in c for c in args.gunicorn):
        print("API runs marked whatif=... ran with service code patched in memory (bench/whatif.py)")
    print()
    widths = [
        max(len(r[i]) for r in [*rows, ("figure", "value", "baseline", "ratio", "target", "result")]) for i in range(6)
    ]
    for r in [("figure", "value", "baseline", "ratio", "target", "result"), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print()
    if pg:
        print(f"pgbench: {pg.transactions:,} transactions, {pg.failed} failed; {pg.cpu}")
    if api:
        print(f"enrolment via POST /v1/members: {enrol_rate:,.0f} members/s")
        print("API runs (first line is the one judged above):")
        for r in api:
            ratio = f"{r.rps / pg.tps:.1%} of pgbench" if pg else ""
            print(
                f"  [{r.config}] {r.rps:,.1f} req/s {ratio}, p50 {r.p50_ms:.1f} / p90 {r.p90_ms:.1f} / "
                f"p99 {r.p99_ms:.1f} / max {r.max_ms:.1f} ms; {r.requests:,} requests: {r.n201:,} x 201, "
                f"{r.other_2xx} other 2xx, {r.non_2xx} non-2xx, {r.socket_errors} socket errors/timeouts"
            )
            print(f"      {r.cpu}")
            print(f"      {r.trigger}")
            print(f"      db check: {r.db_check}" + (" -- MISMATCH" if r.db_mismatch else " (ok)"))
            if r.errors:
                print(f"      ERRORS, e.g. {r.sample}")
    if imp:
        print(
            f"import: {imp.rows:,} rows in {imp.seconds:.1f} s -> '{imp.output}'; importer process CPU "
            f"{imp.importer_cpu_s:.1f} s; {imp.cpu}"
        )
        print(
            f"      {imp.entries:,} ledger entries written ({imp.entries / max(1, imp.rows):.0%} of the rows "
            "earned points; the others were capped or earned nothing)"
        )
        print(f"      raw COPY of the same file into one keyed table: {imp.copy_seconds:.1f} s")
        print(f"      {imp.trigger}")
        if imp.parallel:
            print(f"      {imp.parallel}")
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--pg",
        default=os.environ.get("BENCH_POSTGRES_URL", DEFAULT_PG),
        help="admin URL of the PostgreSQL server (scratch databases are made there) [%(default)s]",
    )
    p.add_argument("--clients", type=int, default=16, help="concurrent clients for pgbench and wrk [%(default)s]")
    p.add_argument("--seconds", type=int, default=15, help="measured seconds, pgbench and each API run [%(default)s]")
    p.add_argument("--warmup", type=int, default=5, help="API warm-up seconds before measuring [%(default)s]")
    p.add_argument("--pgbench-scale", type=int, default=10, help="pgbench -i -s [%(default)s]")
    p.add_argument("--members", type=int, default=1_000, help="members enrolled before the API runs [%(default)s]")
    p.add_argument(
        "--import-members",
        type=int,
        default=20_000,
        help="members the import file's rows are spread over (enrolled first, through the API) [%(default)s]",
    )
    p.add_argument("--enrol-threads", type=int, default=8, help="client threads enrolling members [%(default)s]")
    p.add_argument("--rows", type=int, default=1_000_000, help="rows in the generated import file [%(default)s]")
    p.add_argument(
        "--import-parallel",
        type=int,
        default=0,
        metavar="N",
        help="what-if: also time N importer processes on member-disjoint parts of another file",
    )
    p.add_argument("--import-timeout", type=int, default=3600, help="give up on the import after this many s")
    p.add_argument(
        "--gunicorn",
        action="append",
        metavar="CONFIG",
        help="gunicorn options as name=value pairs, e.g. 'workers=2,worker-class=gthread,threads=8'; "
        "repeat to compare configurations (the first is judged) [workers=4, as `make run`]",
    )
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["pgbench", "api", "import"],
        help="leave out a part (repeatable)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=300,
        help="before each measurement, wait up to this many s for unrelated CPU load to stop [%(default)s]",
    )
    p.add_argument(
        "--noisy-retries",
        type=int,
        default=1,
        help="repeat a measurement this many times if unrelated processes used the CPUs [%(default)s]",
    )
    p.add_argument(
        "--whatif",
        metavar="PATCHES",
        help="measure candidate fixes patched in memory (bench/whatif.py): claim,noping,facts,bulk or all",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small defaults: --seconds 10 --warmup 3 --import-members 2000 --rows 100000 --pgbench-scale 4",
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch databases and files for inspection")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    if "--quick" in (sys.argv[1:] if argv is None else argv):  # explicit options still win
        p.set_defaults(seconds=10, warmup=3, members=1000, import_members=2000, rows=100_000, pgbench_scale=4)
    args = p.parse_args(argv)
    args.gunicorn = args.gunicorn or ["workers=4"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Check the tools first, so a missing one fails fast with a clear message.
    try:
        if "pgbench" not in args.skip:
            require_tool("pgbench", "install PostgreSQL's client tools (apt-get install -y postgresql-client)")
        if "api" not in args.skip:
            require_tool("wrk", "install it with `apt-get install -y wrk` (Debian/Ubuntu package 'wrk')")
            require_tool("gunicorn", "pip install -e . into the virtualenv")
        require_tool("loyalty", "pip install -e . into the virtualenv")
    except BenchError as exc:
        print(f"bench/accrual.py: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    args.code_version, args.code_fingerprint = code_version(), code_fingerprint()
    log(f"code under test: {args.code_version}")
    s = Scratch(make_url(args.pg), keep=args.keep)
    pg = imp = None
    api: list[WrkResult] = []
    enrol_rate = float("nan")
    try:
        if "pgbench" not in args.skip:
            pg = bench_pgbench(s, args)
            log(f"pgbench: {pg.tps:,.1f} tps, p50 {pg.p50_ms:.1f} ms, p99 {pg.p99_ms:.1f} ms")
        if "api" not in args.skip or "import" not in args.skip:
            db, url, key = prepare_service_db(s)
            if "api" not in args.skip:
                api, enrol_rate = bench_api(s, args, db, url, key)
            if "import" not in args.skip or "api" in args.skip:
                # The import's members: those the API runs used and more, enrolled the same way.
                g = start_gunicorn(s, url, args.gunicorn[0])
                first = 1 if "api" in args.skip else args.members + 1
                total = max(args.members, args.import_members)
                log(f"enrolling members {first:,} to {total:,} through POST /v1/members")
                rate = enrol_members(g.port, key, total, args.enrol_threads, first) if total >= first else 0.0
                enrol_rate = rate if "api" in args.skip else enrol_rate
                s.stop(g.proc)
            if "import" not in args.skip:
                imp = bench_import(s, args, db, url)
                log(f"import: {imp.rps:,.0f} rows/s ({imp.output})")
        args.code_version_end, args.code_fingerprint_end = code_version(), code_fingerprint()
        out = report(args, pg, api, enrol_rate, imp)
        if args.json:
            args.json.write_text(json.dumps(out, indent=2, default=str))
    except BenchError as exc:
        print(f"bench/accrual.py: FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench/accrual.py: interrupted, cleaning up", file=sys.stderr)
        return 130
    finally:
        s.close()
    invalid = any(r.errors for r in api[:1]) or (imp is not None and (imp.rejected or imp.posted != imp.rows))
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main())

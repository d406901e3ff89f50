"""Contention-independent figures of the booking paths, measured in one process.

For each kind of request this drives the real Flask app through its test client (no HTTP
server, one pooled connection) on a scratch PostgreSQL database and reports, per request:

- ``statements``: SQL statements the service sent (a SQLAlchemy ``before_cursor_execute``
  listener; an ``executemany`` counts once), and ``round trips``: those plus the pool's
  pre-ping ``SELECT 1`` when the engine pings on checkout, plus BEGIN and COMMIT;
- ``python ms``: CPU time of this process (``time.process_time``) per request: the
  service's Python, plus the test client's small share;
- ``postgres ms``: CPU time of the PostgreSQL backend serving the connection (from
  ``/proc/<pid>/stat``; the server must run on this machine);
- ``wall ms``: elapsed time per request, for information (it is what a loaded machine
  changes; the three above hardly move with other load).

The kinds: an accrual of a member who has booked before (steady state), a member's first
booking, a replay of a booked transaction id, a redemption of one pool voucher priced at
10 points (every request the same benefit), and that redemption with an ``Idempotency-Key``.

    PYTHONPATH=. .venv/bin/python bench/inprocess.py [--members 1000] [--requests 2000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import random
import secrets
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# bench/ holds a rules.py of its own: the rules engine must come from the repository root.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import sqlalchemy as sa  # noqa: E402
from sqlalchemy import event  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

import loyalty.models  # noqa: E402, F401  (fills the metadata)
from loyalty.app import create_app  # noqa: E402
from loyalty.auth.models import SCOPES  # noqa: E402
from loyalty.auth.service import create_key  # noqa: E402
from loyalty.catalogue import service as catalogue  # noqa: E402
from loyalty.config import Settings  # noqa: E402
from loyalty.db import make_engine, transaction  # noqa: E402
from loyalty.migrate import upgrade  # noqa: E402
from loyalty.programmes.service import ProgrammeStore, installed  # noqa: E402
from loyalty.runtime import Runtime  # noqa: E402

DEFAULT_PG = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
VOUCHER = "bench-voucher-10"
#: What only the test harness sends; never counted.
NOT_SERVICE = ("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT")


@dataclass
class Counter:
    statements: int = 0
    texts: list[str] = field(default_factory=list)
    keep: bool = False

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith(NOT_SERVICE):
            return
        self.statements += 1
        if self.keep:
            self.texts.append(" ".join(statement.split())[:160])


@dataclass
class Figure:
    kind: str
    requests: int
    statements: float
    round_trips: float
    python_ms: float
    postgres_ms: float | None
    wall_ms: float
    sample: list[str]


def backend_cpu(pid: int) -> float | None:
    """CPU seconds a local PostgreSQL backend has used, or ``None`` if it is not local."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"bench_inprocess_{os.getpid()}_{secrets.token_hex(3)}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


class Bench:
    def __init__(self, url: str, members: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.members = members
        # Two connections: the programme store reloads on a connection of its own now and then.
        engine = make_engine(url, pool_size=2, max_overflow=0)
        upgrade(engine)
        start = dt.datetime.now(dt.UTC)
        installed(engine, start)
        self.settings = Settings(database_url=url, api_key_cache_seconds=3600, secret_key=secrets.token_urlsafe(32))
        self.rt = Runtime(
            settings=self.settings, engine=engine, programmes=ProgrammeStore(engine, dt_now), clock=dt_now
        )
        tiers = self.rt.programme.ladder.codes
        with transaction(engine) as conn:
            self.key = create_key(conn, name="bench", scopes=frozenset(SCOPES), now=start)
            catalogue.create(
                conn,
                catalogue.parse_new(
                    {
                        "code": VOUCHER,
                        "status": "active",
                        "name": "Bench voucher",
                        "kind": "voucher",
                        "fulfilment": "pool",
                        "face_value": 100,
                        "unit_cost": 50,
                        "points_price": 10,
                    },
                    tiers,
                ),
                actor="bench",
                now=start,
            )
        self.app = create_app(self.rt)
        self.client = self.app.test_client()
        self.headers = {"Authorization": f"Bearer {self.key}"}
        self.counter = Counter()
        event.listen(engine, "before_cursor_execute", self.counter)
        self.ids = itertools.count()

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        r = self.client.post(path, json=body, headers={**self.headers, **(headers or {})})
        if r.status_code not in (200, 201):
            raise SystemExit(f"{path} answered {r.status_code}: {r.get_data(as_text=True)[:500]}")
        return r

    def enrol(self, first: int, count: int) -> None:
        for i in range(first, first + count):
            self.post("/v1/members", {"member_id": f"M{i:08d}"})

    def txn(self, member: int) -> dict[str, Any]:
        occurred = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.rng.randint(3600, 30 * 86400))
        amount = int(100 * (2000 ** self.rng.random()))
        return {
            "transaction_id": f"T{next(self.ids):09d}-{uuid.uuid4().hex[:6]}",
            "member_id": f"M{member:08d}",
            "type": "card_purchase",
            "amount": amount,
            "currency": "CNY",
            "occurred_at": occurred.astimezone(dt.timezone(dt.timedelta(hours=8))).isoformat(),
            "channel": "mobile",
        }

    def upload_codes(self, count: int) -> None:
        with transaction(self.rt.engine) as conn:
            box = catalogue.code_box(self.settings.secret_key)
            catalogue.upload_codes(
                conn, box, VOUCHER, [f"CODE-{secrets.token_hex(8)}" for _ in range(count)], actor="bench", now=dt_now()
            )

    def backend_pids(self) -> list[int]:
        """The PostgreSQL backends serving this database (the pool's connections)."""
        with self.rt.engine.connect() as conn:
            return [
                int(p)
                for p in conn.exec_driver_sql(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                ).scalars()
            ]

    def postgres_cpu(self, pids: list[int]) -> float | None:
        used = [backend_cpu(p) for p in pids]
        return None if any(u is None for u in used) else sum(u for u in used if u is not None)

    def measure(self, kind: str, calls: list[Callable[[], Any]]) -> Figure:
        pids = self.backend_pids()
        self.counter.statements = 0
        self.counter.texts = []
        self.counter.keep = True
        calls[0]()  # the sample: one request's statements
        sample = list(self.counter.texts)
        self.counter.keep = False
        self.counter.statements = 0
        pg0, cpu0, wall0 = self.postgres_cpu(pids), time.process_time(), time.perf_counter()
        for call in calls[1:]:
            call()
        wall, cpu, pg1 = time.perf_counter() - wall0, time.process_time() - cpu0, self.postgres_cpu(pids)
        n = len(calls) - 1
        statements = self.counter.statements / n
        ping = 1 if self.rt.engine.pool._pre_ping else 0  # type: ignore[attr-defined]
        return Figure(
            kind,
            n,
            statements,
            statements + ping + 2,
            cpu / n * 1000,
            None if pg0 is None or pg1 is None else (pg1 - pg0) / n * 1000,
            wall / n * 1000,
            sample,
        )


def dt_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def run(args: argparse.Namespace) -> list[Figure]:
    with scratch_database(args.pg) as url:
        b = Bench(url, args.members, args.seed)
        n = args.requests
        print(f"enrolling {args.members} members, one purchase each", file=sys.stderr)
        b.enrol(1, args.members)
        for m in range(1, args.members + 1):
            b.post("/v1/transactions", b.txn(m))
        first = args.members + 1
        b.enrol(first, n + 1)
        figures = []
        steady = [b.txn(b.rng.randint(1, args.members)) for _ in range(n + 1)]
        figures.append(b.measure("accrual, steady state", [lambda t=t: b.post("/v1/transactions", t) for t in steady]))
        fresh = [b.txn(first + i) for i in range(n + 1)]
        figures.append(b.measure("accrual, first booking", [lambda t=t: b.post("/v1/transactions", t) for t in fresh]))
        figures.append(b.measure("accrual, replay", [lambda t=t: b.post("/v1/transactions", t) for t in steady]))
        b.upload_codes(2 * (n + 1) + 10)

        def redeem(key: str | None = None) -> Callable[[], Any]:
            body = {
                "redemption_id": f"R{next(b.ids):09d}",
                "member_id": f"M{b.rng.randint(1, args.members):08d}",
                "benefit_code": VOUCHER,
            }
            return lambda: b.post("/v1/redemptions", body, {"Idempotency-Key": key} if key else None)

        figures.append(b.measure("redemption, pool voucher", [redeem() for _ in range(n + 1)]))
        figures.append(
            b.measure("redemption, with Idempotency-Key", [redeem(f"K{uuid.uuid4().hex}") for _ in range(n + 1)])
        )
        b.rt.engine.dispose()
        return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg", default=DEFAULT_PG, help="a PostgreSQL URL whose role may create databases")
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=1000, help="requests measured per kind")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--show-sql", action="store_true", help="print one request's statements per kind")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    figures = run(args)
    head = ("n", "statements", "round trips", "python ms", "postgres ms", "wall ms")
    widths = (5, 10, 11, 9, 11, 8)
    print(f"{'request':<34} " + " ".join(f"{h:>{w}}" for h, w in zip(head, widths, strict=True)))
    for f in figures:
        pg = "-" if f.postgres_ms is None else f"{f.postgres_ms:.2f}"
        print(
            f"{f.kind:<34} {f.requests:>5} {f.statements:>10.1f} {f.round_trips:>11.1f} "
            f"{f.python_ms:>9.2f} {pg:>11} {f.wall_ms:>8.2f}"
        )
    if args.show_sql:
        for f in figures:
            print(f"\n{f.kind}:")
            for s in f.sample:
                print("  " + s)
    if args.json:
        with open(args.json, "w") as out:
            json.dump([f.__dict__ for f in figures], out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

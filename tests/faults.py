"""What the fault tests share: a private PostgreSQL server they may stop and restart, and a load
of accruals and redemptions from clients that retry with the same ids until they get an answer.

The private server runs from a data directory of its own on a free port (``initdb`` and
``pg_ctl`` as the ``postgres`` user when the tests run as root), so a test that restarts it or
kills its backends touches nothing else on the machine, here or in CI.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests
import sqlalchemy as sa

from loyalty.ledger.models import journal_entries
from loyalty.records.models import transactions
from loyalty.redemption.models import redemptions
from tests.live import free_port

PG_BIN = Path(os.environ.get("LOYALTY_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
#: What a client sends for redemptions under load: a partner's phone credit, 5 a member a month.
BENEFIT = "phone-credit-10"


class PrivatePostgres:
    """A PostgreSQL server of the test's own (see the module)."""

    def __init__(self) -> None:
        for tool in ("initdb", "pg_ctl"):
            assert (PG_BIN / tool).exists(), (
                f"{PG_BIN / tool} is missing: install PostgreSQL 15's server or set LOYALTY_TEST_PG_BIN"
            )
        self.dir = Path(tempfile.mkdtemp(prefix="loyalty-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        self.run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        self.start()

    def run(self, tool: str, *args: str) -> None:
        command = [str(PG_BIN / tool), *args]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"{tool} failed: {done.stdout}{done.stderr}"

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self.run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.dir / "server.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def private_database(server: PrivatePostgres, name: str) -> Iterator[str]:
    admin = sa.create_engine(server.admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    yield f"postgresql://postgres@127.0.0.1:{server.port}/{name}"


@dataclass
class Seen:
    """What the clients were told."""

    #: transaction id -> points, for every accrual answered 201 or 200
    accrued: dict[str, int] = field(default_factory=dict)
    #: redemption id -> status, for every redemption answered 201 or 200
    redeemed: dict[str, str] = field(default_factory=dict)
    #: ids refused (422): nothing of them may be written
    refused: set[str] = field(default_factory=set)
    #: ids never answered before the clients gave up: all of them or nothing may be written
    unanswered: set[str] = field(default_factory=set)
    #: every status the server answered, and "error" for a connection that failed
    statuses: Counter[str] = field(default_factory=Counter)
    #: the problems of 5xx answers, by type
    problems: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Load:
    """``connections`` clients booking accruals (80%) and redemptions (20%) for ``members``, each
    request sent again with the same id until it is answered (anything but a failed connection, a
    timeout or a 503), as a channel app retries."""

    def __init__(self, url: str, key: str, members: list[str], connections: int = 16) -> None:
        self.url, self.key, self.members, self.connections = url, key, members, connections
        self.seen = Seen()
        self.stop = threading.Event()
        self.numbers = iter(range(10**9))
        self.numbers_lock = threading.Lock()

    def next_id(self, prefix: str) -> str:
        with self.numbers_lock:
            return f"{prefix}{next(self.numbers)}"

    def send(self, session: requests.Session, path: str, body: dict, grace: float) -> requests.Response | None:
        """POST ``body`` until it is answered; once the load is stopping, for ``grace`` seconds more at most."""
        stopping_since: float | None = None
        while True:
            if self.stop.is_set():
                stopping_since = stopping_since or time.monotonic()
                if time.monotonic() > stopping_since + grace:
                    return None
            try:
                r = session.post(self.url + path, json=body, timeout=10)
            except requests.RequestException:
                self.record("error")
                time.sleep(0.05)
                continue
            self.record(str(r.status_code))
            if r.status_code >= 500:
                with self.seen.lock:
                    self.seen.problems[f"{r.status_code} {r.text[:160]}"] += 1
            if r.status_code == 503:
                assert r.headers.get("Retry-After"), "a 503 without Retry-After"
                time.sleep(0.1)
                continue
            return r

    def record(self, status: str) -> None:
        with self.seen.lock:
            self.seen.statuses[status] += 1

    def client(self, grace: float) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.key}"
        rng = random.Random()
        while not self.stop.is_set():
            member = rng.choice(self.members)
            if rng.random() < 0.8:
                ident = self.next_id("t")
                body = {
                    "transaction_id": ident,
                    "member_id": member,
                    "type": "card_purchase",
                    "amount": rng.randint(100, 300_000),
                    "currency": "CNY",
                    "occurred_at": (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).isoformat(),
                }
                path = "/v1/transactions"
            else:
                ident = self.next_id("r")
                body = {
                    "redemption_id": ident,
                    "member_id": member,
                    "benefit_code": BENEFIT,
                    "delivery": {"phone_number": "13800000000"},
                }
                path = "/v1/redemptions"
            # Once the load stops, an unanswered request is still retried for a while, as a client
            # keeps retrying: every id ends acknowledged, refused, or given up on.
            r = self.send(session, path, body, grace)
            with self.seen.lock:
                if r is None:
                    self.seen.unanswered.add(ident)
                elif r.status_code in (200, 201):
                    if path == "/v1/transactions":
                        self.seen.accrued[ident] = r.json()["points"]
                    else:
                        self.seen.redeemed[ident] = r.json()["status"]
                elif r.status_code == 422:
                    self.seen.refused.add(ident)

    @contextmanager
    def running(self, grace: float = 60) -> Iterator[Seen]:
        threads = [threading.Thread(target=self.client, args=(grace,), daemon=True) for _ in range(self.connections)]
        for t in threads:
            t.start()
        try:
            yield self.seen
        finally:
            self.stop.set()
            for t in threads:
                t.join(timeout=grace + 30)
            assert not any(t.is_alive() for t in threads), "a client is still waiting for an answer"


def enrol_members(url: str, key: str, count: int) -> list[str]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    members = [f"fault-m{i}" for i in range(count)]
    for member in members:
        r = session.post(f"{url}/v1/members", json={"member_id": member}, timeout=30)
        assert r.status_code in (200, 201), r.text
    return members


def check_exactly_once(database_url: str, seen: Seen) -> None:
    """Every acknowledged accrual and redemption is there once, with the points the client was told;
    nothing refused is there; every accrual there is whole (its ledger entry, once)."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            booked = dict(conn.execute(sa.select(transactions.c.transaction_id, transactions.c.points)).all())
            e = journal_entries.c
            kinds = Counter(
                conn.execute(
                    sa.select(e.transaction_id, e.kind).where(
                        e.transaction_id.is_not(None), e.kind.in_(("accrual", "bonus"))
                    )
                ).all()
            )
            earned = dict(
                conn.execute(
                    sa.select(e.transaction_id, sa.func.sum(e.points))
                    .where(e.transaction_id.is_not(None), e.kind.in_(("accrual", "bonus")))
                    .group_by(e.transaction_id)
                ).all()
            )
            redeemed = Counter(rid for (rid,) in conn.execute(sa.select(redemptions.c.id)))
    finally:
        engine.dispose()
    missing = {t for t in seen.accrued if t not in booked}
    assert not missing, f"acknowledged accruals missing: {sorted(missing)[:10]}"
    wrong = {t for t, p in seen.accrued.items() if booked[t] != p}
    assert not wrong, f"accruals booked with other points than acknowledged: {sorted(wrong)[:10]}"
    assert not (seen.refused & (set(booked) | set(redeemed))), "a refused request was written"
    doubled = [k for k, n in kinds.items() if n > 1]
    assert not doubled, f"transactions posted twice: {doubled[:10]}"
    torn = {t for t, p in booked.items() if earned.get(t, 0) != p}
    assert not torn, f"transactions whose ledger entries do not hold their points: {sorted(torn)[:10]}"
    lost = {r for r in seen.redeemed if redeemed[r] != 1}
    assert not lost, f"acknowledged redemptions missing: {sorted(lost)[:10]}"

"""Faults under load, with real processes: gunicorn workers and the whole server killed, the
PostgreSQL server restarted, service connections terminated. 16 clients book accruals and
redemptions and retry each with the same id until it is answered; afterwards every accrual and
redemption a client saw acknowledged is there exactly once, nothing refused or half-done is, no
answer was a 500, and ``loyalty verify`` is clean.

The database is a private PostgreSQL server (tests/faults.py), never the shared one. Each test
loads for seconds, not minutes; they run one at a time (xdist group ``faults``).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from tests.faults import Load, PrivatePostgres, Seen, check_exactly_once, enrol_members, private_database
from tests.live import LiveServer, free_port, prepare, run_cli, start_gunicorn, stop, wait_until_serving

pytestmark = pytest.mark.xdist_group("faults")

#: Members the load is spread over.
MEMBERS = 24


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        yield server
    finally:
        server.close()


class Served:
    """gunicorn over a fresh database on the private server, ready for load."""

    def __init__(self, pg: PrivatePostgres, name: str, directory: Path, workers: int = 4) -> None:
        self.pg, self.workers = pg, workers
        self._db = private_database(pg, name)
        self.database_url = self._db.__enter__()
        self.env, self.key = prepare(self.database_url)
        self.port = free_port()
        self.log = directory / "gunicorn.log"
        self.live = LiveServer(f"http://127.0.0.1:{self.port}", self.key, self.database_url, self.log)
        self.start()
        self.members = enrol_members(self.live.url, self.key, MEMBERS)

    def start(self) -> None:
        self.process = start_gunicorn(self.env, self.port, self.log, workers=self.workers)
        wait_until_serving(self.process, self.live)

    def worker_pids(self) -> list[int]:
        pid = self.process.pid
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def kill_everything(self) -> None:
        workers = self.worker_pids()
        os.kill(self.process.pid, signal.SIGKILL)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):  # gone already
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=15)

    def load(self) -> Load:
        return Load(self.live.url, self.key, self.members, connections=16)

    def close(self) -> None:
        stop(self.process)
        self._db.__exit__(None, None, None)

    def check(self, seen: Seen) -> None:
        assert seen.accrued and seen.redeemed, f"the load did too little: {seen.statuses}"
        assert "500" not in seen.statuses, f"500s: {seen.problems.most_common(5)}"
        assert not seen.unanswered, f"{len(seen.unanswered)} requests never answered: {seen.statuses}"
        check_exactly_once(self.database_url, seen)
        report = run_cli(self.env, "verify")
        assert "FAIL" not in report, report


@pytest.fixture
def served(private_pg: PrivatePostgres, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Served]:
    name = "faults_" + request.node.name.split("[")[0][-40:]
    s = Served(private_pg, name, tmp_path)
    try:
        yield s
    finally:
        s.close()


def test_workers_and_then_the_whole_server_killed_under_load_lose_and_double_nothing(served: Served):
    load = served.load()
    with load.running() as seen:
        time.sleep(2)
        for _ in range(3):
            os.kill(random.choice(served.worker_pids()), signal.SIGKILL)
            time.sleep(1)
        served.kill_everything()
        time.sleep(1)
        served.start()
        time.sleep(2)
    assert seen.statuses["error"] > 0, "no request met the dead server"
    served.check(seen)


def test_postgresql_restarted_under_load_is_503_with_retry_after_then_recovers(served: Served, private_pg):
    load = served.load()
    with load.running() as seen:
        time.sleep(2)
        private_pg.stop("fast")
        time.sleep(2)
        private_pg.start()
        time.sleep(3)
    assert seen.statuses["503"] > 0, f"no request met the database down: {seen.statuses}"
    served.check(seen)
    # Recovered by itself: the same server answers, and is ready.
    assert requests.get(f"{served.live.url}/readyz", timeout=10).status_code == 200


def test_service_connections_terminated_under_load_lose_and_double_nothing(served: Served, private_pg):
    admin = sa.create_engine(private_pg.admin_url, isolation_level="AUTOCOMMIT")
    name = served.database_url.rsplit("/", 1)[-1]
    terminated = 0
    load = served.load()
    try:
        with load.running() as seen:
            time.sleep(1)
            for _ in range(15):
                with admin.connect() as conn:
                    terminated += len(
                        conn.execute(
                            sa.text(
                                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                " WHERE datname = :name AND pid <> pg_backend_pid() ORDER BY random() LIMIT 3"
                            ),
                            {"name": name},
                        ).all()
                    )
                time.sleep(0.3)
            time.sleep(1)
    finally:
        admin.dispose()
    assert terminated > 10
    served.check(seen)

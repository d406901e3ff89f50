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
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from loyalty.db import transaction
from loyalty.events.models import events
from loyalty.jobs.models import job_runs
from loyalty.ledger import verify
from loyalty.ledger.models import journal_entries
from loyalty.members import service as members_service
from loyalty.members.service import Enrolment
from loyalty.records.models import members
from loyalty.runtime import Runtime
from loyalty.tiers.models import tier_changes
from tests.faults import Load, PrivatePostgres, Seen, check_exactly_once, enrol_members, private_database
from tests.helpers import eventually
from tests.live import LiveServer, free_port, prepare, run_cli, start_gunicorn, stop, wait_until_serving
from tests.probe_jobs import environment

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


# ---- the scheduler's leader killed during a long job ------------------------------------------------------------

#: Members the long jobs work through, 50 a transaction (PROBE_CHUNK).
LONG_JOB_MEMBERS = 1500


def seed_members(runtime: Runtime, count: int) -> None:
    """``count`` members with the welcome bonus, each put in the top tier, which the review takes away."""
    programme = runtime.programme
    with transaction(runtime.engine) as conn:
        for i in range(count):
            members_service.enrol(conn, Enrolment(f"long-{i:05}"), programme=programme, now=runtime.now())
        conn.execute(members.update().values(tier="hnw"))


def progress(engine: sa.Engine, job: str) -> int:
    """Members the job has done so far."""
    with engine.connect() as conn:
        if job == "tier_review":
            return int(
                conn.execute(sa.select(sa.func.count()).where(members.c.tier_reviewed.is_not(None))).scalar_one()
            )
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(journal_entries).where(journal_entries.c.kind == "expiry")
            ).scalar_one()
        )


def running_on(engine: sa.Engine, job: str) -> set[int]:
    with engine.connect() as conn:
        runners = conn.execute(
            sa.select(job_runs.c.runner).where(job_runs.c.job == job, job_runs.c.status == "running")
        ).scalars()
        return {int(r.rsplit(":", 1)[1]) for r in runners}


@pytest.mark.postgres_only
@pytest.mark.committed
@pytest.mark.parametrize("job", ["tier_review", "expiry_later"])
def test_the_leader_killed_during_a_long_job_leaves_the_standby_to_finish_it_once(
    job, runtime, engine, database_url, tmp_path, backend
):
    """Two schedulers; the leader is SIGKILLed part way through the tier review or the expiry run
    (the real jobs, 50 members a transaction); the standby takes the lead and its run finishes
    the rest: every member reviewed or expired once, none twice, the ledger verified."""
    seed_members(runtime, LONG_JOB_MEMBERS)
    env = environment(
        database_url, LOYALTY_SCHEDULER_STANDBY_SECONDS="0.25", LOYALTY_JOB_INTERVALS=f"{job}=1", PROBE_CHUNK="50"
    )
    processes = []
    for i in range(2):
        with (tmp_path / f"scheduler-{i}.log").open("wb") as out:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tests.probe_jobs", "scheduler"],
                    env=env,
                    cwd=tmp_path,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        eventually(
            f"the {job} run part way", lambda: 0 < progress(engine, job) < LONG_JOB_MEMBERS, timeout=120, every=0.01
        )
        leader = running_on(engine, job)
        assert len(leader) == 1, leader
        (victim,) = [p for p in processes if p.pid in leader]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        done_when_killed = progress(engine, job)
        assert done_when_killed < LONG_JOB_MEMBERS, "the run ended before the leader was killed"

        eventually(f"the standby to finish the {job} run", lambda: progress(engine, job) == LONG_JOB_MEMBERS, 180)
        (standby,) = [p for p in processes if p is not victim]
        time.sleep(3)  # further runs on its 1 s interval find nothing left to do
        # The killed leader's run stays recorded as running; every other run is the standby's.
        assert running_on(engine, job) - {victim.pid} <= {standby.pid}
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
    with engine.connect() as conn:
        if job == "tier_review":
            changes = conn.execute(
                sa.select(tier_changes.c.member_id, sa.func.count(), sa.func.min(tier_changes.c.from_tier))
                .where(tier_changes.c.source != "enrolment")
                .group_by(tier_changes.c.member_id)
            ).all()
            assert len(changes) == LONG_JOB_MEMBERS and {(n, f) for _, n, f in changes} == {(1, "hnw")}, changes[:5]
        else:
            expired = conn.execute(
                sa.select(journal_entries.c.member_id, sa.func.count())
                .where(journal_entries.c.kind == "expiry")
                .group_by(journal_entries.c.member_id)
            ).all()
            assert len(expired) == LONG_JOB_MEMBERS and {n for _, n in expired} == {1}
            lapsed = conn.execute(
                sa.select(sa.func.count()).select_from(events).where(events.c.type == "points.expired")
            ).scalar_one()
            assert lapsed == LONG_JOB_MEMBERS
        outcomes = verify.run(conn)
    assert all(o.ok for o in outcomes), verify.report(outcomes)

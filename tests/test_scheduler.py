"""The scheduler: one leader among real processes, standbys that take over, schedules.

The process tests run ``loyalty scheduler`` with the probe jobs registered
(``python -m tests.probe_jobs scheduler``, see :mod:`tests.probe_jobs`) and
``PROBE_INTERVAL_SECONDS``, so the ``probe`` job fires every half second. They
wait for what they expect to see, polling the database and the logs.
"""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from loyalty.config import Settings, parse_job_intervals
from loyalty.db import make_engine, transaction
from loyalty.jobs import JOBS, scheduler
from loyalty.jobs.leader import FileLeadership, Leadership, PostgresLeadership, leadership_for
from loyalty.jobs.models import job_runs
from loyalty.jobs.runner import run_job
from loyalty.jobs.scheduler import JobSchedule, describe, missed_fire
from loyalty.programmes import service
from loyalty.runtime import Runtime
from rules import default_document
from tests import probe_jobs
from tests.probe_jobs import environment

LOYALTY = str(Path(sys.executable).with_name("loyalty"))
#: How often standbys try to take the lead, and leaders check they still hold it.
STANDBY_SECONDS = 0.25
#: How often the probe job runs (each run takes ``probe_jobs.PROBE_SECONDS``).
PROBE_INTERVAL = 0.5
#: Generous bounds: the expected times are a few seconds.
TIMEOUT = 60
TAKEOVER_BOUND = dt.timedelta(seconds=20)

T = TypeVar("T")


def stays(what: str, check: Callable[[], object], seconds: float) -> None:
    """Poll ``check`` for ``seconds``; fail as soon as it is no longer true."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert check(), f"no longer true: {what}"
        time.sleep(0.05)
    assert check(), f"no longer true: {what}"


def wait_for(what: str, check: Callable[[], T], timeout: float = TIMEOUT) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout} s waiting for {what}")
        time.sleep(0.05)


class Scheduler:
    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.pid = process.pid
        self.log_path = log

    def log(self) -> str:
        return self.log_path.read_text()


class Schedulers:
    """Starts scheduler processes on one database, and kills whichever are left at the end."""

    def __init__(self, database_url: str, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.env = environment(
            database_url,
            LOYALTY_SCHEDULER_STANDBY_SECONDS=str(STANDBY_SECONDS),
            PROBE_INTERVAL_SECONDS=str(PROBE_INTERVAL),
        )
        self.started: list[Scheduler] = []

    def start(self) -> Scheduler:
        log = self.tmp_path / f"scheduler-{len(self.started)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.probe_jobs", "scheduler"],
                env=self.env,
                cwd=self.tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        scheduler = Scheduler(process, log)
        self.started.append(scheduler)
        return scheduler

    def close(self) -> None:
        for s in self.started:
            if s.process.poll() is None:
                s.process.kill()
            s.process.wait(timeout=TIMEOUT)


@pytest.fixture
def schedulers(database_url: str, tmp_path: Path) -> Iterator[Schedulers]:
    group = Schedulers(database_url, tmp_path)
    try:
        yield group
    finally:
        group.close()


def runs(engine: sa.Engine, job: str | None = "probe") -> list[Any]:
    query = sa.select(job_runs).order_by(job_runs.c.started_at, job_runs.c.id)  # the clock may stand still
    if job is not None:
        query = query.where(job_runs.c.job == job)
    with engine.connect() as conn:
        return list(conn.execute(query))


def pid(run: Any) -> int:
    return int(run.runner.rsplit(":", 1)[1])


def finished_runs(engine: sa.Engine, count: int, runner: Scheduler) -> Callable[[], list[Any]]:
    def check() -> list[Any]:
        done = [r for r in runs(engine) if r.status == "succeeded" and pid(r) == runner.pid]
        return done if len(done) >= count else []

    return check


def assert_no_overlap(rows: list[Any], *, killed_at: dt.datetime | None = None) -> None:
    """No run started before the one before it ended (a killed leader's last run ended when it was killed)."""
    for before, after in zip(rows, rows[1:], strict=False):
        end = before.finished_at or killed_at
        assert end is not None, f"run {before.id} never finished"
        assert end <= after.started_at, f"runs {before.id} ({before.runner}) and {after.id} ({after.runner}) overlap"


@pytest.mark.committed
def test_one_scheduler_leads_and_a_standby_takes_over_when_it_is_killed(schedulers, engine):
    first, second = schedulers.start(), schedulers.start()
    wait_for("three probe runs", lambda: len([r for r in runs(engine) if r.status == "succeeded"]) >= 3)
    leaders = {pid(r) for r in runs(engine)}
    assert len(leaders) == 1 and leaders <= {first.pid, second.pid}, leaders
    leader, standby = (first, second) if first.pid in leaders else (second, first)

    wait_for("the leader to run the probe five times", finished_runs(engine, 5, leader))
    assert "leader: took" in leader.log() and "standby:" not in leader.log()
    assert "standby: another scheduler is the leader" in standby.log() and "leader:" not in standby.log()
    assert {pid(r) for r in runs(engine, job=None)} == {leader.pid}  # every job ran on the leader alone
    assert_no_overlap(runs(engine))

    killed_at = dt.datetime.now(dt.UTC)
    leader.process.send_signal(signal.SIGKILL)
    leader.process.wait(timeout=TIMEOUT)

    taken_over = wait_for("the standby to run the probe", finished_runs(engine, 2, standby))
    assert taken_over[0].started_at - killed_at < TAKEOVER_BOUND
    assert "leader: took" in standby.log()
    probe_runs = runs(engine)
    assert {pid(r) for r in probe_runs} == {leader.pid, standby.pid}
    assert all(pid(r) == standby.pid for r in probe_runs if r.started_at > killed_at)
    assert_no_overlap(probe_runs, killed_at=killed_at)

    standby.process.send_signal(signal.SIGTERM)  # a graceful stop lets the running probe finish
    assert standby.process.wait(timeout=TIMEOUT) == 0
    assert standby.log().rstrip().endswith("stopped")
    assert all(r.status == "succeeded" for r in runs(engine) if pid(r) == standby.pid)


def steal_the_lock(engine: sa.Engine, database_url: str, backend: str) -> Leadership:
    """Take the leader's lock while it lives, and hold it: end the session that holds the
    advisory lock, or replace the lock file."""
    thief = leadership_for(engine, "test:0")
    if backend == "postgres":
        with engine.connect() as conn:
            ended = conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                )
            ).all()
        assert ended == [(True,)]
    else:
        Path(str(sa.make_url(database_url).database) + ".scheduler.lock").unlink()
    wait_for("the test to take the lock", thief.acquire)
    return thief


@pytest.mark.committed
def test_a_leader_that_loses_its_lock_stops_its_jobs_until_it_leads_again(schedulers, engine, database_url, backend):
    scheduler = schedulers.start()
    wait_for("the scheduler to run the probe", finished_runs(engine, 1, scheduler))
    thief = steal_the_lock(engine, database_url, backend)
    try:
        wait_for("the scheduler to stand by", lambda: "standby:" in scheduler.log())
        assert "no longer the leader" in scheduler.log()
        stopped = runs(engine)
        assert all(r.status == "succeeded" for r in stopped)  # it let the running probe finish
        # A scheduler still running jobs would start one within a probe interval: none starts in three.
        stays("no probe ran", lambda: [r.id for r in runs(engine)] == [r.id for r in stopped], 3 * PROBE_INTERVAL)
    finally:
        thief.release()
    wait_for("the scheduler to lead again", finished_runs(engine, len(stopped) + 2, scheduler))
    assert scheduler.log().count("leader: took") == 2
    assert_no_overlap(runs(engine))


def test_an_interval_for_an_unknown_job_stops_the_scheduler_at_once(unopened_url):
    env = environment(unopened_url, LOYALTY_JOB_INTERVALS="webhooks=1,nightly=5")
    result = subprocess.run([LOYALTY, "scheduler"], env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 1
    assert "LOYALTY_JOB_INTERVALS names unknown jobs nightly" in result.stderr


@pytest.mark.parametrize(
    "text", ["webhooks", "webhooks=0", "webhooks=1.5", "=3", "webhooks=-1", "webhooks=1,lifecycle"]
)
def test_job_intervals_setting_refuses_malformed_values(text):
    with pytest.raises(ValueError, match="LOYALTY_JOB_INTERVALS"):
        Settings.from_env({"LOYALTY_JOB_INTERVALS": text})


def test_job_intervals_setting_reads_names_and_seconds():
    assert parse_job_intervals(" webhooks=1, lifecycle=3600 ,") == {"webhooks": 1, "lifecycle": 3600}
    assert Settings.from_env({"LOYALTY_SCHEDULER_STANDBY_SECONDS": "0.25"}).scheduler_standby_seconds == 0.25
    with pytest.raises(ValueError, match="LOYALTY_SCHEDULER_STANDBY_SECONDS"):
        Settings.from_env({"LOYALTY_SCHEDULER_STANDBY_SECONDS": "0"})


def test_only_one_holder_of_the_lock_at_a_time(engine, backend):
    leadership = leadership_for(engine, "host:1")
    other = leadership_for(engine, "host:2")
    try:
        assert leadership.acquire() and leadership.held()
        assert not other.acquire() and not other.held()
        leadership.release()
        assert not leadership.held()
        assert other.acquire() and other.held()
        assert not leadership.acquire()
    finally:
        leadership.release()
        other.release()
    assert isinstance(other, PostgresLeadership if backend == "postgres" else FileLeadership)
    if isinstance(other, FileLeadership):
        assert other.path.read_text() == "host:2\n"  # the lock file names the last leader


def test_sqlite_in_memory_cannot_hold_the_scheduler_lock():
    with pytest.raises(ValueError, match="SQLite database file"):
        leadership_for(make_engine("sqlite://"), "host:1")


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, job in probe_jobs.PROBES.items():
        monkeypatch.setitem(JOBS, name, job)
    monkeypatch.setattr(probe_jobs, "PROBE_SECONDS", 0)


def local(runtime: Runtime, *args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=runtime.programme.zone)  # type: ignore[misc]


def test_schedules_are_cron_in_the_programme_zone_unless_an_interval_overrides_them(runtime, probes):
    runtime.settings = Settings(database_url=runtime.settings.database_url, job_intervals={"webhooks": 2})
    schedule = JobSchedule(runtime)
    schedule.start(paused=True)
    try:
        jobs = {j.id: j for j in schedule.scheduler.get_jobs()}
        assert set(jobs) == set(JOBS)
        lifecycle = jobs["lifecycle"].trigger
        assert isinstance(lifecycle, CronTrigger) and lifecycle.timezone.key == "Asia/Shanghai"
        assert lifecycle.get_next_fire_time(None, local(runtime, 2026, 6, 15, 9)) == local(runtime, 2026, 6, 16, 1)
        assert isinstance(jobs["webhooks"].trigger, IntervalTrigger)
        assert jobs["webhooks"].trigger.interval == dt.timedelta(seconds=2)
        assert all(j.coalesce and j.max_instances == 1 and j.misfire_grace_time == 3600 for j in jobs.values())
    finally:
        schedule.stop()
    assert describe(JOBS["webhooks"], lifecycle.timezone, {"webhooks": 1}) == "every 1 second (LOYALTY_JOB_INTERVALS)"
    assert describe(JOBS["webhooks"], lifecycle.timezone, {}) == "every 5 seconds"
    assert describe(JOBS["tier_review"], lifecycle.timezone, {}) == "cron month=1,4,7,10 day=1 hour=2 (Asia/Shanghai)"


@pytest.mark.committed  # the runs are made on the scheduler's threads
def test_a_run_that_stops_with_work_left_is_followed_by_another_at_once(runtime, probes, monkeypatch):
    """The ``backlog`` probe, scheduled daily, reports more work left after each of its first two runs:
    it runs three times back to back, then waits for its schedule."""
    monkeypatch.setattr(scheduler, "JOBS", {"backlog": JOBS["backlog"]})
    monkeypatch.setattr(probe_jobs, "BACKLOG", 3)
    schedule = JobSchedule(runtime)
    schedule.start()
    try:
        schedule.scheduler.modify_job("backlog", next_run_time=dt.datetime.now(schedule.zone))
        done = wait_for("three runs", lambda: (r := runs(runtime.engine, "backlog")) and len(r) >= 3 and r, 30)
        stays("no fourth run", lambda: len(runs(runtime.engine, "backlog")) == 3, 1.0)
        assert [r.detail for r in done] == ["2 left", "1 left", "0 left"]
        assert all(r.status == "succeeded" for r in done)
        next_run = schedule.scheduler.get_job("backlog").next_run_time
        assert (next_run.hour, next_run.minute) == (6, 0)  # its cron time again
    finally:
        schedule.stop()


def test_cron_schedules_follow_the_time_zone_of_a_newly_published_programme(runtime, clock, probes):
    schedule = JobSchedule(runtime)
    schedule.start(paused=True)
    try:
        document = default_document()
        document.update(version="2026.utc", timezone="UTC")
        with transaction(runtime.engine) as conn:
            service.create_draft(conn, document, actor="test", now=clock.now)
            service.publish(
                conn, "2026.utc", effective_from=clock.now + dt.timedelta(minutes=5), actor="test", now=clock.now
            )
        schedule.follow_programme()
        assert schedule.scheduler.get_job("lifecycle").trigger.timezone.key == "Asia/Shanghai"
        clock.advance(minutes=6)
        schedule.follow_programme()
        jobs = {j.id: j for j in schedule.scheduler.get_jobs()}
        assert jobs["lifecycle"].trigger.timezone.key == "UTC"
        assert isinstance(jobs["webhooks"].trigger, IntervalTrigger)
    finally:
        schedule.stop()


def test_a_new_leader_runs_at_once_a_cron_job_whose_fire_time_passed_without_a_run(runtime, clock, probes):
    trigger = CronTrigger(hour=3, timezone=runtime.programme.zone)  # the probe job's schedule
    assert not missed_fire(runtime, "probe", trigger, clock.now)  # never ran: nothing to catch up

    clock.now = local(runtime, 2026, 6, 14, 3, 0, 2)
    run_job(runtime, "probe")  # yesterday's 03:00 run
    clock.now = local(runtime, 2026, 6, 15, 2, 59)
    assert not missed_fire(runtime, "probe", trigger, clock.now)  # today's is not due yet
    clock.now = local(runtime, 2026, 6, 15, 3, 20)
    assert missed_fire(runtime, "probe", trigger, clock.now)  # today's 03:00 passed with no run
    clock.now = local(runtime, 2026, 6, 15, 4, 1)
    assert not missed_fire(runtime, "probe", trigger, clock.now)  # beyond the misfire grace
    assert not missed_fire(runtime, "probe", IntervalTrigger(seconds=5), clock.now)

    clock.now = local(runtime, 2026, 6, 15, 3, 20)
    schedule = JobSchedule(runtime)
    schedule.start(paused=True)
    try:
        assert schedule.scheduler.get_job("probe").next_run_time == clock.now
        broken = schedule.scheduler.get_job("broken").next_run_time.astimezone(runtime.programme.zone)
        assert (broken.hour, broken.minute) == (4, 30)  # not due: its next fire time, by the real clock
    finally:
        schedule.stop()
    run_job(runtime, "probe")
    assert not missed_fire(runtime, "probe", trigger, clock.now)  # caught up

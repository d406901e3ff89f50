"""The scheduler process: the leader runs every job on its schedule, standbys wait.

Any number of ``loyalty scheduler`` processes may run against one database;
the one that holds the scheduler lock (:mod:`loyalty.jobs.leader`) leads and
runs the jobs of :data:`loyalty.jobs.JOBS` with APScheduler, each firing
:func:`loyalty.jobs.runner.run_job`; a run that stops with work left
(``Outcome.more``) is followed by another at once. The others stand by and try to take the
lock every ``LOYALTY_SCHEDULER_STANDBY_SECONDS``; when the leader dies its lock
goes with it and a standby takes over. The leader checks as often that it
still holds the lock, and stops running jobs as soon as it finds it does not.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import signal
import threading
from collections.abc import Mapping
from types import FrameType
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from apscheduler.events import EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from loyalty.db import transaction
from loyalty.jobs import JOBS, Job
from loyalty.jobs.leader import Leadership, leadership_for
from loyalty.jobs.models import job_runs
from loyalty.jobs.runner import run_and_record, runner_name
from loyalty.programmes.service import NoProgramme
from loyalty.runtime import Runtime
from rules.model import DEFAULT_TIMEZONE

log = logging.getLogger(__name__)

#: A run that could not start on time (the process was busy, or a new leader
#: was taking over) still starts if it is at most this late.
MISFIRE_GRACE_SECONDS = 3600


def programme_zone(rt: Runtime) -> ZoneInfo:
    """The time zone of the programme in force now, in which cron schedules are read."""
    try:
        return rt.programme.zone
    except NoProgramme:
        return ZoneInfo(DEFAULT_TIMEZONE)


def check_intervals(intervals: Mapping[str, int]) -> None:
    unknown = sorted(set(intervals) - set(JOBS))
    if unknown:
        raise ValueError(f"LOYALTY_JOB_INTERVALS names unknown jobs {', '.join(unknown)}; jobs: {', '.join(JOBS)}")


def trigger_for(job: Job, zone: ZoneInfo, intervals: Mapping[str, int]) -> BaseTrigger:
    """The job's trigger: its declared schedule, or every N seconds if ``intervals`` names it."""
    if job.name in intervals:
        return IntervalTrigger(seconds=intervals[job.name], timezone=zone)
    fields = {k: v for k, v in job.schedule.items() if k != "trigger"}
    if job.schedule["trigger"] == "cron":
        return CronTrigger(timezone=zone, **fields)
    if job.schedule["trigger"] == "interval":
        return IntervalTrigger(timezone=zone, **fields)
    raise ValueError(f"job {job.name}: unknown trigger {job.schedule['trigger']!r}")


def describe(job: Job, zone: ZoneInfo, intervals: Mapping[str, int]) -> str:
    """The schedule in words: ``cron hour=1 (Asia/Shanghai)``, ``every 5 seconds``."""
    if job.name in intervals:
        return f"every {_amount(intervals[job.name], 'seconds')} (LOYALTY_JOB_INTERVALS)"
    fields = {k: v for k, v in job.schedule.items() if k != "trigger"}
    if job.schedule["trigger"] == "interval":
        return "every " + " ".join(_amount(v, k) for k, v in fields.items())
    return f"{job.schedule['trigger']} {' '.join(f'{k}={v}' for k, v in fields.items())} ({zone.key})"


def _amount(value: int, unit: str) -> str:
    return f"{value} {unit.removesuffix('s') if value == 1 else unit}"


def fire(rt: Runtime, name: str) -> bool:
    """One scheduled run of job ``name``; returns whether to run it again at once."""
    return run_and_record(rt, name)[1].more


def missed_fire(rt: Runtime, name: str, trigger: BaseTrigger, now: dt.datetime) -> bool:
    """Whether a cron job's last fire time, at most :data:`MISFIRE_GRACE_SECONDS` ago, passed
    with no run since: the previous leader died just before it or while starting it."""
    if not isinstance(trigger, CronTrigger):
        return False
    with transaction(rt.engine, readonly=True) as conn:
        last = conn.execute(sa.select(sa.func.max(job_runs.c.started_at)).where(job_runs.c.job == name)).scalar()
    if last is None:
        return False
    # started_at carries no offset on SQLite; UTCDateTime gives it back as UTC either way.
    due = trigger.get_next_fire_time(None, last + dt.timedelta(seconds=1))
    return due is not None and now - dt.timedelta(seconds=MISFIRE_GRACE_SECONDS) <= due <= now


class JobSchedule:
    """APScheduler running every job of :data:`JOBS` on its trigger, in the programme's time zone."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.intervals = rt.settings.job_intervals
        check_intervals(self.intervals)
        self.zone = programme_zone(rt)
        self.scheduler = BackgroundScheduler(
            timezone=self.zone,
            executors={"default": ThreadPoolExecutor(max_workers=len(JOBS))},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": MISFIRE_GRACE_SECONDS},
        )
        self.stopping = threading.Event()
        # Called once the run has ended (APScheduler counts it finished first), so the next can start.
        self.scheduler.add_listener(self.again, EVENT_JOB_EXECUTED)

    def start(self, *, paused: bool = False) -> None:
        """Schedule every job and start; a cron job whose fire time was missed runs at once."""
        now = self.rt.now()
        for job in JOBS.values():
            trigger = trigger_for(job, self.zone, self.intervals)
            first = {"next_run_time": now} if missed_fire(self.rt, job.name, trigger, now) else {}
            self.scheduler.add_job(fire, trigger, args=[self.rt, job.name], id=job.name, name=job.name, **first)
            log.info("scheduled %s: %s", job.name, describe(job, self.zone, self.intervals))
        self.scheduler.start(paused=paused)

    def follow_programme(self) -> None:
        """Read cron schedules in the time zone of the programme in force now, if it changed."""
        zone = programme_zone(self.rt)
        if zone.key == self.zone.key:
            return
        log.info("the programme in force is in %s now (was %s); rescheduling", zone.key, self.zone.key)
        self.zone = zone
        for job in JOBS.values():
            if job.name not in self.intervals:
                self.scheduler.reschedule_job(job.name, trigger=trigger_for(job, zone, self.intervals))

    def again(self, event: JobExecutionEvent) -> None:
        """Run a job again at once when its run stopped with work left; its schedule goes on after."""
        if event.retval is True and not self.stopping.is_set():
            with contextlib.suppress(JobLookupError):
                self.scheduler.modify_job(event.job_id, next_run_time=dt.datetime.now(self.zone))

    def stop(self) -> None:
        """Start no more runs, and wait for those running to finish."""
        self.stopping.set()
        self.scheduler.shutdown(wait=True)


def lead(rt: Runtime, leadership: Leadership, stop: threading.Event) -> None:
    """Run the jobs while this process holds the lock and ``stop`` is not set."""
    interval = rt.settings.scheduler_standby_seconds
    # A former leader that lost the lock without dying notices within one
    # check interval and stops; start no job before it has.
    if stop.wait(2 * interval):
        return
    schedule = JobSchedule(rt)
    schedule.start()
    log.info("leader: running %d jobs", len(JOBS))
    try:
        while not stop.wait(interval):
            if not leadership.held():
                log.error("no longer the leader: lost %s; stopping jobs", leadership.where)
                return
            schedule.follow_programme()
    finally:
        log.info("waiting for running jobs to finish")
        schedule.stop()


def serve(rt: Runtime, stop: threading.Event) -> None:
    """Lead when this process can take the lock, stand by when it cannot, until ``stop`` is set."""
    check_intervals(rt.settings.job_intervals)
    interval = rt.settings.scheduler_standby_seconds
    leadership = leadership_for(rt.engine, runner_name())
    standing_by = False
    try:
        while not stop.is_set():
            if leadership.acquire():
                standing_by = False
                log.info("leader: took %s; jobs start in %g s", leadership.where, 2 * interval)
                try:
                    lead(rt, leadership, stop)
                except sa.exc.DBAPIError as exc:
                    log.error("leader: the database failed (%s); giving up the lead", exc.orig)
                leadership.release()
            else:
                if not standing_by:
                    log.info(
                        "standby: another scheduler is the leader (%s); trying to take over every %g s",
                        leadership.where,
                        interval,
                    )
                    standing_by = True
                stop.wait(interval)
    finally:
        leadership.release()
    log.info("stopped")


def run(rt: Runtime) -> None:
    """``loyalty scheduler``: serve until SIGTERM or SIGINT, then finish running jobs and exit."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    # A scheduler started in the background of a shell script ignores SIGINT, as such processes should.
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, on_signal)
    serve(rt, stop)

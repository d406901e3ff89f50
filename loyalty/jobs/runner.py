"""Running a job once, and the record of every run."""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
from typing import Any

import sqlalchemy as sa

from loyalty.calendar import iso
from loyalty.db import transaction
from loyalty.errors import NotFound
from loyalty.jobs import JOBS
from loyalty.jobs.models import job_runs
from loyalty.runtime import Outcome, Runtime

log = logging.getLogger(__name__)


def runner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_job(rt: Runtime, name: str, as_of: dt.datetime | None = None) -> dict[str, Any]:
    """Run job ``name`` as of ``as_of`` (default: the clock's now) and record the run.

    A job that raises is recorded as failed, with the error, and the error is
    not raised again: the scheduler carries on and the next run resumes."""
    return run_and_record(rt, name, as_of)[0]


def run_and_record(rt: Runtime, name: str, as_of: dt.datetime | None = None) -> tuple[dict[str, Any], Outcome]:
    """:func:`run_job`, also returning the job's :class:`~loyalty.runtime.Outcome` (the scheduler
    reads ``more`` from it)."""
    job = JOBS.get(name)
    if job is None:
        raise NotFound(f"no job {name!r}; jobs: {', '.join(JOBS)}", field="name")
    as_of = as_of or rt.now()
    with transaction(rt.engine) as conn:
        run_id = conn.execute(
            job_runs.insert()
            .values(job=name, as_of=as_of, started_at=rt.now(), status="running", runner=runner_name())
            .returning(job_runs.c.id)
        ).scalar_one()
    try:
        outcome = job.function()(rt, as_of)
        status = "succeeded"
    except Exception as exc:  # recorded, not re-raised: a failed run must not stop the scheduler
        log.exception("job %s failed", name)
        outcome, status = Outcome(errors=1, detail=f"{type(exc).__name__}: {exc}"[:2000]), "failed"
    with transaction(rt.engine) as conn:
        conn.execute(
            job_runs.update()
            .where(job_runs.c.id == run_id)
            .values(
                finished_at=rt.now(),
                status=status,
                rows=outcome.rows,
                errors=outcome.errors,
                detail=outcome.detail or None,
            )
        )
        return run_json(conn.execute(sa.select(job_runs).where(job_runs.c.id == run_id)).one()), outcome


def run_json(row: Any) -> dict[str, Any]:
    return {
        "run_id": str(row.id),
        "job": row.job,
        "as_of": iso(row.as_of),
        "started_at": iso(row.started_at),
        "finished_at": iso(row.finished_at),
        "status": row.status,
        "rows": int(row.rows),
        "errors": int(row.errors),
        "detail": row.detail,
        "runner": row.runner,
    }


def recent_runs(rt: Runtime, *, job: str | None, limit: int, before: int | None) -> dict[str, Any]:
    """Runs newest first, ``limit`` at a time, optionally of one job."""
    r = job_runs.c
    q = sa.select(job_runs).order_by(r.id.desc()).limit(limit + 1)
    if job is not None:
        q = q.where(r.job == job)
    if before is not None:
        q = q.where(r.id < before)
    with transaction(rt.engine, readonly=True) as conn:
        rows = list(conn.execute(q))
    more = len(rows) > limit
    rows = rows[:limit]
    return {"runs": [run_json(x) for x in rows], "next_cursor": str(rows[-1].id) if more else None}


def failed_runs(rt: Runtime, *, since: dt.datetime, limit: int = 20) -> list[dict[str, Any]]:
    """Runs that failed, or finished with errors, since ``since``; newest first."""
    r = job_runs.c
    q = (
        sa.select(job_runs)
        .where(r.started_at >= since, sa.or_(r.status == "failed", r.errors > 0))
        .order_by(r.id.desc())
        .limit(limit)
    )
    with transaction(rt.engine, readonly=True) as conn:
        return [run_json(x) for x in conn.execute(q)]

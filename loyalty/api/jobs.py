"""Scheduled jobs: what is declared, and the record of their runs."""

from __future__ import annotations

from flask import Response

from loyalty.api.base import bp, cursor_arg, int_arg, json_response, query_arg, requires, runtime
from loyalty.errors import ValidationError
from loyalty.jobs import JOBS
from loyalty.jobs.runner import recent_runs
from loyalty.jobs.scheduler import programme_zone

MAX_PAGE = 200
#: A run's id, below 10**18 (a bigint goes to 2**63 - 1; no installation will number that many runs).
CURSOR_DIGITS = 18


@bp.get("/jobs")
@requires("admin")
def list_jobs() -> Response:
    zone = programme_zone(runtime()).key
    return json_response(
        {
            "jobs": [
                {
                    "name": job.name,
                    "description": job.description,
                    "schedule": job.schedule,
                    "timezone": zone if job.schedule["trigger"] == "cron" else None,
                }
                for job in JOBS.values()
            ]
        }
    )


@bp.get("/jobs/runs")
@requires("admin")
def job_runs() -> Response:
    job = query_arg("job")
    if job is not None and job not in JOBS:
        raise ValidationError.one("job", f"no job {job!r}; jobs: {', '.join(JOBS)}")
    limit = int_arg("limit", 50, 1, MAX_PAGE)
    cursor = cursor_arg("cursor", CURSOR_DIGITS)
    return json_response(recent_runs(runtime(), job=job, limit=limit, before=cursor))

"""Running jobs by hand (``loyalty jobs``) and the job API (``/v1/jobs``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from loyalty.cli import main
from loyalty.jobs import JOBS
from loyalty.jobs.models import job_runs
from loyalty.jobs.runner import run_job
from tests import probe_jobs
from tests.conftest import make_key
from tests.probe_jobs import environment

LOYALTY = str(Path(sys.executable).with_name("loyalty"))


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, job in probe_jobs.PROBES.items():
        monkeypatch.setitem(JOBS, name, job)
    monkeypatch.setattr(probe_jobs, "PROBE_SECONDS", 0)


def jobs_cli(runtime, *args: str):  # type: ignore[no-untyped-def]
    """``loyalty jobs ARGS`` in this process, on the test's runtime and clock."""
    return CliRunner().invoke(main, ["jobs", *args], obj=runtime)


def stored(engine: sa.Engine) -> list[sa.Row]:  # type: ignore[type-arg]
    with engine.connect() as conn:
        return list(conn.execute(sa.select(job_runs).order_by(job_runs.c.id)))


def test_jobs_run_prints_the_run_and_records_it(runtime, engine, probes):
    result = jobs_cli(runtime, "run", "probe")
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    assert run["job"] == "probe" and run["status"] == "succeeded" and run["rows"] == 1 and run["errors"] == 0
    assert run["as_of"] == run["started_at"] == "2026-06-15T10:00:00Z"  # the clock's now
    assert run["runner"].startswith(socket.gethostname() + ":")
    (row,) = stored(engine)
    assert (str(row.id), row.status, row.rows, row.detail) == (
        run["run_id"],
        "succeeded",
        1,
        "probed as of 2026-06-15T10:00:00+00:00",
    )


@pytest.mark.parametrize(
    ("as_of", "moment"),
    [
        ("2026-03-01", "2026-02-28T16:00:00Z"),  # midnight in the programme's zone, Asia/Shanghai
        ("2026-03-01T12:00:00+08:00", "2026-03-01T04:00:00Z"),
        ("2026-03-01T12:00Z", "2026-03-01T12:00:00Z"),
        ("2027-01-01", "2026-12-31T16:00:00Z"),  # ahead of the clock: operators move jobs through time
    ],
)
def test_jobs_run_as_of_a_date_or_a_moment(runtime, engine, probes, as_of, moment):
    result = jobs_cli(runtime, "run", "probe", "--as-of", as_of)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["as_of"] == moment
    assert [r.as_of.isoformat().replace("+00:00", "Z") for r in stored(engine)] == [moment]


@pytest.mark.parametrize(
    ("as_of", "problem"),
    [
        ("yesterday", "is not a date"),
        ("2026-02-30", "is not a date"),
        ("2026-13-01T00:00:00+08:00", "is not a date"),
        ("2026-03-01T12:00:00", "has no offset"),
    ],
)
def test_jobs_run_refuses_a_bad_as_of_and_runs_nothing(runtime, engine, probes, as_of, problem):
    result = jobs_cli(runtime, "run", "probe", "--as-of", as_of)
    assert result.exit_code == 2
    assert "--as-of" in result.stderr and problem in result.stderr
    assert stored(engine) == []


@pytest.mark.committed
def test_a_failing_job_is_recorded_as_failed_with_its_error_and_exits_1(database_url, engine):
    result = subprocess.run(
        [sys.executable, "-m", "tests.probe_jobs", "jobs", "run", "broken", "--as-of", "2026-06-01"],
        env=environment(database_url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    run = json.loads(result.stdout)
    assert run["status"] == "failed" and run["errors"] == 1 and run["finished_at"] is not None
    assert run["detail"] == "RuntimeError: the broken probe fails on purpose"
    (row,) = stored(engine)
    assert (row.job, row.status, row.detail) == ("broken", "failed", run["detail"])
    assert row.runner.split(":")[1] != str(os.getpid())  # run by that process


def test_jobs_run_refuses_an_unknown_job_and_lists_the_jobs(unopened_url):
    result = subprocess.run(
        [LOYALTY, "jobs", "run", "nightly"], env=environment(unopened_url), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "no job 'nightly'" in result.stderr
    assert all(name in result.stderr for name in JOBS)
    # ...and runs nothing: it never opened the database (unopened_url).


@pytest.mark.committed
def test_jobs_list_names_every_job_with_its_schedule(database_url):
    result = subprocess.run(
        [LOYALTY, "jobs", "list"],
        env=environment(database_url, LOYALTY_JOB_INTERVALS="webhooks=1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert set(lines) == set(JOBS)
    assert "cron hour=1 (Asia/Shanghai)" in lines["lifecycle"] and JOBS["lifecycle"].description in lines["lifecycle"]
    assert "every 1 second (LOYALTY_JOB_INTERVALS)" in lines["webhooks"]


def test_jobs_api_lists_the_declared_jobs(client):
    r = client.get("/v1/jobs")
    assert r.status_code == 200
    jobs = {j["name"]: j for j in r.get_json()["jobs"]}
    assert list(jobs) == list(JOBS)
    assert jobs["lifecycle"]["schedule"] == {"trigger": "cron", "hour": 1}
    assert jobs["lifecycle"]["timezone"] == "Asia/Shanghai"
    assert jobs["webhooks"] == {
        "name": "webhooks",
        "description": JOBS["webhooks"].description,
        "schedule": {"trigger": "interval", "seconds": 5},
        "timezone": None,
    }


def test_job_runs_api_pages_newest_first_and_filters_by_job(runtime, client, probes, clock):
    made = []
    for i in range(5):
        made.append(run_job(runtime, "broken" if i % 2 else "probe"))
        clock.advance(minutes=1)
    newest_first = [r["run_id"] for r in reversed(made)]

    seen, cursor, pages = [], None, 0
    while True:
        r = client.get("/v1/jobs/runs?limit=2" + (f"&cursor={cursor}" if cursor else ""))
        assert r.status_code == 200
        page = r.get_json()
        seen += page["runs"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert [r["run_id"] for r in seen] == newest_first
    assert seen[0] == made[-1]  # the same record `jobs run` prints

    r = client.get("/v1/jobs/runs?job=broken")
    assert r.status_code == 200
    assert [(x["job"], x["status"]) for x in r.get_json()["runs"]] == [("broken", "failed")] * 2
    assert r.get_json()["next_cursor"] is None
    r = client.get(f"/v1/jobs/runs?job=probe&limit=1&cursor={made[4]['run_id']}")
    assert [x["run_id"] for x in r.get_json()["runs"]] == [made[2]["run_id"]]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("job=nightly", "job"),
        ("job=", "job"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=ten", "limit"),
        ("cursor=-1", "cursor"),
        ("cursor=abc", "cursor"),
    ],
)
def test_job_runs_api_names_the_bad_parameter(client, query, field):
    r = client.get(f"/v1/jobs/runs?{query}")
    assert r.status_code == 422
    assert r.content_type == "application/problem+json"
    assert r.get_json()["field"] == field


def test_job_api_needs_the_admin_scope(runtime, client):
    reader = make_key(runtime, "read", "accrue", "finance", "redeem")
    for path in ("/v1/jobs", "/v1/jobs/runs"):
        assert client.get(path, key=reader).status_code == 403
        assert client.get(path, key=None).status_code == 401
        assert client.get(path, key=make_key(runtime, "admin")).status_code == 200

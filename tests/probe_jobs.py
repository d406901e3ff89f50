"""Jobs the tests register, and the ``loyalty`` command with them registered.

``python -m tests.probe_jobs ARGS...`` is ``loyalty ARGS...`` with :data:`PROBES`
added to ``JOBS``, so that tests run the real scheduler and ``jobs run`` in
their own processes on jobs whose behaviour they know. With
``PROBE_INTERVAL_SECONDS`` set, the ``probe`` job runs that often instead of
daily (a fraction of a second is allowed, unlike ``LOYALTY_JOB_INTERVALS``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
from pathlib import Path

from loyalty.jobs import Job
from loyalty.runtime import Outcome, Runtime

ROOT = Path(__file__).resolve().parent.parent

#: How long a ``probe`` run takes: long enough that two runs at once would overlap visibly.
PROBE_SECONDS = 0.3


def probe(rt: Runtime, as_of: dt.datetime) -> Outcome:
    time.sleep(PROBE_SECONDS)
    return Outcome(rows=1, detail=f"probed as of {as_of.isoformat()}")


#: How far ahead ``expiry_later`` runs the expiry job: past the default programme's 24 months.
EXPIRY_AHEAD_DAYS = 25 * 31


def expiry_later(rt: Runtime, as_of: dt.datetime) -> Outcome:
    """The real expiry job, run as of ``EXPIRY_AHEAD_DAYS`` later, so points earned today lapse."""
    from loyalty.members.jobs import expiry

    return expiry(rt, as_of + dt.timedelta(days=EXPIRY_AHEAD_DAYS))


#: Runs the ``backlog`` job still has to make before it has caught up.
BACKLOG = 0


def backlog(rt: Runtime, as_of: dt.datetime) -> Outcome:
    """Works off one unit of :data:`BACKLOG` a run, and says while more is left."""
    global BACKLOG
    BACKLOG = max(0, BACKLOG - 1)
    return Outcome(rows=1, detail=f"{BACKLOG} left", more=BACKLOG > 0)


def broken(rt: Runtime, as_of: dt.datetime) -> Outcome:
    raise RuntimeError("the broken probe fails on purpose")


PROBES = {
    j.name: j
    for j in [
        Job("probe", "sleeps a moment and reports one row", "tests.probe_jobs:probe", {"trigger": "cron", "hour": 3}),
        Job("broken", "always fails", "tests.probe_jobs:broken", {"trigger": "cron", "hour": 4, "minute": 30}),
        Job("backlog", "one unit of a backlog a run", "tests.probe_jobs:backlog", {"trigger": "cron", "hour": 6}),
        Job(
            "expiry_later",
            "the expiry job, 25 months ahead",
            "tests.probe_jobs:expiry_later",
            {"trigger": "cron", "hour": 5},
        ),
    ]
}


def environment(database_url: str, **settings: str) -> dict[str, str]:
    """The environment of a ``loyalty`` process on ``database_url`` running this tree's code."""
    return {
        **os.environ,
        "LOYALTY_DATABASE_URL": database_url,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        **settings,
    }


if __name__ == "__main__":
    from loyalty.cli import main
    from loyalty.jobs import JOBS

    JOBS.update(PROBES)
    if os.environ.get("PROBE_INTERVAL_SECONDS"):
        every = float(os.environ["PROBE_INTERVAL_SECONDS"])
        JOBS["probe"] = dataclasses.replace(JOBS["probe"], schedule={"trigger": "interval", "seconds": every})
    # Smaller chunks, so that a run of a few thousand members commits many times and can be killed
    # part way (tests/test_faults.py).
    if os.environ.get("PROBE_CHUNK"):
        from loyalty.members import jobs as member_jobs
        from loyalty.tiers import jobs as tier_jobs

        tier_jobs.CHUNK = member_jobs.EXPIRY_CHUNK = int(os.environ["PROBE_CHUNK"])
    # Smaller claims, so that runs in several processes take turns on one subscription (tests/test_webhooks.py).
    if os.environ.get("PROBE_WEBHOOK_BATCH"):
        from loyalty.events import webhooks

        webhooks.BATCH = int(os.environ["PROBE_WEBHOOK_BATCH"])
    main(prog_name="loyalty")

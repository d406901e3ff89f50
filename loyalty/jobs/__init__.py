"""Every scheduled job, declared in one place.

A job is a function ``run(runtime, as_of) -> Outcome``. It takes its time
from ``as_of`` (the clock's now, or ``loyalty jobs run NAME --as-of``),
works in chunks of its own transactions, and is idempotent: running it
twice for the same ``as_of``, or again after a crash, changes nothing more
than running it once. :func:`loyalty.jobs.runner.run_job` records each run
in ``job_runs``; the scheduler (:mod:`loyalty.jobs.scheduler`) fires them.

Cron schedules are in the programme's time zone.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datetime as dt

    from loyalty.runtime import Outcome, Runtime


@dataclass(frozen=True)
class Job:
    name: str
    description: str
    #: ``module:function``, imported when the job first runs
    target: str
    #: APScheduler trigger: ``{"trigger": "cron", "hour": 1}`` or ``{"trigger": "interval", "seconds": 10}``
    schedule: dict[str, Any] = field(default_factory=dict)

    def function(self) -> Callable[[Runtime, dt.datetime], Outcome]:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


JOBS: dict[str, Job] = {
    j.name: j
    for j in [
        Job(
            "tier_review",
            "quarterly tier review: upgrades, downgrades by at most one step, ended overrides",
            "loyalty.tiers.jobs:tier_review",
            {"trigger": "cron", "month": "1,4,7,10", "day": 1, "hour": 2},
        ),
        Job(
            "lifecycle",
            "daily lifecycle stages: decline after 3 months without a transaction, win-back after 6",
            "loyalty.tiers.jobs:lifecycle",
            {"trigger": "cron", "hour": 1},
        ),
        Job(
            "birthdays",
            "daily birthday gifts through the rules engine, once per member per year",
            "loyalty.members.jobs:birthdays",
            {"trigger": "cron", "hour": 0, "minute": 5},
        ),
        Job(
            "points_expiring",
            "daily points.expiring events for lots that expire in 30 days",
            "loyalty.members.jobs:points_expiring",
            {"trigger": "cron", "hour": 1, "minute": 30},
        ),
        Job(
            "expiry",
            "daily lapse of points whose expiry has passed: an expiry entry and a points.expired event per member",
            "loyalty.members.jobs:expiry",
            {"trigger": "cron", "hour": 0, "minute": 15},
        ),
        Job(
            "balances",
            "daily balances: each account's net movement per local day, rolled up from the postings for finance",
            "loyalty.finance.balances:run",
            {"trigger": "cron", "hour": 0, "minute": 45},
        ),
        Job(
            "webhooks",
            "deliver events to webhook subscriptions, with retries and a dead-letter state",
            "loyalty.events.webhooks:deliver",
            {"trigger": "interval", "seconds": 5},
        ),
        Job(
            "redemptions",
            "settle fulfilled redemptions whose cancellation window has ended: their held points are spent for good",
            "loyalty.redemption.jobs:settle",
            {"trigger": "interval", "seconds": 60},
        ),
        Job(
            "fulfilment",
            "order pending partner redemptions, ask partners about unconfirmed ones, fail those past their deadline",
            "loyalty.fulfilment.jobs:fulfil",
            {"trigger": "interval", "seconds": 2},
        ),
        Job(
            "partitions",
            "daily: the journal's monthly partitions on PostgreSQL, this month's and the next months', created ahead",
            "loyalty.jobs.partitions:run",
            {"trigger": "cron", "hour": 4},
        ),
        Job(
            "analytics",
            "daily benefit-usage roll-ups of every completed local day, week, month, quarter and year",
            "loyalty.analytics.jobs:analytics",
            {"trigger": "cron", "hour": 3},
        ),
    ]
}

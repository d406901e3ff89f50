"""Prometheus metrics (``GET /metrics``).

Two kinds:

- what the API sees as it answers (request latency per route and status, accruals and points
  awarded, redemptions, refusals, the database pool): counters and histograms kept by
  ``prometheus-client``. Under gunicorn they live in ``PROMETHEUS_MULTIPROC_DIR``
  (gunicorn.conf.py sets it), one file per worker, and a scrape of any worker adds them up, so
  a worker's figures survive its restart and every worker's are counted;
- what the database knows (job runs, their durations and failures, the outbox's lag, webhook
  deliveries and dead letters, fulfilment orders past their deadline): read at each scrape by
  :class:`DatabaseCollector`, so they are the same whichever node or worker is scraped, and
  cover the scheduler, which is another process.

Accruals and redemptions are counted from the answers the API gives, not inside the booking
services: a replay (``Idempotent-Replayed``) is not counted again.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY, Collector
from sqlalchemy.engine import Engine

from loyalty.db import is_postgres
from loyalty.events.models import events, webhook_deliveries, webhook_subscriptions
from loyalty.jobs.models import job_runs
from loyalty.redemption.models import redemptions

REQUEST_SECONDS = Histogram(
    "loyalty_http_request_duration_seconds",
    "Time to answer a request, by route template, method and status",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
ACCRUALS = Counter(
    "loyalty_accruals_total", "Transactions booked for accrual (not replays), by the member's tier", ["tier"]
)
POINTS = Counter(
    "loyalty_points_awarded_total", "Points awarded by accruals, by rule and the member's tier", ["rule", "tier"]
)
REDEMPTIONS = Counter(
    "loyalty_redemptions_total",
    "Redemptions made (not replays), by benefit kind and the status they were answered with",
    ["kind", "outcome"],
)
REFUSALS = Counter(
    "loyalty_refusals_total",
    "Requests answered with a problem document, by problem type and status",
    ["type", "status"],
)
POOL = Gauge(
    "loyalty_db_pool_connections",
    "The database pool's connections: checked out by requests now (in_use) and open (open)",
    ["state"],
    multiprocess_mode="livesum",
)


def observe_pool(engine: Engine) -> None:
    pool: Any = engine.pool
    if hasattr(pool, "checkedout"):
        POOL.labels("in_use").set(pool.checkedout())
        POOL.labels("open").set(pool.checkedin() + pool.checkedout())


def scrape(engine: Engine, now: dt.datetime) -> bytes:
    """The exposition text: the process's (or, under gunicorn, every worker's) metrics, then the
    database's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    database = CollectorRegistry()
    database.register(DatabaseCollector(engine, now))
    return generate_latest(registry) + generate_latest(database)


class DatabaseCollector(Collector):
    """The figures only the database knows, read at each scrape (see the module). When the database
    cannot be read, ``loyalty_database_up`` is 0 and the rest are left out: a scrape never fails."""

    def __init__(self, engine: Engine, now: dt.datetime) -> None:
        self.engine = engine
        self.now = now

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("loyalty_database_up", "1 when the database answered this scrape's queries")
        try:
            with self.engine.execution_options(readonly=True).begin() as conn:
                found = list(self.read(conn))
        except sa.exc.SQLAlchemyError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from found

    def read(self, conn: sa.Connection) -> Iterator[Metric]:
        r = job_runs.c
        runs = CounterMetricFamily("loyalty_job_runs", "Job runs recorded, by job and status", labels=["job", "status"])
        for job, status, count in conn.execute(sa.select(r.job, r.status, sa.func.count()).group_by(r.job, r.status)):
            runs.add_metric([job, status], count)
        yield runs
        seconds = duration(conn, r.started_at, r.finished_at)
        spent = CounterMetricFamily(
            "loyalty_job_run_seconds", "Seconds spent in finished job runs, by job", labels=["job"]
        )
        last = GaugeMetricFamily("loyalty_job_last_run_seconds", "How long the last finished run took", labels=["job"])
        latest = (
            sa.select(r.job, sa.func.max(r.id).label("id")).where(r.finished_at.is_not(None)).group_by(r.job).subquery()
        )
        totals: dict[str, Any] = {
            job: total for job, total in conn.execute(sa.select(r.job, sa.func.sum(seconds)).group_by(r.job))
        }
        for job, took in conn.execute(sa.select(r.job, seconds).join(latest, latest.c.id == r.id)):
            spent.add_metric([job], float(totals.get(job) or 0))
            last.add_metric([job], float(took or 0))
        yield spent
        yield last

        lag = GaugeMetricFamily(
            "loyalty_outbox_lag_seconds",
            "Age of the oldest event not yet delivered to a webhook subscription (0 when none waits)",
        )
        oldest = [self.oldest_pending(conn), self.oldest_not_fanned_out(conn)]
        waiting = [t for t in oldest if t is not None]
        lag.add_metric([], max(0.0, (self.now - min(waiting)).total_seconds()) if waiting else 0.0)
        yield lag

        d = webhook_deliveries.c
        deliveries = GaugeMetricFamily(
            "loyalty_webhook_deliveries", "Webhook deliveries by status (dead: the dead letters)", labels=["status"]
        )
        counts: dict[str, int] = {
            status: n for status, n in conn.execute(sa.select(d.status, sa.func.count()).group_by(d.status))
        }
        for status in ("pending", "delivered", "dead"):
            deliveries.add_metric([status], counts.get(status, 0))
        yield deliveries

        x = redemptions.c
        overdue = GaugeMetricFamily(
            "loyalty_fulfilment_overdue", "Redemptions still pending at a partner past their fulfilment deadline"
        )
        overdue.add_metric(
            [],
            conn.execute(sa.select(sa.func.count()).where(x.status == "pending", x.deadline < self.now)).scalar_one(),
        )
        yield overdue

    def oldest_pending(self, conn: sa.Connection) -> dt.datetime | None:
        d, e = webhook_deliveries.c, events.c
        return conn.execute(  # type: ignore[no-any-return]
            sa.select(sa.func.min(e.occurred_at))
            .select_from(events.join(webhook_deliveries, d.event_id == e.id))
            .where(d.status == "pending")
        ).scalar_one()

    def oldest_not_fanned_out(self, conn: sa.Connection) -> dt.datetime | None:
        e, s = events.c, webhook_subscriptions.c
        after = sa.tuple_(sa.func.coalesce(e.tx, 0), e.id) > sa.tuple_(s.cursor_tx, s.cursor_id)
        return conn.execute(  # type: ignore[no-any-return]
            sa.select(sa.func.min(e.occurred_at))
            .select_from(events.join(webhook_subscriptions, after))
            .where(s.active.is_(True))
        ).scalar_one()


def duration(conn: sa.Connection, start: Any, end: Any) -> Any:
    """``end - start`` in seconds, in SQL."""
    if is_postgres(conn):
        return sa.func.extract("epoch", end - start)
    return (sa.func.julianday(end) - sa.func.julianday(start)) * 86400.0

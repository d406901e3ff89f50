"""Analytics benchmark: the roll-ups and reports over a year of members, postings and redemptions.

Makes a scratch PostgreSQL database, migrates it, installs the default
programme and catalogue, and generates with set-based SQL: ``--members`` members
(tiers 50% basic, 30% mass, 15% potential, 5% hnw, each with an enrolment in
``tier_changes`` on 1 December 2025 and one in five with a tier change during
2026), their profiles, five transactions each over 2026 with a journal entry of
two postings each (ten postings per member: issued / member), one redemption
each of a benefit open to the tier, and a refusal and an answer for one in
twenty. Then it times, on PostgreSQL:

- the full rebuild: ``loyalty jobs run analytics --as-of 2027-01-01`` (every day,
  week, month, quarter and year of 2026 built from nothing);
- rebuilding one day (``--as-of 2026-06-16``: 15 June and nothing else);
- the report of a quarter x all tiers x all benefits from the roll-ups;

each against a plain aggregate over the same rows in the same run: for the
report, ``GROUP BY benefit_code`` over the quarter's redemptions; for the day,
``GROUP BY account`` over the day's postings plus ``GROUP BY benefit_code`` over its
redemptions; for the full rebuild, the same over the whole year.

Targets at 1,000,000 members / 10,000,000 postings / 1,000,000 redemptions:
report ≤ 1 s, one day ≤ 60 s; the full rebuild is measured and stated.

    PYTHONPATH=. .venv/bin/python bench/analytics.py [--members N] [--pg URL] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from loyalty.analytics import metrics, periods, service  # noqa: E402
from loyalty.analytics.jobs import analytics, build  # noqa: E402
from loyalty.catalogue import service as catalogue  # noqa: E402
from loyalty.config import Settings  # noqa: E402
from loyalty.db import transaction  # noqa: E402
from loyalty.ledger import partitions  # noqa: E402
from loyalty.migrate import upgrade  # noqa: E402
from loyalty.programmes.service import installed  # noqa: E402
from loyalty.runtime import make_runtime  # noqa: E402

ZONE = ZoneInfo("Asia/Shanghai")
ENROLLED = dt.datetime(2025, 12, 1, tzinfo=ZONE)
YEAR_START = dt.datetime(2026, 1, 1, tzinfo=ZONE)
TIERS = ["hnw", "potential", "mass", "basic"]

GENERATE = [
    ("draws", "SELECT setseed(0.42)"),
    (
        "members",
        """INSERT INTO members (member_id, birth_date, enrolled_at, channel, created_at, tier, tier_since,
                               lifecycle_stage, lifecycle_since)
           SELECT 'M' || lpad(g::text, 8, '0'), DATE '1960-01-01' + (random() * 15000)::int, :enrolled,
                  (ARRAY['app','branch','mini_program'])[1 + (g % 3)], :enrolled,
                  CASE WHEN g % 20 = 0 THEN 'hnw' WHEN g % 20 < 4 THEN 'potential'
                       WHEN g % 20 < 10 THEN 'mass' ELSE 'basic' END, :enrolled,
                  (ARRAY['growth','maturity','decline'])[1 + (g % 3)], :enrolled
             FROM generate_series(1, :n) g""",
    ),
    ("accounts", "INSERT INTO member_accounts (member_id) SELECT member_id FROM members"),
    (
        "tier history",
        """INSERT INTO tier_changes (member_id, id, from_tier, to_tier, source, reason, changed_at)
           SELECT member_id, gen_random_uuid()::text, NULL, tier, 'enrolment', 'enrolled', :enrolled FROM members""",
    ),
    (
        "tier changes",
        """INSERT INTO tier_changes (member_id, id, from_tier, to_tier, source, reason, changed_at)
           SELECT member_id, gen_random_uuid()::text, tier,
                  CASE tier WHEN 'basic' THEN 'mass' WHEN 'mass' THEN 'potential' ELSE 'basic' END,
                  'review', 'bench', :year + random() * interval '364 days'
             FROM members WHERE random() < 0.2""",
    ),
    (
        "profiles",
        """INSERT INTO member_profiles (member_id, aum, products_held, updated_at)
           SELECT member_id, (random() * 100000000)::bigint,
                  (ARRAY[',deposit,', ',deposit,wealth,', ',card,deposit,fund,', NULL])[1 + (random() * 3)::int],
                  :enrolled
             FROM members""",
    ),
    (
        "transactions",
        """INSERT INTO transactions (member_id, transaction_id, type, amount, currency, occurred_at, points,
                                     balance_after, programme_version, received_at)
           SELECT member_id, member_id || '-' || k, 'card_purchase', 10000, 'CNY', t, 100, 0, 'bench', t
             FROM (SELECT member_id, k, :year + random() * interval '364 days' AS t
                     FROM members, generate_series(1, 5) k) x""",
    ),
    (
        "journal entries",
        # each entry with its key, in one statement: the entry's foreign key is checked at its end
        """WITH e AS (INSERT INTO journal_entries (member_id, id, seq, kind, source_ref, points, balance_after,
                                                   posted_at)
           SELECT member_id, gen_random_uuid(), row_number() OVER (PARTITION BY member_id ORDER BY occurred_at),
                  'accrual', transaction_id, 100, 0, occurred_at
             FROM transactions
           RETURNING member_id, id, seq, kind, source_ref, posted_at)
           INSERT INTO entry_keys (member_id, entry_id, seq, kind, source_ref, posted_at) SELECT * FROM e""",
    ),
    (
        "postings",
        """INSERT INTO postings (member_id, entry_id, line, account, amount, posted_at)
           SELECT member_id, id, l, CASE l WHEN 1 THEN 'issued:bank' ELSE 'member' END,
                  CASE l WHEN 1 THEN -100 ELSE 100 END, posted_at
             FROM journal_entries, generate_series(1, 2) l""",
    ),
    (
        "redemptions",
        """INSERT INTO redemptions (member_id, id, benefit_code, benefit_version, quantity, points, status,
                                    created_at, updated_at)
           SELECT m.member_id, 'R' || m.member_id,
                  (ARRAY['phone-credit-10','phone-credit-30','food-delivery-coupon-20','video-membership-1m',
                         'gym-card-10-visits','supermarket-card-50'])[1 + (random() * 5)::int],
                  1, 1, 1000, 'fulfilled', t, t
             FROM (SELECT member_id, :year + random() * interval '364 days' AS t FROM members) m""",
    ),
    (
        "refusals",
        """INSERT INTO redemption_refusals (member_id, redemption_id, benefit_code, quantity, reason, refused_at)
           SELECT member_id, 'X' || member_id, 'gym-card-10-visits', 1, 'out_of_stock',
                  :year + random() * interval '364 days'
             FROM members WHERE random() < 0.05""",
    ),
    (
        "feedback",
        """INSERT INTO member_feedback (member_id, feedback_id, score, benefit_code, answered_at, received_at)
           SELECT member_id, 'F' || member_id, (random() * 10)::int, 'gym-card-10-visits', t, t
             FROM (SELECT member_id, :year + random() * interval '364 days' AS t FROM members) x
            WHERE random() < 0.05""",
    ),
    ("analyze", "ANALYZE"),
]


def timed(what: str, fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    print(f"  {what}: {seconds:.2f} s", flush=True)
    return seconds, result


def plain(engine: sa.Engine, start: dt.datetime, end: dt.datetime) -> None:
    """The baseline: plain aggregates over the same rows."""
    with engine.connect() as conn:
        conn.execute(
            sa.text(
                "SELECT account, count(*), sum(amount) FROM postings WHERE posted_at >= :s AND posted_at < :e"
                " GROUP BY account"
            ),
            {"s": start, "e": end},
        ).all()
        conn.execute(
            sa.text(
                "SELECT benefit_code, count(*), count(DISTINCT member_id), sum(points) FROM redemptions"
                " WHERE created_at >= :s AND created_at < :e GROUP BY benefit_code"
            ),
            {"s": start, "e": end},
        ).all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument(
        "--pg", default=os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument("--profile-only", action="store_true", help="generate, then stop (with --keep)")
    parser.add_argument(
        "--no-full",
        action="store_true",
        help="skip the full rebuild: build only 2026-Q2 and 15 June (each timed) before the report",
    )
    args = parser.parse_args()
    admin = sa.create_engine(args.pg, isolation_level="AUTOCOMMIT")
    name = "loyalty_bench_analytics"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.make_url(args.pg).set(database=name).render_as_string(hide_password=False)
    clock_now = [dt.datetime(2027, 1, 1, 3, tzinfo=ZONE).astimezone(dt.UTC)]
    rt = make_runtime(Settings(database_url=url), clock=lambda: clock_now[0])
    try:
        upgrade(rt.engine)
        with transaction(rt.engine) as conn:  # the journal's months, as a database that lived through them has
            partitions.create_months(conn, partitions.months(ENROLLED, clock_now[0]))
        installed(rt.engine, ENROLLED.astimezone(dt.UTC))
        with transaction(rt.engine) as conn:
            catalogue.install_default(conn, TIERS, actor="bench", now=ENROLLED.astimezone(dt.UTC))
        n = args.members
        print(f"generating {n:,} members ...", flush=True)
        params = {"n": n, "enrolled": ENROLLED, "year": YEAR_START}
        for what, sql in GENERATE:
            with transaction(rt.engine) as conn:
                timed(what, lambda sql=sql: conn.execute(sa.text(sql), params))
        with rt.engine.connect() as conn:
            counts = {
                t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()  # noqa: S608 (fixed names)
                for t in ("members", "postings", "redemptions", "transactions", "tier_changes")
            }
        print("rows: " + ", ".join(f"{t} {c:,}" for t, c in counts.items()), flush=True)
        if args.profile_only:
            return
        year_end = dt.datetime(2027, 1, 1, tzinfo=ZONE)
        full = full_base = None
        day_as_of = dt.datetime(2026, 6, 16, tzinfo=ZONE).astimezone(dt.UTC)
        june_15 = periods.parse("2026-06-15", ZONE)
        if args.no_full:
            quarter_s, rows = timed(
                "building 2026-Q2 alone", lambda: build(rt, periods.parse("2026-Q2", ZONE), now=rt.now())
            )
            print("one day:", flush=True)
            day, rows = timed("building 15 June alone", lambda: build(rt, june_15, now=rt.now()))
        else:
            print("full rebuild of 2026 (every day, week, month, quarter and year):", flush=True)
            full, outcome = timed(
                "analytics job --as-of 2027-01-01", lambda: analytics(rt, year_end.astimezone(dt.UTC))
            )
            print(f"    {outcome.detail}, {outcome.rows:,} rows", flush=True)
            full_base, _ = timed(
                "baseline: plain aggregates over the year", lambda: plain(rt.engine, YEAR_START, year_end)
            )
            print("one day:", flush=True)
            day, outcome = timed(
                "analytics job --as-of 2026-06-16 (rebuilds 15 June)", lambda: analytics(rt, day_as_of)
            )
            print(f"    {outcome.detail}", flush=True)
        day_base, _ = timed(
            "baseline: plain aggregates over 15 June",
            lambda: plain(rt.engine, dt.datetime(2026, 6, 15, tzinfo=ZONE), dt.datetime(2026, 6, 16, tzinfo=ZONE)),
        )
        print("report of 2026-Q2 x all tiers x all benefits from the roll-ups:", flush=True)
        report_s, report = timed(
            "GET /v1/analytics/report?period=2026-Q2 (service)", lambda: service.report(rt, "2026-Q2")
        )
        assert report["periods"][0]["source"] == "rollup"
        report_base, _ = timed(
            "baseline: plain aggregates over Q2",
            lambda: plain(rt.engine, dt.datetime(2026, 4, 1, tzinfo=ZONE), dt.datetime(2026, 7, 1, tzinfo=ZONE)),
        )
        live_s, _ = timed(
            "the same quarter computed live from the raw tables (no roll-ups)",
            lambda: _live(rt),
        )
        scale = 1_000_000 / n
        print()
        print(f"members {n:,}, postings {counts['postings']:,}, redemptions {counts['redemptions']:,}")
        print(
            f"report (quarter, rolled up): {report_s:.3f} s  baseline {report_base:.3f} s  target <= 1 s"
            f"  {'PASS' if report_s <= 1 else 'MISS'}"
        )
        print(
            f"one day rebuilt: {day:.2f} s  baseline {day_base:.3f} s  target <= 60 s"
            f"  (x{scale:g} members, linear: ~{day * scale:.0f} s)"
        )
        if full is not None and full_base is not None:
            print(
                f"full rebuild of 12 months: {full:.1f} s  baseline {full_base:.2f} s"
                f"  (x{scale:g} members, linear: ~{full * scale / 60:.0f} min)"
            )
        print(f"quarter computed live instead: {live_s:.2f} s")
    finally:
        rt.engine.dispose()
        if not args.keep:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _live(rt: Any) -> Any:
    span = periods.parse("2026-Q2", ZONE)
    with transaction(rt.engine, readonly=True) as conn:
        return metrics.compute(conn, span, zone=ZONE, tiers=TIERS)


if __name__ == "__main__":
    main()

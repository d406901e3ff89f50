"""Finance benchmark on PostgreSQL: the roll-forward and the liability over 10,000,000 postings, and the
expiry job over 1,000,000 expiring lots.

Makes a scratch PostgreSQL database, migrates it, installs the default programme and generates the
ledger with set-based SQL (``INSERT ... SELECT`` over ``generate_series``) straight into the tables,
consistent with the ledger's invariants, in transactions of 250,000 entries: ``--members`` members,
each with a tier (``tier_changes``) and an account; ``--postings`` / 2 accrual entries spread evenly
over the year before ``AS_OF``, each with its two postings (the member's credit and
``issued:bank``'s debit, summing to zero), one point lot, and the member's running
``balance_after``; each member account's balance is the sum of its postings and of its lots.
``--expiring-lots`` of the lots expire before ``AS_OF`` (the others in 24 months). Foreign-key
triggers are off while generating (``session_replication_role = replica``): the rows are consistent
by construction, and checking 20 million references would only slow the generation. A
``redemption_rate`` and a ``point_value`` valuation setting for ``bank`` are set, so the liability
values with them and does not estimate breakage.

It then runs the ``balances`` job as of ``AS_OF`` (timed, for information: it rolls up every day and
takes the member snapshots at the ends of the last months) and times, each against
a baseline measured in the same run on the same data:

- the roll-forward of the last whole month (every day rolled up), and of the month to date (today
  read from the postings), against ``SELECT sum(amount) FROM postings`` over the postings before
  the period's end (what summing the postings themselves costs at least), and against the same
  roll-forward with no roll-up and no snapshot (every figure from the ledger);
- the liability at the end of the last whole month, against the same ``SELECT sum()`` and the same
  liability with no snapshot;
- the ``expiry`` job as of ``AS_OF`` over the expiring lots, against one ``UPDATE point_lots SET
  remaining = 0`` of the same lots (rolled back): what touching each lot once costs.

Targets: each report ≤ 5 s; the expiry job ≤ 60 s for 1,000,000 lots.

    PYTHONPATH=. .venv/bin/python bench/finance.py [--postings N] [--members N] [--expiring-lots N]
        [--skip-expiry] [--skip-reports] [--pg URL] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from loyalty import calendar  # noqa: E402
from loyalty.config import Settings  # noqa: E402
from loyalty.finance import liability, reports, settings, snapshots  # noqa: E402
from loyalty.finance.models import daily_balances_state  # noqa: E402
from loyalty.jobs.runner import run_job  # noqa: E402
from loyalty.ledger import partitions  # noqa: E402
from loyalty.migrate import upgrade  # noqa: E402
from loyalty.programmes.service import installed  # noqa: E402
from loyalty.runtime import make_runtime  # noqa: E402

REPORT_TARGET_SECONDS = 5.0
EXPIRY_TARGET_SECONDS = 60.0  # per 1,000,000 lots
ZONE = ZoneInfo("Asia/Shanghai")
AS_OF = dt.datetime(2026, 11, 15, 2, 0, tzinfo=ZONE).astimezone(dt.UTC)
SPAN = dt.timedelta(days=365)


def loadavg() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}"


#: Entries generated per transaction: short transactions, so that the generation does not hold back
#: the oldest running transaction of the server (which the event feed waits on) for minutes.
BATCH = 250_000


def generate(engine: sa.Engine, postings: int, members: int, expiring: int) -> None:
    entries = postings // 2
    p: dict[str, Any] = {
        "n": members,
        "e": entries,
        "every": max(1, entries // max(1, expiring)),  # every k-th entry of each member: all members expire some
        "t0": AS_OF - SPAN - dt.timedelta(days=1),
        "t1": AS_OF - dt.timedelta(days=1),
        "asof": AS_OF,
    }
    setup = [
        (
            "members",
            """INSERT INTO members (member_id, enrolled_at, created_at, tier, tier_since)
               SELECT 'F' || lpad(i::text, 8, '0'), :t0 - interval '1 day', :t0 - interval '1 day',
                      (ARRAY['basic', 'mass', 'potential', 'hnw'])[1 + i % 4], :t0 - interval '1 day'
                 FROM generate_series(1, :n) i""",
        ),
        (
            "tier_changes",
            """INSERT INTO tier_changes (member_id, id, from_tier, to_tier, source, reason, changed_at)
               SELECT member_id, md5(member_id)::uuid::text, NULL, tier, 'enrolment', 'enrolled', enrolled_at
                 FROM members""",
        ),
        (
            "",
            """CREATE UNLOGGED TABLE bench_acc (member_id text PRIMARY KEY, total bigint NOT NULL,
                                               entries int NOT NULL, last timestamptz NOT NULL)""",
        ),
    ]
    # One batch of entries ``g`` in [lo, hi): member 1 + g % n, its seq g / n + 1, posted evenly over
    # the year in g order; a member's running balance carries over between batches in bench_acc.
    batch = [
        (
            "staging",
            """CREATE TEMPORARY TABLE bench_entries ON COMMIT DROP AS
               SELECT g, 'F' || lpad((1 + g % :n)::text, 8, '0') AS member_id, (g / :n + 1)::int AS seq,
                      md5('e' || g)::uuid AS id, (1 + (g * 7919) % 500)::bigint AS points,
                      :t0 + (:t1 - :t0) * (g::float8 / :e) AS posted_at
                 FROM generate_series(CAST(:lo AS bigint), :hi - 1) g""",
        ),
        (
            "journal_entries",
            # each entry with its key, in one statement: the entry's foreign key is checked at its end
            """WITH e AS (INSERT INTO journal_entries (member_id, id, seq, kind, source_ref, points, balance_after,
                                            transaction_id, posted_at, occurred_at)
               SELECT b.member_id, id, seq, 'accrual', 'b' || g, points,
                      coalesce(a.total, 0) + sum(points) OVER (PARTITION BY b.member_id ORDER BY seq),
                      'b' || g, posted_at, posted_at
                 FROM bench_entries b LEFT JOIN bench_acc a ON a.member_id = b.member_id
               RETURNING member_id, id, seq, kind, source_ref, posted_at)
               INSERT INTO entry_keys (member_id, entry_id, seq, kind, source_ref, posted_at) SELECT * FROM e""",
        ),
        (
            "postings",
            """INSERT INTO postings (member_id, entry_id, line, account, amount, rule_id, posted_at)
               SELECT member_id, id, 1, 'member', points, 'card-spend-base', posted_at FROM bench_entries
               UNION ALL
               SELECT member_id, id, 2, 'issued:bank', -points, NULL, posted_at FROM bench_entries""",
        ),
        (
            "point_lots",
            """INSERT INTO point_lots (member_id, id, entry_id, rule_id, reason, funding_source, qualifying,
                                       original, remaining, earned_at, expires_at)
               SELECT member_id, md5('l' || g)::uuid, id, 'card-spend-base', 'card spend', 'bank', true,
                      points, points, posted_at,
                      CASE WHEN (g / :n) % :every = 0
                           THEN least(posted_at + interval '30 days', :asof - interval '1 hour')
                           ELSE posted_at + interval '24 months' END
                 FROM bench_entries""",
        ),
        (
            "running balances",
            """INSERT INTO bench_acc
               SELECT member_id, sum(points), count(*), max(posted_at) FROM bench_entries GROUP BY member_id
               ON CONFLICT (member_id) DO UPDATE SET total = bench_acc.total + excluded.total,
                   entries = bench_acc.entries + excluded.entries, last = excluded.last""",
        ),
    ]
    finish = [
        (
            "member_accounts",
            """INSERT INTO member_accounts (member_id, balance, held, entry_seq, last_activity_at)
               SELECT member_id, total, 0, entries, last FROM bench_acc""",
        ),
        ("", "DROP TABLE bench_acc"),
    ]
    spent: dict[str, float] = {}

    def run(steps: list[tuple[str, str]], params: dict[str, Any]) -> None:
        with engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
            conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
            for label, sql in steps:
                t0 = time.perf_counter()
                conn.execute(sa.text(sql), params)
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0

    run(setup, p)
    for lo in range(0, entries, BATCH):
        run(batch, {**p, "lo": lo, "hi": min(lo + BATCH, entries)})
    run(finish, p)
    for label, seconds in spent.items():
        if label:
            print(f"  {label:<40} {seconds:7.1f} s", flush=True)
    t0 = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM (ANALYZE)")
        conn.exec_driver_sql("CHECKPOINT")
    print(f"  {'VACUUM (ANALYZE), CHECKPOINT':<40} {time.perf_counter() - t0:7.1f} s", flush=True)


def timed(what: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = what()
    return time.perf_counter() - t0, result


def read(engine: sa.Engine, report: Callable[[sa.Connection], Any], *, no_roll_up: bool = False) -> tuple[float, Any]:
    """Time ``report`` in a read transaction; with ``no_roll_up`` the roll-up's state and the member
    snapshots are hidden (deleted in the transaction, rolled back), so every figure comes from the
    ledger itself."""
    with engine.connect() as conn, conn.begin():
        if no_roll_up:
            conn.execute(sa.delete(daily_balances_state))
            snapshots.forget(conn)
        seconds, result = timed(lambda: report(conn))
        conn.rollback()
    return seconds, result


def baseline_sum(engine: sa.Engine, end: dt.datetime) -> tuple[float, int]:
    with engine.connect() as conn:
        return timed(
            lambda: int(
                conn.execute(
                    sa.text("SELECT coalesce(sum(amount), 0) FROM postings WHERE posted_at < :end"), {"end": end}
                ).scalar_one()
            )
        )


def baseline_update(engine: sa.Engine) -> tuple[float, int]:
    with engine.connect() as conn:
        seconds, n = timed(
            lambda: (
                conn.execute(
                    sa.text("UPDATE point_lots SET remaining = 0 WHERE remaining > 0 AND expires_at <= :asof"),
                    {"asof": AS_OF},
                ).rowcount
            )
        )
        conn.rollback()
    return seconds, n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postings", type=int, default=10_000_000)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--expiring-lots", type=int, default=1_000_000)
    parser.add_argument(
        "--pg", default=os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--skip-expiry", action="store_true", help="leave out the expiry job")
    parser.add_argument("--skip-reports", action="store_true", help="leave out the balances job and the reports")
    parser.add_argument("--keep", action="store_true", help="leave the scratch database for inspection")
    args = parser.parse_args()

    admin = sa.create_engine(args.pg, isolation_level="AUTOCOMMIT")
    name = f"bench_finance_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(args.pg).set(database=name).render_as_string(hide_password=False)
    rt = make_runtime(Settings(database_url=url))
    engine = rt.engine
    rows: list[tuple[str, float, str, str, str]] = []
    try:
        upgrade(engine)
        with engine.begin() as conn:  # the journal's months, as a database that lived through them has
            partitions.create_months(conn, partitions.months(AS_OF - SPAN - dt.timedelta(days=31), AS_OF))
        installed(engine, AS_OF - SPAN - dt.timedelta(days=30))
        print(f"database {name}; as_of {AS_OF.astimezone(ZONE).isoformat()}; {loadavg()}")
        print(
            f"generating {args.postings:,} postings, {args.members:,} members, "
            f"{args.expiring_lots:,} expiring lots (set-based SQL):"
        )
        seconds, _ = timed(lambda: generate(engine, args.postings, args.members, args.expiring_lots))
        print(f"generated in {seconds:.1f} s")
        with engine.connect() as conn:
            counted = conn.execute(sa.text("SELECT count(*) FROM postings")).scalar_one()
            due = conn.execute(
                sa.text("SELECT count(*) FROM point_lots WHERE remaining > 0 AND expires_at <= :a"), {"a": AS_OF}
            ).scalar_one()
        print(f"postings {counted:,}; lots expiring by as_of {due:,}")
        with engine.begin() as conn:
            first = calendar.local_date(AS_OF - SPAN - dt.timedelta(days=2), ZONE)
            for kind, value in (("point_value", Decimal("0.5")), ("redemption_rate", Decimal("0.8"))):
                settings.set_value(
                    conn,
                    kind=kind,
                    funding_source="bank",
                    effective_from=first,
                    value=value,
                    actor="bench",
                    now=AS_OF,
                )

        if not args.skip_reports:
            seconds, run = timed(lambda: run_job(rt, "balances", AS_OF))
            print(
                f"\nbalances job: {run['status']}, {run['detail']}, {run['rows']:,} rows "
                f"in {seconds:.1f} s; {loadavg()}"
            )
            if run["status"] != "succeeded":
                return 1

            month = calendar.month(calendar.month(AS_OF, ZONE).start - dt.timedelta(seconds=1), ZONE)
            to_date = calendar.Period(calendar.month(AS_OF, ZONE).start, AS_OF)
            last_day = calendar.local_date(month.end - dt.timedelta(seconds=1), ZONE)
            print(f"\nreports ({loadavg()}):")
            for label, period in (("roll-forward, last month", month), ("roll-forward, month to date", to_date)):
                base_s, total = baseline_sum(engine, period.end)
                raw_s, raw = read(
                    engine, lambda c, p=period: reports.rollforward(c, start=p.start, end=p.end), no_roll_up=True
                )
                seconds, rf = read(engine, lambda c, p=period: reports.rollforward(c, start=p.start, end=p.end))
                assert rf == raw, "the roll-up and the postings disagree"
                assert rf["tie_out"]["tied"], rf["tie_out"]
                print(
                    f"  {label}: {seconds:.2f} s (no roll-up {raw_s:.2f} s); baseline SELECT sum() of "
                    f"{counted:,} postings {base_s:.2f} s (sum {total}); closing {rf['closing']:,}"
                )
                rows.append(
                    (
                        label,
                        seconds,
                        f"sum() {base_s:.2f} s; no roll-up {raw_s:.2f} s",
                        "<= 5 s",
                        "met" if seconds <= REPORT_TARGET_SECONDS else "missed",
                    )
                )
            base_s, _ = baseline_sum(engine, month.end)

            def owed(c: sa.Connection) -> Any:
                return liability.liability(c, as_of=last_day, zone=ZONE, default_point_value=Decimal(1))

            raw_s, raw = read(engine, owed, no_roll_up=True)
            seconds, report = read(engine, owed)
            assert report == raw, "the snapshot and the ledger disagree"
            assert report["tie_out"]["tied"], report["tie_out"]
            print(
                f"  liability at {last_day}: {seconds:.2f} s (no roll-up {raw_s:.2f} s); "
                f"baseline SELECT sum() {base_s:.2f} s; "
                f"{report['total']['points']:,} points, {report['total']['liability_fen']:,} fen"
            )
            rows.append(
                (
                    "liability, month end",
                    seconds,
                    f"sum() {base_s:.2f} s; no roll-up {raw_s:.2f} s",
                    "<= 5 s",
                    "met" if seconds <= REPORT_TARGET_SECONDS else "missed",
                )
            )

        if not args.skip_expiry:
            base_s, touched = baseline_update(engine)
            print(
                f"\nexpiry ({loadavg()}): baseline UPDATE of {touched:,} lots {base_s:.1f} s (rolled back)", flush=True
            )
            seconds, run = timed(lambda: run_job(rt, "expiry", AS_OF))
            print(f"  expiry job: {run['status']}, {run['detail']} in {seconds:.1f} s; {loadavg()}")
            target = EXPIRY_TARGET_SECONDS * touched / 1_000_000
            rows.append(
                (
                    f"expiry job, {touched:,} lots",
                    seconds,
                    f"UPDATE {base_s:.1f} s",
                    f"<= {target:.0f} s",
                    "met" if seconds <= target else "missed",
                )
            )

        print(f"\nsummary, {counted:,} postings, {loadavg()} (a shared machine: figures are noisy):")
        print(f"{'figure':<32}{'seconds':>9}  {'baseline (same run)':<40}{'target':>8}  result")
        for label, seconds, base, target_s, verdict in rows:
            print(f"{label:<32}{seconds:>9.2f}  {base:<40}{target_s:>8}  {verdict}")
        return 0
    finally:
        engine.dispose()
        if args.keep:
            print(f"kept database {name}")
        else:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


if __name__ == "__main__":
    sys.exit(main())

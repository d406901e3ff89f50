"""Backtest benchmark: replay 1,000,000 stored transactions under a candidate programme.

Makes a scratch PostgreSQL database, loads members, transactions and their
point lots with set-based SQL (as booking would have left them: the default
programme's 1 point per CNY of card spend), then times
``loyalty.accrual.backtest.run`` over the whole period with a candidate
that doubles card-spend points. The baseline, measured in the same run, is
streaming the same rows through the same server-side cursor without
evaluating anything, so the figure shows what the rules and the report cost
on top of reading the data.

Target: 1,000,000 transactions in 60 s or less.

    PYTHONPATH=. .venv/bin/python bench/backtest.py [--rows N] [--members N] [--pg URL]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from loyalty.accrual import backtest  # noqa: E402
from loyalty.db import make_engine  # noqa: E402
from loyalty.migrate import upgrade  # noqa: E402
from loyalty.programmes.service import installed  # noqa: E402
from rules import default_document, load_programme  # noqa: E402

TARGET_SECONDS = 60.0
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def load(engine: sa.Engine, rows: int, members: int) -> None:
    """Members, transactions over the year 2026, and a lot for each card purchase."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO members (member_id, birth_date, enrolled_at, created_at) "
                "SELECT 'M' || g, date '1980-01-01' + (g % 12000), :start, :start FROM generate_series(1, :n) g"
            ),
            {"start": START - dt.timedelta(days=30), "n": members},
        )
        conn.execute(sa.text("INSERT INTO member_accounts (member_id) SELECT member_id FROM members"))
        conn.execute(
            sa.text(
                """INSERT INTO transactions (member_id, transaction_id, type, amount, currency, occurred_at,
                       points, entry_id, balance_after, programme_version, received_at)
                   SELECT 'M' || (1 + g % :members), 'T' || g,
                          (ARRAY['card_purchase','card_purchase','card_purchase','card_purchase','card_purchase',
                                 'card_purchase','transfer','bill_payment','wealth_purchase','loan_repayment'])
                              [1 + (g * 7) % 10],
                          100 + (g::bigint * 7919) % 500000, 'CNY',
                          :start + (g * interval '31 seconds'),
                          0, md5(g::text)::uuid, 0, '2026.1', :start
                     FROM generate_series(1, :rows) g"""
            ),
            {"members": members, "rows": rows, "start": START},
        )
        conn.execute(sa.text("UPDATE transactions SET points = amount / 100 WHERE type = 'card_purchase'"))
        # The lots booking would have written; their journal entries are not needed here.
        conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        conn.execute(
            sa.text(
                """INSERT INTO point_lots (member_id, id, entry_id, rule_id, reason, funding_source, qualifying,
                       original, remaining, earned_at, expires_at)
                   SELECT member_id, entry_id, entry_id, 'card-spend-base', 'base', 'bank', true,
                          points, points, occurred_at, occurred_at + interval '2 years'
                     FROM transactions WHERE points > 0"""
            )
        )
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    admin = sa.create_engine(args.pg, isolation_level="AUTOCOMMIT")
    name = f"bench_backtest_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(args.pg).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    try:
        upgrade(engine)
        installed(engine, dt.datetime.now(dt.UTC))
        t0 = time.perf_counter()
        load(engine, args.rows, args.members)
        print(f"loaded {args.rows:,} transactions over {args.members:,} members in {time.perf_counter() - t0:.1f} s")

        doc = copy.deepcopy(default_document())
        doc["version"] = "candidate"
        doc["rules"][0]["action"]["points"] = 2
        candidate = load_programme(doc)
        end = START + dt.timedelta(days=400)

        with engine.connect() as conn:
            t0 = time.perf_counter()
            n = 0
            stream = conn.execution_options(stream_results=True, yield_per=backtest.FETCH).execute(
                sa.text(
                    "SELECT t.*, m.birth_date, m.enrolled_at FROM transactions t JOIN members m USING (member_id) "
                    "ORDER BY t.member_id, t.occurred_at, t.transaction_id"
                )
            )
            for _ in stream:
                n += 1
            baseline = time.perf_counter() - t0
        with engine.connect() as conn:
            t0 = time.perf_counter()
            report = backtest.run(conn, candidate, start=START, end=end, point_value_fen=Decimal(1))
            seconds = time.perf_counter() - t0
        assert report["transactions"] == args.rows == n, (report["transactions"], n)
        verdict = "PASS" if seconds <= TARGET_SECONDS * args.rows / 1_000_000 else "MISS"
        print(f"baseline: streaming the {n:,} rows alone: {baseline:.1f} s ({n / baseline:,.0f} rows/s)")
        print(
            f"backtest: {seconds:.1f} s ({args.rows / seconds:,.0f} transactions/s), "
            f"{seconds / baseline:.1f}x the baseline; target <= {TARGET_SECONDS:.0f} s per 1,000,000: {verdict}"
        )
        print(
            f"points actual {report['points']['actual']:,}, candidate {report['points']['candidate']:,}, "
            f"liability delta {report['liability_delta_cny']} CNY"
        )
        return 0
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())

"""Tier review and lifecycle benchmark: the quarterly review and the daily lifecycle job over 1,000,000 members.

Makes a scratch PostgreSQL database, migrates it, installs the default
programme and generates the members with set-based SQL straight into the
tables: ``members`` (tier, lifecycle stage, first and latest transaction,
birth dates over ages 18-80, a few tier overrides), ``member_accounts``,
``member_profiles`` (assets, profit contribution, products), about three
``transactions`` per member in the last 120 days (digital and branch
channels), a point lot per card purchase plus older lots over the last
14 months (each with its ``journal_entries`` row, which the lots' foreign
key requires), a few refunds in ``reversals``, and one enrolment row per
member in ``tier_changes``, ``lifecycle_changes`` and ``events``. The
tiers members hold before the review are their profile's tier, one above it
or one below it, so the review both upgrades and downgrades.

It then times ``run_job(rt, "tier_review", as_of)`` with ``as_of`` at the
start of a quarter, and again in the same quarter (which must change
nothing), then ``run_job(rt, "lifecycle", as_of)`` twice. Baselines measured
in the same run on the same data:

- metrics pass: one set-based ``SELECT`` computing every member's metrics
  (qualifying points net of refunds, transactions and digital share in the
  activity window, assets, products) over the same windows: what reading the
  review's inputs costs at least;
- stage pass: one ``SELECT`` computing every member's lifecycle stage;
- touch every row: ``UPDATE members SET lifecycle_since = lifecycle_since``
  (rolled back): what writing every member row once costs. The review writes
  every member (it marks each reviewed), so its floor is the metrics pass
  plus one touch.

Targets: each job ≤ 60 s per 1,000,000 members.

    PYTHONPATH=. .venv/bin/python bench/tier_review.py [--members N] [--chunk N] [--pg URL] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from loyalty import calendar  # noqa: E402
from loyalty.config import Settings  # noqa: E402
from loyalty.jobs.runner import run_job  # noqa: E402
from loyalty.ledger import partitions  # noqa: E402
from loyalty.migrate import upgrade  # noqa: E402
from loyalty.programmes.service import installed  # noqa: E402
from loyalty.runtime import make_runtime  # noqa: E402
from loyalty.tiers import jobs as tier_jobs  # noqa: E402
from loyalty.tiers.sql import Window, stage_bounds  # noqa: E402
from rules.tiers import StageBounds  # noqa: E402

TARGET_SECONDS = 60.0
ZONE = ZoneInfo("Asia/Shanghai")
#: The review's cron time at the start of the fourth quarter, in the programme's zone.
AS_OF = dt.datetime(2026, 10, 1, 2, 0, tzinfo=ZONE)
#: The quarter every member was last reviewed in.
PREVIOUS_QUARTER = "2026Q3"
#: The lifecycle stages members hold before the job were decided this long before ``AS_OF``.
STAGES_DECIDED_BEFORE = dt.timedelta(days=30)

TIERS = ["basic", "mass", "potential", "hnw"]  # by rank
DIGITAL = ["app", "mini_program", "online", "wechat"]
OTHER_CHANNELS = ["branch", "pos", "atm"]
PRODUCTS = ["card", "deposit", "fund", "insurance", "loan", "mortgage", "wealth"]


def stage_sql(tier: str) -> str:
    """A member's lifecycle stage as SQL over ``members`` columns, with the job's rules, taking the
    stage bounds from the parameters ``:act``, ``:decl``, ``:churn``, ``:mat``, ``:mtiers`` (:func:`stage_params`)."""
    return f"""CASE
        WHEN first_transaction_at IS NULL OR last_transaction_at IS NULL THEN 'acquisition'
        WHEN last_transaction_at <= :churn THEN 'win_back'
        WHEN last_transaction_at <= :decl THEN 'decline'
        WHEN first_transaction_at > :act THEN 'activation'
        WHEN first_transaction_at <= :mat AND {tier} = ANY(:mtiers) THEN 'maturity'
        ELSE 'growth' END"""


def stage_params(bounds: StageBounds, maturity_tiers: list[str]) -> dict[str, Any]:
    return {
        "act": bounds.activation_since,
        "decl": bounds.decline_before,
        "churn": bounds.churn_before,
        "mat": bounds.maturity_before,
        "mtiers": maturity_tiers,
    }


def generate(engine: sa.Engine, n: int, as_of: dt.datetime, maturity_tiers: list[str]) -> None:
    """Members and their history, all set-based, from random draws with a fixed seed."""
    day = as_of.astimezone(ZONE).date()
    prior = stage_bounds(_lifecycle(), as_of - STAGES_DECIDED_BEFORE, ZONE)
    p = {"n": n, "asof": as_of, "day": day, "prevq": PREVIOUS_QUARTER}
    steps: list[tuple[str, str]] = [
        ("random draws", "SELECT setseed(0.42)"),
        (
            "",
            """CREATE UNLOGGED TABLE bench_rand AS
               SELECT g, random() r_seg, random() r_age, random() r_aum, random() r_prof, random() r_prod,
                      random() r_ntx, random() r_dig, random() r_cur, random() r_enrol, random() r_last,
                      random() r_old, random() r_ovr, random() r_qp
                 FROM generate_series(1, :n) g""",
        ),
        # seg: the tier the profile is drawn for (0 basic .. 3 hnw); cur: the tier held before the review.
        (
            "member attributes",
            f"""CREATE UNLOGGED TABLE bench_gen AS
               WITH s AS (
                 SELECT r.*, 'M' || lpad(g::text, 8, '0') AS member_id,
                        CASE WHEN r_seg < 0.02 THEN 3 WHEN r_seg < 0.12 THEN 2 WHEN r_seg < 0.45 THEN 1 ELSE 0 END seg
                   FROM bench_rand r)
               SELECT s.*,
                      CASE WHEN seg = 2 THEN 20 + floor(r_age * 21) ELSE 18 + floor(r_age * 63) END::int AS age,
                      floor(r_enrol * 1000)::int % 365 AS birth_offset,
                      CASE seg
                        WHEN 3 THEN CASE WHEN r_prof < 0.6 THEN 200000000 + floor(r_aum * 1800000000)
                                         ELSE 50000000 + floor(r_aum * 150000000) END
                        WHEN 2 THEN CASE WHEN r_qp < 0.5 THEN 1000000 + floor(r_aum * 15000000)
                                         ELSE 20000000 + floor(r_aum * 150000000) END
                        WHEN 1 THEN CASE WHEN r_prof < 0.8 THEN 5000000 + floor(r_aum * 30000000)
                                         ELSE floor(r_aum * 5000000) END
                        ELSE floor(r_aum * r_aum * 5000000) END::bigint AS aum,
                      CASE seg
                        WHEN 3 THEN CASE WHEN r_prof < 0.6 THEN floor(r_prof * 8000000)
                                         ELSE 5000000 + floor(r_prof * 10000000) END
                        WHEN 2 THEN floor(r_prof * 2000000)
                        ELSE floor(r_prof * r_prof * 600000) END::bigint AS profit,
                      CASE seg WHEN 3 THEN 3 + floor(r_prod * 4) WHEN 2 THEN 2 + floor(r_prod * 3)
                               WHEN 1 THEN 1 + floor(r_prod * 4) ELSE floor(r_prod * 3) END::int AS n_products,
                      (g * 3) % {len(PRODUCTS)} AS product_offset,
                      -- transactions in the last 120 days: 0-6 (mean 3); 12-17 for members qualifying by activity
                      CASE WHEN seg = 1 AND r_prof >= 0.8 THEN 12 + floor(r_ntx * 6)
                           ELSE floor(r_ntx * 7) END::int AS n_tx,
                      CASE WHEN seg = 2 THEN 0.85 ELSE 0.45 END AS p_digital,
                      -- older qualifying lots (4-14 months ago), large for the potential members who qualify by points
                      CASE WHEN r_ntx < 1.0 / 7 AND r_last < 0.2 THEN 0
                           WHEN seg = 2 AND r_qp < 0.5 THEN 2 + floor(r_old * 3)
                           ELSE floor(r_old * 4) END::int AS n_old,
                      CASE WHEN seg = 2 AND r_qp < 0.5 THEN 5000 ELSE 1500 END AS old_points,
                      greatest(0, least(3, seg + CASE WHEN r_cur < 0.7 THEN 0 WHEN r_cur < 0.85 THEN 1
                                                      ELSE -1 END)) AS cur,
                      CASE WHEN r_enrol < 0.05 THEN :asof - (5 + r_enrol / 0.05 * 80) * interval '1 day'
                           ELSE :asof - (100 + r_enrol * 3500) * interval '1 day' END AS enrolled_at,
                      -- never transacted: no transactions now and none before
                      (r_ntx < 1.0 / 7 AND r_last < 0.2) AS never
                 FROM s""",
        ),
        (
            "transactions (staged)",
            f"""CREATE UNLOGGED TABLE bench_tx AS
               WITH x AS (
                 SELECT g.g, g.member_id, k, g.p_digital,
                        greatest(g.enrolled_at + interval '1 day', :asof - interval '120 days') AS since,
                        random() r_t, random() r_type, random() r_amt, random() r_ch, random() r_rev
                   FROM bench_gen g, generate_series(1, g.n_tx) k)
               SELECT member_id, 'T' || g || '-' || k AS transaction_id,
                      since + r_t * (:asof - interval '1 hour' - since) AS occurred_at,
                      CASE WHEN r_type < 0.6 THEN 'card_purchase' WHEN r_type < 0.75 THEN 'transfer'
                           WHEN r_type < 0.87 THEN 'bill_payment' WHEN r_type < 0.95 THEN 'wealth_purchase'
                           ELSE 'loan_repayment' END AS type,
                      floor(exp(ln(1000) + r_amt * ln(500)))::bigint AS amount,
                      CASE WHEN r_ch < p_digital
                           THEN (ARRAY{DIGITAL!r})[1 + floor(r_ch / p_digital * {len(DIGITAL)})::int]
                           ELSE (ARRAY{OTHER_CHANNELS!r})[1 + floor((r_ch - p_digital) / (1 - p_digital)
                                                                     * {len(OTHER_CHANNELS)})::int] END AS channel,
                      r_rev < 0.01 AS refunded,
                      md5('T' || g || '-' || k)::uuid AS entry_id
                 FROM x""",
        ),
        (
            "",
            """CREATE UNLOGGED TABLE bench_txagg AS
               SELECT member_id, min(occurred_at) first_at, max(occurred_at) last_at
                 FROM bench_tx GROUP BY member_id""",
        ),
        (
            "members",
            f"""INSERT INTO members (member_id, birth_date, enrolled_at, channel, created_at, tier, tier_since,
                       override_tier, override_until, override_reason, tier_reviewed,
                       lifecycle_stage, lifecycle_since, first_transaction_at, last_transaction_at)
               SELECT member_id, birth_date, enrolled_at, channel, enrolled_at, tier, tier_since,
                      override_tier, override_until, override_reason, :prevq,
                      {stage_sql("tier")}, lifecycle_since, first_transaction_at, last_transaction_at
                 FROM (
                   SELECT g.member_id,
                          (:day - make_interval(years => g.age) - g.birth_offset * interval '1 day')::date
                              AS birth_date,
                          g.enrolled_at,
                          (ARRAY['app', 'branch', 'mini_program', 'online'])[1 + g.g % 4] AS channel,
                          CASE WHEN g.r_ovr < 0.008 THEN 'hnw' ELSE (ARRAY{TIERS!r})[g.cur + 1] END AS tier,
                          greatest(g.enrolled_at, :asof - (1 + g.r_cur * 700) * interval '1 day') AS tier_since,
                          CASE WHEN g.r_ovr < 0.008 THEN 'hnw' END AS override_tier,
                          CASE WHEN g.r_ovr < 0.004 THEN :asof + interval '60 days'
                               WHEN g.r_ovr < 0.008 THEN :asof - interval '10 days' END AS override_until,
                          CASE WHEN g.r_ovr < 0.008 THEN 'relationship manager request' END AS override_reason,
                          :asof - (1 + g.r_last * 60) * interval '1 day' AS lifecycle_since,
                          CASE WHEN g.never THEN NULL
                               WHEN g.r_enrol < 0.05 THEN a.first_at
                               ELSE g.enrolled_at + interval '1 day' END AS first_transaction_at,
                          CASE WHEN g.never THEN NULL
                               WHEN a.last_at IS NOT NULL THEN a.last_at
                               ELSE greatest(g.enrolled_at + interval '1 day',
                                             :asof - (95 + g.r_last * 600) * interval '1 day') END
                              AS last_transaction_at
                     FROM bench_gen g LEFT JOIN bench_txagg a USING (member_id)
                    ORDER BY g.member_id) x""",
        ),
        (
            "member_profiles",
            f"""INSERT INTO member_profiles (member_id, aum, profit_contribution, products_held, occupation, region,
                       preferred_channel, risk_profile, as_of, updated_at)
               SELECT g.member_id, g.aum, g.profit,
                      CASE WHEN g.n_products = 0 THEN NULL ELSE
                        ',' || (SELECT string_agg(pr, ',' ORDER BY pr)
                                  FROM unnest(ARRAY{PRODUCTS!r}) WITH ORDINALITY u(pr, i)
                                 WHERE (i - 1 - g.product_offset + {len(PRODUCTS)}) % {len(PRODUCTS)} < g.n_products)
                            || ',' END,
                      (ARRAY['employee', 'business_owner', 'student', 'retired', 'professional'])[1 + g.g % 5],
                      (ARRAY['north', 'east', 'south', 'west', 'central'])[1 + (g.g / 7) % 5],
                      CASE WHEN g.p_digital > 0.5 THEN 'app' ELSE 'branch' END,
                      (ARRAY['conservative', 'balanced', 'growth'])[1 + g.g % 3],
                      :day - 1, :asof
                 FROM bench_gen g ORDER BY g.member_id""",
        ),
        (
            "point lots (staged)",
            """CREATE UNLOGGED TABLE bench_lots AS
               SELECT member_id, entry_id, transaction_id AS source_ref, 'card-spend-base' AS rule_id,
                      amount / 100 AS points, occurred_at AS earned_at
                 FROM bench_tx WHERE type = 'card_purchase' AND amount >= 100
               UNION ALL
               SELECT g.member_id, md5('H' || g.g || '-' || k)::uuid, 'H' || g.g || '-' || k, 'card-spend-base',
                      1 + floor(random() * 2 * g.old_points)::bigint,
                      least(coalesce(a.last_at, :asof),
                            greatest(g.enrolled_at + interval '1 day',
                                     :asof - interval '120 days' - random() * interval '300 days'))
                 FROM bench_gen g LEFT JOIN bench_txagg a USING (member_id), generate_series(1, g.n_old) k""",
        ),
        (
            "member_accounts",
            """INSERT INTO member_accounts (member_id, balance, held, entry_seq, last_activity_at)
               SELECT g.member_id, coalesce(l.points, 0), 0, coalesce(l.n, 0), a.last_at
                 FROM bench_gen g
                 LEFT JOIN (SELECT member_id, sum(points) points, count(*) n FROM bench_lots GROUP BY member_id) l
                        USING (member_id)
                 LEFT JOIN bench_txagg a USING (member_id)
                ORDER BY g.member_id""",
        ),
        (
            "journal_entries",
            # each entry with its key, in one statement: the entry's foreign key is checked at its end
            """WITH e AS (INSERT INTO journal_entries (member_id, id, seq, kind, source_ref, points, balance_after,
                       transaction_id, programme_version, posted_at)
               SELECT member_id, entry_id,
                      row_number() OVER w, 'accrual', source_ref, points, sum(points) OVER w,
                      CASE WHEN source_ref LIKE 'T%' THEN source_ref END, '2026.1', earned_at
                 FROM bench_lots
               WINDOW w AS (PARTITION BY member_id ORDER BY earned_at, source_ref)
                ORDER BY earned_at
               RETURNING member_id, id, seq, kind, source_ref, posted_at)
               INSERT INTO entry_keys (member_id, entry_id, seq, kind, source_ref, posted_at) SELECT * FROM e""",
        ),
        (
            "point_lots",
            """INSERT INTO point_lots (member_id, id, entry_id, rule_id, reason, funding_source, qualifying,
                       original, remaining, earned_at, expires_at)
               SELECT member_id, entry_id, entry_id, rule_id, 'base', 'bank', true, points, points,
                      earned_at, earned_at + interval '2 years'
                 FROM bench_lots ORDER BY earned_at""",
        ),
        (
            "transactions",
            """INSERT INTO transactions (member_id, transaction_id, type, amount, currency, occurred_at, channel,
                       mcc, merchant, points, reversed_amount, reversed_points, entry_id, balance_after,
                       programme_version, received_at)
               SELECT t.member_id, t.transaction_id, t.type, t.amount, 'CNY', t.occurred_at, t.channel,
                      CASE WHEN t.type = 'card_purchase' THEN '5411' END,
                      CASE WHEN t.type = 'card_purchase'
                           THEN 'merchant ' || (abs(hashtext(t.transaction_id)) % 5000) END,
                      coalesce(l.points, 0),
                      CASE WHEN t.refunded AND l.points IS NOT NULL THEN t.amount ELSE 0 END,
                      CASE WHEN t.refunded AND l.points IS NOT NULL THEN l.points ELSE 0 END,
                      l.entry_id, 0, '2026.1', t.occurred_at
                 FROM bench_tx t LEFT JOIN bench_lots l ON l.member_id = t.member_id AND l.entry_id = t.entry_id
                ORDER BY t.occurred_at""",
        ),
        (
            "reversals",
            """INSERT INTO reversals (member_id, reversal_id, transaction_id, amount, points_due, points,
                       qualifying_points, entry_id, balance_after, created_at)
               SELECT member_id, 'R' || transaction_id, transaction_id, reversed_amount, reversed_points,
                      reversed_points, reversed_points, NULL, 0, occurred_at + interval '3 days'
                 FROM transactions WHERE reversed_points > 0 ORDER BY occurred_at""",
        ),
        (
            "history (tier_changes, lifecycle_changes, events)",
            """INSERT INTO tier_changes (member_id, id, from_tier, to_tier, source, reason, programme_version,
                       changed_at)
               SELECT member_id, md5('tier' || member_id)::uuid::text, NULL, 'basic', 'enrolment', 'enrolled',
                      '2026.1', enrolled_at
                 FROM members ORDER BY enrolled_at""",
        ),
        (
            "",
            """INSERT INTO lifecycle_changes (member_id, id, from_stage, to_stage, source, changed_at)
               SELECT member_id, md5('stage' || member_id)::uuid::text, NULL, 'acquisition', 'event', enrolled_at
                 FROM members ORDER BY enrolled_at""",
        ),
        (
            "",
            """INSERT INTO events (type, member_id, payload, occurred_at)
               SELECT 'member.enrolled', member_id,
                      json_build_object('member_id', member_id, 'channel', channel)::text, enrolled_at
                 FROM members ORDER BY enrolled_at""",
        ),
        ("drop staging tables", "DROP TABLE bench_rand, bench_gen, bench_tx, bench_txagg, bench_lots"),
    ]
    params = {**p, **stage_params(prior, maturity_tiers)}
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
        conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '512MB'")
        for label, sql in steps:
            t0 = time.perf_counter()
            conn.execute(sa.text(sql), params)
            if label:
                print(f"  {label:<52} {time.perf_counter() - t0:6.1f} s", flush=True)
    t0 = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM (ANALYZE)")
        conn.exec_driver_sql("CHECKPOINT")
    print(f"  {'VACUUM (ANALYZE), CHECKPOINT':<52} {time.perf_counter() - t0:6.1f} s", flush=True)


def _lifecycle() -> Any:
    from rules import default_document, load_programme

    return load_programme(default_document()).lifecycle


def sizes(engine: sa.Engine) -> list[tuple[str, int, int]]:
    names = [
        "members",
        "member_profiles",
        "member_accounts",
        "transactions",
        "point_lots",
        "journal_entries",
        "reversals",
        "tier_changes",
        "lifecycle_changes",
        "events",
    ]
    out = []
    with engine.connect() as conn:
        for name in names:
            rows = conn.execute(sa.text(f"SELECT count(*) FROM {name}")).scalar_one()
            size = conn.execute(sa.text("SELECT pg_total_relation_size(:t)"), {"t": name}).scalar_one()
            out.append((name, rows, size))
    return out


def distribution(engine: sa.Engine, column: str) -> str:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT {column}, count(*) FROM members GROUP BY 1 ORDER BY 2 DESC")).all()
    return ", ".join(f"{k} {v:,}" for k, v in rows)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class StatementTimes:
    """Wall time spent in each kind of SQL statement the jobs send, summed over a run."""

    LABEL = re.compile(
        r"^\s*(INSERT INTO \w+|UPDATE \w+ SET \w+|DELETE FROM \w+|DROP TABLE|CREATE TEMPORARY TABLE|"
        r"SELECT .*?\sFROM \w+|\w+)",
        re.S,
    )

    def __init__(self, engine: sa.Engine) -> None:
        self.totals: dict[str, list[float]] = {}
        self.active = False
        sa.event.listen(engine, "before_cursor_execute", self._before)
        sa.event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        conn.info["bench_t0"] = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if not self.active:
            return
        seconds = time.perf_counter() - conn.info.pop("bench_t0", time.perf_counter())
        match = self.LABEL.match(statement)
        label = " ".join((match.group(1) if match else statement[:40]).split())
        if label.startswith("SELECT") and " FROM " in label:
            label = "SELECT ... FROM " + label.split(" FROM ")[-1]
        entry = self.totals.setdefault(label, [0, 0.0])
        entry[0] += 1
        entry[1] += seconds

    def start(self) -> None:
        self.totals.clear()
        self.active = True

    def report(self, wall: float, top: int = 8) -> str:
        self.active = False
        rows = sorted(self.totals.items(), key=lambda kv: -kv[1][1])[:top]
        return "\n".join(
            f"    {seconds:7.1f} s {seconds / wall:4.0%} {int(calls):>6} x  {label}" for label, (calls, seconds) in rows
        )


class Timed:
    """Wall and this process's CPU seconds of a block, with the load average before and after."""

    def __enter__(self) -> Timed:
        self.load_before = loadavg()
        self.cpu0 = time.process_time()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.cpu0
        self.load_after = loadavg()

    def load(self) -> str:
        return f"load {self.load_before} -> {self.load_after}"


def baseline_metrics(engine: sa.Engine, as_of: dt.datetime, digital: list[str], ladder: Any) -> tuple[float, Any]:
    window = Window.at(ladder, as_of, ZONE)
    sql = """
        SELECT count(*), sum(coalesce(e.points, 0) - coalesce(r.points, 0)), sum(coalesce(a.n, 0)),
               sum(coalesce(a.digital, 0)), sum(coalesce(p.aum, 0)), sum(length(coalesce(p.products_held, '')))
          FROM members m
          LEFT JOIN member_profiles p USING (member_id)
          LEFT JOIN (SELECT member_id, sum(original) points FROM point_lots
                      WHERE qualifying AND earned_at > :qs AND earned_at <= :asof
                      GROUP BY member_id) e USING (member_id)
          LEFT JOIN (SELECT member_id, sum(qualifying_points) points FROM reversals
                      WHERE created_at > :qs AND created_at <= :asof GROUP BY member_id) r USING (member_id)
          LEFT JOIN (SELECT member_id, count(*) n, sum(CASE WHEN channel = ANY(:digital) THEN 1 ELSE 0 END) digital
                       FROM transactions WHERE occurred_at > :acts AND occurred_at <= :asof
                      GROUP BY member_id) a USING (member_id)"""
    params = {"qs": window.qualifying_since, "acts": window.activity_since, "asof": as_of, "digital": digital}
    with engine.connect() as conn:
        t0 = time.perf_counter()
        row = conn.execute(sa.text(sql), params).one()
        return time.perf_counter() - t0, row


def baseline_stages(engine: sa.Engine, as_of: dt.datetime, lifecycle: Any) -> tuple[float, int]:
    bounds = stage_bounds(lifecycle, as_of, ZONE)
    sql = f"SELECT count(*) FILTER (WHERE ({stage_sql('tier')}) <> lifecycle_stage) FROM members"
    with engine.connect() as conn:
        t0 = time.perf_counter()
        n = conn.execute(sa.text(sql), stage_params(bounds, list(lifecycle.maturity_tiers))).scalar_one()
        return time.perf_counter() - t0, n


def baseline_touch(engine: sa.Engine) -> tuple[float, int]:
    with engine.connect() as conn:
        t0 = time.perf_counter()
        n = conn.execute(sa.text("UPDATE members SET lifecycle_since = lifecycle_since")).rowcount
        seconds = time.perf_counter() - t0
        conn.rollback()
    return seconds, n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument(
        "--chunk", type=int, default=tier_jobs.CHUNK, help="members per chunk (loyalty.tiers.jobs.CHUNK)"
    )
    parser.add_argument(
        "--pg", default=os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--keep", action="store_true", help="leave the scratch database for inspection")
    args = parser.parse_args()

    tier_jobs.CHUNK = args.chunk

    admin = sa.create_engine(args.pg, isolation_level="AUTOCOMMIT")
    name = f"bench_tiers_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(args.pg).set(database=name).render_as_string(hide_password=False)
    rt = make_runtime(Settings(database_url=url))
    engine = rt.engine
    scale = args.members / 1_000_000
    try:
        upgrade(engine)
        with engine.begin() as conn:  # the journal's months (lots go back 420 days), as a database that lived them has
            partitions.create_months(conn, partitions.months(AS_OF - dt.timedelta(days=430), AS_OF))
        installed(engine, dt.datetime.now(dt.UTC))
        programme = rt.programmes.at(AS_OF)
        ladder, lifecycle = programme.ladder, programme.lifecycle
        assert [t.code for t in reversed(ladder.tiers)] == TIERS, ladder.codes
        as_of = AS_OF.astimezone(dt.UTC)
        period = calendar.quarter_label(as_of, programme.zone)
        print(f"database {name}; as_of {AS_OF.isoformat()} ({period}); chunk {args.chunk:,} members")
        print(f"generating {args.members:,} members (set-based SQL, no triggers skipped):")
        t0 = time.perf_counter()
        generate(engine, args.members, as_of, list(lifecycle.maturity_tiers))
        print(f"generated in {time.perf_counter() - t0:.1f} s")
        print(f"{'table':<20}{'rows':>14}{'size':>12}")
        for table, rows, size in sizes(engine):
            print(f"{table:<20}{rows:>14,}{size / 2**20:>9,.0f} MB")
        print(f"tiers before:  {distribution(engine, 'tier')}")
        print(f"stages before: {distribution(engine, 'lifecycle_stage')}")

        print(f"\nbaselines (load {loadavg()}):")
        metrics_s, row = baseline_metrics(engine, as_of, list(ladder.digital_channels), ladder)
        print(
            f"  metrics pass: {metrics_s:.1f} s for {row[0]:,} members "
            f"(qualifying points {row[1]:,}, activity-window transactions {row[2]:,}, digital {row[3]:,})"
        )
        stages_s, would_change = baseline_stages(engine, as_of, lifecycle)
        print(f"  stage pass:   {stages_s:.1f} s ({would_change:,} members' stage differs before the review)")

        statements = StatementTimes(engine)
        results: dict[str, Timed] = {}
        outcomes: dict[str, dict[str, Any]] = {}
        for label, job in [
            ("tier_review", "tier_review"),
            ("tier_review again", "tier_review"),
            ("lifecycle", "lifecycle"),
            ("lifecycle again", "lifecycle"),
        ]:
            print(f"\n{label}: run_job(rt, {job!r}, {as_of.isoformat()}) ...", flush=True)
            statements.start()
            with Timed() as timed:
                run = run_job(rt, job, as_of)
            results[label], outcomes[label] = timed, run
            print(
                f"  {run['status']}: {run['detail']}\n"
                f"  {timed.seconds:.1f} s, {args.members / timed.seconds:,.0f} members/s; "
                f"python CPU {timed.cpu:.1f} s; {timed.load()}\n"
                f"  time by statement (wall, share of the run, calls):\n{statements.report(timed.seconds)}"
            )
            if run["status"] != "succeeded":
                print("  the job failed; stopping", file=sys.stderr)
                return 1
            if job == "tier_review" and label == "tier_review":
                with engine.connect() as conn:
                    moves = conn.execute(
                        sa.text(
                            "SELECT from_tier, to_tier, count(*) FROM tier_changes WHERE source = 'review' "
                            "GROUP BY 1, 2 ORDER BY 3 DESC"
                        )
                    ).all()
                print("  moves: " + ", ".join(f"{a}->{b} {n:,}" for a, b, n in moves))
                print(f"  tiers after: {distribution(engine, 'tier')}")
            if job == "lifecycle" and label == "lifecycle":
                print(f"  stages after: {distribution(engine, 'lifecycle_stage')}")

        touch_s, touched = baseline_touch(engine)
        print(
            f"\nbaseline touch every row: UPDATE of {touched:,} members {touch_s:.1f} s (rolled back); load {loadavg()}"
        )

        review, review2 = outcomes["tier_review"], outcomes["tier_review again"]
        life2 = outcomes["lifecycle again"]
        assert review2["rows"] == 0, review2
        assert life2["rows"] == 0, life2
        assert f"{args.members} members reviewed" in review["detail"], review["detail"]
        target = TARGET_SECONDS * scale
        floor_review = metrics_s + touch_s
        table = [
            ("tier_review", results["tier_review"].seconds, f"{floor_review:.1f} s (metrics + touch)", target),
            ("tier_review again (no-op)", results["tier_review again"].seconds, "-", None),
            ("lifecycle", results["lifecycle"].seconds, f"{stages_s + touch_s:.1f} s (stages + touch)", target),
            ("lifecycle again (no-op)", results["lifecycle again"].seconds, f"{stages_s:.1f} s (stage pass)", None),
        ]
        print(f"\nsummary, {args.members:,} members, chunk {args.chunk:,}, load {loadavg()}:")
        print(f"{'figure':<28}{'seconds':>9}{'members/s':>12}  {'baseline':<28}{'target':>10}  result")
        for label, seconds, base, tgt in table:
            verdict = "-" if tgt is None else ("met" if seconds <= tgt else "missed")
            tgt_s = "-" if tgt is None else f"<= {tgt:.0f} s"
            print(f"{label:<28}{seconds:>9.1f}{args.members / seconds:>12,.0f}  {base:<28}{tgt_s:>10}  {verdict}")
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

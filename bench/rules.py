#!/usr/bin/env python3
"""Rules engine benchmark: evaluations per second of the default programme, on one core.

Run from the repository root with the project's virtualenv::

    PYTHONPATH=. .venv/bin/python bench/rules.py               # 10 measured seconds
    PYTHONPATH=. .venv/bin/python bench/rules.py --seconds 3   # quicker, noisier

No database, no network: the engine is pure Python. The script prepares a realistic mix of
events (transaction types, amounts, tiers, dates including Double-11, member facts and the
points already earned that day and month), pins itself to one CPU, and calls
``rules.evaluate(programme, event, facts, usage)`` on them round-robin. Beside the figure it
measures, in the same run and on the same events, two baselines:

- a trivial one-rule programme (one fixed award, no condition): the engine's fixed cost per call;
- building the facts dict alone: what a caller spends before the engine is even called.

The figure is judged against the target (>= 50,000 evaluations/s): PASS or MISS. Exit status 0
when the run completed (``--strict``: 1 on a MISS), 2 on a bad setup.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import itertools
import json
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# This script is itself called rules.py, and Python puts its folder first on the path: take it off,
# so that "import rules" finds the engine (via PYTHONPATH=.), not this file.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]
try:
    from rules import Programme, Step, Usage, default_programme, evaluate, load_programme  # noqa: E402
except ImportError as exc:  # a usage error, not a benchmark result
    sys.exit(f"cannot import the rules engine ({exc}): run from the repository root with PYTHONPATH=.")

#: Evaluations per second of the default programme on one core.
TARGET_EVALS_PER_SECOND = 50_000.0

SHANGHAI = dt.timezone(dt.timedelta(hours=8))  # the default programme's zone has had no DST since 1991

Event = tuple[str, dict[str, Any], Usage]


@dataclass
class Figure:
    name: str
    per_second: float  # median of the rounds
    best_per_second: float
    calls: int
    seconds: float
    rounds: int

    @property
    def micros(self) -> float:
        return 1e6 / self.per_second if self.per_second else float("inf")


# ---- the workload --------------------------------------------------------------------------------------------

TIERS = (("basic", 50), ("mass", 30), ("potential", 15), ("hnw", 5))
TXN_TYPES = (
    ("card_purchase", 60),
    ("transfer", 15),
    ("bill_payment", 12),
    ("wealth_purchase", 8),
    ("loan_repayment", 5),
)
OTHER_EVENTS = (("account_opened", 1), ("birthday", 1), ("profile_completed", 1))
#: Typical amount in fen by transaction type (log-normal around it).
TYPICAL_FEN = {
    "card_purchase": 15_000,
    "transfer": 200_000,
    "bill_payment": 30_000,
    "wealth_purchase": 5_000_000,
    "loan_repayment": 400_000,
}
PRODUCTS = ("deposit", "wealth", "fund", "credit_card", "loan", "insurance")
MCCS = ("5411", "5812", "5311", "4111", "5541", "5999")


def pick(rng: random.Random, weighted: Sequence[tuple[str, int]]) -> str:
    names, weights = zip(*weighted, strict=True)
    return rng.choices(names, weights)[0]


def raw_event(rng: random.Random, year: int = 2026) -> dict[str, Any]:
    """The inputs a caller has before it builds the facts: one transaction and its member."""
    day = dt.date(year, 1, 1) + dt.timedelta(days=rng.randrange(365))
    if rng.random() < 0.03:  # Double-11 draws a crowd
        day = dt.date(year, 11, 11)
    seconds = int(rng.triangular(0, 86_400, 14 * 3600))  # busier in the afternoon
    local = dt.datetime.combine(day, dt.time(), SHANGHAI) + dt.timedelta(seconds=seconds)
    event = "transaction" if rng.random() < 0.97 else pick(rng, OTHER_EVENTS)
    txn_type = pick(rng, TXN_TYPES)
    amount = min(50_000_000, max(1, int(rng.lognormvariate(0, 1.1) * TYPICAL_FEN[txn_type])))
    tier = pick(rng, TIERS)
    return {
        "event": event,
        "occurred_at": local.astimezone(dt.UTC),
        "type": txn_type,
        "amount": amount,
        "channel": rng.choice(("app", "app", "web", "branch", None)),
        "mcc": rng.choice(MCCS) if txn_type == "card_purchase" else None,
        "tier": tier,
        "age": rng.choice((None, *range(18, 80))),
        "birth_month": rng.randint(1, 12),
        "enrolled_days": rng.randrange(0, 3_000),
        "transactions_this_month": rng.randint(1, 60),
        "first_of_type": rng.random() < 0.05,
        "days_since_last_transaction": None if rng.random() < 0.03 else rng.randrange(0, 40),
        "products_held": rng.sample(PRODUCTS, rng.randint(0, 3)),
        # points already earned today / this month; heavy spenders sometimes run into the caps
        "base_day": rng.choice((0, 0, 0, rng.randrange(0, 5_000), rng.randrange(0, 25_000))),
        "base_month": rng.choice((0, rng.randrange(0, 30_000), rng.randrange(0, 120_000))),
    }


def build_facts(raw: dict[str, Any]) -> dict[str, Any]:
    """The facts dict as the accrual service builds it (the "facts alone" baseline times this)."""
    moment: dt.datetime = raw["occurred_at"]
    return {
        "occurred_at": moment,
        "type": raw["type"],
        "amount": raw["amount"],
        "currency": "CNY",
        "channel": raw["channel"],
        "mcc": raw["mcc"],
        "merchant": None,
        "tier": raw["tier"],
        "age": raw["age"],
        "birthday_month": raw["birth_month"] == moment.astimezone(SHANGHAI).month,
        "enrolled_days": raw["enrolled_days"],
        "transactions_this_month": raw["transactions_this_month"],
        "first_of_type": raw["first_of_type"],
        "days_since_last_transaction": raw["days_since_last_transaction"],
        "products_held": raw["products_held"],
    }


def build_usage(raw: dict[str, Any]) -> Usage:
    day, month = raw["base_day"], raw["base_month"]
    if not (day or month):
        return Usage()
    month = max(month, day)
    return Usage(
        day={"card-spend-base": day, "tier-multiplier": day // 3},
        month={"card-spend-base": month, "tier-multiplier": month // 3, "potential-growth": min(600, month // 100)},
    )


def workload(seed: int, size: int) -> tuple[list[dict[str, Any]], list[Event]]:
    rng = random.Random(seed)
    raws = [raw_event(rng) for _ in range(size)]
    return raws, [(r["event"], build_facts(r), build_usage(r)) for r in raws]


def trivial_programme() -> Programme:
    return load_programme(
        {
            "version": "bench-trivial",
            "effective_from": "2020-01-01",
            "timezone": "Asia/Shanghai",
            "expiry_months": 24,
            "rules": [
                {
                    "id": "one-point",
                    "event": "transaction",
                    "reason": "one point for anything",
                    "action": {"kind": "fixed", "points": 1},
                    "qualifying": False,
                }
            ],
        }
    )


def describe(programme: Programme, events: list[Event]) -> dict[str, Any]:
    """What the mix exercises: checked before timing so a broken mix does not give a flattering figure."""
    counts: Counter[str] = Counter()
    for event, facts, usage in events:
        trace: list[Step] = []
        awards = evaluate(programme, event, facts, usage, trace)
        counts["events"] += 1
        counts["events:" + event] += 1
        counts["with awards"] += bool(awards)
        counts["awards"] += len(awards)
        counts["points"] += sum(a.points for a in awards)
        counts["capped"] += any("capped" in s.note or "trimmed" in s.note for s in trace)
        for a in awards:
            counts["rule:" + a.rule_id] += 1
    return dict(counts)


# ---- measuring -----------------------------------------------------------------------------------------------


def measure(name: str, call: Callable[[Any], object], items: Sequence[Any], seconds: float) -> Figure:
    """Call ``call`` on ``items`` round-robin for about ``seconds``; rounds of ~0.5 s, median of their rates."""
    for item in items[: min(len(items), 2_000)]:  # warm caches (compiled rules, zone data)
        call(item)
    gc.collect()
    rates: list[float] = []
    calls = 0
    chunk = 1_000
    stream = itertools.cycle(items)
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        round_start = time.perf_counter()
        round_calls = 0
        while time.perf_counter() - round_start < min(0.5, seconds):
            for item in itertools.islice(stream, chunk):
                call(item)
            round_calls += chunk
        rates.append(round_calls / (time.perf_counter() - round_start))
        calls += round_calls
        if time.perf_counter() >= deadline:
            break
    return Figure(
        name=name,
        per_second=statistics.median(rates),
        best_per_second=max(rates),
        calls=calls,
        seconds=time.perf_counter() - start,
        rounds=len(rates),
    )


def pin_to_one_cpu(cpu: int | None) -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity on this platform); single-threaded"
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[-1] if cpu is None else cpu
    if chosen not in allowed:
        raise SystemExit(f"--cpu {chosen}: not one of the CPUs this process may use ({allowed})")
    os.sched_setaffinity(0, {chosen})
    return f"pinned to CPU {chosen} of {len(allowed)} allowed"


# ---- report --------------------------------------------------------------------------------------------------


def row(figure: Figure, note: str) -> str:
    return f"  {figure.name:<44} {figure.per_second:>12,.0f}/s {figure.micros:>9.2f} µs   {note}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds for the main figure (default 10)")
    parser.add_argument("--events", type=int, default=20_000, help="prepared events in the mix (default 20000)")
    parser.add_argument("--seed", type=int, default=20261111, help="seed of the generated mix")
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last one allowed)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.events < 100:
        parser.error("--seconds must be positive and --events at least 100")

    pinned = pin_to_one_cpu(args.cpu)
    programme = default_programme()
    trivial = trivial_programme()
    raws, events = workload(args.seed, args.events)
    mix = describe(programme, events)
    if not (mix["with awards"] > 0.4 * mix["events"] and mix.get("rule:double-11") and mix["capped"]):
        print(f"the generated mix does not exercise the programme as intended: {mix}", file=sys.stderr)
        return 2
    worst = [
        (
            "transaction",
            {
                **facts,
                "type": "card_purchase",
                "tier": "hnw",
                "occurred_at": dt.datetime(2026, 11, 11, 4, tzinfo=dt.UTC),
            },
            usage,
        )
        for _event, facts, usage in events[:5_000]
    ]

    side = max(1.0, args.seconds / 3)
    print(
        f"rules engine benchmark: default programme {programme.version} ({len(programme.rules)} rules), "
        f"{len(events):,} prepared events, Python {platform.python_version()}, {pinned}",
        flush=True,
    )
    print(
        f"  mix: {mix['events:transaction'] / mix['events']:.0%} transactions, "
        f"{mix['with awards'] / mix['events']:.0%} with awards, {mix['awards'] / mix['events']:.2f} awards/event, "
        f"{mix['rule:double-11'] / mix['events']:.1%} Double-11, {mix['capped'] / mix['events']:.1%} capped or trimmed",
        flush=True,
    )

    main_figure = measure(
        "default programme, realistic mix",
        lambda e: evaluate(programme, e[0], e[1], e[2]),
        events,
        args.seconds,
    )
    trivial_figure = measure(
        "baseline: trivial one-rule programme", lambda e: evaluate(trivial, e[0], e[1], e[2]), events, side
    )
    facts_figure = measure("baseline: building the facts dict alone", build_facts, raws, side)
    worst_figure = measure(
        "hnw card purchase on 11-11 (heaviest path)",
        lambda e: evaluate(programme, e[0], e[1], e[2]),
        worst,
        side,
    )

    verdict = "PASS" if main_figure.per_second >= TARGET_EVALS_PER_SECOND else "MISS"
    print(f"  {'figure':<44} {'rate':>14} {'per call':>12}")
    print(row(main_figure, f"target >= {TARGET_EVALS_PER_SECOND:,.0f}/s  {verdict}"))
    print(
        row(trivial_figure, f"default costs {trivial_figure.per_second / main_figure.per_second:.1f}x the trivial one")
    )
    print(row(facts_figure, f"{facts_figure.per_second / main_figure.per_second:.1f}x the default's rate"))
    print(row(worst_figure, "informational"))
    print("  (the backtest of 1,000,000 stored transactions is measured by bench/backtest.py)")
    print(
        f"  (median of {main_figure.rounds} rounds over {main_figure.seconds:.1f} s, "
        f"best round {main_figure.best_per_second:,.0f}/s; {main_figure.calls:,} evaluations)"
    )
    print(
        f"RESULT: {verdict}  {main_figure.per_second:,.0f} evaluations/s (target >= {TARGET_EVALS_PER_SECOND:,.0f}/s)"
    )

    if args.json:
        figures = [main_figure, trivial_figure, facts_figure, worst_figure]
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(
                {
                    "target_per_second": TARGET_EVALS_PER_SECOND,
                    "verdict": verdict,
                    "mix": mix,
                    "pinned": pinned,
                    "figures": [asdict(f) for f in figures],
                },
                out,
                indent=2,
            )
    return 1 if args.strict and verdict == "MISS" else 0


if __name__ == "__main__":
    sys.exit(main())

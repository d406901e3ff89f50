"""Properties of the rules engine over generated programmes and event sequences (Hypothesis).

- awards are always positive (zero awards are dropped, nothing is ever negative);
- no cap is ever exceeded, whatever the sequence of events, when each evaluation is fed the
  Usage accumulated from the awards before it;
- evaluation is deterministic and does not depend on the order rules are listed in;
- programmes round-trip through dump_programme/load_programme and through JSON.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections import Counter, defaultdict
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules import Award, Step, Usage, dump_programme, evaluate, load_programme
from rules.catalogue import OPERATORS, ROUNDING, VARIABLES

SETTINGS = {
    "deadline": None,
    "database": None,  # nothing written into the checkout; a failure prints its example
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}

TIERS = ["basic", "mass", "potential", "hnw"]
TXN_TYPES = ["card_purchase", "transfer", "wealth_purchase", "bill_payment", "loan_repayment"]
ZONES = ["Asia/Shanghai", "UTC", "America/New_York", "Asia/Kolkata", "Europe/London", "Pacific/Kiritimati"]
PRODUCTS = ["deposit", "wealth", "fund", "credit_card", "loan"]

# ---- values of each variable ---------------------------------------------------------------------------------

DATES = st.dates(dt.date(2026, 1, 1), dt.date(2027, 12, 31))
STRING_VALUES = {
    "type": st.sampled_from(TXN_TYPES),
    "currency": st.sampled_from(["CNY", "USD"]),
    "channel": st.sampled_from(["app", "branch", "web"]),
    "mcc": st.sampled_from(["5411", "5812", "4111"]),
    "merchant": st.sampled_from(["m1", "m2"]),
    "tier": st.sampled_from(TIERS),
}
INTEGER_VALUES = {
    "amount": st.integers(0, 1_000_000),
    "weekday": st.integers(1, 7),
    "age": st.integers(18, 90),
    "enrolled_days": st.integers(0, 1000),
    "transactions_this_month": st.integers(1, 40),
    "days_since_last_transaction": st.integers(0, 60),
}


def literal(var: str) -> st.SearchStrategy[Any]:
    """A literal a condition on ``var`` may compare with."""
    kind = VARIABLES[var].type
    if kind == "string":
        return STRING_VALUES[var]
    if kind == "integer":
        return INTEGER_VALUES[var]
    if kind == "boolean":
        return st.booleans()
    if kind == "date":
        return DATES.map(dt.date.isoformat)
    if kind == "time":
        return st.times().map(lambda t: f"{t.hour:02d}:{t.minute:02d}")
    if kind == "month_day":
        return DATES.map(lambda d: f"{d.month:02d}-{d.day:02d}")
    return st.sampled_from(PRODUCTS)  # string_list: contains takes one string


@st.composite
def leaf_conditions(draw: st.DrawFn) -> dict[str, Any]:
    var = draw(st.sampled_from(sorted(VARIABLES)))
    kind = VARIABLES[var].type
    op = draw(st.sampled_from(sorted(name for name, o in OPERATORS.items() if kind in o.types)))
    shape = OPERATORS[op].value
    value: Any
    if shape == "scalar":
        value = draw(literal(var))
    elif shape == "list":
        value = draw(st.lists(literal(var), min_size=1, max_size=3))
    elif shape == "pair":
        value = sorted(draw(st.lists(literal(var), min_size=2, max_size=2)))
    elif shape == "positive_integer":
        value = draw(st.integers(1, 12))
    elif shape == "boolean":
        value = draw(st.booleans())
    else:
        value = draw(literal(var))
    return {"var": var, "op": op, "value": value}


CONDITIONS = st.recursive(
    leaf_conditions(),
    lambda children: st.one_of(
        st.lists(children, max_size=3).map(lambda cs: {"all": cs}),
        st.lists(children, max_size=3).map(lambda cs: {"any": cs}),
        children.map(lambda c: {"not": c}),
    ),
    max_leaves=4,
)

# ---- programmes ----------------------------------------------------------------------------------------------

CAP_VALUE = st.integers(0, 3_000)


def caps(keys: tuple[str, ...]) -> st.SearchStrategy[dict[str, int] | None]:
    return st.one_of(
        st.none(), st.fixed_dictionaries({}, optional={k: CAP_VALUE for k in keys}).filter(lambda d: bool(d))
    )


RULE_CAPS = caps(("per_transaction", "per_day", "per_month"))
REASONS = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(str.strip)
FACTORS = st.decimals(min_value=1, max_value=5, places=2, allow_nan=False, allow_infinity=False).map(str)
EARNING_ACTIONS = st.one_of(
    st.builds(lambda p: {"kind": "fixed", "points": p}, st.integers(1, 2_000)),
    st.builds(
        lambda p, per, r: {"kind": "per_amount", "points": p, "per_fen": per, "rounding": r},
        st.integers(1, 5),
        st.sampled_from([1, 7, 100, 1_000]),
        st.sampled_from(ROUNDING),
    ),
)


@st.composite
def programme_docs(draw: st.DrawFn) -> dict[str, Any]:
    n_earning = draw(st.integers(1, 5))
    n_multipliers = draw(st.integers(0, 3))
    # ids whose order is unrelated to the order of priorities or of the list
    ids = draw(
        st.lists(
            st.from_regex(r"[a-z0-9][a-z0-9_-]{0,6}", fullmatch=True),
            min_size=n_earning + n_multipliers,
            max_size=n_earning + n_multipliers,
            unique=True,
        )
    )
    rules: list[dict[str, Any]] = []
    for rule_id in ids[:n_earning]:
        event = draw(st.sampled_from(["transaction", "transaction", "birthday"]))
        rule: dict[str, Any] = {
            "id": rule_id,
            "event": event,
            "reason": draw(REASONS),
            "priority": draw(st.integers(-2, 4)),
            "action": draw(EARNING_ACTIONS),
            "funding_source": draw(st.sampled_from(["bank", "partner-a", "merchant_b"])),
            "qualifying": draw(st.booleans()),
        }
        if draw(st.booleans()):
            rule["conditions"] = draw(CONDITIONS)
        if (g := draw(st.sampled_from([None, "x", "y"]))) is not None:
            rule["group"] = f"{event}-{g}"
        if (c := draw(RULE_CAPS)) is not None:
            rule["caps"] = c
        rules.append(rule)
    for rule_id in ids[n_earning:]:
        earning = rules[:n_earning]  # multipliers apply to earning rules only
        event = draw(st.sampled_from(sorted({r["event"] for r in earning})))
        candidates = [r["id"] for r in earning if r["event"] == event]
        targets = draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=len(candidates), unique=True))
        action: dict[str, Any] = {
            "kind": "multiplier",
            "applies_to": targets,
            "rounding": draw(st.sampled_from(ROUNDING)),
        }
        if draw(st.booleans()):
            action["factor"] = draw(FACTORS)
        else:
            action["by_tier"] = draw(st.dictionaries(st.sampled_from(TIERS), FACTORS, min_size=1))
        rule = {
            "id": rule_id,
            "event": event,
            "reason": draw(REASONS),
            "priority": draw(st.integers(-2, 4)),
            "action": action,
            "qualifying": False,
        }
        if draw(st.booleans()):
            rule["conditions"] = draw(CONDITIONS)
        if (g := draw(st.sampled_from([None, "p"]))) is not None:
            rule["group"] = f"{event}-mult-{g}"
        if (c := draw(RULE_CAPS)) is not None:
            rule["caps"] = c
        rules.append(rule)
    # an exclusive group needs distinct priorities: a rule that would tie leaves the group
    used: dict[str, set[int]] = defaultdict(set)
    for rule in rules:
        if "group" in rule:
            if rule["priority"] in used[rule["group"]]:
                del rule["group"]
            else:
                used[rule["group"]].add(rule["priority"])
    doc: dict[str, Any] = {
        "version": draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}", fullmatch=True)),
        "timezone": draw(st.sampled_from(ZONES)),
        "effective_from": draw(
            st.one_of(
                DATES.map(dt.date.isoformat),
                st.datetimes(
                    dt.datetime(2000, 1, 1),
                    dt.datetime(2099, 12, 31),
                    timezones=st.sampled_from([dt.UTC, ZoneInfo("Asia/Shanghai"), ZoneInfo("America/New_York")]),
                ).map(dt.datetime.isoformat),
            )
        ),
        "expiry_months": draw(st.integers(1, 60)),
        "rules": draw(st.permutations(rules)),
    }
    if (c := draw(caps(("per_day", "per_month")))) is not None:
        doc["caps"] = c
    if draw(st.booleans()):
        doc["description"] = draw(REASONS)
    return doc


PROGRAMMES = programme_docs()

# ---- events --------------------------------------------------------------------------------------------------

#: A few days around a month end, so caps on days and months both come into play, and Double-11.
MOMENTS = st.one_of(
    st.datetimes(dt.datetime(2026, 1, 30), dt.datetime(2026, 2, 2), timezones=st.just(dt.UTC)),
    st.datetimes(dt.datetime(2026, 11, 10), dt.datetime(2026, 11, 12), timezones=st.just(dt.UTC)),
)


@st.composite
def event_facts(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    event = draw(st.sampled_from(["transaction", "transaction", "transaction", "birthday", "account_opened"]))
    maybe = st.booleans()
    facts = {
        "occurred_at": draw(MOMENTS),
        "type": draw(st.sampled_from(TXN_TYPES)),
        "amount": draw(st.one_of(st.integers(-10_000, 3_000_000), st.sampled_from([0, 1, 99, 100, 150]))),
        "currency": "CNY",
        "channel": draw(st.sampled_from(["app", "branch", None])),
        "mcc": draw(st.sampled_from(["5411", "5812", None])),
        "merchant": None,
        "tier": draw(st.sampled_from([*TIERS, None])),
        "age": draw(st.one_of(st.none(), st.integers(18, 90))),
        "birthday_month": draw(maybe),
        "enrolled_days": draw(st.integers(0, 1000)),
        "transactions_this_month": draw(st.integers(1, 40)),
        "first_of_type": draw(maybe),
        "days_since_last_transaction": draw(st.one_of(st.none(), st.integers(0, 60))),
        "products_held": draw(st.lists(st.sampled_from(PRODUCTS), unique=True, max_size=3)),
    }
    return event, facts


EVENTS = st.lists(event_facts(), min_size=1, max_size=25)
USAGE = st.builds(
    Usage,
    day=st.dictionaries(st.sampled_from(["a", "b", "0", "x1"]), st.integers(0, 4_000), max_size=3),
    month=st.dictionaries(st.sampled_from(["a", "b", "0", "x1"]), st.integers(0, 9_000), max_size=3),
)


class Ledger:
    """Awards by rule, per local day and local month of the programme's zone."""

    def __init__(self, zone: dt.tzinfo) -> None:
        self.zone = zone
        self.day: dict[dt.date, Counter[str]] = defaultdict(Counter)
        self.month: dict[tuple[int, int], Counter[str]] = defaultdict(Counter)

    def keys(self, moment: dt.datetime) -> tuple[dt.date, tuple[int, int]]:
        d = moment.astimezone(self.zone).date()
        return d, (d.year, d.month)

    def usage(self, moment: dt.datetime) -> Usage:
        day, month = self.keys(moment)
        return Usage(day=dict(self.day[day]), month=dict(self.month[month]))

    def record(self, moment: dt.datetime, awards: list[Award]) -> tuple[Counter[str], Counter[str]]:
        day, month = self.keys(moment)
        for a in awards:
            self.day[day][a.rule_id] += a.points
            self.month[month][a.rule_id] += a.points
        return self.day[day], self.month[month]


def steps(trace: list[Step]) -> list[tuple[str, bool, int, str]]:
    return [(s.rule_id, s.matched, s.points, s.note) for s in trace]


# ---- properties ----------------------------------------------------------------------------------------------


@settings(max_examples=150, **SETTINGS)
@given(doc=PROGRAMMES, events=EVENTS)
def test_awards_positive_and_caps_never_exceeded(doc: dict[str, Any], events: list[tuple[str, dict[str, Any]]]) -> None:
    p = load_programme(doc)
    ledger = Ledger(p.zone)
    for event, facts in events:
        moment = facts["occurred_at"]
        awards = evaluate(p, event, facts, ledger.usage(moment))
        ids = [a.rule_id for a in awards]
        assert ids == sorted(set(ids))
        for a in awards:
            rule = p.rule(a.rule_id)
            assert a.points > 0
            assert rule.event == event
            assert (a.funding_source, a.qualifying, a.reason, a.programme_version) == (
                rule.funding_source,
                rule.qualifying,
                rule.reason,
                p.version,
            )
            if rule.caps.per_transaction is not None:
                assert a.points <= rule.caps.per_transaction
        groups = [p.rule(i).group for i in ids if p.rule(i).group is not None]
        assert len(groups) == len(set(groups)), "two rules of one exclusive group applied"
        day, month = ledger.record(moment, awards)
        for rule in p.rules:
            if rule.caps.per_day is not None:
                assert day[rule.id] <= rule.caps.per_day
            if rule.caps.per_month is not None:
                assert month[rule.id] <= rule.caps.per_month
        if p.caps.per_day is not None:
            assert sum(day.values()) <= p.caps.per_day
        if p.caps.per_month is not None:
            assert sum(month.values()) <= p.caps.per_month


@settings(max_examples=100, **SETTINGS)
@given(doc=PROGRAMMES, events=st.lists(event_facts(), min_size=1, max_size=5), usage=USAGE, data=st.data())
def test_evaluation_is_deterministic_and_independent_of_rule_order(
    doc: dict[str, Any], events: list[tuple[str, dict[str, Any]]], usage: Usage, data: st.DataObject
) -> None:
    p = load_programme(doc)
    shuffled_doc = copy.deepcopy(doc)
    shuffled_doc["rules"] = data.draw(st.permutations(doc["rules"]), label="rules reordered")
    shuffled = load_programme(shuffled_doc)
    # usage keyed by this programme's rule ids as well as by strangers
    ids = [r.id for r in p.rules]
    usage = Usage(
        day={**usage.day, **data.draw(st.dictionaries(st.sampled_from(ids), st.integers(0, 3_000)), label="day")},
        month={**usage.month, **data.draw(st.dictionaries(st.sampled_from(ids), st.integers(0, 6_000)), label="month")},
    )
    for event, facts in events:
        frozen = copy.deepcopy(facts)
        first_trace: list[Step] = []
        first = evaluate(p, event, facts, usage, first_trace)
        assert facts == frozen  # the facts are not modified
        again_trace: list[Step] = []
        assert evaluate(p, event, facts, usage, again_trace) == first
        assert steps(again_trace) == steps(first_trace)
        assert evaluate(load_programme(doc), event, facts, usage) == first  # a fresh compile
        other_trace: list[Step] = []
        assert evaluate(shuffled, event, facts, usage, other_trace) == first
        assert steps(other_trace) == steps(first_trace)
        assert evaluate(p, event, facts, usage) == first  # with or without a trace


@settings(max_examples=200, **SETTINGS)
@given(doc=PROGRAMMES)
def test_programme_round_trips(doc: dict[str, Any]) -> None:
    p = load_programme(doc)
    dumped = dump_programme(p)
    assert load_programme(dumped) == p
    text = json.dumps(dumped, ensure_ascii=False, sort_keys=True)
    through_json = json.loads(text)
    assert through_json == dumped
    assert load_programme(through_json) == p
    assert dump_programme(load_programme(through_json)) == dumped
    # the dump is a fixed point: dumping what was loaded from a dump gives the same text
    assert json.dumps(dump_programme(load_programme(dumped)), ensure_ascii=False, sort_keys=True) == text
    # and the programme says what the document said
    assert [r.id for r in p.rules] == [r["id"] for r in doc["rules"]]
    assert p.version == doc["version"]
    assert p.timezone == doc["timezone"]
    assert p.effective_from.utcoffset() == dt.timedelta(0)


@settings(max_examples=100, **SETTINGS)
@given(doc=PROGRAMMES, events=st.lists(event_facts(), min_size=1, max_size=5))
def test_round_tripped_programme_evaluates_the_same(
    doc: dict[str, Any], events: list[tuple[str, dict[str, Any]]]
) -> None:
    p = load_programme(doc)
    q = load_programme(json.loads(json.dumps(dump_programme(p))))
    for event, facts in events:
        assert evaluate(q, event, facts) == evaluate(p, event, facts)


def test_generated_cases_reach_every_feature() -> None:
    """The generators reach every operator, groups, multipliers and caps, and the sequences really hit the
    caps and exclusions (else the properties above would prove little)."""
    seen: Counter[str] = Counter()

    def walk(c: dict[str, Any]) -> None:
        for key in ("all", "any"):
            for child in c.get(key, []):
                walk(child)
        if "not" in c:
            walk(c["not"])
        if "op" in c:
            seen["op:" + c["op"]] += 1

    @settings(max_examples=500, derandomize=True, **SETTINGS)  # the same examples every run: never flaky
    @given(doc=PROGRAMMES, events=EVENTS)
    def collect(doc: dict[str, Any], events: list[tuple[str, dict[str, Any]]]) -> None:
        p = load_programme(doc)
        seen["programmes"] += 1
        seen["programme caps"] += "caps" in doc
        for r in doc["rules"]:
            seen[r["action"]["kind"]] += 1
            seen["group"] += "group" in r
            seen["caps"] += "caps" in r
            walk(r.get("conditions", {}))
        ledger = Ledger(p.zone)
        for event, facts in events:
            trace: list[Step] = []
            awards = evaluate(p, event, facts, ledger.usage(facts["occurred_at"]), trace)
            ledger.record(facts["occurred_at"], awards)
            seen["awards"] += len(awards)
            for step in trace:
                for note in ("capped at", "per day", "per month", "trimmed", "exclusive group", "no factor", "x"):
                    seen["note:" + note] += note in step.note
                seen["matched"] += step.matched
                seen["not matched"] += not step.matched

    collect()
    assert seen["programmes"] >= 150
    for key in ("fixed", "per_amount", "multiplier", "group", "caps", "programme caps", "awards", "matched"):
        assert seen[key] > 0, key
    assert seen["not matched"] > 0
    assert {k[3:] for k in seen if k.startswith("op:")} == set(OPERATORS)
    missing = [k for k in seen if k.startswith("note:") and not seen[k]]
    assert not missing, (missing, seen)

"""What rules may say: the variables, operators and actions, with their types.

This catalogue is data, so the admin UI can build a rule editor from it
(:func:`export`), and the validator refuses anything not listed here when a
rule is saved rather than when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Events a rule can respond to.
EVENTS = {
    "transaction": "a bank transaction booked for accrual",
    "account_opened": "a member enrolled (the welcome bonus)",
    "birthday": "the member's birthday, sent once a year by the birthday job",
    "profile_completed": "the member's profile became complete",
}

#: Value types. ``date`` is ``YYYY-MM-DD``, ``time`` is ``HH:MM``, ``month_day`` is ``MM-DD``.
TYPES = ("string", "integer", "boolean", "date", "time", "month_day", "string_list")


@dataclass(frozen=True)
class Variable:
    name: str
    type: str
    source: str  # "transaction" or "member"
    description: str
    nullable: bool = False


VARIABLES = {
    v.name: v
    for v in [
        Variable(
            "type",
            "string",
            "transaction",
            "transaction type: card_purchase, transfer, wealth_purchase, bill_payment, loan_repayment",
        ),
        Variable("amount", "integer", "transaction", "amount in fen"),
        Variable("currency", "string", "transaction", "ISO 4217 currency code"),
        Variable("channel", "string", "transaction", "channel the transaction came through", nullable=True),
        Variable("mcc", "string", "transaction", "merchant category code", nullable=True),
        Variable("merchant", "string", "transaction", "merchant name", nullable=True),
        Variable("local_date", "date", "transaction", "date the event happened, in the programme's time zone"),
        Variable("month_day", "month_day", "transaction", "month and day the event happened, e.g. 11-11"),
        Variable("weekday", "integer", "transaction", "day of the week the event happened, 1 = Monday .. 7 = Sunday"),
        Variable("local_time", "time", "transaction", "time of day the event happened, in the programme's time zone"),
        Variable("tier", "string", "member", "the member's tier: basic, mass, potential, hnw"),
        Variable("age", "integer", "member", "the member's age in whole years", nullable=True),
        Variable("birthday_month", "boolean", "member", "the event happens in the member's birth month"),
        Variable("enrolled_days", "integer", "member", "days since the member enrolled"),
        Variable(
            "transactions_this_month",
            "integer",
            "member",
            "the member's transactions in the event's calendar month, this one included",
        ),
        Variable("first_of_type", "boolean", "member", "the member's first transaction of this type ever"),
        Variable(
            "days_since_last_transaction",
            "integer",
            "member",
            "days since the member's previous transaction; null if there was none",
            nullable=True,
        ),
        Variable(
            "products_held",
            "string_list",
            "member",
            "products the member holds: deposit, wealth, fund, credit_card, loan, insurance, ...",
        ),
    ]
}

ORDERED = ("integer", "date", "time", "month_day", "string")
SCALARS = ("string", "integer", "boolean", "date", "time", "month_day")


@dataclass(frozen=True)
class Operator:
    name: str
    types: tuple[str, ...]  # variable types it applies to
    value: str  # "scalar", "list", "pair", "positive_integer", "string"
    description: str


OPERATORS = {
    o.name: o
    for o in [
        Operator("equals", SCALARS, "scalar", "equal to the value"),
        Operator("not_equals", SCALARS, "scalar", "not equal to the value"),
        Operator("in", SCALARS, "list", "one of the values"),
        Operator("not_in", SCALARS, "list", "none of the values"),
        Operator("gt", ORDERED, "scalar", "greater than the value"),
        Operator("gte", ORDERED, "scalar", "greater than or equal to the value"),
        Operator("lt", ORDERED, "scalar", "less than the value"),
        Operator("lte", ORDERED, "scalar", "less than or equal to the value"),
        Operator("between", ORDERED, "pair", "within [low, high], both included"),
        Operator(
            "multiple_of", ("integer",), "positive_integer", "a positive multiple of the value (10 → 10th, 20th, ...)"
        ),
        Operator("contains", ("string_list",), "string", "the list contains the value"),
        Operator("is_null", tuple(TYPES), "boolean", "true: the variable has no value; false: it has one"),
    ]
}

ROUNDING = ("floor", "half_up", "ceil")

ACTIONS: dict[str, dict[str, Any]] = {
    "per_amount": {
        "description": "points per amount spent: floor(amount / per_fen) * points, or as rounding says",
        "fields": {"points": "positive integer", "per_fen": "positive integer", "rounding": "floor | half_up | ceil"},
    },
    "fixed": {
        "description": "a fixed number of points",
        "fields": {"points": "positive integer"},
    },
    "multiplier": {
        "description": "extra points on the awards of other rules: (factor - 1) x their points; "
        'a factor by tier (by_tier) or for everyone (factor), as decimal strings such as "1.5"',
        "fields": {
            "applies_to": "list of rule ids of the same event (not multipliers)",
            "factor": "decimal string >= 1",
            "by_tier": "object tier -> decimal string >= 1",
            "rounding": "floor | half_up | ceil",
        },
    },
}

CAPS = {
    "per_transaction": "most points one event can earn from the rule",
    "per_day": "most points a member can earn from the rule per calendar day (programme time zone)",
    "per_month": "most points a member can earn from the rule per calendar month",
}


#: What tier criteria may test: the member's metrics on the day they are assessed.
METRICS = {
    v.name: v
    for v in [
        Variable("aum", "integer", "member", "assets under management, in fen (0 without a profile)"),
        Variable("profit_contribution", "integer", "member", "profit contribution over the trailing 12 months, in fen"),
        Variable(
            "qualifying_points",
            "integer",
            "member",
            "qualifying points earned in the qualifying window (net of refunds; spending does not reduce it)",
        ),
        Variable("transactions_90d", "integer", "member", "transactions in the activity window (90 days)"),
        Variable(
            "digital_share",
            "integer",
            "member",
            "percent (0-100) of the activity window's transactions made through digital channels; "
            "null without transactions",
            nullable=True,
        ),
        Variable("products_held", "string_list", "member", "products the member holds"),
        Variable("product_count", "integer", "member", "how many products the member holds"),
        Variable(
            "age", "integer", "member", "the member's age in whole years; null without a birth date", nullable=True
        ),
    ]
}

#: Operators tier criteria may use: each has an exact SQL counterpart.
TIER_OPERATORS = ("equals", "not_equals", "in", "not_in", "gt", "gte", "lt", "lte", "between", "contains")

def export_metrics() -> dict[str, Any]:
    """The metrics and operators tier criteria may use, for editors (like the rules catalogue)."""
    return {
        "metrics": [
            {"name": v.name, "type": v.type, "nullable": v.nullable, "description": v.description}
            for v in METRICS.values()
        ],
        "operators": list(TIER_OPERATORS),
    }


def export() -> dict[str, Any]:
    """The catalogue as JSON-ready data, for rule editors (and the tier criteria's metrics)."""
    return {
        "events": EVENTS,
        "variables": [
            {"name": v.name, "type": v.type, "source": v.source, "nullable": v.nullable, "description": v.description}
            for v in VARIABLES.values()
        ],
        "operators": [
            {"name": o.name, "types": list(o.types), "value": o.value, "description": o.description}
            for o in OPERATORS.values()
        ],
        "actions": ACTIONS,
        "rounding": list(ROUNDING),
        "caps": CAPS,
        "tiers": export_metrics(),
    }

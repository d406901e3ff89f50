"""Expiry policies, as data: when points earned under a programme lapse.

- ``{"policy": "rolling", "months": N}``: N months after they were earned, by
  the bank's local calendar (the engine's :func:`loyalty.ledger.service.lot_expiry`);
- ``{"policy": "end_of_year", "years": N}``: at the end of 31 December of the
  N-th year after the year they were earned in (local time): points earned in
  2026 under N=1 lapse when 2028 begins;
- ``{"policy": "never"}``.

A programme has one policy (``expiry``); a tier may override it (a tier's
``expiry``), for the points its members earn. A lot takes its expiry when it is
earned, so a changed policy applies to points earned after it takes effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rules.conditions import MAX_MONTHS, RuleError, get, no_extra, positive

POLICIES = ("rolling", "end_of_year", "never")


@dataclass(frozen=True)
class Expiry:
    policy: str = "rolling"
    #: for ``rolling``: months after earning
    months: int = 24
    #: for ``end_of_year``: years after the end of the year of earning
    years: int = 0


def load_expiry(doc: Any, path: str) -> Expiry:
    if not isinstance(doc, dict):
        raise RuleError(path, "must be an object")
    policy = get(doc, "policy", path, str)
    if policy == "rolling":
        no_extra(doc, {"policy", "months"}, path)
        return Expiry("rolling", months=positive(doc.get("months"), f"{path}.months", MAX_MONTHS))
    if policy == "end_of_year":
        no_extra(doc, {"policy", "years"}, path)
        return Expiry("end_of_year", months=0, years=positive(doc.get("years"), f"{path}.years", MAX_MONTHS // 12))
    if policy == "never":
        no_extra(doc, {"policy"}, path)
        return Expiry("never", months=0)
    raise RuleError(f"{path}.policy", f"must be one of {', '.join(POLICIES)}")


def dump_expiry(expiry: Expiry) -> dict[str, Any]:
    if expiry.policy == "rolling":
        return {"policy": "rolling", "months": expiry.months}
    if expiry.policy == "end_of_year":
        return {"policy": "end_of_year", "years": expiry.years}
    return {"policy": "never"}

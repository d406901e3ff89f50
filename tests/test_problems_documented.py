"""Every problem type the service can answer is documented in docs/reference/problems.md, with its
meaning and what a client should do, and the page lists no type the service no longer has."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterator

from werkzeug.exceptions import BadRequest, MethodNotAllowed, NotFound

import loyalty
from loyalty.errors import LoyaltyError
from tests.contract import SPEC_PATH
from tests.live import ROOT

PAGE = ROOT / "docs" / "reference" / "problems.md"
ROW = re.compile(r"^\| `/problems/([a-z_]+)` \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$", re.M)


def subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from subclasses(sub)


def raised_types() -> set[str]:
    """The codes of every error class of the service (each module imported, so each is defined),
    the HTTP errors of routing as the API names them, and the codes the API sets by hand."""
    for module in pkgutil.walk_packages(loyalty.__path__, "loyalty."):
        importlib.import_module(module.name)
    codes = {cls.code for cls in subclasses(LoyaltyError)} | {LoyaltyError.code}
    # loyalty/api/__init__.py names werkzeug's errors after their names: "Method Not Allowed".
    codes |= {err().name.lower().replace(" ", "_") for err in (NotFound, MethodNotAllowed, BadRequest)}
    for path in (ROOT / "loyalty").rglob("*.py"):
        codes |= set(re.findall(r'exc\.code, exc\.title = \d+, "([a-z_]+)"', path.read_text(encoding="utf-8")))
    return codes


def documented() -> dict[str, tuple[str, str, str]]:
    rows = ROW.findall(PAGE.read_text(encoding="utf-8"))
    table = {code: (status.strip(), meaning.strip(), action.strip()) for code, status, meaning, action in rows}
    assert len(table) == len(rows), "a problem type is listed twice"
    return table


def test_every_problem_type_the_service_can_answer_is_documented() -> None:
    codes, table = raised_types(), documented()
    assert "internal_error" in codes and "method_not_allowed" in codes and "period_closed" in codes
    assert sorted(codes - set(table)) == [], "document these in docs/reference/problems.md"
    assert sorted(set(table) - codes) == [], "docs/reference/problems.md lists types the service never answers"


def test_each_documented_type_says_its_status_meaning_and_what_to_do() -> None:
    for code, (status, meaning, action) in documented().items():
        assert re.fullmatch(r"\d{3}( or \d{3})?", status), (code, status)
        assert len(meaning) > 15 and len(action) > 5, code


def test_the_status_documented_is_the_one_the_service_answers_with() -> None:
    table = documented()
    for cls in subclasses(LoyaltyError):
        if "code" not in vars(cls) and "status" in vars(cls):
            continue  # a base of other errors (redemption.errors.Refused), never raised itself
        assert str(cls.status) in table[cls.code][0], f"{cls.__name__}: {cls.code} is {cls.status}"


def test_every_problem_type_the_contract_names_is_documented() -> None:
    named = set(re.findall(r"/problems/([a-z_]+)", SPEC_PATH.read_text(encoding="utf-8")))
    assert sorted(named - set(documented())) == []

"""Small builders shared by the tests."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from rules import Programme, default_document, load_programme
from rules.model import DEFAULT_TIMEZONE
from tests.conftest import START

#: The bank's time zone in the default programme.
BANK_ZONE = ZoneInfo(DEFAULT_TIMEZONE)


def txn(transaction_id: str = "t1", member_id: str = "m1", amount: int = 12_345, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "transaction_id": transaction_id,
        "member_id": member_id,
        "type": "card_purchase",
        "amount": amount,
        "currency": "CNY",
        "occurred_at": (START - dt.timedelta(hours=1)).isoformat(),
    }
    body.update(over)
    return body


def enrol(client: Any, member_id: str = "m1", **over: Any) -> Any:
    r = client.post("/v1/members", json={"member_id": member_id, **over})
    assert r.status_code in (200, 201), r.get_json()
    return r.get_json()


def eventually(what: str, check: Callable[[], object], timeout: float = 30, every: float = 0.02) -> None:
    """Wait until ``check()`` is true, asking every ``every`` seconds; fail naming ``what`` after
    ``timeout`` seconds (generous: on a loaded machine other processes are slow to get there)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout} s waiting for {what}")
        time.sleep(every)


def base_programme() -> Programme:
    """The default programme's base earning and welcome bonus alone, with no caps.

    Ledger tests use it so that their arithmetic is about the ledger, not
    about promotions, multipliers or caps.
    """
    doc = default_document()
    doc["version"] = "ledger-base"
    doc.pop("caps", None)
    doc["rules"] = [r for r in doc["rules"] if r["id"] in ("card-spend-base", "welcome-bonus")]
    for rule in doc["rules"]:
        rule.pop("caps", None)
    return load_programme(doc)


BASE = base_programme()


def _migrations() -> Any:
    from alembic.script import ScriptDirectory

    from loyalty.migrate import alembic_config

    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def revision_named(name: str) -> str:
    """The Alembic revision whose file is named after ``name`` (``..._0012_balances_include_held.py``),
    so tests follow a migration when revisions are renumbered."""
    found = [r.revision for r in _migrations().walk_revisions() if r.module.__file__.endswith(f"_{name}.py")]
    assert len(found) == 1, f"no single migration named {name}: {found}"
    return found[0]


def before(revision: str) -> str:
    """The revision ``revision`` follows."""
    down = _migrations().get_revision(revision).down_revision
    assert isinstance(down, str)
    return down


def head_revision() -> str:
    head = _migrations().get_current_head()
    assert head is not None
    return head

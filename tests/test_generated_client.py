"""A channel app's journey through a client that a common generator makes from openapi.yaml.

openapi-python-client (written by no one here) turns the spec into a typed Python package in a
temporary directory; the test drives the live application (gunicorn, real HTTP, a fresh database
set up with the command line) through it: enrol, accrue, replay, a refused transaction, the
benefits a member can get, a voucher redeemed and cancelled, the statement and the event feed.
Every answer must parse into the generated model its status documents, so a spec that does not
describe the server fails here, as it would fail anyone who generated a client from it.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa

from tests.contract import SPEC_PATH
from tests.live import BIN, LiveServer, tool
from tests.test_events_feed import settle

PACKAGE = "loyalty_client"
#: What the generator cannot do, and says so: it has no text/csv bodies (codes are uploaded with the
#: command line here), and no application/yaml answers (the function for GET /openapi.yaml is made,
#: without a parsed body; a client takes the same document from GET /openapi.json). Any other warning
#: means the spec has something a generator cannot read.
KNOWN_WARNINGS = [
    "WARNING parsing GET /openapi.yaml within default.",
    "WARNING parsing POST /v1/benefits/{code}/codes within default. Endpoint will not be generated.",
    "WARNING parsing POST /v1/finance/reconciliations within default. Endpoint will not be generated.",
]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The client package openapi-python-client generates from openapi.yaml, imported."""
    out = tmp_path_factory.mktemp("generated")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # its formatter, ruff
    done = subprocess.run(
        [tool("openapi-python-client"), "generate", "--path", str(SPEC_PATH), "--meta", "none"],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert (out / PACKAGE / "client.py").exists(), report
    warnings = [line for line in report.splitlines() if line.startswith("WARNING")]
    assert warnings == KNOWN_WARNINGS, report
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def typed(response: Any, status: int, model: type) -> Any:
    """The parsed body of ``response``, which must have ``status`` and parse into ``model``."""
    assert response.status_code == status, response.content
    assert type(response.parsed) is model, f"{type(response.parsed)} is not the generated {model.__name__}"
    return response.parsed


def test_a_channel_app_journey_through_a_generated_client(generated: ModuleType, live: LiveServer):
    api = importlib.import_module(f"{PACKAGE}.api.default")
    m = importlib.import_module(f"{PACKAGE}.models")
    unset = importlib.import_module(f"{PACKAGE}.types").Unset
    endpoint = {name: importlib.import_module(f"{api.__name__}.{name}") for name in _ENDPOINTS}
    client = generated.AuthenticatedClient(base_url=live.url, token=live.key, raise_on_unexpected_status=True)

    # Enrol: the welcome bonus.
    r = endpoint["enrol_member"].sync_detailed(client=client, body=m.Enrolment(member_id="C0001"))
    member = typed(r, 201, m.Member)
    assert (member.member_id, member.balance, member.held, member.available) == ("C0001", 500, 0, 500)
    assert type(member.tier) is m.MemberTier and type(member.lifecycle) is m.MemberLifecycle

    # Accrue: 123.45 CNY of card spend earns 123 points.
    now = dt.datetime.now(dt.UTC)
    purchase = m.Transaction(
        transaction_id="T0001",
        member_id="C0001",
        type_=m.TransactionType.CARD_PURCHASE,
        amount=12_345,
        currency=m.TransactionCurrency.CNY,
        occurred_at=now - dt.timedelta(hours=1),
        merchant="永辉超市",
    )
    booked = typed(endpoint["book_transaction"].sync_detailed(client=client, body=purchase), 201, m.TransactionResult)
    assert (booked.points, booked.balance) == (123, 623)
    assert booked.awards and all(type(a) is m.Award for a in booked.awards)
    assert isinstance(booked.occurred_at, dt.datetime) and booked.occurred_at.tzinfo is not None

    # Replay by transaction id: 200, the first answer, nothing posted again.
    r = endpoint["book_transaction"].sync_detailed(client=client, body=purchase)
    assert typed(r, 200, m.TransactionResult).to_dict() == booked.to_dict()
    assert r.headers["Idempotent-Replayed"] == "true"
    # Replay by Idempotency-Key: the first status again, 201, and the same body.
    second = m.Transaction.from_dict({**purchase.to_dict(), "transaction_id": "T0002", "amount": 5_000})
    first = endpoint["book_transaction"].sync_detailed(client=client, body=second, idempotency_key="app-7f3a")
    again = endpoint["book_transaction"].sync_detailed(client=client, body=second, idempotency_key="app-7f3a")
    assert typed(first, 201, m.TransactionResult).balance == 673
    assert typed(again, 201, m.TransactionResult).to_dict() == first.parsed.to_dict()
    assert (again.headers["Idempotent-Replayed"], "Idempotent-Replayed" in first.headers) == ("true", False)

    # A bad transaction: a problem naming the field, and nothing booked.
    bad = m.Transaction.from_dict({**purchase.to_dict(), "transaction_id": "T0003", "amount": 0})
    problem = typed(endpoint["book_transaction"].sync_detailed(client=client, body=bad), 422, m.TransactionRefusal)
    assert (problem.type_, problem.field, problem.status) == ("/problems/validation_error", "amount", 422)
    assert not isinstance(problem.errors, unset) and [type(e) for e in problem.errors] == [m.ProblemErrorsItem]
    r = endpoint["get_transaction"].sync_detailed(client=client, transaction_id="T0003")
    assert typed(r, 404, m.Problem).type_ == "/problems/not_found"

    # What the member can get now; the starter pack is a voucher from a pool.
    r = endpoint["list_member_benefits"].sync_detailed(client=client, member_id="C0001")
    offer = typed(r, 200, m.MemberBenefits)
    assert offer.available_points == 673
    benefits = {b.code: b for b in offer.benefits}
    assert all(type(b) is m.MemberBenefit for b in benefits.values())
    pack = benefits["starter-gift-pack"]
    assert (pack.available, pack.points, pack.fulfilment) == (True, 300, m.MemberBenefitFulfilment.POOL)

    # Redeem it: the voucher code comes back at once; its points are held, not yet spent.
    ask = m.RedemptionRequest(redemption_id="R0001", member_id="C0001", benefit_code="starter-gift-pack")
    voucher = typed(endpoint["redeem"].sync_detailed(client=client, body=ask), 201, m.Redemption)
    assert (voucher.status, voucher.points, voucher.cancellable) == (m.RedemptionStatus.FULFILLED, 300, True)
    assert len(voucher.voucher_codes) == 1 and voucher.voucher_codes[0].startswith("DEMO-")
    member = typed(endpoint["get_member"].sync_detailed(client=client, member_id="C0001"), 200, m.Member)
    assert (member.balance, member.held, member.available) == (673, 300, 373)
    refused = m.RedemptionRequest(redemption_id="R0002", member_id="C0001", benefit_code="no-such-benefit")
    r = endpoint["redeem"].sync_detailed(client=client, body=refused)
    assert typed(r, 422, m.RedemptionRefusal).type_ == "/problems/benefit_not_found"

    # Cancel it: the points are back, the code back in the pool.
    r = endpoint["cancel_redemption"].sync_detailed(client=client, redemption_id="R0001")
    cancelled = typed(r, 200, m.Redemption)
    assert (cancelled.status, cancelled.voucher_codes) == (m.RedemptionStatus.CANCELLED, [])
    r = endpoint["cancel_redemption"].sync_detailed(client=client, redemption_id="R0001")
    assert typed(r, 409, m.CancelRedemptionResponse409).type_ == "/problems/not_cancellable"
    member = typed(endpoint["get_member"].sync_detailed(client=client, member_id="C0001"), 200, m.Member)
    assert (member.balance, member.held, member.available) == (673, 0, 673)

    # The statement: every entry counted as the member is.
    r = endpoint["get_statement"].sync_detailed(client=client, member_id="C0001", limit=3)
    page = typed(r, 200, m.Statement)
    assert [(e.kind, e.points, e.balance_after, e.held_after, e.available_after) for e in page.entries] == [
        (m.EntryKind.VOID, 0, 673, 0, 673),
        (m.EntryKind.HOLD, 0, 673, 300, 373),
        (m.EntryKind.ACCRUAL, 50, 673, 0, 673),
    ]
    r = endpoint["get_statement"].sync_detailed(client=client, member_id="C0001", cursor=page.next_cursor)
    assert [e.kind for e in typed(r, 200, m.Statement).entries] == [m.EntryKind.ACCRUAL, m.EntryKind.BONUS]

    # The event feed, as a consumer polls it, page by page.
    settle_feed(live.database_url)
    seen = read_feed(endpoint["read_events"], client, m)
    kinds = [e.type_ for e in seen]
    assert kinds[0] == m.EventType.MEMBER_ENROLLED
    assert kinds.index(m.EventType.REDEMPTION_FULFILLED) < kinds.index(m.EventType.REDEMPTION_CANCELLED)
    accrued = [e.data.additional_properties for e in seen if e.type_ == m.EventType.POINTS_ACCRUED]
    assert [(d["points"], d["balance"]) for d in accrued] == [(500, 500), (123, 623), (50, 673)]
    r = endpoint["read_events"].sync_detailed(client=client, types="points.accrued", limit=1)
    assert [e.type_ for e in typed(r, 200, m.EventPage).events] == [m.EventType.POINTS_ACCRUED]
    r = endpoint["read_events"].sync_detailed(client=client, after="")
    assert typed(r, 422, m.Problem).field == "after"


_ENDPOINTS = (
    "enrol_member",
    "book_transaction",
    "get_transaction",
    "list_member_benefits",
    "redeem",
    "get_member",
    "cancel_redemption",
    "get_statement",
    "read_events",
)


def settle_feed(database_url: str) -> None:
    """On PostgreSQL an event shows once every transaction that began before it has ended, on the
    whole server: wait for that (and fail naming what holds it back after a minute)."""
    engine = sa.create_engine(database_url)
    try:
        settle(engine)
    finally:
        engine.dispose()


def read_feed(read_events: ModuleType, client: Any, m: ModuleType) -> list[Any]:
    """Every event of the feed, two at a time, each page's ``next_cursor`` passed back as ``after``."""
    events: list[Any] = []
    after = None
    while True:
        r = read_events.sync_detailed(client=client, limit=2, **({"after": after} if after else {}))
        page = typed(r, 200, m.EventPage)
        assert all(type(e) is m.Event for e in page.events)
        if not page.events:
            assert page.next_cursor == (after or "0.0")
            return events
        events += page.events
        after = page.next_cursor

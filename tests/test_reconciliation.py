"""Partner reconciliation: a partner's statement compared with the redemptions it fulfilled.

Redemptions are made as members make them (``POST /v1/redemptions`` on the
default catalogue) and fulfilled, failed or cancelled as partners and members
do it: signed partner callbacks, ``POST /v1/redemptions/{id}/cancel``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import openpyxl
import pytest
import sqlalchemy as sa

from loyalty.audit import audit_log
from loyalty.catalogue.service import install_default
from loyalty.config import DEV_PARTNER_SECRET
from loyalty.db import transaction
from loyalty.errors import ValidationError
from loyalty.finance.reconciliation.models import reconciliation_lines, reconciliations
from loyalty.finance.reconciliation.statement import parse
from loyalty.fulfilment import protocol
from loyalty.ledger import verify
from loyalty.runtime import Runtime
from tests.conftest import Clock
from tests.contract import ContractClient
from tests.helpers import enrol, txn

HEADER = "partner_reference,redemption_id,amount_fen,date"
#: phone-credit-10's unit cost in the default catalogue (9.85 CNY), and after the change below
UNIT_COST_10, NEW_UNIT_COST_10 = 985, 990
#: 2026-06-30 23:30 in Shanghai; 2026-07-01 00:30 and 01:00 there (still 30 June in UTC)
JUNE_30_LATE = dt.datetime(2026, 6, 30, 15, 30, tzinfo=dt.UTC)
JULY_1_EARLY = dt.datetime(2026, 6, 30, 16, 30, tzinfo=dt.UTC)


# ---- making redemptions as members and partners do ----------------------------------------------------------------


@pytest.fixture
def catalogue(runtime: Runtime) -> None:
    with transaction(runtime.engine) as conn:
        install_default(conn, runtime.programme.ladder.codes, actor="test", now=runtime.now())


def member(client: ContractClient, member_id: str) -> None:
    """A member with about 20,000 points to spend (a day's cap of card spend)."""
    enrol(client, member_id)
    r = client.post("/v1/transactions", json=txn(f"t-{member_id}", member_id, 2_000_000))
    assert r.status_code == 201, r.get_json()


def redeem(client: ContractClient, redemption_id: str, member_id: str, benefit: str, quantity: int = 1) -> None:
    delivery = {"account_ref": f"acct-{member_id}"} if benefit.startswith("video") else {"phone_number": "13912345678"}
    r = client.post(
        "/v1/redemptions",
        json={
            "redemption_id": redemption_id,
            "member_id": member_id,
            "benefit_code": benefit,
            "quantity": quantity,
            "delivery": delivery,
        },
    )
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["status"] == "pending"


def partner_says(client: ContractClient, clock: Clock, partner: str, body: dict[str, Any]) -> None:
    """A signed callback from the partner, as it sends one."""
    raw = json.dumps(body).encode()
    headers = protocol.signed_headers(DEV_PARTNER_SECRET, raw, clock.now.timestamp(), partner=True)
    r = client.post(
        f"/v1/partners/{partner}/callbacks", data=raw, headers=headers, content_type="application/json", key=None
    )
    assert r.status_code == 200 and r.get_json()["changed"] is True, r.get_json()


def delivered(client: ContractClient, clock: Clock, redemption_id: str, reference: str, partner: str = "telecom"):
    partner_says(client, clock, partner, {"order_id": redemption_id, "status": "succeeded", "reference": reference})
    assert client.get(f"/v1/redemptions/{redemption_id}").get_json()["status"] == "fulfilled"


def reconcile(client: ContractClient, statement: str | bytes, query: str = "partner=telecom", **kwargs: Any) -> Any:
    data = statement.encode() if isinstance(statement, str) else statement
    kwargs.setdefault("content_type", "text/csv")
    return client.post(f"/v1/finance/reconciliations?{query}", data=data, **kwargs)


def stored(runtime: Runtime) -> tuple[int, int, int]:
    """Reconciliations, their lines, and audit lines about reconciliations."""
    with runtime.engine.connect() as conn:
        count = [
            conn.execute(sa.select(sa.func.count()).select_from(reconciliations)).scalar_one(),
            conn.execute(sa.select(sa.func.count()).select_from(reconciliation_lines)).scalar_one(),
            conn.execute(
                sa.select(sa.func.count()).where(audit_log.c.object_type == "reconciliation")
            ).scalar_one(),
        ]
    return count[0], count[1], count[2]


def june(client: ContractClient, clock: Clock) -> None:
    """Telecom's June 2026 by our records (clock: 2026-06-15 18:00 in Shanghai):

    - r1: m1, 2 x phone-credit-10 (985 each), fulfilled on the 15th
    - r2: m1, phone-credit-30 (2,955), fulfilled, reference TEL-2
    - r3: m2, phone-credit-10, fulfilled
    - r4: m2, phone-credit-50 (4,925), fulfilled
    - r5: m3, phone-credit-10, failed; r6: m3, phone-credit-10, still pending
    - r7: m1, video-membership-1m, fulfilled by the video partner
    - r11: m3, a cancellable telecom benefit (500), fulfilled then cancelled by the member
    - phone-credit-10's unit cost goes up to 990 (version 2), then
    - r8: m3, phone-credit-10, fulfilled at 23:30 on 30 June, local time
    - r13: m3, phone-credit-10, fulfilled at 23:45 on 30 June, local time
    - r10: m2, phone-credit-10, fulfilled at 00:30 on 1 July, local time (30 June in UTC)
    - r12: m1, phone-credit-10, fulfilled at 01:00 on 1 July, local time
    """
    for m in ("m1", "m2", "m3"):
        member(client, m)
    cancellable = {
        "code": "phone-credit-5-cancellable",
        "name": "Phone credit 5 CNY, cancellable for a day",
        "kind": "phone_credit",
        "fulfilment": "partner",
        "partner": "telecom",
        "face_value": 500,
        "unit_cost": 500,
        "points_price": 500,
        "cancel_hours": 24,
        "status": "active",
    }
    assert client.post("/v1/benefits", json=cancellable).status_code == 201
    redeem(client, "r1", "m1", "phone-credit-10", quantity=2)
    redeem(client, "r2", "m1", "phone-credit-30")
    redeem(client, "r3", "m2", "phone-credit-10")
    redeem(client, "r4", "m2", "phone-credit-50")
    redeem(client, "r5", "m3", "phone-credit-10")
    redeem(client, "r6", "m3", "phone-credit-10")
    redeem(client, "r7", "m1", "video-membership-1m")
    redeem(client, "r11", "m3", "phone-credit-5-cancellable")
    for rid in ("r1", "r2", "r3", "r4", "r11"):
        delivered(client, clock, rid, f"TEL-{rid[1:]}")
    delivered(client, clock, "r7", "VID-7", partner="video")
    partner_says(client, clock, "telecom", {"order_id": "r5", "status": "failed", "reason": "number not in service"})
    clock.advance(hours=1)
    assert client.post("/v1/redemptions/r11/cancel").get_json()["status"] == "cancelled"

    benefit = client.get("/v1/benefits/phone-credit-10").get_json()
    for field in ("status", "updated_by", "updated_at"):
        benefit.pop(field)
    r = client.put("/v1/benefits/phone-credit-10", json={**benefit, "unit_cost": NEW_UNIT_COST_10})
    assert r.status_code == 200 and r.get_json()["version"] == 2, r.get_json()

    for rid, member_id, at in (
        ("r8", "m3", JUNE_30_LATE),
        ("r13", "m3", JUNE_30_LATE + dt.timedelta(minutes=15)),
        ("r10", "m2", JULY_1_EARLY),
        ("r12", "m1", JULY_1_EARLY + dt.timedelta(minutes=30)),
    ):
        clock.now = at
        redeem(client, rid, member_id, "phone-credit-10")
        delivered(client, clock, rid, f"TEL-{rid[1:]}")
    clock.advance(hours=1)


#: Telecom's statement for June, as a spreadsheet saves it: a byte-order mark, CRLF line ends,
#: its own column order, a blank line.
JUNE_STATEMENT = (
    "\ufeffredemption_id,date,amount_fen,partner_reference\r\n"
    "r1,2026-06-15,1970,TEL-1\r\n"
    "r2,2026-06-15,2955,TEL-2X\r\n"  # right amount, another reference than the one it called back with
    "r3,2026-06-15,1000,TEL-3\r\n"  # 985 by our records
    "r5,2026-06-15,985,TEL-5\r\n"  # failed by our records
    "r6,2026-06-15,985,TEL-6\r\n"  # still pending by our records
    "\r\n"
    "r7,2026-06-15,1500,TEL-7\r\n"  # the video partner's
    "ghost-1,2026-06-20,985,TEL-99\r\n"  # no such redemption
    "r8,2026-06-30,990,TEL-8\r\n"
    "r10,2026-06-30,990,TEL-10\r\n"  # we fulfilled it on 1 July, local time
    "r11,2026-06-15,500,TEL-11\r\n"  # cancelled by the member after delivery
)


# ---- reconciling ----------------------------------------------------------------------------------------------


def test_a_statement_is_reconciled_line_by_line_with_the_partners_deliveries(client, clock, runtime, catalogue):
    june(client, clock)

    r = reconcile(client, JUNE_STATEMENT.encode("utf-8"), "partner=telecom&from=2026-06-01&to=2026-06-30")

    assert r.status_code == 201, r.get_json()
    report = r.get_json()
    lines = {line["redemption_id"]: line for line in report["lines"]}
    by_category: dict[str, list[str]] = {}
    for line in report["lines"]:
        by_category.setdefault(line["category"], []).append(line["redemption_id"])
    assert by_category == {
        "matched": ["r1", "r2", "r8", "r10", "r11"],
        "amount_mismatch": ["r3"],
        "missing_on_our_side": ["r5", "r6", "r7", "ghost-1"],
        # ours in June by local dates, not billed: r12 (1 July local) is not June's, r10 is billed
        "missing_on_their_side": ["r4", "r13"],
    }
    assert report["categories"] == {
        "matched": {"count": 5, "statement_fen": 7_405, "ours_fen": 7_405, "difference_fen": 0},
        "amount_mismatch": {"count": 1, "statement_fen": 1_000, "ours_fen": 985, "difference_fen": 15},
        "missing_on_our_side": {"count": 4, "statement_fen": 4_455, "ours_fen": 0, "difference_fen": 4_455},
        "missing_on_their_side": {"count": 2, "statement_fen": 0, "ours_fen": 5_915, "difference_fen": -5_915},
    }
    assert report["statement"] == {"lines": 10, "total_fen": 12_860}
    assert report["ours"] == {"redemptions": 8, "total_fen": 14_305}
    assert report["difference_fen"] == 12_860 - 14_305
    assert report["references_differ"] == 1  # r2
    assert report["reconciled"] is False
    assert (report["partner"], report["from"], report["to"]) == ("telecom", "2026-06-01", "2026-06-30")
    assert report["created_by"] == "test" and report["timezone"] == "Asia/Shanghai"

    # the amount is the unit cost of the version redeemed, times the quantity
    assert (lines["r1"]["unit_cost_fen"], lines["r1"]["quantity"], lines["r1"]["ours_fen"]) == (UNIT_COST_10, 2, 1_970)
    assert (lines["r1"]["benefit_version"], lines["r8"]["benefit_version"]) == (1, 2)
    assert lines["r8"]["ours_fen"] == NEW_UNIT_COST_10
    expected = {
        "statement_line": 4,
        "statement_date": "2026-06-15",
        "statement_fen": 1_000,
        "ours_fen": 985,
        "difference_fen": 15,
        "member_id": "m2",
        "benefit_code": "phone-credit-10",
        "our_status": "fulfilled",
        "our_reference": "TEL-3",
        "fulfilled_on": "2026-06-15",
    }
    assert {k: lines["r3"][k] for k in expected} == expected
    assert lines["r4"]["statement_line"] is None and lines["r4"]["ours_fen"] == 4_925
    assert (lines["r5"]["our_status"], lines["r5"]["ours_fen"], lines["r5"]["member_id"]) == ("failed", None, "m3")
    assert lines["r6"]["our_status"] == "pending"
    assert lines["r7"]["our_status"] is None and lines["r7"]["member_id"] is None  # not telecom's
    assert lines["ghost-1"]["statement_line"] == 9  # the blank line counts
    assert lines["r11"]["our_status"] == "cancelled"
    assert (lines["r2"]["partner_reference"], lines["r2"]["our_reference"]) == ("TEL-2X", "TEL-2")
    # local dates decide the period: 23:45 on 30 June is June's, 00:30 on 1 July is not
    assert (lines["r13"]["fulfilled_on"], lines["r10"]["fulfilled_on"]) == ("2026-06-30", "2026-07-01")
    assert lines["r13"]["fulfilled_at"] == "2026-06-30T15:45:00Z"
    assert "r12" not in lines

    with transaction(runtime.engine, readonly=True) as conn:
        assert [o.check.name for o in verify.run(conn) if not o.ok] == []


def test_the_reconciliation_is_stored_audited_and_listed(client, clock, runtime, catalogue):
    june(client, clock)
    report = reconcile(client, JUNE_STATEMENT, "partner=telecom&from=2026-06-01&to=2026-06-30").get_json()
    rid = report["reconciliation_id"]

    again = client.get(f"/v1/finance/reconciliations/{rid}")
    assert again.status_code == 200 and again.get_json() == report
    assert stored(runtime) == (1, 12, 1)

    summary = {k: v for k, v in report.items() if k != "lines"}
    assert client.get("/v1/finance/reconciliations?partner=telecom").get_json() == {"reconciliations": [summary]}
    assert client.get("/v1/finance/reconciliations?partner=video").get_json() == {"reconciliations": []}
    clock.advance(minutes=5)
    later = reconcile(client, f"{HEADER}\nTEL-1,r1,1970,2026-06-15\n").get_json()
    assert (later["from"], later["to"]) == ("2026-06-15", "2026-06-15")  # the statement's own dates
    listed = client.get("/v1/finance/reconciliations").get_json()["reconciliations"]
    assert [x["reconciliation_id"] for x in listed] == [later["reconciliation_id"], rid]  # newest first
    assert client.get("/v1/finance/reconciliations?limit=1").get_json()["reconciliations"][0] == {
        k: v for k, v in later.items() if k != "lines"
    }

    audit = client.get(f"/v1/audit?object_type=reconciliation&object_id={rid}").get_json()["entries"]
    assert [(a["action"], a["actor"]) for a in audit] == [("reconciliation.created", "test")]
    assert audit[0]["after"] == summary

    missing = client.get("/v1/finance/reconciliations/no-such-id")
    assert missing.status_code == 404 and missing.get_json()["field"] == "reconciliation_id"


def test_a_reconciliation_exports_as_csv_and_xlsx(client, clock, catalogue):
    june(client, clock)
    statement = JUNE_STATEMENT.replace("TEL-11", "=HYPERLINK(1)")  # a partner's text is never a formula
    rid = reconcile(client, statement, "partner=telecom&from=2026-06-01&to=2026-06-30").get_json()["reconciliation_id"]

    r = client.get(f"/v1/finance/reconciliations/{rid}?format=csv")
    assert r.status_code == 200 and r.mimetype == "text/csv"
    assert "attachment" in r.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    lines = {row["redemption_id"]: row for row in rows if not row["category"].startswith("total")}
    assert len(lines) == 12
    assert lines["r3"]["category"] == "amount_mismatch" and lines["r3"]["difference_fen"] == "15"
    assert lines["r4"]["statement_fen"] == "" and lines["r4"]["ours_fen"] == "4925"
    assert lines["r11"]["partner_reference"] == "'=HYPERLINK(1)"
    totals = {row["category"]: row for row in rows if row["category"].startswith("total")}
    assert (totals["total matched"]["count"], totals["total matched"]["ours_fen"]) == ("5", "7405")
    assert totals["total missing_on_their_side"]["ours_fen"] == "5915"
    assert (totals["total"]["count"], totals["total"]["statement_fen"], totals["total"]["ours_fen"]) == (
        "12",
        "12860",
        "14305",
    )

    r = client.get(f"/v1/finance/reconciliations/{rid}?format=xlsx")
    assert r.status_code == 200
    sheet = openpyxl.load_workbook(io.BytesIO(r.get_data())).active
    header = [c.value for c in sheet[1]]
    table = [dict(zip(header, row, strict=True)) for row in sheet.iter_rows(min_row=2, values_only=True)]
    assert {row["redemption_id"]: row["category"] for row in table if row["count"] == 1}["r10"] == "matched"
    assert next(row for row in table if row["category"] == "total")["difference_fen"] == 12_860 - 14_305
    assert next(row for row in table if row["redemption_id"] == "r11")["partner_reference"] == "'=HYPERLINK(1)"

    r = client.get("/v1/finance/reconciliations?partner=telecom&format=csv")
    assert r.status_code == 200
    (only,) = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert (only["reconciliation_id"], only["amount_mismatch_count"], only["reconciled"]) == (rid, "1", "no")
    bad = client.get(f"/v1/finance/reconciliations/{rid}?format=pdf")
    assert bad.status_code == 422 and bad.get_json()["field"] == "format"


def test_a_statement_that_bills_exactly_our_deliveries_is_reconciled(client, clock, catalogue):
    member(client, "m1")
    redeem(client, "r1", "m1", "phone-credit-10")
    delivered(client, clock, "r1", "TEL-1")
    report = reconcile(client, f"{HEADER}\nTEL-1,r1,985,2026-06-15\n").get_json()
    assert report["reconciled"] is True and report["difference_fen"] == 0
    assert [line["category"] for line in report["lines"]] == ["matched"]
    nothing = reconcile(client, f"{HEADER}\n", "partner=telecom&from=2026-06-16&to=2026-06-30").get_json()
    assert nothing["reconciled"] is True and nothing["lines"] == []  # nothing delivered, nothing billed


def test_a_retry_with_the_same_idempotency_key_stores_one_reconciliation(client, runtime, clock, catalogue):
    member(client, "m1")
    redeem(client, "r1", "m1", "phone-credit-10")
    delivered(client, clock, "r1", "TEL-1")
    statement = f"{HEADER}\nTEL-1,r1,985,2026-06-15\n"
    first = reconcile(client, statement, headers={"Idempotency-Key": "june-telecom"})
    again = reconcile(client, statement, headers={"Idempotency-Key": "june-telecom"})
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["Idempotent-Replayed"] == "true" and again.get_json() == first.get_json()
    assert stored(runtime) == (1, 1, 1)
    other = reconcile(client, statement.replace("985", "986"), headers={"Idempotency-Key": "june-telecom"})
    assert other.status_code == 409 and stored(runtime) == (1, 1, 1)


# ---- refusals: nothing is stored --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "body", "field", "says"),
    [
        ("partner=telecom", f"{HEADER}\nTEL-1,r1,9.85,2026-06-15\n", "line 2: amount_fen", "whole number of fen"),
        ("partner=telecom", f"{HEADER}\nTEL-1,r1,985,2026-06-15\n\nTEL-2,r2,-5,2026-06-15\n", "line 4: amount_fen", ""),
        ("partner=telecom", f"{HEADER}\nTEL-1,r1,985,2026-06-31\n", "line 2: date", "YYYY-MM-DD"),
        ("partner=telecom", f"{HEADER}\nTEL-1,r1,985,15/06/2026\n", "line 2: date", ""),
        ("partner=telecom", f"{HEADER}\nTEL-1,r 1,985,2026-06-15\n", "line 2: redemption_id", ""),
        ("partner=telecom", f"{HEADER}\n,r1,985,2026-06-15\n", "line 2: partner_reference", ""),
        ("partner=telecom", f"{HEADER}\nTEL-1,r1,985\n", "line 2", "3 cells"),
        ("partner=telecom", f"{HEADER}\nTEL-1,r1,985,2026-06-15\nTEL-1b,r1,985,2026-06-16\n", "line 3: redemption_id",
         "repeats line 2"),
        ("partner=telecom", 'partner_reference,redemption_id,amount,date\nTEL-1,r1,985,2026-06-15\n', "line 1",
         "unknown column(s) 'amount'"),
        ("partner=telecom", "TEL-1,r1,985,2026-06-15\n", "line 1", "header"),
        ("partner=telecom", "", "line 1", "empty"),
        ("partner=telecom", f"{HEADER}\n", "body", "no lines"),
        ("partner=telecom", f'{HEADER}\n"TEL-1,r1,985,2026-06-15\n', "line 2", "not valid CSV"),
        ("partner=telecom&from=2026-06-01&to=2026-06-30", f"{HEADER}\nTEL-1,r1,985,2026-07-01\n", "line 2: date",
         "outside"),
        ("partner=telecom&from=2026-06-01", f"{HEADER}\nTEL-1,r1,985,2026-06-15\n", "to", ""),
        ("partner=telecom&from=2026-06-30&to=2026-06-01", f"{HEADER}\nTEL-1,r1,985,2026-06-15\n", "to", ""),
        ("partner=telecom&from=June&to=2026-06-30", f"{HEADER}\nTEL-1,r1,985,2026-06-15\n", "from", ""),
        ("partner=acme", f"{HEADER}\nTEL-1,r1,985,2026-06-15\n", "partner", "not a partner"),
        ("", f"{HEADER}\nTEL-1,r1,985,2026-06-15\n", "partner", "required"),
    ],
)
def test_a_bad_statement_is_refused_naming_the_line_and_nothing_is_stored(client, runtime, query, body, field, says):
    r = reconcile(client, body, query)
    assert r.status_code == 422, r.get_json()
    problem = r.get_json()
    assert problem["field"] == field and says in problem["detail"], problem
    assert stored(runtime) == (0, 0, 0)


def test_every_bad_line_is_named_at_once(client, runtime):
    r = reconcile(client, f"{HEADER}\nTEL-1,r1,1.5,2026-06-15\nTEL-2,r2,985,2026-06-15\n,r3,x,2026-13-01\n")
    assert [e["field"] for e in r.get_json()["errors"]] == [
        "line 2: amount_fen",
        "line 4: partner_reference",
        "line 4: amount_fen",
        "line 4: date",
    ]
    assert stored(runtime) == (0, 0, 0)


def test_a_statement_that_is_not_utf8_csv_is_refused(client, runtime):
    gbk = f"{HEADER}\nTEL-1,r1,985,2026-06-15\n电信-2,r2,985,2026-06-15\n".encode("gbk")
    r = reconcile(client, gbk)
    assert r.status_code == 422 and r.get_json()["field"] == "line 3" and "UTF-8" in r.get_json()["detail"]
    r = reconcile(client, f"{HEADER}\n".encode("utf-16"))
    assert r.status_code == 422 and "UTF-16" in r.get_json()["detail"]
    r = reconcile(client, f"{HEADER}\n", content_type="application/json")
    assert r.status_code == 415 and r.get_json()["field"] == "Content-Type"
    r = reconcile(client, f"{HEADER}\n", content_type="text/csv; charset=gbk")
    assert r.status_code == 415 and "UTF-8" in r.get_json()["detail"]
    assert stored(runtime) == (0, 0, 0)


def test_reconciliations_need_the_finance_scope(app, runtime):
    from tests.conftest import make_key

    reader = ContractClient(app.test_client(), make_key(runtime, "read", "redeem"))
    r = reader.post("/v1/finance/reconciliations?partner=telecom", data=f"{HEADER}\n", content_type="text/csv")
    assert r.status_code == 403
    assert reader.get("/v1/finance/reconciliations").status_code == 403
    assert stored(runtime) == (0, 0, 0)


def test_the_statement_parser_reads_what_spreadsheets_write():
    lines = parse(
        b'\xef\xbb\xbf date , amount_fen,redemption_id,partner_reference\r\n\r\n'
        b'2026-06-15,985, r1 ,"TEL, 1"\r\n2026-06-16,0,r2,\xe7\x94\xb5\xe4\xbf\xa1-2\r\n'
    )
    assert [(x.line, x.partner_reference, x.redemption_id, x.amount_fen, x.date.isoformat()) for x in lines] == [
        (3, "TEL, 1", "r1", 985, "2026-06-15"),
        (4, "电信-2", "r2", 0, "2026-06-16"),
    ]
    with pytest.raises(ValidationError) as refused:
        parse(f"{HEADER},{HEADER}\n".encode())
    assert "repeated" in refused.value.detail


# ---- the command line -------------------------------------------------------------------------------------------


@pytest.mark.committed
def test_the_cli_reconciles_a_statement_file_and_exits_by_the_result(
    database_url, client, clock, runtime, catalogue, tmp_path
):
    member(client, "m1")
    redeem(client, "r1", "m1", "phone-credit-10")
    delivered(client, clock, "r1", "TEL-1")
    env = {**os.environ, "LOYALTY_DATABASE_URL": database_url}
    env.pop("LOYALTY_PARTNERS", None)
    command = [str(Path(sys.executable).with_name("loyalty")), "finance", "reconcile"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=120, check=False)

    good = tmp_path / "good.csv"
    good.write_text(f"{HEADER}\nTEL-1,r1,985,2026-06-15\n", encoding="utf-8")
    result = run("--partner", "telecom", str(good))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["reconciled"] is True and report["created_by"].startswith("cli")
    assert "1 matched, 0 missing on our side" in result.stderr

    over = tmp_path / "over.csv"
    over.write_text(f"{HEADER}\nTEL-1,r1,990,2026-06-15\nTEL-9,r9,100,2026-06-15\n", encoding="utf-8")
    result = run("--partner", "telecom", "--from", "2026-06-01", "--to", "2026-06-30", "--format", "csv", str(over))
    assert result.returncode == 1, result.stderr  # differences found
    rows = {row["redemption_id"]: row for row in csv.DictReader(io.StringIO(result.stdout))}
    assert (rows["r1"]["category"], rows["r9"]["category"]) == ("amount_mismatch", "missing_on_our_side")
    workbook = tmp_path / "june.xlsx"
    assert run("--partner", "telecom", "--format", "xlsx", "-o", str(workbook), str(over)).returncode == 1
    assert [c.value for c in openpyxl.load_workbook(workbook).active[1]][:3] == ["category", "count", "redemption_id"]
    assert stored(runtime) == (3, 5, 3)

    bad = tmp_path / "bad.csv"
    bad.write_text(f"{HEADER}\nTEL-1,r1,9.85,2026-06-15\n", encoding="utf-8")
    result = run("--partner", "telecom", str(bad))
    assert result.returncode == 2 and "line 2: amount_fen" in result.stderr and result.stdout == ""
    result = run("--partner", "acme", str(good))
    assert result.returncode == 2 and "partner" in result.stderr
    assert run("--partner", "telecom", "--format", "xlsx", str(good)).returncode == 2  # a workbook needs -o
    assert stored(runtime) == (3, 5, 3)


def test_the_database_refuses_lines_that_contradict_their_category(client, clock, runtime, catalogue):
    member(client, "m1")
    redeem(client, "r1", "m1", "phone-credit-10")
    delivered(client, clock, "r1", "TEL-1")
    rid = reconcile(client, f"{HEADER}\nTEL-1,r1,985,2026-06-15\n").get_json()["reconciliation_id"]
    line = {
        "reconciliation_id": rid,
        "category": "matched",
        "redemption_id": "r2",
        "statement_line": 3,
        "partner_reference": "TEL-2",
        "statement_date": dt.date(2026, 6, 15),
        "statement_fen": 985,
        "ours_fen": 985,
    }
    for seq, broken in (
        (2, {"ours_fen": 990}),  # matched at different amounts
        (3, {"category": "amount_mismatch"}),  # a mismatch at the same amount
        (4, {"category": "missing_on_their_side"}),  # missing on their side, yet in the statement
        (5, {"statement_date": None}),  # half a statement line
        (6, {"statement_fen": -985, "ours_fen": -985}),
        (7, {"redemption_id": "r1"}),  # r1 is on a line already
    ):
        with pytest.raises(sa.exc.IntegrityError), transaction(runtime.engine) as conn:
            conn.execute(reconciliation_lines.insert().values(**{**line, "seq": seq, **broken}))
    with transaction(runtime.engine) as conn:
        conn.execute(reconciliation_lines.insert().values(**line, seq=2))  # the same line, consistent, is taken
    assert stored(runtime) == (1, 2, 1)

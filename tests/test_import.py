"""``loyalty import-transactions``: bulk, idempotent, with a rejects file."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from loyalty import cli
from loyalty.db import transaction
from loyalty.ledger import verify
from loyalty.members.service import Enrolment, enrol
from tests.conftest import START

HEADER = ["transaction_id", "member_id", "type", "amount", "currency", "occurred_at", "channel", "mcc", "merchant"]
WHEN = "2026-06-14T10:00:00+08:00"


def write_csv(path: Path, rows: list[list[object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerows(rows)
    return path


@pytest.fixture
def run_import(runtime, clock):
    def run(path: Path, *args: str):
        result = CliRunner().invoke(
            cli.main,
            ["import-transactions", str(path), "--no-progress", *args],
            env={"LOYALTY_DATABASE_URL": runtime.settings.database_url},
            obj=runtime,
            catch_exceptions=False,
        )
        return result

    return run


@pytest.fixture
def members(runtime):
    with transaction(runtime.engine) as conn:
        for m in ("m1", "m2", "m3"):
            enrol(conn, Enrolment(m), programme=runtime.programme, now=runtime.now())


def balances(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT member_id, balance FROM member_accounts")).all())


def assert_verified(engine) -> None:
    with engine.connect() as conn:
        assert [o.check.name for o in verify.run(conn) if not o.ok] == []


def test_import_posts_rejects_and_replays(members, run_import, engine, tmp_path):
    path = write_csv(
        tmp_path / "eod.csv",
        [
            ["a1", "m1", "card_purchase", 10_000, "CNY", WHEN, "pos", "5411", "超市"],
            ["a2", "m1", "card_purchase", 20_050, "CNY", WHEN, "", "", ""],
            ["a3", "m2", "bill_payment", 500_000, "CNY", WHEN, "app", "", ""],
            ["a4", "ghost", "card_purchase", 100, "CNY", WHEN, "", "", ""],
            ["a5", "m3", "card_purchase", -1, "CNY", WHEN, "", "", ""],
            ["a6", "m3", "card_purchase", 100, "USD", WHEN, "", "", ""],
            ["a1", "m1", "card_purchase", 10_000, "CNY", WHEN, "pos", "5411", "超市"],
            ["a1", "m1", "card_purchase", 99_999, "CNY", WHEN, "", "", ""],
        ],
    )
    result = run_import(path)
    assert result.exit_code == 0, result.output
    assert "posted 3, replayed 1, rejected 4" in result.output
    assert balances(engine) == {"m1": 500 + 100 + 200, "m2": 500, "m3": 500}
    rejects = list(csv.DictReader((tmp_path / "eod.csv.rejects.csv").read_text(encoding="utf-8").splitlines()))
    assert [r["transaction_id"] for r in rejects] == ["a5", "a6", "a1", "a4"]
    reasons = {r["transaction_id"] + r["line"]: r["reason"] for r in rejects}
    assert "amount" in reasons["a56"]
    assert "currency" in reasons["a67"]
    assert "different fields" in reasons["a19"]
    assert "not enrolled" in reasons["a45"]
    assert_verified(engine)

    again = run_import(path)
    assert "posted 0, replayed 4, rejected 4" in again.output
    assert balances(engine) == {"m1": 800, "m2": 500, "m3": 500}
    assert_verified(engine)


def test_import_resumed_after_a_partial_run_posts_nothing_twice(members, run_import, engine, tmp_path):
    rows = [[f"x{i}", f"m{i % 3 + 1}", "card_purchase", 100 * (i + 1), "CNY", WHEN, "", "", ""] for i in range(50)]
    write_csv(tmp_path / "first.csv", rows[:20])
    write_csv(tmp_path / "all.csv", rows)
    assert "posted 20" in run_import(tmp_path / "first.csv", "--chunk-size", "7").output
    result = run_import(tmp_path / "all.csv", "--chunk-size", "7")
    assert "posted 30, replayed 20, rejected 0" in result.output
    expected = {f"m{k}": 500 + sum(i + 1 for i in range(50) if i % 3 + 1 == k) for k in (1, 2, 3)}
    assert balances(engine) == expected
    assert_verified(engine)


def test_imported_transaction_replays_through_the_api(members, run_import, client, tmp_path):
    write_csv(tmp_path / "eod.csv", [["a1", "m1", "card_purchase", 10_000, "CNY", WHEN, "", "", ""]])
    run_import(tmp_path / "eod.csv")
    body = {
        "transaction_id": "a1",
        "member_id": "m1",
        "type": "card_purchase",
        "amount": 10_000,
        "currency": "CNY",
        "occurred_at": WHEN,
        "channel": None,
        "mcc": None,
        "merchant": None,
    }
    r = client.post("/v1/transactions", json=body)
    assert r.status_code == 200
    assert r.get_json()["points"] == 100
    assert r.get_json()["balance"] == 600


def test_import_pays_a_negative_balance_first(members, run_import, client, engine, runtime, tmp_path):
    from loyalty.ledger import service as ledger

    client.post(
        "/v1/transactions",
        json={
            "transaction_id": "t0",
            "member_id": "m1",
            "type": "card_purchase",
            "amount": 50_000,
            "currency": "CNY",
            "occurred_at": START.isoformat(),
        },
    )
    with transaction(engine) as conn:
        ledger.hold(conn, "m1", "h1", 1_000, capture_account="redeemed:unspecified", now=runtime.now())
        ledger.capture(conn, "m1", "h1", now=runtime.now())
    client.post("/v1/transactions/t0/reversals", json={"reversal_id": "r0", "amount": 50_000})
    assert balances(engine)["m1"] == -500
    write_csv(tmp_path / "eod.csv", [["a1", "m1", "card_purchase", 80_000, "CNY", WHEN, "", "", ""]])
    run_import(tmp_path / "eod.csv")
    assert balances(engine)["m1"] == 300
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT sum(remaining) FROM point_lots WHERE member_id = 'm1'")).scalar_one() == 300
    assert_verified(engine)


def test_import_refuses_a_file_without_the_columns(members, runtime, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("id,amount\n1,2\n")
    result = CliRunner().invoke(cli.main, ["import-transactions", str(path)], obj=runtime)
    assert result.exit_code == 2
    assert "lacks transaction_id" in result.output


def test_optional_columns_may_be_left_out_of_the_file(members, run_import, client, engine, tmp_path):
    """channel, mcc and merchant are optional in the API; a file may leave their columns out."""
    path = tmp_path / "eod.csv"
    path.write_text(
        "member_id,transaction_id,type,amount,currency,occurred_at,channel\n"
        f"m1,o1,card_purchase,10000,CNY,{WHEN},app\n"
        f"m2,o2,card_purchase,20000,CNY,{WHEN},\n"
        f"m3,o3,card_purchase,-1,CNY,{WHEN},app\n",
        encoding="utf-8",
    )
    result = run_import(path)
    assert result.exit_code == 0, result.output
    assert "posted 2, replayed 0, rejected 1" in result.output
    assert balances(engine) == {"m1": 600, "m2": 700, "m3": 500}
    booked = client.get("/v1/transactions/o1").get_json()
    assert (booked["points"], booked["amount"]) == (100, 10_000)
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT channel, mcc, merchant FROM transactions ORDER BY transaction_id")).all()
    assert [tuple(r) for r in stored] == [("app", None, None), (None, None, None)]
    rejects = list(csv.DictReader((tmp_path / "eod.csv.rejects.csv").read_text(encoding="utf-8").splitlines()))
    assert [(r["line"], r["transaction_id"], r["merchant"]) for r in rejects] == [("4", "o3", "")]
    assert_verified(engine)

    missing = tmp_path / "no-member.csv"
    missing.write_text(f"transaction_id,type,amount,currency,occurred_at\no4,card_purchase,1,CNY,{WHEN}\n")
    refused = run_import(missing)
    assert refused.exit_code == 2
    assert "lacks member_id" in refused.output


def test_import_awards_exactly_what_the_api_would(members, run_import, runtime, engine, tmp_path):
    """Rules see the same member facts in bulk as one at a time: first-of-type
    bonuses, monthly counts and daily caps carry across chunks."""
    import random

    from loyalty.accrual import service as accrual
    from loyalty.accrual.service import TransactionCommand

    rnd = random.Random(7)
    kinds = ["card_purchase"] * 6 + ["transfer", "wealth_purchase", "bill_payment"]
    rows = []
    for i in range(90):
        when = START - dt.timedelta(days=2) + dt.timedelta(minutes=30 * i)
        amount = rnd.choice([1_00, 99_99, 12_345, 500_000, 8_000_000_00])
        rows.append(
            [f"x{i:03d}", f"m{rnd.randint(1, 3)}", rnd.choice(kinds), amount, "CNY", when.isoformat(), "", "", ""]
        )
    write_csv(tmp_path / "eod.csv", rows)
    assert "posted 90" in run_import(tmp_path / "eod.csv", "--chunk-size", "7").output
    with transaction(runtime.engine) as conn:
        for m in ("m1", "m2", "m3"):
            enrol(conn, Enrolment(f"twin-{m}"), programme=runtime.programme, now=runtime.now())
    for r in rows:
        cmd = TransactionCommand(
            r[0].replace("x", "y"), f"twin-{r[1]}", r[2], r[3], "CNY", dt.datetime.fromisoformat(r[5])
        )
        with transaction(runtime.engine) as conn:
            accrual.record_transaction(conn, cmd, programme=runtime.programmes.at(cmd.occurred_at), now=runtime.now())
    with engine.connect() as conn:
        got = dict(conn.execute(sa.text("SELECT transaction_id, points FROM transactions")).all())
    imported = [got[r[0]] for r in rows]
    booked = [got[r[0].replace("x", "y")] for r in rows]
    assert imported == booked
    assert sum(imported) > 0 and 300 in imported and 1000 in imported  # the first-of-type bonuses fired
    assert_verified(engine)


def test_import_sees_transactions_booked_through_the_api_meanwhile(members, run_import, client, tmp_path):
    client.post(
        "/v1/transactions",
        json={
            "transaction_id": "api-1",
            "member_id": "m1",
            "type": "transfer",
            "amount": 100,
            "currency": "CNY",
            "occurred_at": WHEN,
        },
    )
    write_csv(tmp_path / "eod.csv", [["a1", "m1", "transfer", 100, "CNY", WHEN, "", "", ""]])
    run_import(tmp_path / "eod.csv")
    assert client.get("/v1/transactions/a1").get_json()["points"] == 0  # not the first transfer any more

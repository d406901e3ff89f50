"""The database itself refuses rows that name what does not exist, or contradict themselves: foreign
keys within the member for transactions, holds and redemptions; CHECKs on benefits and voucher codes.
Each is broken with SQL behind the application's back, on both backends. Migration 0011 adds them
to a database that already holds data."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from loyalty import migrate
from loyalty.accrual import importer
from loyalty.accrual import service as accrual
from loyalty.accrual.service import TransactionCommand
from loyalty.catalogue import codes
from loyalty.catalogue.models import benefits, voucher_codes
from loyalty.catalogue.service import install_default
from loyalty.db import is_postgres, transaction
from loyalty.ledger import service as ledger
from loyalty.ledger import verify
from loyalty.ledger.models import entry_keys, holds, journal_entries, member_accounts, postings
from loyalty.members import service as members
from loyalty.members.service import Enrolment
from loyalty.migrate import upgrade
from loyalty.records.models import transactions
from loyalty.redemption.jobs import settle
from loyalty.redemption.models import redemptions
from loyalty.runtime import Runtime
from rules import Award
from tests.conftest import TEST_SECRET_KEY
from tests.helpers import before, head_revision, revision_named, txn

#: The revision that adds the constraints.
REVISION = revision_named("constraints_and_webhook_secrets")


# --- a ledger to break ---------------------------------------------------------------------------------


def benefit_row(rt: Runtime, code: str, **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "code": code,
        "version": 1,
        "name": code,
        "kind": "voucher",
        "fulfilment": "bank",
        "partner": None,
        "face_value": 1_000,
        "unit_cost": 800,
        "funding_source": "bank",
        "points_price": 100,
        "status": "active",
        "cancel_hours": 0,
        "updated_by": "test",
        "updated_at": rt.now(),
    }
    row.update(over)
    return row


@pytest.fixture
def ledger_rows(runtime: Runtime) -> dict[str, str]:
    """m1 and m2 enrolled; m1 earned on t1 and holds 100 points in h1; benefit b1 exists.
    Returns the ids rows may name: m1's accrual entry and m2's welcome entry."""
    now = runtime.now()
    with transaction(runtime.engine) as conn:
        for member_id in ("m1", "m2"):
            members.enrol(conn, Enrolment(member_id), programme=runtime.programme, now=now)
        cmd = TransactionCommand("t1", "m1", "card_purchase", 50_000, "CNY", now - dt.timedelta(hours=1))
        accrual.record_transaction(conn, cmd, programme=runtime.programme, now=now)
        ledger.hold(conn, "m1", "h1", 100, capture_account="redeemed:unspecified", now=now)
        conn.execute(benefits.insert().values(**benefit_row(runtime, "b1")))
    with transaction(runtime.engine, readonly=True) as conn:
        entries = {(r.member_id, r.kind): r.id for r in conn.execute(sa.select(journal_entries)) if r.kind != "hold"}
    return {"m1_accrual": entries[("m1", "accrual")], "m2_bonus": entries[("m2", "bonus")]}


def refused(rt: Runtime, statement: Any, constraint: str) -> None:
    """``statement`` fails on ``constraint`` and writes nothing."""
    with pytest.raises(sa.exc.IntegrityError) as caught, transaction(rt.engine) as conn:
        conn.execute(statement)
    message = str(caught.value.orig)
    if is_postgres(rt.engine):
        assert constraint in message, message
    elif constraint.startswith("fk_"):
        assert "FOREIGN KEY constraint failed" in message, message
    else:
        assert f"CHECK constraint failed: {constraint}" in message, message


def accepted(rt: Runtime, statement: Any) -> None:
    """The control: the same statement with what the constraint wants is accepted."""
    with transaction(rt.engine) as conn:
        conn.execute(statement)


def a_transaction(member_id: str, transaction_id: str, entry_id: str | None) -> Any:
    return transactions.insert().values(
        member_id=member_id,
        transaction_id=transaction_id,
        type="transfer",
        amount=100,
        currency="CNY",
        occurred_at=dt.datetime(2026, 6, 1, tzinfo=dt.UTC),
        points=0,
        entry_id=entry_id,
        balance_after=0,
        programme_version="v",
        received_at=dt.datetime(2026, 6, 1, tzinfo=dt.UTC),
    )


def test_a_transaction_names_a_journal_entry_of_its_own_member(runtime, ledger_rows):
    fk = "fk_transactions_member_id_entry_id_entry_keys"
    refused(runtime, a_transaction("m1", "x1", str(uuid.uuid4())), fk)
    refused(runtime, a_transaction("m2", "x2", ledger_rows["m1_accrual"]), fk)  # another member's entry
    accepted(runtime, a_transaction("m1", "x3", ledger_rows["m1_accrual"]))
    accepted(runtime, a_transaction("m2", "x4", None))  # a transaction that earned nothing names none


def test_a_resolved_hold_names_an_entry_of_its_own_member(runtime, ledger_rows):
    fk = "fk_holds_member_id_resolution_entry_id_entry_keys"
    h = holds.c

    def resolve(entry_id: str) -> Any:
        return (
            holds.update()
            .where(h.member_id == "m1", h.id == "h1")
            .values(status="voided", resolution_entry_id=entry_id)
        )

    refused(runtime, resolve(str(uuid.uuid4())), fk)
    refused(runtime, resolve(ledger_rows["m2_bonus"]), fk)
    accepted(runtime, resolve(ledger_rows["m1_accrual"]))


def test_the_previous_releases_write_order_is_checked_at_commit(runtime, ledger_rows):
    """The release before 0011 wrote a transaction before its journal entry, and resolved a hold
    before writing the entry that resolves it. Those two keys are checked at commit, so nodes of that
    release keep working on the new schema while the others are upgraded."""
    now = runtime.now()
    with transaction(runtime.engine) as conn:
        entry_id = ledger.new_id()
        conn.execute(a_transaction("m1", "t-early", entry_id))  # first the transaction, naming an entry ...
        award = Award("card-spend-base", 5, "bank", True, "1 point per CNY")
        ledger.accrue(  # ... then the entry
            conn,
            "m1",
            [award],
            kind="accrual",
            source_ref="t-early",
            earned_at=now,
            expires_at=now + dt.timedelta(days=365),
            now=now,
            transaction_id="t-early",
            entry_id=entry_id,
        )
    with transaction(runtime.engine) as conn:
        entry_id = ledger.new_id()
        h, ma = holds.c, member_accounts.c
        conn.execute(  # first the hold, resolved by an entry ...
            holds.update()
            .where(h.member_id == "m1", h.id == "h1")
            .values(status="voided", resolved_at=now, resolution_entry_id=entry_id)
        )
        balance, seq = conn.execute(
            member_accounts.update()
            .where(ma.member_id == "m1")
            .values(balance=ma.balance + 100, held=ma.held - 100, entry_seq=ma.entry_seq + 1)
            .returning(ma.balance, ma.entry_seq)
        ).one()
        entry, lines = ledger.entry_rows(  # ... then that entry
            member_id="m1",
            entry_id=entry_id,
            kind="void",
            source_ref="h1",
            lines=[ledger.Line("holds", -100), ledger.Line("member", 100)],
            now=now,
        )
        entry.update(seq=seq, balance_after=balance)
        conn.execute(entry_keys.insert(), ledger.key_row(entry))
        conn.execute(journal_entries.insert(), entry)
        conn.execute(postings.insert(), lines)
    with transaction(runtime.engine, readonly=True) as conn:
        assert conn.execute(
            sa.select(transactions.c.entry_id).where(transactions.c.transaction_id == "t-early")
        ).scalar()
        assert conn.execute(sa.select(holds.c.status).where(holds.c.id == "h1")).scalar() == "voided"


def test_a_redemption_names_a_hold_of_its_own_member(runtime, ledger_rows):
    fk = "fk_redemptions_member_id_hold_id_holds"

    def redemption(member_id: str, redemption_id: str, hold_id: str | None) -> Any:
        return redemptions.insert().values(
            member_id=member_id,
            id=redemption_id,
            benefit_code="b1",
            benefit_version=1,
            quantity=1,
            points=100,
            status="pending",
            hold_id=hold_id,
            created_at=runtime.now(),
            updated_at=runtime.now(),
        )

    refused(runtime, redemption("m1", "r1", "no-such-hold"), fk)
    refused(runtime, redemption("m2", "r2", "h1"), fk)  # m1's hold
    accepted(runtime, redemption("m1", "r3", "h1"))
    accepted(runtime, redemption("m2", "r4", None))  # an entitlement holds no points


@pytest.mark.parametrize(
    ("over", "constraint"),
    [
        ({"points_price": 0}, "ck_benefits_points_price_positive"),
        ({"points_price": -100}, "ck_benefits_points_price_positive"),
        ({"cancel_hours": -1}, "ck_benefits_cancel_hours_not_negative"),
        ({"kind": "phone_credit", "fulfilment": "partner", "partner": None}, "ck_benefits_partner_named"),
    ],
)
def test_a_benefit_that_contradicts_itself_is_refused(runtime, over, constraint):
    refused(runtime, benefits.insert().values(**benefit_row(runtime, "bad", **over)), constraint)
    b = benefits.c
    accepted(runtime, benefits.insert().values(**benefit_row(runtime, "good")))
    refused(runtime, benefits.update().where(b.code == "good").values(**over), constraint)
    for fine in ({"points_price": None}, {"cancel_hours": 0}, {"fulfilment": "partner", "partner": "telecom"}):
        accepted(runtime, benefits.update().where(b.code == "good").values(**fine))


@pytest.mark.parametrize(
    "values",
    [
        {"status": "issued", "member_id": None, "redemption_id": None},
        {"status": "issued", "member_id": "m1", "redemption_id": None},
        {"status": "issued", "member_id": None, "redemption_id": "r1"},
        {"status": "available", "member_id": "m1", "redemption_id": "r1"},
        {"status": "available", "member_id": None, "redemption_id": "r1"},
    ],
)
def test_a_voucher_codes_state_matches_its_redemption(runtime, ledger_rows, values):
    def code(code_id: str, **state: Any) -> Any:
        return voucher_codes.insert().values(
            benefit_code="b1",
            id=code_id,
            digest=code_id,
            secret="sealed",  # noqa: S106  (a stand-in for ciphertext: the checks are about the state)
            uploaded_at=runtime.now(),
            **state,
        )

    refused(runtime, code("c1", **values), "ck_voucher_codes_issued_to_a_redemption")
    accepted(runtime, code("c2", status="available", member_id=None, redemption_id=None))
    accepted(runtime, code("c3", status="issued", member_id="m1", redemption_id="r1", issued_at=runtime.now()))


# --- the migration -------------------------------------------------------------------------------------


def previous_revision() -> str:
    """The revision the constraints follow (``down_revision``, whatever the branch it was merged onto)."""
    return before(REVISION)


def downgrade(rt: Runtime, revision: str) -> None:
    migrate.downgrade(rt.engine, revision)


def counts(rt: Runtime) -> dict[str, int]:
    with transaction(rt.engine, readonly=True) as conn:
        names = sa.inspect(conn).get_table_names()
        return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in names}  # noqa: S608


def version(rt: Runtime) -> str:
    with transaction(rt.engine, readonly=True) as conn:
        return str(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one())


@pytest.mark.committed  # migrations run in transactions of their own
def test_the_migration_adds_the_constraints_to_a_database_that_holds_data(runtime, client, clock, tmp_path: Path):
    """Data of every kind the new keys and checks cover, written by the engine, then the schema taken
    back below the migration (the releases after it need their own tables to write at all), satisfies
    them; on SQLite the tables other rows point at are rebuilt all the same."""
    now = runtime.now()
    with transaction(runtime.engine) as conn:
        install_default(conn, runtime.programme.ladder.codes, actor="test", now=now)
        box = codes.CodeBox(TEST_SECRET_KEY)
        codes.add_codes(conn, box, "starter-gift-pack", ["GIFT-0001", "GIFT-0002", "GIFT-0003"], now=now)
    for member_id in ("m1", "m2"):
        assert client.post("/v1/members", json={"member_id": member_id}).status_code == 201
    assert client.post("/v1/transactions", json=txn("t1", "m1", 200_000)).status_code == 201
    assert client.post("/v1/transactions", json=txn("t2", "m1", 5_000, type="bill_payment")).status_code == 201
    refund = client.post("/v1/transactions/t1/reversals", json={"reversal_id": "rf1", "amount": 10_000})
    assert refund.status_code == 201
    settlement = tmp_path / "settlement.csv"
    settlement.write_text(
        "transaction_id,member_id,type,amount,currency,occurred_at,channel,mcc,merchant\n"
        f"i1,m2,card_purchase,90000,CNY,{(now - dt.timedelta(hours=2)).isoformat()},pos,5411,\n"
        f"i2,m2,transfer,100,CNY,{(now - dt.timedelta(hours=2)).isoformat()},,,\n",
        encoding="utf-8",
    )
    summary = importer.import_file(runtime, settlement, rejects_path=tmp_path / "rejects.csv", progress=False)
    assert summary.posted == 2

    def redeem(redemption_id: str, benefit_code: str, **extra: Any) -> dict[str, Any]:
        body = {"redemption_id": redemption_id, "member_id": "m1", "benefit_code": benefit_code, **extra}
        r = client.post("/v1/redemptions", json=body)
        assert r.status_code == 201, r.get_json()
        return r.get_json()  # type: ignore[no-any-return]

    redeem("r1", "starter-gift-pack")  # a code issued, points held, then captured by settlement
    redeem("r2", "phone-credit-10", delivery={"phone_number": "13800138000"})  # pending with its partner
    assert (
        client.post(
            "/v1/redemptions", json={"redemption_id": "r3", "member_id": "m2", "benefit_code": "starter-gift-pack"}
        ).status_code
        == 201
    )
    assert client.post("/v1/redemptions/r3/cancel").status_code == 200  # code back in the pool, hold voided
    clock.advance(hours=25)
    assert settle(runtime, clock.now).rows == 1
    with transaction(runtime.engine, readonly=True) as conn:
        resolved = conn.execute(sa.select(holds.c.status).where(holds.c.resolution_entry_id.is_not(None))).scalars()
        assert sorted(resolved) == ["captured", "voided"]
        assert json.loads(conn.execute(sa.select(redemptions.c.delivery).where(redemptions.c.id == "r2")).scalar_one())
    downgrade(runtime, previous_revision())
    before = counts(runtime)

    upgrade(runtime.engine)

    assert version(runtime) == head_revision()
    after = counts(runtime)
    assert {t: after[t] for t in before} == before  # tables of later migrations come empty
    with transaction(runtime.engine, readonly=True) as conn:
        outcomes = verify.run(conn)
        assert all(o.ok for o in outcomes), verify.report(outcomes)
        inspector = sa.inspect(conn)
        keys = {fk["name"] for t in ("transactions", "holds", "redemptions") for fk in inspector.get_foreign_keys(t)}
        if not is_postgres(conn):
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1  # enforced again after the migration
    assert {
        "fk_transactions_member_id_entry_id_entry_keys",  # since 0021 an entry's key is named
        "fk_holds_member_id_resolution_entry_id_entry_keys",
        "fk_redemptions_member_id_hold_id_holds",
    } <= keys


@pytest.mark.committed
def test_the_migration_refuses_a_database_whose_rows_name_entries_that_do_not_exist(runtime, ledger_rows):
    """Such rows cannot come from the engine; if a database has them anyway, the migration says so and
    changes nothing, rather than leave a key the rows break."""
    previous = previous_revision()
    downgrade(runtime, previous)
    accepted(runtime, a_transaction("m1", "dangling", str(uuid.uuid4())))
    with pytest.raises((sa.exc.IntegrityError, RuntimeError), match="foreign key"):
        upgrade(runtime.engine)
    assert version(runtime) == previous
    with transaction(runtime.engine, readonly=True) as conn:
        assert "fk_transactions_member_id_entry_id_journal_entries" not in {
            fk["name"] for fk in sa.inspect(conn).get_foreign_keys("transactions")
        }
        conn.execute(transactions.delete().where(transactions.c.transaction_id == "dangling"))
    upgrade(runtime.engine)
    assert version(runtime) == head_revision()

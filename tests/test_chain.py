"""The journal's hash chain: every way of booking seals its entries, ``loyalty verify`` recomputes
the chains and names the entry an edit behind the application's back broke, and the migration
seals a journal that was there before it exactly as the bookings would have."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from loyalty import migrate
from loyalty.accrual import importer
from loyalty.accrual import service as accrual
from loyalty.accrual.service import ReversalCommand, TransactionCommand
from loyalty.db import chain_link, transaction
from loyalty.ledger import chain, verify
from loyalty.ledger import service as ledger
from loyalty.ledger.models import ENTRY_KINDS, entry_keys, journal_entries, member_accounts, postings
from loyalty.members import service as members
from loyalty.members.service import Enrolment
from loyalty.records.models import members as member_rows
from loyalty.runtime import Runtime
from rules import Award
from tests.helpers import before, revision_named
from tests.test_verify import behind_the_back, build_healthy_ledger, run_verify_cli

REDEEMED = "redeemed:unspecified"
REVISION = revision_named("journal_hash_chain")


# --- the hash itself ---------------------------------------------------------------------------


def entry(**over: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    at = dt.datetime(2026, 6, 15, 10, 0, 0, 123456, tzinfo=dt.UTC)
    e = {
        "member_id": "m1",
        "id": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
        "kind": "adjustment",
        "source_ref": "adj-1",
        "points": 10,
        "posted_at": at,
        "occurred_at": None,
        "transaction_id": None,
        "related_entry_id": None,
        "programme_version": None,
        "memo": "goodwill",
    }
    e.update(over)
    lines = [
        {"line": 1, "account": "member", "amount": 10, "rule_id": None, "posted_at": at},
        {"line": 2, "account": "adjustments", "amount": -10, "rule_id": None, "posted_at": at},
    ]
    return e, lines


def test_every_field_of_an_entry_and_of_its_postings_is_in_its_digest():
    e, lines = entry()
    digest = chain.entry_digest(e, lines)
    changed = {
        "member_id": "m2",
        "id": "1b4e28ba-2fa1-11d2-883f-0016d3cca428",
        "kind": "bonus",
        "source_ref": "adj-2",
        "points": 11,
        "posted_at": e["posted_at"] + dt.timedelta(microseconds=1),
        "occurred_at": e["posted_at"],
        "transaction_id": "t1",
        "related_entry_id": e["id"],
        "programme_version": "v1",
        "memo": "goodwill!",
    }
    assert set(changed) == set(chain.ENTRY_FIELDS)
    for name, value in changed.items():
        assert chain.entry_digest({**e, name: value}, lines) != digest, name
    for name, value in {"line": 3, "account": "issued:bank", "amount": 9, "rule_id": "r", "posted_at": None}.items():
        assert name in chain.POSTING_FIELDS
        edited = [{**lines[0], name: value}, lines[1]]
        assert chain.entry_digest(e, edited) != digest, name
    assert chain.entry_digest(e, lines[:1]) != digest
    # the same entry, whatever the form its values come back from a database in
    shanghai = dt.timezone(dt.timedelta(hours=8))
    same = {**e, "id": e["id"].replace("-", ""), "posted_at": e["posted_at"].astimezone(shanghai)}
    assert chain.entry_digest(same, list(reversed(lines))) == digest


def test_no_two_contents_share_an_encoding():
    """Each value is prefixed by its length, so moving characters between fields changes the digest."""
    e, lines = entry()
    assert chain.entry_digest({**e, "source_ref": "ab", "memo": "c"}, lines) != chain.entry_digest(
        {**e, "source_ref": "a", "memo": "bc"}, lines
    )
    assert chain.entry_digest({**e, "memo": None}, lines) != chain.entry_digest({**e, "memo": "~"}, lines)
    assert chain.entry_digest({**e, "memo": None}, lines) != chain.entry_digest({**e, "memo": ""}, lines)


@pytest.mark.parametrize(("prev", "seq", "balance"), [(None, 1, 500), (b"\x07" * 32, 2**31 - 1, -(2**40))])
def test_the_database_links_the_chain_as_python_does(runtime, prev, seq, balance):
    """The link a booking's UPDATE computes (SQLite: the function each connection gets; PostgreSQL:
    its own sha256) is the link ``verify`` and the importer compute."""
    digest = hashlib.sha256(b"an entry").digest()
    with transaction(runtime.engine, readonly=True) as conn:
        linked = conn.execute(
            sa.select(
                chain.next_head(
                    sa.literal(prev, sa.LargeBinary), sa.literal(digest, sa.LargeBinary), sa.literal(seq), balance
                )
            )
        ).scalar_one()
    assert bytes(linked) == chain_link(prev, digest, seq, balance)
    expected = hashlib.sha256(
        (prev or b"") + digest + seq.to_bytes(8, "big", signed=True) + balance.to_bytes(8, "big", signed=True)
    )
    assert bytes(linked) == expected.digest()


# --- every way of booking seals ----------------------------------------------------------------


def book_every_kind(rt: Runtime, tmp_path: Path) -> None:
    """Every kind of entry, each way it is written: the API's services, the import (COPY on
    PostgreSQL), the expiry of one member."""
    now = rt.now()

    def tx(**kw: Any) -> Any:
        return transaction(rt.engine, **kw)

    with tx() as conn:
        for m in ("m1", "m2", "m3"):
            members.enrol(conn, Enrolment(m), programme=rt.programme, now=now)  # bonus
    with tx() as conn:
        cmd = TransactionCommand("t1", "m1", "card_purchase", 80_000, "CNY", now - dt.timedelta(hours=1))
        assert accrual.record_transaction(conn, cmd, programme=rt.programme, now=now).created  # accrual
    with tx() as conn:
        accrual.reverse(conn, ReversalCommand("t1", "r1", 20_000), policy="negative", now=now)  # reversal
    with tx() as conn:
        ledger.hold(conn, "m1", "h1", 100, capture_account=REDEEMED, now=now)  # hold
        ledger.capture(conn, "m1", "h1", now=now)  # capture
        ledger.hold(conn, "m1", "h2", 40, capture_account=REDEEMED, now=now)
        ledger.void(conn, "m1", "h2", now=now)  # void
        ledger.hold(conn, "m1", "h3", 30, capture_account=REDEEMED, now=now)  # stays pending
        ledger.spend(conn, "m1", "s1", 25, account=REDEEMED, now=now)  # capture without a hold
    with tx() as conn:
        expires = now + dt.timedelta(days=365)
        ledger.adjust(conn, "m2", 70, source_ref="adj-1", reason="goodwill: 积分补偿", expires_at=expires, now=now)
        ledger.adjust(conn, "m2", -20, source_ref="adj-2", reason="duplicate credit", expires_at=expires, now=now)
    with tx() as conn:  # m2 spends, a refund takes more than is left, and the next points pay the debt
        cmd = TransactionCommand("t2", "m2", "card_purchase", 30_000, "CNY", now - dt.timedelta(hours=1))
        accrual.record_transaction(conn, cmd, programme=rt.programme, now=now)
        ledger.spend(conn, "m2", "s2", 800, account=REDEEMED, now=now)
        accrual.reverse(conn, ReversalCommand("t2", "r2", 30_000), policy="negative", now=now)
    with tx() as conn:  # expiry, member by member
        award = Award("bonus-test", 33, "bank", False, "a lot that has lapsed")
        past = now - dt.timedelta(days=1)
        ledger.accrue(conn, "m3", [award], kind="bonus", source_ref="b1", earned_at=past, expires_at=past, now=now)
        assert ledger.expire(conn, "m3", as_of=now, now=now) is not None
    settlement = tmp_path / "settlement.csv"
    when = (now - dt.timedelta(hours=2)).isoformat()
    settlement.write_text(
        "transaction_id,member_id,type,amount,currency,occurred_at,channel,mcc,merchant\n"
        + "".join(f"i{i},m{i % 3 + 1},card_purchase,{1000 * (i + 1)},CNY,{when},pos,5411,\n" for i in range(7)),
        encoding="utf-8",
    )
    summary = importer.import_file(rt, settlement, rejects_path=tmp_path / "rejects.csv", chunk_size=3, progress=False)
    assert summary.posted == 7


def assert_sealed(rt: Runtime) -> None:
    """Every entry has its hash, each account's head is its last entry's, and ``verify``
    recomputes every chain to them."""
    je, ma = journal_entries.c, member_accounts.c
    with transaction(rt.engine, readonly=True) as conn:
        assert conn.execute(sa.select(sa.func.count()).where(je.chain_hash.is_(None))).scalar_one() == 0
        last = sa.select(je.chain_hash).where(je.member_id == ma.member_id).order_by(je.seq.desc()).limit(1)
        heads = conn.execute(sa.select(ma.member_id, ma.chain_head, last.scalar_subquery().label("last"))).all()
        assert heads and all(r.chain_head == r.last for r in heads), heads
        outcomes = {o.check.name: o for o in verify.run(conn)}
    assert all(o.ok for o in outcomes.values()), verify.report(list(outcomes.values()))
    assert outcomes["hash_chain"].note == ""


def test_every_kind_of_entry_is_sealed_on_its_members_chain(runtime, tmp_path):
    book_every_kind(runtime, tmp_path)
    with transaction(runtime.engine, readonly=True) as conn:
        kinds = set(conn.execute(sa.select(journal_entries.c.kind).distinct()).scalars())
        sources = set(conn.execute(sa.select(journal_entries.c.source_ref)).scalars())
    assert kinds == set(ENTRY_KINDS)
    assert {"i0", "s1", "adj-1", "expiry:3"} <= sources
    assert_sealed(runtime)


@pytest.mark.postgres_only
def test_the_set_based_expiry_seals_as_the_member_by_member_one(runtime):
    now = runtime.now()
    past = now - dt.timedelta(days=1)
    ids = [f"x{i}" for i in range(12)]
    with transaction(runtime.engine) as conn:
        for i, member_id in enumerate(ids):
            members.enrol(conn, Enrolment(member_id), programme=runtime.programme, now=now)
            lots = [Award("bonus-test", 10 + i, "bank", False, "lapsed"), Award("bonus-test", 5, "bank", True, "too")]
            ledger.accrue(
                conn, member_id, lots, kind="bonus", source_ref="b1", earned_at=past, expires_at=past, now=now
            )
            if i % 3 == 0:
                ledger.hold(conn, member_id, f"h{i}", 12, capture_account=REDEEMED, now=now)
        posted = ledger.expire_members(conn, ids, as_of=now, now=now)
    assert len(posted) == len(ids)
    assert_sealed(runtime)


# --- verify names what was changed behind the application's back --------------------------------


def the_entry(rt: Runtime, member_id: str, kind: str, source_ref: str) -> tuple[int, str]:
    je = journal_entries.c
    with transaction(rt.engine, readonly=True) as conn:
        row = conn.execute(
            sa.select(je.seq, je.id).where(je.member_id == member_id, je.kind == kind, je.source_ref == source_ref)
        ).one()
    return int(row.seq), str(row.id)


def chain_failures(output: str) -> list[dict[str, str]]:
    """The examples ``verify`` prints under the hash chain's FAIL line."""
    block = output.split("FAIL hash_chain:", 1)[1].splitlines()[1:]
    found = []
    for line in block:
        if not line.startswith("       "):
            break
        found.append(dict(re.findall(r"(\w+)=(.*?)(?:, (?=\w+=)|$)", line.strip())))
    return found


@pytest.fixture
def healthy(runtime: Runtime) -> Runtime:
    build_healthy_ledger(runtime)
    return runtime


TAMPERING = {
    "a posting's amount": (
        "UPDATE postings SET amount = amount - 1 WHERE member_id = 'm1' AND account = 'issued:bank' AND entry_id = :id",
        "its postings sum to -1",
    ),
    "an entry's balance_after": (
        "UPDATE journal_entries SET balance_after = balance_after + 1 WHERE member_id = 'm1' AND id = :id",
        "balance_after",
    ),
    "an entry's business date": (
        "UPDATE journal_entries SET occurred_at = posted_at WHERE member_id = 'm1' AND id = :id",
        "its content, postings, seq or balance_after changed",
    ),
    "an entry's hash": (
        "UPDATE journal_entries SET chain_hash = member_accounts.chain_head FROM member_accounts "
        "WHERE member_accounts.member_id = 'm1' AND journal_entries.member_id = 'm1' AND journal_entries.id = :id",
        "does not match its hash",
    ),
}


@pytest.mark.parametrize("what", list(TAMPERING))
@pytest.mark.committed
def test_verify_names_the_entry_an_edit_broke(healthy, database_url, what):
    sql, why = TAMPERING[what]
    seq, entry_id = the_entry(healthy, "m1", "accrual", "t1")
    with behind_the_back(database_url) as conn:
        assert conn.execute(sa.text(sql), {"id": _stored(database_url, entry_id)}).rowcount == 1
    run = run_verify_cli(database_url)
    assert run.exit_code == 1, run.output
    assert "hash_chain" in run.failed
    [broken] = chain_failures(run.output)
    assert (broken["member_id"], broken["seq"], broken["entry_id"]) == ("m1", str(seq), entry_id), run.output
    assert why in broken["problem"], run.output


@pytest.mark.committed
def test_deleting_a_members_last_entry_is_found_at_the_account_head(healthy, database_url):
    je = journal_entries.c
    with transaction(healthy.engine, readonly=True) as conn:
        last = conn.execute(sa.select(je.seq, je.id).where(je.member_id == "m2").order_by(je.seq.desc()).limit(2)).all()
    (count, gone), (seq, kept) = last
    with behind_the_back(database_url) as conn:
        for table, column in (("lot_consumptions", "entry_id"), ("postings", "entry_id"), ("journal_entries", "id")):
            delete = sa.text(f"DELETE FROM {table} WHERE member_id = 'm2' AND {column} = :id")  # noqa: S608
            conn.execute(delete, {"id": _stored(database_url, str(gone))})
    run = run_verify_cli(database_url)
    assert run.exit_code == 1
    [broken] = chain_failures(run.output)
    assert (broken["member_id"], broken["seq"], broken["entry_id"]) == ("m2", str(seq), str(kept)), run.output
    assert f"the account counts {count} entries, the journal holds entries up to seq {seq}" in broken["problem"]


@pytest.mark.committed
def test_deleting_an_entry_inside_a_chain_is_found_at_the_next(healthy, database_url):
    hold_seq, hold_id = the_entry(healthy, "m1", "hold", "h1")
    seq, entry_id = the_entry(healthy, "m1", "capture", "h1")
    with behind_the_back(database_url) as conn:
        for table, column in (("lot_consumptions", "entry_id"), ("postings", "entry_id"), ("journal_entries", "id")):
            delete = sa.text(f"DELETE FROM {table} WHERE member_id = 'm1' AND {column} = :id")  # noqa: S608
            conn.execute(delete, {"id": _stored(database_url, hold_id)})
    run = run_verify_cli(database_url)
    [broken] = chain_failures(run.output)
    assert (broken["seq"], broken["entry_id"]) == (str(seq), entry_id), run.output
    assert f"it follows seq {hold_seq - 1}: an entry before it is missing" in broken["problem"]


@pytest.mark.committed
def test_an_entry_posted_without_a_hash_is_outside_the_chain_and_erasing_one_does_not_hide_an_edit(
    healthy, database_url
):
    """A release before the chain posts entries without a hash while the upgrade rolls out; the
    chain passes over them. Erasing a sealed entry's hash to pass an edit off as such an entry
    breaks the link of the entry after it."""
    rt = healthy
    now = rt.now()
    with transaction(rt.engine) as conn:  # what the previous release writes: no hash, the head left as it was
        ma = member_accounts.c
        balance, seq = conn.execute(
            member_accounts.update()
            .where(ma.member_id == "m2")
            .values(entry_seq=ma.entry_seq + 1)
            .returning(ma.balance, ma.entry_seq)
        ).one()
        lines = [ledger.Line("adjustments", 5), ledger.Line("issued:bank", -5)]
        old, rows = ledger.entry_rows(
            member_id="m2", entry_id=ledger.new_id(), kind="adjustment", source_ref="old-1", lines=lines, now=now
        )
        old.update(seq=seq, balance_after=balance)
        conn.execute(entry_keys.insert(), ledger.key_row(old))
        conn.execute(journal_entries.insert(), old)
        conn.execute(postings.insert(), rows)
    with transaction(rt.engine) as conn:  # ... and what this one writes after it
        ledger.adjust(conn, "m2", 100, source_ref="new-1", reason="after the upgrade", expires_at=now, now=now)
    run = run_verify_cli(database_url)
    assert run.exit_code == 0, run.output
    assert "(1 entries posted without a hash, by a release before the chain, are outside it)" in run.output

    seq, entry_id = the_entry(rt, "m1", "reversal", "r1")
    with behind_the_back(database_url) as conn:
        conn.execute(
            sa.text(
                "UPDATE journal_entries SET chain_hash = NULL, memo = 'nothing to see' "
                "WHERE member_id = 'm1' AND id = :id"
            ),
            {"id": _stored(database_url, entry_id)},
        )
    run = run_verify_cli(database_url)
    assert run.exit_code == 1
    [broken] = chain_failures(run.output)
    assert (broken["member_id"], broken["seq"]) == ("m1", str(seq + 1)), run.output


def _stored(database_url: str, entry_id: str) -> str:
    """An entry id as raw SQL finds it: SQLite stores 32 hex digits."""
    return entry_id.replace("-", "") if database_url.startswith("sqlite") else entry_id


# --- the migration ------------------------------------------------------------------------------


@pytest.mark.committed  # migrations run in transactions of their own
def test_the_migration_seals_every_chain_as_the_bookings_did(runtime, tmp_path):
    """A journal written at head, taken below the migration (the hashes go) and brought back: the
    migration seals each chain to the very hashes the bookings gave it, so it verifies clean."""
    book_every_kind(runtime, tmp_path)
    with transaction(runtime.engine) as conn:  # and an account without entries
        conn.execute(member_rows.insert().values(member_id="m5", enrolled_at=runtime.now(), created_at=runtime.now()))
        conn.execute(member_accounts.insert().values(member_id="m5"))

    je, ma = journal_entries.c, member_accounts.c

    def sealed() -> tuple[dict[tuple[str, int], bytes], dict[str, bytes | None]]:
        with transaction(runtime.engine, readonly=True) as conn:
            rows = conn.execute(sa.select(je.member_id, je.seq, je.chain_hash))
            hashes = {(r.member_id, r.seq): r.chain_hash for r in rows}
            heads = dict(conn.execute(sa.select(ma.member_id, ma.chain_head)).all())
        return hashes, heads

    hashes, heads = sealed()
    assert len(hashes) > 20 and heads["m5"] is None and all(hashes.values())
    migrate.downgrade(runtime.engine, before(REVISION))
    with transaction(runtime.engine, readonly=True) as conn:
        assert "chain_hash" not in {c["name"] for c in sa.inspect(conn).get_columns("journal_entries")}
        assert "chain_head" not in {c["name"] for c in sa.inspect(conn).get_columns("member_accounts")}
    migrate.upgrade(runtime.engine)
    assert sealed() == (hashes, heads)
    assert_sealed(runtime)
    # the journal is append-only again
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), transaction(runtime.engine) as conn:
        conn.execute(sa.text("UPDATE journal_entries SET memo = 'x'"))

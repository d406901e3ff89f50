"""Bulk accrual from a bank's end-of-day settlement file.

The file is CSV with a header row and the columns of ``POST /v1/transactions``:
``transaction_id,member_id,type,amount,currency,occurred_at,channel,mcc,merchant``
(the last three may be empty). Rows are booked in chunks, each chunk one
database transaction of set-based statements. Each transaction id posts at
most once, so a re-run, or a run resumed after a crash, posts nothing twice.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty import Runtime
from loyalty.accrual.models import idempotency_keys, transactions
from loyalty.accrual.service import TransactionCommand, request_hash
from loyalty.api.schemas import load_transaction
from loyalty.db import insert_ignore, is_postgres, transaction
from loyalty.errors import LoyaltyError
from loyalty.ledger.models import journal_entries, lot_consumptions, member_accounts, point_lots, postings
from loyalty.ledger.service import accrual_rows, new_id
from rules import Award, Programme, evaluate

COLUMNS = ("transaction_id", "member_id", "type", "amount", "currency", "occurred_at", "channel", "mcc", "merchant")
OPTIONAL = ("channel", "mcc", "merchant")


@dataclass
class Summary:
    posted: int = 0
    replayed: int = 0
    rejected: int = 0


@dataclass
class _Row:
    line: int
    raw: dict[str, str]
    cmd: TransactionCommand
    digest: str
    awards: list[Award] = field(default_factory=list)
    entry_id: str | None = None


def parse_row(raw: dict[str, str], now: dt.datetime) -> TransactionCommand:
    """Validate one CSV row with the API's own schema."""
    data: dict[str, Any] = {k: raw.get(k) for k in COLUMNS}
    for key in OPTIONAL:
        if not data[key]:
            data[key] = None
    amount = data["amount"] or ""
    data["amount"] = int(amount) if amount.lstrip("-").isdigit() else amount
    return load_transaction(data, now)


def import_file(
    rt: Runtime, path: Path, *, rejects_path: Path, chunk_size: int = 5000, progress: bool = True
) -> Summary:
    summary = Summary()
    with path.open(newline="", encoding="utf-8") as f:
        total = max(0, sum(1 for _ in f) - 1)
    with path.open(newline="", encoding="utf-8") as f, rejects_path.open("w", newline="", encoding="utf-8") as rej:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise click.UsageError(f"{path}: the header lacks {', '.join(missing)}")
        rejects = csv.writer(rej)
        rejects.writerow(["line", *COLUMNS, "reason"])
        bar = click.progressbar(length=total, label="importing", file=None if progress else io.StringIO())
        with bar:
            for chunk in _chunks(reader, chunk_size):
                _import_chunk(rt, chunk, summary, rejects)
                bar.update(len(chunk))
    if summary.rejected == 0:
        rejects_path.unlink()
    return summary


def _chunks(reader: csv.DictReader[str], size: int) -> Iterator[list[tuple[int, dict[str, str]]]]:
    chunk: list[tuple[int, dict[str, str]]] = []
    for row in reader:
        chunk.append((reader.line_num, row))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _reject(rejects: Any, summary: Summary, line: int, raw: dict[str, str], reason: str) -> None:
    summary.rejected += 1
    rejects.writerow([line, *(raw.get(c, "") for c in COLUMNS), reason])


def _import_chunk(rt: Runtime, chunk: list[tuple[int, dict[str, str]]], summary: Summary, rejects: Any) -> None:
    now = rt.now()
    rows: dict[str, _Row] = {}
    for line, raw in chunk:
        try:
            cmd = parse_row(raw, now)
        except LoyaltyError as exc:
            _reject(rejects, summary, line, raw, exc.detail)
            continue
        digest = request_hash(cmd.facts())
        seen = rows.get(cmd.transaction_id)
        if seen is not None:
            if seen.digest == digest:
                summary.replayed += 1
            else:
                _reject(rejects, summary, line, raw, "transaction_id repeated in the file with different fields")
            continue
        rows[cmd.transaction_id] = _Row(line, raw, cmd, digest)
    if not rows:
        return
    with transaction(rt.engine) as conn:
        known = _lock_members(conn, {r.cmd.member_id for r in rows.values()})
        for key, row in list(rows.items()):
            if row.cmd.member_id not in known:
                _reject(rejects, summary, row.line, row.raw, f"member {row.cmd.member_id!r} is not enrolled")
                del rows[key]
        for row in rows.values():
            row.awards = sorted(evaluate(rt.programme, "transaction", row.cmd.facts()), key=lambda a: a.rule_id)
            row.entry_id = new_id() if row.awards else None
        claimed = _claim(conn, list(rows.values()), now)
        taken = [k for k in rows if k not in claimed]
        existing = _existing_hashes(conn, taken)
        for key in taken:
            row = rows.pop(key)
            if existing.get(key) == row.digest:
                summary.replayed += 1
            else:
                _reject(rejects, summary, row.line, row.raw, "transaction_id already booked with different fields")
        if rows:
            _book(conn, list(rows.values()), rt.programme, now)
            summary.posted += len(rows)


def _lock_members(conn: Connection, member_ids: set[str]) -> set[str]:
    """Lock the chunk's members' accounts in a fixed order, so concurrent
    imports and API requests cannot deadlock; returns the ones that exist."""
    ma = member_accounts.c
    found: set[str] = set()
    ids = sorted(member_ids)
    for i in range(0, len(ids), 1000):
        q = sa.select(ma.member_id).where(ma.member_id.in_(ids[i : i + 1000])).order_by(ma.member_id)
        if is_postgres(conn):
            q = q.with_for_update()
        found.update(conn.execute(q).scalars())
    return found


def _claim(conn: Connection, rows: Sequence[_Row], now: dt.datetime) -> set[str]:
    """Claim each row's transaction id; returns the ids this chunk claimed."""
    claimed: set[str] = set()
    for i in range(0, len(rows), 1000):
        part = rows[i : i + 1000]
        result = conn.execute(
            insert_ignore(conn, idempotency_keys)
            .values(
                [
                    {
                        "scope": "transaction",
                        "key": r.cmd.transaction_id,
                        "request_hash": r.digest,
                        "member_id": r.cmd.member_id,
                        "entry_id": r.entry_id,
                        "created_at": now,
                    }
                    for r in part
                ]
            )
            .returning(idempotency_keys.c.key)
        )
        claimed.update(result.scalars())
    return claimed


def _existing_hashes(conn: Connection, keys: list[str]) -> dict[str, str]:
    ik = idempotency_keys.c
    found: dict[str, str] = {}
    for i in range(0, len(keys), 1000):
        q = sa.select(ik.key, ik.request_hash).where(ik.scope == "transaction", ik.key.in_(keys[i : i + 1000]))
        found.update((r.key, r.request_hash) for r in conn.execute(q))
    return found


def _book(conn: Connection, rows: Sequence[_Row], programme: Programme, now: dt.datetime) -> None:
    """Post every row: one balance update per member, then bulk inserts."""
    per_member: dict[str, list[_Row]] = defaultdict(list)
    for r in rows:
        per_member[r.cmd.member_id].append(r)
    ma = member_accounts.c
    deltas = {
        m: {"m": m, "delta": sum(a.points for r in rs for a in r.awards), "n": sum(1 for r in rs if r.awards)}
        for m, rs in per_member.items()
    }
    conn.execute(
        sa.update(member_accounts)
        .where(ma.member_id == sa.bindparam("m"))
        .values(
            balance=ma.balance + sa.bindparam("delta"),
            entry_seq=ma.entry_seq + sa.bindparam("n"),
            last_activity_at=now,
        ),
        list(deltas.values()),
    )
    state = {
        r.member_id: (int(r.balance), int(r.entry_seq))
        for r in conn.execute(
            sa.select(ma.member_id, ma.balance, ma.entry_seq).where(ma.member_id.in_(list(per_member)))
        )
    }
    txn_rows, entries, posting_rows, lots, consumptions = [], [], [], [], []
    for m, rs in per_member.items():
        final_balance, final_seq = state[m]
        balance = final_balance - int(deltas[m]["delta"])  # type: ignore[call-overload]
        seq = final_seq - int(deltas[m]["n"])  # type: ignore[call-overload]
        for r in rs:
            points = sum(a.points for a in r.awards)
            if r.awards:
                balance += points
                seq += 1
                built = accrual_rows(
                    m,
                    r.awards,
                    entry_id=r.entry_id,  # type: ignore[arg-type]
                    seq=seq,
                    balance_after=balance,
                    kind="accrual",
                    source_ref=r.cmd.transaction_id,
                    earned_at=r.cmd.occurred_at,
                    expiry_months=programme.expiry_months,
                    now=now,
                    transaction_id=r.cmd.transaction_id,
                    programme_version=programme.version,
                )
                entries.append(built.entry)
                posting_rows.extend(built.postings)
                lots.extend(built.lots)
                consumptions.extend(built.consumptions)
            txn_rows.append(
                {
                    **r.cmd.facts(),
                    "points": points,
                    "reversed_amount": 0,
                    "reversed_points": 0,
                    "entry_id": r.entry_id,
                    "balance_after": balance,
                    "programme_version": programme.version,
                    "received_at": now,
                }
            )
    for table, data in (
        (transactions, txn_rows),
        (journal_entries, entries),
        (postings, posting_rows),
        (point_lots, lots),
        (lot_consumptions, consumptions),
    ):
        bulk_insert(conn, table, data)


def bulk_insert(conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Insert many rows: ``COPY`` on PostgreSQL, ``executemany`` elsewhere."""
    if not rows:
        return
    if not is_postgres(conn):
        conn.execute(table.insert(), rows)
        return
    columns = list(rows[0])
    buf = io.StringIO()
    for row in rows:
        buf.write("\t".join(_copy_value(row[c]) for c in columns))
        buf.write("\n")
    buf.seek(0)
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.copy_expert(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN", buf)
    finally:
        cursor.close()


def _copy_value(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, dt.datetime):
        return value.isoformat()
    text = str(value)
    if any(ch in text for ch in "\\\t\n\r"):
        text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text

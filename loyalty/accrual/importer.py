"""Bulk accrual from a bank's end-of-day settlement file.

The file is CSV with a header row and the columns of ``POST /v1/transactions``:
``transaction_id,member_id,type,amount,currency,occurred_at,channel,mcc,merchant``
(the last three are optional: a file may leave their columns out, and a row
may leave them empty). Rows are booked in chunks, each chunk one database
transaction of set-based statements. Each transaction id posts at
most once, so a re-run, or a run resumed after a crash, posts nothing twice.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import queue
import re
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty import calendar
from loyalty.accrual.context import MemberHistory, aware
from loyalty.accrual.schemas import CURRENCIES, MAX_AMOUNT, RESERVED_TRANSACTION_IDS, load_transaction
from loyalty.accrual.service import TransactionCommand
from loyalty.db import insert_ignore, is_postgres, transaction
from loyalty.errors import LoyaltyError
from loyalty.events.models import events
from loyalty.idempotency import idempotency_keys, request_hash
from loyalty.ledger.models import entry_keys, journal_entries, lot_consumptions, member_accounts, point_lots, postings
from loyalty.ledger.service import accrual_rows, check_open, key_row, lot_expiry, new_id
from loyalty.records.models import TRANSACTION_TYPES, member_profiles, members, transactions
from loyalty.runtime import Runtime
from loyalty.tiers import service as tiers
from loyalty.validation import CLOCK_SKEW
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
    programme: Programme = field(default=None)  # type: ignore[assignment]
    #: the member's tier when the row was evaluated (its points' expiry policy)
    tier: str | None = None
    #: the member's balance right after the row is booked, held points included
    balance: int = 0


def parse_row(raw: dict[str, str], now: dt.datetime) -> TransactionCommand:
    """Validate one CSV row exactly as the API validates a transaction.

    The common case, a plainly valid row, takes a fast path whose checks are
    each at least as strict as the API schema's; any row it does not accept
    goes through the API schema itself, which accepts it or says why not.
    """
    cmd = _fast_row(raw, now)
    if cmd is not None:
        return cmd
    data: dict[str, Any] = {k: raw.get(k) for k in COLUMNS}
    for key in OPTIONAL:
        if not data[key]:
            data[key] = None
    amount = data["amount"] or ""
    data["amount"] = int(amount) if amount.lstrip("-").isdigit() else amount
    return load_transaction(data, now)


_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})")
_TYPES = frozenset(TRANSACTION_TYPES)


def _fast_row(raw: dict[str, str], now: dt.datetime) -> TransactionCommand | None:
    tid, member, kind, amount, currency, when = (raw.get(c) or "" for c in COLUMNS[:6])
    channel, mcc, merchant = (raw.get(c) or None for c in OPTIONAL)
    if not (_ID.fullmatch(tid) and _ID.fullmatch(member) and kind in _TYPES and currency in CURRENCIES):
        return None
    if tid in RESERVED_TRANSACTION_IDS:
        return None
    if not (amount.isdigit() and 1 <= int(amount) <= MAX_AMOUNT and _TIMESTAMP.fullmatch(when)):
        return None
    if (
        (channel and len(channel) > 32)
        or (mcc and not (len(mcc) == 4 and mcc.isdigit()))
        or (merchant and len(merchant) > 128)
    ):
        return None
    occurred_at = dt.datetime.fromisoformat(when).astimezone(dt.UTC)
    if occurred_at > now + CLOCK_SKEW:
        return None
    return TransactionCommand(tid, member, kind, int(amount), currency, occurred_at, channel, mcc, merchant)


def import_file(
    rt: Runtime, path: Path, *, rejects_path: Path, chunk_size: int = 5000, progress: bool = True
) -> Summary:
    summary = Summary()
    with path.open(newline="", encoding="utf-8") as f:
        total = max(0, sum(1 for _ in f) - 1)
    with path.open(newline="", encoding="utf-8") as f, rejects_path.open("w", newline="", encoding="utf-8") as rej:
        reader = csv.DictReader(f)
        # An optional column may be left out of the file, as an optional field may be left out of a request.
        missing = [c for c in COLUMNS if c not in OPTIONAL and c not in (reader.fieldnames or [])]
        if missing:
            raise click.UsageError(f"{path}: the header lacks {', '.join(missing)}")
        rejects = csv.writer(rej)
        rejects.writerow(["line", *COLUMNS, "reason"])
        bar = click.progressbar(length=total, label="importing", file=None if progress else io.StringIO())
        with bar:
            states: dict[str, _MemberState] = {}
            for parsed in _parsed_ahead(rt, chunks(reader, chunk_size)):
                _import_chunk(rt, parsed, summary, rejects, states)
                bar.update(parsed.size)
    if summary.rejected == 0:
        rejects_path.unlink()
    return summary


def chunks(reader: csv.DictReader[str], size: int) -> Iterator[list[tuple[int, dict[str, str]]]]:
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


class _MemberState(MemberHistory):
    """What rules need to know of one member, kept for the whole run.

    Loaded from the database the first time the member appears, then kept
    up to date in memory as the run books their transactions. It is reloaded
    whenever the member's account shows a write the run did not make (the
    entry counter or last activity moved), so concurrent API traffic is seen.
    """

    def __init__(self, account: Any, since: dt.datetime) -> None:
        super().__init__(account.birth_date, account.enrolled_at, account.tier, account.products_held)
        self.since = since  # history before this is not loaded
        self.version: tuple[int, Any] = (-1, None)


@dataclass
class _Parsed:
    """A chunk once parsed: its rows by transaction id, and what parsing refused or found repeated."""

    size: int
    now: dt.datetime
    rows: dict[str, _Row] = field(default_factory=dict)
    #: (line, row, reason) of rows refused, in file order
    refused: list[tuple[int, dict[str, str], str]] = field(default_factory=list)
    #: rows repeated in the chunk with the same fields
    repeated: int = 0


def _parse_chunk(chunk: list[tuple[int, dict[str, str]]], now: dt.datetime) -> _Parsed:
    """Validate and digest a chunk's rows: the Python work that needs no database."""
    parsed = _Parsed(len(chunk), now)
    rows = parsed.rows
    for line, raw in chunk:
        try:
            cmd = parse_row(raw, now)
        except LoyaltyError as exc:
            parsed.refused.append((line, raw, exc.detail))
            continue
        digest = request_hash(cmd.facts())
        seen = rows.get(cmd.transaction_id)
        if seen is not None:
            if seen.digest == digest:
                parsed.repeated += 1
            else:
                parsed.refused.append((line, raw, "transaction_id repeated in the file with different fields"))
            continue
        rows[cmd.transaction_id] = _Row(line, raw, cmd, digest)
    return parsed


_DONE = object()


def _parsed_ahead(rt: Runtime, source: Iterator[list[tuple[int, dict[str, str]]]]) -> Iterator[_Parsed]:
    """The chunks of ``source``, parsed one chunk ahead in a thread of their own: the next chunk
    is read and validated while this one's statements run in the database (which releases the
    interpreter while it waits), so the two overlap."""
    ahead: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in source:
                item = _parse_chunk(chunk, rt.now())
                while not stop.is_set():
                    try:
                        ahead.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ahead.put(_DONE)
        except BaseException as exc:  # handed to the consumer, which raises it
            ahead.put(exc)

    worker = threading.Thread(target=produce, name="import-parser", daemon=True)
    worker.start()
    try:
        while True:
            item = ahead.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def _import_chunk(
    rt: Runtime,
    parsed: _Parsed,
    summary: Summary,
    rejects: Any,
    states: dict[str, _MemberState],
) -> None:
    now = parsed.now
    for line, raw, reason in parsed.refused:
        _reject(rejects, summary, line, raw, reason)
    summary.replayed += parsed.repeated
    rows = parsed.rows
    if not rows:
        return
    with transaction(rt.engine) as conn:
        accounts = _lock_members(conn, {r.cmd.member_id for r in rows.values()})
        for key, row in list(rows.items()):
            if row.cmd.member_id not in accounts:
                _reject(rejects, summary, row.line, row.raw, f"member {row.cmd.member_id!r} is not enrolled")
                del rows[key]
            else:
                try:
                    row.programme = rt.programmes.at(row.cmd.occurred_at)
                except LoyaltyError as exc:
                    _reject(rejects, summary, row.line, row.raw, exc.detail)
                    del rows[key]
        for row in rows.values():
            row.entry_id = new_id()
        claimed = _claim(conn, list(rows.values()), now)
        taken = [k for k in rows if k not in claimed]
        existing = _existing_hashes(conn, taken)
        for key in taken:
            row = rows.pop(key)
            if existing.get(key) == row.digest:
                summary.replayed += 1
            else:
                _reject(rejects, summary, row.line, row.raw, "transaction_id already booked with different fields")
        if not rows:
            return
        _refresh_states(conn, states, accounts, rows.values())
        for row in rows.values():
            state = states[row.cmd.member_id]
            facts, used = state.facts(row.cmd, row.programme)
            row.awards = evaluate(row.programme, "transaction", facts, used)
            row.tier = facts["tier"]
            state.book(row.cmd, row.programme, row.awards)
        nothing = [r.cmd.transaction_id for r in rows.values() if not r.awards]
        for i in range(0, len(nothing), 1000):
            ik = idempotency_keys.c
            conn.execute(
                sa.update(idempotency_keys)
                .where(ik.scope == "transaction", ik.key.in_(nothing[i : i + 1000]))
                .values(entry_id=None)
            )
        for r in rows.values():
            if not r.awards:
                r.entry_id = None
        versions = _book(conn, list(rows.values()), accounts, now)
        for member_id, version in versions.items():
            states[member_id].version = version
        _after_booking(conn, list(rows.values()), programme=rt.programme, now=now)
        summary.posted += len(rows)


def _lock_members(conn: Connection, member_ids: set[str]) -> dict[str, sa.Row[Any]]:
    """Lock the chunk's members' accounts in a fixed order, so concurrent
    imports and API requests cannot deadlock; returns the ones that exist."""
    ma, m = member_accounts.c, members.c
    found: dict[str, sa.Row[Any]] = {}
    ids = sorted(member_ids)
    for i in range(0, len(ids), 1000):
        q = (
            sa.select(
                ma.member_id,
                ma.entry_seq,
                ma.balance,
                ma.chain_head,
                ma.last_activity_at,
                m.birth_date,
                m.enrolled_at,
                m.tier,
                member_profiles.c.products_held,
            )
            .join(members, m.member_id == ma.member_id)
            .outerjoin(member_profiles, member_profiles.c.member_id == ma.member_id)
            .where(ma.member_id.in_(ids[i : i + 1000]))
            .order_by(ma.member_id)
        )
        if is_postgres(conn):
            q = q.with_for_update(of=[member_accounts, members], key_share=True)
        found.update((r.member_id, r) for r in conn.execute(q))
    return found


def _refresh_states(
    conn: Connection, states: dict[str, _MemberState], accounts: dict[str, sa.Row[Any]], rows: Any
) -> None:
    """(Re)load the state of members that are new to the run, were written by
    someone else since, or have rows older than their loaded history."""
    earliest: dict[str, dt.datetime] = {}
    for r in rows:
        month0 = calendar.month(r.cmd.occurred_at, r.programme.zone).start
        m = r.cmd.member_id
        earliest[m] = min(earliest.get(m, month0), month0)
    stale = []
    for m, since in earliest.items():
        acc = accounts[m]
        state = states.get(m)
        if state is not None:  # an upgrade or a profile update may have moved these since
            state.tier, state.products = acc.tier, acc.products_held
        if state is None or state.version != (acc.entry_seq, acc.last_activity_at) or since < state.since:
            states[m] = _MemberState(acc, since)
            states[m].version = (acc.entry_seq, acc.last_activity_at)
            stale.append(m)
    if not stale:
        return
    t, pl = transactions.c, point_lots.c
    zone_of = {r.cmd.member_id: r.programme.zone for r in rows}
    for i in range(0, len(stale), 1000):
        part = stale[i : i + 1000]
        since = min(states[m].since for m in part)
        for member_id, txn_type, last in conn.execute(
            sa.select(t.member_id, t.type, sa.func.max(t.occurred_at))
            .where(t.member_id.in_(part))
            .group_by(t.member_id, t.type)
        ):
            state = states[member_id]
            state.types.add(txn_type)
            last = aware(last)
            if state.last is None or last > state.last:
                state.last = last
        for member_id, occurred_at in conn.execute(
            sa.select(t.member_id, t.occurred_at).where(t.member_id.in_(part), t.occurred_at >= since)
        ):
            state = states[member_id]
            state.months[calendar.month(occurred_at, zone_of[member_id]).start] += 1
        for member_id, rule_id, earned_at, original in conn.execute(
            sa.select(pl.member_id, pl.rule_id, pl.earned_at, pl.original).where(
                pl.member_id.in_(part), pl.earned_at >= since
            )
        ):
            states[member_id].earned(rule_id, int(original), earned_at, zone_of[member_id])


def _claim(conn: Connection, rows: Sequence[_Row], now: dt.datetime) -> set[str]:
    """Claim each row's transaction id; returns the ids this chunk claimed."""
    params = [
        {
            "scope": "transaction",
            "key": r.cmd.transaction_id,
            "request_hash": r.digest,
            "member_id": r.cmd.member_id,
            "entry_id": r.entry_id,
            "created_at": now,
        }
        for r in rows
    ]
    if is_postgres(conn):
        claimed = _execute_values(
            conn,
            "INSERT INTO idempotency_keys (scope, key, request_hash, member_id, entry_id, created_at) "
            "VALUES %s ON CONFLICT DO NOTHING RETURNING key",
            [tuple(p.values()) for p in params],
            "(%s, %s, %s, %s, %s::uuid, %s::timestamptz)",
        )
        return {key for (key,) in claimed}
    # executemany with RETURNING: SQLAlchemy batches it into multi-row INSERTs.
    stmt = insert_ignore(conn, idempotency_keys).returning(idempotency_keys.c.key)
    return set(conn.execute(stmt, params).scalars())


def _existing_hashes(conn: Connection, keys: list[str]) -> dict[str, str]:
    ik = idempotency_keys.c
    found: dict[str, str] = {}
    for i in range(0, len(keys), 1000):
        q = sa.select(ik.key, ik.request_hash).where(ik.scope == "transaction", ik.key.in_(keys[i : i + 1000]))
        found.update((r.key, r.request_hash) for r in conn.execute(q))
    return found


def _book(
    conn: Connection, rows: Sequence[_Row], accounts: dict[str, sa.Row[Any]], now: dt.datetime
) -> dict[str, tuple[int, Any]]:
    """Post every row: one balance update per member, then bulk inserts.

    Each member's entries are numbered, balanced and sealed on its hash chain from its account as
    :func:`_lock_members` read it (the lock keeps it so); the update moves the account to where
    they leave it. Returns each member's account version (entry counter, last activity) after."""
    per_member: dict[str, list[_Row]] = defaultdict(list)
    for r in rows:
        per_member[r.cmd.member_id].append(r)
    entries, posting_rows, lots, consumptions = [], [], [], []
    moves: list[dict[str, Any]] = []
    #: each row's member account balance after it
    after: dict[str, int] = {}
    for m, rs in per_member.items():
        account = accounts[m]
        balance, seq, head = int(account.balance), int(account.entry_seq), account.chain_head
        for r in rs:
            if r.awards:
                balance += sum(a.points for a in r.awards)
                seq += 1
                built = accrual_rows(
                    m,
                    r.awards,
                    entry_id=r.entry_id,  # type: ignore[arg-type]
                    seq=seq,
                    balance_after=balance,
                    prev_hash=head,
                    kind="accrual",
                    source_ref=r.cmd.transaction_id,
                    earned_at=r.cmd.occurred_at,
                    expires_at=lot_expiry(r.programme, r.cmd.occurred_at, r.tier),
                    now=now,
                    transaction_id=r.cmd.transaction_id,
                    programme_version=r.programme.version,
                )
                head = built.entry["chain_hash"]
                entries.append(built.entry)
                posting_rows.extend(built.postings)
                lots.extend(built.lots)
                consumptions.extend(built.consumptions)
            after[r.cmd.transaction_id] = balance
        moves.append(
            {
                "m": m,
                "delta": balance - int(account.balance),
                "n": seq - int(account.entry_seq),
                "head": head,
                "balance": balance,
                "seq": seq,
            }
        )
    state = _move_balances(conn, moves, now)
    for move in moves:
        balance, _held, seq = state[move["m"]]
        if (balance, seq) != (move["balance"], move["seq"]):
            raise RuntimeError(f"member {move['m']!r}'s account moved while this import held its lock")
    txn_rows = []
    for r in rows:
        # The member account's balance leaves held points out; the transaction shows the member's.
        r.balance = after[r.cmd.transaction_id] + state[r.cmd.member_id][1]
        txn_rows.append(
            {
                **r.cmd.facts(),
                "points": sum(a.points for a in r.awards),
                "reversed_amount": 0,
                "reversed_points": 0,
                "entry_id": r.entry_id,
                "balance_after": r.balance,
                "programme_version": r.programme.version,
                "received_at": now,
            }
        )
    if entries:
        check_open(conn, now)
    # Keys before their entries, entries before the transactions that name them: the foreign keys
    # are checked row by row.
    for table, data in (
        (entry_keys, [key_row(e) for e in entries]),
        (journal_entries, entries),
        (postings, posting_rows),
        (point_lots, lots),
        (lot_consumptions, consumptions),
        (transactions, txn_rows),
    ):
        bulk_insert(conn, table, data)
    return {m: (seq, now) for m, (_balance, _held, seq) in state.items()}


def _after_booking(conn: Connection, rows: Sequence[_Row], *, programme: Programme, now: dt.datetime) -> None:
    """What the API does after each booking, for the whole chunk at once: the events of
    the points accrued, the members' first and latest transactions, upgrades, stages."""
    accrued = [
        {
            "type": "points.accrued",
            "member_id": r.cmd.member_id,
            "payload": json.dumps(
                {
                    "transaction_id": r.cmd.transaction_id,
                    "entry_id": r.entry_id,
                    "points": sum(a.points for a in r.awards),
                    "balance": r.balance,
                    "rules": [a.rule_id for a in r.awards],
                },
                sort_keys=True,
            ),
            "occurred_at": now,
        }
        for r in rows
        if r.awards
    ]
    bulk_insert(conn, events, accrued)
    spans: dict[str, list[dt.datetime]] = {}
    for r in rows:
        span = spans.setdefault(r.cmd.member_id, [r.cmd.occurred_at, r.cmd.occurred_at])
        span[0], span[1] = min(span[0], r.cmd.occurred_at), max(span[1], r.cmd.occurred_at)
    m = members.c
    if is_postgres(conn):
        # One statement for the chunk: an executemany of UPDATEs is a round trip per member.
        _execute_values(
            conn,
            "UPDATE members AS m SET first_transaction_at = CASE WHEN m.first_transaction_at IS NULL"
            " OR m.first_transaction_at > v.lo THEN v.lo ELSE m.first_transaction_at END,"
            " last_transaction_at = CASE WHEN m.last_transaction_at IS NULL OR m.last_transaction_at < v.hi"
            " THEN v.hi ELSE m.last_transaction_at END"
            " FROM (VALUES %s) AS v(member_id, lo, hi) WHERE m.member_id = v.member_id",
            [(member_id, lo, hi) for member_id, (lo, hi) in spans.items()],
            "(%s, %s::timestamptz, %s::timestamptz)",
        )
    else:
        _update_spans(conn, spans)
    touched = sorted(spans)
    tiers.reassess_members(conn, touched, programme=programme, now=now)
    tiers.apply_stages(conn, m.member_id.in_(touched), programme=programme, as_of=now, now=now, source="event")


def _execute_values(conn: Connection, sql: str, values: list[tuple[Any, ...]], template: str) -> list[Any]:
    """PostgreSQL: ``sql`` with ``VALUES %s`` filled with every tuple of ``values``, in one round trip."""
    from psycopg2.extras import execute_values

    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        fetch = "RETURNING" in sql
        return execute_values(cursor, sql, values, template=template, page_size=len(values), fetch=fetch) or []
    finally:
        cursor.close()


def _update_spans(conn: Connection, spans: dict[str, list[dt.datetime]]) -> None:
    m = members.c
    first, last = (
        sa.bindparam("first", type_=m.first_transaction_at.type),
        sa.bindparam("last", type_=m.last_transaction_at.type),
    )
    conn.execute(
        sa.update(members)
        .where(m.member_id == sa.bindparam("m"))
        .values(
            first_transaction_at=sa.case(
                (sa.or_(m.first_transaction_at.is_(None), m.first_transaction_at > first), first),
                else_=m.first_transaction_at,
            ),
            last_transaction_at=sa.case(
                (sa.or_(m.last_transaction_at.is_(None), m.last_transaction_at < last), last),
                else_=m.last_transaction_at,
            ),
        ),
        [{"m": member_id, "first": lo, "last": hi} for member_id, (lo, hi) in spans.items()],
    )


def _move_balances(conn: Connection, deltas: list[dict[str, Any]], now: dt.datetime) -> dict[str, tuple[int, int, int]]:
    """Add each member's points and entry count and set its chain head, in one statement; returns
    ``member -> (balance, held, entry_seq)`` after. The rows are locked already."""
    ma = member_accounts.c
    if is_postgres(conn):
        rows = _execute_values(
            conn,
            "UPDATE member_accounts AS a SET balance = a.balance + v.delta, entry_seq = a.entry_seq + v.n, "
            "chain_head = v.head, last_activity_at = v.at FROM (VALUES %s) AS v(member_id, delta, n, head, at) "
            "WHERE a.member_id = v.member_id RETURNING a.member_id, a.balance, a.held, a.entry_seq",
            [(d["m"], d["delta"], d["n"], d["head"], now) for d in deltas],
            "(%s, %s::bigint, %s::integer, %s::bytea, %s::timestamptz)",
        )
        return {m: (int(balance), int(held), int(seq)) for m, balance, held, seq in rows}
    conn.execute(
        sa.update(member_accounts)
        .where(ma.member_id == sa.bindparam("m"))
        .values(
            balance=ma.balance + sa.bindparam("delta"),
            entry_seq=ma.entry_seq + sa.bindparam("n"),
            chain_head=sa.bindparam("head", type_=ma.chain_head.type),
            last_activity_at=now,
        ),
        deltas,
    )
    found = conn.execute(
        sa.select(ma.member_id, ma.balance, ma.held, ma.entry_seq).where(ma.member_id.in_([d["m"] for d in deltas]))
    )
    return {r.member_id: (int(r.balance), int(r.held), int(r.entry_seq)) for r in found}


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
    kind = type(value)
    if kind is int:
        return str(value)
    if kind is bool:
        return "t" if value else "f"
    if kind is dt.datetime:
        return value.isoformat()  # type: ignore[no-any-return]
    if kind is bytes:
        return "\\\\x" + value.hex()  # bytea's hex form, its backslash escaped for COPY
    text = str(value)
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text

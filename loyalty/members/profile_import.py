"""Bulk member profiles from the bank's monthly asset snapshot.

The file is CSV in UTF-8 (a byte-order mark is allowed) with a header row naming the columns
``member_id,as_of,aum,profit_contribution,products_held,birth_date,occupation,region,preferred_channel,risk_profile``;
``products_held`` separates products with ``|`` and an empty cell means the
snapshot does not say, leaving the stored value as it is. Each row is
validated exactly as ``PUT /v1/members/{member_id}/profile`` validates an
update, except that ``as_of`` is required.

Rows are stored in chunks, each one database transaction: a multi-row upsert
that overwrites a profile only when the row's ``as_of`` is newer than the
stored one, or the same with different values. Running a file again, or
again after a crash part-way, therefore changes nothing already stored and
stores the rest. After each chunk the members whose profile changed are
reassessed for a tier upgrade, in the chunk's transaction.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa
from marshmallow import ValidationError as MarshmallowError
from sqlalchemy.engine import Connection

from loyalty.accrual.importer import chunks
from loyalty.db import is_postgres, transaction
from loyalty.errors import LoyaltyError, ValidationError
from loyalty.ledger.models import member_accounts
from loyalty.members.profiles import PROFILE_FIELDS, ProfileUpdate, column_values, local_today, profile_insert
from loyalty.members.schemas import load_profile
from loyalty.records.models import member_profiles, members
from loyalty.runtime import Runtime
from loyalty.tiers.service import reassess_members
from loyalty.validation import ID

COLUMNS = (
    "member_id",
    "as_of",
    "aum",
    "profit_contribution",
    "products_held",
    "birth_date",
    "occupation",
    "region",
    "preferred_channel",
    "risk_profile",
)
INTEGERS = frozenset({"aum", "profit_contribution"})
PRODUCT_SEPARATOR = "|"
_INTEGER = re.compile(r"-?[0-9]{1,30}")
#: Members per ``IN (...)`` list.
_BATCH = 1000


@dataclass
class Summary:
    read: int = 0
    upserted: int = 0
    unchanged: int = 0
    #: rows older than the stored profile, left alone
    stale: int = 0
    rejected: int = 0


@dataclass(frozen=True)
class _Row:
    line: int
    member_id: str
    cmd: ProfileUpdate


def parse_row(raw: dict[str, str], today: dt.date) -> tuple[str, ProfileUpdate]:
    """Validate one CSV row; raises :class:`ValidationError` naming every bad field."""
    errors: dict[str, list[str]] = {}
    member_id = raw.get("member_id") or ""
    try:
        ID(member_id)
    except MarshmallowError as exc:
        errors["member_id"] = list(exc.messages)
    data: dict[str, Any] = {}
    for name in COLUMNS[1:]:
        cell = raw.get(name) or ""
        if not cell:
            continue
        if name in INTEGERS:
            data[name] = int(cell) if _INTEGER.fullmatch(cell) else cell
        elif name == "products_held":
            data[name] = cell.split(PRODUCT_SEPARATOR)
        else:
            data[name] = cell
    if "as_of" not in data:
        errors["as_of"] = ["is required in a snapshot row"]
    try:
        cmd = load_profile(data, today)
    except ValidationError as exc:
        errors.update(exc.errors)
    if errors:
        raise ValidationError(errors)
    return member_id, cmd


def import_file(
    rt: Runtime, path: Path, *, rejects_path: Path, chunk_size: int = 5000, progress: bool = True
) -> Summary:
    """Load a snapshot file; rejected rows go to ``rejects_path`` (removed if there are none).

    A chunk that fails (the database refuses it, no programme is in force) stops
    the run with a :class:`click.ClickException`; the chunks before it stay stored.
    """
    summary = Summary()
    with path.open(newline="", encoding="utf-8-sig") as f:
        total = max(0, sum(1 for _ in f) - 1)
    with path.open(newline="", encoding="utf-8-sig") as f, rejects_path.open("w", newline="", encoding="utf-8") as rej:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise click.UsageError(f"{path}: the header lacks {', '.join(missing)}")
        rejects = csv.writer(rej)
        rejects.writerow(["line", "member_id", "reason"])
        bar = click.progressbar(length=total, label="importing", file=None if progress else io.StringIO())
        with bar:
            for chunk in chunks(reader, chunk_size):
                try:
                    refused = _import_chunk(rt, chunk, summary)
                except (sa.exc.SQLAlchemyError, LoyaltyError) as exc:
                    reason = exc.detail if isinstance(exc, LoyaltyError) else getattr(exc, "orig", None) or exc
                    raise click.ClickException(
                        f"the chunk starting on line {chunk[0][0]} failed and was rolled back: {reason}. "
                        f"The {summary.read} rows before it are done; run the command again to finish "
                        "(rows already stored count as unchanged)."
                    ) from None
                rejects.writerows(refused)
                bar.update(len(chunk))
    if summary.rejected == 0:
        rejects_path.unlink()
    return summary


def _import_chunk(rt: Runtime, chunk: list[tuple[int, dict[str, str]]], summary: Summary) -> list[list[Any]]:
    """Store one chunk in one transaction; returns its rejects (line, member_id, reason).

    ``summary`` is only updated once the chunk has committed."""
    now = rt.now()
    programme = rt.programme
    today = local_today(now, programme.zone)
    refused: list[list[Any]] = []
    rows: list[_Row] = []
    for line, raw in chunk:
        try:
            member_id, cmd = parse_row(raw, today)
        except ValidationError as exc:
            refused.append([line, raw.get("member_id") or "", exc.detail])
            continue
        rows.append(_Row(line, member_id, cmd))
    counts = Counter[str]()
    with transaction(rt.engine) as conn:
        enrolled = _lock_members(conn, {r.member_id for r in rows})
        for r in rows:
            if r.member_id not in enrolled:
                refused.append([r.line, r.member_id, f"member {r.member_id!r} is not enrolled"])
        changed: set[str] = set()
        for wave in _waves([r for r in rows if r.member_id in enrolled]):
            changed |= _store(conn, wave, now, counts)
        if changed:
            reassess_members(conn, sorted(changed), programme=programme, now=now)
    summary.read += len(chunk)
    summary.upserted += counts["upserted"]
    summary.unchanged += counts["unchanged"]
    summary.stale += counts["stale"]
    summary.rejected += len(refused)
    return sorted(refused, key=lambda r: int(r[0]))


def _lock_members(conn: Connection, member_ids: set[str]) -> set[str]:
    """Lock the members' account and member rows in member id order, with the
    lock and in the order bookings, imports and tier jobs take them, so none
    waits on another in a cycle; returns the members that exist."""
    m, ma = members.c, member_accounts.c
    ids = sorted(member_ids)
    found: set[str] = set()
    for i in range(0, len(ids), _BATCH):
        q = (
            sa.select(m.member_id)
            .join(member_accounts, ma.member_id == m.member_id)
            .where(m.member_id.in_(ids[i : i + _BATCH]))
            .order_by(m.member_id)
            .with_for_update(of=[member_accounts, members], key_share=True)
        )
        found.update(conn.execute(q).scalars())
    return found


def _waves(rows: list[_Row]) -> Iterator[list[_Row]]:
    """Split rows so no member appears twice in a wave: each member's first row
    in the first wave, their second in the second, and so on. Stored wave by
    wave, a member's rows apply in file order, as they would one at a time."""
    waves: list[list[_Row]] = []
    seen = Counter[str]()
    for r in rows:
        n = seen[r.member_id]
        seen[r.member_id] += 1
        if n == len(waves):
            waves.append([])
        waves[n].append(r)
    yield from waves


def _upsert(conn: Connection) -> Any:
    """Insert a profile, or update it when the row is newer than the stored one
    or as recent with different values; a column the row leaves empty keeps its
    stored value. Returns the members whose profile was written."""
    mp = member_profiles.c
    insert = profile_insert(conn)
    new = insert.excluded
    differs = sa.or_(*[sa.and_(new[c].is_not(None), new[c].is_distinct_from(mp[c])) for c in PROFILE_FIELDS])
    return insert.on_conflict_do_update(
        index_elements=[mp.member_id],
        set_={
            **{c: sa.func.coalesce(new[c], mp[c]) for c in PROFILE_FIELDS},
            "as_of": new.as_of,
            "updated_at": new.updated_at,
        },
        where=sa.or_(mp.as_of.is_(None), new.as_of > mp.as_of, sa.and_(new.as_of == mp.as_of, differs)),
    ).returning(mp.member_id)


def _store(conn: Connection, wave: list[_Row], now: dt.datetime, counts: Counter[str]) -> set[str]:
    """Upsert one wave of rows (one per member) and apply their birth dates.

    Returns the members whose profile or birth date changed."""
    params = [
        {
            "member_id": r.member_id,
            **dict.fromkeys(PROFILE_FIELDS),
            **column_values(r.cmd.changes),
            "as_of": r.cmd.as_of,
            "updated_at": now,
        }
        for r in wave
    ]
    written = set(conn.execute(_upsert(conn), params).scalars())
    # The members are locked, so these are the values the upsert compared against.
    m, mp = members.c, member_profiles.c
    stored: dict[str, Any] = {}
    ids = [r.member_id for r in wave]
    for i in range(0, len(ids), _BATCH):
        q = (
            sa.select(m.member_id, m.birth_date, mp.as_of)
            .join(member_profiles, mp.member_id == m.member_id)
            .where(m.member_id.in_(ids[i : i + _BATCH]))
        )
        stored.update((row.member_id, row) for row in conn.execute(q))
    births: list[tuple[str, dt.date]] = []
    changed: set[str] = set()
    for r in wave:
        current = stored[r.member_id]
        if r.member_id not in written and current.as_of > r.cmd.as_of:
            counts["stale"] += 1
            continue
        birth: dt.date | None = r.cmd.changes.get("birth_date")
        if birth is not None and birth != current.birth_date:
            births.append((r.member_id, birth))
        elif r.member_id not in written:
            counts["unchanged"] += 1
            continue
        changed.add(r.member_id)
        counts["upserted"] += 1
    _set_birth_dates(conn, births)
    return changed


def _set_birth_dates(conn: Connection, births: list[tuple[str, dt.date]]) -> None:
    """Set members' birth dates: ``UPDATE ... FROM (VALUES ...)`` on PostgreSQL,
    one prepared statement run for every member on SQLite."""
    if not births:
        return
    m = members.c
    if not is_postgres(conn):
        conn.execute(
            sa.update(members).where(m.member_id == sa.bindparam("m")).values(birth_date=sa.bindparam("b")),
            [{"m": member_id, "b": birth} for member_id, birth in births],
        )
        return
    for i in range(0, len(births), _BATCH):
        new = sa.values(sa.column("m", sa.String), sa.column("b", sa.Date), name="new").data(births[i : i + _BATCH])
        conn.execute(sa.update(members).where(m.member_id == new.c.m).values(birth_date=new.c.b))

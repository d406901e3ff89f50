"""Voucher code pools. Codes are secrets: stored encrypted, found by a keyed digest, never logged.

A database dump alone reveals no code: ``secret`` is AES-GCM ciphertext under
a key derived from ``LOYALTY_SECRET_KEY``, and ``digest`` (an HMAC of the
benefit and the code under another derived key) only lets the engine refuse
a duplicate upload. A code is decrypted for one purpose: showing it to the
member who redeemed it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import re
import uuid
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.engine import Connection

from loyalty import logmask
from loyalty.catalogue.models import CODE_STATUSES, benefits, voucher_codes
from loyalty.db import insert_ignore, is_postgres
from loyalty.errors import ValidationError
from loyalty.events.service import emit


class CodeBox:
    """Encrypts, decrypts and digests codes under keys derived from one secret."""

    def __init__(self, secret: str) -> None:
        if len(secret) < 16:
            raise ValueError("LOYALTY_SECRET_KEY must be at least 16 characters")
        root = secret.encode()
        self._aead = AESGCM(hashlib.sha256(b"voucher-codes:encrypt:" + root).digest())
        self._mac = hashlib.sha256(b"voucher-codes:digest:" + root).digest()

    def digest(self, benefit_code: str, code: str) -> str:
        return hmac.new(self._mac, f"{benefit_code}\0{code}".encode(), hashlib.sha256).hexdigest()

    def seal(self, benefit_code: str, code: str) -> str:
        logmask.keep_out_of_logs(code)
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, code.encode(), benefit_code.encode())
        return base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, benefit_code: str, secret: str) -> str:
        raw = base64.urlsafe_b64decode(secret.encode())
        code = self._aead.decrypt(raw[:12], raw[12:], benefit_code.encode()).decode()
        logmask.keep_out_of_logs(code)
        return code


def add_codes(
    conn: Connection, box: CodeBox, benefit_code: str, codes: Iterable[str], *, now: dt.datetime
) -> tuple[int, int]:
    """Add codes to a benefit's pool; a code already in the pool (or twice in ``codes``) is
    refused. Returns ``(added, duplicates)``; the benefit's stock (its available codes) grows by ``added``.

    The codes take the pool's next positions in the order given, so they are issued after
    every code uploaded before them, and in the order of ``codes``."""
    b = benefits.c
    # Two uploads to one pool number their codes one after the other: the benefit's row is
    # locked first (on SQLite a writer has the whole database already).
    lock = sa.select(b.code).where(b.code == benefit_code)
    conn.execute(lock.with_for_update() if is_postgres(conn) else lock)
    position = last_position(conn, benefit_code)
    seen: set[str] = set()
    rows, duplicates = [], 0
    for code in codes:
        digest = box.digest(benefit_code, code)
        if digest in seen:
            duplicates += 1
            continue
        seen.add(digest)
        position += 1
        rows.append(
            {
                "benefit_code": benefit_code,
                "id": str(uuid.uuid4()),
                "digest": digest,
                "secret": box.seal(benefit_code, code),
                "status": "available",
                "uploaded_at": now,
                "position": position,
            }
        )
    added = 0
    for i in range(0, len(rows), 1000):
        part = rows[i : i + 1000]
        added += len(conn.execute(insert_ignore(conn, voucher_codes).returning(voucher_codes.c.id), part).all())
    duplicates += len(rows) - added
    return added, duplicates


def last_position(conn: Connection, benefit_code: str) -> int:
    """The highest position in a benefit's pool, 0 for an empty pool: the greater of the last
    available and the last issued code's, each read from the end of the index that picks codes."""
    vc = voucher_codes.c
    last = conn.execute(
        sa.select(
            *[
                sa.select(sa.func.max(vc.position))
                .where(vc.benefit_code == benefit_code, vc.status == status)
                .scalar_subquery()
                for status in CODE_STATUSES
            ]
        )
    ).one()
    return max((int(p) for p in last if p is not None), default=0)


def _take_statement(postgres: bool) -> sa.Update:
    vc = voucher_codes.c
    pick = (
        sa.select(vc.id)
        .where(vc.benefit_code == sa.bindparam("pool"), vc.status == "available")
        .order_by(vc.position)
        .limit(sa.bindparam("quantity", type_=sa.Integer))
    )
    chosen: Any = pick.scalar_subquery()
    if postgres:
        # Materialised, so it runs once: a subquery PostgreSQL re-runs per row would skip the codes
        # this statement has just taken and take more.
        picked = pick.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
        chosen = sa.select(picked.c.id)
    return (
        voucher_codes.update()
        .where(vc.benefit_code == sa.bindparam("pool"), vc.id.in_(chosen))
        .values(
            status="issued",
            member_id=sa.bindparam("to_member"),
            redemption_id=sa.bindparam("to_redemption"),
            issued_at=sa.bindparam("at", type_=vc.issued_at.type),
        )
        .returning(vc.position, vc.secret)
    )


#: Built once per dialect: PostgreSQL skips codes other redemptions are taking; SQLite has one writer.
TAKE = {True: _take_statement(True), False: _take_statement(False)}


def take_codes(
    conn: Connection,
    benefit_code: str,
    *,
    member_id: str,
    redemption_id: str,
    quantity: int,
    now: dt.datetime,
) -> list[str] | None:
    """Take ``quantity`` available codes for a redemption in one ``UPDATE ... RETURNING``; returns
    their sealed secrets in pool order, or ``None`` (and takes none) when the pool has fewer.

    The codes are the first available in upload order (:func:`add_codes`); a code given back
    by a cancellation keeps its place. Concurrent redemptions never get the same code, and never
    wait for each other: each skips the codes another is taking (``SKIP LOCKED``). So the pool is
    the stock, and no row every redemption of the benefit updates exists."""
    params = {
        "pool": benefit_code,
        "quantity": quantity,
        "to_member": member_id,
        "to_redemption": redemption_id,
        "at": now,
    }
    taken = sorted(conn.execute(TAKE[is_postgres(conn)], params).all())
    if len(taken) < quantity:
        return None
    return [secret for _, secret in taken]


def check_pool_low_stock(
    conn: Connection, benefit_code: str, *, threshold: int | None, taken: int, now: dt.datetime
) -> None:
    """Emit ``benefit.low_stock`` when a redemption that took ``taken`` codes brought the pool below
    ``threshold``. Counts at most ``threshold`` codes, however large the pool."""
    if threshold is None:
        return
    vc = voucher_codes.c
    some = (
        sa.select(vc.id).where(vc.benefit_code == benefit_code, vc.status == "available").limit(threshold).subquery()
    )
    left = int(conn.execute(sa.select(sa.func.count()).select_from(some)).scalar_one())
    check_low_stock(conn, benefit_code, before=left + taken, after=left, threshold=threshold, now=now)


def reveal(conn: Connection, box: CodeBox, benefit_code: str, *, member_id: str, redemption_id: str) -> list[str]:
    """The codes issued to this member for this redemption, decrypted."""
    vc = voucher_codes.c
    secrets = conn.execute(
        sa.select(vc.secret)
        .where(vc.benefit_code == benefit_code, vc.member_id == member_id, vc.redemption_id == redemption_id)
        .order_by(vc.issued_at, vc.position)
    ).scalars()
    return [box.open(benefit_code, s) for s in secrets]


def check_low_stock(
    conn: Connection, benefit_code: str, *, before: int, after: int, threshold: int | None, now: dt.datetime
) -> None:
    """Emit ``benefit.low_stock`` when a redemption took the stock from ``before`` to ``after``, below its threshold."""
    if threshold is not None and before >= threshold > after:
        emit(
            conn,
            "benefit.low_stock",
            member_id=None,
            payload={"benefit_code": benefit_code, "stock": after, "threshold": threshold},
            now=now,
        )


# --- code files ----------------------------------------------------------------------------------

#: a voucher code: 4 to 64 printable characters, none of them white space
MIN_CODE, MAX_CODE = 4, 64
#: bad lines named in one answer
MAX_LINE_ERRORS = 20

#: A line of a code file: blank, or one code between optional spaces and tabs. A code is 4 to 64
#: printable ASCII characters other than the space, ``,`` and ``"``: the file is CSV of one
#: column whose values never need quoting. ``openapi.yaml`` states the whole file as one pattern
#: (``CODE_FILE``); a test holds the two to the same answers.
LINE_BREAK = re.compile(r"\r?\n")
BLANK_LINE = re.compile(r"[ \t]*")
CODE_LINE = re.compile(rf"[ \t]*([!#-+\--~]{{{MIN_CODE},{MAX_CODE}}})[ \t]*")


def parse_codes(text: str) -> list[str]:
    """The codes of a file of one code a line, with an optional header line ``code`` first;
    blank lines are skipped. A bad line is named by its number, never by its content."""
    codes: list[str] = []
    errors: dict[str, list[str]] = {}
    first = True
    for number, line in enumerate(LINE_BREAK.split(text), start=1):
        if BLANK_LINE.fullmatch(line):
            continue
        header, first = first and line.strip(" \t") == "code", False
        if header:
            continue
        match = CODE_LINE.fullmatch(line)
        if match is not None:
            codes.append(match[1])
            continue
        errors[f"line {number}"] = [
            "has more than one column; send one code a line"
            if "," in line
            else f"a code is {MIN_CODE} to {MAX_CODE} printable ASCII characters other than spaces, commas and quotes"
        ]
        if len(errors) >= MAX_LINE_ERRORS:
            break
    if errors:
        raise ValidationError(errors)
    if not codes:
        raise ValidationError.one("body", "holds no codes")
    return codes

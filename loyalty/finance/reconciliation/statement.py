"""A partner's statement: what it says it delivered, read from CSV and checked line by line.

The file is UTF-8 (a byte-order mark is accepted), with a header line naming
the columns ``partner_reference``, ``redemption_id``, ``amount_fen`` and
``date``, in any order, each once and no others; blank lines are skipped.
Every bad line is refused naming it and its column (``line 7: amount_fen``),
and a statement with any bad line is refused whole.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import re
from collections.abc import Collection
from dataclasses import dataclass

from loyalty.errors import ValidationError

COLUMNS = ("partner_reference", "redemption_id", "amount_fen", "date")
#: Largest amount a line may hold (10^15 fen = 10 trillion CNY), as for every finance figure.
MAX_AMOUNT_FEN = 10**15
#: The longest partner reference the engine stores (``redemptions.partner_ref``).
MAX_REFERENCE = 128
#: Redemption ids are the ids orders were sent under: as ``POST /v1/redemptions`` accepts them.
REDEMPTION_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
AMOUNT = re.compile(r"[0-9]{1,16}")
DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
#: Bad lines named in one refusal; the rest are found once those are fixed.
MAX_ERRORS = 50


@dataclass(frozen=True)
class StatementLine:
    #: the line's number in the file (the header is line 1 unless blank lines precede it)
    line: int
    partner_reference: str
    redemption_id: str
    amount_fen: int
    #: the local date the partner says it delivered
    date: dt.date


@dataclass(frozen=True)
class Statement:
    """A statement that passed every check: the partner's, for a period of local dates."""

    partner: str
    #: the period, local dates, both included
    start: dt.date
    end: dt.date
    lines: tuple[StatementLine, ...]
    #: SHA-256 of the file as received
    sha256: str


def prepare(
    partner: str | None,
    data: bytes,
    *,
    known_partners: Collection[str],
    start: dt.date | None = None,
    end: dt.date | None = None,
) -> Statement:
    """Check everything about a statement before anything is stored: the partner (one of
    ``known_partners``), the period, and every line. Without ``start`` and ``end`` the period
    runs from the statement's earliest date to its latest; with them, every line must fall
    inside it. Raises :class:`ValidationError` naming the field or the lines."""
    if not partner:
        raise ValidationError.one("partner", "is required: the partner whose statement this is")
    if partner not in known_partners:
        listed = ", ".join(sorted(known_partners)) or "none"
        raise ValidationError.one("partner", f"{partner!r} is not a partner in LOYALTY_PARTNERS (partners: {listed})")
    if (start is None) != (end is None):
        missing = "to" if end is None else "from"
        raise ValidationError.one(missing, "give both from and to, or neither (the statement's own dates)")
    if start is not None and end is not None and end < start:
        raise ValidationError.one("to", "must not be before from")
    lines = parse(data)
    errors: dict[str, list[str]] = {}
    if start is not None and end is not None:
        period = f"{start.isoformat()} to {end.isoformat()}"
        for line in lines:
            if not start <= line.date <= end and len(errors) < MAX_ERRORS:
                errors[f"line {line.line}: date"] = [f"{line.date} is outside the statement's period {period}"]
    if errors:
        raise ValidationError(errors)
    if start is None or end is None:
        if not lines:
            raise ValidationError.one(
                "body", "holds no lines: give from and to to reconcile a period with no deliveries"
            )
        start, end = min(line.date for line in lines), max(line.date for line in lines)
    return Statement(partner, start, end, tuple(lines), hashlib.sha256(data).hexdigest())


def parse(data: bytes) -> list[StatementLine]:
    """The lines of a statement file, or a :class:`ValidationError` naming every bad line
    (up to :data:`MAX_ERRORS`)."""
    text = _decode(data)
    errors: dict[str, list[str]] = {}
    lines: list[StatementLine] = []
    header: list[str] | None = None
    seen: dict[str, int] = {}
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    end_of_previous = 0
    try:
        for row in reader:
            number, end_of_previous = end_of_previous + 1, reader.line_num
            cells = [c.strip() for c in row]
            if not any(cells):
                continue
            if header is None:
                header = _header(cells, number)
                continue
            line = _line(dict(zip(header, cells, strict=False)), len(cells), len(header), number, errors)
            if line is not None:
                first = seen.setdefault(line.redemption_id, number)
                if first != number:
                    errors[f"line {number}: redemption_id"] = [
                        f"repeats line {first}: a statement bills each redemption once"
                    ]
                else:
                    lines.append(line)
            if len(errors) >= MAX_ERRORS:
                break
    except csv.Error as exc:
        errors[f"line {end_of_previous + 1}"] = [f"is not valid CSV ({exc})"]
    if errors:
        raise ValidationError(errors)
    if header is None:
        raise ValidationError.one("line 1", f"the statement is empty: it needs the header {','.join(COLUMNS)}")
    return lines


def _decode(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ValidationError.one("line 1", "the statement is UTF-16; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValidationError.one(f"line {line}", "is not UTF-8 text; save the statement as UTF-8") from None


def _header(cells: list[str], number: int) -> list[str]:
    unknown = [c for c in cells if c not in COLUMNS]
    missing = [c for c in COLUMNS if c not in cells]
    repeated = sorted({c for c in cells if cells.count(c) > 1})
    problems = []
    if unknown:
        problems.append(f"unknown column(s) {', '.join(repr(c) for c in unknown)}")
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if repeated:
        problems.append(f"repeated {', '.join(repeated)}")
    if problems:
        raise ValidationError.one(
            f"line {number}",
            f"the header must name the columns {','.join(COLUMNS)} (any order, each once): {'; '.join(problems)}",
        )
    return cells


def _line(
    cells: dict[str, str], count: int, expected: int, number: int, errors: dict[str, list[str]]
) -> StatementLine | None:
    at = f"line {number}"
    if count != expected:
        errors[at] = [f"has {count} cells; the header has {expected}"]
        return None
    before = len(errors)
    reference = cells["partner_reference"]
    if not 1 <= len(reference) <= MAX_REFERENCE or not reference.isprintable():
        errors[f"{at}: partner_reference"] = [f"must be 1 to {MAX_REFERENCE} printable characters"]
    redemption_id = cells["redemption_id"]
    if not REDEMPTION_ID.fullmatch(redemption_id):
        errors[f"{at}: redemption_id"] = [
            "must be the redemption id the order was sent under: 1 to 64 letters, digits and . _ : -"
        ]
    amount = cells["amount_fen"]
    if not AMOUNT.fullmatch(amount) or int(amount) > MAX_AMOUNT_FEN:
        errors[f"{at}: amount_fen"] = [
            f"must be a whole number of fen from 0 to {MAX_AMOUNT_FEN} (985 for 9.85 CNY), not {amount[:20]!r}"
        ]
    date = _date(cells["date"])
    if date is None:
        errors[f"{at}: date"] = ["must be a local date YYYY-MM-DD"]
    if len(errors) > before or date is None:
        return None
    return StatementLine(number, reference, redemption_id, int(amount), date)


def _date(value: str) -> dt.date | None:
    if not DATE.fullmatch(value):
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        return None

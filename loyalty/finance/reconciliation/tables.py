"""Reconciliations as tables, for CSV and XLSX (:func:`loyalty.finance.export.render`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loyalty.finance.export import Table
from loyalty.finance.reconciliation.models import CATEGORIES

LINE_COLUMNS = (
    "category",
    "count",
    "redemption_id",
    "partner_reference",
    "statement_line",
    "statement_date",
    "statement_fen",
    "ours_fen",
    "difference_fen",
    "member_id",
    "benefit_code",
    "benefit_version",
    "quantity",
    "unit_cost_fen",
    "our_status",
    "our_reference",
    "fulfilled_on",
)


def reconciliation_table(report: dict[str, Any]) -> Table:
    """One row per line (``count`` 1), then a ``total <category>`` row per category and a ``total``
    row, whose ``count`` is the lines they sum."""
    rows: list[Sequence[Any]] = [
        tuple(1 if c == "count" else _cell(c, line.get(c)) for c in LINE_COLUMNS) for line in report["lines"]
    ]
    blank = ("",) * (len(LINE_COLUMNS) - 9)
    for category in CATEGORIES:
        f = report["categories"][category]
        rows.append(
            (f"total {category}", f["count"], "", "", "", "", f["statement_fen"], f["ours_fen"], f["difference_fen"])
            + blank
        )
    count = sum(report["categories"][c]["count"] for c in CATEGORIES)
    totals = (report["statement"]["total_fen"], report["ours"]["total_fen"], report["difference_fen"])
    rows.append(("total", count, "", "", "", "", *totals, *blank))
    return LINE_COLUMNS, rows


LIST_COLUMNS = (
    "reconciliation_id",
    "partner",
    "from",
    "to",
    "created_by",
    "created_at",
    "statement_lines",
    "statement_fen",
    "ours_redemptions",
    "ours_fen",
    "difference_fen",
    *(f"{c}_count" for c in CATEGORIES),
    *(f"{c}_difference_fen" for c in CATEGORIES),
    "references_differ",
    "reconciled",
)


def list_table(report: dict[str, Any]) -> Table:
    """One row per reconciliation, with its figures."""
    rows: list[Sequence[Any]] = []
    for r in report["reconciliations"]:
        rows.append(
            (
                r["reconciliation_id"],
                r["partner"],
                r["from"],
                r["to"],
                r["created_by"],
                r["created_at"],
                r["statement"]["lines"],
                r["statement"]["total_fen"],
                r["ours"]["redemptions"],
                r["ours"]["total_fen"],
                r["difference_fen"],
                *(r["categories"][c]["count"] for c in CATEGORIES),
                *(r["categories"][c]["difference_fen"] for c in CATEGORIES),
                r["references_differ"],
                "yes" if r["reconciled"] else "no",
            )
        )
    return LIST_COLUMNS, rows


#: Text a partner wrote: its statement's references, and the references its callbacks reported.
PARTNER_TEXT = ("partner_reference", "our_reference")
#: What a spreadsheet reads as the start of a formula.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(column: str, value: Any) -> Any:
    """A cell's value; partners' text that a spreadsheet would run as a formula is quoted with ``'``."""
    if value is None:
        return ""
    if column in PARTNER_TEXT and isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value

"""Reports as tables: the same figures as the JSON, for CSV and XLSX."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

FORMATS = ("json", "csv", "xlsx")
MEDIA_TYPES = {
    "json": "application/json",
    "csv": "text/csv",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}

Table = tuple[Sequence[str], list[Sequence[Any]]]


def trial_balance_table(report: dict[str, Any]) -> Table:
    rows: list[Sequence[Any]] = [(a["account"], a["kind"], a["balance"]) for a in report["accounts"]]
    rows.append(("total", "", report["total"]))
    return ("account", "kind", "balance"), rows


def rollforward_table(report: dict[str, Any]) -> Table:
    rows: list[Sequence[Any]] = [("opening", "", report["opening"])]
    rows.append(("earned", "", report["earned"]["total"]))
    rows += [("earned by funding source", k, v) for k, v in report["earned"]["by_funding_source"].items()]
    rows += [("earned by rule", k, v) for k, v in report["earned"]["by_rule"].items()]
    rows.append(("redeemed", "", report["redeemed"]["total"]))
    rows += [("redeemed by account", k, v) for k, v in report["redeemed"]["by_account"].items()]
    rows += [("expired", "", report["expired"]), ("reversed", "", report["reversed"])]
    rows += [("adjusted", "", report["adjusted"]), ("closing", "", report["closing"])]
    tie = report["tie_out"]
    rows += [
        ("closing from postings", "", tie["closing_from_postings"]),
        ("sum of member balances", "", tie["sum_of_member_balances"]),
    ]
    rows += [("difference", d.get("member_id") or d.get("what", ""), _difference(d)) for d in tie["differences"]]
    return ("line", "detail", "points"), rows


def liability_table(report: dict[str, Any]) -> Table:
    header = ("tier", "funding_source", "points", "point_value_fen", "redemption_rate", "liability_fen")
    inputs = {s["funding_source"]: s for s in report["by_funding_source"]}
    rows: list[Sequence[Any]] = [
        (
            c["tier"],
            c["funding_source"],
            c["points"],
            inputs[c["funding_source"]]["point_value_fen"],
            inputs[c["funding_source"]]["redemption_rate"],
            c["liability_fen"],
        )
        for c in report["cells"]
    ]
    rows.append(("total", "", report["total"]["points"], "", "", report["total"]["liability_fen"]))
    rows.append(("unfunded debt", "", report["unfunded_debt_points"], "", "", ""))
    return header, rows


def breakage_table(report: dict[str, Any]) -> Table:
    header = (
        "cohort",
        "issued",
        "redeemed",
        "expired",
        "reversed",
        "adjusted",
        "outstanding",
        "age_months",
        "expected_ultimate_redeemed",
        "cumulative_redeemed_by_age",
    )
    rows: list[Sequence[Any]] = [
        (
            c["cohort"],
            c["issued"],
            c["redeemed"],
            c["expired"],
            c["reversed"],
            c["adjusted"],
            c["outstanding"],
            c["age_months"],
            c["expected_ultimate_redeemed"],
            " ".join(str(n) for n in c["cumulative_redeemed_by_age"]),
        )
        for c in report["cohorts"]
    ]
    rows.append(("estimated ultimate redemption rate", report["estimate"]["ultimate_redemption_rate"] or ""))
    return header, rows


def recognition_table(report: dict[str, Any]) -> Table:
    keys = (
        "cohort",
        "allocated_fen",
        "cumulative_redeemed",
        "expected_total",
        "to_date_fen",
        "in_period_fen",
        "deferred_fen",
    )
    rows: list[Sequence[Any]] = [tuple(c[k] for k in keys) for c in report["cohorts"]]
    t = report["total"]
    rows.append(("total", t["allocated_fen"], "", "", t["to_date_fen"], t["in_period_fen"], t["deferred_fen"]))
    return keys, rows


def _difference(d: dict[str, Any]) -> int:
    if "member_id" in d:
        return int(d["balance"]) - int(d["postings"])
    return int(d["found"]) - int(d["expected"])


def render(table: Table, fmt: str, *, title: str) -> bytes:
    """The table as CSV (UTF-8) or as an XLSX workbook of one sheet."""
    header, rows = table
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return out.getvalue().encode("utf-8")
    if fmt == "xlsx":
        import xlsxwriter  # type: ignore[import-untyped]

        buffer = io.BytesIO()
        # text is text: a cell starting with "=" must never become a live formula
        book = xlsxwriter.Workbook(buffer, {"in_memory": True, "strings_to_formulas": False})
        sheet = book.add_worksheet(title[:31])
        sheet.write_row(0, 0, header)
        for i, row in enumerate(rows, start=1):
            sheet.write_row(i, 0, row)
        book.close()
        return buffer.getvalue()
    raise ValueError(f"unknown format {fmt!r}")

"""The dashboard: points issued, redeemed and expired per month, outstanding points and their
value, members by tier and stage, usage by tier, the latest job runs and what is failing."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import render_template, request
from flask_babel import gettext as _

from admin.core import bp, reading, roles, runtime, table_download, zone
from loyalty import calendar
from loyalty.auth.models import ROLES
from loyalty.events import webhooks
from loyalty.finance import liability, reports
from loyalty.jobs import runner
from loyalty.members import service as members
from loyalty.redemption import service as redemptions

MONTHS = 6
#: a redemption pending longer than this is stuck
STUCK = dt.timedelta(hours=1)


def months(now: dt.datetime, count: int) -> list[calendar.Period]:
    """The last ``count`` local months, oldest first, the current one last."""
    z = zone()
    first = calendar.add_months(calendar.month(now, z).start, -(count - 1), z)
    return [calendar.month(calendar.add_months(first, i, z), z) for i in range(count)]


def monthly(conn: Any, now: dt.datetime) -> list[list[Any]]:
    rt = runtime()
    rows = []
    for period in months(now, MONTHS):
        end = min(period.end, now)
        report = reports.rollforward(conn, start=period.start, end=end)
        value = liability.liability(
            conn,
            as_of=calendar.local_date(end - dt.timedelta(microseconds=1), zone()),
            zone=zone(),
            default_point_value=rt.settings.point_value_fen,
        )
        rows.append(
            [
                period.start.astimezone(zone()).strftime("%Y-%m"),
                report["earned"]["total"],
                report["redeemed"]["total"],
                report["expired"],
                report["closing"],
                value["total"]["liability_fen"],
            ]
        )
    return rows


@bp.get("/")
@roles(*ROLES)
def dashboard() -> Any:
    rt = runtime()
    now = rt.now()
    ladder = rt.programme.ladder.codes
    with reading() as conn:
        flows = monthly(conn, now)
        by_stage = members.counts_by_tier_and_stage(conn)
        used = redemptions.usage_by_tier(conn, since=now - dt.timedelta(days=30))
        stuck = redemptions.stuck(conn, before=now - STUCK)
        dead = webhooks.dead_deliveries(conn)
    header = [_("Month"), _("Issued"), _("Redeemed"), _("Expired"), _("Outstanding"), _("Liability (fen)")]
    stages = sorted({r["stage"] for r in by_stage})
    per_tier = {t: {s: 0 for s in stages} for t in ladder}
    for r in by_stage:
        per_tier.setdefault(r["tier"], {s: 0 for s in stages})[r["stage"]] = r["members"]
    tier_rows = [[t, *per_tier[t].values()] for t in per_tier]
    usage_rows = []
    for tier, counts in per_tier.items():
        total = sum(counts.values())
        usage_rows.append([tier, total, used.get(tier, 0), f"{100 * used.get(tier, 0) / total:.1f}%" if total else "–"])
    tables = {
        "points-by-month": (header, flows),
        "members-by-tier-and-stage": ([_("Tier"), *stages], tier_rows),
        "usage-by-tier": ([_("Tier"), _("Members"), _("Redeemed"), _("Usage rate")], usage_rows),
    }
    chosen = request.args.get("table", "points-by-month")
    if chosen in tables:
        download = table_download(chosen, *tables[chosen])
        if download is not None:
            return download
    return render_template(
        "admin/dashboard.html",
        flows=flows,
        flow_header=header,
        flow_counts=[r[:4] for r in flows],
        stages=stages,
        tier_rows=tier_rows,
        usage_rows=usage_rows,
        runs=runner.recent_runs(rt, job=None, limit=10, before=None)["runs"],
        failed=runner.failed_runs(rt, since=now - dt.timedelta(days=7)),
        stuck=stuck,
        dead=dead,
    )

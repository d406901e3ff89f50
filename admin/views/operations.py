"""Operations: job runs (and running one now, as of a date), webhooks and their deliveries (redeliver
a dead one), the event feed, API keys (the secret shown once), admin users and roles, the audit log."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import redirect, render_template, request, url_for
from flask_babel import gettext as _

from admin.core import Form, actor, bp, done, faults, local_day, reading, roles, runtime, table_download, zone
from loyalty import audit, calendar
from loyalty.auth import admins
from loyalty.auth import service as keys
from loyalty.auth.models import LOCALES, ROLES, SCOPES
from loyalty.db import transaction
from loyalty.errors import LoyaltyError, ValidationError
from loyalty.events import service as events
from loyalty.events import webhooks
from loyalty.jobs import JOBS, runner


@bp.route("/operations", methods=["GET", "POST"])
@roles("admin")
def operations() -> Any:
    """Job runs, and a job run now, as of a local date's end (or now)."""
    rt = runtime()
    errors: dict[str, list[str]] = {}
    status = 200
    if request.method == "POST":
        name = request.form.get("job", "")
        try:
            if name not in JOBS:
                raise ValidationError.one("job", f"must be one of {', '.join(JOBS)}")
            raw = request.form.get("as_of")
            as_of = calendar.day_of(local_day(raw, "as_of"), zone()).end - dt.timedelta(microseconds=1) if raw else None
            run = runner.run_job(rt, name, as_of)
        except LoyaltyError as exc:
            errors, status = faults(exc, "job"), exc.status
        else:
            done(_("Job %(job)s ran: %(status)s, %(rows)s rows.", job=name, status=run["status"], rows=run["rows"]))
            return redirect(url_for("admin.operations"))
    runs = runner.recent_runs(rt, job=request.args.get("job") or None, limit=50, before=None)["runs"]
    return render_template(
        "admin/operations.html", jobs=JOBS, runs=runs, errors=errors, form=Form(), args=request.form
    ), status


@bp.get("/operations/webhooks")
@roles("admin")
def webhook_list() -> Any:
    chosen = request.args.get("subscription")
    with reading() as conn:
        subscriptions = webhooks.list_subscriptions(conn)
        deliveries = (
            webhooks.deliveries(conn, chosen, status=request.args.get("status") or None, limit=100, before=None)
            if chosen
            else None
        )
        dead = webhooks.dead_deliveries(conn, limit=50)
    return render_template(
        "admin/webhooks.html", subscriptions=subscriptions, deliveries=deliveries, chosen=chosen, dead=dead, form=Form()
    )


@bp.post("/operations/webhooks/<subscription_id>/deliveries/<int:event_id>/redeliver")
@roles("admin")
def redeliver(subscription_id: str, event_id: int) -> Any:
    rt = runtime()
    with transaction(rt.engine) as conn:
        webhooks.redeliver(conn, subscription_id, event_id, actor=actor(), now=rt.now())
    done(_("Event %(event)s will be delivered again.", event=event_id))
    return redirect(url_for("admin.webhook_list", subscription=subscription_id))


@bp.get("/operations/events")
@roles("admin")
def event_feed() -> Any:
    with reading() as conn:
        found = events.recent(conn, limit=100, event_type=request.args.get("type") or None)
    return render_template("admin/events.html", events=found)


@bp.route("/operations/api-keys", methods=["GET", "POST"])
@roles("admin")
def api_keys() -> Any:
    errors: dict[str, list[str]] = {}
    secret = None
    status = 200
    if request.method == "POST":
        rt = runtime()
        name = (request.form.get("name") or "").strip()
        try:
            if not 1 <= len(name) <= 100:
                raise ValidationError.one("name", "who the key is for, 1 to 100 characters")
            scopes = keys.parse_scopes(",".join(request.form.getlist("scopes")))
            with transaction(rt.engine) as conn:
                secret, _view = keys.issue_key(conn, name=name, scopes=scopes, actor=actor(), now=rt.now())
        except LoyaltyError as exc:
            errors, status = faults(exc, "name"), exc.status
    with reading() as conn:
        found = keys.list_keys(conn, runtime().now())
    # The secret is in this one answer only: it is stored hashed, and the page is never cached.
    return render_template(
        "admin/api_keys.html", keys=found, scopes=SCOPES, errors=errors, secret=secret, form=Form(), args=request.form
    ), status


@bp.post("/operations/api-keys/<key_id>/revoke")
@roles("admin")
def revoke_key(key_id: str) -> Any:
    rt = runtime()
    with transaction(rt.engine) as conn:
        keys.revoke(conn, key_id, actor=actor(), now=rt.now())
    done(_("API key %(id)s revoked.", id=key_id))
    return redirect(url_for("admin.api_keys"))


def users_page(
    errors: dict[str, list[str]], *, password: str | None = None, reset_for: str | None = None, status: int = 200
) -> tuple[str, int]:
    with reading() as conn:
        found = admins.list_users(conn)
    return render_template(
        "admin/users.html",
        users=found,
        roles_all=ROLES,
        locales=LOCALES,
        errors=errors,
        password=password,
        reset_for=reset_for,
        form=Form(),
        args=request.form,
    ), status


@bp.route("/operations/users", methods=["GET", "POST"])
@roles("admin")
def users() -> Any:
    """The admin users; a new one is given a generated password, shown once."""
    if request.method == "GET":
        return users_page({})
    rt = runtime()
    form = request.form
    password = admins.generate_password()
    try:
        with transaction(rt.engine) as conn:
            admins.create(
                conn,
                username=(form.get("username") or "").strip(),
                password=password,
                roles=frozenset(form.getlist("roles")),
                locale=form.get("locale", "zh_CN"),
                actor=actor(),
                now=rt.now(),
            )
    except LoyaltyError as exc:
        return users_page(faults(exc, "username"), status=exc.status)
    return users_page({}, password=password, reset_for=form.get("username"))


@bp.post("/operations/users/<username>")
@roles("admin")
def user_change(username: str) -> Any:
    """Set a user's roles, disable them, or give them a new password (shown once)."""
    rt = runtime()
    what = request.form.get("action")
    password = None
    try:
        with transaction(rt.engine) as conn:
            if what == "roles":
                admins.set_roles(conn, username, frozenset(request.form.getlist("roles")), actor=actor(), now=rt.now())
            elif what == "disable":
                admins.disable(conn, username, actor=actor(), now=rt.now())
            elif what == "reset":
                password = admins.generate_password()
                admins.reset_password(conn, username, password, actor=actor(), now=rt.now())
            else:
                raise ValidationError.one("action", "must be roles, disable or reset")
    except LoyaltyError as exc:
        return users_page({f"{username}.{k}": v for k, v in faults(exc, "roles").items()}, status=exc.status)
    if password is not None:
        return users_page({}, password=password, reset_for=username)
    done(_("User %(name)s changed.", name=username))
    return redirect(url_for("admin.users"))


@bp.get("/operations/audit")
@roles("admin")
def audit_log() -> Any:
    args = request.args
    errors: dict[str, list[str]] = {}
    lines: list[dict[str, Any]] = []
    try:
        start = calendar.start_of(local_day(args["from"], "from"), zone()) if args.get("from") else None
        end = calendar.day_of(local_day(args["to"], "to"), zone()).end if args.get("to") else None
        with reading() as conn:
            lines = audit.search(
                conn,
                actor=args.get("who") or None,
                action=args.get("what") or None,
                object_id=args.get("object") or None,
                start=start,
                end=end,
                limit=200,
            )
    except ValidationError as exc:
        errors = dict(exc.errors)
    header = ["at", "actor", "action", "object_type", "object_id"]
    download = table_download("audit", header, [[line[h] for h in header] for line in lines])
    if download is not None and not errors:
        return download
    return render_template("admin/audit.html", lines=lines, errors=errors), (422 if errors else 200)

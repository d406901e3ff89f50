"""The ``loyalty`` command."""

from __future__ import annotations

import datetime as dt
import re
import sys
from pathlib import Path

import click

from loyalty import logmask
from loyalty.catalogue.models import FULFILMENTS, STATUSES
from loyalty.config import Settings
from loyalty.db import transaction
from loyalty.runtime import Runtime, make_runtime
from loyalty.sandbox.partner import CALLBACK_MODES, DEFAULT_CALLBACK_URL


@click.group()
def main() -> None:
    """loyalty: the points and benefits engine. Settings come from LOYALTY_* variables."""
    # No log line of any command shows a phone number or a voucher code.
    logmask.install()


def rt() -> Runtime:
    ctx = click.get_current_context()
    root = ctx.find_root()
    if root.obj is None:
        try:
            settings = Settings.from_env()
        except ValueError as exc:
            # A setting the service must not start with: say which, and stop.
            raise click.ClickException(f"configuration: {exc}") from None
        root.obj = make_runtime(settings)
    return root.obj  # type: ignore[no-any-return]


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION."""
    from loyalty.migrate import upgrade

    upgrade(rt().engine, revision)
    click.echo(f"database at {revision}: {rt().engine.url.render_as_string(hide_password=True)}")


@main.group("api-keys")
def api_keys() -> None:
    """API keys for channel apps and operators."""


@api_keys.command("create")
@click.option("--name", required=True, help="Who the key is for, e.g. mobile-app.")
@click.option("--scopes", required=True, help="Comma-separated: accrue, profile, redeem, read, finance, admin.")
@click.option(
    "--expires-at", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]), help="UTC; the key stops working then."
)
@click.option(
    "--rate-limits", default="", help="The key's own limits per route class: 'accrual=50/second;reads=unlimited'."
)
def api_keys_create(name: str, scopes: str, expires_at: dt.datetime | None, rate_limits: str) -> None:
    """Create a key; it is printed once, as the last line, and stored only hashed."""
    from loyalty.auth.service import create_key, parse_scopes
    from loyalty.config import parse_rate_limits
    from loyalty.errors import ValidationError

    try:
        parsed = parse_scopes(scopes)
    except ValidationError as exc:
        raise click.BadParameter(exc.detail, param_hint="--scopes") from None
    try:
        limits = parse_rate_limits(rate_limits, "--rate-limits")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--rate-limits") from None
    expires = expires_at.replace(tzinfo=dt.UTC) if expires_at else None
    try:
        with transaction(rt().engine) as conn:
            key = create_key(conn, name=name, scopes=parsed, now=rt().now(), expires_at=expires, rate_limits=limits)
    except ValidationError as exc:
        raise click.BadParameter(exc.detail, param_hint="--expires-at") from None
    click.echo(f"created API key {name!r} with scopes {','.join(sorted(parsed))}", err=True)
    click.echo(key)


@api_keys.command("list")
def api_keys_list() -> None:
    """Every key: id, name, status, scopes, expiry, last use, rotation overlap, limits (never a secret)."""
    from loyalty.auth.service import list_keys

    with transaction(rt().engine, readonly=True) as conn:
        for key in list_keys(conn, rt().now()):
            limits = ";".join(f"{k}={v}" for k, v in key["rate_limits"].items()) or "-"
            click.echo(
                f"{key['key_id']}  {key['name']}  {key['status']}  {','.join(key['scopes'])}  "
                f"expires={key['expires_at'] or '-'}  last_used={key['last_used_at'] or '-'}  "
                f"old_secret_until={key['previous_secret_valid_until'] or '-'}  limits={limits}"
            )


@api_keys.command("rotate")
@click.argument("key_id")
@click.option(
    "--overlap",
    "overlap_seconds",
    type=click.IntRange(0),
    default=86_400,
    show_default=True,
    help="Seconds the current secret keeps working.",
)
def api_keys_rotate(key_id: str, overlap_seconds: int) -> None:
    """Give KEY_ID a new secret, printed once as the last line; the current one works for --overlap more seconds."""
    from loyalty.auth.service import rotate
    from loyalty.errors import LoyaltyError

    try:
        with transaction(rt().engine) as conn:
            key, view = rotate(conn, key_id, overlap=dt.timedelta(seconds=overlap_seconds), now=rt().now())
    except LoyaltyError as exc:
        raise click.ClickException(exc.detail) from None
    until = view["previous_secret_valid_until"]
    click.echo(f"rotated API key {key_id}; the old secret works until {until or 'now'}", err=True)
    click.echo(key)


@api_keys.command("revoke")
@click.argument("key_id")
def api_keys_revoke(key_id: str) -> None:
    """Revoke KEY_ID (every secret of it). Servers stop accepting it within LOYALTY_API_KEY_CACHE_SECONDS."""
    from loyalty.auth.service import revoke
    from loyalty.errors import LoyaltyError

    try:
        with transaction(rt().engine) as conn:
            revoke(conn, key_id, actor=_cli_actor(), now=rt().now())
    except LoyaltyError as exc:
        raise click.ClickException(exc.detail) from None
    click.echo(f"revoked API key {key_id}")


@api_keys.command("demo")
@click.option("--file", "path", type=click.Path(path_type=Path), default=Path("var/demo-api-key"), show_default=True)
def api_keys_demo(path: Path) -> None:
    """Print the demo key kept in FILE, creating it (all scopes) if it is missing or unknown."""
    from loyalty.auth.models import SCOPES
    from loyalty.auth.service import create_key, lookup

    if path.exists():
        key = path.read_text().strip()
        with rt().engine.connect() as conn:
            if lookup(conn, key) is not None:
                click.echo(key)
                return
    with transaction(rt().engine) as conn:
        key = create_key(conn, name="demo", scopes=frozenset(SCOPES), now=rt().now())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key + "\n")
    path.chmod(0o600)
    click.echo(key)


@main.group("admin-users")
def admin_users_group() -> None:
    """The people who sign in to the admin UI (/admin)."""


def _admin_call(operation):  # type: ignore[no-untyped-def]
    """Run ``operation(conn, now)`` in one transaction; a refusal is a usage error naming the option."""
    from loyalty.errors import LoyaltyError

    try:
        with transaction(rt().engine) as conn:
            return operation(conn, rt().now())
    except LoyaltyError as exc:
        raise click.ClickException(exc.detail) from None


@admin_users_group.command("create")
@click.argument("username")
@click.option("--roles", required=True, help="Comma-separated: catalogue, rules, finance, support, auditor, admin.")
@click.option("--locale", type=click.Choice(["zh_CN", "en"]), default="zh_CN", show_default=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input instead of making one.")
def admin_users_create(username: str, roles: str, locale: str, password_stdin: bool) -> None:
    """Add USERNAME; a generated password is printed once, as the last line, unless one is read from stdin."""
    from loyalty.auth import admins
    from loyalty.errors import ValidationError

    try:
        parsed = admins.parse_roles(roles)
    except ValidationError as exc:
        raise click.BadParameter(exc.detail, param_hint="--roles") from None
    password = sys.stdin.readline().rstrip("\n") if password_stdin else admins.generate_password()
    _admin_call(
        lambda conn, now: admins.create(
            conn, username=username, password=password, roles=parsed, locale=locale, actor=_cli_actor(), now=now
        )
    )
    click.echo(f"created admin user {username!r} with roles {','.join(sorted(parsed))}", err=True)
    if not password_stdin:
        click.echo(password)


@admin_users_group.command("disable")
@click.argument("username")
def admin_users_disable(username: str) -> None:
    """Refuse USERNAME's sign-ins and end their sessions."""
    from loyalty.auth import admins

    _admin_call(lambda conn, now: admins.disable(conn, username, actor=_cli_actor(), now=now))
    click.echo(f"disabled admin user {username!r}")


@admin_users_group.command("reset-password")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input instead of making one.")
def admin_users_reset_password(username: str, password_stdin: bool) -> None:
    """Give USERNAME a new password (printed once, as the last line) and enable them again."""
    from loyalty.auth import admins

    password = sys.stdin.readline().rstrip("\n") if password_stdin else admins.generate_password()
    _admin_call(lambda conn, now: admins.reset_password(conn, username, password, actor=_cli_actor(), now=now))
    click.echo(f"reset the password of {username!r}", err=True)
    if not password_stdin:
        click.echo(password)


@admin_users_group.command("demo")
@click.option(
    "--file", "path", type=click.Path(path_type=Path), default=Path("var/demo-admin-password"), show_default=True
)
def admin_users_demo(path: Path) -> None:
    """Print the demo administrator's password kept in FILE, making the user ``admin`` (every role) if missing."""
    from loyalty.auth import admins
    from loyalty.auth.models import ROLES

    if path.exists():
        with rt().engine.connect() as conn:
            if admins.exists(conn, "admin"):
                click.echo(path.read_text().strip())
                return
    password = admins.generate_password()

    def make(conn, now):  # type: ignore[no-untyped-def]
        if admins.exists(conn, "admin"):
            return admins.reset_password(conn, "admin", password, actor=_cli_actor(), now=now)
        return admins.create(
            conn, username="admin", password=password, roles=frozenset(ROLES), actor=_cli_actor(), now=now
        )

    _admin_call(make)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(password + "\n")
    path.chmod(0o600)
    click.echo(password)


@main.group("rules")
def rules_group() -> None:
    """Earning programmes: install, validate, backtest."""


@rules_group.command("install-default")
def rules_install_default() -> None:
    """Publish the shipped default programme if no programme is published yet."""
    from loyalty.programmes.service import installed

    version = installed(rt().engine, rt().now())
    click.echo(f"installed programme {version}" if version else "a programme is already published; nothing to do")


def _read_document(path: Path) -> object:
    import json

    import yaml

    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise click.BadParameter(f"{path} is not valid JSON/YAML: {exc}") from None


@rules_group.command("validate")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def rules_validate(file: Path) -> None:
    """Check a programme document (JSON or YAML); exit 1 naming the bad field."""
    from rules import RuleError, load_programme

    try:
        programme = load_programme(_read_document(file))
    except RuleError as exc:
        click.echo(f"invalid: {exc.path}: {exc.message}", err=True)
        sys.exit(1)
    click.echo(f"valid: programme {programme.version} with {len(programme.rules)} rules")


@rules_group.command("backtest")
@click.option(
    "--candidate",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The candidate programme document (JSON or YAML).",
)
@click.option("--from", "start", required=True, help="Start of the period (ISO date or date-time; dates are local).")
@click.option("--to", "end", required=True, help="End of the period, exclusive.")
@click.option("--top", default=10, show_default=True, help="How many of the most affected members to list.")
def rules_backtest(candidate: Path, start: str, end: str, top: int) -> None:
    """Replay the stored transactions of a period under a candidate programme; writes nothing."""
    import datetime as dt
    import json

    from loyalty.accrual import backtest
    from rules import RuleError, load_programme

    try:
        programme = load_programme(_read_document(candidate))
    except RuleError as exc:
        raise click.BadParameter(f"{exc.path}: {exc.message}", param_hint="--candidate") from None

    def moment(value: str, name: str) -> dt.datetime:
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not an ISO date or date-time", param_hint=name) from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=programme.zone)

    begin, finish = moment(start, "--from"), moment(end, "--to")
    if finish <= begin:
        raise click.BadParameter("must be after --from", param_hint="--to")
    with rt().engine.execution_options(readonly=True).connect() as conn:
        report = backtest.run(
            conn, programme, start=begin, end=finish, point_value_fen=rt().settings.point_value_fen, top=top
        )
    click.echo(json.dumps(report, ensure_ascii=False, indent=2))


@main.command()
def verify() -> None:
    """Check every ledger invariant over the whole database, and every closed month against the
    reports stored at its close; exit 1 if any is broken."""
    from loyalty.finance import periods
    from loyalty.ledger import verify as checks

    runtime = rt()
    with runtime.engine.execution_options(readonly=True).connect() as conn:
        outcomes = checks.run(conn)
        closed = periods.listing(conn)
        problems = periods.verify(conn, zone=runtime.programme.zone)
    click.echo(checks.report(outcomes))
    if problems:
        click.echo("\n".join(f"FAIL closed period: {p}" for p in problems))
    elif closed:
        click.echo(f"ok   closed periods: {len(closed)} recomputed from the journal, each as stored at its close")
    if problems or not all(o.ok for o in outcomes):
        sys.exit(1)


@main.command("import-transactions")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--rejects",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where rejected rows go (default FILE.rejects.csv).",
)
@click.option("--chunk-size", default=5000, show_default=True, help="Rows per database transaction.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def import_transactions(file: Path, rejects: Path | None, chunk_size: int, progress: bool) -> None:
    """Load an end-of-day settlement FILE (CSV) for accrual, idempotently."""
    from loyalty.accrual.importer import import_file

    rejects = rejects or file.with_name(file.name + ".rejects.csv")
    summary = import_file(rt(), file, rejects_path=rejects, chunk_size=chunk_size, progress=progress)
    click.echo(
        f"posted {summary.posted}, replayed {summary.replayed}, rejected {summary.rejected}"
        + (f" (see {rejects})" if summary.rejected else "")
    )


@main.command("import-profiles")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--rejects",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where rejected rows go (default FILE.rejects.csv).",
)
@click.option(
    "--chunk-size", default=5000, show_default=True, type=click.IntRange(min=1), help="Rows per database transaction."
)
@click.option("--progress/--no-progress", default=True, show_default=True)
def import_profiles(file: Path, rejects: Path | None, chunk_size: int, progress: bool) -> None:
    """Load the bank's monthly asset snapshot FILE (CSV) into member profiles, idempotently."""
    from loyalty.members.profile_import import import_file

    rejects = rejects or file.with_name(file.name + ".rejects.csv")
    summary = import_file(rt(), file, rejects_path=rejects, chunk_size=chunk_size, progress=progress)
    click.echo(
        f"read {summary.read}, upserted {summary.upserted}, unchanged {summary.unchanged}, "
        f"skipped {summary.stale} older than stored, rejected {summary.rejected}"
        + (f" (see {rejects})" if summary.rejected else "")
    )


@main.command()
def scheduler() -> None:
    """Run the scheduled jobs in the foreground while this process leads; otherwise stand by.

    Run as many as you like against one database: one leads, the others take
    over when it stops. SIGTERM or SIGINT lets running jobs finish, then exits.
    """
    import logging

    from loyalty.jobs.scheduler import run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s scheduler[%(process)d] %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    try:
        run(rt())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@main.group("jobs")
def jobs_group() -> None:
    """Scheduled jobs: list them, run one by hand."""


@jobs_group.command("list")
def jobs_list() -> None:
    """Every job with its schedule (cron in the programme's time zone) and what it does."""
    from loyalty.jobs import JOBS
    from loyalty.jobs.scheduler import describe, programme_zone

    zone = programme_zone(rt())
    for job in JOBS.values():
        click.echo(f"{job.name:<16} {describe(job, zone, rt().settings.job_intervals):<44} {job.description}")


def _as_of(value: str) -> dt.datetime:
    """``YYYY-MM-DD`` (midnight in the programme's time zone) or an ISO date-time with an offset."""
    from loyalty.jobs.scheduler import programme_zone

    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            return dt.datetime.combine(dt.date.fromisoformat(value), dt.time(), tzinfo=programme_zone(rt()))
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a date (YYYY-MM-DD) or an ISO date-time with an offset", param_hint="--as-of"
        ) from None
    if moment.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no offset; add one, e.g. +08:00 or Z", param_hint="--as-of")
    return moment.astimezone(dt.UTC)


@jobs_group.command("run")
@click.argument("name")
@click.option("--as-of", "as_of", help="Run as of this moment: YYYY-MM-DD (local midnight) or an ISO date-time.")
def jobs_run(name: str, as_of: str | None) -> None:
    """Run job NAME once, now, and print the run as JSON; exit 1 if it failed."""
    import json

    from loyalty.jobs import JOBS
    from loyalty.jobs.runner import run_job

    if name not in JOBS:
        raise click.BadParameter(f"no job {name!r}; jobs: {', '.join(JOBS)}", param_hint="NAME")
    record = run_job(rt(), name, _as_of(as_of) if as_of is not None else None)
    click.echo(json.dumps(record, ensure_ascii=False, indent=2))
    if record["status"] != "succeeded":
        sys.exit(1)


@main.group("catalogue")
def catalogue_group() -> None:
    """The benefit catalogue: the default benefits, listing, demo voucher codes."""


def _tiers() -> tuple[str, ...]:
    from loyalty.errors import LoyaltyError

    try:
        return rt().programme.ladder.codes
    except LoyaltyError as exc:
        raise click.ClickException(exc.detail) from None


@catalogue_group.command("install-default")
def catalogue_install_default() -> None:
    """Create the shipped benefits that do not exist yet; existing ones are left as they are."""
    from loyalty.catalogue.service import install_default

    tiers = _tiers()
    with transaction(rt().engine) as conn:
        installed, present = install_default(conn, tiers, actor="system", now=rt().now())
    click.echo(
        f"installed {len(installed)} benefits"
        + (f": {', '.join(installed)}" if installed else "")
        + f"; {len(present)} already present, left as they are"
    )


@catalogue_group.command("list")
@click.option("--status", type=click.Choice(STATUSES), help="Only benefits in this status.")
@click.option("--fulfilment", type=click.Choice(FULFILMENTS), help="Only benefits fulfilled so.")
@click.option("--quiet", "-q", is_flag=True, help="Print the benefit codes alone, one a line.")
def catalogue_list(status: str | None, fulfilment: str | None, quiet: bool) -> None:
    """The benefits, with status, kind, fulfilment, price and stock."""
    from loyalty.catalogue.service import list_benefits

    with rt().engine.execution_options(readonly=True).connect() as conn:
        found = [v for v in list_benefits(conn, status=status) if fulfilment in (None, v["fulfilment"])]
    for v in found:
        if quiet:
            click.echo(v["code"])
            continue
        price = "entitlement" if v["points_price"] is None else f"{v['points_price']} points"
        stock = "unlimited" if v["stock"] is None else f"stock {v['stock']}"
        click.echo(f"{v['code']:<28} {v['status']:<8} {v['kind']:<13} {v['fulfilment']:<8} {price:<14} {stock}")


@catalogue_group.command("demo-codes")
@click.argument("benefit")
@click.argument("count", type=click.IntRange(1, 100_000))
@click.option("--if-empty", is_flag=True, help="Add nothing if the pool still has a code available.")
def catalogue_demo_codes(benefit: str, count: int, if_empty: bool) -> None:
    """Put COUNT random codes into the pool of BENEFIT, for demonstrations. The codes are not printed."""
    import secrets

    from loyalty.catalogue.service import code_box, code_counts, upload_codes
    from loyalty.errors import LoyaltyError

    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    try:
        box = code_box(rt().settings.secret_key)
        with transaction(rt().engine) as conn:
            available = code_counts(conn, benefit)["available"]
            if if_empty and available:
                click.echo(f"{benefit}: {available} codes available; no demo codes added")
                return
            codes = ["DEMO-" + "".join(secrets.choice(alphabet) for _ in range(12)) for _ in range(count)]
            result = upload_codes(conn, box, benefit, codes, actor="system", now=rt().now())
    except LoyaltyError as exc:
        raise click.ClickException(exc.detail) from None
    click.echo(f"{benefit}: added {result['added']} demo codes; stock {result['stock']}")


@main.group("finance")
def finance_group() -> None:
    """Finance reports from the ledger (JSON, CSV or XLSX), as the finance API gives them."""


def _report_out(report: dict[str, object], table: object, fmt: str, output: str | None, title: str) -> None:
    import json

    from loyalty.finance import export

    if fmt == "json":
        data = (json.dumps(report, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
    else:
        data = export.render(table(report), fmt, title=title)  # type: ignore[operator]
    if output is None:
        if fmt == "xlsx":
            raise click.BadParameter("an XLSX workbook needs --output FILE", param_hint="--output")
        sys.stdout.write(data.decode("utf-8"))
    else:
        Path(output).write_bytes(data)
        click.echo(f"wrote {output}", err=True)


_FORMAT = click.option("--format", "fmt", type=click.Choice(["json", "csv", "xlsx"]), default="json", show_default=True)
_OUTPUT = click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), help="write to FILE")


@finance_group.command("trial-balance")
@click.option("--as-of", "as_of", type=click.DateTime(["%Y-%m-%d"]), required=True, help="local date YYYY-MM-DD")
@_FORMAT
@_OUTPUT
def finance_trial_balance(as_of: dt.datetime, fmt: str, output: str | None) -> None:
    """Every ledger account's balance at the end of local day AS_OF; they sum to zero."""
    from loyalty import calendar
    from loyalty.finance import export, reports

    runtime = rt()
    end = calendar.day_of(as_of.date(), runtime.programme.zone).end
    with transaction(runtime.engine, readonly=True) as conn:
        report = reports.trial_balance(conn, end=end)
    _report_out(report, export.trial_balance_table, fmt, output, f"trial-balance-{as_of.date().isoformat()}")


@finance_group.command("rollforward")
@click.option("--from", "start", type=click.DateTime(["%Y-%m-%d"]), required=True, help="first local date")
@click.option("--to", "end", type=click.DateTime(["%Y-%m-%d"]), required=True, help="last local date")
@_FORMAT
@_OUTPUT
def finance_rollforward(start: dt.datetime, end: dt.datetime, fmt: str, output: str | None) -> None:
    """The roll-forward of outstanding points from local day FROM to the end of TO, tied to the members."""
    from loyalty import calendar
    from loyalty.finance import export, reports

    if end < start:
        raise click.BadParameter("must not be before --from", param_hint="--to")
    runtime = rt()
    zone = runtime.programme.zone
    with transaction(runtime.engine, readonly=True) as conn:
        report = reports.rollforward(
            conn, start=calendar.start_of(start.date(), zone), end=calendar.day_of(end.date(), zone).end
        )
    title = f"rollforward-{start.date().isoformat()}-{end.date().isoformat()}"
    _report_out(report, export.rollforward_table, fmt, output, title)
    if not report["tie_out"]["tied"]:  # type: ignore[index]
        sys.exit(1)


@finance_group.command("liability")
@click.option("--as-of", "as_of", type=click.DateTime(["%Y-%m-%d"]), required=True, help="local date YYYY-MM-DD")
@_FORMAT
@_OUTPUT
def finance_liability(as_of: dt.datetime, fmt: str, output: str | None) -> None:
    """Outstanding points at the end of local day AS_OF, by funding source and tier, valued."""
    from loyalty.finance import export, liability

    runtime = rt()
    with transaction(runtime.engine, readonly=True) as conn:
        report = liability.liability(
            conn,
            as_of=as_of.date(),
            zone=runtime.programme.zone,
            default_point_value=runtime.settings.point_value_fen,
        )
    _report_out(report, export.liability_table, fmt, output, f"liability-{as_of.date().isoformat()}")


@finance_group.command("breakage")
@click.option("--as-of", "as_of", type=click.DateTime(["%Y-%m-%d"]), help="local date YYYY-MM-DD (default: now)")
@_FORMAT
@_OUTPUT
def finance_breakage(as_of: dt.datetime | None, fmt: str, output: str | None) -> None:
    """Cohorts by month of earning, their redemption curves, and the estimated redemption rate."""
    from loyalty import calendar
    from loyalty.finance import breakage, export

    runtime = rt()
    zone = runtime.programme.zone
    end = calendar.day_of(as_of.date(), zone).end if as_of is not None else runtime.now()
    with transaction(runtime.engine, readonly=True) as conn:
        report = breakage.cohorts(conn, end=end, zone=zone)
    _report_out(report, export.breakage_table, fmt, output, "breakage")


@main.group("webhooks")
def webhooks_group() -> None:
    """Webhook subscriptions."""


@webhooks_group.command("seal-secrets")
def webhooks_seal_secrets() -> None:
    """Seal the signing secrets of subscriptions made before secrets were sealed, still stored in clear.
    Needs LOYALTY_SECRET_KEY; the webhooks job does the same on its first run with the key."""
    from loyalty.errors import LoyaltyError
    from loyalty.events.webhooks import seal_legacy_secrets, secret_sealer

    try:
        box = secret_sealer(rt().settings.secret_key)
    except LoyaltyError as exc:
        raise click.ClickException(exc.detail) from None
    with transaction(rt().engine) as conn:
        sealed = seal_legacy_secrets(conn, box)
    click.echo(f"sealed {sealed} webhook secrets stored in clear" if sealed else "no webhook secret is stored in clear")


@main.command("sandbox-partner")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8090, show_default=True, type=click.IntRange(0, 65535), help="0: any free port (printed)."
)
@click.option("--latency-ms", default=0, show_default=True, type=click.IntRange(min=0), help="Wait before answering.")
@click.option(
    "--failure-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1), help="Share of orders declined."
)
@click.option(
    "--timeout-then-succeed",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Deliver the next N orders at once but answer them only after --hang-ms.",
)
@click.option(
    "--hang-ms",
    default=10_000,
    show_default=True,
    type=click.IntRange(min=0),
    help="How late those orders are answered: longer than the engine's timeout.",
)
@click.option(
    "--processing-ms",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Answer orders 'processing' and complete them this much later.",
)
@click.option(
    "--callbacks",
    type=click.Choice(CALLBACK_MODES),
    default="off",
    show_default=True,
    help="Post each order's outcome to --callback-url before or after answering the order.",
)
@click.option(
    "--callback-url",
    default=DEFAULT_CALLBACK_URL,
    show_default=True,
    help="Where callbacks go; {partner} becomes telecom or video.",
)
@click.option("--secret", help="The signing key [default: LOYALTY_PARTNER_SECRET, else the dev-only key].")
@click.option("--seed", type=int, help="Decide failures from the seed and the order id, for repeatable runs.")
def sandbox_partner(
    host: str,
    port: int,
    latency_ms: int,
    failure_rate: float,
    timeout_then_succeed: int,
    hang_ms: int,
    processing_ms: int,
    callbacks: str,
    callback_url: str,
    secret: str | None,
    seed: int | None,
) -> None:
    """Run the sandbox partner: a telecom top-up and a video-membership provider for development
    and tests. Change its behaviour while it runs with POST /_control (see the README)."""
    from loyalty.sandbox.partner import Behaviour, Sandbox, serve

    behaviour = Behaviour(
        latency_ms=latency_ms,
        failure_rate=failure_rate,
        timeout_then_succeed=timeout_then_succeed,
        hang_ms=hang_ms,
        processing_ms=processing_ms,
        callbacks=callbacks,
        seed=seed,
    )
    sandbox = Sandbox(
        secret=secret or Settings.from_env().partner_secret, callback_url=callback_url, behaviour=behaviour
    )
    serve(host, port, sandbox)


class Refused(click.ClickException):
    """Input refused, nothing stored: exit 2 (1 is kept for a result with differences)."""

    exit_code = 2


def _cli_actor() -> str:
    """Who runs a command, for the records it writes: ``cli:<login>``."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"[:100]
    except (KeyError, OSError):
        return "cli"


@finance_group.command("reconcile")
@click.option("--partner", required=True, help="the partner whose statement FILE is (a name in LOYALTY_PARTNERS)")
@click.option("--from", "start", type=click.DateTime(["%Y-%m-%d"]), help="first local date of the statement's period")
@click.option("--to", "end", type=click.DateTime(["%Y-%m-%d"]), help="last local date of the statement's period")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_FORMAT
@_OUTPUT
def finance_reconcile(
    partner: str, start: dt.datetime | None, end: dt.datetime | None, file: Path, fmt: str, output: str | None
) -> None:
    """Reconcile a partner's statement FILE (CSV: partner_reference,redemption_id,amount_fen,date)
    with the redemptions it fulfilled; store the result and print it, and its summary on stderr.
    Without --from/--to the period is the statement's earliest to latest date. Exit 0 when every
    line matches, 1 when there are differences, 2 when the file is refused (nothing is stored)."""
    from loyalty.errors import ValidationError
    from loyalty.finance.reconciliation import service, statement, tables

    if fmt == "xlsx" and output is None:
        raise click.BadParameter("an XLSX workbook needs --output FILE", param_hint="--output")
    runtime = rt()
    try:
        prepared = statement.prepare(
            partner,
            file.read_bytes(),
            known_partners=runtime.settings.partners,
            start=None if start is None else start.date(),
            end=None if end is None else end.date(),
        )
    except ValidationError as exc:
        raise Refused(
            f"{file}: refused, nothing stored:\n" + "\n".join(f"  {k}: {' '.join(v)}" for k, v in exc.errors.items())
        ) from None
    with transaction(runtime.engine) as conn:
        report = service.reconcile(conn, prepared, zone=runtime.programme.zone, actor=_cli_actor(), now=runtime.now())
    title = f"reconciliation-{report['partner']}-{report['from']}-{report['to']}"
    _report_out(report, tables.reconciliation_table, fmt, output, title)
    c = report["categories"]
    click.echo(
        f"reconciliation {report['reconciliation_id']} ({report['partner']}, {report['from']} to {report['to']}): "
        f"{c['matched']['count']} matched, {c['missing_on_our_side']['count']} missing on our side, "
        f"{c['missing_on_their_side']['count']} missing on their side, "
        f"{c['amount_mismatch']['count']} amount mismatches; "
        f"statement {report['statement']['total_fen']} fen, ours {report['ours']['total_fen']} fen, "
        f"difference {report['difference_fen']} fen",
        err=True,
    )
    if not report["reconciled"]:
        sys.exit(1)

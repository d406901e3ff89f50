"""The ``loyalty`` command."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from loyalty import Runtime, make_runtime
from loyalty.db import transaction


@click.group()
def main() -> None:
    """loyalty: the points and benefits engine. Settings come from LOYALTY_* variables."""


def rt() -> Runtime:
    ctx = click.get_current_context()
    root = ctx.find_root()
    if root.obj is None:
        root.obj = make_runtime()
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
@click.option("--scopes", required=True, help="Comma-separated: accrue, redeem, read, finance, admin.")
def api_keys_create(name: str, scopes: str) -> None:
    """Create a key; it is printed once, as the last line, and stored only hashed."""
    from loyalty.auth.service import create_key, parse_scopes
    from loyalty.errors import ValidationError

    try:
        parsed = parse_scopes(scopes)
    except ValidationError as exc:
        raise click.BadParameter(exc.detail, param_hint="--scopes") from None
    with transaction(rt().engine) as conn:
        key = create_key(conn, name=name, scopes=parsed, now=rt().now())
    click.echo(f"created API key {name!r} with scopes {','.join(sorted(parsed))}", err=True)
    click.echo(key)


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


@main.command()
def verify() -> None:
    """Check every ledger invariant over the whole database; exit 1 if any is broken."""
    from loyalty.ledger import verify as checks

    with rt().engine.execution_options(readonly=True).connect() as conn:
        outcomes = checks.run(conn)
    click.echo(checks.report(outcomes))
    if not all(o.ok for o in outcomes):
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

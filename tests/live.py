"""The real application, served as ``make run`` serves it, for tests that use it from outside.

:func:`live_server` sets up a fresh database with the project's own command line (migrations, the
default programme and catalogue, demo voucher codes for every pool benefit, an API key of every
scope; the commands run in this process, which spares an interpreter start each), starts gunicorn
on a free loopback port in a process of its own, waits until it answers ``/health``, and stops it
afterwards. Clients reach it over real HTTP only.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from loyalty import cli
from loyalty.config import Settings
from loyalty.runtime import make_runtime

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
#: Voucher codes added to each pool benefit of the default catalogue.
DEMO_CODES = 40


def tool(name: str) -> str:
    """The path of a command the test extras install; a missing one fails the test saying so."""
    path = BIN / name
    assert path.exists(), f"{name} is missing from {BIN}: install the test extras (pip install -e '.[test]')"
    return str(path)


@dataclass(frozen=True)
class LiveServer:
    url: str
    #: an API key with every scope
    key: str
    database_url: str
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


@contextmanager
def fresh_database(backend: str, directory: Path) -> Iterator[str]:
    """A database no test has touched: a new SQLite file, or a new PostgreSQL database (dropped after)."""
    if backend == "sqlite":
        yield f"sqlite:///{directory / 'live.db'}"
        return
    admin_url = os.environ.get("LOYALTY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"loyalty_live_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(env: dict[str, str], *args: str) -> str:
    """``loyalty ARGS`` with the settings of ``env``; its standard output."""
    runtime = make_runtime(Settings.from_env(env))
    try:
        done = CliRunner().invoke(cli.main, list(args), obj=runtime, catch_exceptions=False)
    finally:
        runtime.engine.dispose()
    if done.exit_code != 0:
        raise AssertionError(f"loyalty {' '.join(args)} exited {done.exit_code}: {done.output}")
    return done.stdout


def prepare(database_url: str, **env_over: str) -> tuple[dict[str, str], str]:
    """The server's environment, and an API key of every scope, for a database made ready as
    ``make run`` makes it (migrations, the default programme and catalogue, demo voucher codes)."""
    env = {
        **os.environ,
        "LOYALTY_DATABASE_URL": database_url,
        "LOYALTY_SECRET_KEY": secrets.token_urlsafe(24),
        "LOYALTY_PARTNER_SECRET": secrets.token_urlsafe(24),
        "LOYALTY_API_KEY_CACHE_SECONDS": "0",
        **env_over,
    }
    run_cli(env, "db", "upgrade")
    run_cli(env, "rules", "install-default")
    run_cli(env, "catalogue", "install-default")
    for benefit in run_cli(env, "catalogue", "list", "--fulfilment", "pool", "--status", "active", "-q").split():
        run_cli(env, "catalogue", "demo-codes", benefit, str(DEMO_CODES))
    scopes = "accrue,profile,redeem,read,finance,admin"
    key = run_cli(env, "api-keys", "create", "--name", "contract-tests", "--scopes", scopes).strip().splitlines()[-1]
    return env, key


def start_gunicorn(env: dict[str, str], port: int, log: Path, workers: int = 1) -> subprocess.Popen[bytes]:
    """gunicorn with the repository's gunicorn.conf.py, serving on ``port``; its output appended to ``log``."""
    with log.open("a", encoding="utf-8") as out:
        return subprocess.Popen(
            [tool("gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--timeout", "60", "wsgi:app"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_until_serving(process: subprocess.Popen[bytes], server: LiveServer) -> None:
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise AssertionError(f"gunicorn exited {process.returncode}:\n{server.log_tail()}")
        try:
            if requests.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass  # not listening yet, or its worker still booting (the master accepts meanwhile)
        if time.monotonic() > deadline:
            raise AssertionError(f"gunicorn did not answer /health within 60 s:\n{server.log_tail()}")
        time.sleep(0.1)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


@contextmanager
def live_server(database_url: str, directory: Path) -> Iterator[LiveServer]:
    env, key = prepare(database_url)
    port = free_port()
    log = directory / "gunicorn.log"
    log.write_text("", encoding="utf-8")
    process = start_gunicorn(env, port, log)
    server = LiveServer(f"http://127.0.0.1:{port}", key, database_url, log)
    try:
        wait_until_serving(process, server)
        yield server
    finally:
        stop(process)

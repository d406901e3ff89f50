"""Fixtures: every test of the database runs against SQLite and against a real PostgreSQL.

PostgreSQL comes from LOYALTY_TEST_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/test). The suite makes its own database
there and migrates it once. Each test runs in a transaction that is rolled
back at its end (:mod:`tests.rollback`), except tests marked ``committed``:
their data must be seen by other connections, threads or processes, so they
commit to the database, which is emptied before them. SQLite tests each get
a copy of a migrated database file. If PostgreSQL cannot be reached the run
fails; it never skips.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import loyalty.models  # noqa: F401  (fills the metadata)
from loyalty.app import create_app
from loyalty.auth.models import SCOPES
from loyalty.auth.service import create_key
from loyalty.config import Settings
from loyalty.db import make_engine, metadata, transaction
from loyalty.ledger import partitions
from loyalty.ledger.models import SYSTEM_ACCOUNTS
from loyalty.ledger.service import forget_closed_periods
from loyalty.migrate import upgrade
from loyalty.programmes.service import ProgrammeStore, installed
from loyalty.runtime import Runtime
from tests.contract import ContractClient
from tests.live import LiveServer, fresh_database, live_server
from tests.rollback import RolledBack

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
#: Tables emptied between tests (the chart of accounts is kept).
DATA_TABLES = [t.name for t in metadata.sorted_tables if t.name != "accounts"]
START = dt.datetime(2026, 6, 15, 10, 0, tzinfo=dt.UTC)
#: The months the tests post in have their journal partitions on PostgreSQL (the migration makes
#: only those around the real date), so that what they post stays out of the DEFAULT partitions.
TEST_MONTHS = partitions.months(dt.date(2024, 1, 1), dt.date(2028, 12, 1))
#: The key voucher codes are sealed with in tests.
TEST_SECRET_KEY = "test-secret-key-not-for-production"  # noqa: S105  (a fixture, not a credential)


class Clock:
    """A clock tests can set and move; every operation reads time from it."""

    def __init__(self, now: dt.datetime = START) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> dt.datetime:
        self.now += dt.timedelta(**delta)
        return self.now


class Postgres:
    """The suite's PostgreSQL database: migrated, with the default programme installed.

    Tests marked ``committed`` get its URL (:meth:`committed`) and may write to
    it for real; the next test that uses the database empties it first. Other
    tests get an engine whose every change is rolled back (:meth:`rolled_back`).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        #: the URL tests rolled back are given: a database that does not exist
        self.elsewhere = (
            make_url(url).set(database=f"{make_url(url).database}_mark_committed").render_as_string(hide_password=False)
        )
        self.cleaner = sa.create_engine(url, pool_size=1)
        self.empty()
        self.rollback = RolledBack(url)
        self.rollback.remember_sequences()
        #: whether a committed test may have left data behind
        self.dirty = False

    def empty(self) -> None:
        """Back to a migrated database with the default programme: identities restart.

        The tables are small, so deleting their rows is much quicker than TRUNCATE, which
        replaces every table's files; in replica mode (a superuser's, as test_verify needs
        anyway) neither the ledger's append-only triggers nor foreign keys stand in the way."""
        keep = ", ".join(f"'{a['code']}'" for a in SYSTEM_ACCOUNTS)
        with self.cleaner.begin() as conn:
            try:
                with conn.begin_nested():
                    conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
            except sa.exc.DBAPIError:  # not a superuser
                conn.exec_driver_sql(f"TRUNCATE {', '.join(DATA_TABLES)} RESTART IDENTITY CASCADE")
            else:
                for table in DATA_TABLES:
                    conn.exec_driver_sql(f"DELETE FROM {table}")
                conn.exec_driver_sql(
                    "SELECT setval(c.oid, 1, false) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE c.relkind = 'S' AND n.nspname = current_schema()"
                )
            conn.exec_driver_sql(f"DELETE FROM accounts WHERE code NOT IN ({keep})")
            partitions.create_months(conn, TEST_MONTHS)
        installed(self.cleaner, START)

    def committed(self) -> str:
        if self.dirty:
            self.empty()
        self.dirty = True
        return self.url

    @contextmanager
    def rolled_back(self) -> Iterator[sa.Engine]:
        if self.dirty:
            self.empty()
            self.dirty = False
        with self.rollback.transaction() as engine:
            yield engine

    def close(self) -> None:
        self.rollback.close()
        self.cleaner.dispose()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    admin_url = os.environ.get("LOYALTY_TEST_POSTGRES_URL", DEFAULT_PG)
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"loyalty_test_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        pytest.exit(
            f"PostgreSQL is needed at {admin_url} and could not be reached ({exc.orig}). "
            "Start it (on Debian: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start) "
            "or set LOYALTY_TEST_POSTGRES_URL to a server where this user may create databases.",
            returncode=3,
        )
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url, pool_size=2)
    upgrade(engine)
    engine.dispose()
    database = Postgres(url)
    yield database
    database.close()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "loyalty.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    installed(engine, START)
    engine.dispose()
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``postgres_only`` (real concurrency, database triggers) run
    on PostgreSQL alone: their SQLite variants are not collected."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        if item.get_closest_marker("postgres_only") and callspec and callspec.params.get("backend") == "sqlite":
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def committed(request: pytest.FixtureRequest) -> bool:
    return request.node.get_closest_marker("committed") is not None


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of the test's database, for connections of the test's own, other threads and
    processes. On PostgreSQL only a test marked ``committed`` may have it: they would not see
    what a test rolled back writes."""
    if backend == "sqlite":
        path = tmp_path / "loyalty.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    if not committed(request):
        pytest.fail(
            f"{request.node.nodeid} connects to PostgreSQL on its own (database_url): "
            "mark it @pytest.mark.committed, or use the runtime's engine"
        )
    yield request.getfixturevalue("postgres").committed()


@pytest.fixture
def unopened_url(tmp_path: Path) -> Iterator[str]:
    """A SQLite URL for a test that must never open its database (a command that refuses its
    arguments first, routing alone): the test fails if the database file comes to exist."""
    path = tmp_path / "never-opened.db"
    yield f"sqlite:///{path}"
    assert not path.exists(), "the database was opened"


@pytest.fixture
def bare_app(unopened_url: str, clock: Clock):  # type: ignore[no-untyped-def]
    """The app on a database it must never open: for tests of routing alone."""
    engine = make_engine(unopened_url)
    settings = Settings(database_url=unopened_url, api_key_cache_seconds=0, secret_key=TEST_SECRET_KEY)
    app = create_app(Runtime(settings=settings, engine=engine, programmes=ProgrammeStore(engine, clock), clock=clock))
    app.config["TESTING"] = True
    yield app
    engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settings(backend: str, request: pytest.FixtureRequest) -> Settings:
    if backend == "postgres" and not committed(request):
        # What the test writes is seen only through the runtime's engine: a connection made from
        # this URL fails (a database that does not exist) instead of seeing none of it.
        url = request.getfixturevalue("postgres").elsewhere
    else:
        url = request.getfixturevalue("database_url")
    return Settings(database_url=url, api_key_cache_seconds=0, secret_key=TEST_SECRET_KEY)


@pytest.fixture
def runtime(backend: str, settings: Settings, clock: Clock, request: pytest.FixtureRequest) -> Iterator[Runtime]:
    if backend == "postgres" and not committed(request):
        with request.getfixturevalue("postgres").rolled_back() as engine:
            yield Runtime(settings=settings, engine=engine, programmes=ProgrammeStore(engine, clock), clock=clock)
        return
    engine = make_engine(settings.database_url)
    rt = Runtime(settings=settings, engine=engine, programmes=ProgrammeStore(engine, clock), clock=clock)
    yield rt
    rt.engine.dispose()


@pytest.fixture
def engine(runtime: Runtime) -> sa.Engine:
    return runtime.engine


@pytest.fixture
def app(runtime: Runtime):  # type: ignore[no-untyped-def]
    app = create_app(runtime)
    app.config["TESTING"] = True
    return app


def make_key(runtime: Runtime, *scopes: str) -> str:
    with transaction(runtime.engine) as conn:
        return create_key(conn, name="test", scopes=frozenset(scopes or SCOPES), now=runtime.now())


@pytest.fixture
def api_key(runtime: Runtime) -> str:
    return make_key(runtime)


@pytest.fixture
def client(app, api_key: str) -> ContractClient:  # type: ignore[no-untyped-def]
    """A test client that authenticates and checks every response against openapi.yaml."""
    return ContractClient(app.test_client(), api_key)


@pytest.fixture(autouse=True)
def _forget_closed_periods() -> None:
    """Each test reads the closed periods of its own database afresh (the ledger caches them per
    database URL, and tests reuse one PostgreSQL database)."""
    forget_closed_periods()


@pytest.fixture
def live(backend: str, tmp_path: Path) -> Iterator[LiveServer]:
    """The real application under gunicorn, over HTTP on a loopback port, with a fresh database of
    its own: the default programme and catalogue, demo voucher codes, an API key of every scope."""
    with fresh_database(backend, tmp_path) as url, live_server(url, tmp_path) as server:
        yield server

"""The people who sign in to the admin UI: hashed passwords, limited attempts, ended sessions,
audit lines, and the ``loyalty admin-users`` command."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from loyalty import audit
from loyalty.auth import admins
from loyalty.auth.models import admin_users
from loyalty.db import transaction
from loyalty.errors import ValidationError
from tests.test_cli import loyalty

PASSWORD = "correct horse battery staple"  # noqa: S105  (a fixture, not a credential)


def make(runtime, username="wang.li", roles=frozenset({"catalogue"})):  # type: ignore[no-untyped-def]
    with transaction(runtime.engine) as conn:
        return admins.create(conn, username=username, password=PASSWORD, roles=roles, actor="test", now=runtime.now())


def attempt(runtime, password, *, username="wang.li", address="10.0.0.1"):  # type: ignore[no-untyped-def]
    """One sign-in attempt, recorded whatever its outcome (as the sign-in view does)."""
    with transaction(runtime.engine) as conn:
        try:
            return admins.sign_in(conn, username=username, password=password, address=address, now=runtime.now())
        except (admins.SignInRefused, admins.TooManyAttempts) as exc:
            return exc


def test_the_password_is_stored_as_a_scrypt_hash_and_checks(runtime):
    make(runtime)
    with runtime.engine.connect() as conn:
        stored = conn.execute(sa.select(admin_users.c.password_hash)).scalar_one()
    assert stored.startswith("scrypt$16384$8$1$") and PASSWORD not in stored
    assert admins.check_password(stored, PASSWORD)
    assert not admins.check_password(stored, PASSWORD + "!")


def test_sign_in_gives_the_user_and_audits_every_attempt(runtime):
    make(runtime, roles=frozenset({"finance", "support"}))
    user = attempt(runtime, PASSWORD)
    assert isinstance(user, admins.AdminUser) and user.roles == {"finance", "support"}
    assert isinstance(attempt(runtime, "wrong password!"), admins.SignInRefused)
    assert isinstance(attempt(runtime, PASSWORD, username="nobody"), admins.SignInRefused)
    with runtime.engine.connect() as conn:
        actions = [
            line["action"] for line in audit.entries(conn, object_type="admin_user", object_id="wang.li", limit=10)
        ]
    assert actions == ["admin.sign_in_failed", "admin.sign_in", "admin_user.create"]


def test_five_failures_lock_the_account_until_the_window_passes(runtime, clock):
    make(runtime)
    for _ in range(admins.MAX_FAILURES_PER_USER):
        assert isinstance(attempt(runtime, "not the password"), admins.SignInRefused)
    locked = attempt(runtime, PASSWORD, address="10.9.9.9")  # the right password, from elsewhere too
    assert isinstance(locked, admins.TooManyAttempts) and locked.status == 429
    clock.advance(seconds=admins.WINDOW.total_seconds() + 1)
    assert isinstance(attempt(runtime, PASSWORD), admins.AdminUser)


def test_failures_from_one_address_lock_every_account_from_it(runtime):
    make(runtime)
    for i in range(admins.MAX_FAILURES_PER_ADDRESS):
        attempt(runtime, "guess", username=f"user{i}", address="203.0.113.7")
    assert isinstance(attempt(runtime, PASSWORD, address="203.0.113.7"), admins.TooManyAttempts)
    assert isinstance(attempt(runtime, PASSWORD, address="198.51.100.1"), admins.AdminUser)


def test_a_reset_or_a_disable_ends_the_sessions_signed_in_before(runtime):
    make(runtime)
    user = attempt(runtime, PASSWORD)
    with transaction(runtime.engine) as conn:
        assert admins.load(conn, user.id, user.session_epoch) == user
        admins.reset_password(conn, "wang.li", "another long password", actor="test", now=runtime.now())
        assert admins.load(conn, user.id, user.session_epoch) is None
        admins.disable(conn, "wang.li", actor="test", now=runtime.now())
    assert isinstance(attempt(runtime, "another long password"), admins.SignInRefused)


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("username", {"username": "Has Spaces"}),
        ("password", {"password": "short"}),
        ("roles", {"roles": frozenset({"root"})}),
        ("locale", {"locale": "fr"}),
    ],
)
def test_a_bad_user_is_refused_naming_the_field(runtime, field, kwargs):
    values = {"username": "ok.user", "password": PASSWORD, "roles": frozenset({"auditor"}), "locale": "en"}
    with pytest.raises(ValidationError) as refused, transaction(runtime.engine) as conn:
        admins.create(conn, **{**values, **kwargs}, actor="test", now=runtime.now())
    assert refused.value.field == field


@pytest.mark.committed
def test_admin_users_commands_create_reset_and_disable(database_url, runtime, tmp_path):
    made = loyalty(database_url, "admin-users", "create", "li.na", "--roles", "finance,auditor")
    assert made.returncode == 0, made.stderr
    password = made.stdout.strip().splitlines()[-1]
    assert isinstance(attempt(runtime, password, username="li.na"), admins.AdminUser)
    again = loyalty(database_url, "admin-users", "create", "li.na", "--roles", "finance")
    assert again.returncode == 1 and "exists" in again.stderr
    reset = loyalty(database_url, "admin-users", "reset-password", "li.na")
    assert reset.returncode == 0, reset.stderr
    assert isinstance(attempt(runtime, reset.stdout.strip(), username="li.na"), admins.AdminUser)
    assert loyalty(database_url, "admin-users", "disable", "li.na").returncode == 0
    assert isinstance(attempt(runtime, reset.stdout.strip(), username="li.na"), admins.SignInRefused)
    first = loyalty(database_url, "admin-users", "demo", "--file", str(tmp_path / "pw"))
    second = loyalty(database_url, "admin-users", "demo", "--file", str(tmp_path / "pw"))
    assert first.returncode == 0 and first.stdout == second.stdout
    assert isinstance(attempt(runtime, first.stdout.strip(), username="admin"), admins.AdminUser)

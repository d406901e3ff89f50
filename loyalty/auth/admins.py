"""The people who sign in to the admin UI: their passwords, roles and language, and sign-in.

Passwords are hashed with scrypt (memory-hard: 16 MiB a guess). Sign-in is limited: after
:data:`MAX_FAILURES_PER_USER` failed attempts on one account, or :data:`MAX_FAILURES_PER_ADDRESS`
from one address, within :data:`WINDOW`, further attempts are refused without checking the
password until the window has passed. Every attempt is kept; every sign-in and sign-out, and every
change to a user, is an audit line.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty import audit
from loyalty.auth.models import LOCALES, ROLES, admin_users, sign_in_attempts
from loyalty.errors import Conflict, LoyaltyError, NotFound, ValidationError

#: scrypt's cost: N=2**14, r=8 takes 16 MiB and some 50 ms a hash
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD, MAX_PASSWORD = 12, 200
USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,63}")
WINDOW = dt.timedelta(minutes=15)
MAX_FAILURES_PER_USER = 5
MAX_FAILURES_PER_ADDRESS = 20


class UserExists(Conflict):
    code = "admin_user_exists"
    title = "An admin user of this name exists"


class TooManyAttempts(LoyaltyError):
    status = 429
    code = "too_many_sign_in_attempts"
    title = "Too many failed sign-in attempts"


class SignInRefused(LoyaltyError):
    status = 401
    code = "sign_in_refused"
    title = "Wrong user name or password"


@dataclass(frozen=True)
class AdminUser:
    id: int
    username: str
    roles: frozenset[str]
    locale: str
    session_epoch: int

    def may(self, *roles: str) -> bool:
        """Whether the user holds one of ``roles``."""
        return not self.roles.isdisjoint(roles)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 * 1024 * 1024, dklen=32
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def check_password(stored: str, password: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        found = hashlib.scrypt(
            password.encode(),
            salt=bytes.fromhex(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=64 * 1024 * 1024,
            dklen=len(digest) // 2,
        )
    except ValueError:
        return False
    return hmac.compare_digest(found.hex(), digest)


#: A hash of no password, checked when the user is unknown so that a wrong name takes as long as a wrong password.
_NOBODY = hash_password(secrets.token_urlsafe(16))


def parse_roles(roles: Any, field: str = "roles") -> frozenset[str]:
    items = roles.split(",") if isinstance(roles, str) else roles
    chosen = frozenset(r.strip() for r in items if r.strip())
    unknown = chosen - set(ROLES)
    if not chosen or unknown:
        raise ValidationError.one(
            field,
            f"choose one or more of {', '.join(ROLES)}"
            + (f"; unknown: {', '.join(sorted(unknown))}" if unknown else ""),
        )
    return chosen


def check_new_password(password: str, field: str = "password") -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValidationError.one(field, f"must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")


def generate_password() -> str:
    return secrets.token_urlsafe(15)


def _user(row: Any) -> AdminUser:
    return AdminUser(row.id, row.username, frozenset(row.roles.split(",")), row.locale, row.session_epoch)


def _view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "username": row.username,
        "roles": sorted(row.roles.split(",")),
        "locale": row.locale,
        "created_at": row.created_at,
        "disabled_at": row.disabled_at,
    }


def _row(conn: Connection, username: str, *, lock: bool = False) -> Any:
    q = sa.select(admin_users).where(admin_users.c.username == username)
    row = conn.execute(q.with_for_update() if lock else q).first()
    if row is None:
        raise NotFound(f"no admin user {username!r}", field="username")
    return row


def create(
    conn: Connection,
    *,
    username: str,
    password: str,
    roles: frozenset[str],
    locale: str = "zh_CN",
    actor: str,
    now: dt.datetime,
) -> dict[str, Any]:
    """Add a user; the password is stored hashed only."""
    if not USERNAME.fullmatch(username):
        raise ValidationError.one("username", "2 to 64 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit")
    check_new_password(password)
    if locale not in LOCALES:
        raise ValidationError.one("locale", f"must be one of {', '.join(LOCALES)}")
    roles = parse_roles(sorted(roles))
    if conn.execute(sa.select(admin_users.c.id).where(admin_users.c.username == username)).first():
        raise UserExists(f"the admin user {username!r} exists", field="username")
    conn.execute(
        admin_users.insert().values(
            username=username,
            password_hash=hash_password(password),
            roles=",".join(sorted(roles)),
            locale=locale,
            created_at=now,
            session_epoch=0,
        )
    )
    after = {"username": username, "roles": sorted(roles), "locale": locale}
    audit.record(
        conn,
        actor=actor,
        action="admin_user.create",
        object_type="admin_user",
        object_id=username,
        after=after,
        now=now,
    )
    return _view(_row(conn, username))


def set_roles(
    conn: Connection, username: str, roles: frozenset[str], *, actor: str, now: dt.datetime
) -> dict[str, Any]:
    roles = parse_roles(sorted(roles))
    row = _row(conn, username, lock=True)
    conn.execute(admin_users.update().where(admin_users.c.id == row.id).values(roles=",".join(sorted(roles))))
    audit.record(
        conn,
        actor=actor,
        action="admin_user.roles",
        object_type="admin_user",
        object_id=username,
        before={"roles": sorted(row.roles.split(","))},
        after={"roles": sorted(roles)},
        now=now,
    )
    return _view(_row(conn, username))


def set_locale(conn: Connection, user_id: int, locale: str) -> None:
    """A user's own choice of language (not audited: it changes nothing but their pages)."""
    if locale not in LOCALES:
        raise ValidationError.one("locale", f"must be one of {', '.join(LOCALES)}")
    conn.execute(admin_users.update().where(admin_users.c.id == user_id).values(locale=locale))


def disable(conn: Connection, username: str, *, actor: str, now: dt.datetime) -> dict[str, Any]:
    """Refuse the user's sign-ins from now on and end their sessions."""
    row = _row(conn, username, lock=True)
    if row.disabled_at is None:
        conn.execute(
            admin_users.update()
            .where(admin_users.c.id == row.id)
            .values(disabled_at=now, session_epoch=row.session_epoch + 1)
        )
        audit.record(
            conn, actor=actor, action="admin_user.disable", object_type="admin_user", object_id=username, now=now
        )
    return _view(_row(conn, username))


def reset_password(conn: Connection, username: str, password: str, *, actor: str, now: dt.datetime) -> dict[str, Any]:
    """A new password; the user's sessions end, and a disabled user is enabled again."""
    check_new_password(password)
    row = _row(conn, username, lock=True)
    conn.execute(
        admin_users.update()
        .where(admin_users.c.id == row.id)
        .values(password_hash=hash_password(password), session_epoch=row.session_epoch + 1, disabled_at=None)
    )
    audit.record(
        conn, actor=actor, action="admin_user.reset_password", object_type="admin_user", object_id=username, now=now
    )
    return _view(_row(conn, username))


def list_users(conn: Connection) -> list[dict[str, Any]]:
    return [_view(r) for r in conn.execute(sa.select(admin_users).order_by(admin_users.c.username))]


def exists(conn: Connection, username: str) -> bool:
    return conn.execute(sa.select(admin_users.c.id).where(admin_users.c.username == username)).first() is not None


def load(conn: Connection, user_id: int, epoch: int) -> AdminUser | None:
    """The enabled user of a session, unless a reset or a disable has ended the session since."""
    row = conn.execute(
        sa.select(admin_users).where(
            admin_users.c.id == user_id,
            admin_users.c.disabled_at.is_(None),
            admin_users.c.session_epoch == epoch,
        )
    ).first()
    return None if row is None else _user(row)


def failures(conn: Connection, *, username: str, address: str, now: dt.datetime) -> tuple[int, int]:
    """Failed attempts within the window on the account and from the address."""
    a = sign_in_attempts.c
    since = now - WINDOW

    def count(column: sa.ColumnElement[str], value: str) -> int:
        return int(
            conn.execute(
                sa.select(sa.func.count()).where(column == value, a.at > since, a.succeeded.is_(False))
            ).scalar_one()
        )

    return count(a.username, username), count(a.address, address)


def sign_in(conn: Connection, *, username: str, password: str, address: str, now: dt.datetime) -> AdminUser:
    """The user, if the password is theirs and neither the account nor the address is locked out.

    The attempt is recorded in the caller's transaction, which must commit even when this raises."""
    username = username.strip().lower()[:64]
    address = address[:64]
    by_user, by_address = failures(conn, username=username, address=address, now=now)
    if by_user >= MAX_FAILURES_PER_USER or by_address >= MAX_FAILURES_PER_ADDRESS:
        conn.execute(sign_in_attempts.insert().values(at=now, username=username, address=address, succeeded=False))
        audit.record(
            conn,
            actor=username,
            action="admin.sign_in_locked",
            object_type="admin_user",
            object_id=username,
            after={"address": address},
            now=now,
        )
        minutes = int(WINDOW.total_seconds() // 60)
        raise TooManyAttempts(f"too many failed attempts; try again in {minutes} minutes", field="username")
    row = conn.execute(sa.select(admin_users).where(admin_users.c.username == username)).first()
    good = check_password(row.password_hash if row is not None else _NOBODY, password)
    ok = bool(row is not None and good and row.disabled_at is None)
    conn.execute(sign_in_attempts.insert().values(at=now, username=username, address=address, succeeded=ok))
    audit.record(
        conn,
        actor=username,
        action="admin.sign_in" if ok else "admin.sign_in_failed",
        object_type="admin_user",
        object_id=username,
        after={"address": address},
        now=now,
    )
    if not ok:
        raise SignInRefused("the user name or the password is wrong", field="password")
    return _user(row)


def sign_out(conn: Connection, user: AdminUser, *, address: str, now: dt.datetime) -> None:
    audit.record(
        conn,
        actor=user.username,
        action="admin.sign_out",
        object_type="admin_user",
        object_id=user.username,
        after={"address": address[:64]},
        now=now,
    )

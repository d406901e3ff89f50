"""Four eyes: requests one principal makes and another decides.

Manual adjustments (:mod:`loyalty.members.adjustments`) and tier override requests
(:mod:`loyalty.tiers.override_requests`) share this shape: a row asked for by one principal,
approved or rejected by another, never by the one who asked (refused with
:class:`~loyalty.errors.FourEyes`; the tables' CHECK constraints say the same). A :class:`Kind`
says which table and names; it reads, locks and decides the rows and writes their audit lines.
What approval does (post to the ledger, set the override) stays with each kind.

The principal is whoever the entry point authenticated: the API key's name, or the admin UI's
signed-in user. Every function runs in the caller's transaction and never commits.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty import audit
from loyalty.errors import Conflict, FourEyes, NotFound, ValidationError

#: Longest principal name, as the audit log stores it.
MAX_PRINCIPAL = 100


def principal_name(principal: str) -> str:
    """The principal's name stripped; a blank or overlong one is a programming error."""
    name = principal.strip()
    if not name or len(name) > MAX_PRINCIPAL:
        raise ValueError(f"a principal is 1 to {MAX_PRINCIPAL} characters")
    return name


@dataclass(frozen=True)
class Kind:
    """One kind of four-eyes request: its table (keyed by ``member_id`` and ``id``, with
    ``status``, ``requested_by``, ``requested_at``, ``decided_by``, ``decided_at`` and ``note``)
    and how it is named."""

    table: sa.Table
    #: the audit log's ``object_type``, and the prefix of its actions
    object_type: str
    #: how messages name one, e.g. ``adjustment``
    noun: str
    #: the field naming one in answers and problems, e.g. ``adjustment_id``
    id_field: str
    #: the status of one not decided yet
    open_status: str
    statuses: tuple[str, ...]
    #: raised when it was decided already, with ``<status_field>=`` its status
    not_pending: type[Conflict]
    status_field: str
    #: the longest reason or note
    max_text: int
    view: Callable[[Any], dict[str, Any]]

    def text(self, value: str | None, field: str, *, required: bool) -> str | None:
        """The text stripped; a blank one is refused, and so is none at all when ``required``."""
        if value is None and not required:
            return None
        text = (value or "").strip()
        if not text:
            raise ValidationError.one(field, f"must say why, in 1 to {self.max_text} characters")
        if len(text) > self.max_text:
            raise ValidationError.one(field, f"must be at most {self.max_text} characters")
        return text

    def _not_found(self, request_id: str) -> NotFound:
        return NotFound(f"no {self.noun} {request_id!r}", field=self.id_field)

    def _select(self, request_id: str) -> sa.Select[Any]:
        try:
            key = str(uuid.UUID(request_id))
        except ValueError:
            raise self._not_found(request_id) from None
        return sa.select(self.table).where(self.table.c.id == key)

    def get(self, conn: Connection, request_id: str) -> dict[str, Any]:
        """One request; :class:`NotFound` if there is none with that id."""
        row = conn.execute(self._select(request_id)).first()
        if row is None:
            raise self._not_found(request_id)
        return self.view(row)

    def list(
        self, conn: Connection, *, status: str | None = None, member_id: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """Requests newest first, at most ``limit``, optionally of one status and one member."""
        if status is not None and status not in self.statuses:
            raise ValidationError.one("status", f"must be one of {', '.join(self.statuses)}")
        c = self.table.c
        q = sa.select(self.table)
        if status is not None:
            q = q.where(c.status == status)
        if member_id is not None:
            q = q.where(c.member_id == member_id)
        return [self.view(r) for r in conn.execute(q.order_by(c.requested_at.desc(), c.id.desc()).limit(limit))]

    def record(self, conn: Connection, row: dict[str, Any], *, principal: str, now: dt.datetime) -> dict[str, Any]:
        """Store a new request (``row``: its columns but the status and who asked when) and its
        audit line; returns it as :attr:`view` shows it."""
        conn.execute(
            self.table.insert().values(**row, status=self.open_status, requested_by=principal, requested_at=now)
        )
        made = self.get(conn, str(row["id"]))
        audit.record(
            conn,
            actor=principal,
            action=f"{self.object_type}.requested",
            object_type=self.object_type,
            object_id=str(row["id"]),
            after=made,
            now=now,
        )
        return made

    def pending(self, conn: Connection, request_id: str, principal: str) -> Any:
        """Lock the request and read it; refuse one that is decided, or a principal deciding their own."""
        row = conn.execute(self._select(request_id).with_for_update()).first()
        if row is None:
            raise self._not_found(request_id)
        if row.status != self.open_status:
            raise self.not_pending(
                f"{self.noun} {request_id!r} is already {row.status}", **{self.status_field: row.status}
            )
        if row.requested_by.casefold() == principal.casefold():
            raise FourEyes(
                f"{principal!r} requested {self.noun} {request_id!r}: another person must approve or reject it",
                field="principal",
            )
        return row

    def decide(
        self,
        conn: Connection,
        row: Any,
        status: str,
        *,
        principal: str,
        note: str | None,
        now: dt.datetime,
        **values: Any,
    ) -> dict[str, Any]:
        """Write the decision on a request :meth:`pending` locked (and ``values``, other columns),
        only where it is still open, with its audit line; returns the request after it."""
        c = self.table.c
        decided = conn.execute(
            sa.update(self.table)
            .where(c.member_id == row.member_id, c.id == row.id, c.status == self.open_status)
            .values(status=status, decided_by=principal, decided_at=now, note=note, **values)
        )
        if decided.rowcount != 1:
            # Another decision came first (where the row lock cannot be had): undo this one.
            raise self.not_pending(f"{self.noun} {row.id!r} was decided meanwhile")
        after = self.get(conn, str(row.id))
        audit.record(
            conn,
            actor=principal,
            action=f"{self.object_type}.{status}",
            object_type=self.object_type,
            object_id=str(row.id),
            before=self.view(row),
            after=after,
            now=now,
        )
        return after

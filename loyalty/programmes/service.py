"""Programme versions: drafts, publication, and which version is in force when.

A published version is in force from its ``effective_from`` until the next
one's. Publication must be at least :data:`PUBLISH_LEAD` ahead, so that every
node's cache (refreshed every :data:`RELOAD_AFTER`) knows of a version before
it takes effect.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import threading
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from loyalty import audit
from loyalty.calendar import iso
from loyalty.db import insert_ignore, transaction
from loyalty.errors import Conflict, LoyaltyError, NotFound, RuleDocumentError, ValidationError
from loyalty.ledger.models import accounts
from loyalty.programmes.models import programme_versions
from rules import Programme, RuleError, default_document, dump_programme, load_programme

PUBLISH_LEAD = dt.timedelta(minutes=1)
RELOAD_AFTER = dt.timedelta(seconds=30)


class NoProgramme(LoyaltyError):
    status = 422
    code = "no_programme"
    title = "No programme in force"


def parse(document: Any) -> Programme:
    """Validate a document; a bad one is a 422 naming the JSON path of the fault."""
    try:
        return load_programme(document)
    except RuleError as exc:
        raise RuleDocumentError(exc.message, field=exc.path) from None


def _json(p: Programme) -> str:
    return json.dumps(dump_programme(p), ensure_ascii=False, sort_keys=True)


def create_draft(conn: Connection, document: Any, *, actor: str, now: dt.datetime) -> dict[str, Any]:
    """Save a new draft version. Invalid documents are refused here, not when they run."""
    programme = parse(document)
    created = conn.execute(
        insert_ignore(conn, programme_versions)
        .values(
            version=programme.version,
            status="draft",
            document=_json(programme),
            created_by=actor,
            created_at=now,
            updated_at=now,
        )
        .returning(programme_versions.c.version)
    ).first()
    if created is None:
        raise Conflict(f"version {programme.version!r} exists already", field="version")
    audit.record(
        conn,
        actor=actor,
        action="programme.draft_created",
        object_type="programme",
        object_id=programme.version,
        after=dump_programme(programme),
        now=now,
    )
    return version_view(conn, programme.version)


def replace_draft(conn: Connection, version: str, document: Any, *, actor: str, now: dt.datetime) -> dict[str, Any]:
    programme = parse(document)
    if programme.version != version:
        raise ValidationError.one("version", f"the document is version {programme.version!r}, not {version!r}")
    row = _locked(conn, version)
    if row.status != "draft":
        raise Conflict(f"version {version!r} is published and can no longer change", field="version")
    pv = programme_versions.c
    conn.execute(
        sa.update(programme_versions).where(pv.version == version).values(document=_json(programme), updated_at=now)
    )
    audit.record(
        conn,
        actor=actor,
        action="programme.draft_updated",
        object_type="programme",
        object_id=version,
        before=json.loads(row.document),
        after=dump_programme(programme),
        now=now,
    )
    return version_view(conn, version)


def _locked(conn: Connection, version: str) -> sa.Row[Any]:
    pv = programme_versions.c
    row = conn.execute(sa.select(programme_versions).where(pv.version == version).with_for_update()).first()
    if row is None:
        raise NotFound(f"no programme version {version!r}", field="version")
    return row


def publish(
    conn: Connection, version: str, *, effective_from: dt.datetime | None, actor: str, now: dt.datetime
) -> dict[str, Any]:
    """Publish a draft, in force from ``effective_from`` (or its document's), never in the past."""
    row = _locked(conn, version)
    if row.status != "draft":
        raise Conflict(f"version {version!r} is already published", field="version")
    programme = parse(json.loads(row.document))
    when = effective_from or programme.effective_from
    if when < now + PUBLISH_LEAD:
        raise ValidationError.one(
            "effective_from",
            f"must be at least {int(PUBLISH_LEAD.total_seconds())} seconds from now, never in the past",
        )
    doc = dump_programme(programme)
    doc["effective_from"] = iso(when)
    pv = programme_versions.c
    clash = conn.execute(sa.select(pv.version).where(pv.status == "published", pv.effective_from == when)).scalar()
    if clash is not None:
        raise Conflict(f"version {clash!r} already takes effect at {doc['effective_from']}", field="effective_from")
    ensure_accounts(conn, parse(doc))
    conn.execute(
        sa.update(programme_versions)
        .where(pv.version == version)
        .values(
            status="published",
            effective_from=when,
            document=json.dumps(doc, ensure_ascii=False, sort_keys=True),
            published_by=actor,
            published_at=now,
            updated_at=now,
        )
    )
    audit.record(
        conn,
        actor=actor,
        action="programme.published",
        object_type="programme",
        object_id=version,
        before=json.loads(row.document),
        after=doc,
        now=now,
    )
    return version_view(conn, version)


def ensure_accounts(conn: Connection, programme: Programme) -> None:
    """Every funding source the programme books to gets its ``issued:`` account."""
    for source in sorted(programme.funding_sources):
        conn.execute(
            insert_ignore(conn, accounts).values(
                code=f"issued:{source}", kind="issued", name=f"Points issued, funded by {source}"
            )
        )


def install_default(conn: Connection, *, now: dt.datetime) -> str | None:
    """Publish the shipped default programme if no version is published yet.

    This is the one publication allowed to start in the past: it is the
    programme the bank starts with. Returns the version installed, if any.
    """
    pv = programme_versions.c
    if conn.execute(sa.select(pv.version).where(pv.status == "published").limit(1)).first() is not None:
        return None
    programme = parse(default_document())
    ensure_accounts(conn, programme)
    doc = dump_programme(programme)
    conn.execute(
        insert_ignore(conn, programme_versions).values(
            version=programme.version,
            status="published",
            document=json.dumps(doc, ensure_ascii=False, sort_keys=True),
            effective_from=programme.effective_from,
            created_by="system",
            created_at=now,
            updated_at=now,
            published_by="system",
            published_at=now,
        )
    )
    audit.record(
        conn,
        actor="system",
        action="programme.installed",
        object_type="programme",
        object_id=programme.version,
        after=doc,
        now=now,
    )
    return programme.version


def version_view(conn: Connection, version: str, *, with_document: bool = True) -> dict[str, Any]:
    pv = programme_versions.c
    row = conn.execute(sa.select(programme_versions).where(pv.version == version)).first()
    if row is None:
        raise NotFound(f"no programme version {version!r}", field="version")
    return _view(row, with_document)


def _view(row: Any, with_document: bool) -> dict[str, Any]:
    view = {
        "version": row.version,
        "status": row.status,
        "effective_from": iso(row.effective_from),
        "created_by": row.created_by,
        "created_at": iso(row.created_at),
        "published_by": row.published_by,
        "published_at": iso(row.published_at),
    }
    if with_document:
        view["document"] = json.loads(row.document)
    return view


def list_versions(conn: Connection) -> list[dict[str, Any]]:
    pv = programme_versions.c
    rows = conn.execute(sa.select(programme_versions).order_by(pv.effective_from.desc().nulls_first(), pv.version))
    return [_view(r, False) for r in rows]


def draft(conn: Connection, version: str) -> Programme:
    """Any saved version, draft or published, as a programme (for simulations and backtests)."""
    pv = programme_versions.c
    doc = conn.execute(sa.select(pv.document).where(pv.version == version)).scalar()
    if doc is None:
        raise NotFound(f"no programme version {version!r}", field="version")
    return parse(json.loads(doc))


class ProgrammeStore:
    """The published versions, cached in this process and refreshed from the database.

    :meth:`at` answers which version is in force at a moment. The cache is
    reloaded when it is older than :data:`RELOAD_AFTER`, or when asked about a
    moment that a version published after the last load could govern.
    """

    def __init__(self, engine: Engine, clock: Callable[[], dt.datetime]) -> None:
        self.engine = engine
        self.clock = clock
        self._lock = threading.Lock()
        self._loaded_at: dt.datetime | None = None
        self._starts: list[dt.datetime] = []
        self._programmes: list[Programme] = []
        self._parsed: dict[str, Programme] = {}

    def invalidate(self) -> None:
        with self._lock:
            self._loaded_at = None

    def at(self, moment: dt.datetime) -> Programme:
        """The version in force at ``moment``."""
        now = self.clock()
        with self._lock:
            loaded = self._loaded_at
            if loaded is None or now - loaded >= RELOAD_AFTER or moment >= loaded + PUBLISH_LEAD:
                self._reload(now)
            i = bisect.bisect_right(self._starts, moment) - 1
            if i < 0:
                raise NoProgramme(
                    f"no programme version is in force at {iso(moment)}; publish one "
                    "(or run 'loyalty rules install-default')",
                    field="occurred_at",
                )
            return self._programmes[i]

    def _reload(self, now: dt.datetime) -> None:
        pv = programme_versions.c
        with self.engine.execution_options(readonly=True).connect() as conn:
            rows = conn.execute(
                sa.select(pv.version, pv.document, pv.effective_from)
                .where(pv.status == "published")
                .order_by(pv.effective_from)
            ).all()
        programmes = []
        for row in rows:
            if row.version not in self._parsed:
                self._parsed[row.version] = parse(json.loads(row.document))
            programmes.append(self._parsed[row.version])
        self._starts = [r.effective_from for r in rows]
        self._programmes = programmes
        self._loaded_at = now


def installed(engine: Engine, now: dt.datetime) -> str | None:
    """Install the default programme in its own transaction (``make run``, tests)."""
    with transaction(engine) as conn:
        return install_default(conn, now=now)

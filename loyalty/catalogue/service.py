"""The benefit catalogue: creating, editing, pausing and retiring benefits, and filling code pools.

Every change to a benefit's definition or status raises its ``version`` by
one, stores the whole benefit as it now stands in ``benefit_versions`` and
writes an audit line with the state before and after, all in the caller's
transaction. Stock movements (code uploads, redemptions) change no version;
uploads are audited with counts only, never codes.

Documents are validated here, so the API and the shipped default catalogue
pass the same checks; every bad field is named with a dotted path
(``entitlements.hnw.quota``).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loyalty import audit
from loyalty.calendar import iso
from loyalty.catalogue.benefit import BenefitNotFound
from loyalty.catalogue.codes import CodeBox, add_codes
from loyalty.catalogue.models import (
    BENEFIT_COLUMNS,
    CODE_STATUSES,
    FULFILMENTS,
    KINDS,
    PERIODS,
    benefit_versions,
    benefits,
    voucher_codes,
)
from loyalty.db import insert_ignore
from loyalty.errors import Conflict, LoyaltyError, ValidationError
from loyalty.ledger.models import accounts

CODE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")
#: partner and funding source names
NAME_RE = CODE_RE
#: largest amount of money (fen), points, stock or threshold accepted
MAX_AMOUNT = 10**12
#: largest quota or per-member limit accepted
MAX_UNITS = 10**6
MAX_CANCEL_HOURS = 720
MAX_NAME = 200
MAX_DESCRIPTION = 4000
#: statuses a benefit may be created in
CREATE_STATUSES = ("draft", "active")
#: status -> statuses it may move to (besides ``retired``, which any status but itself may)
TRANSITIONS = {"draft": ("active",), "active": ("paused",), "paused": ("active",), "retired": ()}

#: definition fields stored as JSON text
JSON_FIELDS = ("tier_prices", "eligible_tiers", "entitlements", "limits")

b = benefits.c


class BenefitExists(Conflict):
    code = "benefit_exists"
    title = "Benefit already exists"


class BenefitRetired(Conflict):
    code = "benefit_retired"
    title = "Benefit retired"


class InvalidTransition(Conflict):
    code = "invalid_status_transition"
    title = "Status change not allowed"


class StaleVersion(Conflict):
    code = "stale_version"
    title = "The benefit has changed since that version"


class NotAPool(LoyaltyError):
    status = 422
    code = "not_a_code_pool"
    title = "Benefit has no code pool"


class SecretKeyMissing(LoyaltyError):
    status = 503
    code = "secret_key_missing"
    title = "Voucher codes are not configured"


def code_box(secret_key: str) -> CodeBox:
    """The box voucher codes are sealed with; refused while ``LOYALTY_SECRET_KEY`` is unset or short."""
    if len(secret_key) < 16:
        raise SecretKeyMissing(
            "voucher codes are stored encrypted under LOYALTY_SECRET_KEY, which "
            + ("is not set" if not secret_key else "is shorter than 16 characters")
            + "; set it (at least 16 characters, the same on every node) and restart",
            field="LOYALTY_SECRET_KEY",
        )
    return CodeBox(secret_key)


# --- documents ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Definition:
    """The editable fields of a benefit, validated; money in fen, prices in points."""

    name: str
    description: str
    kind: str
    fulfilment: str
    partner: str | None
    face_value: int
    unit_cost: int
    funding_source: str
    points_price: int | None
    tier_prices: dict[str, int]
    eligible_tiers: list[str]
    entitlements: dict[str, dict[str, Any]]
    stock: int | None
    low_stock_threshold: int | None
    limits: dict[str, int]
    valid_from: dt.datetime | None
    valid_until: dt.datetime | None
    cancel_hours: int

    def columns(self) -> dict[str, Any]:
        """The definition as ``benefits`` column values (JSON fields encoded)."""
        values = asdict(self)
        for name in JSON_FIELDS:
            values[name] = _dumps(values[name])
        return values


@dataclass(frozen=True)
class NewBenefit:
    code: str
    status: str
    definition: Definition


@dataclass(frozen=True)
class Replacement:
    definition: Definition
    #: the version the editor started from; a newer stored version is a conflict
    version: int | None


#: field -> default when a document leaves it out (``...``: required)
DEFINITION_FIELDS: dict[str, Any] = {
    "name": ...,
    "description": "",
    "kind": ...,
    "fulfilment": ...,
    "partner": None,
    "face_value": ...,
    "unit_cost": ...,
    "funding_source": "bank",
    "points_price": None,
    "tier_prices": {},
    "eligible_tiers": [],
    "entitlements": {},
    "stock": None,
    "low_stock_threshold": None,
    "limits": {},
    "valid_from": None,
    "valid_until": None,
    "cancel_hours": 0,
}


def parse_new(doc: Any, tiers: Sequence[str]) -> NewBenefit:
    """A benefit to create: ``code``, optional ``status`` (draft or active) and the definition."""
    errors: dict[str, list[str]] = {}
    doc = _object(doc)
    _unknown(doc, {"code", "status", *DEFINITION_FIELDS}, errors)
    code = _required(doc, "code", errors)
    if code is not None and not (isinstance(code, str) and CODE_RE.match(code)):
        _error(errors, "code", "must be 1-64 lower-case letters, digits, - or _, starting with a letter or digit")
    status = doc.get("status", "draft")
    if status not in CREATE_STATUSES:
        _error(errors, "status", "a new benefit is draft or active")
    definition = _definition(doc, tiers, errors)
    if errors:
        raise ValidationError(errors)
    assert definition is not None
    return NewBenefit(code=code, status=status, definition=definition)


def parse_replacement(doc: Any, code: str, tiers: Sequence[str]) -> Replacement:
    """A full replacement of a benefit's definition; ``code`` and ``version`` may be sent back as read."""
    errors: dict[str, list[str]] = {}
    doc = _object(doc)
    if "status" in doc:
        _error(errors, "status", f"change the status with POST /v1/benefits/{code}/status")
    _unknown(doc, {"code", "version", "status", *DEFINITION_FIELDS}, errors)
    if "code" in doc and doc["code"] != code:
        _error(errors, "code", f"must be {code!r}, the benefit named in the path, or left out")
    version = doc.get("version")
    if version is not None and not _integer(version, 1, 2**31 - 1):
        _error(errors, "version", "must be the integer version the change is based on, or left out")
    definition = _definition(doc, tiers, errors)
    if errors:
        raise ValidationError(errors)
    assert definition is not None
    return Replacement(definition=definition, version=version)


def _object(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise ValidationError.one("body", "must be a JSON object")
    return doc


def _error(errors: dict[str, list[str]], field: str, message: str) -> None:
    errors.setdefault(field, []).append(message)


def _unknown(doc: dict[str, Any], known: set[str], errors: dict[str, list[str]]) -> None:
    for key in doc:
        if key not in known:
            _error(errors, str(key), "unknown field")


def _required(doc: dict[str, Any], name: str, errors: dict[str, list[str]]) -> Any:
    if doc.get(name) is None:
        _error(errors, name, "is required")
        return None
    return doc[name]


def _integer(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _text(value: Any, high: int, *, blank: bool) -> bool:
    return (
        isinstance(value, str)
        and len(value) <= high
        and (blank or bool(value.strip()))
        and not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", value)
    )


def _timestamp(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not re.match(r"^\d{4}-\d{2}-\d{2}T", value):
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.astimezone(dt.UTC) if moment.tzinfo is not None else None


def _definition(doc: dict[str, Any], tiers: Sequence[str], errors: dict[str, list[str]]) -> Definition | None:
    """The definition fields of ``doc``, checked one by one and then against each other."""
    v = {
        name: doc.get(name, copy.deepcopy(default)) for name, default in DEFINITION_FIELDS.items() if default is not ...
    }
    for name in ("name", "kind", "fulfilment", "face_value", "unit_cost"):
        v[name] = _required(doc, name, errors)
    before = len(errors)
    tier_list = ", ".join(tiers)

    if v["name"] is not None and not _text(v["name"], MAX_NAME, blank=False):
        _error(errors, "name", f"must be 1-{MAX_NAME} characters, not blank, without control characters")
    if not _text(v["description"], MAX_DESCRIPTION, blank=True):
        _error(errors, "description", f"must be text of at most {MAX_DESCRIPTION} characters")
    if v["kind"] is not None and v["kind"] not in KINDS:
        _error(errors, "kind", f"must be one of {', '.join(KINDS)}")
    if v["fulfilment"] is not None and v["fulfilment"] not in FULFILMENTS:
        _error(errors, "fulfilment", f"must be one of {', '.join(FULFILMENTS)}")
    if v["partner"] is not None and not (isinstance(v["partner"], str) and NAME_RE.match(v["partner"])):
        _error(errors, "partner", "must be 1-64 lower-case letters, digits, - or _, or null")
    for name in ("face_value", "unit_cost"):
        if v[name] is not None and not _integer(v[name], 0, MAX_AMOUNT):
            _error(errors, name, f"must be an integer number of fen from 0 to {MAX_AMOUNT}")
    if not (isinstance(v["funding_source"], str) and NAME_RE.match(v["funding_source"])):
        _error(errors, "funding_source", "must be 1-64 lower-case letters, digits, - or _ (bank, or a partner)")
    if v["points_price"] is not None and not _integer(v["points_price"], 1, MAX_AMOUNT):
        _error(errors, "points_price", f"must be an integer from 1 to {MAX_AMOUNT} points, or null")

    if not isinstance(v["eligible_tiers"], list):
        _error(errors, "eligible_tiers", "must be a list of tiers (empty: every tier)")
    else:
        for i, tier in enumerate(v["eligible_tiers"]):
            if not isinstance(tier, str) or tier not in tiers:
                _error(errors, f"eligible_tiers.{i}", f"must be a tier of the ladder in force: {tier_list}")
            elif v["eligible_tiers"].index(tier) != i:
                _error(errors, f"eligible_tiers.{i}", f"lists {tier!r} twice")
    eligible = v["eligible_tiers"] if isinstance(v["eligible_tiers"], list) else []

    def tier_key(field: str, tier: Any) -> bool:
        if tier not in tiers:
            _error(errors, f"{field}.{tier}", f"is not a tier of the ladder in force: {tier_list}")
            return False
        if eligible and tier not in eligible:
            _error(errors, f"{field}.{tier}", "is not one of eligible_tiers")
            return False
        return True

    if not isinstance(v["tier_prices"], dict):
        _error(errors, "tier_prices", "must be an object of tier -> points")
    else:
        for tier, price in v["tier_prices"].items():
            if tier_key("tier_prices", tier) and not _integer(price, 1, MAX_AMOUNT):
                _error(errors, f"tier_prices.{tier}", f"must be an integer from 1 to {MAX_AMOUNT} points")

    if not isinstance(v["entitlements"], dict):
        _error(errors, "entitlements", 'must be an object of tier -> {"quota": n, "period": "day|month|year"}')
    else:
        for tier, grant in v["entitlements"].items():
            if not tier_key("entitlements", tier):
                continue
            if not isinstance(grant, dict):
                _error(errors, f"entitlements.{tier}", 'must be {"quota": n, "period": "day|month|year"}')
                continue
            for key in grant:
                if key not in ("quota", "period"):
                    _error(errors, f"entitlements.{tier}.{key}", "unknown field")
            if not _integer(grant.get("quota"), 1, MAX_UNITS):
                _error(errors, f"entitlements.{tier}.quota", f"must be an integer from 1 to {MAX_UNITS}")
            if grant.get("period") not in PERIODS:
                _error(errors, f"entitlements.{tier}.period", f"must be one of {', '.join(PERIODS)}")

    if v["stock"] is not None and not _integer(v["stock"], 0, MAX_AMOUNT):
        _error(errors, "stock", f"must be an integer from 0 to {MAX_AMOUNT}, or null for unlimited")
    if v["low_stock_threshold"] is not None and not _integer(v["low_stock_threshold"], 0, MAX_AMOUNT):
        _error(errors, "low_stock_threshold", f"must be an integer from 0 to {MAX_AMOUNT}, or null")
    if not isinstance(v["limits"], dict):
        _error(errors, "limits", "must be an object of period -> units, periods day, month, year")
    else:
        for period, most in v["limits"].items():
            if period not in PERIODS:
                _error(errors, f"limits.{period}", f"is not a period: {', '.join(PERIODS)}")
            elif not _integer(most, 1, MAX_UNITS):
                _error(errors, f"limits.{period}", f"must be an integer from 1 to {MAX_UNITS}")
    for name in ("valid_from", "valid_until"):
        if v[name] is not None:
            moment = _timestamp(v[name])
            if moment is None:
                _error(errors, name, "must be an ISO 8601 date-time with an offset, or null")
            v[name] = moment
    if not _integer(v["cancel_hours"], 0, MAX_CANCEL_HOURS):
        _error(errors, "cancel_hours", f"must be an integer number of hours from 0 to {MAX_CANCEL_HOURS}")

    if len(errors) > before or "kind" in errors or "fulfilment" in errors:
        return None
    # The fields are sound one by one; now how they go together.
    if v["fulfilment"] == "pool" and v["kind"] != "voucher":
        _error(errors, "fulfilment", "pool (codes uploaded in advance) is only for kind voucher")
    if v["fulfilment"] == "partner" and v["partner"] is None:
        _error(errors, "partner", "is required when fulfilment is partner")
    if v["fulfilment"] == "pool" and v["stock"] is not None:
        _error(errors, "stock", "of a pool benefit is the number of codes available; upload codes to raise it")
    if v["points_price"] is None:
        if v["tier_prices"]:
            _error(errors, "tier_prices", "needs a points_price: without one the benefit is an entitlement only")
        if not v["entitlements"]:
            _error(errors, "entitlements", "must grant at least one tier a quota when points_price is null")
    if v["valid_from"] is not None and v["valid_until"] is not None and v["valid_from"] >= v["valid_until"]:
        _error(errors, "valid_until", "must be after valid_from")
    if len(errors) > before:
        return None

    order = {tier: i for i, tier in enumerate(tiers)}
    v["eligible_tiers"] = sorted(v["eligible_tiers"], key=order.__getitem__)
    v["entitlements"] = {t: {"quota": g["quota"], "period": g["period"]} for t, g in v["entitlements"].items()}
    return Definition(**v)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


# --- views -------------------------------------------------------------------------------------


def document(row: Any) -> dict[str, Any]:
    """A benefit as stored in its versions and audit lines: everything but who changed it last."""
    return {
        "code": row.code,
        "version": int(row.version),
        "status": row.status,
        "name": row.name,
        "description": row.description,
        "kind": row.kind,
        "fulfilment": row.fulfilment,
        "partner": row.partner,
        "face_value": int(row.face_value),
        "unit_cost": int(row.unit_cost),
        "funding_source": row.funding_source,
        "points_price": None if row.points_price is None else int(row.points_price),
        "tier_prices": json.loads(row.tier_prices),
        "eligible_tiers": json.loads(row.eligible_tiers),
        "entitlements": json.loads(row.entitlements),
        "stock": None if row.stock is None else int(row.stock),
        "low_stock_threshold": None if row.low_stock_threshold is None else int(row.low_stock_threshold),
        "limits": json.loads(row.limits),
        "valid_from": iso(row.valid_from),
        "valid_until": iso(row.valid_until),
        "cancel_hours": int(row.cancel_hours),
    }


def view(row: Any) -> dict[str, Any]:
    """A benefit as the API shows it."""
    return {**document(row), "updated_by": row.updated_by, "updated_at": iso(row.updated_at)}


def _row(conn: Connection, code: str, *, lock: bool = False) -> Any:
    q = sa.select(*BENEFIT_COLUMNS).where(b.code == code)
    if lock:
        q = q.with_for_update(of=benefits, key_share=True)
    row = conn.execute(q).first()
    if row is None:
        raise BenefitNotFound(f"no benefit {code!r}", field="code")
    return row


def get(conn: Connection, code: str) -> dict[str, Any]:
    return view(_row(conn, code))


def list_benefits(conn: Connection, *, status: str | None = None) -> list[dict[str, Any]]:
    q = sa.select(*BENEFIT_COLUMNS).order_by(b.code)
    if status is not None:
        q = q.where(b.status == status)
    return [view(r) for r in conn.execute(q)]


def versions(conn: Connection, code: str) -> list[dict[str, Any]]:
    """Every version of a benefit, newest first."""
    _row(conn, code)
    bv = benefit_versions.c
    rows = conn.execute(sa.select(benefit_versions).where(bv.code == code).order_by(bv.version.desc()))
    return [
        {
            "version": int(r.version),
            "changed_by": r.changed_by,
            "changed_at": iso(r.changed_at),
            "document": json.loads(r.document),
        }
        for r in rows
    ]


# --- changes -----------------------------------------------------------------------------------


def _changed(conn: Connection, code: str, action: str, before: Any, *, actor: str, now: dt.datetime) -> dict[str, Any]:
    """Store the new version of ``code`` and audit the change; returns the benefit's view."""
    row = _row(conn, code)
    doc = document(row)
    conn.execute(
        benefit_versions.insert().values(
            code=code, version=row.version, document=_dumps(doc), changed_by=actor, changed_at=now
        )
    )
    audit.record(
        conn, actor=actor, action=action, object_type="benefit", object_id=code, before=before, after=doc, now=now
    )
    return view(row)


def create(conn: Connection, new: NewBenefit, *, actor: str, now: dt.datetime) -> dict[str, Any]:
    """Create a benefit at version 1, with its ledger account ``redeemed:<code>``."""
    values = new.definition.columns()
    created = conn.execute(
        insert_ignore(conn, benefits)
        .values(code=new.code, version=1, status=new.status, updated_by=actor, updated_at=now, **values)
        .returning(b.code)
    ).first()
    if created is None:
        raise BenefitExists(f"benefit {new.code!r} exists already; change it with PUT", field="code")
    conn.execute(
        insert_ignore(conn, accounts).values(
            code=f"redeemed:{new.code}", kind="redeemed", name=f"Points redeemed for benefit {new.code}"
        )
    )
    return _changed(conn, new.code, "benefit.created", None, actor=actor, now=now)


def _available_codes(conn: Connection, code: str) -> int:
    vc = voucher_codes.c
    return int(
        conn.execute(sa.select(sa.func.count()).where(vc.benefit_code == code, vc.status == "available")).scalar_one()
    )


def replace(conn: Connection, code: str, change: Replacement, *, actor: str, now: dt.datetime) -> dict[str, Any]:
    """Replace a benefit's definition; a new version unless nothing changes."""
    row = _row(conn, code, lock=True)
    if row.status == "retired":
        raise BenefitRetired(f"benefit {code!r} is retired and can no longer change", field="code")
    if change.version is not None and change.version != row.version:
        raise StaleVersion(
            f"benefit {code!r} is at version {row.version}, not {change.version}; read it again and redo the change",
            field="version",
        )
    values = change.definition.columns()
    was_pool = row.fulfilment == "pool"
    if was_pool and values["fulfilment"] != "pool":
        vc = voucher_codes.c
        if conn.execute(sa.select(vc.id).where(vc.benefit_code == code).limit(1)).first() is not None:
            raise ValidationError.one("fulfilment", "stays pool: codes have been uploaded to this benefit")
    if values["fulfilment"] == "pool":
        # Stock of a pool is its available codes, counted when read (STOCK), never stored.
        values["stock"] = None
    before = document(row)
    compared = {name: value for name, value in values.items() if not (name == "stock" and was_pool)}
    if all(_same(name, getattr(row, name), value) for name, value in compared.items()):
        return view(row)
    conn.execute(
        benefits.update()
        .where(b.code == code)
        .values(version=b.version + 1, updated_by=actor, updated_at=now, **values)
    )
    return _changed(conn, code, "benefit.updated", before, actor=actor, now=now)


def _same(name: str, stored: Any, value: Any) -> bool:
    if name in JSON_FIELDS:
        return bool(json.loads(stored) == json.loads(value))
    return bool(stored == value)


def set_status(conn: Connection, code: str, status: str, *, actor: str, now: dt.datetime) -> dict[str, Any]:
    """Move a benefit to ``status``: draft -> active, active <-> paused, any -> retired (final)."""
    row = _row(conn, code, lock=True)
    if status == row.status:
        return view(row)
    if row.status == "retired":
        raise BenefitRetired(f"benefit {code!r} is retired, which is final", field="status")
    if status != "retired" and status not in TRANSITIONS[row.status]:
        allowed = ", ".join((*TRANSITIONS[row.status], "retired"))
        raise InvalidTransition(
            f"benefit {code!r} is {row.status}; it can become {allowed}, not {status}", field="status"
        )
    before = document(row)
    conn.execute(
        benefits.update()
        .where(b.code == code)
        .values(version=b.version + 1, status=status, updated_by=actor, updated_at=now)
    )
    return _changed(conn, code, "benefit.status_changed", before, actor=actor, now=now)


# --- code pools ----------------------------------------------------------------------------------


def _pool(conn: Connection, code: str) -> Any:
    row = _row(conn, code, lock=True)
    if row.fulfilment != "pool":
        raise NotAPool(
            f"benefit {code!r} is fulfilled by {row.fulfilment}, not from a code pool; only pool benefits hold codes",
            field="code",
        )
    return row


def upload_codes(
    conn: Connection, box: CodeBox, code: str, codes: Iterable[str], *, actor: str, now: dt.datetime
) -> dict[str, Any]:
    """Add codes to a pool benefit; duplicates (in ``codes`` or already stored) are counted, not stored.

    The audit line holds the counts and never a code."""
    row = _pool(conn, code)
    if row.status == "retired":
        raise BenefitRetired(f"benefit {code!r} is retired; its pool takes no more codes", field="code")
    added, duplicates = add_codes(conn, box, code, codes, now=now)
    stock = _available_codes(conn, code)
    result = {"benefit_code": code, "added": added, "duplicates": duplicates, "stock": stock}
    audit.record(
        conn,
        actor=actor,
        action="benefit.codes_added",
        object_type="benefit",
        object_id=code,
        before={"stock": None if row.stock is None else int(row.stock)},
        after={"added": added, "duplicates": duplicates, "stock": stock},
        now=now,
    )
    return result


def code_counts(conn: Connection, code: str) -> dict[str, Any]:
    """How many of a pool's codes are in each status, and the benefit's stock."""
    vc = voucher_codes.c
    row = _row(conn, code)
    if row.fulfilment != "pool":
        raise NotAPool(f"benefit {code!r} is fulfilled by {row.fulfilment}, not from a code pool", field="code")
    counts = dict.fromkeys(CODE_STATUSES, 0)
    rows = conn.execute(sa.select(vc.status, sa.func.count()).where(vc.benefit_code == code).group_by(vc.status))
    counts.update({status: int(n) for status, n in rows})
    return {"benefit_code": code, "stock": None if row.stock is None else int(row.stock), **counts}


# --- the default catalogue -----------------------------------------------------------------------


def default_catalogue() -> list[dict[str, Any]]:
    """The benefits shipped with the engine (``default_catalogue.json``), as documents."""
    text = resources.files("loyalty.catalogue").joinpath("default_catalogue.json").read_text("utf-8")
    return json.loads(text)["benefits"]  # type: ignore[no-any-return]


def install_default(
    conn: Connection, tiers: Sequence[str], *, actor: str, now: dt.datetime
) -> tuple[list[str], list[str]]:
    """Create the shipped benefits that do not exist yet; leave existing ones as they are.

    Returns the codes installed and the codes already present."""
    new = [parse_new(doc, tiers) for doc in default_catalogue()]
    present = set(conn.execute(sa.select(b.code).where(b.code.in_([n.code for n in new]))).scalars())
    installed = []
    for benefit in new:
        if benefit.code not in present:
            create(conn, benefit, actor=actor, now=now)
            installed.append(benefit.code)
    return installed, sorted(present)

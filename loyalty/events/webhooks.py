"""Webhooks: subscriptions, the fan-out of events to them, and signed delivery with retries.

A subscription names a URL, the event types it wants (none: every type) and
a secret. The secret is stored only sealed (:mod:`loyalty.sealing`, purpose
``webhook-secrets``, bound to the subscription id), with its last four
characters as a hint; it is opened to sign each delivery. A row written
before secrets were sealed (migration 0011) holds its secret in clear until
it is sealed, by the first run of the job with ``LOYALTY_SECRET_KEY`` set or
by ``loyalty webhooks seal-secrets`` (:func:`seal_legacy_secrets`); until
then deliveries are signed with the clear secret, so none is lost.

The ``webhooks`` job (:func:`deliver`) works in two steps:

1. Fan-out: for each active subscription it reads the feed after the
   subscription's cursor and queues one delivery per matching event, moving
   the cursor in the same transaction, a chunk at a time.
2. Sending: it posts each due delivery to its URL, signed, and records the
   answer. A 2xx delivers it; anything else, a connection error or a timeout
   is a failure, retried after an exponential backoff with full jitter, and
   after ``webhook_max_attempts`` failures the delivery is dead.

Each delivery is claimed in a short transaction before it is sent (its
``next_attempt_at`` is pushed ahead as a lease), so overlapping runs never
send it at the same time, and no transaction is open during an HTTP call.
A run that stops between sending and recording leaves the lease to run out
and the delivery to be sent again: delivery is at least once, and receivers
deduplicate on ``X-Loyalty-Event-Id``.

A member's deliveries to one subscription go out in feed order: one is not
attempted while an earlier one of the same member is still pending. Dead
deliveries no longer hold later ones back. Events without a member are not
ordered.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import json
import logging
import random
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from loyalty import audit, logmask
from loyalty.calendar import iso
from loyalty.db import insert_ignore, transaction
from loyalty.errors import Conflict, NotFound
from loyalty.events.models import DELIVERY_STATUSES, events, webhook_deliveries, webhook_subscriptions
from loyalty.events.service import encode_cursor, end_of_feed, event_json, visible
from loyalty.runtime import Outcome
from loyalty.sealing import Sealer, SecretKeyMissing, sealer

if TYPE_CHECKING:
    from loyalty.config import Settings
    from loyalty.runtime import Runtime

log = logging.getLogger(__name__)

#: events fanned out to one subscription in one transaction
FANOUT_CHUNK = 500
#: due deliveries picked at a time
ROUND = 100
#: deliveries sent at the same time
SENDERS = 8
#: how much longer than the HTTP timeout a claim lasts
LEASE_MARGIN = dt.timedelta(seconds=60)
USER_AGENT = "loyalty-webhooks/1"
#: What webhook secrets are sealed for (the derivation of their key from LOYALTY_SECRET_KEY).
PURPOSE = "webhook-secrets"

s = webhook_subscriptions.c
d = webhook_deliveries.c
e = events.c


# --- secrets ---------------------------------------------------------------------------------


def secret_sealer(secret_key: str) -> Sealer:
    """The sealer of webhook secrets; 503 ``secret_key_missing`` while ``LOYALTY_SECRET_KEY`` is unset."""
    return sealer(secret_key, PURPOSE, "webhook signing secrets")


def optional_sealer(secret_key: str) -> Sealer | None:
    """The sealer, or None without a usable ``LOYALTY_SECRET_KEY``."""
    try:
        return secret_sealer(secret_key)
    except SecretKeyMissing:
        return None


def seal_legacy_secrets(conn: Connection, box: Sealer) -> int:
    """Seal the secrets stored in clear (rows from before sealing); returns how many."""
    legacy = conn.execute(sa.select(s.id, s.secret).where(s.secret_sealed.is_(None)).with_for_update()).all()
    for row in legacy:
        conn.execute(
            webhook_subscriptions.update()
            .where(s.id == row.id, s.secret_sealed.is_(None))
            .values(secret_sealed=box.seal(row.id, row.secret), secret=None, secret_hint=row.secret[-4:])
        )
    return len(legacy)


def signing_secret(row: Any, box: Sealer | None) -> str:
    """The key to sign a delivery to the subscription ``row`` (``subscription_id``, ``secret``,
    ``secret_sealed``) with."""
    if row.secret_sealed is None:
        secret = str(row.secret)  # a row from before sealing, not sealed yet
    elif box is None:
        raise SecretKeyMissing(
            f"the secret of webhook subscription {row.subscription_id} is sealed under LOYALTY_SECRET_KEY, "
            "which is not set (or shorter than 16 characters): deliveries cannot be signed until it is",
            field="LOYALTY_SECRET_KEY",
        )
    else:
        secret = box.open(row.subscription_id, row.secret_sealed)
    logmask.keep_out_of_logs(secret)
    return secret


# --- subscriptions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NewSubscription:
    url: str
    #: empty: every event type
    event_types: list[str]
    secret: str


def subscription_json(row: Any) -> dict[str, Any]:
    """A subscription as the API shows it: the secret only as a hint of its last four characters."""
    return {
        "subscription_id": row.id,
        "url": row.url,
        "event_types": json.loads(row.event_types),
        "active": bool(row.active),
        "secret_hint": "****" + (row.secret_hint if row.secret_hint is not None else row.secret[-4:]),
        "cursor": encode_cursor(row.cursor_tx, row.cursor_id),
        "created_by": row.created_by,
        "created_at": iso(row.created_at),
    }


def subscription_row(conn: Connection, subscription_id: str) -> Any:
    row = conn.execute(sa.select(webhook_subscriptions).where(s.id == subscription_id)).first()
    if row is None:
        raise NotFound(f"no webhook subscription {subscription_id!r}", field="subscription_id")
    return row


def create_subscription(
    conn: Connection, cmd: NewSubscription, *, box: Sealer, actor: str, now: dt.datetime
) -> dict[str, Any]:
    """Subscribe ``cmd.url``; it receives the events that reach the feed from now on. The secret is
    stored sealed by ``box`` (:func:`secret_sealer`)."""
    logmask.keep_out_of_logs(cmd.secret)
    subscription_id = str(uuid.uuid4())
    cursor_tx, cursor_id = end_of_feed(conn)
    conn.execute(
        webhook_subscriptions.insert().values(
            id=subscription_id,
            url=cmd.url,
            event_types=json.dumps(cmd.event_types),
            secret_sealed=box.seal(subscription_id, cmd.secret),
            secret_hint=cmd.secret[-4:],
            active=True,
            cursor_tx=cursor_tx,
            cursor_id=cursor_id,
            created_by=actor,
            created_at=now,
        )
    )
    view = subscription_json(subscription_row(conn, subscription_id))
    audit.record(
        conn,
        actor=actor,
        action="webhook.created",
        object_type="webhook_subscription",
        object_id=subscription_id,
        after=view,
        now=now,
    )
    return view


def list_subscriptions(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(sa.select(webhook_subscriptions).order_by(s.created_at, s.id))
    return [subscription_json(r) for r in rows]


def subscription_view(conn: Connection, subscription_id: str) -> dict[str, Any]:
    """One subscription with how many of its deliveries are in each status."""
    view = subscription_json(subscription_row(conn, subscription_id))
    counts = dict.fromkeys(DELIVERY_STATUSES, 0)
    rows = conn.execute(
        sa.select(d.status, sa.func.count()).where(d.subscription_id == subscription_id).group_by(d.status)
    )
    counts.update({status: int(n) for status, n in rows})
    view["deliveries"] = counts
    return view


def deactivate(conn: Connection, subscription_id: str, *, actor: str, now: dt.datetime) -> dict[str, Any]:
    """Stop a subscription: it receives nothing more, and keeps its deliveries for inspection."""
    before = subscription_json(subscription_row(conn, subscription_id))
    changed = conn.execute(
        webhook_subscriptions.update().where(s.id == subscription_id, s.active).values(active=False)
    ).rowcount
    view = subscription_view(conn, subscription_id)
    if changed:
        after = {k: v for k, v in view.items() if k != "deliveries"}
        audit.record(
            conn,
            actor=actor,
            action="webhook.deactivated",
            object_type="webhook_subscription",
            object_id=subscription_id,
            before=before,
            after=after,
            now=now,
        )
    return view


# --- deliveries ------------------------------------------------------------------------------

DELIVERY_COLUMNS = (
    d.subscription_id,
    d.event_id,
    e.type,
    d.member_id,
    d.status,
    d.attempts,
    d.next_attempt_at,
    d.last_status,
    d.last_error,
    d.delivered_at,
    d.created_at,
)


def delivery_json(row: Any) -> dict[str, Any]:
    return {
        "subscription_id": row.subscription_id,
        "event_id": str(row.event_id),
        "event_type": row.type,
        "member_id": row.member_id,
        "status": row.status,
        "attempts": int(row.attempts),
        "next_attempt_at": iso(row.next_attempt_at) if row.status == "pending" else None,
        "last_status": row.last_status,
        "last_error": row.last_error,
        "delivered_at": iso(row.delivered_at),
        "created_at": iso(row.created_at),
    }


def delivery_row(conn: Connection, subscription_id: str, event_id: int) -> Any:
    row = conn.execute(
        sa.select(*DELIVERY_COLUMNS)
        .join(events, e.id == d.event_id)
        .where(d.subscription_id == subscription_id, d.event_id == event_id)
    ).first()
    if row is None:
        raise NotFound(f"subscription {subscription_id!r} has no delivery of event {event_id}", field="event_id")
    return row


def deliveries(
    conn: Connection, subscription_id: str, *, status: str | None, limit: int, before: int | None
) -> dict[str, Any]:
    """A subscription's deliveries, newest event first, ``limit`` at a time, optionally in one status."""
    subscription_row(conn, subscription_id)
    q = (
        sa.select(*DELIVERY_COLUMNS)
        .join(events, e.id == d.event_id)
        .where(d.subscription_id == subscription_id)
        .order_by(d.event_id.desc())
        .limit(limit + 1)
    )
    if status is not None:
        q = q.where(d.status == status)
    if before is not None:
        q = q.where(d.event_id < before)
    rows = list(conn.execute(q))
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "subscription_id": subscription_id,
        "deliveries": [delivery_json(r) for r in rows],
        "next_cursor": str(rows[-1].event_id) if more else None,
    }


def redeliver(conn: Connection, subscription_id: str, event_id: int, *, actor: str, now: dt.datetime) -> dict[str, Any]:
    """Send a delivery again, whatever its status: pending, due now, its attempts counted afresh."""
    if not subscription_row(conn, subscription_id).active:
        raise Conflict(f"subscription {subscription_id!r} is deactivated", field="subscription_id")
    before = delivery_json(delivery_row(conn, subscription_id, event_id))
    conn.execute(
        webhook_deliveries.update()
        .where(d.subscription_id == subscription_id, d.event_id == event_id)
        .values(status="pending", attempts=0, next_attempt_at=now, delivered_at=None)
    )
    after = delivery_json(delivery_row(conn, subscription_id, event_id))
    audit.record(
        conn,
        actor=actor,
        action="webhook.redelivery_requested",
        object_type="webhook_delivery",
        object_id=f"{subscription_id}:{event_id}",
        before=before,
        after=after,
        now=now,
    )
    return after


# --- the job ---------------------------------------------------------------------------------


@dataclass
class Tally:
    queued: int = 0
    delivered: int = 0
    #: failed attempts, those that made a delivery dead included
    failed: int = 0
    dead: int = 0


def deliver(rt: Runtime, as_of: dt.datetime) -> Outcome:
    """The ``webhooks`` job: seal secrets still stored in clear, queue new events for every active
    subscription, then send what is due."""
    box = optional_sealer(rt.settings.secret_key)
    sealed = 0
    if box is not None:
        # Looked for first without the write lock (SQLite's is the whole database): mostly there are none.
        with transaction(rt.engine, readonly=True) as conn:
            legacy = conn.execute(sa.select(sa.exists().where(s.secret_sealed.is_(None)))).scalar()
        if legacy:
            with transaction(rt.engine) as conn:
                sealed = seal_legacy_secrets(conn, box)
    tally = Tally(queued=fan_out(rt.engine, as_of))
    send_due(rt, as_of, tally, box)
    return Outcome(
        rows=sealed + tally.queued + tally.delivered + tally.failed,
        errors=tally.failed,
        detail=(
            f"{tally.queued} queued, {tally.delivered} delivered, "
            f"{tally.failed} failed attempts ({tally.dead} now dead)"
            + (f"; {sealed} secrets stored in clear sealed" if sealed else "")
        ),
    )


def fan_out(engine: Engine, as_of: dt.datetime) -> int:
    """Queue a delivery for each event after each active subscription's cursor; returns how many."""
    with transaction(engine, readonly=True) as conn:
        ids = list(conn.execute(sa.select(s.id).where(s.active).order_by(s.id)).scalars())
    queued = 0
    for subscription_id in ids:
        more = True
        while more:
            with transaction(engine) as conn:
                count, more = fan_out_chunk(conn, subscription_id, as_of)
            queued += count
    return queued


def fan_out_chunk(conn: Connection, subscription_id: str, as_of: dt.datetime) -> tuple[int, bool]:
    """One chunk of one subscription's fan-out; returns the deliveries queued and whether more may follow.

    The subscription's row is locked first, so overlapping runs take turns
    and each starts from the cursor the other left."""
    sub = conn.execute(
        sa.select(s.active, s.event_types, s.cursor_tx, s.cursor_id).where(s.id == subscription_id).with_for_update()
    ).one()
    if not sub.active:
        return 0, False
    rows = visible(conn, (int(sub.cursor_tx), int(sub.cursor_id)), limit=FANOUT_CHUNK)
    if not rows:
        return 0, False
    wanted = set(json.loads(sub.event_types))
    queued = [
        {
            "subscription_id": subscription_id,
            "event_id": r.id,
            "member_id": r.member_id,
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": as_of,
            "created_at": as_of,
        }
        for r in rows
        if not wanted or r.type in wanted
    ]
    if queued:
        conn.execute(insert_ignore(conn, webhook_deliveries), queued)
    last = rows[-1]
    conn.execute(
        webhook_subscriptions.update().where(s.id == subscription_id).values(cursor_tx=last.tx or 0, cursor_id=last.id)
    )
    return len(queued), len(rows) == FANOUT_CHUNK


def held_back(position: Sequence[Any]) -> sa.Exists:
    """Whether the delivery being looked at has a pending delivery of an earlier event of the same member,
    for the same subscription. ``position`` is its event's place in the feed: ``(tx, id)``."""
    p = webhook_deliveries.alias("earlier")
    pe = events.alias("earlier_event")
    return sa.exists().where(
        p.c.subscription_id == d.subscription_id,
        p.c.member_id == d.member_id,
        p.c.status == "pending",
        pe.c.id == p.c.event_id,
        sa.tuple_(sa.func.coalesce(pe.c.tx, 0), pe.c.id) < sa.tuple_(*position),
    )


def due(engine: Engine, as_of: dt.datetime) -> list[Any]:
    """Pending deliveries due by ``as_of`` to active subscriptions that no earlier delivery holds back."""
    q = (
        sa.select(d.subscription_id, s.url, s.secret, s.secret_sealed, *events.c)
        .join(webhook_subscriptions, s.id == d.subscription_id)
        .join(events, e.id == d.event_id)
        .where(
            d.status == "pending",
            d.next_attempt_at <= as_of,
            s.active,
            ~held_back((sa.func.coalesce(e.tx, 0), e.id)),
        )
        .order_by(d.next_attempt_at, d.event_id)
        .limit(ROUND)
    )
    with transaction(engine, readonly=True) as conn:
        return list(conn.execute(q))


def send_due(rt: Runtime, as_of: dt.datetime, tally: Tally, box: Sealer | None) -> None:
    """Send every delivery due by ``as_of``, ``SENDERS`` at a time.

    Rounds repeat until nothing is due: a member's next event becomes due in
    the round after its previous one is delivered."""
    with ThreadPoolExecutor(max_workers=SENDERS, thread_name_prefix="webhooks") as pool:
        while batch := due(rt.engine, as_of):
            results = list(pool.map(lambda row: attempt(rt, row, as_of, box), batch))
            for result in results:
                if result == "delivered":
                    tally.delivered += 1
                elif result is not None:
                    tally.failed += 1
                    if result == "dead":
                        tally.dead += 1
            if all(result is None for result in results):
                break  # another run claimed them all


def attempt(rt: Runtime, row: Any, as_of: dt.datetime, box: Sealer | None) -> str | None:
    """Claim one delivery, send it, record the answer. Returns ``delivered``, ``failed`` or ``dead``,
    or None when it was no longer due to this run (another run claimed it, or it is held back).

    A secret that cannot be opened (no ``LOYALTY_SECRET_KEY``, or another one) fails the job's run
    before the delivery is claimed: no attempt is spent on it, and it waits for the key."""
    secret = signing_secret(row, box)
    settings = rt.settings
    key = (d.subscription_id == row.subscription_id, d.event_id == row.id)
    lease = max(as_of, rt.now()) + dt.timedelta(seconds=settings.webhook_timeout_seconds) + LEASE_MARGIN
    active = sa.exists().where(s.id == d.subscription_id, s.active)
    with transaction(rt.engine) as conn:
        attempts = conn.execute(
            webhook_deliveries.update()
            .where(
                *key,
                d.status == "pending",
                d.next_attempt_at <= as_of,
                active,
                ~held_back((row.tx or 0, row.id)),
            )
            .values(next_attempt_at=lease)
            .returning(d.attempts)
        ).scalar()
    if attempts is None:
        return None
    status, error = post(row, secret, timeout=settings.webhook_timeout_seconds, now=rt.now())
    attempts += 1
    values: dict[str, Any] = {"attempts": attempts, "last_status": status, "last_error": error}
    if error is None:
        result = "delivered"
        values.update(status="delivered", delivered_at=rt.now())
    elif attempts >= settings.webhook_max_attempts:
        result = "dead"
        values.update(status="dead")
        log.error(
            "webhook delivery dead after %d attempts: subscription %s, event %s: %s",
            attempts,
            row.subscription_id,
            row.id,
            error,
        )
    else:
        result = "failed"
        values.update(next_attempt_at=as_of + backoff(attempts, settings))
        log.warning(
            "webhook delivery failed, attempt %d of %d: subscription %s, event %s: %s",
            attempts,
            settings.webhook_max_attempts,
            row.subscription_id,
            row.id,
            error,
        )
    with transaction(rt.engine) as conn:
        # Only while the claim stands: a redelivery asked for meanwhile wins.
        conn.execute(
            webhook_deliveries.update().where(*key, d.status == "pending", d.next_attempt_at == lease).values(**values)
        )
    return result


def backoff(failures: int, settings: Settings) -> dt.timedelta:
    """Full jitter: a random delay up to ``base x 2^(failures - 1)``, capped. Never zero, so a retry
    always waits for a later run."""
    ceiling = min(settings.webhook_backoff_max_seconds, settings.webhook_backoff_seconds * 2 ** (failures - 1))
    return dt.timedelta(microseconds=random.randint(1, ceiling * 1_000_000))


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``X-Loyalty-Signature``'s value: HMAC-SHA256 with the secret over ``{timestamp}.{body}``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def opener() -> urllib.request.OpenerDirector:
    """HTTP and HTTPS only, with proxies from the environment and no redirects (a 3xx is a failure)."""
    director = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        director.add_handler(handler)
    return director


def post(row: Any, secret: str, *, timeout: int, now: dt.datetime) -> tuple[int | None, str | None]:
    """POST the event to the subscription, signed with ``secret``; returns the HTTP status (None
    without one) and, unless it was a 2xx, what went wrong. Error texts never include the secret or
    the URL."""
    event = event_json(row)
    body = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()
    timestamp = str(int(now.timestamp()))
    # S310: the opener has HTTP and HTTPS handlers only, and URLs are checked when subscribed.
    request = urllib.request.Request(  # noqa: S310
        row.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Loyalty-Event-Id": event["event_id"],
            "X-Loyalty-Event-Type": event["type"],
            "X-Loyalty-Timestamp": timestamp,
            "X-Loyalty-Signature": signature(secret, timestamp, body),
        },
    )
    try:
        with opener().open(request, timeout=timeout) as response:
            return int(response.status), None
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code, f"HTTP {exc.code}"
    except TimeoutError:
        return None, f"no answer within {timeout} s"
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            return None, f"no answer within {timeout} s"
        return None, f"connection failed: {exc.reason}"[:1000]
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"[:1000]


def dead_deliveries(conn: Connection, *, limit: int = 20) -> list[dict[str, Any]]:
    """Deliveries that gave up, newest event first."""
    q = sa.select(*DELIVERY_COLUMNS).join(events, e.id == d.event_id).where(d.status == "dead")
    rows = conn.execute(q.order_by(d.event_id.desc()).limit(limit))
    return [delivery_json(r) for r in rows]

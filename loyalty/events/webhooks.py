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
2. Sending, in rounds: for each subscription it claims up to :data:`BATCH`
   due deliveries in one short transaction (their ``next_attempt_at`` is
   pushed ahead as a lease), splits them among :data:`SENDERS` senders by
   member, and the senders post them at the same time, each on a keep-alive
   connection of its own, signed; then every answer of the round is recorded
   in one transaction. A 2xx delivers a delivery; anything else, a
   connection error or a timeout is a failure, retried after an exponential
   backoff with full jitter, and after ``webhook_max_attempts`` failures the
   delivery is dead.

A subscription's claims are made under a lock on its row, so overlapping
runs never send a delivery at the same time, and no transaction is open
during an HTTP call. A run that stops between sending and recording leaves
the lease to run out and the delivery to be sent again: delivery is at least
once, and receivers deduplicate on ``X-Loyalty-Event-Id``.

A member's deliveries to one subscription go out in feed order: they are
claimed in feed order and sent by one sender, one after the other; one is not
attempted while an earlier one is still pending (waiting for its retry, or
claimed by another run), and after a failed attempt the sender sends none of
the member's later ones. Dead deliveries no longer hold later ones back.
Events without a member are not ordered.

A run sends for about :data:`RUN_SECONDS`; one that stops then with
deliveries still due says so, and the scheduler runs the job again at once,
so a backlog is sent continuously, in short runs.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import heapq
import hmac
import http.client
import json
import logging
import random
import time
import urllib.parse
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
from loyalty.db import UTCDateTime, insert_ignore, is_postgres, transaction
from loyalty.errors import Conflict, LoyaltyError, NotFound
from loyalty.events.models import DELIVERY_STATUSES, events, webhook_deliveries, webhook_subscriptions
from loyalty.events.service import encode_cursor, end_of_feed, event_json, visible
from loyalty.runtime import Outcome
from loyalty.sealing import CannotOpen, Sealer, SecretKeyMissing, sealer

if TYPE_CHECKING:
    from loyalty.config import Settings
    from loyalty.runtime import Runtime

log = logging.getLogger(__name__)

#: events fanned out to one subscription in one transaction
FANOUT_CHUNK = 500
#: deliveries of one subscription claimed at a time
BATCH = 256
#: senders at the same time, each on a connection of its own (for each subscription)
SENDERS = 8
#: how much longer than the HTTP timeout a claim lasts
LEASE_MARGIN = dt.timedelta(seconds=60)
#: a sender starts no delivery later than this after its claim, so it has ended well before the claim runs out
SEND_WINDOW = LEASE_MARGIN / 2
#: a run starts no round of sending after this many seconds (and reports that more may be due)
RUN_SECONDS = 0.5
USER_AGENT = "loyalty-webhooks/1"
#: how much of a receiver's answer is read (it is not used); past it the connection is not kept
MAX_ANSWER_BYTES = 65536
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
    subscription, then send what is due, for about :data:`RUN_SECONDS`. A run that stops there with
    deliveries still due says so (``Outcome.more``): the scheduler runs it again at once."""
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
    more = send_due(rt, as_of, tally, box)
    return Outcome(
        rows=sealed + tally.queued + tally.delivered + tally.failed,
        errors=tally.failed,
        detail=(
            f"{tally.queued} queued, {tally.delivered} delivered, "
            f"{tally.failed} failed attempts ({tally.dead} now dead)"
            + (f"; {sealed} secrets stored in clear sealed" if sealed else "")
            + ("; more due" if more else "")
        ),
        more=more,
    )


def active_subscriptions(engine: Engine) -> list[str]:
    with transaction(engine, readonly=True) as conn:
        return list(conn.execute(sa.select(s.id).where(s.active).order_by(s.id)).scalars())


def fan_out(engine: Engine, as_of: dt.datetime) -> int:
    """Queue a delivery for each event after each active subscription's cursor; returns how many."""
    queued = 0
    for subscription_id in active_subscriptions(engine):
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


def held_back(subscription_id: str, as_of: dt.datetime) -> sa.ColumnElement[bool]:
    """Whether the delivery being looked at (of ``subscription_id``) waits because another delivery of
    the same member's events to it is pending but not due by ``as_of``: waiting for its retry, or
    claimed by a run that is sending it.

    Only a redelivery by hand can put an earlier event of the member behind such a one, so this
    holds back every later event of the member; a due earlier one is claimed with them, ahead of
    them (:func:`claim` takes deliveries in feed order), and sent before them by the same sender."""
    p = webhook_deliveries.alias("busy")
    busy = sa.select(p.c.member_id).where(
        p.c.subscription_id == subscription_id,
        p.c.status == "pending",
        p.c.next_attempt_at > as_of,
        p.c.member_id.is_not(None),
    )
    return sa.and_(d.member_id.is_not(None), d.member_id.in_(busy))


@dataclass
class Claim:
    """Deliveries of one subscription claimed by this run, in feed order, and what sending them needs."""

    subscription_id: str
    url: str
    secret: str
    #: the ``next_attempt_at`` they were claimed with: the claim stands while they still have it
    lease: dt.datetime
    #: the events, each with its delivery's ``next_attempt_at`` before the claim
    rows: list[Any]
    #: event id: attempts made before this one
    attempts: dict[int, int]


def claim(conn: Connection, subscription_id: str, as_of: dt.datetime, rt: Runtime, box: Sealer | None) -> Claim | None:
    """Claim up to :data:`BATCH` of the subscription's deliveries due by ``as_of`` and not held back,
    the earliest in the feed first, by pushing their ``next_attempt_at`` ahead to a lease.

    The subscription's row is locked first, so runs take turns: one run's claim is committed, and
    holds back the member's later deliveries, before another run looks.
    A secret that cannot be opened (no ``LOYALTY_SECRET_KEY``, or another one) raises here, before
    anything is claimed: no attempt is spent, and the deliveries wait for the key."""
    sub = conn.execute(
        sa.select(s.id.label("subscription_id"), s.active, s.url, s.secret, s.secret_sealed)
        .where(s.id == subscription_id)
        .with_for_update()
    ).one()
    if not sub.active:
        return None
    rows = list(
        conn.execute(
            sa.select(d.next_attempt_at, *events.c)
            .join(events, e.id == d.event_id)
            .where(
                d.subscription_id == subscription_id,
                d.status == "pending",
                d.next_attempt_at <= as_of,
                ~held_back(subscription_id, as_of),
            )
            .order_by(sa.func.coalesce(e.tx, 0), e.id)
            .limit(BATCH)
        )
    )
    if not rows:
        return None
    secret = signing_secret(sub, box)
    lease = max(as_of, rt.now()) + dt.timedelta(seconds=rt.settings.webhook_timeout_seconds) + LEASE_MARGIN
    claimed = conn.execute(
        webhook_deliveries.update()
        .where(d.subscription_id == subscription_id, d.event_id.in_([r.id for r in rows]), d.status == "pending")
        .values(next_attempt_at=lease)
        .returning(d.event_id, d.attempts)
    )
    attempts = {int(event_id): int(n) for event_id, n in claimed}
    return Claim(subscription_id, sub.url, secret, lease, [r for r in rows if r.id in attempts], attempts)


def lanes(rows: Sequence[Any], count: int) -> list[list[Any]]:
    """Split deliveries (in feed order) among at most ``count`` senders: each member's in one sender's
    list, in feed order; the lists about equally long. An event without a member is a group of its own."""
    groups: dict[object, list[tuple[int, Any]]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.member_id if row.member_id is not None else ("no member", i), []).append((i, row))
    loads = [(0, n) for n in range(min(count, len(groups)))]
    split: list[list[tuple[int, Any]]] = [[] for _ in loads]
    for group in sorted(groups.values(), key=len, reverse=True):
        load, n = heapq.heappop(loads)
        split[n].extend(group)
        heapq.heappush(loads, (load + len(group), n))
    return [[row for _, row in sorted(lane, key=lambda pair: pair[0])] for lane in split]


def send_due(rt: Runtime, as_of: dt.datetime, tally: Tally, box: Sealer | None) -> bool:
    """Send deliveries due by ``as_of``, in rounds, until none is due or a round ends after
    :data:`RUN_SECONDS`; returns whether some may still be due (the run stopped for time).

    Each round claims up to :data:`BATCH` deliveries of each subscription, splits each
    subscription's among :data:`SENDERS` senders by member, sends them on keep-alive connections,
    a member's in feed order, and records every answer in one transaction. A subscription whose
    secret does not open is left out, and the run fails with that error once the others are sent."""
    settings = rt.settings
    started = time.monotonic()
    waiting = active_subscriptions(rt.engine)
    #: a secret that did not open: the others' deliveries are sent all the same, then the run fails with it
    unopened: LoyaltyError | None = None
    more = False
    with (
        Endpoints(settings.webhook_timeout_seconds) as endpoints,
        ThreadPoolExecutor(max_workers=SENDERS, thread_name_prefix="webhooks") as pool,
    ):
        while waiting and not more:
            claims = []
            for subscription_id in waiting:
                try:
                    with transaction(rt.engine) as conn:
                        taken = claim(conn, subscription_id, as_of, rt, box)
                except (SecretKeyMissing, CannotOpen) as exc:
                    unopened = unopened or exc
                    continue
                if taken is not None:
                    claims.append(taken)
            if not claims:
                break
            # A sender starts no delivery so late that it could still be sending when its claim runs out.
            until = time.monotonic() + SEND_WINDOW.total_seconds()
            sending = [
                pool.submit(send_lane, rt, c, rows, endpoints.get(c, n), as_of, until)
                for c in claims
                for n, rows in enumerate(lanes(c.rows, SENDERS))
            ]
            answers = [answer for lane in sending for answer in lane.result()]
            record(rt.engine, answers)
            released = set()
            for answer in answers:
                if answer.result == "delivered":
                    tally.delivered += 1
                elif answer.result == "released":
                    released.add(answer.subscription_id)
                else:
                    tally.failed += 1
                    if answer.result == "dead":
                        tally.dead += 1
            # Subscriptions that had fewer due than a claim takes are done, but for what ran out of time.
            waiting = [c.subscription_id for c in claims if len(c.rows) == BATCH or c.subscription_id in released]
            more = bool(waiting) and time.monotonic() - started >= RUN_SECONDS
    if unopened is not None:
        raise unopened
    return more


@dataclass
class Answer:
    """What became of one claimed delivery."""

    subscription_id: str
    event_id: int
    lease: dt.datetime
    #: ``delivered``, ``failed`` (to be retried), ``dead``, or ``released``: not sent, its claim given back
    result: str
    values: dict[str, Any]


def send_lane(
    rt: Runtime, claim: Claim, rows: list[Any], endpoint: Endpoint, as_of: dt.datetime, until: float
) -> list[Answer]:
    """Send one sender's deliveries in order on one connection. After a failed attempt the member's
    later deliveries are not sent (its failed one is still pending); once ``until`` has passed none is."""
    settings = rt.settings
    stopped: set[str] = set()
    answers = []
    for row in rows:
        if row.member_id in stopped or time.monotonic() >= until:
            answers.append(
                Answer(claim.subscription_id, row.id, claim.lease, "released", {"next_attempt_at": row.next_attempt_at})
            )
            continue
        status, error = post(endpoint, row, claim.secret, now=rt.now())
        attempts = claim.attempts[row.id] + 1
        values: dict[str, Any] = {
            "status": "pending",
            "attempts": attempts,
            "last_status": status,
            "last_error": error,
            "next_attempt_at": claim.lease,
            "delivered_at": None,
        }
        if error is None:
            result = "delivered"
            values.update(status="delivered", delivered_at=rt.now())
        elif attempts >= settings.webhook_max_attempts:
            result = "dead"
            values.update(status="dead")
            log.error(
                "webhook delivery dead after %d attempts: subscription %s, event %s: %s",
                attempts,
                claim.subscription_id,
                row.id,
                error,
            )
        else:
            result = "failed"
            values.update(next_attempt_at=as_of + backoff(attempts, settings))
            if row.member_id is not None:
                stopped.add(row.member_id)
            log.warning(
                "webhook delivery failed, attempt %d of %d: subscription %s, event %s: %s",
                attempts,
                settings.webhook_max_attempts,
                claim.subscription_id,
                row.id,
                error,
            )
        answers.append(Answer(claim.subscription_id, row.id, claim.lease, result, values))
    return answers


#: What an attempt writes, with each column's type (for the ``VALUES`` list on PostgreSQL).
ATTEMPTED: dict[str, sa.types.TypeEngine[Any]] = {
    "status": sa.String(16),
    "attempts": sa.Integer(),
    "last_status": sa.Integer(),
    "last_error": sa.String(1000),
    "next_attempt_at": UTCDateTime(),
    "delivered_at": UTCDateTime(),
}
RELEASED: dict[str, sa.types.TypeEngine[Any]] = {"next_attempt_at": UTCDateTime()}


def record(engine: Engine, answers: list[Answer]) -> None:
    """Write the answers, in one transaction, to the deliveries whose claim still stands (a
    redelivery asked for meanwhile wins)."""
    attempted = [a for a in answers if a.result != "released"]
    released = [a for a in answers if a.result == "released"]
    with transaction(engine) as conn:
        for group, columns in ((attempted, ATTEMPTED), (released, RELEASED)):
            if group:
                update_claimed(conn, group, columns)


def update_claimed(conn: Connection, answers: list[Answer], columns: dict[str, sa.types.TypeEngine[Any]]) -> None:
    """``UPDATE ... FROM (VALUES ...)`` on PostgreSQL (one statement); one prepared statement run per
    delivery on SQLite."""
    keys: dict[str, sa.types.TypeEngine[Any]] = {
        "k_subscription_id": sa.String(36),
        "k_event_id": sa.BigInteger(),
        "k_lease": UTCDateTime(),
    }
    rows = [
        {"k_subscription_id": a.subscription_id, "k_event_id": a.event_id, "k_lease": a.lease}
        | {f"v_{name}": a.values[name] for name in columns}
        for a in answers
    ]
    if not is_postgres(conn):
        conn.execute(
            webhook_deliveries.update()
            .where(
                d.subscription_id == sa.bindparam("k_subscription_id"),
                d.event_id == sa.bindparam("k_event_id"),
                d.status == "pending",
                d.next_attempt_at == sa.bindparam("k_lease"),
            )
            .values({name: sa.bindparam(f"v_{name}") for name in columns}),
            rows,
        )
        return
    types = keys | {f"v_{name}": kind for name, kind in columns.items()}
    new = sa.values(*(sa.column(name, kind) for name, kind in types.items()), name="answered").data(
        [tuple(row[name] for name in types) for row in rows]
    )
    conn.execute(
        webhook_deliveries.update()
        .where(
            d.subscription_id == new.c.k_subscription_id,
            d.event_id == new.c.k_event_id,
            d.status == "pending",
            d.next_attempt_at == new.c.k_lease,
        )
        # A column that is NULL in every row has no type of its own in a VALUES list: cast.
        .values({name: sa.cast(new.c[f"v_{name}"], kind) for name, kind in columns.items()})
    )


def backoff(failures: int, settings: Settings) -> dt.timedelta:
    """Full jitter: a random delay up to ``base x 2^(failures - 1)``, capped. Never zero, so a retry
    always waits for a later run."""
    ceiling = min(settings.webhook_backoff_max_seconds, settings.webhook_backoff_seconds * 2 ** (failures - 1))
    return dt.timedelta(microseconds=random.randint(1, ceiling * 1_000_000))


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``X-Loyalty-Signature``'s value: HMAC-SHA256 with the secret over ``{timestamp}.{body}``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def post(endpoint: Endpoint, row: Any, secret: str, *, now: dt.datetime) -> tuple[int | None, str | None]:
    """POST the event to the subscription, signed with ``secret``; returns the HTTP status (None
    without one) and, unless it was a 2xx, what went wrong."""
    event = event_json(row)
    body = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()
    timestamp = str(int(now.timestamp()))
    return endpoint.post(
        body,
        {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Loyalty-Event-Id": event["event_id"],
            "X-Loyalty-Event-Type": event["type"],
            "X-Loyalty-Timestamp": timestamp,
            "X-Loyalty-Signature": signature(secret, timestamp, body),
        },
    )


class Endpoint:
    """One keep-alive HTTP/1.1 connection to a subscription's URL, used by one sender at a time.

    HTTP and HTTPS only (URLs are checked when subscribed); through the proxy the environment names
    for the scheme (``http_proxy``, ``https_proxy``, not for hosts in ``no_proxy``), an ``https`` URL
    through a ``CONNECT`` tunnel; redirects are not followed (a 3xx is a failure). Error texts never
    include the URL."""

    def __init__(self, url: str, timeout: int) -> None:
        self.url = url
        self.timeout = timeout
        #: the request target (the path, or to a proxy of plain HTTP the whole URL) and the proxy's headers
        self.target = ""
        self.headers: dict[str, str] = {}
        self.conn: http.client.HTTPConnection | None = None

    def connection(self) -> http.client.HTTPConnection:
        """The connection, made on first use: to the receiver, or to the environment's proxy for the scheme."""
        if self.conn is not None:
            return self.conn
        parts = urllib.parse.urlsplit(self.url)
        https = parts.scheme == "https"
        kind = http.client.HTTPSConnection if https else http.client.HTTPConnection
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        proxy = urllib.request.getproxies().get(parts.scheme)
        if not proxy or urllib.request.proxy_bypass(parts.netloc):
            self.conn = kind(parts.hostname or "", parts.port, timeout=self.timeout)
            return self.conn
        via = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        auth = {}
        if via.username is not None:
            credentials = f"{urllib.parse.unquote(via.username)}:{urllib.parse.unquote(via.password or '')}"
            auth["Proxy-Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
        self.conn = kind(via.hostname or "", via.port, timeout=self.timeout)
        if https:
            self.conn.set_tunnel(parts.hostname or "", parts.port, headers=auth)
        else:
            self.target, self.headers = self.url, auth
        return self.conn

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int | None, str | None]:
        """Send one request and read the whole answer, keeping the connection for the next; returns
        the status (None without one) and, unless it was a 2xx, what went wrong."""
        for retry in (False, True):
            try:
                conn = self.connection()
                reused = conn.sock is not None
                if not reused:
                    conn.connect()
            except TimeoutError:
                return self.failed(f"no answer within {self.timeout} s")
            except OSError as exc:
                return self.failed(f"connection failed: {exc}")
            except (http.client.HTTPException, ValueError) as exc:
                return self.failed(f"{type(exc).__name__}: {exc}")
            try:
                conn.request("POST", self.target, body=body, headers=self.headers | headers)
                response = conn.getresponse()
                response.read(MAX_ANSWER_BYTES)
                if not response.isclosed():
                    conn.close()  # a longer answer is not read on: the next request opens a new connection
            except TimeoutError:
                return self.failed(f"no answer within {self.timeout} s")
            except ConnectionError as exc:
                if reused and not retry:
                    conn.close()  # a kept connection the receiver has closed meanwhile: once more on a new one
                    continue
                return self.failed(f"connection failed: {exc}")
            except (OSError, http.client.HTTPException, ValueError) as exc:
                return self.failed(f"{type(exc).__name__}: {exc}")
            if 200 <= response.status < 300:
                return response.status, None
            return response.status, f"HTTP {response.status}"
        raise AssertionError("unreachable")

    def failed(self, error: str) -> tuple[None, str]:
        """No answer: the connection is dropped (the next request makes a new one)."""
        self.close()
        return None, error[:1000]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class Endpoints:
    """The keep-alive connections of one run: one per subscription and sender."""

    def __init__(self, timeout: int) -> None:
        self.timeout = timeout
        self.open: dict[tuple[str, int], Endpoint] = {}

    def get(self, claim: Claim, sender: int) -> Endpoint:
        endpoint = self.open.get((claim.subscription_id, sender))
        if endpoint is None:
            endpoint = self.open[(claim.subscription_id, sender)] = Endpoint(claim.url, self.timeout)
        return endpoint

    def __enter__(self) -> Endpoints:
        return self

    def __exit__(self, *exc: object) -> None:
        for endpoint in self.open.values():
            endpoint.close()


def dead_deliveries(conn: Connection, *, limit: int = 20) -> list[dict[str, Any]]:
    """Deliveries that gave up, newest event first."""
    q = sa.select(*DELIVERY_COLUMNS).join(events, e.id == d.event_id).where(d.status == "dead")
    rows = conn.execute(q.order_by(d.event_id.desc()).limit(limit))
    return [delivery_json(r) for r in rows]

"""The ``fulfilment`` job: order pending partner redemptions, follow up the unconfirmed ones.

A redemption is due when it is ``pending``, names a partner, and its
``next_attempt_at`` has come. Each due redemption is claimed in a short
transaction that counts the attempt and pushes ``next_attempt_at`` ahead by a
lease (``FOR NO KEY UPDATE SKIP LOCKED`` on PostgreSQL; SQLite has one writer
at a time), so overlapping runs never call a partner about the same order at
the same time, and no transaction is open during an HTTP call. Then:

- the first attempt places the order;
- a later attempt asks what became of it, and places it again, under the
  same id, if the partner says it never got it (a run that stopped between
  its claim and its call leaves exactly that);
- a definite answer settles the redemption (``states.fulfilled`` or
  ``states.failed``); anything else is retried after a backoff, and after
  ``partner_max_attempts`` attempts only once more, at the deadline;
- at or after the redemption's ``deadline`` the job asks once more: a
  definite answer settles it; a partner that still cannot answer, or says it
  never got the order, fails it (points and stock back). The partner is told
  nothing more: this relies on the protocol's rule that a partner refuses an
  order that arrives after its ``X-Loyalty-Deadline`` and never delivers one
  late. A redemption never attempted by its deadline fails without a call.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import sqlalchemy as sa

from loyalty.catalogue.models import benefits
from loyalty.db import is_postgres, transaction
from loyalty.fulfilment.adapters import FAILED, NOT_FOUND, SUCCEEDED, UNKNOWN, Answer, Order, adapter_for
from loyalty.redemption import states
from loyalty.redemption.models import redemptions
from loyalty.runtime import Outcome

if TYPE_CHECKING:
    from loyalty.config import Settings
    from loyalty.runtime import Runtime

log = logging.getLogger(__name__)

#: redemptions worked on at the same time
WORKERS = 8
#: how much longer than its calls a claim lasts
LEASE_MARGIN = dt.timedelta(seconds=30)
DEADLINE_REASON = "partner did not confirm before the deadline"

r = redemptions.c


@dataclass(frozen=True)
class Claim:
    member_id: str
    redemption_id: str
    partner: str
    #: attempts made before this one
    attempts: int
    deadline: dt.datetime | None
    order: Order
    #: the ``next_attempt_at`` this run set: while it stands, the redemption is this run's
    lease: dt.datetime


@dataclass
class Tally:
    fulfilled: int = 0
    failed: int = 0
    #: failed at the deadline without a definite answer
    expired: int = 0
    #: no definite answer yet: asked again later
    unconfirmed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, result: str) -> None:
        with self.lock:
            setattr(self, result, getattr(self, result) + 1)


def fulfil(rt: Runtime, as_of: dt.datetime) -> Outcome:
    """The ``fulfilment`` job: one attempt at every partner redemption due by ``as_of``."""
    tally = Tally()
    with transaction(rt.engine, readonly=True) as conn:
        anything = conn.execute(sa.select(sa.exists().where(*due(as_of)))).scalar()
    if anything:  # else no worker need start a write transaction only to find nothing
        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="fulfilment") as pool:
            for worker in [pool.submit(work, rt, as_of, tally) for _ in range(WORKERS)]:
                worker.result()
    settled = tally.fulfilled + tally.failed + tally.expired
    return Outcome(
        rows=settled + tally.unconfirmed,
        errors=tally.unconfirmed,
        detail=(
            f"{tally.fulfilled} fulfilled, {tally.failed} failed, "
            f"{tally.expired} failed at the deadline, {tally.unconfirmed} unconfirmed (asked again later)"
        ),
    )


def due(as_of: dt.datetime) -> tuple[sa.ColumnElement[bool], ...]:
    """Pending partner redemptions whose next attempt has come by ``as_of``."""
    return (r.status == "pending", r.partner.is_not(None), r.next_attempt_at <= as_of)


def work(rt: Runtime, as_of: dt.datetime, tally: Tally) -> None:
    """Claim and attempt due redemptions one at a time until none is left for this run."""
    while (claim := claim_next(rt, as_of)) is not None:
        tally.add(attempt(rt, claim, as_of))


def claim_next(rt: Runtime, as_of: dt.datetime) -> Claim | None:
    """Claim the next redemption due by ``as_of``: count the attempt and push ``next_attempt_at``
    past the calls this attempt may make. None when nothing is due."""
    calls = 2 * dt.timedelta(seconds=rt.settings.partner_timeout_seconds)  # a status query, then an order
    lease = max(as_of, rt.now()) + calls + LEASE_MARGIN
    query = (
        sa.select(
            r.member_id,
            r.id,
            r.partner,
            r.attempts,
            r.deadline,
            r.benefit_code,
            r.quantity,
            r.delivery,
            benefits.c.face_value,
        )
        .join(benefits, benefits.c.code == r.benefit_code)
        .where(*due(as_of))
        .order_by(r.next_attempt_at)
        .limit(1)
    )
    with transaction(rt.engine) as conn:
        if is_postgres(conn):
            query = query.with_for_update(of=redemptions, skip_locked=True, key_share=True)
        row = conn.execute(query).first()
        if row is None:
            return None
        conn.execute(
            redemptions.update()
            .where(r.member_id == row.member_id, r.id == row.id)
            .values(attempts=r.attempts + 1, next_attempt_at=lease)
        )
    order = Order(
        order_id=row.id,
        product=row.benefit_code,
        face_value=int(row.face_value),
        quantity=int(row.quantity),
        delivery=json.loads(row.delivery) if row.delivery else {},
        deadline=row.deadline,
    )
    return Claim(row.member_id, row.id, row.partner, int(row.attempts), row.deadline, order, lease)


def attempt(rt: Runtime, claim: Claim, as_of: dt.datetime) -> str:
    """Call the partner about a claimed redemption and record what came of it; returns the
    :class:`Tally` field to count it under."""
    final = claim.deadline is not None and as_of >= claim.deadline
    answer = ask(rt, claim, final)
    now = rt.now()
    with transaction(rt.engine) as conn:
        if answer.outcome == SUCCEEDED:
            states.fulfilled(conn, claim.member_id, claim.redemption_id, reference=answer.reference, now=now)
            return "fulfilled"
        if answer.outcome == FAILED:
            reason = answer.reason or "the partner failed the order"
            states.failed(conn, claim.member_id, claim.redemption_id, reason=reason, now=now)
            log.info("redemption %s failed at partner %s: %s", claim.redemption_id, claim.partner, reason)
            return "failed"
        if final:
            states.failed(conn, claim.member_id, claim.redemption_id, reason=DEADLINE_REASON, now=now)
            log.warning(
                "redemption %s failed: partner %s did not confirm it before the deadline (%s)",
                claim.redemption_id,
                claim.partner,
                answer.reason or "it never got the order",
            )
            return "expired"
        attempts = claim.attempts + 1
        retry_at = as_of + backoff(attempts, rt.settings)
        if attempts >= rt.settings.partner_max_attempts and claim.deadline is not None:
            retry_at = max(retry_at, claim.deadline)
        # Only while the claim stands: a later run that took over after the lease ran out owns it now.
        conn.execute(
            redemptions.update()
            .where(
                r.member_id == claim.member_id,
                r.id == claim.redemption_id,
                r.status == "pending",
                r.next_attempt_at == claim.lease,
            )
            .values(next_attempt_at=retry_at)
        )
    log.warning(
        "redemption %s unconfirmed by partner %s after attempt %d: %s",
        claim.redemption_id,
        claim.partner,
        attempts,
        answer.reason,
    )
    return "unconfirmed"


def ask(rt: Runtime, claim: Claim, final: bool) -> Answer:
    """The calls of one attempt: place the order the first time, else ask about it (and place it
    again if the partner never got it, unless the deadline has passed)."""
    adapter = adapter_for(rt.settings, claim.partner)
    if adapter is None:
        return Answer(UNKNOWN, reason=f"partner {claim.partner!r} is not in LOYALTY_PARTNERS")
    if claim.attempts == 0:
        if final:
            return Answer(UNKNOWN, reason="the deadline passed before the order was placed")
        return adapter.submit(claim.order, rt.now())
    answer = adapter.status(claim.redemption_id, rt.now())
    if answer.outcome == NOT_FOUND and not final:
        return adapter.submit(claim.order, rt.now())
    return answer


def backoff(attempts: int, settings: Settings) -> dt.timedelta:
    """Full jitter: a random delay up to ``base x 2^(attempts - 1)``, capped; never zero, so a
    retry always waits for a later run."""
    ceiling = min(settings.partner_backoff_max_seconds, settings.partner_backoff_seconds * 2 ** (attempts - 1))
    return dt.timedelta(microseconds=random.randint(1, ceiling * 1_000_000))

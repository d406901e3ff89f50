"""The outbox of events, webhook subscriptions and their deliveries."""

from __future__ import annotations

import sqlalchemy as sa

from loyalty.db import UTCDateTime, metadata

EVENT_TYPES = (
    "member.enrolled",
    "member.birthday",
    "points.accrued",
    "points.reversed",
    "points.expiring",
    "points.expired",
    "points.adjusted",
    "tier.changed",
    "lifecycle.changed",
    "redemption.fulfilled",
    "redemption.failed",
    "redemption.cancelled",
    "benefit.low_stock",
)
DELIVERY_STATUSES = ("pending", "delivered", "dead")

#: Written in the same database transaction as the change each row describes.
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    #: PostgreSQL: the writing transaction's id (a column default set by the
    #: migration). Readers see an event only once every transaction that
    #: started before it has ended, so a cursor never skips a late commit.
    sa.Column("tx", sa.BigInteger),
    sa.Column("type", sa.String(48), nullable=False),
    sa.Column("member_id", sa.String(64)),
    #: makes an event happen once: e.g. ``member.birthday:2026`` per member
    sa.Column("dedup_key", sa.String(128)),
    #: JSON
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("occurred_at", UTCDateTime, nullable=False),
    sa.Index("ix_events_member_id_dedup_key", "member_id", "dedup_key", unique=True),
    sa.Index("ix_events_tx_id", "tx", "id"),
    sa.Index("ix_events_type_id", "type", "id"),
)

webhook_subscriptions = sa.Table(
    "webhook_subscriptions",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("url", sa.String(2000), nullable=False),
    #: JSON list of event types; empty means every type
    sa.Column("event_types", sa.Text, nullable=False),
    #: the HMAC key deliveries are signed with (the receiver holds it too), sealed with AES-GCM under
    #: LOYALTY_SECRET_KEY and bound to the subscription id (:mod:`loyalty.events.webhooks`)
    sa.Column("secret_sealed", sa.Text),
    #: the same key in clear: only in a row written before secrets were sealed (migration 0011) and
    #: not sealed since, by the ``webhooks`` job or ``loyalty webhooks seal-secrets``
    sa.Column("secret", sa.String(200)),
    #: the key's last four characters, shown to tell subscriptions apart (NULL only in a row the
    #: release before sealing wrote during an upgrade: then taken from ``secret``)
    sa.Column("secret_hint", sa.String(4)),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    #: how far the delivery job has fanned events out to this subscription
    sa.Column("cursor_tx", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("cursor_id", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_by", sa.String(100), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    #: the key is kept once: sealed, or (a row from before sealing) in clear
    sa.CheckConstraint("(secret IS NULL) <> (secret_sealed IS NULL)", name="secret_kept_once"),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("subscription_id", sa.String(36), sa.ForeignKey("webhook_subscriptions.id"), primary_key=True),
    sa.Column("event_id", sa.BigInteger, sa.ForeignKey("events.id"), primary_key=True),
    #: deliveries of one member's events go out in event order
    sa.Column("member_id", sa.String(64)),
    sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    sa.Column("last_status", sa.Integer),
    sa.Column("last_error", sa.String(1000)),
    sa.Column("delivered_at", UTCDateTime),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.CheckConstraint(sa.column("status").in_(DELIVERY_STATUSES), name="status"),
    sa.Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
)

"""The accrual commands as the API and the settlement file give them, validated."""

from __future__ import annotations

import datetime as dt
from typing import Any

from marshmallow import fields, post_load, validate

from loyalty.accrual.service import TransactionCommand
from loyalty.records.models import TRANSACTION_TYPES
from loyalty.validation import ID, Base, StrictInteger, StrictString, check_not_future, load

#: Largest amount accepted, in minor units (10^12 fen = 10 billion CNY).
MAX_AMOUNT = 10**12
CURRENCIES = ("CNY",)


#: ``POST /v1/transactions/batch`` takes this place in the paths: no transaction may have it as its id.
RESERVED_TRANSACTION_IDS = ("batch",)


class TransactionSchema(Base):
    transaction_id = StrictString(
        required=True,
        validate=validate.And(
            ID, validate.NoneOf(RESERVED_TRANSACTION_IDS, error="is reserved: /v1/transactions/batch is the batch")
        ),
    )
    member_id = StrictString(required=True, validate=ID)
    type = StrictString(required=True, validate=validate.OneOf(TRANSACTION_TYPES))
    amount = StrictInteger(required=True, validate=validate.Range(min=1, max=MAX_AMOUNT))
    currency = StrictString(required=True, validate=validate.OneOf(CURRENCIES))
    occurred_at = fields.AwareDateTime(required=True)
    channel = StrictString(load_default=None, allow_none=True, validate=validate.Length(min=1, max=32))
    mcc = StrictString(
        load_default=None, allow_none=True, validate=validate.Regexp(r"^\d{4}$", error="must be four digits")
    )
    merchant = StrictString(load_default=None, allow_none=True, validate=validate.Length(min=1, max=128))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> TransactionCommand:
        data["occurred_at"] = data["occurred_at"].astimezone(dt.UTC)
        return TransactionCommand(**data)


class SimulatedTransactionSchema(Base):
    """A transaction to simulate: the fields rules can test, none of the bookkeeping."""

    type = StrictString(required=True, validate=validate.OneOf(TRANSACTION_TYPES))
    amount = StrictInteger(required=True, validate=validate.Range(min=1, max=MAX_AMOUNT))
    currency = StrictString(load_default="CNY", validate=validate.OneOf(CURRENCIES))
    occurred_at = fields.AwareDateTime(load_default=None)
    channel = StrictString(load_default=None, allow_none=True, validate=validate.Length(min=1, max=32))
    mcc = StrictString(
        load_default=None, allow_none=True, validate=validate.Regexp(r"^\d{4}$", error="must be four digits")
    )
    merchant = StrictString(load_default=None, allow_none=True, validate=validate.Length(min=1, max=128))

    @post_load
    def utc(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        if data["occurred_at"] is None:
            del data["occurred_at"]
        else:
            data["occurred_at"] = data["occurred_at"].astimezone(dt.UTC)
        return data


class ReversalSchema(Base):
    reversal_id = StrictString(required=True, validate=ID)
    amount = StrictInteger(required=True, validate=validate.Range(min=1, max=MAX_AMOUNT))


class BatchSchema(Base):
    # Items are not checked here: each is validated on its own, and a bad one (null included) gets its
    # own problem in the results instead of refusing the batch.
    transactions = fields.List(fields.Raw(allow_none=True), required=True, validate=validate.Length(min=1, max=1000))


def load_transaction(data: Any, now: dt.datetime) -> TransactionCommand:
    cmd: TransactionCommand = load(TRANSACTION_SCHEMA, data)
    check_not_future(cmd.occurred_at, "occurred_at", now)
    return cmd


TRANSACTION_SCHEMA = TransactionSchema()
SIMULATED_TRANSACTION_SCHEMA = SimulatedTransactionSchema()
REVERSAL_SCHEMA = ReversalSchema()
BATCH_SCHEMA = BatchSchema()

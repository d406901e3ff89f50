"""Log lines as JSON, one object a line, each carrying the id of the request it was written in.

:class:`JsonFormatter` turns any record (the service's, gunicorn's, SQLAlchemy's) into one line of
JSON: ``ts``, ``level``, ``logger``, ``message``, the ``request_id`` of the request being served
when there is one, the fields a record carries in ``extra={"fields": {...}}`` (the access line's
route, status, duration...), and the traceback. Records are masked before any formatter sees them
(:mod:`loyalty.logmask`), so the JSON holds no phone number or declared secret either.

The request id lives in a context variable (:func:`set_request_id`), so lines written deep in the
domain, which knows nothing of requests, carry it too.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
from typing import Any

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("loyalty_request_id", default=None)


def set_request_id(value: str | None) -> None:
    _request_id.set(value)


def request_id() -> str | None:
    """The id of the request being served in this context, if any."""
    return _request_id.get()


class JsonFormatter(logging.Formatter):
    """One JSON object a line (see the module)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id()
        if rid is not None:
            line["request_id"] = rid
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, ensure_ascii=False, default=str)


#: gunicorn's ``logconfig_dict`` and the scheduler's: every logger of the process writes JSON lines
#: to standard error.
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "loyalty.logs.JsonFormatter"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
    "root": {"level": "INFO", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False},
        # /readyz reads the schema's revision on every call; Alembic says so at INFO each time.
        "alembic": {"level": "WARNING"},
    },
}

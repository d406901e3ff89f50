"""Log lines never show a member's phone number or a voucher code.

:class:`MaskSecrets` rewrites a log record before any handler sees it: a
mainland mobile number (11 digits, ``1[3-9]`` then nine more, with or
without ``+86``, not part of a longer run of digits) becomes ``[phone number]``, and every secret declared
in the current context with :func:`keep_out_of_logs` (the voucher codes a
request uploads or reveals, a webhook's signing secret) becomes ``[secret]``.
It masks the message with its arguments, the traceback and the stack.

:func:`install` puts it in front of every logger of the process, the
libraries' included (SQLAlchemy, werkzeug, gunicorn), through the log record
factory: a filter on a handler misses handlers added later (pytest's, a
deployment's), and one on a logger misses the records its children
propagate. The app and the ``loyalty`` command install it.

The engine is also made with ``hide_parameters`` (:func:`loyalty.db.make_engine`),
so a failed statement's parameters never reach an exception's text; this is
the second line, for what comes through other ways (a database's ``DETAIL``
quoting a failing row, a partner's answer quoting the number).
"""

from __future__ import annotations

import contextvars
import logging
import re
from typing import Any

#: A mainland China mobile number, with or without the country code, not inside a longer run of digits.
PHONE_NUMBER = re.compile(r"(?<![0-9])(?:\+?86[ -]?)?1[3-9][0-9]{9}(?![0-9])")
PHONE_MASK = "[phone number]"
SECRET_MASK = "[secret]"  # noqa: S105  (what replaces a secret, not one)
#: Secrets remembered per context at most; the oldest are forgotten first.
MAX_SECRETS = 1000
#: Shorter values are not masked: they would blank out ordinary words. Voucher codes have at least 4
#: characters, webhook secrets 16.
MIN_SECRET = 4

_secrets: contextvars.ContextVar[dict[str, None] | None] = contextvars.ContextVar("loyalty_log_secrets", default=None)


def keep_out_of_logs(*values: str) -> None:
    """Mask these values in every log line written in this context (a request, a command) until
    :func:`forget`."""
    kept = _secrets.get()
    if kept is None:
        kept = {}
        _secrets.set(kept)
    for value in values:
        if len(value) >= MIN_SECRET:
            kept[value] = None
    while len(kept) > MAX_SECRETS:
        del kept[next(iter(kept))]


def forget() -> None:
    """Forget the secrets of this context: the request they came with has ended."""
    _secrets.set(None)


def mask(text: str) -> str:
    """``text`` with phone numbers and this context's secrets masked."""
    kept = _secrets.get()
    if kept:
        # Longest first, so a secret that contains another is masked whole.
        for value in sorted(kept, key=len, reverse=True):
            if value in text:
                text = text.replace(value, SECRET_MASK)
    return PHONE_NUMBER.sub(PHONE_MASK, text)


class MaskSecrets(logging.Filter):
    """Masks phone numbers and declared secrets in a record; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001  (a bad format string is the handler's to report, as usual)
            message = None
        if message is not None:
            masked = mask(message)
            if masked != message:
                record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            # Formatted now, masked, and kept: formatters use ``exc_text`` when it is set.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        return True


_FILTER = MaskSecrets()


def install() -> None:
    """Mask every log record the process creates from now on (idempotent)."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "masks_secrets", False):
        return

    def masked_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        _FILTER.filter(record)
        return record

    masked_record.masks_secrets = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(masked_record)

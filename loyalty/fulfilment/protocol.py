"""The partner protocol's shared parts: headers, statuses and signatures, both ways.

The engine signs every request to a partner, and a partner every callback to
the engine, with HMAC-SHA256 keyed by the partner's secret over
``{timestamp}.{raw body}`` (an empty body for a GET), the timestamp in Unix
seconds. A signature is ``v1=`` and the digest in hex. A receiver refuses a
signature that does not match, and a timestamp more than
:data:`TOLERANCE_SECONDS` away from its own clock.
"""

from __future__ import annotations

import hashlib
import hmac

#: engine -> partner
TIMESTAMP = "X-Loyalty-Timestamp"
SIGNATURE = "X-Loyalty-Signature"
#: Unix seconds after which the partner must refuse the order (and never deliver it)
DEADLINE = "X-Loyalty-Deadline"
IDEMPOTENCY_KEY = "Idempotency-Key"
#: partner -> engine (callbacks)
PARTNER_TIMESTAMP = "X-Partner-Timestamp"
PARTNER_SIGNATURE = "X-Partner-Signature"

SUCCEEDED, FAILED, PROCESSING = "succeeded", "failed", "processing"
#: what a partner may say about an order
STATUSES = (SUCCEEDED, FAILED, PROCESSING)

#: how far a signed timestamp may be from the receiver's clock, in seconds
TOLERANCE_SECONDS = 300


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value: ``v1=`` and the hex HMAC-SHA256 of ``{timestamp}.{body}``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def signed_headers(secret: str, body: bytes, now: float, *, partner: bool = False) -> dict[str, str]:
    """The timestamp and signature headers for ``body`` sent at ``now`` (Unix seconds), by the
    engine or, with ``partner``, by a partner."""
    timestamp = str(int(now))
    names = (PARTNER_TIMESTAMP, PARTNER_SIGNATURE) if partner else (TIMESTAMP, SIGNATURE)
    return {names[0]: timestamp, names[1]: signature(secret, timestamp, body)}


def check_signature(secret: str, timestamp: str | None, sig: str | None, body: bytes, now: float) -> str | None:
    """Why a signed request must be refused, or None if it is good. ``now`` in Unix seconds."""
    if not timestamp or not sig:
        return "the request is not signed: send the timestamp and signature headers"
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        return "the timestamp is not Unix seconds"
    if abs(now - int(timestamp)) > TOLERANCE_SECONDS:
        return f"the timestamp is more than {TOLERANCE_SECONDS} seconds from the receiver's clock"
    if not hmac.compare_digest(signature(secret, timestamp, body).encode(), sig.strip().encode()):
        return "the signature does not match"
    return None

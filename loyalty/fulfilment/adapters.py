"""Adapters: how the engine orders a benefit from each kind of partner, and asks about an order.

Every partner speaks the same small HTTP protocol (README, "Fulfilment
partners"); the kinds differ in what they deliver to:

- ``telecom`` (phone top-up): the member's ``phone_number``;
- ``video`` (video membership): the member's ``account_ref`` with the service.

``POST {base}/orders`` places an order, ``GET {base}/orders/{order_id}`` asks
about one. The order id is the redemption id, sent as ``Idempotency-Key`` too:
a partner must treat the same id again as the same order, never deliver it
twice, and refuse an order that arrives after its ``X-Loyalty-Deadline``.

What an answer means:

========================================  ====================================
answer                                    outcome
========================================  ====================================
2xx ``{"status": "succeeded"}``           ``succeeded`` (delivered)
2xx ``{"status": "failed"}``, or a 4xx    ``failed``: the partner refused it
to an order (but 408, 409, 425, 429)
404 to a status query                     ``not_found``: it never got the order
2xx ``processing``, 5xx, a timeout, a     ``unknown``: proves nothing; ask
refused connection, anything else         again later
========================================  ====================================
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, ClassVar

from loyalty.config import Settings, partner_kind
from loyalty.fulfilment import protocol

USER_AGENT = "loyalty-fulfilment/1"
#: 4xx answers to an order that do not refuse it for good
RETRYABLE_4XX = frozenset({408, 409, 425, 429})
#: the longest reason kept, and the longest reference (as ``redemptions`` stores them)
MAX_TEXT = 500
MAX_REFERENCE = 128

SUCCEEDED, FAILED, UNKNOWN, NOT_FOUND = "succeeded", "failed", "unknown", "not_found"


@dataclass(frozen=True)
class Order:
    """What the engine asks a partner to deliver."""

    order_id: str
    #: the benefit code
    product: str
    #: what one unit is worth, in fen
    face_value: int
    quantity: int
    #: the redemption's delivery details: ``{"phone_number": ...}`` or ``{"account_ref": ...}``
    delivery: dict[str, Any]
    #: after this the partner must refuse the order
    deadline: dt.datetime | None


@dataclass(frozen=True)
class Answer:
    """What came of a call: ``succeeded``, ``failed``, ``unknown`` or ``not_found``."""

    outcome: str
    #: the partner's reference for a delivered order
    reference: str | None = None
    #: why it failed (the partner's words), or what went wrong when the outcome is unknown
    reason: str | None = None


class Adapter:
    """One partner: its name, the base URL of its API, its secret, and the HTTP timeout."""

    kind: ClassVar[str]
    #: the delivery detail this kind of partner delivers to
    target: ClassVar[str]

    def __init__(self, name: str, base_url: str, secret: str, timeout: int) -> None:
        self.name = name
        self.base_url = base_url
        self.secret = secret
        self.timeout = timeout

    def body(self, order: Order) -> dict[str, Any]:
        return {
            "order_id": order.order_id,
            "product": order.product,
            "face_value": order.face_value,
            self.target: order.delivery[self.target],
            "quantity": order.quantity,
        }

    def submit(self, order: Order, now: dt.datetime) -> Answer:
        """Place ``order`` (again, under the same id, if it may have been placed before)."""
        if not isinstance(order.delivery.get(self.target), str):
            return Answer(FAILED, reason=f"the redemption has no {self.target} for a {self.kind} partner")
        body = json.dumps(self.body(order), ensure_ascii=False, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            protocol.IDEMPOTENCY_KEY: order.order_id,
            **protocol.signed_headers(self.secret, body, now.timestamp()),
        }
        if order.deadline is not None:
            headers[protocol.DEADLINE] = str(int(order.deadline.timestamp()))
        status, payload, error = self.call("POST", f"{self.base_url}/orders", body, headers)
        if status is not None and 400 <= status < 500 and status not in RETRYABLE_4XX:
            reason = payload.get("reason") if isinstance(payload, dict) else None
            return Answer(FAILED, reason=text(reason) or f"the partner refused the order with HTTP {status}")
        return interpret(status, payload, error)

    def status(self, order_id: str, now: dt.datetime) -> Answer:
        """Ask what became of an order."""
        headers = protocol.signed_headers(self.secret, b"", now.timestamp())
        url = f"{self.base_url}/orders/{urllib.parse.quote(order_id, safe='')}"
        status, payload, error = self.call("GET", url, None, headers)
        if status == 404:
            return Answer(NOT_FOUND)
        return interpret(status, payload, error)

    def call(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int | None, Any, str | None]:
        """One HTTP exchange: the status (None without one), the JSON answer (None if there is
        none), and what went wrong, if anything. Error texts never include the secret."""
        # S310: the opener handles http and https only, and partner URLs are checked at start-up.
        request = urllib.request.Request(  # noqa: S310
            url, data=body, method=method, headers={"User-Agent": USER_AGENT, "Accept": "application/json", **headers}
        )
        try:
            with opener().open(request, timeout=self.timeout) as response:
                return int(response.status), parse(response.read()), None
        except urllib.error.HTTPError as exc:
            with exc:
                try:
                    raw = exc.read()
                except (OSError, http.client.HTTPException):
                    raw = b""
            return exc.code, parse(raw), f"HTTP {exc.code}"
        except TimeoutError:
            return None, None, f"no answer within {self.timeout} s"
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                return None, None, f"no answer within {self.timeout} s"
            return None, None, f"connection failed: {exc.reason}"[:MAX_TEXT]
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return None, None, f"{type(exc).__name__}: {exc}"[:MAX_TEXT]


class TelecomTopUp(Adapter):
    """Phone credit from a telecom operator, to the member's phone number."""

    kind = "telecom"
    target = "phone_number"


class VideoMembership(Adapter):
    """A video-service membership, on the member's account with the service."""

    kind = "video"
    target = "account_ref"


#: adapter classes by partner kind
ADAPTERS: dict[str, type[Adapter]] = {a.kind: a for a in (TelecomTopUp, VideoMembership)}


def adapter_for(settings: Settings, partner: str) -> Adapter | None:
    """The adapter for a configured partner; None if ``LOYALTY_PARTNERS`` does not name it."""
    url = settings.partners.get(partner)
    if url is None:
        return None
    cls = ADAPTERS[partner_kind(partner)]
    return cls(partner, url, settings.partner_secret_for(partner), settings.partner_timeout_seconds)


def interpret(status: int | None, payload: Any, error: str | None) -> Answer:
    """What a 2xx answer says about an order; anything else is unknown."""
    if status is None or not 200 <= status < 300:
        return Answer(UNKNOWN, reason=error or f"HTTP {status}")
    said = payload.get("status") if isinstance(payload, dict) else None
    if said == protocol.SUCCEEDED:
        return Answer(SUCCEEDED, reference=text(payload.get("reference"), MAX_REFERENCE))
    if said == protocol.FAILED:
        return Answer(FAILED, reason=text(payload.get("reason")) or "the partner failed the order")
    if said == protocol.PROCESSING:
        return Answer(UNKNOWN, reason="the partner is still processing the order")
    return Answer(UNKNOWN, reason=f"HTTP {status} without a status the protocol knows")


def parse(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def text(value: Any, limit: int = MAX_TEXT) -> str | None:
    """A partner's reference or reason as text of at most ``limit`` characters; None if it gave none."""
    if value is None or isinstance(value, (dict, list)):
        return None
    return str(value)[:limit] or None


def opener() -> urllib.request.OpenerDirector:
    """HTTP and HTTPS only, with proxies from the environment and no redirects (a 3xx proves nothing)."""
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

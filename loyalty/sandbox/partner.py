"""The sandbox partner: a telecom top-up provider (``/telecom``) and a video-membership
provider (``/video``) in one process, speaking the partner protocol (README, "Fulfilment
partners"), for development (``make run`` starts one) and for tests.

It checks the engine's signatures, treats an order id it has seen as the same
order (it delivers an order at most once, and answers a repeat with the
order's state), refuses orders that arrive after their ``X-Loyalty-Deadline``,
and records what it delivered. How it behaves is set at start-up and can be
changed while it runs through ``POST /_control``:

- ``latency_ms``: wait this long before answering each partner request;
- ``failure_rate`` (0 to 1): the share of new orders it declines;
- ``timeout_then_succeed``: the next N new orders are delivered at once but
  answered only after ``hang_ms``, past the engine's timeout;
- ``processing_ms``: new orders are answered ``processing`` and completed
  this much later (failed instead if their deadline has passed by then);
- ``down``: ``"503"`` answers every partner request with 503, ``"close"``
  closes the connection without an answer; null: up;
- ``callbacks``: ``"before"`` posts the outcome of a new order to the
  callback URL before answering the order, ``"after"`` after; ``"off"``;
- ``seed``: decide failures from the seed and the order id alone, so a run
  is the same whatever order requests arrive in;
- ``reset``: forget every order and delivery and return to the start-up
  behaviour (applied before the other fields of the same request).

``GET /_control`` shows the behaviour, ``GET /_orders`` every order with how
many times it was submitted and queried and the answers to its callbacks,
``GET /_requests`` every signed order and status query it answered (method,
partner, order id, HTTP status), ``GET /_deliveries`` what was delivered. These endpoints are not signed: bind
the sandbox to loopback (the default).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import random
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from loyalty.fulfilment import protocol

#: partner kind -> (the delivery detail it needs, its reference prefix)
KINDS = {"telecom": ("phone_number", "TEL"), "video": ("account_ref", "VID")}
DOWN_MODES = ("503", "close")
CALLBACK_MODES = ("off", "before", "after")
DEFAULT_CALLBACK_URL = "http://127.0.0.1:8000/v1/partners/{partner}/callbacks"
MAX_BODY = 64 * 1024
CALLBACK_TIMEOUT_SECONDS = 5
ORDER_PATH = re.compile(r"/(?P<partner>[a-z]+)/orders(?:/(?P<order_id>[^/]+))?")


@dataclass
class Behaviour:
    latency_ms: int = 0
    failure_rate: float = 0.0
    timeout_then_succeed: int = 0
    hang_ms: int = 10_000
    processing_ms: int = 0
    down: str | None = None
    callbacks: str = "off"
    seed: int | None = None

    def changed(self, changes: dict[str, Any]) -> Behaviour:
        """A copy with ``changes`` applied; ValueError naming a bad field."""
        values = dataclasses.asdict(self)
        for name, value in changes.items():
            if name not in values:
                raise ValueError(f"{name}: unknown setting; settings: {', '.join(values)}")
            values[name] = value
        for name in ("latency_ms", "timeout_then_succeed", "hang_ms", "processing_ms"):
            if type(values[name]) is not int or values[name] < 0:
                raise ValueError(f"{name}: must be a whole number from 0")
        rate = values["failure_rate"]
        if type(rate) not in (int, float) or not 0 <= rate <= 1:
            raise ValueError("failure_rate: must be a number from 0 to 1")
        if values["down"] not in (None, *DOWN_MODES):
            raise ValueError(f"down: must be null or one of {', '.join(DOWN_MODES)}")
        if values["callbacks"] not in CALLBACK_MODES:
            raise ValueError(f"callbacks: must be one of {', '.join(CALLBACK_MODES)}")
        if values["seed"] is not None and type(values["seed"]) is not int:
            raise ValueError("seed: must be an integer or null")
        return Behaviour(**values)


@dataclass
class Order:
    partner: str
    order_id: str
    #: the order as it was first received
    request: dict[str, Any]
    status: str
    reference: str | None = None
    reason: str | None = None
    deadline: int | None = None
    #: how many times it was placed, and asked about
    submissions: int = 1
    queries: int = 0
    #: the HTTP status (or error) of each callback sent about it
    callbacks: list[int | str] = field(default_factory=list)

    def answer(self) -> dict[str, Any]:
        return {"order_id": self.order_id, "status": self.status, "reference": self.reference, "reason": self.reason}


class Sandbox:
    """The orders, the deliveries and the behaviour, shared by the request threads."""

    def __init__(self, *, secret: str, callback_url: str, behaviour: Behaviour) -> None:
        self.secret = secret
        self.callback_url = callback_url
        self.start = behaviour
        self.behaviour = behaviour
        self.lock = threading.Lock()
        self.orders: dict[tuple[str, str], Order] = {}
        self.deliveries: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []

    def control(self, changes: dict[str, Any]) -> Behaviour:
        changes = dict(changes)
        with self.lock:
            base = self.behaviour
            if changes.pop("reset", False):
                self.orders.clear()
                self.deliveries.clear()
                self.requests.clear()
                base = self.start
            self.behaviour = base.changed(changes)
            return self.behaviour

    def place(self, partner: str, body: Any, deadline: str | None) -> tuple[int, dict[str, Any], float, Order | None]:
        """A new or repeated order. Returns the HTTP status, the answer, how long to wait before
        answering, and the order to report by callback (a new, decided one), if any."""
        target = KINDS[partner][0]
        problem = invalid(body, target)
        if problem is None and deadline is not None and not deadline.isdigit():
            problem = f"{protocol.DEADLINE} must be Unix seconds"
        if problem is not None:
            return 422, {"status": protocol.FAILED, "reason": problem}, 0, None
        with self.lock:
            order = self.orders.get((partner, body["order_id"]))
            if order is not None:
                order.submissions += 1
                if order.request != body:
                    return 409, {"error": "this order id was used for a different order"}, 0, None
                return 200, order.answer(), 0, None
            behaviour = self.behaviour
            order = Order(partner, body["order_id"], body, protocol.PROCESSING, deadline=int(deadline or 0) or None)
            self.orders[(partner, order.order_id)] = order
            hang = 0.0
            if order.deadline is not None and time.time() > order.deadline:
                order.status, order.reason = protocol.FAILED, "the order arrived after its deadline"
            elif self.declines(behaviour, partner, order.order_id):
                order.status, order.reason = protocol.FAILED, "declined by the provider"
            elif behaviour.timeout_then_succeed:
                self.behaviour = dataclasses.replace(behaviour, timeout_then_succeed=behaviour.timeout_then_succeed - 1)
                self.deliver(order)
                hang = behaviour.hang_ms / 1000
            elif behaviour.processing_ms:
                timer = threading.Timer(behaviour.processing_ms / 1000, self.complete, args=(order,))
                timer.daemon = True
                timer.start()
            else:
                self.deliver(order)
            decided = order if order.status != protocol.PROCESSING else None
            return 201, order.answer(), hang, decided

    def query(self, partner: str, order_id: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            order = self.orders.get((partner, order_id))
            if order is None:
                return 404, {"error": "no such order"}
            order.queries += 1
            return 200, order.answer()

    @staticmethod
    def declines(behaviour: Behaviour, partner: str, order_id: str) -> bool:
        if behaviour.seed is None:
            draw = random.random()  # noqa: S311  (a simulation, not security)
        else:
            draw = random.Random(f"{behaviour.seed}:{partner}:{order_id}").random()  # noqa: S311
        return draw < behaviour.failure_rate

    def deliver(self, order: Order) -> None:
        """Deliver a processing order (the caller holds the lock): the one place deliveries happen."""
        digest = hashlib.sha256(f"{order.partner}:{order.order_id}".encode()).hexdigest()[:16].upper()
        order.status, order.reference = protocol.SUCCEEDED, f"{KINDS[order.partner][1]}-{digest}"
        target = KINDS[order.partner][0]
        self.deliveries.append(
            {
                "partner": order.partner,
                "order_id": order.order_id,
                "product": order.request["product"],
                "face_value": order.request["face_value"],
                "quantity": order.request["quantity"],
                target: order.request[target],
                "reference": order.reference,
                "delivered_at": dt.datetime.now(dt.UTC).isoformat(),
            }
        )

    def complete(self, order: Order) -> None:
        """Finish a processing order: deliver it, or fail it if its deadline has passed."""
        with self.lock:
            if order.status != protocol.PROCESSING:
                return
            if order.deadline is not None and time.time() > order.deadline:
                order.status, order.reason = protocol.FAILED, "not completed before its deadline"
            else:
                self.deliver(order)
            report = self.behaviour.callbacks != "off"
        if report:
            self.callback(order)

    def callback(self, order: Order) -> None:
        """Post the order's outcome to the engine, signed; record the answer."""
        with self.lock:
            body = json.dumps(order.answer(), separators=(",", ":")).encode()
        # S310: the URL is the operator's own --callback-url.
        request = urllib.request.Request(  # noqa: S310
            self.callback_url.replace("{partner}", order.partner),
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                **protocol.signed_headers(self.secret, body, time.time(), partner=True),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=CALLBACK_TIMEOUT_SECONDS) as response:  # noqa: S310
                outcome: int | str = int(response.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            outcome = exc.code
        except (OSError, ValueError) as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        with self.lock:
            order.callbacks.append(outcome)

    def record(self, method: str, partner: str, order_id: Any, status: int) -> None:
        with self.lock:
            self.requests.append({"method": method, "partner": partner, "order_id": order_id, "status": status})

    def orders_json(self) -> list[dict[str, Any]]:
        with self.lock:
            return [
                {
                    **o.answer(),
                    "partner": o.partner,
                    "submissions": o.submissions,
                    "queries": o.queries,
                    "callbacks": list(o.callbacks),
                }
                for o in self.orders.values()
            ]


def invalid(body: Any, target: str) -> str | None:
    """What is wrong with an order body, if anything."""
    if not isinstance(body, dict):
        return "the order must be a JSON object"
    order_id = body.get("order_id")
    if not isinstance(order_id, str) or not 1 <= len(order_id) <= 64:
        return "order_id must be a string of 1 to 64 characters"
    if not isinstance(body.get("product"), str) or not body["product"]:
        return "product must be a string"
    for name in ("face_value", "quantity"):
        if type(body.get(name)) is not int or body[name] < (0 if name == "face_value" else 1):
            return f"{name} must be a whole number" + (" from 1" if name == "quantity" else " from 0")
    if not isinstance(body.get(target), str) or not body[target]:
        return f"{target} must be a string"
    return None


class Handler(BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:  # noqa: N802  (the base class's name)
        path = urlsplit(self.path).path
        sandbox = self.server.sandbox
        if path == "/_control":
            self.reply(200, {"behaviour": dataclasses.asdict(sandbox.behaviour)})
        elif path == "/_orders":
            self.reply(200, {"orders": sandbox.orders_json()})
        elif path == "/_deliveries":
            with sandbox.lock:
                self.reply(200, {"deliveries": list(sandbox.deliveries)})
        elif path == "/_requests":
            with sandbox.lock:
                self.reply(200, {"requests": list(sandbox.requests)})
        else:
            self.partner_request(path)

    def do_POST(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        if path == "/_control":
            try:
                changes = json.loads(self.body())
                if not isinstance(changes, dict):
                    raise ValueError("send a JSON object of settings")
                behaviour = self.server.sandbox.control(changes)
            except ValueError as exc:
                self.reply(400, {"error": str(exc)})
                return
            self.reply(200, {"behaviour": dataclasses.asdict(behaviour)})
        else:
            self.partner_request(path)

    def partner_request(self, path: str) -> None:
        match = ORDER_PATH.fullmatch(path)
        if match is None or match["partner"] not in KINDS or (self.command == "POST") == bool(match["order_id"]):
            self.reply(404, {"error": "no such endpoint"})
            return
        sandbox = self.server.sandbox
        body = self.body()
        behaviour = sandbox.behaviour
        if behaviour.down == "close":
            self.close_connection = True
            return
        if behaviour.down == "503":
            self.reply(503, {"error": "the provider is down"})
            return
        time.sleep(behaviour.latency_ms / 1000)
        refused = protocol.check_signature(
            sandbox.secret,
            self.headers.get(protocol.TIMESTAMP),
            self.headers.get(protocol.SIGNATURE),
            body,
            time.time(),
        )
        if refused is not None:
            self.reply(401, {"error": refused})
            return
        partner = match["partner"]
        if self.command == "GET":
            order_id = unquote(match["order_id"])
            status, answer = sandbox.query(partner, order_id)
            sandbox.record("GET", partner, order_id, status)
            self.reply(status, answer)
            return
        try:
            order = json.loads(body)
        except ValueError:
            order = None
        status, answer, hang, decided = sandbox.place(partner, order, self.headers.get(protocol.DEADLINE))
        sandbox.record("POST", partner, order.get("order_id") if isinstance(order, dict) else None, status)
        if decided is not None and behaviour.callbacks == "before":
            sandbox.callback(decided)
        time.sleep(hang)
        self.reply(status, answer)
        if decided is not None and behaviour.callbacks == "after":
            sandbox.callback(decided)

    def body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(min(length, MAX_BODY))

    def reply(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except ConnectionError:
            pass  # the client gave up waiting: its loss, the order stands


class Server(ThreadingHTTPServer):
    daemon_threads = True
    #: the listen backlog: room for every sender of several overlapping runs
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        super().__init__(address, Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def serve(host: str, port: int, sandbox: Sandbox) -> None:
    """Serve until interrupted; says where it listens first (``--port 0`` picks a free port)."""
    server = Server((host, port), sandbox)
    print(f"sandbox partner listening on http://{host}:{server.server_port} (/telecom, /video)", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()

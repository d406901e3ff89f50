"""The sandbox partner as a real process on loopback, the engine's API served over real HTTP
for its callbacks, and pending partner redemptions made as the redemption API makes them."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from werkzeug.serving import make_server

from loyalty.catalogue.models import benefits
from loyalty.db import insert_ignore, transaction
from loyalty.ledger import service as ledger
from loyalty.ledger import verify
from loyalty.members.service import Enrolment, enrol
from loyalty.redemption.models import redemptions
from loyalty.runtime import Runtime
from tests.probe_jobs import ROOT

LOYALTY = str(Path(sys.executable).with_name("loyalty"))
#: the key the sandbox and the engine sign with in tests
SECRET = "partner-secret-for-tests-0123456789"  # noqa: S105  (a test secret)
#: generous bounds for processes to start and answer on a loaded machine
STARTUP_SECONDS = 30
#: stock each test benefit starts with
STOCK = 1000


def environment(**settings: str) -> dict[str, str]:
    """The environment of a ``loyalty`` process running this tree's code."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        **settings,
    }


def http_json(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One JSON request; returns the status and the decoded answer."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(  # noqa: S310  (loopback test servers)
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=STARTUP_SECONDS) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


class SandboxPartner:
    """``loyalty sandbox-partner`` in its own process on a free loopback port."""

    def __init__(self, log: Path, *options: str) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [LOYALTY, "sandbox-partner", "--port", "0", "--secret", SECRET, *options],
                env=environment(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.url = self.wait_for_address()

    def wait_for_address(self) -> str:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            for line in self.log.read_text().splitlines():
                if line.startswith("sandbox partner listening on "):
                    return line.split()[4]
            if self.process.poll() is not None:
                raise AssertionError(f"the sandbox partner exited: {self.log.read_text()}")
            time.sleep(0.05)
        raise AssertionError("the sandbox partner did not start")

    def partners(self) -> dict[str, str]:
        """``LOYALTY_PARTNERS`` for this sandbox."""
        return {"telecom": f"{self.url}/telecom", "video": f"{self.url}/video"}

    def control(self, **changes: Any) -> dict[str, Any]:
        status, answer = http_json("POST", f"{self.url}/_control", changes)
        assert status == 200, answer
        return answer["behaviour"]  # type: ignore[no-any-return]

    def orders(self) -> dict[str, dict[str, Any]]:
        return {o["order_id"]: o for o in http_json("GET", f"{self.url}/_orders")[1]["orders"]}

    def requests(self, order_id: str) -> list[tuple[str, int]]:
        """The signed requests about ``order_id`` the sandbox answered: (method, HTTP status)."""
        answered = http_json("GET", f"{self.url}/_requests")[1]["requests"]
        return [(r["method"], r["status"]) for r in answered if r["order_id"] == order_id]

    def deliveries(self) -> list[dict[str, Any]]:
        return http_json("GET", f"{self.url}/_deliveries")[1]["deliveries"]  # type: ignore[no-any-return]

    def delivered(self, order_id: str) -> int:
        """How many times ``order_id`` was delivered."""
        return sum(1 for d in self.deliveries() if d["order_id"] == order_id)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=STARTUP_SECONDS)


class LiveServer:
    """The engine's WSGI app on a free loopback port, for callbacks from the sandbox; which app
    it serves is set per test."""

    def __init__(self) -> None:
        self.app: Any = None
        self.server = make_server("127.0.0.1", 0, self.wsgi, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def wsgi(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=STARTUP_SECONDS)


def benefit_code(partner: str, cancel_hours: int) -> str:
    return f"{partner}-benefit-{cancel_hours}h"


def pending_redemption(
    rt: Runtime,
    member_id: str,
    *,
    partner: str = "telecom",
    points: int = 300,
    quantity: int = 1,
    delivery: dict[str, str] | None = None,
    deadline_in: dt.timedelta = dt.timedelta(minutes=10),
    cancel_hours: int = 0,
    attempts: int = 0,
) -> str:
    """A pending partner redemption, made as ``POST /v1/redemptions`` makes one: the member
    (enrolled if need be, with the welcome bonus), the benefit, the hold of the points under
    the redemption's id, a unit of stock taken, the row due now. Returns the redemption id."""
    redemption_id = f"r-{uuid.uuid4().hex[:16]}"
    code = benefit_code(partner, cancel_hours)
    if delivery is None:
        delivery = (
            {"account_ref": f"acct-{member_id}"} if partner.startswith("video") else {"phone_number": "13800138000"}
        )
    now = rt.now()
    with transaction(rt.engine) as conn:
        enrol(conn, Enrolment(member_id), programme=rt.programme, now=now)
        conn.execute(
            insert_ignore(conn, benefits).values(
                code=code,
                version=1,
                name=f"{partner} benefit",
                kind="membership" if partner.startswith("video") else "phone_credit",
                fulfilment="partner",
                partner=partner,
                face_value=5000,
                unit_cost=4800,
                funding_source="bank",
                points_price=points // quantity,
                stock=STOCK,
                status="active",
                cancel_hours=cancel_hours,
                updated_by="test",
                updated_at=now,
            )
        )
        ledger.hold(conn, member_id, redemption_id, points, capture_account="redeemed:unspecified", now=now)
        conn.execute(benefits.update().where(benefits.c.code == code).values(stock=benefits.c.stock - quantity))
        conn.execute(
            redemptions.insert().values(
                member_id=member_id,
                id=redemption_id,
                benefit_code=code,
                benefit_version=1,
                quantity=quantity,
                points=points,
                status="pending",
                hold_id=redemption_id,
                delivery=json.dumps(delivery),
                partner=partner,
                attempts=attempts,
                next_attempt_at=now,
                deadline=now + deadline_in,
                created_at=now,
                updated_at=now,
            )
        )
    return redemption_id


def redemption(rt: Runtime, redemption_id: str) -> Any:
    with rt.engine.connect() as conn:
        return conn.execute(sa.select(redemptions).where(redemptions.c.id == redemption_id)).one()


def assert_all_settled(rt: Runtime, sandbox: SandboxPartner) -> None:
    """What must hold after every test: the ledger verifies, every redemption is final, and the
    sandbox delivered no order twice."""
    with rt.engine.connect() as conn:
        broken = [o for o in verify.run(conn) if not o.ok]
        statuses = dict(conn.execute(sa.select(redemptions.c.id, redemptions.c.status)).all())
    assert not broken, verify.report(broken)
    assert all(s in ("fulfilled", "failed") for s in statuses.values()), statuses
    twice = [k for k, n in Counter((d["partner"], d["order_id"]) for d in sandbox.deliveries()).items() if n > 1]
    assert not twice, twice

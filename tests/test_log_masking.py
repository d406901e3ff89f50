"""No log line shows a member's phone number, a voucher code or a failed statement's parameters:
the engine hides SQL parameters, and the app and the command mask what comes through other ways."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from loyalty import logmask
from loyalty.catalogue import codes
from loyalty.catalogue.service import install_default
from loyalty.db import transaction
from loyalty.redemption.models import redemptions
from loyalty.runtime import Runtime
from tests.conftest import TEST_SECRET_KEY
from tests.helpers import enrol, txn

LOYALTY = str(Path(sys.executable).with_name("loyalty"))
PHONE = "13800138000"


@pytest.fixture
def phone_credit(client: Any, runtime: Runtime) -> None:
    """The default catalogue, and member m1 with 1,500 points: enough for `phone-credit-10`."""
    with transaction(runtime.engine) as conn:
        install_default(conn, runtime.programme.ladder.codes, actor="test", now=runtime.now())
    enrol(client)
    assert client.post("/v1/transactions", json=txn("t1", "m1", 100_000)).status_code == 201


def order(redemption_id: str = "r1") -> dict[str, Any]:
    return {
        "redemption_id": redemption_id,
        "member_id": "m1",
        "benefit_code": "phone-credit-10",
        "delivery": {"phone_number": PHONE},
    }


def ddl(rt: Runtime, statement: str) -> None:
    with transaction(rt.engine) as conn:
        conn.exec_driver_sql(statement)


def post_raw(app: Any, api_key: str, path: str, body: Any) -> Any:
    """Straight to the app: a server fault answers 500, which no operation of the contract declares."""
    return app.test_client().post(path, json=body, headers={"Authorization": f"Bearer {api_key}"})


def test_a_server_error_logs_neither_the_phone_number_nor_the_statements_parameters(
    app, api_key, runtime, phone_credit, caplog
):
    # A genuine server fault: the schema is not what the code expects (a botched deploy).
    ddl(runtime, "ALTER TABLE redemptions RENAME COLUMN delivery TO delivery_moved")
    try:
        with caplog.at_level(logging.INFO):
            r = post_raw(app, api_key, "/v1/redemptions", order())
    finally:
        ddl(runtime, "ALTER TABLE redemptions RENAME COLUMN delivery_moved TO delivery")
    assert r.status_code == 500 and r.content_type == "application/problem+json"
    assert PHONE not in r.get_data(as_text=True)
    logged = caplog.text
    assert "unhandled error on POST /v1/redemptions" in logged
    assert "INSERT INTO redemptions" in logged  # the failed statement is logged, for whoever mends it ...
    assert "[SQL parameters hidden due to hide_parameters=True]" in logged  # ... without its values
    assert "[parameters:" not in logged
    assert PHONE not in logged
    # Nothing was half-written, and the number was never stored: the redemption can be made afterwards.
    with transaction(runtime.engine, readonly=True) as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(redemptions)).scalar_one() == 0


@pytest.mark.postgres_only
def test_a_database_error_quoting_the_failing_row_has_the_phone_number_masked(
    app, api_key, runtime, phone_credit, caplog
):
    """PostgreSQL quotes the failing row in the error's DETAIL: parameters hidden or not, the delivery
    details are in it. The log filter masks them."""
    ddl(runtime, "ALTER TABLE redemptions ADD CONSTRAINT injected_fault CHECK (delivery IS NULL) NOT VALID")
    try:
        with caplog.at_level(logging.INFO):
            r = post_raw(app, api_key, "/v1/redemptions", order())
    finally:
        ddl(runtime, "ALTER TABLE redemptions DROP CONSTRAINT injected_fault")
    assert r.status_code == 500
    logged = caplog.text
    assert "Failing row contains" in logged and '{"phone_number": "[phone number]"}' in logged
    assert PHONE not in logged


def test_voucher_codes_a_request_reveals_are_masked_in_its_log_lines(app, client, runtime, caplog):
    @app.after_request
    def log_answer(response: Any) -> Any:
        # a debugging aid someone might add: every answer in the log
        logging.getLogger("loyalty.debugging").warning("answered %s", response.get_data(as_text=True))
        return response

    with transaction(runtime.engine) as conn:
        install_default(conn, runtime.programme.ladder.codes, actor="test", now=runtime.now())
        codes.add_codes(
            conn, codes.CodeBox(TEST_SECRET_KEY), "starter-gift-pack", ["GIFT-7Q3X-9KPD"], now=runtime.now()
        )
    logmask.forget()  # what the pool upload above declared, outside any request
    enrol(client)
    with caplog.at_level(logging.INFO):
        r = client.post(
            "/v1/redemptions", json={"redemption_id": "r1", "member_id": "m1", "benefit_code": "starter-gift-pack"}
        )
        assert r.get_json()["voucher_codes"] == ["GIFT-7Q3X-9KPD"]
        again = client.get("/v1/redemptions/r1")
        assert again.get_json()["voucher_codes"] == ["GIFT-7Q3X-9KPD"]
    answers = [rec.getMessage() for rec in caplog.records if rec.name == "loyalty.debugging"]
    assert len([a for a in answers if '"voucher_codes": ["[secret]"]' in a]) == 2
    assert "GIFT-7Q3X-9KPD" not in caplog.text
    # Forgotten once the request is over: a context keeps no code longer than it needs it.
    assert logmask.mask("GIFT-7Q3X-9KPD") == "GIFT-7Q3X-9KPD"


class BarredSubscriber(BaseHTTPRequestHandler):
    """A telecom partner that refuses every top-up, quoting the number in its reason, as real ones do."""

    def do_POST(self) -> None:  # noqa: N802  (the name http.server calls)
        order = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        answer = {"order_id": order["order_id"], "status": "failed"}
        answer["reason"] = f"subscriber {order['phone_number']} is barred"
        raw = json.dumps(answer).encode()
        self.send_response(422)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """The test partner keeps quiet; the engine's log is what is under test."""


@pytest.fixture
def barred_partner() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BarredSubscriber)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/telecom"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.committed
def test_the_scheduler_masks_a_phone_number_a_partner_quotes(client, runtime, clock, database_url, barred_partner):
    """The ``loyalty scheduler`` process, as ``make run`` starts it: the fulfilment job logs the partner's
    reason for failing the order, and the number in it is masked on the process's stderr."""
    clock.now = dt.datetime.now(dt.UTC)  # the scheduler runs on the real clock
    with transaction(runtime.engine) as conn:
        install_default(conn, runtime.programme.ladder.codes, actor="test", now=runtime.now())
    enrol(client)
    assert client.post("/v1/transactions", json=txn("t1", "m1", 100_000)).status_code == 201
    assert client.post("/v1/redemptions", json=order()).get_json()["status"] == "pending"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")}
    env.update(
        LOYALTY_DATABASE_URL=database_url,
        LOYALTY_PARTNERS=f"telecom={barred_partner}",
        LOYALTY_JOB_INTERVALS="fulfilment=1",
        LOYALTY_SCHEDULER_STANDBY_SECONDS="0.2",
        LOYALTY_SECRET_KEY=TEST_SECRET_KEY,
    )
    scheduler = subprocess.Popen(
        [LOYALTY, "scheduler"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        status = "pending"
        while status == "pending" and time.monotonic() < deadline:
            time.sleep(0.2)
            with transaction(runtime.engine, readonly=True) as conn:
                status = conn.execute(sa.select(redemptions.c.status)).scalar_one()
    finally:
        scheduler.send_signal(signal.SIGTERM)
        _out, err = scheduler.communicate(timeout=60)
    assert status == "failed", err
    assert "redemption r1 failed at partner telecom: subscriber [phone number] is barred" in err
    assert PHONE not in err


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (f"call {PHONE} now", "call [phone number] now"),
        (f"+86{PHONE}, 86-{PHONE}", "[phone number], [phone number]"),
        (f"tel:{PHONE}.", "tel:[phone number]."),
        ("2" + PHONE, "2" + PHONE),  # 12 digits: not a phone number
        (PHONE + "9", PHONE + "9"),
        ("12800138000", "12800138000"),  # no mainland mobile number starts 12
        ("1700000000000 ms", "1700000000000 ms"),
    ],
)
def test_phone_numbers_are_masked_and_other_numbers_left_alone(text, masked):
    assert logmask.mask(text) == masked


def test_the_filter_masks_the_message_its_arguments_and_the_traceback():
    logmask.keep_out_of_logs("WEBHOOK-SECRET-0123456789", "abc")  # "abc": too short to be masked
    try:
        try:
            raise RuntimeError(f"top-up to {PHONE} refused")
        except RuntimeError:
            record = logging.LogRecord(
                "x",
                logging.ERROR,
                __file__,
                1,
                "signing with %s for %s",
                ("WEBHOOK-SECRET-0123456789", "abc"),
                sys.exc_info(),
            )
        assert logmask.MaskSecrets().filter(record) is True
        assert record.getMessage() == "signing with [secret] for abc"
        assert "top-up to [phone number] refused" in (record.exc_text or "")
        assert PHONE not in logging.Formatter().format(record)
    finally:
        logmask.forget()

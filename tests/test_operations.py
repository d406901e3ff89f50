"""What operators see: health and readiness, request ids, one JSON log line per request, metrics,
and a 503 with Retry-After (never a 500) while the database is away."""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from loyalty import logs
from loyalty.app import create_app
from loyalty.config import Settings
from loyalty.db import make_engine
from loyalty.migrate import upgrade
from loyalty.programmes.service import ProgrammeStore
from loyalty.runtime import Runtime
from tests.conftest import TEST_SECRET_KEY, Clock
from tests.contract import ContractClient
from tests.helpers import enrol, txn
from tests.test_redemptions import add_benefit, redeem

#: A port nothing listens on: the database is "down".
NOWHERE = "postgresql://postgres@127.0.0.1:9/loyalty"


def sample(app, name: str, **labels: str) -> float:
    """The sum of the samples of ``GET /metrics`` named ``name`` with these labels (0 when none is there yet)."""
    text = app.test_client().get("/metrics").get_data(as_text=True)
    return sum(
        float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_healthz_and_readyz_answer_without_a_key_and_without_versions(client):
    for path, status in (("/healthz", "ok"), ("/readyz", "ready"), ("/health", "ok")):
        r = client.get(path, key=None)
        assert r.status_code == 200 and r.get_json() == {"status": status}
        assert "Server-Version" not in r.headers and "version" not in r.get_data(as_text=True)


def test_readyz_is_503_while_the_schema_is_behind(tmp_path, clock):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    upgrade(engine, "0010")
    app = create_app(Runtime(Settings(database_url=url), engine, ProgrammeStore(engine, clock), clock))
    r = ContractClient(app.test_client(), None).get("/readyz")
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert r.get_json()["type"] == "/problems/not_ready" and "0010" not in r.get_data(as_text=True)
    upgrade(engine)
    assert app.test_client().get("/readyz").status_code == 200
    engine.dispose()


def down_app(clock: Clock):  # type: ignore[no-untyped-def]
    engine = make_engine(NOWHERE, pool_size=1)
    settings = Settings(database_url=NOWHERE, api_key_cache_seconds=0, secret_key=TEST_SECRET_KEY)
    return create_app(Runtime(settings, engine, ProgrammeStore(engine, clock), clock))


def test_while_the_database_is_down_every_operation_answers_503_with_retry_after(clock):
    client = ContractClient(down_app(Clock()).test_client(), "lk_00000000_whatever")
    for method, path, body in (
        ("GET", "/v1/members/m1", None),
        ("POST", "/v1/transactions", txn()),
        ("POST", "/v1/redemptions", {"redemption_id": "r1", "member_id": "m1", "benefit_code": "b1"}),
    ):
        r = client.open(method, path, json=body, headers={"X-Request-Id": "outage-1"})
        assert r.status_code == 503, r.get_data(as_text=True)
        assert r.headers["Retry-After"] == "5" and r.content_type == "application/problem+json"
        assert r.get_json()["type"] == "/problems/database_unavailable"
        assert r.get_json()["request_id"] == "outage-1"
    r = client.get("/readyz", key=None)
    assert r.status_code == 503 and r.get_json()["type"] == "/problems/database_unavailable"
    assert client.get("/healthz", key=None).status_code == 200
    # The scrape still answers, saying the database did not.
    assert sample(down_app(Clock()), "loyalty_database_up") == 0


def test_a_request_id_is_taken_from_the_request_or_made_and_echoed_in_problems(client):
    r = client.get("/v1/members/nobody", headers={"X-Request-Id": "abc.123:x-y_z"})
    assert r.headers["X-Request-Id"] == "abc.123:x-y_z"
    assert r.get_json()["request_id"] == "abc.123:x-y_z"
    made = client.get("/v1/members/nobody").headers["X-Request-Id"]
    other = client.get("/v1/members/nobody").headers["X-Request-Id"]
    assert len(made) == 32 and made != other
    # One that could forge log lines or headers is replaced, not echoed.
    r = client.get("/v1/members/nobody", headers={"X-Request-Id": 'a" "b'})
    assert r.headers["X-Request-Id"] != 'a" "b' and r.get_json()["request_id"] == r.headers["X-Request-Id"]
    assert client.get("/healthz", key=None, headers={"X-Request-Id": "h1"}).headers["X-Request-Id"] == "h1"


def test_each_request_is_one_json_line_with_its_id_route_key_and_hashed_member(client, caplog):
    logmask_phone = "13812345678"
    formatter = logs.JsonFormatter()
    with caplog.at_level(logging.INFO, logger="loyalty.access"):
        enrol(client, logmask_phone)
        client.get(f"/v1/members/{logmask_phone}", headers={"X-Request-Id": "req-7"})
    lines = [json.loads(formatter.format(r)) for r in caplog.records if r.name == "loyalty.access"]
    assert len(lines) == 2
    enrolled, read = lines
    assert read["request_id"] == "req-7" and read["route"] == "/v1/members/<member_id>"
    assert read["status"] == 200 and read["method"] == "GET" and read["key"] == "test"
    assert isinstance(read["duration_ms"], float)
    # The member is a keyed hash, the same for both requests (one from the body, one from the path).
    assert len(read["member"]) == 16 and read["member"] == enrolled["member"]
    assert all(logmask_phone not in json.dumps(line) for line in lines)


def test_json_lines_mask_phone_numbers_and_carry_the_request_id():
    logs.set_request_id("rid-1")
    try:
        record = logging.getLogRecordFactory()("x", logging.INFO, __file__, 1, "sms to %s", ("+86 13912345678",), None)
        line = json.loads(logs.JsonFormatter().format(record))
    finally:
        logs.set_request_id(None)
    assert line["message"] == "sms to [phone number]" and line["request_id"] == "rid-1"


def test_metrics_count_requests_accruals_redemptions_and_refusals(app, client, runtime):
    enrol(client)
    before = {
        "accruals": sample(app, "loyalty_accruals_total", tier="basic"),
        "points": sample(app, "loyalty_points_awarded_total", tier="basic"),
        "redeemed": sample(app, "loyalty_redemptions_total", outcome="fulfilled"),
        "refused": sample(app, "loyalty_refusals_total", type="/problems/insufficient_points"),
        "requests": sample(app, "loyalty_http_request_duration_seconds_count", route="/v1/transactions", status="201"),
    }
    r = client.post("/v1/transactions", json=txn(amount=50_000))
    points = r.get_json()["points"]
    # A replay is not counted again.
    assert client.post("/v1/transactions", json=txn(amount=50_000)).status_code == 200
    available = client.get("/v1/members/m1").get_json()["available"]
    add_benefit(runtime, "b1", points_price=available // 2 + 1)
    assert redeem(client).status_code == 201
    assert redeem(client, "r2").get_json()["type"] == "/problems/insufficient_points"
    assert sample(app, "loyalty_accruals_total", tier="basic") == before["accruals"] + 1
    assert sample(app, "loyalty_points_awarded_total", tier="basic") >= before["points"] + points > before["points"]
    assert sample(app, "loyalty_redemptions_total", outcome="fulfilled") == before["redeemed"] + 1
    assert sample(app, "loyalty_refusals_total", type="/problems/insufficient_points") == before["refused"] + 1
    assert (
        sample(app, "loyalty_http_request_duration_seconds_count", route="/v1/transactions", status="201")
        == before["requests"] + 1
    )
    assert sample(app, "loyalty_database_up") == 1
    assert sample(app, "loyalty_outbox_lag_seconds") >= 0
    assert sample(app, "loyalty_db_pool_connections", state="open") >= 0


@pytest.mark.committed
def test_metrics_read_job_runs_and_dead_letters_from_the_database(app, runtime):
    from loyalty.jobs.runner import run_job

    run_job(runtime, "webhooks")
    assert sample(app, "loyalty_job_runs_total", job="webhooks", status="succeeded") >= 1
    assert sample(app, "loyalty_job_last_run_seconds", job="webhooks") >= 0
    assert sample(app, "loyalty_webhook_deliveries", status="dead") == 0
    assert sample(app, "loyalty_fulfilment_overdue") == 0

"""A member's whole journey through the API: earn, see what they can get, redeem phone credit from a
partner (the sandbox, a real process) and a voucher from a pool, cancel the voucher. The default
catalogue, the redemption flow, the fulfilment job and the ledger together."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from loyalty.catalogue.service import install_default
from loyalty.db import transaction
from loyalty.jobs.runner import run_job
from loyalty.ledger import verify
from loyalty.ledger.models import point_lots
from tests.helpers import enrol, txn
from tests.sandbox import SandboxPartner
from tests.test_fulfilment import clock, live_server, rt, sandbox, sandbox_process  # noqa: F401  (fixtures)


def lots(runtime: Any) -> dict[str, int]:
    with runtime.engine.connect() as conn:
        rows = conn.execute(sa.select(point_lots.c.id, point_lots.c.remaining).where(point_lots.c.member_id == "m1"))
        return {r.id: int(r.remaining) for r in rows}


@pytest.mark.committed  # the fulfilment job and the sandbox partner's callbacks: other threads
def test_earn_redeem_through_a_partner_and_a_pool_then_cancel(rt, sandbox: SandboxPartner, client):  # noqa: F811
    with transaction(rt.engine) as conn:
        install_default(conn, rt.programme.ladder.codes, actor="test", now=rt.now())
    enrol(client)
    r = client.post("/v1/transactions", json=txn("t1", amount=300_000, occurred_at=rt.now().isoformat()))
    assert r.status_code == 201
    assert client.get("/v1/members/m1").get_json()["balance"] == 3_500

    offer = {b["code"]: b for b in client.get("/v1/members/m1/benefits").get_json()["benefits"]}
    assert offer["phone-credit-10"]["available"] is True
    assert offer["airport-lounge"]["available"] is False  # hnw only

    r = client.post(
        "/v1/redemptions",
        json={
            "redemption_id": "r1",
            "member_id": "m1",
            "benefit_code": "phone-credit-10",
            "delivery": {"phone_number": "13912345678"},
        },
    )
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["status"] == "pending"
    assert client.get("/v1/members/m1").get_json()["held"] == 1_000

    ran = run_job(rt, "fulfilment")
    assert ran["status"] == "succeeded" and ran["rows"] == 1, ran
    done = client.get("/v1/redemptions/r1").get_json()
    assert done["status"] == "fulfilled"
    assert [d["order_id"] for d in sandbox.deliveries()] == ["r1"]
    member = client.get("/v1/members/m1").get_json()
    assert (member["balance"], member["held"]) == (2_500, 0)  # not cancellable: spent for good

    upload = client.open(
        "POST",
        "/v1/benefits/food-delivery-coupon-20/codes",
        data="code\nFD-AAAA-0001\nFD-AAAA-0002\n",
        content_type="text/csv",
    )
    assert upload.status_code in (200, 201), upload.get_json()
    before = lots(rt)
    r = client.post(
        "/v1/redemptions", json={"redemption_id": "r2", "member_id": "m1", "benefit_code": "food-delivery-coupon-20"}
    )
    assert r.status_code == 201, r.get_json()
    voucher = r.get_json()
    assert voucher["status"] == "fulfilled"
    assert voucher["voucher_codes"] == ["FD-AAAA-0001"]  # the first code uploaded goes first
    assert client.get("/v1/members/m1").get_json()["held"] == 1_500  # cancellable for 24 hours: still held

    cancel = client.post("/v1/redemptions/r2/cancel")
    assert cancel.status_code == 200, cancel.get_json()
    assert cancel.get_json()["status"] == "cancelled"
    assert lots(rt) == before  # the points are back in the lots they came from
    codes = client.get("/v1/benefits/food-delivery-coupon-20/codes").get_json()
    assert codes["available"] == 2
    with transaction(rt.engine, readonly=True) as conn:
        assert [o.check.name for o in verify.run(conn) if not o.ok] == []

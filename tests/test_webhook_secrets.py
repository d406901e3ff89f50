"""Webhook signing secrets are stored only sealed (AES-GCM under LOYALTY_SECRET_KEY); deliveries are
still signed with them; subscriptions written before sealing are signed as before and sealed by the
job or the command."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from loyalty.db import transaction
from loyalty.events import webhooks
from loyalty.events.models import webhook_deliveries, webhook_subscriptions
from loyalty.jobs.runner import run_job
from loyalty.migrate import upgrade
from loyalty.runtime import Runtime
from loyalty.sealing import CannotOpen, Sealer
from tests.conftest import TEST_SECRET_KEY, make_key
from tests.contract import ContractClient
from tests.helpers import head_revision
from tests.test_constraints import downgrade, previous_revision
from tests.test_events_feed import settle
from tests.test_webhooks import Receiver, event, verify

LOYALTY = str(Path(sys.executable).with_name("loyalty"))
SECRET = "whsec-sealed-0123456789abcdef"  # noqa: S105  (a test secret)
OLD_SECRET = "whsec-from-before-sealing-42"  # noqa: S105  (a test secret)
OTHER_KEY = "a-different-key-0123456789"  # noqa: S105  (a test key)
BOX = Sealer(TEST_SECRET_KEY, webhooks.PURPOSE)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on loopback (:class:`tests.test_webhooks.Receiver`)."""
    r = Receiver()
    r.thread.start()
    yield r
    r.release.set()
    r.server.shutdown()
    r.server.server_close()
    r.thread.join(timeout=5)


def without_key(rt: Runtime) -> Runtime:
    return dataclasses.replace(rt, settings=dataclasses.replace(rt.settings, secret_key=""))


def dump(rt: Runtime) -> str:
    """Every value of every row of the tables a subscription's creation writes."""
    tables = ("webhook_subscriptions", "audit_log", "idempotency_keys")
    with transaction(rt.engine, readonly=True) as conn:
        return " ".join(str(v) for t in tables for row in conn.execute(sa.text(f"SELECT * FROM {t}")) for v in row)  # noqa: S608


def stored(rt: Runtime, subscription_id: str) -> Any:
    with transaction(rt.engine, readonly=True) as conn:
        s = webhook_subscriptions.c
        return conn.execute(sa.select(s.secret, s.secret_sealed, s.secret_hint).where(s.id == subscription_id)).one()


def run(rt: Runtime) -> dict[str, Any]:
    settle(rt.engine)
    return run_job(rt, "webhooks")


def signed_with(secret: str, received: Any) -> bool:
    return verify(secret, received.headers, received.body, now=float(received.headers["X-Loyalty-Timestamp"]))


@pytest.mark.committed  # the job sends from threads and reads the feed
def test_the_database_never_holds_the_secret_and_deliveries_are_signed_with_it(client, runtime, receiver):
    r = client.post("/v1/webhooks", json={"url": receiver.url, "secret": SECRET}, headers={"Idempotency-Key": "k1"})
    assert r.status_code == 201
    sub = r.get_json()
    assert sub["secret_hint"] == "****" + SECRET[-4:]
    assert SECRET not in dump(runtime)
    row = stored(runtime, sub["subscription_id"])
    assert row.secret is None and row.secret_hint == SECRET[-4:]
    assert BOX.open(sub["subscription_id"], row.secret_sealed) == SECRET
    with pytest.raises(CannotOpen):  # bound to its subscription: moved to another row, it does not open
        BOX.open(str(uuid.uuid4()), row.secret_sealed)
    with pytest.raises(CannotOpen):  # and only under the key it was sealed with
        Sealer("another-secret-key-0123456789", webhooks.PURPOSE).open(sub["subscription_id"], row.secret_sealed)

    event(runtime)
    assert run(runtime)["status"] == "succeeded"
    [received] = receiver.received
    assert signed_with(SECRET, received)
    assert not signed_with(row.secret_sealed, received)


def test_without_the_secret_key_a_subscription_is_refused_and_nothing_is_written(runtime, app, receiver):
    client = ContractClient(app.test_client(), make_key(runtime))
    runtime.settings = dataclasses.replace(runtime.settings, secret_key="")
    r = client.post("/v1/webhooks", json={"url": receiver.url, "secret": SECRET})
    assert r.status_code == 503
    problem = r.get_json()
    assert (problem["type"], problem["field"]) == ("/problems/secret_key_missing", "LOYALTY_SECRET_KEY")
    assert "LOYALTY_SECRET_KEY" in problem["detail"]
    with transaction(runtime.engine, readonly=True) as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(webhook_subscriptions)).scalar_one() == 0


@pytest.mark.committed  # the job sends from threads and reads the feed
def test_a_sealed_secret_that_cannot_be_opened_fails_the_run_and_spends_no_attempt(client, runtime, receiver):
    sub = client.post("/v1/webhooks", json={"url": receiver.url, "secret": SECRET}).get_json()
    event(runtime)
    for rt, says in (
        (without_key(runtime), "LOYALTY_SECRET_KEY, which is not set"),
        (
            dataclasses.replace(runtime, settings=dataclasses.replace(runtime.settings, secret_key=OTHER_KEY)),
            "does not open",
        ),
    ):
        result = run(rt)
        assert result["status"] == "failed" and says in result["detail"], result
        assert SECRET not in result["detail"]
    assert receiver.received == []
    with transaction(runtime.engine, readonly=True) as conn:
        attempts = conn.execute(
            sa.select(webhook_deliveries.c.attempts).where(
                webhook_deliveries.c.subscription_id == sub["subscription_id"]
            )
        ).scalar_one()
    assert attempts == 0  # it waits for the key, and is not on its way to dead
    assert run(runtime)["status"] == "succeeded"
    assert [signed_with(SECRET, r) for r in receiver.received] == [True]


@pytest.mark.committed
def test_a_secret_that_cannot_be_opened_holds_back_only_its_own_subscription(client, runtime, receiver):
    """Another subscription's deliveries go out in the same run; the run still fails, naming the key."""
    broken = client.post("/v1/webhooks", json={"url": f"{receiver.url}/broken", "secret": SECRET}).get_json()
    working = client.post("/v1/webhooks", json={"url": f"{receiver.url}/working", "secret": SECRET}).get_json()
    other = Sealer(OTHER_KEY, webhooks.PURPOSE)
    with transaction(runtime.engine) as conn:
        conn.execute(
            webhook_subscriptions.update()
            .where(webhook_subscriptions.c.id == broken["subscription_id"])
            .values(secret_sealed=other.seal(broken["subscription_id"], SECRET))
        )
    event_id = event(runtime)
    result = run(runtime)
    assert result["status"] == "failed" and "does not open" in result["detail"], result
    assert [(r.path, r.event_id) for r in receiver.received] == [("/hooks/loyalty/working", event_id)]
    assert signed_with(SECRET, receiver.received[0])
    with transaction(runtime.engine, readonly=True) as conn:
        d = webhook_deliveries.c
        rows = conn.execute(sa.select(d.subscription_id, d.status, d.attempts)).all()
    assert {tuple(r) for r in rows} == {
        (broken["subscription_id"], "pending", 0),
        (working["subscription_id"], "delivered", 1),
    }


def subscribe_before_sealing(rt: Runtime, url: str) -> str:
    """A subscription as the release before 0011 wrote it, on its schema: the secret in clear."""
    subscription_id = str(uuid.uuid4())
    with transaction(rt.engine) as conn:
        conn.execute(
            sa.text(
                "INSERT INTO webhook_subscriptions (id, url, event_types, secret, active, cursor_tx, cursor_id,"
                " created_by, created_at) VALUES (:id, :url, '[]', :secret, :active, 0, 0, 'old-admin', :now)"
            ),
            {"id": subscription_id, "url": url, "secret": OLD_SECRET, "active": True, "now": rt.now()},
        )
    return subscription_id


@pytest.fixture
def legacy(runtime: Runtime, receiver: Receiver) -> str:
    """A subscription made before migration 0011, migrated: its secret still in clear."""
    downgrade(runtime, previous_revision())
    subscription_id = subscribe_before_sealing(runtime, receiver.url)
    upgrade(runtime.engine)
    row = stored(runtime, subscription_id)
    assert (row.secret, row.secret_sealed, row.secret_hint) == (OLD_SECRET, None, "g-42")
    return subscription_id


@pytest.mark.committed  # migrations run in transactions of their own
def test_a_subscription_from_before_sealing_is_signed_as_before_then_sealed_by_the_job(
    runtime, client, receiver, legacy
):
    shown = client.get(f"/v1/webhooks/{legacy}").get_json()
    assert shown["secret_hint"] == "****g-42"  # noqa: S105  (its last four characters)
    # Without LOYALTY_SECRET_KEY it cannot be sealed, and is signed with the secret in clear, as before.
    event(runtime)
    assert run(without_key(runtime))["status"] == "succeeded"
    assert stored(runtime, legacy).secret == OLD_SECRET
    # The first run with the key seals it, and signs with it all the same.
    event(runtime)
    result = run(runtime)
    assert result["status"] == "succeeded" and "1 secrets stored in clear sealed" in result["detail"], result
    row = stored(runtime, legacy)
    assert (row.secret, row.secret_hint) == (None, "g-42")
    assert BOX.open(legacy, row.secret_sealed) == OLD_SECRET
    assert OLD_SECRET not in dump(runtime)
    assert len(receiver.received) == 2 and all(signed_with(OLD_SECRET, r) for r in receiver.received)
    assert client.get(f"/v1/webhooks/{legacy}").get_json()["secret_hint"] == "****g-42"  # noqa: S105


@pytest.mark.committed
def test_the_command_seals_subscriptions_from_before_sealing(runtime, database_url, legacy):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")}
    env["LOYALTY_DATABASE_URL"] = database_url

    def seal(**extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [LOYALTY, "webhooks", "seal-secrets"]
        return subprocess.run(cmd, env={**env, **extra}, capture_output=True, text=True, timeout=120)

    refused = seal()
    assert refused.returncode == 1 and "LOYALTY_SECRET_KEY" in refused.stderr
    assert stored(runtime, legacy).secret == OLD_SECRET
    done = seal(LOYALTY_SECRET_KEY=TEST_SECRET_KEY)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "sealed 1 webhook secrets stored in clear"
    assert BOX.open(legacy, stored(runtime, legacy).secret_sealed) == OLD_SECRET
    again = seal(LOYALTY_SECRET_KEY=TEST_SECRET_KEY)
    assert again.stdout.strip() == "no webhook secret is stored in clear"


@pytest.mark.committed
def test_a_downgrade_below_sealing_is_refused_while_a_secret_is_sealed(runtime, client, receiver):
    client.post("/v1/webhooks", json={"url": receiver.url, "secret": SECRET})
    with pytest.raises(RuntimeError, match="cannot open"):
        downgrade(runtime, previous_revision())
    with transaction(runtime.engine, readonly=True) as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == head_revision()

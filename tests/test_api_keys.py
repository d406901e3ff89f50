"""API keys: expiry, last use, rotation with an overlap, revocation; per-key rate limits by route
class, answered with 429 problem+json, Retry-After and the RateLimit headers; counters shared
through Redis across processes."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pytest

from loyalty.app import create_app
from loyalty.auth.models import api_keys
from loyalty.auth.service import KeyCache
from loyalty.config import Settings
from loyalty.programmes.service import ProgrammeStore
from loyalty.runtime import Runtime
from tests.conftest import START, make_key
from tests.contract import ContractClient
from tests.helpers import enrol, txn

REDIS_URL = os.environ.get("LOYALTY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def key_id(key: str) -> str:
    return key.split("_")[1]


def test_an_admin_creates_lists_rotates_and_revokes_a_key(client, clock):
    made = client.post(
        "/v1/api-keys",
        json={
            "name": "mobile-app",
            "scopes": ["read"],
            "expires_at": "2026-09-01T00:00:00Z",
            "rate_limits": {"reads": "100/second"},
        },
    )
    assert made.status_code == 201, made.get_json()
    key, view = made.get_json()["key"], made.get_json()["api_key"]
    assert view["status"] == "active" and view["expires_at"] == "2026-09-01T00:00:00Z"
    assert view["rate_limits"] == {"reads": "100/second"} and view["last_used_at"] is None
    assert client.get("/v1/members/nobody", key=key).status_code == 404
    listed = {k["key_id"]: k for k in client.get("/v1/api-keys").get_json()["api_keys"]}
    assert listed[view["key_id"]]["last_used_at"] == START.isoformat().replace("+00:00", "Z")
    assert "key" not in listed[view["key_id"]] and key not in str(listed)

    rotated = client.post(f"/v1/api-keys/{view['key_id']}/rotate", json={"overlap_seconds": 3600}).get_json()
    new = rotated["key"]
    assert new != key and key_id(new) == view["key_id"]
    until = rotated["api_key"]["previous_secret_valid_until"]
    assert until == "2026-06-15T11:00:00Z"
    # Both secrets work during the overlap, the old one not after it.
    assert client.get("/v1/members/nobody", key=key).status_code == 404
    assert client.get("/v1/members/nobody", key=new).status_code == 404
    clock.advance(hours=1)
    assert client.get("/v1/members/nobody", key=key).status_code == 401
    assert client.get("/v1/members/nobody", key=new).status_code == 404

    revoked = client.post(f"/v1/api-keys/{view['key_id']}/revoke").get_json()["api_key"]
    assert revoked["status"] == "revoked"
    assert client.get("/v1/members/nobody", key=new).status_code == 401
    assert client.post(f"/v1/api-keys/{view['key_id']}/rotate", json={"overlap_seconds": 0}).status_code == 422
    assert client.post("/v1/api-keys/nope/revoke").status_code == 404
    audit = client.get("/v1/audit?object_type=api_key").get_json()
    assert [e["action"] for e in audit["entries"]][:3] == ["api_key.revoke", "api_key.rotate", "api_key.create"]


def test_a_key_stops_working_at_its_expiry_even_when_cached(runtime, clock):
    with runtime.engine.begin() as conn:
        from loyalty.auth.service import create_key

        key = create_key(
            conn, name="short", scopes=frozenset({"read"}), now=clock(), expires_at=clock() + dt.timedelta(minutes=5)
        )
    cache = KeyCache(runtime.engine, ttl=3600)
    assert cache.authenticate(key, clock()) is not None
    assert cache.authenticate(key, clock.advance(minutes=5)) is None


def test_a_revoked_key_is_refused_once_the_cache_time_has_passed(runtime, clock):
    key = make_key(runtime, "read")
    with runtime.engine.begin() as conn:
        conn.execute(api_keys.update().where(api_keys.c.id == key_id(key)).values(revoked_at=clock()))
    assert KeyCache(runtime.engine, ttl=0).authenticate(key, clock()) is None


def test_bad_key_requests_are_422_naming_the_field(client):
    for body, field in (
        ({"name": "x", "scopes": ["root"]}, "scopes.0"),
        ({"name": "x", "scopes": ["read"], "rate_limits": {"reads": "fast"}}, "rate_limits"),
        ({"name": "x", "scopes": ["read"], "rate_limits": {"everything": "1/second"}}, "rate_limits"),
        ({"name": "x", "scopes": ["read"], "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
    ):
        r = client.post("/v1/api-keys", json=body)
        assert r.status_code == 422, (body, r.get_json())
        assert r.get_json()["field"].startswith(field), r.get_json()
    assert (
        client.post("/v1/api-keys", json={"name": "x", "scopes": ["read"]}, key=make_key_for(client)).status_code == 403
    )


def make_key_for(client: ContractClient) -> str:
    made = client.post("/v1/api-keys", json={"name": "reader", "scopes": ["read"]}).get_json()
    return made["key"]  # type: ignore[no-any-return]


def limited_app(runtime: Runtime, **limits: str):  # type: ignore[no-untyped-def]
    settings = Settings(
        database_url=runtime.settings.database_url,
        api_key_cache_seconds=0,
        secret_key="k" * 20,
        rate_limits=limits,
        redis_url=limits.pop("redis", "") if "redis" in limits else "",
    )
    app = create_app(Runtime(settings, runtime.engine, ProgrammeStore(runtime.engine, runtime.clock), runtime.clock))
    app.config["TESTING"] = True
    return app


def test_past_a_class_limit_the_key_gets_429_with_retry_after_and_ratelimit_headers(runtime):
    app = limited_app(runtime, accrual="3/minute")
    client = ContractClient(app.test_client(), make_key(runtime))
    other = ContractClient(app.test_client(), make_key(runtime))
    enrol(client)  # an accrual-class write: 1 of 3
    answers = [client.post("/v1/transactions", json=txn(f"t{i}")) for i in range(3)]
    assert [a.status_code for a in answers] == [201, 201, 429]
    assert answers[0].headers["RateLimit-Limit"] == "3" and answers[0].headers["RateLimit-Remaining"] == "1"
    assert "Retry-After" not in answers[0].headers
    refused = answers[2]
    assert refused.content_type == "application/problem+json"
    assert refused.get_json()["type"] == "/problems/rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 61 and int(refused.headers["RateLimit-Reset"]) <= 61
    # Nothing was written by the refused request; reads are another class; other keys their own budget.
    assert client.get("/v1/transactions/t2").status_code == 404
    assert client.get("/v1/members/m1").status_code == 200
    assert other.post("/v1/transactions", json=txn("t9")).status_code == 201


def test_a_keys_own_limit_overrides_the_default_and_unlimited_lifts_it(runtime):
    app = limited_app(runtime, reads="1/minute")
    client = ContractClient(app.test_client(), make_key(runtime))
    assert [client.get("/v1/members/m1").status_code for _ in range(2)] == [404, 429]
    made = client.post("/v1/api-keys", json={"name": "bulk", "scopes": ["read"], "rate_limits": {"reads": "unlimited"}})
    bulk = made.get_json()["key"]
    assert {client.get("/v1/members/m1", key=bulk).status_code for _ in range(5)} == {404}
    assert "RateLimit-Limit" not in client.get("/v1/members/m1", key=bulk).headers


def test_without_limits_configured_nothing_is_limited(client):
    answers = [client.get("/v1/members/m1") for _ in range(30)]
    assert {a.status_code for a in answers} == {404}
    assert all("RateLimit-Limit" not in a.headers for a in answers)


COUNT_IN_ANOTHER_PROCESS = """
import sys
from loyalty.app import create_app
from loyalty.config import Settings
from loyalty.runtime import make_runtime
url, redis, key = sys.argv[1:4]
app = create_app(make_runtime(Settings(database_url=url, rate_limits={"reads": "4/minute"}, redis_url=redis,
                                       api_key_cache_seconds=0)))
c = app.test_client()
print(",".join(str(c.get("/v1/members/m1", headers={"Authorization": "Bearer " + key}).status_code) for _ in range(2)))
"""


@pytest.mark.committed
def test_with_redis_the_limit_holds_across_processes(runtime, database_url):
    """Two processes (as two gunicorn workers or two nodes) share one key's budget through Redis."""
    prefix_key = make_key(runtime, "read")
    redis = REDIS_URL
    import redis as redis_client

    redis_client.Redis.from_url(redis).ping()  # fails the test, saying why, when Redis is not running
    answers = []
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", COUNT_IN_ANOTHER_PROCESS, database_url, redis, prefix_key],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        answers += done.stdout.strip().splitlines()[-1].split(",")
    assert answers == ["404", "404", "404", "404", "429", "429"], answers


def test_a_key_cannot_rotate_or_revoke_itself(client, api_key):
    own = key_id(api_key)
    for path, body in ((f"/v1/api-keys/{own}/rotate", {"overlap_seconds": 0}), (f"/v1/api-keys/{own}/revoke", None)):
        r = client.post(path, json=body)
        assert r.status_code == 422 and r.get_json()["field"] == "key_id"
    assert client.get("/v1/api-keys").status_code == 200


@pytest.mark.committed
def test_the_cli_creates_lists_rotates_and_revokes_keys(database_url, runtime):
    from tests.test_cli import loyalty

    made = loyalty(
        database_url,
        "api-keys",
        "create",
        "--name",
        "branch",
        "--scopes",
        "read",
        "--expires-at",
        "2099-01-01",
        "--rate-limits",
        "reads=5/second",
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    listed = loyalty(database_url, "api-keys", "list").stdout
    assert f"{key_id(key)}  branch  active  read  expires=2099-01-01T00:00:00Z" in listed
    assert "limits=reads=5/second" in listed and key not in listed
    rotated = loyalty(database_url, "api-keys", "rotate", key_id(key), "--overlap", "60")
    assert rotated.returncode == 0, rotated.stderr
    new = rotated.stdout.strip().splitlines()[-1]
    cache = KeyCache(runtime.engine, ttl=0)
    assert cache.authenticate(key) is not None and cache.authenticate(new) is not None
    assert loyalty(database_url, "api-keys", "revoke", key_id(key)).returncode == 0
    assert cache.authenticate(key) is None and cache.authenticate(new) is None
    assert "revoked" in loyalty(database_url, "api-keys", "list").stdout
    bad = loyalty(database_url, "api-keys", "create", "--name", "x", "--scopes", "read", "--rate-limits", "reads=fast")
    assert bad.returncode == 2 and "--rate-limits" in bad.stderr
    assert loyalty(database_url, "api-keys", "revoke", "nope").returncode == 1

"""Hostile requests against every endpoint that takes a body or writes, on both backends.

Each endpoint gets a corpus: bodies nested thousands deep, strings UTF-8 cannot encode (lone
UTF-16 surrogates, in values and in keys), NUL characters, oversized strings and bodies, values
of the wrong type, numbers outside 64 bits and beyond a float, injection strings, bad
``Idempotency-Key`` headers and odd path parameters. Every answer must be a 4xx problem+json
that ``openapi.yaml`` declares, naming the field where there is one, never a 5xx; afterwards
every row of every table is as it was and ``loyalty verify`` is clean.

The last tests start the real gunicorn, as ``make run`` does, and send it request lines and
headers past its limits over a socket.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import sqlalchemy as sa

from loyalty.config import Settings
from loyalty.db import metadata, transaction
from loyalty.fulfilment import protocol
from loyalty.ledger import verify
from loyalty.validation import MAX_DEPTH, check_storable, nesting_depth
from rules import default_document
from tests import contract
from tests.conftest import START
from tests.helpers import enrol, txn

ROOT = Path(__file__).resolve().parent.parent
#: Put where a hostile token goes, then replaced in the JSON text, so that tokens json.dumps
#: never writes (``NaN``, ``1e400``, a 5,000-digit integer) can be sent.
HOLE = "\u2063hole\u2063"


@dataclass(frozen=True)
class Case:
    """One hostile request: its body as sent, and the field its answer must name."""

    name: str
    body: bytes
    #: the field the answer must name (any of them, for a tuple); None: any or none
    field: str | tuple[str, ...] | None
    statuses: tuple[int, ...] = (400, 422)
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def dumps(body: Any) -> str:
    # ensure_ascii: a lone surrogate goes out as the escape "\ud800", as a client would send it.
    return json.dumps(body, ensure_ascii=True)


def with_token(body: Any, path: tuple[Any, ...], token: str) -> bytes:
    """``body`` with the value at ``path`` replaced by the JSON text ``token``."""
    doc = copy.deepcopy(body)
    node = doc
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = HOLE
    return dumps(doc).replace(dumps(HOLE), token).encode()


def dotted(path: tuple[Any, ...]) -> str:
    """A field's path as the API names it: ``delivery.account_ref``, ``transactions[0].amount``."""
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


def marshmallow(path: tuple[Any, ...]) -> str:
    """How marshmallow names a field: list items dotted too (``event_types.0``)."""
    return ".".join(str(step) for step in path)


INJECTION = "'; DROP TABLE members; --"


def deep(levels: int, leaf: str = "1") -> str:
    return '{"a":' * levels + leaf + "}" * levels


#: (name, JSON token) by the kind of value a field holds; each is wrong for such a field.
STRING_TOKENS = [
    ("lone high surrogate", dumps("\ud800")),
    ("lone low surrogate inside text", dumps("ab\udfffcd")),
    ("NUL", dumps("a\u0000b")),
    ("70,000 characters", dumps("x" * 70_000)),
    ("array", "[]"),
]
INTEGER_TOKENS = [
    ("2^64", str(2**64)),
    ("-2^63 - 1", str(-(2**63) - 1)),
    ("1e400, beyond a float", "1e400"),
    ("NaN", "NaN"),
    ("-Infinity", "-Infinity"),
    ("fraction", "1.5"),
    ("numeric string", '"100"'),
    ("boolean", "true"),
    ("lone surrogate", dumps("\ud800")),
]
OBJECT_TOKENS = [("lone surrogate", dumps("\ud800")), ("array", "[1]"), ("2^64", str(2**64)), ("NaN", "NaN")]
LIST_TOKENS = [
    ("string", '"x"'),
    ("object", "{}"),
    ("list of 2^64", f"[{2**64}]"),
    ("list with a NUL", dumps(["\u0000"])),
    ("list with a lone surrogate", dumps(["\udc00"])),
]
BOOLEAN_TOKENS = [("string", '"true"'), ("integer", "1"), ("NUL", dumps("\u0000"))]


def field_cases(body: dict[str, Any], paths: tuple[tuple[Any, ...], ...], name_of: Callable[..., str]) -> list[Case]:
    """Every wrong token for the kind of value at each of ``paths``."""
    cases = []
    for path in paths:
        value: Any = body
        for step in path:
            value = value[step]
        if isinstance(value, bool):
            tokens = BOOLEAN_TOKENS
        elif isinstance(value, int):
            tokens = INTEGER_TOKENS
        elif isinstance(value, str):
            tokens = STRING_TOKENS
        elif isinstance(value, dict):
            tokens = OBJECT_TOKENS
        else:
            tokens = LIST_TOKENS
        for token_name, token in tokens:
            names: tuple[str, ...] = (dotted(path), name_of(path), marshmallow(path))
            if token_name.startswith("list"):  # the bad item is named: list[0], or list.0
                names = tuple(f"{n}{suffix}" for n in names for suffix in ("[0]", ".0"))
            cases.append(Case(f"{dotted(path)}: {token_name}", with_token(body, path, token), names))
    return cases


def body_cases(body: dict[str, Any]) -> list[Case]:
    """What can be wrong with a body as a whole, whatever the endpoint."""
    first = next(iter(body))
    text = dumps(body).encode()
    return [
        Case("nested 5,000 deep (30 KB)", deep(5000).encode(), "body"),
        Case("arrays 100,000 deep, unclosed", b"[" * 100_000, "body"),
        Case(f"a field nested {MAX_DEPTH} deep", with_token(body, (first,), deep(MAX_DEPTH)), "body"),
        Case("a 5,000-digit number", with_token(body, (first,), "9" * 5000), "body"),
        Case("bytes that are not UTF-8", text[:-1] + b', "x": "\xff\xfe"}', "body"),
        Case("UTF-8 bytes of a surrogate (CESU-8)", text[:-1] + b', "x": "\xed\xa0\x80"}', "body"),
        Case("a lone surrogate for a body", dumps("\ud800").encode(), "body"),
        Case("a lone surrogate in a key", dumps({**body, "\ud800": 1}).encode(), "\\ud800"),
        Case("a NUL in a key", dumps({**body, "a\u0000": 1}).encode(), "a\\u0000"),
        Case("an injection for a key", dumps({**body, INJECTION: 1}).encode(), INJECTION, (422,)),
        Case("3 MB", dumps({**body, "pad": "x" * 3_000_000}).encode(), "body", (413,)),
        Case("a wrong content type", text, "Content-Type", (415,), "text/plain"),
    ]


def key_cases(body: dict[str, Any] | None) -> list[Case]:
    """Bad ``Idempotency-Key`` headers on an otherwise good request."""
    text = dumps(body).encode() if body is not None else b""
    keys = {"NUL": "a\x00b", "escape sequence": "\x1b[2J", "201 characters": "k" * 201}
    return [
        Case(f"Idempotency-Key: {name}", text, "Idempotency-Key", (422,), headers={"Idempotency-Key": key})
        for name, key in keys.items()
    ]


#: Odd values of a path parameter, percent-encoded; none of them names anything that exists.
PATH_VARIANTS = [
    "a%00b",
    "%00",
    "%ED%A0%80",
    "%FF%FE",
    "..%2F..%2Fetc%2Fpasswd",
    "%2E%2E",
    "x" * 5000,
    "%27%3B%20DROP%20TABLE%20members%3B--",
    "%0A",
    "%E2%80%AEm1",
    str(2**64),
]


# --- the world the endpoints act on -----------------------------------------------------------------


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings with the API key cache on, as on a node: the corpus sends thousands of
    requests with one key, and what it tests is not the key lookup."""
    return dataclasses.replace(settings, api_key_cache_seconds=300)


@dataclass
class World:
    """What exists before the corpus is sent: member m1 with points, and what an endpoint needs."""

    client: contract.ContractClient
    partner_secret: str
    subscription: str = ""


def benefit(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "code": "lounge",
        "name": "Airport lounge visit",
        "kind": "experience",
        "fulfilment": "bank",
        "face_value": 20000,
        "unit_cost": 15000,
        "points_price": 100,
        "tier_prices": {"hnw": 80},
        "limits": {"month": 5},
    }
    body.update(over)
    return body


def draft_document(version: str = "2099.1") -> dict[str, Any]:
    return {**default_document(), "version": version}


def make(world: World, needs: frozenset[str]) -> None:
    """Member m1 with points, and what ``needs`` names. Set up through the plain test client: these
    answers are checked against the contract by the tests of their own endpoints."""
    headers = {"Authorization": f"Bearer {world.client.api_key}"}

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = world.client.client.post(path, json=body, headers=headers)
        assert r.status_code == 201, r.get_json()
        return r.get_json()  # type: ignore[no-any-return]

    post("/v1/members", {"member_id": "m1"})
    if "transaction" in needs:
        post("/v1/transactions", txn("t1", "m1"))
    if "benefit" in needs:
        post("/v1/benefits", benefit(status="active"))
    if "redemption" in needs:
        post("/v1/redemptions", {"redemption_id": "r1", "member_id": "m1", "benefit_code": "lounge"})
    if "programme" in needs:
        post("/v1/programmes", {"document": draft_document()})
    if "webhook" in needs:
        view = post("/v1/webhooks", {"url": "https://hooks.example.com/x", "secret": "s" * 32})
        world.subscription = view["subscription_id"]


# --- the endpoints ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    method: str
    #: the path, with ``{}`` for the path parameter
    path: str
    #: the path parameter naming something that exists ("" for the webhook subscription)
    param: str | None = None
    #: a body the endpoint accepts
    body: dict[str, Any] | None = None
    #: the fields whose values are replaced by hostile ones
    fields: tuple[tuple[Any, ...], ...] = ()
    #: what must exist first (besides member m1)
    needs: frozenset[str] = frozenset()
    #: how the answer names a field (the rules engine says ``$.rules[0].reason``)
    names: Callable[..., str] = dotted
    #: honours Idempotency-Key
    keyed: bool = True
    #: signed by a partner, without an API key
    signed: bool = False
    #: answers per item (a batch)
    batch: bool = False

    def url(self, param: str | None) -> str:
        return self.path.format(param)


def top(*names: str) -> tuple[tuple[Any, ...], ...]:
    return tuple((n,) for n in names)


def rule_path(path: tuple[Any, ...]) -> str:
    """How the rules engine names a field of a ``document``."""
    return "$." + dotted(path[1:]) if len(path) > 1 else "$"


def needs(*names: str) -> frozenset[str]:
    return frozenset(names)


PROFILE = {
    "aum": 125_000_000,
    "profit_contribution": -350_000,
    "products_held": ["deposit", "wealth"],
    "birth_date": "1985-03-09",
    "occupation": "teacher",
    "region": "310000",
    "preferred_channel": "app",
    "risk_profile": "growth",
    "as_of": "2026-06-01",
}
TRANSACTION = txn("t9", "m1", channel="app", mcc="5411", merchant="Yonghui")
DOCUMENT = (
    ("document",),
    ("document", "version"),
    ("document", "expiry", "months"),
    ("document", "caps", "per_day"),
    ("document", "rules"),
    ("document", "rules", 0, "reason"),
    ("document", "rules", 0, "priority"),
    ("document", "rules", 0, "action", "points"),
    ("document", "rules", 0, "conditions", "all"),
)
SIMULATION = {
    "member_id": "m1",
    "event": "transaction",
    "transaction": {"type": "card_purchase", "amount": 10_000, "merchant": "Yonghui"},
    "context": {},
}
REDEMPTION = {
    "redemption_id": "r2",
    "member_id": "m1",
    "benefit_code": "lounge",
    "quantity": 1,
    "delivery": {"account_ref": "booking-7"},
}
OVERRIDE = {"tier": "hnw", "until": "2026-12-31T00:00:00+08:00", "reason": "relationship manager's request"}
WEBHOOK = {"url": "https://hooks.example.com/y", "event_types": ["points.accrued"], "secret": "t" * 32}
BACKTEST = {"version": "2099.1", "from": "2026-01-01T00:00:00+08:00", "to": "2026-06-01T00:00:00+08:00", "top": 5}
CALLBACK = {"order_id": "r1", "status": "succeeded", "reference": "TEL-1", "reason": "delivered"}

ENDPOINTS = {
    "enrol": Endpoint(
        "POST", "/v1/members", body={"member_id": "m2", "birth_date": "1990-01-31", "channel": "app"},
        fields=top("member_id", "birth_date", "channel"),
    ),
    "profile": Endpoint("PUT", "/v1/members/{}/profile", "m1", PROFILE, top(*PROFILE)),
    "tier override": Endpoint("PUT", "/v1/members/{}/tier-override", "m1", OVERRIDE, top(*OVERRIDE)),
    "end tier override": Endpoint("DELETE", "/v1/members/{}/tier-override", "m1", keyed=False),
    "tier override request": Endpoint("POST", "/v1/members/{}/tier-override-requests", "m1", OVERRIDE, top(*OVERRIDE)),
    "transaction": Endpoint("POST", "/v1/transactions", body=TRANSACTION, fields=top(*TRANSACTION)),
    "batch": Endpoint(
        "POST", "/v1/transactions/batch", body={"transactions": [TRANSACTION]},
        fields=top("transactions") + tuple(("transactions", 0, k) for k in TRANSACTION), batch=True,
    ),
    "reversal": Endpoint(
        "POST", "/v1/transactions/{}/reversals", "t1", {"reversal_id": "v1", "amount": 100},
        top("reversal_id", "amount"), needs("transaction"),
    ),
    "redemption": Endpoint(
        "POST", "/v1/redemptions", body=REDEMPTION,
        fields=top(*REDEMPTION) + (("delivery", "account_ref"),), needs=needs("benefit"),
    ),
    "cancel": Endpoint("POST", "/v1/redemptions/{}/cancel", "r1", needs=needs("benefit", "redemption")),
    "create benefit": Endpoint(
        "POST", "/v1/benefits", body=benefit(code="gym"),
        fields=top(*benefit()) + (("tier_prices", "hnw"), ("limits", "month")),
    ),
    "replace benefit": Endpoint(
        "PUT", "/v1/benefits/{}", "lounge", benefit(), top(*benefit()) + (("tier_prices", "hnw"),), needs("benefit"),
    ),
    "benefit status": Endpoint(
        "POST", "/v1/benefits/{}/status", "lounge", {"status": "paused"}, top("status"), needs("benefit"),
    ),
    "webhook": Endpoint(
        "POST", "/v1/webhooks", body=WEBHOOK, fields=top(*WEBHOOK) + (("event_types", 0),),
    ),
    "end webhook": Endpoint("DELETE", "/v1/webhooks/{}", "", needs=needs("webhook"), keyed=False),
    "redeliver": Endpoint("POST", "/v1/webhooks/{}/deliveries/1/redeliver", "", needs=needs("webhook")),
    "draft programme": Endpoint(
        "POST", "/v1/programmes", body={"document": draft_document("2099.2")}, fields=DOCUMENT, names=rule_path,
    ),
    "replace programme": Endpoint(
        "PUT", "/v1/programmes/{}", "2099.1", {"document": draft_document()}, DOCUMENT, needs("programme"),
        names=rule_path, keyed=False,
    ),
    "publish": Endpoint(
        "POST", "/v1/programmes/{}/publish", "2099.1", {"effective_from": "2099-01-01T00:00:00+08:00"},
        top("effective_from"), needs("programme"),
    ),
    "validate rules": Endpoint(
        "POST", "/v1/rules/validate", body={"document": draft_document()}, fields=DOCUMENT, names=rule_path,
        keyed=False,
    ),
    "simulate": Endpoint(
        "POST", "/v1/rules/simulate", body=SIMULATION,
        fields=top(*SIMULATION) + (("transaction", "amount"), ("transaction", "merchant"), ("transaction", "type")),
        keyed=False,
    ),
    "backtest": Endpoint(
        "POST", "/v1/rules/backtest", body=BACKTEST, fields=top(*BACKTEST), needs=needs("programme"), keyed=False,
    ),
    "partner callback": Endpoint(
        "POST", "/v1/partners/{}/callbacks", "telecom", CALLBACK, top(*CALLBACK), keyed=False, signed=True,
    ),
}


# --- sending and checking ---------------------------------------------------------------------------


@lru_cache(maxsize=1)
def problem_validator() -> jsonschema.Draft202012Validator:
    schema = {"$ref": "#/components/schemas/Problem", "components": contract.spec()["components"]}
    return jsonschema.Draft202012Validator(schema)


def check_contract(method: str, url: str, response: Any) -> None:
    """What :func:`tests.contract.check_response` checks, with the problem schema's validator made
    once (the corpus is thousands of requests): the status is declared, the body is a Problem."""
    path = url.split("?")[0]
    if response.content_type != "application/problem+json":
        contract.check_response(method, path, response.status_code, response.content_type or "", response.get_data())
        return
    responses = contract.operation(method, path)["responses"]
    status = str(response.status_code)
    assert status in responses or f"{status[0]}XX" in responses or "default" in responses, (
        f"{method} {path} answered {status}, which openapi.yaml does not declare"
    )
    problem_validator().validate(json.loads(response.get_data()))


def send(world: World, endpoint: Endpoint, url: str, case: Case | None) -> Any:
    data = case.body if case else b""
    headers = dict(case.headers) if case else {}
    if endpoint.signed:
        headers.update(protocol.signed_headers(world.partner_secret, data, START.timestamp(), partner=True))
    else:
        headers["Authorization"] = f"Bearer {world.client.api_key}"
    kwargs: dict[str, Any] = {"method": endpoint.method, "headers": headers}
    if case is not None:
        kwargs.update(data=data, content_type=case.content_type)
    response = world.client.client.open(url, **kwargs)
    check_contract(endpoint.method, url, response)
    return response


def faults_of(
    response: Any, case_name: str, statuses: tuple[int, ...], wanted: str | tuple[str, ...] | None
) -> list[str]:
    """What is wrong with the answer to a hostile request; nothing, an empty list."""
    status = response.status_code
    if status >= 500:
        return [f"{case_name}: {status} {response.get_data(as_text=True)[:200]}"]
    if not 400 <= status < 500:
        return [f"{case_name}: accepted with {status}"]
    if response.content_type != "application/problem+json":
        return [f"{case_name}: {status} as {response.content_type}"]
    problem = response.get_json()
    faults = []
    if statuses and status not in statuses:
        faults.append(f"{case_name}: {status}, wanted one of {statuses} ({problem['detail'][:200]})")
    names = (wanted,) if isinstance(wanted, str) else wanted
    if names is not None and problem.get("field") not in names:
        faults.append(f"{case_name}: names {problem.get('field')!r}, wanted {names!r} ({problem['detail'][:200]})")
    return faults


def within_item(name: str) -> str:
    """``transactions[0].amount`` as the item's own problem names it: ``amount``; the item itself: ``body``."""
    inner = re.sub(r"^transactions(\[0\]|\.0)\.?", "", name)
    return inner or "body"


def batch_faults(response: Any, case: Case) -> list[str]:
    """A batch refuses a bad body whole, or answers 200 with its one item refused, naming the field."""
    if response.status_code != 200:
        return faults_of(response, case.name, case.statuses, case.field)
    item = response.get_json()["results"][0]
    if not 400 <= item["status"] < 500:
        return [f"{case.name}: item answered {item['status']}"]
    names = (case.field,) if isinstance(case.field, str) else case.field
    if names is not None:
        # an item's problem names its fields within the item, as POST /v1/transactions would alone
        names = tuple(within_item(name) for name in names)
    if names is not None and item["problem"].get("field") not in names:
        return [f"{case.name}: item names {item['problem'].get('field')!r}, wanted {names!r}"]
    return []


def dump_tables(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a stable order: what "nothing written" is checked against."""
    with engine.connect() as conn:
        return {
            table.name: sorted((tuple(row) for row in conn.execute(sa.select(table))), key=repr)
            for table in metadata.sorted_tables
        }


def assert_verified(engine: sa.Engine) -> None:
    with transaction(engine, readonly=True) as conn:
        broken = [o for o in verify.run(conn) if not o.ok]
    assert not broken, verify.report(broken)


@pytest.mark.parametrize("name", list(ENDPOINTS))
def test_hostile_requests_get_a_problem_naming_the_field_and_write_nothing(client, runtime, engine, name):
    endpoint = ENDPOINTS[name]
    world = World(client, runtime.settings.partner_secret_for("telecom"))
    make(world, endpoint.needs)
    param = world.subscription if endpoint.param == "" else endpoint.param
    cases: list[Case] = []
    if endpoint.body is not None:
        cases += body_cases(endpoint.body) + field_cases(endpoint.body, endpoint.fields, endpoint.names)
    if endpoint.keyed:
        cases += key_cases(endpoint.body)
    before = dump_tables(engine)

    faults: list[str] = []
    for case in cases:
        response = send(world, endpoint, endpoint.url(param), case)
        if endpoint.batch:
            faults += batch_faults(response, case)
        else:
            faults += faults_of(response, case.name, case.statuses, case.field)
    if endpoint.param is not None:
        good = Case("good body", dumps(endpoint.body).encode(), None) if endpoint.body is not None else None
        for variant in PATH_VARIANTS:
            response = send(world, endpoint, endpoint.url(variant), good)
            faults += faults_of(response, f"path {variant[:40]}", (), None)

    assert not faults, "\n".join(faults)
    assert dump_tables(engine) == before
    assert_verified(engine)


CODE_FILES = [
    ("a NUL in a code", b"AAAA-1111\x00\n", (422,), "line 1"),
    ("bytes that are not UTF-8", b"AAAA-\xff\xfe\n", (400,), "body"),
    ("UTF-8 bytes of a surrogate (CESU-8)", b"AAAA-\xed\xa0\x80\n", (400,), "body"),
    ("a code of 100,000 characters", b"x" * 100_000 + b"\n", (422,), "line 1"),
    ("an unclosed quote", b'"AAAA-1111\nBBBB-2222\n', (422,), None),
    ("a header and nothing else", b"code\n", (422,), "body"),
    ("3 MB", b"AAAA-1111\n" * 300_000, (413,), "body"),
]


def test_hostile_code_files_are_refused_naming_the_line_and_write_nothing(client, engine):
    pool = benefit(code="market", kind="voucher", fulfilment="pool", status="active", points_price=100)
    assert client.post("/v1/benefits", json=pool).status_code == 201
    world = World(client, "")
    endpoint = Endpoint("POST", "/v1/benefits/{}/codes")
    before = dump_tables(engine)
    faults: list[str] = []
    for name, text, statuses, wanted in CODE_FILES:
        response = send(world, endpoint, endpoint.url("market"), Case(name, text, wanted, content_type="text/csv"))
        faults += faults_of(response, name, statuses, wanted)
    response = send(world, endpoint, endpoint.url("market"), Case("JSON", b'{"codes": []}', None))
    faults += faults_of(response, "JSON", (415,), "Content-Type")
    good = Case("good", b"AAAA-1111\n", None, content_type="text/csv")
    for variant in PATH_VARIANTS:
        response = send(world, endpoint, endpoint.url(variant), good)
        faults += faults_of(response, f"path {variant[:40]}", (), None)
    assert not faults, "\n".join(faults)
    assert dump_tables(engine) == before


# --- the cases of the issue, one by one ----------------------------------------------------------------


def test_a_body_nested_thousands_deep_is_a_400_naming_the_body(client, engine):
    enrol(client)
    body = deep(5000).encode()
    assert 29_000 < len(body) < 31_000
    r = client.post("/v1/transactions", data=body, content_type="application/json")
    assert r.status_code == 400
    assert r.content_type == "application/problem+json"
    assert r.get_json()["type"] == "/problems/malformed_request"
    assert r.get_json()["field"] == "body"
    assert f"more than {MAX_DEPTH} deep" in r.get_json()["detail"]


def test_nesting_up_to_the_limit_is_parsed_and_one_level_more_is_refused(client):
    enrol(client)
    # The body is one level; the merchant's value brings it to exactly MAX_DEPTH.
    at_limit = with_token(txn(), ("merchant",), deep(MAX_DEPTH - 1))
    r = client.post("/v1/transactions", data=at_limit, content_type="application/json")
    assert r.status_code == 422  # parsed, and refused by the field's own check
    assert r.get_json()["field"] == "merchant"
    beyond = with_token(txn(), ("merchant",), deep(MAX_DEPTH))
    r = client.post("/v1/transactions", data=beyond, content_type="application/json")
    assert r.status_code == 400
    assert r.get_json()["field"] == "body"


def test_the_deepest_legitimate_request_is_well_inside_the_limit():
    """A programme document is the deepest body the API takes; MAX_DEPTH leaves it room for
    condition groups nested ten deep."""
    body = dumps({"document": default_document()}).encode()
    assert nesting_depth(body) + 2 * 10 <= MAX_DEPTH


@pytest.mark.parametrize("merchant", ["\ud800", "\udfff", "Yong\udbffhui", "\udc00\ud800"])
def test_a_lone_surrogate_in_a_field_is_a_422_naming_it_and_writes_nothing(client, engine, merchant):
    enrol(client)
    before = dump_tables(engine)
    r = client.post("/v1/transactions", data=dumps(txn(merchant=merchant)), content_type="application/json")
    assert r.status_code == 422
    assert r.content_type == "application/problem+json"
    problem = r.get_json()
    assert problem["field"] == "merchant"
    assert "surrogate" in problem["detail"]
    assert dump_tables(engine) == before


def test_a_surrogate_pair_is_a_character_and_is_stored(client, engine):
    enrol(client)
    body = dumps(txn(merchant="Yonghui \U0001f6d2"))
    assert "\\ud83d\\uded2" in body  # sent as the escaped pair
    assert client.post("/v1/transactions", data=body, content_type="application/json").status_code == 201
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT merchant FROM transactions WHERE transaction_id = 't1'")).scalar_one()
    assert stored == "Yonghui \U0001f6d2"


def test_a_lone_surrogate_in_a_key_is_named_with_an_escape(client):
    r = client.post("/v1/members", data=dumps({"member_id": "m1", "na\ud800me": 1}), content_type="application/json")
    assert r.status_code == 422
    problem = r.get_json()
    assert problem["field"] == "na\\ud800me"
    message = "the field's name holds a lone UTF-16 surrogate (\\ud800), which is not a character"
    assert problem["errors"] == [{"field": "na\\ud800me", "messages": [message]}]


def test_a_surrogate_in_a_batch_item_refuses_that_item_alone_naming_its_field(client, engine):
    """As any other fault of an item: the others are booked, the item gets its own 422 naming the
    field within it, and nothing of it is written."""
    enrol(client)
    body = {"transactions": [txn("t1"), txn("t2", merchant="\ud800"), txn("t3")]}
    r = client.post("/v1/transactions/batch", data=dumps(body), content_type="application/json")
    assert r.status_code == 200
    results = r.get_json()["results"]
    assert [x["status"] for x in results] == [201, 422, 201]
    assert results[1]["problem"]["field"] == "merchant"
    assert [e["field"] for e in results[1]["problem"]["errors"]] == ["merchant"]
    assert client.get("/v1/transactions/t2").status_code == 404
    assert client.get("/v1/transactions/t3").status_code == 200


def test_a_surrogate_beside_the_items_refuses_the_batch(client, engine):
    enrol(client)
    before = dump_tables(engine)
    body = {"transactions": [txn("t1")], "\ud800": 1}
    r = client.post("/v1/transactions/batch", data=dumps(body), content_type="application/json")
    assert r.status_code == 422
    assert r.get_json()["field"] == "\\ud800"
    assert dump_tables(engine) == before


@pytest.mark.parametrize(
    ("many", "second"),
    [({f"k{i}": "\ud800" for i in range(50)}, "k0"), ({f"k{i}\udfff": 1 for i in range(50)}, "k0\\udfff")],
    ids=["in values", "in keys"],
)
def test_every_unstorable_place_is_listed_in_order_up_to_a_bound(client, many, second):
    body = {"member_id": "m1", "channel": "a\u0000", **many}
    r = client.post("/v1/members", data=dumps(body), content_type="application/json")
    assert r.status_code == 422
    fields = [e["field"] for e in r.get_json()["errors"]]
    assert fields[:2] == ["channel", second]
    assert len(fields) == 20


def test_a_nul_in_a_path_or_query_parameter_is_named_not_a_500(client):
    enrol(client)
    r = client.get("/v1/members/m1%00")
    assert r.status_code == 404
    assert r.get_json()["field"] == "member_id"
    for query, name in [
        ("/v1/audit?object_id=a%00b", "object_id"),
        ("/v1/events?after=%00", "after"),
        ("/v1/members/m1/entries?cursor=1%00", "cursor"),
        ("/v1/jobs/runs?job=%00", "job"),
    ]:
        r = client.get(query)
        assert r.status_code == 422, query
        assert r.get_json()["field"] == name


# --- the checks themselves ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b"1", 0),
        (b"{}", 1),
        (b'{"a": [1, {"b": []}]}', 4),
        (b'{"a": "[[[[{{{{"}', 1),  # brackets in a string are text
        (b'{"a": "\\"[[[["}', 1),  # so are they after an escaped quote
        (b'["\\\\", [[]]]', 3),  # an escaped backslash ends before the quote
        (b'[[ "unterminated [[[[', 2),  # an open string runs to the end
        (b"]]]]", 0),
    ],
)
def test_nesting_depth_reads_strings_as_text(text, depth):
    assert nesting_depth(text) == depth


def test_nesting_depth_is_linear_on_a_pathological_body():
    # Every escaped quote could start a string to a regular expression that backtracks.
    body = b'"' + b'\\"' * 500_000 + b"\\"
    assert nesting_depth(body + b"[") == 0
    assert nesting_depth(b"[" * 1_000_000) == 1_000_000


@pytest.mark.parametrize(
    ("data", "errors"),
    [
        ({"a": ["ok", {"b": "x\u0000"}]}, {"a[1].b": ["holds a NUL character (\\u0000), which cannot be stored"]}),
        ({"a": float("inf")}, {"a": ["is not a finite number"]}),
        ({"a": float("nan")}, {"a": ["is not a finite number"]}),
        ("\ud83d", {"body": ["holds a lone UTF-16 surrogate (\\ud83d), which is not a character"]}),
    ],
)
def test_check_storable_names_each_place(data, errors):
    from loyalty.errors import ValidationError

    with pytest.raises(ValidationError) as caught:
        check_storable(data)
    assert caught.value.errors == errors


def test_check_storable_lets_good_text_and_numbers_through():
    check_storable({"a": ["积分", "\U0001f6d2", 2**64, -1.5, None, True], "\u00e9": {}})


def test_an_answer_echoing_a_surrogate_is_still_json(app):
    """Should a lone surrogate ever reach an error's text, the answer escapes it instead of failing."""
    from loyalty.api.base import problem
    from loyalty.errors import LoyaltyError

    with app.test_request_context():
        r = problem(LoyaltyError("no member '\ud800'", field="member_id"))
    assert json.loads(r.get_data())["detail"] == "no member '\ud800'"


# --- the server's own limits, over a real socket ------------------------------------------------------


@dataclass
class Gunicorn:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def request(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send ``raw`` and read the whole answer (gunicorn closes after an error)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(raw)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                if length and len(body) >= int(length.group(1)):
                    break
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.fixture(scope="module")
def gunicorn(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Gunicorn]:
    """gunicorn as ``make run`` starts it (its configuration, wsgi:app, the embedded SQLite),
    with one worker on a free loopback port."""
    home = tmp_path_factory.mktemp("gunicorn")
    db = home / "loyalty.db"
    db.write_bytes(sqlite_template.read_bytes())
    log = home / "gunicorn.log"
    env = {**os.environ, "LOYALTY_DATABASE_URL": f"sqlite:///{db}"}
    command = [str(Path(sys.executable).with_name("gunicorn")), "--config", "gunicorn.conf.py"]
    command += ["--bind", "127.0.0.1:0", "--workers", "1"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        port = listening_port(process, log)
        yield Gunicorn(process, port, log)
    finally:
        process.send_signal(signal.SIGINT)  # quick shutdown: no request is in flight
        process.wait(timeout=30)


def listening_port(process: subprocess.Popen[bytes], log: Path) -> int:
    """The port gunicorn chose, from its "Listening at" line, once its worker is up."""
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", text)
        if found and "Booting worker" in text:
            return int(found.group(1))
        assert process.poll() is None, f"gunicorn exited:\n{text}"
        time.sleep(0.05)
    raise AssertionError(f"gunicorn did not start:\n{log.read_text(errors='replace')}")


def test_a_request_line_past_the_limit_is_a_414_problem(gunicorn):
    target = "/v1/members/m1/entries?cursor=" + "1" * 5000
    status, headers, body = gunicorn.request(f"GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    assert status == 414
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    problem = json.loads(body)
    problem_validator().validate(problem)
    assert problem["type"] == "/problems/request_line_too_long"
    assert problem["status"] == 414
    assert "4094" in problem["detail"]


def test_a_request_line_at_the_limit_reaches_the_api(gunicorn):
    # "GET " + target + " HTTP/1.1" is exactly the limit: the API answers (401, no key), not the server.
    target = "/v1/members/m1/entries?cursor=" + "1" * (4094 - len("GET  HTTP/1.1") - 30)
    line = f"GET {target} HTTP/1.1"
    assert len(line) == 4094
    status, headers, body = gunicorn.request(f"{line}\r\nHost: localhost\r\n\r\n".encode())
    assert status == 401
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["field"] == "Authorization"


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({"X-Big": "x" * 8191}, "8190"),
        ({f"X-Header-{i}": "x" for i in range(60)}, "50"),
    ],
    ids=["a header past 8190 bytes", "more than 50 headers"],
)
def test_headers_past_the_limits_are_a_431_problem(gunicorn, headers, detail):
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    status, answer, body = gunicorn.request(f"GET /health HTTP/1.1\r\nHost: localhost\r\n{lines}\r\n".encode())
    assert status == 431
    assert answer["content-type"] == "application/problem+json"
    problem = json.loads(body)
    problem_validator().validate(problem)
    assert problem["type"] == "/problems/request_headers_too_large"
    assert detail in problem["detail"]


def test_the_server_still_answers_after_refusing(gunicorn):
    assert gunicorn.request(b"GET /" + b"x" * 5000 + b" HTTP/1.1\r\n\r\n")[0] == 414
    status, headers, body = gunicorn.request(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status == 200
    assert json.loads(body) == {"status": "ok"}

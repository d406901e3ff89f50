"""openapi.yaml and the running app describe the same API."""

from __future__ import annotations

import re

from openapi_spec_validator import validate

from tests.contract import spec


def test_openapi_document_is_valid():
    validate(spec())


#: Routes served but left out of the contract, each with its reason.
UNDOCUMENTED = {
    # Prometheus's text format for the operators' scraper, not JSON for API clients: a generated
    # client has no use for it and schemathesis could check nothing of it (tests/schemathesis.toml).
    ("get", "/metrics"),
}


def test_every_route_is_documented_and_every_documented_route_exists(bare_app):
    served = set()
    for rule in bare_app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            served.add((method.lower(), path))
    documented = {
        (m, p) for p, ops in spec()["paths"].items() for m in ops if m in {"get", "post", "put", "delete", "patch"}
    }
    assert served - UNDOCUMENTED == documented


def test_a_response_the_spec_does_not_declare_fails_the_check():
    import pytest

    from tests.contract import check_response

    with pytest.raises(AssertionError, match="does not declare"):
        check_response("GET", "/v1/members/m1", 418, "application/json", b"{}")
    with pytest.raises(AssertionError, match="breaks openapi.yaml"):
        check_response("GET", "/v1/members/m1", 200, "application/json", b'{"member_id": 1}')


def test_the_spec_is_read_by_a_loader_that_refuses_duplicate_keys():
    """PyYAML keeps the last of two equal keys; generators and strict parsers refuse the file."""
    import pytest
    from ruamel.yaml.constructor import DuplicateKeyError

    from tests.contract import load_yaml

    with pytest.raises(DuplicateKeyError, match='duplicate key "Period"'):
        load_yaml("components:\n  schemas:\n    Period: {type: string}\n    Period: {type: string}\n")


def operations() -> list[tuple[str, str, dict]]:
    methods = {"get", "post", "put", "delete", "patch"}
    return [(m, p, op) for p, ops in spec()["paths"].items() for m, op in ops.items() if m in methods]


def parameters(op: dict) -> list[dict]:
    from tests.contract import _resolve

    return [_resolve(p["$ref"]) if "$ref" in p else p for p in op.get("parameters", [])]


def test_every_operation_has_its_own_operation_id():
    """Client generators name their functions after operationId."""
    ids = [op.get("operationId") for _, _, op in operations()]
    assert None not in ids
    assert len(ids) == len(set(ids))


def test_an_operation_that_validates_a_header_or_query_documents_its_422():
    """A bad Idempotency-Key, and a bad or empty query parameter, are 422s: the spec says so."""
    missing = [
        f"{method.upper()} {path}"
        for method, path, op in operations()
        if any(p["in"] == "query" or p["name"] == "Idempotency-Key" for p in parameters(op))
        and "422" not in op["responses"]
    ]
    assert missing == []


def test_the_spec_states_the_servers_own_patterns():
    """Where the server checks a value with a pattern, openapi.yaml carries that very pattern."""
    from loyalty.api import events, jobs, members
    from loyalty.events.models import EVENT_TYPES
    from loyalty.events.service import CURSOR
    from loyalty.jobs import JOBS

    paths = spec()["paths"]
    schemas = spec()["components"]["schemas"]
    assert schemas["WebhookSubscriptionRequest"]["properties"]["url"]["pattern"] == events.WEBHOOK_URL.pattern

    def query(path: str, name: str) -> dict:
        return next(p for p in parameters(paths[path]["get"]) if p["name"] == name)["schema"]

    assert query("/v1/jobs/runs", "job")["enum"] == list(JOBS)
    assert schemas["EventType"]["enum"] == list(EVENT_TYPES)
    one = "(" + "|".join(t.replace(".", "\\.") for t in EVENT_TYPES) + ")"
    assert query("/v1/events", "types")["pattern"] == f"^{one}(,{one})*$"
    assert query("/v1/events", "after")["pattern"] == f"^{CURSOR.pattern}$".replace("(", "").replace(")", "")
    def digits(n: int) -> str:
        return f"^[1-9][0-9]{{0,{n - 1}}}$"

    assert query("/v1/members/{member_id}/entries", "cursor")["pattern"] == digits(members.CURSOR_DIGITS)
    assert query("/v1/jobs/runs", "cursor")["pattern"] == digits(jobs.CURSOR_DIGITS)
    assert query("/v1/webhooks/{subscription_id}/deliveries", "cursor")["pattern"] == digits(events.CURSOR_DIGITS)


def _code_file_texts():
    from hypothesis import strategies as st

    code = st.text(alphabet="AZaz09-_!#~+.:\"', é", min_size=1, max_size=70)
    line = st.one_of(
        st.sampled_from(["", " ", "\t", "code", " code\t", "Code", "ABCD", "A-1B-2C"]),
        st.from_regex(r"[ \t]{0,2}[!#-+\--~]{3,66}[ \t]{0,2}", fullmatch=True),
        code,
    )
    lines = st.lists(line, max_size=6)
    joined = st.builds(
        lambda bom, ls, ends, last: bom + "".join(x + e for x, e in zip(ls, ends, strict=False)) + last,
        st.sampled_from(["", "\ufeff", "\ufeff\ufeff"]),
        lines,
        st.lists(st.sampled_from(["\n", "\r\n", "\r", "\n\n"]), min_size=6, max_size=6),
        st.sampled_from(["", "ABCD", "\r"]),
    )
    return st.one_of(joined, st.text(alphabet="AB, \t\r\n\"code\ufeff", max_size=30))


def test_the_code_file_pattern_and_the_server_accept_the_same_files():
    """openapi.yaml states a voucher code upload as one pattern; the server reads it line by line.
    Both must say yes to the same files, or a fuzzer's valid file is refused (or its invalid one taken)."""
    import re

    from hypothesis import given, settings

    from loyalty.catalogue.codes import parse_codes
    from loyalty.errors import ValidationError

    schema = spec()["paths"]["/v1/benefits/{code}/codes"]["post"]["requestBody"]["content"]["text/csv"]["schema"]
    # JSON Schema reads `$` as the end of the text (Python's also matches before a final newline).
    whole = re.compile(schema["pattern"][:-1] + r"\Z")
    header_only = re.compile(schema["not"]["pattern"][:-1] + r"\Z")

    def server_accepts(text: str) -> bool:
        try:
            parse_codes(text.removeprefix("\ufeff"))  # the body is decoded as utf-8-sig
        except ValidationError:
            return False
        return True

    @settings(max_examples=400, deadline=None)
    @given(_code_file_texts())
    def agree(text: str) -> None:
        spec_accepts = whole.search(text) is not None and header_only.search(text) is None
        assert spec_accepts == server_accepts(text), repr(text)

    agree()
    for accepted in ("ABCD", "code\nABCD", "code\r\ncode\r\n", "\ufeff\n  ABCD-1234  \n\nEFGH\n"):
        assert server_accepts(accepted) and whole.search(accepted), accepted
    for refused in ("", "code", "\n code \n", "AB", "AB,CD", '"ABCD"', "ABCD\rEFGH", "ABCDé"):
        assert not server_accepts(refused), refused

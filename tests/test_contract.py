"""openapi.yaml and the running app describe the same API."""

from __future__ import annotations

import re

from openapi_spec_validator import validate

from tests.contract import spec


def test_openapi_document_is_valid():
    validate(spec())


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
    assert served == documented


def test_a_response_the_spec_does_not_declare_fails_the_check():
    import pytest

    from tests.contract import check_response

    with pytest.raises(AssertionError, match="does not declare"):
        check_response("GET", "/v1/members/m1", 418, "application/json", b"{}")
    with pytest.raises(AssertionError, match="breaks openapi.yaml"):
        check_response("GET", "/v1/members/m1", 200, "application/json", b'{"member_id": 1}')

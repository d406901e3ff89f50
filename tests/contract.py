"""Checks responses against openapi.yaml, so the contract cannot drift from the code."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
from ruamel.yaml import YAML

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"


def load_yaml(text: str) -> Any:
    """YAML 1.2, strictly: a duplicate key is an error, as it is for client generators and
    strict parsers (PyYAML keeps the last one silently)."""
    return YAML(typ="safe", pure=True).load(text)


@lru_cache(maxsize=1)
def spec() -> dict[str, Any]:
    return load_yaml(SPEC_PATH.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


@lru_cache(maxsize=1)
def _routes() -> list[tuple[re.Pattern[str], str]]:
    out = []
    for template in spec()["paths"]:
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        out.append((re.compile(pattern), template))
    return out


def operation(method: str, path: str) -> dict[str, Any]:
    for pattern, template in _routes():
        if pattern.match(path):
            ops = spec()["paths"][template]
            if method.lower() not in ops:
                raise AssertionError(f"openapi.yaml has no {method} for {template}")
            return ops[method.lower()]  # type: ignore[no-any-return]
    raise AssertionError(f"openapi.yaml has no path matching {path}")


def check_response(method: str, path: str, status: int, content_type: str, body: bytes) -> None:
    """Fail unless ``openapi.yaml`` documents this status and the body matches its schema."""
    op = operation(method, path)
    responses = op["responses"]
    declared = responses.get(str(status)) or responses.get(f"{str(status)[0]}XX") or responses.get("default")
    if declared is None:
        raise AssertionError(f"{method} {path} answered {status}, which openapi.yaml does not declare")
    if "$ref" in declared:
        declared = _resolve(declared["$ref"])
    content = declared.get("content")
    if not content:
        return
    mimetype = content_type.split(";")[0].strip()
    if mimetype not in content:
        raise AssertionError(f"{method} {path} {status} answered {mimetype}; openapi.yaml says {list(content)}")
    if not mimetype.endswith("json"):  # a CSV or XLSX report: the media type is the contract
        return
    error = jsonschema.exceptions.best_match(_validator(content[mimetype]["schema"]).iter_errors(json.loads(body)))
    if error is not None:
        raise AssertionError(
            f"{method} {path} {status} body breaks openapi.yaml: {error.message} at {list(error.absolute_path)}"
        )


_validators: dict[int, jsonschema.Draft202012Validator] = {}


def _validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """The validator of one response schema in the spec, checked and built once, not per response
    (what ``jsonschema.validate`` would do each time, checking the schema being the slow part)."""
    validator = _validators.get(id(schema))
    if validator is None:
        whole = {**schema, "components": spec()["components"]}
        jsonschema.Draft202012Validator.check_schema(whole)
        validator = _validators[id(schema)] = jsonschema.Draft202012Validator(whole)
    return validator


def _resolve(ref: str) -> dict[str, Any]:
    node: Any = spec()
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node  # type: ignore[no-any-return]


class ContractClient:
    """Wraps Flask's test client: adds the API key, checks every answer against the spec."""

    def __init__(self, client: Any, api_key: str | None) -> None:
        self.client = client
        self.api_key = api_key

    def open(
        self, method: str, path: str, *, key: Any = "default", headers: dict[str, str] | None = None, **kwargs: Any
    ) -> Any:
        headers = dict(headers or {})
        key = self.api_key if key == "default" else key
        if key is not None:
            headers.setdefault("Authorization", f"Bearer {key}")
        response = self.client.open(path, method=method, headers=headers, **kwargs)
        check_response(
            method, path.split("?")[0], response.status_code, response.content_type or "", response.get_data()
        )
        return response

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.open("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.open("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Any:
        return self.open("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.open("DELETE", path, **kwargs)

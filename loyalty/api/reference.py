"""The API's own reference, served without a key: the contract, ``openapi.yaml``, as it is in the
repository (``GET /openapi.yaml``) and as JSON (``GET /openapi.json``), and a rendered reference at
``GET /docs`` (Swagger UI, vendored in ``static/`` so it works offline).

The service runs from its source tree (``wsgi.py``, ``make run``), where ``openapi.yaml`` is; the
document is read once, when the application is made.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from flask import Flask, Response

from loyalty.errors import NotFound

SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"
STATIC = Path(__file__).resolve().parent / "static"

#: The files /docs loads, and their media types; nothing else is served from ``static/``.
ASSETS = {
    "swagger-ui-bundle.js": (STATIC / "swagger-ui" / "swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui.css": (STATIC / "swagger-ui" / "swagger-ui.css", "text/css"),
    "docs.js": (STATIC / "docs.js", "text/javascript"),
}

#: What /docs may load: its own scripts, styles and the JSON document, from this service alone; the
#: images Swagger UI's stylesheet carries as data: URLs; nothing inline, no frames, no forms.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)


_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser where PyYAML has it


class _Yaml12Loader(_SafeLoader):  # type: ignore[valid-type, misc]
    """PyYAML's safe loader without the YAML 1.1 guesses YAML 1.2 does not make (``2026-12-01`` a date,
    ``yes`` and ``on`` booleans): the JSON document says what the YAML does, as a YAML 1.2 reader (and
    every OpenAPI tool) reads it."""

    yaml_implicit_resolvers = {
        first: [
            (tag, regexp)
            for tag, regexp in resolvers
            if tag != "tag:yaml.org,2002:timestamp" and not (tag == "tag:yaml.org,2002:bool" and first in "yYnNoO")
        ]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


def spec_as_json(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 (a SafeLoader)


@lru_cache(maxsize=1)
def _documents() -> tuple[bytes, bytes]:
    raw = SPEC_PATH.read_bytes()
    as_json = json.dumps(spec_as_json(raw.decode("utf-8")), ensure_ascii=False, indent=1).encode("utf-8")
    return raw, as_json


def _no_store(response: Response) -> Response:
    # The contract changes with the service: a client asks again rather than keeping an old one.
    response.headers["Cache-Control"] = "no-cache"
    return response


def init_app(app: Flask) -> None:
    @app.get("/openapi.yaml")
    def openapi_yaml() -> Response:
        return _no_store(Response(_documents()[0], mimetype="application/yaml"))

    @app.get("/openapi.json")
    def openapi_json() -> Response:
        return _no_store(Response(_documents()[1], mimetype="application/json"))

    @app.get("/docs")
    def docs() -> Response:
        response = Response((STATIC / "docs.html").read_bytes(), mimetype="text/html")
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        return _no_store(response)

    @app.get("/docs/assets/<asset>")
    def docs_asset(asset: str) -> Response:
        if asset not in ASSETS:
            raise NotFound(f"no asset {asset!r}: /docs loads {', '.join(sorted(ASSETS))}", field="asset")
        path, mimetype = ASSETS[asset]
        response = Response(path.read_bytes(), mimetype=mimetype)
        response.headers["X-Content-Type-Options"] = "nosniff"
        # Vendored files change only with a release of the service.
        response.headers["Cache-Control"] = "public, max-age=3600"
        return response

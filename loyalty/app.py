"""The WSGI application: the JSON API under ``/v1``."""

from __future__ import annotations

from flask import Flask

from loyalty import logmask
from loyalty.analytics.advice import Thresholds
from loyalty.api import init_app
from loyalty.runtime import Runtime, make_runtime


def create_app(runtime: Runtime | None = None) -> Flask:
    """The application over ``runtime`` (default: one made from the environment)."""
    logmask.install()
    runtime = runtime or make_runtime()
    Thresholds.from_env()  # a bad LOYALTY_ADVICE_* setting stops the start, naming the variable
    app = Flask("loyalty")
    app.config["MAX_CONTENT_LENGTH"] = runtime.settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.extensions["loyalty"] = runtime
    init_app(app)
    # The secrets a request declared are masked in its log lines, and forgotten after it.
    app.teardown_request(lambda _exc: logmask.forget())
    return app

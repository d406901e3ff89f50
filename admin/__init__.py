"""The admin UI (``/admin``): benefits managers, rules editors, finance, support and operators at
work in a browser.

An entry point like :mod:`loyalty.api`: server-rendered pages over the same domain services (their
validation, versions, audit lines and events); it never writes a table itself. ``loyalty`` never
imports it: :func:`mount` adds it to an application :func:`loyalty.app.create_app` made, and
``wsgi.py`` composes the two.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from flask import Flask

from admin import core

HERE = Path(__file__).resolve().parent


def mount(app: Flask) -> Flask:
    """Serve the admin UI at ``/admin`` from ``app``; returns ``app``."""
    from admin.views import (  # noqa: F401
        adjustments,
        analytics,
        catalogue,
        dashboard,
        finance,
        members,
        operations,
        override_requests,
        programmes,
    )

    settings = app.extensions["loyalty"].settings
    # Sessions are signed with a key of their own, derived from the service's secret key, so the
    # same key on every node keeps a session valid whichever node serves it.
    seed = settings.secret_key or core.process_secret()
    app.secret_key = hmac.new(seed.encode(), b"loyalty admin session", hashlib.sha256).hexdigest()
    core.init_app(app, translations=HERE / "translations")
    app.register_blueprint(core.bp)
    return app

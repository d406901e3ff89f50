"""loyalty: a double-entry loyalty points and benefits engine for retail banks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask
from sqlalchemy.engine import Engine

from loyalty.config import Settings
from loyalty.db import make_engine, utcnow
from loyalty.programmes.service import ProgrammeStore
from rules import Programme


@dataclass
class Runtime:
    """What every entry point needs: settings, the engine, the programmes, the clock."""

    settings: Settings
    engine: Engine
    programmes: ProgrammeStore
    clock: Callable[[], dt.datetime]

    def now(self) -> dt.datetime:
        return self.clock()

    @property
    def programme(self) -> Programme:
        """The programme version in force now."""
        return self.programmes.at(self.now())


def make_runtime(
    settings: Settings | None = None, *, clock: Callable[[], dt.datetime] | None = None, **engine_kwargs: Any
) -> Runtime:
    settings = settings or Settings.from_env()
    engine = make_engine(settings.database_url, **engine_kwargs)
    clock = clock or utcnow
    return Runtime(settings=settings, engine=engine, programmes=ProgrammeStore(engine, clock), clock=clock)


def create_app(runtime: Runtime | None = None) -> Flask:
    """The WSGI application: the JSON API under ``/v1``."""
    from loyalty.api import init_app

    runtime = runtime or make_runtime()
    app = Flask("loyalty")
    app.config["MAX_CONTENT_LENGTH"] = runtime.settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.extensions["loyalty"] = runtime
    init_app(app)
    return app

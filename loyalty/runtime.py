"""What every entry point hands the domain: settings, the engine, the programmes, the clock;
and what a job reports back."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from loyalty.config import Settings
from loyalty.db import make_engine, utcnow
from loyalty.programmes.service import ProgrammeStore
from rules import Programme


@dataclass
class Runtime:
    """Settings, the engine, the published programmes and the one clock every operation reads."""

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


@dataclass
class Outcome:
    """What a job's run did: rows it changed, errors it met and carried on past, a summary.

    A job is a function ``run(runtime, as_of) -> Outcome`` (:mod:`loyalty.jobs`)."""

    rows: int = 0
    errors: int = 0
    detail: str = ""
    #: the run stopped with work left that another run can do now: the scheduler runs the job again
    #: at once instead of at its next scheduled time (a job that works through a backlog in short runs)
    more: bool = False

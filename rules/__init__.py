"""The earning rules engine and the default programme, as data.

Pure Python: no Flask, no database. A programme document is validated by
:func:`load_programme` against the catalogue of variables, operators and
actions (:mod:`rules.catalogue`); :func:`evaluate` turns an event and its
facts into explained awards.
"""

from __future__ import annotations

import json
from importlib import resources

from rules.catalogue import export as export_catalogue
from rules.evaluate import Award, Step, Usage, evaluate, local_facts
from rules.model import Programme, Rule, RuleError, dump_programme, load_programme


def default_document() -> dict:  # type: ignore[type-arg]
    """The programme shipped with the engine, drawn from the bank's description."""
    text = resources.files("rules").joinpath("default_programme.json").read_text("utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


def default_programme() -> Programme:
    return load_programme(default_document())


__all__ = [
    "Award",
    "Programme",
    "Rule",
    "RuleError",
    "Step",
    "Usage",
    "default_document",
    "default_programme",
    "dump_programme",
    "evaluate",
    "export_catalogue",
    "load_programme",
    "local_facts",
]

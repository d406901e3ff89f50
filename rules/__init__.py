"""The earning rules engine and the default programme, as data.

Pure Python: no Flask, no database. The service passes facts in and books
the awards that come out.
"""
from rules.engine import Award, Programme, Rule, RuleError, default_programme, evaluate, load_programme

__all__ = ["Award", "Programme", "Rule", "RuleError", "default_programme", "evaluate", "load_programme"]

"""Benefit-usage analytics: usage, cost, quota, refusals and NPS per period, tier and benefit;
member feedback; and tuning advice with a price in CNY (``docs/analytics.md``).

Every function takes a connection (or the runtime) and returns plain dicts and lists, so the
JSON API, the CLI and the admin UI show the same figures.
"""

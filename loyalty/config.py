"""Settings, read from the environment (``LOYALTY_*``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from loyalty.ledger.service import CLAWBACK_POLICIES

DEFAULT_DATABASE_URL = "sqlite:///var/loyalty.db"
#: Integer webhook settings and the environment variables that set them.
WEBHOOK_SETTINGS = {
    "webhook_max_attempts": "LOYALTY_WEBHOOK_MAX_ATTEMPTS",
    "webhook_timeout_seconds": "LOYALTY_WEBHOOK_TIMEOUT_SECONDS",
    "webhook_backoff_seconds": "LOYALTY_WEBHOOK_BACKOFF_SECONDS",
    "webhook_backoff_max_seconds": "LOYALTY_WEBHOOK_BACKOFF_MAX_SECONDS",
}


@dataclass(frozen=True)
class Settings:
    #: SQLAlchemy URL; ``postgresql://...`` for production
    database_url: str = DEFAULT_DATABASE_URL
    #: what a refund does to points already spent: ``negative`` or ``available``
    clawback_policy: str = "negative"
    #: largest request body accepted, in bytes
    max_body_bytes: int = 2 * 1024 * 1024
    #: seconds an authenticated API key is trusted before it is looked up again
    api_key_cache_seconds: int = 30
    #: what one point costs the bank, in fen, for liability figures
    point_value_fen: Decimal = Decimal("1")
    #: the root of the keys voucher codes are encrypted and digested with (``LOYALTY_SECRET_KEY``);
    #: at least 16 characters. Without it voucher codes can be neither stored nor shown.
    secret_key: str = ""
    #: how often a standby scheduler tries to take the lead, and the leader checks it still holds it
    scheduler_standby_seconds: float = 5.0
    #: jobs run every so many seconds instead of on their declared schedule (``webhooks=1``)
    job_intervals: dict[str, int] = field(default_factory=dict)
    #: a webhook delivery that has failed this many times is dead (dead-letter)
    webhook_max_attempts: int = 8
    #: seconds to wait for a webhook receiver's connection and each read of its answer
    webhook_timeout_seconds: int = 5
    #: the backoff before a webhook retry: a random delay up to base x 2^(failures - 1) ...
    webhook_backoff_seconds: int = 30
    #: ... and never more than this
    webhook_backoff_max_seconds: int = 3600
    #: seconds a partner has to fulfil a redemption before the fulfilment job resolves it
    fulfilment_deadline_seconds: int = 600

    def __post_init__(self) -> None:
        if self.clawback_policy not in CLAWBACK_POLICIES:
            raise ValueError(f"LOYALTY_CLAWBACK_POLICY must be one of {', '.join(CLAWBACK_POLICIES)}")
        if not self.scheduler_standby_seconds > 0:
            raise ValueError("LOYALTY_SCHEDULER_STANDBY_SECONDS must be a positive number of seconds")
        for name, env in WEBHOOK_SETTINGS.items():
            if getattr(self, name) < 1:
                raise ValueError(f"{env} must be a positive integer")
        if self.fulfilment_deadline_seconds < 1:
            raise ValueError("LOYALTY_FULFILMENT_DEADLINE_SECONDS must be a positive integer")
        if self.webhook_backoff_max_seconds < self.webhook_backoff_seconds:
            raise ValueError("LOYALTY_WEBHOOK_BACKOFF_MAX_SECONDS must be at least LOYALTY_WEBHOOK_BACKOFF_SECONDS")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        if "LOYALTY_DATABASE_URL" in env:
            values["database_url"] = env["LOYALTY_DATABASE_URL"]
        if "LOYALTY_CLAWBACK_POLICY" in env:
            values["clawback_policy"] = env["LOYALTY_CLAWBACK_POLICY"]
        if "LOYALTY_MAX_BODY_BYTES" in env:
            values["max_body_bytes"] = int(env["LOYALTY_MAX_BODY_BYTES"])
        if "LOYALTY_POINT_VALUE_FEN" in env:
            values["point_value_fen"] = Decimal(env["LOYALTY_POINT_VALUE_FEN"])
        if "LOYALTY_API_KEY_CACHE_SECONDS" in env:
            values["api_key_cache_seconds"] = int(env["LOYALTY_API_KEY_CACHE_SECONDS"])
        if "LOYALTY_SECRET_KEY" in env:
            values["secret_key"] = env["LOYALTY_SECRET_KEY"]
        if "LOYALTY_SCHEDULER_STANDBY_SECONDS" in env:
            values["scheduler_standby_seconds"] = float(env["LOYALTY_SCHEDULER_STANDBY_SECONDS"])
        if "LOYALTY_JOB_INTERVALS" in env:
            values["job_intervals"] = parse_job_intervals(env["LOYALTY_JOB_INTERVALS"])
        for name, var in WEBHOOK_SETTINGS.items():
            if var in env:
                try:
                    values[name] = int(env[var])
                except ValueError:
                    raise ValueError(f"{var} must be an integer, not {env[var]!r}") from None
        deadline = env.get("LOYALTY_FULFILMENT_DEADLINE_SECONDS")
        if deadline is not None:
            try:
                values["fulfilment_deadline_seconds"] = int(deadline)
            except ValueError:
                raise ValueError(f"LOYALTY_FULFILMENT_DEADLINE_SECONDS must be an integer, not {deadline!r}") from None
        values.update(overrides)
        return cls(**values)


def parse_job_intervals(text: str) -> dict[str, int]:
    """``webhooks=1,lifecycle=3600``: job name to interval in whole seconds (at least 1)."""
    intervals: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, seconds = item.partition("=")
        if not sep or not name.strip() or not seconds.strip().isdigit() or int(seconds) < 1:
            raise ValueError(f"LOYALTY_JOB_INTERVALS: {item!r} is not NAME=SECONDS with SECONDS a whole number from 1")
        intervals[name.strip()] = int(seconds)
    return intervals

"""Settings, read from the environment (``LOYALTY_*``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from loyalty.ledger.service import CLAWBACK_POLICIES

DEFAULT_DATABASE_URL = "sqlite:///var/loyalty.db"


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

    def __post_init__(self) -> None:
        if self.clawback_policy not in CLAWBACK_POLICIES:
            raise ValueError(f"LOYALTY_CLAWBACK_POLICY must be one of {', '.join(CLAWBACK_POLICIES)}")

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
        values.update(overrides)
        return cls(**values)

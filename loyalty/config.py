"""Settings, read from the environment (``LOYALTY_*``)."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from loyalty.ledger.service import CLAWBACK_POLICIES

DEFAULT_DATABASE_URL = "sqlite:///var/loyalty.db"
#: Integer webhook settings and the environment variables that set them.
WEBHOOK_SETTINGS = {
    "webhook_max_attempts": "LOYALTY_WEBHOOK_MAX_ATTEMPTS",
    "webhook_timeout_seconds": "LOYALTY_WEBHOOK_TIMEOUT_SECONDS",
    "webhook_backoff_seconds": "LOYALTY_WEBHOOK_BACKOFF_SECONDS",
    "webhook_backoff_max_seconds": "LOYALTY_WEBHOOK_BACKOFF_MAX_SECONDS",
}
#: Where ``loyalty sandbox-partner`` listens unless told otherwise.
SANDBOX_PARTNER_URL = "http://127.0.0.1:8090"
#: The partners the engine knows unless ``LOYALTY_PARTNERS`` says otherwise: the sandbox's two.
DEFAULT_PARTNERS = {"telecom": f"{SANDBOX_PARTNER_URL}/telecom", "video": f"{SANDBOX_PARTNER_URL}/video"}
#: The key partner requests and callbacks are signed with unless ``LOYALTY_PARTNER_SECRET`` is set.
#: It is published here, so it is for the sandbox partner on a developer's machine only.
DEV_PARTNER_SECRET = "loyalty-sandbox-partner-dev-only"  # noqa: S105  (public by design)
#: Integer fulfilment settings and the environment variables that set them.
PARTNER_SETTINGS = {
    "partner_timeout_seconds": "LOYALTY_PARTNER_TIMEOUT_SECONDS",
    "partner_backoff_seconds": "LOYALTY_PARTNER_BACKOFF_SECONDS",
    "partner_backoff_max_seconds": "LOYALTY_PARTNER_BACKOFF_MAX_SECONDS",
    "partner_max_attempts": "LOYALTY_PARTNER_MAX_ATTEMPTS",
}
PARTNER_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
#: The kinds of partner the engine has an adapter for (:mod:`loyalty.fulfilment.adapters`).
PARTNER_KINDS = ("telecom", "video")
#: Secrets shorter than this are refused.
MIN_SECRET_LENGTH = 16
#: The classes of route a rate limit is set for (docs/operations.md).
ROUTE_CLASSES = ("accrual", "redemption", "reads", "admin")
#: A route class's limit that lifts the service's default for one key.
UNLIMITED = "unlimited"


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
    #: the ``partitions`` job keeps this many months of journal partitions ahead of the current one
    #: (``LOYALTY_PARTITION_MONTHS_AHEAD``)
    partition_months_ahead: int = 3
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
    #: fulfilment partners: name -> base URL of its API. A name starts with its kind (``telecom``,
    #: ``video``, or ``telecom-...``), which chooses the adapter that speaks to it.
    partners: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PARTNERS))
    #: the key requests to partners and partners' callbacks are signed with (the published development
    #: key by default, which is refused for a partner that is not on the loopback interface) ...
    partner_secret: str = DEV_PARTNER_SECRET
    #: ... unless the partner has its own here (``LOYALTY_PARTNER_SECRET_<NAME>``)
    partner_secrets: dict[str, str] = field(default_factory=dict)
    #: seconds to wait for a partner's connection and each read of its answer
    partner_timeout_seconds: int = 5
    #: the wait before asking a partner again about an unconfirmed order: a random delay up to
    #: base x 2^(attempts - 1) ...
    partner_backoff_seconds: int = 5
    #: ... and never more than this
    partner_backoff_max_seconds: int = 300
    #: after this many unconfirmed attempts the job asks only once more, at the redemption's deadline
    partner_max_attempts: int = 10
    #: each API key's rate limit per route class (``accrual=200/second;reads=1000/minute``): none by
    #: default; a key's own limits (``loyalty api-keys create --rate-limits``) take precedence
    rate_limits: dict[str, str] = field(default_factory=dict)
    #: Redis, where rate limit counters are kept so that they hold across workers and nodes
    #: (``redis://127.0.0.1:6379/0``); without it each process counts on its own
    redis_url: str = ""

    def partner_secret_for(self, partner: str) -> str:
        return self.partner_secrets.get(partner, self.partner_secret)

    def __post_init__(self) -> None:
        check_rate_limits(self.rate_limits, "LOYALTY_RATE_LIMITS")
        if self.redis_url and not re.fullmatch(r"(rediss?|unix)://\S+", self.redis_url):
            raise ValueError("LOYALTY_REDIS_URL must be a redis://, rediss:// or unix:// URL")
        if self.clawback_policy not in CLAWBACK_POLICIES:
            raise ValueError(f"LOYALTY_CLAWBACK_POLICY must be one of {', '.join(CLAWBACK_POLICIES)}")
        if not self.scheduler_standby_seconds > 0:
            raise ValueError("LOYALTY_SCHEDULER_STANDBY_SECONDS must be a positive number of seconds")
        for name, env in WEBHOOK_SETTINGS.items():
            if getattr(self, name) < 1:
                raise ValueError(f"{env} must be a positive integer")
        if self.partition_months_ahead < 0:
            raise ValueError("LOYALTY_PARTITION_MONTHS_AHEAD must be a whole number of months")
        if self.fulfilment_deadline_seconds < 1:
            raise ValueError("LOYALTY_FULFILMENT_DEADLINE_SECONDS must be a positive integer")
        if self.webhook_backoff_max_seconds < self.webhook_backoff_seconds:
            raise ValueError("LOYALTY_WEBHOOK_BACKOFF_MAX_SECONDS must be at least LOYALTY_WEBHOOK_BACKOFF_SECONDS")
        for name, env in PARTNER_SETTINGS.items():
            if getattr(self, name) < 1:
                raise ValueError(f"{env} must be a positive integer")
        if self.partner_backoff_max_seconds < self.partner_backoff_seconds:
            raise ValueError("LOYALTY_PARTNER_BACKOFF_MAX_SECONDS must be at least LOYALTY_PARTNER_BACKOFF_SECONDS")
        for partner, url in self.partners.items():
            if not PARTNER_NAME.fullmatch(partner):
                raise ValueError(
                    f"LOYALTY_PARTNERS: {partner!r} is not a partner name (lower-case letters, digits, - and _)"
                )
            if partner_kind(partner) not in PARTNER_KINDS:
                raise ValueError(
                    f"LOYALTY_PARTNERS: {partner!r} starts with no partner kind; kinds: {', '.join(PARTNER_KINDS)}"
                )
            if not re.fullmatch(r"https?://[^\s/@]+(/[^\s?#]*)?", url):
                raise ValueError(f"LOYALTY_PARTNERS: {partner}'s URL {url!r} is not an http(s) URL without credentials")
        for partner, secret in {"": self.partner_secret, **self.partner_secrets}.items():
            if len(secret) < MIN_SECRET_LENGTH:
                var = f"LOYALTY_PARTNER_SECRET_{env_suffix(partner)}" if partner else "LOYALTY_PARTNER_SECRET"
                raise ValueError(f"{var} must be at least {MIN_SECRET_LENGTH} characters")
        for partner, url in self.partners.items():
            # The development key is published: anyone could sign a callback with it. It is
            # tolerated only for a partner on this machine's loopback interface (the sandbox).
            if self.partner_secret_for(partner) == DEV_PARTNER_SECRET and not on_loopback(url):
                raise ValueError(
                    f"LOYALTY_PARTNER_SECRET_{env_suffix(partner)} or LOYALTY_PARTNER_SECRET must be set: "
                    f"partner {partner!r} at {urlsplit(url).hostname} is not on the loopback interface, and "
                    "the default key is published in the source, so anyone could sign its callbacks"
                )

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
        if "LOYALTY_PARTITION_MONTHS_AHEAD" in env:
            ahead = env["LOYALTY_PARTITION_MONTHS_AHEAD"]
            if not ahead.strip().isdigit():
                raise ValueError(f"LOYALTY_PARTITION_MONTHS_AHEAD must be a whole number of months, not {ahead!r}")
            values["partition_months_ahead"] = int(ahead)
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
        for name, var in PARTNER_SETTINGS.items():
            if var in env:
                try:
                    values[name] = int(env[var])
                except ValueError:
                    raise ValueError(f"{var} must be an integer, not {env[var]!r}") from None
        if "LOYALTY_RATE_LIMITS" in env:
            values["rate_limits"] = parse_rate_limits(env["LOYALTY_RATE_LIMITS"], "LOYALTY_RATE_LIMITS")
        if "LOYALTY_REDIS_URL" in env:
            values["redis_url"] = env["LOYALTY_REDIS_URL"]
        if "LOYALTY_PARTNERS" in env:
            values["partners"] = parse_partners(env["LOYALTY_PARTNERS"])
        if "LOYALTY_PARTNER_SECRET" in env:
            values["partner_secret"] = env["LOYALTY_PARTNER_SECRET"]
        partners = values.get("partners", overrides.get("partners", DEFAULT_PARTNERS))
        values["partner_secrets"] = {
            p: env[var] for p in partners if (var := f"LOYALTY_PARTNER_SECRET_{env_suffix(p)}") in env
        }
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


def parse_rate_limits(text: str, where: str) -> dict[str, str]:
    """``accrual=200/second;reads=1000/minute``: route class to a rate limit (``N/second``,
    ``N/minute``, ``N/hour``, ``N/day``, or ``unlimited``). Empty: no limits."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        name, sep, limit = item.partition("=")
        if not sep:
            raise ValueError(f"{where}: {item!r} is not CLASS=LIMIT")
        out[name.strip()] = limit.strip()
    check_rate_limits(out, where)
    return out


def check_rate_limits(limits: dict[str, str], where: str) -> None:
    for name, limit in limits.items():
        if name not in ROUTE_CLASSES:
            raise ValueError(f"{where}: {name!r} is not a route class; classes: {', '.join(ROUTE_CLASSES)}")
        if limit != UNLIMITED and not RATE.fullmatch(limit):
            raise ValueError(
                f"{where}: {name}={limit!r} is not a rate: N/second, N/minute, N/hour, N/day (N from 1) or {UNLIMITED}"
            )


#: A rate limit as the settings write it; Flask-Limiter reads the same text.
RATE = re.compile(r"[1-9][0-9]{0,8}/(second|minute|hour|day)")


def parse_partners(text: str) -> dict[str, str]:
    """``telecom=http://host/telecom,video=http://host/video``: partner name to the base URL of its API
    (a trailing ``/`` is dropped). Empty: no partners."""
    partners: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, url = item.partition("=")
        if not sep or not name.strip() or not url.strip():
            raise ValueError(f"LOYALTY_PARTNERS: {item!r} is not NAME=URL")
        partners[name.strip()] = url.strip().rstrip("/")
    return partners


def partner_kind(name: str) -> str:
    """A partner's kind is its name up to the first ``-``: ``telecom-cmcc`` is a ``telecom`` partner."""
    return name.split("-", 1)[0]


def on_loopback(url: str) -> bool:
    """Whether ``url`` names this machine's loopback interface: ``localhost``, 127.0.0.0/8 or ``[::1]``.
    Any other host, a name that merely resolves to loopback included, is taken to be elsewhere."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def env_suffix(partner: str) -> str:
    """The end of the variable that holds a partner's own secret: ``telecom-cmcc`` -> ``TELECOM_CMCC``."""
    return partner.upper().replace("-", "_")

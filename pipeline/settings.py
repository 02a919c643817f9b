"""Every setting, read from the environment once and checked at start-up."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from .contract import MACHINE_ID_PATTERN
from .errors import ArticleStreamError

DEFAULT_ANTHROPIC_MODEL = "claude-sonnet-5-5"

Provider = Literal["auto", "anthropic", "offline"]


class SettingsError(ArticleStreamError, ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclass(frozen=True)
class Settings:
    """The service's configuration; units are carried in the names."""

    host: str = "0.0.0.0"
    port: int = 8000
    log_level: str = "INFO"

    llm_provider: Provider = "auto"
    anthropic_api_key: str | None = field(default=None, repr=False)
    anthropic_model: str = DEFAULT_ANTHROPIC_MODEL
    anthropic_base_url: str | None = None
    llm_timeout_s: float = 60.0
    llm_max_retries: int = 2
    llm_stream_attempts: int = 3
    offline_llm_delay_ms: int = 300
    #: LLM_PRICE_PER_MTOK: (input, output) dollars per million tokens; None: the built-in table
    llm_price_per_mtok: tuple[float, float] | None = None

    outline_sections: int = 3
    outline_attempts: int = 3
    section_concurrency: int = 4
    section_words: int = 100

    max_running_jobs: int = 100
    max_queued_jobs: int = 1000
    max_stored_jobs: int = 5000
    max_llm_calls: int = 100
    job_ttl_s: float = 3600.0
    job_timeout_s: float = 600.0
    drain_s: float = 7.0

    heartbeat_s: float = 15.0
    send_timeout_s: float = 10.0
    max_streams: int = 10_000
    stream_deltas: bool = True
    delta_interval_ms: int = 50
    #: all jobs' live text together: past this many deltas a second they come further apart
    deltas_per_s: int = 2000
    retry_hint_ms: int = 2000

    redis_url: str | None = field(default=None, repr=False)
    lease_s: float = 15.0
    #: FLY_MACHINE_ID: the Fly machine this process runs on, if it does
    machine_id: str | None = None

    max_body_bytes: int = 16_384
    max_topic_chars: int = 200
    rate_limit_per_minute: int = 0
    rate_limit_burst: int = 20
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    api_tokens: tuple[str, ...] = field(default=(), repr=False)
    cors_origins: tuple[str, ...] = ()

    #: OTEL_EXPORTER_OTLP_ENDPOINT (or its traces-only form): tracing is on only when set
    otel_endpoint: str | None = None
    #: the Standard Webhooks key (`whsec_` + base64); webhooks are refused while it is unset
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_allow_private: bool = False
    webhook_max_attempts: int = 8
    webhook_timeout_s: float = 10.0
    #: the wait before the first retry; each later one doubles it (with jitter), up to 5 minutes
    webhook_backoff_s: float = 2.0

    def __post_init__(self) -> None:
        if self.llm_provider not in ("auto", "anthropic", "offline"):
            raise SettingsError(
                f"LLM_PROVIDER is {self.llm_provider!r}; use auto, anthropic or offline."
            )
        if self.llm_provider == "anthropic" and not self.anthropic_api_key:
            raise SettingsError("LLM_PROVIDER is anthropic but ANTHROPIC_API_KEY is not set.")
        if not 2 <= self.outline_sections <= 8:
            raise SettingsError(f"OUTLINE_SECTIONS is {self.outline_sections}; use 2 to 8.")
        if self.redis_url is not None and not self.redis_url.startswith(("redis://", "rediss://",
                                                                         "unix://")):
            raise SettingsError("REDIS_URL must start with redis://, rediss:// or unix://.")
        if self.machine_id is not None and not re.fullmatch(MACHINE_ID_PATTERN, self.machine_id):
            raise SettingsError(f"FLY_MACHINE_ID is {self.machine_id!r}; use 1 to 40 lowercase "
                                "letters and digits.")
        if self.heartbeat_s <= 0:
            raise SettingsError(f"HEARTBEAT_SECONDS is {self.heartbeat_s:g}; it must be more than 0 "
                                "(a quiet stream needs a keep-alive now and then).")
        if self.lease_s < 1:
            raise SettingsError(f"LEASE_SECONDS is {self.lease_s:g}; it must be at least 1.")
        if self.webhook_secret is not None:
            _check_webhook_secret(self.webhook_secret)
        if self.webhook_timeout_s <= 0:
            raise SettingsError(f"WEBHOOK_TIMEOUT_SECONDS is {self.webhook_timeout_s:g}; it must be "
                                "more than 0.")
        if self.webhook_max_attempts < 1:
            raise SettingsError(f"WEBHOOK_MAX_ATTEMPTS is {self.webhook_max_attempts}; it must be at "
                                "least 1.")
        for name in ("max_running_jobs", "max_stored_jobs", "max_llm_calls", "outline_attempts", "llm_stream_attempts",
                     "section_concurrency", "max_streams", "deltas_per_s", "max_body_bytes", "max_topic_chars"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name.upper()} is {getattr(self, name)}; it must be at least 1.")

    @property
    def placed_ids(self) -> bool:
        """Whether job ids name their machine: on Fly, when no Redis lets any machine serve any
        job, so a request for another machine's job can be sent there (`fly-replay`)."""
        return self.machine_id is not None and self.redis_url is None

    @property
    def provider(self) -> Literal["anthropic", "offline"]:
        """The provider in use once `auto` is resolved."""
        if self.llm_provider == "auto":
            return "anthropic" if self.anthropic_api_key else "offline"
        return self.llm_provider

    @property
    def shutdown_budget_s(self) -> float:
        """How long a stop may take after SIGTERM: the drain, then a margin in which the jobs
        it ended record their end, streams close and webhooks go out (uvicorn's wait too)."""
        return self.drain_s + 2.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Read the settings from `env` (usually `os.environ`); unset means the default."""
        reader = _Reader(env)
        return cls(
            host=reader.text("HOST", cls.host),
            port=reader.integer("PORT", cls.port),
            log_level=reader.text("LOG_LEVEL", cls.log_level).upper(),
            llm_provider=reader.text("LLM_PROVIDER", cls.llm_provider).lower(),  # type: ignore[arg-type]
            anthropic_api_key=reader.optional("ANTHROPIC_API_KEY"),
            anthropic_model=reader.text("ANTHROPIC_MODEL", cls.anthropic_model),
            anthropic_base_url=reader.optional("ANTHROPIC_BASE_URL"),
            llm_timeout_s=reader.number("LLM_TIMEOUT_SECONDS", cls.llm_timeout_s),
            llm_max_retries=reader.integer("LLM_MAX_RETRIES", cls.llm_max_retries),
            llm_stream_attempts=reader.integer("LLM_STREAM_ATTEMPTS", cls.llm_stream_attempts),
            offline_llm_delay_ms=reader.integer("OFFLINE_LLM_DELAY_MS", cls.offline_llm_delay_ms),
            outline_sections=reader.integer("OUTLINE_SECTIONS", cls.outline_sections),
            outline_attempts=reader.integer("OUTLINE_ATTEMPTS", cls.outline_attempts),
            section_concurrency=reader.integer("SECTION_CONCURRENCY", cls.section_concurrency),
            max_running_jobs=reader.integer("MAX_RUNNING_JOBS", cls.max_running_jobs),
            max_queued_jobs=reader.integer("MAX_QUEUED_JOBS", cls.max_queued_jobs),
            max_stored_jobs=reader.integer("MAX_STORED_JOBS", cls.max_stored_jobs),
            max_llm_calls=reader.integer("MAX_LLM_CALLS", cls.max_llm_calls),
            job_ttl_s=reader.number("JOB_TTL_SECONDS", cls.job_ttl_s),
            job_timeout_s=reader.number("JOB_TIMEOUT_SECONDS", cls.job_timeout_s),
            drain_s=reader.number("DRAIN_SECONDS", cls.drain_s),
            heartbeat_s=reader.number("HEARTBEAT_SECONDS", cls.heartbeat_s),
            send_timeout_s=reader.number("SEND_TIMEOUT_SECONDS", cls.send_timeout_s),
            max_streams=reader.integer("MAX_STREAMS", cls.max_streams),
            stream_deltas=reader.flag("STREAM_DELTAS", cls.stream_deltas),
            delta_interval_ms=reader.integer("DELTA_INTERVAL_MS", cls.delta_interval_ms),
            deltas_per_s=reader.integer("DELTAS_PER_SECOND", cls.deltas_per_s),
            redis_url=reader.optional("REDIS_URL"),
            lease_s=reader.number("LEASE_SECONDS", cls.lease_s),
            machine_id=reader.optional("FLY_MACHINE_ID"),
            max_body_bytes=reader.integer("MAX_BODY_BYTES", cls.max_body_bytes),
            max_topic_chars=reader.integer("MAX_TOPIC_CHARS", cls.max_topic_chars),
            rate_limit_per_minute=reader.integer("RATE_LIMIT_PER_MINUTE", cls.rate_limit_per_minute),
            rate_limit_burst=reader.integer("RATE_LIMIT_BURST", cls.rate_limit_burst),
            trusted_proxies=reader.networks("TRUSTED_PROXIES"),
            api_tokens=reader.items("API_TOKENS"),
            cors_origins=reader.items("CORS_ORIGINS"),
            llm_price_per_mtok=reader.price("LLM_PRICE_PER_MTOK"),
            otel_endpoint=None if reader.flag("OTEL_SDK_DISABLED", False) else (
                reader.optional("OTEL_EXPORTER_OTLP_ENDPOINT")
                or reader.optional("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")),
            webhook_secret=reader.optional("WEBHOOK_SECRET"),
            webhook_allow_private=reader.flag("WEBHOOK_ALLOW_PRIVATE", cls.webhook_allow_private),
            webhook_max_attempts=reader.integer("WEBHOOK_MAX_ATTEMPTS", cls.webhook_max_attempts),
            webhook_timeout_s=reader.number("WEBHOOK_TIMEOUT_SECONDS", cls.webhook_timeout_s),
            webhook_backoff_s=reader.number("WEBHOOK_BACKOFF_SECONDS", cls.webhook_backoff_s),
        )


#: Standard Webhooks asks for 24 to 64 random bytes; fewer than 16 is refused
_MIN_SECRET_BYTES = 16


def _check_webhook_secret(secret: str) -> None:
    if not secret.startswith("whsec_"):
        raise SettingsError("WEBHOOK_SECRET must start with whsec_ (a Standard Webhooks key: "
                            "whsec_ and base64 of 24 to 64 random bytes).")
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise SettingsError("WEBHOOK_SECRET is not whsec_ followed by base64.") from None
    if len(key) < _MIN_SECRET_BYTES:
        raise SettingsError(f"WEBHOOK_SECRET holds {len(key)} bytes; use 24 to 64 random bytes "
                            f"(at least {_MIN_SECRET_BYTES}).")


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def optional(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def text(self, name: str, default: str) -> str:
        return self.optional(name) or default

    def integer(self, name: str, default: int) -> int:
        value = self.optional(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise SettingsError(f"{name} is {value!r}; it must be a whole number.") from None
        if number < 0:
            raise SettingsError(f"{name} is {value!r}; it cannot be negative.")
        return number

    def number(self, name: str, default: float) -> float:
        value = self.optional(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise SettingsError(f"{name} is {value!r}; it must be a number.") from None
        if not number >= 0:
            raise SettingsError(f"{name} is {value!r}; it must be zero or more.")
        return number

    def flag(self, name: str, default: bool) -> bool:
        value = self.optional(name)
        if value is None:
            return default
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name} is {value!r}; use 1 or 0.")

    def items(self, name: str) -> tuple[str, ...]:
        return tuple(item.strip() for item in self.env.get(name, "").split(",") if item.strip())

    def price(self, name: str) -> tuple[float, float] | None:
        value = self.optional(name)
        if value is None:
            return None
        parts = [part.strip() for part in value.split(",")]
        try:
            numbers = [float(part) for part in parts]
        except ValueError:
            numbers = []
        if len(numbers) != 2 or not all(0 <= number < float("inf") for number in numbers):
            raise SettingsError(f"{name} is {value!r}; use INPUT,OUTPUT: US dollars per million "
                                "tokens, e.g. 3,15.")
        return numbers[0], numbers[1]

    def networks(self, name: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        try:
            return tuple(ipaddress.ip_network(item, strict=False) for item in self.items(name))
        except ValueError as exc:
            raise SettingsError(f"{name} holds an address that is not an IP or CIDR: {exc}") from None

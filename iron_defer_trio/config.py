"""Settings: one pydantic model with a section per concern.

Durations are seconds as floats; they also accept strings with a unit ("500ms", "5s", "1m",
"2h", "1d"). Unknown keys are rejected with their full path, so a misspelt setting fails at
startup instead of being silently ignored.
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from iron_defer_trio.domain.limits import QUEUE_NAME_PATTERN
from iron_defer_trio.errors import ConfigError

__all__ = [
    "DatabaseSettings",
    "Seconds",
    "Settings",
    "WorkerSettings",
    "mask_dsn",
    "parse_duration",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> Any:
    """Turn "500ms", "5s", "1m", "2h", "1d" or a bare number into seconds.

    Other values are passed through for pydantic to reject with its own message.
    """
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(
                f"invalid duration {value!r}: use a number of seconds or a number with a unit "
                "(ms, s, m, h, d), e.g. '500ms' or '5s'"
            )
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


#: A duration in seconds, accepting unit strings; infinity and NaN are refused.
Seconds = Annotated[float, BeforeValidator(parse_duration), Field(allow_inf_nan=False)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DatabaseSettings(_Section):
    """Where the tasks live and how many connections the engine may use."""

    #: PostgreSQL DSN, e.g. ``postgresql://user:pass@host:5432/db``. Never logged or printed.
    url: SecretStr | None = None
    #: Upper bound of the engine's connection pool (the LISTEN connection comes on top).
    max_connections: int = Field(default=10, ge=2, le=100)
    #: Seconds to wait for a new connection (and for a free pooled one) before reporting the
    #: database as unavailable.
    connect_timeout: Seconds = Field(default=5.0, gt=0)
    #: Upper bound of any single statement the engine runs, in seconds.
    command_timeout: Seconds = Field(default=30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _looks_like_postgres(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            scheme = urlsplit(value.get_secret_value()).scheme
            if scheme not in {"postgres", "postgresql"}:
                # The value itself is not echoed: it may be a key=value DSN with a password.
                raise ValueError(
                    f"must be a postgresql:// URL (got scheme {scheme!r}); "
                    "e.g. postgresql://user:password@host:5432/database"
                )
        return value


class WorkerSettings(_Section):
    """How workers claim, lease, retry and stop. All durations in seconds."""

    #: Longest wait between two claims of an idle queue when no notification arrives.
    poll_interval: Seconds = Field(default=1.0, gt=0, le=3600)
    #: How long a claim is valid without a heartbeat. A crashed worker's tasks run again
    #: elsewhere within about lease_duration + sweeper_interval.
    lease_duration: Seconds = Field(default=20.0, gt=0)
    #: How often a live worker renews the leases of the tasks it runs.
    heartbeat_interval: Seconds = Field(default=5.0, gt=0)
    #: How often the sweeper looks for expired leases.
    sweeper_interval: Seconds = Field(default=5.0, gt=0)
    #: On shutdown, how long running tasks may finish before they are cancelled and handed back.
    shutdown_timeout: Seconds = Field(default=30.0, ge=0)
    #: Retry delay after the first failed attempt (doubles per attempt, +-25 % jitter).
    base_delay: Seconds = Field(default=5.0, ge=0)
    #: Largest retry delay.
    max_delay: Seconds = Field(default=1800.0, ge=0)
    #: Attempts before a task fails for good, unless the task class or enqueue says otherwise.
    max_attempts: int = Field(default=3, ge=1, le=1000)

    @model_validator(mode="after")
    def _consistent(self) -> WorkerSettings:
        problems = []
        if self.heartbeat_interval * 2 > self.lease_duration:
            problems.append(
                f"heartbeat_interval ({self.heartbeat_interval:g} s) must be at most half of "
                f"lease_duration ({self.lease_duration:g} s), or a single late heartbeat "
                "lets a live task's lease expire"
            )
        if self.base_delay > self.max_delay:
            problems.append(
                f"base_delay ({self.base_delay:g} s) must not exceed max_delay "
                f"({self.max_delay:g} s)"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _default_queues() -> dict[str, int]:
    return {"default": 4}


class Settings(_Section):
    """Every setting of an engine. Build it from keyword arguments or a dict."""

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    #: Queues this engine works on, with the most tasks each runs at once.
    queues: dict[str, Annotated[int, Field(ge=1, le=10_000)]] = Field(
        default_factory=_default_queues
    )

    @field_validator("queues")
    @classmethod
    def _valid_queue_names(cls, value: dict[str, int]) -> dict[str, int]:
        for name in value:
            if not QUEUE_NAME_PATTERN.fullmatch(name):
                raise ValueError(
                    f"invalid queue name {name!r}: use 1-128 letters, digits, '_', '.', ':' "
                    "or '-', starting with a letter or digit"
                )
        return value

    @classmethod
    def build(cls, data: dict[str, Any] | None = None, /, **overrides: Any) -> Settings:
        """Validate settings, raising :class:`ConfigError` that names every bad key."""
        merged = _deep_merge(dict(data or {}), overrides)
        try:
            return cls.model_validate(merged)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc)) from None

    def dsn(self) -> str:
        """The database URL in clear (for connecting only; never log it)."""
        if self.database.url is None:
            raise ConfigError("database.url is not set (or set DATABASE_URL)")
        return self.database.url.get_secret_value()


def _deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` on top of ``base``, section by section (a later layer changing one key
    of a section keeps the section's other keys)."""
    merged = dict(base)
    for key, value in overrides.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            merged[key] = _deep_merge(current, value)
        else:
            merged[key] = value
    return merged


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, each starting with the key's dotted path."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        path = ".".join(str(part) for part in error["loc"]) or "(settings)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown setting"
        lines.append(f"{path}: {message}")
    return "invalid settings:\n  " + "\n  ".join(lines)


#: scheme://user:password@ - the password runs to the last '@', so one containing '/', '?'
#: or '#' unencoded is still masked whole (over-masking is the safe direction).
_URL_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/?#@]*):.*@")
_PARAM_PASSWORD = re.compile(r"(?i)\b(password\s*=\s*)('[^']*'|[^&\s]*)")


def mask_dsn(dsn: str) -> str:
    """Return ``dsn`` with its password replaced by ``***``: in the user-info part of a URL,
    and in any ``password=`` parameter (URL query or libpq key=value form). Everything else
    is left exactly as given."""
    masked = _URL_PASSWORD.sub(r"\1:***@", dsn, count=1)
    return _PARAM_PASSWORD.sub(r"\1***", masked)

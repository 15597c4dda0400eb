"""Settings: one pydantic model with a section per concern, and the layers it is read from.

Durations are seconds as floats; they also accept strings with a unit ("500ms", "5s", "1m",
"2h", "1d"). Unknown keys are rejected with their full path, so a misspelt setting fails at
startup instead of being silently ignored.

:func:`load_settings` merges, lowest to highest: defaults < ``config.toml`` <
``config.{IRON_DEFER_PROFILE}.toml`` < environment (``IRON_DEFER__SECTION__KEY``, plus
``DATABASE_URL`` and ``PORT``) < command-line flags. Every rejected value is reported with its
key's full path and the layer it came from.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from iron_defer_trio.domain.limits import QUEUE_NAME_PATTERN, REGION_PATTERN
from iron_defer_trio.domain.periodic import MissedPolicy, validate_cron, zone
from iron_defer_trio.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "DatabaseSettings",
    "LoadedSettings",
    "ObservabilitySettings",
    "PeriodicScheduleSettings",
    "PeriodicSettings",
    "RetentionSettings",
    "Seconds",
    "ServerSettings",
    "Settings",
    "TasksSettings",
    "WorkerSettings",
    "load_settings",
    "mask_dsn",
    "parse_duration",
]

_SSLMODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> Any:
    """Turn "500ms", "5s", "1m", "2h", "1d" or a bare number into seconds.

    Other values are passed through for pydantic to reject with its own message.
    """
    if isinstance(value, bool):
        raise ValueError("a duration, not a boolean (e.g. '5s')")
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(
                f"invalid duration {value!r}: use a number of seconds or a number with a unit "
                "(ms, s, m, h, d), e.g. '500ms' or '5s'"
            )
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


#: Longest duration any setting accepts: far beyond any sensible value, and short enough that
#: "now + duration" always stays a valid timestamp.
MAX_SECONDS = 10 * 365 * 86400.0

#: A duration in seconds, accepting unit strings; infinity, NaN and absurd values are refused.
Seconds = Annotated[
    float, BeforeValidator(parse_duration), Field(allow_inf_nan=False, le=MAX_SECONDS)
]


def _no_bool(value: Any) -> Any:
    # true/false are not numbers here, even though Python (and pydantic's lax mode) says so.
    if isinstance(value, bool):
        raise ValueError("a number, not a boolean")
    return value


#: An integer setting: booleans are refused.
Integer = Annotated[int, BeforeValidator(_no_bool)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DatabaseSettings(_Section):
    """Where the tasks live and how many connections the engine may use."""

    #: PostgreSQL DSN, e.g. ``postgresql://user:pass@host:5432/db``. Never logged or printed.
    url: SecretStr | None = None
    #: Upper bound of the engine's connection pool (the LISTEN connection comes on top).
    max_connections: Integer = Field(default=10, ge=2, le=100)
    #: Seconds to wait for a new connection (and for a free pooled one) before reporting the
    #: database as unavailable.
    connect_timeout: Seconds = Field(default=5.0, gt=0)
    #: Upper bound of each database call the engine makes (one statement, or the few
    #: statements of one unit of work), in seconds; the call is cancelled on the server.
    command_timeout: Seconds = Field(default=30.0, gt=0)
    #: A call that waited this long for a pooled connection logs ``pool_saturated`` (at most
    #: once per 30 s): more concurrent database work than ``max_connections``.
    pool_wait_warning: Seconds = Field(default=1.0, gt=0)
    #: Where ``serve`` keeps its private PostgreSQL when ``url`` is unset. Default: the user's
    #: data directory (``$XDG_DATA_HOME/iron-defer-trio/postgres``), or
    #: ``/var/lib/iron-defer-trio/postgres`` when running as root.
    embedded_dir: str | None = None
    #: Write an append-only audit row for every state change of a task, in the same statement
    #: as the change (``iron_defer.task_audit``; read with ``engine.audit_log``).
    audit_log: bool = False
    #: Keep the tasks table UNLOGGED: faster writes (no WAL), but PostgreSQL empties the table
    #: after a crash or an unclean shutdown, and it is not replicated. Engines configured so
    #: convert the table at start; converting back is ``iron-defer-trio migrate --logged``.
    unlogged_tables: bool = False

    @model_validator(mode="after")
    def _audit_needs_durable_tables(self) -> DatabaseSettings:
        if self.audit_log and self.unlogged_tables:
            raise ValueError(
                "audit_log and unlogged_tables cannot both be on: an UNLOGGED tasks table is "
                "emptied by crash recovery, so the audit trail would describe tasks that no "
                "longer exist; choose durability (audit_log) or speed (unlogged_tables)"
            )
        return self

    @field_validator("url")
    @classmethod
    def _looks_like_postgres(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parts = urlsplit(value.get_secret_value())
            if parts.scheme not in {"postgres", "postgresql"}:
                # The value itself is not echoed: it may be a key=value DSN with a password.
                raise ValueError(
                    f"must be a postgresql:// URL (got scheme {parts.scheme!r}); "
                    "e.g. postgresql://user:password@host:5432/database"
                )
            try:
                parts.port  # noqa: B018  # parsing the port is the check
            except ValueError:
                raise ValueError("the port must be a number between 0 and 65535") from None
            sslmode = parse_qs(parts.query).get("sslmode", [None])[-1]
            if sslmode is not None and sslmode not in _SSLMODES:
                raise ValueError(
                    f"sslmode {sslmode!r} is not one of {', '.join(sorted(_SSLMODES))}"
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
    max_attempts: Integer = Field(default=3, ge=1, le=1000)
    #: Most claimed tasks a queue may hold waiting for a free slot (fetch-ahead), so that
    #: short tasks are claimed in large batches. Only what the slots will start within about
    #: 50 ms, at the pace tasks finish, is fetched ahead: slow tasks are never hoarded away
    #: from other engines. 0 claims only for free slots.
    prefetch: Integer = Field(default=500, ge=0, le=10_000)
    #: How long a finished task keeps its idempotency key: a producer retrying within this
    #: time gets the finished task back instead of running the work again. The sweeper frees
    #: older keys.
    idempotency_retention: Seconds = Field(default=86_400.0, ge=60)
    #: How long a task may stay suspended (``ctx.suspend()``) without a signal; the sweeper
    #: then fails it.
    suspend_timeout: Seconds = Field(default=86_400.0, gt=0)
    #: This engine's region: it claims tasks pinned to this region and unpinned ones. Without
    #: a region it claims only unpinned tasks.
    region: str | None = None

    @field_validator("region")
    @classmethod
    def _region_label(cls, value: str | None) -> str | None:
        return _region(value)

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


class ServerSettings(_Section):
    """The HTTP server of ``iron-defer-trio serve``."""

    #: Interface to bind. Loopback by default: expose the API on purpose, not by accident.
    host: str = "127.0.0.1"
    #: TCP port (0 picks a free one, useful in tests).
    port: Integer = Field(default=8080, ge=0, le=65535)
    #: When set, every endpoint except the health probes requires
    #: ``Authorization: Bearer <token>``. Never logged or printed.
    api_token: SecretStr | None = None
    #: Largest accepted request body, in bytes; larger ones are answered 413.
    max_body_bytes: Integer = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    #: How long the readiness probe waits for the database before answering 503.
    ready_timeout: Seconds = Field(default=2.0, gt=0, le=60)
    #: Show task payloads, checkpoints and signal payloads on the dashboard (``/ui``). Off by
    #: default, as in the logs: payloads may hold personal data.
    ui_show_payloads: bool = False

    @field_validator("api_token")
    @classmethod
    def _token_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            token = value.get_secret_value()
            if not token.strip():
                raise ValueError("must not be empty (leave it unset to disable authentication)")
            # HTTP headers carry ASCII reliably; anything else could never be matched.
            if not all(33 <= ord(char) <= 126 for char in token):
                raise ValueError("use printable ASCII without spaces (e.g. token_urlsafe(32))")
        return value


def _split_list(value: Any) -> Any:
    # From the environment or a flag, a list arrives as "pkg.tasks, other.tasks".
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class TasksSettings(_Section):
    """Where ``serve`` and the CLI find the Task classes to register."""

    #: Python modules to import; every Task subclass they define (or list in a module-level
    #: ``IRON_DEFER_TASKS``) is registered.
    modules: Annotated[list[str], BeforeValidator(_split_list)] = Field(default_factory=list)

    @field_validator("modules")
    @classmethod
    def _module_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", name):
                raise ValueError(f"{name!r} is not a Python module path (e.g. myapp.tasks)")
        return value


def _region(value: str | None) -> str | None:
    if value is not None and not REGION_PATTERN.fullmatch(value):
        raise ValueError(
            f"invalid region {value!r}: use 1-63 lowercase letters, digits or '-', "
            "starting with a letter or digit"
        )
    return value


class ProducerSettings(_Section):
    """What producers (enqueue, REST, CLI submit) may submit."""

    #: Regions a task may be pinned to; empty allows any valid label.
    allowed_regions: Annotated[list[str], BeforeValidator(_split_list)] = Field(
        default_factory=list
    )

    @field_validator("allowed_regions")
    @classmethod
    def _region_labels(cls, value: list[str]) -> list[str]:
        for label in value:
            _region(label)
        return value


class ObservabilitySettings(_Section):
    """Logs, metrics and traces."""

    #: Level of ``serve``'s JSON logs (embedded, the application's logging decides).
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: Include task payloads in lifecycle logs. Off by default: payloads may hold personal data.
    log_payload: bool = False
    #: Base URL of an OTLP/HTTP collector (e.g. ``http://otel-collector:4318``); ``serve`` then
    #: pushes metrics to ``/v1/metrics`` and traces to ``/v1/traces`` under it.
    otlp_endpoint: str | None = None
    #: How often metrics are pushed to the OTLP endpoint.
    otlp_interval: Seconds = Field(default=15.0, ge=1)
    #: ``service.name`` of the telemetry ``serve`` exports.
    service_name: str = Field(default="iron-defer-trio", min_length=1)
    #: How often each engine refreshes the pending/running gauges (one indexed query).
    gauge_interval: Seconds = Field(default=10.0, ge=0.1)

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in {"http", "https"} or not parts.netloc:
                raise ValueError("must be an http:// or https:// URL of an OTLP/HTTP collector")
        return value


class RetentionSettings(_Section):
    """How long finished tasks stay in the table before the sweeper deletes them, per final
    status. 0 (or None) keeps them forever. Audit rows are never deleted."""

    #: Age (since finished_at) at which completed tasks are deleted.
    completed: Seconds | None = Field(default=86_400.0, ge=0)
    #: Age at which failed tasks are deleted (long enough to inspect and retry them).
    failed: Seconds | None = Field(default=604_800.0, ge=0)
    #: Age at which cancelled tasks are deleted.
    cancelled: Seconds | None = Field(default=604_800.0, ge=0)
    #: Tasks deleted per statement; a backlog is worked through in several statements, so
    #: no statement holds many locks or runs long.
    batch_size: Integer = Field(default=1000, ge=1, le=100_000)


def _default_queues() -> dict[str, int]:
    return {"default": 4}


def _parse_queues(value: Any) -> Any:
    # From the environment or flags: "emails=10,reports=2".
    if isinstance(value, str):
        queues: dict[str, Any] = {}
        for item in value.split(","):
            if not item.strip():
                continue
            name, sep, concurrency = item.partition("=")
            if not sep:
                raise ValueError(f"{item.strip()!r} is not NAME=CONCURRENCY")
            queues[name.strip()] = concurrency.strip()
        return queues
    return value


class Settings(_Section):
    """Every setting of an engine. Build it from keyword arguments or a dict."""

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    tasks: TasksSettings = Field(default_factory=TasksSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    producer: ProducerSettings = Field(default_factory=ProducerSettings)
    periodic: PeriodicSettings = Field(default_factory=lambda: PeriodicSettings())
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    #: Queues this engine works on, with the most tasks each runs at once.
    queues: Annotated[
        dict[str, Annotated[Integer, Field(ge=1, le=10_000)]], BeforeValidator(_parse_queues)
    ] = Field(default_factory=_default_queues)

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


# --- layers -------------------------------------------------------------------------------

#: Environment variables of settings start with this, then SECTION__KEY.
ENV_PREFIX = "IRON_DEFER__"
#: Chooses the profile file ``config.{profile}.toml``.
PROFILE_ENV = "IRON_DEFER_PROFILE"
#: Path of the base config file, when not given with --config.
CONFIG_ENV = "IRON_DEFER_CONFIG"
#: Conventional shortcuts that many platforms set.
_ALIASES = {"DATABASE_URL": ("database", "url"), "PORT": ("server", "port")}
#: Settings whose value is replaced whole by a higher layer rather than merged key by key: a
#: queue list given on the command line is the complete list, not an addition to the default.
_ATOMIC = {("queues",), ("tasks", "modules"), ("periodic", "schedules")}


@dataclass
class Layer:
    """One source of settings: its label, its values, and where each value came from."""

    name: str
    data: dict[str, Any] = field(default_factory=dict)
    #: Full key path -> precise origin, e.g. ``env IRON_DEFER__WORKER__POLL_INTERVAL``.
    origins: dict[tuple[str, ...], str] = field(default_factory=dict)

    def set(self, path: tuple[str, ...], value: Any, origin: str) -> None:
        """Set ``path`` (a tuple of keys) to ``value``."""
        node = self.data
        for key in path[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(path)}: {origin} conflicts with a value above it")
            node = child
        node[path[-1]] = value
        self.origins[path] = origin


@dataclass(frozen=True)
class LoadedSettings:
    """Validated settings and the layers they were merged from (for ``config show``)."""

    settings: Settings
    layers: tuple[Layer, ...]

    def origin(self, path: tuple[str, ...]) -> str:
        """The layer that decided the value at ``path`` ("default" when none set it)."""
        for layer in reversed(self.layers):
            for known, origin in layer.origins.items():
                if path[: len(known)] == known:
                    return origin
        return "default"


def load_settings(
    *,
    config_file: str | os.PathLike[str] | None = None,
    profile: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[tuple[str, ...], Any] | None = None,
    override_names: Mapping[tuple[str, ...], str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> LoadedSettings:
    """Read settings from every layer and validate them together.

    Args:
        config_file: the base TOML file; default ``$IRON_DEFER_CONFIG``, else ``config.toml``
            in ``cwd`` when it exists (an explicitly named file must exist).
        profile: selects ``config.{profile}.toml`` beside the base file; default
            ``$IRON_DEFER_PROFILE``. A named profile's file must exist.
        environ: the environment (default ``os.environ``).
        overrides: command-line values by key path, highest precedence.
        override_names: the flag each override came from, for error messages (default
            ``--<last key>``).
        cwd: where to look for ``config.toml`` (default the current directory).

    Raises:
        ConfigError: listing every problem, each with its key path and origin.
    """
    env = os.environ if environ is None else environ
    base_dir = Path(cwd) if cwd is not None else Path.cwd()
    layers: list[Layer] = []
    problems: list[str] = []

    explicit = config_file if config_file is not None else env.get(CONFIG_ENV) or None
    base_path = Path(explicit) if explicit else base_dir / "config.toml"
    if explicit and not base_path.is_file():
        problems.append(f"config file {base_path} does not exist")
    elif base_path.is_file():
        layers.append(_toml_layer(base_path, problems))

    profile = profile if profile is not None else env.get(PROFILE_ENV) or None
    if profile:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", profile):
            problems.append(f"profile {profile!r}: use letters, digits, '_', '.' or '-'")
        else:
            profile_path = base_path.with_name(f"config.{profile}.toml")
            if profile_path.is_file():
                layers.append(_toml_layer(profile_path, problems))
            else:
                problems.append(
                    f"profile {profile!r} is selected but {profile_path} does not exist"
                )

    layers.append(_env_layer(env, problems))
    cli = Layer("command line")
    names = override_names or {}
    for path, value in (overrides or {}).items():
        cli.set(path, value, names.get(path, f"--{path[-1].replace('_', '-')}"))
    layers.append(cli)

    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _merge(merged, layer.data, ())
    loaded_layers = tuple(layers)
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        problems.extend(_describe(exc, loaded_layers))
    if problems:
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems))
    return LoadedSettings(settings, loaded_layers)


def _toml_layer(path: Path, problems: list[str]) -> Layer:
    layer = Layer(path.name)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: cannot be read ({exc})")
        return layer
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{path}: not valid TOML ({exc})")
        return layer
    layer.data = data
    _record_origins(layer, data, (), str(path))
    return layer


def _record_origins(layer: Layer, node: dict[str, Any], path: tuple[str, ...], origin: str) -> None:
    for key, value in node.items():
        here = (*path, key)
        if isinstance(value, dict) and here not in _ATOMIC:
            _record_origins(layer, value, here, origin)
        else:
            layer.origins[here] = origin


def _env_layer(env: Mapping[str, str], problems: list[str]) -> Layer:
    layer = Layer("environment")
    for name in sorted(env):
        value = env[name]
        if name in _ALIASES:
            layer.set(_ALIASES[name], value, f"env {name}")
        elif name.startswith(ENV_PREFIX):
            parts = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
            if not all(parts) or len(parts) > 3:
                problems.append(
                    f"env {name}: expected {ENV_PREFIX}SECTION__KEY (e.g. "
                    f"{ENV_PREFIX}WORKER__POLL_INTERVAL)"
                )
                continue
            try:
                layer.set(parts, value, f"env {name}")
            except ConfigError as exc:
                problems.append(str(exc))
    return layer


def _merge(base: dict[str, Any], top: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        here = (*path, key)
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, dict) and here not in _ATOMIC:
            merged[key] = _merge(current, value, here)
        else:
            merged[key] = value
    return merged


def _describe(exc: ValidationError, layers: tuple[Layer, ...]) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        path = tuple(str(part) for part in error["loc"])
        message = "unknown setting" if error["type"] == "extra_forbidden" else error["msg"]
        origin = None
        for layer in reversed(layers):
            for known, where in layer.origins.items():
                if path[: len(known)] == known or known[: len(path)] == path:
                    origin = where
                    break
            if origin:
                break
        dotted = ".".join(path) or "(settings)"
        lines.append(f"{dotted}: {message}" + (f" (from {origin})" if origin else ""))
    return lines


# --- periodic schedules ---------------------------------------------------------------------


def _parse_schedules(value: Any) -> Any:
    # From the environment: a JSON array of schedule objects.
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"expected a JSON array of schedules: {exc}") from None
    return value


class PeriodicScheduleSettings(_Section):
    """One schedule declared in the settings (``[[periodic.schedules]]`` in config.toml)."""

    #: Identity of the schedule in the database (default: the kind).
    name: str | None = Field(default=None, min_length=1, max_length=255)
    #: 5 fields, or 6 with a leading seconds field.
    cron: str
    #: A registered Task kind.
    kind: str = Field(min_length=1)
    #: The task's fields.
    payload: dict[str, JsonValue] = Field(default_factory=dict)
    queue: str | None = None
    timezone: str = "UTC"
    missed: MissedPolicy = "run_once"
    priority: Integer | None = None

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        try:
            return validate_cron(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zone(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value


class PeriodicSettings(_Section):
    """Periodic (cron) schedules run by engines that run workers."""

    #: Schedules to run, besides those given in code.
    schedules: Annotated[list[PeriodicScheduleSettings], BeforeValidator(_parse_schedules)] = Field(
        default_factory=list
    )
    #: A fire time older than this when an engine gets to it counts as missed (downtime).
    misfire_grace: Seconds = Field(default=60.0, ge=1)


# Settings names PeriodicSettings before it is defined (the periodic section sits at the end of
# this module); resolve the forward reference now.
Settings.model_rebuild()

"""``iron-defer-trio config validate|show``: check and explain the effective settings."""

import json
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from pydantic import BaseModel, BeforeValidator, SecretStr
from pydantic.fields import FieldInfo

from iron_defer_trio._modules import load_task_classes
from iron_defer_trio.cli._common import (
    DSN_KEY,
    CliError,
    CliState,
    ExitCode,
    echo,
    print_json,
    table,
)
from iron_defer_trio.config import LoadedSettings, Settings, mask_dsn, parse_duration
from iron_defer_trio.engine import TaskRegistry, configured_tasks
from iron_defer_trio.errors import ConfigError

config_app = typer.Typer(
    name="config",
    help="Check and show the effective configuration.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

#: What a secret looks like in any output.
MASK = "***"


@config_app.command("validate")
def validate(ctx: typer.Context) -> None:
    """Check every layer of the configuration, that tasks.modules import, and that the
    periodic schedules name their kinds and payloads.

    Exits 0 printing "configuration is valid", or 1 listing every problem with its key
    path and the layer it came from.
    """
    try:
        settings = CliState.of(ctx).load().settings
        if settings.tasks.modules:
            registry = TaskRegistry(load_task_classes(settings.tasks.modules))
            configured_tasks(settings.periodic.schedules, registry)
    except ConfigError as exc:
        # Here an invalid configuration is the answer, not a usage error.
        raise CliError(str(exc), ExitCode.FAILURE) from None
    echo("configuration is valid")


@config_app.command("show")
def show(
    ctx: typer.Context,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help='Print {"settings": {...}, "origins": {"section.key": origin}}.'
        ),
    ] = False,
) -> None:
    """Show the effective settings and where each value came from (secrets masked)."""
    leaves = _leaves(CliState.of(ctx).load())
    if as_json:
        settings: dict[str, Any] = {}
        for leaf in leaves:
            node = settings
            for key in leaf.path[:-1]:
                node = node.setdefault(key, {})
            node[leaf.path[-1]] = leaf.value
        origins = {leaf.key: leaf.origin for leaf in leaves}
        print_json({"settings": settings, "origins": origins})
        return
    echo(
        table(
            ["KEY", "VALUE", "ORIGIN"], [[leaf.key, leaf.human(), leaf.origin] for leaf in leaves]
        )
    )


@dataclass(frozen=True, slots=True)
class _Leaf:
    """One setting, ready to print: its value is JSON-ready and secrets are masked."""

    path: tuple[str, ...]
    value: Any
    origin: str
    duration: bool

    @property
    def key(self) -> str:
        return ".".join(self.path)

    def human(self) -> str:
        value = self.value
        if value is None:
            return "(not set)"
        if self.duration and isinstance(value, float):
            return _duration(value)
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, dict):
            return ", ".join(f"{key}={item}" for key, item in value.items()) or "(none)"
        if isinstance(value, list):
            return (
                ", ".join(
                    json.dumps(item) if isinstance(item, dict) else str(item) for item in value
                )
                or "(none)"
            )
        return str(value)


def _duration(seconds: float) -> str:
    # The largest unit that states the value exactly, in the syntax the settings accept.
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    if 0 < seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def _leaves(loaded: LoadedSettings) -> list[_Leaf]:
    """Every setting, section by section, in the model's order."""
    found = []
    for name, field in Settings.model_fields.items():
        value = getattr(loaded.settings, name)
        if isinstance(value, BaseModel):
            for key, inner in type(value).model_fields.items():
                found.append(_leaf(loaded, (name, key), getattr(value, key), inner))
        else:
            found.append(_leaf(loaded, (name,), value, field))
    return found


def _leaf(loaded: LoadedSettings, path: tuple[str, ...], value: Any, field: FieldInfo) -> _Leaf:
    if isinstance(value, SecretStr):
        # The DSN keeps everything but its password (host and database are what one checks);
        # any other secret is masked whole.
        value = mask_dsn(value.get_secret_value()) if path == DSN_KEY else MASK
    if isinstance(value, list):
        # periodic.schedules: tables, shown as the JSON objects the environment takes.
        value = [
            item.model_dump(mode="json", exclude_none=True) if isinstance(item, BaseModel) else item
            for item in value
        ]
    duration = any(
        isinstance(item, BeforeValidator) and item.func is parse_duration for item in field.metadata
    )
    return _Leaf(path, value, loaded.origin(path), duration)

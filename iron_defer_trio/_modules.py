"""Find the Task classes of ``tasks.modules`` / ``--app`` for the server and the CLI."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import TYPE_CHECKING

from iron_defer_trio.domain import Task
from iron_defer_trio.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

#: A module may list its tasks explicitly under this name instead of being scanned.
EXPLICIT_LIST = "IRON_DEFER_TASKS"


def load_task_classes(modules: Sequence[str]) -> list[type[Task]]:
    """Import ``modules`` and return their Task classes, in a stable order.

    Each module contributes its ``IRON_DEFER_TASKS`` list when it defines one, otherwise every
    Task subclass defined in it (not merely imported into it) that sets ``KIND``. The current
    directory is importable, as with ``python -m``.

    Raises:
        ConfigError: a module cannot be imported, lists something that is not a Task class,
            or defines no task at all.
    """
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    found: list[type[Task]] = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            raise ConfigError(
                f"tasks.modules: cannot import {name!r}: {type(exc).__name__}: {exc}"
            ) from exc
        explicit = getattr(module, EXPLICIT_LIST, None)
        if explicit is not None:
            classes = list(explicit)
            for cls in classes:
                if not (inspect.isclass(cls) and issubclass(cls, Task)):
                    raise ConfigError(
                        f"{name}.{EXPLICIT_LIST} must list Task classes; it holds {cls!r}"
                    )
        else:
            classes = [
                cls
                for _, cls in inspect.getmembers(module, inspect.isclass)
                if issubclass(cls, Task)
                and cls is not Task
                and cls.__module__ == module.__name__
                and isinstance(getattr(cls, "KIND", None), str)
            ]
        if not classes:
            raise ConfigError(
                f"tasks.modules: {name!r} defines no Task subclass with a KIND "
                f"(or list them in {EXPLICIT_LIST})"
            )
        found.extend(cls for cls in classes if cls not in found)
    return found

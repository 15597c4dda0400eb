"""Task kind -> Task class."""

from __future__ import annotations

from typing import TYPE_CHECKING

from iron_defer_trio.domain import Task
from iron_defer_trio.domain.limits import validate_kind
from iron_defer_trio.errors import ConfigError, InvalidTaskError, UnknownTaskKind

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator


class TaskRegistry:
    """The Task classes an engine can enqueue and run, by kind."""

    def __init__(self, tasks: Iterable[type[Task]] = ()) -> None:
        self._by_kind: dict[str, type[Task]] = {}
        for cls in tasks:
            self.register(cls)

    def register(self, cls: type[Task]) -> None:
        """Add a Task class; its ``KIND`` must be set and not taken by another class."""
        if not (isinstance(cls, type) and issubclass(cls, Task)) or cls is Task:
            raise ConfigError(f"{cls!r} is not a subclass of iron_defer_trio.Task")
        kind = getattr(cls, "KIND", None)
        if kind is None:
            raise ConfigError(f'{cls.__qualname__} has no KIND: add `KIND: ClassVar[str] = "..."`')
        if not isinstance(kind, str):
            raise ConfigError(f"{cls.__qualname__}.KIND must be a str, got {kind!r}")
        try:
            validate_kind(kind)
        except InvalidTaskError as exc:
            raise ConfigError(f"{cls.__qualname__}.KIND: {exc}") from None
        if "execute" not in _defined_methods(cls):
            raise ConfigError(f"{cls.__qualname__} does not implement execute()")
        existing = self._by_kind.get(kind)
        if existing is not None and existing is not cls:
            raise ConfigError(
                f"kind {kind!r} is claimed by both {existing.__module__}.{existing.__qualname__}"
                f" and {cls.__module__}.{cls.__qualname__}"
            )
        self._by_kind[kind] = cls

    def get(self, kind: str) -> type[Task]:
        """The class registered for ``kind``; raises :class:`UnknownTaskKind`."""
        try:
            return self._by_kind[kind]
        except KeyError:
            raise UnknownTaskKind(kind) from None

    def kind_of(self, task: Task) -> str:
        """The kind of a task instance, checking its exact class is the registered one."""
        kind = getattr(type(task), "KIND", None)
        registered = self._by_kind.get(kind) if isinstance(kind, str) else None
        if isinstance(kind, str) and registered is type(task):
            return kind
        error = UnknownTaskKind(str(kind))
        if registered is not None:
            error.args = (
                f"{type(task).__qualname__} is not registered; its kind {kind!r} belongs to "
                f"{registered.__qualname__} (register the exact class you enqueue)",
            )
        raise error

    @property
    def kinds(self) -> tuple[str, ...]:
        """Every registered kind, sorted."""
        return tuple(sorted(self._by_kind))

    def __iter__(self) -> Iterator[type[Task]]:
        return iter(self._by_kind.values())

    def __len__(self) -> int:
        return len(self._by_kind)


def _defined_methods(cls: type[Task]) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is Task:
            break
        names.update(vars(klass))
    return names

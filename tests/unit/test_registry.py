"""Pins TaskRegistry: which classes it accepts, the messages it refuses others with, kind
lookups, and that an instance's exact class must be the registered one."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from iron_defer_trio.domain.task import Task, TaskContext
from iron_defer_trio.engine._registry import TaskRegistry
from iron_defer_trio.errors import ConfigError, UnknownTaskKind


class SendEmail(Task):
    KIND: ClassVar[str] = "send_email"
    to: str

    async def execute(self, ctx: TaskContext) -> None:
        return None


class Resize(Task):
    KIND: ClassVar[str] = "images.resize"
    width: int = 100

    async def execute(self, ctx: TaskContext) -> None:
        return None


class UrgentEmail(SendEmail):
    """Inherits KIND and execute from SendEmail."""


class OtherSendEmail(Task):
    KIND: ClassVar[str] = "send_email"

    async def execute(self, ctx: TaskContext) -> None:
        return None


def test_registered_classes_are_found_by_kind() -> None:
    """get() returns the class registered under a kind; kinds and len reflect the registry."""
    registry = TaskRegistry([SendEmail, Resize])
    assert registry.get("send_email") is SendEmail
    assert registry.get("images.resize") is Resize
    assert registry.kinds == ("images.resize", "send_email")
    assert len(registry) == 2
    expected: set[type[Task]] = {SendEmail, Resize}
    assert set(registry) == expected


def test_empty_registry_knows_no_kind() -> None:
    """A registry built from nothing is empty."""
    registry = TaskRegistry()
    assert len(registry) == 0
    assert registry.kinds == ()


def test_registering_the_same_class_twice_is_harmless() -> None:
    """Re-registering a class under its own kind keeps one entry."""
    registry = TaskRegistry([SendEmail, SendEmail])
    registry.register(SendEmail)
    assert len(registry) == 1
    assert registry.get("send_email") is SendEmail


def test_two_classes_with_the_same_kind_are_rejected_naming_both() -> None:
    """A kind claimed by two classes raises ConfigError with both dotted names."""
    with pytest.raises(ConfigError) as info:
        TaskRegistry([SendEmail, OtherSendEmail])
    message = str(info.value)
    assert "'send_email'" in message
    assert f"{__name__}.SendEmail" in message
    assert f"{__name__}.OtherSendEmail" in message


def test_a_subclass_inheriting_a_registered_kind_is_a_duplicate() -> None:
    """A subclass that inherits KIND collides with its parent instead of replacing it."""
    registry = TaskRegistry([SendEmail])
    with pytest.raises(ConfigError, match="claimed by both"):
        registry.register(UrgentEmail)
    assert registry.get("send_email") is SendEmail


def test_class_without_kind_is_rejected_with_a_hint() -> None:
    """Forgetting KIND gives a ConfigError that shows how to declare it."""

    class NoKind(Task):
        async def execute(self, ctx: TaskContext) -> None:
            return None

    with pytest.raises(ConfigError, match=r"NoKind has no KIND: add `KIND: ClassVar\[str\]"):
        TaskRegistry([NoKind])


def test_class_with_a_non_string_kind_is_rejected() -> None:
    """KIND must be a str; a number is refused naming the class."""

    class NumericKind(Task):
        KIND: ClassVar[Any] = 42

        async def execute(self, ctx: TaskContext) -> None:
            return None

    with pytest.raises(ConfigError, match=r"NumericKind\.KIND must be a str, got 42"):
        TaskRegistry([NumericKind])


@pytest.mark.parametrize("kind", ["", " padded ", "x" * 256, "nul\x00"])
def test_class_with_an_invalid_kind_string_is_rejected(kind: str) -> None:
    """An empty, padded, too long or NUL-bearing KIND is refused with the class and rule."""
    cls = type("BadKind", (SendEmail,), {"KIND": kind, "__module__": __name__})
    with pytest.raises(ConfigError, match=r"^BadKind\.KIND: invalid task kind"):
        TaskRegistry([cls])


def test_class_without_execute_is_rejected() -> None:
    """A Task subclass that does not override execute() is refused at registration."""

    class Lazy(Task):
        KIND: ClassVar[str] = "lazy"

    with pytest.raises(ConfigError, match=r"\bLazy does not implement execute\(\)$"):
        TaskRegistry([Lazy])


def test_execute_inherited_from_an_intermediate_base_counts() -> None:
    """execute() defined on a user base class (not Task) satisfies the check."""

    class Base(Task):
        async def execute(self, ctx: TaskContext) -> None:
            return None

    class Concrete(Base):
        KIND: ClassVar[str] = "concrete"

    assert TaskRegistry([Concrete]).get("concrete") is Concrete


@pytest.mark.parametrize("thing", [Task, int, object, "send_email", None, SendEmail(to="a@b.c")])
def test_non_task_classes_and_the_task_base_itself_are_rejected(thing: Any) -> None:
    """Only proper subclasses of Task register; the error says what is expected."""
    with pytest.raises(ConfigError, match=r"is not a subclass of iron_defer_trio\.Task"):
        TaskRegistry([thing])


def test_unknown_kind_lookup_raises_unknown_task_kind() -> None:
    """get() of a kind nobody registered raises UnknownTaskKind carrying the kind."""
    registry = TaskRegistry([SendEmail])
    with pytest.raises(UnknownTaskKind, match="'resize'") as info:
        registry.get("resize")
    assert info.value.kind == "resize"


def test_kind_of_returns_the_kind_of_a_registered_instance() -> None:
    """kind_of() of an instance of a registered class is that class's KIND."""
    registry = TaskRegistry([SendEmail, Resize])
    assert registry.kind_of(SendEmail(to="a@b.c")) == "send_email"
    assert registry.kind_of(Resize()) == "images.resize"


def test_kind_of_rejects_a_subclass_of_a_registered_class() -> None:
    """An instance whose exact class is not registered is unknown, even if its parent is."""
    registry = TaskRegistry([SendEmail])
    with pytest.raises(UnknownTaskKind, match="'send_email'"):
        registry.kind_of(UrgentEmail(to="a@b.c"))


def test_kind_of_rejects_an_unregistered_class_with_the_same_kind() -> None:
    """Another class reusing a registered kind does not pass as the registered one."""
    registry = TaskRegistry([SendEmail])
    with pytest.raises(UnknownTaskKind):
        registry.kind_of(OtherSendEmail())


def test_kind_of_rejects_an_instance_of_an_unregistered_kind() -> None:
    """kind_of() of a class that was never registered raises UnknownTaskKind."""
    registry = TaskRegistry([SendEmail])
    with pytest.raises(UnknownTaskKind, match=r"'images\.resize'"):
        registry.kind_of(Resize())

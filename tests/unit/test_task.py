"""Pins the Task base class (frozen pydantic payload, unknown fields rejected, per-class
defaults) and TaskContext (frozen, last-attempt test)."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
from pydantic import ConfigDict, ValidationError

from iron_defer_trio.domain.retry import RetryPolicy
from iron_defer_trio.domain.task import Task, TaskContext


class SendEmail(Task):
    KIND: ClassVar[str] = "send_email"
    to: str
    subject: str = "hello"

    async def execute(self, ctx: TaskContext) -> None:
        return None


class _Log:
    """A do-nothing logger satisfying TaskLogger."""

    def debug(self, event: str, /, *args: Any, **kw: Any) -> None: ...
    def info(self, event: str, /, *args: Any, **kw: Any) -> None: ...
    def warning(self, event: str, /, *args: Any, **kw: Any) -> None: ...
    def error(self, event: str, /, *args: Any, **kw: Any) -> None: ...
    def exception(self, event: str, /, *args: Any, **kw: Any) -> None: ...


def _context(attempt: int, max_attempts: int) -> TaskContext:
    return TaskContext(
        task_id=uuid.uuid4(),
        queue="default",
        kind="send_email",
        attempt=attempt,
        max_attempts=max_attempts,
        worker_id=uuid.uuid4(),
        scheduled_at=datetime(2030, 1, 1, tzinfo=UTC),
        log=_Log(),
    )


def test_task_fields_are_its_json_payload() -> None:
    """A task dumps to exactly its fields and validates back from them."""
    task = SendEmail(to="ada@example.com")
    payload = task.model_dump(mode="json")
    assert payload == {"to": "ada@example.com", "subject": "hello"}
    assert SendEmail.model_validate(payload) == task


def test_task_instances_are_frozen() -> None:
    """Assigning to a field of a task raises ValidationError."""
    task = SendEmail(to="ada@example.com")
    with pytest.raises(ValidationError, match="frozen"):
        task.to = "eve@example.com"  # type: ignore[misc]  # the point: it must fail at runtime
    assert task.to == "ada@example.com"


def test_unknown_payload_fields_are_rejected() -> None:
    """A misspelt field in a submitted payload is an error, not silently dropped."""
    with pytest.raises(ValidationError, match="subjet") as info:
        SendEmail.model_validate({"to": "ada@example.com", "subjet": "typo"})
    assert info.value.errors()[0]["type"] == "extra_forbidden"


def test_missing_or_mistyped_fields_are_rejected() -> None:
    """Required fields and their types are enforced."""
    with pytest.raises(ValidationError, match="to"):
        SendEmail.model_validate({})
    with pytest.raises(ValidationError, match="to"):
        SendEmail.model_validate({"to": ["not", "a", "string"]})


def test_subclasses_may_relax_the_model_config() -> None:
    """Overriding model_config allows extra fields, as the docstring promises."""

    class Lenient(Task):
        model_config = ConfigDict(frozen=True, extra="ignore")
        KIND: ClassVar[str] = "lenient"

        async def execute(self, ctx: TaskContext) -> None:
            return None

    assert Lenient.model_validate({"extra": 1}).model_dump() == {}


def test_class_defaults_are_unset_unless_a_subclass_sets_them() -> None:
    """QUEUE, MAX_ATTEMPTS and RETRY default to None and PRIORITY to 0; they are not fields."""
    assert (SendEmail.QUEUE, SendEmail.PRIORITY, SendEmail.MAX_ATTEMPTS, SendEmail.RETRY) == (
        None,
        0,
        None,
        None,
    )
    assert set(SendEmail.model_fields) == {"to", "subject"}

    class Tuned(SendEmail):
        QUEUE: ClassVar[str | None] = "mail"
        RETRY: ClassVar[RetryPolicy | None] = RetryPolicy(base_delay=1, max_delay=10)

    assert Tuned.QUEUE == "mail"
    assert Tuned.RETRY is not None
    assert Tuned.RETRY.max_delay == 10.0
    assert set(Tuned.model_fields) == {"to", "subject"}


def test_base_execute_says_which_class_must_implement_it() -> None:
    """Calling execute() on a class that did not override it names the class."""

    class Bare(Task):
        KIND: ClassVar[str] = "bare"

    coroutine = Bare().execute(_context(1, 1))
    with pytest.raises(NotImplementedError, match=r"^Bare must implement execute\(\)$"):
        coroutine.send(None)  # the base raises before its first await: no event loop needed


@pytest.mark.parametrize(
    ("attempt", "max_attempts", "last"),
    [(1, 1, True), (1, 3, False), (2, 3, False), (3, 3, True), (4, 3, True)],
)
def test_is_last_attempt_when_attempt_reaches_max_attempts(
    attempt: int, max_attempts: int, last: bool
) -> None:
    """is_last_attempt is true once attempt >= max_attempts."""
    assert _context(attempt, max_attempts).is_last_attempt is last


def test_task_context_is_frozen_and_hides_the_logger_in_repr() -> None:
    """A context cannot be changed by the handler, and its repr omits the logger."""
    ctx = _context(1, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.attempt = 2  # type: ignore[misc]  # the point: assignment must fail at runtime
    assert "log=" not in repr(ctx)
    assert "attempt=1" in repr(ctx)

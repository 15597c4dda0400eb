"""Pins the error hierarchy: one root, the leaves callers catch, and the data and messages
each error carries."""

from __future__ import annotations

import inspect
import math
import uuid

import pytest

import iron_defer_trio
from iron_defer_trio import errors
from iron_defer_trio.errors import (
    ConfigError,
    InvalidTaskError,
    InvalidTransition,
    IronDeferError,
    MigrationError,
    RetryAfter,
    StoreError,
    StoreUnavailable,
    TaskError,
    TaskNotFound,
    UnknownTaskKind,
)


@pytest.mark.parametrize("name", errors.__all__)
def test_every_public_error_derives_from_iron_defer_error(name: str) -> None:
    """Everything errors.__all__ lists is an exception under IronDeferError."""
    cls = getattr(errors, name)
    assert inspect.isclass(cls)
    assert issubclass(cls, IronDeferError)
    assert issubclass(cls, Exception)


def test_errors_module_lists_every_exception_it_defines() -> None:
    """No exception class in errors.py is missing from its __all__."""
    defined = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__.startswith("iron_defer_trio")
    }
    assert defined == set(errors.__all__)


def test_facade_exports_every_error() -> None:
    """Each error class is also importable from iron_defer_trio."""
    for name in errors.__all__:
        assert getattr(iron_defer_trio, name) is getattr(errors, name)


def test_the_tree_is_shallow_with_the_documented_parents() -> None:
    """UnknownTaskKind is an InvalidTaskError; store failures are StoreErrors."""
    assert issubclass(UnknownTaskKind, InvalidTaskError)
    assert issubclass(StoreUnavailable, StoreError)
    assert issubclass(MigrationError, StoreError)
    assert not issubclass(ConfigError, InvalidTaskError)
    assert not issubclass(TaskError, StoreError)


def test_task_error_retries_by_default() -> None:
    """TaskError carries its message and retry=True unless told otherwise."""
    exc = TaskError("upstream said no")
    assert str(exc) == "upstream said no"
    assert exc.retry is True


def test_task_error_can_fail_at_once() -> None:
    """retry=False marks a permanent failure."""
    assert TaskError("bad input", retry=False).retry is False


def test_retry_after_keeps_the_delay_as_float_with_a_default_message() -> None:
    """RetryAfter stores seconds as a float and describes itself when given no message."""
    exc = RetryAfter(30)
    assert exc.seconds == 30.0
    assert isinstance(exc.seconds, float)
    assert str(exc) == "retry requested after 30 s"
    assert str(RetryAfter(1.5, "rate limited")) == "rate limited"
    assert RetryAfter(0).seconds == 0.0


@pytest.mark.parametrize("seconds", [-1, -0.001, math.nan, -math.inf])
def test_retry_after_rejects_negative_or_nan_delays(seconds: float) -> None:
    """A negative or NaN delay is a bug in the handler: ValueError quoting it."""
    with pytest.raises(ValueError, match=r"RetryAfter needs a finite delay >= 0 seconds, got"):
        RetryAfter(seconds)


def test_unknown_task_kind_names_the_kind() -> None:
    """The message and the kind attribute carry the unknown kind."""
    exc = UnknownTaskKind("send_sms")
    assert exc.kind == "send_sms"
    assert "'send_sms'" in str(exc)
    assert "registered" in str(exc)


def test_task_not_found_names_the_id() -> None:
    """The message and the task_id attribute carry the missing id."""
    task_id = uuid.UUID("0190a6e2-7c3b-7000-8000-000000000001")
    exc = TaskNotFound(task_id)
    assert exc.task_id == task_id
    assert str(exc) == f"task {task_id} not found"


def test_invalid_transition_names_id_status_and_action() -> None:
    """The message says what was attempted on which task and the status that refused it."""
    task_id = uuid.UUID("0190a6e2-7c3b-7000-8000-000000000002")
    exc = InvalidTransition(task_id, "running", "cancel")
    assert (exc.task_id, exc.status, exc.action) == (task_id, "running", "cancel")
    assert str(exc) == f"cannot cancel task {task_id}: it is running"


def test_store_error_carries_the_sqlstate() -> None:
    """StoreError and its children keep PostgreSQL's error code, None when absent."""
    assert StoreError("boom").sqlstate is None
    exc = StoreUnavailable("server closed the connection", sqlstate="08006")
    assert exc.sqlstate == "08006"
    assert str(exc) == "server closed the connection"

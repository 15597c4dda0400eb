"""``iron_defer_trio.testing``: the helpers users put in their own test suites."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, ClassVar

import pytest
import trio

import iron_defer_trio as iron_defer
from iron_defer_trio import testing

if TYPE_CHECKING:
    from tests.conftest import EngineFactory


class Signup(iron_defer.Task):
    """Enqueues a welcome email: work that creates more work."""

    KIND: ClassVar[str] = "signup"
    email: str

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        await Signup.engine.enqueue(SendEmail(to=self.email, subject="Welcome"))

    engine: ClassVar[iron_defer.Engine]


class SendEmail(iron_defer.Task):
    KIND: ClassVar[str] = "send_email"
    sent: ClassVar[list[str]] = []
    to: str
    subject: str

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        if ctx.attempt == 1 and self.to.startswith("flaky"):
            raise RuntimeError("smtp timeout")
        SendEmail.sent.append(self.to)


@pytest.fixture(autouse=True)
def _reset() -> None:
    SendEmail.sent.clear()


async def test_run_until_idle_runs_chains_retries_and_scheduled_tasks(
    open_test_engine: EngineFactory,
) -> None:
    """Follow-up tasks, retries in backoff and future tasks all run before it returns."""
    with trio.fail_after(30):
        async with open_test_engine(
            tasks=[Signup, SendEmail], base_delay=60.0, max_delay=60.0
        ) as engine:
            Signup.engine = engine
            await engine.enqueue(Signup(email="ada@example.com"))
            await engine.enqueue(SendEmail(to="flaky@example.com", subject="hi"))
            await engine.enqueue(
                SendEmail(to="later@example.com", subject="hi"),
                scheduled_at=datetime.now(UTC) + timedelta(days=1),
            )
            await testing.run_until_idle(engine)
            leftovers = await testing.enqueued(engine, status=iron_defer.TaskStatus.PENDING)
    assert sorted(SendEmail.sent) == ["ada@example.com", "flaky@example.com", "later@example.com"]
    assert leftovers == []


async def test_run_until_idle_can_leave_future_tasks_alone(
    open_test_engine: EngineFactory,
) -> None:
    """include_scheduled=False runs only what is due now."""
    with trio.fail_after(30):
        async with open_test_engine(tasks=[SendEmail]) as engine:
            await engine.enqueue(SendEmail(to="now@example.com", subject="a"))
            later = await engine.enqueue(
                SendEmail(to="later@example.com", subject="b"),
                scheduled_at=datetime.now(UTC) + timedelta(hours=1),
            )
            await testing.run_until_idle(engine, include_scheduled=False)
            pending = await testing.enqueued(
                engine, SendEmail, status=iron_defer.TaskStatus.PENDING
            )
    assert SendEmail.sent == ["now@example.com"]
    assert [r.id for r in pending] == [later.id]


async def test_assert_enqueued_finds_a_matching_task_or_explains(
    open_test_engine: EngineFactory,
) -> None:
    """It returns the matching record, or fails listing what was enqueued instead."""
    with trio.fail_after(15):
        async with open_test_engine(tasks=[SendEmail], run_workers=False) as engine:
            first = await engine.enqueue("mail", SendEmail(to="a@b.c", subject="one"))
            await engine.enqueue("mail", SendEmail(to="a@b.c", subject="two"))
            found = await testing.assert_enqueued(
                engine, SendEmail(to="a@b.c", subject="one"), queue="mail"
            )
            assert found.id == first.id
            with pytest.raises(AssertionError, match="subject': 'two'"):
                await testing.assert_enqueued(engine, SendEmail(to="x@y.z", subject="one"))
            with pytest.raises(AssertionError):
                await testing.assert_enqueued(
                    engine, SendEmail(to="a@b.c", subject="one"), queue="other"
                )
            assert next(r.id for r in await testing.enqueued(engine, queue="mail")) == first.id

"""Checkpoints: ``ctx.checkpoint(data)`` saves progress durably without ending the attempt;
the next attempt reads it as ``ctx.last_checkpoint``; completion clears it.

Rules: a checkpoint survives the death of its engine (SIGKILL) and a failed attempt; it is
fenced like an outcome (an attempt that lost its lease cannot overwrite the new owner's);
over 1 MiB it is refused with a clear error; pydantic models work both ways.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import pydantic
import pytest
import structlog
import trio

import iron_defer_trio as iron_defer
from tests.engine.proc_worker import Progress

if TYPE_CHECKING:
    from tests.conftest import EngineFactory
    from tests.pg import Db

ROOT = Path(__file__).resolve().parents[2]


class Cursor(pydantic.BaseModel):
    page: int
    token: str


class Pages(iron_defer.Task):
    """Fails on its first attempt after saving a typed checkpoint; resumes on the next."""

    KIND: ClassVar[str] = "pages"
    RETRY: ClassVar[iron_defer.RetryPolicy | None] = iron_defer.RetryPolicy(
        base_delay=0.01, max_delay=0.01
    )
    resumed_from: ClassVar[list[Cursor | None]] = []
    stored_while_running: ClassVar[object] = None

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        Pages.resumed_from.append(ctx.last_checkpoint_as(Cursor))
        if ctx.attempt == 1:
            await ctx.checkpoint(Cursor(page=7, token="abc"))
            raise iron_defer.TaskError("upstream hiccup")


class Huge(iron_defer.Task):
    KIND: ClassVar[str] = "huge"
    caught: ClassVar[list[str]] = []

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        try:
            await ctx.checkpoint({"blob": "x" * (1024 * 1024)})
        except iron_defer.InvalidTaskError as exc:
            Huge.caught.append(str(exc))
        await ctx.checkpoint({"small": True})
        raise iron_defer.TaskError("keep the checkpoint for inspection", retry=False)


class Stolen(iron_defer.Task):
    """Checkpoints once, waits until the test gives its task to another worker, then tries
    to checkpoint again."""

    KIND: ClassVar[str] = "stolen"
    first_saved: ClassVar[trio.Event] = trio.Event()
    stolen: ClassVar[trio.Event] = trio.Event()
    cancelled: ClassVar[bool] = False

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        await ctx.checkpoint({"step": 1})
        Stolen.first_saved.set()
        await Stolen.stolen.wait()
        try:
            await ctx.checkpoint({"step": 2})
        except trio.Cancelled:
            Stolen.cancelled = True
            raise


@pytest.fixture(autouse=True)
def _reset() -> None:
    Pages.resumed_from = []
    Huge.caught = []
    Progress.seen = []
    Progress.done = None
    Stolen.first_saved = trio.Event()
    Stolen.stolen = trio.Event()
    Stolen.cancelled = False


async def test_a_failed_attempt_leaves_its_checkpoint_to_the_next_and_completion_clears_it(
    open_test_engine: EngineFactory, db: Db
) -> None:
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Pages]) as engine:
            record = await engine.enqueue(Pages())
            while (await engine.get(record.id)).status is not iron_defer.TaskStatus.COMPLETED:
                await trio.sleep(0.02)
        row = await db.fetchrow(
            "SELECT attempts, checkpoint, last_error FROM iron_defer.tasks WHERE id = $1",
            record.id,
        )
    assert Pages.resumed_from == [None, Cursor(page=7, token="abc")]
    assert (row["attempts"], row["checkpoint"]) == (2, None)
    assert row["last_error"] == "upstream hiccup"


async def test_a_checkpoint_over_1_mib_is_refused_and_the_previous_one_kept(
    open_test_engine: EngineFactory, db: Db
) -> None:
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Huge]) as engine:
            record = await engine.enqueue(Huge())
            while (await engine.get(record.id)).status is not iron_defer.TaskStatus.FAILED:
                await trio.sleep(0.02)
            stored = (await engine.get(record.id)).checkpoint
    assert len(Huge.caught) == 1
    assert "the limit is 1048576 bytes" in Huge.caught[0]
    assert stored == {"small": True}


async def test_an_attempt_that_lost_its_task_cannot_overwrite_the_checkpoint(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """The second checkpoint is fenced out: the attempt is cancelled there (as on a lost
    heartbeat) and the new owner's state is untouched."""
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Stolen], heartbeat_interval=1.0) as engine:
            record = await engine.enqueue(Stolen())
            await Stolen.first_saved.wait()
            thief = await db.fetchval("SELECT gen_random_uuid()")
            await db.execute(
                "UPDATE iron_defer.tasks SET claimed_by = $2, attempts = 2, "
                'checkpoint = \'{"owner": "thief"}\' WHERE id = $1',
                record.id,
                thief,
            )
            Stolen.stolen.set()
            while not Stolen.cancelled:
                await trio.sleep(0.01)
            await trio.sleep(0.3)
            row = await db.fetchrow(
                "SELECT status, claimed_by, checkpoint FROM iron_defer.tasks WHERE id = $1",
                record.id,
            )
            # Hand it back so the engine can shut down cleanly.
            await db.execute(
                "UPDATE iron_defer.tasks SET status = 'completed', claimed_by = NULL, "
                "claimed_until = NULL, finished_at = now() WHERE id = $1",
                record.id,
            )
    assert row["claimed_by"] == thief
    assert row["checkpoint"] == '{"owner": "thief"}'


async def test_a_killed_engine_s_task_resumes_from_its_checkpoint_on_another_engine(
    open_test_engine: EngineFactory, db: Db, database_url: str
) -> None:
    """The first engine (its own process) runs three of five steps, checkpointing after
    each, and is SIGKILLed; the rescuer runs steps 3 and 4 only."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.engine.proc_worker", database_url], env=env, cwd=ROOT
    )
    try:
        with trio.fail_after(40):
            async with open_test_engine(tasks=[Progress], run_workers=False) as producer:
                record = await producer.enqueue(Progress(steps=5, hang_after=3))
            while (
                await db.fetchval(
                    "SELECT checkpoint->>'step' FROM iron_defer.tasks WHERE id = $1", record.id
                )
                != "3"
            ):
                await trio.sleep(0.05)
            process.send_signal(signal.SIGKILL)
            await process.wait()
            Progress.done = trio.Event()
            async with open_test_engine(tasks=[Progress]) as rescuer:
                await Progress.done.wait()
                await rescuer.wait_until_idle()
            row = await db.fetchrow(
                "SELECT status, attempts, checkpoint FROM iron_defer.tasks WHERE id = $1",
                record.id,
            )
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
    assert Progress.seen == [(2, 3), (2, 4)]
    assert (row["status"], row["attempts"], row["checkpoint"]) == ("completed", 2, None)


async def test_checkpoint_outside_an_engine_is_a_clear_error() -> None:
    ctx = iron_defer.TaskContext(
        task_id=uuid.uuid4(),
        queue="default",
        kind="k",
        attempt=1,
        max_attempts=1,
        worker_id=uuid.uuid4(),
        scheduled_at=datetime.now(UTC),
        log=structlog.get_logger(),
    )
    with pytest.raises(iron_defer.InvalidTaskError, match="needs a running engine"):
        await ctx.checkpoint({"a": 1})
    with pytest.raises(iron_defer.InvalidTaskError, match="cannot be encoded"):
        await ctx.checkpoint({"a": float("nan")})

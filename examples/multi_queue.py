"""Several queues with their own concurrency in one engine.

``thumbnails`` runs up to 8 tasks at once, ``emails`` 2; each queue has its own claim loop and
``trio.CapacityLimiter``, so a backlog in one never starves the other.

Run: DATABASE_URL=postgresql://... python examples/multi_queue.py
"""

from __future__ import annotations

import os
from collections import Counter
from typing import ClassVar

import trio

import iron_defer_trio as iron_defer

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

running: Counter[str] = Counter()
peak: Counter[str] = Counter()


async def busy(queue: str, seconds: float) -> None:
    running[queue] += 1
    peak[queue] = max(peak[queue], running[queue])
    try:
        await trio.sleep(seconds)
    finally:
        running[queue] -= 1


class MakeThumbnail(iron_defer.Task):
    KIND: ClassVar[str] = "make_thumbnail"
    QUEUE: ClassVar[str | None] = "thumbnails"
    image: str

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        await busy(ctx.queue, 0.05)


class SendDigest(iron_defer.Task):
    KIND: ClassVar[str] = "send_digest"
    QUEUE: ClassVar[str | None] = "emails"
    user: str

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        await busy(ctx.queue, 0.05)


async def main() -> None:
    async with iron_defer.open_engine(
        DATABASE_URL,
        tasks=[MakeThumbnail, SendDigest],
        queues={"thumbnails": 8, "emails": 2},
    ) as engine:
        await engine.enqueue_many([MakeThumbnail(image=f"img{i}.png") for i in range(80)])
        await engine.enqueue_many([SendDigest(user=f"user{i}") for i in range(20)])
        with trio.fail_after(60):
            await engine.wait_until_idle()
        for stats in engine.statistics().queues:
            print(
                f"queue {stats.queue}: {stats.completed} completed, at most "
                f"{peak[stats.queue]} at once (limit {stats.concurrency})"
            )


if __name__ == "__main__":
    trio.run(main)

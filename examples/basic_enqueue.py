"""Define a task, enqueue it, and watch it run.

Run: DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python examples/basic_enqueue.py
"""

from __future__ import annotations

import os
from typing import ClassVar

import trio

import iron_defer_trio as iron_defer

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


class SendEmail(iron_defer.Task):
    KIND: ClassVar[str] = "send_email"
    to: str
    subject: str

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        print(f"sending {self.subject!r} to {self.to} (attempt {ctx.attempt})")


async def main() -> None:
    async with iron_defer.open_engine(DATABASE_URL, tasks=[SendEmail]) as engine:
        record = await engine.enqueue("default", SendEmail(to="ada@example.com", subject="Hi"))
        print(f"enqueued {record.id} on queue {record.queue!r}")
        with trio.fail_after(30):
            await engine.wait_until_idle()
        done = await engine.get(record.id)
        print(f"task {done.id} is {done.status} after {done.attempts} attempt(s)")


if __name__ == "__main__":
    trio.run(main)

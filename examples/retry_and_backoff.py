"""Failures, retries with jittered exponential backoff, and giving up.

- ``FlakyUpload`` fails on its first two attempts, then succeeds.
- ``ChargeCard`` raises ``TaskError(retry=False)``: it fails at once, no retry.
- ``PollPartner`` always fails and exhausts its attempts.
- ``RateLimited`` asks to be retried after an exact delay with ``RetryAfter``.

Run: DATABASE_URL=postgresql://... python examples/retry_and_backoff.py
"""

from __future__ import annotations

import os
from typing import ClassVar

import trio

import iron_defer_trio as iron_defer

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

#: Short delays so the example finishes in a few seconds; production defaults are 5 s doubling
#: up to 30 min.
QUICK = iron_defer.RetryPolicy(base_delay=0.2, max_delay=1.0)


class FlakyUpload(iron_defer.Task):
    KIND: ClassVar[str] = "flaky_upload"
    RETRY: ClassVar[iron_defer.RetryPolicy | None] = QUICK
    file: str

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        if ctx.attempt < 3:
            raise ConnectionError(f"upload of {self.file} timed out")
        print(f"uploaded {self.file} on attempt {ctx.attempt}")


class ChargeCard(iron_defer.Task):
    KIND: ClassVar[str] = "charge_card"
    card: str

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        raise iron_defer.TaskError(f"card {self.card} declined", retry=False)


class PollPartner(iron_defer.Task):
    KIND: ClassVar[str] = "poll_partner"
    MAX_ATTEMPTS: ClassVar[int | None] = 3
    RETRY: ClassVar[iron_defer.RetryPolicy | None] = QUICK

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        raise RuntimeError("partner API is down")


class RateLimited(iron_defer.Task):
    KIND: ClassVar[str] = "rate_limited"

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        if ctx.attempt == 1:
            raise iron_defer.RetryAfter(0.5, "HTTP 429, Retry-After: 0.5")
        print(f"rate-limited call went through on attempt {ctx.attempt}")


async def main() -> None:
    kinds: list[type[iron_defer.Task]] = [FlakyUpload, ChargeCard, PollPartner, RateLimited]
    async with iron_defer.open_engine(DATABASE_URL, tasks=kinds) as engine:
        records = [
            await engine.enqueue(FlakyUpload(file="report.pdf")),
            await engine.enqueue(ChargeCard(card="4242")),
            await engine.enqueue(PollPartner()),
            await engine.enqueue(RateLimited()),
        ]
        with trio.fail_after(60):
            await engine.wait_until_idle()
            for record in records:
                while not (done := await engine.get(record.id)).status.is_final:
                    await engine.wait_until_idle()  # a retry was not due yet
                print(
                    f"{done.kind}: {done.status} after {done.attempts} attempt(s)"
                    + (f", last error: {done.last_error}" if done.last_error else "")
                )


if __name__ == "__main__":
    trio.run(main)

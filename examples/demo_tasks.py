"""Task classes for trying out the server: ``iron-defer-trio serve --app examples.demo_tasks``.

Then submit work over HTTP::

    curl -s localhost:8080/tasks -H 'Content-Type: application/json' \\
      -d '{"kind": "send_email", "payload": {"to": "ada@example.com", "subject": "Hi"}}'

or with the CLI: ``iron-defer-trio submit send_email --payload '{"to": "ada@example.com",
"subject": "Hi"}' --app examples.demo_tasks``.
"""

from __future__ import annotations

from typing import ClassVar

import trio

import iron_defer_trio as iron_defer


class SendEmail(iron_defer.Task):
    """Pretends to send an e-mail (it logs instead)."""

    KIND: ClassVar[str] = "send_email"
    to: str
    subject: str
    body: str = ""

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        await trio.sleep(0.05)  # the SMTP round trip
        ctx.log.info("email_sent", subject=self.subject)


class GenerateReport(iron_defer.Task):
    """A slower task: takes ``seconds`` to finish."""

    KIND: ClassVar[str] = "generate_report"
    QUEUE: ClassVar[str | None] = "reports"
    name: str
    seconds: float = 2.0

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        await trio.sleep(self.seconds)
        ctx.log.info("report_generated", name=self.name)


class FlakyWebhook(iron_defer.Task):
    """Fails on its first attempt, to show a retry with backoff."""

    KIND: ClassVar[str] = "flaky_webhook"
    RETRY: ClassVar[iron_defer.RetryPolicy | None] = iron_defer.RetryPolicy(
        base_delay=1.0, max_delay=10.0
    )
    url: str

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        if ctx.attempt == 1:
            raise ConnectionError(f"{self.url} did not answer")
        ctx.log.info("webhook_delivered", url=self.url)

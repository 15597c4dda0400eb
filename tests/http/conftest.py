"""An API client over a real engine on this test's database."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

import iron_defer_trio as iron_defer
from iron_defer_trio.http._app import create_app
from tests.conftest import fast_settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from quart.typing import TestClientProtocol


class SendEmail(iron_defer.Task):
    KIND: ClassVar[str] = "send_email"
    to: str
    subject: str = "hello"

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        return None


class Report(iron_defer.Task):
    KIND: ClassVar[str] = "report"
    QUEUE: ClassVar[str | None] = "reports"

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        return None


ApiFactory = "Callable[..., Any]"


@pytest.fixture
def open_api(database_url: str) -> Callable[..., Any]:
    """``async with open_api(**server_settings) as (client, engine)``: the app under test
    over a producer-only engine (tasks stay where the test puts them)."""

    @asynccontextmanager
    async def factory(
        *, run_workers: bool = False, draining: Callable[[], bool] | None = None, **server: Any
    ) -> AsyncIterator[tuple[TestClientProtocol, iron_defer.Engine]]:
        settings = fast_settings(database_url).model_copy(
            update={"server": iron_defer.Settings.build(server=server).server}
        )
        async with iron_defer.open_engine(
            settings, tasks=[SendEmail, Report], run_workers=run_workers, migrate=False
        ) as engine:
            app = create_app(engine, settings, draining=draining)
            async with app.test_app() as test_app:
                yield test_app.test_client(), engine

    return factory

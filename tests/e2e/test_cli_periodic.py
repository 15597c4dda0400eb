"""`iron-defer-trio periodic list`, run as the console script against a fresh database."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import trio

import iron_defer_trio as iron_defer
from iron_defer_trio.http._schemas import PeriodicList, PeriodicOut
from tests.conftest import fast_settings
from tests.e2e.test_cli_migrate import cli_async, cli_env, ok_json

if TYPE_CHECKING:
    from pathlib import Path


class Digest(iron_defer.Task):
    KIND: ClassVar[str] = "digest"

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        return None


async def test_periodic_list_shows_registered_schedules(database_url: str, tmp_path: Path) -> None:
    """--json is the REST API's GET /periodic body; the human view has one row per schedule
    with its next fire time; without schedules it says so."""
    with trio.fail_after(40):
        env = cli_env(DATABASE_URL=database_url)
        empty = await cli_async("periodic", "list", cwd=tmp_path, env=env)
        assert (empty.returncode, empty.stdout) == (
            0,
            "no periodic schedules yet (an engine registers its schedules when it starts)\n",
        )

        daily = iron_defer.Periodic("30 6 * * *", Digest(), queue="mail", timezone="Europe/Berlin")
        async with iron_defer.open_engine(
            fast_settings(database_url),
            tasks=[Digest],
            periodic=[daily],
            queues={"other": 1},
            migrate=False,
        ) as engine:
            schedules = await engine.periodic_schedules()
        expected = PeriodicList(schedules=[PeriodicOut.from_schedule(s) for s in schedules])

        shown = ok_json(await cli_async("periodic", "list", "--json", cwd=tmp_path, env=env))
        assert shown == expected.to_json()

        human = await cli_async("periodic", "list", cwd=tmp_path, env=env)
        assert human.returncode == 0, human.stderr
        header, row = (line.split() for line in human.stdout.splitlines())
    assert header == [
        "NAME",
        "CRON",
        "TIMEZONE",
        "QUEUE",
        "KIND",
        "MISSED",
        "LAST_FIRE",
        "NEXT_FIRE",
    ]
    next_fire = schedules[0].next_fire_at
    assert next_fire is not None
    assert row == [
        "digest",
        "30",
        "6",
        "*",
        "*",
        "*",
        "Europe/Berlin",
        "mail",
        "digest",
        "run_once",
        "-",
        next_fire.strftime("%Y-%m-%dT%H:%M:%SZ"),
    ]

"""Finding tasks by the beginning of their id: engine.list(id_prefix=), GET /tasks?idPrefix=,
and the dashboard's id search, across the whole table rather than one page."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
import trio

import iron_defer_trio as iron_defer
from tests.http.conftest import SendEmail

if TYPE_CHECKING:
    from collections.abc import Callable


async def test_an_id_prefix_finds_the_tasks_whose_id_starts_so(
    open_api: Callable[..., Any],
) -> None:
    with trio.fail_after(15):
        async with open_api() as (client, engine):
            records = await engine.enqueue_many([SendEmail(to=str(n)) for n in range(60)])
            target = records[7]
            text = str(target.id)
            by_start = await engine.list(id_prefix=text[:13])  # "xxxxxxxx-xxxx", as printed
            by_whole = await engine.list(id_prefix=text)
            by_digits = await engine.list(id_prefix=target.id.hex[:20].upper())
            shared = await engine.list(id_prefix=text[:4], limit=1000)
            over_rest = await client.get(f"/tasks?idPrefix={text[:13]}&limit=500")
            bad_rest = await client.get("/tasks?idPrefix=xyz")
            with pytest.raises(iron_defer.InvalidTaskError, match="invalid id prefix"):
                await engine.list(id_prefix="not-hex")
    assert target.id in {r.id for r in by_start}
    assert all(str(r.id).startswith(text[:13]) for r in by_start)
    assert [r.id for r in by_whole] == [target.id]
    assert target.id in {r.id for r in by_digits}
    # Ids made in one burst share their first digits: every one is found, not one page's.
    assert {r.id for r in shared} == {r.id for r in records if str(r.id).startswith(text[:4])}
    body = json.loads(await over_rest.get_data())
    assert {item["id"] for item in body["items"]} == {str(r.id) for r in by_start}
    assert bad_rest.status_code == 400

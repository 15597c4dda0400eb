"""The dashboard's routes through the quart test client over a real engine: what each page
shows, that actions change rows only with a valid CSRF token, the cookie login in front of it
when an API token is set, and that none of it leaks into the REST API's description."""

from __future__ import annotations

import json
import re
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
import trio

import iron_defer_trio as iron_defer
from iron_defer_trio.http._app import create_app
from iron_defer_trio.http.ui import _security
from tests.conftest import fast_settings
from tests.http.conftest import Report, SendEmail

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from quart.typing import TestClientProtocol

    from tests.pg import Db

TOKEN = "s3cret-dashboard-token"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@asynccontextmanager
async def open_dashboard(
    database_url: str, *, audit_log: bool = False, **server: Any
) -> AsyncIterator[tuple[TestClientProtocol, iron_defer.Engine]]:
    """The app over a producer-only engine (tasks stay where the test puts them)."""
    settings = fast_settings(database_url).model_copy(
        update={
            "server": iron_defer.Settings.build(server=server).server,
            "database": iron_defer.Settings.build(
                database={"url": database_url, "audit_log": audit_log}
            ).database,
        }
    )
    async with iron_defer.open_engine(
        settings, tasks=[SendEmail, Report], run_workers=False, migrate=False
    ) as engine:
        app = create_app(engine, settings)
        async with app.test_app() as test_app:
            yield test_app.test_client(), engine


async def _page(client: TestClientProtocol, path: str) -> tuple[int, str]:
    response = await client.get(path)
    return response.status_code, await response.get_data(as_text=True)


async def _csrf(client: TestClientProtocol, path: str) -> str:
    """The CSRF token a form on ``path`` carries (the cookie is set on that visit)."""
    _, html = await _page(client, path)
    match = _CSRF.search(html)
    assert match, html
    return match.group(1)


# --- overview -------------------------------------------------------------------------------


async def test_overview_shows_each_queue_counts_paused_state_and_recent_throughput(
    database_url: str, db: Db
) -> None:
    with trio.fail_after(20):
        async with open_dashboard(database_url) as (client, engine):
            await engine.enqueue("mail", SendEmail(to="a"))
            await engine.enqueue("mail", SendEmail(to="b"))
            await db.add_finished(2, "failed", queue="mail", kind="send_email")
            await db.add_finished(
                30, "completed", queue="mail", kind="send_email", ago=timedelta(seconds=15)
            )
            # Older than the chart's window: counted as completed, not as throughput.
            await db.add_finished(
                5, "completed", queue="mail", kind="send_email", ago=timedelta(minutes=30)
            )
            await engine.pause_queue("reports")
            status, html = await _page(client, "/ui/")
    assert status == 200
    mail = html.split('data-queue="mail"')[1].split("</tr>")[0]
    assert re.search(r'data-count="pending"><a [^>]*>2</a>', mail)
    assert re.search(r'data-count="failed"><a [^>]*>2</a>', mail)
    assert 'data-count="completed">35<' in mail
    # 30 completions in 5 minutes: 0.10 per second, drawn as one full-height bar.
    assert "0.10/s" in mail
    assert mail.count("<rect x=") == 1
    assert 'data-state="active"' in mail
    reports = html.split('data-queue="reports"')[1].split("</tr>")[0]
    assert 'data-state="paused"' in reports
    assert "/ui/queues/reports/resume" in reports


async def test_queue_throughput_counts_completions_per_bucket_oldest_first(
    database_url: str, db: Db
) -> None:
    with trio.fail_after(20):
        async with open_dashboard(database_url) as (_, engine):
            await db.add_finished(3, "completed", queue="a", kind="k", ago=timedelta(seconds=5))
            await db.add_finished(2, "completed", queue="a", kind="k", ago=timedelta(seconds=25))
            await db.add_finished(4, "failed", queue="a", kind="k", ago=timedelta(seconds=5))
            await db.add_finished(1, "completed", queue="b", kind="k", ago=timedelta(minutes=9))
            found = await engine.queue_throughput(window=60, bucket=10)
    assert [(t.queue, t.completed) for t in found] == [("a", (0, 0, 0, 2, 0, 3))]
    assert found[0].per_second == 5 / 60


# --- tasks ------------------------------------------------------------------------------------


async def test_task_list_filters_by_queue_status_kind_and_id(database_url: str, db: Db) -> None:
    with trio.fail_after(20):
        async with open_dashboard(database_url) as (client, engine):
            mail = await engine.enqueue("mail", SendEmail(to="a"))
            report = await engine.enqueue(Report())
            await db.add_finished(1, "failed", queue="mail", kind="send_email")
            failed_id = await db.fetchval("SELECT id FROM iron_defer.tasks WHERE status='failed'")
            _, everything = await _page(client, "/ui/tasks")
            _, by_queue = await _page(client, "/ui/tasks?queue=reports")
            _, by_status = await _page(client, "/ui/tasks?queue=mail&status=failed")
            _, by_kind = await _page(client, "/ui/tasks?kind=report")
            _, by_id = await _page(client, f"/ui/tasks?q={mail.id}")
            _, by_part = await _page(client, f"/ui/tasks?q={str(report.id)[:28]}")
            bad_status, _ = await _page(client, "/ui/tasks?status=exploded")
            bad_search, _ = await _page(client, "/ui/tasks?q=<script>")
    assert all(str(t) in everything for t in (mail.id, report.id, failed_id))
    assert str(report.id) in by_queue and str(mail.id) not in by_queue
    assert str(failed_id) in by_status and str(mail.id) not in by_status
    assert 'value="failed" selected' in by_status  # the filter form keeps what was chosen
    assert str(report.id) in by_kind and str(mail.id) not in by_kind
    assert str(mail.id) in by_id and str(report.id) not in by_id
    assert str(report.id) in by_part and str(mail.id) not in by_part
    assert (bad_status, bad_search) == (400, 400)


async def test_task_page_shows_fields_and_hides_the_payload_unless_configured(
    database_url: str,
) -> None:
    with trio.fail_after(20):
        async with open_dashboard(database_url) as (client, engine):
            task = await engine.enqueue("mail", SendEmail(to="private@example.com"))
            status, hidden = await _page(client, f"/ui/tasks/{task.id}")
        async with open_dashboard(database_url, ui_show_payloads=True) as (client, _):
            _, shown = await _page(client, f"/ui/tasks/{task.id}")
    assert status == 200
    assert "send_email" in hidden and "0 of 3" in hidden and "pending" in hidden
    assert "private@example.com" not in hidden
    assert "ui_show_payloads" in hidden
    assert "private@example.com" in shown


async def test_task_page_shows_the_audit_history_when_the_audit_log_is_on(
    database_url: str,
) -> None:
    with trio.fail_after(20):
        async with open_dashboard(database_url, audit_log=True) as (client, engine):
            task = await engine.enqueue("mail", SendEmail(to="a"))
            await engine.cancel(task.id)
            _, html = await _page(client, f"/ui/tasks/{task.id}")
    history = html.split('id="h-audit"')[1]
    assert "<td>enqueue</td>" in history and "<td>cancel</td>" in history


async def test_unknown_and_malformed_task_ids_get_a_friendly_not_found_page(
    database_url: str,
) -> None:
    with trio.fail_after(20):
        async with open_dashboard(database_url) as (client, _):
            missing, missing_html = await _page(
                client, "/ui/tasks/0190f0c4-0000-7000-8000-000000000000"
            )
            malformed, _ = await _page(client, "/ui/tasks/not-an-id")
            nowhere, nowhere_html = await _page(client, "/ui/no/such/page")
    assert (missing, malformed, nowhere) == (404, 404, 404)
    assert "Page not found" in nowhere_html
    assert "Task not found" in missing_html and "<html" in missing_html


# --- actions ----------------------------------------------------------------------------------


async def test_cancel_needs_the_csrf_token_and_then_cancels_the_row(
    database_url: str, db: Db
) -> None:
    with trio.fail_after(20):
        async with open_dashboard(database_url) as (client, engine):
            task = await engine.enqueue("mail", SendEmail(to="a"))
            confirm_url = f"/ui/tasks/{task.id}/cancel"
            token = await _csrf(client, confirm_url)
            forged = await client.post(confirm_url, form={"csrf": "guessed"})
            after_forged = await db.fetchval(
                "SELECT status FROM iron_defer.tasks WHERE id = $1", task.id
            )
            done = await client.post(confirm_url, form={"csrf": token})
            after = await db.fetchval("SELECT status FROM iron_defer.tasks WHERE id = $1", task.id)
            again = await client.post(confirm_url, form={"csrf": token})
    assert forged.status_code == 403 and after_forged == "pending"
    assert done.status_code == 303
    assert done.headers["Location"] == f"/ui/tasks/{task.id}?notice=cancelled"
    assert after == "cancelled"
    # Cancelling twice is a conflict, answered with a page that says why.
    assert again.status_code == 409
    assert "cannot be cancelled" in await again.get_data(as_text=True)


async def test_retry_signal_pause_and_resume_change_the_rows(database_url: str, db: Db) -> None:
    with trio.fail_after(20):
        async with open_dashboard(database_url) as (client, _):
            await db.add_finished(1, "failed", queue="mail", kind="send_email")
            failed_id = await db.fetchval("SELECT id FROM iron_defer.tasks")
            token = await _csrf(client, f"/ui/tasks/{failed_id}/retry")
            retried = await client.post(f"/ui/tasks/{failed_id}/retry", form={"csrf": token})
            retried_status = await db.fetchval(
                "SELECT status FROM iron_defer.tasks WHERE id = $1", failed_id
            )
            paused = await client.post("/ui/queues/mail/pause", form={"csrf": token})
            pauses = await db.fetchval("SELECT count(*) FROM iron_defer.queue_pauses")
            resumed = await client.post("/ui/queues/mail/resume", form={"csrf": token})
            pauses_after = await db.fetchval("SELECT count(*) FROM iron_defer.queue_pauses")
            not_suspended = await client.post(
                f"/ui/tasks/{failed_id}/signal", form={"csrf": token, "payload": "{}"}
            )
            bad_json = await client.post(
                f"/ui/tasks/{failed_id}/signal", form={"csrf": token, "payload": "{nope"}
            )
    assert retried.status_code == 303 and retried_status == "pending"
    assert paused.status_code == 303 and pauses == 1
    assert resumed.status_code == 303 and pauses_after == 0
    assert not_suspended.status_code == 409
    assert bad_json.status_code == 422
    assert "not valid JSON" in await bad_json.get_data(as_text=True)


# --- login ------------------------------------------------------------------------------------


async def test_with_a_token_the_dashboard_asks_for_it_and_keeps_a_strict_session_cookie(
    database_url: str,
) -> None:
    with trio.fail_after(20):
        async with open_dashboard(database_url, api_token=TOKEN) as (client, _):
            anonymous = await client.get("/ui/tasks?status=failed")
            token = await _csrf(client, "/ui/login")
            wrong = await client.post("/ui/login", form={"csrf": token, "token": "nope"})
            evil_next = await client.post(
                "/ui/login", form={"csrf": token, "token": TOKEN, "next": "https://evil.test/"}
            )
            cookie_header = evil_next.headers.get("Set-Cookie", "")
            overview, _ = await _page(client, "/ui/")
            # The session cookie is the dashboard's: the REST API still wants the bearer.
            api = await client.get("/tasks")
    assert anonymous.status_code == 303
    assert anonymous.headers["Location"] == "/ui/login?next=/ui/tasks?status%3Dfailed"
    assert wrong.status_code == 401
    assert evil_next.status_code == 303 and evil_next.headers["Location"] == "/ui/"
    assert _security.SESSION_COOKIE in cookie_header
    assert "HttpOnly" in cookie_header and "SameSite=Strict" in cookie_header
    assert TOKEN not in cookie_header
    assert overview == 200
    assert api.status_code == 401


async def test_a_post_without_a_session_changes_nothing(database_url: str, db: Db) -> None:
    with trio.fail_after(20):
        async with open_dashboard(database_url, api_token=TOKEN) as (client, engine):
            task = await engine.enqueue("mail", SendEmail(to="a"))
            token = await _csrf(client, "/ui/login")
            response = await client.post(f"/ui/tasks/{task.id}/cancel", form={"csrf": token})
            status = await db.fetchval("SELECT status FROM iron_defer.tasks WHERE id = $1", task.id)
    assert response.status_code == 401
    assert status == "pending"


async def test_dashboard_routes_stay_out_of_the_openapi_document(database_url: str) -> None:
    with trio.fail_after(20):
        async with open_dashboard(database_url) as (client, _):
            document = await (await client.get("/openapi.json")).get_json()
            css = await client.get("/ui/static/ui.css")
    assert not [path for path in document["paths"] if path.startswith("/ui")]
    assert css.status_code == 200


async def test_signal_resumes_a_suspended_task_with_the_json_payload(
    database_url: str, db: Db
) -> None:
    with trio.fail_after(20):
        async with open_dashboard(database_url) as (client, engine):
            task = await engine.enqueue("mail", SendEmail(to="a"))
            await db.execute(
                "UPDATE iron_defer.tasks SET status = 'suspended', suspended_at = now() "
                "WHERE id = $1",
                task.id,
            )
            _, page = await _page(client, f"/ui/tasks/{task.id}")
            token = await _csrf(client, f"/ui/tasks/{task.id}/signal")
            done = await client.post(
                f"/ui/tasks/{task.id}/signal",
                form={"csrf": token, "payload": '{"approved": true}'},
            )
            row = await db.fetchrow(
                "SELECT status, signal_payload FROM iron_defer.tasks WHERE id = $1", task.id
            )
    assert f"/ui/tasks/{task.id}/signal" in page and f"/ui/tasks/{task.id}/cancel" in page
    assert done.status_code == 303
    assert done.headers["Location"] == f"/ui/tasks/{task.id}?notice=signalled"
    assert row["status"] == "pending"
    assert json.loads(row["signal_payload"]) == {"approved": True}


async def test_queue_throughput_refuses_a_window_outside_one_to_a_thousand_buckets(
    database_url: str,
) -> None:
    with trio.fail_after(20):
        async with open_dashboard(database_url) as (_, engine):
            for window, bucket in ((5.0, 10.0), (60.0, 0.0), (1e6, 1.0)):
                with pytest.raises(iron_defer.InvalidTaskError):
                    await engine.queue_throughput(window=window, bucket=bucket)

"""The dashboard in a real browser: headless Chromium (the system's /usr/bin/chromium, driven
by Playwright) against the real ``iron-defer-trio serve`` process, logged in with the API
token. Each page is photographed into test-output/dashboard/ (git-ignored).

A missing Chromium fails these tests: the dashboard is only tested when a browser runs it.
"""

from __future__ import annotations

import asyncio
import re
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.e2e.serving import Server, base_env, start_server, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator

    from playwright.sync_api import Page

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "dashboard"
TOKEN = "e2e-dashboard-token-42"
#: Long enough for a few auto-refresh rounds (every 2 s) and a task run.
WAIT_MS = 20_000

#: A task that fails until someone "fixes the bug" (creates ./fixed next to the server).
FIXABLE = """

class Fixable(iron_defer.Task):
    KIND: ClassVar[str] = "fixable"

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        from pathlib import Path

        if not Path("fixed").exists():
            raise RuntimeError("the bug is not fixed yet")
"""


@pytest.fixture
def server(database_url: str, app_dir: Path) -> Iterator[Server]:
    with (app_dir / "e2e_tasks.py").open("a") as module:
        module.write(FIXABLE)
    running = start_server(
        "--app",
        "e2e_tasks",
        "--queue",
        "default=4",
        cwd=app_dir,
        env=base_env(
            DATABASE_URL=database_url,
            IRON_DEFER__SERVER__API_TOKEN=TOKEN,
            IRON_DEFER__WORKER__SHUTDOWN_TIMEOUT="5s",
        ),
        token=TOKEN,
    )
    try:
        yield running
    finally:
        running.stop()


@contextmanager
def browser_page() -> Iterator[Page]:
    """A page in headless Chromium. Fails (never skips) when Chromium is not installed."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)")
    # The test process has trio-asyncio's event loop policy installed (the suite's database
    # helpers use it); Playwright's sync API needs a plain asyncio loop of its own.
    policy = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    try:
        with sync_playwright() as playwright:
            # executable_path: the system's Chromium; Playwright downloads no browser.
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
            try:
                context = browser.new_context(viewport={"width": 1200, "height": 760})
                page = context.new_page()
                page.set_default_timeout(WAIT_MS)
                yield page
            finally:
                browser.close()
    finally:
        asyncio.set_event_loop_policy(policy)


def snap(page: Page, name: str) -> Path:
    """Photograph the whole page into the test output."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def log_in(page: Page, server: Server, path: str = "/ui/") -> None:
    page.goto(server.url + path)
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.get_by_label("API token").fill("not the token")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("not the server's API token")
    page.get_by_label("API token").fill(TOKEN)
    snap(page, "login")
    page.get_by_role("button", name="Log in").click()
    # Logged in once the dashboard's navigation shows (the page it was asked for).
    expect(page.get_by_role("navigation", name="Dashboard")).to_be_visible()


def enqueue(server: Server, kind: str, payload: object, **extra: object) -> str:
    created = server.request("POST", "/tasks", {"kind": kind, "payload": payload, **extra})
    assert created.status == 201, created.body
    task_id: str = created.json()["id"]
    return task_id


def status_of(server: Server, task_id: str) -> str:
    status: str = server.request("GET", f"/tasks/{task_id}").json()["status"]
    return status


def test_overview_counts_follow_running_tasks_and_a_queue_pauses_and_resumes(
    server: Server,
) -> None:
    first = enqueue(server, "echo", {"message": "warm-up"})
    wait_for(lambda: status_of(server, first) == "completed")
    with browser_page() as page:
        log_in(page, server)
        # Keyboard first: Tab lands on the skip link, Enter moves focus to the content.
        page.keyboard.press("Tab")
        expect(page.locator(":focus")).to_have_text("Skip to content")
        page.keyboard.press("Enter")
        expect(page.locator("main")).to_be_focused()
        row = page.locator('tr[data-queue="default"]')
        expect(row.locator('[data-count="completed"]')).to_have_text("1")

        row.get_by_role("link", name="Pause queue default").click()
        expect(page.get_by_role("heading", name="Pause queue")).to_be_visible()
        snap(page, "confirm-pause")
        page.get_by_role("button", name="Yes, pause").click()
        expect(page.get_by_role("status").first).to_contain_text("The queue is paused")
        expect(row.locator("[data-state]")).to_have_text("paused")

        # Tasks enqueued while paused wait; the page shows them without being reloaded.
        for n in range(3):
            enqueue(server, "echo", {"message": f"m{n}"})
        expect(row.locator('[data-count="pending"] a')).to_have_text("3")
        snap(page, "overview-paused")

        row.get_by_role("link", name="Resume queue default").click()
        page.get_by_role("button", name="Yes, resume").click()
        expect(row.locator("[data-state]")).to_have_text("active")
        expect(row.locator('[data-count="completed"]')).to_have_text("4")
        expect(row.locator('[data-count="pending"] a')).to_have_text("0")
        expect(row.locator("[data-rate]")).not_to_have_text("0/s")
        snap(page, "overview")


def test_filter_the_list_retry_a_failed_task_and_cancel_a_pending_one(
    server: Server, app_dir: Path
) -> None:
    failing = enqueue(server, "fixable", {}, maxAttempts=1)
    echoes = [enqueue(server, "echo", {"message": f"m{n}"}) for n in range(3)]
    # No worker serves queue "held": the task stays pending until someone cancels it.
    held = enqueue(server, "sleep", {"seconds": 1}, queue="held")
    wait_for(lambda: status_of(server, failing) == "failed")
    wait_for(lambda: all(status_of(server, e) == "completed" for e in echoes))
    with browser_page() as page:
        log_in(page, server, "/ui/tasks")
        rows = page.locator("tr[data-task]")
        expect(rows).to_have_count(5)

        page.get_by_label("Status").select_option("failed")
        page.get_by_role("button", name="Filter").click()
        expect(rows).to_have_count(1)
        expect(rows.first).to_have_attribute("data-task", failing)
        # Auto-refresh keeps the filter: a new task of another status never shows up here.
        enqueue(server, "echo", {"message": "later"})
        stamp = page.locator("#refreshed")
        for _ in range(2):  # two refreshes: the second surely began after the enqueue
            before = stamp.inner_text()
            expect(stamp).not_to_have_text(before)
        expect(rows).to_have_count(1)
        expect(page.get_by_label("Status")).to_have_value("failed")
        snap(page, "tasks-failed")

        page.get_by_role("link", name="Clear").click()
        page.get_by_label("Queue").fill("held")
        page.get_by_role("button", name="Filter").click()
        expect(rows).to_have_count(1)
        expect(rows.first).to_have_attribute("data-task", held)
        page.get_by_label("Queue").fill("")
        page.get_by_label("Task id").fill(echoes[1])
        page.get_by_role("button", name="Filter").click()
        expect(rows).to_have_count(1)
        expect(rows.first).to_have_attribute("data-task", echoes[1])

        # Open the failed task, fix the bug, retry it.
        page.goto(server.url + "/ui/tasks?status=failed")
        page.get_by_role("link", name=failing).click()
        expect(page.locator("#task-status")).to_have_text("failed")
        expect(page.locator("#last-error")).to_contain_text("the bug is not fixed yet")
        snap(page, "task-failed")
        (app_dir / "fixed").write_text("yes")
        page.get_by_role("link", name="Retry").click()
        snap(page, "confirm-retry")
        page.get_by_role("button", name="Yes, retry").click()
        expect(page.get_by_role("status").first).to_contain_text("pending again")
        expect(page.locator("#task-status")).to_have_text("completed")
        assert status_of(server, failing) == "completed"
        snap(page, "task-completed")

        # Cancel the pending one.
        page.goto(server.url + f"/ui/tasks/{held}")
        expect(page.locator("#task-status")).to_have_text("pending")
        page.get_by_role("link", name="Cancel").click()
        page.get_by_role("button", name="Yes, cancel").click()
        expect(page.locator("#task-status")).to_have_text("cancelled")
        assert status_of(server, held) == "cancelled"
        expect(page.get_by_role("link", name=re.compile("^Cancel$"))).to_have_count(0)

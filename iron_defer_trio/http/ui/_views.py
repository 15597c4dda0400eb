"""Dashboard pages and actions.

Pages are rendered on the server with Jinja2 templates; the only script refreshes the live
part of a page in place (the filters live outside it, so they survive). Every action is a
GET that shows a confirmation page and a POST (with the CSRF token) that does it, so each
step works without JavaScript and by keyboard. The dashboard's routes are not part of the
REST API: they are not in ROUTES nor in the OpenAPI document.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode
from uuid import UUID

from quart import Blueprint, Response, g, render_template, request, url_for

from iron_defer_trio.domain import TaskStatus
from iron_defer_trio.domain.limits import QUEUE_NAME_PATTERN
from iron_defer_trio.errors import (
    InvalidTaskError,
    InvalidTransition,
    IronDeferError,
    StoreUnavailable,
    TaskNotFound,
)
from iron_defer_trio.http._errors import classify, log_request_failure
from iron_defer_trio.http._handlers import state
from iron_defer_trio.http.ui import _chart, _security

if TYPE_CHECKING:
    from iron_defer_trio.config import Settings
    from iron_defer_trio.domain import AuditEntry, QueueStatistics, QueueThroughput, TaskRecord
    from iron_defer_trio.observability import Logger

UI_PREFIX = "/ui"
#: The throughput chart: completions per 10 s over the last 5 minutes.
THROUGHPUT_WINDOW = 300.0
THROUGHPUT_BUCKET = 10.0
PAGE_SIZE = 50
#: How often the live part of a page reloads, in milliseconds.
REFRESH_MS = 2000
_AUDIT_LIMIT = 200
_MAX_FILTER = 255

#: Outcome notices, by the code a redirect carries (never free text from the query string).
NOTICES = {
    "cancelled": "The task was cancelled.",
    "cancel_requested": "Cancellation was requested; the task stops on the engine running it.",
    "retried": "The task is pending again, with a fresh attempt budget.",
    "signalled": "The signal was delivered; the task is pending again.",
    "paused": "The queue is paused: no engine claims from it until it is resumed.",
    "resumed": "The queue is resumed; its workers claim again.",
    "logged_out": "You are logged out.",
}


@dataclass(frozen=True)
class QueueRow:
    """One queue on the overview: its counts and its recent throughput."""

    stats: QueueStatistics
    throughput: tuple[int, ...]
    bars: list[_chart.Bar]
    per_second: float


@dataclass(frozen=True)
class TaskAction:
    """An action offered on a task page, and its confirmation wording."""

    name: str
    label: str
    question: str
    danger: bool = False


_TASK_ACTIONS = {
    "cancel": TaskAction("cancel", "Cancel", "Cancel this task?", danger=True),
    "retry": TaskAction("retry", "Retry", "Run this task again with a fresh attempt budget?"),
    "signal": TaskAction("signal", "Signal", "Resume this suspended task with a payload?"),
}


def task_actions(record: TaskRecord) -> list[TaskAction]:
    """The actions that apply to a task in its current status."""
    status = record.status
    found = []
    if status in (TaskStatus.PENDING, TaskStatus.SUSPENDED) or (
        status is TaskStatus.RUNNING and record.cancel_requested_at is None
    ):
        found.append(_TASK_ACTIONS["cancel"])
    if status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        found.append(_TASK_ACTIONS["retry"])
    if status is TaskStatus.SUSPENDED:
        found.append(_TASK_ACTIONS["signal"])
    return found


class PageError(Exception):
    """A request the dashboard answers with its error page."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail


def create_dashboard(settings: Settings, log: Logger) -> Blueprint:
    """The dashboard blueprint, mounted at :data:`UI_PREFIX`."""
    ui = Blueprint(
        "ui",
        __name__,
        url_prefix=UI_PREFIX,
        template_folder="templates",
        static_folder="static",
        static_url_path="/static",
    )
    token_secret = settings.server.api_token
    token = None if token_secret is None else token_secret.get_secret_value()

    @ui.before_request
    async def guard() -> Response | None:
        g.ui_csrf = request.cookies.get(_security.CSRF_COOKIE)
        g.ui_new_csrf = None
        if not g.ui_csrf:
            g.ui_csrf = g.ui_new_csrf = _security.new_csrf_token()
        endpoint = request.endpoint or ""
        if request.method == "POST":
            form = await request.form
            cookie = request.cookies.get(_security.CSRF_COOKIE)
            if not _security.csrf_valid(cookie, form.get("csrf")):
                raise PageError(
                    403,
                    "Form expired",
                    "This form could not be verified. Reload the page and try again.",
                )
        g.ui_logged_in = token is None or _security.session_valid(
            request.cookies.get(_security.SESSION_COOKIE), token
        )
        if g.ui_logged_in or endpoint in ("ui.static", "ui.login", "ui.login_submit"):
            return None
        if request.method == "GET":
            target = request.full_path.rstrip("?")
            return _redirect(url_for("ui.login", next=target))
        raise PageError(401, "Logged out", "Log in again, then repeat the action.")

    @ui.after_request
    async def set_cookies(response: Response) -> Response:
        if g.get("ui_new_csrf"):
            response.set_cookie(
                _security.CSRF_COOKIE,
                g.ui_new_csrf,
                path=_security.COOKIE_PATH,
                httponly=True,
                samesite="Strict",
                secure=request.scheme == "https",
            )
        # Pages show live state and, behind a token, private data: never cache them.
        if response.mimetype == "text/html":
            response.headers["Cache-Control"] = "no-store"
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @ui.context_processor
    async def common() -> dict[str, Any]:
        return {
            "csrf": g.get("ui_csrf", ""),
            "auth_enabled": token is not None,
            "logged_in": g.get("ui_logged_in", False),
            "notice": NOTICES.get(request.args.get("notice", "")),
            "refresh_ms": REFRESH_MS,
            "ago": _ago,
            "rate": _rate,
            "when": _when,
        }

    @ui.errorhandler(PageError)
    async def page_error(exc: PageError) -> tuple[str, int]:
        return await render_template(
            "ui/error.html", title=exc.title, detail=exc.detail
        ), exc.status

    @ui.errorhandler(IronDeferError)
    async def engine_error(exc: IronDeferError) -> tuple[str, int]:
        status, code = classify(exc)
        if isinstance(exc, TaskNotFound):
            title, detail = "Task not found", "No task has this id (it may have been deleted)."
        elif isinstance(exc, InvalidTransition):
            title = "Not possible now"
            detail = (
                f"The task is {exc.status}, so it cannot be {_PAST.get(exc.action, exc.action)}"
                " any more. The page below shows its current state."
            )
        elif isinstance(exc, InvalidTaskError):
            title, detail = "Invalid request", str(exc)
        elif isinstance(exc, StoreUnavailable):
            title, detail = "Database unavailable", "The database does not answer; retry later."
        else:
            title, detail = "Something went wrong", "An unexpected error occurred; it is logged."
        if status >= 500:
            log_request_failure(log, code, exc)
        return await render_template(
            "ui/error.html", title=title, detail=detail, task_id=getattr(exc, "task_id", None)
        ), status

    # --- login ------------------------------------------------------------------------------

    @ui.get("/login")
    async def login() -> str | Response:
        if token is None or g.ui_logged_in:
            return _redirect(_safe_next(request.args.get("next")))
        return await render_template("ui/login.html", next=_safe_next(request.args.get("next")))

    @ui.post("/login")
    async def login_submit() -> Response | tuple[str, int]:
        form = await request.form
        target = _safe_next(form.get("next"))
        if token is None:
            return _redirect(target)
        if not _security.token_matches(form.get("token", ""), token):
            page = await render_template(
                "ui/login.html", next=target, error="That token is not the server's API token."
            )
            return page, 401
        response = _redirect(target)
        response.set_cookie(
            _security.SESSION_COOKIE,
            _security.session_value(token),
            path=_security.COOKIE_PATH,
            httponly=True,
            samesite="Strict",
            secure=request.scheme == "https",
        )
        return response

    @ui.post("/logout")
    async def logout() -> Response:
        response = _redirect(url_for("ui.login" if token else "ui.overview", notice="logged_out"))
        response.delete_cookie(_security.SESSION_COOKIE, path=_security.COOKIE_PATH)
        return response

    # --- pages ------------------------------------------------------------------------------

    @ui.get("/")
    async def overview() -> str:
        engine = state().engine
        stats = await engine.queue_stats()
        throughput = await engine.queue_throughput(
            window=THROUGHPUT_WINDOW, bucket=THROUGHPUT_BUCKET
        )
        return await render_template(
            "ui/overview.html",
            queues=_queue_rows(stats, throughput),
            window_minutes=int(THROUGHPUT_WINDOW // 60),
            bucket_seconds=int(THROUGHPUT_BUCKET),
            chart_width=_chart.WIDTH,
            chart_height=_chart.HEIGHT,
        )

    @ui.get("/tasks")
    async def tasks() -> str | tuple[str, int]:
        filters = _task_filters()
        engine = state().engine
        error = None
        records: list[TaskRecord] = []
        more = False
        search = filters["q"]
        try:
            exact = _as_uuid(search)
            if exact is not None:
                try:
                    records = [await engine.get(exact)]
                except TaskNotFound:
                    records = []
            else:
                found = await engine.list(
                    queue=filters["queue"] or None,
                    status=filters["status"] or None,
                    kind=filters["kind"] or None,
                    limit=PAGE_SIZE + 1,
                    before=_as_uuid(filters["cursor"]),
                    id_prefix=search or None,
                )
                more = len(found) > PAGE_SIZE
                records = found[:PAGE_SIZE]
        except InvalidTaskError as exc:
            error = str(exc)
        next_link = None
        if more and records:
            next_args = {k: v for k, v in filters.items() if v and k != "cursor"}
            next_args["cursor"] = str(records[-1].id)
            next_link = f"{url_for('ui.tasks')}?{urlencode(next_args)}"
        page = await render_template(
            "ui/tasks.html",
            records=records,
            filters=filters,
            statuses=[status.value for status in TaskStatus],
            next_link=next_link,
            first_link=bool(filters["cursor"]),
            exact=_as_uuid(search) is not None,
            error=error,
        )
        return (page, 400) if error else page

    @ui.get("/tasks/<task_id>")
    async def task(task_id: str) -> str:
        current = state()
        record = await current.engine.get(_task_id(task_id))
        audit: list[AuditEntry] = []
        if current.settings.database.audit_log:
            audit = await current.engine.audit_log(record.id, limit=_AUDIT_LIMIT)
        return await render_template(
            "ui/task.html",
            task=record,
            actions=task_actions(record),
            audit=audit,
            audit_enabled=current.settings.database.audit_log,
            show_payloads=current.settings.server.ui_show_payloads,
            checkpoint_bytes=_json_size(record.checkpoint),
            payload_bytes=_json_size(record.payload),
            pretty=_pretty,
        )

    # --- task actions -----------------------------------------------------------------------

    @ui.get("/tasks/<task_id>/<action>")
    async def confirm_task_action(task_id: str, action: str) -> str:
        chosen = _TASK_ACTIONS.get(action)
        if chosen is None:
            raise PageError(404, "Page not found", "There is no such action.")
        record = await state().engine.get(_task_id(task_id))
        return await render_template(
            "ui/confirm.html",
            action=chosen,
            task=record,
            applies=chosen in task_actions(record),
            past=_PAST[action],
            post_url=url_for("ui.task_action", task_id=str(record.id), action=action),
            back_url=url_for("ui.task", task_id=str(record.id)),
            payload_text="null",
        )

    @ui.post("/tasks/<task_id>/<action>")
    async def task_action(task_id: str, action: str) -> Response | tuple[str, int]:
        the_id = _task_id(task_id)
        engine = state().engine
        if action == "cancel":
            record = await engine.cancel(the_id)
            notice = "cancel_requested" if record.status is TaskStatus.RUNNING else "cancelled"
        elif action == "retry":
            await engine.retry(the_id)
            notice = "retried"
        elif action == "signal":
            form = await request.form
            text = form.get("payload", "null")
            try:
                payload = json.loads(text or "null")
            except ValueError as exc:
                record = await engine.get(the_id)
                page = await render_template(
                    "ui/confirm.html",
                    action=_TASK_ACTIONS["signal"],
                    task=record,
                    applies=True,
                    post_url=url_for("ui.task_action", task_id=task_id, action="signal"),
                    back_url=url_for("ui.task", task_id=task_id),
                    payload_text=text,
                    payload_error=f"The payload is not valid JSON: {exc}",
                )
                return page, 422
            await engine.signal(the_id, payload)
            notice = "signalled"
        else:
            raise PageError(404, "Page not found", "There is no such action.")
        return _redirect(url_for("ui.task", task_id=str(the_id), notice=notice))

    # --- queue actions ----------------------------------------------------------------------

    @ui.get("/queues/<name>/<action>")
    async def confirm_queue_action(name: str, action: str) -> str:
        _check_queue_action(name, action)
        verb = "Pause" if action == "pause" else "Resume"
        question = (
            f"Pause queue {name}? No engine claims its tasks until it is resumed; running tasks "
            "finish."
            if action == "pause"
            else f"Resume queue {name}? Its workers start claiming at once."
        )
        return await render_template(
            "ui/confirm.html",
            action=TaskAction(action, verb, question, danger=action == "pause"),
            task=None,
            queue=name,
            applies=True,
            post_url=url_for("ui.queue_action", name=name, action=action),
            back_url=url_for("ui.overview"),
        )

    @ui.post("/queues/<name>/<action>")
    async def queue_action(name: str, action: str) -> Response:
        _check_queue_action(name, action)
        engine = state().engine
        if action == "pause":
            await engine.pause_queue(name)
        else:
            await engine.resume_queue(name)
        notice = "paused" if action == "pause" else "resumed"
        return _redirect(url_for("ui.overview", notice=notice))

    return ui


async def not_found_page() -> Response:
    """The dashboard's 404 page, for a /ui path no route matches (the app's handler calls
    this, since no blueprint view ran)."""
    body = await render_template(
        "ui/error.html", title="Page not found", detail="There is no dashboard page here."
    )
    return Response(body, status=404, content_type="text/html; charset=utf-8")


# --- helpers --------------------------------------------------------------------------------


def _redirect(location: str) -> Response:
    # 303: after a POST the browser follows with a GET, so a reload never repeats an action.
    return Response("", status=303, headers={"Location": location})


_PAST = {"cancel": "cancelled", "retry": "retried", "signal": "signalled"}
_HEX_ID = re.compile(r"^[0-9a-fA-F-]{1,36}$")


def _queue_rows(stats: list[QueueStatistics], throughput: list[QueueThroughput]) -> list[QueueRow]:
    by_queue = {t.queue: t for t in throughput}
    empty = (0,) * int(THROUGHPUT_WINDOW // THROUGHPUT_BUCKET)
    rows = []
    for queue in stats:
        recent = by_queue.get(queue.queue)
        counts = recent.completed if recent else empty
        rows.append(
            QueueRow(
                stats=queue,
                throughput=counts,
                bars=_chart.bars(counts),
                per_second=recent.per_second if recent else 0.0,
            )
        )
    return rows


def _task_filters() -> dict[str, str]:
    """The task list's filters from the query string (empty string: not filtered)."""
    filters = {}
    for key in ("queue", "status", "kind", "q", "cursor"):
        value = request.args.get(key, "").strip()
        if len(value) > _MAX_FILTER or "\x00" in value:
            raise PageError(400, "Invalid filter", f"The {key} filter is too long or invalid.")
        filters[key] = value
    if filters["status"] and filters["status"] not in {s.value for s in TaskStatus}:
        raise PageError(400, "Invalid filter", "Choose a status from the list.")
    if filters["q"] and not _HEX_ID.fullmatch(filters["q"]):
        raise PageError(400, "Invalid search", "Search by task id: hexadecimal digits and '-'.")
    return filters


def _as_uuid(text: str) -> UUID | None:
    if len(text) < 32:
        return None
    try:
        return UUID(text)
    except ValueError:
        return None


def _task_id(raw: str) -> UUID:
    found = _as_uuid(raw)
    if found is None:
        raise PageError(404, "Task not found", "That is not a task id.")
    return found


def _check_queue_action(name: str, action: str) -> None:
    if action not in ("pause", "resume"):
        raise PageError(404, "Page not found", "There is no such action.")
    if not QUEUE_NAME_PATTERN.fullmatch(name):
        raise PageError(400, "Invalid queue name", "That is not a queue name.")


def _safe_next(target: str | None) -> str:
    """Where to go after logging in: a dashboard path only (no open redirect)."""
    if target and target.startswith(f"{UI_PREFIX}/") and not target.startswith("//"):
        return target
    return f"{UI_PREFIX}/"


def _json_size(value: Any) -> int | None:
    if value is None:
        return None
    return len(json.dumps(value, separators=(",", ":")).encode())


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)


def _ago(seconds: float | None) -> str:
    """A duration for people: 4 s, 3 min 2 s, 2 h 5 min."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def _rate(per_second: float) -> str:
    """Completions per second with enough digits that a slow queue does not read as idle."""
    if per_second == 0:
        return "0"
    if per_second < 0.01:
        return f"{per_second:.3f}"
    return f"{per_second:.2f}" if per_second < 10 else f"{per_second:.1f}"


def _when(moment: datetime | None) -> str:
    """A timestamp in UTC, to the second."""
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

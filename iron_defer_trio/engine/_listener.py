"""Turns NOTIFY messages into wake-ups of the queue workers and cancellations of running
tasks.

Notifications only cut latency: the workers poll anyway, and the heartbeat reports cancel
requests, so a lost notification, a dead listener or a proxy that drops LISTEN (PgBouncer in
transaction mode) costs at most one poll interval (wake-ups) or one heartbeat interval
(cancellations). After every (re)connect all queues are woken, for what may have been missed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from iron_defer_trio.engine._health import Backoff, DatabaseHealth
from iron_defer_trio.errors import StoreError
from iron_defer_trio.store.protocol import NotificationKind

if TYPE_CHECKING:
    import random
    from collections.abc import Callable

    from iron_defer_trio.observability.logs import Logger
    from iron_defer_trio.store.protocol import Listener, TaskStore

#: A LISTEN connection can die silently (a half-open TCP connection); pinging it this often
#: bounds how long we sit on a dead one.
PING_INTERVAL = 15.0


class NotificationListener:
    """Keeps one LISTEN session open, reconnecting with backoff."""

    def __init__(
        self,
        store: TaskStore,
        health: DatabaseHealth,
        log: Logger,
        rng: random.Random,
        *,
        wake: Callable[[str], None],
        wake_all: Callable[[], None],
        cancel: Callable[[str], None],
    ) -> None:
        self._store = store
        self._health = health
        self._log = log
        self._backoff = Backoff(rng)
        self._wake = wake
        self._wake_all = wake_all
        self._cancel = cancel
        self.connected = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled. Starting does not wait for the connection: polling covers."""
        task_status.started()
        while True:
            try:
                async with self._store.listen() as listener:
                    self.connected = True
                    self._backoff.reset()
                    self._wake_all()
                    await self._pump(listener)
                self._log.info("listener_disconnected")
            except StoreError as exc:
                self._health.failed("listener", exc)
            finally:
                self.connected = False
            await trio.sleep(self._backoff.next_delay())

    async def _pump(self, listener: Listener) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keep_alive, listener, nursery.cancel_scope)
            async for notification in listener.notifications:
                if notification.kind is NotificationKind.CANCEL:
                    self._cancel(notification.value)
                else:
                    self._wake(notification.value)
            nursery.cancel_scope.cancel()

    async def _keep_alive(self, listener: Listener, scope: trio.CancelScope) -> None:
        while True:
            await trio.sleep(PING_INTERVAL)
            try:
                await listener.ping()
            except StoreError as exc:
                self._health.failed("listener", exc)
                scope.cancel()
                return

"""Shared view of the database's health across an engine's services, and their backoff."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from iron_defer_trio.domain import backoff
from iron_defer_trio.errors import StoreError, StoreUnavailable

if TYPE_CHECKING:
    import random

    from iron_defer_trio.observability.logs import Logger

#: First retry after a database error, in seconds; doubles per consecutive failure.
RECONNECT_BASE = 0.2
#: Longest wait between retries, so work resumes within seconds of the database returning.
RECONNECT_CAP = 5.0
#: Spread of retry delays, so engines do not reconnect in lockstep.
RECONNECT_JITTER = 0.5


class DatabaseHealth:
    """Logs ``database_unavailable`` once per outage and ``database_recovered`` when any
    service succeeds again, however many services notice the outage."""

    def __init__(self, log: Logger) -> None:
        self._log = log
        self._down_since: float | None = None

    @property
    def available(self) -> bool:
        """False between a failure and the next success."""
        return self._down_since is None

    def failed(self, service: str, exc: StoreError) -> None:
        """Record a failed database call of ``service``."""
        if not isinstance(exc, StoreUnavailable):
            # A refused statement is a bug or a schema problem, not an outage.
            self._log.error("store_error", service=service, error=str(exc), sqlstate=exc.sqlstate)
            return
        if self._down_since is None:
            self._down_since = trio.current_time()
            self._log.warning("database_unavailable", service=service, error=str(exc))

    def succeeded(self, *, started: float) -> None:
        """Record a successful database call that began at trio time ``started``.

        A call that began before the outage was noticed may have finished just before the
        server went away, so its success says nothing about now and does not end the outage
        (it would log a recovery and then a second outage within the same one)."""
        if self._down_since is not None and started >= self._down_since:
            outage = trio.current_time() - self._down_since
            self._down_since = None
            self._log.info("database_recovered", outage_seconds=round(outage, 3))


class Backoff:
    """Consecutive-failure counter with jittered exponential delays."""

    def __init__(
        self, rng: random.Random, *, base: float = RECONNECT_BASE, cap: float = RECONNECT_CAP
    ) -> None:
        self._rng = rng
        self._base = base
        self._cap = cap
        self.failures = 0

    def reset(self) -> None:
        """Forget past failures after a success."""
        self.failures = 0

    def next_delay(self) -> float:
        """Count one more failure and return how long to wait before retrying."""
        self.failures += 1
        return backoff(
            self.failures,
            self._rng.random(),
            base=self._base,
            cap=self._cap,
            jitter=RECONNECT_JITTER,
        )

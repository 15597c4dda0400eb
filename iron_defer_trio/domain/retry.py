"""Backoff arithmetic for task retries and for reconnecting to the database.

Pure functions: the random number is an argument, so tests choose it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Relative spread of retry delays: +-25 %, so failed tasks that were enqueued together do not
#: come back together (a thundering herd on a recovering dependency).
DEFAULT_JITTER = 0.25


class RetryPolicy(BaseModel):
    """How long a failed task waits before its next attempt.

    The delay after attempt ``n`` (1-based) is ``min(base_delay * 2**(n-1), max_delay)``, then
    spread by +-``jitter`` and capped again at ``max_delay``, so it never exceeds it.

    Attributes:
        base_delay: seconds to wait after the first failed attempt.
        max_delay: upper bound of any delay, in seconds.
        jitter: relative spread in [0, 1).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_delay: float = Field(default=5.0, ge=0)
    max_delay: float = Field(default=1800.0, ge=0)
    jitter: float = Field(default=DEFAULT_JITTER, ge=0, lt=1)

    @model_validator(mode="after")
    def _base_not_above_max(self) -> RetryPolicy:
        if self.base_delay > self.max_delay:
            raise ValueError(
                f"base_delay ({self.base_delay:g} s) must not exceed max_delay "
                f"({self.max_delay:g} s)"
            )
        return self

    def delay(self, attempt: int, rand: float) -> float:
        """Seconds to wait after failed attempt number ``attempt``.

        Args:
            attempt: the attempt that just failed, counting from 1.
            rand: a uniform random number in [0, 1).
        """
        return backoff(attempt, rand, base=self.base_delay, cap=self.max_delay, jitter=self.jitter)


def backoff(failures: int, rand: float, *, base: float, cap: float, jitter: float) -> float:
    """Exponential backoff with symmetric jitter, never above ``cap``.

    Args:
        failures: how many consecutive failures happened (>= 1).
        rand: a uniform random number in [0, 1).
        base: the delay after one failure before jitter.
        cap: the largest delay ever returned.
        jitter: relative spread in [0, 1): the result lies in ``[d*(1-jitter), d*(1+jitter)]``
            with ``d = min(base * 2**(failures-1), cap)``, then capped at ``cap``.
    """
    if failures < 1:
        raise ValueError(f"failures counts from 1, got {failures}")
    # 2**64 already exceeds any cap we accept; clamping the exponent keeps huge attempt
    # counts from overflowing a float.
    exponent = min(failures - 1, 64)
    nominal = min(base * 2.0**exponent, cap)
    spread = nominal * jitter * (2.0 * rand - 1.0)
    return max(0.0, min(nominal + spread, cap))

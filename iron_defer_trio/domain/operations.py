"""Values of operators' actions on many tasks at once (bulk retry)."""

from __future__ import annotations

from dataclasses import dataclass

#: Most tasks one bulk retry changes (one statement, one lock set). When more match, a call
#: retries the oldest-finished this many; run it again for the next ones.
MAX_BULK_RETRY = 10_000


@dataclass(frozen=True, slots=True)
class BulkRetry:
    """What a bulk retry found and did.

    ``matched`` is the number to confirm: pass it as ``expect`` to perform the retry.
    """

    #: Tasks the filter matched, at most :data:`MAX_BULK_RETRY` (the ones a retry takes).
    matched: int
    #: More than :data:`MAX_BULK_RETRY` tasks match: a retry takes the oldest-finished ones.
    more: bool
    #: Tasks made pending again (0 for a count without ``expect``).
    retried: int

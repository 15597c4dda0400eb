"""Validation of values that reach the database, shared by every entry point.

The same rules are enforced again by CHECK constraints in the schema; checking here first
gives callers a precise message instead of a constraint name.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from uuid import UUID

from iron_defer_trio.errors import InvalidTaskError

#: Queue names appear in URLs, metric labels and NOTIFY payloads: keep them plain.
QUEUE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
#: Region labels: 1-63 lowercase letters, digits and hyphens, starting with a letter or digit
#: (they appear in metric labels, URLs and config; the schema enforces the same rule).
REGION_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
#: Kinds are dotted identifiers in practice; 255 bytes is generous and bounds index entries.
MAX_KIND_LENGTH = 255
#: priority is a SMALLINT column.
MIN_PRIORITY, MAX_PRIORITY = -32768, 32767
#: A payload is the task's arguments, not its data: large blobs belong elsewhere and would
#: bloat the hot table that every claim scans.
MAX_PAYLOAD_BYTES = 1024 * 1024
#: last_error keeps the head of long messages (tracebacks are logged, not stored).
MAX_ERROR_BYTES = 4096
#: A checkpoint is progress to resume from, not a data store (it sits in the hot table).
MAX_CHECKPOINT_BYTES = 1024 * 1024
#: Longest attempt timeout: 30 days.
MAX_TIMEOUT = 30 * 86_400.0
#: Idempotency keys are producer identifiers (order ids, request ids), not data.
MAX_IDEMPOTENCY_KEY_LENGTH = 255
#: The highest max_attempts accepted; attempts is an INTEGER and a retry loop past this is a bug.
MAX_ATTEMPTS_LIMIT = 1000
#: The range of scheduled_at: wide enough for any real schedule, well inside what both Python
#: and the driver represent (asyncpg maps the calendar's edges to -infinity/infinity).
EARLIEST_SCHEDULE = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_SCHEDULE = datetime(9999, 1, 1, tzinfo=UTC)


def validate_queue_name(queue: str) -> str:
    """Return ``queue`` if it is a valid queue name, else raise :class:`InvalidTaskError`."""
    if not isinstance(queue, str) or not QUEUE_NAME_PATTERN.fullmatch(queue):
        raise InvalidTaskError(
            f"invalid queue name {queue!r}: use 1-128 letters, digits, '_', '.', ':' or '-', "
            "starting with a letter or digit"
        )
    return queue


def validate_region(region: str | None) -> str | None:
    """Return ``region`` if it is None or a valid region label, else raise
    :class:`InvalidTaskError`."""
    if region is None:
        return None
    if not isinstance(region, str) or not REGION_PATTERN.fullmatch(region):
        raise InvalidTaskError(
            f"invalid region {region!r}: use 1-63 lowercase letters, digits or '-', "
            "starting with a letter or digit"
        )
    return region


def validate_kind(kind: str) -> str:
    """Return ``kind`` if it is a usable task kind, else raise :class:`InvalidTaskError`."""
    if not isinstance(kind, str) or not kind or len(_utf8(kind, "task kind")) > MAX_KIND_LENGTH:
        raise InvalidTaskError(f"invalid task kind {kind!r}: use 1-{MAX_KIND_LENGTH} bytes")
    if kind != kind.strip() or "\x00" in kind:
        raise InvalidTaskError(f"invalid task kind {kind!r}: no surrounding spaces or NUL bytes")
    return kind


def validate_priority(priority: int) -> int:
    """Return ``priority`` if it fits the SMALLINT column, else raise."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidTaskError(f"priority must be an integer, got {priority!r}")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise InvalidTaskError(
            f"priority {priority} is outside {MIN_PRIORITY}..{MAX_PRIORITY} (higher runs first)"
        )
    return priority


def validate_max_attempts(max_attempts: int) -> int:
    """Return ``max_attempts`` if it is in 1..MAX_ATTEMPTS_LIMIT, else raise."""
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
        raise InvalidTaskError(f"max_attempts must be an integer, got {max_attempts!r}")
    if not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
        raise InvalidTaskError(
            f"max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}, got {max_attempts}"
        )
    return max_attempts


def validate_scheduled_at(scheduled_at: datetime | None) -> datetime | None:
    """Reject naive datetimes (a wall-clock time without a zone is ambiguous across hosts) and
    instants outside :data:`EARLIEST_SCHEDULE` .. :data:`LATEST_SCHEDULE` (the driver turns the
    calendar's edges into infinities, which no worker could compare)."""
    if scheduled_at is None:
        return None
    if not isinstance(scheduled_at, datetime):
        raise InvalidTaskError(f"scheduled_at must be a datetime, got {scheduled_at!r}")
    if scheduled_at.tzinfo is None or scheduled_at.utcoffset() is None:
        raise InvalidTaskError(
            "scheduled_at must be timezone-aware (for example datetime.now(timezone.utc))"
        )
    try:
        in_range = EARLIEST_SCHEDULE <= scheduled_at < LATEST_SCHEDULE
    except OverflowError:
        in_range = False
    if not in_range:
        raise InvalidTaskError(
            f"scheduled_at must be between {EARLIEST_SCHEDULE:%Y-%m-%d} and "
            f"{LATEST_SCHEDULE:%Y-%m-%d} UTC, got {scheduled_at.isoformat()}"
        )
    return scheduled_at


#: A JSON \u0000 escape (an odd number of backslashes before "u0000"): jsonb refuses it.
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def validate_payload_json(encoded: str) -> None:
    """Raise if a JSON-encoded payload is over :data:`MAX_PAYLOAD_BYTES`, holds a NUL
    character (PostgreSQL's jsonb cannot store ``\u0000``) or is not valid Unicode."""
    size = len(_utf8(encoded, "payload"))
    if size > MAX_PAYLOAD_BYTES:
        raise InvalidTaskError(
            f"payload is {size} bytes encoded as JSON; the limit is {MAX_PAYLOAD_BYTES} bytes"
        )
    if _JSON_NUL.search(encoded):
        raise InvalidTaskError(
            "payload contains a NUL character (\\u0000), which PostgreSQL cannot store; "
            "encode binary data (e.g. base64) or strip NULs"
        )


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise InvalidTaskError(
            f"{what} is not valid Unicode (it holds a lone surrogate, e.g. from a bad escape)"
        ) from None


def truncate_error(message: str, limit: int = MAX_ERROR_BYTES) -> str:
    """Cut ``message`` to at most ``limit`` UTF-8 bytes without splitting a character.

    NUL characters and lone surrogates (e.g. from undecodable file names) are escaped, because
    PostgreSQL text cannot hold them.
    """
    message = message.replace("\x00", "\\x00")
    encoded = message.encode("utf-8", "backslashreplace")
    if len(encoded) <= limit:
        return encoded.decode("utf-8")
    marker = b" ...[truncated]"
    if limit <= len(marker):
        return encoded[: max(limit, 0)].decode("utf-8", errors="ignore")
    head = encoded[: limit - len(marker)].decode("utf-8", errors="ignore")
    return head + marker.decode()


def validate_idempotency_key(key: str | None) -> str | None:
    """Return ``key`` if it is None or a valid idempotency key, else raise
    :class:`InvalidTaskError`."""
    if key is None:
        return None
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        raise InvalidTaskError(
            f"invalid idempotency key: use 1-{MAX_IDEMPOTENCY_KEY_LENGTH} characters"
        )
    if "\x00" in key:
        raise InvalidTaskError("invalid idempotency key: it contains a NUL character")
    return key


def validate_timeout(seconds: float | None) -> float | None:
    """Return ``seconds`` (as a float) if it is None or a valid attempt timeout, else raise
    :class:`InvalidTaskError`."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise InvalidTaskError(f"timeout must be a number of seconds, got {seconds!r}")
    if not 0 < seconds <= MAX_TIMEOUT:
        raise InvalidTaskError(
            f"timeout must be more than 0 and at most {MAX_TIMEOUT:g} seconds, got {seconds!r}"
        )
    return float(seconds)


def validate_checkpoint_json(encoded: str) -> None:
    """Raise if a JSON-encoded checkpoint is over :data:`MAX_CHECKPOINT_BYTES` or holds a NUL
    character."""
    size = len(_utf8(encoded, "checkpoint"))
    if size > MAX_CHECKPOINT_BYTES:
        raise InvalidTaskError(
            f"checkpoint is {size} bytes encoded as JSON; the limit is {MAX_CHECKPOINT_BYTES} "
            "bytes: keep progress markers there and the data itself elsewhere"
        )
    if _JSON_NUL.search(encoded):
        raise InvalidTaskError(
            "checkpoint contains a NUL character (\\u0000), which PostgreSQL cannot store"
        )


_ID_PREFIX = re.compile(r"^[0-9a-fA-F-]{1,36}$")


def id_prefix_range(prefix: str) -> tuple[UUID, UUID]:
    """The lowest and highest task ids that start with ``prefix`` (hexadecimal digits, dashes
    ignored, as ids are printed), or raise :class:`InvalidTaskError`."""
    digits = prefix.replace("-", "")
    if not _ID_PREFIX.fullmatch(prefix) or not 1 <= len(digits) <= 32:
        raise InvalidTaskError(
            f"invalid id prefix {prefix[:40]!r}: use the first 1-32 hexadecimal digits of a "
            "task id (dashes allowed)"
        )
    return UUID(digits.ljust(32, "0")), UUID(digits.ljust(32, "f"))

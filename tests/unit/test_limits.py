"""Pins the accept/reject edges of every value check made before a task reaches the database,
and how long error messages are cut to fit ``last_error``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iron_defer_trio.domain.limits import (
    MAX_ATTEMPTS_LIMIT,
    MAX_ERROR_BYTES,
    MAX_KIND_LENGTH,
    MAX_PAYLOAD_BYTES,
    MAX_PRIORITY,
    MIN_PRIORITY,
    truncate_error,
    validate_kind,
    validate_max_attempts,
    validate_payload_json,
    validate_priority,
    validate_queue_name,
    validate_scheduled_at,
)
from iron_defer_trio.errors import InvalidTaskError

# --- queue names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["default", "a", "0", "Emails", "billing.eu-west:1", "a_b", "x" * 128, "9" + "-" * 127],
)
def test_valid_queue_names_are_returned_unchanged(name: str) -> None:
    """Letters, digits, '_', '.', ':' and '-' up to 128 characters, led by a letter or digit."""
    assert validate_queue_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 129,
        "-leading-dash",
        "_leading_underscore",
        ".hidden",
        "has space",
        " padded",
        "padded ",
        "nul\x00byte",
        "trailing-newline\n",
        "slash/queue",
        "ümlaut",
        "١٢٣",  # non-ASCII digits
        "percent%20",
    ],
)
def test_invalid_queue_names_are_rejected_with_the_name_and_the_rule(name: str) -> None:
    """A name breaking the pattern raises InvalidTaskError quoting it and stating the rule."""
    with pytest.raises(InvalidTaskError) as info:
        validate_queue_name(name)
    assert repr(name) in str(info.value)
    assert "1-128" in str(info.value)


@pytest.mark.parametrize("value", [None, 7, b"default", ["default"]])
def test_non_string_queue_names_are_rejected(value: Any) -> None:
    """Only str is a queue name; bytes, numbers and None raise InvalidTaskError."""
    with pytest.raises(InvalidTaskError, match="invalid queue name"):
        validate_queue_name(value)


# --- kinds -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["send_email", "billing.Invoice/v2", "k", "é" * 127, "x" * 255])
def test_valid_kinds_are_returned_unchanged(kind: str) -> None:
    """Any non-empty string up to 255 UTF-8 bytes without edge spaces or NUL is a kind."""
    assert validate_kind(kind) == kind


@pytest.mark.parametrize(
    "kind", ["", "x" * 256, "é" * 128, " lead", "trail ", "tab\t", "nul\x00kind"]
)
def test_invalid_kinds_are_rejected(kind: str) -> None:
    """Empty, over 255 bytes, space-padded or NUL-bearing kinds raise InvalidTaskError."""
    with pytest.raises(InvalidTaskError, match="invalid task kind"):
        validate_kind(kind)


def test_kind_limit_counts_bytes_not_characters() -> None:
    """The 255 limit is in UTF-8 bytes: 128 two-byte characters are too many."""
    assert MAX_KIND_LENGTH == 255
    assert len("é" * 128) == 128
    with pytest.raises(InvalidTaskError, match="1-255 bytes"):
        validate_kind("é" * 128)


@pytest.mark.parametrize("value", [None, 42, b"kind"])
def test_non_string_kinds_are_rejected(value: Any) -> None:
    """A kind must be a str."""
    with pytest.raises(InvalidTaskError, match="invalid task kind"):
        validate_kind(value)


# --- priority ----------------------------------------------------------------------------


@pytest.mark.parametrize("priority", [MIN_PRIORITY, -1, 0, 1, MAX_PRIORITY])
def test_priorities_inside_smallint_range_are_accepted(priority: int) -> None:
    """-32768..32767 fit the SMALLINT column."""
    assert (MIN_PRIORITY, MAX_PRIORITY) == (-32768, 32767)
    assert validate_priority(priority) == priority


@pytest.mark.parametrize("priority", [MIN_PRIORITY - 1, MAX_PRIORITY + 1, 2**63])
def test_priorities_outside_smallint_range_are_rejected(priority: int) -> None:
    """One past either end raises InvalidTaskError naming the range."""
    with pytest.raises(InvalidTaskError, match=r"outside -32768\.\.32767"):
        validate_priority(priority)


@pytest.mark.parametrize("priority", [True, False, 1.0, "1", None])
def test_non_integer_priorities_are_rejected_including_bool(priority: Any) -> None:
    """bool, float, str and None are not priorities, even when they look like one."""
    with pytest.raises(InvalidTaskError, match="priority must be an integer"):
        validate_priority(priority)


# --- max_attempts ------------------------------------------------------------------------


@pytest.mark.parametrize("attempts", [1, 2, 999, MAX_ATTEMPTS_LIMIT])
def test_max_attempts_from_one_to_a_thousand_are_accepted(attempts: int) -> None:
    """1..1000 attempts are allowed."""
    assert MAX_ATTEMPTS_LIMIT == 1000
    assert validate_max_attempts(attempts) == attempts


@pytest.mark.parametrize("attempts", [0, -1, MAX_ATTEMPTS_LIMIT + 1])
def test_max_attempts_outside_one_to_a_thousand_are_rejected(attempts: int) -> None:
    """0, negatives and 1001 raise InvalidTaskError quoting the value."""
    with pytest.raises(InvalidTaskError, match=rf"between 1 and 1000, got {attempts}$"):
        validate_max_attempts(attempts)


@pytest.mark.parametrize("attempts", [True, 3.0, "3", None])
def test_non_integer_max_attempts_are_rejected_including_bool(attempts: Any) -> None:
    """bool, float, str and None are not attempt counts."""
    with pytest.raises(InvalidTaskError, match="max_attempts must be an integer"):
        validate_max_attempts(attempts)


# --- scheduled_at ------------------------------------------------------------------------


class _NoOffset(tzinfo):
    """A tzinfo that does not know its offset (makes a datetime naive in effect)."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, dt: datetime | None) -> str | None:
        return "nowhere"


@pytest.mark.parametrize(
    "when",
    [
        None,
        datetime(2030, 1, 1, tzinfo=UTC),
        datetime(2030, 1, 1, 12, tzinfo=timezone(timedelta(hours=-5))),
    ],
)
def test_aware_or_missing_scheduled_at_is_accepted(when: datetime | None) -> None:
    """None (run now) and timezone-aware datetimes pass unchanged."""
    assert validate_scheduled_at(when) is when


@pytest.mark.parametrize("when", [datetime(2030, 1, 1), datetime(2030, 1, 1, tzinfo=_NoOffset())])
def test_naive_scheduled_at_is_rejected(when: datetime) -> None:
    """A datetime without a usable offset is ambiguous and raises InvalidTaskError."""
    with pytest.raises(InvalidTaskError, match="timezone-aware"):
        validate_scheduled_at(when)


@pytest.mark.parametrize("when", ["2030-01-01T00:00:00Z", 1893456000, 1893456000.0])
def test_non_datetime_scheduled_at_is_rejected(when: Any) -> None:
    """Strings and epoch numbers are not accepted as scheduled_at."""
    with pytest.raises(InvalidTaskError, match="must be a datetime"):
        validate_scheduled_at(when)


# --- payload size ------------------------------------------------------------------------


def test_payload_of_exactly_one_mebibyte_is_accepted() -> None:
    """1 MiB of encoded JSON is allowed."""
    assert MAX_PAYLOAD_BYTES == 1024 * 1024
    validate_payload_json("x" * MAX_PAYLOAD_BYTES)


def test_payload_one_byte_over_a_mebibyte_is_rejected_with_its_size() -> None:
    """1 MiB + 1 byte raises InvalidTaskError stating the size and the limit."""
    with pytest.raises(InvalidTaskError, match=r"payload is 1048577 bytes .* limit is 1048576"):
        validate_payload_json("x" * (MAX_PAYLOAD_BYTES + 1))


@pytest.mark.parametrize(
    "value",
    ["\x00", "a\x00b", "\\\x00", {"nested": ["\x00"]}],
    ids=["nul", "inner", "after-backslash", "nested"],
)
def test_payload_with_a_nul_character_is_rejected(value: object) -> None:
    """jsonb cannot store U+0000, so a payload holding one is refused before the database."""
    with pytest.raises(InvalidTaskError, match="NUL"):
        validate_payload_json(json.dumps({"v": value}))


@pytest.mark.parametrize("text", ["\\u0000", "u0000", "\\\\u0000", "\u0001"])
def test_payload_with_escaped_backslashes_before_u0000_is_accepted(text: str) -> None:
    """A literal backslash followed by "u0000" is text, not a NUL escape."""
    validate_payload_json(json.dumps({"v": text}))


def test_payload_size_counts_utf8_bytes_of_text() -> None:
    """A str payload is measured in UTF-8 bytes: 2-byte characters count twice."""
    half = MAX_PAYLOAD_BYTES // 2
    validate_payload_json("é" * half)
    with pytest.raises(InvalidTaskError, match="1048578 bytes"):
        validate_payload_json("é" * (half + 1))


# --- truncate_error ----------------------------------------------------------------------


def test_short_error_messages_are_kept_whole() -> None:
    """A message within the limit comes back unchanged."""
    assert truncate_error("boom") == "boom"
    exact = "y" * MAX_ERROR_BYTES
    assert truncate_error(exact) == exact


def test_long_error_messages_are_cut_to_the_limit_with_a_marker() -> None:
    """One byte over the limit is cut, ends with a truncation marker and fits in 4096 bytes."""
    assert MAX_ERROR_BYTES == 4096
    cut = truncate_error("z" * (MAX_ERROR_BYTES + 1))
    assert cut.endswith("...[truncated]")
    assert cut.startswith("z" * 4000)
    assert len(cut.encode()) <= MAX_ERROR_BYTES


def test_truncation_never_splits_a_multibyte_character() -> None:
    """Cutting inside a 4-byte character drops the whole character."""
    cut = truncate_error("a" + "😀" * 2000)
    head = cut.removesuffix(" ...[truncated]")
    assert head == "a" + "😀" * (len(head) - 1)
    assert len(cut.encode()) <= MAX_ERROR_BYTES


def test_nul_characters_are_replaced_by_a_visible_escape() -> None:
    """PostgreSQL text cannot hold NUL, so it becomes the four characters \\x00."""
    assert truncate_error("a\x00b") == "a\\x00b"
    assert "\x00" not in truncate_error("\x00" * 5000)
    assert len(truncate_error("\x00" * 5000).encode()) <= MAX_ERROR_BYTES


@settings(max_examples=300, deadline=None)
@given(message=st.text(min_size=0, max_size=3000), limit=st.integers(min_value=16, max_value=600))
def test_truncated_errors_are_valid_prefixes_within_the_byte_limit(
    message: str, limit: int
) -> None:
    """For any text: <= limit UTF-8 bytes, no NUL, and a prefix of the NUL-escaped input."""
    cut = truncate_error(message, limit)
    escaped = message.replace("\x00", "\\x00")
    assert len(cut.encode()) <= limit
    assert "\x00" not in cut
    if len(escaped.encode()) <= limit:
        assert cut == escaped
    else:
        head = cut.removesuffix(" ...[truncated]")
        assert cut != head
        assert escaped.startswith(head)
        # Nothing that fitted was dropped beyond the one character that straddles the cut.
        budget = limit - len(" ...[truncated]")
        assert budget - 3 <= len(head.encode()) <= budget


@settings(max_examples=100, deadline=None)
@given(
    message=st.text(
        alphabet=st.characters(min_codepoint=0x80, codec="utf-8"), min_size=1500, max_size=2500
    )
)
def test_truncating_non_ascii_text_at_the_default_limit_keeps_whole_characters(
    message: str,
) -> None:
    """Long multi-byte text is cut on a character boundary under 4096 bytes."""
    cut = truncate_error(message)
    assert len(cut.encode()) <= MAX_ERROR_BYTES
    head = cut.removesuffix(" ...[truncated]")
    assert message.replace("\x00", "\\x00").startswith(head)


def test_lone_surrogates_in_an_error_message_do_not_crash_truncation() -> None:
    """A message carrying a lone surrogate is still stored (made encodable)."""
    cut = truncate_error("cannot read /data/\udcff.csv")
    cut.encode()

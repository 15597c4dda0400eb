"""Pins uuid7(): RFC 9562 version and variant, strict ordering within the process (also when
the clock stalls or steps back), and a timestamp that tracks the wall clock."""

from __future__ import annotations

import itertools
import time
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest

from iron_defer_trio.store import _ids
from iron_defer_trio.store._ids import uuid7

if TYPE_CHECKING:
    from uuid import UUID


def _timestamp_ms(value: UUID) -> int:
    """The 48-bit unix_ts_ms field."""
    return value.int >> 80


def test_uuid7_has_version_7_and_the_rfc_variant() -> None:
    """Every id is a version-7 UUID with the RFC 4122/9562 variant bits."""
    for _ in range(100):
        value = uuid7()
        assert value.version == 7
        assert value.variant == "specified in RFC 4122"
        assert (value.int >> 62) & 0b11 == 0b10


def test_uuid7_is_strictly_increasing_over_ten_thousand_calls() -> None:
    """10,000 consecutive ids are unique and each is greater than the one before."""
    ids = [uuid7() for _ in range(10_000)]
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert len(set(ids)) == len(ids)
    # Ordering by text (as a database orders uuid columns) agrees with creation order.
    assert [str(i) for i in ids] == sorted(str(i) for i in ids)


def test_uuid7_timestamp_is_within_a_few_milliseconds_of_the_wall_clock() -> None:
    """The embedded millisecond timestamp is the time of the call."""
    before = int(time.time() * 1000)
    value = uuid7()
    after = int(time.time() * 1000)
    assert before - 5 <= _timestamp_ms(value) <= after + 5


def test_uuid7_stays_ordered_when_the_clock_stalls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Within one millisecond the counter orders ids; on counter overflow the time advances."""
    frozen_ns = 1_700_000_000_000 * 1_000_000
    monkeypatch.setattr(_ids, "time", SimpleNamespace(time_ns=lambda: frozen_ns))
    monkeypatch.setattr(_ids, "_last_ms", 0)
    monkeypatch.setattr(_ids, "_sequence", 0)
    ids = [uuid7() for _ in range(10_000)]  # more than the 4096 a millisecond can count
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert _timestamp_ms(ids[0]) == 1_700_000_000_000
    # Counting past 0xFFF borrows the next millisecond: 10,000 ids need exactly two more.
    assert _timestamp_ms(ids[-1]) == 1_700_000_000_002
    assert all(id_.version == 7 for id_ in ids)


def test_uuid7_stays_ordered_when_the_clock_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """An NTP step backwards does not produce an id smaller than an earlier one."""
    clock = iter([2_000_000_000_000, 1_999_999_999_000, 1_999_999_000_000, 2_000_000_000_001])
    monkeypatch.setattr(_ids, "time", SimpleNamespace(time_ns=lambda: next(clock) * 1_000_000))
    monkeypatch.setattr(_ids, "_last_ms", 0)
    monkeypatch.setattr(_ids, "_sequence", 0)
    ids = [uuid7() for _ in range(4)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 4
    assert _timestamp_ms(ids[1]) == 2_000_000_000_000
    assert _timestamp_ms(ids[3]) == 2_000_000_000_001


def test_uuid7_random_bits_differ_between_calls() -> None:
    """The 62 random bits are not constant (ids are not guessable from their timestamp)."""
    randoms = {uuid7().int & ((1 << 62) - 1) for _ in range(50)}
    assert len(randoms) == 50


# Python 3.12+ warns about fork() in a process with threads; the child only writes and exits.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_does_not_repeat_its_parents_random_bits() -> None:
    """The random part of ids comes from a seeded generator: a child forked from this
    process must reseed it, or both would draw the same bits (and, in the same millisecond,
    the same ids)."""
    import os

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next draw and leave at once
        os.write(write, _ids._random.getrandbits(64).to_bytes(8, "big"))
        os._exit(0)
    os.close(write)
    parent = _ids._random.getrandbits(64)
    child = int.from_bytes(os.read(read, 8), "big")
    os.close(read)
    os.waitpid(pid, 0)
    assert child != parent

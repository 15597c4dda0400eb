"""Task ids: UUIDv7 (RFC 9562), time-ordered so the primary key index stays compact and
``ORDER BY id`` follows creation order."""

from __future__ import annotations

import os
import random
import time
from uuid import UUID

_last_ms = 0
_sequence = 0
# The random bits only keep ids of different processes apart (ids are not secrets: the API
# token guards access), so a seeded generator does, at a fraction of a getrandom() call per
# id. Reseeded in a forked child, which would otherwise repeat its parent's bits.
_random = random.Random(os.urandom(16))


def _reseed() -> None:
    _random.seed(os.urandom(16))


os.register_at_fork(after_in_child=_reseed)


def uuid7() -> UUID:
    """A new UUIDv7, strictly increasing within this process.

    The 12-bit ``rand_a`` field holds a counter within one millisecond (RFC 9562 method 1);
    on overflow the timestamp is advanced by one millisecond, so order is never lost.
    """
    global _last_ms, _sequence
    now_ms = time.time_ns() // 1_000_000
    if now_ms > _last_ms:
        _last_ms = now_ms
        _sequence = _random.getrandbits(9)  # leave room to count up
    else:
        _sequence += 1
        if _sequence > 0xFFF:
            _last_ms += 1
            _sequence = 0
    rand_b = _random.getrandbits(62)
    value = (_last_ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= _sequence << 64
    value |= 0b10 << 62
    value |= rand_b
    return UUID(int=value)

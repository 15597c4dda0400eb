"""Pins the backoff arithmetic (exponential, jittered, capped) and RetryPolicy's validation."""

from __future__ import annotations

import math
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from iron_defer_trio.domain.retry import DEFAULT_JITTER, RetryPolicy, backoff

# Delays from zero or a millisecond up to ~30 years. The implementation stops doubling after 64
# failures, which equals the formula only while base * 2**64 >= cap: true for these ranges.
delays = st.one_of(
    st.just(0.0), st.floats(min_value=1e-3, max_value=1e9, allow_nan=False, allow_infinity=False)
)
rands = st.floats(min_value=0.0, max_value=1.0, exclude_max=True, allow_nan=False)
jitters = st.floats(min_value=0.0, max_value=1.0, exclude_max=True, allow_nan=False)
failure_counts = st.integers(min_value=1, max_value=10_000)


def _nominal(failures: int, base: float, cap: float) -> float:
    """min(base * 2**(failures-1), cap), computed without the implementation's shortcuts."""
    if base == 0.0:
        return 0.0
    if failures - 1 > 1000:  # 2**1000 * 1e-3 already exceeds any cap drawn here
        return cap
    return min(base * 2.0 ** (failures - 1), cap)


@st.composite
def base_and_cap(draw: st.DrawFn) -> tuple[float, float]:
    """A (base, cap) pair with base <= cap."""
    a = draw(delays)
    b = draw(delays)
    return (min(a, b), max(a, b))


@settings(max_examples=500, deadline=None)
@given(failures=failure_counts, rand=rands, bounds=base_and_cap(), jitter=jitters)
def test_backoff_stays_between_zero_and_cap(
    failures: int, rand: float, bounds: tuple[float, float], jitter: float
) -> None:
    """Whatever the inputs, the delay lies in [0, cap]."""
    base, cap = bounds
    delay = backoff(failures, rand, base=base, cap=cap, jitter=jitter)
    assert 0.0 <= delay <= cap


@settings(max_examples=500, deadline=None)
@given(failures=failure_counts, rand=rands, bounds=base_and_cap(), jitter=jitters)
def test_backoff_is_within_jitter_of_the_nominal_delay(
    failures: int, rand: float, bounds: tuple[float, float], jitter: float
) -> None:
    """The delay is min(base*2**(n-1), cap) spread by at most +-jitter, then capped."""
    base, cap = bounds
    nominal = _nominal(failures, base, cap)
    delay = backoff(failures, rand, base=base, cap=cap, jitter=jitter)
    slack = 1e-9 * max(nominal, 1.0)
    assert delay >= nominal * (1 - jitter) - slack
    assert delay <= min(nominal * (1 + jitter), cap) + slack


@settings(max_examples=300, deadline=None)
@given(bounds=base_and_cap(), failures=st.integers(min_value=1, max_value=200))
def test_nominal_delay_never_decreases_with_more_failures(
    bounds: tuple[float, float], failures: int
) -> None:
    """Without jitter (rand = 0.5) the delay after n+1 failures is >= the delay after n."""
    base, cap = bounds
    here = backoff(failures, 0.5, base=base, cap=cap, jitter=DEFAULT_JITTER)
    after = backoff(failures + 1, 0.5, base=base, cap=cap, jitter=DEFAULT_JITTER)
    assert here == _nominal(failures, base, cap)
    assert after >= here


@settings(max_examples=300, deadline=None)
@given(bounds=base_and_cap(), rand=rands, failures=st.integers(min_value=1, max_value=200))
def test_delay_never_decreases_with_more_failures_for_the_same_random_number(
    bounds: tuple[float, float], rand: float, failures: int
) -> None:
    """For a fixed random number, more failures never means a shorter wait."""
    base, cap = bounds
    here = backoff(failures, rand, base=base, cap=cap, jitter=DEFAULT_JITTER)
    after = backoff(failures + 1, rand, base=base, cap=cap, jitter=DEFAULT_JITTER)
    assert after >= here * (1 - 1e-12)


def test_default_jitter_spreads_the_delay_from_75_to_125_percent() -> None:
    """With jitter 0.25, rand 0 gives 0.75x, rand 0.5 gives 1x, rand near 1 gives ~1.25x."""
    assert DEFAULT_JITTER == 0.25
    kwargs = {"base": 8.0, "cap": 1000.0, "jitter": 0.25}
    assert backoff(1, 0.0, **kwargs) == pytest.approx(6.0)
    assert backoff(1, 0.5, **kwargs) == 8.0
    assert backoff(1, math.nextafter(1.0, 0.0), **kwargs) == pytest.approx(10.0)
    assert backoff(3, 0.0, **kwargs) == pytest.approx(24.0)
    assert backoff(3, 0.5, **kwargs) == 32.0


def test_doubling_starts_at_base_after_the_first_failure() -> None:
    """Failures 1, 2, 3, 4 give base, 2*base, 4*base, 8*base without jitter."""
    delays = [backoff(n, 0.5, base=5.0, cap=1800.0, jitter=0.25) for n in (1, 2, 3, 4)]
    assert delays == [5.0, 10.0, 20.0, 40.0]


def test_upward_jitter_at_the_cap_is_clipped_to_the_cap() -> None:
    """Once the nominal delay reaches the cap, the upper half of the jitter is cut off."""
    assert backoff(20, 0.99, base=1.0, cap=60.0, jitter=0.25) == 60.0
    assert backoff(20, 0.0, base=1.0, cap=60.0, jitter=0.25) == pytest.approx(45.0)


@pytest.mark.parametrize("failures", [65, 1000, 2**31, 2**63, sys.maxsize, 10**100])
def test_huge_attempt_numbers_do_not_overflow(failures: int) -> None:
    """Astronomical failure counts still return a finite delay no larger than the cap."""
    delay = backoff(failures, 0.5, base=5.0, cap=1800.0, jitter=0.25)
    assert delay == 1800.0
    assert math.isfinite(backoff(failures, 0.3, base=1e-9, cap=1e300, jitter=0.25))


def test_zero_base_means_no_wait() -> None:
    """A zero base delay retries at once, whatever the jitter."""
    assert backoff(5, 0.9, base=0.0, cap=10.0, jitter=0.5) == 0.0


@pytest.mark.parametrize("failures", [0, -1])
def test_failures_below_one_are_rejected(failures: int) -> None:
    """Failures count from 1; zero or negative is a caller bug."""
    with pytest.raises(ValueError, match="counts from 1"):
        backoff(failures, 0.5, base=1.0, cap=2.0, jitter=0.25)


def test_policy_delay_uses_its_own_base_cap_and_jitter() -> None:
    """RetryPolicy.delay is backoff() with the policy's numbers."""
    policy = RetryPolicy(base_delay=2.0, max_delay=30.0, jitter=0.5)
    assert policy.delay(1, 0.5) == 2.0
    assert policy.delay(3, 0.0) == pytest.approx(4.0)
    assert policy.delay(10, 0.5) == 30.0
    assert policy.delay(2, 0.3) == backoff(2, 0.3, base=2.0, cap=30.0, jitter=0.5)


def test_policy_defaults_are_five_seconds_to_half_an_hour() -> None:
    """The default policy starts at 5 s, caps at 1800 s, with 25 % jitter."""
    policy = RetryPolicy()
    assert (policy.base_delay, policy.max_delay, policy.jitter) == (5.0, 1800.0, 0.25)


def test_policy_rejects_base_delay_above_max_delay() -> None:
    """base_delay > max_delay is refused, naming both values."""
    with pytest.raises(ValidationError, match=r"base_delay \(10 s\) must not exceed max_delay"):
        RetryPolicy(base_delay=10.0, max_delay=5.0)


def test_policy_accepts_base_delay_equal_to_max_delay() -> None:
    """A constant delay (base == max) is a valid policy."""
    assert RetryPolicy(base_delay=7.0, max_delay=7.0).delay(9, 0.5) == 7.0


@pytest.mark.parametrize("jitter", [1.0, 1.5, -0.01, math.nan])
def test_policy_rejects_jitter_outside_zero_to_one(jitter: float) -> None:
    """Jitter must be in [0, 1): 1 or more could make a delay zero or negative."""
    with pytest.raises(ValidationError, match="jitter"):
        RetryPolicy(jitter=jitter)


@pytest.mark.parametrize("field", ["base_delay", "max_delay"])
def test_policy_rejects_negative_delays(field: str) -> None:
    """A negative delay is refused with the field's name."""
    with pytest.raises(ValidationError, match=field):
        RetryPolicy.model_validate({field: -1.0})


def test_policy_is_frozen_and_rejects_unknown_fields() -> None:
    """A policy cannot be mutated, and a misspelt field is an error."""
    policy = RetryPolicy()
    with pytest.raises(ValidationError, match="frozen"):
        policy.base_delay = 1.0  # type: ignore[misc]  # the point: it must fail at runtime
    with pytest.raises(ValidationError, match="base_dealy"):
        RetryPolicy.model_validate({"base_dealy": 1.0})

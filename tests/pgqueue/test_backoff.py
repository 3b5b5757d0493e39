"""The default backoff: Oban's table, its properties and the rescaling of long retry budgets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgqueue.backoff import default_backoff, exponential, jitter

BASES = {1: 17, 2: 19, 3: 23, 4: 31, 5: 47, 10: 1039, 19: 524_303, 20: 1_048_591}


@pytest.mark.parametrize(("attempt", "base"), sorted(BASES.items()))
def test_base_delay_and_up_to_ten_percent_more(attempt: int, base: int) -> None:
    assert default_backoff(attempt, 20, rand=lambda: 0.0) == base
    assert base < default_backoff(attempt, 20, rand=lambda: 0.999999) <= base + int(0.1 * base)


def test_grows_with_every_attempt_and_stays_above_fifteen_seconds() -> None:
    delays = [default_backoff(a, 20, rand=lambda: 0.0) for a in range(1, 21)]
    assert all(d > 15 for d in delays)
    assert delays == sorted(set(delays))


@given(st.integers(1, 999), st.integers(0, 1000))
def test_never_exceeds_two_to_the_twenty_plus_ten_percent(attempt: int, extra: int) -> None:
    assert default_backoff(attempt, attempt + extra) <= 2**20 * 1.1 + 15 * 1.1


def test_long_budgets_are_rescaled_rounding_halves_up() -> None:
    # max_attempts 40: attempt 10 → a = 5 (47 s); attempt 20 → a = 10 (1039 s)
    assert default_backoff(10, 40, rand=lambda: 0.0) == 47
    assert default_backoff(20, 40, rand=lambda: 0.0) == 1039
    # attempt 1 of 40 → a = round(0.5) = 1 (Python's round() would give 0)
    assert default_backoff(1, 40, rand=lambda: 0.0) == 17
    # attempt 1 of 100 → a = 0 → 16 s
    assert default_backoff(1, 100, rand=lambda: 0.0) == 16


def test_helpers() -> None:
    assert exponential(3) == 8
    assert exponential(30, max_pow=10) == 1024
    assert jitter(100, mode="dec", rand=lambda: 0.5) == 95
    assert jitter(100, mode="both", rand=lambda: 0.4) == 96
    with pytest.raises(ValueError, match="jitter mode"):
        jitter(1, mode="sideways")

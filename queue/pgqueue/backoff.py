"""Retry delays: Oban's default exponential backoff with upward jitter, and helpers for your own."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

__all__ = ["default_backoff", "exponential", "jitter"]

#: The default policy's constants: 15 s floor, powers of two up to 2**20.
_FLOOR = 15
_MAX_POWER = 20
_ATTEMPT_SCALE = 20


def exponential(attempt: int, *, mult: float = 1, max_pow: int = 10, min_pad: float = 0) -> float:
    """``min_pad + mult * 2**min(attempt, max_pow)`` seconds."""
    return float(min_pad + mult * 2 ** min(attempt, max_pow))


def jitter(
    seconds: float, *, mode: str = "inc", mult: float = 0.1, rand: Callable[[], float] = random.random
) -> float:
    """Spread ``seconds`` by up to ``mult`` of itself: upward (inc), downward (dec) or either (both)."""
    r = rand()
    diff = math.trunc(r * mult * seconds)
    if mode == "inc":
        return seconds + diff
    if mode == "dec":
        return seconds - diff
    if mode == "both":
        return seconds + diff if r >= 0.5 else seconds - diff
    raise ValueError(f"jitter mode must be 'inc', 'dec' or 'both', got {mode!r}")


def _round_half_up(x: float) -> int:
    # Python's round() rounds halves to even (round(0.5) == 0); Oban rounds them up.
    return math.floor(x + 0.5)


def default_backoff(attempt: int, max_attempts: int, *, rand: Callable[[], float] = random.random) -> int:
    """Seconds to wait after failed ``attempt``: ``15 + 2**a`` plus up to 10 % more.

    ``a`` is the attempt, rescaled onto 0..20 when ``max_attempts`` is above 20 so that long
    retry budgets still spread over about two weeks instead of centuries.
    """
    a = attempt if max_attempts <= _ATTEMPT_SCALE else _round_half_up(attempt / max_attempts * _ATTEMPT_SCALE)
    base = _FLOOR + 2 ** min(max(a, 0), _MAX_POWER)
    return int(jitter(base, mode="inc", mult=0.1, rand=rand))

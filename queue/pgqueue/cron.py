"""Parse cron expressions with Oban's rules and find when they fire.

Five whitespace-separated fields, ``minute hour day month weekday``, or a nickname such as
``@daily``. Each field is a comma-separated list of ``*``, ``N``, ``A-B``, ``*/S``, ``A/S`` (A up to
the field's maximum) or ``A-B/S``. Months may be written ``JAN`` to ``DEC`` and weekdays ``SUN`` to ``SAT``,
uppercase only; Sunday is 0 and 7 is refused. Unlike Vixie cron, a minute matches only when the day
of the month **and** the day of the week both match.

Schedules are read on the wall clock of an IANA zone. Across daylight-saving changes, a local time
that does not exist never fires, and a local time that happens twice fires once, the first time::

    expr = parse("30 9 * * MON-FRI")
    next_at(expr, datetime.now(UTC), "Europe/Berlin")  # the next weekday 09:30 in Berlin, in UTC
"""

from __future__ import annotations

import re
from calendar import monthrange
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import MAXYEAR, MINYEAR, UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigError

__all__ = [
    "CronExpression",
    "last_at",
    "matches",
    "minute_floor",
    "next_at",
    "now_matches",
    "parse",
]

_NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_REBOOT = "@reboot"

_MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_WEEKDAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")

# February counts 29 days: a day is possible in a month when it happens in some year.
_MAX_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

# The Gregorian calendar repeats every 400 years, so any (month, day, weekday) that can ever
# happen happens within that span of any start; searching further could never find more.
_SEARCH_YEARS = 400

_MAX_STEP = 99

# ASCII digits only ([0-9], not \d, which also takes other scripts' digits); letters of either case
# so that a lowercase name earns a message saying "uppercase" instead of "unrecognised".
_PART = re.compile(
    r"(?:(?P<star>\*)|(?P<first>[0-9]+|[A-Za-z]+)(?:-(?P<last>[0-9]+|[A-Za-z]+))?)(?:/(?P<step>[0-9]+))?"
)


@dataclass(frozen=True, slots=True)
class _FieldSpec:
    name: str
    low: int
    high: int
    names: Mapping[str, int]


_FIELDS = (
    _FieldSpec("minute", 0, 59, {}),
    _FieldSpec("hour", 0, 23, {}),
    _FieldSpec("day", 1, 31, {}),
    _FieldSpec("month", 1, 12, {name: number for number, name in enumerate(_MONTH_NAMES, start=1)}),
    _FieldSpec("weekday", 0, 6, {name: number for number, name in enumerate(_WEEKDAY_NAMES)}),
)


@dataclass(frozen=True, slots=True)
class CronExpression:
    """A parsed cron schedule: build one with :func:`parse`, then ask :func:`next_at` when it fires.

    Each set holds the values its field allows (weekday: Sunday = 0 … Saturday = 6). ``reboot``
    marks ``@reboot``, whose sets are empty: it fires once when the scheduler starts, never on a
    clock, so it has no next or last time.
    """

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    reboot: bool = False

    def __str__(self) -> str:
        return self.text


def parse(text: str) -> CronExpression:
    """Parse a cron expression or nickname; raise ConfigError naming the expression and bad field.

    ``text`` is kept as given in :attr:`CronExpression.text` (jobs record it as ``cron_expr``).
    """
    if not isinstance(text, str):
        raise ConfigError(f"a cron expression must be a string, got {text!r}")
    source = text.strip()
    if source == _REBOOT:
        empty: frozenset[int] = frozenset()
        return CronExpression(text, empty, empty, empty, empty, empty, reboot=True)
    if source.startswith("@"):
        if source not in _NICKNAMES:
            known = ", ".join([*_NICKNAMES, _REBOOT])
            raise ConfigError(f"invalid cron expression {text!r}: unknown nickname; expected one of {known}")
        source = _NICKNAMES[source]

    fields = source.split()
    if len(fields) != len(_FIELDS):
        raise ConfigError(
            f"invalid cron expression {text!r}: expected 5 fields (minute hour day month weekday) "
            f"or a nickname such as @daily, got {len(fields)} fields"
        )
    minutes, hours, days, months, weekdays = (
        _parse_field(text, spec, field) for spec, field in zip(_FIELDS, fields, strict=True)
    )
    if not any(day <= _MAX_DAYS_IN_MONTH[month - 1] for month in months for day in days):
        raise ConfigError(
            f"invalid cron expression {text!r}: day field {fields[2]!r} never occurs "
            f"in month field {fields[3]!r}, so it would never run"
        )
    return CronExpression(text, minutes, hours, days, months, weekdays)


def minute_floor(dt: datetime) -> datetime:
    """Return ``dt`` with seconds and microseconds dropped: the start of the minute it falls in."""
    return dt.replace(second=0, microsecond=0)


def matches(expr: CronExpression, dt: datetime) -> bool:
    """Whether ``expr`` fires in the minute of ``dt``, read on the wall clock of ``dt``'s own zone.

    The repeat of a local time after a fall-back does not match (the schedule fired on its first
    occurrence), nor does a wall time inside a spring-forward gap. ``@reboot`` matches any time:
    the scheduler fires it on its first evaluation and then drops it.
    """
    zone = _require_aware(dt, "dt")
    if expr.reboot:
        return True
    if not _wall_matches(expr, dt):
        return False
    floor = minute_floor(dt)
    return _fire_instant(floor.replace(tzinfo=None), zone) == floor.astimezone(UTC)


def now_matches(expr: CronExpression, instant_utc: datetime, timezone: str) -> bool:
    """Whether ``expr`` fires in the minute of ``instant_utc`` on the wall clock of IANA ``timezone``.

    This is the scheduler's once-a-minute question; ``instant_utc`` may carry any zone.
    """
    _require_aware(instant_utc, "instant_utc")
    return matches(expr, instant_utc.astimezone(_zone(timezone)))


def next_at(expr: CronExpression, after: datetime, timezone: str = "Etc/UTC") -> datetime:
    """Return the first minute, as an aware UTC datetime, strictly after ``after`` at which ``expr`` fires.

    ``expr`` is read on the wall clock of IANA ``timezone``. Raises ConfigError for ``@reboot``, an
    unknown zone, a naive ``after``, or a schedule with no run before the year 9999 ends.
    """
    _require_schedule(expr)
    zone = _zone(timezone)
    _require_aware(after, "after")
    try:
        wall = minute_floor(after.astimezone(zone)).replace(tzinfo=None, fold=0)
        # Wall times from the minute of `after` on cover every run later than it: an earlier wall
        # time is an earlier instant. Some of them may still be at or before `after` (the repeated
        # hour of a fall-back reads as earlier wall times), hence the check on each candidate.
        while (found := _nearest_wall(expr, wall, forward=True)) is not None:
            instant = _fire_instant(found, zone)
            if instant is not None and instant > after:
                return instant
            wall = found + timedelta(minutes=1)
    except OverflowError:
        pass
    raise ConfigError(
        f"cron expression {expr.text!r} has no run after {after.isoformat()} before year {MAXYEAR + 1}"
    )


def last_at(expr: CronExpression, before: datetime, timezone: str = "Etc/UTC") -> datetime:
    """Return the last minute, as an aware UTC datetime, before ``before``'s minute at which ``expr`` fired.

    As in Oban, the minute ``before`` falls in is not a candidate, even when ``before`` is seconds
    into it: that minute is the scheduler's "now", which :func:`now_matches` answers. Raises
    ConfigError for ``@reboot``, an unknown zone, a naive ``before``, or no run since year 1.
    """
    _require_schedule(expr)
    zone = _zone(timezone)
    _require_aware(before, "before")
    try:
        local = minute_floor(before.astimezone(zone))
        cutoff = local.astimezone(UTC)
        wall = local.replace(tzinfo=None, fold=0)
        # In the repeated hour of a fall-back, wall times up to one overlap later than `local` ran
        # the first time round, before the cutoff, so the backward search must start past them.
        wall += _repeat_overlap(local)
        while (found := _nearest_wall(expr, wall, forward=False)) is not None:
            instant = _fire_instant(found, zone)
            if instant is not None and instant < cutoff:
                return instant
            wall = found - timedelta(minutes=1)
    except OverflowError:
        pass
    raise ConfigError(
        f"cron expression {expr.text!r} has no run before {before.isoformat()} since year {MINYEAR}"
    )


def _parse_field(text: str, spec: _FieldSpec, field: str) -> frozenset[int]:
    values: set[int] = set()
    for part in field.split(","):
        values.update(_parse_part(text, spec, field, part))
    return frozenset(values)


def _parse_part(text: str, spec: _FieldSpec, field: str, part: str) -> range:
    match = _PART.fullmatch(part)
    if match is None:
        raise _invalid(text, spec, field, f"{part!r} is not one of *, N, A-B, */S, A/S or A-B/S")
    step = 1
    if match["step"] is not None:
        step = _integer(match["step"])
        if not 1 <= step <= _MAX_STEP:
            raise _invalid(text, spec, field, f"step {match['step']} must be 1..{_MAX_STEP}")
    if match["star"] is not None:
        return range(spec.low, spec.high + 1, step)
    first = _value(text, spec, field, match["first"])
    if match["last"] is not None:
        last = _value(text, spec, field, match["last"])
        if first > last:
            raise _invalid(text, spec, field, f"range {part!r} runs backwards ({first} > {last})")
    elif match["step"] is not None:
        last = spec.high
    else:
        last = first
    # Both ends are checked against the field's bounds before the range is built, so `0-99999999`
    # is refused instead of materialised.
    return range(first, last + 1, step)


def _value(text: str, spec: _FieldSpec, field: str, token: str) -> int:
    if token.isdigit():
        number = _integer(token)
        if not spec.low <= number <= spec.high:
            raise _invalid(text, spec, field, f"{token} is out of range {spec.low}-{spec.high}")
        return number
    if token in spec.names:
        return spec.names[token]
    if not spec.names:
        raise _invalid(text, spec, field, f"{token!r} is not a number {spec.low}-{spec.high}")
    if token.upper() in spec.names:
        raise _invalid(text, spec, field, f"names must be uppercase: write {token.upper()!r}, not {token!r}")
    known = "-".join([next(iter(spec.names)), list(spec.names)[-1]])
    raise _invalid(text, spec, field, f"{token!r} is not a number {spec.low}-{spec.high} or a name {known}")


def _integer(digits: str) -> int:
    # Anything longer than this is out of every range; refusing it early keeps int() cheap and
    # away from its limit on digit count.
    return int(digits) if len(digits) <= 9 else 10**9


def _invalid(text: str, spec: _FieldSpec, field: str, reason: str) -> ConfigError:
    return ConfigError(f"invalid cron expression {text!r}: {spec.name} field {field!r}: {reason}")


def _require_schedule(expr: CronExpression) -> None:
    if expr.reboot:
        raise ConfigError(
            f"cron expression {expr.text!r} runs once when the scheduler starts and has no next or last time"
        )


def _require_aware(dt: datetime, name: str) -> tzinfo:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ConfigError(f"{name} must be a timezone-aware datetime, got naive {dt.isoformat()}")
    return dt.tzinfo


def _zone(timezone: str) -> ZoneInfo:
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        # ValueError covers keys that are not zone names at all, such as absolute paths.
        raise ConfigError(
            f"unknown timezone {timezone!r}; expected an IANA name such as 'Etc/UTC' or 'Europe/Berlin'"
        ) from None


def _weekday(day: date) -> int:
    return day.isoweekday() % 7  # ISO counts Monday 1 … Sunday 7; cron wants Sunday 0


def _repeat_overlap(local: datetime) -> timedelta:
    """How much later the first reading of ``local``'s wall time was, if ``local`` is its repeat."""
    first, actual = local.replace(fold=0).utcoffset(), local.utcoffset()
    if first is None or actual is None or first <= actual:
        return timedelta(0)
    return first - actual


def _wall_matches(expr: CronExpression, dt: datetime) -> bool:
    return (
        dt.minute in expr.minutes
        and dt.hour in expr.hours
        and dt.day in expr.days
        and dt.month in expr.months
        and _weekday(dt) in expr.weekdays
    )


def _fire_instant(wall: datetime, zone: tzinfo) -> datetime | None:
    """The UTC instant a naive wall-clock minute fires at in ``zone``, or None if it never occurs."""
    # fold=0 picks the first of two readings of an ambiguous wall time.
    instant = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    # A wall time inside a spring-forward gap comes back from the round trip as a different one.
    if instant.astimezone(zone).replace(tzinfo=None) != wall:
        return None
    return instant


def _nearest_wall(expr: CronExpression, start: datetime, *, forward: bool) -> datetime | None:
    """The matching naive wall minute nearest ``start`` (inclusive) in one direction, or None.

    It steps through the allowed months, then days, then hours, so a sparse schedule costs a few
    hundred steps however far away its next run is, never one per minute.
    """
    minutes, hours, days, months = (
        sorted(values, reverse=not forward) for values in (expr.minutes, expr.hours, expr.days, expr.months)
    )
    bound = (start.year, start.month, start.day, start.hour, start.minute)

    def passed(*prefix: int) -> bool:
        # A (year, month, …) prefix beyond `start` in the wrong direction holds no candidate.
        return prefix < bound[: len(prefix)] if forward else prefix > bound[: len(prefix)]

    if forward:
        years = range(start.year, min(start.year + _SEARCH_YEARS, MAXYEAR) + 1)
    else:
        years = range(start.year, max(start.year - _SEARCH_YEARS, MINYEAR) - 1, -1)
    for year in years:
        for month in months:
            if passed(year, month):
                continue
            days_in_month = monthrange(year, month)[1]
            for day in days:
                if day > days_in_month or passed(year, month, day):
                    continue
                if _weekday(date(year, month, day)) not in expr.weekdays:
                    continue
                for hour in hours:
                    if passed(year, month, day, hour):
                        continue
                    for minute in minutes:
                        if not passed(year, month, day, hour, minute):
                            return datetime(year, month, day, hour, minute)
    return None

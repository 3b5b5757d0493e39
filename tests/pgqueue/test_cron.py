"""Cron expressions: Oban's parsing rules, AND-ed day fields, next/last runs, leap years and DST."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgqueue.cron import CronExpression, last_at, matches, minute_floor, next_at, now_matches, parse
from pgqueue.errors import ConfigError

MINUTE = timedelta(minutes=1)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def sets(expr: CronExpression) -> tuple[frozenset[int], ...]:
    return (expr.minutes, expr.hours, expr.days, expr.months, expr.weekdays)


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "field"),
    [
        # Every expression Oban's own suite rejects (behaviour 45) …
        ("60 * * * *", "minute"),
        ("* 24 * * *", "hour"),
        ("* * 32 * *", "day"),
        ("* * * 13 *", "month"),
        ("* * * * 7", "weekday"),
        ("*/0 * * * *", "minute"),
        ("* * * jan *", "month"),
        ("* * * * sun", "weekday"),
        ("0 0 30 2 *", "day"),
        ("0-99999999 * * * *", "minute"),
        # … and the other shapes the rules refuse.
        ("0 0 31 2,4,6,9,11 *", "day"),
        ("* * * * SAT-SUN", "weekday"),
        ("5-1 * * * *", "minute"),
        ("*/100 * * * *", "minute"),
        ("0-59/0 * * * *", "minute"),
        ("ONE * * * *", "minute"),
        ("MON * * * *", "minute"),
        ("* * * Jan *", "month"),
        ("* * * * FRIDAY", "weekday"),
        ("1,,2 * * * *", "minute"),
        ("* * * * 1,", "weekday"),
        ("*-5 * * * *", "minute"),
        ("* * 0 * *", "day"),
        ("* * * 0 *", "month"),
        ("1" * 60 + " * * * *", "minute"),
    ],
)
def test_invalid_expressions_raise_config_error_naming_expression_and_field(text: str, field: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(text)

    assert repr(text) in str(raised.value)
    assert f"{field} field" in str(raised.value)


@pytest.mark.parametrize("text", ["* * * *", "* * * * * *", "", "   ", "@fortnightly", "@DAILY"])
def test_wrong_field_counts_and_unknown_nicknames_are_rejected(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid cron expression"):
        parse(text)


def test_lowercase_names_are_rejected_with_the_uppercase_spelling_to_use() -> None:
    with pytest.raises(ConfigError, match="write 'JAN'"):
        parse("* * * jan *")


def test_step_from_a_start_value_runs_to_the_field_maximum() -> None:
    assert parse("* 0/12 * * *").hours == {0, 12}
    assert parse("* 1/7 * * *").hours == {1, 8, 15, 22}
    assert parse("* 1-14/7 * * *").hours == {1, 8}


def test_every_part_form_yields_its_values() -> None:
    expr = parse("*/20 3,5-7 1-10/3 */5 *")

    assert expr.minutes == {0, 20, 40}
    assert expr.hours == {3, 5, 6, 7}
    assert expr.days == {1, 4, 7, 10}
    assert expr.months == {1, 6, 11}
    assert expr.weekdays == set(range(7))
    assert parse("* * * * *").days == set(range(1, 32))
    assert not expr.reboot


def test_uppercase_names_lists_ranges_and_steps_translate_to_numbers() -> None:
    expr = parse("0 0 * JAN-MAR,DEC MON-FRI")

    assert expr.months == {1, 2, 3, 12}
    assert expr.weekdays == {1, 2, 3, 4, 5}
    assert parse("0 0 * * SUN,SAT").weekdays == {0, 6}
    assert parse("0 0 * JAN/3 *").months == {1, 4, 7, 10}
    assert parse("0 0 * * SUN-TUE/2").weekdays == {0, 2}


def test_february_29_is_a_possible_day() -> None:
    expr = parse("0 0 29 2 *")

    assert expr.days == {29}
    assert expr.months == {2}


def test_tabs_and_repeated_spaces_separate_fields_and_text_is_kept_as_given() -> None:
    expr = parse(" 5\t4  * * * ")

    assert expr.minutes == {5}
    assert expr.hours == {4}
    assert expr.text == " 5\t4  * * * "


@pytest.mark.parametrize(
    ("nickname", "equivalent"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
    ],
)
def test_nicknames_expand_to_their_five_field_schedule(nickname: str, equivalent: str) -> None:
    expr = parse(nickname)

    assert sets(expr) == sets(parse(equivalent))
    assert expr.text == nickname
    assert str(expr) == nickname


def test_reboot_matches_any_time_but_has_no_next_or_last_run() -> None:
    expr = parse("@reboot")

    assert expr.reboot
    assert matches(expr, utc(2024, 5, 1, 12, 34))
    with pytest.raises(ConfigError, match="@reboot"):
        next_at(expr, utc(2024, 5, 1))
    with pytest.raises(ConfigError, match="@reboot"):
        last_at(expr, utc(2024, 5, 1))


# --- matching ---------------------------------------------------------------------------------


def test_day_of_month_and_day_of_week_must_both_match() -> None:
    friday_13th = parse("0 0 13 * FRI")

    # Vixie cron would OR the two fields and fire on Friday 5 January; Oban waits for a Friday 13th.
    assert next_at(friday_13th, utc(2024, 1, 1)) == utc(2024, 9, 13)
    assert matches(friday_13th, utc(2024, 9, 13))
    assert not matches(friday_13th, utc(2024, 1, 5))  # a Friday, not the 13th
    assert not matches(friday_13th, utc(2024, 1, 13))  # the 13th, a Saturday


def test_weekday_zero_is_sunday() -> None:
    expr = parse("0 12 * * 0")

    assert next_at(expr, utc(2024, 3, 13)) == utc(2024, 3, 17, 12)  # Wednesday to Sunday
    assert sets(expr) == sets(parse("0 12 * * SUN"))


def test_matches_reads_the_wall_clock_of_the_datetime_it_is_given() -> None:
    expr = parse("0 9 * * MON-FRI")
    berlin_nine = datetime(2024, 6, 3, 9, 0, 42, tzinfo=ZoneInfo("Europe/Berlin"))

    assert matches(expr, berlin_nine)
    assert not matches(expr, berlin_nine.astimezone(UTC))  # the same instant reads 07:00 in UTC
    assert now_matches(expr, berlin_nine.astimezone(UTC), "Europe/Berlin")
    assert not now_matches(expr, berlin_nine.astimezone(UTC), "Etc/UTC")


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../etc/passwd", ""])
def test_an_unknown_timezone_is_a_config_error_naming_it(zone: str) -> None:
    expr = parse("* * * * *")

    with pytest.raises(ConfigError, match=f"unknown timezone {zone!r}"):
        now_matches(expr, utc(2024, 1, 1), zone)
    with pytest.raises(ConfigError, match=f"unknown timezone {zone!r}"):
        next_at(expr, utc(2024, 1, 1), zone)


def test_naive_datetimes_are_refused() -> None:
    expr = parse("* * * * *")

    with pytest.raises(ConfigError, match="timezone-aware"):
        matches(expr, datetime(2024, 1, 1))
    with pytest.raises(ConfigError, match="after must be"):
        next_at(expr, datetime(2024, 1, 1))
    with pytest.raises(ConfigError, match="before must be"):
        last_at(expr, datetime(2024, 1, 1))


def test_minute_floor_drops_seconds_and_microseconds() -> None:
    assert minute_floor(datetime(2024, 1, 1, 12, 30, 59, 999_999, tzinfo=UTC)) == utc(2024, 1, 1, 12, 30)


# --- next_at and last_at ----------------------------------------------------------------------


def test_last_at_finds_the_previous_years_run_as_oban_does() -> None:
    assert last_at(parse("0 0-2 5 9 *"), utc(2024, 9, 4)) == utc(2023, 9, 5, 2)


def test_next_at_is_strictly_after_and_last_at_excludes_the_current_minute() -> None:
    every_minute = parse("* * * * *")

    assert next_at(every_minute, utc(2024, 1, 1, 12, 0)) == utc(2024, 1, 1, 12, 1)
    assert next_at(every_minute, utc(2024, 1, 1, 12, 0, 30)) == utc(2024, 1, 1, 12, 1)
    assert last_at(every_minute, utc(2024, 1, 1, 12, 0)) == utc(2024, 1, 1, 11, 59)
    # The minute `before` is in belongs to now_matches, as in Oban, even 30 s into it.
    assert last_at(every_minute, utc(2024, 1, 1, 12, 0, 30)) == utc(2024, 1, 1, 11, 59)


def test_results_are_utc_aware_whatever_zone_the_input_carries() -> None:
    after = datetime(2024, 6, 1, 8, 10, tzinfo=ZoneInfo("Asia/Tokyo"))  # 2024-05-31 23:10Z

    found = next_at(parse("0 * * * *"), after)

    assert found == utc(2024, 6, 1, 0)
    assert found.tzinfo is UTC


def test_runs_on_the_31st_skip_the_months_that_are_shorter() -> None:
    expr = parse("0 0 31 * *")

    assert next_at(expr, utc(2024, 4, 15)) == utc(2024, 5, 31)
    assert last_at(expr, utc(2024, 3, 15)) == utc(2024, 1, 31)
    assert next_at(parse("0 0 30 * *"), utc(2024, 2, 1)) == utc(2024, 3, 30)


def test_the_year_rolls_over_in_both_directions() -> None:
    new_years_eve = parse("59 23 31 12 *")

    assert next_at(new_years_eve, utc(2024, 12, 31, 23, 58, 59)) == utc(2024, 12, 31, 23, 59)
    assert next_at(new_years_eve, utc(2024, 12, 31, 23, 59)) == utc(2025, 12, 31, 23, 59)
    assert last_at(parse("0 0 1 1 *"), utc(2024, 1, 1)) == utc(2023, 1, 1)


def test_february_29_runs_only_in_leap_years() -> None:
    leap_day = parse("0 0 29 2 *")

    assert next_at(leap_day, utc(2024, 3, 1)) == utc(2028, 2, 29)
    assert last_at(leap_day, utc(2028, 2, 28)) == utc(2024, 2, 29)
    assert next_at(leap_day, utc(2097, 3, 1)) == utc(2104, 2, 29)  # 2100 is not a leap year
    # A leap day on a Monday is 20 years away: found by skipping months, not minutes.
    assert next_at(parse("0 0 29 2 MON"), utc(2024, 3, 1)) == utc(2044, 2, 29)


def test_searching_past_the_ends_of_the_calendar_is_a_config_error() -> None:
    every_minute = parse("* * * * *")

    with pytest.raises(ConfigError, match="no run after"):
        next_at(every_minute, utc(9999, 12, 31, 23, 59))
    with pytest.raises(ConfigError, match="no run before"):
        last_at(every_minute, utc(1, 1, 1, 0, 0))


# --- daylight saving --------------------------------------------------------------------------
# Europe/Berlin, 2024: on 31 March 02:00 CET jumps to 03:00 CEST, so 02:00-02:59 never happens;
# on 27 October 03:00 CEST falls back to 02:00 CET, so 02:00-02:59 happens twice.


def test_a_local_time_skipped_by_spring_forward_does_not_run_that_day() -> None:
    half_past_two = parse("30 2 * * *")

    assert next_at(half_past_two, utc(2024, 3, 30, 12), "Europe/Berlin") == utc(2024, 4, 1, 0, 30)
    assert last_at(half_past_two, utc(2024, 4, 1, 0, 0), "Europe/Berlin") == utc(2024, 3, 30, 1, 30)
    assert next_at(half_past_two, utc(2024, 3, 9, 12), "America/New_York") == utc(2024, 3, 11, 6, 30)


def test_a_local_time_repeated_by_fall_back_runs_once_the_first_time() -> None:
    half_past_two = parse("30 2 * * *")

    first = next_at(half_past_two, utc(2024, 10, 26, 12), "Europe/Berlin")

    assert first == utc(2024, 10, 27, 0, 30)  # 02:30 CEST
    assert next_at(half_past_two, first, "Europe/Berlin") == utc(2024, 10, 28, 1, 30)
    assert now_matches(half_past_two, utc(2024, 10, 27, 0, 30), "Europe/Berlin")
    assert not now_matches(half_past_two, utc(2024, 10, 27, 1, 30), "Europe/Berlin")  # 02:30 CET again


def test_quarter_hours_through_the_repeated_hour_follow_the_first_pass() -> None:
    quarter_hours = parse("*/15 * * * *")
    runs = [utc(2024, 10, 27, 0, 0)]
    for _ in range(5):
        runs.append(next_at(quarter_hours, runs[-1], "Europe/Berlin"))

    # 02:00-02:45 CEST run; their repeats in CET (01:00Z-01:45Z) do not; 03:00 CET is 02:00Z.
    assert runs[1:] == [
        utc(2024, 10, 27, 0, 15),
        utc(2024, 10, 27, 0, 30),
        utc(2024, 10, 27, 0, 45),
        utc(2024, 10, 27, 2, 0),
        utc(2024, 10, 27, 2, 15),
    ]
    # From inside the repeated hour, the last run is the end of the first pass, not a repeat.
    assert last_at(quarter_hours, utc(2024, 10, 27, 1, 40), "Europe/Berlin") == utc(2024, 10, 27, 0, 45)


# --- properties -------------------------------------------------------------------------------
# An independent oracle: read the minute on the zone's wall clock and compare field by field. The
# repeat of an ambiguous wall time is the reading zoneinfo marks with fold=1.

# Each zone's 2024 transitions, in UTC; Lord Howe shifts by 30 minutes, not an hour.
TRANSITIONS = {
    "Etc/UTC": [utc(2024, 3, 31, 1)],
    "Europe/Berlin": [utc(2024, 3, 31, 1), utc(2024, 10, 27, 1)],
    "America/New_York": [utc(2024, 3, 10, 7), utc(2024, 11, 3, 6)],
    "Australia/Lord_Howe": [utc(2024, 4, 6, 15), utc(2024, 10, 5, 15, 30)],
}
WINDOW = timedelta(days=1)


def fires(expr: CronExpression, minute: datetime, zone: ZoneInfo) -> bool:
    local = minute.astimezone(zone)
    return (
        local.fold == 0
        and local.minute in expr.minutes
        and local.hour in expr.hours
        and local.day in expr.days
        and local.month in expr.months
        and local.isoweekday() % 7 in expr.weekdays
    )


def field(low: int, high: int) -> st.SearchStrategy[str]:
    value = st.integers(low, high)
    step = st.integers(1, 99) | st.integers(1, 6)
    part = st.one_of(
        st.just("*"),
        value.map(str),
        st.tuples(value, value).map(lambda ab: f"{min(ab)}-{max(ab)}"),
        step.map(lambda s: f"*/{s}"),
        st.tuples(value, step).map(lambda vs: f"{vs[0]}/{vs[1]}"),
        st.tuples(value, value, step).map(lambda t: f"{min(t[:2])}-{max(t[:2])}/{t[2]}"),
    )
    return st.lists(part, min_size=1, max_size=3).map(",".join)


def parses(text: str) -> bool:
    try:
        parse(text)
    except ConfigError:
        return False
    return True


# Day, month and weekday lean towards `*` so that most runs land inside the brute-force window;
# hours lean towards 1-3 a.m., where the clocks change.
expressions = (
    st.tuples(
        field(0, 59),
        field(0, 23) | field(1, 3),
        st.just("*") | field(1, 31),
        st.just("*") | field(1, 12),
        st.just("*") | field(0, 6),
    )
    .map(" ".join)
    .filter(parses)
    .map(parse)
)


@st.composite
def zoned_instants(draw: st.DrawFn) -> tuple[str, datetime]:
    """A zone and an instant: anywhere in four years, or within three hours of a DST change."""
    zone = draw(st.sampled_from(sorted(TRANSITIONS)))
    if draw(st.booleans()):
        return zone, draw(st.datetimes(datetime(2023, 1, 1), datetime(2026, 12, 31), timezones=st.just(UTC)))
    near = draw(st.sampled_from(TRANSITIONS[zone]))
    return zone, near + timedelta(seconds=draw(st.integers(-3 * 3600, 3 * 3600)))


PROPERTY_SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.filter_too_much]
)


@PROPERTY_SETTINGS
@given(expr=expressions, case=zoned_instants())
def test_next_at_fires_and_no_minute_before_it_does(expr: CronExpression, case: tuple[str, datetime]) -> None:
    zone_name, after = case
    zone = ZoneInfo(zone_name)

    found = next_at(expr, after, zone_name)

    assert found > after
    assert found.tzinfo is UTC
    assert found == minute_floor(found)
    assert fires(expr, found, zone)
    assert now_matches(expr, found, zone_name)
    minute = minute_floor(after) + MINUTE
    while minute < min(found, after + WINDOW):
        assert not fires(expr, minute, zone), minute
        minute += MINUTE


@PROPERTY_SETTINGS
@given(expr=expressions, case=zoned_instants())
def test_last_at_fired_and_no_minute_after_it_did(expr: CronExpression, case: tuple[str, datetime]) -> None:
    zone_name, before = case
    zone = ZoneInfo(zone_name)

    found = last_at(expr, before, zone_name)

    assert found < minute_floor(before)
    assert found.tzinfo is UTC
    assert fires(expr, found, zone)
    minute = minute_floor(before) - MINUTE
    while minute > max(found, before - WINDOW):
        assert not fires(expr, minute, zone), minute
        minute -= MINUTE


@PROPERTY_SETTINGS
@given(expr=expressions, case=zoned_instants())
def test_now_matches_agrees_with_reading_the_wall_clock(
    expr: CronExpression, case: tuple[str, datetime]
) -> None:
    zone_name, instant = case

    assert now_matches(expr, instant, zone_name) == fires(expr, minute_floor(instant), ZoneInfo(zone_name))

"""NCRONTAB schedules: the occurrences the Functions host would compute, and clear errors for bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.ncrontab import CrontabError, next_occurrence, parse


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("schedule", "after", "expected"),
    [
        # every five minutes, on the minute
        ("0 */5 * * * *", utc(2024, 1, 1, 0, 0, 0), utc(2024, 1, 1, 0, 5, 0)),
        ("0 */5 * * * *", utc(2024, 1, 1, 0, 4, 59, 900_000), utc(2024, 1, 1, 0, 5, 0)),
        ("0 */5 * * * *", utc(2024, 1, 1, 0, 5, 0), utc(2024, 1, 1, 0, 10, 0)),  # strictly after
        ("0 */5 * * * *", utc(2024, 1, 1, 23, 57, 0), utc(2024, 1, 2, 0, 0, 0)),
        # daily at 03:00
        ("0 0 3 * * *", utc(2024, 1, 1, 2, 59, 59), utc(2024, 1, 1, 3, 0, 0)),
        ("0 0 3 * * *", utc(2024, 1, 1, 3, 0, 0), utc(2024, 1, 2, 3, 0, 0)),
        ("0 0 3 * * *", utc(2024, 12, 31, 12, 0, 0), utc(2025, 1, 1, 3, 0, 0)),
        # every ten seconds
        ("*/10 * * * * *", utc(2024, 1, 1, 12, 0, 5), utc(2024, 1, 1, 12, 0, 10)),
        ("*/10 * * * * *", utc(2024, 1, 1, 12, 0, 59), utc(2024, 1, 1, 12, 1, 0)),
        ("* * * * * *", utc(2024, 1, 1, 12, 0, 0, 500_000), utc(2024, 1, 1, 12, 0, 1)),
        # weekdays by number (2024-01-05 is a Friday) and by name, 0 = Sunday
        ("0 30 9 * * 1-5", utc(2024, 1, 5, 10, 0, 0), utc(2024, 1, 8, 9, 30, 0)),
        ("0 30 9 * * Mon-Fri", utc(2024, 1, 5, 10, 0, 0), utc(2024, 1, 8, 9, 30, 0)),
        ("0 0 12 * * Mon,Wed", utc(2024, 1, 8, 12, 0, 0), utc(2024, 1, 10, 12, 0, 0)),
        ("0 0 12 * * sunday", utc(2024, 1, 8, 0, 0, 0), utc(2024, 1, 14, 12, 0, 0)),
        ("0 0 12 * * 0", utc(2024, 1, 8, 0, 0, 0), utc(2024, 1, 14, 12, 0, 0)),
        ("0 0 12 * * SAT", utc(2024, 1, 8, 0, 0, 0), utc(2024, 1, 13, 12, 0, 0)),
        # ranges with steps, lists, "a/n" (a to max every n), reversed ranges (NCrontab swaps the ends)
        ("0 0 9-17/4 * * *", utc(2024, 1, 1, 9, 0, 0), utc(2024, 1, 1, 13, 0, 0)),
        ("0 0 9-17/4 * * *", utc(2024, 1, 1, 13, 0, 0), utc(2024, 1, 1, 17, 0, 0)),
        ("0 0 9-17/4 * * *", utc(2024, 1, 1, 17, 0, 0), utc(2024, 1, 2, 9, 0, 0)),
        ("0 15,45 * * * *", utc(2024, 1, 1, 8, 20, 0), utc(2024, 1, 1, 8, 45, 0)),
        ("0 15,45 * * * *", utc(2024, 1, 1, 8, 45, 0), utc(2024, 1, 1, 9, 15, 0)),
        ("5/20 * * * * *", utc(2024, 1, 1, 0, 0, 25), utc(2024, 1, 1, 0, 0, 45)),
        ("5/20 * * * * *", utc(2024, 1, 1, 0, 0, 45), utc(2024, 1, 1, 0, 1, 5)),
        ("0 0 0 * * 5-1", utc(2024, 1, 5, 12, 0, 0), utc(2024, 1, 8, 0, 0, 0)),
        ("1,2,5-7,*/30 * * * * *", utc(2024, 1, 1, 0, 0, 2), utc(2024, 1, 1, 0, 0, 5)),
        ("1,2,5-7,*/30 * * * * *", utc(2024, 1, 1, 0, 0, 7), utc(2024, 1, 1, 0, 0, 30)),
        # months by name and number; month ends
        ("0 0 0 1 Jan,jul *", utc(2024, 2, 1, 0, 0, 0), utc(2024, 7, 1, 0, 0, 0)),
        ("0 0 0 1 1,7 *", utc(2024, 7, 1, 0, 0, 0), utc(2025, 1, 1, 0, 0, 0)),
        ("0 0 0 31 * *", utc(2024, 1, 31, 0, 0, 0), utc(2024, 3, 31, 0, 0, 0)),
        ("0 0 0 29 2 *", utc(2024, 3, 1, 0, 0, 0), utc(2028, 2, 29, 0, 0, 0)),
        # day of month AND day of week (NCrontab), not OR as in Vixie cron: Friday the 13th
        ("0 0 0 13 * Fri", utc(2024, 1, 1, 0, 0, 0), utc(2024, 9, 13, 0, 0, 0)),
        # five fields: no seconds, minute resolution
        ("*/15 * * * *", utc(2024, 1, 1, 0, 7, 30), utc(2024, 1, 1, 0, 15, 0)),
        ("*/15 * * * *", utc(2024, 1, 1, 0, 15, 0), utc(2024, 1, 1, 0, 30, 0)),
        # extra whitespace between fields is fine
        ("  0   0  3 * * *  ", utc(2024, 1, 1, 0, 0, 0), utc(2024, 1, 1, 3, 0, 0)),
    ],
)
def test_next_occurrence(schedule: str, after: datetime, expected: datetime) -> None:
    assert next_occurrence(schedule, after) == expected


def test_result_is_utc_and_naive_input_means_utc() -> None:
    result = next_occurrence("0 0 3 * * *", datetime(2024, 1, 1, 2, 0, 0))
    assert result == utc(2024, 1, 1, 3, 0, 0)
    assert result.tzinfo is UTC


def test_aware_input_in_another_zone_is_converted_to_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    # 04:30 at +02:00 is 02:30 UTC: the next 03:00 UTC is the same day.
    assert next_occurrence("0 0 3 * * *", datetime(2024, 1, 1, 4, 30, tzinfo=plus_two)) == utc(2024, 1, 1, 3, 0, 0)


def test_placeholders_resolve_from_settings() -> None:
    settings_ = {"SCHEDULE": "0 */5 * * * *", "MINUTE": "30"}
    assert next_occurrence("%SCHEDULE%", utc(2024, 1, 1), settings_) == utc(2024, 1, 1, 0, 5, 0)
    assert next_occurrence("0 %MINUTE% * * * *", utc(2024, 1, 1), settings_) == utc(2024, 1, 1, 0, 30, 0)
    assert parse("%SCHEDULE%", settings_).expression == "0 */5 * * * *"


def test_missing_placeholder_setting_names_it() -> None:
    with pytest.raises(CrontabError, match="GUESTSYNC_SCHEDULE"):
        parse("%GUESTSYNC_SCHEDULE%", {})
    with pytest.raises(CrontabError, match="EMPTY"):
        parse("%EMPTY%", {"EMPTY": ""})


def test_parsed_schedule_is_reusable() -> None:
    schedule = parse("0 0 */6 * * *")
    first = schedule.next_after(utc(2024, 1, 1, 1, 0, 0))
    assert first == utc(2024, 1, 1, 6, 0, 0)
    assert next_occurrence(schedule, first) == utc(2024, 1, 1, 12, 0, 0)
    assert str(schedule) == "0 0 */6 * * *"


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("", "found 0"),
        ("* * * *", "found 4"),
        ("0 0 0 * * * *", "found 7"),
        ("60 * * * * *", "60 is outside 0-59"),
        ("0 60 * * * *", "minute"),
        ("0 0 24 * * *", "hour"),
        ("0 0 0 0 * *", "day field"),
        ("0 0 0 32 * *", "day field"),
        ("0 0 0 * 13 *", "month"),
        ("0 0 0 * * 7", r"0 = Sunday"),
        ("0 0 0 * * Funday", "not a known name"),
        ("0 0 0 * Smarch *", "not a known name"),
        ("x * * * * *", "not a number"),
        ("1,,2 * * * * *", "list item is empty"),
        ("*/0 * * * * *", "step must be at least 1"),
        ("*/x * * * * *", "step 'x' is not a number"),
        ("1- * * * * *", "value is empty"),
        ("0 0 0 ? * *", "second|day"),
        ("0 0 0 30 2 *", "never fires"),
        ("0 0 0 31 4,6,9,11 *", "never fires"),
    ],
)
def test_invalid_schedules_give_clear_errors(schedule: str, message: str) -> None:
    with pytest.raises(CrontabError, match=message):
        parse(schedule)


def test_error_message_quotes_the_bad_field_and_schedule() -> None:
    with pytest.raises(CrontabError) as info:
        parse("0 0 25 * * *")
    text = str(info.value)
    assert "'25' is not a valid hour field in '0 0 25 * * *'" in text


def test_non_string_schedule_is_refused() -> None:
    with pytest.raises(CrontabError, match="must be a string"):
        parse(5)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    seconds=st.lists(st.integers(0, 59), min_size=1, max_size=5, unique=True),
    minutes=st.lists(st.integers(0, 59), min_size=1, max_size=5, unique=True),
    start=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
)
def test_matches_brute_force_search(seconds: list[int], minutes: list[int], start: datetime) -> None:
    """Against second-by-second search: the first matching second strictly after ``start``."""
    schedule = f"{','.join(map(str, seconds))} {','.join(map(str, minutes))} * * * *"
    candidate = start.replace(tzinfo=UTC, microsecond=0) + timedelta(seconds=1)
    for _ in range(3601):
        if candidate.second in seconds and candidate.minute in minutes:
            break
        candidate += timedelta(seconds=1)
    assert next_occurrence(schedule, start) == candidate

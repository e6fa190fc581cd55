"""NCRONTAB schedules as the Functions host reads them for timer triggers.

The host parses ``schedule`` with NCrontab (6 fields when seconds are included, 5 otherwise), after replacing
``%NAME%`` with app settings, and computes occurrences in UTC. This module reproduces that so timers fire
locally when they would in Azure, and so the agent's reconcile schedule reads like a timer's (it is part of the
product for the agent; the local runner in devtools/ uses it too):

``{second} {minute} {hour} {day} {month} {day-of-week}``

* ``*``, single values, ranges ``a-b``, lists ``a,b,c``, steps ``*/n`` ``a-b/n`` and ``a/n`` (``a`` to the
  field's maximum, every ``n``).
* Months and days of week may be names; like NCrontab a name matches by case-insensitive prefix
  (``Jan``, ``january``, ``MON``). Day of week is 0-6 with 0 = Sunday (7 is rejected, as in NCrontab).
* A reversed range such as ``5-1`` means ``1-5`` (NCrontab swaps the ends; it does not wrap around).
* Day of month and day of week must BOTH match (NCrontab), unlike Vixie cron where either one suffices.

Where NCrontab silently accepts nonsense this module refuses with :class:`CrontabError` instead: a step of
0 (NCrontab treats it as 1) and a day/month combination that never exists (``0 0 0 30 2 *``).
"""

from __future__ import annotations

import calendar
import re
from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = ["CronSchedule", "CrontabError", "next_occurrence", "parse", "resolve_settings"]


class CrontabError(ValueError):
    """A schedule that cannot be parsed, refers to a missing setting, or never fires."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()


_SECOND = _Field("second", 0, 59)
_MINUTE = _Field("minute", 0, 59)
_HOUR = _Field("hour", 0, 23)
_DAY = _Field("day", 1, 31)
_MONTH = _Field("month", 1, 12, tuple(calendar.month_name[1:]))
_DAY_OF_WEEK = _Field("day-of-week", 0, 6, ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday",
                                             "Saturday"))
_FIELDS_6 = (_SECOND, _MINUTE, _HOUR, _DAY, _MONTH, _DAY_OF_WEEK)
_PLACEHOLDER = re.compile(r"%([^%\s]+)%")
_NUMBER = re.compile(r"[0-9]+")
#: Longest day of each month in any year: February counts its leap day.
_MAX_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
#: The Gregorian calendar repeats every 400 years, so a valid schedule fires within that span.
_SEARCH_YEARS = 401


@dataclass(frozen=True)
class CronSchedule:
    """A parsed schedule: the sets of values each field allows."""

    expression: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    days_of_week: frozenset[int]
    has_seconds: bool

    def __str__(self) -> str:
        return self.expression

    def next_after(self, after: datetime) -> datetime:
        """The first occurrence strictly after ``after`` (naive means UTC), as an aware UTC datetime."""
        if after.tzinfo is None:
            after = after.replace(tzinfo=UTC)
        after = after.astimezone(UTC)
        # Like NCrontab: whole seconds (whole minutes without a seconds field), never ``after`` itself.
        if self.has_seconds:
            start = after.replace(microsecond=0) + timedelta(seconds=1)
        else:
            start = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
        for year in range(start.year, start.year + _SEARCH_YEARS):
            for month in self.months:
                if (year, month) < (start.year, start.month):
                    continue
                last_day = calendar.monthrange(year, month)[1]
                for day in self.days:
                    if day > last_day:
                        break
                    if (year, month, day) < (start.year, start.month, start.day):
                        continue
                    weekday = (calendar.weekday(year, month, day) + 1) % 7  # cron: 0 = Sunday
                    if weekday not in self.days_of_week:
                        continue
                    same_day = (year, month, day) == (start.year, start.month, start.day)
                    floor = (start.hour, start.minute, start.second) if same_day else (0, 0, 0)
                    hms = self._first_time_at_or_after(floor)
                    if hms is not None:
                        return datetime(year, month, day, *hms, tzinfo=UTC)
        raise CrontabError(f"schedule '{self.expression}' has no occurrence after {after.isoformat()}")

    def _first_time_at_or_after(self, floor: tuple[int, int, int]) -> tuple[int, int, int] | None:
        hour0, minute0, second0 = floor
        for hour in self.hours[bisect_left(self.hours, hour0):]:
            minute_floor = minute0 if hour == hour0 else 0
            for minute in self.minutes[bisect_left(self.minutes, minute_floor):]:
                second_floor = second0 if (hour, minute) == (hour0, minute0) else 0
                i = bisect_left(self.seconds, second_floor)
                if i < len(self.seconds):
                    return hour, minute, self.seconds[i]
        return None


def resolve_settings(expression: str, settings: Mapping[str, str] | None) -> str:
    """Replace ``%NAME%`` with the app setting NAME, as the host's name resolver does."""

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        value = (settings or {}).get(name)
        if value is None or value == "":
            raise CrontabError(f"schedule '{expression}' refers to app setting '{name}', which is not set")
        return value

    return _PLACEHOLDER.sub(lookup, expression)


def parse(expression: str, settings: Mapping[str, str] | None = None) -> CronSchedule:
    """Parse a 6-field (or 5-field, no seconds) NCRONTAB expression, resolving ``%NAME%`` first."""
    if not isinstance(expression, str):
        raise CrontabError(f"a schedule must be a string, not {type(expression).__name__}")
    resolved = resolve_settings(expression, settings).strip()
    tokens = resolved.split()
    if len(tokens) not in (5, 6):
        raise CrontabError(
            f"'{resolved}' is not a valid NCRONTAB expression: it needs 6 fields "
            "({second} {minute} {hour} {day} {month} {day-of-week}) or 5 without seconds, "
            f"found {len(tokens)}"
        )
    has_seconds = len(tokens) == 6
    fields = _FIELDS_6 if has_seconds else _FIELDS_6[1:]
    values = [_parse_field(field, token, resolved) for field, token in zip(fields, tokens, strict=True)]
    if not has_seconds:
        values.insert(0, [0])
    seconds, minutes, hours, days, months, days_of_week = (tuple(sorted(set(v))) for v in values)
    if not any(day <= _MAX_DAYS[month - 1] for month in months for day in days):
        raise CrontabError(f"'{resolved}' never fires: none of its days exists in any of its months")
    return CronSchedule(
        expression=resolved,
        seconds=seconds,
        minutes=minutes,
        hours=hours,
        days=days,
        months=months,
        days_of_week=frozenset(days_of_week),
        has_seconds=has_seconds,
    )


def next_occurrence(
    schedule: str | CronSchedule, after: datetime, settings: Mapping[str, str] | None = None
) -> datetime:
    """The first time strictly after ``after`` (naive means UTC) that ``schedule`` fires, in UTC."""
    parsed = schedule if isinstance(schedule, CronSchedule) else parse(schedule, settings)
    return parsed.next_after(after)


def _parse_field(field: _Field, token: str, expression: str) -> list[int]:
    def error(reason: str) -> CrontabError:
        return CrontabError(f"'{token}' is not a valid {field.name} field in '{expression}': {reason}")

    out: list[int] = []
    for part in token.split(","):
        if not part:
            raise error("a list item is empty")
        step = 1
        has_step = False
        if "/" in part:
            part, _, step_text = part.partition("/")
            if not _NUMBER.fullmatch(step_text):
                raise error(f"step '{step_text}' is not a number")
            step = int(step_text)
            has_step = True
            if step < 1:
                raise error("the step must be at least 1")
        if part == "*":
            first, last = field.low, field.high
        elif "-" in part[1:]:
            dash = part.index("-", 1)
            first = _parse_value(field, part[:dash], error)
            last = _parse_value(field, part[dash + 1:], error)
            first, last = min(first, last), max(first, last)
        else:
            first = _parse_value(field, part, error)
            last = field.high if has_step else first
        out.extend(range(first, last + 1, step))
    return out


def _parse_value(field: _Field, text: str, make_error: Callable[[str], CrontabError]) -> int:
    if not text:
        raise make_error("a value is empty")
    if _NUMBER.fullmatch(text):
        value = int(text)
        if not field.low <= value <= field.high:
            hint = " (0 = Sunday)" if field is _DAY_OF_WEEK else ""
            raise make_error(f"{value} is outside {field.low}-{field.high}{hint}")
        return value
    if not field.names:
        raise make_error(f"'{text}' is not a number between {field.low} and {field.high}")
    lowered = text.lower()
    for index, name in enumerate(field.names):
        if name.lower().startswith(lowered):
            return field.low + index
    raise make_error(f"'{text}' is not a known name; use one of {', '.join(field.names)}")

"""Calendar days of engine time (UTC), in integers only: a settlement file's date, a card's expiry month."""

import re

from engine.types import NANOSECONDS_PER_SECOND

DAY_NS = 86400 * NANOSECONDS_PER_SECOND
DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def days_since_epoch(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to a date of the proleptic Gregorian calendar, any year (Hinnant's days_from_civil)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def day_of(timestamp_ns: int) -> int:
    """The UTC day an instant of engine time falls on, as days since 1970-01-01."""
    return timestamp_ns // DAY_NS


def day_of_date(text: str) -> int | None:
    """A `YYYY-MM-DD` date as days since 1970-01-01; None if it is no date."""
    match = DATE.fullmatch(text)
    if match is None:
        return None
    year, month, day = (int(part) for part in match.groups())
    if not 1 <= month <= 12 or not 1 <= day <= _MONTH_DAYS[month - 1]:
        return None
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if month == 2 and day == 29 and not leap:
        return None
    return days_since_epoch(year, month, day)

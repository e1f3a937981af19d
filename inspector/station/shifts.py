"""Shifts of a line: start times (local clock of the station) that repeat every day."""

from __future__ import annotations

import itertools
import re
from datetime import datetime, time, timedelta

from ..errors import InspectorError


def parse_shifts(text: str) -> tuple[time, ...]:
    """``"06:00,14:00,22:00"`` -> sorted start times."""
    starts = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        m = re.fullmatch(r"(\d{1,2}):(\d{2})", item)
        if not m or int(m[1]) > 23 or int(m[2]) > 59:
            raise InspectorError(f"--shifts {text}: {item!r} is no HH:MM time; e.g. 06:00,14:00,22:00")
        starts.append(time(int(m[1]), int(m[2])))
    if not starts or len(set(starts)) != len(starts):
        raise InspectorError(f"--shifts {text}: give one or more different HH:MM start times")
    return tuple(sorted(starts))


def _local(day, at: time) -> datetime:
    return datetime.combine(day, at).astimezone()  # the station's local zone, daylight saving included


def shift_of(moment: datetime, starts: tuple[time, ...]) -> tuple[datetime, datetime]:
    """(start, end) of the shift that ``moment`` (aware) falls in, as aware local times."""
    moment = moment.astimezone()
    day = moment.date()
    boundaries = sorted(_local(day + timedelta(days=d), t) for d in (-1, 0, 1) for t in starts)
    for a, b in itertools.pairwise(boundaries):
        if a <= moment < b:
            return a, b
    raise AssertionError("a moment always falls between two shift starts")

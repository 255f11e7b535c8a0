"""Durations on the command line (``--max-age 90d``): one rule, one error.

A rotation policy is stated in days ("every 90 days"), monitoring checks in
hours or minutes; seconds make tests possible without waiting for a day.
"""

from __future__ import annotations

import re
from typing import Final

from rolekit.errors import RolekitError

_UNITS: Final = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)([wdhms])")
#: a bound on what can be meant (100 years), so a typo cannot overflow a date
_MAX_SECONDS: Final = 100 * 365 * 86400


def parse_duration(text: str, option: str = "--max-age") -> float:
    """Seconds of ``90d``, ``12h``, ``30m``, ``45s``, ``2w`` or ``0``.

    :raises RolekitError: anything else, naming *option* and the text.
    """
    value = text.strip().lower()
    if value == "0":
        return 0.0
    match = _DURATION.fullmatch(value)
    if match is None:
        raise RolekitError(
            f"{option} {text!r}: expected a number and a unit (w, d, h, m or s), "
            "for example 90d, 12h or 30m"
        )
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds > _MAX_SECONDS:
        raise RolekitError(f"{option} {text!r}: longer than 100 years")
    return seconds


def describe(seconds: float) -> str:
    """``95 days``, ``5 hours``, ``40 minutes`` or ``12 seconds``: how a person reads an age."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if abs(seconds) >= size:
            count = int(abs(seconds) // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    count = int(abs(seconds))
    return f"{count} second{'s' if count != 1 else ''}"

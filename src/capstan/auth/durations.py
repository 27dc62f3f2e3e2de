"""Parsing human durations such as ``30d``, ``12h`` or ``1h30m`` (pure; no clock reads)."""

from __future__ import annotations

import re

from capstan.errors import InvalidParameterValue

_UNIT_MS = {"w": 7 * 86_400_000, "d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000}
_PART = re.compile(r"(\d+)([wdhms])")


def parse_duration(text: str, *, field_name: str = "duration") -> int:
    """Milliseconds in ``text``: one or more ``<integer><unit>`` parts, units ``w d h m s`` (``"1d12h"``)."""
    raw = text.strip().lower().replace(" ", "")
    if not raw or _PART.sub("", raw):
        raise InvalidParameterValue(
            f"{field_name}: {text!r} is not a duration such as 30d, 12h, 15m or 1h30m")
    total = sum(int(n) * _UNIT_MS[unit] for n, unit in _PART.findall(raw))
    if total <= 0:
        raise InvalidParameterValue(f"{field_name}: {text!r} must be longer than zero")
    return total


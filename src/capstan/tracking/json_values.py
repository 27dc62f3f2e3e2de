"""Checking that a value is plain JSON before the SDK stores it (``log_dict``). Pure.

``json.dumps(..., default=str)`` would store ``"<object object at 0x...>"`` for anything it cannot encode, which
loses the value silently; Capstan refuses such a value instead, naming where it sits (``a.b[2]``).
"""

from __future__ import annotations

import json
from typing import Any

from capstan.errors import InvalidParameterValue

_SCALARS = (str, int, float, bool, type(None))


def _where(path: str) -> str:
    return path or "the top level"


def unserialisable_path(value: Any, path: str = "") -> str | None:
    """Where the first value that is not plain JSON sits inside ``value`` (``None`` when it is all JSON).

    Plain JSON here means what `json.dumps` encodes without a ``default``: dicts with string, number, boolean or
    null keys, lists, tuples, strings, numbers, booleans and ``None``.
    """
    stack: list[tuple[Any, str]] = [(value, path)]
    seen: set[int] = set()
    while stack:
        item, where = stack.pop()
        if isinstance(item, _SCALARS):
            continue
        if id(item) in seen:
            return f"{_where(where)} (a circular reference)"
        if isinstance(item, dict):
            seen.add(id(item))
            for key, child in item.items():
                if not isinstance(key, _SCALARS):
                    return f"{_where(where)} (the key {key!r} is a {type(key).__name__})"
                stack.append((child, f"{where}.{key}" if where else str(key)))
        elif isinstance(item, (list, tuple)):
            seen.add(id(item))
            stack.extend((child, f"{where}[{index}]") for index, child in enumerate(item))
        else:
            return f"{_where(where)} (a {type(item).__name__})"
    return None


def dumps_json(value: Any, *, field_name: str = "data") -> str:
    """``value`` as indented JSON; `InvalidParameterValue` naming the offending key when part of it is not JSON."""
    bad = unserialisable_path(value)
    if bad is not None:
        raise InvalidParameterValue(
            f"{field_name}: the value at {bad} is not JSON-serialisable; convert it to a string, number, boolean, "
            "list or dict first")
    return json.dumps(value, indent=2)

"""The one rule every user-chosen name follows, wherever it arrives (REST, MLflow API, CLI, local SDK). Pure.

A name (experiment, run, registered model, alias, tag or param key, user, project, queue, schedule...) must not
hold characters that make it print as something else or break the systems it is passed to:

- control characters: C0 (U+0000-U+001F, NUL included), DEL (U+007F) and C1 (U+0080-U+009F);
- bidirectional overrides, embeddings and isolates (U+202A-U+202E, U+2066-U+2069), which can make ``evil`` look
  like ``live`` in a terminal or a web page.

`NAME_PATTERN` is the same rule as a regular expression that both Python and JSON Schema (ECMA 262) read, so the
OpenAPI document can state it (``pattern``).
"""

from __future__ import annotations

import re
from typing import Final

from capstan.errors import InvalidParameterValue

_FORBIDDEN_CLASS = "\\x00-\\x1f\\x7f-\\x9f\\u202a-\\u202e\\u2066-\\u2069"
NAME_PATTERN: Final = f"^[^{_FORBIDDEN_CLASS}]*$"
"""Matches a string free of the forbidden characters (use as a JSON Schema ``pattern``)."""
_FORBIDDEN: Final = re.compile(f"[{_FORBIDDEN_CLASS}]")


def forbidden_character(name: str) -> str | None:
    """The first forbidden character of ``name`` as ``U+XXXX``, or ``None`` when there is none."""
    match = _FORBIDDEN.search(name)
    return None if match is None else f"U+{ord(match.group()):04X}"


def check_characters(name: str, field_name: str) -> str:
    """``name`` itself; `InvalidParameterValue` naming ``field_name`` when it holds a forbidden character."""
    bad = forbidden_character(name)
    if bad is not None:
        raise InvalidParameterValue(
            f"{field_name}: {name[:60]!r} contains the character {bad}; names must not contain control characters "
            "(U+0000-U+001F, U+007F-U+009F) or bidirectional-override characters (U+202A-U+202E, U+2066-U+2069)")
    return name


RUN_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""A pipeline run id as a command line or an object store path carries it: a letter or digit, then at most 127
letters, digits, '.', '_' or '-' (``capstan worker run-step --run``, ``capstan k8s render pipeline --run-id``)."""

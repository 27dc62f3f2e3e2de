"""Pieces of search syntax every search shares (runs, experiments, logged models, registered models, versions).

* ``LIKE`` patterns: ``%`` and ``_`` are wildcards and a backslash escapes the next character (PostgreSQL's
  default). A pattern that ends in a lone backslash is refused everywhere, because PostgreSQL refuses it
  (`check_like_pattern`); `like_to_glob` turns a pattern into the case-sensitive ``GLOB`` SQLite needs, and
  `like` evaluates one in memory.
* Page tokens: `PageToken` is the one codec for the opaque ``page_token`` of every search (base64 of
  ``{"offset": N}``, as MLflow's own stores write it).

This module does no I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from functools import lru_cache

import orjson

from capstan.errors import InvalidParameterValue
from capstan.tracking.search_limits import INT64_MAX

_GLOB_SPECIAL = "*?["


def _lone_escape(pattern: str) -> bool:
    """Whether ``pattern`` ends with an escape character that escapes nothing (an odd run of backslashes)."""
    return (len(pattern) - len(pattern.rstrip("\\"))) % 2 == 1


def check_like_pattern(pattern: str, *, field_name: str = "filter_string", subject: str = "") -> str:
    """``pattern`` unchanged, or `InvalidParameterValue` when it ends with a lone escape character.

    ``subject`` names what the pattern is compared with (``'tags.x'``) in the message.
    """
    if _lone_escape(pattern):
        about = f"the {subject} pattern" if subject else "the LIKE pattern"
        raise InvalidParameterValue(
            f"{field_name}: {about} {pattern!r} ends with a lone escape character '\\'; "
            "write '\\\\' for a literal backslash")
    return pattern


def _walk(pattern: str) -> list[tuple[str, bool]]:
    """``(character, escaped)`` pairs of a checked pattern."""
    check_like_pattern(pattern)
    out: list[tuple[str, bool]] = []
    chars = iter(pattern)
    for ch in chars:
        if ch == "\\":
            out.append((next(chars), True))
        else:
            out.append((ch, False))
    return out


def like_to_glob(pattern: str) -> str:
    """Translate a LIKE pattern (``%``, ``_``, backslash escapes) into an equivalent case-sensitive GLOB."""
    out: list[str] = []
    for ch, escaped in _walk(pattern):
        if not escaped and ch == "%":
            out.append("*")
        elif not escaped and ch == "_":
            out.append("?")
        elif ch in _GLOB_SPECIAL:
            out.append(f"[{ch}]")
        else:
            out.append(ch)
    return "".join(out)


@lru_cache(maxsize=256)
def _like_regex(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    parts: list[str] = []
    for ch, escaped in _walk(pattern):
        if not escaped and ch == "%":
            parts.append(".*")
        elif not escaped and ch == "_":
            parts.append(".")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def like(value: str, pattern: str, *, ignore_case: bool = False) -> bool:
    """SQL ``LIKE`` (``%``, ``_``, backslash escapes), case-sensitive unless ``ignore_case``."""
    return _like_regex(pattern, ignore_case).fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class PageToken:
    """Where the next page of a search starts; `encode` and `decode` are each other's inverse."""

    offset: int

    def encode(self) -> str:
        """The opaque token a client sends back to get this page."""
        return base64.b64encode(orjson.dumps({"offset": self.offset})).decode()

    @classmethod
    def decode(cls, token: str | None, *, field_name: str = "page_token") -> PageToken:
        """The page a token from `encode` stands for; no token is the first page. Anything else (not strict
        base64, not a JSON object with an integer ``offset`` in 0..2**63-1) is `InvalidParameterValue`."""
        if not token:
            return cls(0)
        try:
            data = orjson.loads(base64.b64decode(token.encode(), validate=True))
            offset = data["offset"]
        except (binascii.Error, ValueError, TypeError, KeyError, orjson.JSONDecodeError):
            raise InvalidParameterValue(f"{field_name}: {token!r} is not a valid page token") from None
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= INT64_MAX:
            raise InvalidParameterValue(f"{field_name}: {token!r} is not a valid page token")
        return cls(offset)


def encode_page_token(offset: int) -> str:
    """``PageToken(offset).encode()``."""
    return PageToken(offset).encode()


def decode_page_token(token: str | None, *, field_name: str = "page_token") -> int:
    """``PageToken.decode(token).offset``: the offset a page token stands for (0 for no token)."""
    return PageToken.decode(token, field_name=field_name).offset

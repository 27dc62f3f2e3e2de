"""The one check of a page size (``max_results``) that every list page and its JSON twin take."""

from __future__ import annotations

from capstan.errors import InvalidParameterValue

__all__ = ["page_size"]


def page_size(value: int | str | None, *, default: int, maximum: int) -> int:
    """A page size between 1 and ``maximum`` (``default`` when not given); `InvalidParameterValue` naming
    ``max_results`` otherwise."""
    if value is None or value == "":
        return default
    try:
        size = int(value)
    except ValueError:
        raise InvalidParameterValue(f"max_results: must be a whole number, got {str(value)[:40]!r}") from None
    if not 1 <= size <= maximum:
        raise InvalidParameterValue(f"max_results: must be between 1 and {maximum}, got {size}")
    return size

"""`Page`: one page of search results, shared by every store port (tracking, registry, and what comes next)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of results and the opaque token for the next page (``None`` on the last page)."""

    items: tuple[T, ...]
    next_page_token: str | None = None

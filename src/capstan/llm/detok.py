"""Incremental detokenization: the text a growing list of token ids adds, never half a UTF-8 character.

Pure: the decoder is a callable (ids to text). Byte-level tokenizers split a multi-byte character over several tokens;
decoding a prefix that ends inside one yields U+FFFD, so that text is held back until the character completes. Only a
window of recent tokens is decoded each step (a prefix for context, then the unread tokens), so a long completion
costs linear, not quadratic, decoding; while text is held back, the context window's own decode is kept rather than
decoded again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["IncrementalDetokenizer"]

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Turns token ids, given a few at a time, into text deltas whose concatenation is the decode of all of them."""

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # start of the context window (already emitted text)
        self._read = 0  # end of the tokens whose text has been emitted
        self._before: str | None = None  # the decode of ids[prefix:read], kept while text is held back

    @property
    def token_ids(self) -> tuple[int, ...]:
        """Every token id given so far."""
        return tuple(self._ids)

    def add(self, ids: Sequence[int]) -> str:
        """Append ``ids``; return the new text that is complete (possibly empty while a character is unfinished)."""
        self._ids.extend(ids)
        if self._read == len(self._ids):
            return ""
        before = self._before
        if before is None:
            before = self._before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        if len(after) <= len(before) or after.endswith(_REPLACEMENT):
            return ""
        self._prefix, self._read, self._before = self._read, len(self._ids), None
        return after[len(before):]

    def flush(self) -> str:
        """The text still held back (the sequence ended; an unfinished character comes out as U+FFFD)."""
        if self._read == len(self._ids):
            return ""
        before = self._before if self._before is not None else self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        self._prefix = self._read = len(self._ids)
        self._before = None
        return after[len(before):]

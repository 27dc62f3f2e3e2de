"""The artifact-index port: which logical path holds which blob, and which blobs exist.

`capstan.artifacts.store.ArtifactStore` keeps the bytes (blobs named by their sha256 on an fsspec filesystem) and
asks an `ArtifactIndex` for everything else. `SqlArtifactIndex` (module ``artifact_index_sql`` of the store package)
implements it over the metadata store (SQLite and PostgreSQL); `tests/store/test_artifact_index_contract.py` checks
it against both. This package never imports the store package or SQLAlchemy: the composition root wires the two.

Paths given to an index are already normalised by the caller (`capstan.artifacts.paths.normalize_path`): relative,
``/``-separated, no ``.``/``..`` parts; the empty prefix means the root. Prefix matching is literal (``_`` and
``%`` in a path are plain characters) and in byte order. "At or below ``p``" means ``p`` itself and every path
that starts with ``p/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from capstan.artifacts.records import ArtifactEntry, GcReport, StoredBlob


class ArtifactIndex(Protocol):
    """The path -> blob mapping and the set of stored blobs, as the artifact store needs them."""

    def record(self, path: str, digest: str, size: int) -> ArtifactEntry:
        """Record that ``path`` now holds the committed blob ``digest`` of ``size`` bytes, replacing what it held.

        Checks the file slot first (see `check_file_slot`) and notes the blob, all in one transaction; raises
        `InvalidParameterValue` when the path is a folder or lies below a file."""
        ...

    def check_file_slot(self, path: str) -> None:
        """Raise `InvalidParameterValue` unless a file may be stored at ``path``: nothing may be stored below it
        (it would be a folder) and none of its ancestors may be a file, so a listing never shows one name as both."""
        ...

    def stat(self, path: str) -> ArtifactEntry:
        """The entry stored at ``path``; `ResourceDoesNotExist` when there is none."""
        ...

    def exists(self, path: str) -> bool:
        """True when a file is stored at ``path``."""
        ...

    def existing(self, paths: Sequence[str]) -> frozenset[str]:
        """Those of ``paths`` at which a file is stored (one lookup for many, e.g. a round of cache hits)."""
        ...

    def files_below(self, prefix: str) -> list[ArtifactEntry]:
        """Every entry strictly below ``prefix`` (every entry for the empty prefix), ordered by path."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Forget every entry at or below ``prefix``; returns how many. Blobs stay (see `unreferenced_blobs`)."""
        ...

    def unreferenced_blobs(self) -> list[StoredBlob]:
        """The blobs that no entry references (candidates for garbage collection)."""
        ...

    def forget_blob(self, digest: str) -> bool:
        """Drop the blob ``digest`` from the index if still no entry references it (re-checked atomically, as an
        upload may have re-used the content meanwhile). True when it was dropped: its bytes may now be removed."""
        ...

    def preview_orphans(self, deleting: Sequence[str]) -> GcReport:
        """The blobs (count and total bytes) that no entry would reference once every entry at or below each of
        ``deleting`` is forgotten, including those unreferenced already. Changes nothing."""
        ...

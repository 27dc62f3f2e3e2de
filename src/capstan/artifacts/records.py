"""Artifact records: what the artifact index stores and returns (plain frozen dataclasses, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ArtifactEntry:
    """A stored file: its logical path, content digest and size in bytes."""

    path: str
    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class ArtifactListing:
    """One row of a directory listing; ``path`` is relative to the listed prefix's root namespace. ``digest`` is the
    sha256 recorded for a file's content (``None`` for a folder)."""

    path: str
    is_dir: bool
    size: int | None = None
    digest: str | None = None


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """One distinct content known to the index: its sha256 digest and size in bytes."""

    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class GcReport:
    """What `ArtifactStore.collect_garbage` removed (or, from a preview, would remove)."""

    blobs_removed: int
    bytes_freed: int

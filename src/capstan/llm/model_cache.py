"""The model cache: a model fetched from the registry or a run once is kept on local disk by its content hash.

A model's content hash (`content_key`) is the sha256 of its files' relative paths and the sha256 digests the artifact
store recorded for them, so it is known from the listing alone, before anything is downloaded: a restart, a second
replica or another version with the same files finds the folder ``<root>/<key>`` and downloads nothing. A miss
downloads through the serving loader's source into a staging folder below the root, verifies every file against
the recorded digests (`capstan.serving.loading.verify_folder`) and renames the folder into place, so a folder under
its key was always complete and verified; replicas fetching at once both download, the first rename wins and the
other's copy is removed.

An entry is reused when it holds exactly the files the listing names; its content is trusted as the rest of
``CAPSTAN_HOME`` is (it is not hashed again on each start: that would cost the time the cache saves). Entries are
never evicted by Capstan; remove ``<root>/<key>`` (or the whole root) to reclaim the space.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from capstan.errors import InvalidParameterValue
from capstan.serving.loading import FetchedModel, ModelFileUnverified, verify_folder

__all__ = ["CachedModel", "ListedModel", "ListingModelSource", "ModelCache", "content_key"]

_STAGING_PREFIX = ".staging-"


class ListedModel(Protocol):
    """A model's listing: what it is served as and the recorded sha256 of each file (relative path -> digest)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def digests(self) -> Mapping[str, str | None]: ...


L = TypeVar("L", bound=ListedModel)


class ListingModelSource(Protocol[L]):
    """A model source that lists a model before downloading it (`capstan.sdk.model_source.BackendModelSource`)."""

    def list_model(self, uri: str) -> L:
        """The model at ``uri`` (``models:/...`` or ``runs:/...``): its name, version and files' digests."""
        ...

    def download(self, listing: L, dest: Path) -> FetchedModel:
        """Download the listed model's folder below ``dest``."""
        ...


@dataclass(frozen=True, slots=True)
class CachedModel:
    """A model folder from the cache: where it is, what it is served as, its files' digests, whether it was already
    there (``hit``), the seconds spent listing and, on a miss, downloading and verifying it, and its cache key."""

    folder: Path
    name: str
    version: str
    key: str
    hit: bool
    fetch_seconds: float
    digests: Mapping[str, str | None] = field(default_factory=dict)


def content_key(digests: Mapping[str, str | None]) -> str | None:
    """The content hash of a model whose files have the recorded ``digests``; None when a file has no digest (such
    a model cannot be verified, so it is never cached)."""
    if not digests or any(not digest for digest in digests.values()):
        return None
    joined = "".join(f"{path}\t{digests[path]}\n" for path in sorted(digests))
    return hashlib.sha256(joined.encode()).hexdigest()


class ModelCache:
    """The cache folder ``root`` (``CAPSTAN_HOME/serving-cache/models`` for ``capstan serve``)."""

    def __init__(self, root: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self._clock = clock

    def fetch(self, source: ListingModelSource[Any], uri: str) -> CachedModel:
        """The model at ``uri`` from the cache, downloading and verifying it first on a miss."""
        started = self._clock()
        listing = source.list_model(uri)
        digests = dict(listing.digests)
        if not digests:
            raise InvalidParameterValue(f"model uri: {uri!r} has no files")
        key = content_key(digests)
        if key is None:  # unverifiable: verify_folder names the file without a digest
            raise ModelFileUnverified(f"model {uri!r} has a file with no sha256 recorded by the artifact store "
                                      f"({_first_undigested(digests)!r}); refusing to load it unverified")
        entry = self.root / key
        hit = self._complete(entry, digests)
        if not hit:
            self._store(source, listing, entry, digests, uri)
        return CachedModel(entry, listing.name, listing.version, key, hit, self._clock() - started, digests)

    def _complete(self, entry: Path, digests: Mapping[str, str | None]) -> bool:
        if not entry.is_dir():
            return False
        on_disk = {p.relative_to(entry).as_posix() for p in entry.rglob("*") if p.is_file()}
        if on_disk == set(digests):
            return True
        shutil.rmtree(entry, ignore_errors=True)  # damaged (e.g. a file removed by hand): fetched again
        return False

    def _store(self, source: ListingModelSource[Any], listing: ListedModel, entry: Path,
               digests: Mapping[str, str | None], uri: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=self.root))
        try:
            fetched = source.download(listing, staging)
            verify_folder(fetched.folder, digests)
            try:
                os.rename(fetched.folder, entry)
            except OSError:
                if not self._complete(entry, digests):  # not another replica's rename: a real failure
                    raise
            with contextlib.suppress(OSError):  # the note is for people; the entry works without it
                (self.root / f"{entry.name}.json").write_text(json.dumps(
                    {"uri": uri, "name": listing.name, "version": listing.version, "files": len(digests)}) + "\n")
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _first_undigested(digests: Mapping[str, str | None]) -> str:
    return next((path for path in sorted(digests) if not digests[path]), "")

"""Content-addressed artifact store.

Logical paths (``"3/<run uuid>/artifacts/model/MLmodel"``) map to blobs named by the sha256 of their content, so
identical files across runs are stored once. Blobs live under an fsspec root (a local folder or ``s3://...``);
the path -> blob mapping is kept by an `ArtifactIndex` (`capstan.artifacts.ports`; the metadata store's adapter is
`SqlArtifactIndex`, module ``artifact_index_sql`` of the store package). This module only handles bytes: hashing,
streaming, the size limit and path checks. Data always streams in chunks and is never held whole.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from capstan.artifacts.paths import join, normalize_path
from capstan.artifacts.ports import ArtifactIndex
from capstan.artifacts.records import ArtifactEntry, ArtifactListing, GcReport
from capstan.errors import ArtifactTooLarge, InvalidParameterValue, ResourceDoesNotExist
from capstan.settings import Settings

__all__ = ["CHUNK", "ArtifactEntry", "ArtifactListing", "ArtifactStore", "BlobWriter", "GcReport"]

CHUNK = 1024 * 1024


class BlobWriter:
    """Receives an upload chunk by chunk (hashing and size-checking as it goes); `commit` files it under a path."""

    def __init__(self, store: ArtifactStore) -> None:
        self._store = store
        self._tmp = f"{store.root}/tmp/{uuid.uuid4().hex}"
        self._fh: IO[bytes] = store.fs.open(self._tmp, "wb")
        self._hash = hashlib.sha256()
        self.size = 0
        self._closed = False

    def write(self, chunk: bytes) -> None:
        """Append a chunk; raises `ArtifactTooLarge` once the configured limit is passed."""
        self.size += len(chunk)
        if self.size > self._store.max_bytes:
            self.abort()
            raise ArtifactTooLarge(
                f"artifact exceeds the size limit of {self._store.max_bytes} bytes (CAPSTAN_ARTIFACT_MAX_BYTES)")
        self._hash.update(chunk)
        self._fh.write(chunk)

    def commit(self, path: str) -> ArtifactEntry:
        """Finish the upload and record it at ``path`` (replacing what was there)."""
        self._fh.close()
        self._closed = True
        digest = self._hash.hexdigest()
        return self._store._file_blob(self._tmp, digest, self.size, path)

    def abort(self) -> None:
        """Drop a partial upload."""
        if not self._closed:
            self._fh.close()
            self._closed = True
        if self._store.fs.exists(self._tmp):
            self._store.fs.rm(self._tmp)


class ArtifactStore:
    """Streaming, deduplicating artifact storage: blob bytes over fsspec, the path -> blob mapping in ``index``."""

    def __init__(self, settings: Settings, index: ArtifactIndex) -> None:
        import fsspec

        self.index = index
        self.max_bytes = settings.artifact_max_bytes
        location = settings.artifacts
        options: dict[str, Any] = {}
        if location.startswith("s3://") and settings.s3_endpoint:
            options["client_kwargs"] = {"endpoint_url": settings.s3_endpoint}
        protocol = location.split("://", 1)[0] if "://" in location else "file"
        self.fs = fsspec.filesystem(protocol, **options)
        self.root = location.split("://", 1)[1].rstrip("/") if "://" in location else str(Path(location).resolve())
        self._local = protocol == "file"
        if self._local:
            Path(self.root, "tmp").mkdir(parents=True, exist_ok=True)

    # -- writing --------------------------------------------------------------------------------------
    def writer(self) -> BlobWriter:
        """Start a chunked upload."""
        return BlobWriter(self)

    def put_stream(self, path: str, chunks: Iterable[bytes]) -> ArtifactEntry:
        """Store the concatenation of ``chunks`` at ``path``."""
        path = normalize_path(path)
        writer = self.writer()
        try:
            for chunk in chunks:
                writer.write(chunk)
        except BaseException:
            writer.abort()
            raise
        return writer.commit(path)

    def put_bytes(self, path: str, data: bytes) -> ArtifactEntry:
        """Store a small in-memory value at ``path``."""
        return self.put_stream(path, [data])

    def put_file(self, path: str, local_file: str | os.PathLike[str]) -> ArtifactEntry:
        """Store a local file at ``path``, reading it in chunks."""
        with open(local_file, "rb") as fh:
            return self.put_stream(path, iter(lambda: fh.read(CHUNK), b""))

    def put_dir(self, prefix: str, local_dir: str | os.PathLike[str]) -> list[ArtifactEntry]:
        """Store every file below ``local_dir`` under ``prefix``, keeping relative paths."""
        base = Path(local_dir)
        if not base.is_dir():
            raise InvalidParameterValue(f"local_dir: {str(base)!r} is not a directory")
        entries = []
        for file in sorted(p for p in base.rglob("*") if p.is_file()):
            entries.append(self.put_file(join(prefix, file.relative_to(base).as_posix()), file))
        return entries

    def _blob_path(self, digest: str) -> str:
        return f"{self.root}/blobs/{digest[:2]}/{digest[2:4]}/{digest}"

    def _file_blob(self, tmp: str, digest: str, size: int, path: str) -> ArtifactEntry:
        path = normalize_path(path)
        final = self._blob_path(digest)
        if self.fs.exists(final):
            self.fs.rm(tmp)
        elif self._local:
            Path(final).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        else:
            self.fs.mv(tmp, final)
        return self.index.record(path, digest, size)

    # -- reading --------------------------------------------------------------------------------------
    def stat(self, path: str) -> ArtifactEntry:
        """The entry stored at ``path``; `ResourceDoesNotExist` when there is none."""
        return self.index.stat(normalize_path(path))

    def exists(self, path: str) -> bool:
        """True when a file is stored at ``path``."""
        return self.index.exists(normalize_path(path))

    def open(self, path: str) -> IO[bytes]:
        """A readable binary stream of the file at ``path``."""
        entry = self.stat(path)
        return self.fs.open(self._blob_path(entry.digest), "rb")  # type: ignore[no-any-return]  # fsspec is untyped

    def iter_bytes(self, path: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """The file at ``path`` in chunks."""
        with self.open(path) as fh:
            while chunk := fh.read(chunk_size):
                yield chunk

    def read_bytes(self, path: str) -> bytes:
        """The whole (small) file at ``path``."""
        return b"".join(self.iter_bytes(path))

    def list(self, prefix: str, *, recursive: bool = False) -> list[ArtifactListing]:
        """Files and sub-folders directly below ``prefix`` (every file below it when ``recursive``)."""
        prefix = normalize_path(prefix, allow_empty=True)
        start = len(prefix) + 1 if prefix else 0
        out: dict[str, ArtifactListing] = {}
        for entry in self.index.files_below(prefix):
            full, size = entry.path, entry.size
            rest = full[start:]
            if recursive or "/" not in rest:
                out[full] = ArtifactListing(full, False, size, entry.digest)
            else:
                folder = full[: start + rest.index("/")]
                out.setdefault(folder, ArtifactListing(folder, True, None))
        return sorted(out.values(), key=lambda item: item.path)

    def download(self, prefix: str, dest_dir: str | os.PathLike[str]) -> Path:
        """Copy the file at ``prefix``, or every file below it, into ``dest_dir``; returns the local path."""
        prefix = normalize_path(prefix, allow_empty=True)
        dest = Path(dest_dir)
        if prefix and self.exists(prefix):
            target = dest / prefix.rsplit("/", 1)[-1]
            self._copy_out(prefix, target)
            return target
        files = self.list(prefix, recursive=True)
        if not files and prefix:
            raise ResourceDoesNotExist(f"artifact {prefix!r} does not exist")
        start = len(prefix) + 1 if prefix else 0
        for item in files:
            self._copy_out(item.path, dest / item.path[start:])
        return dest

    def _copy_out(self, path: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        with self.open(path) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)

    # -- deleting -------------------------------------------------------------------------------------
    def delete_prefix(self, prefix: str) -> int:
        """Forget every entry at or below ``prefix``; blobs stay until `collect_garbage`."""
        return self.index.delete_prefix(normalize_path(prefix))

    def collect_garbage(self) -> GcReport:
        """Remove blobs that no entry references any more."""
        removed = freed = 0
        for blob in self.index.unreferenced_blobs():
            # The index re-checks atomically: an upload may have re-used this content meanwhile.
            if not self.index.forget_blob(blob.digest):
                continue
            path = self._blob_path(blob.digest)
            if self.fs.exists(path):
                self.fs.rm(path)
            removed += 1
            freed += blob.size
        return GcReport(removed, freed)

    def preview_garbage(self, deleting: Sequence[str] = ()) -> GcReport:
        """What `collect_garbage` would free after `delete_prefix` of each of ``deleting`` (nothing is changed)."""
        return self.index.preview_orphans([normalize_path(p) for p in deleting])


"""`SqlArtifactIndex`: the `capstan.artifacts.ports.ArtifactIndex` port over the metadata store.

The one owner of the ``artifact_entries`` (logical path -> blob digest) and ``blobs`` (each distinct content once)
tables: every SQL statement on them lives here. Works on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, delete, false, func, or_, select

from capstan.artifacts.records import ArtifactEntry, GcReport, StoredBlob
from capstan.clock import Clock, system_clock
from capstan.errors import InvalidParameterValue, ResourceDoesNotExist
from capstan.store.schema import artifact_entries, blobs
from capstan.store.sql_helpers import insert_ignore, upsert

_IN_CHUNK = 500
"""Paths per ``IN (...)`` list: far below SQLite's bound-parameter limit."""


class SqlArtifactIndex:
    """The artifact index in the ``artifact_entries`` and ``blobs`` tables; ``clock`` stamps ``created_at``."""

    def __init__(self, engine: Engine, *, clock: Clock = system_clock) -> None:
        self.engine = engine
        self._clock = clock

    # -- writing --------------------------------------------------------------------------------------
    def record(self, path: str, digest: str, size: int) -> ArtifactEntry:
        """Record that ``path`` now holds the committed blob ``digest`` (see `ArtifactIndex.record`)."""
        now = self._clock()
        with self.engine.begin() as conn:
            _check_file_slot(conn, path)
            insert_ignore(conn, blobs, [{"digest": digest, "size": size, "created_at": now}])
            upsert(conn, artifact_entries, [{"path": path, "digest": digest, "size": size, "created_at": now}],
                   keys=["path"], update=["digest", "size", "created_at"])
        return ArtifactEntry(path, digest, size)

    def check_file_slot(self, path: str) -> None:
        """Raise `InvalidParameterValue` unless a file may be stored at ``path`` (see `ArtifactIndex`)."""
        with self.engine.connect() as conn:
            _check_file_slot(conn, path)

    def delete_prefix(self, prefix: str) -> int:
        """Forget every entry at or below ``prefix``; returns how many."""
        with self.engine.begin() as conn:
            result = conn.execute(delete(artifact_entries).where(_at_or_below(prefix)))
        return int(result.rowcount or 0)

    # -- reading --------------------------------------------------------------------------------------
    def stat(self, path: str) -> ArtifactEntry:
        """The entry stored at ``path``; `ResourceDoesNotExist` when there is none."""
        with self.engine.connect() as conn:
            row = conn.execute(select(artifact_entries.c.path, artifact_entries.c.digest, artifact_entries.c.size)
                               .where(artifact_entries.c.path == path)).first()
        if row is None:
            raise ResourceDoesNotExist(f"artifact {path!r} does not exist")
        return ArtifactEntry(row.path, row.digest, int(row.size))

    def exists(self, path: str) -> bool:
        """True when a file is stored at ``path``."""
        with self.engine.connect() as conn:
            row = conn.execute(select(artifact_entries.c.path).where(artifact_entries.c.path == path)).first()
        return row is not None

    def existing(self, paths: Sequence[str]) -> frozenset[str]:
        """Those of ``paths`` at which a file is stored."""
        wanted = sorted(set(paths))
        if not wanted:
            return frozenset()
        found: set[str] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start:start + _IN_CHUNK]
                found.update(conn.execute(select(artifact_entries.c.path)
                                          .where(artifact_entries.c.path.in_(chunk))).scalars())
        return frozenset(found)

    def files_below(self, prefix: str) -> list[ArtifactEntry]:
        """Every entry strictly below ``prefix`` (all of them for ``""``), ordered by path."""
        like = f"{_escape_like(prefix)}/%" if prefix else "%"
        with self.engine.connect() as conn:
            rows = conn.execute(select(artifact_entries.c.path, artifact_entries.c.digest, artifact_entries.c.size)
                                .where(artifact_entries.c.path.like(like, escape="\\"))
                                .order_by(artifact_entries.c.path)).all()
        return [ArtifactEntry(path, digest, int(size)) for path, digest, size in rows]

    # -- garbage --------------------------------------------------------------------------------------
    def unreferenced_blobs(self) -> list[StoredBlob]:
        """The blobs that no entry references."""
        referenced = select(artifact_entries.c.digest).distinct()
        with self.engine.connect() as conn:
            rows = conn.execute(select(blobs.c.digest, blobs.c.size)
                                .where(blobs.c.digest.not_in(referenced)).order_by(blobs.c.digest)).all()
        return [StoredBlob(digest, int(size)) for digest, size in rows]

    def forget_blob(self, digest: str) -> bool:
        """Drop the blob ``digest`` if no entry references it (checked in the same transaction)."""
        with self.engine.begin() as conn:
            still_used = conn.execute(select(func.count()).select_from(artifact_entries)
                                      .where(artifact_entries.c.digest == digest)).scalar_one()
            if still_used:
                return False
            result = conn.execute(delete(blobs).where(blobs.c.digest == digest))
        return bool(result.rowcount)

    def preview_orphans(self, deleting: Sequence[str]) -> GcReport:
        """The blobs no entry would reference after forgetting everything at or below each of ``deleting``."""
        surviving = select(artifact_entries.c.digest)
        if deleting:
            surviving = surviving.where(~or_(false(), *(_at_or_below(p) for p in deleting)))
        with self.engine.connect() as conn:
            row = conn.execute(select(func.count(), func.coalesce(func.sum(blobs.c.size), 0))
                               .where(blobs.c.digest.not_in(surviving.distinct()))).one()
        return GcReport(int(row[0]), int(row[1]))


def _check_file_slot(conn: Connection, path: str) -> None:
    """Refuse to store a file where a folder is (files below ``path``) or below a file (an ancestor is one), so
    a listing never shows the same name as both. The range ``[path/, path0)`` is every path below ``path``
    (``0`` sorts right after ``/`` in byte order)."""
    column: Any = artifact_entries.c.path
    if conn.dialect.name == "postgresql":  # byte order, whatever the database's locale collation says
        column = column.collate("C")
    below = conn.execute(select(artifact_entries.c.path).where(
        column >= f"{path}/", column < f"{path}0").limit(1)).first()
    if below is not None:
        raise InvalidParameterValue(f"path: {path!r} is a folder (it holds {below[0]!r}); a file cannot replace it")
    parts = path.split("/")
    ancestors = ["/".join(parts[:i]) for i in range(1, len(parts))]
    if ancestors:
        clash = conn.execute(select(artifact_entries.c.path).where(
            artifact_entries.c.path.in_(ancestors)).limit(1)).first()
        if clash is not None:
            raise InvalidParameterValue(f"path: {clash[0]!r} is a file, so nothing can be stored below it")


def _at_or_below(prefix: str) -> ColumnElement[bool]:
    """``path`` is ``prefix`` itself or lies below it (a literal match: LIKE wildcards in ``prefix`` are escaped)."""
    return or_(artifact_entries.c.path == prefix,
               artifact_entries.c.path.like(f"{_escape_like(prefix)}/%", escape="\\"))


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")

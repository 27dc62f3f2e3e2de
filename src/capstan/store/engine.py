"""Opening the metadata store: engine creation, SQLite tuning and automatic migrations."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.pool import NullPool

from capstan.errors import InvalidParameterValue, StoreUnavailable
from capstan.settings import Settings, check_db_url, redact_url

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers run beside one writer; NORMAL sync keeps commits durable across a process crash while
    # avoiding an fsync per transaction (see docs/decisions/0002-metadata-store.md).
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    # Take the write lock at BEGIN so two writers never deadlock upgrading a read lock; busy_timeout then queues them.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def ensure_home(settings: Settings) -> Path:
    """Create ``settings.home`` (and its parents) if needed; a home that is a file, cannot be created or is not
    writable is an `InvalidParameterValue` naming ``CAPSTAN_HOME``."""
    return ensure_writable_folder(settings.home, settings.source_of("home"))


def ensure_writable_folder(folder: Path, name: str) -> Path:
    """Create ``folder`` (and its parents) if needed; one that is a file, cannot be created or is not writable is
    an `InvalidParameterValue` naming the setting ``name`` it came from."""
    if folder.exists() and not folder.is_dir():
        raise InvalidParameterValue(f"{name}: {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidParameterValue(f"{name}: cannot create the folder {folder}: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidParameterValue(f"{name}: the folder {folder} is not writable")
    return folder


def _sqlite_folder(settings: Settings, db_path: str) -> None:
    """The folder of an SQLite file must exist; only the home (and folders inside it) is created."""
    folder = Path(db_path).expanduser().absolute().parent
    if folder == settings.home or settings.home in folder.parents:
        ensure_home(settings)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidParameterValue(f"{settings.source_of('db_url')}: cannot create the folder "
                                        f"{folder}: {exc.strerror or exc}") from None
    elif not folder.is_dir():
        name = settings.source_of("db_url")
        what = "is not a folder" if folder.exists() else "does not exist"
        raise InvalidParameterValue(f"{name}: the folder {folder} {what}; create it first, or leave {name} unset "
                                    f"to keep the database in CAPSTAN_HOME ({settings.home})")


def create_store_engine(settings: Settings, *, migrate: bool = True) -> Engine:
    """Create the SQLAlchemy engine for ``settings.db_url`` and bring its schema up to date.

    Bad settings are one-line `InvalidParameterValue` errors naming the variable: an unsupported or unparsable
    URL, an SQLite file in a folder that does not exist (only CAPSTAN_HOME is created), a home that is a file."""
    name = settings.source_of("db_url")
    url = check_db_url(settings.db_url, field_name=name)
    try:
        engine = _create_engine(settings, url)
    except (ArgumentError, ImportError) as exc:  # a URL SQLAlchemy cannot parse, or a driver that is missing
        reason = " ".join(str(exc).replace(url, redact_url(url)).split())
        raise InvalidParameterValue(f"{name}: cannot open {redact_url(url)!r}: {reason}") from None
    if migrate:
        upgrade(engine, settings, only_if_needed=True)
    return engine


def _create_engine(settings: Settings, url: str) -> Engine:
    if url.startswith("sqlite"):
        db_path = url.split("///", 1)[1] if "///" in url else ""
        if db_path and db_path != ":memory:":
            _sqlite_folder(settings, db_path)
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False},
                               poolclass=NullPool if db_path in ("", ":memory:") else None)
        event.listen(engine, "connect", _sqlite_on_connect)
        # pysqlite's own transaction handling is switched off so that BEGIN IMMEDIATE is ours to issue.
        event.listen(engine, "connect", lambda c, _r: setattr(c, "isolation_level", None))
        event.listen(engine, "begin", _sqlite_begin)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    return engine


@contextlib.contextmanager
def _migration_lock(engine: Engine, settings: Settings) -> Iterator[None]:
    """Serialise migrations across processes (file lock for SQLite, advisory lock for PostgreSQL)."""
    if engine.dialect.name == "sqlite":
        ensure_home(settings)
        lock_path = settings.home / ".migrate.lock"
        with open(lock_path, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    else:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(7351202)"))
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(7351202)"))
                conn.commit()


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


_REVISION = re.compile(r"^revision\s*=\s*['\"]([^'\"]+)['\"]", re.M)
_DOWN_REVISION = re.compile(r"^down_revision\s*=\s*(.+)$", re.M)


@cache
def script_heads() -> frozenset[str]:
    """Revision ids of every migration branch head shipped with this version.

    Read straight from the revision files: importing Alembic costs a quarter of a second, and every CLI call and
    server start asks this question, while Alembic itself is only needed when something must be applied.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        text = path.read_text()
        rev, down = _REVISION.search(text), _DOWN_REVISION.search(text)
        if rev is None or down is None:
            raise StoreUnavailable(f"{path.name}: not an Alembic revision file (no revision/down_revision)")
        revisions.add(rev.group(1))
        parents.update(re.findall(r"['\"]([^'\"]+)['\"]", down.group(1)))
    return frozenset(revisions - parents)


def current_revisions(engine: Engine) -> set[str]:
    """Revision ids recorded in the database (empty for a fresh database)."""
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return set()
            return {row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))}
    except OperationalError as exc:
        reason = " ".join(str(exc.orig).split())  # the driver's message can span lines; the CLI prints one
        raise StoreUnavailable(f"cannot open the metadata store {engine.url!r}: {reason}") from None


def upgrade(engine: Engine, settings: Settings, *, only_if_needed: bool = False, from_scratch: bool = True) -> bool:
    """Apply every pending migration; returns True when anything was applied.

    A database with no tables at all is instead created from the declared schema in one transaction and stamped
    with the heads (decision 0751), unless ``from_scratch`` is False (the test that replays every migration)."""
    heads = script_heads()
    if only_if_needed and current_revisions(engine) == heads:
        return False
    with _migration_lock(engine, settings):
        if current_revisions(engine) == heads:
            return False
        if from_scratch and _create_from_scratch(engine, heads):
            return True
        from alembic import command

        command.upgrade(_alembic_config(engine), "heads")
    return True


def _create_from_scratch(engine: Engine, heads: frozenset[str]) -> bool:
    """On a database without any table: create every declared table and Alembic's version table holding
    ``heads``, as Alembic's cookbook does it ("Building an Up to Date Database from Scratch"), in one transaction
    and without importing Alembic. Returns False (nothing done) when the database has a table already."""
    from sqlalchemy import Column, MetaData, PrimaryKeyConstraint, String, Table

    from capstan.store.tables import all_metadata

    # Alembic's own definition of its version table (alembic.runtime.migration), so that later upgrades read it.
    version = Table("alembic_version", MetaData(), Column("version_num", String(32), nullable=False),
                    PrimaryKeyConstraint("version_num", name="alembic_version_pkc"))
    with engine.begin() as conn:
        if inspect(conn).get_table_names():
            return False
        all_metadata().create_all(conn)
        version.create(conn)
        conn.execute(version.insert(), [{"version_num": head} for head in sorted(heads)])
    return True

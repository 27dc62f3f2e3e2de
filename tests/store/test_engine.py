"""Migrations apply on first use, on both backends, and are idempotent."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import Engine, inspect

from capstan.settings import Settings
from capstan.store.engine import create_store_engine, current_revisions, script_heads, upgrade


def test_first_use_creates_schema_and_second_open_is_noop(backend_settings: Settings) -> None:
    engine = create_store_engine(backend_settings)
    try:
        assert current_revisions(engine) == script_heads()
        names = set(inspect(engine).get_table_names())
        assert {"experiments", "runs", "metrics", "events", "tokens", "artifact_entries"} <= names
        assert upgrade(engine, backend_settings, only_if_needed=True) is False
    finally:
        engine.dispose()


def test_sqlite_uses_wal(settings: Settings) -> None:
    engine = create_store_engine(settings)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def _schema_diff(engine: Engine) -> list[object]:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from capstan.store.tables import all_metadata

    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), all_metadata()))


def test_migrations_produce_exactly_the_declared_schema(backend_settings: Settings) -> None:
    engine = create_store_engine(backend_settings, migrate=False)
    try:
        assert upgrade(engine, backend_settings, from_scratch=False) is True  # every migration, replayed
        assert current_revisions(engine) == script_heads()
        diff = _schema_diff(engine)
    finally:
        engine.dispose()
    assert diff == [], f"schema and migrations disagree; write a migration: {diff}"


def test_an_empty_database_is_created_from_the_schema_and_stamped(backend_settings: Settings) -> None:
    engine = create_store_engine(backend_settings)
    try:
        assert current_revisions(engine) == script_heads()
        assert _schema_diff(engine) == []
        assert upgrade(engine, backend_settings) is False
    finally:
        engine.dispose()


def _sqlite_layout(path: Path) -> dict[str, object]:
    """Every table's columns, keys, indexes and storage options as SQLite reports them (not the DDL's wording)."""
    conn = sqlite3.connect(path)
    try:
        layout: dict[str, object] = {}
        for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' "
                                      "AND name NOT LIKE 'sqlite_%'"):
            indexes = sorted((row[1], row[2], tuple(c[2] for c in conn.execute(f"PRAGMA index_info('{row[1]}')")))
                             for row in conn.execute(f"PRAGMA index_list('{name}')"))
            layout[name] = {
                "columns": [row[1:] for row in conn.execute(f"PRAGMA table_info('{name}')")],
                "foreign_keys": sorted(row[2:] for row in conn.execute(f"PRAGMA foreign_key_list('{name}')")),
                "indexes": indexes,
                "without_rowid": "WITHOUT ROWID" in sql.upper(),
                "autoincrement": "AUTOINCREMENT" in sql.upper(),
            }
        return layout
    finally:
        conn.close()


def test_created_and_migrated_sqlite_databases_have_the_same_layout(tmp_path: Path) -> None:
    # Tables only: a migration that inserts seed rows must make `engine._create_from_scratch` insert them too
    # (decision 0751), and extend this test to compare them.
    layouts = []
    for from_scratch in (True, False):
        settings = Settings.for_home(tmp_path / str(from_scratch))
        engine = create_store_engine(settings, migrate=False)
        try:
            assert upgrade(engine, settings, from_scratch=from_scratch) is True
            revisions = current_revisions(engine)
        finally:
            engine.dispose()
        assert revisions == script_heads()
        layouts.append(_sqlite_layout(settings.home / "capstan.db"))
    created, migrated = layouts
    assert created.keys() == migrated.keys()
    for table in created:
        assert created[table] == migrated[table], table


def test_a_database_with_tables_is_migrated_not_recreated(settings: Settings) -> None:
    engine = create_store_engine(settings, migrate=False)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE someone_elses (id INTEGER PRIMARY KEY)")
        assert upgrade(engine, settings) is True
        assert current_revisions(engine) == script_heads()
        assert "someone_elses" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_head_scan_agrees_with_alembic() -> None:
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine

    from capstan.store.engine import _alembic_config

    alembic_heads = ScriptDirectory.from_config(_alembic_config(create_engine("sqlite://"))).get_heads()
    assert script_heads() == frozenset(alembic_heads)

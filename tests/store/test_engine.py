"""Migrations apply on first use, on both backends, and are idempotent."""

from __future__ import annotations

from sqlalchemy import inspect

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


def test_migrations_produce_exactly_the_declared_schema(backend_settings: Settings) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from capstan.store.tables import all_metadata

    engine = create_store_engine(backend_settings)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), all_metadata())
    engine.dispose()
    assert diff == [], f"schema and migrations disagree; write a migration: {diff}"


def test_head_scan_agrees_with_alembic() -> None:
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine

    from capstan.store.engine import _alembic_config

    alembic_heads = ScriptDirectory.from_config(_alembic_config(create_engine("sqlite://"))).get_heads()
    assert script_heads() == frozenset(alembic_heads)

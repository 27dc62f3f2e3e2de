"""The one place that knows every subsystem's tables, for migrations and test set-up."""

from __future__ import annotations

import importlib

from sqlalchemy import MetaData

from capstan.store.schema import metadata

# Subsystems that own tables register their module here; each module defines its tables on `schema.metadata`.
TABLE_MODULES: tuple[str, ...] = ("capstan.pipelines.tables", "capstan.queue.tables",
                                  "capstan.store.deployment_outcomes_sql")


def all_metadata() -> MetaData:
    """`MetaData` holding the foundation tables and every registered subsystem's tables."""
    for name in TABLE_MODULES:
        importlib.import_module(name)
    return metadata

"""The model-registry store contract, implemented by `capstan.store.registry_sql.SqlRegistryStore`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from capstan.pages import Page
from capstan.registry.records import ModelVersion, RegisteredModel


class RegistryStore(Protocol):
    """Registered models, versions, tags and aliases. Unknown names raise `ResourceDoesNotExist`."""

    def create_registered_model(self, name: str, *, project: str, description: str = "",
                                tags: Mapping[str, str] | None = None) -> RegisteredModel: ...

    def get_registered_model(self, name: str) -> RegisteredModel: ...

    def rename_registered_model(self, name: str, new_name: str) -> RegisteredModel: ...

    def update_registered_model(self, name: str, *, description: str) -> RegisteredModel: ...

    def delete_registered_model(self, name: str) -> None: ...

    def search_registered_models(self, *, filter_string: str = "", max_results: int = 100,
                                 order_by: Sequence[str] = (), page_token: str | None = None,
                                 project: str | None = None) -> Page[RegisteredModel]:
        """Filter on ``name`` (=, !=, LIKE, ILIKE) and ``tags.<key>``."""
        ...

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None: ...

    def delete_registered_model_tag(self, name: str, key: str) -> None: ...

    def create_model_version(self, name: str, *, source: str, run_id: str | None = None,
                             tags: Mapping[str, str] | None = None, run_link: str = "",
                             description: str = "", model_id: str | None = None,
                             user_id: str = "") -> ModelVersion:
        """Next version number of ``name``; lineage run -> version is kept in ``run_id``/``model_id``."""
        ...

    def get_model_version(self, name: str, version: int) -> ModelVersion: ...

    def update_model_version(self, name: str, version: int, *, description: str) -> ModelVersion: ...

    def transition_model_version_stage(self, name: str, version: int, stage: str,
                                       archive_existing_versions: bool = False) -> ModelVersion: ...

    def delete_model_version(self, name: str, version: int) -> None: ...

    def search_model_versions(self, *, filter_string: str = "", max_results: int = 10000,
                              order_by: Sequence[str] = (), page_token: str | None = None,
                              project: str | None = None) -> Page[ModelVersion]:
        """Filter on ``name``, ``version``, ``run_id``, ``source_path``, ``tags.<key>``; ``project`` limits the
        search to one project's models."""
        ...

    def get_latest_versions(self, name: str, stages: Sequence[str] = ()) -> tuple[ModelVersion, ...]: ...

    def set_model_version_tag(self, name: str, version: int, key: str, value: str) -> None: ...

    def delete_model_version_tag(self, name: str, version: int, key: str) -> None: ...

    def set_alias(self, name: str, alias: str, version: int) -> None: ...

    def delete_alias(self, name: str, alias: str) -> None: ...

    def get_version_by_alias(self, name: str, alias: str) -> ModelVersion: ...

    def get_download_uri(self, name: str, version: int) -> str:
        """Where the version's files are (its storage location)."""
        ...

    def referenced_artifact_prefixes(self) -> tuple[str, ...]:
        """Artifact path prefixes that model versions still point at (kept by `capstan gc`)."""
        ...

"""Opening Capstan's local stores as one bundle, given a `Settings` object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from capstan.clock import Clock, system_clock
from capstan.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from capstan.artifacts.store import ArtifactStore
    from capstan.store.auth_sql import SqlAuthStore
    from capstan.store.events_sql import SqlEventLog
    from capstan.store.registry_sql import SqlRegistryStore
    from capstan.store.tracking_sql import SqlTrackingStore


@dataclass(slots=True)
class Services:
    """The metadata store's adapters and the artifact store, sharing one engine."""

    settings: Settings
    engine: Engine
    events: SqlEventLog
    artifacts: ArtifactStore
    tracking: SqlTrackingStore
    registry: SqlRegistryStore
    auth: SqlAuthStore
    clock: Clock

    @classmethod
    def open(cls, settings: Settings, *, clock: Clock = system_clock, migrate: bool = True) -> Services:
        """Connect to the stores named by ``settings``, applying pending migrations first."""
        from capstan.artifacts.store import ArtifactStore
        from capstan.store.auth_sql import SqlAuthStore
        from capstan.store.engine import create_store_engine
        from capstan.store.events_sql import SqlEventLog
        from capstan.store.registry_sql import SqlRegistryStore
        from capstan.store.tracking_sql import SqlTrackingStore

        check_artifact_root(settings)
        engine = create_store_engine(settings, migrate=migrate)
        events = SqlEventLog(engine, clock=clock)
        return cls(
            settings=settings,
            engine=engine,
            events=events,
            artifacts=ArtifactStore(settings, engine, clock=clock),
            tracking=SqlTrackingStore(engine, clock=clock, events=events),
            registry=SqlRegistryStore(engine, clock=clock, events=events),
            auth=SqlAuthStore(engine, clock=clock),
            clock=clock,
        )

    def close(self) -> None:
        """Release database connections."""
        self.engine.dispose()


def check_artifact_root(settings: Settings) -> None:
    """Fail with one line naming ``CAPSTAN_ARTIFACTS`` when the artifact root cannot be used: an unsupported
    scheme, a missing filesystem package (``s3fs``), or a local folder that is a file or cannot be created."""
    from pathlib import Path

    from capstan.settings import check_artifacts

    name = "CAPSTAN_ARTIFACTS" if "CAPSTAN_ARTIFACTS" in settings.extra else "artifacts"
    location = check_artifacts(settings.artifacts, field_name=name)
    if "://" in location and not location.startswith("file://"):
        return
    root = Path(location.removeprefix("file://")).expanduser()
    from capstan.store.engine import ensure_home, ensure_writable_folder

    if root.absolute() == settings.home / "artifacts" or settings.home in root.absolute().parents:
        ensure_home(settings)  # the home is created (and checked) first, so its own errors name CAPSTAN_HOME
    ensure_writable_folder(root, name)

"""SQL adapter of the model registry (`capstan.registry.ports.RegistryStore`), on SQLAlchemy Core.

Semantics follow MLflow's model registry: names are unique, versions count 1, 2, 3... per model and are never
reused (a deleted version is kept as a redacted tombstone so its number stays taken), aliases point at versions,
and stages are the legacy None/Staging/Production/Archived. Version numbers stay distinct under concurrent writers:
each write locks the model's row first (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite transactions start with
``BEGIN IMMEDIATE``), and the ``(model_id, version)`` unique constraint backs that up with a retry.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import Connection, Engine, and_, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from capstan.clock import Clock, system_clock
from capstan.errors import InvalidParameterValue, ResourceAlreadyExists, ResourceDoesNotExist, StoreUnavailable
from capstan.events.ports import EventLog
from capstan.pages import Page
from capstan.registry.records import ModelVersion, RegisteredModel
from capstan.store import registry_checks as checks
from capstan.store.registry_filter import (
    MODEL_TIEBREAK,
    MODEL_VERSIONS,
    REGISTERED_MODELS,
    VERSION_DEFAULT_ORDER,
    VERSION_TIEBREAK,
    Comparison,
    OrderBy,
    parse_filter,
    parse_order_by_list,
)
from capstan.store.registry_sql_query import (
    DELETED_STAGE,
    comparison_clause,
    order_clauses,
)
from capstan.store.schema import (
    logged_models,
    model_aliases,
    model_version_tags,
    model_versions,
    projects,
    registered_model_tags,
    registered_models,
    runs,
)
from capstan.store.sql_helpers import insert_ignore, upsert
from capstan.store.tracking_query import subplan_exists
from capstan.tracking.search_grammar import TAG
from capstan.tracking.search_syntax import encode_page_token

rm = registered_models
mv = model_versions

_CREATE_VERSION_ATTEMPTS = 5
_MODEL_FILTER_COLUMNS: Mapping[str, ColumnElement[Any]] = {"name": rm.c.name}
"""The column of each attribute `REGISTERED_MODELS` filters on."""
_VERSION_FILTER_COLUMNS: Mapping[str, ColumnElement[Any]] = {
    "name": rm.c.name, "run_id": mv.c.run_uuid, "source_path": mv.c.source, "version_number": mv.c.version}
"""The column of each attribute `MODEL_VERSIONS` filters on."""
_MODEL_ORDER_COLUMNS: Mapping[str, ColumnElement[Any]] = {
    "name": rm.c.name, "creation_timestamp": rm.c.created_at, "last_updated_timestamp": rm.c.updated_at}
"""The column of each attribute `REGISTERED_MODELS` orders by."""
_VERSION_ORDER_COLUMNS: Mapping[str, ColumnElement[Any]] = {
    "name": rm.c.name, "version_number": mv.c.version, "creation_timestamp": mv.c.created_at,
    "last_updated_timestamp": mv.c.updated_at}
"""The column of each attribute `MODEL_VERSIONS` orders by."""
_CHUNK = 500
_EVENT_KIND = "model"


def _chunks(items: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start:start + _CHUNK]


def artifact_path_of(uri: str) -> str | None:
    """The ArtifactStore path of an ``mlflow-artifacts:`` URI (``None`` for a location outside the store)."""
    parsed = urlparse(uri)
    if parsed.scheme != "mlflow-artifacts":
        return None
    path = parsed.path.strip("/")
    return path or None


class SqlRegistryStore:
    """Registered models, versions, tags, aliases and stages in the metadata store.

    ``events``, when given, receives kind ``"model"`` events whose object id is the model name.
    """

    def __init__(self, engine: Engine, *, clock: Clock = system_clock, events: EventLog | None = None) -> None:
        self._engine = engine
        self._clock = clock
        self._events = events

    # ------------------------------------------------------------------ registered models

    def create_registered_model(self, name: str, *, project: str, description: str = "",
                                tags: Mapping[str, str] | None = None) -> RegisteredModel:
        """Create an empty model in ``project`` (the project row is created on demand)."""
        checks.model_name(name)
        checks.project_name(project)
        tag_items = checks.tags(tags)
        now = self._clock()
        try:
            with self._engine.begin() as conn:
                if conn.execute(select(rm.c.id).where(rm.c.name == name)).first() is not None:
                    raise ResourceAlreadyExists(f"Registered Model (name={name}) already exists.")
                project_id = self._project_id(conn, project, now)
                model_id = _new_id(conn.execute(insert(rm).values(
                    project_id=project_id, name=name, description=description or "", created_at=now,
                    updated_at=now)).inserted_primary_key)
                if tag_items:
                    conn.execute(insert(registered_model_tags),
                                 [{"model_id": model_id, "key": k, "value": v} for k, v in tag_items.items()])
        except IntegrityError:
            raise ResourceAlreadyExists(f"Registered Model (name={name}) already exists.") from None
        self._emit("RegisteredModelCreated", name, project, f"Registered model {name} created")
        return RegisteredModel(name, now, now, project, description or "", tag_items)

    def get_registered_model(self, name: str) -> RegisteredModel:
        """The model with its tags, aliases and latest version per stage."""
        checks.model_name(name)
        with self._engine.connect() as conn:
            row = self._model_row(conn, name)
            return self._model_records(conn, [row])[0]

    def rename_registered_model(self, name: str, new_name: str) -> RegisteredModel:
        """Rename a model; its versions, tags and aliases follow it."""
        checks.model_name(name)
        checks.model_name(new_name, field_name="new_name")
        try:
            with self._engine.begin() as conn:
                row = self._model_row(conn, name, lock=True)
                if new_name != name and conn.execute(
                        select(rm.c.id).where(rm.c.name == new_name)).first() is not None:
                    raise ResourceAlreadyExists(f"Registered Model (name={new_name}) already exists.")
                now = self._clock()
                conn.execute(update(rm).where(rm.c.id == row.id).values(name=new_name, updated_at=now))
                conn.execute(update(mv).where(mv.c.model_id == row.id, mv.c.stage != DELETED_STAGE)
                             .values(updated_at=now))
                record = self._model_records(conn, [self._model_row(conn, new_name)])[0]
        except IntegrityError:
            raise ResourceAlreadyExists(f"Registered Model (name={new_name}) already exists.") from None
        self._emit("RegisteredModelRenamed", new_name, row.project, f"Registered model {name} renamed to {new_name}",
                   {"old_name": name})
        return record

    def update_registered_model(self, name: str, *, description: str) -> RegisteredModel:
        """Replace the model's description."""
        checks.model_name(name)
        with self._engine.begin() as conn:
            row = self._model_row(conn, name, lock=True)
            conn.execute(update(rm).where(rm.c.id == row.id)
                         .values(description=description or "", updated_at=self._clock()))
            return self._model_records(conn, [self._model_row(conn, name)])[0]

    def delete_registered_model(self, name: str) -> None:
        """Delete the model with all its versions, tags and aliases."""
        checks.model_name(name)
        with self._engine.begin() as conn:
            row = self._model_row(conn, name, lock=True)
            version_ids = select(mv.c.id).where(mv.c.model_id == row.id).scalar_subquery()
            conn.execute(delete(model_version_tags).where(model_version_tags.c.version_id.in_(version_ids)))
            conn.execute(delete(model_aliases).where(model_aliases.c.model_id == row.id))
            conn.execute(delete(mv).where(mv.c.model_id == row.id))
            conn.execute(delete(registered_model_tags).where(registered_model_tags.c.model_id == row.id))
            conn.execute(delete(rm).where(rm.c.id == row.id))
        self._emit("RegisteredModelDeleted", name, row.project, f"Registered model {name} deleted")

    def search_registered_models(self, *, filter_string: str = "", max_results: int = 100,
                                 order_by: Sequence[str] = (), page_token: str | None = None,
                                 project: str | None = None) -> Page[RegisteredModel]:
        """Filter on ``name`` (=, !=, LIKE, ILIKE, IN, NOT IN) and ``tags.<key>``; order by ``name``,
        ``creation_timestamp``, ``last_updated_timestamp`` (alias ``timestamp``); default ``name ASC``."""
        checks.max_results(max_results, checks.MAX_MODELS_PER_PAGE)
        terms = parse_filter(filter_string, REGISTERED_MODELS)
        orders = parse_order_by_list(order_by, REGISTERED_MODELS)
        offset = checks.page_offset(page_token)
        with self._engine.connect() as conn:
            dialect = conn.dialect.name
            query = self._model_select()
            if project is not None:
                query = query.where(projects.c.name == project)
            for term in terms:
                query = query.where(self._model_clause(term, dialect))
            query = query.order_by(*self._model_order(orders, dialect)).limit(max_results + 1).offset(offset)
            rows = conn.execute(query).all()
            items = self._model_records(conn, rows[:max_results])
        token = encode_page_token(offset + max_results) if len(rows) > max_results else None
        return Page(tuple(items), token)

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        """Set (or overwrite) one tag of a model."""
        checks.model_name(name)
        checks.tag(key, value)
        with self._engine.begin() as conn:
            row = self._model_row(conn, name, lock=True)
            upsert(conn, registered_model_tags, [{"model_id": row.id, "key": key, "value": value}],
                   keys=("model_id", "key"), update=("value",))

    def delete_registered_model_tag(self, name: str, key: str) -> None:
        """Remove one tag of a model (no error when the tag is not set, as in MLflow)."""
        checks.model_name(name)
        checks.tag_key(key)
        with self._engine.begin() as conn:
            row = self._model_row(conn, name, lock=True)
            conn.execute(delete(registered_model_tags).where(registered_model_tags.c.model_id == row.id,
                                                             registered_model_tags.c.key == key))

    # ------------------------------------------------------------------ model versions

    def create_model_version(self, name: str, *, source: str, run_id: str | None = None,
                             tags: Mapping[str, str] | None = None, run_link: str = "",
                             description: str = "", model_id: str | None = None,
                             user_id: str = "") -> ModelVersion:
        """Next version number of ``name``; lineage run -> version is kept in ``run_id``/``model_id``.

        ``source`` may be a plain URI (kept as the storage location), ``runs:/<run_id>/<path>`` (resolved through
        the run's artifact URI), ``models:/<logged model id>`` (resolved through the logged model's artifact
        location) or ``models:/<name>/<version>``, ``models:/<name>@<alias>`` (that version's location).
        """
        checks.model_name(name)
        checks.version_fields(source=source, run_id=run_id, model_id=model_id, user_id=user_id)
        tag_items = checks.tags(tags)
        for _attempt in range(_CREATE_VERSION_ATTEMPTS):
            try:
                with self._engine.begin() as conn:
                    row = self._model_row(conn, name, lock=True)
                    storage, run_id_, model_id_ = self._resolve_source(conn, source, run_id, model_id)
                    now = self._clock()
                    last = conn.execute(select(func.max(mv.c.version)).where(mv.c.model_id == row.id)).scalar()
                    version = int(last or 0) + 1
                    version_id = _new_id(conn.execute(insert(mv).values(
                        model_id=row.id, version=version, source=source, storage_location=storage,
                        run_uuid=run_id_, run_link=run_link or "", logged_model_id=model_id_,
                        description=description or "", status="READY", stage="None", user_id=user_id or "",
                        created_at=now, updated_at=now)).inserted_primary_key)
                    if tag_items:
                        conn.execute(insert(model_version_tags),
                                     [{"version_id": version_id, "key": k, "value": v}
                                      for k, v in tag_items.items()])
                    conn.execute(update(rm).where(rm.c.id == row.id).values(updated_at=now))
                break
            except IntegrityError:
                continue
        else:
            raise StoreUnavailable(f"Model Version creation error (name={name}): giving up after "
                                   f"{_CREATE_VERSION_ATTEMPTS} attempts; try again")
        self._emit("ModelVersionCreated", name, row.project, f"Version {version} of {name} created from {source}",
                   {"version": version, "source": source, "run_id": run_id_, "model_id": model_id_})
        return ModelVersion(name, version, now, now, source, storage, run_id_, run_link or "", model_id_,
                            description or "", user_id or "", tags=tag_items)

    def get_model_version(self, name: str, version: int) -> ModelVersion:
        """One version with its tags and aliases."""
        checks.model_name(name)
        number = checks.version(version)
        with self._engine.connect() as conn:
            row = self._model_row(conn, name)
            return self._version_records(conn, [self._version_row(conn, row, number)])[0]

    def update_model_version(self, name: str, version: int, *, description: str) -> ModelVersion:
        """Replace a version's description."""
        checks.model_name(name)
        number = checks.version(version)
        with self._engine.begin() as conn:
            row = self._model_row(conn, name, lock=True)
            vrow = self._version_row(conn, row, number)
            conn.execute(update(mv).where(mv.c.id == vrow.id)
                         .values(description=description or "", updated_at=self._clock()))
            return self._version_records(conn, [self._version_row(conn, row, number)])[0]

    def transition_model_version_stage(self, name: str, version: int, stage: str,
                                       archive_existing_versions: bool = False) -> ModelVersion:
        """Move a version to ``stage``; optionally archive the other versions in that stage."""
        checks.model_name(name)
        number = checks.version(version)
        target = checks.stage(stage)
        if archive_existing_versions and target not in checks.ACTIVE_STAGES:
            raise InvalidParameterValue(
                f"archive_existing_versions: cannot archive existing model versions because {stage!r} is not an "
                f"active stage; active stages are {', '.join(checks.ACTIVE_STAGES)}")
        with self._engine.begin() as conn:
            row = self._model_row(conn, name, lock=True)
            vrow = self._version_row(conn, row, number)
            now = self._clock()
            archived: list[int] = []
            if archive_existing_versions:
                archived = sorted(conn.execute(select(mv.c.version).where(
                    mv.c.model_id == row.id, mv.c.version != number, mv.c.stage == target)).scalars())
                conn.execute(update(mv).where(mv.c.model_id == row.id, mv.c.version.in_(archived))
                             .values(stage="Archived", updated_at=now))
            conn.execute(update(mv).where(mv.c.id == vrow.id).values(stage=target, updated_at=now))
            conn.execute(update(rm).where(rm.c.id == row.id).values(updated_at=now))
            record = self._version_records(conn, [self._version_row(conn, row, number)])[0]
        self._emit("StageTransitioned", name, row.project,
                   f"Version {number} of {name} moved from {vrow.stage} to {target}",
                   {"version": number, "from": vrow.stage, "to": target, "archived": archived})
        return record

    def delete_model_version(self, name: str, version: int) -> None:
        """Delete a version and the aliases pointing at it; its number is never given out again."""
        checks.model_name(name)
        number = checks.version(version)
        with self._engine.begin() as conn:
            row = self._model_row(conn, name, lock=True)
            vrow = self._version_row(conn, row, number)
            now = self._clock()
            aliases = sorted(conn.execute(select(model_aliases.c.alias).where(
                model_aliases.c.model_id == row.id, model_aliases.c.version == number)).scalars())
            conn.execute(delete(model_aliases).where(model_aliases.c.model_id == row.id,
                                                     model_aliases.c.version == number))
            conn.execute(delete(model_version_tags).where(model_version_tags.c.version_id == vrow.id))
            # A redacted tombstone keeps the number taken, as MLflow does.
            conn.execute(update(mv).where(mv.c.id == vrow.id).values(
                stage=DELETED_STAGE, source="REDACTED-SOURCE-PATH", storage_location="", run_uuid=None,
                run_link="", logged_model_id=None, description="", user_id="", updated_at=now))
            conn.execute(update(rm).where(rm.c.id == row.id).values(updated_at=now))
        self._emit("ModelVersionDeleted", name, row.project, f"Version {number} of {name} deleted",
                   {"version": number, "aliases_removed": aliases})

    def search_model_versions(self, *, filter_string: str = "", max_results: int = 10000,
                              order_by: Sequence[str] = (), page_token: str | None = None,
                              project: str | None = None) -> Page[ModelVersion]:
        """Filter on ``name``, ``version``/``version_number``, ``run_id``, ``source_path``, ``tags.<key>``;
        order by ``name``, ``version_number``, ``creation_timestamp``, ``last_updated_timestamp`` (default
        ``last_updated_timestamp DESC, name ASC, version_number DESC``, as MLflow)."""
        checks.max_results(max_results, checks.MAX_VERSIONS_PER_PAGE)
        terms = parse_filter(filter_string, MODEL_VERSIONS)
        orders = parse_order_by_list(order_by, MODEL_VERSIONS) or list(VERSION_DEFAULT_ORDER)
        offset = checks.page_offset(page_token)
        with self._engine.connect() as conn:
            dialect = conn.dialect.name
            query = (select(mv, rm.c.name.label("model_name"))
                     .join(rm, rm.c.id == mv.c.model_id).where(mv.c.stage != DELETED_STAGE))
            if project is not None:
                query = query.join(projects, projects.c.id == rm.c.project_id).where(projects.c.name == project)
            for term in terms:
                query = query.where(self._version_clause(term, dialect))
            query = query.order_by(*self._version_order(orders, dialect)).limit(max_results + 1).offset(offset)
            rows = conn.execute(query).all()
            items = self._version_records(conn, rows[:max_results])
        token = encode_page_token(offset + max_results) if len(rows) > max_results else None
        return Page(tuple(items), token)

    def get_latest_versions(self, name: str, stages: Sequence[str] = ()) -> tuple[ModelVersion, ...]:
        """The newest version in each of ``stages`` (every stage when empty)."""
        checks.model_name(name)
        wanted = {checks.stage(s) for s in stages} if stages else set(checks.STAGES)
        with self._engine.connect() as conn:
            row = self._model_row(conn, name)
            latest = self._latest_rows(conn, [row.id]).get(row.id, [])
            return tuple(self._version_records(conn, [v for v in latest if v.stage in wanted]))

    def set_model_version_tag(self, name: str, version: int, key: str, value: str) -> None:
        """Set (or overwrite) one tag of a version."""
        checks.model_name(name)
        number = checks.version(version)
        checks.tag(key, value)
        with self._engine.begin() as conn:
            vrow = self._version_row(conn, self._model_row(conn, name, lock=True), number)
            upsert(conn, model_version_tags, [{"version_id": vrow.id, "key": key, "value": value}],
                   keys=("version_id", "key"), update=("value",))

    def delete_model_version_tag(self, name: str, version: int, key: str) -> None:
        """Remove one tag of a version (no error when the tag is not set, as in MLflow)."""
        checks.model_name(name)
        number = checks.version(version)
        checks.tag_key(key)
        with self._engine.begin() as conn:
            vrow = self._version_row(conn, self._model_row(conn, name, lock=True), number)
            conn.execute(delete(model_version_tags).where(model_version_tags.c.version_id == vrow.id,
                                                          model_version_tags.c.key == key))

    # ------------------------------------------------------------------ aliases

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point ``alias`` at ``version`` (moving it if it pointed elsewhere)."""
        checks.model_name(name)
        checks.alias(alias, reserved_check=True)
        number = checks.version(version)
        with self._engine.begin() as conn:
            row = self._model_row(conn, name, lock=True)
            self._version_row(conn, row, number)
            previous = conn.execute(select(model_aliases.c.version).where(
                model_aliases.c.model_id == row.id, model_aliases.c.alias == alias)).scalar()
            upsert(conn, model_aliases, [{"model_id": row.id, "alias": alias, "version": number}],
                   keys=("model_id", "alias"), update=("version",))
        self._emit("AliasSet", name, row.project, f"Alias {alias} of {name} now points at version {number}",
                   {"alias": alias, "version": number, "previous_version": previous})

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias; an alias the model does not have raises `ResourceDoesNotExist`."""
        checks.model_name(name)
        checks.alias(alias)
        with self._engine.begin() as conn:
            row = self._model_row(conn, name, lock=True)
            previous = conn.execute(select(model_aliases.c.version).where(
                model_aliases.c.model_id == row.id, model_aliases.c.alias == alias)).scalar()
            if previous is None:
                raise ResourceDoesNotExist(f"Registered model alias {alias} not found for model {name}.")
            conn.execute(delete(model_aliases).where(model_aliases.c.model_id == row.id,
                                                     model_aliases.c.alias == alias))
        self._emit("AliasDeleted", name, row.project, f"Alias {alias} of {name} deleted (was version {previous})",
                   {"alias": alias, "version": previous})

    def get_version_by_alias(self, name: str, alias: str) -> ModelVersion:
        """The version ``alias`` points at; ``latest`` (any case) is the highest live version, as in MLflow."""
        checks.model_name(name)
        checks.alias(alias)
        with self._engine.connect() as conn:
            row = self._model_row(conn, name)
            if alias.lower() == "latest":
                number = conn.execute(select(func.max(mv.c.version)).where(
                    mv.c.model_id == row.id, mv.c.stage != DELETED_STAGE)).scalar()
                if number is None:
                    raise ResourceDoesNotExist(f"Latest version not found for model {name}.")
            else:
                number = conn.execute(select(model_aliases.c.version).where(
                    model_aliases.c.model_id == row.id, model_aliases.c.alias == alias)).scalar()
                if number is None:
                    raise ResourceDoesNotExist(f"Registered model alias {alias} not found for model {name}.")
            return self._version_records(conn, [self._version_row(conn, row, int(number))])[0]

    # ------------------------------------------------------------------ artifacts

    def get_download_uri(self, name: str, version: int) -> str:
        """Where the version's files are (its storage location)."""
        checks.model_name(name)
        number = checks.version(version)
        with self._engine.connect() as conn:
            vrow = self._version_row(conn, self._model_row(conn, name), number)
        return str(vrow.storage_location or vrow.source)

    def referenced_artifact_prefixes(self) -> tuple[str, ...]:
        """ArtifactStore paths that live versions' storage locations point at (kept by `capstan gc`)."""
        with self._engine.connect() as conn:
            locations = conn.execute(select(mv.c.storage_location).distinct()
                                     .where(mv.c.stage != DELETED_STAGE)).scalars().all()
        return tuple(sorted({p for loc in locations if (p := artifact_path_of(loc)) is not None}))

    # ------------------------------------------------------------------ internals

    def _emit(self, reason: str, name: str, project: str, message: str,
              data: Mapping[str, object] | None = None) -> None:
        if self._events is not None:
            self._events.append(_EVENT_KIND, name, reason, message, project=project, data=data)

    def _project_id(self, conn: Connection, project: str, now: int) -> int:
        insert_ignore(conn, projects, [{"name": project, "description": "", "created_at": now}])
        return int(conn.execute(select(projects.c.id).where(projects.c.name == project)).scalar_one())

    @staticmethod
    def _model_select() -> Any:
        return select(rm, projects.c.name.label("project")).join(projects, projects.c.id == rm.c.project_id)

    def _model_row(self, conn: Connection, name: str, *, lock: bool = False) -> Any:
        query = self._model_select().where(rm.c.name == name)
        if lock:
            query = query.with_for_update(of=rm)
        row = conn.execute(query).first()
        if row is None:
            raise ResourceDoesNotExist(f"Registered Model with name={name} not found")
        return row

    @staticmethod
    def _version_row(conn: Connection, model: Any, number: int) -> Any:
        row = conn.execute(select(mv, rm.c.name.label("model_name")).join(rm, rm.c.id == mv.c.model_id).where(
            mv.c.model_id == model.id, mv.c.version == number, mv.c.stage != DELETED_STAGE)).first()
        if row is None:
            raise ResourceDoesNotExist(f"Model Version (name={model.name}, version={number}) not found")
        return row

    def _resolve_source(self, conn: Connection, source: str, run_id: str | None,
                        model_id: str | None) -> tuple[str, str | None, str | None]:
        """(storage location, run id, logged-model id) for a new version's ``source``."""
        storage = source
        parsed = urlparse(source)
        if parsed.scheme == "runs":
            source_run, _, path = source[len("runs:"):].lstrip("/").partition("/")
            artifact_uri = conn.execute(select(runs.c.artifact_uri).where(runs.c.uuid == source_run)).scalar()
            if artifact_uri is None:
                raise ResourceDoesNotExist(f"source: run {source_run!r} of {source!r} not found")
            path = path.strip("/")
            storage = f"{str(artifact_uri).rstrip('/')}/{path}" if path else str(artifact_uri)
            run_id = run_id or source_run
        elif parsed.scheme == "models":
            storage, run_id, model_id = self._resolve_models_uri(conn, source, run_id, model_id)
        if model_id and not run_id:
            run_id = conn.execute(select(logged_models.c.source_run_uuid)
                                  .where(logged_models.c.id == model_id)).scalar()
        return storage, run_id or None, model_id or None

    def _resolve_models_uri(self, conn: Connection, source: str, run_id: str | None,
                            model_id: str | None) -> tuple[str, str | None, str | None]:
        parts = source[len("models:"):].lstrip("/").split("/")
        if not parts[0] or len(parts) > 2:
            raise InvalidParameterValue(f"source: {source!r} is not a models:/<id>, models:/<name>/<version> or "
                                        "models:/<name>@<alias> URI")
        if len(parts) == 1 and "@" not in parts[0]:
            found = conn.execute(select(logged_models.c.artifact_location, logged_models.c.source_run_uuid)
                                 .where(logged_models.c.id == parts[0])).first()
            if found is None:
                raise ResourceDoesNotExist(f"source: logged model {parts[0]!r} of {source!r} not found")
            return str(found.artifact_location), run_id or found.source_run_uuid, model_id or parts[0]
        if len(parts) == 1:
            model_name, _, alias = parts[0].rpartition("@")
            target = self._model_row(conn, model_name)
            number = conn.execute(select(model_aliases.c.version).where(
                model_aliases.c.model_id == target.id, model_aliases.c.alias == alias)).scalar()
            if number is None:
                raise ResourceDoesNotExist(f"source: alias {alias} of model {model_name} not found")
        else:
            model_name, suffix = parts
            target = self._model_row(conn, model_name)
            if suffix.isdigit():
                number = int(suffix)
            else:
                stages = set(checks.STAGES) if suffix.lower() == "latest" else {checks.stage(suffix)}
                live = [v.version for v in self._latest_rows(conn, [target.id]).get(target.id, [])
                        if v.stage in stages]
                if not live:
                    raise ResourceDoesNotExist(f"source: no version of model {model_name} matches {source!r}")
                number = max(live)
        vrow = self._version_row(conn, target, int(number))
        return (str(vrow.storage_location or vrow.source), run_id or vrow.run_uuid,
                model_id or vrow.logged_model_id)

    # filters and ordering

    @staticmethod
    def _model_clause(term: Comparison, dialect: str) -> ColumnElement[bool]:
        if term.kind == TAG:
            tag = registered_model_tags
            return subplan_exists(tag.c.model_id == rm.c.id, tag.c.key == term.key,
                                  comparison_clause(tag.c.value, term, dialect))
        return comparison_clause(_MODEL_FILTER_COLUMNS[term.key], term, dialect)

    @staticmethod
    def _version_clause(term: Comparison, dialect: str) -> ColumnElement[bool]:
        if term.kind == TAG:
            tag = model_version_tags
            return subplan_exists(tag.c.version_id == mv.c.id, tag.c.key == term.key,
                                  comparison_clause(tag.c.value, term, dialect))
        return comparison_clause(_VERSION_FILTER_COLUMNS[term.key], term, dialect,
                                 numeric=term.key == "version_number")

    @staticmethod
    def _model_order(orders: Sequence[OrderBy], dialect: str) -> list[ColumnElement[Any]]:
        return order_clauses(orders, _MODEL_ORDER_COLUMNS, dialect, tiebreak=MODEL_TIEBREAK,
                             entity="registered models")

    @staticmethod
    def _version_order(orders: Sequence[OrderBy], dialect: str) -> list[ColumnElement[Any]]:
        return order_clauses(orders, _VERSION_ORDER_COLUMNS, dialect, tiebreak=VERSION_TIEBREAK,
                             entity="model versions")

    # record assembly

    @staticmethod
    def _latest_rows(conn: Connection, model_ids: Sequence[int]) -> dict[int, list[Any]]:
        """Per model id, the newest live version row in each stage (ordered by stage)."""
        found: dict[int, list[Any]] = defaultdict(list)
        for chunk in _chunks(model_ids):
            newest = (select(mv.c.model_id, func.max(mv.c.version).label("top"))
                      .where(mv.c.model_id.in_(chunk), mv.c.stage != DELETED_STAGE)
                      .group_by(mv.c.model_id, mv.c.stage).subquery())
            query = (select(mv, rm.c.name.label("model_name"))
                     .join(rm, rm.c.id == mv.c.model_id)
                     .join(newest, and_(newest.c.model_id == mv.c.model_id, newest.c.top == mv.c.version)))
            for row in conn.execute(query):
                found[row.model_id].append(row)
        for rows in found.values():
            rows.sort(key=lambda r: checks.STAGES.index(r.stage) if r.stage in checks.STAGES else len(checks.STAGES))
        return found

    def _model_records(self, conn: Connection, rows: Sequence[Any]) -> list[RegisteredModel]:
        ids = [int(r.id) for r in rows]
        tags: dict[int, dict[str, str]] = defaultdict(dict)
        aliases: dict[int, dict[str, int]] = defaultdict(dict)
        for chunk in _chunks(ids):
            for t in conn.execute(select(registered_model_tags).where(registered_model_tags.c.model_id.in_(chunk))
                                  .order_by(registered_model_tags.c.key)):
                tags[t.model_id][t.key] = t.value
            for a in conn.execute(select(model_aliases).where(model_aliases.c.model_id.in_(chunk))
                                  .order_by(model_aliases.c.alias)):
                aliases[a.model_id][a.alias] = int(a.version)
        latest = self._latest_rows(conn, ids)
        latest_records = self._version_records(conn, [v for i in ids for v in latest.get(i, [])])
        by_model: dict[str, list[ModelVersion]] = defaultdict(list)
        for record in latest_records:
            by_model[record.name].append(record)
        return [RegisteredModel(r.name, int(r.created_at), int(r.updated_at), r.project, r.description,
                                dict(tags[r.id]), dict(aliases[r.id]), tuple(by_model[r.name])) for r in rows]

    @staticmethod
    def _version_records(conn: Connection, rows: Sequence[Any]) -> list[ModelVersion]:
        ids = [int(r.id) for r in rows]
        tags: dict[int, dict[str, str]] = defaultdict(dict)
        for chunk in _chunks(ids):
            for t in conn.execute(select(model_version_tags).where(model_version_tags.c.version_id.in_(chunk))
                                  .order_by(model_version_tags.c.key)):
                tags[t.version_id][t.key] = t.value
        aliases: dict[tuple[int, int], list[str]] = defaultdict(list)
        for chunk in _chunks(sorted({int(r.model_id) for r in rows})):
            for a in conn.execute(select(model_aliases).where(model_aliases.c.model_id.in_(chunk))
                                  .order_by(model_aliases.c.alias)):
                aliases[(a.model_id, a.version)].append(a.alias)
        return [ModelVersion(
            name=r.model_name, version=int(r.version), creation_timestamp=int(r.created_at),
            last_updated_timestamp=int(r.updated_at), source=r.source, storage_location=r.storage_location,
            run_id=r.run_uuid, run_link=r.run_link, model_id=r.logged_model_id, description=r.description,
            user_id=r.user_id, status=r.status, current_stage=r.stage, tags=dict(tags[r.id]),
            aliases=tuple(aliases[(r.model_id, r.version)])) for r in rows]


def _new_id(key: Any) -> int:
    assert key is not None
    return int(key[0])

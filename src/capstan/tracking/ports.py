"""The tracking-store contract. `capstan.store.tracking_sql.SqlTrackingStore` implements it for SQLite and
PostgreSQL; `tests/store/test_tracking_contract.py` checks every adapter against it.

All times are integer milliseconds since the epoch. Experiment ids are decimal strings, run ids 32-char hex.
Errors: unknown ids raise `ResourceDoesNotExist`; invalid input raises `InvalidParameterValue` naming the field;
writing to a deleted run or a finished-and-deleted object raises `InvalidState`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from capstan.pages import Page
from capstan.tracking.records import (
    DatasetInput,
    Experiment,
    LoggedModel,
    Metric,
    Param,
    PurgeReport,
    Run,
    RunInfo,
    RunTag,
)

if TYPE_CHECKING:
    from capstan.tracking.search_filter import DatasetFilter, LoggedModelOrder
    from capstan.tracking.series import MetricSeries, SeriesQuery


class TrackingStore(Protocol):
    """Experiments, runs, params, metrics, tags, inputs/outputs and MLflow 3 logged models."""

    # -- experiments --------------------------------------------------------------------------------------
    def create_experiment(self, name: str, *, project: str, artifact_location: str | None = None,
                          tags: Mapping[str, str] | None = None) -> str:
        """Create an experiment in ``project`` (created on demand); returns its id."""
        ...

    def get_experiment(self, experiment_id: str) -> Experiment: ...

    def get_experiment_by_name(self, name: str, *, project: str) -> Experiment | None: ...

    def search_experiments(self, *, project: str | None = None, view_type: str = "ACTIVE_ONLY",
                           filter_string: str = "", order_by: Sequence[str] = (), max_results: int = 1000,
                           page_token: str | None = None) -> Page[Experiment]:
        """Filter on ``name``/``attributes.name`` (=, !=, LIKE, ILIKE), ``creation_time``, ``last_update_time``
        and ``tags.<key>``; ``project=None`` searches every project."""
        ...

    def rename_experiment(self, experiment_id: str, new_name: str) -> None: ...

    def delete_experiment(self, experiment_id: str) -> None:
        """Soft delete: the experiment and its runs move to the ``deleted`` lifecycle stage."""
        ...

    def restore_experiment(self, experiment_id: str) -> None: ...

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None: ...

    def delete_experiment_tag(self, experiment_id: str, key: str) -> None: ...

    # -- runs -------------------------------------------------------------------------------------------
    def create_run(self, experiment_id: str, *, user_id: str = "", start_time: int | None = None,
                   run_name: str | None = None, tags: Sequence[RunTag] = (), source: str = "",
                   git_commit: str = "") -> RunInfo:
        """Create a RUNNING run. ``run_name`` defaults to a generated two-word name; it is also stored as the
        ``mlflow.runName`` tag, as MLflow does."""
        ...

    def get_run(self, run_id: str) -> Run: ...

    def update_run(self, run_id: str, *, status: str | None = None, end_time: int | None = None,
                   run_name: str | None = None) -> RunInfo: ...

    def delete_run(self, run_id: str) -> None: ...

    def restore_run(self, run_id: str) -> None: ...

    def log_batch(self, run_id: str, *, metrics: Sequence[Metric] = (), params: Sequence[Param] = (),
                  tags: Sequence[RunTag] = ()) -> None:
        """Atomically log metrics, params and tags. Re-logging a param with a different value raises
        `InvalidParameterValue`; an identical value is accepted. Identical metric points are absorbed."""
        ...

    def log_metrics_for_runs(self, batches: Mapping[str, Sequence[Metric]]) -> None:
        """Log metric points for several runs in one transaction (used by the SDK's background writer)."""
        ...

    def delete_tag(self, run_id: str, key: str) -> None: ...

    def get_metric_history(self, run_id: str, key: str, *, max_results: int | None = None,
                           page_token: str | None = None) -> Page[Metric]:
        """Every point of ``key`` ordered by step then timestamp."""
        ...

    def metric_series(self, run_id: str, key: str, query: SeriesQuery) -> MetricSeries:
        """Metric ``key`` of the run downsampled for a chart: the points inside ``query``'s window on its x axis
        cut into at most ``query.max_points`` buckets exactly as `capstan.tracking.series.downsample` cuts them.
        An unknown run, or a key the run never logged, raises `ResourceDoesNotExist`."""
        ...

    def search_runs(self, experiment_ids: Sequence[str], *, filter_string: str = "",
                    view_type: str = "ACTIVE_ONLY", max_results: int = 1000, order_by: Sequence[str] = (),
                    page_token: str | None = None) -> Page[Run]:
        """MLflow search syntax: ``metrics.x > 0.5 AND params.p = 'a' AND tags.t LIKE '%x%' AND
        attributes.status = 'FINISHED'``; ``order_by`` like ``["metrics.acc DESC", "start_time"]``."""
        ...

    def log_inputs(self, run_id: str, *, datasets: Sequence[DatasetInput] = (),
                   model_ids: Sequence[str] = ()) -> None: ...

    def log_outputs(self, run_id: str, model_ids_and_steps: Sequence[tuple[str, int]]) -> None: ...

    # -- MLflow 3 logged models ------------------------------------------------------------------------
    def create_logged_model(self, experiment_id: str, *, name: str | None = None,
                            source_run_id: str | None = None, model_type: str = "",
                            params: Mapping[str, str] | None = None,
                            tags: Mapping[str, str] | None = None) -> LoggedModel: ...

    def get_logged_model(self, model_id: str) -> LoggedModel: ...

    def finalize_logged_model(self, model_id: str, status: str) -> LoggedModel: ...

    def set_logged_model_tags(self, model_id: str, tags: Mapping[str, str]) -> None: ...

    def log_logged_model_params(self, model_id: str, params: Mapping[str, str]) -> None:
        """Add params to a logged model; changing an existing param's value raises `InvalidParameterValue`."""
        ...

    def log_logged_model_metrics(self, run_id: str, points: Sequence[tuple[str, Metric, str, str]]) -> None:
        """Link metric points of a run to logged models: ``(model_id, metric, dataset_name, dataset_digest)``."""
        ...

    def delete_logged_model_tag(self, model_id: str, key: str) -> None: ...

    def delete_logged_model(self, model_id: str) -> None: ...

    def search_logged_models(self, experiment_ids: Sequence[str], *, filter_string: str = "",
                             max_results: int = 100, page_token: str | None = None,
                             order_by: Sequence[LoggedModelOrder] = (),
                             datasets: Sequence[DatasetFilter] = ()) -> Page[LoggedModel]: ...

    # -- garbage collection ----------------------------------------------------------------------------
    def purge_deleted(self, *, older_than_ms: int | None = None, dry_run: bool = False) -> PurgeReport:
        """Permanently remove soft-deleted runs and experiments (deleted at least ``older_than_ms`` ago when given)
        and return the artifact path prefixes they owned, so the caller can drop those artifact entries.
        ``dry_run`` returns the same report and removes nothing."""
        ...

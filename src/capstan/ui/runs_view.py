"""Read models of the experiments and runs pages: what each page shows, computed once for the page and its JSON twin.

- `runs_table`: one server-side page of an experiment's runs (MLflow filter and order syntax, as ``capstan runs
  list --filter``) with only the chosen param/metric/tag columns, and the column keys seen on that page;
- `run_detail`: a run with its experiment and lineage (parent run, training job, study trial, datasets, logged
  models, registered model versions);
- `compare_runs`: params, metrics and tags of several runs side by side, marking the keys whose values differ.

The runs table asks the store for ``max_results + 1`` runs of one page (``search_runs``: a LIMIT/OFFSET query,
then the params, tags and latest metrics of those runs only), so its cost does not grow with the experiment.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from capstan.errors import InvalidParameterValue
from capstan.registry.ports import RegistryStore
from capstan.registry.records import ModelVersion
from capstan.sdk import backends_wire as wire
from capstan.sdk.fluent import PIPELINE_RUN_TAG, PIPELINE_STEP_TAG
from capstan.tracking.ports import TrackingStore
from capstan.tracking.records import VIEW_TYPES, Experiment, Run
from capstan.ui.paging import page_size

ColumnKind = Literal["metrics", "params", "tags"]
COLUMN_KINDS: tuple[ColumnKind, ...] = ("metrics", "params", "tags")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_COLUMNS = 200
MAX_COMPARE = 20
MAX_LINKED_VERSIONS = 100
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


@dataclass(frozen=True, slots=True)
class Column:
    """A chosen column of the runs table: ``metrics.acc``, ``params.lr`` or ``tags.team``."""

    kind: ColumnKind
    key: str

    @property
    def name(self) -> str:
        return f"{self.kind}.{self.key}"

    def order_clause(self, *, descending: bool) -> str:
        """The ``order_by`` clause sorting by this column (the key in backticks unless it is a plain name)."""
        key = self.key if _PLAIN_KEY.fullmatch(self.key) else f"`{self.key}`"
        return f"{self.kind}.{key} {'DESC' if descending else 'ASC'}"

    def value(self, run: Run) -> str | float | None:
        """This column's value for ``run`` (a metric's latest value, a param or a tag), None when absent."""
        if self.kind == "params":
            return run.data.params.get(self.key)
        if self.kind == "tags":
            return run.data.tags.get(self.key)
        for metric in run.data.metrics:
            if metric.key == self.key:
                return metric.value
        return None


def parse_column(text: str) -> Column:
    """``metrics.acc`` as a `Column`; `InvalidParameterValue` naming ``column`` otherwise."""
    kind, sep, key = text.partition(".")
    if not sep or not key or kind not in COLUMN_KINDS:
        raise InvalidParameterValue(f"column: must be metrics.KEY, params.KEY or tags.KEY, got {text[:100]!r}")
    return Column(kind, key)


def parse_columns(texts: Iterable[str]) -> tuple[Column, ...]:
    """The chosen columns, in order, without duplicates (at most `MAX_COLUMNS`)."""
    columns = tuple(dict.fromkeys(parse_column(t) for t in texts if t.strip()))
    if len(columns) > MAX_COLUMNS:
        raise InvalidParameterValue(f"column: at most {MAX_COLUMNS} columns, got {len(columns)}")
    return columns


def check_page_size(value: int | str | None) -> int:
    """A runs-table page size between 1 and `MAX_PAGE_SIZE` (`DEFAULT_PAGE_SIZE` when not given)."""
    return page_size(value, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)


def check_view(view_type: str | None) -> str:
    """``ACTIVE_ONLY`` (the default), ``DELETED_ONLY`` or ``ALL``."""
    value = (view_type or "ACTIVE_ONLY").upper()
    if value not in VIEW_TYPES:
        raise InvalidParameterValue(f"view_type: must be one of {', '.join(VIEW_TYPES)}, got {view_type!r}")
    return value


# -- runs table ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RunRow:
    """One run of the table: its attributes and the chosen columns' values (in `RunsTable.columns` order)."""

    run_id: str
    run_name: str
    status: str
    user_id: str
    start_time: int | None
    end_time: int | None
    lifecycle_stage: str
    values: tuple[str | float | None, ...]


@dataclass(frozen=True, slots=True)
class RunsQuery:
    """What the table shows: filter and order in MLflow syntax, the chosen columns, which page."""

    columns: tuple[Column, ...] = ()
    filter: str = ""
    order_by: tuple[str, ...] = ()
    page_token: str | None = None
    max_results: int = DEFAULT_PAGE_SIZE
    view_type: str = "ACTIVE_ONLY"


@dataclass(frozen=True, slots=True)
class RunsTable:
    """One page of an experiment's runs with the chosen columns, and the column keys its runs have."""

    experiment: Experiment
    query: RunsQuery
    rows: tuple[RunRow, ...]
    next_page_token: str | None
    available: Mapping[ColumnKind, tuple[str, ...]]


def runs_table(tracking: TrackingStore, experiment_id: str, query: RunsQuery) -> RunsTable:
    """One page of the runs table (`ResourceDoesNotExist` for an unknown experiment, `InvalidParameterValue` with
    the parser's message for a malformed filter or order)."""
    experiment = tracking.get_experiment(experiment_id)
    page = tracking.search_runs([experiment.experiment_id], filter_string=query.filter, view_type=query.view_type,
                                max_results=query.max_results, order_by=query.order_by, page_token=query.page_token)
    rows = tuple(RunRow(r.info.run_id, r.info.run_name, r.info.status, r.info.user_id, r.info.start_time,
                        r.info.end_time, r.info.lifecycle_stage, tuple(c.value(r) for c in query.columns))
                 for r in page.items)
    return RunsTable(experiment, query, rows, page.next_page_token, available_columns(page.items))


def available_columns(runs: Sequence[Run]) -> dict[ColumnKind, tuple[str, ...]]:
    """The metric, param and tag keys of ``runs``, each sorted (what the column chooser offers)."""
    metrics: set[str] = set()
    params: set[str] = set()
    tags: set[str] = set()
    for run in runs:
        metrics.update(m.key for m in run.data.metrics)
        params.update(run.data.params)
        tags.update(run.data.tags)
    return {"metrics": tuple(sorted(metrics)), "params": tuple(sorted(params)), "tags": tuple(sorted(tags))}


def column_choices(available: Mapping[ColumnKind, Sequence[str]],
                   chosen: Sequence[Column]) -> dict[ColumnKind, tuple[tuple[str, bool], ...]]:
    """What the column chooser lists per kind: the keys seen on the page and the chosen ones, each with whether
    it is chosen, sorted by key."""
    names = {c.name for c in chosen}
    out: dict[ColumnKind, tuple[tuple[str, bool], ...]] = {}
    for kind in COLUMN_KINDS:
        keys = set(available.get(kind, ())) | {c.key for c in chosen if c.kind == kind}
        out[kind] = tuple((key, f"{kind}.{key}" in names) for key in sorted(keys))
    return out


def json_value(value: str | float | None) -> str | float | None:
    """A cell value as JSON (NaN and infinities as MLflow writes them)."""
    return wire.encode_float(value) if isinstance(value, float) else value


def runs_table_json(table: RunsTable) -> dict[str, Any]:
    """The JSON twin of the runs page."""
    names = [c.name for c in table.query.columns]
    return {
        "experiment": wire.experiment_to_json(table.experiment),
        "columns": names,
        "filter": table.query.filter,
        "order_by": list(table.query.order_by),
        "runs": [{"run_id": r.run_id, "run_name": r.run_name, "status": r.status, "user_id": r.user_id,
                  "start_time": r.start_time, "end_time": r.end_time, "lifecycle_stage": r.lifecycle_stage,
                  "values": {name: json_value(v) for name, v in zip(names, r.values, strict=True)}}
                 for r in table.rows],
        "next_page_token": table.next_page_token,
        "available_columns": {kind: list(keys) for kind, keys in table.available.items()},
    }


# -- run detail ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Lineage:
    """Where a run came from and what came of it, as recorded by tracking and the registry."""

    parent_run_id: str | None
    job_id: str | None
    study: str | None
    trial_number: str | None
    model_versions: tuple[ModelVersion, ...]
    pipeline_run_id: str | None = None
    pipeline_step: str | None = None


@dataclass(frozen=True, slots=True)
class RunDetail:
    """A run, its experiment and its lineage."""

    run: Run
    experiment: Experiment
    lineage: Lineage

    @property
    def project(self) -> str:
        return self.experiment.project


def run_detail(tracking: TrackingStore, registry: RegistryStore, run_id: str) -> RunDetail:
    """The run page's data (`ResourceDoesNotExist` for an unknown run)."""
    run = tracking.get_run(run_id)
    experiment = tracking.get_experiment(run.info.experiment_id)
    tags = run.data.tags
    versions = registry.search_model_versions(filter_string=f"run_id = '{run.info.run_id}'",
                                              max_results=MAX_LINKED_VERSIONS, project=experiment.project).items
    lineage = Lineage(tags.get("mlflow.parentRunId"), tags.get("capstan.job.id"), tags.get("capstan.study"),
                      tags.get("capstan.trial.number"), tuple(versions), tags.get(PIPELINE_RUN_TAG),
                      tags.get(PIPELINE_STEP_TAG))
    return RunDetail(run, experiment, lineage)


def run_detail_json(detail: RunDetail) -> dict[str, Any]:
    """The JSON twin of the run page."""
    lineage = detail.lineage
    return {
        "run": wire.run_to_json(detail.run),
        "experiment": wire.experiment_to_json(detail.experiment),
        "lineage": {"parent_run_id": lineage.parent_run_id, "job_id": lineage.job_id, "study": lineage.study,
                    "trial_number": lineage.trial_number, "pipeline_run_id": lineage.pipeline_run_id,
                    "pipeline_step": lineage.pipeline_step,
                    "model_versions": [{"name": v.name, "version": v.version, "stage": v.current_stage,
                                        "aliases": list(v.aliases)} for v in lineage.model_versions]},
    }


# -- compare ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DiffRow:
    """One key across the compared runs: each run's value (None when absent) and whether they differ."""

    key: str
    values: tuple[str | float | None, ...]
    differs: bool


@dataclass(frozen=True, slots=True)
class Comparison:
    """Several runs side by side."""

    runs: tuple[Run, ...]
    experiments: Mapping[str, Experiment]
    params: tuple[DiffRow, ...]
    metrics: tuple[DiffRow, ...]
    tags: tuple[DiffRow, ...]

    def projects(self) -> set[str]:
        return {e.project for e in self.experiments.values()}


def check_compare_ids(run_ids: Sequence[str]) -> tuple[str, ...]:
    """Two to `MAX_COMPARE` distinct run ids, in the order given."""
    ids = tuple(dict.fromkeys(r.strip() for r in run_ids if r.strip()))
    if not 2 <= len(ids) <= MAX_COMPARE:
        raise InvalidParameterValue(f"run_id: choose between 2 and {MAX_COMPARE} runs to compare, got {len(ids)}")
    return ids


def compare_runs(tracking: TrackingStore, run_ids: Sequence[str]) -> Comparison:
    """The compare page's data (`ResourceDoesNotExist` naming the first unknown run)."""
    runs = tuple(tracking.get_run(run_id) for run_id in check_compare_ids(run_ids))
    experiments = {eid: tracking.get_experiment(eid) for eid in dict.fromkeys(r.info.experiment_id for r in runs)}
    metrics = [{m.key: m.value for m in r.data.metrics} for r in runs]
    return Comparison(runs, experiments, _diff([r.data.params for r in runs]), _diff(metrics),
                      _diff([{k: v for k, v in r.data.tags.items() if not k.startswith("mlflow.")} for r in runs]))


def _diff(values: Sequence[Mapping[str, str | float]]) -> tuple[DiffRow, ...]:
    keys = sorted(set().union(*values))
    rows = []
    for key in keys:
        row = tuple(v.get(key) for v in values)
        shown = {"NaN" if isinstance(x, float) and x != x else x for x in row}  # NaN == NaN for "differs"
        rows.append(DiffRow(key, row, len(shown) > 1))
    return tuple(rows)


def comparison_json(comparison: Comparison) -> dict[str, Any]:
    """The JSON twin of the compare page."""

    def rows(diff: tuple[DiffRow, ...]) -> list[dict[str, Any]]:
        return [{"key": d.key, "values": [json_value(v) for v in d.values], "differs": d.differs} for d in diff]

    return {"runs": [wire.run_info_to_json(r.info) for r in comparison.runs],
            "params": rows(comparison.params), "metrics": rows(comparison.metrics), "tags": rows(comparison.tags)}

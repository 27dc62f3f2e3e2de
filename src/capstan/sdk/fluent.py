"""The fluent tracking API behind ``import capstan``: an active run per process and module-level logging calls.

Process state (`_ProcessState`) is created empty at import and filled on first use: settings come from
`capstan.configure` or, the first time they are needed, ``Settings.from_env()``; the backend (local stores or an
HTTP server) and the background `MetricWriter` are opened lazily. Runs still active at interpreter exit are ended
as FINISHED after their metrics are flushed.

In a worker of a training job (``CAPSTAN_JOB_RUN_ID`` set by the job runner) the first fluent call, or a
`start_run` without ``run_id``/``nested``, attaches to the job's run instead of creating one. Only rank 0 (torchrun's
``RANK``) logs to it; other ranks get a run whose logging calls do nothing, unless the job sets ``log_all_ranks``.
The job's run belongs to the runner: ending it here (or at exit) flushes its metrics and leaves its status alone.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import numbers
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any

from capstan.errors import CapstanError, InvalidParameterValue, InvalidState, ResourceDoesNotExist
from capstan.sdk.backends import ArtifactOwner, TrackingBackend, iter_local_files, open_backend
from capstan.sdk.fluent_models import ModelInfo
from capstan.sdk.metric_writer import MetricFlushError, MetricWriter
from capstan.settings import Settings
from capstan.store import tracking_validation as validation
from capstan.tracking.records import DELETED, TERMINAL_STATUSES, Experiment, Metric, Param, Run, RunInfo, RunTag

DEFAULT_EXPERIMENT = "Default"
METRIC_FLUSH_TAG = "capstan.metrics.unstored"
PIPELINE_RUN_TAG = "capstan.pipeline.run_id"
"""Run tag naming the pipeline run whose step started the run (its lineage to the step)."""
PIPELINE_STEP_TAG = "capstan.pipeline.step"
"""Run tag naming that step."""
"""Tag set on a run whose buffered metric points could not be stored when it ended (the run ends FAILED)."""
MAX_KEY_LENGTH = validation.MAX_KEY_LENGTH


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


_VALID_KEYS: set[str] = set()
_MAX_CACHED_KEYS = 10_000


def check_key(key: str, what: str = "metric") -> str:
    """Validate a metric, param or tag key with the store's own rules (`capstan.store.tracking_validation.check_key`),
    so a key the store would refuse fails here, at the call; the message names the field (``metric key: ...``)."""
    if type(key) is str and key in _VALID_KEYS:
        return key
    validation.check_key(key, f"{what} key")
    if len(_VALID_KEYS) < _MAX_CACHED_KEYS:
        _VALID_KEYS.add(key)
    return key


def check_metric(key: str, value: Any, step: int | None, timestamp: int | None) -> Metric:
    """A validated `Metric` (checked before buffering, so bad input fails at the call, not at flush time)."""
    check_key(key)
    if type(value) is float:  # the common case, checked first because this runs on every log_metric call
        number = value
    elif isinstance(value, str | bytes | bool) or not isinstance(value, numbers.Real):
        raise InvalidParameterValue(f"metric {key!r}: value {value!r} is not a number")
    else:
        number = float(value)
    stored_step = validation.check_step(step, f"metric {key!r}: step") if step is not None else 0
    ts = validation.check_time(timestamp, f"metric {key!r}: timestamp") if timestamp is not None else _now_ms()
    return Metric(key=key, value=number, timestamp=ts, step=stored_step)


def artifact_files(local_path: str | os.PathLike[str], artifact_path: str | None, *,
                   keep_folder: bool) -> Iterator[tuple[str, Path]]:
    """``(artifact path, local file)`` pairs; a folder keeps its own name when ``keep_folder``."""
    base = Path(local_path)
    if not base.exists():
        raise InvalidParameterValue(f"local_path: {str(base)!r} does not exist")
    if base.is_dir() and keep_folder:
        prefix = (artifact_path or "").strip("/")
        artifact_path = f"{prefix}/{base.name}" if prefix else base.name
    elif not base.is_dir() and not keep_folder:
        raise InvalidParameterValue(f"local_dir: {str(base)!r} is not a folder")
    yield from iter_local_files(base, artifact_path)


@cache
def _source_info() -> tuple[str, str]:
    """The running script and the git commit of its checkout (read from ``.git`` without running git)."""
    script = sys.argv[0] if sys.argv and sys.argv[0] not in ("", "-c", "-m") else ""
    source = str(Path(script).resolve()) if script and Path(script).exists() else (script or "<interactive>")
    start = Path(source).parent if script else Path.cwd()
    return source, _git_commit(start)


def _git_commit(start: Path) -> str:
    for folder in (start, *start.parents):
        git = folder / ".git"
        if not git.is_dir():
            continue
        try:
            head = (git / "HEAD").read_text().strip()
            if not head.startswith("ref: "):
                return head
            ref = head[5:]
            if (git / ref).is_file():
                return (git / ref).read_text().strip()
            packed = git / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split(" ", 1)[0]
        except OSError:
            return ""
        return ""
    return ""


def _pipeline_tags() -> dict[str, str]:
    """The pipeline step this process runs an attempt of, as run tags. Read afresh: a pipeline worker process runs
    many steps' attempts, each with its own environment, while the process's settings are read once."""
    current = Settings.from_env()
    if current.pipeline_run_id is None or current.pipeline_step is None:
        return {}
    return {PIPELINE_RUN_TAG: current.pipeline_run_id, PIPELINE_STEP_TAG: current.pipeline_step}


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class ActiveRun:
    """A run started by `start_run`. Use it as a context manager: it ends FINISHED, FAILED on an exception, or
    KILLED on KeyboardInterrupt. Its ``log_*`` methods log to this run whether or not it is the active one."""

    def __init__(self, state: _ProcessState, info: RunInfo, *, parent_run_id: str | None = None,
                 borrowed: bool = False) -> None:
        self._state = state
        self.info = info
        self.parent_run_id = parent_run_id
        self.ended = False
        self.borrowed = borrowed
        """True for a training job's run in one of its workers: ending it only flushes its metrics."""

    @property
    def run_id(self) -> str:
        """The run's 32-character id."""
        return self.info.run_id

    @property
    def experiment_id(self) -> str:
        """The id of the run's experiment."""
        return self.info.experiment_id

    @property
    def run_name(self) -> str:
        """The run's name."""
        return self.info.run_name

    def __enter__(self) -> ActiveRun:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt):
            status = "KILLED"
        else:
            status = "FAILED"
        try:
            self.end(status)
        except CapstanError:
            if exc_type is None:
                raise
            # Another error is already propagating; it stays the one the caller sees (this one was logged).

    def end(self, status: str = "FINISHED") -> None:
        """Flush this run's metrics (waiting until they are stored), then mark it ``status``."""
        self._state.end(self, status)

    def get(self) -> Run:
        """The run as stored now (buffered metrics are flushed first)."""
        self._state.flush(self.run_id)
        return self._state.backend.get_run(self.run_id)

    def log_param(self, key: str, value: Any) -> Any:
        """Log a parameter (immutable once logged); returns ``value``."""
        self._state.log_params(self.run_id, {key: value})
        return value

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log several parameters at once."""
        self._state.log_params(self.run_id, params)

    def log_metric(self, key: str, value: float, step: int | None = None, timestamp: int | None = None) -> None:
        """Queue a metric point (returns at once; written in the background)."""
        self._state.writer.add(self.run_id, check_metric(key, value, step, timestamp))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None,
                    timestamp: int | None = None) -> None:
        """Queue several metric points sharing a step and timestamp."""
        ts = timestamp if timestamp is not None else _now_ms()
        points = [check_metric(k, v, step, ts) for k, v in metrics.items()]
        self._state.writer.add_many(self.run_id, points)

    def set_tag(self, key: str, value: Any) -> None:
        """Set a tag on the run."""
        self._state.set_tags(self.run_id, {key: value})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set several tags at once."""
        self._state.set_tags(self.run_id, tags)

    def log_artifact(self, local_path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Upload a file, or a folder (kept as a folder), below ``artifact_path``."""
        self._state.log_artifact(self.run_id, local_path, artifact_path, keep_folder=True)

    def log_artifacts(self, local_dir: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Upload the contents of a folder below ``artifact_path``."""
        self._state.log_artifact(self.run_id, local_dir, artifact_path, keep_folder=False)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Store ``text`` as the artifact file ``artifact_file``."""
        self._state.log_bytes(self.run_id, text.encode(), artifact_file)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        """Store ``data`` as JSON in the artifact file ``artifact_file``.

        Raises:
            InvalidParameterValue: part of ``data`` is not plain JSON (the message names its key, e.g.
                ``a.b[2]``); nothing is stored.
        """
        from capstan.tracking.json_values import dumps_json

        self._state.log_bytes(self.run_id, dumps_json(data).encode(), artifact_file)

    def log_model(self, model: Any, name: str, *, input_example: Any = None, signature: Any = None,
                  registered_model_name: str | None = None, serialization_format: str | None = None,
                  reference_data: Any = None, tokenizer: Any = None) -> ModelInfo:
        """Log a model as an output of this run (see `capstan.log_model`)."""
        from capstan.sdk import fluent_models as sdk_models

        return sdk_models.log_model(self._state.backend, model, name, experiment_id=self.experiment_id,
                                    run_id=self.run_id, input_example=input_example, signature=signature,
                                    registered_model_name=registered_model_name,
                                    serialization_format=serialization_format, reference_data=reference_data,
                                    tokenizer=tokenizer)

    def __repr__(self) -> str:
        return f"ActiveRun(run_id={self.run_id!r}, run_name={self.run_name!r}, experiment_id={self.experiment_id!r})"


class _DroppedRun(ActiveRun):
    """The job's run as a worker of rank > 0 sees it (unless the job logs all ranks): logging calls do nothing, so
    that a metric is logged once per step, not once per rank. Reading the run works."""

    def log_param(self, key: str, value: Any) -> Any:
        """Dropped (not rank 0); returns ``value``."""
        return value

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Dropped (not rank 0)."""

    def log_metric(self, key: str, value: float, step: int | None = None, timestamp: int | None = None) -> None:
        """Dropped (not rank 0)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None,
                    timestamp: int | None = None) -> None:
        """Dropped (not rank 0)."""

    def set_tag(self, key: str, value: Any) -> None:
        """Dropped (not rank 0)."""

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Dropped (not rank 0)."""

    def log_artifact(self, local_path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Dropped (not rank 0)."""

    def log_artifacts(self, local_dir: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Dropped (not rank 0)."""

    def log_text(self, text: str, artifact_file: str) -> None:
        """Dropped (not rank 0)."""

    def log_dict(self, data: Any, artifact_file: str) -> None:
        """Dropped (not rank 0)."""


class _ProcessState:
    """Settings, backend, metric writer and active-run stack of this process (all created on first use)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._settings: Settings | None = None
        self._backend: TrackingBackend | None = None
        self._writer: MetricWriter | None = None
        self._experiment_name: str | None = None
        self._experiment_ids: dict[str, str] = {}
        self.runs: list[ActiveRun] = []
        self._atexit = False

    # -- lazily created parts -------------------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        if self._settings is None:
            with self._lock:
                if self._settings is None:
                    self._settings = Settings.from_env()
        return self._settings

    @property
    def backend(self) -> TrackingBackend:
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = open_backend(self.settings)
        return self._backend

    @property
    def writer(self) -> MetricWriter:
        if self._writer is None:
            with self._lock:
                if self._writer is None:
                    backend = self.backend
                    self._writer = MetricWriter(backend.log_metrics_for_runs,
                                                interval_s=self.settings.metric_flush_interval_s)
        return self._writer

    def configure(self, settings: Settings | None) -> Settings:
        with self._lock:
            if self.runs:
                raise InvalidState(f"run {self.runs[-1].run_id} is active; end it before configure()")
            self._close_parts()
            self._settings = settings if settings is not None else Settings.from_env()
            self._experiment_ids.clear()
            return self._settings

    def _close_parts(self) -> None:
        writer, backend = self._writer, self._backend
        self._writer = self._backend = None
        try:
            if writer is not None:
                writer.close()
        finally:
            if backend is not None:
                backend.close()

    # -- experiments ----------------------------------------------------------------------------------
    def set_experiment(self, name: str) -> Experiment:
        exp = self.experiment(name)
        self._experiment_name = name
        return exp

    def experiment(self, name: str) -> Experiment:
        if not name:
            raise InvalidParameterValue("experiment: name must not be empty")
        exp = self.backend.get_experiment_by_name(name)
        if exp is None:
            try:
                self.backend.create_experiment(name)
            except CapstanError as exc:
                if exc.code != "RESOURCE_ALREADY_EXISTS":  # another process created it meanwhile
                    raise
            exp = self.backend.get_experiment_by_name(name)
            if exp is None:
                raise ResourceDoesNotExist(f"experiment {name!r} does not exist")
        if exp.lifecycle_stage == DELETED:
            raise InvalidState(f"experiment {name!r} (id {exp.experiment_id}) is deleted; restore it with "
                               f"`capstan experiments restore {exp.experiment_id}` or choose another name")
        self._experiment_ids[name] = exp.experiment_id
        return exp

    def experiment_id(self, name: str | None) -> str:
        name = name or self._experiment_name or self.settings.experiment or DEFAULT_EXPERIMENT
        cached = self._experiment_ids.get(name)
        return cached if cached is not None else self.experiment(name).experiment_id

    # -- runs -----------------------------------------------------------------------------------------
    def start(self, experiment: str | None, experiment_id: str | None, run_name: str | None,
              params: Mapping[str, Any] | None, tags: Mapping[str, Any] | None, nested: bool,
              run_id: str | None, description: str | None) -> ActiveRun:
        with self._lock:
            parent = self.runs[-1].run_id if self.runs else None
            if parent is not None and not nested:
                raise InvalidState(f"run {parent} is already active; end it first or pass nested=True")
            job_run = self.settings.job_run_id if run_id is None and parent is None else None
            if job_run is not None:
                active = self._attach_job_run(job_run)
            elif run_id is not None:
                active = self._resume(run_id, parent)
            else:
                exp_id = str(experiment_id) if experiment_id is not None else self.experiment_id(experiment)
                source, commit = _source_info()
                all_tags = {"mlflow.user": _user(), "mlflow.source.name": source, "mlflow.source.type": "LOCAL"}
                if commit:
                    all_tags["mlflow.source.git.commit"] = commit
                if parent is not None:
                    all_tags["mlflow.parentRunId"] = parent
                if description:
                    all_tags["mlflow.note.content"] = description
                all_tags.update(_pipeline_tags())
                all_tags.update({str(k): str(v) for k, v in (tags or {}).items()})
                for key in all_tags:
                    check_key(key, "tag")
                run_tags = [RunTag(k, v) for k, v in all_tags.items()]
                try:
                    info = self.backend.create_run(exp_id, run_name=run_name, tags=run_tags,
                                                   user_id=all_tags["mlflow.user"], source=source,
                                                   git_commit=commit, start_time=_now_ms())
                except (InvalidState, ResourceDoesNotExist):
                    if experiment_id is not None or not self._experiment_ids:
                        raise
                    # The cached experiment may have been deleted (and its name reused) meanwhile: look it up again.
                    self._experiment_ids.clear()
                    info = self.backend.create_run(self.experiment_id(experiment), run_name=run_name, tags=run_tags,
                                                   user_id=all_tags["mlflow.user"], source=source,
                                                   git_commit=commit, start_time=_now_ms())
                active = ActiveRun(self, info, parent_run_id=parent)
            self.runs.append(active)
            if not self._atexit:
                atexit.register(_end_runs_at_exit)
                self._atexit = True
        if params or (active.borrowed and tags):
            try:
                active.log_params(params or {})
                if active.borrowed and tags:  # a job's run already exists: the tags are set on it
                    active.set_tags(tags)
            except BaseException:
                active.end("FAILED")
                raise
        return active

    def _attach_job_run(self, run_id: str) -> ActiveRun:
        """The training job's run, for this worker: rank 0 (or every rank with ``log_all_ranks``) logs to it."""
        info = self.backend.get_run(run_id).info
        settings = self.settings
        if (settings.rank or 0) != 0 and not settings.job_log_all_ranks:
            return _DroppedRun(self, info, borrowed=True)
        return ActiveRun(self, info, borrowed=True)

    def _resume(self, run_id: str, parent: str | None) -> ActiveRun:
        run = self.backend.get_run(run_id)
        if run.info.lifecycle_stage == DELETED:
            raise InvalidState(f"run {run_id} is deleted; restore it before resuming with "
                               f"`capstan runs restore {run_id}`")
        info = self.backend.update_run(run_id, status="RUNNING")
        return ActiveRun(self, info, parent_run_id=parent)

    def active(self) -> ActiveRun | None:
        return self.runs[-1] if self.runs else None

    def active_or_start(self) -> ActiveRun:
        run = self.active()
        return run if run is not None else self.start(None, None, None, None, None, False, None, None)

    def end(self, run: ActiveRun, status: str) -> None:
        if status not in TERMINAL_STATUSES:
            raise InvalidParameterValue(f"status: {status!r} is not one of {', '.join(TERMINAL_STATUSES)}")
        with self._lock:
            if run.ended:
                return
            run.ended = True
            if run in self.runs:
                self.runs.remove(run)
        if run.borrowed:  # a training job's run: its runner ends it
            self.flush(run.run_id)
            return
        flush_error: MetricFlushError | None = None
        try:
            self.flush(run.run_id)
        except MetricFlushError as exc:
            flush_error = exc
            if status == "FINISHED":  # points were lost: the run did not finish as the caller logged it
                status = "FAILED"
                with contextlib.suppress(CapstanError):
                    self.backend.log_batch(run.run_id, tags=[RunTag(METRIC_FLUSH_TAG, str(exc)[:1000])])
        try:
            run.info = self.backend.update_run(run.run_id, status=status, end_time=_now_ms())
        except CapstanError as exc:
            if flush_error is not None:  # lost metric points are the error the caller must hear about
                raise flush_error from exc
            raise
        if flush_error is not None:
            raise flush_error

    def flush(self, run_id: str | None = None) -> None:
        if self._writer is not None:
            self._writer.flush(run_id=run_id)

    # -- logging --------------------------------------------------------------------------------------
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(check_key(str(k), "param"), _param_value(v)) for k, v in params.items()]
        if items:
            self.backend.log_batch(run_id, params=items)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        items = [RunTag(check_key(str(k), "tag"), str(v)) for k, v in tags.items()]
        if items:
            self.backend.log_batch(run_id, tags=items)

    def log_artifact(self, run_id: str, local_path: str | os.PathLike[str], artifact_path: str | None, *,
                     keep_folder: bool) -> None:
        owner = ArtifactOwner.run(run_id)
        for rel, file in artifact_files(local_path, artifact_path, keep_folder=keep_folder):
            self.backend.upload_artifact(owner, rel, file)

    def log_bytes(self, run_id: str, data: bytes, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory(prefix="capstan-") as tmp:
            file = Path(tmp) / "artifact"
            file.write_bytes(data)
            self.backend.upload_artifact(ArtifactOwner.run(run_id), artifact_file, file)

    def end_all_at_exit(self) -> None:
        for run in reversed(list(self.runs)):
            try:
                run.end("FINISHED")
            except Exception as exc:  # noqa: BLE001  # report every run's failure, keep ending the others
                print(f"capstan: WARNING: could not end run {run.run_id} at exit: {exc}", file=sys.stderr,
                      flush=True)


def _param_value(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return str(value)


_STATE = _ProcessState()


def _end_runs_at_exit() -> None:
    _STATE.end_all_at_exit()


# -- public fluent API ---------------------------------------------------------------------------------
def configure(settings: Settings | None = None) -> Settings:
    """Use ``settings`` for this process from now on (``None``: re-read ``Settings.from_env()``).

    Closes the current backend after flushing buffered metrics; refuses while a run is active.
    """
    return _STATE.configure(settings)


def get_settings() -> Settings:
    """The settings this process uses (read from the environment on first use unless configured)."""
    return _STATE.settings


def process_backend() -> TrackingBackend:
    """The backend shared by the fluent API and ``Client()`` in this process."""
    return _STATE.backend


def set_experiment(name: str) -> Experiment:
    """Make ``name`` (created if needed) the experiment of later `start_run` calls; returns it."""
    return _STATE.set_experiment(name)


def start_run(experiment: str | None = None, *, run_name: str | None = None,
              params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
              nested: bool = False, run_id: str | None = None, experiment_id: str | None = None,
              description: str | None = None) -> ActiveRun:
    """Start a run (or resume ``run_id``) and make it the active run.

    ``experiment`` is an experiment name, created when missing; default: the one from `set_experiment`,
    ``CAPSTAN_EXPERIMENT``, or ``"Default"``. ``params`` are logged immediately. In a training job's worker a
    top-level run without ``run_id`` is the job's run (rank-gated; ``experiment`` and ``run_name`` are ignored).
    Use it as a context manager::

        with capstan.start_run(experiment="fraud", params={"lr": 0.1}) as run:
            capstan.log_metric("loss", 0.3, step=1)
    """
    return _STATE.start(experiment, experiment_id, run_name, params, tags, nested, run_id, description)


def active_run() -> ActiveRun | None:
    """The innermost active run, or ``None``."""
    return _STATE.active()


def end_run(status: str = "FINISHED") -> None:
    """End the active run (no-op without one); waits until its metrics are stored."""
    run = _STATE.active()
    if run is not None:
        run.end(status)


def flush() -> None:
    """Wait until every metric point queued so far is stored (raises `MetricFlushError` if some were not)."""
    _STATE.flush()


def log_param(key: str, value: Any) -> Any:
    """Log a parameter on the active run (one is started if none is active); returns ``value``."""
    return _STATE.active_or_start().log_param(key, value)


def log_params(params: Mapping[str, Any]) -> None:
    """Log several parameters on the active run."""
    _STATE.active_or_start().log_params(params)


def log_metric(key: str, value: float, step: int | None = None, timestamp: int | None = None) -> None:
    """Queue a metric point for the active run. Returns at once; a background thread writes it."""
    _STATE.active_or_start().log_metric(key, value, step, timestamp)


def log_metrics(metrics: Mapping[str, float], step: int | None = None, timestamp: int | None = None) -> None:
    """Queue several metric points for the active run."""
    _STATE.active_or_start().log_metrics(metrics, step, timestamp)


def set_tag(key: str, value: Any) -> None:
    """Set a tag on the active run."""
    _STATE.active_or_start().set_tag(key, value)


def set_tags(tags: Mapping[str, Any]) -> None:
    """Set several tags on the active run."""
    _STATE.active_or_start().set_tags(tags)


def log_artifact(local_path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
    """Upload a file, or a folder (kept as a folder), to the active run's artifacts below ``artifact_path``."""
    _STATE.active_or_start().log_artifact(local_path, artifact_path)


def log_artifacts(local_dir: str | os.PathLike[str], artifact_path: str | None = None) -> None:
    """Upload the contents of ``local_dir`` to the active run's artifacts below ``artifact_path``."""
    _STATE.active_or_start().log_artifacts(local_dir, artifact_path)


def log_text(text: str, artifact_file: str) -> None:
    """Store ``text`` as an artifact file of the active run."""
    _STATE.active_or_start().log_text(text, artifact_file)


def log_dict(data: Any, artifact_file: str) -> None:
    """Store ``data`` as a JSON artifact file of the active run."""
    _STATE.active_or_start().log_dict(data, artifact_file)


def log_model(model: Any, name: str, *, input_example: Any = None, signature: Any = None,
              registered_model_name: str | None = None, serialization_format: str | None = None,
              reference_data: Any = None, tokenizer: Any = None) -> ModelInfo:
    """Log a scikit-learn or language model as an MLflow 3 style logged model of the active run.

    Writes ``MLmodel`` (flavors ``python_function`` + ``sklearn``), the model file, requirements and, given
    ``input_example``, the example and a signature inferred from it. With ``registered_model_name`` a new
    registry version is created from it. Without an active run the model is logged to the current experiment.
    ``reference_data`` (the training data or the input example) is profiled into ``reference_profile.json``, the
    reference serving measures drift against. A transformers model is logged with its ``tokenizer`` (flavor
    ``transformers``, see docs/llm.md); a sentence-transformers model or a ``save_pretrained`` folder needs none.
    """
    run = _STATE.active()
    if run is None and _STATE.settings.job_run_id:
        run = _STATE.active_or_start()  # a training job's worker logs the model to the job's run
    if run is not None:
        return run.log_model(model, name, input_example=input_example, signature=signature,
                             registered_model_name=registered_model_name,
                             serialization_format=serialization_format, reference_data=reference_data,
                             tokenizer=tokenizer)
    from capstan.sdk import fluent_models as sdk_models

    return sdk_models.log_model(_STATE.backend, model, name, experiment_id=_STATE.experiment_id(None),
                                run_id=None, input_example=input_example, signature=signature,
                                registered_model_name=registered_model_name,
                                serialization_format=serialization_format, reference_data=reference_data,
                                tokenizer=tokenizer)


def load_model(model_uri: str, *, as_pyfunc: bool = False, dst_path: str | os.PathLike[str] | None = None) -> Any:
    """Load ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/MODEL_ID``, ``runs:/RUN/PATH`` or a local
    model folder: the native model (a scikit-learn estimator), or a `PyFuncModel` with ``as_pyfunc=True``."""
    from capstan.sdk import fluent_models as sdk_models

    return sdk_models.load_model(_STATE.backend, model_uri, as_pyfunc=as_pyfunc,
                                 dst_path=None if dst_path is None else Path(dst_path))


def register_model(model_uri: str, name: str, *, tags: Mapping[str, str] | None = None) -> Any:
    """Create a new version of registered model ``name`` (created if needed) from ``model_uri``."""
    from capstan.sdk import fluent_models as sdk_models

    return sdk_models.register_model(_STATE.backend, model_uri, name, tags=tags)

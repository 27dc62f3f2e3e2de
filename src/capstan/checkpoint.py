"""Checkpoints in the artifact store: ``capstan.checkpoint.save(state, step)`` and ``load_latest()``.

A training script saves its state every so often and, when it starts, resumes from the latest checkpoint::

    import capstan.checkpoint

    found = capstan.checkpoint.load_latest()
    start = 0
    if found is not None:
        state, step = found
        model.load_state_dict(state["model"])
        start = step + 1
    for step in range(start, steps):
        ...
        capstan.checkpoint.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, step)

Where: in a worker of a training job, the ``checkpoints`` folder of the job's tracking run (``CAPSTAN_CHECKPOINT_URI``
set by the runner), so every attempt of the job sees the checkpoints of the attempts before it; outside a job, the
``checkpoints`` folder of the active run (one is started if none is). They go through the SDK's `TrackingBackend`,
so they work with the local stores and against a server (``CAPSTAN_URL``).

Layout: a series (``checkpoints``, or ``checkpoints/rank-<r>`` with ``per_rank=True``) has ``keep`` slot files
(``slot-<i>.ckpt``) and a ``manifest.json`` listing the checkpoints it holds, newest first, each with its step, slot
and sha256. A save writes the slot of the oldest checkpoint (one the manifest no longer needs) first and the
manifest after it, and each artifact write replaces its path in one step, so a checkpoint is listed only once it
is complete; `load_latest` also checks the file's sha256 against the manifest and falls back to the next newest,
so a partially written checkpoint is never returned. At most ``keep`` checkpoints are kept (``checkpoint_keep`` of
the job, ``CAPSTAN_CHECKPOINT_KEEP``; default 3): older slots are overwritten, their old bytes left to
``capstan gc``.

Format: with torch imported by the script, `torch.save`/`torch.load` (tensors, state dicts, anything picklable);
otherwise `pickle`. Loading runs pickle: load only checkpoints of runs you trust, as with any pickle file.

Metrics: ``save`` first waits until the metrics logged so far are stored, so a run resumed from a checkpoint has
every metric of the steps before it (nothing is lost when the gang is stopped right after a save).

Ranks: by default only rank 0 writes (``save`` on other ranks returns False without writing) and every rank
loads the same checkpoint. ``per_rank=True`` makes each rank save and load its own series (sharded state).

The queue: in a process that runs inside a queue workload (``CAPSTAN_WORKLOAD_ID``, set from the queue's lease for
a training job's workers, a pipeline step's attempt and a study's script trials), rank 0 reports each completed
save to the queue (`capstan.sdk.workloads.record_checkpoint`: through the local store, or the server of
``CAPSTAN_URL``), so that the queue knows how much work a preemption would lose and ``capstan why`` says how much
a preempted workload lost. A report that fails is logged once per process and never fails the save.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capstan.errors import InvalidParameterValue, InvalidState, ResourceDoesNotExist

if TYPE_CHECKING:
    from capstan.sdk.backends import ArtifactOwner, TrackingBackend

__all__ = ["Checkpoint", "list_checkpoints", "load_latest", "save"]

DEFAULT_PATH = "checkpoints"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One checkpoint of a series as its manifest lists it."""

    seq: int
    step: int
    slot: int
    sha256: str
    size: int
    format: str
    time_ms: int


@dataclass(frozen=True, slots=True)
class _Series:
    backend: TrackingBackend
    owner: ArtifactOwner
    folder: str

    def path(self, name: str) -> str:
        return f"{self.folder}/{name}"


_WRITE_LOCK = threading.Lock()
_REPORT_WARNED = threading.Event()
_log = logging.getLogger("capstan.checkpoint")


def _check_step(step: object) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise InvalidParameterValue(f"step: {step!r} must be a whole number >= 0")
    return step


def _location(*, create: bool) -> tuple[str, str] | None:
    """``(run id, folder)`` of the checkpoints: the job's (``CAPSTAN_CHECKPOINT_URI``) or the active run's."""
    from capstan.sdk import fluent

    uri = fluent.get_settings().checkpoint_uri
    if uri:
        body = uri.removeprefix("runs:/")
        run_id, _, folder = body.partition("/")
        if body == uri or not run_id:
            raise InvalidParameterValue(f"CAPSTAN_CHECKPOINT_URI: {uri!r} is not runs:/<run id>/<path>")
        return run_id, folder.strip("/") or DEFAULT_PATH
    run = fluent.active_run()
    if run is None:
        if not create:
            return None
        run = fluent.start_run()
    return run.run_id, DEFAULT_PATH


def _series(*, per_rank: bool, create: bool) -> _Series | None:
    from capstan.sdk import fluent
    from capstan.sdk.backends import ArtifactOwner

    where = _location(create=create)
    if where is None:
        return None
    run_id, folder = where
    if per_rank:
        folder = f"{folder}/rank-{fluent.get_settings().rank or 0}"
    return _Series(fluent.process_backend(), ArtifactOwner.run(run_id), folder)


def _read_manifest(series: _Series) -> list[Checkpoint]:
    with tempfile.TemporaryDirectory(prefix="capstan-ckpt-") as tmp:
        try:
            local = series.backend.download_artifacts(series.owner, series.path(MANIFEST), tmp)
        except ResourceDoesNotExist:
            return []
        text = Path(local).read_text()
    try:
        data = json.loads(text)
        return [Checkpoint(**entry) for entry in data["checkpoints"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidState(f"the checkpoint manifest {series.folder}/{MANIFEST} of run {series.owner.id} cannot be "
                           f"read ({exc}); remove it to start the series over") from None


def _upload(series: _Series, name: str, data_file: Path) -> None:
    series.backend.upload_artifact(series.owner, series.path(name), data_file)


def _serialize(state: Any, file: Path) -> str:
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.save(state, file)
        return "torch"
    with open(file, "wb") as fh:
        pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return "pickle"


def _deserialize(file: Path, fmt: str, map_location: Any) -> Any:
    if fmt == "torch":
        try:
            import torch
        except ImportError:
            raise InvalidState("this checkpoint was written with torch.save; install torch to load it "
                               "(pip install 'capstan[torch]')") from None
        return torch.load(file, map_location=map_location, weights_only=False)
    with open(file, "rb") as fh:
        return pickle.load(fh)  # the caller's own checkpoint (see the module docstring on trust)


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as fh:
        for chunk in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save(state: Any, step: int, *, per_rank: bool = False, keep: int | None = None) -> bool:
    """Store ``state`` as the checkpoint of ``step``, keeping the last ``keep`` checkpoints (default: the job's
    ``checkpoint_keep``, else 3). Returns whether this process wrote it: on a rank other than 0 nothing is
    written unless ``per_rank`` (each rank keeps its own series)."""
    from capstan.sdk import fluent

    step = _check_step(step)
    settings = fluent.get_settings()
    keep = settings.checkpoint_keep if keep is None else keep
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise InvalidParameterValue(f"keep: {keep!r} must be a whole number >= 1")
    if not per_rank and (settings.rank or 0) != 0:
        return False
    series = _series(per_rank=per_rank, create=True)
    assert series is not None
    fluent.flush()  # the metrics logged up to this step are stored before the checkpoint that resumes after it
    with _WRITE_LOCK, tempfile.TemporaryDirectory(prefix="capstan-ckpt-") as tmp:
        entries = _read_manifest(series)
        kept = [e for e in entries if e.step != step][: keep - 1]
        slot = min(set(range(keep)) - {e.slot for e in kept})
        data_file = Path(tmp) / "state"
        fmt = _serialize(state, data_file)
        entry = Checkpoint(seq=max((e.seq for e in entries), default=0) + 1, step=step, slot=slot,
                           sha256=_sha256(data_file), size=data_file.stat().st_size, format=fmt,
                           time_ms=time.time_ns() // 1_000_000)
        _upload(series, f"slot-{slot}.ckpt", data_file)
        manifest = Path(tmp) / MANIFEST
        manifest.write_text(json.dumps({"version": FORMAT_VERSION,
                                        "checkpoints": [asdict(e) for e in [entry, *kept]]}, indent=1))
        _upload(series, MANIFEST, manifest)
    if (settings.rank or 0) == 0:
        _report_to_queue(step)
    return True


def _report_to_queue(step: int) -> None:
    """Tell the queue workload this process runs in (``CAPSTAN_WORKLOAD_ID``, read afresh: a pipeline worker
    process runs many steps' attempts) that it saved the checkpoint of ``step``. Never raises: the checkpoint is
    stored whatever the queue answers; the first failure of the process is logged as a warning."""
    from capstan.settings import Settings

    try:
        workload = Settings.from_env().workload_id
        if workload is None:
            return
        from capstan.sdk.workloads import record_checkpoint

        record_checkpoint(workload, step=step)
    except Exception as exc:  # noqa: BLE001  # the report is advisory: nothing it raises may fail the save
        if not _REPORT_WARNED.is_set():
            _REPORT_WARNED.set()
            _log.warning("the checkpoint of step %d is saved, but the queue was not told (%s); the queue estimates "
                         "this workload's last save until a report reaches it", step, exc)


def list_checkpoints(*, per_rank: bool = False) -> list[Checkpoint]:
    """The checkpoints of the series, newest first (empty outside a job without an active run)."""
    series = _series(per_rank=per_rank, create=False)
    return [] if series is None else sorted(_read_manifest(series), key=lambda e: -e.seq)


def load_latest(*, per_rank: bool = False, map_location: Any = None) -> tuple[Any, int] | None:
    """``(state, step)`` of the newest complete checkpoint, or None when there is none (or, outside a job, no run
    is active). ``map_location`` is passed to `torch.load` (e.g. ``"cpu"``)."""
    series = _series(per_rank=per_rank, create=False)
    if series is None:
        return None
    with tempfile.TemporaryDirectory(prefix="capstan-ckpt-") as tmp:
        for entry in sorted(_read_manifest(series), key=lambda e: -e.seq):
            folder = Path(tmp) / str(entry.seq)
            try:
                local = Path(series.backend.download_artifacts(series.owner, series.path(f"slot-{entry.slot}.ckpt"),
                                                               folder))
            except ResourceDoesNotExist:
                continue
            if _sha256(local) != entry.sha256:
                continue  # the slot is being rewritten for a newer checkpoint (or its write was cut short)
            return _deserialize(local, entry.format, map_location), entry.step
    return None

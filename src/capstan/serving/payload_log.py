"""Payload logging: a sample of requests, with their inputs and predictions, to Parquet files in the artifact store.

`PayloadLogger` is a `ServingObserver`. For each request whose id falls in the sample (``sample_rate`` of the
request ids, by the SHA-256 of the id, so the same id is always in or out: see `is_sampled`), ``predicted`` keeps a
reference to its input rows and predictions in a buffer; a background thread turns the buffer into Parquet files
every ``flush_rows`` rows or ``flush_seconds`` seconds, and at `close`. The event loop only appends to a list.
When the writer falls behind by ``max_pending_rows`` rows, new samples are dropped (and counted) rather than held.

Layout (one file per model version and flush, Hive-style date partition, so ``pyarrow.dataset`` reads a folder):

    <prefix>/<model>/<version>/date=YYYY-MM-DD/<first row's epoch ms>-<8 hex>.parquet

with `deployment_payload_prefix` (``deployments/<name>/payloads``) as the prefix of a managed deployment. Each Parquet
row is one input row: ``time`` (timestamp, ms, UTC), ``request_id``, ``model``, ``version``, ``row`` (its index in
the request), ``input`` (the row: a fixed-size list, or a scalar for 1-D inputs) and ``prediction`` (likewise).

pyarrow is the ``parquet`` extra, imported when a logger is built; without it the error is one line naming
``pip install 'capstan[parquet]'``.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import numpy as np

from capstan.clock import Clock, system_clock
from capstan.errors import InvalidParameterValue, InvalidState
from capstan.serving.observe import Array
from capstan.serving.traffic import shadow_sampled

__all__ = ["PARQUET_EXTRA", "PayloadLogger", "PayloadSink", "deployment_payload_prefix", "is_sampled",
           "require_pyarrow"]

log = logging.getLogger(__name__)

PARQUET_EXTRA = "parquet"
"""The optional-dependency extra that installs pyarrow (``pip install 'capstan[parquet]'``)."""


class PayloadSink(Protocol):
    """Where Parquet files go: `capstan.artifacts.store.ArtifactStore` is one."""

    def put_bytes(self, path: str, data: bytes) -> object:
        """Store ``data`` at the artifact path ``path``."""
        ...


def deployment_payload_prefix(deployment: str) -> str:
    """The artifact-store folder of a deployment's payload logs: ``deployments/<name>/payloads``."""
    return f"deployments/{quote(deployment, safe='')}/payloads"


def is_sampled(request_id: str, sample_rate: float) -> bool:
    """Whether the request with this id is logged at ``sample_rate`` (0..1): the same answer for the same id."""
    return shadow_sampled(request_id, sample_rate * 100.0)


def require_pyarrow() -> Any:
    """The ``pyarrow`` module, or `InvalidState` with one line naming the extra to install."""
    try:
        import pyarrow
    except ImportError:
        raise InvalidState(f"payload logging needs pyarrow, which is not installed: "
                           f"pip install 'capstan[{PARQUET_EXTRA}]'") from None
    return pyarrow


@dataclass(frozen=True, slots=True)
class _Sample:
    time_ms: int
    model: str
    version: str
    request_id: str
    inputs: Array
    outputs: Array


class PayloadLogger:
    """Samples requests and writes them to Parquet in the background (see the module docstring).

    Call `close` at shutdown: it stops the thread and writes what is still buffered.
    """

    def __init__(self, sink: PayloadSink, prefix: str, sample_rate: float, *, flush_rows: int = 1000,
                 flush_seconds: float = 30.0, max_pending_rows: int = 100_000, clock: Clock = system_clock) -> None:
        if not isinstance(sample_rate, int | float) or not math.isfinite(sample_rate) or not 0 <= sample_rate <= 1:
            raise InvalidParameterValue(f"payload_logging.sample_rate must be between 0 and 1, got {sample_rate!r}")
        if flush_rows < 1 or max_pending_rows < flush_rows:
            raise InvalidParameterValue("flush_rows must be at least 1 and at most max_pending_rows")
        if not flush_seconds > 0:
            raise InvalidParameterValue(f"flush_seconds must be positive, got {flush_seconds!r}")
        self._pa = require_pyarrow()
        import pyarrow.parquet

        self._pq = pyarrow.parquet
        self.sink = sink
        self.prefix = prefix.strip("/")
        self.sample_rate = float(sample_rate)
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.max_pending_rows = max_pending_rows
        self.clock = clock
        self.rows_written = 0
        self.files_written = 0
        self.dropped_rows = 0
        self._pending: list[_Sample] = []
        self._pending_rows = 0
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="capstan-payload-log", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------ ServingObserver

    def predicted(self, model: str, version: str, request_id: str, inputs: Array, outputs: Array) -> None:
        """Buffer the request when its id is in the sample (the arrays are kept, not copied: never mutate them)."""
        if not self.sample_rate or self._closed or not is_sampled(request_id, self.sample_rate):
            return
        rows = int(inputs.shape[0]) if inputs.ndim else 1
        sample = _Sample(self.clock(), model, version, request_id, inputs, outputs)
        with self._lock:
            if self._pending_rows + rows > self.max_pending_rows:
                self.dropped_rows += rows
                return
            self._pending.append(sample)
            self._pending_rows += rows
            full = self._pending_rows >= self.flush_rows
        if full:
            self._wake.set()

    def request_done(self, model: str, version: str, protocol: str, status: int, seconds: float) -> None:
        """Ignored."""

    def batch_done(self, model: str, version: str, rows: int, seconds: float) -> None:
        """Ignored."""

    def queue_depth(self, model: str, version: str, rows: int) -> None:
        """Ignored."""

    # ----------------------------------------------------------------------------------------- writing

    def flush(self) -> list[str]:
        """Write everything buffered now (one file per model version); returns the artifact paths written."""
        with self._lock:
            pending, self._pending, self._pending_rows = self._pending, [], 0
        if not pending:
            return []
        groups: dict[tuple[str, str], list[_Sample]] = {}
        for sample in pending:
            groups.setdefault((sample.model, sample.version), []).append(sample)
        written: list[str] = []
        with self._write_lock:
            for (model, version), samples in groups.items():
                try:
                    written.append(self._write(model, version, samples))
                except Exception:  # a failed write loses that file, never the serving process
                    log.exception("payload log: writing %d samples of %s/%s failed", len(samples), model, version)
        return written

    def _write(self, model: str, version: str, samples: Sequence[_Sample]) -> str:
        table = payload_table(self._pa, samples)
        out = self._pa.BufferOutputStream()
        self._pq.write_table(table, out, compression="zstd")
        first = samples[0].time_ms
        day = dt.datetime.fromtimestamp(first / 1000.0, dt.UTC).strftime("%Y-%m-%d")
        path = (f"{self.prefix}/{quote(model, safe='')}/{quote(version, safe='')}/date={day}/"
                f"{first}-{uuid.uuid4().hex[:8]}.parquet")
        self.sink.put_bytes(path, out.getvalue().to_pybytes())
        self.rows_written += table.num_rows
        self.files_written += 1
        return path

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            if self._closed:
                return
            self.flush()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the background thread and write what is buffered (later samples are ignored)."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout)
        self.flush()
        if self.dropped_rows:
            log.warning("payload log: %d sampled rows were dropped because the writer fell behind", self.dropped_rows)


def payload_table(pa: Any, samples: Sequence[_Sample]) -> Any:
    """The Arrow table of ``samples`` of one model version: one row per input row (see the module docstring)."""
    counts = [int(s.inputs.shape[0]) if s.inputs.ndim else 1 for s in samples]
    times = np.repeat(np.array([s.time_ms for s in samples], dtype="datetime64[ms]"), counts)
    request_ids = np.repeat(np.array([s.request_id for s in samples], dtype=object), counts)
    row_index = np.concatenate([np.arange(n, dtype=np.int32) for n in counts])
    inputs = _column(pa, [s.inputs for s in samples], counts)
    predictions = _column(pa, [s.outputs for s in samples], counts)
    total = int(sum(counts))
    return pa.table({
        "time": pa.array(times, type=pa.timestamp("ms", tz="UTC")),
        "request_id": pa.array(request_ids, type=pa.string()),
        "model": pa.array([samples[0].model] * total, type=pa.string()),
        "version": pa.array([samples[0].version] * total, type=pa.string()),
        "row": pa.array(row_index, type=pa.int32()),
        "input": inputs,
        "prediction": predictions,
    })


def _column(pa: Any, arrays: Sequence[Array], counts: Sequence[int]) -> Any:
    """One Arrow column of per-row values: scalars for 1-D arrays, fixed-size lists for rows of equal size, lists
    otherwise. An array whose row count differs from its request's becomes a null per row (it cannot be split)."""
    parts = [np.asarray(a) for a in arrays]
    if all(p.ndim == 1 and p.shape[0] == n for p, n in zip(parts, counts, strict=True)):
        return pa.array(np.concatenate(parts) if parts[0].dtype.kind != "O" else _objects(parts))
    rows: list[Any] = []
    for part, n in zip(parts, counts, strict=True):
        if part.ndim == 0 or part.shape[0] != n:
            rows.extend([None] * n)
        else:
            rows.extend(part.reshape(n, -1).tolist())
    widths = {len(r) for r in rows if r is not None}
    if len(widths) == 1 and None not in rows:
        flat = np.concatenate([p.reshape(-1) for p in parts])
        return pa.FixedSizeListArray.from_arrays(pa.array(flat), widths.pop())
    return pa.array(rows)


def _objects(parts: Sequence[Array]) -> list[Any]:
    values: list[Any] = []
    for part in parts:
        values.extend(v.decode() if isinstance(v, bytes) else v for v in part.tolist())
    return values

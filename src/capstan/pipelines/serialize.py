"""Passing data between steps: storing return values and loading them as the next step's arguments.

Small JSON-able values travel inline (in the step's row); numpy arrays are stored as ``.npy``, pandas DataFrames as
Parquet and Arrow tables as Arrow IPC files (when pyarrow is importable); anything else is pickled, and a pickled
value is only ever loaded by a run of the same project. Stored values go to the shared `ArtifactStore` under
``pipelines/<run>/<step>/<attempt>/output.<ext>``; their sha256 is the digest used by cache keys and lineage.
"""

from __future__ import annotations

import enum
import hashlib
import inspect
import io
import math
import pickle
import types
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

import orjson

from capstan.errors import InvalidParameterValue

if TYPE_CHECKING:
    from capstan.artifacts.store import ArtifactStore

INLINE_MAX = 64 * 1024
"""Largest JSON encoding kept inline; bigger values go to the artifact store."""

NONE_DIGEST = hashlib.sha256(b"null").hexdigest()


class StepValueError(InvalidParameterValue):
    """A step's value cannot be stored, loaded, or does not match the step's annotation."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class OutputRef:
    """Where a step's output is: ``json`` inline, a stored file (``npy``, ``parquet``, ``arrow``, ``pickle``) or
    ``list`` (a map node's outputs, in order)."""

    format: str
    digest: str
    size: int
    inline: str | None = None
    path: str | None = None
    project: str = ""
    items: tuple[OutputRef, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (for result files and ``--json`` output)."""
        out: dict[str, Any] = {"format": self.format, "digest": self.digest, "size": self.size,
                               "project": self.project}
        if self.inline is not None:
            out["inline"] = self.inline
        if self.path is not None:
            out["path"] = self.path
        if self.items:
            out["items"] = [i.to_json() for i in self.items]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OutputRef:
        """Inverse of `to_json`."""
        return cls(data["format"], data["digest"], int(data["size"]), data.get("inline"), data.get("path"),
                   data.get("project", ""), tuple(cls.from_json(i) for i in data.get("items", ())))

    def columns(self) -> tuple[str, str | None, str | None, str, int]:
        """(format, inline, path, digest, size) as stored in a step row; ``list`` refs keep their items inline."""
        if self.format == "list":
            inline = orjson.dumps([i.to_json() for i in self.items]).decode()
            return self.format, inline, None, self.digest, self.size
        return self.format, self.inline, self.path, self.digest, self.size

    @classmethod
    def from_columns(cls, fmt: str, inline: str | None, path: str | None, digest: str, size: int,
                     project: str) -> OutputRef:
        """Inverse of `columns`."""
        if fmt == "list":
            items = tuple(cls.from_json(i) for i in orjson.loads(inline or "[]"))
            return cls("list", digest, size, None, None, project, items)
        return cls(fmt, digest, int(size), inline, path, project)


NONE_REF = OutputRef("json", NONE_DIGEST, 4, "null")


def list_ref(items: list[OutputRef], project: str) -> OutputRef:
    """The output of a map node: its children's outputs in order."""
    digest = hashlib.sha256("\n".join(i.digest for i in items).encode()).hexdigest()
    return OutputRef("list", digest, sum(i.size for i in items), None, None, project, tuple(items))


class StoreOpener(Protocol):
    """Gives the artifact store, opened on first use."""

    def __call__(self) -> ArtifactStore: ...


def _is_json(value: Any, depth: int = 0) -> bool:
    kind = type(value)
    if value is None or kind in (bool, str, int):
        return True
    if kind is float:
        return math.isfinite(value)
    if depth > 64:
        return False
    if kind is list:
        return all(_is_json(v, depth + 1) for v in value)
    if kind is dict:
        return all(type(k) is str and _is_json(v, depth + 1) for k, v in value.items())
    return False


def output_prefix(run_id: str, step_id: str, attempt: int) -> str:
    """Artifact-store folder of one attempt's files."""
    return f"pipelines/{run_id}/{quote(step_id, safe='')}/{attempt}"


class _WriterFile(io.RawIOBase):
    """A write-only file object over a `BlobWriter`, so encoders stream straight into the store."""

    def __init__(self, writer: Any) -> None:
        self._writer = writer

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._writer.write(chunk)
        return len(chunk)


def encode_output(value: Any, *, prefix: str, project: str, store: StoreOpener, label: str) -> OutputRef:
    """Store ``value`` and return where it is; ``label`` (``step 'x' (file:line)``) names the step in errors."""
    if value is None:
        return OutputRef("json", NONE_DIGEST, 4, "null", None, project)
    if _is_json(value):
        data = orjson.dumps(value)
        if len(data) <= INLINE_MAX:
            return OutputRef("json", hashlib.sha256(data).hexdigest(), len(data), data.decode(), None, project)
        return _put(store, f"{prefix}/output.json", "json", project, lambda fh: fh.write(data))
    root = type(value).__module__.split(".", 1)[0]
    if root == "numpy" and type(value).__name__ == "ndarray" and value.dtype != object:
        import numpy as np

        return _put(store, f"{prefix}/output.npy", "npy", project,
                    lambda fh: np.save(fh, value, allow_pickle=False))
    if root == "pandas" and type(value).__name__ == "DataFrame" and _has_pyarrow():
        buf = io.BytesIO()
        try:
            value.to_parquet(buf)
        except Exception:  # noqa: BLE001  # e.g. mixed-type object columns: fall back to pickle below
            pass
        else:
            data = buf.getvalue()
            return _put(store, f"{prefix}/output.parquet", "parquet", project, lambda fh: fh.write(data))
    if root == "pyarrow" and type(value).__name__ == "Table":
        import pyarrow as pa

        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, value.schema) as ipc:
            ipc.write_table(value)
        arrow = sink.getvalue().to_pybytes()
        return _put(store, f"{prefix}/output.arrow", "arrow", project, lambda fh: fh.write(arrow))
    try:
        data = pickle.dumps(value, protocol=5)
    except Exception as exc:  # noqa: BLE001  # whatever pickling raises, the step gets one clear error
        raise StepValueError(f"{label} returned a {type(value).__name__} that cannot be stored: "
                             f"{type(exc).__name__}: {exc}", "SerializationError") from None
    return _put(store, f"{prefix}/output.pickle", "pickle", project, lambda fh: fh.write(data))


def _has_pyarrow() -> bool:
    try:
        import pyarrow  # noqa: F401  # probing availability only
    except ImportError:
        return False
    return True


def _put(store: StoreOpener, path: str, fmt: str, project: str, write: typing.Callable[[Any], Any]) -> OutputRef:
    writer = store().writer()
    try:
        fh = _WriterFile(writer)
        write(fh)
    except BaseException:
        writer.abort()
        raise
    entry = writer.commit(path)
    return OutputRef(fmt, entry.digest, entry.size, None, entry.path, project)


def load_output(ref: OutputRef, *, project: str, store: StoreOpener) -> Any:
    """The value an `OutputRef` points to; pickles from another project are refused."""
    if ref.format == "json" and ref.inline is not None:
        return orjson.loads(ref.inline)
    if ref.format == "list":
        return [load_output(item, project=project, store=store) for item in ref.items]
    if ref.path is None:
        raise StepValueError(f"output {ref.digest[:12]} has no stored file", "MissingOutput")
    if ref.format == "pickle" and ref.project != project:
        raise StepValueError(f"refusing to unpickle an output of project {ref.project!r} in project {project!r}",
                             "ForeignPickle")
    data = store().read_bytes(ref.path)
    if ref.format == "json":
        return orjson.loads(data)
    if ref.format == "npy":
        import numpy as np

        return np.load(io.BytesIO(data), allow_pickle=False)
    if ref.format == "parquet":
        import pandas as pd

        return pd.read_parquet(io.BytesIO(data))
    if ref.format == "arrow":
        import pyarrow as pa

        return pa.ipc.open_file(pa.py_buffer(data)).read_all()
    if ref.format == "pickle":
        return pickle.loads(data)
    raise StepValueError(f"unknown output format {ref.format!r}", "MissingOutput")


def _matches(value: Any, ann: Any) -> bool:
    if ann is Any or ann is inspect.Signature.empty or isinstance(ann, typing.TypeVar | str):
        return True
    if ann is None or ann is type(None):
        return value is None
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return _matches(value, typing.get_args(ann)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(ann))
    if origin is typing.Literal:
        return value in typing.get_args(ann)
    if ann is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin is not None:
        return not isinstance(origin, type) or isinstance(value, origin)
    if isinstance(ann, type) and (issubclass(ann, enum.Enum) or ann.__module__ != "typing"):
        try:
            return isinstance(value, ann)
        except TypeError:
            return True
    return True


def check_return(value: Any, ann: Any, label: str) -> None:
    """Raise `StepValueError` (``TypeMismatch``) when ``value`` does not match the return annotation ``ann``."""
    if not _matches(value, ann):
        shown = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        raise StepValueError(f"{label} returned {type(value).__name__}, but its annotation is {shown}",
                             "TypeMismatch")

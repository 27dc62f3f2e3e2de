"""Data passing: inline JSON, numpy, pandas, Arrow and pickles through the artifact store; return-type checks."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from capstan.artifacts.store import ArtifactStore
from capstan.pipelines.serialize import (
    INLINE_MAX,
    OutputRef,
    StepValueError,
    check_return,
    encode_output,
    list_ref,
    load_output,
)
from capstan.settings import Settings
from capstan.store.artifact_index_sql import SqlArtifactIndex
from capstan.store.engine import create_store_engine


@pytest.fixture
def store(settings: Settings) -> Iterator[ArtifactStore]:
    engine = create_store_engine(settings)
    yield ArtifactStore(settings, SqlArtifactIndex(engine))
    engine.dispose()


class Point:
    def __init__(self, x: int) -> None:
        self.x = x


def roundtrip(store: ArtifactStore, value: Any, project: str = "p") -> tuple[OutputRef, Any]:
    ref = encode_output(value, prefix="pipelines/r/s/1", project=project, store=lambda: store, label="step 's'")
    return ref, load_output(ref, project=project, store=lambda: store)


def test_small_json_stays_inline(store: ArtifactStore) -> None:
    for value in (None, 3, 2.5, "x", True, [1, "a", None], {"a": [1, {"b": 2}]}):
        ref, back = roundtrip(store, value)
        assert ref.format == "json" and ref.inline is not None and ref.path is None
        assert back == value and type(back) is type(value)
    assert roundtrip(store, [1])[0].digest == roundtrip(store, [1])[0].digest != roundtrip(store, [2])[0].digest


def test_big_json_goes_to_the_store(store: ArtifactStore) -> None:
    value = ["x" * 100] * (INLINE_MAX // 50)
    ref, back = roundtrip(store, value)
    assert ref.format == "json" and ref.inline is None and ref.path == "pipelines/r/s/1/output.json"
    assert back == value and store.stat(ref.path).digest == ref.digest


def test_numpy_pandas_and_arrow_use_columnar_or_binary_formats(store: ArtifactStore) -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    ref, back = roundtrip(store, array)
    assert ref.format == "npy" and ref.path is not None and ref.path.endswith(".npy")
    np.testing.assert_array_equal(back, array)
    assert back.dtype == np.float32

    frame = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    ref, back = roundtrip(store, frame)
    assert ref.format == "parquet"
    pd.testing.assert_frame_equal(back, frame)

    table = pa.table({"n": [1, 2], "s": ["a", "b"]})
    ref, back = roundtrip(store, table)
    assert ref.format == "arrow" and back.equals(table)


def test_other_objects_are_pickled_within_the_same_project(store: ArtifactStore) -> None:
    ref, back = roundtrip(store, (1, Point(4)), project="team-a")
    assert ref.format == "pickle" and isinstance(back[1], Point) and back[1].x == 4
    with pytest.raises(StepValueError, match="refusing to unpickle an output of project 'team-a' in project 'b'"):
        load_output(ref, project="b", store=lambda: store)
    nan_ref, nan_back = roundtrip(store, [float("nan")])
    assert nan_ref.format == "pickle" and np.isnan(nan_back[0])


def test_unpicklable_values_get_one_clear_error(store: ArtifactStore) -> None:
    with pytest.raises(StepValueError, match=r"step 's' returned a lock that cannot be stored: TypeError") as info:
        roundtrip(store, threading.Lock())
    assert info.value.reason == "SerializationError"
    assert store.list("pipelines", recursive=True) == []


def test_list_refs_load_in_order(store: ArtifactStore) -> None:
    parts = [roundtrip(store, v)[0] for v in (1, np.arange(2), "z")]
    ref = list_ref(parts, "p")
    back = load_output(OutputRef.from_columns(*ref.columns(), project="p"), project="p", store=lambda: store)
    assert back[0] == 1 and list(back[1]) == [0, 1] and back[2] == "z"
    assert OutputRef.from_json(ref.to_json()) == ref


@pytest.mark.parametrize(("value", "annotation", "ok"), [
    (1, int, True), (1, float, True), (True, int, True), ("1", int, False), (None, None, True), (1, None, False),
    ([1], list[int], True), ((1,), list[int], False), (1, int | None, True), (None, int | None, True),
    ("a", str | None, True), (2.0, "float", True), ("x", Any, True), (np.zeros(1), np.ndarray, True),
    ([1], np.ndarray, False), (pd.DataFrame(), pd.DataFrame, True), ({}, dict[str, int], True),
])
def test_return_annotation_checks(value: Any, annotation: Any, ok: bool) -> None:
    if ok:
        check_return(value, annotation, "step 'x' (f.py:3)")
    else:
        with pytest.raises(StepValueError, match=r"step 'x' \(f.py:3\) returned \w+, but its annotation is") as info:
            check_return(value, annotation, "step 'x' (f.py:3)")
        assert info.value.reason == "TypeMismatch"

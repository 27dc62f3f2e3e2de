"""Compiled tree ensembles predict exactly what scikit-learn predicts, and survive save/load without pickle."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from capstan.errors import InvalidParameterValue
from capstan.serving.model import SklearnServedModel
from capstan.serving.served_trees import CompiledTrees, TreeEnsembleServedModel, compile_trees

N_FEATURES = 6


def _data(seed: int = 0, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES))
    y = (x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + rng.normal(scale=0.5, size=n) > 0).astype(int) + (x[:, 3] > 1)
    return x, y


def _rows(n: int = 4000, seed: int = 1, nan_share: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Some rows repeat training-like values rounded to float32 thresholds, so ties with thresholds occur.
    rows = rng.normal(scale=1.5, size=(n, N_FEATURES))
    rows[: n // 4] = np.round(rows[: n // 4], 1)
    if nan_share:
        rows[rng.random(rows.shape) < nan_share] = np.nan
    return rows


def _assert_same(estimator: Any, rows: np.ndarray, *, rel: float = 0.0) -> CompiledTrees:
    compiled = compile_trees(estimator)
    assert compiled is not None
    expected, got = estimator.predict(rows), compiled.predict(rows)
    if rel:
        np.testing.assert_allclose(got, expected, rtol=rel, atol=0)
    else:
        assert got.dtype.kind == np.asarray(expected).dtype.kind or expected.dtype.kind == "O"
        assert (got == expected).all(), f"{int((got != expected).sum())} of {len(rows)} rows differ"
    return compiled


@pytest.mark.parametrize("make", [
    lambda: DecisionTreeClassifier(random_state=0),
    lambda: DecisionTreeClassifier(max_depth=3, random_state=0),
    lambda: RandomForestClassifier(n_estimators=25, random_state=0),
    lambda: RandomForestClassifier(n_estimators=25, min_samples_leaf=7, random_state=0),
    lambda: ExtraTreesClassifier(n_estimators=25, random_state=0),
], ids=["tree", "shallow-tree", "forest", "forest-big-leaves", "extra-trees"])
def test_classifiers_with_int_labels_match_sklearn(make: Any) -> None:
    x, y = _data()
    _assert_same(make().fit(x, y), _rows())


def test_string_labels_and_object_labels_come_back_as_strings() -> None:
    x, y = _data()
    names = np.array(["low", "mid", "high"])[y]
    forest = RandomForestClassifier(n_estimators=10, random_state=0).fit(x, names)
    compiled = _assert_same(forest, _rows())
    assert compiled.classes is not None and compiled.classes.dtype.kind == "U"
    from_objects = RandomForestClassifier(n_estimators=10, random_state=0).fit(x, names.astype(object))
    assert from_objects.classes_.dtype == object
    _assert_same(from_objects, _rows())


@pytest.mark.parametrize("make", [
    lambda: DecisionTreeRegressor(random_state=0),
    lambda: RandomForestRegressor(n_estimators=20, random_state=0),
    lambda: ExtraTreesRegressor(n_estimators=20, random_state=0),
], ids=["tree", "forest", "extra-trees"])
def test_regressors_match_sklearn(make: Any) -> None:
    x, _ = _data()
    target = x[:, 0] * 3 + np.sin(x[:, 1]) * 1e3
    compiled = _assert_same(make().fit(x, target), _rows(), rel=1e-12)
    assert compiled.classes is None and compiled.predict(_rows(5)).dtype == np.float64


@pytest.mark.parametrize("make", [
    lambda: DecisionTreeClassifier(random_state=0),
    lambda: RandomForestClassifier(n_estimators=20, random_state=0),
    lambda: ExtraTreesClassifier(n_estimators=20, random_state=0),
    lambda: RandomForestRegressor(n_estimators=10, random_state=0),
], ids=["tree", "forest", "extra-trees", "regressor"])
def test_nan_goes_where_trees_fitted_with_missing_values_send_it(make: Any) -> None:
    x, y = _data()
    x[np.random.default_rng(2).random(x.shape) < 0.15] = np.nan
    estimator = make().fit(x, y)
    compiled = compile_trees(estimator)
    assert compiled is not None and compiled.accepts_nan
    assert compiled.missing_go_to_left.sum() > int((compiled.left == np.arange(len(compiled.left))).sum())
    _assert_same(estimator, _rows(nan_share=0.2), rel=1e-12 if compiled.classes is None else 0.0)


def test_a_single_node_tree() -> None:
    x, _ = _data()
    tree = DecisionTreeClassifier().fit(x, np.full(len(x), 7))
    compiled = _assert_same(tree, _rows(50))
    assert compiled.max_depth == 0 and len(compiled.feature) == 1
    assert (compiled.predict(_rows(3)) == 7).all()


def test_a_300_tree_forest_on_thousands_of_rows() -> None:
    x, y = _data(n=300)
    forest = RandomForestClassifier(n_estimators=300, max_depth=8, random_state=0).fit(x, y)
    compiled = _assert_same(forest, _rows(3000))
    assert compiled.n_trees == 300


def test_save_and_load_round_trip_without_pickle(tmp_path: Path) -> None:
    x, y = _data()
    forest = RandomForestClassifier(n_estimators=10, random_state=0).fit(x, np.array(["a", "b", "c"])[y])
    compiled = compile_trees(forest)
    assert compiled is not None
    compiled.save(tmp_path / "trees.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["trees.npz"]  # no temporary file left behind
    loaded = CompiledTrees.load(tmp_path / "trees.npz")
    rows = _rows(500)
    assert (loaded.predict(rows) == forest.predict(rows)).all()
    with np.load(tmp_path / "trees.npz", allow_pickle=False) as data:
        assert all(data[name].dtype.kind != "O" for name in data.files)


def test_damaged_files_are_refused(tmp_path: Path) -> None:
    x, y = _data()
    compiled = compile_trees(DecisionTreeClassifier(random_state=0).fit(x, y))
    assert compiled is not None
    compiled.save(tmp_path / "ok.npz")
    with np.load(tmp_path / "ok.npz") as data:
        arrays = {name: data[name] for name in data.files}
    np.savez(tmp_path / "bad-index.npz", **{**arrays, "left": arrays["left"] + 10_000})
    np.savez(tmp_path / "old.npz", **{**arrays, "format_version": np.asarray(0)})
    np.savez(tmp_path / "objects.npz", **{**arrays, "classes": np.array([1, "x", None], dtype=object)})
    for name in ("bad-index", "old"):
        with pytest.raises(ValueError):
            CompiledTrees.load(tmp_path / f"{name}.npz")
    with pytest.raises(ValueError):  # numpy refuses object arrays without pickle
        CompiledTrees.load(tmp_path / "objects.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises((ValueError, OSError)):
        CompiledTrees.load(tmp_path / "junk.npz")


@pytest.mark.parametrize("estimator", [
    make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=3, random_state=0)),
    LogisticRegression(),
    GradientBoostingClassifier(n_estimators=3),
], ids=["pipeline", "linear", "boosting"])
def test_unsupported_estimators_are_not_compiled(estimator: Any) -> None:
    x, y = _data()
    assert compile_trees(estimator.fit(x, y)) is None


def test_multi_output_and_unfitted_estimators_are_not_compiled() -> None:
    x, y = _data()
    assert compile_trees(RandomForestRegressor(n_estimators=3).fit(x, np.c_[y, y])) is None
    assert compile_trees(RandomForestClassifier()) is None
    assert compile_trees(object()) is None


def test_infinity_is_refused_and_nan_without_support_is_refused() -> None:
    x, y = _data()
    compiled = compile_trees(RandomForestClassifier(n_estimators=3, random_state=0).fit(x, y))
    assert compiled is not None
    rows = _rows(4)
    rows[1, 2] = np.inf
    with pytest.raises(InvalidParameterValue, match="infinity"):
        compiled.predict(rows)
    rows[1, 2] = 1e300  # beyond float32
    with pytest.raises(InvalidParameterValue, match="infinity"):
        compiled.predict(rows)
    no_nan = dataclasses.replace(compiled, accepts_nan=False)
    rows[1, 2] = np.nan
    with pytest.raises(InvalidParameterValue, match="NaN"):
        no_nan.predict(rows)


def test_served_model_has_the_metadata_sklearn_served_model_gives() -> None:
    x, y = _data()
    for estimator in (RandomForestClassifier(n_estimators=3, random_state=0).fit(x, y),
                      RandomForestClassifier(n_estimators=3, random_state=0).fit(x, np.array(["a", "b", "c"])[y]),
                      RandomForestRegressor(n_estimators=3, random_state=0).fit(x, x[:, 0])):
        compiled = compile_trees(estimator)
        assert compiled is not None
        served = TreeEnsembleServedModel("m", "2", compiled)
        reference = SklearnServedModel("m", "2", estimator, N_FEATURES)
        assert (served.platform, served.inputs, served.outputs) == (
            reference.platform, reference.inputs, reference.outputs)
        rows = _rows(20)
        assert (served.predict(rows) == reference.predict(rows)).all()
        with pytest.raises(InvalidParameterValue, match="features"):
            served.predict(rows[:, :3])
        assert served.predict(rows[:0]).shape == (0,)

"""Compiled tree ensembles: scikit-learn decision trees and forests as plain arrays, predicted without scikit-learn.

`compile_trees(estimator)` turns a fitted ``DecisionTreeClassifier``/``Regressor``, ``RandomForestClassifier``/
``Regressor`` or ``ExtraTreesClassifier``/``Regressor`` (one output) into a `CompiledTrees`: every tree's nodes
concatenated into a few arrays. Anything else (a Pipeline, a boosted model, a multi-output forest) gives ``None``
and is served by scikit-learn itself.

Prediction walks all rows through all trees at once: a (trees x rows) matrix of node indices advances one level per
step, for at most ``max_depth`` steps, so the cost is a few numpy operations per level instead of scikit-learn's
per-tree Python and joblib overhead. It computes what scikit-learn computes, bit for bit: the input cast to float32,
``x <= threshold`` against the float64 threshold, NaN going where the node's ``missing_go_to_left`` says, each
tree's leaf values (a classifier's class fractions, a regressor's value) added in tree order and divided by the
number of trees, then the argmax's class (the first on a tie) or the mean.

`CompiledTrees.save`/`load` use an ``.npz`` of numeric and string arrays read with ``allow_pickle=False``: loading
one runs no code and needs no scikit-learn, whoever wrote it. `TreeEnsembleServedModel` serves one.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from capstan.errors import InvalidParameterValue
from capstan.serving.oip import TensorMetadata, datatype_of

__all__ = ["FORMAT_VERSION", "CompiledTrees", "TreeEnsembleServedModel", "compile_trees"]

FORMAT_VERSION = 1
"""Written into every saved `CompiledTrees`; a file of another version is not loaded."""

_CLASSIFIERS = ("DecisionTreeClassifier", "ExtraTreeClassifier", "RandomForestClassifier", "ExtraTreesClassifier")
_REGRESSORS = ("DecisionTreeRegressor", "ExtraTreeRegressor", "RandomForestRegressor", "ExtraTreesRegressor")
_MODULES = ("sklearn.tree._classes", "sklearn.ensemble._forest")
_ARRAYS = ("feature", "threshold", "left", "right", "missing_go_to_left", "value", "roots")


@dataclass(frozen=True, eq=False)
class CompiledTrees:
    """A tree ensemble as arrays over all its nodes (``n_nodes`` = the sum over trees).

    A leaf has ``left == right ==`` itself, feature 0, threshold +inf and ``missing_go_to_left``, so a walk that
    reached it stays there. ``value`` is ``(n_nodes, n_classes)`` class fractions for a classifier (``classes``
    set), ``(n_nodes, 1)`` for a regressor (``classes`` None). ``roots`` holds each tree's first node.
    """

    feature: npt.NDArray[np.intp]
    threshold: npt.NDArray[np.float64]
    left: npt.NDArray[np.intp]
    right: npt.NDArray[np.intp]
    missing_go_to_left: npt.NDArray[np.bool_]
    value: npt.NDArray[np.float64]
    roots: npt.NDArray[np.intp]
    max_depth: int
    n_features: int
    classes: npt.NDArray[Any] | None
    accepts_nan: bool
    _children: npt.NDArray[np.intp] = field(init=False, repr=False)  # left and right interleaved
    _is_inner: npt.NDArray[np.bool_] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_shapes(self)
        children = np.empty(2 * len(self.left), dtype=np.intp)
        children[0::2], children[1::2] = self.left, self.right
        object.__setattr__(self, "_children", children)
        object.__setattr__(self, "_is_inner", self.left != np.arange(len(self.left)))

    @property
    def n_trees(self) -> int:
        """How many trees the ensemble has."""
        return len(self.roots)

    def predict(self, x: npt.ArrayLike) -> npt.NDArray[Any]:
        """One prediction per row of ``x`` (``n_features`` columns): a class of ``classes``, or a float64 value."""
        with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf, refused below
            rows = np.ascontiguousarray(x, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.n_features:
            raise InvalidParameterValue(f"expected rows of {self.n_features} features, got shape {list(rows.shape)}")
        has_nan = self._check_finite(rows)
        leaves = self._leaves(rows.ravel(), rows.shape[0], has_nan)
        # Leaf values added in tree order, as scikit-learn accumulates them (cumsum is a sequential sum).
        mean = np.cumsum(self.value.take(leaves, axis=0), axis=0)[-1] / self.n_trees
        if self.classes is None:
            return np.asarray(mean[:, 0], dtype=np.float64)
        return np.asarray(self.classes.take(np.argmax(mean, axis=1)))

    def _check_finite(self, rows: npt.NDArray[np.float32]) -> bool:
        """Whether ``rows`` holds NaN; refuses infinities (as scikit-learn does) and NaN for a model without it."""
        if np.isfinite(rows).all():
            return False
        if np.isinf(rows).any():
            raise InvalidParameterValue("input contains infinity or a value too large for float32")
        if not self.accepts_nan:
            raise InvalidParameterValue("input contains NaN, which this model does not accept")
        return True

    def _leaves(self, flat: npt.NDArray[np.float32], n_rows: int, has_nan: bool) -> npt.NDArray[np.intp]:
        """The (trees x rows) matrix of the leaf each row reaches in each tree.

        All (tree, row) walks advance together, one level per step; walks that reached a leaf are dropped from the
        step's arrays once a quarter of them have (most paths end well before ``max_depth``)."""
        children, is_inner = self._children, self._is_inner
        row_start = np.tile(np.arange(n_rows, dtype=np.intp) * self.n_features, self.n_trees)
        nodes = np.repeat(self.roots, n_rows)
        leaves, walks = nodes.copy(), np.arange(len(nodes))
        for _ in range(self.max_depth):
            values = flat.take(row_start + self.feature.take(nodes))
            # float32 compared as float64, like scikit-learn; without NaN, "not <=" is ">"
            if has_nan:
                go_right = ~(values <= self.threshold.take(nodes))
                go_right &= ~(np.isnan(values) & self.missing_go_to_left.take(nodes))
            else:
                go_right = values > self.threshold.take(nodes)
            nodes = children.take(2 * nodes + go_right)
            walking = is_inner.take(nodes)
            n_walking = int(np.count_nonzero(walking))
            if n_walking * 4 < len(nodes) * 3:
                leaves[walks] = nodes
                if not n_walking:
                    break
                walks, nodes, row_start = walks[walking], nodes[walking], row_start[walking]
        else:
            leaves[walks] = nodes
        return leaves.reshape(self.n_trees, n_rows)

    def save(self, path: str | Path) -> None:
        """Write this ensemble to ``path`` (an ``.npz``) atomically: a temporary file in the same folder, renamed."""
        target = Path(path)
        arrays: dict[str, npt.NDArray[Any]] = {name: getattr(self, name) for name in _ARRAYS}
        arrays.update(format_version=np.asarray(FORMAT_VERSION), max_depth=np.asarray(self.max_depth),
                      n_features=np.asarray(self.n_features), accepts_nan=np.asarray(self.accepts_nan))
        if self.classes is not None:
            arrays["classes"] = self.classes
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, allow_pickle=False, **arrays)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> CompiledTrees:
        """Read an ensemble `save` wrote (no code runs: ``allow_pickle=False``). Raises ``ValueError`` for a file
        that is not one, of another format version, or whose arrays do not fit together; ``OSError`` if unreadable.
        """
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        try:
            version = int(arrays["format_version"])
            if version != FORMAT_VERSION:
                raise ValueError(f"compiled trees of format version {version}, not {FORMAT_VERSION}")
            return cls(**{name: np.asarray(arrays[name], dtype=_DTYPES[name]) for name in _ARRAYS},
                       max_depth=int(arrays["max_depth"]), n_features=int(arrays["n_features"]),
                       classes=arrays.get("classes"), accepts_nan=bool(arrays["accepts_nan"]))
        except KeyError as missing:
            raise ValueError(f"compiled trees file lacks {missing}") from None


_DTYPES: Mapping[str, npt.DTypeLike] = {"feature": np.intp, "threshold": np.float64, "left": np.intp,
                                        "right": np.intp, "missing_go_to_left": np.bool_, "value": np.float64,
                                        "roots": np.intp}


def _check_shapes(trees: CompiledTrees) -> None:
    """Refuse arrays that do not describe a walkable ensemble (a damaged or hand-made file)."""
    n_nodes = len(trees.feature)
    one_d = (trees.feature, trees.threshold, trees.left, trees.right, trees.missing_go_to_left)
    if any(a.ndim != 1 or len(a) != n_nodes for a in one_d) or trees.value.ndim != 2 or len(trees.value) != n_nodes:
        raise ValueError("compiled trees: node arrays of different lengths")
    if n_nodes == 0 or trees.roots.ndim != 1 or len(trees.roots) == 0 or trees.n_features < 1:
        raise ValueError("compiled trees: no trees, or no features")
    for name, a, bound in (("left", trees.left, n_nodes), ("right", trees.right, n_nodes),
                           ("roots", trees.roots, n_nodes), ("feature", trees.feature, trees.n_features)):
        if a.min() < 0 or a.max() >= bound:
            raise ValueError(f"compiled trees: {name} out of range")
    if not 0 <= trees.max_depth <= n_nodes:
        raise ValueError("compiled trees: max_depth out of range")
    width = 1 if trees.classes is None else len(trees.classes)
    if trees.classes is not None and (trees.classes.ndim != 1 or trees.classes.dtype.kind not in "biufUS"):
        raise ValueError("compiled trees: classes must be a 1-D numeric or string array")
    if trees.value.shape[1] != width or width == 0:
        raise ValueError("compiled trees: leaf values do not match the classes")


# ------------------------------------------------------------------------------------------------- compiling


def compile_trees(estimator: Any) -> CompiledTrees | None:
    """``estimator`` as `CompiledTrees`, or None when it is not a fitted single-output scikit-learn decision tree,
    random forest or extra-trees model (exactly those classes: a subclass may predict differently)."""
    cls = type(estimator)
    kind = cls.__name__
    if cls.__module__ not in _MODULES or kind not in _CLASSIFIERS + _REGRESSORS:
        return None
    if getattr(estimator, "n_outputs_", None) != 1 or not isinstance(getattr(estimator, "n_features_in_", None), int):
        return None
    trees = [getattr(e, "tree_", None) for e in getattr(estimator, "estimators_", [estimator])]
    if not trees or any(t is None for t in trees):
        return None
    classes = None
    if kind in _CLASSIFIERS:
        classes = _plain_classes(getattr(estimator, "classes_", None))
        if classes is None:
            return None
    return _concatenate(trees, classes, estimator.n_features_in_, _accepts_nan(estimator))


def _plain_classes(classes: Any) -> npt.NDArray[Any] | None:
    """``classes_`` as a numeric or string array (object arrays of strings become strings), else None."""
    array = np.asarray(classes) if classes is not None else None
    if array is None or array.ndim != 1:
        return None
    if array.dtype.kind == "O":
        if not all(isinstance(c, str) for c in array):
            return None
        array = array.astype(str)
    return array if array.dtype.kind in "biufUS" else None


def _accepts_nan(estimator: Any) -> bool:
    """Whether scikit-learn predicts (rather than refuses) a row of NaN with this estimator."""
    probe = np.full((1, estimator.n_features_in_), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "X does not have valid feature names"
        try:
            estimator.predict(probe)
        except ValueError:
            return False
    return True


def _concatenate(trees: Sequence[Any], classes: npt.NDArray[Any] | None, n_features: int,
                 accepts_nan: bool) -> CompiledTrees:
    parts: dict[str, list[npt.NDArray[Any]]] = {name: [] for name in _ARRAYS if name != "roots"}
    roots, offset = [], 0
    width = 1 if classes is None else len(classes)
    for tree in trees:
        n = int(tree.node_count)
        leaf = tree.children_left[:n] == -1
        own = np.arange(offset, offset + n, dtype=np.intp)
        parts["left"].append(np.where(leaf, own, tree.children_left[:n] + offset))
        parts["right"].append(np.where(leaf, own, tree.children_right[:n] + offset))
        parts["feature"].append(np.where(leaf, 0, tree.feature[:n]))
        parts["threshold"].append(np.where(leaf, np.inf, tree.threshold[:n]))
        go_left = getattr(tree, "missing_go_to_left", np.zeros(n, dtype=np.uint8))
        parts["missing_go_to_left"].append(leaf | (np.asarray(go_left[:n]) != 0))
        # scikit-learn >= 1.4 keeps class fractions in `value`, and predict_proba returns them as they are.
        parts["value"].append(np.asarray(tree.value[:n, 0, :width], dtype=np.float64))
        roots.append(offset)
        offset += n
    arrays = {name: np.asarray(np.concatenate(chunks), dtype=_DTYPES[name]) for name, chunks in parts.items()}
    return CompiledTrees(**arrays, roots=np.asarray(roots, dtype=np.intp),
                         max_depth=max(int(t.max_depth) for t in trees), n_features=n_features,
                         classes=classes, accepts_nan=accepts_nan)


# ------------------------------------------------------------------------------------------------- serving


class TreeEnsembleServedModel:
    """`CompiledTrees` as a `ServedModel` (platform ``sklearn``), with the metadata `SklearnServedModel` gives the
    same estimator: input ``input-0`` (FP64 ``[-1, n_features]`` unless ``input`` says otherwise), output
    ``output-0`` (``[-1]``, the classes' datatype for a classifier, FP64 for a regressor)."""

    platform = "sklearn"
    cheap_predict = True
    """A small batch predicts in well under a millisecond: the batcher runs small batches on the event loop."""

    def __init__(self, name: str, version: str, trees: CompiledTrees, *, ready: bool = True,
                 input: TensorMetadata | None = None) -> None:
        self.name = name
        self.version = str(version)
        self.trees = trees
        self.n_features = trees.n_features
        self.ready = ready
        out_type = datatype_of(trees.classes.dtype) if trees.classes is not None else "FP64"
        spec = input or TensorMetadata("input-0", "FP64", (-1, trees.n_features))
        self.inputs: tuple[TensorMetadata, ...] = (spec,)
        self.outputs: tuple[TensorMetadata, ...] = (TensorMetadata("output-0", out_type, (-1,)),)

    def predict(self, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """The ensemble's prediction for each row of ``x`` (2-D, ``n_features`` columns)."""
        rows = np.asarray(x)
        if rows.ndim != 2 or rows.shape[1] != self.n_features:
            raise InvalidParameterValue(
                f"model {self.name!r} expects rows of {self.n_features} features, got shape {list(rows.shape)}")
        if rows.dtype.kind not in "fiub":
            raise InvalidParameterValue(f"model {self.name!r} expects numbers, got {rows.dtype}")
        return self.trees.predict(rows)

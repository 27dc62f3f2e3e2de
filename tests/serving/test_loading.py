"""`capstan.serving.loading` against real local stores: sklearn in each serialization format from the registry,
sha256 verification (a tampered blob, a file without a digest), trust (pickle, Python classes and TorchScript only
from trusted sources; skops trusts only the recorded types), ONNX, a capstan_python class and TorchScript; compiled
tree ensembles and their cache (a cache hit, through ``capstan serve``'s loader, imports no scikit-learn)."""

from __future__ import annotations

import hashlib
import operator
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from capstan.errors import InvalidParameterValue
from capstan.models import python_class
from capstan.models.format import save_model
from capstan.sdk.backends import ArtifactOwner, open_backend
from capstan.sdk.client import Client
from capstan.sdk.model_source import BackendModelSource
from capstan.serving.loading import (
    FetchedModel,
    ModelFileUnverified,
    UntrustedModelSource,
    load_model_folder,
    load_served_model,
    verify_folder,
)
from capstan.serving.model import SklearnServedModel
from capstan.serving.served_trees import CompiledTrees, TreeEnsembleServedModel, compile_trees
from capstan.settings import Settings

X, Y = load_iris(return_X_y=True)
FORMATS = ("skops", "pickle", "cloudpickle")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with iris classifiers registered as ``iris-<format>`` version 1 (alias ``champion``)."""
    root = tmp_path_factory.mktemp("loading-home")
    model = LogisticRegression(max_iter=500).fit(X, Y)
    with Client(Settings.for_home(root)) as client:
        experiment_id = client.create_experiment("loading")
        run_id = client.create_run(experiment_id).info.run_id
        for fmt in FORMATS:
            client.log_model(run_id, model, f"model-{fmt}", registered_model_name=f"iris-{fmt}",
                             serialization_format=fmt, input_example=X[:2])
            client.set_registered_model_alias(f"iris-{fmt}", "champion", 1)
        client.set_terminated(run_id)
    return root


@pytest.fixture
def source(home: Path) -> Any:
    backend = open_backend(Settings.for_home(home))
    yield BackendModelSource(backend)
    backend.close()


@pytest.mark.parametrize("fmt", FORMATS)
def test_registry_model_in_each_format_loads_verified(source: Any, fmt: str) -> None:
    served = load_served_model(source, f"models:/iris-{fmt}@champion", trusted_local=False)
    assert (served.name, served.version, served.platform) == (f"iris-{fmt}", "1", "sklearn")
    assert [(i.datatype, i.shape) for i in served.inputs] == [("FP64", (-1, 4))]
    expected = LogisticRegression(max_iter=500).fit(X, Y).predict(X)
    assert list(served.predict(X)) == list(expected)


def test_fetch_reports_a_digest_for_every_file(source: Any) -> None:
    fetched = source.fetch("models:/iris-pickle/1", Path(pytest.importorskip("tempfile").mkdtemp()))
    files = {p.relative_to(fetched.folder).as_posix() for p in fetched.folder.rglob("*") if p.is_file()}
    assert set(fetched.digests) == files and "model.pkl" in files
    for rel in files:
        assert fetched.digests[rel] == hashlib.sha256((fetched.folder / rel).read_bytes()).hexdigest()


def test_tampered_blob_is_refused_naming_the_file(tmp_path: Path) -> None:
    model = LogisticRegression(max_iter=500).fit(X, Y)
    settings = Settings.for_home(tmp_path / "home")
    with Client(settings) as client:
        run_id = client.create_run(client.create_experiment("tamper")).info.run_id
        client.log_model(run_id, model, "model", registered_model_name="tampered", serialization_format="pickle")
    backend = open_backend(settings)
    try:
        entry = next(f for f in backend.list_artifacts(ArtifactOwner.model_version("tampered", 1), "", recursive=True)
                     if f.path == "model.pkl")
        assert entry.digest
        blob = tmp_path / "home" / "artifacts" / "blobs" / entry.digest[:2] / entry.digest[2:4] / entry.digest
        blob.write_bytes(pickle.dumps(LinearRegression().fit(X, Y)))  # a loadable model: only the digest tells
        with pytest.raises(ModelFileUnverified, match=r"'model.pkl' does not match the sha256"):
            load_served_model(BackendModelSource(backend), "models:/tampered/1", trusted_local=True)
    finally:
        backend.close()


class _FakeSource:
    """A `ModelSource` that hands out a prepared folder with chosen digests."""

    def __init__(self, folder: Path, digests: dict[str, str | None]) -> None:
        self.folder, self.digests = folder, digests

    def fetch(self, uri: str, dest: Path) -> FetchedModel:
        return FetchedModel(self.folder, "fake", "7", self.digests)


def _digests(folder: Path) -> dict[str, str | None]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


def test_missing_digest_and_missing_file_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    save_model(LogisticRegression(max_iter=500).fit(X, Y), folder, serialization_format="skops")
    digests = _digests(folder)
    assert load_served_model(_FakeSource(folder, digests), "models:/fake/7", trusted_local=False).version == "7"
    without = dict(digests, **{"model.skops": None})
    with pytest.raises(ModelFileUnverified, match=r"'model.skops' has no sha256"):
        load_served_model(_FakeSource(folder, without), "models:/fake/7", trusted_local=False)
    with pytest.raises(ModelFileUnverified, match=r"'extra.bin' is recorded"):
        verify_folder(folder, dict(digests, **{"extra.bin": "0" * 64}))


def test_pickle_from_an_untrusted_local_folder_is_refused(tmp_path: Path) -> None:
    for fmt in ("pickle", "cloudpickle"):
        folder = tmp_path / fmt
        save_model(LogisticRegression(max_iter=500).fit(X, Y), folder, serialization_format=fmt)
        with pytest.raises(UntrustedModelSource, match=f"stored with {fmt}, which runs code"):
            load_served_model(_FakeSource(folder, {}), str(folder), trusted_local=False)
        assert load_served_model(_FakeSource(folder, {}), str(folder), trusted_local=True).name == fmt


def test_skops_trusts_only_the_recorded_types(tmp_path: Path) -> None:
    folder = tmp_path / "neg"
    pipe = make_pipeline(FunctionTransformer(operator.neg), LogisticRegression(max_iter=500)).fit(X, Y)
    mlmodel = save_model(pipe, folder, serialization_format="skops")
    assert "_operator.neg" in mlmodel["flavors"]["sklearn"]["skops_trusted_types"]
    served = load_model_folder(folder, name="p", version="1", trusted_source=True)
    assert list(served.predict(X[:5])) == list(pipe.predict(X[:5]))
    # From an untrusted source the recorded list is not honoured.
    with pytest.raises(InvalidParameterValue, match=r"not trusted: _operator.neg"):
        load_model_folder(folder, name="p", version="1", trusted_source=False)
    # Without the recorded list nothing beyond skops' defaults is trusted.
    mlmodel["flavors"]["sklearn"]["skops_trusted_types"] = None
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(InvalidParameterValue, match=r"not trusted: _operator.neg"):
        load_model_folder(folder, name="p", version="1", trusted_source=True)


def _onnx_linear(folder: Path, weights: np.ndarray) -> None:
    """An ONNX graph y = x @ W (FP32, [N, 3] -> [N, 2]) in MLflow's onnx flavor layout."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        initializer=[numpy_helper.from_array(weights.astype(np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    folder.mkdir(parents=True)
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "MLmodel").write_text(yaml.safe_dump({"flavors": {"onnx": {
        "data": "model.onnx", "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}}}))


def test_onnx_loads_from_any_source(tmp_path: Path) -> None:
    weights = np.arange(6, dtype=np.float32).reshape(3, 2)
    _onnx_linear(tmp_path / "onnx", weights)
    served = load_model_folder(tmp_path / "onnx", name="lin", version="2", trusted_source=False)
    assert served.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, t.shape) for t in served.inputs] == [("x", "FP32", (-1, 3))]
    assert [(t.name, t.datatype, t.shape) for t in served.outputs] == [("y", "FP32", (-1, 2))]
    rows = np.ones((4, 3), dtype=np.float32)
    assert np.array_equal(served.predict(rows), rows @ weights)


def test_missing_onnxruntime_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _onnx_linear(tmp_path / "onnx", np.zeros((3, 2), dtype=np.float32))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(InvalidParameterValue, match=r"pip install 'capstan\[onnx\]'"):
        load_model_folder(tmp_path / "onnx", name="lin", version="1", trusted_source=True)


def _write_class_module(folder: Path, module: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / f"{module}.py"
    file.write_text(textwrap.dedent("""
        from pathlib import Path
        import numpy as np

        class Scaler:
            def load(self, path):
                self.factor = float((Path(path) / "factor.txt").read_text())
                self.n_features_in_ = 3

            def predict(self, x):
                return np.asarray(x).sum(axis=1) * self.factor
        """))
    return file


def test_python_class_saved_and_loaded_from_registry_and_folder(tmp_path: Path) -> None:
    module = f"capstan_test_scaler_{tmp_path.name.replace('-', '_')}"
    code = _write_class_module(tmp_path / "src", module)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "factor.txt").write_text("2.5")
    folder = tmp_path / "model"
    python_class.save_model(f"{module}:Scaler", folder, code_paths=[code], data_path=tmp_path / "data")
    with pytest.raises(UntrustedModelSource, match="Python class model"):
        load_model_folder(folder, name="scaler", version="1", trusted_source=False)

    settings = Settings.for_home(tmp_path / "home")
    with Client(settings) as client:
        run_id = client.create_run(client.create_experiment("py")).info.run_id
        client.log_artifacts(run_id, str(folder), "scaler")
    backend = open_backend(settings)
    try:
        served = load_served_model(BackendModelSource(backend), f"runs:/{run_id}/scaler", trusted_local=False)
    finally:
        backend.close()
    assert (served.name, served.platform) == ("scaler", "python")
    assert [(t.datatype, t.shape) for t in served.inputs] == [("FP64", (-1, 3))]
    assert list(served.predict(np.ones((2, 3)))) == [7.5, 7.5]


def test_python_class_must_be_importable(tmp_path: Path) -> None:
    class Local:
        def load(self, path: Path) -> None: ...

        def predict(self, x: Any) -> Any: ...

    Local.__module__ = "__main__"
    with pytest.raises(InvalidParameterValue, match="__main__ cannot be imported"):
        python_class.save_model(Local, tmp_path / "m")
    with pytest.raises(InvalidParameterValue, match="not 'module:ClassName'"):
        python_class.save_model("no_colon", tmp_path / "m")


def test_torchscript_loads_and_a_pickled_module_is_refused(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="torch is the optional 'torch' extra: pip install 'capstan[torch]'")
    linear = torch.nn.Linear(3, 1)
    for folder, save in ((tmp_path / "ts", lambda f: torch.jit.save(torch.jit.script(linear), f)),
                         (tmp_path / "eager", lambda f: torch.save(linear, f))):
        (folder / "data").mkdir(parents=True)
        save(str(folder / "data" / "model.pth"))
        signature = {"inputs": '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 3]}}]'}
        (folder / "MLmodel").write_text(yaml.safe_dump({"signature": signature, "flavors": {
            "pytorch": {"model_data": "data", "pytorch_version": str(torch.__version__)}}}))
    with pytest.raises(UntrustedModelSource, match="TorchScript"):
        load_model_folder(tmp_path / "ts", name="ts", version="1", trusted_source=False)
    served = load_model_folder(tmp_path / "ts", name="ts", version="1", trusted_source=True)
    assert served.platform == "pytorch_torchscript"
    assert [(t.datatype, t.shape) for t in served.inputs] == [("FP32", (-1, 3))]
    rows = np.random.default_rng(0).random((5, 3), dtype=np.float32)
    with torch.no_grad():
        expected = linear(torch.from_numpy(rows)).numpy()
    assert np.allclose(served.predict(rows), expected)
    with pytest.raises(InvalidParameterValue, match="pickled PyTorch module, not TorchScript"):
        load_model_folder(tmp_path / "eager", name="eager", version="1", trusted_source=True)


def test_unknown_flavor_and_bad_uri(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "MLmodel").write_text(yaml.safe_dump({"flavors": {"keras": {}}}))
    with pytest.raises(InvalidParameterValue, match="has flavors keras"):
        load_model_folder(tmp_path / "m", name="k", version="1", trusted_source=True)
    with pytest.raises(InvalidParameterValue, match="is not models:/NAME@ALIAS"):
        load_served_model(_FakeSource(tmp_path, {}), str(tmp_path / "nope"), trusted_local=True)


# ------------------------------------------------------------------------------------------ compiled tree ensembles


def _forest_folder(folder: Path, fmt: str = "pickle", *, seed: int = 0) -> tuple[Path, Any]:
    forest = RandomForestClassifier(n_estimators=8, random_state=seed).fit(X, Y)
    save_model(forest, folder, serialization_format=fmt, input_example=X[:2])
    return folder, forest


@pytest.mark.parametrize("fmt", ["pickle", "skops"])
def test_a_forest_is_served_compiled_and_cached_by_the_model_files_sha256(tmp_path: Path, fmt: str) -> None:
    folder, forest = _forest_folder(tmp_path / "rf", fmt)
    cache = tmp_path / "cache"
    digests = _digests(folder)
    served = load_served_model(_FakeSource(folder, digests), "models:/fake/7", trusted_local=False,
                               compiled_cache=cache)
    assert isinstance(served, TreeEnsembleServedModel)
    model_file = "model.pkl" if fmt == "pickle" else "model.skops"
    assert [p.name for p in cache.iterdir()] == [f"{digests[model_file]}.npz"]
    assert (served.name, served.version, served.platform) == ("fake", "7", "sklearn")
    reference = SklearnServedModel("fake", "7", forest, 4)
    assert (served.inputs, served.outputs) == (reference.inputs, reference.outputs)
    assert (served.predict(X) == forest.predict(X)).all()
    again = load_served_model(_FakeSource(folder, digests), "models:/fake/7", trusted_local=False,
                              compiled_cache=cache)
    assert (again.predict(X) == forest.predict(X)).all()


def test_the_cache_entry_is_what_a_cache_hit_serves(tmp_path: Path) -> None:
    folder, _ = _forest_folder(tmp_path / "rf")
    other = RandomForestClassifier(n_estimators=3, max_depth=1, random_state=5).fit(X, np.zeros(len(X), int) + 2)
    compiled = compile_trees(other)
    assert compiled is not None
    cache = tmp_path / "cache"
    cache.mkdir()
    compiled.save(cache / f"{hashlib.sha256((folder / 'model.pkl').read_bytes()).hexdigest()}.npz")
    served = load_model_folder(folder, name="rf", version="1", trusted_source=True, compiled_cache=cache)
    assert set(served.predict(X)) == {2}  # the (planted) entry, not the model file


def test_a_damaged_cache_entry_is_compiled_again(tmp_path: Path) -> None:
    folder, forest = _forest_folder(tmp_path / "rf")
    cache = tmp_path / "cache"
    cache.mkdir()
    entry = cache / f"{hashlib.sha256((folder / 'model.pkl').read_bytes()).hexdigest()}.npz"
    entry.write_bytes(b"PK\x03\x04 truncated")
    served = load_model_folder(folder, name="rf", version="1", trusted_source=True, compiled_cache=cache)
    assert (served.predict(X) == forest.predict(X)).all()
    assert CompiledTrees.load(entry).n_trees == 8


def test_trust_is_checked_before_the_cache_and_other_models_are_not_cached(tmp_path: Path) -> None:
    folder, _ = _forest_folder(tmp_path / "rf")
    cache = tmp_path / "cache"
    load_model_folder(folder, name="rf", version="1", trusted_source=True, compiled_cache=cache)
    with pytest.raises(UntrustedModelSource):  # the same file, cached, from an untrusted folder: still refused
        load_model_folder(folder, name="rf", version="1", trusted_source=False, compiled_cache=cache)
    pipe_folder = tmp_path / "pipe"
    save_model(make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=3)).fit(X, Y), pipe_folder,
               serialization_format="pickle")
    served = load_model_folder(pipe_folder, name="p", version="1", trusted_source=True, compiled_cache=cache)
    assert isinstance(served, SklearnServedModel)
    assert len(list(cache.glob("*.npz"))) == 1
    assert len(list(cache.glob("*.plain"))) == 1  # the child found no trees: later loads don't start it again
    again = load_model_folder(pipe_folder, name="p", version="1", trusted_source=True, compiled_cache=cache)
    assert isinstance(again, SklearnServedModel)


def test_a_cache_that_cannot_be_written_still_serves(tmp_path: Path) -> None:
    folder, forest = _forest_folder(tmp_path / "rf")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    served = load_model_folder(folder, name="rf", version="1", trusted_source=True, compiled_cache=blocker / "c")
    assert (served.predict(X) == forest.predict(X)).all()


_CLI_LOAD = """
import sys
from capstan.cli.serve_cmds import load_model
model, _ = load_model(sys.argv[1], None)
print(type(model).__name__, model.predict([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]).tolist())
print(sorted(m for m in ("sklearn", "scipy", "pandas", "skops", "joblib") if m in sys.modules))
"""


@pytest.mark.parametrize("fmt", ["pickle", "skops"])
def test_capstan_serve_loads_a_cached_forest_without_importing_sklearn(tmp_path: Path, fmt: str) -> None:
    home = tmp_path / "home"
    forest = RandomForestClassifier(n_estimators=8, random_state=0).fit(X, Y)
    with Client(Settings.for_home(home)) as client:
        run_id = client.create_run(client.create_experiment("cold")).info.run_id
        client.log_model(run_id, forest, "model", registered_model_name="rf", serialization_format=fmt)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSTAN_")} | {"CAPSTAN_HOME": str(home)}
    expected = forest.predict([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]).tolist()
    outputs = [subprocess.run([sys.executable, "-c", _CLI_LOAD, "models:/rf/1"], env=env, capture_output=True,
                              text=True, check=True, timeout=120).stdout.splitlines() for _ in range(2)]
    first, hit = outputs
    assert first[0] == hit[0] == f"TreeEnsembleServedModel {expected}"
    assert first[1] == "[]"  # the first start compiles the forest in a child process, which writes the cache
    assert len(list((home / "serving-cache").glob("*.npz"))) == 1
    assert hit[1] == "[]"


def test_a_model_without_trees_never_starts_the_compiler(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    from capstan.serving.tree_compiler import may_hold_trees

    folder = tmp_path / "lr"
    save_model(LogisticRegression(max_iter=500).fit(X, Y), folder, serialization_format="pickle")
    forest_folder, _ = _forest_folder(tmp_path / "rf", "skops")
    assert not may_hold_trees(folder / "model.pkl", "pickle")
    assert may_hold_trees(forest_folder / "model.skops", "skops")
    cache = tmp_path / "cache"
    served = load_model_folder(folder, name="lr", version="1", trusted_source=True, compiled_cache=cache)
    assert isinstance(served, SklearnServedModel)
    assert not cache.exists() or not any(cache.iterdir())

"""Model loading for serving: a model URI or folder becomes a `ServedModel`, verified and only as trusted as its source.

- ``load_served_model(source, uri, name, trusted_local=...)``: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
  ``models:/NAME/latest``, ``models:/MODEL_ID`` and ``runs:/RUN_ID/PATH`` are fetched through a `ModelSource`
  (`capstan.sdk.model_source.BackendModelSource` over the local stores or a server), anything else is a local folder.
- ``load_model_folder(folder, name=, version=, digests=, trusted_source=)``: an already-downloaded folder.

Verification: a fetched folder comes with the sha256 the artifact store recorded for each file; every file on disk
must have one and match it, or nothing is loaded (`ModelFileUnverified` names the file).

Trust: pickle-based formats (pickle, cloudpickle, joblib), ``capstan_python`` classes, MLflow pyfunc models and
TorchScript run or unpickle code from the folder. They load only from a trusted source: the registry or a run
(always, the caller's read access having been checked by the backend), or a local folder the user named on the
command line (``trusted_local=True``). A local path that arrived over HTTP (a deployment spec) is untrusted: only
ONNX and skops files load from it, and skops then trusts only its own default types.

Compiled trees: a scikit-learn decision tree, random forest or extra-trees model is served as
`capstan.serving.served_trees.CompiledTrees`. Given a ``compiled_cache`` folder, the compiled arrays are kept there as
``<sha256 of the model file>.npz``; the next load of the same file reads that instead of unpickling, without
importing scikit-learn. The first load compiles in a short-lived child process (`capstan.serving.tree_compiler`), so
even that serving process never imports scikit-learn. An entry is written only by a load under the rules above (the
child gets the same trust); reading one runs no code (numeric and string arrays, ``allow_pickle=False``), and a
damaged entry is compiled again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import tempfile
import weakref
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from capstan.errors import InvalidParameterValue, InvalidState, PermissionDenied
from capstan.models import python_class
from capstan.models import sklearn as sklearn_flavor
from capstan.models.format import read_mlmodel
from capstan.serving import tree_compiler
from capstan.serving.model import ServedModel, SklearnServedModel
from capstan.serving.oip import TensorMetadata
from capstan.serving.served_function import input_from_signature
from capstan.serving.served_trees import CompiledTrees, TreeEnsembleServedModel, compile_trees

__all__ = ["FetchedModel", "LoadedModel", "ModelFileUnverified", "ModelSource", "UntrustedModelSource",
           "load_model_folder", "load_served", "load_served_model", "verify_folder"]

_HASH_CHUNK = 1024 * 1024
_log = logging.getLogger(__name__)


class ModelFileUnverified(InvalidState):
    """A model file whose content is not the sha256 the artifact store recorded, or has no recorded sha256."""


class UntrustedModelSource(PermissionDenied):
    """A model format that runs code (pickle, a Python class...) asked for from a source that is not trusted."""


@dataclass(frozen=True, slots=True)
class FetchedModel:
    """A model folder fetched from the registry or a run: where it is on this machine, the name and version to serve
    it as, and the sha256 recorded for each file (path relative to ``folder`` -> hex digest, ``None`` if unknown)."""

    folder: Path
    name: str
    version: str
    digests: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A served model and the folder it was loaded from (which holds, e.g., its drift reference). A fetched folder
    is a temporary copy that lives as long as ``model`` does."""

    model: ServedModel
    folder: Path


class ModelSource(Protocol):
    """Where registry and run models come from (the SDK's backends, through `BackendModelSource`)."""

    def fetch(self, uri: str, dest: Path) -> FetchedModel:
        """Download the model folder at ``uri`` (``models:/...`` or ``runs:/...``) below ``dest``, with digests."""
        ...


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_folder(folder: Path, digests: Mapping[str, str | None]) -> None:
    """Check every file below ``folder`` against ``digests``; raise `ModelFileUnverified` naming the first file that
    has no recorded sha256, differs from it, or is recorded but missing."""
    on_disk = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    for rel in sorted(on_disk):
        recorded = digests.get(rel)
        if not recorded:
            raise ModelFileUnverified(f"model file {rel!r} has no sha256 recorded by the artifact store; "
                                      "refusing to load it unverified")
        actual = _sha256(on_disk[rel])
        if actual != recorded:
            raise ModelFileUnverified(
                f"model file {rel!r} does not match the sha256 the artifact store recorded (recorded "
                f"{recorded[:12]}..., downloaded {actual[:12]}...); refusing to load it")
    missing = sorted(set(digests) - set(on_disk))
    if missing:
        raise ModelFileUnverified(f"model file {missing[0]!r} is recorded in the artifact store but was not downloaded")


def _require_trust(trusted: bool, name: str, what: str) -> None:
    if not trusted:
        raise UntrustedModelSource(
            f"model {name!r} is {what}, which runs code when loaded; it loads only from the registry, a run, or a "
            "local folder given on the command line, not from a path received over HTTP")


def _sklearn(folder: Path, conf: Mapping[str, Any], mlmodel: Mapping[str, Any], *, name: str, version: str,
             trusted: bool, digests: Mapping[str, str | None] | None, compiled_cache: Path | None) -> ServedModel:
    file, fmt = sklearn_flavor.model_file(folder, conf)
    if fmt in sklearn_flavor.PICKLE_FORMATS:
        _require_trust(trusted, name, f"a scikit-learn model stored with {fmt}")
    cached = _compiled_entry(folder, file, digests, compiled_cache)
    trees = _read_compiled(cached) if cached is not None else None
    if trees is None and cached is not None and _compiles_in_child(folder, conf, file, fmt, cached, trusted=trusted):
        trees = _read_compiled(cached)
    if trees is not None:
        return TreeEnsembleServedModel(name, version, trees, input=_served_input(mlmodel, trees.n_features))
    estimator = sklearn_flavor.load(folder, conf, trust_recorded_types=trusted)
    n_features = getattr(estimator, "n_features_in_", None)
    if not isinstance(n_features, int):
        raise InvalidParameterValue(f"model {name!r} has no n_features_in_: it is not a fitted scikit-learn estimator")
    served_input = _served_input(mlmodel, n_features)
    trees = compile_trees(estimator)
    if trees is None:
        return SklearnServedModel(name, version, estimator, n_features, input=served_input)
    if cached is not None:
        _write_compiled(trees, cached)
    return TreeEnsembleServedModel(name, version, trees, input=served_input)


def _compiles_in_child(folder: Path, conf: Mapping[str, Any], file: Path, fmt: str, entry: Path, *,
                       trusted: bool) -> bool:
    """Whether a child process compiled the model into cache ``entry`` (see `capstan.serving.tree_compiler`); a
    model found not to be a tree ensemble is marked so that later loads skip the child."""
    marker = tree_compiler.plain_marker(entry)
    if marker.exists() or not tree_compiler.may_hold_trees(file, fmt):
        return False
    status = tree_compiler.compile_in_child(folder, conf, entry, trusted=trusted)
    if status == tree_compiler.NOT_TREES:
        with contextlib.suppress(OSError):  # without the marker the next start only tries the child again
            marker.touch()
    return status == 0


def _served_input(mlmodel: Mapping[str, Any], n_features: int) -> TensorMetadata | None:
    """The input the signature declares, as ``[-1, n_features]``, when it fits the estimator; else None."""
    declared = input_from_signature(mlmodel.get("signature"))
    fits = declared is not None and len(declared.shape) == 2 and declared.shape[1] in (-1, n_features)
    return TensorMetadata(declared.name, declared.datatype, (-1, n_features)) if declared and fits else None


def _compiled_entry(folder: Path, file: Path, digests: Mapping[str, str | None] | None,
                    compiled_cache: Path | None) -> Path | None:
    """``<compiled_cache>/<sha256 of file>.npz`` (the verified digest when there is one), or None without a cache
    or a model file."""
    if compiled_cache is None or not file.is_file():
        return None
    recorded = (digests or {}).get(file.relative_to(folder).as_posix())
    sha256 = recorded or _sha256(file)
    if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
        return None
    return compiled_cache / f"{sha256}.npz"


def _read_compiled(entry: Path) -> CompiledTrees | None:
    """The compiled trees in cache ``entry``, or None when there is none or it cannot be used (compiled again)."""
    if not entry.is_file():
        return None
    try:
        return CompiledTrees.load(entry)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        _log.warning("compiled trees %s cannot be used (%s); compiling the model again", entry, exc)
        return None


def _write_compiled(trees: CompiledTrees, entry: Path) -> None:
    """Store ``trees`` at cache ``entry``; a cache that cannot be written only costs the next start its time."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        trees.save(entry)
    except OSError as exc:
        _log.warning("could not write compiled trees to %s: %s", entry, exc)


def _load_flavor(folder: Path, mlmodel: Mapping[str, Any], *, name: str, version: str, trusted: bool,
                 digests: Mapping[str, str | None] | None = None, compiled_cache: Path | None = None) -> ServedModel:
    from capstan.serving import served_onnx, served_python, served_torch

    flavors: Mapping[str, Any] = mlmodel["flavors"]
    signature = mlmodel.get("signature")
    pyfunc = flavors.get("python_function") or {}
    if python_class.FLAVOR_NAME in flavors:
        _require_trust(trusted, name, "a Python class model")
        return served_python.load_python_class(folder, flavors[python_class.FLAVOR_NAME], name=name,
                                               version=version, signature=signature)
    if served_onnx.FLAVOR_NAME in flavors:
        return served_onnx.load_onnx(folder, flavors[served_onnx.FLAVOR_NAME], name=name, version=version,
                                     signature=signature)
    if sklearn_flavor.FLAVOR_NAME in flavors or pyfunc.get("loader_module") == "mlflow.sklearn":
        conf = flavors.get(sklearn_flavor.FLAVOR_NAME) or pyfunc
        return _sklearn(folder, conf, mlmodel, name=name, version=version, trusted=trusted, digests=digests,
                        compiled_cache=compiled_cache)
    torch_conf = flavors.get(served_torch.FLAVOR_NAME)
    if torch_conf is not None and (not pyfunc or served_torch.is_torchscript(
            folder / str(torch_conf.get("model_data") or "data") / "model.pth")):
        _require_trust(trusted, name, "a TorchScript model")
        return served_torch.load_torchscript(folder, torch_conf, name=name, version=version, signature=signature)
    if pyfunc:
        _require_trust(trusted, name, f"an MLflow pyfunc model (loader {pyfunc.get('loader_module') or '?'})")
        return served_python.load_mlflow_pyfunc(folder, flavors, name=name, version=version, signature=signature)
    raise InvalidParameterValue(
        f"model {name!r} has flavors {', '.join(sorted(flavors)) or 'none'}; Capstan serves sklearn, onnx, "
        "pytorch (TorchScript), capstan_python and MLflow python_function models")


def load_model_folder(folder: str | Path, *, name: str, version: str, digests: Mapping[str, str | None] | None = None,
                      trusted_source: bool, compiled_cache: Path | None = None) -> ServedModel:
    """The model in ``folder`` (holding an ``MLmodel`` file) as a `ServedModel` named ``name``, version ``version``.

    ``digests`` (relative path -> recorded sha256): when given, every file is verified first (`verify_folder`);
    pass it for anything downloaded from the artifact store. ``trusted_source``: true only for the registry, a run,
    or a folder the user named on the command line; false lets only ONNX and skops (default types) load.
    ``compiled_cache``: the folder of compiled tree ensembles (see the module's docstring); None compiles in memory.
    """
    path = Path(folder)
    if digests is not None:
        verify_folder(path, digests)
    mlmodel = read_mlmodel(path)
    return _load_flavor(path, mlmodel, name=name, version=version, trusted=trusted_source, digests=digests,
                        compiled_cache=compiled_cache)


def load_served_model(source: ModelSource, uri: str, name: str | None = None, *, trusted_local: bool,
                      compiled_cache: Path | None = None) -> ServedModel:
    """The model at ``uri`` as a `ServedModel` named ``name`` (default: the registered model's name, the logged
    model's name or the folder's name).

    Registry and run URIs are fetched through ``source`` and verified against the recorded sha256 of every file;
    their models are trusted. A local folder is loaded in place, unverified, and trusted only when
    ``trusted_local`` (the user typed the path on the command line; false for paths that came over HTTP).
    ``compiled_cache``: where compiled tree ensembles are kept between loads (e.g. ``Settings.home /
    "serving-cache"``); None compiles them in memory only.
    """
    return load_served(source, uri, name, trusted_local=trusted_local, compiled_cache=compiled_cache).model


def load_served(source: ModelSource, uri: str, name: str | None = None, *, trusted_local: bool,
                compiled_cache: Path | None = None) -> LoadedModel:
    """`load_served_model`, also returning the folder the model was loaded from."""
    if not uri.startswith(("models:/", "runs:/")):
        local = Path(uri.removeprefix("file://"))
        if not local.is_dir():
            raise InvalidParameterValue(
                f"model uri: {uri!r} is not models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN/PATH or a folder")
        resolved = local.resolve()
        model = load_model_folder(resolved, name=name or resolved.name, version="1", trusted_source=trusted_local,
                                  compiled_cache=compiled_cache)
        return LoadedModel(model, resolved)
    tmp = Path(tempfile.mkdtemp(prefix="capstan-serve-"))
    try:
        fetched = source.fetch(uri, tmp)
        model = load_model_folder(fetched.folder, name=name or fetched.name, version=fetched.version,
                                  digests=fetched.digests, trusted_source=True, compiled_cache=compiled_cache)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # A Python class may read its data/ or import code/ lazily: the folder lives as long as the model.
    weakref.finalize(model, shutil.rmtree, tmp, True)
    return LoadedModel(model, fetched.folder)

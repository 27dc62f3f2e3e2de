"""TorchScript models served through torch, the ``torch`` extra.

The layout is MLflow's ``pytorch`` flavor (``model_data: data``, the model in ``data/model.pth``) holding a
TorchScript archive, as ``mlflow.pytorch.log_model`` writes for a ``torch.jit.script``/``trace`` module. A
``model.pth`` written by ``torch.save`` (a pickled eager module) is refused: it needs the model's Python classes and
unpickling, so export the module with TorchScript (or ONNX) to serve it. The input is the signature's tensor when
there is one, else FP32 ``[-1, -1]``; the output is the module's first (or only) result.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from capstan.errors import InvalidParameterValue
from capstan.serving.oip import TensorMetadata
from capstan.serving.served_function import Array, FunctionServedModel, input_from_signature, output_from_signature

FLAVOR_NAME = "pytorch"
PLATFORM = "pytorch_torchscript"


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise InvalidParameterValue(
            "this model is a TorchScript model, which needs torch: pip install 'capstan[torch]'") from None
    return torch


def is_torchscript(file: Path) -> bool:
    """True when ``file`` is a TorchScript archive (a zip holding ``constants.pkl`` and compiled ``code/``)."""
    try:
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def load_torchscript(folder: Path, conf: Mapping[str, Any], *, name: str, version: str,
                     signature: Mapping[str, Any] | None) -> FunctionServedModel:
    """The TorchScript module of the model folder ``folder`` (``pytorch`` flavor entry ``conf``), on the CPU."""
    file = folder / str(conf.get("model_data") or "data") / "model.pth"
    if not file.is_file():
        raise InvalidParameterValue(f"model {name!r}: the pytorch model folder has no {file.relative_to(folder)}")
    if not is_torchscript(file):
        raise InvalidParameterValue(
            f"model {name!r}: {file.name} is a pickled PyTorch module, not TorchScript; Capstan serves TorchScript "
            "(torch.jit.script or torch.jit.trace before logging) or ONNX")
    torch = _import_torch()
    module = torch.jit.load(str(file), map_location="cpu")
    module.eval()
    declared = input_from_signature(signature)
    served_input = declared or TensorMetadata("input-0", "FP32", (-1, -1))
    output = output_from_signature(signature) or TensorMetadata("output-0", "FP32", (-1,))

    def predict(x: Array) -> Array:
        with torch.inference_mode():
            result = module(torch.from_numpy(np.ascontiguousarray(x)))
        if isinstance(result, tuple | list):
            result = result[0]
        return np.asarray(result.detach().numpy())

    return FunctionServedModel(name, version, PLATFORM, predict, served_input, output)

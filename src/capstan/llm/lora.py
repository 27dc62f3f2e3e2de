"""An adapter's engine: the base model loaded again, the LoRA adapter applied with peft and merged into its weights.

`merged_engine_factory` is the ``make_engine`` of `capstan.llm.adapters.MultiAdapterEngine`. Each adapter engine
holds its own merged copy of the base model (decision 0630): transformers' continuous batching runs one set of
weights per batch and peft's mixed-adapter batches do not reach into it, so a merged copy per loaded adapter is what
keeps every adapter request continuously batched at the base model's speed. Its memory (one model per adapter
engine) is bounded by the engine's ``capacity``.

torch, transformers and peft are imported when an adapter is loaded, never at import time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from capstan.errors import InvalidParameterValue, InvalidState
from capstan.llm.ports import AdapterRef, GenerationEngine

__all__ = ["load_merged", "merged_engine_factory", "peft_folder", "pretrained_folder"]


def pretrained_folder(folder: str | Path, *, marker: str = "config.json") -> Path:
    """The ``save_pretrained`` folder of a model folder: ``folder`` itself when it holds ``marker``, else the
    ``model_binary`` subfolder its MLmodel's ``transformers`` flavor names."""
    path = Path(folder)
    if (path / marker).is_file():
        return path
    if (path / "MLmodel").is_file():
        from capstan.models.format import read_mlmodel

        flavor = read_mlmodel(path)["flavors"].get("transformers")
        if isinstance(flavor, dict):
            inner = path / str(flavor.get("model_binary") or "model")
            if (inner / marker).is_file():
                return inner
    raise InvalidParameterValue(f"{str(path)!r} holds no {marker} (not a transformers model folder)")


def peft_folder(folder: str | Path) -> Path:
    """The folder peft's ``save_pretrained`` wrote (``adapter_config.json``) inside an adapter's model folder."""
    return pretrained_folder(folder, marker="adapter_config.json")


def _require_peft() -> None:
    try:
        import peft  # noqa: F401  # imported only to check that the extra is installed
        import torch  # noqa: F401  # imported only to check that the extra is installed
        import transformers  # noqa: F401  # imported only to check that the extra is installed
    except ImportError as exc:
        raise InvalidState(f"serving LoRA adapters needs torch, transformers and peft, which are not installed "
                           f"({exc.name}): pip install 'capstan[llm]'") from None


def load_merged(base_folder: str | Path, adapter_folder: str | Path, *, device: str | None = None,
                dtype: Any = None) -> Any:
    """The base model from ``base_folder`` with the adapter in ``adapter_folder`` merged into it, in eval mode, on
    ``device`` (default: where transformers puts it). Offline: only local files are read."""
    _require_peft()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    base = AutoModelForCausalLM.from_pretrained(str(pretrained_folder(base_folder)), **kwargs)
    try:
        adapted = PeftModel.from_pretrained(base, str(peft_folder(adapter_folder)), is_trainable=False)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidState(f"LoRA adapter {str(adapter_folder)!r} does not fit its base model: {first}") from None
    merged = adapted.merge_and_unload()
    if device is not None:
        merged = merged.to(device)
    return merged.eval()


def merged_engine_factory(base_folder: str | Path, build_engine: Callable[[Any], GenerationEngine], *,
                          device: str | None = None, dtype: Any = None) -> Callable[[AdapterRef], GenerationEngine]:
    """``make_engine`` for `capstan.llm.adapters.MultiAdapterEngine`: for an adapter, the base model in
    ``base_folder`` with the adapter merged (`load_merged`), handed to ``build_engine`` (e.g. ``lambda model:
    TransformersEngine(model, tokenizer)``: the adapter shares the base model's tokenizer)."""

    def make_engine(ref: AdapterRef) -> GenerationEngine:
        return build_engine(load_merged(base_folder, ref.path, device=device, dtype=dtype))

    return make_engine

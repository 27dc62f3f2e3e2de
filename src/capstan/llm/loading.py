"""Loading a language model for serving: a model folder becomes a `LanguageModel`, offline.

`load_language_model(folder, name=, version=, backend=, device=, max_batch_size=)` takes

- a model folder whose ``MLmodel`` has the ``transformers`` flavor (`capstan.models.transformers_flavor`): the
  ``save_pretrained`` output is its ``model_binary`` subfolder, its ``task`` says generation or embeddings;
- a bare folder transformers' ``save_pretrained`` wrote (``config.json``, weights and tokenizer files), as
  ``vllm serve DIR`` takes, or a sentence-transformers folder (``modules.json``): an embedding model.

A generative model gets a tokenizer (`capstan.llm.hf_tokenizer.HfTokenizer`) and an engine: transformers'
continuous batching (`capstan.llm.transformers_engine`) or vLLM (`capstan.llm.vllm_engine`, ``backend="vllm"``).
An embedding model gets a `capstan.llm.embedder.SentenceEmbedder` and no engine.

Weights are never fetched from a hub: the process is put in Hugging Face's offline mode (``HF_HUB_OFFLINE``,
``TRANSFORMERS_OFFLINE``) before transformers is imported, every load passes ``local_files_only``, and the folder is
checked first, so a missing weights, config or tokenizer file is one line naming the file (`check_folder`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from capstan.errors import InvalidParameterValue, InvalidState
from capstan.llm.ports import AdapterRef, AdapterSource, GenerationEngine, LanguageModel
from capstan.models import transformers_flavor as flavor

__all__ = ["BACKENDS", "DEVICE_PATTERN", "VLLM_EXTRA", "Backend", "ModelFolder", "check_device", "check_folder",
           "is_language_model_folder", "load_language_model", "model_folder", "set_offline"]

Backend = Literal["transformers", "vllm"]
BACKENDS: tuple[Backend, ...] = ("transformers", "vllm")
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
VLLM_EXTRA = "pip install 'capstan[vllm]'"
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER = ("tokenizer.json", "tokenizer_config.json")


def set_offline() -> None:
    """Hugging Face's offline mode for this process: nothing is looked up or downloaded from a hub. Set before
    transformers and huggingface_hub are imported (they read it then); ``local_files_only`` covers a later call."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@dataclass(frozen=True, slots=True)
class ModelFolder:
    """What a language-model folder holds: the ``save_pretrained`` folder, its task, its context window (None: the
    model's config decides), and the flavor's entry (empty for a bare folder)."""

    weights: Path
    task: str
    context_length: int | None
    conf: Mapping[str, Any]

    @property
    def is_embedding(self) -> bool:
        """Whether it is a sentence-embedding model."""
        return self.task == flavor.EMBEDDING_TASK

    @property
    def adapter(self) -> Mapping[str, Any] | None:
        """The flavor's ``adapter`` entry when the folder is a LoRA adapter."""
        found = self.conf.get("adapter")
        return found if isinstance(found, Mapping) else None


def _mlmodel_flavor(folder: Path) -> Mapping[str, Any] | None:
    """The ``transformers`` entry of the folder's MLmodel; None without an MLmodel or that flavor."""
    if not (folder / "MLmodel").is_file():
        return None
    from capstan.models.format import read_mlmodel

    conf = read_mlmodel(folder)["flavors"].get(flavor.FLAVOR_NAME)
    return conf if isinstance(conf, Mapping) else None


def is_language_model_folder(folder: Path) -> bool:
    """Whether ``folder`` is a model folder with the ``transformers`` flavor, or a bare ``save_pretrained`` or
    sentence-transformers folder (no MLmodel)."""
    if not folder.is_dir():
        return False
    if (folder / "MLmodel").is_file():
        return _mlmodel_flavor(folder) is not None
    return flavor.is_pretrained_folder(folder)


def model_folder(folder: str | Path) -> ModelFolder:
    """Read what ``folder`` holds (see `is_language_model_folder`); `InvalidParameterValue` when it is neither."""
    path = Path(folder)
    if not path.is_dir():
        raise InvalidParameterValue(f"model folder {str(path)!r} does not exist")
    conf = _mlmodel_flavor(path)
    if conf is None and (path / "MLmodel").is_file():
        raise InvalidParameterValue(f"model folder {str(path)!r} has no transformers flavor (not a language model)")
    if conf is None:
        if not flavor.is_pretrained_folder(path):
            raise InvalidParameterValue(f"{str(path)!r} is not a language model folder: it has no MLmodel, "
                                        "config.json or modules.json")
        weights, conf = path, flavor.flavor_conf(path)
    else:
        weights = path / str(conf.get("model_binary") or flavor.MODEL_FOLDER)
        if not weights.is_dir():
            raise InvalidParameterValue(f"model folder {str(path)!r} has no {weights.name}/ subfolder (the "
                                        "transformers flavor's model_binary)")
    context = conf.get("context_length")
    return ModelFolder(weights, str(conf.get("task") or flavor.GENERATION_TASK),
                       context if isinstance(context, int) else None, dict(conf))


def check_folder(found: ModelFolder) -> None:
    """Refuse, naming the missing file, a folder that lacks what loading needs: the config, the weights (every shard
    an index names) and, for generation, the tokenizer. Run before any library is imported."""
    where = str(found.weights)
    if found.adapter is not None:
        raise InvalidParameterValue(
            f"{where!r} is a LoRA adapter of {found.adapter.get('base_model')!r}: serve its base model, which serves "
            "its adapters by name (the model field)")
    if found.is_embedding:
        _check_embedding(found.weights)
        return
    if not (found.weights / "config.json").is_file():
        raise InvalidParameterValue(f"model folder {where!r} has no config.json")
    present = [name for name in _WEIGHTS if (found.weights / name).is_file()]
    if not present:
        raise InvalidParameterValue(f"model folder {where!r} has no weights file ({', '.join(_WEIGHTS)}); weights "
                                    "are never downloaded")
    if present[0].endswith(".index.json"):
        _check_shards(found.weights / present[0])
    if not any((found.weights / name).is_file() for name in _TOKENIZER):
        raise InvalidParameterValue(f"model folder {where!r} has no tokenizer files ({' or '.join(_TOKENIZER)}): "
                                    "save the tokenizer with the model (log_model(model, name, tokenizer=...))")


def _check_shards(index: Path) -> None:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
    except (OSError, ValueError, AttributeError) as exc:
        raise InvalidParameterValue(f"weights index {str(index)!r} cannot be read: {exc}") from None
    for shard in sorted(set(map(str, weight_map.values()))):
        if not (index.parent / shard).is_file():
            raise InvalidParameterValue(f"model folder {str(index.parent)!r} has no weights file {shard!r} (named "
                                        f"by {index.name}); weights are never downloaded")


def _check_embedding(folder: Path) -> None:
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidParameterValue(f"embedding model folder {str(folder)!r}: modules.json cannot be read "
                                    f"({exc})") from None
    for module in modules if isinstance(modules, list) else []:
        if not isinstance(module, dict) or not str(module.get("type", "")).endswith(".Transformer"):
            continue
        sub = folder / str(module.get("path") or "")
        if not any((sub / name).is_file() for name in _WEIGHTS):
            raise InvalidParameterValue(f"embedding model folder {str(sub)!r} has no weights file "
                                            f"({', '.join(_WEIGHTS)}); weights are never downloaded")


def check_device(device: str) -> None:
    """Refuse a device string that is not ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N`` (pure)."""
    if not DEVICE_PATTERN.fullmatch(device):
        raise InvalidParameterValue(f"device: {device!r} is not auto, cpu, cuda, cuda:N or mps")


def resolve_device(device: str) -> str:
    """``auto``: the first CUDA device when there is one, else the CPU; any other device must be present."""
    check_device(device)
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise InvalidParameterValue(f"device: {device!r} is not available here (CUDA devices: "
                                        f"{torch.cuda.device_count() if torch.cuda.is_available() else 0})")
    if device == "mps" and not torch.backends.mps.is_available():
        raise InvalidParameterValue("device: 'mps' is not available here")
    return device


def load_language_model(folder: str | Path, *, name: str, version: str = "1", backend: str = "transformers",
                        device: str = "auto", max_batch_size: int = 8, adapters: AdapterSource | None = None,
                        max_adapters: int = 4, started: float | None = None,
                        clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                        details: Mapping[str, str] | None = None,
                        gpu_memory_utilization: float | None = None) -> LanguageModel:
    """The language model in ``folder`` served as ``name``/``version`` (see the module docstring).

    ``backend``: ``transformers`` or ``vllm``; ``device``: ``auto``, ``cpu``, ``cuda[:N]`` or ``mps`` (the
    transformers backend; vLLM runs where its build does, so only ``auto`` goes with it); ``max_batch_size``: the
    sequences generated at once. ``adapters``: the LoRA adapters this base model serves by name (at most
    ``max_adapters`` loaded at once). ``started``: the ``clock`` time fetching began, so ``load_seconds`` is the
    whole cold start (default: now); ``wall_clock`` gives ``created``. ``details`` are added to the model's (e.g.
    where the cache found it). ``gpu_memory_utilization`` (vLLM only): the share of the device's memory vLLM reserves
    for weights and KV cache, on a CPU build the share of the machine's memory (vLLM's default 0.9 when None)."""
    begun = clock() if started is None else started
    found = _checked(folder, backend, device, max_batch_size)
    if gpu_memory_utilization is not None and backend != "vllm":
        raise InvalidParameterValue("gpu_memory_utilization: only the vllm backend reserves memory up front")
    if gpu_memory_utilization is not None and not 0.0 < gpu_memory_utilization <= 1.0:
        raise InvalidParameterValue(f"gpu_memory_utilization: must be in (0, 1], got {gpu_memory_utilization}")
    set_offline()
    info = {"backend": backend, "task": found.task, **dict(details or {})}
    if found.is_embedding:
        flavor.require_llm_extra("torch", "transformers", "sentence_transformers")
        from capstan.llm.embedder import SentenceEmbedder

        resolved = resolve_device(device)
        embedder = SentenceEmbedder.from_folder(found.weights, device=resolved)
        return LanguageModel(name, version, None, embedder=embedder, created=int(wall_clock()),
                             load_seconds=clock() - begun, details={**info, "device": resolved})
    with_lora = False
    if backend == "vllm":
        # vLLM fixes LoRA support when it starts, and some architectures (GPT-2) have none: only with adapters
        with_lora = adapters is not None and bool(adapters.names())
        tokenizer, engine, resolved = _vllm(found, max_batch_size, gpu_memory_utilization, with_lora)
    else:
        tokenizer, engine, resolved = _transformers(found, device, max_batch_size)
    model = LanguageModel(name, version, tokenizer, engine=engine, created=int(wall_clock()),
                          details={**info, "device": resolved, "max_batch_size": str(max_batch_size)})
    if adapters is not None and (backend != "vllm" or with_lora):
        model = _with_adapters(model, found, adapters, backend, resolved, max_batch_size, max_adapters)
    from dataclasses import replace

    return replace(model, load_seconds=clock() - begun)


def _checked(folder: str | Path, backend: str, device: str, max_batch_size: int) -> ModelFolder:
    """What ``folder`` holds, after refusing options and folders that cannot load (no library imported yet)."""
    if backend not in BACKENDS:
        raise InvalidParameterValue(f"backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    if max_batch_size < 1:
        raise InvalidParameterValue(f"max_batch_size: must be at least 1, got {max_batch_size}")
    check_device(device)
    found = model_folder(folder)
    check_folder(found)
    if backend == "vllm" and device != "auto":
        raise InvalidParameterValue(f"device: {device!r} cannot be chosen with the vllm backend (vLLM runs on the "
                                    "device its build targets); leave it at auto")
    if backend == "vllm" and found.is_embedding:
        raise InvalidParameterValue("backend: 'vllm' serves generative models; this is an embedding model (serve it "
                                    "with the transformers backend)")
    return found


class _PeftFolders:
    """An `AdapterSource` whose adapters point at the folder peft wrote (inside each adapter's model folder), the
    folder vLLM's ``LoRARequest`` reads."""

    def __init__(self, source: AdapterSource) -> None:
        self._source = source

    def names(self) -> tuple[str, ...]:
        return self._source.names()

    def fetch(self, name: str) -> AdapterRef | None:
        from capstan.llm.lora import peft_folder

        ref = self._source.fetch(name)
        return None if ref is None else AdapterRef(ref.name, str(peft_folder(ref.path)))


def _transformers(found: ModelFolder, device: str, max_batch_size: int) -> tuple[Any, GenerationEngine, str]:
    flavor.require_llm_extra("torch", "transformers")
    from capstan.llm.hf_tokenizer import HfTokenizer
    from capstan.llm.transformers_engine import TransformersEngine

    resolved = resolve_device(device)
    tokenizer = HfTokenizer.from_pretrained(found.weights)
    engine = TransformersEngine.from_pretrained(found.weights, tokenizer, device=resolved,
                                                max_batch_size=max_batch_size)
    return tokenizer, engine, resolved


def _vllm(found: ModelFolder, max_batch_size: int, gpu_memory_utilization: float | None,
          with_lora: bool) -> tuple[Any, GenerationEngine, str]:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise InvalidState(f"--backend vllm needs vLLM, which is not installed: {VLLM_EXTRA}")
    flavor.require_llm_extra("transformers")
    from capstan.llm.hf_tokenizer import HfTokenizer
    from capstan.llm.vllm_engine import VllmEngine, VllmOptions

    options = VllmOptions(max_model_len=found.context_length, max_num_seqs=max_batch_size, enable_lora=with_lora)
    if gpu_memory_utilization is not None:
        options = dataclasses.replace(options, gpu_memory_utilization=gpu_memory_utilization)
    return HfTokenizer.from_pretrained(found.weights), VllmEngine(str(found.weights), options), "vllm"


def _with_adapters(model: LanguageModel, found: ModelFolder, adapters: AdapterSource, backend: str, device: str,
                   max_batch_size: int, capacity: int) -> LanguageModel:
    """vLLM applies adapters itself (the request's `AdapterRef`); with transformers each adapter gets an engine over
    the base model with the adapter merged (`capstan.llm.lora`), at most ``capacity`` at once."""
    from dataclasses import replace

    if backend == "vllm":
        return replace(model, adapters=_PeftFolders(adapters))
    from capstan.llm.adapters import with_adapters
    from capstan.llm.lora import merged_engine_factory
    from capstan.llm.transformers_engine import TransformersEngine, context_length_of

    tokenizer = model.tokenizer
    if tokenizer is None:
        raise InvalidState(f"model {model.name!r} has no tokenizer to share with its adapters")

    def build(merged: Any) -> GenerationEngine:
        return TransformersEngine(merged, tokenizer, context_length=context_length_of(merged),
                                  max_batch_size=max_batch_size)

    return with_adapters(model, adapters, merged_engine_factory(found.weights, build, device=device),
                         capacity=capacity)

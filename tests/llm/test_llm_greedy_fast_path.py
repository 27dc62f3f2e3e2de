"""The greedy fast path of the transformers engine's processors (decision 0613): a batch of greedy rows skips
transformers' temperature/top-k/top-p warpers and takes the argmax; a batch mixing greedy and sampled rows goes
through the warpers, and its greedy rows still decode as ``generate(do_sample=False)``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capstan.llm.hf_tokenizer import HfTokenizer
from capstan.llm.ports import GenerationRequest, SamplingParams
from capstan.llm.transformers_engine import TransformersEngine

PROMPTS = ["hello world", "the quick brown fox jumps", "a model serves", "numbers 0 1 2"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[TransformersEngine]:
    import torch

    torch.set_num_threads(1)
    tokenizer = HfTokenizer.from_pretrained(tiny_model_dir)
    eng = TransformersEngine.from_pretrained(tiny_model_dir, tokenizer, device="cpu", max_batch_size=8)
    yield eng
    asyncio.run(eng.close())


def _request(engine: TransformersEngine, rid: str, text: str, **params: Any) -> GenerationRequest:
    tokenizer = engine._tokenizer  # the test reads back the tokenizer it gave
    return GenerationRequest(rid, tuple(tokenizer.encode(text)), SamplingParams(**params))


async def _tokens(engine: TransformersEngine, request: GenerationRequest) -> list[int]:
    return [t async for event in engine.generate(request) for t in event.token_ids]


def _generate(engine: TransformersEngine, request: GenerationRequest, tokens: int) -> list[int]:
    import torch

    out = engine.model.generate(torch.tensor([request.prompt_ids]), max_new_tokens=tokens, min_new_tokens=tokens,
                                do_sample=False)
    return [int(t) for t in out[0, len(request.prompt_ids):].tolist()]


class _CountCalls:
    """Wraps a processor in the manager's list and counts the calls that reached the warper inside it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def __call__(self, scores: Any, tensor_arg: Any) -> Any:
        self.calls += 1
        return self.inner(scores, tensor_arg)

    def __getattr__(self, name: str) -> Any:  # fill_defaults, prepare_tensor_args: the warper's own
        return getattr(self.inner, name)


def _counted_warpers(engine: TransformersEngine) -> list[_CountCalls]:
    """Make each skippable warper of the running manager count the calls it passes to transformers' warper."""
    asyncio.run(engine.start())
    manager: Any = engine._manager  # the test inspects the manager the engine built
    counters = []
    for processor in manager.logit_processor.logits_processor:
        if hasattr(processor, "inner"):
            counter = _CountCalls(processor.inner)
            processor.inner = counter
            counters.append(counter)
    return counters


def test_greedy_batches_skip_the_warpers_and_mixed_batches_use_them(engine: TransformersEngine) -> None:
    counters = _counted_warpers(engine)
    assert len(counters) == 3  # temperature, top-k, top-p
    greedy = [_request(engine, f"g{i}", p, max_tokens=6, min_tokens=6, temperature=0.0) for i, p in enumerate(PROMPTS)]

    async def all_greedy() -> list[list[int]]:
        return list(await asyncio.gather(*(_tokens(engine, r) for r in greedy)))

    together = asyncio.run(all_greedy())
    assert [c.calls for c in counters] == [0, 0, 0]
    assert together == [_generate(engine, r, 6) for r in greedy]

    sampled = [_request(engine, f"s{i}", p, max_tokens=6, min_tokens=6, temperature=1.0, seed=3 + i)
               for i, p in enumerate(PROMPTS)]

    async def mixed() -> list[list[int]]:
        return list(await asyncio.gather(*(_tokens(engine, r) for pair in zip(greedy, sampled, strict=True)
                                           for r in pair)))

    results = asyncio.run(mixed())
    assert all(c.calls > 0 for c in counters)
    assert results[0::2] == together  # the greedy rows of a mixed batch still decode as generate does
    assert all(len(tokens) == 6 for tokens in results[1::2])

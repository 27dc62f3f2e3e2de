"""TransformersEngine on the tiny GPT-2: continuous batching through transformers' manager, exact token counts,
stop strings, n, seeds, cancellation and the context window."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capstan.errors import InvalidParameterValue
from capstan.llm.hf_tokenizer import HfTokenizer
from capstan.llm.ports import GenerationEvent, GenerationRequest, SamplingParams
from capstan.llm.transformers_engine import TransformersEngine

PROMPTS = ["hello world", "the quick brown fox jumps", "a model serves", "capstan runs pipelines, training jobs",
           "numbers 0 1 2", "user: what is the weather?", "punctuation , . !", "tiny language model for tests"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[TransformersEngine]:
    import torch

    torch.set_num_threads(1)
    tokenizer = HfTokenizer.from_pretrained(tiny_model_dir)
    eng = TransformersEngine.from_pretrained(tiny_model_dir, tokenizer, device="cpu", max_batch_size=8)
    yield eng
    asyncio.run(eng.close())


def _request(engine: TransformersEngine, rid: str, text: str, **params: Any) -> GenerationRequest:
    tok = _tokenizer(engine)
    return GenerationRequest(rid, tuple(tok.encode(text)), SamplingParams(**params))


def _tokenizer(engine: TransformersEngine) -> HfTokenizer:
    tok = engine._tokenizer  # the test reads back the tokenizer it gave
    assert isinstance(tok, HfTokenizer)
    return tok


async def _collect(engine: TransformersEngine, request: GenerationRequest) -> list[GenerationEvent]:
    return [event async for event in engine.generate(request)]


def _tokens(events: list[GenerationEvent], index: int = 0) -> list[int]:
    return [t for e in events if e.index == index for t in e.token_ids]


def _text(events: list[GenerationEvent], index: int = 0) -> str:
    return "".join(e.text for e in events if e.index == index)


def _greedy(i: int) -> dict[str, Any]:
    return {"max_tokens": 4 + 3 * i, "min_tokens": 4 + 3 * i, "temperature": 0.0}


def test_concurrent_requests_give_the_tokens_of_sequential_ones_and_of_generate(engine: TransformersEngine) -> None:
    import torch

    requests = [_request(engine, f"r{i}", p, **_greedy(i)) for i, p in enumerate(PROMPTS)]

    async def sequential() -> list[list[int]]:
        return [_tokens(await _collect(engine, r)) for r in requests]

    async def concurrent() -> list[list[GenerationEvent]]:
        return list(await asyncio.gather(*(_collect(engine, r) for r in requests)))

    one_at_a_time = asyncio.run(sequential())
    together = asyncio.run(concurrent())
    assert [_tokens(events) for events in together] == one_at_a_time
    model = engine.model
    for i, (request, events) in enumerate(zip(requests, together, strict=True)):
        out = model.generate(torch.tensor([request.prompt_ids]), max_new_tokens=4 + 3 * i, min_new_tokens=4 + 3 * i,
                             do_sample=False)
        assert _tokens(events) == out[0, len(request.prompt_ids):].tolist()
        last = events[-1]
        assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == (
            "length", len(request.prompt_ids), 4 + 3 * i)
        assert _text(events) == _tokenizer(engine).decode(_tokens(events))
        assert events[0].queued_s is not None and all(e.queued_s is None for e in events[1:])
    assert len({tuple(_tokens(e)) for e in together}) > 1  # the prompts lead to different continuations


def test_a_short_request_started_after_a_long_one_finishes_first(engine: TransformersEngine) -> None:
    finished: list[str] = []

    async def run(request: GenerationRequest, started: asyncio.Event | None = None) -> None:
        async for event in engine.generate(request):
            if started is not None:
                started.set()
            if event.finish_reason is not None:
                finished.append(request.request_id)

    async def scenario() -> None:
        started = asyncio.Event()
        long = asyncio.create_task(run(_request(engine, "long", "hello world", max_tokens=110, min_tokens=110,
                                                temperature=0.0), started))
        await started.wait()  # the long one is in the batch and generating
        await run(_request(engine, "short", "a model serves", max_tokens=3, min_tokens=3, temperature=0.0))
        assert engine.stats().running == 1  # the long one is still generating
        await long

    asyncio.run(scenario())
    assert finished == ["short", "long"]


def test_closing_the_stream_cancels_the_sequence_and_frees_its_slot(engine: TransformersEngine) -> None:
    async def scenario() -> tuple[list[GenerationEvent], list[GenerationEvent]]:
        stream = engine.generate(_request(engine, "gone", "hello world", max_tokens=110, min_tokens=110,
                                          temperature=0.0))
        seen = [await anext(stream), await anext(stream)]
        await stream.aclose()  # type: ignore[attr-defined]  # the port's iterator is an async generator here
        assert engine.stats().running == 0
        after = await _collect(engine, _request(engine, "next", "a model", max_tokens=5, min_tokens=5,
                                                temperature=0.0))
        return seen, after

    before = engine.stats().generation_tokens_total
    seen, after = asyncio.run(scenario())
    assert all(e.finish_reason is None for e in seen)
    assert after[-1].completion_tokens == 5
    scheduler = engine._manager.batch_processor.scheduler  # the manager's own view of the batch
    assert not [rid for rid in (*scheduler.active_requests, *scheduler.waiting_requests) if rid.startswith("gone")]
    assert engine.stats().generation_tokens_total - before < 110


def test_stop_strings_end_the_text_before_them_even_across_tokens(engine: TransformersEngine) -> None:
    base = dict(max_tokens=30, min_tokens=30, temperature=0.0)
    full = asyncio.run(_collect(engine, _request(engine, "full", "the quick brown", **base)))
    text = _text(full)
    pieces = _tokenizer(engine).hf.convert_ids_to_tokens(_tokens(full))
    assert len(pieces) == 30 and len(text) > 6
    # a stop string made of the end of one token's text and the start of the next one's
    first = _tokenizer(engine).decode(_tokens(full)[:3])
    stop = first[-1] + text[len(first):len(first) + 2]
    events = asyncio.run(_collect(engine, _request(engine, "cut", "the quick brown", stop=(stop, "never seen"),
                                                   **base)))
    assert _text(events) == text[:text.index(stop)]
    assert events[-1].finish_reason == "stop"
    assert stop not in _text(events)
    assert events[-1].completion_tokens < 30


def test_n_sequences_each_finish_and_seeded_sampling_is_reproducible(engine: TransformersEngine) -> None:
    greedy = asyncio.run(_collect(engine, _request(engine, "g", "hello", max_tokens=6, min_tokens=6, temperature=0.0,
                                                   n=2)))
    assert _tokens(greedy, 0) == _tokens(greedy, 1) and len(_tokens(greedy, 0)) == 6
    assert sorted(e.index for e in greedy if e.finish_reason) == [0, 1]

    seeded = dict(max_tokens=12, min_tokens=12, temperature=1.0, top_p=0.95, seed=7, n=2)

    async def alone_then_in_a_crowd() -> tuple[list[GenerationEvent], list[GenerationEvent]]:
        alone = await _collect(engine, _request(engine, "s1", "hello", **seeded))
        crowd = await asyncio.gather(_collect(engine, _request(engine, "s2", "hello", **seeded)),
                                     *(_collect(engine, _request(engine, f"o{i}", p, max_tokens=9, temperature=1.0))
                                       for i, p in enumerate(PROMPTS[:4])))
        return alone, crowd[0]

    alone, crowd = asyncio.run(alone_then_in_a_crowd())
    assert [_tokens(alone, i) for i in (0, 1)] == [_tokens(crowd, i) for i in (0, 1)]
    assert _tokens(alone, 0) != _tokens(alone, 1)


def test_the_context_window_and_unsupported_parameters_are_refused(engine: TransformersEngine) -> None:
    prompt = "hello world " * 10
    n_prompt = len(_tokenizer(engine).encode(prompt))
    with pytest.raises(InvalidParameterValue, match="max_tokens"):
        engine.generate(_request(engine, "big", prompt, max_tokens=engine.context_length - n_prompt + 1))
    with pytest.raises(InvalidParameterValue, match="presence_penalty"):
        engine.generate(_request(engine, "pen", "hello", max_tokens=2, presence_penalty=0.5))
    with pytest.raises(InvalidParameterValue, match="prompt"):
        engine.generate(GenerationRequest("empty", (), SamplingParams(max_tokens=2)))
    caps = engine.capabilities
    assert (caps.penalties, caps.json_schema, caps.seed, caps.n) == (False, False, True, True)
    events = asyncio.run(_collect(engine, _request(engine, "edge", prompt, max_tokens=engine.context_length - n_prompt,
                                                   min_tokens=engine.context_length - n_prompt, temperature=0.0)))
    assert events[-1].completion_tokens == engine.context_length - n_prompt
    assert engine.stats().waiting == 0 and engine.stats().running == 0


def test_closing_the_engine_ends_open_streams_with_an_error(tiny_model_dir: Path) -> None:
    tokenizer = HfTokenizer.from_pretrained(tiny_model_dir)
    own = TransformersEngine.from_pretrained(tiny_model_dir, tokenizer, device="cpu", max_batch_size=2)

    async def scenario() -> list[GenerationEvent]:
        await own.start()
        stream = own.generate(GenerationRequest("open", tuple(tokenizer.encode("hello")),
                                                SamplingParams(max_tokens=110, min_tokens=110, temperature=0.0)))
        events = [await anext(stream)]
        await own.close()
        events.extend([e async for e in stream])
        return events

    events = asyncio.run(scenario())
    assert events[-1].finish_reason == "error" and events[-1].error == "the engine was closed"
    assert events[-1].completion_tokens < 110
    assert own.stats().running == 0 and own.stats().waiting == 0

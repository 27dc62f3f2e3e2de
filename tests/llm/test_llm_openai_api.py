"""The OpenAI app over a real uvicorn server, driven by the real ``openai`` client (and httpx for raw SSE, headers
and disconnects), with the scripted engine of ``llm_scripted_engine`` (exact, known tokens)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from llm_scripted_engine import CharTokenizer, ScriptedEngine, expected_tokens, scripted_model

from capstan.llm.openai_app import llm_serving_app
from capstan.llm.ports import EngineCapabilities, LanguageModel
from helpers.asgi_server import serve_app

CHAT = [{"role": "user", "content": "hi"}]
CHAT_IDS = CharTokenizer().chat_prompt(CHAT)


def eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.01)


def ready(url: str) -> bool:
    return httpx.get(f"{url}/v2/health/ready").status_code == 200


class Served:
    def __init__(self, url: str, engine: Any, tokenizer: Any = None) -> None:
        self.url = url
        self.engine = engine
        self.tokenizer = tokenizer
        # Any: the tests send values the client's overloads do not type (bad input, extensions)
        self.client: Any = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """Start the app over a scripted model: ``serve(engine=..., max_waiting=..., model=...)``."""
    stack: list[Any] = []

    def start(engine: ScriptedEngine | None = None, *, max_waiting: int = 16, model: LanguageModel | None = None,
              wait: bool = True) -> Served:
        engine = engine or ScriptedEngine()
        app = llm_serving_app(model or scripted_model(engine), max_waiting=max_waiting, max_body_bytes=4096)
        server = serve_app(app)
        url = server.__enter__()
        stack.append(server)
        if wait:
            eventually(lambda: ready(url), "the engine started")
        return Served(url, engine)

    yield start
    for server in reversed(stack):
        server.__exit__(None, None, None)


# ------------------------------------------------------------------------------------------------ chat


def test_chat_answer_has_the_engine_tokens_and_exact_usage(serve: Callable[..., Served]) -> None:
    s = serve()
    answer = s.client.chat.completions.create(model="tiny", messages=CHAT)
    assert answer.choices[0].message.content == expected_tokens(CHAT_IDS, 6)
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == \
        (len(CHAT_IDS), 6, len(CHAT_IDS) + 6)
    assert answer.object == "chat.completion" and answer.model == "tiny"
    sent = s.engine.seen[-1]
    assert sent.prompt_ids == tuple(CHAT_IDS) and sent.adapter is None
    assert sent.params.max_tokens == s.engine.context_length - len(CHAT_IDS)  # no max_tokens: what the window leaves


def test_chat_parameters_reach_the_engine(serve: Callable[..., Served]) -> None:
    s = serve()
    answer = s.client.chat.completions.create(
        model="tiny", messages=CHAT, max_completion_tokens=12, temperature=0.5, top_p=0.9, seed=7,
        stop=["x", "yz"], n=2, response_format={"type": "text"}, extra_body={"min_tokens": 9})
    params = s.engine.seen[-1].params
    assert (params.max_tokens, params.temperature, params.top_p, params.seed, params.stop, params.n,
            params.min_tokens) == (12, 0.5, 0.9, 7, ("x", "yz"), 2, 9)
    assert [c.index for c in answer.choices] == [0, 1]
    assert [c.message.content for c in answer.choices] == [expected_tokens(CHAT_IDS, 12, index=i) for i in (0, 1)]
    assert [c.finish_reason for c in answer.choices] == ["length", "length"]
    assert answer.usage is not None and answer.usage.completion_tokens == 24


def test_chat_stream_sends_role_then_one_chunk_per_token_usage_and_done(serve: Callable[..., Served]) -> None:
    s = serve()
    stream = s.client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=4, stream=True,
                                              stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert contents == list(expected_tokens(CHAT_IDS, 4))
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (len(CHAT_IDS), 4)
    with httpx.stream("POST", f"{s.url}/v1/chat/completions",
                      json={"model": "tiny", "messages": CHAT, "max_tokens": 2, "stream": True}) as raw:
        assert raw.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in raw.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(json.loads(line[6:]).get("usage") is None for line in lines[:-1])  # no usage unless asked


def test_eight_concurrent_streams_each_get_their_own_tokens(serve: Callable[..., Served]) -> None:
    s = serve(ScriptedEngine(slots=4))

    def one(i: int) -> tuple[str, int]:
        messages = [{"role": "user", "content": f"{chr(ord('a') + i)}{'?' * i}"}]
        stream = s.client.chat.completions.create(model="tiny", messages=messages, max_tokens=5 + i,
                                                  extra_body={"min_tokens": 5 + i}, stream=True,
                                                  stream_options={"include_usage": True})
        text, usage = "", 0
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            if chunk.usage is not None:
                usage = chunk.usage.completion_tokens
        return text, usage

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    for i, (text, usage) in enumerate(results):
        ids = CharTokenizer().chat_prompt([{"role": "user", "content": f"{chr(ord('a') + i)}{'?' * i}"}])
        assert (text, usage) == (expected_tokens(ids, 5 + i), 5 + i)
    assert s.engine.stats().running == 0


# ------------------------------------------------------------------------------------------------ completions


def test_completions_take_text_lists_and_token_ids(serve: Callable[..., Served]) -> None:
    s = serve()
    one = s.client.completions.create(model="tiny", prompt="hello", max_tokens=3)
    assert one.choices[0].text == expected_tokens([ord("h")], 3) and one.choices[0].finish_reason == "length"
    assert one.usage is not None and (one.usage.prompt_tokens, one.usage.completion_tokens) == (5, 3)
    default = s.client.completions.create(model="tiny", prompt="hello", extra_body={"min_tokens": 16})
    assert default.usage is not None and default.usage.completion_tokens == 16  # OpenAI's default max_tokens
    many = s.client.completions.create(model="tiny", prompt=["ab", "xyz"], max_tokens=2, n=2)
    assert [(c.index, c.text) for c in many.choices] == [
        (0, expected_tokens([ord("a")], 2)), (1, expected_tokens([ord("a")], 2, index=1)),
        (2, expected_tokens([ord("x")], 2)), (3, expected_tokens([ord("x")], 2, index=1))]
    assert many.usage is not None and (many.usage.prompt_tokens, many.usage.completion_tokens) == (5, 8)
    ids = s.client.completions.create(model="tiny", prompt=[104, 105], max_tokens=2, echo=True)
    assert ids.choices[0].text == "hi" + expected_tokens([104], 2)
    assert s.engine.seen[-1].prompt_ids == (104, 105)
    lists = s.client.completions.create(model="tiny", prompt=[[104], [120, 121]], max_tokens=1)
    assert [c.text for c in lists.choices] == [expected_tokens([104], 1), expected_tokens([120], 1)]


def test_completion_stream_sends_text_per_token(serve: Callable[..., Served]) -> None:
    s = serve()
    chunks = list(s.client.completions.create(model="tiny", prompt="hello", max_tokens=4, stream=True,
                                              stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    assert texts == list(expected_tokens([ord("h")], 4))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_streams_of_several_prompts_and_sequences_are_merged_by_choice_index(serve: Callable[..., Served]) -> None:
    s = serve()
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    for chunk in s.client.completions.create(model="tiny", prompt=["ab", "xyz"], max_tokens=3, n=2, stream=True):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason:
                reasons[choice.index] = choice.finish_reason
    assert texts == {0: expected_tokens([ord("a")], 3), 1: expected_tokens([ord("a")], 3, index=1),
                     2: expected_tokens([ord("x")], 3), 3: expected_tokens([ord("x")], 3, index=1)}
    assert reasons == dict.fromkeys(range(4), "length")
    roles = [c.choices[0].index for c in s.client.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=1, n=2, stream=True) if c.choices and c.choices[0].delta.role]
    assert roles == [0, 1]


def test_a_closed_stream_of_several_prompts_cancels_them_all(serve: Callable[..., Served]) -> None:
    engine = ScriptedEngine(step_s=0.05)
    s = serve(engine)
    body = {"model": "tiny", "prompt": ["hello", "world"], "max_tokens": 50, "min_tokens": 50, "stream": True}
    with httpx.Client() as client, client.stream("POST", f"{s.url}/v1/completions", json=body) as raw:
        for line in raw.iter_lines():
            if line.startswith("data: {"):
                break
    eventually(lambda: len(engine.cancelled) == 2, "the engine saw both cancels")
    assert sorted(engine.cancelled) == sorted(r.request_id for r in engine.seen[-2:])
    eventually(lambda: engine.stats().running == 0, "the batch is empty again")


# ------------------------------------------------------------------------------------------------ models, adapters


def test_models_list_base_and_adapters_and_model_selects_the_adapter(serve: Callable[..., Served]) -> None:
    s = serve()
    assert [m.id for m in s.client.models.list()] == ["tiny", "tuned-a", "tuned-b"]
    assert s.client.models.retrieve("tuned-b").id == "tuned-b"
    answer = s.client.completions.create(model="tuned-a", prompt="hello", max_tokens=3)
    assert answer.choices[0].text == expected_tokens([ord("h")], 3, adapter=True)
    assert answer.model == "tuned-a"
    adapter = s.engine.seen[-1].adapter
    assert adapter is not None and (adapter.name, adapter.path) == ("tuned-a", "/adapters/tuned-a")
    with pytest.raises(openai.NotFoundError) as missing:
        s.client.completions.create(model="nope", prompt="hello")
    assert (missing.value.code, missing.value.param, missing.value.type) == \
        ("model_not_found", "model", "invalid_request_error")
    with pytest.raises(openai.NotFoundError):
        s.client.models.retrieve("nope")


# ------------------------------------------------------------------------------------------------ embeddings


def test_embeddings_float_and_base64_and_refused_on_a_generative_model(serve: Callable[..., Served]) -> None:
    s = serve(model=scripted_model(None, embedder=True))
    answer = s.client.embeddings.create(model="tiny", input=["abba", "cab"])  # the client asks for base64
    assert [d.embedding[:3] for d in answer.data] == [[2.0, 2.0, 0.0], [1.0, 1.0, 1.0]]
    assert answer.usage.prompt_tokens == 7
    floats = httpx.post(f"{s.url}/v1/embeddings", json={"input": "zz", "encoding_format": "float"}).json()
    assert floats["data"][0]["embedding"][25] == 2.0
    with pytest.raises(openai.BadRequestError) as long:
        s.client.embeddings.create(model="tiny", input="a" * 40)
    assert long.value.param == "input"
    with pytest.raises(openai.BadRequestError) as chat:
        s.client.chat.completions.create(model="tiny", messages=CHAT)
    assert chat.value.param == "model"
    generative = serve()
    with pytest.raises(openai.BadRequestError) as refused:
        generative.client.embeddings.create(model="tiny", input="hello")
    assert refused.value.param == "model"


# ------------------------------------------------------------------------------------------------ bad input


BAD_CHAT: list[tuple[dict[str, Any], str]] = [
    ({"messages": [{"role": "user", "content": "x" * 80}]}, "messages"),
    ({"messages": CHAT, "max_tokens": 60}, "max_tokens"),
    ({"messages": "hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "user"}]}, "messages"),
    ({"messages": [{"role": "developer", "content": "hi"}]}, "messages"),  # the template refuses it
    ({"messages": CHAT, "presence_penalty": 0.5}, "presence_penalty"),
    ({"messages": CHAT, "frequency_penalty": -1}, "frequency_penalty"),
    ({"messages": CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
     "response_format"),
    ({"messages": CHAT, "temperature": 3}, "temperature"),
    ({"messages": CHAT, "top_p": 0}, "top_p"),
    ({"messages": CHAT, "n": 0}, "n"),
    ({"messages": CHAT, "max_tokens": 0}, "max_tokens"),
    ({"messages": CHAT, "stop": [""]}, "stop"),
    ({"messages": CHAT, "logprobs": True}, "logprobs"),
    ({"messages": CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"messages": CHAT, "max_tokens": 2, "extra_body": {"min_tokens": 5}}, "min_tokens"),
    ({"messages": CHAT, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": CHAT, "extra_body": {"frobnicate": 1}}, "frobnicate"),
]


@pytest.mark.parametrize(("extra", "param"), BAD_CHAT, ids=[p for _, p in BAD_CHAT])
def test_bad_chat_input_is_a_400_naming_the_parameter(serve: Callable[..., Served], extra: dict[str, Any],
                                                      param: str) -> None:
    s = serve()
    with pytest.raises(openai.BadRequestError) as bad:
        s.client.chat.completions.create(model="tiny", **extra)
    assert (bad.value.param, bad.value.type) == (param, "invalid_request_error")
    assert s.client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=1).choices


def test_bad_completion_input_and_bodies(serve: Callable[..., Served]) -> None:
    s = serve()
    bad_input: list[tuple[dict[str, Any], str]] = [
        ({"prompt": "x" * 64}, "prompt"), ({"prompt": ""}, "prompt"), ({"prompt": [1, -2]}, "prompt"),
        ({"prompt": "hi", "max_tokens": 63}, "max_tokens"), ({"prompt": "hi", "suffix": "end"}, "suffix"),
        ({"prompt": "hi", "best_of": 3}, "best_of"), ({"prompt": "hi", "stream": True, "echo": True}, "echo")]
    for extra, param in bad_input:
        with pytest.raises(openai.BadRequestError) as bad:
            s.client.completions.create(model="tiny", **extra)
        assert bad.value.param == param, extra
    with pytest.raises(openai.BadRequestError) as window:
        s.client.completions.create(model="tiny", prompt="x" * 64)
    assert window.value.code == "context_length_exceeded"  # OpenAI's code for it
    raw = httpx.post(f"{s.url}/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"
    huge = httpx.post(f"{s.url}/v1/completions", json={"model": "tiny", "prompt": "x" * 5000})
    assert huge.status_code == 413 and "over the limit" in huge.json()["error"]["message"]
    assert httpx.get(f"{s.url}/v1/nothing").json()["error"]["message"] == "no route GET /v1/nothing"
    assert s.client.completions.create(model="tiny", prompt="ok", max_tokens=1).choices


def test_capable_engine_takes_penalties_and_json_schema(serve: Callable[..., Served]) -> None:
    s = serve(ScriptedEngine(capabilities=EngineCapabilities(penalties=True, json_schema=True)))
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    s.client.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=2, presence_penalty=0.5, frequency_penalty=-1,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    params = s.engine.seen[-1].params
    assert (params.presence_penalty, params.frequency_penalty, params.json_schema) == (0.5, -1.0, schema)


def test_backend_without_seed_or_n_refuses_them(serve: Callable[..., Served]) -> None:
    s = serve(ScriptedEngine(capabilities=EngineCapabilities(seed=False, n=False)))
    for extra, param in [({"seed": 1}, "seed"), ({"n": 2}, "n")]:
        with pytest.raises(openai.BadRequestError) as bad:
            s.client.completions.create(model="tiny", prompt="hi", **extra)
        assert bad.value.param == param


# ------------------------------------------------------------------------------------------------ queue, readiness


def test_full_queue_answers_429_with_retry_after_and_drains(serve: Callable[..., Served]) -> None:
    engine = ScriptedEngine(slots=1)
    s = serve(engine, max_waiting=1)
    engine.gate.clear()  # nothing is scheduled: the first request waits
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(s.client.completions.create, model="tiny", prompt="hello", max_tokens=2)
        eventually(lambda: engine.stats().waiting == 1, "the first request waits")
        with pytest.raises(openai.RateLimitError) as full:
            s.client.completions.create(model="tiny", prompt="hello", max_tokens=2)
        assert full.value.response.headers["retry-after"] == "1"
        assert (full.value.code, full.value.type) == ("queue_full", "rate_limit_error")
        stats = httpx.get(f"{s.url}/llm/stats").json()
        assert (stats["waiting"], stats["running"], stats["rejected_total"], stats["max_waiting"]) == (1, 0, 1, 1)
        engine.gate.set()
        assert first.result().choices[0].text == expected_tokens([ord("h")], 2)
    assert s.client.completions.create(model="tiny", prompt="hello", max_tokens=2).choices


def test_not_ready_until_the_engine_starts_answers_503_with_retry_after(serve: Callable[..., Served]) -> None:
    gate = threading.Event()
    s = serve(ScriptedEngine(start_gate=gate), wait=False)
    assert httpx.get(f"{s.url}/v2/health/live").status_code == 200
    assert httpx.get(f"{s.url}/v2/health/ready").status_code == 503
    busy = httpx.post(f"{s.url}/v1/completions", json={"model": "tiny", "prompt": "hi"})
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert busy.json()["error"]["code"] == "model_not_ready"
    assert httpx.get(f"{s.url}/ping").status_code == 503
    gate.set()
    eventually(lambda: ready(s.url), "ready once started")
    assert httpx.get(f"{s.url}/health").status_code == 200
    assert s.client.completions.create(model="tiny", prompt="hi", max_tokens=1).choices


# ------------------------------------------------------------------------------------------------ disconnects


def test_a_stream_closed_by_the_client_cancels_its_generation(serve: Callable[..., Served]) -> None:
    engine = ScriptedEngine(step_s=0.05)
    s = serve(engine)
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 50, "min_tokens": 50, "stream": True}
    with httpx.Client() as client, client.stream("POST", f"{s.url}/v1/completions", json=body) as raw:
        for line in raw.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                break
    eventually(lambda: len(engine.cancelled) == 1, "the engine saw the cancel")
    eventually(lambda: engine.stats().running == 0, "the batch is empty again")
    assert engine.cancelled == [engine.seen[-1].request_id]


def test_a_plain_request_whose_client_goes_away_cancels_its_generation(serve: Callable[..., Served]) -> None:
    engine = ScriptedEngine(step_s=0.05)
    s = serve(engine)
    port = int(s.url.rsplit(":", 1)[1])
    body = json.dumps({"model": "tiny", "prompt": "hello", "max_tokens": 50, "min_tokens": 50}).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))
        eventually(lambda: engine.stats().running == 1, "the request runs")
    eventually(lambda: len(engine.cancelled) == 1, "the engine saw the cancel")
    eventually(lambda: engine.stats().running == 0, "the batch is empty again")
    assert s.client.completions.create(model="tiny", prompt="hi", max_tokens=1).choices


# ------------------------------------------------------------------------------------------------ the real engine
# The tiny GPT-2 of the session fixture behind transformers' continuous batching (capstan.llm.transformers_engine),
# greedy, with min_tokens == max_tokens so every count is exact.

TINY_CHAT = [{"role": "user", "content": "what is the weather?"}]


@pytest.fixture(scope="module")
def real(tiny_model_dir: Any) -> Iterator[Served]:
    import torch

    from capstan.llm.hf_tokenizer import HfTokenizer
    from capstan.llm.transformers_engine import TransformersEngine

    torch.set_num_threads(1)
    tokenizer = HfTokenizer.from_pretrained(tiny_model_dir)
    engine = TransformersEngine.from_pretrained(tiny_model_dir, tokenizer, device="cpu", max_batch_size=8)
    model = LanguageModel("tiny", "1", tokenizer, engine=engine, created=1_700_000_000)
    with serve_app(llm_serving_app(model, max_waiting=16, max_body_bytes=1 << 16)) as url:
        eventually(lambda: ready(url), "the engine started", timeout=60)
        yield Served(url, engine, tokenizer)


def exact(tokens: int) -> dict[str, Any]:
    return {"max_tokens": tokens, "temperature": 0, "extra_body": {"min_tokens": tokens}}


def test_real_chat_and_completion_agree_with_exact_usage(real: Served) -> None:
    chat = real.client.chat.completions.create(model="tiny", messages=TINY_CHAT, **exact(8))
    prompt_ids = real.tokenizer.chat_prompt(TINY_CHAT)
    assert chat.usage.prompt_tokens == len(prompt_ids) and chat.usage.completion_tokens == 8
    assert chat.choices[0].finish_reason == "length"
    same = real.client.completions.create(model="tiny", prompt=prompt_ids, **exact(8))
    assert same.choices[0].text == chat.choices[0].message.content
    assert (same.usage.prompt_tokens, same.usage.completion_tokens) == (len(prompt_ids), 8)


def test_real_stream_has_one_chunk_per_token_usage_and_done(real: Served) -> None:
    whole = real.client.chat.completions.create(model="tiny", messages=TINY_CHAT, **exact(10))
    chunks = list(real.client.chat.completions.create(model="tiny", messages=TINY_CHAT, stream=True,
                                                      stream_options={"include_usage": True}, **exact(10)))
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content is not None]
    assert len(deltas) == 10 and "".join(deltas) == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    with httpx.stream("POST", f"{real.url}/v1/completions",
                      json={"model": "tiny", "prompt": "hello", "max_tokens": 3, "stream": True}) as raw:
        assert [line for line in raw.iter_lines() if line][-1] == "data: [DONE]"


def test_real_eight_concurrent_streams_match_their_sequential_answers(real: Served) -> None:
    prompts = [f"the quick brown fox {'jumps ' * i}" for i in range(8)]
    alone = [real.client.completions.create(model="tiny", prompt=p, **exact(4 + 3 * i)).choices[0].text
             for i, p in enumerate(prompts)]

    def streamed(i: int) -> str:
        stream = real.client.completions.create(model="tiny", prompt=prompts[i], stream=True, **exact(4 + 3 * i))
        return "".join(c.choices[0].text for c in stream if c.choices)

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(streamed, range(8))) == alone


def test_real_disconnect_stops_generation(real: Served) -> None:
    engine = real.engine
    before = engine.stats().generation_tokens_total
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 120, "min_tokens": 120, "temperature": 0, "stream": True}
    with httpx.Client() as client, client.stream("POST", f"{real.url}/v1/completions", json=body) as raw:
        for line in raw.iter_lines():
            if line.startswith("data: {"):
                break
    eventually(lambda: engine.stats().running == 0 and engine.stats().waiting == 0, "the batch is empty")
    assert engine.stats().generation_tokens_total - before < 120


def test_real_bad_input_is_400_naming_the_parameter_and_the_server_keeps_serving(real: Served) -> None:
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("completions", {"prompt": "hello " * 200}, "prompt"),
        ("completions", {"prompt": "hello", "max_tokens": 500}, "max_tokens"),
        ("chat", {"messages": [{"role": "user"}]}, "messages"),
        ("chat", {"messages": TINY_CHAT, "presence_penalty": 1}, "presence_penalty"),
        ("chat", {"messages": TINY_CHAT, "response_format": {"type": "json_schema",
                                                              "json_schema": {"name": "x", "schema": {}}}},
         "response_format"),
        ("chat", {"messages": TINY_CHAT, "temperature": 9}, "temperature"),
        ("completions", {"prompt": [5, 99999]}, "prompt"),  # not in the vocabulary: the engine's own check
    ]
    for route, extra, param in cases:
        api = real.client.completions if route == "completions" else real.client.chat.completions
        with pytest.raises(openai.BadRequestError) as bad:
            api.create(model="tiny", **extra)
        assert bad.value.param == param, (route, extra)
    with pytest.raises(openai.NotFoundError) as missing:
        real.client.chat.completions.create(model="gpt-4", messages=TINY_CHAT)
    assert missing.value.code == "model_not_found"
    assert real.client.completions.create(model="tiny", prompt="hello", **exact(2)).usage.completion_tokens == 2


def test_real_metrics_after_requests(real: Served) -> None:
    answer = real.client.completions.create(model="tiny", prompt="hello world", **exact(5))
    text = httpx.get(f"{real.url}/metrics").text
    for name in ("vllm:time_to_first_token_seconds_count", "capstan_llm_inter_token_latency_seconds_bucket",
                 "vllm:e2e_request_latency_seconds_sum", "vllm:request_queue_time_seconds_count",
                 'vllm:num_requests_running{model_name="tiny"}', 'capstan_llm_num_requests_waiting{model_name="tiny"}',
                 'vllm:request_success_total{finished_reason="length",model_name="tiny"}'):
        assert name in text, name
    stats = httpx.get(f"{real.url}/llm/stats").json()
    assert stats["generation_tokens_total"] >= answer.usage.completion_tokens == 5
    assert stats["running"] == 0

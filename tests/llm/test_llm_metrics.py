"""Token metrics (capstan.llm.metrics) under vLLM's names and Capstan's: the families and their meaning, and what
``/metrics`` and ``/llm/stats`` show after real requests through the OpenAI app."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from llm_scripted_engine import CharTokenizer, ScriptedEngine, scripted_model
from prometheus_client.parser import text_string_to_metric_families

from capstan.llm.metrics import PREFIXES, LlmMetrics, finished_reason_label
from capstan.llm.openai_app import llm_serving_app
from helpers.asgi_server import serve_app

NAMES = ("time_to_first_token_seconds", "inter_token_latency_seconds", "time_per_output_token_seconds",
         "e2e_request_latency_seconds", "request_queue_time_seconds", "num_requests_running",
         "num_requests_waiting", "prompt_tokens", "generation_tokens", "request_success")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(all_samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return all_samples[(name, tuple(sorted({"model_name": "tiny", **labels}.items())))]


def test_every_family_under_both_prefixes_with_the_same_samples() -> None:
    metrics = LlmMetrics()
    metrics.watch("tiny", lambda: (3, 5))
    metrics.prompt_tokens("tiny", 7)
    metrics.generated("tiny", 4)
    metrics.queued("tiny", 0.02)
    metrics.first_token("tiny", 0.05)
    metrics.inter_token("tiny", 0.01)
    metrics.finished("tiny", "length", 0.3, 7, 4)
    metrics.finished("tiny", "cancelled", 0.1, 7, 0)
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain; version=0.0.4")
    got = samples(body.decode())
    families = {f.name for f in text_string_to_metric_families(body.decode())}
    for prefix in PREFIXES:
        assert {prefix + n for n in NAMES} <= families
        assert value(got, f"{prefix}num_requests_running") == 3
        assert value(got, f"{prefix}num_requests_waiting") == 5
        assert value(got, f"{prefix}prompt_tokens_total") == 7
        assert value(got, f"{prefix}generation_tokens_total") == 4
        assert value(got, f"{prefix}request_success_total", finished_reason="length") == 1
        assert value(got, f"{prefix}request_success_total", finished_reason="abort") == 1
        assert value(got, f"{prefix}time_to_first_token_seconds_count") == 1
        assert value(got, f"{prefix}time_to_first_token_seconds_sum") == pytest.approx(0.05)
        assert value(got, f"{prefix}inter_token_latency_seconds_count") == 1
        assert value(got, f"{prefix}time_per_output_token_seconds_count") == 1
        assert value(got, f"{prefix}request_queue_time_seconds_sum") == pytest.approx(0.02)
        assert value(got, f"{prefix}e2e_request_latency_seconds_count") == 2
        assert value(got, f"{prefix}request_generation_tokens_sum") == 4
    totals = metrics.totals("tiny")
    assert (totals.prompt_tokens, totals.generation_tokens, totals.requests) == (7, 4, 2)
    assert metrics.totals("other").requests == 0


def test_gauges_are_read_when_scraped() -> None:
    metrics = LlmMetrics()
    load = [0, 0]
    metrics.watch("tiny", lambda: (load[0], load[1]))
    load[:] = [2, 9]
    got = samples(metrics.exposition()[0].decode())
    assert (value(got, "vllm:num_requests_running"), value(got, "vllm:num_requests_waiting")) == (2, 9)


def test_finished_reason_labels_follow_vllm() -> None:
    assert [finished_reason_label(r) for r in ("stop", "length", "cancelled", None, "error")] == \
        ["stop", "length", "abort", "abort", "error"]


@pytest.fixture
def served() -> Iterator[tuple[str, ScriptedEngine]]:
    engine = ScriptedEngine()
    with serve_app(llm_serving_app(scripted_model(engine), max_waiting=4, max_body_bytes=4096)) as url:
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.01)
        yield url, engine


def test_metrics_and_stats_after_requests(served: tuple[str, ScriptedEngine]) -> None:
    url, engine = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    stopped = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    cut = client.completions.create(model="tiny", prompt="hello", max_tokens=3)
    streamed = list(client.completions.create(model="tuned-a", prompt="abc",
                                              max_tokens=4, stream=True, stream_options={"include_usage": True}))
    usages = [stopped.usage, cut.usage, streamed[-1].usage]
    assert all(u is not None for u in usages)
    prompt = sum(u.prompt_tokens for u in usages if u is not None)
    generated = sum(u.completion_tokens for u in usages if u is not None)
    assert prompt == len(CharTokenizer().chat_prompt([{"role": "user", "content": "hi"}])) + 5 + 3
    got = samples(httpx.get(f"{url}/metrics").text)
    for prefix in PREFIXES:
        assert value(got, f"{prefix}prompt_tokens_total") == prompt
        assert value(got, f"{prefix}generation_tokens_total") == generated == 6 + 3 + 4
        assert value(got, f"{prefix}request_success_total", finished_reason="stop") == 1
        assert value(got, f"{prefix}request_success_total", finished_reason="length") == 2
        assert value(got, f"{prefix}time_to_first_token_seconds_count") == 3
        assert value(got, f"{prefix}request_queue_time_seconds_count") == 3
        assert value(got, f"{prefix}inter_token_latency_seconds_count") == (6 - 1) + (3 - 1) + (4 - 1)
        assert value(got, f"{prefix}e2e_request_latency_seconds_count") == 3
        assert value(got, f"{prefix}num_requests_running") == 0
    stats = httpx.get(f"{url}/llm/stats").json()
    assert stats == {"model": "tiny", "version": "1", "ready": True, "running": 0, "waiting": 0, "max_waiting": 4,
                     "prompt_tokens_total": prompt, "generation_tokens_total": generated, "requests_total": 3,
                     "rejected_total": 0}
    assert engine.stats().generation_tokens_total == generated


def test_waiting_gauge_counts_queued_requests(served: tuple[str, ScriptedEngine]) -> None:
    url, engine = served
    engine.gate.clear()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(client.completions.create, model="tiny", prompt="hi", max_tokens=1) for _ in range(2)]
        wait_for(lambda: engine.stats().waiting == 2)
        got = samples(httpx.get(f"{url}/metrics").text)
        assert value(got, "vllm:num_requests_waiting") == value(got, "capstan_llm_num_requests_waiting") == 2
        assert httpx.get(f"{url}/llm/stats").json()["waiting"] == 2
        engine.gate.set()
        assert all(f.result().choices for f in futures)


def wait_for(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.01)

"""The vLLM backend: the pure translation of our sampling parameters and vLLM's outputs (always), and the tiny model
served with ``capstan serve --backend vllm`` through the OpenAI app and the real openai client (only where vLLM is
installed)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from capstan.errors import InvalidParameterValue, InvalidState
from capstan.llm.ports import GenerationRequest, SamplingParams
from capstan.llm.vllm_engine import (
    SequenceState,
    VllmEngine,
    VllmOptions,
    check_request,
    delta_events,
    finish_reason_of,
    is_validation_error,
    queue_seconds,
    sampling_arguments,
)

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed")


def test_sampling_arguments_carry_every_parameter() -> None:
    params = SamplingParams(max_tokens=12, temperature=0.7, top_p=0.9, seed=5, stop=("\n", "END"), n=3,
                            min_tokens=4, presence_penalty=0.5, frequency_penalty=-0.25)
    assert sampling_arguments(params) == {
        "n": 3, "max_tokens": 12, "min_tokens": 4, "temperature": 0.7, "top_p": 0.9, "presence_penalty": 0.5,
        "frequency_penalty": -0.25, "include_stop_str_in_output": False, "seed": 5, "stop": ["\n", "END"]}


def test_sampling_arguments_leave_out_what_is_unset() -> None:
    arguments = sampling_arguments(SamplingParams(max_tokens=3, temperature=0.0, json_schema={"type": "object"}))
    assert "seed" not in arguments and "stop" not in arguments
    assert arguments["temperature"] == 0.0  # vLLM's greedy decoding
    # the schema goes through vLLM's structured-output class, which the engine picks by vLLM version
    assert "json_schema" not in arguments and "structured_outputs" not in arguments


@pytest.mark.parametrize(("vllm_reason", "ours"), [
    (None, None), ("stop", "stop"), ("length", "length"), ("abort", "cancelled"), ("error", "error")])
def test_finish_reasons(vllm_reason: str | None, ours: str | None) -> None:
    assert finish_reason_of(vllm_reason) == ours


@dataclass
class _Out:
    index: int
    token_ids: list[int]
    text: str
    finish_reason: str | None = None


def test_cumulative_outputs_become_deltas() -> None:
    progress: dict[int, SequenceState] = {}
    first = delta_events([_Out(0, [7], "a"), _Out(1, [], "")], 5, progress, queued_s=0.25)
    assert [(e.index, e.token_ids, e.text, e.completion_tokens, e.queued_s) for e in first] == [(0, (7,), "a", 1, 0.25)]
    second = delta_events([_Out(0, [7, 8, 9], "abc"), _Out(1, [4], "x", "length")], 5, progress)
    assert [(e.index, e.token_ids, e.text, e.completion_tokens, e.finish_reason, e.prompt_tokens)
            for e in second] == [(0, (8, 9), "bc", 3, None, 5), (1, (4,), "x", 1, "length", 5)]
    assert second[0].queued_s is None
    third = delta_events([_Out(0, [7, 8, 9], "abc", "stop"), _Out(1, [4], "x", "length")], 5, progress)
    # a finished sequence is not reported again; one that only finishes gets an empty event with its reason
    assert [(e.index, e.token_ids, e.text, e.finish_reason) for e in third] == [(0, (), "", "stop")]


def test_queue_seconds_of_both_engine_generations() -> None:
    @dataclass
    class V0:
        time_in_queue: float | None

    @dataclass
    class V1:
        queued_ts: float
        scheduled_ts: float

    assert queue_seconds(None) is None
    assert queue_seconds(V0(0.5)) == 0.5
    assert queue_seconds(V1(10.0, 10.25)) == 0.25
    assert queue_seconds(V1(0.0, 0.0)) is None  # V1 without statistics leaves them unset


def test_engine_arguments_are_offline_and_enable_adapters() -> None:
    arguments = VllmOptions(max_model_len=128).engine_arguments("/models/tiny")
    assert arguments["model"] == arguments["tokenizer"] == "/models/tiny"
    assert arguments["enable_lora"] is True and arguments["max_loras"] == 4
    assert arguments["max_model_len"] == 128
    assert "max_loras" not in VllmOptions(enable_lora=False).engine_arguments("/m")


@pytest.mark.parametrize(("prompt", "max_tokens", "message"), [
    ((), 4, r"^prompt: it is empty$"),
    ((1, 2, 3), 0, r"^max_tokens must be at least 1$"),
    ((1,) * 120, 9, r"^max_tokens: the prompt \(120 tokens\) plus max_tokens \(9\) exceeds the context window "
                    r"of 128 tokens$"),
])
def test_requests_vllm_would_refuse_are_refused_first(prompt: tuple[int, ...], max_tokens: int, message: str) -> None:
    request = GenerationRequest("r1", prompt, SamplingParams(max_tokens=max_tokens))
    with pytest.raises(InvalidParameterValue, match=message):
        check_request(request, 128)
    check_request(GenerationRequest("r2", (1,) * 120, SamplingParams(max_tokens=8)), 128)  # exactly fits


def test_validation_errors_of_either_vllm_generation() -> None:
    class VLLMClientError(Exception):
        pass

    class VLLMValidationError(VLLMClientError):
        pass

    assert is_validation_error(ValueError("top_p must be in (0, 1]"))
    assert is_validation_error(VLLMValidationError("bad"))
    assert not is_validation_error(RuntimeError("CUDA out of memory"))


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed")
def test_a_missing_vllm_names_the_extra(tmp_path: Path) -> None:
    with pytest.raises(InvalidState, match=re.escape("pip install 'capstan[vllm]'")):
        VllmEngine(str(tmp_path))


# ---------------------------------------------------------------------------------------------------- with vLLM


@pytest.fixture(scope="module")
def vllm_server(tiny_model_dir: Path) -> Iterator[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "capstan", "serve", str(tiny_model_dir), "--backend", "vllm", "--name", "tiny",
         "--host", "127.0.0.1", "--port", "0",
         # vLLM reserves this share of the device's memory (of the machine's on its CPU build): keep it small
         "--gpu-memory-utilization", "0.1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    url = None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if match := re.search(r"listening on (http://\S+?:\d+)", line):
            url = match.group(1)
            break
    assert url is not None, "".join(lines[-20:])
    try:
        yield url
    finally:
        process.terminate()
        process.wait(30)


@needs_vllm
def test_vllm_backend_answers_the_openai_client(vllm_server: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{vllm_server}/v1", api_key="unused")
    answer = client.completions.create(model="tiny", prompt="the quick brown", max_tokens=6, temperature=0,
                                       extra_body={"min_tokens": 6})
    assert answer.usage is not None and answer.usage.completion_tokens == 6
    again = client.completions.create(model="tiny", prompt="the quick brown", max_tokens=6, temperature=0,
                                      extra_body={"min_tokens": 6})
    assert again.choices[0].text == answer.choices[0].text  # greedy: the same tokens twice
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=5, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"min_tokens": 5}))
    usage = [c.usage for c in chunks if c.usage is not None]
    assert usage and usage[-1].completion_tokens == 5
    # streamed as one delta per token, not one block (this random model's tokens may spell nothing: compare texts)
    deltas = [c.choices[0].delta for c in chunks if c.choices and c.choices[0].finish_reason is None]
    assert len(deltas) == 5 + 1 and deltas[0].role == "assistant"
    whole = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=5,
                                           temperature=0, extra_body={"min_tokens": 5})
    assert "".join(d.content or "" for d in deltas) == whole.choices[0].message.content
    sampled = client.completions.create(model="tiny", prompt="hello", max_tokens=4, n=2, seed=3,
                                        temperature=1.0, presence_penalty=0.5, extra_body={"min_tokens": 4})
    assert sorted(c.index for c in sampled.choices) == [0, 1]

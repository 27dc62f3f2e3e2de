"""OpenAI request bodies checked into typed records (capstan.llm.requests): what is accepted, and every refusal
names its field."""

from __future__ import annotations

from typing import Any

import pytest

from capstan.llm.ports import EngineCapabilities
from capstan.llm.requests import (
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    OpenAIError,
    bounded_params,
    model_not_found,
    parse_chat,
    parse_completion,
    parse_embedding,
)

PLAIN = EngineCapabilities()
FULL = EngineCapabilities(penalties=True, json_schema=True, adapters=True)
CHAT: list[dict[str, Any]] = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


def refused(parse: Any, body: object, *args: Any) -> OpenAIError:
    with pytest.raises(OpenAIError) as error:
        parse(body, *args)
    return error.value


def test_chat_body_with_every_parameter() -> None:
    body = parse_chat({"model": "m", "messages": CHAT, "max_completion_tokens": 9, "temperature": 0, "top_p": 0.5,
                       "seed": 3, "stop": "END", "n": 2, "presence_penalty": 1, "frequency_penalty": -0.5,
                       "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
                       "stream": True, "stream_options": {"include_usage": True}, "min_tokens": 4, "user": "u",
                       "logprobs": False, "tool_choice": "none"}, FULL)
    assert body.model == "m" and body.stream and body.include_usage
    assert body.messages == ({"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"})
    s = body.sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.seed, s.stop, s.n, s.presence_penalty, s.frequency_penalty,
            s.min_tokens, s.json_schema) == (9, 0.0, 0.5, 3, ("END",), 2, 1.0, -0.5, 4, {"type": "object"})


def test_chat_defaults_and_text_parts() -> None:
    body = parse_chat({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                  {"type": "text", "text": "b"}]}]}, PLAIN)
    assert body.model is None and not body.stream and not body.include_usage
    assert body.messages == ({"role": "user", "content": "ab"},)
    assert body.sampling.max_tokens is None and body.sampling.temperature == 1.0 and body.sampling.n == 1
    assert parse_chat({"messages": CHAT, "max_tokens": 5}, PLAIN).sampling.max_tokens == 5
    assert parse_chat({"messages": CHAT, "response_format": {"type": "text"}}, PLAIN).sampling.json_schema is None
    assert parse_chat({"messages": CHAT, "response_format": {"type": "json_object"}}, FULL).sampling.json_schema \
        == {"type": "object"}


@pytest.mark.parametrize(("body", "param"), [
    ([], None),
    ({"messages": CHAT, "wat": 1}, "wat"),
    ({}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{}]}]}, "messages"),
    ({"messages": [{"role": "user", "content": "x", "colour": "red"}]}, "messages"),
    ({"messages": ["hi"]}, "messages"),
    ({"messages": CHAT, "max_tokens": 3, "max_completion_tokens": 4}, "max_completion_tokens"),
    ({"messages": CHAT, "max_tokens": True}, "max_tokens"),
    ({"messages": CHAT, "max_tokens": 2.5}, "max_tokens"),
    ({"messages": CHAT, "temperature": "hot"}, "temperature"),
    ({"messages": CHAT, "temperature": -0.1}, "temperature"),
    ({"messages": CHAT, "top_p": 1.5}, "top_p"),
    ({"messages": CHAT, "n": 17}, "n"),
    ({"messages": CHAT, "seed": "1"}, "seed"),
    ({"messages": CHAT, "stop": 3}, "stop"),
    ({"messages": CHAT, "stop": ["a", ""]}, "stop"),
    ({"messages": CHAT, "presence_penalty": 0.1}, "presence_penalty"),
    ({"messages": CHAT, "frequency_penalty": 3}, "frequency_penalty"),
    ({"messages": CHAT, "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": CHAT, "response_format": {"type": "yaml"}}, "response_format"),
    ({"messages": CHAT, "logit_bias": {"1": 5}}, "logit_bias"),
    ({"messages": CHAT, "top_logprobs": 2}, "top_logprobs"),
    ({"messages": CHAT, "tool_choice": "required"}, "tool_choice"),
    ({"messages": CHAT, "stream": "yes"}, "stream"),
    ({"messages": CHAT, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": CHAT, "stream": True, "stream_options": {"include_usage": 1}}, "stream_options"),
    ({"messages": CHAT, "stream": True, "stream_options": {"other": True}}, "stream_options"),
    ({"messages": CHAT, "min_tokens": -1}, "min_tokens"),
    ({"messages": CHAT, "min_tokens": 5, "max_tokens": 4}, "min_tokens"),
    ({"messages": CHAT, "model": ""}, "model"),
    ({"messages": CHAT, "model": 3}, "model"),
])
def test_bad_chat_bodies_name_the_field(body: object, param: str | None) -> None:
    error = refused(parse_chat, body, PLAIN)
    assert (error.param, error.http_status, error.body()["error"]["type"]) == (param, 400, "invalid_request_error")


def test_backend_capabilities_decide_penalties_schema_seed_and_n() -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    assert "not supported" in refused(parse_chat, {"messages": CHAT, "response_format": schema}, PLAIN).message
    assert refused(parse_chat, {"messages": CHAT, "response_format": {"type": "json_schema"}}, FULL).param == \
        "response_format"
    assert parse_chat({"messages": CHAT, "presence_penalty": 0}, PLAIN).sampling.presence_penalty == 0.0
    no_seed = EngineCapabilities(seed=False, n=False)
    assert refused(parse_chat, {"messages": CHAT, "seed": 1}, no_seed).param == "seed"
    assert refused(parse_chat, {"messages": CHAT, "n": 2}, no_seed).param == "n"
    assert parse_chat({"messages": CHAT, "n": 1}, no_seed).sampling.n == 1


def test_completion_prompts_in_every_form() -> None:
    assert parse_completion({"prompt": "hi"}, PLAIN).prompts == ("hi",)
    assert parse_completion({"prompt": ["a", "b"]}, PLAIN).prompts == ("a", "b")
    assert parse_completion({"prompt": [1, 2, 3]}, PLAIN).prompts == ((1, 2, 3),)
    assert parse_completion({"prompt": [[1], [2, 3]]}, PLAIN).prompts == ((1,), (2, 3))
    body = parse_completion({"prompt": "hi", "echo": True, "best_of": 2, "n": 2}, PLAIN)
    assert body.echo and body.sampling.max_tokens == COMPLETIONS_DEFAULT_MAX_TOKENS and body.sampling.n == 2


@pytest.mark.parametrize(("body", "param"), [
    ({}, "prompt"), ({"prompt": ""}, "prompt"), ({"prompt": []}, "prompt"), ({"prompt": ["a", 1]}, "prompt"),
    ({"prompt": [1, True]}, "prompt"), ({"prompt": [[1], []]}, "prompt"), ({"prompt": [-1]}, "prompt"),
    ({"prompt": "x", "suffix": "y"}, "suffix"), ({"prompt": "x", "best_of": 2}, "best_of"),
    ({"prompt": "x", "echo": True, "stream": True}, "echo"), ({"prompt": "x", "logprobs": 2}, "logprobs"),
    ({"prompt": "x", "messages": CHAT}, "messages"), ({"prompt": "x", "max_completion_tokens": 3},
                                                      "max_completion_tokens"),
])
def test_bad_completion_bodies_name_the_field(body: object, param: str) -> None:
    assert refused(parse_completion, body, PLAIN).param == param


def test_embedding_bodies() -> None:
    body = parse_embedding({"model": "e", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 8})
    assert (body.model, body.inputs, body.encoding_format, body.dimensions) == ("e", ("a", "b"), "base64", 8)
    assert parse_embedding({"input": "a"}).encoding_format == "float"
    for bad, param in [({"input": ""}, "input"), ({"input": []}, "input"), ({"input": [1, 2]}, "input"),
                       ({"input": "a", "encoding_format": "hex"}, "encoding_format"),
                       ({"input": "a", "dimensions": 0}, "dimensions"), ({"input": "a", "n": 1}, "n")]:
        assert refused(parse_embedding, bad).param == param


def test_bounded_params_check_the_context_window() -> None:
    sampling = parse_chat({"messages": CHAT, "min_tokens": 2}, PLAIN).sampling
    assert bounded_params(sampling, 10, 64, "messages").max_tokens == 54  # what the window leaves
    asked = parse_chat({"messages": CHAT, "max_tokens": 54}, PLAIN).sampling
    assert bounded_params(asked, 10, 64, "messages").max_tokens == 54
    over = refused(lambda *a: bounded_params(*a), asked, 11, 64, "messages")
    assert (over.param, over.openai_code) == ("max_tokens", "context_length_exceeded")
    assert "at most 53" in over.message
    full = refused(lambda *a: bounded_params(*a), sampling, 64, 64, "prompt")
    assert (full.param, full.openai_code) == ("prompt", "context_length_exceeded")
    assert refused(lambda *a: bounded_params(*a), sampling, 0, 64, "prompt").param == "prompt"
    tight = parse_chat({"messages": CHAT, "min_tokens": 5}, PLAIN).sampling
    assert refused(lambda *a: bounded_params(*a), tight, 60, 64, "messages").param == "min_tokens"


def test_error_shape_and_model_not_found() -> None:
    error = model_not_found("gpt-x")
    assert error.http_status == 404
    assert error.body() == {"error": {"message": error.message, "type": "invalid_request_error", "param": "model",
                                      "code": "model_not_found"}}
    assert "gpt-x" in error.message

"""OpenAI request bodies, parsed and checked into typed records (pure: no I/O, no clock).

`parse_chat`, `parse_completion` and `parse_embedding` turn a decoded JSON body into a `ChatBody`, `CompletionBody`
or `EmbeddingBody`, checking every field against OpenAI's rules and the engine's `EngineCapabilities`; once the
route has tokenized the prompt, `bounded_params` checks it against the context window and gives the
`SamplingParams` of a `GenerationRequest`. Anything wrong raises `OpenAIError`, which the route answers in OpenAI's
error shape ``{"error": {"message", "type", "param", "code"}}`` with ``param`` naming the field.

Unknown fields are refused (400 naming the field) rather than ignored, so a client never believes a parameter was
honoured when it was not; the fields OpenAI's clients send as metadata (``user``, ``metadata``, ``store``...) are
accepted and ignored. ``min_tokens`` is an extension (as vLLM's): end-of-sequence is suppressed until that many
tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from capstan.errors import CapstanError
from capstan.llm.ports import EngineCapabilities, SamplingParams

__all__ = [
    "COMPLETIONS_DEFAULT_MAX_TOKENS",
    "ChatBody",
    "CompletionBody",
    "EmbeddingBody",
    "OpenAIError",
    "Prompt",
    "RequestedSampling",
    "bounded_params",
    "model_not_found",
    "parse_chat",
    "parse_completion",
    "parse_embedding",
]

COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""``/v1/completions`` without ``max_tokens`` generates at most this many tokens (OpenAI's legacy default);
chat without it may fill the context window."""

MAX_N = 16
"""The most sequences one request may ask for (``n``)."""

_ROLES = ("system", "developer", "user", "assistant")


class OpenAIError(CapstanError):
    """A request error answered in OpenAI's shape: ``status`` (400 unless said), ``error_type``, ``param`` (the
    field at fault, or None) and ``openai_code``; ``retry_after_s`` adds ``Retry-After`` (429, 503)."""

    code = "INVALID_PARAMETER_VALUE"

    def __init__(self, message: str, *, param: str | None = None, status: int = 400,
                 error_type: str = "invalid_request_error", openai_code: str | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.http_status = status
        self.param = param
        self.error_type = error_type
        self.openai_code = openai_code
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param,
                          "code": self.openai_code}}


def model_not_found(name: str) -> OpenAIError:
    """The 404 for a ``model`` that is neither the served model nor one of its adapters."""
    return OpenAIError(f"The model {name!r} does not exist (GET /v1/models lists the models served here).",
                       param="model", status=404, openai_code="model_not_found")


# --------------------------------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class RequestedSampling:
    """The sampling fields of a request as asked, before the prompt's length is known. ``max_tokens`` None means
    as many as the context window leaves; ``json_schema`` is the guided-decoding schema (None: free text)."""

    max_tokens: int | None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    min_tokens: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    json_schema: Mapping[str, Any] | None = None


Prompt = str | tuple[int, ...]
"""A completion prompt: text, or token ids as the client tokenized them."""


@dataclass(frozen=True, slots=True)
class ChatBody:
    """A checked ``POST /v1/chat/completions`` body. ``messages`` hold ``role`` and ``content`` (text; a list of
    text parts is joined)."""

    model: str | None
    messages: tuple[Mapping[str, str], ...]
    sampling: RequestedSampling
    stream: bool
    include_usage: bool


@dataclass(frozen=True, slots=True)
class CompletionBody:
    """A checked ``POST /v1/completions`` body: one or more prompts (each is a request; choices are numbered
    prompt by prompt, ``n`` each)."""

    model: str | None
    prompts: tuple[Prompt, ...]
    sampling: RequestedSampling
    stream: bool
    include_usage: bool
    echo: bool


@dataclass(frozen=True, slots=True)
class EmbeddingBody:
    """A checked ``POST /v1/embeddings`` body."""

    model: str | None
    inputs: tuple[str, ...]
    encoding_format: Literal["float", "base64"]
    dimensions: int | None


# --------------------------------------------------------------------------------------------------- fields


class _Fields:
    """Typed reads of a JSON object's fields; each failure is an `OpenAIError` naming the field."""

    def __init__(self, body: object, allowed: frozenset[str]) -> None:
        if not isinstance(body, dict):
            raise OpenAIError("the request body must be a JSON object")
        unknown = sorted(k for k in body if k not in allowed)
        if unknown:
            raise OpenAIError(f"unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
        self.body: dict[str, Any] = body

    def given(self, name: str) -> bool:
        """Whether the field is present and not null."""
        return self.body.get(name) is not None

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self.body.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise OpenAIError(f"{name} must be a boolean, got {value!r}", param=name)
        return value

    def integer(self, name: str, low: int, high: int | None = None) -> int | None:
        value = self.body.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise OpenAIError(f"{name} must be an integer, got {value!r}", param=name)
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise OpenAIError(f"{name} must be {bounds}, got {value}", param=name)
        return value

    def number(self, name: str, default: float, low: float, high: float, *, low_open: bool = False) -> float:
        value = self.body.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise OpenAIError(f"{name} must be a number, got {value!r}", param=name)
        if value > high or value < low or (low_open and value == low):
            raise OpenAIError(f"{name} must be {'above' if low_open else 'at least'} {low} and at most {high}, "
                              f"got {value}", param=name)
        return float(value)

    def string(self, name: str) -> str | None:
        value = self.body.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise OpenAIError(f"{name} must be a string, got {value!r}", param=name)
        return value

    def refuse(self, name: str, accepted: Callable[[Any], bool], why: str) -> None:
        """Refuse a field that is present with a value other than the accepted (neutral) ones."""
        if name in self.body and not accepted(self.body[name]):
            raise OpenAIError(f"{name} is not supported: {why}", param=name)


def _falsy(value: Any) -> bool:
    return value is None or value is False or value == 0 or value == [] or value == {}


_IGNORED = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls"})
_SAMPLING = frozenset({"model", "max_tokens", "temperature", "top_p", "seed", "stop", "n", "presence_penalty",
                       "frequency_penalty", "response_format", "stream", "stream_options", "min_tokens", "logprobs",
                       "logit_bias"})
_CHAT = _SAMPLING | _IGNORED | {"messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice"}
_COMPLETION = _SAMPLING | _IGNORED | {"prompt", "echo", "best_of", "suffix"}
_EMBEDDING = frozenset({"model", "input", "encoding_format", "dimensions", "user"})


# --------------------------------------------------------------------------------------------------- parsing


def parse_chat(body: object, capabilities: EngineCapabilities) -> ChatBody:
    """Check a chat completions body; `OpenAIError` naming the field when something is wrong."""
    fields = _Fields(body, _CHAT)
    messages = _messages(fields.body.get("messages"))
    fields.refuse("top_logprobs", _falsy, "log probabilities are not returned")
    fields.refuse("tools", _falsy, "tool calls are not supported")
    fields.refuse("tool_choice", lambda v: v in (None, "none", "auto"), "tool calls are not supported")
    max_tokens = fields.integer("max_tokens", 1)
    max_completion = fields.integer("max_completion_tokens", 1)
    if max_tokens is not None and max_completion is not None and max_tokens != max_completion:
        raise OpenAIError("give max_completion_tokens or max_tokens, not both with different values",
                          param="max_completion_tokens")
    sampling = _sampling(fields, capabilities, max_completion if max_completion is not None else max_tokens)
    stream, include_usage = _stream(fields)
    return ChatBody(_model(fields), messages, sampling, stream, include_usage)


def parse_completion(body: object, capabilities: EngineCapabilities) -> CompletionBody:
    """Check a completions body; `OpenAIError` naming the field when something is wrong."""
    fields = _Fields(body, _COMPLETION)
    prompts = _prompts(fields.body.get("prompt"))
    fields.refuse("suffix", _falsy, "insertion after a suffix is not supported")
    max_tokens = fields.integer("max_tokens", 1)
    sampling = _sampling(fields, capabilities, COMPLETIONS_DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens)
    best_of = fields.integer("best_of", 1)
    if best_of is not None and best_of != sampling.n:
        raise OpenAIError(f"best_of must equal n ({sampling.n}): ranking candidates is not supported",
                          param="best_of")
    stream, include_usage = _stream(fields)
    echo = fields.boolean("echo")
    if echo and stream:
        raise OpenAIError("echo is not supported with stream", param="echo")
    return CompletionBody(_model(fields), prompts, sampling, stream, include_usage, echo)


def parse_embedding(body: object) -> EmbeddingBody:
    """Check an embeddings body; `OpenAIError` naming the field when something is wrong."""
    fields = _Fields(body, _EMBEDDING)
    raw = fields.body.get("input")
    if isinstance(raw, str):
        inputs: tuple[str, ...] = (raw,)
    elif isinstance(raw, list) and raw and all(isinstance(t, str) for t in raw):
        inputs = tuple(raw)
    elif isinstance(raw, list) and raw and all(isinstance(t, int | list) for t in raw):
        raise OpenAIError("input as token ids is not supported; send text", param="input")
    else:
        raise OpenAIError("input must be a string or a non-empty list of strings", param="input")
    if any(not text for text in inputs):
        raise OpenAIError("input must not hold empty strings", param="input")
    encoding = fields.string("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise OpenAIError(f"encoding_format must be 'float' or 'base64', got {encoding!r}", param="encoding_format")
    dimensions = fields.integer("dimensions", 1)
    return EmbeddingBody(_model(fields), inputs, "base64" if encoding == "base64" else "float", dimensions)


def bounded_params(sampling: RequestedSampling, prompt_tokens: int, context_length: int,
                   prompt_param: str) -> SamplingParams:
    """The `SamplingParams` of a prompt of ``prompt_tokens`` tokens in a context window of ``context_length``:
    400 naming ``prompt_param`` when the prompt fills the window, naming ``max_tokens`` when prompt plus
    ``max_tokens`` exceed it; without ``max_tokens``, as many as the window leaves."""
    if prompt_tokens < 1:
        raise OpenAIError("the prompt is empty", param=prompt_param)
    room = context_length - prompt_tokens
    if room < 1:
        raise OpenAIError(f"This model's maximum context length is {context_length} tokens; the prompt has "
                          f"{prompt_tokens} tokens, which leaves no room for a completion.", param=prompt_param,
                          openai_code="context_length_exceeded")
    max_tokens = room if sampling.max_tokens is None else sampling.max_tokens
    if max_tokens > room:
        raise OpenAIError(f"This model's maximum context length is {context_length} tokens; you asked for "
                          f"{prompt_tokens + max_tokens} ({prompt_tokens} in the prompt, {max_tokens} in the "
                          f"completion). Lower max_tokens to at most {room}.", param="max_tokens",
                          openai_code="context_length_exceeded")
    if sampling.min_tokens > max_tokens:
        raise OpenAIError(f"min_tokens ({sampling.min_tokens}) must not exceed max_tokens ({max_tokens})",
                          param="min_tokens")
    return SamplingParams(max_tokens=max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
                          seed=sampling.seed, stop=sampling.stop, n=sampling.n, min_tokens=sampling.min_tokens,
                          presence_penalty=sampling.presence_penalty, frequency_penalty=sampling.frequency_penalty,
                          json_schema=sampling.json_schema)


def _model(fields: _Fields) -> str | None:
    name = fields.string("model")
    if name is not None and not name:
        raise OpenAIError("model must not be empty", param="model")
    return name


def _stream(fields: _Fields) -> tuple[bool, bool]:
    stream = fields.boolean("stream")
    options = fields.body.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise OpenAIError("stream_options is only allowed when stream is true", param="stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage", "continuous_usage_stats"}:
        raise OpenAIError("stream_options must be an object with include_usage", param="stream_options")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise OpenAIError("stream_options.include_usage must be a boolean", param="stream_options")
    if options.get("continuous_usage_stats"):
        raise OpenAIError("stream_options.continuous_usage_stats is not supported", param="stream_options")
    return stream, include


def _sampling(fields: _Fields, capabilities: EngineCapabilities, max_tokens: int | None) -> RequestedSampling:
    fields.refuse("logprobs", _falsy, "log probabilities are not returned")
    fields.refuse("logit_bias", _falsy, "logit biases are not supported")
    presence = fields.number("presence_penalty", 0.0, -2.0, 2.0)
    frequency = fields.number("frequency_penalty", 0.0, -2.0, 2.0)
    for name, value in (("presence_penalty", presence), ("frequency_penalty", frequency)):
        if value != 0.0 and not capabilities.penalties:
            raise OpenAIError(f"{name} is not supported by this model's backend (only 0)", param=name)
    n = fields.integer("n", 1, MAX_N) or 1
    if n > 1 and not capabilities.n:
        raise OpenAIError("n above 1 is not supported by this model's backend", param="n")
    seed = fields.integer("seed", -(2**63), 2**63 - 1)
    if seed is not None and not capabilities.seed:
        raise OpenAIError("seed is not supported by this model's backend", param="seed")
    min_tokens = fields.integer("min_tokens", 0) or 0
    if max_tokens is not None and min_tokens > max_tokens:
        raise OpenAIError(f"min_tokens ({min_tokens}) must not exceed max_tokens ({max_tokens})", param="min_tokens")
    return RequestedSampling(
        max_tokens=max_tokens, temperature=fields.number("temperature", 1.0, 0.0, 2.0),
        top_p=fields.number("top_p", 1.0, 0.0, 1.0, low_open=True), seed=seed, stop=_stop(fields.body.get("stop")),
        n=n, min_tokens=min_tokens, presence_penalty=presence, frequency_penalty=frequency,
        json_schema=_json_schema(fields.body.get("response_format"), capabilities))


def _stop(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise OpenAIError("stop must be a non-empty string or a list of non-empty strings", param="stop")
    return tuple(stops)


def _json_schema(value: object, capabilities: EngineCapabilities) -> Mapping[str, Any] | None:
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind not in ("json_object", "json_schema"):
        raise OpenAIError("response_format.type must be 'text', 'json_object' or 'json_schema'",
                          param="response_format")
    if not capabilities.json_schema:
        raise OpenAIError(f"response_format {kind!r} is not supported by this model's backend (no guided "
                          f"decoding); only {{'type': 'text'}}", param="response_format")
    assert isinstance(value, dict)
    if kind == "json_object":
        return {"type": "object"}
    spec = value.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise OpenAIError("response_format.json_schema.schema must be a JSON schema object", param="response_format")
    return schema


def _messages(value: object) -> tuple[Mapping[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise OpenAIError("messages must be a non-empty list of messages", param="messages")
    return tuple(_message(index, message) for index, message in enumerate(value))


def _message(index: int, message: object) -> Mapping[str, str]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise OpenAIError(f"{where} must be an object with role and content", param="messages")
    role = message.get("role")
    if role not in _ROLES:
        raise OpenAIError(f"{where}.role must be one of {', '.join(_ROLES)}, got {role!r}", param="messages")
    if message.get("tool_calls") or message.get("function_call"):
        raise OpenAIError(f"{where}: tool calls are not supported", param="messages")
    extra = sorted(set(message) - {"role", "content", "name", "tool_calls", "function_call", "refusal"})
    if extra:
        raise OpenAIError(f"{where} has an unknown field {extra[0]!r}", param="messages")
    content = message.get("content")
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise OpenAIError(f"{where}.content parts must be text parts ({{'type': 'text', 'text': ...}})",
                              param="messages")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise OpenAIError(f"{where}.content must be a string or a list of text parts", param="messages")
    return {"role": str(role), "content": content}


def _prompts(value: object) -> tuple[Prompt, ...]:
    def ids(candidate: object) -> tuple[int, ...] | None:
        if isinstance(candidate, list) and candidate and all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in candidate):
            return tuple(candidate)
        return None

    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, list) and value:
        if all(isinstance(p, str) and p for p in value):
            return tuple(value)
        single = ids(value)
        if single is not None:
            return (single,)
        many = [ids(p) for p in value]
        if all(p is not None for p in many):
            return tuple(p for p in many if p is not None)
    raise OpenAIError("prompt must be a non-empty string, a list of non-empty strings, a list of token ids "
                      "(non-negative integers) or a list of such lists", param="prompt")

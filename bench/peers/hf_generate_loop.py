"""The "plain transformers generate loop" peer of bench/llm.py: a FastAPI app that answers one request at a time with
``model.generate``, streaming each token as it comes, the way a user writes a first language-model endpoint.

It speaks just enough of OpenAI's ``POST /v1/completions`` for the benchmark's client (``prompt``, ``max_tokens``,
``min_tokens``, ``temperature`` 0, ``stream``); a lock serialises generation (``generate`` runs one batch, so a second
request waits for the first to finish). The model folder is named by ``BENCH_MODEL_DIR``.

    BENCH_MODEL_DIR=/path/to/save_pretrained uvicorn hf_generate_loop:app --app-dir bench/peers --port 8001
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer

torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
tokenizer = AutoTokenizer.from_pretrained(os.environ["BENCH_MODEL_DIR"])
model = AutoModelForCausalLM.from_pretrained(os.environ["BENCH_MODEL_DIR"]).eval()
lock = threading.Lock()
app = FastAPI()


class Completion(BaseModel):
    """The request body (the fields the benchmark sends)."""

    model: str = "peer"
    prompt: str
    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 0.0
    stream: bool = False


class TokenQueue(BaseStreamer):  # type: ignore[misc]  # transformers ships no type information for it
    """Hands each generated token to the HTTP response as it is produced (``generate`` calls `put` per step)."""

    def __init__(self) -> None:
        self.tokens: queue.Queue[int | None] = queue.Queue()
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() puts the prompt first
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.tokens.put(int(token))

    def end(self) -> None:
        self.tokens.put(None)


@app.get("/health")
def health() -> dict[str, str]:
    """Ready once the module (and so the model) is loaded."""
    return {"status": "ok"}


def _generate(body: Completion, streamer: TokenQueue | None) -> list[int]:
    ids = tokenizer(body.prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=body.max_tokens,
                             min_new_tokens=body.min_tokens, do_sample=False, streamer=streamer,
                             pad_token_id=tokenizer.pad_token_id)
    return [int(t) for t in out[0, ids.shape[1]:].tolist()]


def _chunk(text: str, finish: str | None = None, usage: dict[str, int] | None = None) -> str:
    choice = {"index": 0, "text": text, "finish_reason": finish}
    return "data: " + json.dumps({"object": "text_completion", "created": int(time.time()), "model": "peer",
                                  "choices": [] if usage else [choice], "usage": usage}) + "\n\n"


def _stream(body: Completion) -> Iterator[str]:
    with lock:
        streamer = TokenQueue()
        worker = threading.Thread(target=_generate, args=(body, streamer), daemon=True)
        worker.start()
        count = 0
        while (token := streamer.tokens.get()) is not None:
            count += 1
            yield _chunk(tokenizer.decode([token]))
        worker.join()
    yield _chunk("", "length")
    prompt_tokens = len(tokenizer(body.prompt).input_ids)
    yield _chunk("", usage={"prompt_tokens": prompt_tokens, "completion_tokens": count,
                            "total_tokens": prompt_tokens + count})
    yield "data: [DONE]\n\n"


@app.post("/v1/completions", response_model=None)
def completions(body: Completion) -> StreamingResponse | dict[str, Any]:
    """Generate one completion (streamed when ``stream`` is true), one request at a time."""
    if body.stream:
        return StreamingResponse(_stream(body), media_type="text/event-stream")
    with lock:
        tokens = _generate(body, None)
    return {"object": "text_completion", "model": "peer",
            "choices": [{"index": 0, "text": tokenizer.decode(tokens), "finish_reason": "length"}],
            "usage": {"completion_tokens": len(tokens)}}

"""Fine-tuning a language model as a training job: the options, their checks, and the training data's rows.

``capstan finetune BASE --data FILE.jsonl`` (`capstan.cli.finetune_cmds`) checks everything here before anything
starts, then runs ``python -m capstan.cli.finetune_job`` as a training job whose arguments are `FinetuneOptions.argv`.
The job (`capstan.llm.finetune_worker`) trains, tracks the loss, checkpoints, and registers the result.

A row of the data file is one JSON object per line, in one of three forms:

- ``{"prompt": "...", "completion": "..."}``: the loss is on the completion only;
- ``{"messages": [{"role": "user", "content": "..."}, ..., {"role": "assistant", "content": "..."}]}``: rendered
  with the model's chat template; the loss is on the last (assistant) message only;
- ``{"text": "..."}``: the loss is on the whole text.

Blank lines are skipped. Everything here is pure except `read_examples`, which reads the file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from capstan.errors import InvalidParameterValue

__all__ = ["METHODS", "Example", "FinetuneOptions", "default_register_name", "parse_example", "parse_examples",
           "read_examples"]

Method = Literal["lora", "full"]
METHODS: tuple[Method, ...] = ("lora", "full")
DEFAULT_LR: Mapping[str, float] = {"lora": 2e-4, "full": 5e-5}
"""The learning rate when ``--lr`` is not given: LoRA's low-rank updates take a larger step than full weights."""
_ROLES = ("system", "user", "assistant", "tool")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


@dataclass(frozen=True, slots=True)
class Example:
    """One training row: what the model reads (``prompt`` or ``messages[:-1]``) and what it learns to write."""

    kind: Literal["completion", "chat", "text"]
    prompt: str = ""
    completion: str = ""
    messages: tuple[Mapping[str, str], ...] = ()
    text: str = ""


def _fail(line: int, message: str) -> InvalidParameterValue:
    return InvalidParameterValue(f"--data: line {line}: {message}")


def _string(row: Mapping[str, Any], key: str, line: int) -> str:
    value = row[key]
    if not isinstance(value, str):
        raise _fail(line, f"{key!r} must be a string, got {type(value).__name__}")
    return value


def _messages(value: Any, line: int) -> tuple[Mapping[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise _fail(line, "'messages' must be a non-empty list of {\"role\", \"content\"} objects")
    out: list[Mapping[str, str]] = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise _fail(line, f"messages[{i}] must be an object with string 'role' and 'content'")
        if message["role"] not in _ROLES:
            raise _fail(line, f"messages[{i}].role must be one of {', '.join(_ROLES)}, got {message['role']!r}")
        out.append({"role": message["role"], "content": message["content"]})
    if out[-1]["role"] != "assistant":
        raise _fail(line, "the last message must be the assistant's (the one the model learns to write)")
    return tuple(out)


def parse_example(text: str, line: int) -> Example:
    """One JSON line as an `Example`; `InvalidParameterValue` names the line (``--data: line 3: ...``)."""
    try:
        row = json.loads(text)
    except ValueError as exc:
        raise _fail(line, f"not valid JSON ({exc})") from None
    if not isinstance(row, dict):
        raise _fail(line, f"expected a JSON object, got {type(row).__name__}")
    forms = [key for key in ("prompt", "messages", "text") if key in row]
    if len(forms) != 1:
        raise _fail(line, "expected exactly one of {\"prompt\", \"completion\"}, {\"messages\"} or {\"text\"}"
                    + (f"; got {', '.join(sorted(row)) or 'no keys'}" if len(forms) == 0 else
                       f"; got {' and '.join(forms)}"))
    if forms[0] == "prompt":
        if "completion" not in row:
            raise _fail(line, "a 'prompt' row needs a 'completion'")
        completion = _string(row, "completion", line)
        if not completion:
            raise _fail(line, "'completion' is empty: there is nothing to learn")
        return Example("completion", prompt=_string(row, "prompt", line), completion=completion)
    if forms[0] == "messages":
        return Example("chat", messages=_messages(row["messages"], line))
    body = _string(row, "text", line)
    if not body:
        raise _fail(line, "'text' is empty: there is nothing to learn")
    return Example("text", text=body)


def parse_examples(lines: Iterable[str]) -> list[Example]:
    """Every non-blank line as an `Example` (the first bad line raises); at least one is required."""
    examples = [parse_example(text, number) for number, text in enumerate(lines, start=1) if text.strip()]
    if not examples:
        raise InvalidParameterValue("--data: the file has no rows")
    return examples


def read_examples(path: str | Path) -> list[Example]:
    """The rows of the JSONL file at ``path``; a missing or unreadable file names the option."""
    file = Path(path)
    if not file.is_file():
        raise InvalidParameterValue(f"--data: {str(file)!r} does not exist or is not a file")
    try:
        with open(file, encoding="utf-8") as handle:
            return parse_examples(handle)
    except UnicodeDecodeError as exc:
        raise InvalidParameterValue(f"--data: {str(file)!r} is not UTF-8 text ({exc.reason})") from None


def default_register_name(base_model: str, method: str) -> str:
    """``NAME-lora`` (or ``NAME-ft`` for full fine-tuning) from the base's registered name or folder name."""
    stem = base_model
    if base_model.startswith("models:/"):
        stem = base_model.removeprefix("models:/").split("@", 1)[0].split("/", 1)[0]
    elif base_model.startswith("runs:/"):
        stem = base_model.rstrip("/").rsplit("/", 1)[-1]
    else:
        stem = Path(base_model.removeprefix("file://").rstrip("/")).name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._") or "model"
    return f"{stem}-{'lora' if method == 'lora' else 'ft'}"


@dataclass(frozen=True, slots=True)
class FinetuneOptions:
    """What one fine-tuning job does (the options of ``capstan finetune``, passed to its worker as arguments)."""

    base_model: str
    data: str
    method: str = "lora"
    epochs: int = 1
    lr: float | None = None
    batch_size: int = 8
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    max_length: int = 0
    """Tokens per row, longer rows cut (0: the model's context window)."""
    register_as: str | None = None
    checkpoint_every: int = 50
    seed: int = 0

    @property
    def learning_rate(self) -> float:
        """``lr``, or the method's default (`DEFAULT_LR`)."""
        return self.lr if self.lr is not None else DEFAULT_LR.get(self.method, DEFAULT_LR["lora"])

    @property
    def registered_name(self) -> str:
        """The registered model the result becomes a version of."""
        return self.register_as or default_register_name(self.base_model, self.method)

    def check(self) -> FinetuneOptions:
        """Self, once every option is valid; else `InvalidParameterValue` naming the option."""
        if self.method not in METHODS:
            raise InvalidParameterValue(f"--method: must be one of {', '.join(METHODS)}, got {self.method!r}")
        checks: Sequence[tuple[str, float, float]] = (
            ("--epochs", self.epochs, 1), ("--batch-size", self.batch_size, 1), ("--lora-rank", self.lora_rank, 1),
            ("--checkpoint-every", self.checkpoint_every, 1), ("--max-length", self.max_length, 0))
        for option, value, low in checks:
            if value < low:
                raise InvalidParameterValue(f"{option}: must be at least {low:g}, got {value:g}")
        for option, number in (("--lr", self.learning_rate), ("--lora-alpha", self.lora_alpha)):
            if not number > 0 or number == float("inf"):
                raise InvalidParameterValue(f"{option}: must be a positive number, got {number:g}")
        if not 0 <= self.lora_dropout < 1:
            raise InvalidParameterValue(f"--lora-dropout: must be in [0, 1), got {self.lora_dropout:g}")
        if not _NAME.match(self.registered_name):
            raise InvalidParameterValue(f"--register-as: {self.registered_name!r} is not a model name (letters, "
                                        "digits, '.', '_' and '-', at most 200)")
        return self

    def argv(self) -> list[str]:
        """The worker's command-line arguments (`from_argv` reads them back)."""
        out = [self.base_model, "--data", self.data, "--method", self.method, "--epochs", str(self.epochs),
               "--lr", repr(self.learning_rate), "--batch-size", str(self.batch_size), "--lora-rank",
               str(self.lora_rank), "--lora-alpha", str(self.lora_alpha), "--lora-dropout", repr(self.lora_dropout),
               "--max-length", str(self.max_length), "--register-as", self.registered_name,
               "--checkpoint-every", str(self.checkpoint_every), "--seed", str(self.seed)]
        return out

    @classmethod
    def from_argv(cls, argv: Sequence[str]) -> FinetuneOptions:
        """The options `argv` wrote."""
        import argparse

        parser = argparse.ArgumentParser(prog="capstan.cli.finetune_job", exit_on_error=False)
        parser.add_argument("base_model")
        for name, kind in (("--data", str), ("--method", str), ("--epochs", int), ("--lr", float),
                           ("--batch-size", int), ("--lora-rank", int), ("--lora-alpha", int),
                           ("--lora-dropout", float), ("--max-length", int), ("--register-as", str),
                           ("--checkpoint-every", int), ("--seed", int)):
            parser.add_argument(name, type=kind, required=name == "--data")
        ns = parser.parse_args(list(argv))
        given = {k: v for k, v in vars(ns).items() if v is not None}
        return cls(**given).check()

"""The training loop of a fine-tuning job: tokenize the rows, train (LoRA with peft, or every weight), resume.

`train` runs in every process of the job's gang (``torch.distributed`` with DDP when the world has more than one
process: gloo on CPU, NCCL on GPUs). It reaches the tracking run only through `TrainingHooks` (the job's entry
point, `capstan.cli.finetune_job`, wires them to ``capstan.log_metrics`` and `capstan.checkpoint`), so this module
imports neither the SDK nor the stores.

Steps are counted across epochs. Each epoch visits the rows in an order drawn from ``seed + epoch``, so a resumed
job continues exactly where its checkpoint was taken: the checkpoint holds the trainable weights (the LoRA matrices,
or the whole model), the optimizer's state and the step. torch, transformers and peft are imported when training
starts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capstan.llm.finetune import Example, FinetuneOptions
from capstan.llm.lora import pretrained_folder

__all__ = ["IGNORE", "TrainedModel", "TrainingHooks", "encode_example", "train"]

IGNORE = -100
"""The label of a token the loss skips (the prompt's tokens, padding): PyTorch's cross-entropy ``ignore_index``."""


@dataclass(frozen=True, slots=True)
class TrainingHooks:
    """How the loop reaches its job: log a step's metrics, load the latest checkpoint (``(state, step)`` or None),
    save one (rank 0 writes), and print a progress line."""

    log_metrics: Callable[[Mapping[str, float], int], None]
    load_latest: Callable[[], tuple[Any, int] | None]
    save: Callable[[Any, int], None]
    say: Callable[[str], None] = print


@dataclass(frozen=True, slots=True)
class TrainedModel:
    """The result: a peft model (``method == "lora"``) or a transformers model, its tokenizer, and the run's last
    step and loss."""

    model: Any
    tokenizer: Any
    method: str
    steps: int
    last_loss: float


def encode_example(example: Example, tokenizer: Any, max_length: int) -> tuple[list[int], list[int]]:
    """The row's token ids and labels (`IGNORE` where the loss does not apply: the prompt), cut to ``max_length``.
    The end-of-sequence token closes what the model learns to write, so it learns to stop."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if example.kind == "completion":
        prompt = tokenizer.encode(example.prompt, add_special_tokens=False)
        answer = tokenizer.encode(example.completion, add_special_tokens=False) + eos
    elif example.kind == "chat":
        prompt = _chat_ids(tokenizer, example.messages[:-1], generation_prompt=True)
        full = _chat_ids(tokenizer, example.messages, generation_prompt=False)
        answer = full[len(prompt):] if full[:len(prompt)] == prompt else full
        prompt = prompt if full[:len(prompt)] == prompt else []
        answer = answer + eos if not answer or answer[-1] not in eos else answer
    else:
        prompt, answer = [], tokenizer.encode(example.text, add_special_tokens=False) + eos
    ids = (prompt + answer)[:max_length]
    labels = ([IGNORE] * len(prompt) + answer)[:max_length]
    return ids, labels


def _chat_ids(tokenizer: Any, messages: Sequence[Mapping[str, str]], *, generation_prompt: bool) -> list[int]:
    if not messages:
        return []
    rendered = tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False,
                                             add_generation_prompt=generation_prompt)
    return list(tokenizer.encode(rendered, add_special_tokens=False))


@dataclass(slots=True)
class _World:
    rank: int
    size: int
    local_rank: int
    device: Any

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _world() -> _World:
    import torch

    rank, size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if size > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _World(rank, size, local, device)


def _load_model(options: FinetuneOptions, base_folder: Path, world: _World) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # The job's log holds one line per step, not progress bars.
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # transformers leaves it unannotated
    folder = str(pretrained_folder(base_folder))
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model: Any = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if options.method == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=options.lora_rank, lora_alpha=options.lora_alpha, lora_dropout=options.lora_dropout,
                            target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(model, config)
    return model.to(world.device), tokenizer


def _batches(rows: Sequence[tuple[list[int], list[int]]], options: FinetuneOptions, world: _World,
             epoch: int) -> list[list[int]]:
    """This rank's batches of row indices in ``epoch``: a seeded shuffle, split between ranks (cycled so every rank
    takes as many steps), cut into batches."""
    import torch

    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(options.seed + epoch)).tolist()
    per_rank = math.ceil(len(order) / world.size)
    mine = [order[(world.rank + world.size * i) % len(order)] for i in range(per_rank)]
    return [mine[i:i + options.batch_size] for i in range(0, len(mine), options.batch_size)]


def _collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int, device: Any) -> dict[str, Any]:
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = [r[0] + [pad_id] * (width - len(r[0])) for r in rows]
    labels = [r[1] + [IGNORE] * (width - len(r[1])) for r in rows]
    mask = [[1] * len(r[0]) + [0] * (width - len(r[0])) for r in rows]
    return {"input_ids": torch.tensor(ids, device=device), "labels": torch.tensor(labels, device=device),
            "attention_mask": torch.tensor(mask, device=device)}


def _trainable_state(model: Any, method: str) -> dict[str, Any]:
    if method == "lora":
        from peft import get_peft_model_state_dict

        return {k: v.detach().cpu() for k, v in get_peft_model_state_dict(model).items()}
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _restore(model: Any, method: str, weights: Mapping[str, Any]) -> None:
    if method == "lora":
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, dict(weights))
    else:
        model.load_state_dict(dict(weights))


def train(options: FinetuneOptions, examples: Sequence[Example], base_folder: Path,
          hooks: TrainingHooks) -> TrainedModel:
    """Fine-tune the model in ``base_folder`` on ``examples`` (see the module docstring); returns the trained model
    (on every rank; rank 0 publishes it)."""
    import torch

    torch.manual_seed(options.seed)
    world = _world()
    model, tokenizer = _load_model(options, base_folder, world)
    limit = options.max_length or int(getattr(model.config, "n_positions", 0)
                                       or getattr(model.config, "max_position_embeddings", 0) or 1024)
    rows = [encode_example(example, tokenizer, limit) for example in examples]
    learnable = [r for r in rows if any(label != IGNORE for label in r[1])]
    if len(learnable) < len(rows):
        hooks.say(f"{len(rows) - len(learnable)} row(s) have no completion token within {limit} tokens; skipped")
    if not learnable:
        raise ValueError(f"no row has a completion token within --max-length {limit}")
    module = model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        module = DistributedDataParallel(model, device_ids=[world.device.index] if world.device.type == "cuda"
                                         else None)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=options.learning_rate)
    steps_per_epoch = len(_batches(learnable, options, world, 0))
    total = steps_per_epoch * options.epochs
    start = 0
    found = hooks.load_latest()
    if found is not None:
        state, step = found
        _restore(model, options.method, state["weights"])
        optimizer.load_state_dict(state["optimizer"])
        start = step + 1
        hooks.say(f"resumed from step {step} (checkpoint), {total - start} step(s) left")
    loss_value = float("nan")
    model.train()
    for step in range(start, total):
        epoch, index = divmod(step, steps_per_epoch)
        batch = _collate([learnable[i] for i in _batches(learnable, options, world, epoch)[index]],
                         tokenizer.pad_token_id, world.device)
        loss = module(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach().cpu())
        hooks.log_metrics({"loss": loss_value, "epoch": float(epoch)}, step)
        hooks.say(f"step {step} epoch {epoch} loss {loss_value:.4f}")
        if (step + 1) % options.checkpoint_every == 0 or step == total - 1:
            hooks.save({"weights": _trainable_state(model, options.method), "optimizer": optimizer.state_dict()},
                       step)
            hooks.say(f"checkpoint at step {step}")
    model.eval()
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()
    return TrainedModel(model, tokenizer, options.method, total, loss_value)

"""Per-request logits processors added to transformers' continuous-batching manager: ``min_tokens`` (no end of
sequence before that many tokens) and ``seed`` (a sequence's sampling reproducible whatever else is in the batch).

transformers' manager applies per-request temperature, top-k and top-p itself but has neither of these: its
``min_new_tokens`` is per manager and counts the batch's tokens, and its sampler draws from one global generator. Each
processor here reads its per-request value from the request's ``logit_processor_kwargs`` and turns it into one int32
per batch row, as the manager's own per-request processors do.

`install_processors` adds them to a manager's processor list (torch imported lazily) with a fast path for greedy
batches: the engine asks for greedy decoding as top-k 1, and when every row of a batch is greedy, transformers'
temperature, top-k and top-p warpers (two sorts of the vocabulary per row) are skipped and each row's scores become
the one-hot argmax, which the manager's sampler can only pick — the token ``generate(do_sample=False)`` picks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["GREEDY_TOP_K", "MIN_TOKENS_KW", "SEED_KW", "install_processors", "seed_key"]

MIN_TOKENS_KW = "capstan_min_tokens"
SEED_KW = "capstan_seed"
GREEDY_TOP_K = 1
"""The per-request ``top_k`` with which the engine asks for greedy decoding."""
_MODULUS = 2**31 - 1
_STEP_STRIDE = 1_000_003


def seed_key(seed: int, step: int) -> int:
    """The generator seed of a sequence's ``step``-th token: a function of the request's seed and the step only."""
    return (seed % _MODULUS * _STEP_STRIDE + step) % _MODULUS


class _Batch:
    """What the processors know of the batch being prepared: whether every row in it is greedy."""

    greedy = False


def install_processors(processors: Any, eos_token_ids: Sequence[int]) -> None:
    """Add min-tokens first (EOS masked before temperature and top-k, as ``generate`` does), seeded sampling after
    the manager's own warpers (it draws from the final distribution), and the greedy fast path, to ``processors``
    (a manager's ``logit_processor``). The manager sizes its per-row argument tensor from ``tensors_required`` when
    its generation thread starts, so this runs before it starts. Every processor learns about a batch in
    ``prepare_tensor_args``, which the manager calls for each batch just before its forward pass (double buffering
    is off)."""
    from transformers.generation.continuous_batching.cb_logits_processors import ContinuousBatchingLogitsProcessor

    batch = _Batch()
    min_tokens, seeded, skippable, greedy = _build(eos_token_ids, batch)
    chain = processors.logits_processor
    for i, processor in enumerate(chain):
        if isinstance(processor, ContinuousBatchingLogitsProcessor):
            chain[i] = skippable(processor)
    chain.insert(0, min_tokens)
    chain.append(seeded)
    chain.append(greedy)
    processors.tensors_required += 2
    processors.supported_keys.update(min_tokens.supported_kwargs)
    processors.supported_keys.update(seeded.supported_kwargs)
    processors.do_processing = True


def _build(eos_token_ids: Sequence[int], batch: _Batch) -> tuple[Any, Any, Any, Any]:
    """The min-tokens and seeded-sampling processors, the wrapper that skips a warper in a greedy batch, and the
    greedy argmax."""
    import torch
    from transformers.generation.continuous_batching.cb_logits_processors import ContinuousBatchingLogitsProcessor

    eos = sorted({int(i) for i in eos_token_ids if int(i) >= 0})

    class MinTokens(ContinuousBatchingLogitsProcessor):
        """Masks the end-of-sequence tokens of rows whose sequence is shorter than its ``min_tokens``.

        First in the list, it also notes whether every row of the batch is greedy (`_Batch`). A batch where no row
        needs masking costs nothing in ``__call__``; the EOS column mask is built once per vocabulary size and
        device."""

        supported_kwargs: dict[str, type] = {MIN_TOKENS_KW: int}
        ignored_kwargs: tuple[str, ...] = ()

        def __init__(self) -> None:
            self.active = True
            self.columns: torch.Tensor | None = None

        def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
            int32_tensor.fill_(0)

        def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
            kwargs = [r.state.logit_processor_kwargs for r in requests_with_new_token]
            batch.greedy = all(k.get("top_k") == GREEDY_TOP_K for k in kwargs)
            flags = [int(len(r.state.generated_tokens) < k.get(MIN_TOKENS_KW, 0))
                     for r, k in zip(requests_with_new_token, kwargs, strict=True)]
            self.active = any(flags)
            return torch.tensor(flags, dtype=torch.int32, device="cpu")

        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            if not eos or not self.active:
                return scores
            columns = self.columns
            if columns is None or columns.size(0) != scores.size(-1) or columns.device != scores.device:
                columns = torch.zeros(scores.size(-1), dtype=torch.bool, device=scores.device)
                columns[[i for i in eos if i < scores.size(-1)]] = True
                self.columns = columns
            rows = tensor_arg[: scores.size(0)].to(torch.bool).unsqueeze(-1)
            return scores.masked_fill(rows & columns, float("-inf"))

    class SeededSampling(ContinuousBatchingLogitsProcessor):
        """Draws a seeded row's token with its own generator and leaves only that token, so the manager's sampler
        can pick nothing else. Rows without a seed (-1) are untouched."""

        supported_kwargs: dict[str, type] = {SEED_KW: int}
        ignored_kwargs: tuple[str, ...] = ()

        def __init__(self) -> None:
            self.active = True

        def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
            int32_tensor.fill_(-1)

        def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
            keys = []
            for r in requests_with_new_token:
                seed = r.state.logit_processor_kwargs.get(SEED_KW)
                keys.append(-1 if seed is None else seed_key(seed, len(r.state.generated_tokens)))
            self.active = any(k >= 0 for k in keys)
            return torch.tensor(keys, dtype=torch.int32, device="cpu")

        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            if not self.active:
                return scores
            keys = tensor_arg[: scores.size(0)].tolist()
            if all(k < 0 for k in keys):
                return scores
            out = scores.clone()
            for row, key in enumerate(keys):
                if key < 0:
                    continue
                generator = torch.Generator(device=scores.device).manual_seed(int(key))
                probs = torch.softmax(scores[row].float(), dim=-1)
                token = int(torch.multinomial(probs, 1, generator=generator).item())
                out[row].fill_(float("-inf"))
                out[row, token] = 0.0
            return out

    class Skippable(ContinuousBatchingLogitsProcessor):
        """One of transformers' per-request warpers, skipped (arguments and all) in a greedy batch."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner
            self.supported_kwargs = inner.supported_kwargs
            self.ignored_kwargs = inner.ignored_kwargs

        def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
            self.inner.fill_defaults(int32_tensor)

        def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
            if batch.greedy:
                return torch.empty(0, dtype=torch.int32)
            result: torch.Tensor = self.inner.prepare_tensor_args(requests_with_new_token)
            return result

        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            if batch.greedy:
                return scores
            result: torch.Tensor = self.inner(scores, tensor_arg)
            return result

    def greedy(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """In a greedy batch, each row's scores become 0 at its argmax and -inf elsewhere."""
        if not batch.greedy or scores.size(0) == 0:
            return scores
        return torch.full_like(scores, float("-inf")).scatter_(-1, scores.argmax(-1, keepdim=True), 0.0)

    return MinTokens(), SeededSampling(), Skippable, greedy

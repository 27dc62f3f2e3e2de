"""Per-request logits processors added to transformers' continuous-batching manager: ``min_tokens`` (no end of
sequence before that many tokens) and ``seed`` (a sequence's sampling reproducible whatever else is in the batch).

transformers' manager applies per-request temperature, top-k and top-p itself but has neither of these: its
``min_new_tokens`` is per manager and counts the batch's tokens, and its sampler draws from one global generator. Each
processor here reads its per-request value from the request's ``logit_processor_kwargs`` and turns it into one int32
per batch row, as the manager's own per-request processors do. Built by `build_processors` (torch imported lazily).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["MIN_TOKENS_KW", "SEED_KW", "build_processors", "seed_key"]

MIN_TOKENS_KW = "capstan_min_tokens"
SEED_KW = "capstan_seed"
_MODULUS = 2**31 - 1
_STEP_STRIDE = 1_000_003


def seed_key(seed: int, step: int) -> int:
    """The generator seed of a sequence's ``step``-th token: a function of the request's seed and the step only."""
    return (seed % _MODULUS * _STEP_STRIDE + step) % _MODULUS


def build_processors(eos_token_ids: Sequence[int]) -> tuple[Any, Any]:
    """The min-tokens processor (apply first) and the seeded-sampling processor (apply last)."""
    import torch
    from transformers.generation.continuous_batching.cb_logits_processors import ContinuousBatchingLogitsProcessor

    eos = sorted({int(i) for i in eos_token_ids if int(i) >= 0})

    class MinTokens(ContinuousBatchingLogitsProcessor):
        """Masks the end-of-sequence tokens of rows whose sequence is shorter than its ``min_tokens``.

        The manager prepares a batch's arguments just before its forward pass (double buffering is off), so whether
        any row needs masking is known in Python then, and a batch with none costs nothing in ``__call__``; the EOS
        column mask is built once per vocabulary size and device."""

        supported_kwargs: dict[str, type] = {MIN_TOKENS_KW: int}
        ignored_kwargs: tuple[str, ...] = ()

        def __init__(self) -> None:
            self.active = True
            self.columns: torch.Tensor | None = None

        def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
            int32_tensor.fill_(0)

        def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
            flags = [int(len(r.state.generated_tokens) < r.state.logit_processor_kwargs.get(MIN_TOKENS_KW, 0))
                     for r in requests_with_new_token]
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

    return MinTokens(), SeededSampling()

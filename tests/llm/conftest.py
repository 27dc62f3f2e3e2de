"""Fixtures of the LLM tests: the tiny model folder (built once per session), skipped without the llm extra."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the LLM tests need torch: pip install torch==2.13.0 (the CPU build)")
pytest.importorskip("transformers", reason="the LLM tests need the llm extra: pip install '.[llm]'")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``save_pretrained`` folder of a seeded 2-layer GPT-2 and its BPE tokenizer with a chat template."""
    from llm_tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llm") / "model")

"""The `Embedder` port over a sentence-transformers model loaded from a local folder (never from a hub).

sentence-transformers does what an embedding model needs (its modules: the transformer, pooling, normalisation) from
the folder's ``modules.json``; this adapter adds the token counts ``usage`` reports and unit-length vectors, as
OpenAI's embeddings are. It is imported lazily: without the ``llm`` extra, loading fails with one line naming it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from capstan.errors import InvalidParameterValue
from capstan.llm.ports import Embedding
from capstan.models.transformers_flavor import require_llm_extra

__all__ = ["SentenceEmbedder"]


class SentenceEmbedder:
    """A sentence-transformers model behind `capstan.llm.ports.Embedder`.

    Inputs longer than the model's window are truncated to it (as sentence-transformers does); ``prompt_tokens``
    counts the tokens actually embedded. Calls are serialised: the route runs them in worker threads and one
    forward pass at a time keeps the model's memory bounded."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self._lock = threading.Lock()
        dimensions = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else (
            model.get_sentence_embedding_dimension())
        if not isinstance(dimensions, int):
            raise InvalidParameterValue("model: the sentence-transformers model does not say its embedding size")
        self._dimensions = dimensions
        self._context = int(model.max_seq_length)

    @classmethod
    def from_folder(cls, folder: str | Path, *, device: str = "cpu") -> SentenceEmbedder:
        """Load the sentence-transformers model saved in ``folder`` on ``device``, offline."""
        require_llm_extra("torch", "transformers", "sentence_transformers")
        from sentence_transformers import SentenceTransformer

        try:
            model = SentenceTransformer(str(folder), device=device, local_files_only=True)
        except (OSError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InvalidParameterValue(f"cannot load the embedding model in {str(folder)!r}: {first}") from None
        model.eval()
        return cls(model)

    @property
    def dimensions(self) -> int:
        """The length of each vector."""
        return self._dimensions

    @property
    def context_length(self) -> int:
        """The longest input in tokens (longer ones are truncated)."""
        return self._context

    def embed(self, texts: Sequence[str]) -> Embedding:
        """Unit-length vectors of ``texts``, in order, and the tokens embedded (blocking)."""
        batch = list(texts)
        if not batch:
            return Embedding((), 0)
        with self._lock:
            counted = self._model.tokenizer(batch, truncation=True, max_length=self._context)["input_ids"]
            vectors = self._model.encode(batch, normalize_embeddings=True, convert_to_numpy=True,
                                         show_progress_bar=False)
        return Embedding(tuple(tuple(float(x) for x in row) for row in vectors), sum(len(ids) for ids in counted))

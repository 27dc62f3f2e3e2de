"""The `Tokenizer` port over a transformers tokenizer loaded from a local folder (never from a hub).

transformers is imported lazily: importing this module works without the ``llm`` extra; loading a tokenizer without it
fails with one line naming the extra.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from capstan.errors import InvalidParameterValue, InvalidState

__all__ = ["LLM_EXTRA", "HfTokenizer", "require_transformers"]

LLM_EXTRA = "llm"
"""The optional-dependency extra that installs torch and transformers (``pip install 'capstan[llm]'``)."""


def require_transformers() -> None:
    """Fail with one line naming the extra when torch or transformers is missing."""
    try:
        import torch  # noqa: F401  # imported only to check that the extra is installed
        import transformers  # noqa: F401  # imported only to check that the extra is installed
    except ImportError as exc:
        raise InvalidState(f"serving a language model needs torch and transformers, which are not installed "
                           f"({exc.name}): pip install 'capstan[{LLM_EXTRA}]'") from None


class HfTokenizer:
    """A transformers tokenizer behind the `capstan.llm.ports.Tokenizer` port.

    ``encode`` adds no special tokens (prompts are sent as given; chat prompts get theirs from the template).
    ``chat_prompt`` renders the model's chat template with the generation prompt; a model without a chat template
    refuses chat with `InvalidParameterValue` naming ``messages``."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._eos = _eos_ids(tokenizer)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> HfTokenizer:
        """Load the tokenizer saved in ``folder`` (``save_pretrained`` layout), offline: a missing file is an error."""
        require_transformers()
        from transformers import AutoTokenizer

        path = Path(folder)
        if not path.is_dir():
            raise InvalidParameterValue(f"tokenizer folder {str(path)!r} does not exist")
        try:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise InvalidParameterValue(f"cannot load a tokenizer from {str(path)!r}: "
                                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        return cls(tok)

    @property
    def hf(self) -> Any:
        """The wrapped transformers tokenizer."""
        return self._tok

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added."""
        return [int(i) for i in self._tok.encode(text, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``, special tokens skipped (what a client sees)."""
        return str(self._tok.decode(list(ids), skip_special_tokens=True))

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """The token ids of ``messages`` rendered by the model's chat template, ending with the generation prompt."""
        if not self.has_chat_template:
            raise InvalidParameterValue("messages: this model has no chat template; use /v1/completions instead")
        try:
            rendered = self._tok.apply_chat_template([dict(m) for m in messages], add_generation_prompt=True,
                                                     tokenize=True)
        except Exception as exc:  # noqa: BLE001  # a template raises anything (jinja errors); all mean bad messages
            raise InvalidParameterValue(f"messages: the chat template cannot render them: {exc}") from None
        ids = rendered["input_ids"] if hasattr(rendered, "keys") else rendered
        if ids and isinstance(ids[0], list):  # a batch of one
            ids = ids[0]
        return [int(i) for i in ids]

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The end-of-sequence token ids (the tokenizer's, plus the model's when given to the engine)."""
        return self._eos

    @property
    def has_chat_template(self) -> bool:
        """Whether the tokenizer carries a chat template."""
        return bool(getattr(self._tok, "chat_template", None))

    def __len__(self) -> int:
        return len(self._tok)


def _eos_ids(tokenizer: Any) -> tuple[int, ...]:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return ()
    if isinstance(eos, int):
        return (eos,)
    return tuple(int(i) for i in eos)

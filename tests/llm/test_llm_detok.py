"""Incremental detokenization never emits half a UTF-8 character; stop strings are cut across deltas."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from capstan.llm.detok import IncrementalDetokenizer
from capstan.llm.hf_tokenizer import HfTokenizer
from capstan.llm.stops import StopMatcher

TEXT = "héllo wörld — 世界 🙂 fox ü"


def test_streaming_one_token_at_a_time_gives_whole_characters(tiny_model_dir: Path) -> None:
    tok = HfTokenizer.from_pretrained(tiny_model_dir)
    ids = tok.encode(TEXT)
    assert len(ids) > len(TEXT.split())  # multi-byte characters are split over byte tokens
    detok = IncrementalDetokenizer(tok.decode)
    deltas = [detok.add([i]) for i in ids]
    deltas.append(detok.flush())
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == tok.decode(ids) == TEXT
    assert deltas.count("") > 0  # some tokens completed no character and were held back


def test_a_truncated_character_comes_out_on_flush() -> None:
    data = "a🙂".encode()

    def decode(ids: Sequence[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    detok = IncrementalDetokenizer(decode)
    assert detok.add(list(data[:1])) == "a"
    assert detok.add(list(data[1:3])) == ""
    assert detok.flush() == "\ufffd"
    assert detok.token_ids == tuple(data[:3])


def test_stop_strings_across_deltas_are_held_back_and_cut() -> None:
    stops = StopMatcher(["STOP", "\n\n"])
    out = [stops.feed(d) for d in ["hello S", "T", "Oops", " and ST", "OP then"]]
    assert out == ["hello ", "", "STOops", " and ", ""]
    assert stops.stopped and stops.feed("more") == "" and stops.flush() == ""


def test_held_text_is_flushed_when_the_sequence_ends_without_a_stop() -> None:
    stops = StopMatcher(["abc"])
    assert stops.feed("xxab") == "xx"
    assert stops.flush() == "ab"
    assert StopMatcher([]).feed("anything") == "anything"
    assert StopMatcher(["", "z"]).feed("az") == "a"

"""HfTokenizer: offline loading, encode/decode, the chat template, and clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from capstan.errors import InvalidParameterValue
from capstan.llm.hf_tokenizer import HfTokenizer


def test_encode_decode_and_chat_prompt_with_the_template(tiny_model_dir: Path) -> None:
    tok = HfTokenizer.from_pretrained(tiny_model_dir)
    ids = tok.encode("hello world")
    assert ids and tok.decode(ids) == "hello world"
    assert tok.eos_token_ids == (tok.hf.convert_tokens_to_ids("<|endoftext|>"),)
    assert tok.has_chat_template
    prompt = tok.chat_prompt([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}])
    pieces = tok.hf.convert_ids_to_tokens(prompt)
    assert pieces[0] == "<|system|>" and pieces[-1] == "<|assistant|>"
    assert prompt[-1 - len(ids) - 2:-2] == [tok.hf.convert_tokens_to_ids("<|user|>"), *ids]
    assert tok.decode(prompt) == "be briefhello world"  # special tokens are not text a client sees


def test_a_model_without_chat_template_refuses_chat(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, folder)
    for name in ("chat_template.jinja", "chat_template.json"):
        (folder / name).unlink(missing_ok=True)
    config = folder / "tokenizer_config.json"
    text = config.read_text()
    if "chat_template" in text:
        import json

        data = json.loads(text)
        data.pop("chat_template", None)
        config.write_text(json.dumps(data))
    tok = HfTokenizer.from_pretrained(folder)
    assert not tok.has_chat_template
    with pytest.raises(InvalidParameterValue, match="messages: this model has no chat template"):
        tok.chat_prompt([{"role": "user", "content": "hi"}])
    assert tok.decode(tok.encode("hello")) == "hello"


def test_missing_folders_and_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterValue, match="does not exist"):
        HfTokenizer.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidParameterValue, match="cannot load a tokenizer"):
        HfTokenizer.from_pretrained(tmp_path / "empty")


def test_a_template_that_fails_to_render_names_messages(tiny_model_dir: Path) -> None:
    tok = HfTokenizer.from_pretrained(tiny_model_dir)
    # templates that enforce a message order raise from inside the template
    tok.hf.chat_template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('roles must start with user') }}" \
        "{% endif %}{{ messages[0]['content'] }}"
    with pytest.raises(InvalidParameterValue, match="messages: the chat template cannot render them: roles must"):
        tok.chat_prompt([{"role": "assistant", "content": "hi"}])
    assert tok.decode(tok.chat_prompt([{"role": "user", "content": "hello"}])) == "hello"

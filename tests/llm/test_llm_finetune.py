"""``capstan finetune``: a real training job (subprocesses through the queue) fine-tunes the tiny model with LoRA,
tracks the loss, registers the adapter; a killed worker resumes from its checkpoint; bad input is refused first."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from llm_lora_helpers import ROWS, backend, capstan, register_base, worker_env, write_rows

from capstan.llm.finetune import Example, FinetuneOptions, default_register_name, parse_examples
from capstan.models.format import read_mlmodel

pytest.importorskip("peft", reason="LoRA fine-tuning needs peft: pip install '.[llm]'")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A Capstan home with the tiny model registered as ``tiny`` version 1."""
    path = tmp_path_factory.mktemp("finetune") / "home"
    path.mkdir()
    assert register_base(path, tiny_model_dir) == "models:/tiny/1"
    return path


def test_lora_finetune_tracks_loss_and_registers_an_adapter_of_the_base(home: Path, tmp_path: Path) -> None:
    data = write_rows(tmp_path / "rows.jsonl", ROWS * 3)  # 12 rows, batches of 4: 3 steps per epoch
    done = capstan(home, "finetune", "models:/tiny/1", "--data", str(data), "--epochs", "2", "--batch-size", "4",
                   "--lr", "1e-3", "--lora-rank", "4", "--checkpoint-every", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "models:/tiny-lora/1"
    assert "[rank 0] registered models:/tiny-lora/1 (LoRA adapter of models:/tiny/1)" in done.stdout
    store = backend(home)
    try:
        version = store.get_model_version("tiny-lora", 1)
        assert version.tags["capstan.adapter.base"] == "models:/tiny/1"
        assert version.run_id is not None
        losses = store.get_metric_history(version.run_id, "loss").items
        assert sorted(m.step for m in losses) == list(range(6))
        assert all(m.value > 0 for m in losses)
        params = dict(store.get_run(version.run_id).data.params)
        assert params["method"] == "lora" and params["base_model"] == "models:/tiny/1" and params["rows"] == "12"
        folder = store.download_artifacts(store_owner(version.name, version.version), "", tmp_path / "dl")
    finally:
        store.close()
    flavor = read_mlmodel(folder)["flavors"]["transformers"]
    assert flavor["adapter"]["type"] == "lora" and flavor["adapter"]["base_model"] == "models:/tiny/1"
    assert flavor["adapter"]["r"] == 4
    assert (folder / flavor["model_binary"] / "adapter_config.json").is_file()


def store_owner(name: str, version: int) -> object:
    from capstan.sdk.backends import ArtifactOwner

    return ArtifactOwner.model_version(name, version)


def _job_dir(home: Path) -> Path | None:
    found = sorted((home / "jobs").glob("finetune-*")) if (home / "jobs").is_dir() else []
    return found[-1] if found else None


def test_a_killed_worker_resumes_from_its_latest_checkpoint(home: Path, tmp_path: Path) -> None:
    data = write_rows(tmp_path / "rows.jsonl", ROWS * 10)  # 40 rows, batches of 2: 20 steps per epoch
    args = ["finetune", "models:/tiny/1", "--data", str(data), "--epochs", "3", "--batch-size", "2",
            "--checkpoint-every", "3", "--max-restarts", "1", "--register-as", "tiny-resumed"]
    before = {p.name for p in (home / "jobs").glob("*")} if (home / "jobs").is_dir() else set()
    proc = subprocess.Popen([sys.executable, "-m", "capstan", *args], env=worker_env(home), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=home.parent)
    killed_after: int | None = None
    deadline = time.monotonic() + 180
    while killed_after is None and time.monotonic() < deadline and proc.poll() is None:
        jobs = [p for p in (home / "jobs").glob("finetune-tiny-resumed-*") if p.name not in before] \
            if (home / "jobs").is_dir() else []
        attempt = jobs[0] / "attempt-1" if jobs else None
        out = attempt / "worker-0" / "rank-0.out" if attempt else None
        if out is not None and out.is_file() and (attempt / "pids.json").is_file():
            steps = [int(s) for s in re.findall(r"^checkpoint at step (\d+)$", out.read_text(), re.M)]
            if steps:
                pid = json.loads((attempt / "pids.json").read_text())["0"]
                os.kill(int(pid), signal.SIGKILL)  # the worker dies for real, mid-run
                killed_after = steps[-1]
        time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=240)
    assert killed_after is not None, f"no checkpoint seen before the job ended: {stderr[-2000:]}"
    assert proc.returncode == 0, stderr[-3000:]
    assert "attempt 1 ended: WorkerFailed: rank 0 was killed by SIGKILL" in stderr
    job = jobs[0]
    second = (job / "attempt-2" / "worker-0" / "rank-0.out").read_text()
    resumed = int(re.search(r"^resumed from step (\d+) \(checkpoint\)", second, re.M).group(1))  # type: ignore[union-attr]  # asserted by the match
    assert resumed >= killed_after  # a checkpoint written between our read and the kill is newer still
    first_step = int(re.search(r"^step (\d+) ", second, re.M).group(1))  # type: ignore[union-attr]  # as above
    assert first_step == resumed + 1
    assert stdout.strip().splitlines()[-1] == "models:/tiny-resumed/1"
    store = backend(home)
    try:
        run_id = store.get_model_version("tiny-resumed", 1).run_id
        assert run_id is not None
        assert {m.step for m in store.get_metric_history(run_id, "loss").items} == set(range(60))
    finally:
        store.close()


@pytest.mark.parametrize(("extra", "message"), [
    (["--method", "prefix"], "error: --method: must be one of lora, full, got 'prefix'"),
    (["--epochs", "0"], "error: --epochs: must be at least 1, got 0"),
    (["--lr", "-1"], "error: --lr: must be a positive number, got -1"),
    (["--lr", "0"], "error: --lr: must be a positive number, got 0"),
])
def test_bad_options_are_refused_before_anything_starts(home: Path, tmp_path: Path, extra: list[str],
                                                        message: str) -> None:
    data = write_rows(tmp_path / "rows.jsonl", ROWS)
    jobs = set((home / "jobs").glob("*")) if (home / "jobs").is_dir() else set()
    done = capstan(home, "finetune", "models:/tiny/1", "--data", str(data), *extra)
    assert done.returncode == 1
    assert done.stderr.strip() == message
    assert (set((home / "jobs").glob("*")) if (home / "jobs").is_dir() else set()) == jobs


def test_bad_data_and_bases_are_refused_in_one_line(home: Path, tmp_path: Path, tiny_model_dir: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    done = capstan(home, "finetune", "models:/tiny/1", "--data", str(missing))
    assert (done.returncode, done.stderr.strip()) == (1, f"error: --data: {str(missing)!r} does not exist or is not "
                                                         "a file")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n\n" + '{"prompt": "no completion"}\n', encoding="utf-8")
    done = capstan(home, "finetune", "models:/tiny/1", "--data", str(bad))
    assert (done.returncode, done.stderr.strip()) == (1, "error: --data: line 3: a 'prompt' row needs a 'completion'")
    data = write_rows(tmp_path / "rows.jsonl", ROWS)
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    done = capstan(home, "finetune", str(not_a_model), "--data", str(data))
    assert done.returncode == 1
    assert done.stderr.strip() == (f"error: BASE_MODEL_URI: {str(not_a_model)!r} holds neither an MLmodel file nor a "
                                   "config.json")
    done = capstan(home, "finetune", "models:/no-such-model/1", "--data", str(data))
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "no-such-model" in done.stderr


def test_rows_of_every_form_parse_and_bad_rows_name_their_line() -> None:
    rows = [json.dumps(r) for r in ROWS]
    examples = parse_examples(rows)
    assert [e.kind for e in examples] == ["completion", "completion", "chat", "text"]
    assert examples[2] == Example("chat", messages=({"role": "user", "content": "what is the weather?"},
                                                    {"role": "assistant", "content": "it is sunny today"}))
    cases = {
        "not json": "line 1: not valid JSON",
        "[1]": "line 1: expected a JSON object, got list",
        '{"prompt": "a", "text": "b"}': "line 1: expected exactly one of",
        '{"messages": [{"role": "user", "content": "hi"}]}': "line 1: the last message must be the assistant's",
        '{"messages": [{"role": "robot", "content": "x"}]}': "line 1: messages[0].role must be one of",
        '{"text": 3}': "line 1: 'text' must be a string, got int",
    }
    for text, expected in cases.items():
        with pytest.raises(Exception, match=re.escape(f"--data: {expected}")):
            parse_examples([text])


def test_options_round_trip_through_the_workers_arguments() -> None:
    options = FinetuneOptions("models:/tiny/1", "/data.jsonl", method="full", epochs=3, lr=1e-4, batch_size=2,
                              max_length=64, checkpoint_every=5, seed=7).check()
    assert FinetuneOptions.from_argv(options.argv()) == FinetuneOptions(
        "models:/tiny/1", "/data.jsonl", method="full", epochs=3, lr=1e-4, batch_size=2, max_length=64,
        register_as="tiny-ft", checkpoint_every=5, seed=7)
    assert default_register_name("models:/tiny@champion", "lora") == "tiny-lora"
    assert default_register_name("/models/My Model/", "full") == "My-Model-ft"

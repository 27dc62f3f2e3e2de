"""A language model deployment's serving options (the spec's ``llm`` section) reach its replicas, options a language
model's replica would refuse are refused when the deployment is applied, and a client that disconnects from a
stream relayed by the router stops the generation on the replica. A real ``capstan server`` runs real ``capstan
serve`` replicas of the tiny model registered with ``capstan.log_model``."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from llm_deploy_helpers import API, server_with_tiny_model, status, wait_for

from helpers.server import ServerProcess

pytestmark = pytest.mark.slow
LONG = 100
"""Tokens of a generation long enough to be interrupted (the tiny model's context is 128)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[ServerProcess]:
    with server_with_tiny_model(tmp_path_factory.mktemp("llm-deploy-options") / "home", tiny_model_dir) as server:
        yield server


def ready_url(server: ServerProcess, name: str) -> str:
    def find() -> str | None:
        return next((r["url"] for r in status(server, name)["replicas"] if r["state"] == "ready"), None)

    url: str = wait_for(f"a ready replica of {name}", find)
    return url


def stats(replica: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{replica}/llm/stats", timeout=10).json()
    return body


def long_completion() -> dict[str, Any]:
    return {"model": "tight", "prompt": "hi", "max_tokens": LONG, "min_tokens": LONG, "temperature": 0}


def test_max_num_seqs_and_max_waiting_reach_the_replica_and_a_full_queue_is_429(server: ServerProcess) -> None:
    spec = {"name": "tight", "model": "models:/tiny/1", "replicas": 1,
            "llm": {"backend": "transformers", "device": "cpu", "max_num_seqs": 1, "max_waiting": 1}}
    created = httpx.post(f"{server.url}{API}", json=spec, timeout=30)
    assert created.status_code == 201, created.text
    assert created.json()["deployment"]["spec"]["llm"] == spec["llm"]
    replica = ready_url(server, "tight")
    assert stats(replica)["max_waiting"] == 1

    samples: list[tuple[int, int]] = []
    flooding = threading.Event()

    def sample() -> None:
        while not flooding.is_set():
            now = stats(replica)
            samples.append((now["running"], now["waiting"]))
            time.sleep(0.01)

    start = threading.Barrier(6)

    def call(_: int) -> httpx.Response:
        start.wait()
        return httpx.post(f"{server.url}/deployments/tight/v1/completions", json=long_completion(), timeout=120)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(call, range(6)))
    finally:
        flooding.set()
        sampler.join(timeout=30)
    codes = sorted(a.status_code for a in answers)
    # At most one sequence runs (max_num_seqs: 1) and one waits (max_waiting: 1): the rest of the burst is refused.
    assert 200 in codes and 429 in codes and set(codes) <= {200, 429}, codes
    refused = next(a for a in answers if a.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1, refused.headers
    assert refused.json()["error"]["code"] == "queue_full", refused.text
    assert max(running for running, _ in samples) == 1, samples  # never two sequences at once
    assert all(a.json()["usage"]["completion_tokens"] == LONG for a in answers if a.status_code == 200)


def test_a_client_disconnect_through_the_router_stops_generation_on_the_replica(server: ServerProcess) -> None:
    replica = ready_url(server, "tight")  # created by the test above
    before = stats(replica)["generation_tokens_total"]
    body = {"model": "tight", "messages": [{"role": "user", "content": "hi"}], "max_tokens": LONG,
            "min_tokens": LONG, "temperature": 0}
    with httpx.Client(timeout=120) as client, client.stream(
            "POST", f"{server.url}/deployments/tight/v1/chat/completions", json={**body, "stream": True}) as raw:
        assert raw.status_code == 200
        contents = 0
        for line in raw.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                contents += 1
                if contents == 3:
                    break
    # The client is gone: the router's relay closes its upstream stream, and the replica cancels the generation.
    wait_for("the replica to stop generating", lambda: stats(replica)["running"] == 0, timeout=60)
    stopped_at = stats(replica)["generation_tokens_total"] - before
    assert 3 <= stopped_at < LONG, stopped_at
    time.sleep(0.5)  # nothing more is generated after the cancel
    assert stats(replica)["generation_tokens_total"] - before == stopped_at
    # The replica keeps serving.
    answer = httpx.post(f"{server.url}/deployments/tight/v1/completions",
                        json={"model": "tight", "prompt": "hi", "max_tokens": 2, "min_tokens": 2}, timeout=60)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 2


def test_the_vllm_backend_reaches_the_replica(server: ServerProcess) -> None:
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed: the replica would start on it (tests/llm/test_llm_vllm.py covers it)")
    created = httpx.post(f"{server.url}{API}", timeout=30,
                         json={"name": "on-vllm", "model": "models:/tiny/1", "llm": {"backend": "vllm"}})
    assert created.status_code == 201, created.text

    def failed() -> list[dict[str, Any]]:
        return [e for e in status(server, "on-vllm")["events"] if e["reason"] == "ModelLoadFailed"]

    event = wait_for("the replica to fail on the missing vllm extra", failed)[0]
    assert "capstan[vllm]" in event["message"], event
    assert httpx.delete(f"{server.url}{API}/on-vllm", timeout=30).status_code == 204


def test_options_a_language_model_refuses_are_refused_at_apply_naming_the_field(server: ServerProcess) -> None:
    cases = [
        ({"batching": {"max_batch_size": 4, "max_delay_ms": 1}},
         "spec.batching: a language model batches by sequence; use spec.llm.max_num_seqs; models:/tiny/1 is a "
         "language model"),
        ({"drift": {"window": 50}}, "spec.drift: drift is not measured for language models"),
        ({"llm": {"max_num_seqs": 0}}, "spec.llm.max_num_seqs: must be between 1 and 4096, got 0"),
        ({"llm": {"backend": "tgi"}}, "spec.llm.backend: must be one of transformers, vllm, got 'tgi'"),
        ({"llm": {"device": "tpu"}}, "spec.llm.device: must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
        ({"llm": {"max_waiting": "many"}}, "spec.llm.max_waiting: expected an integer, got 'many'"),
    ]
    for extra, message in cases:
        answer = httpx.post(f"{server.url}{API}", json={"name": "bad", "model": "models:/tiny/1", **extra},
                            timeout=30)
        assert answer.status_code == 400, (extra, answer.text)
        assert message in answer.json()["message"], (extra, answer.text)
    assert httpx.get(f"{server.url}{API}/bad", timeout=30).status_code == 404


def test_the_cli_passes_the_language_model_options_and_names_bad_ones(server: ServerProcess) -> None:
    created = server.remote_cli("deployments", "create", "opts", "--model", "models:/tiny/1", "--min-replicas", "0",
                                "--max-replicas", "1", "--target-waiting", "2", "--llm-backend", "transformers",
                                "--device", "cpu", "--max-num-seqs", "2", "--max-waiting", "5", "--json")
    assert json.loads(created.stdout)["spec"]["llm"] == {"backend": "transformers", "device": "cpu",
                                                        "max_num_seqs": 2, "max_waiting": 5}
    server.remote_cli("deployments", "delete", "opts")
    for args, message in ((("--max-num-seqs", "0"), "spec.llm.max_num_seqs: must be between 1 and 4096, got 0"),
                          (("--llm-backend", "tgi"), "spec.llm.backend: must be one of transformers, vllm"),
                          (("--llm-backend", "vllm", "--device", "cpu"), "spec.llm.device: applies to the "
                                                                         "transformers backend")):
        bad = server.remote_cli("deployments", "create", "x", "--model", "models:/tiny/1", *args, check=False)
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode != 0 and len(lines) == 1 and lines[0].startswith("error:"), bad.stderr
        assert message in lines[0], bad.stderr
    # Without CAPSTAN_URL the CLI checks against the local stores' MLmodel, as the server does.
    local = server.cli("deployments", "create", "x", "--model", "models:/tiny/1", "--drift-window", "50",
                       check=False)
    lines = local.stderr.strip().splitlines()
    assert local.returncode != 0 and len(lines) == 1, local.stderr
    assert lines[0] == ("error: spec.drift: drift is not measured for language models; models:/tiny/1 is a "
                        "language model"), local.stderr

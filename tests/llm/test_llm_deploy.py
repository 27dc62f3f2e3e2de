"""A language model as a deployment: the tiny model registered with ``capstan.log_model``, deployed through
``/api/v1/deployments`` of a real ``capstan server`` (whose controller starts a real ``capstan serve`` replica), and
called at ``/deployments/NAME/v1`` with the real openai client, streaming through the router's relay; the deployment
scales on generated tokens per second read from the replica's ``/llm/stats``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from llm_deploy_helpers import API, server_with_tiny_model, status, wait_for

from helpers.server import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[ServerProcess]:
    with server_with_tiny_model(tmp_path_factory.mktemp("llm-deploy") / "home", tiny_model_dir) as server:
        yield server


def ready_replicas(server: ServerProcess, name: str) -> list[dict[str, Any]]:
    return [r for r in status(server, name)["replicas"] if r["state"] == "ready"]


def test_a_language_model_deployment_answers_the_openai_client_and_scales_on_tokens(server: ServerProcess) -> None:
    import openai

    spec = {"name": "chat", "model": "models:/tiny/1",
            "autoscaling": {"min_replicas": 1, "max_replicas": 2, "target_tokens_per_second": 1,
                            "stabilization_window_seconds": 0}}
    created = httpx.post(f"{server.url}{API}", json=spec, timeout=30)
    assert created.status_code == 201, created.text
    assert created.json()["deployment"]["spec"]["autoscaling"]["target_tokens_per_second"] == 1
    wait_for("a ready replica", lambda: ready_replicas(server, "chat"))

    client = openai.OpenAI(base_url=f"{server.url}/deployments/chat/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["chat"]
    answer = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hello"}],
                                            max_tokens=6, temperature=0, extra_body={"min_tokens": 6})
    assert answer.usage is not None and answer.usage.completion_tokens == 6
    stream = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hello"}],
                                            max_tokens=6, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"min_tokens": 6})
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].finish_reason is None]
    assert len(deltas) >= 6  # one chunk per token, relayed as they came
    assert "".join(d or "" for d in deltas) == answer.choices[0].message.content  # greedy: the same either way
    usage = [c.usage for c in chunks if c.usage is not None]
    assert usage and usage[-1].completion_tokens == 6
    whole = client.completions.create(model="chat", prompt="the quick brown", max_tokens=8, temperature=0,
                                      extra_body={"min_tokens": 8})
    streamed = [c.choices[0].text for c in client.completions.create(
        model="chat", prompt="the quick brown", max_tokens=8, temperature=0, stream=True,
        extra_body={"min_tokens": 8}) if c.choices]
    assert len([t for t in streamed if t]) >= 2 and "".join(streamed) == whole.choices[0].text

    bad = httpx.post(f"{server.url}/deployments/chat/v1/chat/completions", timeout=30,
                     json={"model": "chat", "messages": "hello"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages", bad.text

    # Tokens flow for a few seconds: the controller sees the replica's counter grow past 1 token/s and scales up.
    done = threading.Event()

    def load() -> None:
        while not done.is_set():
            client.completions.create(model="chat", prompt="the quick", max_tokens=16, temperature=0,
                                      extra_body={"min_tokens": 16})

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        wait_for("the autoscaler to ask for 2 replicas",
                 lambda: status(server, "chat")["deployment"]["desired_replicas"] == 2, timeout=60)
    finally:
        done.set()
        worker.join(timeout=30)
    events = [e for e in status(server, "chat")["events"] if e["reason"] == "Autoscaled"]
    assert events and "tokens/s" in events[-1]["message"], events
    assert httpx.delete(f"{server.url}{API}/chat", timeout=30).status_code == 204


def test_the_cli_creates_and_lists_language_model_targets(server: ServerProcess) -> None:
    created = server.remote_cli("deployments", "create", "queued", "--model", "models:/tiny/1", "--min-replicas", "0",
                                "--max-replicas", "3", "--target-waiting", "4", "--json")
    assert '"target_waiting": 4' in created.stdout
    listed = server.remote_cli("deployments", "list").stdout
    assert "0-3 (waiting 4)" in listed, listed
    bad = server.remote_cli("deployments", "create", "x", "--model", "models:/tiny/1", "--max-replicas", "2",
                            "--target-tokens-per-second", "0", check=False)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode != 0 and len(lines) == 1 and lines[0].startswith("error:"), bad.stderr
    assert "spec.autoscaling.target_tokens_per_second: must be greater than 0" in lines[0]
    both = server.remote_cli("deployments", "create", "x", "--model", "models:/tiny/1", "--max-replicas", "2",
                             "--target-waiting", "2", "--target-rps", "5", check=False)
    assert "(got target_rps, target_waiting)" in both.stderr, both.stderr
    server.remote_cli("deployments", "delete", "queued")

"""``capstan deployments ...`` as real subprocesses: through ``CAPSTAN_URL`` against a real ``capstan server``, and
on the local store of the home that server runs on (its controller picks the change up); bad input is one line."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from capstan.sdk.client import Client
from capstan.settings import Settings
from helpers.server import ServerProcess, start_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("deploy-cli") / "home"
    x, y = load_iris(return_X_y=True)
    with Client(Settings.for_home(home)) as client:
        experiment_id = client.create_experiment(f"exp-{uuid.uuid4().hex[:6]}")
        for c in (1.0, 0.01):
            run = client.create_run(experiment_id)
            client.log_model(run.info.run_id, LogisticRegression(C=c, max_iter=300).fit(x, y), "model",
                             registered_model_name="iris")
            client.set_terminated(run.info.run_id)
    with start_server(home) as server:
        yield server


def remote_json(server: ServerProcess, *args: str) -> Any:
    return json.loads(server.remote_cli("deployments", *args, "--json").stdout)


def test_remote_commands(server: ServerProcess, tmp_path: Path) -> None:
    spec = tmp_path / "deployment.yaml"
    spec.write_text("name: remote\nmodel: models:/iris/1\nautoscaling: {min_replicas: 0, max_replicas: 2, "
                    "target_concurrency: 4}\n")
    applied = remote_json(server, "apply", "-f", str(spec))
    assert applied["versions"] == {"primary": "models:/iris/1"} and applied["desired_replicas"] == 0
    created = remote_json(server, "create", "canaried", "--model", "models:/iris/1", "--min-replicas", "0",
                          "--max-replicas", "1", "--target-concurrency", "1", "--canary", "models:/iris/2",
                          "--canary-traffic", "10")
    assert created["versions"] == {"primary": "models:/iris/1", "canary": "models:/iris/2"}
    listed = server.remote_cli("deployments", "list").stdout
    assert "remote" in listed and "canaried" in listed and "scaled-to-zero" in listed
    status = server.remote_cli("deployments", "status", "canaried").stdout
    assert "Traffic" in status and "canary" in status and "Created" in status
    assert remote_json(server, "promote", "canaried")["versions"] == {"primary": "models:/iris/2"}
    assert remote_json(server, "rollback", "canaried")["versions"]["primary"] == "models:/iris/1"
    assert remote_json(server, "scale", "remote", "--replicas", "1")["spec"]["replicas"] == 1
    for name in ("remote", "canaried"):
        assert f"deployment {name} deleted" in server.remote_cli("deployments", "delete", name).stdout
    assert server.remote_cli("deployments", "list").stdout.strip() == "no deployments"


@pytest.mark.parametrize(("args", "message"), [
    (("create", "x", "--model", "models:/iris/1", "--replicas", "2", "--max-replicas", "3"), "not both"),
    (("create", "x", "--model", "models:/iris/1", "--canary", "models:/iris/2"), "--canary-traffic"),
    (("create", "x", "--model", "models:/iris/1", "--canary", "models:/iris/2", "--canary-traffic", "101"),
     "spec.canary.traffic"),
    (("create", "x", "--model", "models:/nope/1"), "nope"),
    (("status", "missing"), "does not exist"),
    (("promote", "missing"), "does not exist"),
    (("drift", "missing"), "does not exist"),
    (("scale", "missing", "--replicas", "0"), "--replicas"),
    (("apply", "-f", "/no/such/file.yaml"), "/no/such/file.yaml"),
])
def test_bad_input_is_one_line(server: ServerProcess, args: tuple[str, ...], message: str) -> None:
    for result in (server.remote_cli("deployments", *args, check=False),
                   server.cli("deployments", *args, check=False)):
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr


def test_local_commands_reach_the_running_server(server: ServerProcess) -> None:
    out = server.cli("deployments", "create", "local", "--model", "models:/iris/1")
    assert "deployment local created" in out.stdout and "note:" not in out.stderr
    deadline = time.monotonic() + 90
    while True:
        status = json.loads(server.cli("deployments", "status", "local", "--json").stdout)
        if status["state"] == "ready" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status["state"] == "ready", status
    table = server.remote_cli("deployments", "status", "local").stdout
    assert "ready" in table and "Replicas" in table
    server.cli("deployments", "delete", "local")


def test_local_commands_on_another_home(tmp_path: Path, server: ServerProcess) -> None:
    result = server.cli("deployments", "list", env={"CAPSTAN_HOME": str(tmp_path / "other")})
    assert result.stdout.strip() == "no deployments"
    bad = server.cli("deployments", "create", "y", "--model", "models:/iris/1", check=False,
                     env={"CAPSTAN_HOME": str(tmp_path / "other")})
    assert bad.returncode == 1 and "iris" in bad.stderr

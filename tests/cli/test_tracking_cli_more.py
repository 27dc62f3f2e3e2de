"""The lifecycle commands of the tracking CLI (create, rename, delete, restore; aliases; metric history), on the
local stores and against a real server through ``CAPSTAN_URL``: real subprocesses, real SQLite."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from capstan.errors import InvalidState
from capstan.sdk.backends import TrackingBackend
from capstan.sdk.backends_http import HttpBackend
from capstan.sdk.backends_local import LocalBackend
from capstan.settings import Settings
from capstan.tracking.records import Metric
from helpers.server import ServerProcess, capstan_command, clean_env, start_server

NOW = 1_700_000_000_000
Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with start_server(tmp_path_factory.mktemp("cli-more-server")) as srv:
        yield srv


@pytest.fixture(scope="module", params=["local", "remote"])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A CLI runner and a backend seeding the same stores: a local home, or a server reached with CAPSTAN_URL."""
    home = tmp_path_factory.mktemp(f"cli-more-{request.param}")
    backend: TrackingBackend
    env = clean_env(home)
    if request.param == "local":
        backend = LocalBackend(Settings.for_home(home))
    else:
        srv: ServerProcess = request.getfixturevalue("server")
        backend = HttpBackend(replace(Settings.for_home(home), url=srv.url))
        env["CAPSTAN_URL"] = srv.url

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*capstan_command(), *args], env=env, capture_output=True, text=True, timeout=120)

    yield {"cli": cli, "backend": backend, "kind": request.param}
    backend.close()


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def _run_ids(cli: Cli, *args: str) -> set[str]:
    return {r["info"]["run_id"] for r in json.loads(ok(cli("runs", "list", "--json", *args)))["runs"]}


def test_experiment_create_rename_delete_restore(target: dict[str, Any]) -> None:
    cli, backend = target["cli"], target["backend"]
    name = f"exp-{target['kind']}"
    created = json.loads(ok(cli("experiments", "create", name, "--tag", "team=growth", "--json")))
    experiment_id = created["experiment_id"]
    assert created["name"] == name
    assert backend.get_experiment(experiment_id).tags["team"] == "growth"
    one_line_error(cli("experiments", "create", name), "already exists")
    one_line_error(cli("experiments", "create", "x", "--tag", "novalue"), "--tag", "KEY=VALUE")

    assert f"renamed from '{name}' to '{name}-v2'" in ok(cli("experiments", "rename", experiment_id, f"{name}-v2"))
    assert backend.get_experiment(experiment_id).name == f"{name}-v2"
    run_id = backend.create_run(experiment_id, run_name="r").run_id

    out = ok(cli("experiments", "delete", experiment_id))
    assert f"capstan experiments restore {experiment_id}" in out
    assert backend.get_experiment(experiment_id).lifecycle_stage == "deleted"
    # The runs of a deleted experiment are deleted with it, and --view deleted / all show them.
    assert run_id not in _run_ids(cli)
    assert run_id in _run_ids(cli, "--view", "deleted")
    assert run_id in _run_ids(cli, "--view", "all")
    table = ok(cli("runs", "list", "--view", "deleted"))
    assert run_id in table and "STAGE" in table and "deleted" in table
    listed = ok(cli("experiments", "list", "--view", "deleted"))
    assert f"{name}-v2" in listed
    # Writing to it fails with an error that names the command that undoes the delete.
    one_line_error(cli("experiments", "create", f"{name}-v2"), f"capstan experiments restore {experiment_id}")
    one_line_error(cli("runs", "restore", run_id), f"capstan experiments restore {experiment_id}")

    assert "restored" in ok(cli("experiments", "restore", experiment_id))
    assert backend.get_experiment(experiment_id).lifecycle_stage == "active"
    assert run_id in _run_ids(cli)
    one_line_error(cli("experiments", "restore", experiment_id), "already active")
    one_line_error(cli("experiments", "delete", "987654"), "987654")


def test_run_rename_delete_restore(target: dict[str, Any]) -> None:
    cli, backend = target["cli"], target["backend"]
    experiment_id = backend.create_experiment(f"runs-{target['kind']}")
    run_id = backend.create_run(experiment_id, run_name="first").run_id
    assert "renamed from 'first' to 'second'" in ok(cli("runs", "rename", run_id, "second"))
    run = backend.get_run(run_id)
    assert run.info.run_name == "second" and run.data.tags["mlflow.runName"] == "second"

    out = ok(cli("runs", "delete", run_id))
    assert f"capstan runs restore {run_id}" in out
    assert backend.get_run(run_id).info.lifecycle_stage == "deleted"
    assert run_id in _run_ids(cli, "-e", f"runs-{target['kind']}", "--view", "deleted")
    one_line_error(cli("runs", "rename", run_id, "third"), f"capstan runs restore {run_id}")
    ok(cli("runs", "restore", run_id))
    assert backend.get_run(run_id).info.lifecycle_stage == "active"
    one_line_error(cli("runs", "delete", "0" * 32), "not found")


def test_model_alias_set_move_delete(target: dict[str, Any]) -> None:
    cli, backend = target["cli"], target["backend"]
    name = f"model-{target['kind']}"
    backend.create_registered_model(name)
    for _ in range(2):
        backend.create_model_version(name, source="s3://bucket/model")
    assert ok(cli("models", "alias", "set", name, "champion", "1")).strip() == f"models:/{name}@champion -> v1"
    assert "(was v1)" in ok(cli("models", "alias", "set", name, "champion", "v2"))
    assert backend.get_registered_model(name).aliases == {"champion": 2}
    assert "champion -> v2" in ok(cli("models", "show", name))
    one_line_error(cli("models", "alias", "set", name, "champion", "two"), "VERSION", "'two'")
    one_line_error(cli("models", "alias", "set", name, "champion", "9"), "not found")
    ok(cli("models", "alias", "delete", name, "champion"))
    assert backend.get_registered_model(name).aliases == {}
    one_line_error(cli("models", "alias", "delete", name, "champion"), "champion")


def test_runs_show_metric_history(target: dict[str, Any]) -> None:
    cli, backend = target["cli"], target["backend"]
    experiment_id = backend.create_experiment(f"history-{target['kind']}")
    run_id = backend.create_run(experiment_id).run_id
    backend.log_batch(run_id, metrics=[Metric("loss", 1 / (s + 1), NOW + s * 1000, s) for s in range(5)]
                      + [Metric("acc", 0.5, NOW, 0)])
    data = json.loads(ok(cli("runs", "show", run_id, "--metric", "loss", "--json")))
    assert data["run_id"] == run_id and data["key"] == "loss"
    assert [(m["step"], m["value"], m["timestamp"]) for m in data["metrics"]] == [
        (s, 1 / (s + 1), NOW + s * 1000) for s in range(5)]
    table = ok(cli("runs", "show", run_id, "--metric", "loss"))
    rows = [line.split() for line in table.splitlines() if line.strip()[:1].isdigit()]
    assert [(r[0], r[-1]) for r in rows] == [("0", "1"), ("1", "0.5"), ("2", "0.333333"), ("3", "0.25"),
                                             ("4", "0.2")]
    assert "STEP" in table and "TIMESTAMP" in table and "VALUE" in table and "5 points" in table
    one_line_error(cli("runs", "show", run_id, "--metric", "nope"), "no metric 'nope'", "acc, loss")


def test_fluent_api_names_the_restore_command(tmp_path: Path) -> None:
    from capstan.sdk import fluent as sdk

    settings = Settings.for_home(tmp_path / "home")
    backend = LocalBackend(settings)
    experiment_id = backend.create_experiment("gone")
    backend.delete_experiment(experiment_id)
    backend.close()
    sdk.configure(settings)
    try:
        with pytest.raises(InvalidState, match=f"`capstan experiments restore {experiment_id}`"):
            sdk.set_experiment("gone")
    finally:
        sdk.configure(Settings.for_home(tmp_path / "idle"))


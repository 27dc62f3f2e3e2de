"""``capstan experiments|runs|models`` as people use them: real subprocesses on a seeded local home."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capstan.sdk.backends import ArtifactOwner
from capstan.sdk.backends_local import LocalBackend
from capstan.settings import Settings
from capstan.tracking.records import Metric, Param, RunTag
from helpers.server import capstan_command, clean_env

NOW = 1_700_000_000_000


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A home with an experiment of three runs (one differing param), an artifact and a registered model."""
    root = tmp_path_factory.mktemp("cli-home")
    backend = LocalBackend(Settings.for_home(root))
    experiment_id = backend.create_experiment("churn", tags={"team": "growth"})
    runs = []
    for i, (depth, acc) in enumerate(((3, 0.81), (5, 0.86), (5, 0.84))):
        info = backend.create_run(experiment_id, run_name=f"rf-{i}", start_time=NOW + i * 1000,
                                  tags=[RunTag("owner", "ana")])
        backend.log_batch(info.run_id, params=[Param("depth", str(depth)), Param("trees", "100")],
                          metrics=[Metric("accuracy", acc, NOW, 0), Metric("loss", 1 - acc, NOW, 0)])
        backend.update_run(info.run_id, status="FINISHED", end_time=NOW + i * 1000 + 65_000)
        runs.append(info.run_id)
    note = root / "note.txt"
    note.write_text("hello")
    backend.upload_artifact(ArtifactOwner.run(runs[1]), "reports/note.txt", note)
    backend.create_registered_model("churn-model", description="predicts churn")
    backend.create_model_version("churn-model", source=f"runs:/{runs[1]}/reports", run_id=runs[1])
    backend.set_alias("churn-model", "champion", 1)
    backend.close()
    yield {"root": root, "runs": runs, "experiment_id": experiment_id}


def capstan(home: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*capstan_command(), *args], env=clean_env(home["root"]), capture_output=True, text=True,
                          timeout=120)


def one_line_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]


def test_experiments_list_table_and_json(home: dict[str, Any]) -> None:
    table = capstan(home, "experiments", "list")
    assert table.returncode == 0, table.stderr
    header = next(line for line in table.stdout.splitlines() if "NAME" in line)
    row = next(line for line in table.stdout.splitlines() if "churn" in line)
    assert header.index("NAME") == row.index("churn")  # aligned columns
    assert "team=growth" in row
    data = json.loads(capstan(home, "experiments", "list", "--json").stdout)
    assert "churn" in {e["name"] for e in data["experiments"]}


def test_runs_list_filter_order_and_json(home: dict[str, Any]) -> None:
    result = capstan(home, "runs", "list", "--experiment", "churn", "--filter", "params.depth = '5'",
                     "--order-by", "metrics.accuracy DESC")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "rf-" in line]
    assert [line.split()[1] for line in lines] == ["rf-1", "rf-2"]
    header = next(line for line in result.stdout.splitlines() if "RUN ID" in line)
    assert "metrics.accuracy" in header and "params.depth" in header
    assert header.index("STATUS") == lines[0].index("FINISHED")
    assert "1m05s" in lines[0]
    data = json.loads(capstan(home, "runs", "list", "--json", "--order-by", "attributes.start_time").stdout)
    assert [r["info"]["run_name"] for r in data["runs"]] == ["rf-0", "rf-1", "rf-2"]


def test_runs_show(home: dict[str, Any]) -> None:
    run_id = home["runs"][1]
    result = capstan(home, "runs", "show", run_id)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in ("rf-1", "churn (id", "FINISHED", "depth", "accuracy", "0.86", "owner", "reports/"):
        assert expected in out, expected
    assert "mlflow.runName" not in out  # system tags only with --system-tags
    assert "mlflow.runName" in capstan(home, "runs", "show", run_id, "--system-tags").stdout
    data = json.loads(capstan(home, "runs", "show", run_id, "--json").stdout)
    assert data["run"]["data"]["params"] == {"depth": "5", "trees": "100"}
    assert data["artifacts"] == [{"path": "reports", "is_dir": True, "size": None}]


def test_runs_compare_marks_differences(home: dict[str, Any]) -> None:
    first, second, _ = home["runs"]
    result = capstan(home, "runs", "compare", first, second)
    assert result.returncode == 0, result.stderr
    depth = next(line for line in result.stdout.splitlines() if "params.depth" in line)
    trees = next(line for line in result.stdout.splitlines() if "params.trees" in line)
    assert depth.lstrip().startswith("*") and depth.split()[-2:] == ["3", "5"]
    assert not trees.lstrip().startswith("*")
    only = capstan(home, "runs", "compare", first, second, "--diff-only").stdout
    assert "params.trees" not in only and "params.depth" in only
    data = json.loads(capstan(home, "runs", "compare", first, second, "--json").stdout)
    assert data["differences"] == ["metrics.accuracy", "metrics.loss", "params.depth"]
    assert data["params"]["depth"] == {first: "3", second: "5"}


def test_models_list_and_show(home: dict[str, Any]) -> None:
    listed = capstan(home, "models", "list")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "churn-model" in line)
    assert "v1" in row and "champion=v1" in row
    shown = capstan(home, "models", "show", "churn-model")
    assert "champion -> v1" in shown.stdout and home["runs"][1] in shown.stdout
    assert "models:/churn-model@champion" in shown.stdout
    data = json.loads(capstan(home, "models", "show", "churn-model", "--json").stdout)
    assert data["versions"][0]["run_id"] == home["runs"][1]


def test_errors_are_one_line_with_a_non_zero_exit(home: dict[str, Any], tmp_path: Path) -> None:
    one_line_error(capstan(home, "runs", "show", "0" * 32), "not found")
    one_line_error(capstan(home, "runs", "list", "--experiment", "nope"), "experiment 'nope' does not exist")
    one_line_error(capstan(home, "runs", "list", "--filter", "metrics.accuracy >>> 1"), "metrics.accuracy")
    one_line_error(capstan(home, "models", "show", "nope"), "nope")
    usage = capstan(home, "runs", "compare", home["runs"][0])
    assert usage.returncode == 2 and "Traceback" not in usage.stderr and "at least two" in usage.stderr
    unreachable = subprocess.run([*capstan_command(), "experiments", "list"], capture_output=True, text=True,
                                 env=clean_env(tmp_path, {"CAPSTAN_URL": "http://127.0.0.1:9"}), timeout=120)
    one_line_error(unreachable, "cannot reach the Capstan server")

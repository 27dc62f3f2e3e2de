"""Tables on narrow terminals: every header stays readable, every id stays whole on one line, no line overflows.

The layout rules are checked on `TextTable` directly (any content, any width) and on each table command of the
tracking and pipelines CLI at ``COLUMNS=80`` and ``COLUMNS=60`` (real subprocesses on a seeded home).
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capstan.cli.tables import PIPE_WIDTH, TextTable, render
from capstan.sdk.backends import ArtifactOwner
from capstan.sdk.backends_local import LocalBackend
from capstan.settings import Settings
from capstan.tracking.records import Metric, Param, RunTag
from helpers.server import capstan_command, clean_env

NOW = 1_700_000_000_000
RUN_ID = "0123456789abcdef0123456789abcdef"


def _check_layout(out: str, headers: list[str], ids: list[str], width: int) -> None:
    lines = out.splitlines()
    for header in headers:
        assert any(header in line for line in lines), f"header {header!r} is not on any line:\n{out}"
    for value in ids:
        assert any(value in line for line in lines), f"id {value!r} is not whole on one line:\n{out}"
    longest_id = max((len(v) for v in ids), default=0)
    for line in lines:
        assert len(line.rstrip()) <= max(width, longest_id + 2), f"line wider than {width}: {line!r}"


# -- the helper ---------------------------------------------------------------------------------------------
def _versions_table() -> TextTable:
    table = TextTable("VERSION", "ALIASES", "CREATED", "RUN ID", "SOURCE", "STATUS", ids=("RUN ID",),
                      title="Versions")
    table.add_row("1", "champion, challenger", "2023-11-14 22:13:20", RUN_ID, f"runs:/{RUN_ID}/model", "READY")
    return table


@pytest.mark.parametrize("width", [200, 100, 80, 60, 40])
def test_ids_and_headers_survive_every_width(width: int) -> None:
    table = _versions_table()
    out = render(table, width)
    _check_layout(out, list(table.headers), [RUN_ID], width)
    for value in ("champion", "challenger", "READY", "2023-11-14"):
        assert value in out  # folded or wrapped, never dropped


def test_wide_enough_is_one_aligned_table_and_too_narrow_is_one_block_per_row() -> None:
    table = _versions_table()
    table.add_row("2", "-", "2023-11-15 09:00:00", RUN_ID.upper(), "s3://bucket/model", "READY")
    wide = render(table, 160).splitlines()
    header = next(line for line in wide if "VERSION" in line)
    assert all(h in header for h in table.headers)
    row = next(line for line in wide if RUN_ID.upper() in line)
    assert header.index("RUN ID") == row.index(RUN_ID.upper())  # aligned
    narrow = render(table, 60).splitlines()
    assert sum(1 for line in narrow if line.startswith("VERSION")) == 2  # one block per row
    assert any(line.startswith("RUN ID") and line.rstrip().endswith(RUN_ID) for line in narrow)


def test_piped_output_keeps_natural_width() -> None:
    table = _versions_table()
    row = next(line for line in render(table, PIPE_WIDTH).splitlines() if RUN_ID in line)
    assert f"runs:/{RUN_ID}/model" in row and "2023-11-14 22:13:20" in row


def test_cells_are_data_not_markup() -> None:
    table = TextTable("NAME", "NOTE")
    table.add_row("[red]x[/red]", "[/]")
    out = render(table, 80)
    assert "[red]x[/red]" in out and "[/]" in out


def test_rows_must_fit_the_headers() -> None:
    with pytest.raises(ValueError, match="not a header"):
        TextTable("A", ids=("B",))
    table = TextTable("A")
    with pytest.raises(ValueError, match="2 cells for 1 columns"):
        table.add_row("x", "y")


_words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_.:/=,", min_size=0, max_size=30)
_cells = st.lists(_words, min_size=0, max_size=4).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(headers=st.lists(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ.", min_size=1, max_size=14),
                        min_size=1, max_size=9, unique=True),
       id_column=st.integers(min_value=0, max_value=8), rows=st.integers(min_value=1, max_value=3),
       data=st.data(), width=st.integers(min_value=40, max_value=220))
def test_layout_rules_hold_for_any_content(headers: list[str], id_column: int, rows: int, data: st.DataObject,
                                           width: int) -> None:
    id_header = headers[id_column % len(headers)]
    table = TextTable(*headers, ids=(id_header,))
    ids = []
    for _ in range(rows):
        run_id = data.draw(st.text(alphabet="0123456789abcdef", min_size=1, max_size=36))
        ids.append(run_id)
        table.add_row(*(run_id if h == id_header else data.draw(_cells) for h in headers))
    _check_layout(render(table, width), headers, ids, width)


# -- every table command of the CLI ------------------------------------------------------------------------
PIPELINE = '''
import capstan.pipelines as cp


@cp.step(isolation="thread")
def numbers(rows: int) -> list[int]:
    return list(range(rows))


@cp.pipeline
def tiny(rows: int = 3) -> None:
    numbers(rows)
'''


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two runs with four metrics and three params, a logged model, a registered model and a pipeline run."""
    root = tmp_path_factory.mktemp("narrow-home")
    backend = LocalBackend(Settings.for_home(root))
    experiment_id = backend.create_experiment("churn-prediction-nightly", tags={"team": "growth"})
    runs = []
    for i in range(2):
        info = backend.create_run(experiment_id, run_name=f"random-forest-{i}", start_time=NOW + i,
                                  tags=[RunTag("owner", "retention-team")])
        backend.log_batch(info.run_id, params=[Param("max_depth", "5"), Param("n_estimators", "100"),
                                               Param("criterion", "gini")],
                          metrics=[Metric(k, 0.5 + i / 10, NOW, s) for k in ("accuracy", "precision", "recall",
                                                                              "f1_score") for s in range(3)])
        backend.update_run(info.run_id, status="FINISHED", end_time=NOW + 90_000)
        runs.append(info.run_id)
    model = backend.create_logged_model(experiment_id, name="model", source_run_id=runs[0])
    backend.log_outputs(runs[0], [(model.model_id, 0)])
    note = root / "note.txt"
    note.write_text("hello")
    backend.upload_artifact(ArtifactOwner.run(runs[0]), "reports/evaluation/confusion-matrix.txt", note)
    backend.create_registered_model("churn-classifier", description="predicts churn for the retention team")
    backend.create_model_version("churn-classifier", source=f"runs:/{runs[0]}/model", run_id=runs[0])
    backend.set_alias("churn-classifier", "champion", 1)
    backend.close()
    pipeline = root / "tiny.py"
    pipeline.write_text(textwrap.dedent(PIPELINE))
    ran = subprocess.run([*capstan_command(), "run", str(pipeline), "--json"], env=clean_env(root),
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    pipeline_run = json.loads(ran.stdout)["run"]["id"]
    yield {"root": root, "runs": runs, "experiment_id": experiment_id, "model_id": model.model_id,
           "pipeline_run": pipeline_run}


def _at(home: dict[str, Any], width: int, *args: str) -> str:
    result = subprocess.run([*capstan_command(), *args], env=clean_env(home["root"], {"COLUMNS": str(width)}),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


COMMANDS: dict[str, tuple[list[str], list[str], list[str]]] = {
    # name: (argv with {placeholders}, headers that must appear, ids (placeholders) that must stay whole)
    "experiments list": (["experiments", "list"], ["ID", "NAME", "STAGE", "CREATED", "LAST UPDATE", "TAGS"],
                         ["experiment_id"]),
    "runs list": (["runs", "list"], ["RUN ID", "NAME", "EXPERIMENT", "STATUS", "STARTED", "DURATION",
                                     "metrics.accuracy", "metrics.f1_score", "metrics.precision", "metrics.recall",
                                     "params.criterion", "params.max_depth", "params.n_estimators"], ["run0", "run1"]),
    "runs list --view all": (["runs", "list", "--view", "all"], ["RUN ID", "NAME", "STATUS", "STAGE"],
                             ["run0", "run1"]),
    "runs show": (["runs", "show", "{run0}"], ["FIELD", "VALUE", "PARAM", "METRIC", "LATEST", "TAG", "PATH",
                                                "MODEL ID", "URI"], ["run0", "model_id"]),
    "runs show --metric": (["runs", "show", "{run0}", "--metric", "accuracy"], ["STEP", "TIMESTAMP", "VALUE"],
                           ["run0"]),
    "runs compare": (["runs", "compare", "{run0}", "{run1}"], ["RUN ID", "KEY", "[1] random-forest-0",
                                                               "[2] random-forest-1"], ["run0", "run1"]),
    "models list": (["models", "list"], ["NAME", "LATEST", "ALIASES", "UPDATED", "DESCRIPTION"], []),
    "models show": (["models", "show", "churn-classifier"], ["FIELD", "VALUE", "VERSION", "ALIASES", "CREATED",
                                                             "RUN ID", "SOURCE", "STATUS"], ["run0"]),
    "pipelines runs": (["pipelines", "runs"], ["run id", "pipeline", "status", "source", "created", "took",
                                               "message"], ["pipeline_run"]),
}


def _values(home: dict[str, Any]) -> dict[str, str]:
    return {"run0": home["runs"][0], "run1": home["runs"][1], "experiment_id": home["experiment_id"],
            "model_id": home["model_id"], "pipeline_run": home["pipeline_run"]}


@pytest.mark.parametrize("width", [80, 60])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_table_commands_at_narrow_widths(home: dict[str, Any], command: str, width: int) -> None:
    argv, headers, id_names = COMMANDS[command]
    values = _values(home)
    out = _at(home, width, *(re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], a) for a in argv))
    _check_layout(out, headers, [values[name] for name in id_names], width)
    if command == "models show":
        assert "champion" in out and "models:/churn-classifier@champion" in out


def test_json_stays_available_at_any_width(home: dict[str, Any]) -> None:
    data = json.loads(_at(home, 60, "runs", "list", "--json"))
    assert {r["info"]["run_id"] for r in data["runs"]} == set(home["runs"])

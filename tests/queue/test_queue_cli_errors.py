"""Bad input to the queue, the simulator and their CLI: one-line errors, warnings, and honest defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from capstan.errors import InvalidParameterValue
from capstan.queue.manager import QueueManager
from capstan.queue.model import PodSet, Reason
from capstan.queue.records import EVICTING
from capstan.queue.store import MemoryQueueStore
from capstan.queue.trace import read_trace
from capstan.resources.quantity import parse_quantity

ROOT = Path(__file__).parents[2]
TEAMS = ROOT / "examples" / "queues" / "teams.yaml"
HEADER = "job_id,submit_time_s,duration_s,num_gpus,num_cpus,cluster\n"


def capstan(home: Path, *args: str, pre: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAPSTAN_HOME": str(home)}
    for name in ("CAPSTAN_URL", "CAPSTAN_DB_URL", "CAPSTAN_GPUS"):
        env.pop(name, None)
    entry = f"import sys; {pre}from capstan.cli.main import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", entry, *args], capture_output=True, text=True, env=env,
                          timeout=120, cwd=ROOT)


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


# -- the trace loader: one check for every numeric column -------------------------------------------------------
@pytest.mark.parametrize(("row", "column", "problem"), [
    ("a,nan,10,1,,c", "submit_time_s", "is not a finite number"),
    ("a,0,nan,1,,c", "duration_s", "is not a finite number"),
    ("a,0,inf,1,,c", "duration_s", "is not a finite number"),
    ("a,-inf,10,1,,c", "submit_time_s", "is not a finite number"),
    ("a,0,10,NaN,,c", "num_gpus", "is not a finite number"),
    ("a,0,10,1,inf,c", "num_cpus", "is not a finite number"),
    ("a,0,10,1.5,,c", "num_gpus", "is not a whole number"),
    ("a,0,-1,1,,c", "duration_s", "is out of range"),
    ("a,0,1e300,1,,c", "duration_s", "is out of range"),
    ("a,0,10,1e9,,c", "num_gpus", "is out of range"),
    ("a,0,10,two,,c", "num_gpus", "is not a number"),
])
def test_every_numeric_column_is_checked_naming_file_line_and_column(tmp_path: Path, row: str, column: str,
                                                                     problem: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(HEADER + "ok,0,10,1,,c\n" + row + "\n")
    with pytest.raises(InvalidParameterValue) as info:
        read_trace(path)
    assert info.value.message.startswith(f"{path}:3: column '{column}': ")
    assert problem in info.value.message


def test_a_valid_trace_still_loads_with_empty_optional_cells(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(HEADER + "b,5,20,2.0,,c\na,1,10,1,4,c\n")
    jobs = read_trace(path)
    assert [(j.id, j.submit, j.duration, j.gpus, j.queue) for j in jobs] == [("a", 1.0, 10.0, 1, "c"),
                                                                           ("b", 5.0, 20.0, 2, "c")]


@pytest.mark.parametrize("content", [
    HEADER.encode("utf-16") + b"a\x00,\x001\x00",                     # UTF-16 with a byte-order mark
    HEADER.encode("utf-16-le") + "a,1,1,1,,c\n".encode("utf-16-le"),  # UTF-16 without one: NUL bytes
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\x00",               # binary
])
def test_binary_and_utf16_traces_are_one_line_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(content)
    with pytest.raises(InvalidParameterValue, match=r"(not UTF-8 text|contains NUL bytes)"):
        read_trace(path)
    result = CliRunner().invoke(_cli(), ["simulate", "--trace", str(path), "--cluster", str(TEAMS)])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def _cli() -> object:
    from capstan.cli.main import cli

    return cli


def test_simulate_plot_without_matplotlib_fails_before_the_replay(tmp_path: Path) -> None:
    # The trace does not exist: an error about matplotlib (not about the trace) proves the check comes first.
    r = capstan(tmp_path / "home", "simulate", "--trace", str(tmp_path / "missing.csv"), "--cluster", str(TEAMS),
                "--plot", str(tmp_path / "plots"), pre="sys.modules['matplotlib'] = None; ")
    line = one_line_error(r)
    assert "--plot needs matplotlib" in line and "pip install 'capstan[plot]'" in line
    assert not (tmp_path / "plots").exists()


def test_plot_extra_exists_and_every_extra_is_used() -> None:
    """An extra nothing uses is a defect: each runtime extra's package is imported somewhere in src/ (s3fs is loaded by
    fsspec for ``s3://`` artifact roots, which settings checks by that module name)."""
    import re
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("matplotlib") for d in extras["plot"])
    assert any(d.startswith("matplotlib") for d in extras["test"])
    modules = {"s3": ("fsspec",), "plot": ("matplotlib",), "grpc": ("grpc",), "onnx": ("onnxruntime",),
               "torch": ("torch",), "skops": ("skops",), "parquet": ("pyarrow",),
               "llm": ("torch", "transformers", "peft", "sentence_transformers"), "vllm": ("vllm",),
               "k8s": ("kubernetes_validate", "jsonschema", "celpy")}
    assert set(extras) - {"test", "bench"} == set(modules), "a new extra needs its modules named here"
    assert len(extras["llm"]) == len(modules["llm"]), "each package of the llm extra needs its module named here"
    source = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.py"))
    for extra, names in modules.items():
        for module in names:
            # imported, or its package data read (kubernetes-validate's schemas)
            used = rf"^\s*(import|from) {module}\b|(import_module|files)\(\"{module}\"\)"
            assert re.search(used, source, re.M), f"extra {extra!r}: nothing imports {module}"


def test_simulate_help_lists_every_policy_of_the_registry() -> None:
    from capstan.queue.simulate import POLICIES

    result = CliRunner().invoke(_cli(), ["simulate", "--help"], terminal_width=400)
    assert result.exit_code == 0
    for name in POLICIES:
        assert name in result.output
    assert "JSON array with one object per policy" in result.output


def test_simulate_json_is_one_array_of_one_object_per_policy(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text(HEADER + "a,0,100,1,,nlp\nb,10,50,2,,vision\n")
    result = CliRunner().invoke(_cli(), ["simulate", "--trace", str(trace), "--cluster", str(TEAMS),
                                         "--policy", "strict-fifo", "--policy", "capstan-small-first", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert isinstance(rows, list) and [r["policy"] for r in rows] == ["strict-fifo", "capstan-small-first"]
    assert all(r["jobs"] == 2 for r in rows)


# -- quantities ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["1e400", "9" * 400, "1e999999999", "1e22", float("inf")])
def test_absurd_quantities_are_refused_without_echoing_them(text: object) -> None:
    with pytest.raises(InvalidParameterValue) as info:
        parse_quantity(text, path="--cpu")
    assert info.value.message.startswith("--cpu: ")
    assert len(info.value.message) < 120


def test_tiny_quantities_round_up_and_negative_tiny_ones_are_refused() -> None:
    assert parse_quantity("1e-400") == 1
    with pytest.raises(InvalidParameterValue, match="must not be negative"):
        parse_quantity("-1e-400")


# -- queue apply, status, why -----------------------------------------------------------------------------------
def test_fresh_home_status_shows_the_default_queue(tmp_path: Path) -> None:
    r = capstan(tmp_path / "home", "queue", "status", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["cluster_queue"] for row in rows] == ["default"]
    r = capstan(tmp_path / "home", "queue", "submit", "w", "-q", "default", "--cpu", "1e400")
    line = one_line_error(r)
    assert "too large" in line and "0000000000" not in line


def test_apply_refuses_a_configuration_without_cluster_queues(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert capstan(home, "queue", "apply", "-f", str(TEAMS)).returncode == 0
    for text in ("", "# nothing\n", "flavors: [{name: cpu}]\n"):
        empty = tmp_path / "empty.yaml"
        empty.write_text(text)
        line = one_line_error(capstan(home, "queue", "apply", "-f", str(empty)))
        assert "defines no clusterQueues" in line
    status = json.loads(capstan(home, "queue", "status", "--json").stdout)
    assert {s["cluster_queue"] for s in status} == {"team-a", "team-b", "production"}  # nothing was replaced
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    assert "not UTF-8 text" in one_line_error(capstan(home, "queue", "apply", "-f", str(binary)))


def test_manager_refuses_an_empty_configuration() -> None:
    mgr = QueueManager(MemoryQueueStore())
    with pytest.raises(InvalidParameterValue, match="defines no clusterQueues"):
        mgr.apply_config("flavors: []\n")


def test_teams_example_serves_project_default_and_apply_warns_otherwise(tmp_path: Path) -> None:
    home = tmp_path / "home"
    r = capstan(home, "queue", "apply", "-f", str(TEAMS), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["warnings"] == [] and "warning" not in r.stderr
    # A workload of project vision, then a configuration with neither a vision nor a default LocalQueue.
    assert capstan(home, "queue", "submit", "v1", "-q", "vision", "--gpu", "1").returncode == 0
    no_default = tmp_path / "no-default.yaml"
    no_default.write_text(TEAMS.read_text().replace("  - {name: default, clusterQueue: team-a, project: default}\n",
                                                    "").replace("project: vision", "project: other"))
    r = capstan(home, "queue", "apply", "-f", str(no_default))
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, r.stderr
    assert "project 'default' has no LocalQueue" in warnings[0] and "project 'vision'" in warnings[1]
    assert "Unschedulable" in warnings[0]


def test_apply_report_counts_a_workload_once_when_both_its_queues_vanish() -> None:
    mgr = QueueManager(MemoryQueueStore())
    mgr.apply_config(TEAMS.read_text())
    mgr.submit("x", "vision", [PodSet("main", 1, {"gpu": parse_quantity(1)})])
    mgr.run_until_stable()
    other = ("clusterQueues:\n  - name: solo\n    resourceGroups:\n      - coveredResources: [gpu]\n"
             "        flavors: [{name: a100, resources: [{name: gpu, nominalQuota: 1}]}]\n"
             "flavors: [{name: a100}]\nlocalQueues: [{name: solo, clusterQueue: solo, project: p}]\n")
    report = mgr.apply_config(other)
    assert report.evicted == ("x",) and report.orphaned == ("x",) and report.kept == 0


PREEMPTING = """
flavors: [{name: a100}]
priorityClasses: [{name: low, value: 0}, {name: high, value: 100}]
defaultPriorityClass: low
clusterQueues:
  - name: q
    preemption: {withinClusterQueue: LowerPriority}
    resourceGroups:
      - coveredResources: [gpu]
        flavors: [{name: a100, resources: [{name: gpu, nominalQuota: 1}]}]
localQueues: [{name: q, clusterQueue: q, project: p}]
"""


def test_why_while_waiting_for_evictions_names_the_holders_and_hints() -> None:
    mgr = QueueManager(MemoryQueueStore())
    mgr.apply_config(PREEMPTING)
    one_gpu = [PodSet("main", 1, {"gpu": parse_quantity(1)})]
    mgr.submit("low", "q", one_gpu)
    mgr.run_until_stable()
    mgr.submit("urgent", "q", one_gpu, priority_class="high")
    mgr.run_until_stable()
    assert mgr.get("low").state == EVICTING
    why = mgr.why("urgent")
    assert why.reason is Reason.WAITING_FOR_PREEMPTION
    assert why.holders == ("low",)
    assert "low" in why.message and "workloads already being evicted" not in why.message
    assert why.hint is not None and "capstan queue list --state Evicting" in why.hint
    text = why.render()
    assert "Held by:   low" in text and "Hint:" in text


# -- capstan events ---------------------------------------------------------------------------------------------
def test_events_with_an_unknown_kind_fails_listing_the_kinds(tmp_path: Path) -> None:
    line = one_line_error(capstan(tmp_path / "home", "events", "bogus-kind"))
    assert "unknown event kind 'bogus-kind'" in line
    for kind in ("run", "workload", "pipeline-run", "step", "schedule", "model", "experiment"):
        assert kind in line
    r = capstan(tmp_path / "home", "events", "workload")
    assert r.returncode == 0, r.stderr


def test_event_kinds_cover_every_writer() -> None:
    from capstan.cli.server_cmds import EVENT_KINDS
    from capstan.pipelines.schedules import SCHEDULE_KIND
    from capstan.pipelines.storage import RUN_KIND, STEP_KIND
    from capstan.store import registry_sql

    writers = {RUN_KIND, STEP_KIND, SCHEDULE_KIND, registry_sql._EVENT_KIND, "workload", "run", "experiment"}
    assert writers <= set(EVENT_KINDS)

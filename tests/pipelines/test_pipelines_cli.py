"""The CLI: `capstan run` (live view, failures naming the step with its log tail), one-line errors for bad input
with nothing half-created, `pipelines runs|show|lineage|validate|cancel`, `logs` and `schedules`."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pipeline_helpers import capstan, popen_capstan, write_pipeline

from capstan.cli import context
from capstan.cli.main import main
from capstan.pipelines.executors import close_pools, process_alive
from capstan.settings import Settings
from helpers.pipelines import open_runner

ETL = '''
import time
from pathlib import Path

import capstan.pipelines as cp


@cp.step
def extract(rows: int) -> list[int]:
    print(f"extracting {rows} rows")
    return list(range(rows))


@cp.step(isolation="thread")
def clean(values: list[int]) -> list[int]:
    return [v for v in values if v % 2 == 0]


@cp.step(isolation="thread")
def load(values: list[int], strict: bool = False) -> int:
    if strict and len(values) < 10:
        print("only", len(values), "values")
        raise ValueError("too few rows to load")
    return sum(values)


@cp.step
def nap(seconds: float, marks: str) -> None:
    Path(marks, "nap.pid").write_text(str(__import__("os").getpid()))
    time.sleep(seconds)


@cp.pipeline
def etl(rows: int = 6, strict: bool = False):
    return load(clean(extract(rows)), strict=strict)


@cp.pipeline
def sleeper(marks: str, seconds: float = 60.0):
    return nap(seconds, marks)
'''

BROKEN = {
    "syntax": "import capstan.pipelines as cp\n\n\ndef oops(:\n    pass\n",
    "raises": "import capstan.pipelines as cp\n\nVALUE = 1\nRATIO = VALUE / 0\n",
    "cycle": '''
import capstan.pipelines as cp

@cp.step(isolation="thread")
def a(x: int = 0) -> int:
    return x

@cp.pipeline
def loop():
    first = a()
    second = a(first)
    first.after(second)
''',
    "returns": '''
import threading
import capstan.pipelines as cp

@cp.step
def lock() -> object:
    return threading.Lock()

@cp.step
def number() -> int:
    return "seven"

@cp.pipeline
def unpicklable():
    return lock()

@cp.pipeline
def wrong_type():
    return number()
''',
}


@pytest.fixture
def home(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("CAPSTAN_HOME", str(settings.home))
    monkeypatch.setenv("COLUMNS", "200")
    for name in [k for k in __import__("os").environ if k.startswith("CAPSTAN_") and k != "CAPSTAN_HOME"]:
        monkeypatch.delenv(name)
    _reset_cli()
    yield settings
    _reset_cli()
    close_pools()


def _reset_cli() -> None:
    """A new CLI invocation: settings read again and the composition root's adapters opened again."""
    context.reset()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def stored_runs(settings: Settings) -> int:
    runner = open_runner(settings)
    try:
        return len(runner.store.list_runs()) + len(runner.store.schedules())
    finally:
        runner.close()


def test_run_show_logs_and_lineage(home: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = write_pipeline(tmp_path, "etl", ETL)
    code, out, err = cli(capsys, "run", f"{file}:etl", "--param", "rows=5")
    assert code == 0, err
    assert re.search(r"run [0-9a-f]{32} succeeded in [\d.]+s \(3 steps, 0 cached\)", out)
    assert "extract" in out and "succeeded" in out and "steps done" in out
    code, out, _ = cli(capsys, "run", f"{file}:etl", "-p", "rows=5")
    assert code == 0 and "(3 steps, 3 cached)" in out and "cache hit" in out

    code, out, _ = cli(capsys, "pipelines", "runs", "--json")
    runs = json.loads(out)
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"] and runs[0]["params"] == {"rows": 5,
                                                                                               "strict": False}
    run_id = runs[1]["id"]
    code, out, _ = cli(capsys, "pipelines", "show", run_id[:8], "--json")
    shown = json.loads(out)
    steps = {s["step"]: s for s in shown["steps"]}
    assert steps["clean"]["needs"] == ["extract"] and steps["load"]["state"] == "succeeded"
    assert steps["extract"]["attempts"][0]["exit_code"] == 0 and steps["extract"]["attempts"][0]["peak_memory"]
    assert {(e["step_id"], e["source_step"]) for e in shown["inputs"]} == {("clean", "extract"), ("load", "clean")}
    code, out, _ = cli(capsys, "pipelines", "show", run_id)
    assert code == 0 and "extract" in out and "needs" in out and "succeeded" in out
    code, out, _ = cli(capsys, "pipelines", "runs")
    assert code == 0 and run_id in out

    code, out, _ = cli(capsys, "logs", run_id, "extract")
    assert (code, out) == (0, "extracting 5 rows\n")
    code, _out, err = cli(capsys, "logs", run_id, "extract", "--attempt", "4")
    assert code == 1 and err.startswith("error: step 'extract' of run") and "has no attempt 4" in err
    code, _out, err = cli(capsys, "logs", run_id, "nosuch")
    assert code == 1 and "has no step 'nosuch'" in err
    code, out, _ = cli(capsys, "logs", run_id, "extract", "--follow")
    assert out == "extracting 5 rows\n"

    code, out, _ = cli(capsys, "pipelines", "lineage", run_id, "--json")
    lineage = json.loads(out)
    digest = next(p["digest"] for p in lineage["produced"] if p["step"] == "extract")
    code, out, _ = cli(capsys, "pipelines", "lineage", digest, "--json")
    data = json.loads(out)
    assert data["produced_by"][0]["step"] == "extract"
    assert {c["step"] for c in data["consumed_by"]} == {"clean"}
    code, out, _ = cli(capsys, "pipelines", "validate", f"{file}:etl", "-p", "rows=2")
    assert code == 0 and "extract" in out and "rows: int = 6" in out


def test_a_failed_run_names_the_step_and_shows_its_log(home: Settings, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    file = write_pipeline(tmp_path, "etl", ETL)
    code, _out, err = cli(capsys, "run", f"{file}:etl", "-p", "strict=yes")
    assert code == 1
    assert "--- last lines of step 'load' ---" in err and "only 3 values" in err
    assert "ValueError: too few rows to load" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: pipeline 'etl' failed at step 'load' (Exception): ValueError: too few rows")
    assert "capstan logs" in last
    runner = open_runner(home)
    try:
        (run,) = runner.store.list_runs()
        assert run.status == "failed"
    finally:
        runner.close()
    code, _out, err = cli(capsys, "pipelines", "retry", run.id, "--json")
    assert code == 1 and "failed at step 'load'" in err


@pytest.mark.parametrize(("target", "params", "message"), [
    ("syntax.py", (), r"^error: .*syntax\.py:4: cannot import pipeline file .*SyntaxError"),
    ("raises.py", (), r"^error: .*raises\.py:4: cannot import pipeline file .*ZeroDivisionError: division by zero"),
    ("cycle.py", (), r"^error: .*cycle\.py:\d+: cycle in the pipeline: a \(.*cycle\.py:\d+\) -> a-2"),
    ("missing.py", (), r"^error: pipeline file '.*missing\.py' does not exist"),
    ("etl.py", (), r"^error: .*etl\.py: defines several pipelines \(etl, sleeper\)"),
    ("etl.py:sleeper", (), r"^error: .*etl\.py:\d+: pipeline 'sleeper' is missing parameter 'marks' \(str\)"),
    ("etl.py:etl", ("-p", "rows=ten"), r"^error: .*etl\.py:\d+: parameter 'rows' \(int\): 'ten' is not an integer"),
    ("etl.py:etl", ("-p", "rows"), r"^error: --param: expected KEY=VALUE, got 'rows'"),
    ("etl.py:nope", (), r"^error: .*etl\.py: has no attribute 'nope' \(pipelines here: etl, sleeper\)"),
])
def test_bad_input_is_one_line_and_creates_nothing(home: Settings, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str], target: str,
                                                   params: tuple[str, ...], message: str) -> None:
    write_pipeline(tmp_path, "etl", ETL)
    for name, source in BROKEN.items():
        (tmp_path / f"{name}.py").write_text(source)
    code, _out, err = cli(capsys, "run", str(tmp_path / target), *params)
    assert code == 1
    assert re.search(message, err), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert stored_runs(home) == 0


def test_unstorable_and_mistyped_returns_fail_the_step_with_its_place(home: Settings, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "returns.py").write_text(BROKEN["returns"])
    code, _out, err = cli(capsys, "run", f"{tmp_path / 'returns.py'}:unpicklable")
    assert code == 1 and re.search(r"failed at step 'lock' \(SerializationError\): step 'lock' \(.*returns\.py:\d+\) "
                                   r"returned a lock that cannot be stored", err), err
    code, _out, err = cli(capsys, "run", f"{tmp_path / 'returns.py'}:wrong_type")
    assert code == 1 and re.search(r"\(TypeMismatch\): step 'number' \(.*returns\.py:\d+\) returned str, but its "
                                   r"annotation is int", err), err


def test_schedules_commands(home: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = write_pipeline(tmp_path, "etl", ETL)
    code, _out, err = cli(capsys, "schedules", "create", "bad", "--pipeline", f"{file}:etl", "--cron", "61 * * * *")
    assert code == 1 and err.startswith("error: --cron: '61 * * * *' is not a valid cron expression")
    assert stored_runs(home) == 0
    code, out, err = cli(capsys, "schedules", "create", "nightly", "--pipeline", f"{file}:etl", "--cron",
                         "0 3 * * *", "--params", "rows=4", "--no-catchup")
    assert code == 0, err
    assert "schedule nightly created" in out and "next slot" in out
    code, _out, err = cli(capsys, "schedules", "create", "nightly", "--pipeline", f"{file}:etl", "--cron", "0 3 * * *")
    assert code == 1 and "already exists" in err
    code, out, _ = cli(capsys, "schedules", "list", "--json")
    (record,) = json.loads(out)
    assert (record["cron"], record["params"], record["catchup"]) == ("0 3 * * *", {"rows": 4}, False)
    code, out, err = cli(capsys, "schedules", "backfill", "nightly", "--from", "2024-01-01", "--to", "2024-01-02T05:00")
    assert code == 0, err
    assert "2024-01-01T03:00:00+00:00  run" in out and "succeeded" in out and out.count("succeeded") == 2
    code, out, _ = cli(capsys, "schedules", "backfill", "nightly", "--from", "2024-01-01", "--to", "2024-01-01T23:00",
                       "--submit-only")
    assert "already started" in out
    code, out, _ = cli(capsys, "schedules", "list")
    assert "nightly" in out and "0 3 * * *" in out
    code, out, _ = cli(capsys, "schedules", "delete", "nightly")
    assert code == 0 and "deleted" in out
    code, _out, err = cli(capsys, "schedules", "delete", "nightly")
    assert code == 1 and "does not exist" in err


def test_cancel_stops_a_run_in_another_process(home: Settings, tmp_path: Path) -> None:
    file = write_pipeline(tmp_path, "etl", ETL)
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = popen_capstan(home, "run", f"{file}:sleeper", "-p", f"marks={marks}")
    deadline = time.monotonic() + 60
    while not (marks / "nap.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int((marks / "nap.pid").read_text())
    runner = open_runner(home)
    try:
        (run,) = runner.store.list_runs()
    finally:
        runner.close()
    done = capstan(home, "pipelines", "cancel", run.id)
    assert done.returncode == 0 and f"run {run.id} cancelled" in done.stdout, done.stderr
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "cancelled" in err
    deadline = time.monotonic() + 10
    while process_alive(pid, None) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(pid, None)
    runner = open_runner(home)
    try:
        steps = runner.store.steps(run.id, "default")
        assert [(s.step_id, s.state, s.reason) for s in steps] == [("nap", "cancelled", "Cancelled")]
        assert runner.store.attempts(run.id, "nap")[0].state == "cancelled"
    finally:
        runner.close()
    again = capstan(home, "pipelines", "cancel", run.id)
    assert again.returncode == 1 and "has already cancelled" in again.stderr


def test_run_backend_options_bad_input_is_one_line_and_stores_nothing(
        home: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    file = write_pipeline(tmp_path, "etl", ETL)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    code, _, err = cli(capsys, "run", f"{file}:etl", "--backend", "kubernetes", "--context", "prod")
    assert code == 1 and err.startswith("error: no usable Kubernetes configuration") and err.count("\n") == 1, err
    code, _, err = cli(capsys, "run", f"{file}:etl", "--namespace", "team-a")
    assert code == 1 and err == "error: --context and --namespace apply to --backend kubernetes\n"
    assert stored_runs(home) == 0
    # the options last one command: the next runs locally as the environment says
    code, _, err = cli(capsys, "run", f"{file}:etl", "--param", "rows=3")
    assert code == 0, err

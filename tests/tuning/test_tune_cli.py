"""``capstan tune`` and ``capstan studies`` as real subprocesses: a script trial fed ``${params.x}``, bad input as
one line before anything starts, a controller killed with SIGKILL and resumed, the JSON and the plots."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from tuning_helpers import TRACE

from helpers.server import capstan_command, clean_env

HERE = Path(__file__).parent

SCRIPT = """
import argparse, capstan
parser = argparse.ArgumentParser()
parser.add_argument("--x", type=float, required=True)
parser.add_argument("--mode", default="none")
args = parser.parse_args()
print(f"got x={args.x!r} mode={args.mode}")
for step in range(3):
    capstan.report(args.x * step, step)
print(f"score={args.x * 10}")
print(f"width: {args.x + 1}")
"""

STUDY = """
name: {name}
objective: {{metric: score, goal: maximize, additional_metrics: [width]}}
parameters:
  x: {{type: float, min: 0.5, max: 1.5}}
  kind: {{type: categorical, values: [plain, fancy]}}
  mode: {{type: categorical, values: [fast, slow], when: {{kind: [fancy]}}}}
algorithm: random
seed: 5
max_trials: {trials}
parallel_trials: 2
trial:
  script: train.py
  args: ["--x", "${{params.x}}", "--mode=${{params.mode}}"]
"""


def tune(home: Path, *args: str, cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*capstan_command(), *args], cwd=cwd, env=clean_env(home, env), capture_output=True,
                          text=True, timeout=timeout)


def test_a_script_trial_gets_its_parameters_and_its_printed_metrics_count(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(SCRIPT)
    (tmp_path / "study.yaml").write_text(STUDY.format(name="script", trials=4))
    home = tmp_path / "home"
    done = tune(home, "tune", "-f", "study.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("study script: maximize score with random; up to 4 trials, 2 at a time")
    assert sum(1 for line in lines if line.startswith("trial ")) == 4
    assert "best: trial" in done.stdout and "Succeeded: 4 trials ran (4 complete)" in done.stdout
    shown = json.loads(tune(home, "studies", "show", "script", "--json", cwd=tmp_path).stdout)
    assert shown["state"] == "Succeeded" and shown["counts"]["COMPLETE"] == 4
    for trial in shown["trials"]:
        x = trial["params"]["x"]
        log = (home / "studies" / "default" / "script" / f"trial-{trial['number']}.log").read_text()
        mode = trial["params"].get("mode", "none")
        assert f"got x={x!r} mode={mode}" in log  # every digit of x reached the script; inactive mode was dropped
        assert trial["value"] == pytest.approx(x * 10)
        assert trial["metrics"]["width"] == pytest.approx(x + 1)
        assert trial["intermediate"] == [[s, pytest.approx(x * s)] for s in range(3)]
    listed = json.loads(tune(home, "studies", "list", "--json", cwd=tmp_path).stdout)
    assert [s["name"] for s in listed] == ["script"] and "trials" not in listed[0]
    plots = tune(home, "studies", "show", "script", "--plot", str(tmp_path / "plots"), cwd=tmp_path)
    assert plots.returncode == 0, plots.stderr
    for name in ("optimization_history.png", "param_importances.png", "parallel_coordinates.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s.replace("type: float", "type: floot"),
     "error: study.parameters.x.type: unknown parameter type 'floot' (types: int, float, categorical)"),
    (lambda s: s.replace("min: 0.5, max: 1.5", "min: 2, max: 1"),
     "error: study.parameters.x.min: 2 is greater than max 1: the range is inverted"),
    (lambda s: s.replace("${params.x}", "${params.y}"),
     "error: study.trial.args[1]: ${params.y} is not a parameter of the study (parameters: kind, mode, x)"),
    (lambda s: s.replace("script: train.py", "script: missing.py"), "error: study.trial.script: missing.py does "
                                                                     "not exist (in "),
    (lambda s: s.replace("script: train.py\n  args: [\"--x\", \"${params.x}\", \"--mode=${params.mode}\"]",
                         "function: no_such_module:objective"),
     "error: study.trial.function: module 'no_such_module' does not exist"),
])
def test_bad_input_is_one_line_naming_the_field_and_nothing_starts(tmp_path: Path, change: object,
                                                                   message: str) -> None:
    (tmp_path / "train.py").write_text(SCRIPT)
    (tmp_path / "study.yaml").write_text(change(STUDY.format(name="bad", trials=2)))  # type: ignore[operator]  # a lambda
    home = tmp_path / "home"
    done = tune(home, "tune", "-f", "study.yaml", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith(message), done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert json.loads(tune(home, "studies", "list", "--json", cwd=tmp_path).stdout) == []


RESUMABLE = """
name: resume
objective: {metric: score}
parameters: {x: {type: float, min: 0, max: 1}}
algorithm: random
seed: 9
max_trials: 4
trial: {function: "tuning_helpers:slow"}
"""


def test_a_killed_controller_resumes_without_repeating_finished_trials(tmp_path: Path) -> None:
    study = tmp_path / "study.yaml"
    study.write_text(RESUMABLE + f"working_dir: {HERE}\n")
    home, trace = tmp_path / "home", tmp_path / "trace.txt"
    env = {TRACE: str(trace), "PYTHONPATH": str(HERE)}
    first = subprocess.Popen([*capstan_command(), "tune", "-f", str(study)], cwd=tmp_path,
                             env=clean_env(home, env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not (trace.exists() and trace.read_text().count("start ") >= 2):  # trial 0 ended, trial 1 started
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()[0]
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    starts = [line.split()[1] for line in trace.read_text().splitlines() if line.startswith("start ")]
    assert len(starts) == 2
    interrupted = starts[1]
    again = tune(home, "tune", "-f", str(study), cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    lines = trace.read_text().splitlines()
    runs = [line.split()[1] for line in lines if line.startswith("start ")]
    assert len(runs) == 5 and len(set(runs)) == 4  # 4 trials; only the interrupted one ran twice
    assert runs.count(interrupted) == 2 and runs.count(starts[0]) == 1
    shown = json.loads(tune(home, "studies", "show", "resume", "--json", cwd=tmp_path).stdout)
    assert shown["state"] == "Succeeded" and shown["counts"]["COMPLETE"] == 4
    by_number = {t["number"]: t for t in shown["trials"]}
    assert repr(by_number[1]["params"]["x"]) == interrupted
    assert by_number[1]["attempts"] == 2 and by_number[1]["message"].startswith("re-run")
    assert all(by_number[n]["attempts"] == 1 for n in (0, 2, 3))
    queue = json.loads(tune(home, "queue", "list", "--json", cwd=tmp_path).stdout)
    assert all(w["state"] == "Finished" for w in queue if w["id"].startswith("study/resume/")), queue


def test_ctrl_c_stops_the_study_and_running_it_again_resumes_it(tmp_path: Path) -> None:
    study = tmp_path / "study.yaml"
    study.write_text(RESUMABLE.replace("name: resume", "name: stopped").replace("max_trials: 4", "max_trials: 3")
                     + f"working_dir: {HERE}\n")
    home, trace = tmp_path / "home", tmp_path / "trace.txt"
    env = {TRACE: str(trace), "PYTHONPATH": str(HERE)}
    first = subprocess.Popen([*capstan_command(), "tune", "-f", str(study)], cwd=tmp_path,
                             env=clean_env(home, env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (trace.exists() and "start " in trace.read_text()):
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGINT)
    _out, err = first.communicate(timeout=60)
    assert first.returncode == 130 and err.strip() == "error: aborted", err
    shown = json.loads(tune(home, "studies", "show", "stopped", "--json", cwd=tmp_path).stdout)
    assert shown["state"] == "Stopped" and shown["reason"] == "Interrupted"
    again = tune(home, "tune", "-f", str(study), cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    shown = json.loads(tune(home, "studies", "show", "stopped", "--json", cwd=tmp_path).stdout)
    assert shown["state"] == "Succeeded" and shown["counts"]["COMPLETE"] == 3
    assert shown["trials"][0]["attempts"] == 2  # stopped while it ran: re-run with the same parameters

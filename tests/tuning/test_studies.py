"""Studies run end to end with function trials in real worker processes, each trial a workload of the real queue
(SQLite store) and a child run: seeded determinism, pruning, failure accounting, grid exhaustion, and parallel
trials that never exceed ``parallel_trials`` or the queue's quota."""

from __future__ import annotations

from pathlib import Path

import pytest
from tuning_helpers import intervals, max_overlap, run, spec, traced

from capstan.queue.admission import QueueAdmission
from capstan.queue.executor import local_queue_yaml
from capstan.sdk.backends_local import LocalBackend
from capstan.services import Services
from capstan.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.for_home(tmp_path / "home")


def _params(result: object) -> list[dict[str, object]]:
    return [dict(t.params) for t in result.trials]  # type: ignore[attr-defined]  # a StudyResult


def test_the_same_seed_gives_the_same_parameters(settings: Settings) -> None:
    space = {"x": {"type": "float", "min": -5.0, "max": 5.0}, "kind": {"values": ["a", "b"]}}
    first = run(settings, spec("tpe-a", "quadratic", algorithm={"name": "tpe", "startup_trials": 2}, seed=42,
                               max_trials=5, parameters=space))
    again = run(settings, spec("tpe-b", "quadratic", algorithm={"name": "tpe", "startup_trials": 2}, seed=42,
                               max_trials=5, parameters=space))
    other = run(settings, spec("tpe-c", "quadratic", algorithm={"name": "tpe", "startup_trials": 2}, seed=43,
                               max_trials=5, parameters=space))
    assert len(first.trials) == 5 and all(t.state == "COMPLETE" for t in first.trials)
    assert _params(first) == _params(again)
    assert _params(first) != _params(other)
    best = first.best_trial
    assert best is not None and best.value == max(t.value for t in first.trials if t.value is not None)


def test_trials_are_child_runs_with_params_and_metrics(settings: Settings) -> None:
    result = run(settings, spec("runs", "quadratic", max_trials=2,
                                parameters={"x": {"type": "float", "min": 0.0, "max": 1.0}}))
    services = Services.open(settings)
    backend = LocalBackend(settings, services=services)
    try:
        parent = backend.get_run(result.study.parent_run_id or "")
        assert parent.info.run_name == "runs" and parent.info.status == "FINISHED"
        for trial in result.trials:
            run_ = backend.get_run(trial.run_id or "")
            tags = run_.data.tags
            assert tags["mlflow.parentRunId"] == parent.info.run_id
            assert tags["capstan.trial.state"] == "COMPLETE"
            assert dict(run_.data.params) == {"x": repr(trial.params["x"])}
            assert {m.key: m.value for m in run_.data.metrics}["score"] == pytest.approx(trial.value)
            assert trial.workload == f"study/runs/trial-{trial.number}"
    finally:
        backend.close()
        services.close()


@pytest.mark.parametrize("early", [{"kind": "median", "startup_trials": 2},
                                   {"kind": "asha", "min_resource": 1, "reduction_factor": 2}])
def test_early_stopping_prunes_bad_trials_and_records_them_pruned(settings: Settings, tmp_path: Path,
                                                                   early: dict[str, object]) -> None:
    with traced(tmp_path / "trace.txt") as trace:
        result = run(settings, spec(f"prune-{early['kind']}", "curve", max_trials=10, seed=1, early_stopping=early))
    pruned = [t for t in result.trials if t.state == "PRUNED"]
    assert pruned, [(t.number, t.state, t.params) for t in result.trials]
    assert result.state == "Succeeded" and result.count("FAILED") == 0
    stopped = {line.split()[1] for line in trace.read_text().splitlines() if line.startswith("pruned")}
    for trial in pruned:
        assert len(trial.intermediate) < 6  # it stopped when told
        assert repr(trial.params["x"]) in stopped
        complete = [t.value for t in result.trials if t.state == "COMPLETE" and t.number < trial.number]
        assert complete and trial.params["x"] * 6 < max(v for v in complete if v is not None)
    services = Services.open(settings)
    backend = LocalBackend(settings, services=services)
    try:
        run_ = backend.get_run(pruned[0].run_id or "")
        assert run_.info.status == "FINISHED"
        assert run_.data.tags["capstan.trial.state"] == "PRUNED"
    finally:
        backend.close()
        services.close()


def test_failed_trials_stop_the_study_past_max_failed_trials(settings: Settings) -> None:
    result = run(settings, spec("broken", "always_fails", max_trials=10, max_failed_trials=2))
    assert result.state == "Failed"
    assert result.study.reason == "TooManyFailedTrials"
    assert result.study.message == "3 trials failed, more than max_failed_trials=2"
    assert [t.state for t in result.trials] == ["FAILED"] * 3
    assert all(t.message.startswith("RuntimeError: broken trial with x=") for t in result.trials)


def test_the_grid_ends_the_study_when_every_point_was_tried(settings: Settings) -> None:
    result = run(settings, spec("grid", "quadratic", algorithm="grid", max_trials=50, parallel_trials=2,
                                parameters={"x": {"type": "int", "min": 1, "max": 3},
                                            "kind": {"values": ["a", "b"]}}))
    assert result.study.reason == "GridDone" and result.state == "Succeeded"
    points = sorted((t.params["x"], t.params["kind"]) for t in result.trials)
    assert points == [(x, k) for x in (1, 2, 3) for k in ("a", "b")]


def _apply(settings: Settings, cpus: float) -> None:
    services = Services.open(settings)
    try:
        admission = services.admission.get()
        assert isinstance(admission, QueueAdmission)
        with admission.session() as mgr:
            mgr.apply_config(local_queue_yaml(cpus=cpus, memory="1Pi", gpus=0, name="default"))
    finally:
        services.close()


@pytest.mark.parametrize(("parallel", "quota", "expected"), [(2, 8, 2), (3, 2, 2)])
def test_parallel_trials_never_exceed_parallel_trials_nor_the_quota(settings: Settings, tmp_path: Path,
                                                                    parallel: int, quota: int, expected: int) -> None:
    _apply(settings, quota)
    with traced(tmp_path / "trace.txt") as trace:
        result = run(settings, spec("parallel", "timed", max_trials=6, parallel_trials=parallel))
    assert result.count("COMPLETE") == 6
    spans = intervals(trace)
    assert len(spans) == 6
    assert max_overlap(spans) == expected
    ordered = sorted((t.started_ms, t.ended_ms or 0) for t in result.trials)
    assert max_overlap([(s / 1000, e / 1000) for s, e in ordered]) <= expected


JOB_SCRIPT = """
import argparse, os, capstan
parser = argparse.ArgumentParser()
parser.add_argument("--x", type=float)
args = parser.parse_args()
for step in range(3):
    capstan.report(args.x * step, step)
if os.environ["RANK"] == "0":
    capstan.log_metric("score", args.x * 10)
print("rank", os.environ["RANK"], "of", os.environ["WORLD_SIZE"])
"""


def test_a_training_job_trial_runs_as_a_gang_and_its_run_is_the_trial_run(settings: Settings,
                                                                           tmp_path: Path) -> None:
    from capstan.tuning.spec import parse_study_spec

    (tmp_path / "job.py").write_text(JOB_SCRIPT)
    study = parse_study_spec({"name": "jobs", "objective": {"metric": "score"}, "algorithm": "random", "seed": 1,
                              "parameters": {"x": {"type": "float", "min": 0.0, "max": 1.0}}, "max_trials": 2,
                              "parallel_trials": 2, "working_dir": str(tmp_path),
                              "trial": {"job": {"entry": "job.py", "workers": 2, "cpu": 0.5,
                                                "args": ["--x", "${params.x}"]}}})
    result = run(settings, study)
    assert result.count("COMPLETE") == 2
    services = Services.open(settings)
    backend = LocalBackend(settings, services=services)
    try:
        for trial in result.trials:
            assert trial.value == pytest.approx(trial.params["x"] * 10)
            assert trial.intermediate == ((0, 0.0), (1, pytest.approx(trial.params["x"])),
                                          (2, pytest.approx(trial.params["x"] * 2)))
            job = services.jobs.get((trial.workload or "").removeprefix("job/"))
            assert job is not None and job.state == "Succeeded" and job.spec.workers == 2
            assert job.run_id == trial.run_id
            run_ = backend.get_run(trial.run_id or "")
            assert run_.data.tags["mlflow.parentRunId"] == result.study.parent_run_id
    finally:
        backend.close()
        services.close()


SLOW_REPORTS = """
import argparse, time, capstan
parser = argparse.ArgumentParser()
parser.add_argument("--x", type=float)
args = parser.parse_args()
capstan.report(args.x, 0)
time.sleep(2.5)  # past the controller's flush interval: the next report writes the first two points to the run
for step in (1, 2):
    capstan.report(args.x * (step + 1), step)
"""


def test_a_training_job_trials_value_is_its_last_report_when_it_logs_none(settings: Settings,
                                                                          tmp_path: Path) -> None:
    # The run holds only the points the controller flushed (steps 0 and 1) when the trial ends: they are the
    # controller's own copies of the reports, not a value the trial logged, so the last report (step 2) counts.
    from capstan.tuning.spec import parse_study_spec

    (tmp_path / "job.py").write_text(SLOW_REPORTS)
    study = parse_study_spec({"name": "slow", "objective": {"metric": "score"}, "algorithm": "random", "seed": 1,
                              "parameters": {"x": {"type": "float", "min": 0.1, "max": 1.0}}, "max_trials": 1,
                              "working_dir": str(tmp_path),
                              "trial": {"job": {"entry": "job.py", "workers": 1, "cpu": 0.5,
                                                "args": ["--x", "${params.x}"]}}})
    result = run(settings, study)
    (trial,) = result.trials
    assert trial.state == "COMPLETE" and trial.value == pytest.approx(trial.params["x"] * 3)


def test_a_trial_the_queue_can_never_admit_is_refused_before_anything_starts(settings: Settings,
                                                                            tmp_path: Path) -> None:
    from capstan.errors import InvalidParameterValue
    from capstan.tuning.spec import parse_study_spec

    _apply(settings, 2)
    (tmp_path / "job.py").write_text(JOB_SCRIPT)
    base = {"name": "never", "objective": {"metric": "score"}, "working_dir": str(tmp_path),
            "parameters": {"x": {"type": "float", "min": 0.0, "max": 1.0}}}
    gang = parse_study_spec(base | {"trial": {"job": {"entry": "job.py", "workers": 4, "cpu": 1}}})
    with pytest.raises(InvalidParameterValue, match=r"^study\.trial\.job\.workers: the gang of 4 worker\(s\) can "
                                                    r"never be admitted"):
        run(settings, gang)
    big = spec("never", "quadratic", resources={"cpu": 3})
    with pytest.raises(InvalidParameterValue, match=r"^study\.resources: the queue can never admit a trial: "
                                                    r"requests 3 CPU"):
        run(settings, big)
    services = Services.open(settings)
    try:
        assert services.studies.list() == []
    finally:
        services.close()

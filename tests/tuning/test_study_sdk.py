"""``capstan.Study`` from Python: typed parameter helpers, a module function or a lambda as the trial, other
samplers and pruners, and `capstan.report` outside a study."""

from __future__ import annotations

from pathlib import Path

import pytest
import tuning_helpers

import capstan
from capstan import tune
from capstan.errors import InvalidParameterValue
from capstan.settings import Settings


def test_a_study_of_a_function_with_typed_parameters(tmp_path: Path) -> None:
    study = capstan.Study("sdk", objective="score", parameters={
        "x": tune.Float(-1.0, 4.0), "kind": tune.Categorical(["a", "b"]),
        "unused": tune.Int(1, 8, log=True, when={"kind": "b"})},
        trial=tuning_helpers.quadratic, algorithm="cmaes", early_stopping="hyperband", max_trials=6,
        parallel_trials=2, seed=3, working_dir=Path(tuning_helpers.__file__).parent)
    assert study.spec.trial.to_dict() == {"function": "tuning_helpers:quadratic"}
    lines: list[str] = []
    result = study.run(settings=Settings.for_home(tmp_path / "home"), progress=lines.append)
    assert result.state == "Succeeded" and result.count("COMPLETE") == 6
    assert len(lines) == 6 and all(line.startswith("trial ") and "best #" in line for line in lines)
    for trial in result.trials:
        assert ("unused" in trial.params) == (trial.params["kind"] == "b")


def test_a_lambda_runs_in_forked_workers(tmp_path: Path) -> None:
    offset = 10.0
    study = capstan.Study("lam", objective="loss", goal="minimize", parameters={"x": tune.Float(0.0, 1.0)},
                          trial=lambda p: p["x"] + offset, algorithm="random", max_trials=3, seed=1)
    result = study.run(settings=Settings.for_home(tmp_path / "home"), progress=False)
    assert result.count("COMPLETE") == 3
    best = result.best_trial
    assert best is not None and best.value == min(t.value for t in result.trials if t.value is not None)
    assert best.value == pytest.approx(best.params["x"] + 10.0)


def test_bad_input_fails_at_construction() -> None:
    with pytest.raises(InvalidParameterValue, match=r"^study\.parameters\.x\.min: 2 is greater than max 1"):
        capstan.Study("bad", objective="score", parameters={"x": tune.Float(2, 1)}, trial=tuning_helpers.quadratic)
    with pytest.raises(InvalidParameterValue, match=r"^study\.trial: expected a function"):
        capstan.Study("bad", objective="score", parameters={"x": tune.Float(0, 1)}, trial=42)


def test_report_outside_a_study_does_nothing() -> None:
    capstan.report(0.5, step=1)
    assert capstan.should_prune() is False
    assert tuning_helpers.curve({"x": 0.5}) == 3.0

"""The study spec: what it accepts, what it refuses (one message naming the field), and what it writes back."""

from __future__ import annotations

from typing import Any

import pytest

from capstan.errors import InvalidParameterValue
from capstan.tuning.spec import (
    FunctionTrial,
    JobTrial,
    ScriptTrial,
    grid_space,
    parse_study_spec,
    substitute,
    substitute_env,
)
from capstan.tuning.tune import Categorical, Float, Int


def study(**fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"name": "s", "objective": {"metric": "accuracy"},
                            "parameters": {"lr": {"type": "float", "min": 1e-4, "max": 0.1, "log": True}},
                            "trial": {"script": "train.py", "args": ["--lr", "${params.lr}"]}}
    data.update(fields)
    return data


def test_a_full_spec_parses_and_round_trips() -> None:
    data = study(parameters={"lr": Float(1e-4, 0.1, log=True).to_dict(), "layers": Int(1, 4).to_dict(),
                             "opt": Categorical(["adam", "sgd"]).to_dict(),
                             "momentum": Float(0.5, 0.99, when={"opt": "sgd"}).to_dict()},
                 objective={"metric": "accuracy", "goal": "maximize", "additional_metrics": ["loss"]},
                 algorithm={"name": "tpe", "startup_trials": 5, "multivariate": True},
                 early_stopping={"kind": "hyperband", "min_resource": 1, "max_resource": 27, "reduction_factor": 3},
                 max_trials=30, parallel_trials=3, max_failed_trials=2, seed=11,
                 resources={"cpu": "500m", "memory": "1Gi"}, queue="team-a", priority="low")
    spec = parse_study_spec(data)
    assert [p.name for p in spec.parameters] == ["lr", "layers", "opt", "momentum"]
    assert spec.parameter("momentum").when == (("opt", ("sgd",)),)
    assert spec.resources.cpu == 0.5 and spec.resources.memory == 2**30
    assert spec.early_stopping.max_resource == 27 and spec.algorithm.multivariate
    assert parse_study_spec(spec.to_dict()) == spec


def test_yaml_style_inputs_are_read() -> None:
    # PyYAML reads 1e-4 as text; a list of parameters with names, as Katib writes them; a top-level `study:` key
    data = {"study": study(parameters=[{"name": "lr", "type": "float", "min": "1e-4", "max": "1e-1", "log": True},
                                       {"name": "units", "values": [32, 64]}])}
    spec = parse_study_spec(data)
    assert spec.parameter("lr").min == pytest.approx(1e-4) and spec.parameter("units").type == "categorical"


def test_a_conditional_parameter_is_sampled_after_the_one_it_depends_on() -> None:
    spec = parse_study_spec(study(parameters={"momentum": {"type": "float", "min": 0, "max": 1,
                                                           "when": {"opt": ["sgd"]}},
                                              "opt": {"values": ["adam", "sgd"]}},
                                  trial={"script": "t.py", "args": ["--m=${params.momentum}"]}))
    assert [p.name for p in spec.parameters] == ["opt", "momentum"]
    assert spec.parameter("momentum").active({"opt": "sgd"}) and not spec.parameter("momentum").active({"opt": "adam"})


@pytest.mark.parametrize(("fields", "message"), [
    ({"parameters": {"lr": {"type": "floot", "min": 0, "max": 1}}},
     r"^study\.parameters\.lr\.type: unknown parameter type 'floot' \(types: int, float, categorical\)$"),
    ({"parameters": {"lr": {"type": "float", "min": 1, "max": 0.1}}},
     r"^study\.parameters\.lr\.min: 1 is greater than max 0\.1: the range is inverted$"),
    ({"parameters": {"n": {"type": "int", "min": 3, "max": 3}}}, r"^study\.parameters\.n\.max: equals min \(3\)"),
    ({"parameters": {"opt": {"type": "categorical", "values": []}}}, r"^study\.parameters\.opt\.values: is empty"),
    ({"parameters": {}}, r"^study\.parameters: the search space is empty"),
    ({"parameters": None}, r"^study\.parameters: the search space is empty"),
    ({"parameters": {"lr": {"type": "float", "min": 0, "max": 1, "log": True}}},
     r"^study\.parameters\.lr\.min: a log-scale range must be above 0"),
    ({"parameters": {"lr": {"type": "float", "max": 1}}}, r"^study\.parameters\.lr\.min: is required"),
    ({"parameters": {"n": {"type": "int", "min": 0.5, "max": 3}}}, r"^study\.parameters\.n\.min: expected a whole"),
    ({"parameters": {"m": {"type": "float", "min": 0, "max": 1, "when": {"opt": ["sgd"]}}}},
     r"^study\.parameters\.m\.when\.opt: 'opt' is not a parameter of the study$"),
    ({"trial": {"script": "train.py", "args": ["--x", "${params.x}"]}},
     r"^study\.trial\.args\[1\]: \$\{params\.x\} is not a parameter of the study \(parameters: lr\)$"),
    ({"trial": {"script": "t.py", "env": {"X": "${params.nope}"}}}, r"^study\.trial\.env\.X: \$\{params\.nope\}"),
    ({"trial": {"job": {"entry": "train.py", "args": ["${params.y}"]}}}, r"^study\.trial\.job\.args\[0\]: "),
    ({"trial": {"job": {"entry": "train.py", "workers": 0}}}, r"^study\.trial\.job\.workers: must be between"),
    ({"trial": {"function": "not a ref"}}, r"^study\.trial\.function: 'not a ref' is not module:function"),
    ({"trial": {"script": "a.py", "function": "m:f"}}, r"^study\.trial: name exactly one of"),
    ({"trial": None}, r"^study\.trial: is required"),
    ({"objective": None}, r"^study\.objective: is required"),
    ({"objective": {"metric": "acc", "goal": "up"}}, r"^study\.objective\.goal: must be 'maximize' or 'minimize'"),
    ({"algorithm": "bayes"}, r"^study\.algorithm: unknown algorithm 'bayes' \(algorithms: random, grid, tpe, cmaes\)$"),
    ({"algorithm": {"name": "random", "startup_trials": 3}}, r"^study\.algorithm\.startup_trials: unknown field"),
    ({"early_stopping": "patience"}, r"^study\.early_stopping: unknown early stopping 'patience'"),
    ({"early_stopping": {"kind": "median", "min_resource": 2}}, r"^study\.early_stopping\.min_resource: unknown"),
    ({"early_stopping": {"kind": "hyperband", "min_resource": 9, "max_resource": 3}},
     r"^study\.early_stopping\.min_resource: 9 must be below max_resource 3$"),
    ({"max_trials": 0}, r"^study\.max_trials: must be between 1 and"),
    ({"parallel_trials": "2"}, r"^study\.parallel_trials: expected a whole number"),
    ({"name": "Bad_Name"}, r"^study\.name: 'Bad_Name' must be"),
    ({"trials": 3}, r"^study\.trials: unknown field"),
    ({"resources": {"cpu": "-1"}}, r"^study\.resources\.cpu: quantity '-1' must not be negative$"),
    ({"algorithm": "grid"}, r"^study\.parameters\.lr\.step: the grid algorithm needs a step"),
    ({"algorithm": "grid", "parameters": {"o": {"values": ["a", "b"]},
                                          "m": {"type": "int", "min": 1, "max": 2, "when": {"o": "a"}}}},
     r"^study\.parameters\.m\.when: the grid algorithm takes no conditional parameters"),
])
def test_bad_input_names_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidParameterValue, match=message) as caught:
        parse_study_spec(study(**fields))
    assert "\n" not in caught.value.message


def test_trial_templates() -> None:
    assert isinstance(parse_study_spec(study(trial={"function": "pkg.mod:objective"})).trial, FunctionTrial)
    assert isinstance(parse_study_spec(study()).trial, ScriptTrial)
    job = parse_study_spec(study(trial={"job": {"entry": "train.py", "workers": 2,
                                                "args": ["--lr=${params.lr}"]}})).trial
    assert isinstance(job, JobTrial) and job.job.workers == 2 and job.job.name == "s"


def test_placeholders_are_replaced_and_inactive_ones_dropped() -> None:
    args = ["--lr", "${params.lr}", "--momentum=${params.m}", "--tag=${params.opt}-x"]
    assert substitute(args, {"lr": 0.1, "opt": "sgd"}) == ("--lr", "0.1", "--tag=sgd-x")
    assert substitute_env([("A", "${params.m}"), ("B", "${params.lr}")], {"lr": 2}) == {"B": "2"}


def test_grid_points_and_the_trial_limit() -> None:
    spec = parse_study_spec(study(algorithm="grid", max_trials=100, parameters={
        "lr": {"type": "float", "min": 0.1, "max": 0.3, "step": 0.1}, "n": {"type": "int", "min": 1, "max": 5,
                                                                           "step": 2},
        "opt": {"values": ["a", "b"]}}))
    space = grid_space(spec.parameters)
    assert space == {"lr": [0.1, 0.2, 0.3], "n": [1, 3, 5], "opt": ["a", "b"]}
    assert spec.trial_limit() == 18

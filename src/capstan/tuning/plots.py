"""PNG plots of a study (matplotlib, Agg backend, imported lazily): the optimisation history, the parameters'
importances (Optuna's fANOVA over the finished trials) and a parallel-coordinates view of the trials."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from capstan.errors import InvalidParameterValue, InvalidState
from capstan.tuning.ports import StudyResult, TrialRecord
from capstan.tuning.spec import Parameter

__all__ = ["PLOT_EXTRA", "require_matplotlib", "write_plots"]

PLOT_EXTRA = "plot"
"""The optional-dependency extra that installs matplotlib (``pip install 'capstan[plot]'``)."""


def require_matplotlib() -> None:
    """Fail with one line naming the extra to install when matplotlib is missing."""
    import importlib.util

    try:
        found = importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise InvalidState(f"--plot needs matplotlib, which is not installed: pip install 'capstan[{PLOT_EXTRA}]'")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _history(plt: Any, result: StudyResult, path: Path) -> None:
    objective = result.study.spec.objective
    fig, ax = plt.subplots(figsize=(9, 4.5))
    done = [t for t in result.trials if t.state == "COMPLETE" and t.value is not None]
    pruned = [t for t in result.trials if t.state == "PRUNED" and t.value is not None]
    ax.scatter([t.number for t in done], [t.value for t in done], s=18, label="complete", zorder=3)
    if pruned:
        ax.scatter([t.number for t in pruned], [t.value for t in pruned], s=18, marker="x", color="grey",
                   label="pruned (last value)", zorder=2)
    best: list[float] = []
    xs: list[int] = []
    better = max if objective.goal == "maximize" else min
    for t in sorted(done, key=lambda t: t.number):
        assert t.value is not None
        best.append(t.value if not best else better(best[-1], t.value))
        xs.append(t.number)
    if xs:
        ax.step(xs, best, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(objective.metric)
    ax.set_title(f"Study {result.study.name}: optimisation history ({objective.goal})")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def importances(result: StudyResult) -> dict[str, float]:
    """Each parameter's importance for the objective (fANOVA over the COMPLETE trials; empty with fewer than
    two, or when no parameter varies)."""
    from capstan.tuning import sampling

    spec = result.study.spec
    finished = [t for t in result.trials if t.finished]
    if sum(1 for t in finished if t.state == "COMPLETE") < 2:
        return {}
    import optuna

    study = sampling.rebuild(spec, finished)
    try:
        values = optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(
            seed=0))
    except (RuntimeError, ValueError):  # no parameter varies over the complete trials
        return {}
    return {str(k): float(v) for k, v in values.items()}


def _importances(plt: Any, result: StudyResult, path: Path) -> None:
    values = importances(result)
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.5 * len(values) + 1.5)))
    if values:
        names = list(values)[::-1]
        ax.barh(names, [values[n] for n in names], color="tab:blue")
        ax.set_xlabel("importance (fANOVA)")
    else:
        ax.text(0.5, 0.5, "not enough complete trials to measure importances", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title(f"Study {result.study.name}: parameter importances for {result.study.spec.objective.metric}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _axis(parameter: Parameter, trials: Sequence[TrialRecord]) -> tuple[list[float | None], list[str]]:
    """Each trial's position (0..1) on the parameter's axis (None when inactive), and the axis' tick labels."""
    name = parameter.name
    if parameter.type == "categorical":
        count = max(1, len(parameter.values) - 1)
        index = {v: i for i, v in enumerate(parameter.values)}
        return ([index[t.params[name]] / count if name in t.params and t.params[name] in index else None
                 for t in trials], [str(v) for v in parameter.values])
    assert parameter.min is not None and parameter.max is not None
    low, high = parameter.min, parameter.max
    scale = (lambda v: math.log(v)) if parameter.log else (lambda v: v)
    span = scale(high) - scale(low) or 1.0
    positions: list[float | None] = [(scale(float(t.params[name])) - scale(low)) / span if name in t.params else None
                                     for t in trials]
    return positions, [f"{low:g}", f"{high:g}"]


def _parallel(plt: Any, result: StudyResult, path: Path) -> None:
    spec = result.study.spec
    trials = [t for t in result.trials if t.state == "COMPLETE" and t.value is not None]
    axes = list(spec.parameters)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * (len(axes) + 1)), 4.5))
    if not trials:
        ax.text(0.5, 0.5, "no complete trials yet", ha="center", va="center")
        ax.set_axis_off()
    else:
        columns = [_axis(p, trials) for p in axes]
        values = [float(t.value) for t in trials if t.value is not None]
        low, high = min(values), max(values)
        cmap = plt.get_cmap("viridis")
        for i, trial in enumerate(trials):
            assert trial.value is not None
            norm = (trial.value - low) / (high - low) if high > low else 1.0
            xs = [j for j, col in enumerate(columns) if col[0][i] is not None] + [len(columns)]
            ys = [col[0][i] for col in columns if col[0][i] is not None] + [norm]
            shade = norm if spec.objective.goal == "maximize" else 1 - norm
            ax.plot(xs, ys, color=cmap(shade), alpha=0.7, linewidth=1)
        for j, (_positions, labels) in enumerate(columns):
            ax.axvline(j, color="black", linewidth=0.6)
            ax.text(j, -0.06, labels[0], ha="center", va="top", fontsize=7)
            ax.text(j, 1.04, labels[-1], ha="center", va="bottom", fontsize=7)
        ax.axvline(len(columns), color="black", linewidth=0.6)
        ax.text(len(columns), -0.06, f"{low:.4g}", ha="center", va="top", fontsize=7)
        ax.text(len(columns), 1.04, f"{high:.4g}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(columns) + 1), [p.name for p in axes] + [spec.objective.metric])
        ax.set_yticks([])
        ax.set_ylim(-0.15, 1.15)
    ax.set_title(f"Study {result.study.name}: parallel coordinates of complete trials")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(result: StudyResult, directory: Path | str) -> list[Path]:
    """Write ``optimization_history.png``, ``param_importances.png`` and ``parallel_coordinates.png``; returns their
    paths."""
    require_matplotlib()
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidParameterValue(f"--plot: cannot create {out}: {exc.strerror}") from None
    plt = _pyplot()
    paths = [out / "optimization_history.png", out / "param_importances.png", out / "parallel_coordinates.png"]
    _history(plt, result, paths[0])
    _importances(plt, result, paths[1])
    _parallel(plt, result, paths[2])
    return paths

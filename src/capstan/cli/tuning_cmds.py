"""CLI of hyperparameter studies: ``capstan tune -f study.yaml`` and ``capstan studies list|show``.

``tune`` runs the study in the foreground (its trials are queued workloads of the local queue) and prints one line
per finished trial with the best so far; running it again resumes the study (finished trials are not repeated).
Studies live in the local metadata store, where their controller ran.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from capstan.errors import CapstanError

if TYPE_CHECKING:
    from capstan.tuning.ports import StudyResult, TrialRecord


def _fail(exc: CapstanError) -> click.ClickException:
    return click.ClickException(exc.message)


def _json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000)) if ms else ""


def _value(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _describe(result: StudyResult) -> str:
    spec = result.study.spec
    early = spec.early_stopping.kind
    return (f"study {spec.name}: {spec.objective.goal} {spec.objective.metric}; {spec.algorithm.name}"
            f"{'' if early == 'none' else f', {early} early stopping'}; {spec.trial_limit()} trials, "
            f"{spec.parallel_trials} at a time")


@click.command("tune")
@click.option("-f", "--file", "path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Study YAML (objective, parameters, algorithm, early_stopping, limits, trial).")
@click.option("--json", "as_json", is_flag=True, help="Print the finished study as JSON instead of progress lines.")
def tune_cmd(path: Path, as_json: bool) -> None:
    """Run a hyperparameter study in the foreground; run it again to resume it."""
    from capstan.cli.context import cli_settings
    from capstan.tuning.sdk import load_study_file, run_study

    try:
        spec = load_study_file(path)
        settings = cli_settings()
        if not as_json:
            early = spec.early_stopping.kind
            click.echo(f"study {spec.name}: {spec.objective.goal} {spec.objective.metric} with {spec.algorithm.name}"
                       f"{'' if early == 'none' else f' and {early} early stopping'}; up to {spec.trial_limit()} "
                       f"trials, {spec.parallel_trials} at a time (project {settings.project})")
        result = run_study(spec, settings=settings, out=None if as_json else click.echo)
    except CapstanError as exc:
        raise _fail(exc) from None
    if as_json:
        _json(result.to_dict())
    else:
        _summary(result)
    if result.state == "Failed":
        raise click.ClickException(f"study {spec.name} failed: {result.study.message}")


def _summary(result: StudyResult) -> None:
    study, best = result.study, result.best_trial
    counts = ", ".join(f"{result.count(s)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAILED") if result.count(s))
    click.echo(f"{study.state}: {study.message or study.reason} ({counts or 'no trials'})")
    if best is not None:
        params = " ".join(f"{k}={v}" for k, v in best.params.items())
        click.echo(f"best: trial {best.number} {study.spec.objective.metric}={_value(best.value)}  {params}"
                   f"  (run {best.run_id})")
    click.echo(f"see: capstan studies show {study.name}")


@click.group("studies")
def studies_group() -> None:
    """Hyperparameter studies: list them, show one's trials and best trial, plot them."""


def _store() -> Any:
    from capstan.cli.context import cli_services

    return cli_services().studies


@studies_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000), help="At most this many.")
def list_cmd(as_json: bool, limit: int) -> None:
    """Studies of the current project (CAPSTAN_PROJECT), newest first."""
    from capstan.cli.context import cli_settings
    from capstan.cli.tables import TextTable, console
    from capstan.tuning.ports import StudyResult

    try:
        store = _store()
        studies = store.list(project=cli_settings().project, limit=limit)
        results = [StudyResult(s, tuple(store.trials(s.project, s.name))) for s in studies]
    except CapstanError as exc:
        raise _fail(exc) from None
    if as_json:
        _json([r.to_dict(trials=False) for r in results])
        return
    table = TextTable("NAME", "STATE", "OBJECTIVE", "ALGORITHM", "TRIALS", "BEST", "CREATED", ids=("NAME",),
                      right=("TRIALS", "BEST"))
    for r in results:
        spec, best = r.study.spec, r.best_trial
        table.add_row(r.study.name, r.study.state, f"{spec.objective.goal} {spec.objective.metric}",
                      spec.algorithm.name, f"{sum(1 for t in r.trials if t.finished)}/{spec.trial_limit()}",
                      _value(best.value) if best is not None else "", _when(r.study.created_ms))
    if not len(table):
        click.echo("no studies yet: run one with `capstan tune -f study.yaml`")
        return
    table.print(console())


@studies_group.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the study, its best trial and every trial).")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write optimization_history.png, param_importances.png and parallel_coordinates.png to DIR "
                   "(needs matplotlib: pip install 'capstan[plot]').")
def show_cmd(name: str, as_json: bool, plot_dir: Path | None) -> None:
    """A study's best trial and a table of its trials."""
    from capstan.cli.context import cli_settings
    from capstan.errors import ResourceDoesNotExist
    from capstan.tuning.ports import StudyResult

    try:
        if plot_dir is not None:
            from capstan.tuning.plots import require_matplotlib

            require_matplotlib()
        store = _store()
        project = cli_settings().project
        study = store.get(project, name)
        if study is None:
            raise ResourceDoesNotExist(f"study {name!r} does not exist in project {project!r} (see `capstan studies "
                                       "list`)")
        result = StudyResult(study, tuple(store.trials(project, name)))
        written: list[Path] = []
        if plot_dir is not None:
            from capstan.tuning.plots import write_plots

            written = write_plots(result, plot_dir)
    except CapstanError as exc:
        raise _fail(exc) from None
    if as_json:
        _json(result.to_dict() | ({"plots": [str(p) for p in written]} if written else {}))
        return
    _show(result)
    if written:
        click.echo(f"plots: {', '.join(str(p) for p in written)}")


def _show(result: StudyResult) -> None:
    from capstan.cli.tables import TextTable, console

    study = result.study
    click.echo(_describe(result))
    click.echo(f"state: {study.state}" + (f" ({study.reason}: {study.message})" if study.reason else "")
               + (f"; parent run {study.parent_run_id}" if study.parent_run_id else ""))
    best = result.best_trial
    if best is not None:
        click.echo(f"best: trial {best.number} {study.spec.objective.metric}={_value(best.value)} "
                   + " ".join(f"{k}={v}" for k, v in best.params.items()) + f" (run {best.run_id})")
    names = [p.name for p in study.spec.parameters]
    table = TextTable("#", "STATE", study.spec.objective.metric.upper(), *[n.upper() for n in names], "SECONDS",
                      "RUN ID", "NOTE", ids=("RUN ID",), right=("#", study.spec.objective.metric.upper(), "SECONDS"))
    for trial in result.trials:
        table.add_row(str(trial.number), trial.state, _value(trial.value),
                      *[_param(trial, n) for n in names],
                      f"{trial.duration_ms / 1000:.1f}" if trial.duration_ms is not None else "", trial.run_id or "",
                      trial.message[:60], style="bold green" if best is not None and trial.number == best.number
                      else None)
    table.print(console())


def _param(trial: TrialRecord, name: str) -> str:
    if name not in trial.params:
        return "-"
    value = trial.params[name]
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def register(cli: click.Group) -> None:
    """Add ``tune`` and ``studies`` to the ``capstan`` command group."""
    cli.add_command(tune_cmd)
    cli.add_command(studies_group)

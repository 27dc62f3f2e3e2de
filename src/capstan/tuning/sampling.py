"""The study spec in Optuna's terms: its sampler, its pruner, its distributions, and an in-memory Optuna study
rebuilt from the stored trials (so a resumed study goes on where it was). Optuna is imported here only.

Capstan keeps the study's state in its own tables; the Optuna study lives in memory for the length of one
controller (``InMemoryStorage``) and is rebuilt on resume with ``add_trial``: finished trials with their values,
intermediate values and the sampler's and pruner's notes (``system_attrs``), and a trial that was running when the
controller died is asked again with its parameters fixed (``enqueue_trial``) when it re-runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from capstan.tuning.ports import TrialRecord
from capstan.tuning.spec import Parameter, StudySpec, grid_space

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution

__all__ = ["distributions_of", "frozen_trial", "make_pruner", "make_sampler", "new_study", "rebuild", "rerun",
           "suggest"]


def _quiet() -> None:
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)  # Capstan prints its own one line per trial


def make_sampler(spec: StudySpec, *, resumed_after: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded with ``spec.seed``. A study resumed after ``resumed_after`` sampled trials gets
    the seed moved on by that many: a fresh random generator with the first seed would draw the first trials'
    parameters again (the grid keeps its seed: it fixes the order of the grid's points, which the trials follow by
    number)."""
    import optuna

    algorithm, seed = spec.algorithm, spec.seed
    if seed is not None and resumed_after and algorithm.name != "grid":
        seed = (seed + resumed_after) % 2**32
    if algorithm.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if algorithm.name == "grid":

        class _Grid(optuna.samplers.GridSampler):
            """Optuna's grid, without its ``study.stop()`` at the end of the grid (that works only inside
            ``study.optimize``; the controller stops at the grid's size itself)."""

            def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                            state: optuna.trial.TrialState, values: Sequence[float] | None) -> None:
                return None

        return _Grid(grid_space(spec.parameters), seed=seed)
    if algorithm.name == "cmaes":
        options: dict[str, Any] = {}
        if algorithm.startup_trials is not None:
            options["n_startup_trials"] = algorithm.startup_trials
        return optuna.samplers.CmaEsSampler(seed=seed, sigma0=algorithm.sigma0, warn_independent_sampling=False,
                                            independent_sampler=optuna.samplers.RandomSampler(seed=seed), **options)
    tpe: dict[str, Any] = {}
    if algorithm.startup_trials is not None:
        tpe["n_startup_trials"] = algorithm.startup_trials
    if algorithm.multivariate:
        tpe.update(multivariate=True, group=any(p.when for p in spec.parameters))
    return optuna.samplers.TPESampler(seed=seed, **tpe)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The spec's early stopping as an Optuna pruner (``NopPruner`` for ``none``)."""
    import optuna

    early = spec.early_stopping
    options: dict[str, Any]
    if early.kind == "median":
        options = {"n_startup_trials": early.startup_trials, "n_warmup_steps": early.warmup_steps,
                   "interval_steps": early.interval_steps}
        return optuna.pruners.MedianPruner(**{k: v for k, v in options.items() if v is not None})
    if early.kind == "asha":
        options = {"min_resource": early.min_resource, "reduction_factor": early.reduction_factor,
                   "min_early_stopping_rate": early.min_early_stopping_rate}
        return optuna.pruners.SuccessiveHalvingPruner(**{k: v for k, v in options.items() if v is not None})
    if early.kind == "hyperband":
        options = {"min_resource": early.min_resource, "max_resource": early.max_resource,
                   "reduction_factor": early.reduction_factor}
        return optuna.pruners.HyperbandPruner(**{k: v for k, v in options.items() if v is not None})
    return optuna.pruners.NopPruner()


def _distribution(p: Parameter) -> BaseDistribution:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if p.type == "categorical":
        return CategoricalDistribution(p.values)
    assert p.min is not None and p.max is not None
    if p.type == "int":
        return IntDistribution(int(p.min), int(p.max), log=p.log, step=int(p.step or 1))
    return FloatDistribution(p.min, p.max, log=p.log, step=p.step)


def distributions_of(spec: StudySpec) -> dict[str, BaseDistribution]:
    """Every parameter's Optuna distribution."""
    return {p.name: _distribution(p) for p in spec.parameters}


def suggest(trial: optuna.trial.Trial, spec: StudySpec) -> dict[str, Any]:
    """The trial's parameters, sampled in the spec's order; a conditional parameter only when it is active."""
    params: dict[str, Any] = {}
    for p in spec.parameters:
        if not p.active(params):
            continue
        if p.type == "categorical":
            params[p.name] = trial.suggest_categorical(p.name, p.values)
        elif p.type == "int":
            assert p.min is not None and p.max is not None
            params[p.name] = trial.suggest_int(p.name, int(p.min), int(p.max), step=int(p.step or 1), log=p.log)
        else:
            assert p.min is not None and p.max is not None
            params[p.name] = trial.suggest_float(p.name, p.min, p.max, step=p.step, log=p.log)
    return params


def new_study(spec: StudySpec, *, resumed_after: int = 0) -> optuna.Study:
    """An empty in-memory Optuna study with the spec's direction, sampler and pruner (see `make_sampler` for
    ``resumed_after``)."""
    import optuna

    _quiet()
    return optuna.create_study(storage=optuna.storages.InMemoryStorage(),
                               sampler=make_sampler(spec, resumed_after=resumed_after), pruner=make_pruner(spec),
                               direction=spec.objective.goal, study_name=spec.name)


def frozen_trial(trial: TrialRecord, dists: Mapping[str, BaseDistribution]) -> optuna.trial.FrozenTrial:
    """A finished stored trial as Optuna's record of it (a PRUNED one keeps its last reported value)."""
    from optuna.trial import TrialState, create_trial

    params = {k: v for k, v in trial.params.items() if k in dists}
    state = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED, "FAILED": TrialState.FAIL}.get(
        trial.state, TrialState.FAIL)
    value = trial.value if state in (TrialState.COMPLETE, TrialState.PRUNED) else None
    if state == TrialState.COMPLETE and value is None:
        state, value = TrialState.FAIL, None
    intermediate = dict(trial.intermediate)
    return create_trial(state=state, value=value, params=params, distributions={k: dists[k] for k in params},
                        system_attrs=dict(trial.system_attrs), intermediate_values=intermediate)


def rebuild(spec: StudySpec, trials: Sequence[TrialRecord]) -> optuna.Study:
    """An Optuna study holding the stored trials that have finished, in number order. A trial that was running when
    the controller died is not added: its re-run is enqueued with its parameters (`rerun`) and asked again."""
    sampled = sum(1 for t in trials if t.state != "WAITING")
    study = new_study(spec, resumed_after=sampled)
    dists = distributions_of(spec)
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.finished:
            study.add_trial(frozen_trial(trial, dists))
    return study


def rerun(study: optuna.Study, params: Mapping[str, Any]) -> optuna.trial.Trial:
    """A new Optuna trial with ``params`` fixed (a trial re-run after its controller died)."""
    study.enqueue_trial(dict(params), skip_if_exists=False)
    return study.ask()

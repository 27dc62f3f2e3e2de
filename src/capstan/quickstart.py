"""``capstan quickstart``: a first tour of tracking and the registry on a fresh machine, in a few seconds.

It prepares a bundled dataset (scikit-learn's wine data; no network), searches a small model's hyperparameters with
a study (`capstan.tuning`: 8 trials, 2 at a time under the local queue, TPE with median early stopping; every trial
a tracked child run with its params, metrics and artifacts), registers the best trial's model as
``models:/quickstart@champion`` and the runner-up's as ``@challenger``, loads the champion back to prove it works,
then deploys it behind ``capstan server``, rolls out the challenger as a 20 % canary and prints what each version
answered (`capstan.quickstart_serving`), and says where to look.

Stages are plain functions so later features can plug in front: `run_quickstart` takes a ``data_stage`` (any
callable returning `TrainingData`), e.g. a data-prep pipeline, instead of `wine_data`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from capstan.errors import InvalidState
from capstan.settings import Settings

if TYPE_CHECKING:
    from rich.console import Console

    from capstan.quickstart_serving import ServingDemo
    from capstan.tuning.ports import StudyResult
    from capstan.tuning.sdk import Study

EXPERIMENT = "quickstart"
MODEL_NAME = "quickstart"
ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"
TRIALS = 8
PARALLEL = 2
SEED = 7
EPOCHS = 15


@dataclass(frozen=True, slots=True)
class TrainingData:
    """What the training stage needs: a train/test split (numpy arrays, or pandas objects where a data stage
    returns them), a one-line description and the feature names (used to label per-feature artifacts)."""

    x_train: Any
    x_test: Any
    y_train: Any
    y_test: Any
    description: str
    feature_names: tuple[str, ...] = ()


class PreparedSplit(Protocol):
    """What a data stage returns: `TrainingData`, or anything with the same attributes (such as the pipelines
    package's ``PreparedData``)."""

    @property
    def x_train(self) -> Any: ...

    @property
    def x_test(self) -> Any: ...

    @property
    def y_train(self) -> Any: ...

    @property
    def y_test(self) -> Any: ...

    @property
    def description(self) -> str: ...


DataStage = Callable[[], PreparedSplit]
"""A zero-argument callable producing the train/test split, e.g.
``lambda: quickstart_prep(services.pipelines.get(), console=console)`` to run a data-preparation pipeline first."""


@dataclass(frozen=True, slots=True)
class QuickstartResult:
    """What the quickstart did."""

    experiment_id: str
    run_ids: tuple[str, ...]
    best_run_id: str
    model_name: str
    model_version: int
    test_accuracy: float
    reloaded_accuracy: float
    location: str
    extra: dict[str, Any] = field(default_factory=dict)
    challenger_version: int | None = None
    serving: ServingDemo | None = None
    study: StudyResult | None = None


def wine_data(seed: int = 7) -> TrainingData:
    """scikit-learn's bundled wine dataset (178 samples, 13 features, 3 classes), split 70/30 stratified, as numpy
    arrays (pandas is not needed)."""
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    wine = load_wine()
    x_train, x_test, y_train, y_test = train_test_split(wine.data, wine.target, test_size=0.3,
                                                        random_state=seed, stratify=wine.target)
    return TrainingData(x_train, x_test, y_train, y_test,
                        f"wine: {len(wine.data)} samples, {wine.data.shape[1]} features, 3 classes",
                        tuple(wine.feature_names))


def _feature_names(data: PreparedSplit, count: int) -> list[str]:
    """The stage's feature names: its ``feature_names``, a DataFrame's columns, else ``x0``, ``x1``, ..."""
    given = getattr(data, "feature_names", None)
    if not given:
        given = getattr(data.x_train, "columns", None)  # a pandas Index: no truth value, hence the two steps
    names = [str(n) for n in given] if given is not None else []
    return names if len(names) == count else [f"x{i}" for i in range(count)]


@dataclass(frozen=True, slots=True)
class SearchTrial:
    """One trial of the quickstart's study: trains a linear classifier (SGD, logistic loss) epoch by epoch with the
    trial's ``alpha``, ``penalty`` and ``l1_ratio``, reporting the held-out log loss after each epoch so the median
    pruner can stop a bad setting early; a trial that runs to the end logs its metrics, a confusion matrix, the
    features' weights and the model to its run. Called in the study's worker processes (the instance, with its
    data, is pickled to them)."""

    data: TrainingData
    epochs: int = EPOCHS

    def __call__(self, params: Mapping[str, Any]) -> dict[str, float] | None:
        import numpy as np
        from sklearn.linear_model import SGDClassifier
        from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        import capstan

        data = self.data
        capstan.log_params({"model": "sgd_logistic", "epochs": self.epochs, "scaler": "standard",
                            "dataset": data.description.split(":", 1)[0]})
        scaler = StandardScaler().fit(data.x_train)
        x_train, x_test = scaler.transform(data.x_train), scaler.transform(data.x_test)
        classes = np.unique(data.y_train)
        y_train, y_test = np.asarray(data.y_train), np.asarray(data.y_test)
        train_index, test_index = np.searchsorted(classes, y_train), np.searchsorted(classes, y_test)
        classifier = SGDClassifier(loss="log_loss", alpha=float(params["alpha"]), penalty=str(params["penalty"]),
                                   l1_ratio=float(params.get("l1_ratio", 0.15)), learning_rate="optimal",
                                   random_state=0)
        loss = float("inf")
        for epoch in range(self.epochs):
            classifier.partial_fit(x_train, y_train, classes=classes)
            # Plain numpy for the per-epoch curve: sklearn's metric helpers validate their input on every call.
            train_loss = _log_loss(classifier.predict_proba(x_train), train_index)
            loss = _log_loss(classifier.predict_proba(x_test), test_index)
            capstan.log_metrics({"train_loss": train_loss,
                                 "val_accuracy": float(np.mean(classifier.predict(x_test) == y_test))}, step=epoch)
            capstan.report(loss, epoch)
            if capstan.should_prune():
                return None  # recorded as PRUNED: no model, no final metrics
        model = Pipeline([("scale", scaler), ("classify", classifier)])
        predicted = model.predict(data.x_test)
        metrics = {"log_loss": loss,
                   "test_accuracy": float(accuracy_score(data.y_test, predicted)),
                   "f1_macro": float(f1_score(data.y_test, predicted, average="macro")),
                   "train_accuracy": float(accuracy_score(data.y_train, model.predict(data.x_train)))}
        capstan.log_dict({"labels": [int(v) for v in classes],
                          "matrix": confusion_matrix(data.y_test, predicted).tolist()}, "confusion_matrix.json")
        lines = ["feature,mean_abs_weight"] + [
            f"{name},{float(np.abs(classifier.coef_[:, i]).mean()):.6f}"
            for i, name in enumerate(_feature_names(data, classifier.coef_.shape[1]))]
        capstan.log_text("\n".join(lines) + "\n", "feature_weights.csv")
        capstan.log_model(model, "model", input_example=data.x_test[:5],
                          serialization_format="pickle")  # pickle: no skops import on a fresh machine
        return metrics


def _log_loss(proba: Any, index: Any) -> float:
    import numpy as np

    picked = np.clip(proba[np.arange(len(index)), index], 1e-15, 1.0)
    return float(-np.mean(np.log(picked)))


def _plain(data: PreparedSplit) -> TrainingData:
    """The stage's split as `TrainingData` (what the study's workers receive)."""
    count = data.x_train.shape[1] if hasattr(data.x_train, "shape") else len(data.x_train[0])
    return TrainingData(data.x_train, data.x_test, data.y_train, data.y_test, data.description,
                        tuple(_feature_names(data, count)))


def search_study(data: PreparedSplit, *, name: str, experiment: str, trials: int = TRIALS,
                 parallel: int = PARALLEL, epochs: int = EPOCHS) -> Study:
    """The quickstart's model search as a study: TPE over ``alpha`` (log scale), ``penalty`` and, for elasticnet,
    ``l1_ratio``; minimise the held-out log loss with median early stopping; ``trials`` trials, ``parallel`` at a
    time, each asking the local queue for half a CPU."""
    from capstan.tuning import tune
    from capstan.tuning.sdk import Study

    return Study(name, objective="log_loss", goal="minimize", metrics=["test_accuracy", "f1_macro"],
                 parameters={"alpha": tune.Float(1e-5, 1.0, log=True),
                             "penalty": tune.Categorical(["l2", "l1", "elasticnet"]),
                             "l1_ratio": tune.Float(0.05, 0.95, when={"penalty": ["elasticnet"]})},
                 trial=SearchTrial(_plain(data), epochs), algorithm={"name": "tpe", "startup_trials": 4},
                 early_stopping={"kind": "median", "startup_trials": 2, "warmup_steps": 4},
                 max_trials=trials, parallel_trials=parallel, seed=SEED, resources={"cpu": "500m"},
                 experiment=experiment)


def run_quickstart(settings: Settings | None = None, *, console: Console | None = None,
                   data_stage: DataStage | None = None, experiment: str = EXPERIMENT,
                   model_name: str = MODEL_NAME, trials: int = TRIALS, parallel: int = PARALLEL,
                   epochs: int = EPOCHS, serve: bool = True) -> QuickstartResult:
    """Run the quickstart and print what it did. ``settings`` (default: the environment's) become the
    process's SDK settings; ``data_stage`` supplies the training data (default `wine_data`). The model search is a
    study of ``trials`` trials, ``parallel`` at a time (`search_study`). With ``serve``, the champion is deployed
    behind a ``capstan server`` and the runner-up rolled out as a 20 % canary (`capstan.quickstart_serving`)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from capstan.sdk import fluent as sdk
    from capstan.sdk.client import Client

    out = console or Console(highlight=False)
    if console is None and not out.is_terminal:
        out = Console(highlight=False, width=1000)  # piped output: no 80-column wrapping
    active = sdk.configure(settings) if settings is not None else sdk.get_settings()
    client = Client()
    batch = uuid.uuid4().hex[:12]
    stage = data_stage or wine_data
    columns = (SpinnerColumn(), TextColumn("{task.description:<44}"), BarColumn(), TaskProgressColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=out, refresh_per_second=4) as progress:
        task = progress.add_task("preparing data", total=trials + 3 + (5 if serve else 0))
        data = stage()
        progress.advance(task)
        study = search_study(data, name=f"quickstart-{batch[:8]}", experiment=experiment, trials=trials,
                             parallel=parallel, epochs=epochs)
        progress.update(task, description=f"searching: {trials} trials, {parallel} at a time")

        def trial_done(line: str) -> None:
            progress.advance(task)
            progress.update(task, description=" ".join(line.split()[:4])[:44])

        searched = study.run(settings=active, progress=trial_done)
        ranked = sorted((t for t in searched.trials if t.state == "COMPLETE" and t.value is not None),
                        key=lambda t: (t.value, t.number))
        if not ranked:
            raise InvalidState(f"no trial of study {study.spec.name} completed: see `capstan studies show "
                               f"{study.spec.name}`")
        best = ranked[0]
        progress.update(task, description=f"registering the best model as {model_name}@{ALIAS}")
        version = client.register_model(_model_uri(client, best.run_id), model_name, tags={"quickstart.batch": batch})
        client.set_registered_model_alias(model_name, ALIAS, version.version)
        runner_up = None
        if len(ranked) > 1:
            runner_up = client.register_model(_model_uri(client, ranked[1].run_id), model_name,
                                              tags={"quickstart.batch": batch})
            client.set_registered_model_alias(model_name, CHALLENGER_ALIAS, runner_up.version)
        progress.advance(task)

        progress.update(task, description=f"loading models:/{model_name}@{ALIAS} back")
        from sklearn.metrics import accuracy_score

        reloaded = sdk.load_model(f"models:/{model_name}@{ALIAS}")
        reloaded_accuracy = float(accuracy_score(data.y_test, reloaded.predict(data.x_test)))
        progress.advance(task)
        demo = None
        if serve and runner_up is not None:
            from capstan.quickstart_serving import run_serving_demo

            def step(description: str) -> None:
                progress.advance(task)
                progress.update(task, description=description)

            demo = run_serving_demo(active, model_name, str(version.version), str(runner_up.version),
                                    data.x_test.tolist(), step=step)
            progress.advance(task)
        progress.update(task, description="done")

    location = active.url or str(active.home)
    result = QuickstartResult(experiment_id=_experiment_id(client, experiment),
                              run_ids=tuple(t.run_id for t in searched.trials if t.run_id),
                              best_run_id=best.run_id or "", model_name=model_name, model_version=version.version,
                              test_accuracy=float(best.metrics.get("test_accuracy", float("nan"))),
                              reloaded_accuracy=reloaded_accuracy, location=location,
                              challenger_version=runner_up.version if runner_up else None, serving=demo,
                              study=searched)
    _report(out, active, result, data, experiment)
    return result


def _model_uri(client: Any, run_id: str | None) -> str:
    """``models:/<model id>`` of the model a trial's run logged."""
    outputs = client.get_run(run_id).outputs if run_id else ()
    if not outputs:
        raise InvalidState(f"trial run {run_id} logged no model")
    return f"models:/{outputs[-1].model_id}"


def _experiment_id(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return str(found.experiment_id) if found is not None else ""


def _report(out: Console, settings: Settings, result: QuickstartResult, data: PreparedSplit,
            experiment: str) -> None:
    from rich.table import Table

    assert result.study is not None
    searched = result.study
    spec = searched.study.spec
    narrow = out.width < 110  # an 80-column terminal: no run ids in the table (the best one is printed below)
    table = Table(title=f"Trials of study {spec.name!r}, runs in experiment {experiment!r} (id "
                        f"{result.experiment_id})", title_justify="left")
    headers = ("#", "state", "alpha", "penalty", "test acc" if narrow else "test accuracy", "f1 (macro)",
               "log loss")
    for header in headers if narrow else ("run id", *headers):
        table.add_column(header, no_wrap=True, justify="left" if header in ("run id", "state", "penalty") else "right")
    order = {"COMPLETE": 0, "PRUNED": 1, "FAILED": 2}
    for trial in sorted(searched.trials, key=lambda t: (order.get(t.state, 3), t.value or 0.0, t.number)):
        best = trial.run_id == result.best_run_id
        scores = [f"{trial.metrics[key]:.3f}" if key in trial.metrics and trial.state == "COMPLETE" else "-"
                  for key in ("test_accuracy", "f1_macro", "log_loss")]
        penalty = str(trial.params.get("penalty", ""))
        if "l1_ratio" in trial.params:
            penalty += f" {float(trial.params['l1_ratio']):.2f}"
        cells = [f"{trial.number}{' ★' if best else ''}", trial.state, f"{float(trial.params['alpha']):.2g}",
                 penalty, *scores]
        table.add_row(*(cells if narrow else [(trial.run_id or "")[:32], *cells]),
                      style="bold green" if best else None)
    pruned = searched.count("PRUNED")
    out.print()
    out.print(f"Searched {len(searched.trials)} trials of study {spec.name} on {data.description}: TPE over alpha, "
              f"penalty and l1_ratio, {spec.parallel_trials} at a time under the local queue; median early stopping "
              f"pruned {pruned}.")
    out.print(table)
    challenger = (f" and the runner-up's as @{CHALLENGER_ALIAS} (version {result.challenger_version})"
                  if result.challenger_version is not None else "")
    out.print(f"Registered the best trial's model (lowest log loss) as [bold]models:/{result.model_name}@{ALIAS}"
              f"[/bold] (version {result.model_version}){challenger}; loaded it back: test accuracy "
              f"{result.reloaded_accuracy:.3f} (logged {result.test_accuracy:.3f}).")
    if result.serving is not None:
        _report_serving(out, result)
    out.print()
    where = (f"server {settings.url}" if settings.url
             else f"CAPSTAN_HOME={settings.home} (metadata: {settings.db_url}, artifacts: {settings.artifacts})")
    out.print(f"Everything is stored in {where}.")
    out.print("Where to look next:")
    out.print(f"  capstan studies show {spec.name} --plot {spec.name}-plots")
    out.print(f"  capstan runs list --experiment {experiment}")
    out.print(f"  capstan runs show {result.best_run_id}")
    out.print(f"  capstan models show {result.model_name}")
    out.print(f"  python -c \"import capstan; print(capstan.load_model('models:/{result.model_name}@{ALIAS}'))\"")


def _report_serving(out: Console, result: QuickstartResult) -> None:
    from rich.table import Table

    from capstan.quickstart_serving import CANARY_PERCENT, DEPLOYMENT

    demo = result.serving
    assert demo is not None
    out.print()
    out.print(f"Deployed version {result.model_version} as deployment [bold]{DEPLOYMENT}[/bold] on {demo.server}, "
              f"then version {result.challenger_version} as a {CANARY_PERCENT}% canary:")
    table = Table(title_justify="left")
    for header in ("burst", "version", "role", "requests", "errors", "p50 ms", "p95 ms"):
        table.add_column(header, no_wrap=True, justify="left" if header in ("burst", "role") else "right")
    for burst, rows in (("first", demo.first), ("canary", demo.canary)):
        for row in rows:
            table.add_row(burst, row.version, row.role, str(row.requests), str(row.errors), f"{row.p50_ms:.1f}",
                          f"{row.p95_ms:.1f}")
    out.print(table)
    out.print(f"The deployment stays stored: `capstan server` brings it back; then `capstan deployments status "
              f"{DEPLOYMENT}`, `capstan deployments promote {DEPLOYMENT}` or `... rollback {DEPLOYMENT}`.")

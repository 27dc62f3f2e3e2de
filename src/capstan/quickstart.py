"""``capstan quickstart``: a first tour of tracking and the registry on a fresh machine, in a few seconds.

It prepares a bundled dataset (scikit-learn's wine data; no network), trains a small model with a few parameter
settings while tracking params, metrics and artifacts, registers the best run's model as
``models:/quickstart@champion``, loads it back to prove it works, then deploys it behind ``capstan server``, rolls
out the runner-up (``@challenger``) as a 20 % canary and prints what each version answered
(`capstan.quickstart_serving`), and says where to look.

Stages are plain functions so later features can plug in front: `run_quickstart` takes a ``data_stage`` (any
callable returning `TrainingData`), e.g. a data-prep pipeline, instead of `wine_data`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from capstan.settings import Settings

if TYPE_CHECKING:
    from rich.console import Console

    from capstan.quickstart_serving import ServingDemo

EXPERIMENT = "quickstart"
MODEL_NAME = "quickstart"
ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"
BATCH_TAG = "capstan.quickstart.batch"
# Regularisation strengths tried, from barely regularised to heavily regularised (underfits).
ALPHA_GRID: tuple[float, ...] = (0.0001, 0.01, 0.1, 1.0)
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


def _train_one(client_run: Any, data: PreparedSplit, alpha: float, epochs: int) -> tuple[Any, dict[str, float]]:
    """Train one setting epoch by epoch, logging a learning curve and final metrics and artifacts on
    ``client_run``; returns the fitted model and its metrics."""
    import numpy as np
    from sklearn.linear_model import SGDClassifier
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(data.x_train)
    x_train, x_test = scaler.transform(data.x_train), scaler.transform(data.x_test)
    classes = np.unique(data.y_train)
    y_train, y_test = np.asarray(data.y_train), np.asarray(data.y_test)
    train_index = np.searchsorted(classes, y_train)
    classifier = SGDClassifier(loss="log_loss", alpha=alpha, learning_rate="optimal", random_state=0)
    for epoch in range(epochs):
        classifier.partial_fit(x_train, y_train, classes=classes)
        # Plain numpy for the per-epoch curve: sklearn's metric helpers validate their input on every call.
        proba = np.clip(classifier.predict_proba(x_train), 1e-15, 1.0)
        train_loss = float(-np.mean(np.log(proba[np.arange(len(y_train)), train_index])))
        val_accuracy = float(np.mean(classifier.predict(x_test) == y_test))
        client_run.log_metrics({"train_loss": train_loss, "val_accuracy": val_accuracy}, step=epoch)
    model = Pipeline([("scale", scaler), ("classify", classifier)])
    predicted = model.predict(data.x_test)
    metrics = {
        "train_accuracy": float(accuracy_score(data.y_train, model.predict(data.x_train))),
        "test_accuracy": float(accuracy_score(data.y_test, predicted)),
        "f1_macro": float(f1_score(data.y_test, predicted, average="macro")),
        "log_loss": float(log_loss(data.y_test, model.predict_proba(data.x_test), labels=classes)),
    }
    client_run.log_metrics(metrics, step=epochs)
    client_run.log_dict({"labels": [int(v) for v in classes],
                         "matrix": confusion_matrix(data.y_test, predicted).tolist()}, "confusion_matrix.json")
    lines = ["feature,mean_abs_weight"] + [
        f"{name},{float(np.abs(classifier.coef_[:, i]).mean()):.6f}"
        for i, name in enumerate(_feature_names(data, classifier.coef_.shape[1]))]
    client_run.log_text("\n".join(lines) + "\n", "feature_weights.csv")
    return model, metrics


def run_quickstart(settings: Settings | None = None, *, console: Console | None = None,
                   data_stage: DataStage | None = None, experiment: str = EXPERIMENT,
                   model_name: str = MODEL_NAME, grid: Sequence[float] = ALPHA_GRID,
                   epochs: int = EPOCHS, serve: bool = True) -> QuickstartResult:
    """Run the quickstart and print what it did. ``settings`` (default: the environment's) become the
    process's SDK settings; ``data_stage`` supplies the training data (default `wine_data`). With ``serve``, the
    champion is deployed behind a ``capstan server`` and the runner-up rolled out as a 20 % canary
    (`capstan.quickstart_serving`)."""
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
        task = progress.add_task("preparing data", total=len(grid) + 3 + (5 if serve else 0))
        data = stage()
        progress.advance(task)
        run_ids: list[str] = []
        model_ids: dict[str, str] = {}
        for alpha in grid:
            progress.update(task, description=f"training a linear classifier, alpha={alpha:g}")
            with sdk.start_run(experiment=experiment, run_name=f"sgd-alpha{alpha:g}",
                               params={"model": "sgd_logistic", "alpha": alpha, "epochs": epochs,
                                       "scaler": "standard", "dataset": data.description.split(":", 1)[0]},
                               tags={BATCH_TAG: batch, "capstan.quickstart": "true"}) as run:
                model, _metrics = _train_one(run, data, alpha, epochs)
                info = run.log_model(model, "model", input_example=data.x_test[:5],
                                     serialization_format="pickle")  # pickle: no skops import on a fresh machine
                run_ids.append(run.run_id)
                model_ids[run.run_id] = info.model_id
            progress.advance(task)

        progress.update(task, description=f"registering the best model as {model_name}@{ALIAS}")
        ranked = client.search_runs(experiment_names=[experiment], filter_string=f"tags.`{BATCH_TAG}` = '{batch}'",
                                    order_by=["metrics.test_accuracy DESC", "metrics.log_loss ASC"])
        best = ranked[0]
        best_model_id = model_ids[best.info.run_id]
        version = client.register_model(f"models:/{best_model_id}", model_name,
                                        tags={"quickstart.batch": batch})
        client.set_registered_model_alias(model_name, ALIAS, version.version)
        runner_up = None
        if len(ranked) > 1:
            runner_up = client.register_model(f"models:/{model_ids[ranked[1].info.run_id]}", model_name,
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

    best_accuracy = next(m.value for m in best.data.metrics if m.key == "test_accuracy")
    location = active.url or str(active.home)
    result = QuickstartResult(experiment_id=best.info.experiment_id, run_ids=tuple(run_ids),
                              best_run_id=best.info.run_id, model_name=model_name, model_version=version.version,
                              test_accuracy=best_accuracy, reloaded_accuracy=reloaded_accuracy, location=location,
                              challenger_version=runner_up.version if runner_up else None, serving=demo)
    _report(out, active, result, ranked, data, experiment)
    return result


def _report(out: Console, settings: Settings, result: QuickstartResult, ranked: Sequence[Any],
            data: PreparedSplit, experiment: str) -> None:
    from rich.table import Table

    table = Table(title=f"Runs in experiment {experiment!r} (id {result.experiment_id})", title_justify="left")
    narrow = out.width < 110  # an 80-column terminal: short run ids (the full ones are printed below)
    for header in ("run id", "name", "alpha", "test acc" if narrow else "test accuracy", "f1 (macro)", "log loss"):
        table.add_column(header, no_wrap=True,
                         justify="left" if header in ("run id", "name") else "right")
    for run in ranked:
        metrics = {m.key: m.value for m in run.data.metrics}
        best = run.info.run_id == result.best_run_id
        scores = (f"{metrics.get(key, float('nan')):.3f}" for key in ("test_accuracy", "f1_macro", "log_loss"))
        run_id = run.info.run_id[:8] if narrow else run.info.run_id
        table.add_row(run_id, run.info.run_name + (" ★" if best else ""), run.data.params.get("alpha", ""),
                      *scores, style="bold green" if best else None)
    out.print()
    out.print(f"Trained {len(result.run_ids)} models on {data.description}.")
    out.print(table)
    out.print(f"Registered the best run's model as [bold]models:/{result.model_name}@{ALIAS}[/bold] "
              f"(version {result.model_version}); loaded it back: test accuracy {result.reloaded_accuracy:.3f} "
              f"(logged {result.test_accuracy:.3f}).")
    if result.serving is not None:
        _report_serving(out, result)
    out.print()
    where = (f"server {settings.url}" if settings.url
             else f"CAPSTAN_HOME={settings.home} (metadata: {settings.db_url}, artifacts: {settings.artifacts})")
    out.print(f"Everything is stored in {where}.")
    out.print("Where to look next:")
    out.print(f"  capstan runs list --experiment {experiment}")
    out.print(f"  capstan runs show {result.best_run_id}")
    out.print(f"  capstan runs compare {' '.join(result.run_ids[:3])}")
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

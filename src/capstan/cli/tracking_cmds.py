"""CLI for people: ``capstan experiments``, ``capstan runs``, ``capstan models`` and ``capstan quickstart``.

Commands go through `capstan.Client`, so they work on the local stores or, with ``CAPSTAN_URL``, on a server.
Tables go through `capstan.cli.tables.TextTable` (ids are never cut, columns fold before they would vanish);
``--json`` prints machine-readable output. Errors are one ``error: ...`` line.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import click

from capstan.cli.tables import TextTable
from capstan.cli.tables import console as _console

if TYPE_CHECKING:
    from capstan.sdk.client import Client
    from capstan.tracking.records import Run

SYSTEM_TAG_PREFIX = "mlflow."
MAX_METRIC_COLUMNS = 4
MAX_PARAM_COLUMNS = 3


# -- helpers --------------------------------------------------------------------------------------------
def _client() -> Client:
    from capstan.cli.context import cli_settings
    from capstan.sdk.client import Client

    return Client(settings=cli_settings())


def _table(*headers: str, ids: tuple[str, ...] = (), title: str | None = None) -> TextTable:
    return TextTable(*headers, ids=ids, title=title)


def _time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _duration(start: int | None, end: int | None) -> str:
    if start is None or end is None:
        return "-"
    seconds = max(end - start, 0) / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _number(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def _metrics(run: Run) -> dict[str, float]:
    return {m.key: m.value for m in run.data.metrics}


def _view_type(view: str) -> str:
    return {"active": "ACTIVE_ONLY", "deleted": "DELETED_ONLY", "all": "ALL"}[view]


VIEW_OPTION = click.option("--view", type=click.Choice(["active", "deleted", "all"]), default="active",
                           show_default=True, help="Which lifecycle stage to show.")
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def _tag_pairs(pairs: Sequence[str], option: str = "--tag") -> dict[str, str]:
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint=option)
        tags[key.strip()] = value
    return tags


# -- experiments ----------------------------------------------------------------------------------------
@click.group("experiments")
def experiments_group() -> None:
    """Experiments: named groups of runs."""


@experiments_group.command("list")
@VIEW_OPTION
@click.option("--filter", "filter_string", default="", help="MLflow filter, e.g. \"name LIKE 'fraud%'\".")
@JSON_OPTION
def experiments_list(view: str, filter_string: str, as_json: bool) -> None:
    """List the experiments of the current project."""
    from capstan.sdk import backends_wire as wire

    with _client() as client:
        experiments = client.search_experiments(filter_string, view_type=_view_type(view),
                                                order_by=["creation_time DESC"], max_results=100_000)
    if as_json:
        _echo_json({"experiments": [wire.experiment_to_json(e) for e in experiments]})
        return
    table = _table("ID", "NAME", "STAGE", "CREATED", "LAST UPDATE", "TAGS", ids=("ID",))
    for exp in experiments:
        tags = ", ".join(f"{k}={v}" for k, v in sorted(exp.tags.items()) if not k.startswith(SYSTEM_TAG_PREFIX))
        table.add_row(exp.experiment_id, exp.name, exp.lifecycle_stage, _time(exp.creation_time),
                      _time(exp.last_update_time), tags)
    console = _console()
    if not experiments:
        console.print("no experiments yet (try `capstan quickstart`)" if view == "active"
                      else "no experiments match")
        return
    table.print(console)


@experiments_group.command("create")
@click.argument("name")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Set a tag (repeatable).")
@JSON_OPTION
def experiments_create(name: str, tags: tuple[str, ...], as_json: bool) -> None:
    """Create an experiment in the current project (the server picks its artifact location)."""
    with _client() as client:
        experiment_id = client.create_experiment(name, tags=_tag_pairs(tags))
    if as_json:
        _echo_json({"experiment_id": experiment_id, "name": name})
        return
    click.echo(f"experiment {name!r} created with id {experiment_id}")


@experiments_group.command("rename")
@click.argument("experiment_id", metavar="ID")
@click.argument("new_name")
def experiments_rename(experiment_id: str, new_name: str) -> None:
    """Rename experiment ID to NEW_NAME."""
    with _client() as client:
        old = client.get_experiment(experiment_id).name
        client.rename_experiment(experiment_id, new_name)
    click.echo(f"experiment {experiment_id} renamed from {old!r} to {new_name!r}")


@experiments_group.command("delete")
@click.argument("experiment_id", metavar="ID")
def experiments_delete(experiment_id: str) -> None:
    """Soft-delete experiment ID and its runs; `capstan experiments restore ID` brings them back."""
    with _client() as client:
        name = client.get_experiment(experiment_id).name
        client.delete_experiment(experiment_id)
    click.echo(f"experiment {experiment_id} ({name!r}) and its runs deleted; undo with "
               f"`capstan experiments restore {experiment_id}`")


@experiments_group.command("restore")
@click.argument("experiment_id", metavar="ID")
def experiments_restore(experiment_id: str) -> None:
    """Restore deleted experiment ID and the runs deleted with it."""
    with _client() as client:
        name = client.get_experiment(experiment_id).name
        client.restore_experiment(experiment_id)
    click.echo(f"experiment {experiment_id} ({name!r}) and its runs restored")


# -- runs -----------------------------------------------------------------------------------------------
@click.group("runs")
def runs_group() -> None:
    """Runs: params, metrics, tags and artifacts of one training attempt."""


def _experiment_names(client: Client, ids: Iterable[str]) -> dict[str, str]:
    names: dict[str, str] = {}
    for experiment_id in set(ids):
        try:
            names[experiment_id] = client.get_experiment(experiment_id).name
        except Exception:  # noqa: BLE001  # a name is decoration; show the id when it cannot be read
            names[experiment_id] = experiment_id
    return names


def _top_keys(mappings: Sequence[Mapping[str, Any]], limit: int) -> list[str]:
    counts: dict[str, int] = {}
    for mapping in mappings:
        for key in mapping:
            counts[key] = counts.get(key, 0) + 1
    return sorted(counts, key=lambda k: (-counts[k], k))[:limit]


@runs_group.command("list")
@click.option("--experiment", "-e", "experiments", multiple=True, metavar="NAME",
              help="Only runs of this experiment (repeatable). Default: every experiment of the project that "
                   "--view covers (with --view deleted or all, deleted experiments too).")
@click.option("--filter", "filter_string", default="",
              help="MLflow filter, e.g. \"metrics.accuracy > 0.9 AND params.model = 'rf'\".")
@click.option("--order-by", "order_by", multiple=True, metavar="EXPR",
              help="e.g. \"metrics.accuracy DESC\" (repeatable). Default: newest first.")
@click.option("--max", "max_results", type=click.IntRange(1, 100_000), default=100, show_default=True,
              help="At most this many runs.")
@VIEW_OPTION
@JSON_OPTION
def runs_list(experiments: tuple[str, ...], filter_string: str, order_by: tuple[str, ...], max_results: int,
              view: str, as_json: bool) -> None:
    """List runs with their status and main metrics and params.

    Deleting an experiment deletes its runs: `--view deleted` lists them (and runs deleted one by one),
    `--view all` lists every run."""
    from capstan.sdk import backends_wire as wire

    with _client() as client:
        runs = client.search_runs(None if not experiments else [], filter_string,
                                  experiment_names=list(experiments) or None,
                                  order_by=list(order_by) or ["attributes.start_time DESC"],
                                  max_results=max_results, view_type=_view_type(view))
        names = _experiment_names(client, (r.info.experiment_id for r in runs))
    if as_json:
        _echo_json({"runs": [wire.run_to_json(r) for r in runs]})
        return
    console = _console()
    if not runs:
        console.print("no runs match")
        return
    metric_maps = [_metrics(r) for r in runs]
    metric_keys = _top_keys(metric_maps, MAX_METRIC_COLUMNS)
    param_keys = _top_keys([r.data.params for r in runs], MAX_PARAM_COLUMNS)
    stage = view != "active"
    table = _table("RUN ID", "NAME", "EXPERIMENT", "STATUS", *(("STAGE",) if stage else ()), "STARTED", "DURATION",
                   *(f"metrics.{k}" for k in metric_keys), *(f"params.{k}" for k in param_keys), ids=("RUN ID",))
    for run, metrics in zip(runs, metric_maps, strict=True):
        info = run.info
        table.add_row(info.run_id, info.run_name, names.get(info.experiment_id, info.experiment_id), info.status,
                      *((info.lifecycle_stage,) if stage else ()),
                      _time(info.start_time), _duration(info.start_time, info.end_time),
                      *(_number(metrics[k]) if k in metrics else "" for k in metric_keys),
                      *(run.data.params.get(k, "") for k in param_keys))
    table.print(console)


def _metric_history(client: Client, run: Run, key: str, as_json: bool) -> None:
    history = client.get_metric_history(run.info.run_id, key)
    if not history:
        known = ", ".join(sorted(m.key for m in run.data.metrics)) or "none"
        raise click.ClickException(f"run {run.info.run_id} has no metric {key!r} (its metrics: {known})")
    if as_json:
        from capstan.sdk import backends_wire as wire

        _echo_json({"run_id": run.info.run_id, "key": key, "metrics": [wire.metric_to_json(m) for m in history]})
        return
    table = TextTable("STEP", "TIMESTAMP", "VALUE", right=("STEP", "VALUE"),
                      title=f"Metric {key} of run {run.info.run_id} ({len(history)} points)")
    for metric in history:
        table.add_row(str(metric.step), _time(metric.timestamp), _number(metric.value))
    table.print(_console())


@runs_group.command("show")
@click.argument("run_id")
@click.option("--system-tags", is_flag=True, help="Also show mlflow.* system tags.")
@click.option("--metric", "metric_key", metavar="KEY", help="Show the full history of metric KEY instead.")
@JSON_OPTION
def runs_show(run_id: str, system_tags: bool, metric_key: str | None, as_json: bool) -> None:
    """Show one run: info, params, latest metrics, tags, artifacts and logged models, or with --metric KEY every
    point of one metric (step, time, value)."""
    from capstan.sdk import backends_wire as wire

    with _client() as client:
        run = client.get_run(run_id)
        if metric_key is not None:
            _metric_history(client, run, metric_key, as_json)
            return
        experiment = client.get_experiment(run.info.experiment_id)
        artifacts = client.list_artifacts(run_id)
        models = [client.get_logged_model(o.model_id) for o in run.outputs]
    if as_json:
        _echo_json({"run": wire.run_to_json(run), "experiment": wire.experiment_to_json(experiment),
                    "artifacts": [wire.artifact_info_to_json(a) for a in artifacts],
                    "logged_models": [wire.logged_model_to_json(m) for m in models]})
        return
    info = run.info
    console = _console()
    overview = _table("FIELD", "VALUE", title=f"Run {info.run_id}")
    for field, value in (("name", info.run_name), ("experiment", f"{experiment.name} (id {experiment.experiment_id})"),
                         ("status", info.status), ("lifecycle", info.lifecycle_stage), ("user", info.user_id),
                         ("started", _time(info.start_time)), ("ended", _time(info.end_time)),
                         ("duration", _duration(info.start_time, info.end_time)), ("source", info.source or "-"),
                         ("git commit", info.git_commit or "-"), ("artifact uri", info.artifact_uri)):
        overview.add_row(field, value)
    overview.print(console)
    if run.data.params:
        params = _table("PARAM", "VALUE", title="Params")
        for key, value in sorted(run.data.params.items()):
            params.add_row(key, value)
        params.print(console)
    if run.data.metrics:
        metrics = _table("METRIC", "LATEST", "STEP", "TIME", title="Metrics (history: --metric KEY)")
        for metric in sorted(run.data.metrics, key=lambda m: m.key):
            metrics.add_row(metric.key, _number(metric.value), str(metric.step), _time(metric.timestamp))
        metrics.print(console)
    tags = {k: v for k, v in run.data.tags.items() if system_tags or not k.startswith(SYSTEM_TAG_PREFIX)}
    if tags:
        tag_table = _table("TAG", "VALUE", title="Tags")
        for key, value in sorted(tags.items()):
            tag_table.add_row(key, value)
        tag_table.print(console)
    if artifacts:
        files = _table("PATH", "SIZE", title="Artifacts")
        for item in artifacts:
            files.add_row(item.path + ("/" if item.is_dir else ""), "" if item.size is None else f"{item.size:,}")
        files.print(console)
    if models:
        model_table = _table("MODEL ID", "NAME", "STATUS", "URI", ids=("MODEL ID", "URI"), title="Logged models")
        for model in models:
            model_table.add_row(model.model_id, model.name, model.status, f"models:/{model.model_id}")
        model_table.print(console)


@runs_group.command("rename")
@click.argument("run_id")
@click.argument("new_name")
def runs_rename(run_id: str, new_name: str) -> None:
    """Set the name of run RUN_ID to NEW_NAME."""
    with _client() as client:
        old = client.get_run(run_id).info.run_name
        client.rename_run(run_id, new_name)
    click.echo(f"run {run_id} renamed from {old!r} to {new_name!r}")


@runs_group.command("delete")
@click.argument("run_id")
def runs_delete(run_id: str) -> None:
    """Soft-delete run RUN_ID; `capstan runs restore RUN_ID` brings it back."""
    with _client() as client:
        client.delete_run(run_id)
    click.echo(f"run {run_id} deleted; undo with `capstan runs restore {run_id}`")


@runs_group.command("restore")
@click.argument("run_id")
def runs_restore(run_id: str) -> None:
    """Restore deleted run RUN_ID (restore its experiment first if that was deleted)."""
    with _client() as client:
        client.restore_run(run_id)
    click.echo(f"run {run_id} restored")


@runs_group.command("compare")
@click.argument("run_ids", nargs=-1, required=True)
@click.option("--diff-only", is_flag=True, help="Only show params and metrics that differ between the runs.")
@JSON_OPTION
def runs_compare(run_ids: tuple[str, ...], diff_only: bool, as_json: bool) -> None:
    """Compare params and metrics of runs side by side; differing values are marked with '*'."""
    if len(run_ids) < 2:
        raise click.UsageError("give at least two run ids to compare")
    with _client() as client:
        runs = [client.get_run(run_id) for run_id in dict.fromkeys(run_ids)]
    rows: list[tuple[str, str, list[str | None]]] = []
    param_keys = sorted({k for r in runs for k in r.data.params})
    metric_maps = [_metrics(r) for r in runs]
    metric_keys = sorted({k for m in metric_maps for k in m})
    for key in param_keys:
        rows.append(("params", key, [r.data.params.get(key) for r in runs]))
    for key in metric_keys:
        rows.append(("metrics", key, [_number(m[key]) if key in m else None for m in metric_maps]))
    differs = {f"{kind}.{key}": len(set(values)) > 1 for kind, key, values in rows}
    if as_json:
        out: dict[str, Any] = {"runs": [{"run_id": r.info.run_id, "run_name": r.info.run_name} for r in runs],
                               "params": {}, "metrics": {},
                               "differences": sorted(k for k, v in differs.items() if v)}
        for key in param_keys:
            out["params"][key] = {r.info.run_id: r.data.params.get(key) for r in runs}
        for key in metric_keys:
            out["metrics"][key] = {r.info.run_id: m.get(key) for r, m in zip(runs, metric_maps, strict=True)}
        _echo_json(out)
        return
    console = _console()
    shown = [(kind, key, values) for kind, key, values in rows if not diff_only or differs[f"{kind}.{key}"]]
    if not shown:
        console.print("the runs have identical params and metrics" if rows else "the runs have no params or metrics")
        return
    # Columns are headed [1], [2], ...; the legend gives each number's full run id, which a header would cut.
    legend = TextTable("#", "RUN ID", "NAME", ids=("RUN ID",),
                       title=f"Comparing {len(runs)} runs ('*' marks values that differ)")
    for number, run in enumerate(runs, start=1):
        legend.add_row(f"[{number}]", run.info.run_id, run.info.run_name)
    legend.print(console)
    table = _table("", "KEY", *(f"[{n}] {r.info.run_name}" for n, r in enumerate(runs, start=1)))
    for kind, key, values in shown:
        name = f"{kind}.{key}"
        table.add_row("*" if differs[name] else "", name, *(v if v is not None else "-" for v in values),
                      style="bold yellow" if differs[name] else None)
    table.print(console)


# -- models ---------------------------------------------------------------------------------------------
@click.group("models")
def models_group() -> None:
    """Registered models, their versions and aliases."""


@models_group.command("list")
@click.option("--filter", "filter_string", default="", help="MLflow filter, e.g. \"name LIKE 'fraud%'\".")
@JSON_OPTION
def models_list(filter_string: str, as_json: bool) -> None:
    """List registered models with their latest version and aliases."""
    from capstan.sdk import backends_wire as wire

    with _client() as client:
        models = client.search_registered_models(filter_string, max_results=100_000)
    if as_json:
        _echo_json({"registered_models": [wire.registered_model_to_json(m) for m in models]})
        return
    console = _console()
    if not models:
        console.print("no registered models yet (try `capstan quickstart`)")
        return
    table = _table("NAME", "LATEST", "ALIASES", "UPDATED", "DESCRIPTION", ids=("NAME",))
    for model in models:
        latest = max((v.version for v in model.latest_versions), default=None)
        aliases = ", ".join(f"{a}=v{v}" for a, v in sorted(model.aliases.items()))
        table.add_row(model.name, f"v{latest}" if latest else "-", aliases or "-",
                      _time(model.last_updated_timestamp), model.description)
    table.print(console)


@models_group.command("show")
@click.argument("name")
@JSON_OPTION
def models_show(name: str, as_json: bool) -> None:
    """Show a registered model: its versions, lineage (run -> version), aliases and tags."""
    from capstan.sdk import backends_wire as wire

    escaped = name.replace("'", "\\'")
    with _client() as client:
        model = client.get_registered_model(name)
        versions = sorted(client.search_model_versions(f"name = '{escaped}'"), key=lambda v: -v.version)
    if as_json:
        _echo_json({"registered_model": wire.registered_model_to_json(model),
                    "versions": [wire.model_version_to_json(v) for v in versions]})
        return
    console = _console()
    overview = _table("FIELD", "VALUE", title=f"Registered model {model.name}")
    overview.add_row("project", model.project)
    overview.add_row("created", _time(model.creation_timestamp))
    overview.add_row("updated", _time(model.last_updated_timestamp))
    overview.add_row("description", model.description or "-")
    overview.add_row("aliases", ", ".join(f"{a} -> v{v}" for a, v in sorted(model.aliases.items())) or "-")
    overview.add_row("tags", ", ".join(f"{k}={v}" for k, v in sorted(model.tags.items())) or "-")
    overview.print(console)
    if not versions:
        console.print("no versions yet")
        return
    table = _table("VERSION", "ALIASES", "CREATED", "RUN ID", "SOURCE", "STATUS", ids=("RUN ID",), title="Versions")
    for version in versions:
        table.add_row(str(version.version), ", ".join(version.aliases) or "-", _time(version.creation_timestamp),
                      version.run_id or "-", version.source, version.status)
    table.print(console)
    first_alias = next(iter(sorted(model.aliases)), None)
    uri = f"models:/{model.name}@{first_alias}" if first_alias else f"models:/{model.name}/{versions[0].version}"
    console.print(f"load it with: capstan.load_model({uri!r})", markup=False)  # wraps at the space, not in the call


@models_group.group("alias")
def models_alias_group() -> None:
    """Point an alias (models:/NAME@ALIAS) at a version, or remove it."""


def _version_number(value: str) -> int:
    text = value.strip()
    digits = text[1:] if text[:1] in ("v", "V") else text
    if not digits.isdigit() or int(digits) < 1:
        raise click.BadParameter(f"{value!r} is not a version number such as 3 or v3", param_hint="VERSION")
    return int(digits)


@models_alias_group.command("set")
@click.argument("name")
@click.argument("alias")
@click.argument("version")
def models_alias_set(name: str, alias: str, version: str) -> None:
    """Point ALIAS of registered model NAME at VERSION (3 or v3), moving it if it pointed elsewhere."""
    number = _version_number(version)
    with _client() as client:
        previous = client.get_registered_model(name).aliases.get(alias)
        client.set_registered_model_alias(name, alias, number)
    moved = f" (was v{previous})" if previous is not None and previous != number else ""
    click.echo(f"models:/{name}@{alias} -> v{number}{moved}")


@models_alias_group.command("delete")
@click.argument("name")
@click.argument("alias")
def models_alias_delete(name: str, alias: str) -> None:
    """Remove ALIAS from registered model NAME (the version itself stays)."""
    with _client() as client:
        client.delete_registered_model_alias(name, alias)
    click.echo(f"alias {alias!r} removed from {name!r}")


# -- quickstart -----------------------------------------------------------------------------------------
@click.command("quickstart")
@click.option("--experiment", default="quickstart", show_default=True, help="Experiment to create the runs in.")
@click.option("--model-name", default="quickstart", show_default=True, help="Registered model to create.")
@click.option("--serve/--no-serve", default=True, show_default=True,
              help="Deploy the champion behind a local capstan server and roll out a canary of the runner-up.")
def quickstart_command(experiment: str, model_name: str, serve: bool) -> None:
    """Prepare data with a pipeline (load, clean in 4 parallel chunks, split), search a small scikit-learn
    model's hyperparameters with a study (8 trials, 2 at a time under the local queue, with early stopping), track
    everything, register the best trial's model as models:/quickstart@champion and show where to look; then
    deploy it behind a capstan server it starts on a free loopback port, send a burst of requests, roll out the
    runner-up as a 20% canary and print each version's requests and latencies. Needs no network; a second run
    reuses the cached pipeline steps."""
    from capstan.cli.context import cli_services
    from capstan.pipelines.quickstart import quickstart_prep
    from capstan.quickstart import run_quickstart

    services, console = cli_services(), _console()
    run_quickstart(services.settings, console=console, experiment=experiment, model_name=model_name, serve=serve,
                   data_stage=lambda: quickstart_prep(services.pipelines.get(), console=console))


def register(cli: click.Group) -> None:
    """Add this module's commands to ``cli``."""
    cli.add_command(experiments_group)
    cli.add_command(runs_group)
    cli.add_command(models_group)
    cli.add_command(quickstart_command)

"""``capstan deployments ...``: managed deployments (apply, create, list, status, drift, promote, rollback, scale,
delete).

With ``CAPSTAN_URL`` every command goes through the server's ``/api/v1/deployments``. Without it the commands change
the local stores under ``CAPSTAN_HOME`` directly, and the ``capstan server`` running on that home (its controller
reads the store every half second) starts, scales and stops the replicas; when no server runs there, a note on
stderr says the change waits for one. Output is tables (``--json`` for machines); bad input is one ``error: ...``
line and exit status 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from capstan.cli.context import cli_settings

if TYPE_CHECKING:
    from capstan.serving.manage import DeploymentManager

API = "/api/v1/deployments"


# -- transport: the server's API, or the local stores ----------------------------------------------------------------
def _remote() -> bool:
    return bool(cli_settings().url)


def _http(method: str, path: str, **kwargs: Any) -> Any:
    """Call ``CAPSTAN_URL``'s deployments API with ``CAPSTAN_TOKEN`` and ``CAPSTAN_PROJECT``; errors become the
    typed errors the server named."""
    import httpx

    from capstan.errors import error_from_body

    settings = cli_settings()
    headers = {"X-Capstan-Project": settings.project}
    if settings.token:
        headers["Authorization"] = f"Bearer {settings.token}"
    try:
        resp = httpx.request(method, f"{settings.url}{API}{path}", headers=headers, timeout=60, **kwargs)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach {settings.url}: {exc}") from None
    if resp.status_code == 204:
        return None
    try:
        body = resp.json()
    except ValueError:
        raise click.ClickException(f"{settings.url} answered {resp.status_code}: {resp.text[:200]}") from None
    if resp.status_code >= 400:
        raise error_from_body(str(body.get("error_code", "")), str(body.get("message", resp.text[:200])),
                              resp.status_code)
    return body


def _manager() -> DeploymentManager:
    """The manager over the local stores; it reads a model's MLmodel to check the spec's options against the kind
    of model."""
    from capstan.cli.context import cli_services
    from capstan.sdk.backends_local import LocalBackend
    from capstan.sdk.model_kind import language_model_in

    services = cli_services()
    backend = LocalBackend(cli_settings(), services=services)
    return services.deployment_manager(lambda uri: language_model_in(backend, uri))


def _note_without_server() -> None:
    """Say on stderr when no ``capstan server`` runs on this metadata store (nothing would start the replicas)."""
    from capstan.cli.context import cli_services
    from capstan.server.leader import leadership_for

    settings = cli_settings()
    lock = leadership_for(settings, cli_services().engine)  # free: no server leads on this store
    if lock.try_acquire():
        lock.release()
        where = settings.home if settings.is_sqlite else "this metadata store"
        click.echo(f"note: no capstan server is running on {where}; the deployment is stored and its "
                   "replicas start when one runs (`capstan server`)", err=True)


def _apply(spec_doc: dict[str, Any], *, create: bool) -> dict[str, Any]:
    """Apply a spec document; the deployment's JSON and whether it was created."""
    from capstan.serving.manage import record_json
    from capstan.serving.spec import parse_spec

    spec = parse_spec(spec_doc)  # checked here too, so a bad spec fails before any network call
    if _remote():
        body = _http("POST", "", json=spec.to_dict(), params={"create": "true"} if create else None)
        return dict(body["deployment"])
    record, _created = _manager().apply(spec, cli_settings().project, create_only=create)
    _note_without_server()
    return record_json(record)


def _action(name: str, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """promote / rollback / scale, remotely or locally; the deployment's JSON."""
    from capstan.serving.manage import record_json

    if _remote():
        return dict(_http("POST", f"/{name}/{action}", json=body or {})["deployment"])
    manager, project = _manager(), cli_settings().project
    if action == "promote":
        record = manager.promote(project, name)
    elif action == "rollback":
        record = manager.rollback(project, name)
    else:
        record = manager.scale(project, name, int((body or {})["replicas"]))
    _note_without_server()
    return record_json(record)


def _status(name: str) -> dict[str, Any]:
    if _remote():
        return dict(_http("GET", f"/{name}"))
    from capstan.cli.context import cli_services

    status = _manager().status(cli_settings().project, name)
    status["quality"] = local_quality(cli_services().engine, cli_settings().project, name)
    return status


def _drift(name: str) -> dict[str, Any]:
    """The deployment's drift report: through the API, or gathered here from the replicas the local store lists."""
    if _remote():
        return dict(_http("GET", f"/{name}/drift"))
    return _manager().drift(cli_settings().project, name)


def local_quality(engine: Any, project: str, name: str) -> Any:
    """Per-version quality from the router's outcome store (`capstan.serving.abtest`), or None without one."""
    try:
        from capstan.serving.abtest import deployment_quality
        from capstan.store.deployment_outcomes_sql import SqlOutcomeStore
    except ImportError:  # the router's outcome store is not part of this installation
        return None
    return deployment_quality(SqlOutcomeStore(engine), project, name).to_dict()


def _list() -> list[dict[str, Any]]:
    if _remote():
        return list(_http("GET", "")["deployments"])
    from capstan.cli.context import cli_services
    from capstan.serving.manage import deployment_state, record_json

    project = cli_settings().project
    services = cli_services()
    out = []
    for record in _manager().list(project):
        replicas = list(services.deployments.replicas(project, record.name))
        out.append({**record_json(record), "state": deployment_state(record, replicas),
                    "ready_replicas": sum(r.state == "ready" for r in replicas), "replicas": len(replicas)})
    return out


# -- output ------------------------------------------------------------------------------------------------------------
def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _scaling(spec: dict[str, Any]) -> str:
    auto = spec.get("autoscaling")
    if auto is None:
        return str(spec.get("replicas", 1))
    metric, value = next((key, auto[key]) for key in ("target_concurrency", "target_rps", "target_waiting",
                                                      "target_tokens_per_second") if key in auto)
    target = f"{metric.removeprefix('target_').replace('_', ' ')} {value:g}"
    return f"{auto['min_replicas']}-{auto['max_replicas']} ({target})"


def _print_list(rows: list[dict[str, Any]]) -> None:
    from capstan.cli.tables import TextTable, console

    table = TextTable("NAME", "STATE", "READY", "PRIMARY", "CANARY", "SCALING", "REVISION", ids=("NAME",),
                      right=("READY", "REVISION"))
    for d in rows:
        versions = d["versions"]
        canary = d["spec"].get("canary")
        table.add_row(d["name"], d["state"], f"{d['ready_replicas']}/{d['desired_replicas']}", versions["primary"],
                      f"{versions['canary']} ({canary['traffic']:g}%)" if canary else "-", _scaling(d["spec"]),
                      str(d["revision"]))
    table.print(console())


def _print_status(status: dict[str, Any]) -> None:
    from capstan.cli.tables import TextTable, console

    out = console()
    d = status["deployment"]
    cold = status.get("last_cold_start_s")
    out.print(f"Deployment {d['name']} (project {d['project']}, revision {d['revision']}): {status['state']}; "
              f"replicas {_scaling(d['spec'])}, desired {d['desired_replicas']}"
              + (f"; last cold start {cold:.2f}s" if cold is not None else ""))
    traffic = TextTable("ROLE", "VERSION", "MODEL", "TRAFFIC", "READY", right=("TRAFFIC", "READY"), title="Traffic")
    for t in status["traffic"]:
        share = f"{t['weight']:g}%" + (" mirrored" if t["role"] == "shadow" else "")
        traffic.add_row(t["role"], t["version"], t["model_version"], share, str(t["ready_replicas"]))
    traffic.print(out)
    replicas = TextTable("REPLICA", "MODEL", "AS", "STATE", "URL", "RESTARTS", "PEAK MEMORY", "MESSAGE",
                         ids=("REPLICA",), right=("RESTARTS", "PEAK MEMORY"), title="Replicas")
    limit = d["spec"].get("resources", {}).get("memory")
    for r in status["replicas"]:
        replicas.add_row(r["id"], r["model_version"], r.get("serving_as") or "-", r["state"], r["url"] or "-",
                         str(r["restarts"]), _peak_text(r.get("peak_memory"), limit), r["message"])
    replicas.print(out)
    _print_quality(status.get("quality"))
    from datetime import UTC, datetime

    events = TextTable("TIME", "TYPE", "REASON", "MESSAGE", title="Recent events")
    for e in status["events"]:
        when = datetime.fromtimestamp(e["time"] / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        events.add_row(when, e["type"], e["reason"], e["message"])
    events.print(out)


def _peak_text(peak: int | None, limit: str | None) -> str:
    """``312Mi`` or ``312Mi of 2Gi (15%)`` against the per-replica memory request; ``-`` before it is measured."""
    from capstan.resources.quantity import MILLI, format_bytes, parse_quantity

    if peak is None:
        return "-"
    text = format_bytes(peak)
    if not limit:
        return text
    limit_bytes = parse_quantity(limit) // MILLI
    return f"{text} of {limit} ({100 * peak / limit_bytes:.0f}%)" if limit_bytes else text


def _fmt(value: Any, pattern: str = "{:.3g}") -> str:
    return "-" if value is None else pattern.format(value)


def _print_quality(quality: dict[str, Any] | None) -> None:
    """The per-version quality table of the router's outcomes, when there are any."""
    from capstan.cli.tables import TextTable, console

    if not quality or not quality.get("versions"):
        return
    table = TextTable("VERSION", "ROLE", "REQUESTS", "ERRORS", "P50 MS", "P99 MS", "LABELLED", "ACCURACY", "MAE",
                      right=("REQUESTS", "ERRORS", "P50 MS", "P99 MS", "LABELLED", "ACCURACY", "MAE"),
                      title="Quality per version")
    for v in quality["versions"]:
        table.add_row(v["version"], v["role"], str(v["requests"]), str(v["errors"]), _fmt(v["latency_p50_ms"]),
                      _fmt(v["latency_p99_ms"]), str(v["labelled"]), _fmt(v["accuracy"]), _fmt(v["mae"]))
    table.print(console())
    comparison = quality.get("comparison")
    if comparison:
        p = comparison.get("p_value")
        console().print(f"{comparison['a']} vs {comparison['b']} ({comparison['metric']}, {comparison['test']}"
                        f"{', p=' + format(p, '.3g') if p is not None else ''}): {comparison['verdict']}")


def _done(what: str, d: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _echo_json(d)
        return
    versions = ", ".join(f"{role} {uri}" for role, uri in d["versions"].items())
    click.echo(f"deployment {d['name']} {what} (revision {d['revision']}): {versions}")


# -- commands ------------------------------------------------------------------------------------------------------
@click.group("deployments")
def deployments() -> None:
    """Managed deployments: models served by replicas that `capstan server` supervises, scales and routes to."""


@deployments.command("apply")
@click.option("-f", "--file", "path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Deployment spec (YAML), e.g. deployment.yaml; '-' reads stdin.")
@click.option("--json", "as_json", is_flag=True, help="Print the deployment as JSON.")
def apply_cmd(path: Path, as_json: bool) -> None:
    """Create a deployment from a spec file, or change it to match."""
    from capstan.serving.spec import load_spec_yaml

    if str(path) == "-":
        text, source = sys.stdin.read(), "<stdin>"
    else:
        try:
            text, source = path.read_text(), str(path)
        except OSError as exc:
            raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from None
    spec = load_spec_yaml(text, source=source)
    _done("applied", _apply(spec.to_dict(), create=False), as_json)


@deployments.command("create")
@click.argument("name")
@click.option("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/PATH.")
@click.option("--replicas", type=int, default=None, help="A fixed number of replicas (default 1).")
@click.option("--min-replicas", type=int, default=None, help="Autoscaling: fewest replicas (0 scales to zero).")
@click.option("--max-replicas", type=int, default=None, help="Autoscaling: most replicas.")
@click.option("--target-concurrency", type=float, default=None, help="Autoscaling: in-flight requests per replica.")
@click.option("--target-rps", type=float, default=None, help="Autoscaling: requests per second per replica.")
@click.option("--target-waiting", type=float, default=None,
              help="Autoscaling, language models: requests waiting in the engine per replica.")
@click.option("--target-tokens-per-second", type=float, default=None,
              help="Autoscaling, language models: generated tokens per second per replica.")
@click.option("--canary", default=None, help="Model URI of a canary.")
@click.option("--canary-traffic", type=float, default=None, help="Percent of live traffic for the canary.")
@click.option("--shadow", default=None, help="Model URI of a shadow (mirrored, answers discarded).")
@click.option("--shadow-traffic", type=float, default=None, help="Percent of requests mirrored to the shadow.")
@click.option("--cpu", default=None, help="CPU per replica (500m, 2).")
@click.option("--memory", default=None, help="Memory per replica (512Mi, 2Gi).")
@click.option("--gpus", type=int, default=None, help="Whole GPUs per replica.")
@click.option("--queue", default=None, help="Workload queue (LocalQueue) that admits the replicas.")
@click.option("--drift-window", type=int, default=None,
              help="Rows per drift window of each replica (default 1000).")
@click.option("--llm-backend", default=None,
              help="Language models: the replicas' generation engine, transformers (default) or vllm.")
@click.option("--device", default=None,
              help="Language models, transformers backend: auto (default), cpu, cuda, cuda:N or mps.")
@click.option("--max-num-seqs", type=int, default=None,
              help="Language models: sequences each replica generates at once (default 8).")
@click.option("--max-waiting", type=int, default=None,
              help="Language models: requests that may wait in each replica; beyond it 429 (default 64).")
@click.option("--json", "as_json", is_flag=True, help="Print the deployment as JSON.")
def create_cmd(name: str, model: str, as_json: bool, **options: Any) -> None:
    """Create a deployment from options (the fields of a spec file); refused when NAME exists."""
    _done("created", _apply(spec_from_options(name, model, **options), create=True), as_json)


def spec_from_options(name: str, model: str, *, replicas: int | None = None, min_replicas: int | None = None,
                      max_replicas: int | None = None, target_concurrency: float | None = None,
                      target_rps: float | None = None, target_waiting: float | None = None,
                      target_tokens_per_second: float | None = None, canary: str | None = None,
                      canary_traffic: float | None = None, shadow: str | None = None,
                      shadow_traffic: float | None = None, cpu: str | None = None, memory: str | None = None,
                      gpus: int | None = None, queue: str | None = None, drift_window: int | None = None,
                      llm_backend: str | None = None, device: str | None = None, max_num_seqs: int | None = None,
                      max_waiting: int | None = None) -> dict[str, Any]:
    """The spec document that ``create``'s options describe (validated later by `parse_spec`)."""
    doc: dict[str, Any] = {"name": name, "model": model}
    targets = {"target_concurrency": target_concurrency, "target_rps": target_rps, "target_waiting": target_waiting,
               "target_tokens_per_second": target_tokens_per_second}
    autoscaled = any(v is not None for v in (min_replicas, max_replicas, *targets.values()))
    if autoscaled:
        if replicas is not None:
            raise click.UsageError("give either --replicas or --min-replicas/--max-replicas/--target-*, not both")
        if max_replicas is None:
            raise click.UsageError("--max-replicas is required with autoscaling")
        auto: dict[str, Any] = {"min_replicas": 1 if min_replicas is None else min_replicas,
                                "max_replicas": max_replicas}
        auto.update({key: value for key, value in targets.items() if value is not None})
        doc["autoscaling"] = auto
    elif replicas is not None:
        doc["replicas"] = replicas
    for key, uri, traffic in (("canary", canary, canary_traffic), ("shadow", shadow, shadow_traffic)):
        if (uri is None) != (traffic is None):
            raise click.UsageError(f"--{key} and --{key}-traffic go together")
        if uri is not None:
            doc[key] = {"model": uri, "traffic": traffic}
    resources = {k: v for k, v in (("cpu", cpu), ("memory", memory), ("gpus", gpus), ("queue", queue))
                 if v is not None}
    if resources:
        doc["resources"] = resources
    if drift_window is not None:
        doc["drift"] = {"window": drift_window}
    llm = {k: v for k, v in (("backend", llm_backend), ("device", device), ("max_num_seqs", max_num_seqs),
                             ("max_waiting", max_waiting)) if v is not None}
    if llm:
        doc["llm"] = llm
    return doc


@deployments.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_cmd(as_json: bool) -> None:
    """The deployments of the project, with their state and versions."""
    rows = _list()
    if as_json:
        _echo_json(rows)
    elif not rows:
        click.echo("no deployments")
    else:
        _print_list(rows)


@deployments.command("status")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_cmd(name: str, as_json: bool) -> None:
    """A deployment's state, traffic split, replicas, per-version quality and recent events."""
    status = _status(name)
    if as_json:
        _echo_json(status)
    else:
        _print_status(status)


@deployments.command("drift")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def drift_cmd(name: str, as_json: bool) -> None:
    """Live data drift of each version, from the deployment's ready replicas (latest window vs the reference)."""
    from capstan.serving.drift_monitor import VersionDrift, format_drift_table

    report = _drift(name)
    if as_json:
        _echo_json(report)
        return
    if not report["replicas"]:
        click.echo(f"deployment {name} has no ready replica to ask")
        return
    click.echo(format_drift_table([VersionDrift.from_dict(v) for v in report["versions"]]))
    for replica in report["replicas"]:
        if not replica["available"]:
            click.echo(f"replica {replica['id']} ({replica['url']}) is unavailable: {replica['error']}", err=True)


@deployments.command("promote")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the deployment as JSON.")
def promote_cmd(name: str, as_json: bool) -> None:
    """Make the canary the primary (its running replicas take the traffic at once)."""
    _done("promoted", _action(name, "promote"), as_json)


@deployments.command("rollback")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the deployment as JSON.")
def rollback_cmd(name: str, as_json: bool) -> None:
    """Drop the canary; without one, return to the previous revision."""
    _done("rolled back", _action(name, "rollback"), as_json)


@deployments.command("scale")
@click.argument("name")
@click.option("--replicas", type=click.IntRange(min=1), required=True, help="Replicas of the primary model.")
@click.option("--json", "as_json", is_flag=True, help="Print the deployment as JSON.")
def scale_cmd(name: str, replicas: int, as_json: bool) -> None:
    """Run a fixed number of replicas (an autoscaled deployment stops autoscaling until rollback or apply)."""
    _done(f"scaled to {replicas}", _action(name, "scale", {"replicas": replicas}), as_json)


@deployments.command("delete")
@click.argument("name")
def delete_cmd(name: str) -> None:
    """Delete a deployment; its replicas are stopped."""
    if _remote():
        _http("DELETE", f"/{name}")
    else:
        _manager().delete(cli_settings().project, name)
        _note_without_server()
    click.echo(f"deployment {name} deleted")


def register(cli: click.Group) -> None:
    """Add ``capstan deployments`` to ``cli``."""
    cli.add_command(deployments)

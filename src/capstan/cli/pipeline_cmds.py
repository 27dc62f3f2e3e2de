"""CLI for pipelines: ``capstan run``, ``capstan pipelines ...``, ``capstan logs`` and ``capstan schedules ...``.

With ``CAPSTAN_URL`` set, ``run``, ``pipelines runs|show|cancel|retry|resume`` and ``logs`` go through the server's
``/api/v1/pipelines`` API (the pipeline file must be readable by the server); otherwise they use the local stores.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from capstan.cli.context import cli_settings
from capstan.errors import InvalidParameterValue

if TYPE_CHECKING:
    from capstan.pipelines.runner import PipelineRunner, RunResult

TERMINAL = ("succeeded", "failed", "cancelled")


class _Cancelled(click.ClickException):
    exit_code = 130


def _runner() -> PipelineRunner:
    from capstan.cli.context import cli_services

    return cli_services().pipelines.get()


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console = Console(stderr=stderr, highlight=False, width=200)
    return console


def _echo_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, default=str))


def _ms(ms: int | None) -> str:
    if ms is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def _took(start: int | None, end: int | None) -> str:
    if start is None or end is None:
        return ""
    return f"{(end - start) / 1000:.1f}s"


# -- remote (CAPSTAN_URL) -----------------------------------------------------------------------------------------
def _http(method: str, path: str, **kwargs: Any) -> Any:
    import httpx

    from capstan.errors import error_from_body

    settings = cli_settings()
    headers = {"X-Capstan-Project": settings.project}
    if settings.token:
        headers["Authorization"] = f"Bearer {settings.token}"
    try:
        resp = httpx.request(method, f"{settings.url}/api/v1/pipelines{path}", headers=headers, timeout=60,
                             **kwargs)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach {settings.url}: {exc}") from None
    if resp.status_code >= 400:
        try:
            body = resp.json()
            raise error_from_body(body.get("error_code", ""), body.get("message", resp.text), resp.status_code)
        except ValueError:
            raise click.ClickException(f"{settings.url} answered {resp.status_code}: {resp.text[:200]}") from None
    if resp.headers.get("content-type", "").startswith("application/json"):
        return resp.json()
    return resp.content


def _remote_follow(run_id: str, as_json: bool) -> dict[str, Any]:
    from rich.live import Live
    from rich.table import Table

    def table(data: dict[str, Any]) -> Table:
        out = Table(title=f"pipeline {data['run']['pipeline']}  run {run_id}  ({data['run']['status']})",
                    title_justify="left")
        for header in ("step", "state", "attempt", "note"):
            out.add_column(header, no_wrap=True)
        for step in data["steps"]:
            note = f"cache hit ({step['cached_from']})" if step["state"] == "cached" else (
                f"{step['reason']}: {step['message']}"[:100] if step["reason"] else "")
            out.add_row(step["step"], step["state"], str(step["attempt"] or ""), note)
        return out

    data: dict[str, Any] = _http("GET", f"/runs/{run_id}")
    if as_json:
        while data["run"]["status"] not in TERMINAL:
            time.sleep(0.5)
            data = _http("GET", f"/runs/{run_id}")
        return data
    console = _console()
    with Live(table(data), console=console, refresh_per_second=4) as live:
        while data["run"]["status"] not in TERMINAL:
            time.sleep(0.5)
            data = _http("GET", f"/runs/{run_id}")
            live.update(table(data))
    if not console.is_terminal:
        console.line()
    return data


def _remote_finish(run_id: str, as_json: bool) -> None:
    """Follow a run the server orchestrates until it ends, then report it like a local one."""
    data = _remote_follow(run_id, as_json)
    if as_json:
        _echo_json(data)
    run = data["run"]
    if run["status"] == "succeeded":
        if not as_json:  # with --json, stdout holds the document alone (as for a local run)
            click.echo(f"run {run['id']} succeeded")
        return
    failed = next((s for s in data["steps"] if s["state"] == "failed" and s["parent"] is None), None) or \
        next((s for s in data["steps"] if s["state"] == "failed"), None)
    if failed is not None:
        body = _http("GET", f"/runs/{run['id']}/steps/{failed['step']}/logs")
        from capstan.pipelines.logs import tail

        _print_tail(failed["step"], tail(body if isinstance(body, bytes) else str(body).encode()))
    raise click.ClickException(f"pipeline {run['pipeline']!r} {run['status']}: {run['message']} (run {run['id']})")


# -- local runs ---------------------------------------------------------------------------------------------------
def _print_tail(step_id: str, text: str) -> None:
    if text:
        click.echo(f"--- last lines of step {step_id!r} ---", err=True)
        click.echo(text, err=True)
        click.echo("---", err=True)


def _orchestrate(runner: PipelineRunner, title: str, run_id: str, action: Any, as_json: bool) -> RunResult:
    from capstan.pipelines.view import LiveView

    if as_json:
        result: RunResult = action(None)
    else:
        with LiveView(_console(), title) as view:
            result = action(view)
    return result


def _warn_unenforced(graph: Any) -> None:
    """Warn about memory requests that cannot be enforced: a thread step shares the orchestrator's process."""
    from capstan.resources.quantity import MILLI, format_quantity

    for name, step in sorted(graph.steps.items()):
        memory = step.options.resources.memory
        if memory and step.options.isolation == "thread":
            click.echo(f"warning: step {name!r} (isolation='thread'): its memory request "
                       f"{format_quantity(memory * MILLI, 'memory')} is used for queue admission only and is not "
                       "enforced; use isolation='process' to enforce it", err=True)


def _report(runner: PipelineRunner, result: RunResult, as_json: bool) -> None:
    from capstan.pipelines.logs import pick_attempt, read_log, tail

    run = result.run
    if as_json:
        _echo_json({"run": run.to_json(), "steps": [s.to_json() for s in result.steps]})
    if run.status == "succeeded":
        if not as_json:
            cached = sum(1 for s in result.steps if s.state == "cached")
            click.echo(f"run {run.id} succeeded in {_took(run.started_at, run.finished_at)} "
                       f"({len(result.steps)} steps, {cached} cached)")
        return
    failed = next((s for s in result.steps if s.state == "failed" and s.parent is None and s.reason != "ChildFailed"),
                  None) or next((s for s in result.steps if s.state == "failed" and s.reason != "ChildFailed"), None)
    if failed is not None:
        # The log tail is a courtesy; the error line below is what matters.
        with contextlib.suppress(Exception):
            _print_tail(failed.step_id, tail(read_log(runner, pick_attempt(runner, run.id, failed.step_id, None))))
        raise click.ClickException(
            f"pipeline {run.name!r} failed at step {failed.step_id!r} ({failed.reason}): {failed.message} "
            f"[run {run.id}; full log: capstan logs {run.id} {failed.step_id}]")
    if run.status == "cancelled":
        raise _Cancelled(f"pipeline {run.name!r} cancelled: {run.message} [run {run.id}]")
    raise click.ClickException(f"pipeline {run.name!r} {run.status}: {run.message} [run {run.id}]")


def _use_backend(backend: str | None, kube_context: str | None, kube_namespace: str | None) -> None:
    """Let ``capstan run``'s options stand in for CAPSTAN_BACKEND, CAPSTAN_KUBE_CONTEXT and CAPSTAN_KUBE_NAMESPACE."""
    from capstan.cli.context import override_settings

    changes = {key: value for key, value in (("backend", backend), ("kube_context", kube_context),
                                             ("kube_namespace", kube_namespace)) if value is not None}
    if changes:
        override_settings(**changes)
    settings = cli_settings()
    if settings.backend != "kubernetes" and (kube_context or kube_namespace):
        raise InvalidParameterValue("--context and --namespace apply to --backend kubernetes")
    if settings.backend == "kubernetes" and settings.url:
        raise InvalidParameterValue("--backend: with CAPSTAN_URL the server runs the pipeline with its own backend; "
                                    "unset CAPSTAN_URL to run the steps from here")
    if settings.backend == "kubernetes":
        from capstan.k8s.client import JOB, connect

        # a missing context or an unreachable cluster is refused before the run is recorded
        api = connect(context=settings.kube_context, namespace=settings.kube_namespace)
        try:
            api.list(JOB)
        finally:
            api.close()


def register(cli: click.Group) -> None:
    """Add ``run``, ``pipelines``, ``logs`` and ``schedules``."""

    @cli.command("run")
    @click.argument("target", metavar="FILE[:FUNC]")
    @click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE",
                  help="Set a pipeline parameter (converted by its annotation); repeatable.")
    @click.option("--no-cache", is_flag=True, help="Run every step even when its cache key is unchanged.")
    @click.option("--json", "as_json", is_flag=True, help="Print the finished run as JSON instead of a live view.")
    @click.option("--backend", type=click.Choice(["local", "kubernetes"]), default=None,
                  help="Where the steps run: local threads and processes, or Jobs on a cluster [default: "
                       "CAPSTAN_BACKEND, else local].")
    @click.option("--context", "kube_context", default=None, metavar="NAME",
                  help="kubeconfig context of --backend kubernetes [default: CAPSTAN_KUBE_CONTEXT, else the "
                       "current one, or in-cluster].")
    @click.option("--namespace", "kube_namespace", default=None, metavar="NS",
                  help="Namespace of the step Jobs [default: CAPSTAN_KUBE_NAMESPACE, else the context's].")
    def run_cmd(target: str, params: tuple[str, ...], no_cache: bool, as_json: bool, backend: str | None,
                kube_context: str | None, kube_namespace: str | None) -> None:
        """Run a pipeline: FILE.py (its only @pipeline) or FILE.py:FUNC, with a live view of its steps."""
        from capstan.pipelines.loader import load_pipeline
        from capstan.pipelines.params import parse_assignments

        _use_backend(backend, kube_context, kube_namespace)
        given = parse_assignments(params)
        pipe, ref = load_pipeline(target)
        if cli_settings().url:
            _warn_unenforced(pipe.build(given))  # report bad parameters here, before anything reaches the server
            data = _http("POST", "/runs", json={"pipeline": ref, "params": given, "no_cache": no_cache})
            _remote_finish(data["run"]["id"], as_json)
            return
        runner = _runner()
        try:
            record, graph = runner.create_run(pipe, given, ref=ref, no_cache=no_cache, source="cli")
            _warn_unenforced(graph)
            result = _orchestrate(runner, f"pipeline {pipe.name}", record.id,
                                  lambda view: runner.execute(record.id, graph=graph, observer=view), as_json)
            _report(runner, result, as_json)
        finally:
            runner.close()

    @cli.group("pipelines")
    def pipelines() -> None:
        """Inspect, resume, retry and cancel pipeline runs."""

    @pipelines.command("runs")
    @click.option("--status", type=click.Choice(["pending", "running", "succeeded", "failed", "cancelled"]))
    @click.option("--limit", type=click.IntRange(1, 10000), default=20, show_default=True)
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def runs_cmd(status: str | None, limit: int, as_json: bool) -> None:
        """List pipeline runs, newest first."""
        if cli_settings().url:
            rows = _http("GET", "/runs", params={k: v for k, v in (("status", status), ("limit", limit)) if v})["runs"]
        else:
            runner = _runner()
            try:
                rows = [r.to_json() for r in runner.store.list_runs(status=status, limit=limit)]
            finally:
                runner.close()
        if as_json:
            _echo_json(rows)
            return
        from capstan.cli import tables

        table = tables.TextTable("run id", "pipeline", "status", "source", "created", "took", "message",
                                 ids=("run id",))
        for r in rows:
            table.add_row(r["id"], r["pipeline"], r["status"], r["source"], _ms(r["created_at"]),
                          _took(r["started_at"], r["finished_at"]), (r["message"] or "")[:80])
        table.print(tables.console())

    @pipelines.command("show")
    @click.argument("run_id")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def show_cmd(run_id: str, as_json: bool) -> None:
        """Show a run: its DAG with each step's state, attempts, duration and peak memory."""
        if cli_settings().url:
            data = _http("GET", f"/runs/{run_id}")
            if as_json:
                _echo_json(data)
                return
            from capstan.pipelines.storage import AttemptRecord, RunRecord, StepRecord

            r = data["run"]
            run = RunRecord(r["id"], r["project"], r["pipeline"], r["pipeline_ref"], r["params"],
                            {"nodes": [{"id": s["step"], "deps": s["needs"]} for s in data["steps"]]}, r["status"],
                            r["no_cache"], r["cancel_requested"], r["source"], r["schedule"], r["slot"],
                            r["orchestrator"], None, r["created_at"], r["started_at"], r["finished_at"], r["message"])
            steps = [StepRecord(run.id, s["step"], s["name"], 0, s["parent"], s["map_index"], s["state"],
                                s["attempt"], s["retries_used"], s["reason"], s["message"], None, s["cache_key"],
                                s["cached_from"], None, s["started_at"], s["finished_at"]) for s in data["steps"]]
            attempts = [AttemptRecord(run.id, s["step"], a["attempt"], a["state"], a["reason"], a["message"],
                                      a["isolation"], a["worker_pid"], None, a["started_at"], a["finished_at"],
                                      a["duration_ms"], a["exit_code"], a["peak_memory"], a["log_path"])
                        for s in data["steps"] for a in s["attempts"]]
            _show(run, steps, attempts)
            return
        runner = _runner()
        try:
            full = runner.store.resolve_run_id(run_id)
            run = runner.store.get_run(full)
            steps = runner.store.steps(full, run.project)
            attempts = runner.store.attempts(full)
            if as_json:
                deps = {n["id"]: n.get("deps", []) for n in run.graph.get("nodes", [])}
                by_step: dict[str, list[Any]] = {}
                for a in attempts:
                    by_step.setdefault(a.step_id, []).append(a.to_json())
                _echo_json({"run": run.to_json(),
                            "steps": [{**s.to_json(), "needs": deps.get(s.step_id, []),
                                       "attempts": by_step.get(s.step_id, [])} for s in steps],
                            "inputs": runner.store.inputs(full)})
                return
            _show(run, steps, attempts)
        finally:
            runner.close()

    def _show(run: Any, steps: Any, attempts: Any) -> None:
        from capstan.pipelines.view import steps_table

        console = _console()
        console.print(f"[bold]run {run.id}[/bold]  pipeline {run.name}  status [bold]{run.status}[/bold]  "
                      f"source {run.source}" + (f" (schedule {run.schedule})" if run.schedule else ""))
        took = _took(run.started_at, run.finished_at) or "-"
        console.print(f"params {json.dumps(run.params)}  created {_ms(run.created_at)}  took {took}"
                      + ("  --no-cache" if run.no_cache else ""))
        if run.message:
            console.print(f"message: {run.message}")
        console.print(steps_table(run, steps, attempts))

    def _continue(run_id: str, action: str, as_json: bool) -> None:
        if cli_settings().url:
            data = _http("POST", f"/runs/{run_id}/{action}")
            _remote_finish(data["run"]["id"], as_json)
            return
        runner = _runner()
        try:
            full = runner.store.resolve_run_id(run_id)
            run = runner.store.get_run(full)
            method = runner.resume if action == "resume" else runner.retry
            result = _orchestrate(runner, f"pipeline {run.name}", full,
                                  lambda view: method(full, observer=view), as_json)
            _report(runner, result, as_json)
        finally:
            runner.close()

    @pipelines.command("resume")
    @click.argument("run_id")
    @click.option("--json", "as_json", is_flag=True, help="Print the finished run as JSON.")
    def resume_cmd(run_id: str, as_json: bool) -> None:
        """Continue a run whose orchestrator stopped (crash, kill -9): finished steps are kept, running ones are
        re-attached or retried."""
        _continue(run_id, "resume", as_json)

    @pipelines.command("retry")
    @click.argument("run_id")
    @click.option("--json", "as_json", is_flag=True, help="Print the finished run as JSON.")
    def retry_cmd(run_id: str, as_json: bool) -> None:
        """Rerun a failed or cancelled run from its failed steps, reusing everything upstream."""
        _continue(run_id, "retry", as_json)

    @pipelines.command("cancel")
    @click.argument("run_id")
    @click.option("--wait", "wait_s", type=float, default=30.0, show_default=True,
                  help="Seconds to wait for the run's orchestrator to stop its steps.")
    def cancel_cmd(run_id: str, wait_s: float) -> None:
        """Cancel a run: running steps get SIGTERM, then SIGKILL; the cancellation is recorded."""
        if cli_settings().url:
            run = _http("POST", f"/runs/{run_id}/cancel")["run"]
        else:
            runner = _runner()
            try:
                run = runner.cancel(runner.store.resolve_run_id(run_id), wait_s=wait_s).to_json()
            finally:
                runner.close()
        click.echo(f"run {run['id']} {run['status']}")

    @pipelines.command("lineage")
    @click.argument("key")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def lineage_cmd(key: str, as_json: bool) -> None:
        """Lineage of a run (what each step produced and consumed) or of one output (digest or artifact path):
        which step produced it and which runs consumed it."""
        from capstan.errors import CapstanError

        runner = _runner()
        try:
            try:
                full = runner.store.resolve_run_id(key)
            except CapstanError:
                full = None
            if full is None:
                data: dict[str, Any] = runner.store.artifact_lineage(key)
            else:
                run = runner.store.get_run(full)
                data = {"run_id": full,
                        "produced": [{"step": s.step_id, "state": s.state, "cached_from": s.cached_from,
                                      **(s.output.to_json() if s.output else {})} for s in
                                     runner.store.steps(full, run.project) if s.output is not None],
                        "consumed": runner.store.inputs(full)}
        finally:
            runner.close()
        if as_json:
            _echo_json(data)
            return
        from rich.table import Table

        if full is None:
            produced, consumed = data["produced_by"], data["consumed_by"]
            if not produced and not consumed:
                raise click.ClickException(f"no pipeline output or run matches {key!r}")
            table = Table(title=f"output {key}", title_justify="left")
            for header in ("relation", "run", "step", "detail"):
                table.add_column(header, no_wrap=True)
            for p in produced:
                table.add_row("produced by", p["run_id"], p["step"], f"{p['format']} {p['path'] or 'inline'}")
            for c in consumed:
                table.add_row("consumed by", c["run_id"], c["step"], f"from {c['source_run']}/{c['source_step']}")
        else:
            table = Table(title=f"run {full}", title_justify="left")
            for header in ("step", "output", "digest", "consumed from"):
                table.add_column(header, no_wrap=True)
            consumed_by: dict[str, list[str]] = {}
            for edge in data["consumed"]:
                consumed_by.setdefault(edge["step_id"], []).append(f"{edge['source_step']}@{edge['digest'][:12]}")
            for p in data["produced"]:
                table.add_row(p["step"], f"{p['format']} {p.get('path') or 'inline'}", p["digest"][:16],
                              ", ".join(consumed_by.get(p["step"], [])))
        _console().print(table)

    @pipelines.command("validate")
    @click.argument("target", metavar="FILE[:FUNC]")
    @click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE", help="Set a pipeline parameter.")
    def validate_cmd(target: str, params: tuple[str, ...]) -> None:
        """Import a pipeline and build its DAG without running it (checks parameters, cycles, step options)."""
        from rich.table import Table

        from capstan.pipelines.loader import load_pipeline
        from capstan.pipelines.params import describe, parse_assignments

        pipe, ref = load_pipeline(target)
        graph = pipe.build(parse_assignments(params))
        table = Table(title=f"pipeline {pipe.name} ({ref})", title_justify="left")
        for header in ("step", "kind", "isolation", "needs", "fan-out", "defined at"):
            table.add_column(header, no_wrap=True)
        for node in graph.nodes.values():
            fan = ""
            if node.map is not None:
                fan = f"map over {node.map.param}" + (f" (max {node.map.max_parallel})" if node.map.max_parallel
                                                      else "")
            table.add_row(node.id, node.step.kind, node.step.options.isolation, ", ".join(node.deps), fan,
                          node.step.location)
        console = _console()
        console.print(table)
        console.print("parameters: " + (", ".join(describe(p) for p in pipe.params) or "none"))

    @cli.command("logs")
    @click.argument("run_id", metavar="RUN_ID|JOB")
    @click.argument("step", required=False)
    @click.option("--attempt", type=click.IntRange(1), help="Attempt number (default: the latest).")
    @click.option("--follow", "-f", is_flag=True, help="Keep printing while the attempt runs.")
    @click.option("--worker", type=click.IntRange(0), help="A training job's worker (pod) index (default 0).")
    def logs_cmd(run_id: str, step: str | None, attempt: int | None, follow: bool, worker: int | None) -> None:
        """Print the captured stdout/stderr of a pipeline step's attempt (RUN_ID STEP), or of a training job's
        worker (JOB [--worker N])."""
        if step is None or worker is not None:
            from capstan.cli.training_cmds import is_job, print_job_logs

            if step is not None:
                raise click.UsageError("--worker is for a training job: give JOB without a STEP")
            if worker is None and not is_job(run_id):
                raise click.UsageError(f"{run_id!r} is not a training job; for a pipeline run give its STEP too")
            print_job_logs(run_id, worker=worker or 0, attempt=attempt, follow=follow)
            return
        if cli_settings().url:
            body = _http("GET", f"/runs/{run_id}/steps/{step}/logs", params={"attempt": attempt} if attempt else None)
            sys.stdout.buffer.write(body if isinstance(body, bytes) else str(body).encode())
            return
        from capstan.pipelines.logs import follow_log, pick_attempt, read_log

        runner = _runner()
        try:
            full = runner.store.resolve_run_id(run_id)
            record = pick_attempt(runner, full, step, attempt)
            if follow:
                for chunk in follow_log(runner, record):
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.buffer.flush()
            else:
                sys.stdout.buffer.write(read_log(runner, record))
        finally:
            runner.close()

    _register_schedules(cli)


def _register_schedules(cli: click.Group) -> None:
    @cli.group("schedules")
    def schedules() -> None:
        """Run pipelines on cron schedules (in `capstan server`)."""

    @schedules.command("create")
    @click.argument("name")
    @click.option("--pipeline", "pipeline_ref", required=True, metavar="FILE:FUNC", help="The pipeline to run.")
    @click.option("--cron", required=True, help='Cron expression in UTC, e.g. "0 3 * * *".')
    @click.option("--param", "--params", "-p", "params", multiple=True, metavar="KEY=VALUE",
                  help="Pipeline parameter for every run; repeatable.")
    @click.option("--catchup/--no-catchup", default=True, show_default=True,
                  help="After downtime, start every missed slot (or only the latest).")
    def create_cmd(name: str, pipeline_ref: str, cron: str, params: tuple[str, ...], catchup: bool) -> None:
        """Create a schedule; `capstan server` starts its runs."""
        from capstan.pipelines.params import parse_assignments
        from capstan.pipelines.schedules import create_schedule, iso, slots_between

        runner = _runner()
        try:
            record = create_schedule(runner, name, pipeline_ref, cron, parse_assignments(params), catchup=catchup)
            upcoming = slots_between(record.cron, runner.clock(), runner.clock() + 400 * 86_400_000, limit=1)
        finally:
            runner.close()
        nxt = f"; next slot {iso(upcoming[0])}" if upcoming else ""
        click.echo(f"schedule {record.name} created: {record.pipeline_ref} on {record.cron!r} (UTC){nxt}")

    @schedules.command("list")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def list_cmd(as_json: bool) -> None:
        """List schedules."""
        from capstan.pipelines.schedules import iso

        runner = _runner()
        try:
            records = runner.store.schedules()
        finally:
            runner.close()
        if as_json:
            _echo_json([r.to_json() for r in records])
            return
        from rich.table import Table

        table = Table()
        for header in ("name", "cron", "pipeline", "params", "catchup", "last slot"):
            table.add_column(header, no_wrap=True)
        for r in records:
            table.add_row(r.name, r.cron, r.pipeline_ref, json.dumps(r.params), "yes" if r.catchup else "no",
                          iso(r.last_slot) if r.last_slot else "-")
        _console().print(table)

    @schedules.command("delete")
    @click.argument("name")
    def delete_cmd(name: str) -> None:
        """Delete a schedule (the runs it started stay)."""
        runner = _runner()
        try:
            runner.store.delete_schedule(name)
        finally:
            runner.close()
        click.echo(f"schedule {name} deleted")

    @schedules.command("backfill")
    @click.argument("name")
    @click.option("--from", "start", required=True, help="First time (ISO date or date-time, UTC).")
    @click.option("--to", "end", required=True, help="Last time, inclusive.")
    @click.option("--submit-only", is_flag=True, help="Only record the runs; `capstan server` executes them.")
    def backfill_cmd(name: str, start: str, end: str, submit_only: bool) -> None:
        """Start the schedule's slots between --from and --to that have not run yet (and run them here)."""
        from rich.progress import Progress

        from capstan.pipelines.schedules import Scheduler, iso, parse_time

        start_ms, end_ms = parse_time(start, field="--from"), parse_time(end, field="--to")
        runner = _runner()
        try:
            created: list[str] = []
            slots = Scheduler(runner, created.append, clock=runner.clock).backfill(name, start_ms, end_ms)
            statuses: dict[str, str] = {}
            if not submit_only and created:
                with Progress(console=_console()) as progress:
                    task = progress.add_task(f"backfilling {name}", total=len(created))
                    for created_id in created:
                        statuses[created_id] = runner.execute(created_id).status
                        progress.advance(task)
        finally:
            runner.close()
        for slot, run_id in slots:
            if run_id is None:
                click.echo(f"{iso(slot)}  already started")
            else:
                click.echo(f"{iso(slot)}  run {run_id}  {statuses.get(run_id, 'pending')}")
        bad = [r for r, s in statuses.items() if s != "succeeded"]
        if bad:
            raise click.ClickException(f"{len(bad)} backfill run(s) did not succeed: {', '.join(bad)}")

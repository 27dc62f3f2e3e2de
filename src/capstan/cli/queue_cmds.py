"""CLI of the workload queue: ``capstan queue ...``, ``capstan why``, ``capstan usage`` and ``capstan simulate``.

Commands open the local metadata store through `capstan.cli.context`; tables are aligned (Rich), ``--json``
prints machine-readable output and errors are one ``error: ...`` line with a non-zero exit. With ``CAPSTAN_URL``
set, ``why``, ``queue status``, ``queue checkpoint`` and ``usage`` ask that server's ``/api/v1/queue`` instead
(``CAPSTAN_TOKEN``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from capstan.errors import CapstanError

if TYPE_CHECKING:
    from capstan.cli.tables import TextTable
    from capstan.queue.manager import QueueManager
    from capstan.queue.records import WorkloadRecord
    from capstan.queue.simulate import SimResult
    from capstan.queue.status import QueueStatus


def _manager(*, machine_default: bool = True) -> QueueManager:
    """The queue of the local store. With ``machine_default``, a home where nothing was applied first gets this
    machine's generated default queue, the one pipelines would use (so `queue status` and `why` show it)."""
    from capstan.cli.context import cli_services
    from capstan.queue.admission import QueueAdmission
    from capstan.queue.manager import QueueManager

    services = cli_services()
    admission = services.admission.get()
    if machine_default and isinstance(admission, QueueAdmission):
        with admission.session():
            pass  # the session stores the default configuration when none was applied (or the machine changed)
    return QueueManager(services.queue.get(), clock=services.clock, events=services.events)


def _echo_table(table: TextTable) -> None:
    from capstan.cli.tables import console

    table.print(console())


def _table(*headers: str, right: tuple[str, ...] = ()) -> TextTable:
    """A CLI table (`capstan.cli.tables`): workload ids are never cut, other columns fold before they vanish."""
    from capstan.cli.tables import TextTable

    return TextTable(*headers, ids=tuple(h for h in headers if h in _ID_HEADERS),
                     right=tuple(h for h in right if h in headers))


_ID_HEADERS = frozenset({"WORKLOAD", "HEAD"})


def _fail(exc: CapstanError) -> click.ClickException:
    return click.ClickException(exc.message)


def _json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


# -- remote (CAPSTAN_URL): `why`, `queue status` and `usage` ask the server's /api/v1/queue ---------------------------
def _remote() -> bool:
    from capstan.cli.context import cli_settings

    return bool(cli_settings().url)


def _remote_get(path: str, params: dict[str, str] | None = None) -> Any:
    """GET ``/api/v1/queue{path}`` on ``CAPSTAN_URL`` with ``CAPSTAN_TOKEN`` and ``CAPSTAN_PROJECT``."""
    import httpx

    from capstan.cli.context import cli_settings
    from capstan.errors import error_from_body

    settings = cli_settings()
    headers = {"X-Capstan-Project": settings.project}
    if settings.token:
        headers["Authorization"] = f"Bearer {settings.token}"
    try:
        resp = httpx.get(f"{settings.url}/api/v1/queue{path}", params=params, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach {settings.url}: {exc}") from None
    try:
        body = resp.json()
    except ValueError:
        raise click.ClickException(f"{settings.url} answered {resp.status_code}: {resp.text[:200]}") from None
    if resp.status_code >= 400:
        raise error_from_body(str(body.get("error_code", "")), str(body.get("message", resp.text[:200])),
                              resp.status_code)
    return body


def _status_rows(data: list[dict[str, Any]]) -> list[QueueStatus]:
    """`QueueStatus` rows from the API's JSON (quantities in whole units) for the table."""
    from capstan.queue.status import QueueStatus, QuotaLine

    def milli(value: Any) -> int:
        return round(float(value) * 1000)

    return [QueueStatus(d["cluster_queue"], d.get("cohort"), d["strategy"], int(d["pending"]), int(d["admitted"]),
                        d.get("head"), tuple(QuotaLine(q["flavor"], q["resource"], milli(q["nominal"]),
                                                       milli(q["used"]), milli(q["borrowed"]), milli(q["lent"]))
                                             for q in d["quota"]))
            for d in data]


@click.group("queue")
def queue_group() -> None:
    """Workload queue: apply quotas, submit workloads, see queue status."""


@queue_group.command("apply")
@click.option("-f", "--file", "path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Queue configuration YAML (flavors, cohorts, clusterQueues, localQueues, priorityClasses).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def apply_cmd(path: Path, as_json: bool) -> None:
    """Validate and apply a queue configuration; queued workloads are kept."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise click.ClickException(f"{path}: not UTF-8 text (a binary or UTF-16 file?)") from None
    try:
        from capstan.queue.config import load_yaml, parse_config

        parsed = parse_config(load_yaml(text, source=str(path)))
        if not parsed.cluster_queues:
            raise click.ClickException(f"{path}: defines no clusterQueues, so no workload could ever be admitted; "
                                       "nothing was applied (see examples/queues/teams.yaml)")
        mgr = _manager(machine_default=False)
        report = mgr.apply_config(text)
        unserved = mgr.unserved_projects({"default", *_projects_with_work(mgr)})
    except CapstanError as exc:
        raise _fail(exc) from None
    cfg = mgr.config
    warnings = [f"project {p!r} has no LocalQueue and there is no LocalQueue named 'default': its pipelines "
                f"will fail as Unschedulable (add e.g. `- {{name: {p}, clusterQueue: {cfg.cluster_queues[0].name}, "
                f"project: {p}}}` to localQueues)" for p in unserved]
    summary = {"flavors": len(cfg.flavors), "cluster_queues": len(cfg.cluster_queues), "cohorts": len(cfg.cohorts),
               "local_queues": len(cfg.local_queues), "priority_classes": len(cfg.priority_classes),
               "kept": report.kept, "evicted": list(report.evicted), "orphaned": list(report.orphaned),
               "warnings": warnings}
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        _json(summary)
        return
    click.echo(f"applied {path}: {summary['flavors']} flavors, {summary['cluster_queues']} ClusterQueues, "
               f"{summary['cohorts']} cohorts, {summary['local_queues']} LocalQueues, "
               f"{summary['priority_classes']} priority classes; kept {report.kept} workloads")
    if report.evicted:
        click.echo(f"evicted (ClusterQueue removed, requeued): {', '.join(report.evicted)}")
    if report.orphaned:
        click.echo(f"inactive (LocalQueue removed, still queued): {', '.join(report.orphaned)}")


def _projects_with_work(mgr: QueueManager) -> set[str]:
    """Projects that have queued workloads or pipeline runs in the local store."""
    from sqlalchemy import select

    from capstan.cli.context import cli_services
    from capstan.pipelines.tables import pipeline_runs

    projects = {r.workload.project for r in mgr.workloads()}
    with cli_services().engine.connect() as conn:
        projects.update(row[0] for row in conn.execute(select(pipeline_runs.c.project).distinct()))
    return projects


@queue_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status_cmd(as_json: bool) -> None:
    """Nominal, used, borrowed and lent quota per ClusterQueue and flavor, with counts and head of queue."""
    try:
        rows = _status_rows(_remote_get("/status")["cluster_queues"]) if _remote() else _manager().status()
    except CapstanError as exc:
        raise _fail(exc) from None
    if as_json:
        _json([r.to_dict() for r in rows])
        return
    if not rows:
        click.echo("no ClusterQueues: the applied configuration defines none; run `capstan queue apply -f FILE`")
        return
    table = _table("CLUSTER QUEUE", "COHORT", "FLAVOR", "RESOURCE", "NOMINAL", "USED", "BORROWED", "LENT", "PENDING",
                   "ADMITTED", "HEAD", right=("NOMINAL", "USED", "BORROWED", "LENT", "PENDING", "ADMITTED"))
    for r in rows:
        for i, line in enumerate(r.quota or ()):
            nominal, used, borrowed, lent = r.quota_text(line)
            first = i == 0
            table.add_row(r.name if first else "", (r.cohort or "-") if first else "", line.flavor, line.resource,
                          nominal, used, borrowed, lent, str(r.pending) if first else "",
                          str(r.admitted) if first else "", (r.head or "-") if first else "")
    _echo_table(table)


@queue_group.command("submit")
@click.argument("workload_id")
@click.option("-q", "--queue", "local_queue", required=True, help="LocalQueue to submit to.")
@click.option("--gpu", default=None, help="GPUs per pod, e.g. 1, 2 or 0.25 (shareable flavors only).")
@click.option("--cpu", default=None, help="CPU per pod, e.g. 500m or 2.")
@click.option("--memory", default=None, help="Memory per pod, e.g. 16Gi.")
@click.option("--count", default=1, show_default=True, type=click.IntRange(min=1), help="Pods in the gang.")
@click.option("--min-count", default=None, type=int,
              help="Partial admission (Kueue's minCount): admit as few as this many pods when all COUNT do not fit.")
@click.option("--priority-class", default=None, help="WorkloadPriorityClass name.")
@click.option("--user", default="", help="User to charge in usage reports.")
@click.option("--no-cycle", is_flag=True, help="Only queue it; do not run an admission cycle.")
@click.option("--json", "as_json", is_flag=True, help="Print the workload record as JSON.")
def submit_cmd(workload_id: str, local_queue: str, gpu: str | None, cpu: str | None, memory: str | None,
               count: int, min_count: int | None, priority_class: str | None, user: str, no_cycle: bool,
               as_json: bool) -> None:
    """Queue a workload of COUNT identical pods and run an admission cycle (for tests and demos)."""
    from capstan.queue.model import PodSet
    from capstan.resources.quantity import parse_quantity

    try:
        requests = {}
        for name, raw in (("gpu", gpu), ("cpu", cpu), ("memory", memory)):
            if raw is not None:
                requests[name] = parse_quantity(raw, path=f"--{name}")
        if not any(requests.values()):
            raise click.UsageError("give at least one of --gpu, --cpu, --memory")
        if min_count is not None and not 1 <= min_count <= count:
            raise click.ClickException(f"--min-count: must be between 1 and --count ({count}), got {min_count}")
        mgr = _manager()
        mgr.submit(workload_id, local_queue, [PodSet("main", count, requests, min_count=min_count)],
                   priority_class=priority_class, user=user)
        if not no_cycle:
            mgr.run_until_stable()
        record = mgr.get(workload_id)
    except CapstanError as exc:
        raise _fail(exc) from None
    if as_json:
        _json(_record_json(record))
        return
    click.echo(f"{workload_id}: {record.state} ({record.reason.value}) {record.message}")


@queue_group.command("list")
@click.option("--state", type=click.Choice(["Pending", "Admitted", "Evicting"]), default=None,
              help="Only workloads in this state.")
@click.option("--json", "as_json", is_flag=True, help="Print the workloads as JSON.")
def list_cmd(state: str | None, as_json: bool) -> None:
    """Active workloads (pending, admitted, being evicted) in submission order."""
    try:
        records = _manager().workloads(state)
    except CapstanError as exc:
        raise _fail(exc) from None
    if as_json:
        _json([_record_json(r) for r in records])
        return
    table = _table("WORKLOAD", "LOCAL QUEUE", "CLUSTER QUEUE", "PRIORITY", "PODS", "STATE", "REASON",
                   right=("PRIORITY", "PODS"))
    for r in records:
        table.add_row(r.id, r.workload.queue, r.workload.cluster_queue, str(r.workload.priority), _pods(r), r.state,
                      r.reason.value)
    _echo_table(table)


def _record_json(record: WorkloadRecord) -> dict[str, Any]:
    """A workload record as ``--json`` prints it: the stored record plus each pod set's admitted count."""
    from capstan.queue.records import pod_set_counts, record_to_json

    return {**record_to_json(record), "pod_sets": pod_set_counts(record)}


def _pods(record: WorkloadRecord) -> str:
    """The PODS cell: each pod set's count, ``admitted/count`` once admitted, ``count (min N)`` while a pod set that
    may be admitted partially waits."""
    from capstan.queue.records import pod_set_counts

    cells = []
    for ps in pod_set_counts(record):
        if ps["admitted_count"] is not None:
            cells.append(f"{ps['admitted_count']}/{ps['count']}")
        elif ps["min_count"] is not None:
            cells.append(f"{ps['count']} (min {ps['min_count']})")
        else:
            cells.append(str(ps["count"]))
    return ", ".join(cells)


def _end(action: str, workload_id: str) -> None:
    try:
        mgr = _manager()
        record = mgr.finish(workload_id) if action == "finish" else mgr.cancel(workload_id)
        mgr.run_until_stable()
    except CapstanError as exc:
        raise _fail(exc) from None
    click.echo(f"{workload_id}: {record.state}")


@queue_group.command("finish")
@click.argument("workload_id")
def finish_cmd(workload_id: str) -> None:
    """Mark an admitted workload finished, returning its quota (then run admission)."""
    _end("finish", workload_id)


@queue_group.command("cancel")
@click.argument("workload_id")
def cancel_cmd(workload_id: str) -> None:
    """Withdraw a pending or admitted workload (then run admission)."""
    _end("cancel", workload_id)


@queue_group.command("checkpoint")
@click.argument("workload_id")
@click.option("--step", type=click.IntRange(min=0), default=None, help="The training step the checkpoint holds.")
@click.option("--json", "as_json", is_flag=True, help="Print the workload record as JSON.")
def checkpoint_cmd(workload_id: str, step: int | None, as_json: bool) -> None:
    """Record that a running workload saved a checkpoint now (what `capstan.checkpoint.save` does inside one):
    a preemption then loses only the work done since. With CAPSTAN_URL, asks that server."""
    from capstan.cli.context import cli_services, cli_settings
    from capstan.sdk.backends_http import HttpBackend
    from capstan.sdk.workloads import record_checkpoint, record_checkpoint_in_store

    try:
        settings = cli_settings()
        if settings.url:
            backend = HttpBackend(settings)
            try:
                data = record_checkpoint(workload_id, step=step, backend=backend)
            finally:
                backend.close()
        else:
            from capstan.queue.records import record_to_json

            record = record_checkpoint_in_store(cli_services(), workload_id, step=step)
            data = {"id": record.id, **record_to_json(record)}
    except CapstanError as exc:
        raise _fail(exc) from None
    if as_json:
        _json(data)
        return
    at = f" at step {data['checkpoint_step']}" if data.get("checkpoint_step") is not None else ""
    click.echo(f"{workload_id}: checkpoint{at} recorded")


@click.command("why")
@click.argument("workload_id", metavar="WORKLOAD_ID|JOB")
@click.option("--json", "as_json", is_flag=True, help="Print the explanation as JSON.")
def why_cmd(workload_id: str, as_json: bool) -> None:
    """Explain a workload's state: position, reason code, blocking quota with numbers, holders and a hint. For a
    training job: its state and reason, each restart with its reason and, while pending, its workload's."""
    from capstan.cli.training_cmds import job_why

    job = job_why(workload_id)
    if job is not None:
        text = job.pop("text")
        if as_json:
            _json(job)
        else:
            click.echo(text)
        return
    try:
        if _remote():
            from urllib.parse import quote

            data = _remote_get(f"/workloads/{quote(workload_id, safe='/')}/why")
            text = data.pop("text")
            if as_json:
                _json(data)
            else:
                click.echo(text)
            return
        explanation = _manager().why(workload_id)
    except CapstanError as exc:
        kueue = _kueue_why(workload_id) if exc.http_status == 404 and not _remote() else None
        if kueue is None:
            raise _fail(exc) from None
        if as_json:
            _json(kueue)
        else:
            click.echo(kueue["text"])
        return
    if as_json:
        _json(explanation.to_dict())
        return
    click.echo(explanation.render())


def _kueue_why(workload_id: str) -> dict[str, Any] | None:
    """In Kueue mode a pipeline step's attempt is no workload of Capstan's queue: what Kueue said about it."""
    from capstan.cli.context import cli_services
    from capstan.troubleshoot.sources import step_kueue_why

    return step_kueue_why(cli_services().events, workload_id)


@click.command("usage")
@click.option("--by", "by", type=click.Choice(["project", "queue", "user"]), default="project", show_default=True,
              help="Group usage by project, LocalQueue or user.")
@click.option("--since", default="7d", show_default=True, help="Window: 90s, 30m, 12h, 7d or 2w.")
@click.option("--price", default=None, help="Price per resource-hour, e.g. gpu=2.5,cpu=0.05,memory=0.01.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def usage_cmd(by: str, since: str, price: str | None, as_json: bool) -> None:
    """GPU-hours, CPU-hours and memory-GB-hours from admission records (cost showback)."""
    from capstan.queue.usage import UsageRow, parse_prices, parse_since, usage_report

    try:
        prices = parse_prices(price)
        if _remote():
            params = {"by": by, "since": since, **({"price": price} if price else {})}
            rows = [UsageRow(**r) for r in _remote_get("/usage", params)["rows"]]
        else:
            mgr = _manager()
            now = mgr.clock()
            since_ms = parse_since(since, now_ms=now)
            rows = usage_report(mgr.store.usage_since(since_ms), by=by, since_ms=since_ms, now_ms=now,
                                prices=prices)
    except CapstanError as exc:
        raise _fail(exc) from None
    if as_json:
        _json([r.to_dict() for r in rows])
        return
    headers = [by.upper(), "WORKLOADS", "GPU-H", "CPU-H", "MEM-GB-H"] + (["COST"] if prices else [])
    table = _table(*headers, right=("WORKLOADS", "GPU-H", "CPU-H", "MEM-GB-H", "COST"))
    for r in rows:
        cells = [r.key, str(r.workloads), f"{r.gpu_hours:.2f}", f"{r.cpu_hours:.2f}", f"{r.memory_gb_hours:.2f}"]
        if prices:
            cells.append(f"{r.cost or 0.0:.2f}")
        table.add_row(*cells)
    if not rows:
        click.echo(f"no usage since {since}")
        return
    _echo_table(table)


class _PolicyOption(click.Option):
    """``--policy``: its help lists the simulator's policy registry, read only when help is shown (the simulator
    is not imported for other commands)."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from capstan.queue.simulate import POLICIES

        self.help = f"{', '.join(POLICIES)} or all (repeatable)."
        return super().get_help_record(ctx)


@click.command("simulate")
@click.option("--trace", "trace_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Job trace CSV (job_id, submit_time_s, duration_s, num_gpus, cluster).")
@click.option("--cluster", "cluster_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Queue configuration YAML; each trace cluster is a LocalQueue of it.")
@click.option("--policy", "policies", cls=_PolicyOption, multiple=True, default=("all",), show_default=True,
              help="A simulator policy or all (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Replay only the first N jobs.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array with one object per policy.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write utilisation, JCT CDF, queue-length and measures PNGs here.")
@click.option("--per-queue", is_flag=True, help="Also print each policy's measures per ClusterQueue (text output).")
def simulate_cmd(trace_path: Path, cluster_path: Path, policies: tuple[str, ...], limit: int | None, as_json: bool,
                 plot_dir: Path | None, per_queue: bool) -> None:
    """Replay a job trace in virtual time through the admission engine and compare policies."""
    from capstan.queue.config import load_config, load_yaml
    from capstan.queue.simulate import POLICIES, replay, sim_settings
    from capstan.queue.trace import read_trace

    names: list[str] = []
    for p in policies:
        for name in (POLICIES if p == "all" else [p]):
            if name not in POLICIES:
                raise click.UsageError(f"--policy: unknown policy {name!r} (choose from {', '.join(POLICIES)}, all)")
            if name not in names:
                names.append(name)
    try:
        if plot_dir is not None:
            from capstan.queue.plots import require_matplotlib

            require_matplotlib()  # before the replay, which may take minutes
        config = load_config(cluster_path)
        settings = sim_settings(load_yaml(cluster_path.read_text(encoding="utf-8")).get("simulation"))
        jobs = read_trace(trace_path, limit=limit)
        results = []
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), transient=True, disable=as_json,
                      console=Console(stderr=True)) as progress:
            for name in names:
                task = progress.add_task(f"replaying {name}", total=len(jobs))

                def tick(done: int, task_id: Any = task) -> None:
                    if done % 500 == 0 or done == len(jobs):
                        progress.update(task_id, completed=done)

                results.append(replay(config, jobs, POLICIES[name], settings, progress=tick))
                progress.update(task, completed=len(jobs))
        if plot_dir is not None:
            from capstan.queue.plots import write_plots

            written = write_plots(results, plot_dir)
    except CapstanError as exc:
        raise _fail(exc) from None
    if as_json:
        _json([r.summary() for r in results])
        return
    table = _table("POLICY", "ORACLE", "JOBS", "AVG JCT", "P50 JCT", "P99 JCT", "AVG WAIT", "P99 WAIT", "MAX WAIT",
                   "SLOWDOWN", "MAKESPAN", "GPU UTIL", "JAIN", "PREEMPT", "WASTED GPU-H", "WASTED", "WALL",
                   right=("JOBS", "AVG JCT", "P50 JCT", "P99 JCT", "AVG WAIT", "P99 WAIT", "MAX WAIT", "SLOWDOWN",
                          "MAKESPAN", "GPU UTIL", "JAIN", "PREEMPT", "WASTED GPU-H", "WASTED", "WALL"))
    for r in results:
        table.add_row(r.policy, "yes" if r.oracle else "no", str(r.jobs), _dur(r.avg_jct_s), _dur(r.p50_jct_s),
                      _dur(r.p99_jct_s), _dur(r.avg_wait_s), _dur(r.p99_wait_s), _dur(r.max_wait_s),
                      f"{r.avg_slowdown:.2f}", _dur(r.makespan_s), f"{r.gpu_utilization:.1%}",
                      f"{r.jain_fairness:.3f}", str(r.preemptions), f"{r.wasted_gpu_hours:.0f}",
                      f"{r.wasted_fraction:.2%}", f"{r.wall_s:.1f}s")
    _echo_table(table)
    if any(r.partial_admissions for r in results):
        click.echo("partial admissions: " + ", ".join(f"{r.policy} {r.partial_admissions}" for r in results))
    by_name = {r.policy: r for r in results}
    for base in ("strict-fifo", "best-effort-fifo"):
        if base in by_name and by_name[base].avg_jct_s:
            ratios = ", ".join(f"{r.policy} {r.avg_jct_s / by_name[base].avg_jct_s:.2f}x"
                               for r in results if r.policy != base)
            if ratios:
                click.echo(f"avg JCT vs {base}: {ratios}")
    if per_queue:
        _echo_per_queue(results)
    if plot_dir is not None:
        click.echo(f"plots: {', '.join(str(p) for p in written)}")


def _echo_per_queue(results: Sequence[SimResult]) -> None:
    table = _table("POLICY", "CLUSTER QUEUE", "JOBS", "AVG JCT", "AVG WAIT", "P99 WAIT", "MAX WAIT", "SLOWDOWN",
                   "WASTED", "SHARE/ENT",
                   right=("JOBS", "AVG JCT", "AVG WAIT", "P99 WAIT", "MAX WAIT", "SLOWDOWN", "WASTED", "SHARE/ENT"))
    for r in results:
        for name, q in r.per_queue.items():
            table.add_row(r.policy, name, f"{q['jobs']:.0f}", _dur(q["avg_jct_s"]), _dur(q["avg_wait_s"]),
                          _dur(q["p99_wait_s"]), _dur(q["max_wait_s"]), f"{q['avg_slowdown']:.2f}",
                          f"{q['wasted_fraction']:.2%}", f"{q['share_over_entitlement']:.2f}")
    _echo_table(table)


def _dur(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f}d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.1f}m"
    return f"{seconds:.0f}s"


def register(cli: click.Group) -> None:
    """Add ``queue``, ``why``, ``usage`` and ``simulate`` to the ``capstan`` command group."""
    cli.add_command(queue_group)
    cli.add_command(why_cmd)
    cli.add_command(usage_cmd)
    cli.add_command(simulate_cmd)

"""``capstan k8s render pipeline FILE[:FUNC] -o DIR``: a pipeline's steps as ``batch/v1`` Jobs, one YAML file each
(`capstan.k8s.render_pipelines`), or the whole pipeline as one Argo ``Workflow`` (``--format argo``,
`capstan.k8s.render_argo`); ``--cron`` adds a CronJob (docs/kubernetes-pipelines.md)."""

from __future__ import annotations

import dataclasses
import re
import uuid
from pathlib import Path

import click

from capstan.errors import InvalidParameterValue
from capstan.names import RUN_ID

_RUN_CHARS = re.compile(r"[^a-z0-9]+")


def _counts(values: tuple[str, ...]) -> dict[str, int]:
    counts = {}
    for value in values:
        node, _, text = value.partition("=")
        if not node or not text.isdigit() or int(text) < 1:
            raise InvalidParameterValue(f"--count: {value!r} is not STEP=N with N a positive integer")
        counts[node] = int(text)
    return counts


def _worker_ref(target: str, canonical: str) -> str:
    """The reference as the user gave it (relative paths stay relative, for the image's working directory), with
    the pipeline's attribute name filled in."""
    file, sep, _ = target.rpartition(":")
    if sep and not (len(file) == 1 and file.isalpha()):
        return target
    return f"{target}:{canonical.rpartition(':')[2]}"


def _run_id(given: str | None, fmt: str, pipeline: str) -> str:
    """The run id the step pods report under: the one given, the Workflow's uid (Argo fills it in per submission),
    or a new one, so two applications of different renderings never mix their steps' results."""
    if given is not None:
        if not RUN_ID.match(given):
            raise InvalidParameterValue(f"--run-id: {given!r} is not a run id (letters, digits, '.', '_', '-'; at "
                                        "most 128)")
        return given
    if fmt == "argo":
        return "{{workflow.uid}}"
    return f"{_RUN_CHARS.sub('-', pipeline.lower()).strip('-')[:40] or 'run'}-{uuid.uuid4().hex[:12]}"


def register(group: click.Group) -> None:
    """Add ``pipeline`` to the ``capstan k8s render`` group (added by `capstan.cli.k8s_render`)."""
    render = group.commands["render"]
    assert isinstance(render, click.Group)

    @render.command("pipeline")
    @click.argument("target", metavar="FILE[:FUNC]")
    @click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), metavar="DIR",
                  help="Folder to write the manifests to (created when missing).")
    @click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE",
                  help="Set a pipeline parameter (converted by its annotation); repeatable.")
    @click.option("--project", default="default", show_default=True, help="Project, i.e. the Jobs' namespace.")
    @click.option("--image", default=None, help="Image of steps that name none (default: the runtime image).")
    @click.option("--queues", "queues_file", type=click.Path(path_type=Path), default=None, metavar="CONFIG",
                  help="Queue configuration that steps' queue, priority class and gpu_flavor are checked against.")
    @click.option("--count", "counts", multiple=True, metavar="STEP=N",
                  help="Item count of a map over another step's output; repeatable.")
    @click.option("--ttl", default=3600, show_default=True, type=click.IntRange(min=0),
                  help="Seconds a finished Job is kept (ttlSecondsAfterFinished).")
    @click.option("--env-from-secret", "env_from", multiple=True, metavar="SECRET",
                  help="Secret whose keys every step sees as environment variables (envFrom); repeatable.")
    @click.option("--dataset", "datasets", multiple=True, metavar="NAME:/PATH[:ro|rw]",
                  help="Mount dataset NAME (its PersistentVolumeClaim) in every step at PATH, read-only unless "
                       ":rw; repeatable.")
    @click.option("--format", "fmt", type=click.Choice(["native", "argo"]), default="native", show_default=True,
                  help="One batch/v1 Job per step, or the whole pipeline as one Argo Workflow (DAG).")
    @click.option("--argo-executor-sa", default="capstan-argo-executor", show_default=True, metavar="NAME",
                  help="ServiceAccount of Argo's executor (rendered with its Role and RoleBinding; --format argo).")
    @click.option("--cron", default=None, metavar="EXPR",
                  help='Also render a CronJob that starts a run on this UTC cron schedule, e.g. "0 3 * * *".')
    @click.option("--catchup", is_flag=True, help="With --cron: start a missed slot however late (no deadline).")
    @click.option("--run-id", default=None, metavar="RUN_ID",
                  help="The pipeline run the step pods report to [default: native: a new id per rendering; "
                       "argo: the Workflow's uid].")
    @click.option("--ship-code", is_flag=True,
                  help="Upload the pipeline's folder to the artifact store (CAPSTAN_ARTIFACTS: the cluster's) as a "
                       "content-addressed package the pods download, instead of running code baked into --image.")
    def pipeline(target: str, out: Path, params: tuple[str, ...], project: str, image: str | None,
                 queues_file: Path | None, counts: tuple[str, ...], ttl: int, env_from: tuple[str, ...],
                 datasets: tuple[str, ...], fmt: str, argo_executor_sa: str, cron: str | None,
                 catchup: bool, run_id: str | None, ship_code: bool) -> None:
        """Render a pipeline (FILE.py, its only @pipeline, or FILE.py:FUNC) to one batch/v1 Job per step, in
        DAG order (chunks and maps become indexed Jobs), or with --format argo to one Argo Workflow whose DAG has
        a task per step. Each pod runs ``capstan worker run-step`` in the step's image."""
        from capstan.cli.k8s_render import write_manifests
        from capstan.k8s.pipeline_jobs import step_jobs
        from capstan.k8s.render_datasets import check_mounts, parse_mount
        from capstan.k8s.render_pipelines import DEFAULT_IMAGE, CronSchedule, JobOptions, render_pipeline_jobs
        from capstan.pipelines.loader import load_pipeline
        from capstan.pipelines.params import parse_assignments

        given = parse_assignments(params)
        by_count = _counts(counts)
        claims = check_mounts([parse_mount(text) for text in datasets])
        if catchup and cron is None:
            raise InvalidParameterValue("--catchup: only a schedule catches up; give --cron too")
        if cron is not None and fmt == "argo":
            raise InvalidParameterValue("--cron: a scheduled Argo export would be a CronWorkflow, which is not "
                                        "rendered; schedule the native rendering (--format native)")
        pipe, canonical = load_pipeline(target)
        graph = pipe.build(given)
        config = None
        if queues_file is not None:
            from capstan.queue.config import load_config

            config = load_config(queues_file)
        options = JobOptions(project=project, image=image or DEFAULT_IMAGE, ttl_seconds=ttl, queue_config=config,
                             env_from_secrets=env_from, claims=claims)
        ref, code = _worker_ref(target, canonical), None
        if ship_code:
            from capstan.cli.context import cli_services
            from capstan.pipelines.code_package import ship_pipeline

            code, ref = ship_pipeline(cli_services().artifacts, canonical)
        run = _run_id(run_id, fmt, graph.pipeline.name)
        steps = [dataclasses.replace(s, run_id=run, code=code) for s in step_jobs(graph, ref, by_count, given)]
        if fmt == "argo":
            from capstan.k8s.render_argo import ArgoOptions, render_workflow

            objects = render_workflow(steps, options, ArgoOptions(executor_account=argo_executor_sa))
            written = write_manifests(objects, out)
            click.echo(f"wrote {len(written)} object(s) to {out}: Workflow {objects[-1]['metadata']['name']} "
                       f"and its executor's ServiceAccount, Role, RoleBinding and token Secret")
            return
        objects = render_pipeline_jobs(steps, options)
        if cron is not None:
            from capstan.k8s.render_pipelines import render_cron_job
            from capstan.pipelines.schedules import check_cron

            schedule = CronSchedule(graph.pipeline.name, _worker_ref(target, canonical), check_cron(cron), given,
                                    catchup=catchup)
            objects.append(render_cron_job(schedule, options))
        written = write_manifests(objects, out)
        click.echo(f"wrote {len(written)} Job(s) to {out}" if cron is None
                   else f"wrote {len(written) - 1} Job(s) and 1 CronJob to {out}")

"""``capstan k8s render pipeline FILE[:FUNC] -o DIR``: a pipeline's steps as ``batch/v1`` Jobs, one YAML file each
(`capstan.k8s.render_pipelines`, docs/kubernetes-pipelines.md)."""

from __future__ import annotations

from pathlib import Path

import click

from capstan.errors import InvalidParameterValue


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
    def pipeline(target: str, out: Path, params: tuple[str, ...], project: str, image: str | None,
                 queues_file: Path | None, counts: tuple[str, ...], ttl: int, env_from: tuple[str, ...]) -> None:
        """Render a pipeline (FILE.py, its only @pipeline, or FILE.py:FUNC) to one batch/v1 Job per step, in
        DAG order: chunks and maps become indexed Jobs. Each pod runs ``capstan worker run-step`` in the step's
        image."""
        from capstan.cli.k8s_render import write_manifests
        from capstan.k8s.pipeline_jobs import step_jobs
        from capstan.k8s.render_pipelines import DEFAULT_IMAGE, JobOptions, render_pipeline_jobs
        from capstan.pipelines.loader import load_pipeline
        from capstan.pipelines.params import parse_assignments

        given = parse_assignments(params)
        by_count = _counts(counts)
        pipe, canonical = load_pipeline(target)
        graph = pipe.build(given)
        config = None
        if queues_file is not None:
            from capstan.queue.config import load_config

            config = load_config(queues_file)
        options = JobOptions(project=project, image=image or DEFAULT_IMAGE, ttl_seconds=ttl, queue_config=config,
                             env_from_secrets=env_from)
        jobs = render_pipeline_jobs(step_jobs(graph, _worker_ref(target, canonical), by_count, given), options)
        written = write_manifests(jobs, out)
        click.echo(f"wrote {len(written)} Job(s) to {out}")

"""``capstan worker``: what Capstan's pods run on a cluster.

- ``run-step``: one attempt of a pipeline step (`capstan.pipelines.remote_step`). Bad input is one ``error:`` line
  and exit status 2, which the rendered Job's ``podFailurePolicy`` fails at once on; a step that fails exits with
  its own status (1 for an exception), or 2 when a retry cannot fix it.
- ``run-code``: any command, run from a code package (`capstan.pipelines.code_package`) downloaded from the
  artifact store, the way a training job's pods get the user's script (`capstan.k8s.training_launcher`). The
  command replaces the process (``exec``), so signals and the exit status are its own; a missing or corrupt
  package, or no command, is one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from capstan.errors import InvalidParameterValue, ResourceDoesNotExist
from capstan.names import RUN_ID

if TYPE_CHECKING:
    from capstan.pipelines.graph import Graph
    from capstan.pipelines.remote_step import PodStep
    from capstan.services import Services



def _env_index(name: str) -> int | None:
    """``CHUNK_INDEX``/``CHUNK_COUNT`` as set by an indexed Job (not Capstan settings: Kubernetes sets them)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    if not text.isdigit():
        raise click.UsageError(f"{name}: {text!r} is not a non-negative integer")
    return int(text)


def _load_graph(ref: str, params: tuple[str, ...]) -> Graph:
    from capstan.pipelines.loader import load_pipeline
    from capstan.pipelines.params import parse_assignments

    pipe, _canonical = load_pipeline(ref)
    graph: Graph = pipe.build(parse_assignments(params))
    return graph


def _prepare(services: Services, ref: str, params: tuple[str, ...], node: str, run_id: str, code: str | None,
             attempt: int | None, workdir: Path) -> PodStep:
    """Fetch the code package (into ``workdir/code``, made the working directory) and build the pod's step."""
    from capstan.pipelines.code_package import fetch_package
    from capstan.pipelines.remote_step import PodStep, recorded_outputs

    if code is not None:
        os.chdir(fetch_package(services.artifacts, code, workdir / "code"))
    graph = _load_graph(ref, params)
    project = services.settings.project
    return PodStep(graph, run_id, node, project, chunk_index=_env_index("CHUNK_INDEX"),
                   chunk_count=_env_index("CHUNK_COUNT"), attempt=attempt,
                   recorded=recorded_outputs(services.engine, run_id, project))


def _unpack(code: str) -> Path:
    """Download and unpack the package ``code`` into a new folder of the temporary directory (a pod's ``/tmp``
    ``emptyDir``; it goes away with the pod). Bad input is a `click.UsageError` (exit status 2)."""
    from capstan.cli.context import cli_settings
    from capstan.pipelines.code_package import fetch_package, parse_ref
    from capstan.services import Services

    try:
        parse_ref(code)  # before opening the stores: a malformed reference needs no database
        services = Services.open(cli_settings(), migrate=False)  # the server migrates; pods start in parallel
        try:
            return fetch_package(services.artifacts, code, Path(tempfile.mkdtemp(prefix="capstan-code-")))
        finally:
            services.close()
    except (InvalidParameterValue, ResourceDoesNotExist) as exc:
        raise click.UsageError(exc.message) from None


def register(cli: click.Group) -> None:
    """Add the ``worker`` group."""

    @cli.group("worker")
    def worker() -> None:
        """Run Capstan work inside a cluster pod (what rendered Kubernetes Jobs run)."""

    @worker.command("run-step")
    @click.option("--pipeline", "ref", required=True, metavar="FILE[:FUNC]",
                  help="The pipeline, relative to the code package (or to the working directory without --code).")
    @click.option("--node", required=True, help="The step's node id in the pipeline's DAG.")
    @click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE",
                  help="The run's pipeline parameters, as given to `capstan run`; repeatable.")
    @click.option("--run", "run_id", default=None, metavar="RUN_ID",
                  help="The pipeline run this attempt belongs to (default: CAPSTAN_RUN_ID with CAPSTAN_STEP).")
    @click.option("--code", default=None, metavar="sha256:HEX",
                  help="Content-addressed code package to download from the artifact store and run from "
                       "(default: the code in the image's working directory).")
    @click.option("--attempt", type=click.IntRange(min=1), default=None,
                  help="Attempt number (default: one more than the attempts stored for the step).")
    def run_step(ref: str, node: str, params: tuple[str, ...], run_id: str | None, code: str | None,
                 attempt: int | None) -> None:
        """Run one attempt of one pipeline step in this process: download the code package and the step's inputs
        from the artifact store, run the step (the CHUNK_INDEX-th item of a map), upload its output, log and
        outcome, and record its start and end as events. Exit status: 0 on success, 2 for bad input or a failure
        a retry cannot fix, else the step's own (1 for an exception)."""
        from capstan.cli.context import cli_settings
        from capstan.pipelines.remote_step import StepUsageError, exit_status, run_pod_step
        from capstan.services import Services

        run_id = run_id or cli_settings().pipeline_run_id
        if not run_id:
            raise click.UsageError("no run id: pass --run RUN_ID (or set CAPSTAN_RUN_ID and CAPSTAN_STEP)")
        if not RUN_ID.match(run_id):
            raise click.UsageError(f"--run: {run_id!r} is not a run id (letters, digits, '.', '_', '-')")
        services = Services.open(cli_settings(), migrate=False)  # the server migrates; pods start in parallel
        workdir = Path(tempfile.mkdtemp(prefix="capstan-step-"))
        try:
            try:
                pod = _prepare(services, ref, params, node, run_id, code, attempt, workdir)
                task, outcome = run_pod_step(pod, services.settings, services.artifacts, services.events, workdir,
                                             pod_name=socket.gethostname())
            except (StepUsageError, InvalidParameterValue, ResourceDoesNotExist) as exc:
                raise click.UsageError(exc.message) from None
        finally:
            os.chdir("/")
            shutil.rmtree(workdir, ignore_errors=True)
        where = f"step {task.step_id!r} attempt {task.attempt} of run {run_id}"
        if outcome.ok:
            click.echo(f"{where} succeeded", err=True)
        else:
            click.echo(f"error: {where} failed: {outcome.reason}: {outcome.message}", err=True)
        sys.exit(exit_status(outcome))

    @worker.command("run-code", context_settings={"allow_interspersed_args": False})
    @click.option("--code", required=True, metavar="sha256:HEX",
                  help="Content-addressed code package to download from the artifact store and run from.")
    @click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="-- CMD [ARGS...]")
    def run_code(code: str, command: tuple[str, ...]) -> None:
        """Download the code package, unpack it into a temporary folder, make that the working directory and run
        CMD there in place of this process: its signals and exit status are CMD's own. Exit status 2 for a
        missing or corrupt package or no command, 127 when CMD cannot be found."""
        if not command:
            raise click.UsageError("no command: name it after --, e.g. capstan worker run-code --code sha256:HEX "
                                   "-- python train.py")
        os.chdir(_unpack(code))
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execvp(command[0], list(command))
        except OSError as exc:
            click.echo(f"error: {command[0]}: {exc.strerror or exc}", err=True)
            sys.exit(127)

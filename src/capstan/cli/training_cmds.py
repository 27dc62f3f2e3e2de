"""``capstan train`` and ``capstan jobs ...``: distributed training jobs from the command line.

``capstan train SCRIPT_OR_MODULE -- ARGS`` builds a `capstan.training.spec.TrainingJobSpec` from its options (a bad
one is one ``error: --workers: ...`` line), submits it and runs it in the foreground in this process (with
``CAPSTAN_URL`` the server runs it and this command follows it). Either way it prints one line per state change or
restart and streams rank 0's output prefixed with ``[rank 0]``; Ctrl-C cancels the job and waits until its workers
have stopped. The exit status is 0 when the job succeeded, 1 otherwise (with a one-line reason).

``capstan jobs list|show|logs|cancel`` read and change jobs in the local store or, with ``CAPSTAN_URL``, through
``/api/v1/jobs``. ``capstan logs JOB --worker N`` and ``capstan why JOB`` (commands shared with pipelines and the
queue) call `print_job_logs` and `job_why` here.
"""

from __future__ import annotations

import json
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from capstan.cli.context import cli_settings
from capstan.errors import CapstanError, InvalidParameterValue, ResourceDoesNotExist

if TYPE_CHECKING:
    from capstan.services import Services
    from capstan.training.ports import JobRecord
    from capstan.training.spec import TrainingJobSpec

API = "/api/v1/jobs"
JOB_STATES = ("Pending", "Running", "Restarting", "Succeeded", "Failed", "Cancelled")
JOB_ID = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?-[0-9a-f]{6}$")
"""A job id: ``<name>-<6 hex>``."""
TERMINAL = frozenset({"Succeeded", "Failed", "Cancelled"})
POLL_S = 0.25
"""How often a foreground job and ``--follow`` look for news (state, restarts, log bytes)."""


# -- transport: the server's API, or the local stores ----------------------------------------------------------------
def _remote() -> bool:
    return bool(cli_settings().url)


@dataclass(frozen=True, slots=True)
class _Answer:
    body: bytes
    headers: Mapping[str, str]


def _request(method: str, path: str, **kwargs: Any) -> _Answer:
    """Call ``CAPSTAN_URL``'s jobs API with ``CAPSTAN_TOKEN`` and ``CAPSTAN_PROJECT``; errors become the typed
    errors the server named."""
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
    if resp.status_code >= 400:
        try:
            body = resp.json()
        except ValueError:
            raise click.ClickException(f"{settings.url} answered {resp.status_code}: {resp.text[:200]}") from None
        raise error_from_body(str(body.get("error_code", "")), str(body.get("message", resp.text[:200])),
                              resp.status_code)
    return _Answer(resp.content, resp.headers)


def _http(method: str, path: str, **kwargs: Any) -> Any:
    """A JSON answer of the jobs API."""
    return json.loads(_request(method, path, **kwargs).body)


def _services() -> Services:
    from capstan.cli.context import cli_services

    return cli_services()


def _echo_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, default=str))


# -- the spec from the options of `capstan train` --------------------------------------------------------------------
_OPTION_OF = {"name": "--name", "entry": "SCRIPT_OR_MODULE", "entry_kind": "SCRIPT_OR_MODULE", "args": "ARGS",
              "working_dir": "the working directory", "nproc_per_worker": "--nproc-per-worker",
              "gpu_flavor": "--gpu-flavor", "max_restarts": "--max-restarts", "log_all_ranks": "--log-all-ranks"}
_FIELD = re.compile(r"^job\.([a-z_]+)((?:\.[A-Za-z0-9_]+|\[\d+\])*): ")


def option_message(message: str) -> str:
    """A spec error (``job.workers: ...``) in the words of ``capstan train``'s options (``--workers: ...``)."""
    match = _FIELD.match(message)
    if not match:
        return message
    field, rest = match.group(1), match.group(2)
    option = _OPTION_OF.get(field, "--" + field.replace("_", "-"))
    if field == "env" and rest.startswith("."):
        option = f"--env {rest[1:]}"
    return f"{option}: {message[match.end():]}"


def default_name(entry: str) -> str:
    """A job name from its entry point: ``scripts/train_mnist.py`` → ``train-mnist``, ``pkg.train`` → ``train``."""
    stem = Path(entry).stem if entry.endswith(".py") or "/" in entry else entry.rsplit(".", 1)[-1]
    name = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")[:50].strip("-")
    return name or "job"


def parse_env(values: Sequence[str]) -> dict[str, str]:
    """``--env KEY=VALUE`` options as a mapping (the spec checks the names)."""
    out: dict[str, str] = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise InvalidParameterValue(f"--env: expected KEY=VALUE, got {value!r}")
        out[key] = item
    return out



def gang_options(*, name_help: str = "Job name (default: from the script or module).",
                 memory_example: str = "4Gi", gpus_help: str = "GPUs per worker (a fraction below 1).",
                 restarts_help: str = "Restarts of the whole gang after a failure (preemption does not count).",
                 queue_help: str = "LocalQueue to submit to.") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options every command that describes a gang shares (``train``, ``finetune``, ``k8s render job``):
    --name, --workers, --nproc-per-worker, --cpu, --memory, --gpus, --gpu-flavor, --max-restarts, --experiment,
    --queue, --priority and --env, in that order; the help texts that differ between them are parameters."""
    options = [
        click.option("--name", help=name_help),
        click.option("--workers", default=1, show_default=True, type=int, help="Workers (pods) in the gang."),
        click.option("--nproc-per-worker", default=1, show_default=True, type=int, help="Processes per worker."),
        click.option("--cpu", default=1.0, show_default=True, type=float, help="CPU cores per worker."),
        click.option("--memory", help=f"Memory per worker (Kubernetes quantity, e.g. {memory_example})."),
        click.option("--gpus", default=0.0, show_default=True, type=float, help=gpus_help),
        click.option("--gpu-flavor", help="GPU model, e.g. a100."),
        click.option("--max-restarts", default=0, show_default=True, type=int, help=restarts_help),
        click.option("--experiment", help="Tracking experiment of the job's run."),
        click.option("--queue", help=queue_help),
        click.option("--priority", help="WorkloadPriorityClass name."),
        click.option("--env", "env", multiple=True, metavar="KEY=VALUE",
                     help="Environment for every worker; repeatable."),
    ]

    def apply(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


def build_spec(entry: str, args: Sequence[str], *, name: str | None = None, workers: int = 1,
               nproc_per_worker: int = 1, cpu: float = 1.0, memory: str | None = None, gpus: float = 0.0,
               gpu_flavor: str | None = None, max_restarts: int = 0, experiment: str | None = None,
               queue: str | None = None, priority: str | None = None, env: Sequence[str] = (),
               log_all_ranks: bool = False, working_dir: str | None = None,
               image: str | None = None, min_workers: int | None = None) -> TrainingJobSpec:
    """The checked spec of ``capstan train``; `InvalidParameterValue` names the option (``--workers: ...``)."""
    from capstan.training.spec import parse_job_spec

    data: dict[str, Any] = {
        "name": name or default_name(entry), "entry": entry, "args": list(args), "workers": workers,
        "nproc_per_worker": nproc_per_worker, "cpu": cpu, "memory": memory, "gpus": gpus, "gpu_flavor": gpu_flavor,
        "max_restarts": max_restarts, "experiment": experiment, "queue": queue, "priority": priority,
        "env": parse_env(env), "log_all_ranks": log_all_ranks, "working_dir": working_dir or os.getcwd(),
        "image": image}
    if min_workers is not None:
        data["min_workers"] = min_workers
    try:
        return parse_job_spec(data)
    except InvalidParameterValue as exc:
        raise InvalidParameterValue(option_message(exc.message)) from None


# -- reading jobs as JSON (the same for the local store and the API) --------------------------------------------------
def _local_record(job_id: str) -> JobRecord:
    record = _services().jobs.get(job_id)
    if record is None:
        raise ResourceDoesNotExist(f"job {job_id!r} does not exist")
    return record


def job_data(job_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The job and its attempts, as ``GET /api/v1/jobs/ID`` gives them."""
    if _remote():
        data = _http("GET", f"/{job_id}")
        return data["job"], data["attempts"]
    from capstan.training.job_views import attempt_json, job_json

    record = _local_record(job_id)
    return job_json(record), [attempt_json(a) for a in _services().jobs.attempts(record.id)]


def _list_data(states: Sequence[str], limit: int) -> list[dict[str, Any]]:
    if _remote():
        return list(_http("GET", "", params={"state": list(states), "max_results": limit})["jobs"])
    from capstan.training.job_views import job_json

    records = _services().jobs.list(project=cli_settings().project, states=states, limit=limit)
    return [job_json(r) for r in records]


def _cancel(job_id: str) -> dict[str, Any]:
    if _remote():
        return dict(_http("POST", f"/{job_id}/cancel")["job"])
    from capstan.training.job_views import job_json

    _local_record(job_id)
    record = _services().jobs.request_cancel(job_id)
    assert record is not None  # it existed a moment ago, and jobs are never deleted
    return job_json(record)


def job_why(job_id: str) -> dict[str, Any] | None:
    """``capstan why JOB``'s explanation (JSON with ``text``), or None when no job has that id (so the caller can
    explain a queue workload of that name instead)."""
    if not JOB_ID.match(job_id):
        return None
    if _remote():
        try:
            return dict(_http("GET", f"/{job_id}/why"))
        except CapstanError as exc:
            if exc.http_status == 404:  # no such job (or a server without jobs): maybe a workload
                return None
            raise
    from capstan.training.job_views import attempt_json, explain_job, job_json

    services = _services()
    record = services.jobs.get(job_id)
    if record is None:
        return None
    queue, queue_text = None, None
    if record.state == "Pending" and record.workload:
        from capstan.queue.manager import QueueManager

        try:
            explanation = QueueManager(services.queue.get(), clock=services.clock,
                                       events=services.events).why(record.workload)
            queue, queue_text = explanation.to_dict(), explanation.render()
        except CapstanError:  # the workload has left the queue: explain the job alone
            pass
    kueue = None
    if record.state == "Pending":  # Kueue mode: why Kueue keeps its Job suspended
        from capstan.troubleshoot.sources import recorded_kueue

        kueue = recorded_kueue(services.events, "job", record.id)
    return explain_job(job_json(record), [attempt_json(a) for a in services.jobs.attempts(record.id)],
                       queue=queue, queue_text=queue_text, kueue=kueue.to_dict() if kueue is not None else None)


def is_job(job_id: str) -> bool:
    """Whether ``job_id`` names a training job (locally, or on the server)."""
    if not JOB_ID.match(job_id):
        return False
    if _remote():
        try:
            _http("GET", f"/{job_id}")
        except CapstanError as exc:
            if exc.http_status == 404:
                return False
            raise
        return True
    return _services().jobs.get(job_id) is not None


# -- logs ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LogChunk:
    """Lines of a worker's log read in one step: the text, its attempt (0 before the first), the cursor to read on
    from and the job's state when they were read (once it has ended, nothing was left behind)."""

    text: str
    attempt: int
    cursor: str
    state: str


def read_log(job_id: str, *, worker: int, attempt: int | None = None, rank: int | None = None,
             cursor: str | None = None, prefix: bool | None = None) -> LogChunk:
    """What ``worker`` (only ``rank`` when given) wrote in ``attempt`` (the latest when None) since ``cursor``.
    Lines carry their rank when the worker runs several processes (or as ``prefix`` says)."""
    if _remote():
        params: dict[str, Any] = {"worker": worker}
        for key, value in (("attempt", attempt), ("rank", rank), ("cursor", cursor), ("prefix", prefix)):
            if value is not None:
                params[key] = value
        answer = _request("GET", f"/{job_id}/logs", params=params)
        return LogChunk(answer.body.decode(errors="replace"), int(answer.headers.get("x-capstan-attempt", "0")),
                        answer.headers.get("x-capstan-log-cursor", ""), answer.headers.get("x-capstan-job-state", ""))
    from capstan.training.job_logs import check_worker, read_since, render_lines

    record = _local_record(job_id)
    check_worker(record.id, record.spec, worker, rank)
    read = read_since(cli_settings().home, record.id, worker=worker, attempt=attempt, rank=rank, cursor=cursor,
                      final=record.done)
    shown = render_lines(read.lines, prefix=read.ranks > 1 if prefix is None else prefix)
    return LogChunk(shown, read.attempt, read.cursor, record.state)


def follow_log(job_id: str, *, worker: int, attempt: int | None = None, rank: int | None = None,
               prefix: bool | None = None, sleep: Callable[[float], None] = time.sleep) -> Iterator[str]:
    """Text of the worker's log as it is written (from the start), moving on to each new attempt's log, until the
    job has ended and everything was read."""
    cursor: str | None = None
    while True:
        chunk = read_log(job_id, worker=worker, attempt=attempt, rank=rank, cursor=cursor, prefix=prefix)
        moved = chunk.cursor != (cursor or "")
        cursor = chunk.cursor or None
        if chunk.text:
            yield chunk.text
        if chunk.state in TERMINAL and not moved:
            return
        if not moved:
            sleep(POLL_S)


def print_job_logs(job_id: str, *, worker: int, attempt: int | None, follow: bool) -> None:
    """``capstan logs JOB --worker N`` and ``capstan jobs logs``: a worker's output, once or as it grows."""
    if not follow:
        chunk = read_log(job_id, worker=worker, attempt=attempt)
        if chunk.attempt == 0:
            raise ResourceDoesNotExist(f"job {job_id!r} has no worker logs yet ({chunk.state.lower()}); "
                                       "use --follow to wait for them")
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
        return
    for text in follow_log(job_id, worker=worker, attempt=attempt):
        sys.stdout.write(text)
        sys.stdout.flush()


# -- tables ----------------------------------------------------------------------------------------------------------
def _table(*headers: str) -> Any:
    from capstan.cli.tables import TextTable

    return TextTable(*headers, ids=tuple(h for h in headers if h in ("JOB", "RUN ID")))


def _print(table: Any) -> None:
    from capstan.cli.tables import console

    table.print(console())


def _spec_summary(spec: Mapping[str, Any]) -> str:
    kind = "python -m " if spec.get("entry_kind") == "module" else "python "
    line = f"{kind}{spec['entry']} {' '.join(spec.get('args') or [])}".rstrip()
    least = f" (at least {spec['min_workers']})" if spec.get("min_workers") else ""
    res = [f"{spec['workers']} worker(s){least} x {spec['nproc_per_worker']} process(es)", f"cpu {spec['cpu']:g}"]
    if spec.get("memory"):
        res.append(f"memory {int(spec['memory']) // (1024 * 1024)}Mi")
    if spec.get("gpus"):
        res.append(f"gpus {spec['gpus']:g}" + (f" ({spec['gpu_flavor']})" if spec.get("gpu_flavor") else ""))
    placing = [f"{k} {spec[k]}" for k in ("queue", "priority", "experiment") if spec.get(k)]
    return "; ".join([line, ", ".join(res), *placing])


def _show(job: Mapping[str, Any], attempts: Sequence[Mapping[str, Any]]) -> None:
    from capstan.training.job_views import attempt_summary, format_ms, peak_text

    spec = job["spec"]
    click.echo(f"job {job['id']}  ({job['project']})")
    rows = [("state", job["state"] + (f" ({job['reason']})" if job.get("reason") else "")),
            ("message", job.get("message") or ""),
            ("spec", _spec_summary(spec)),
            ("restarts", f"{job['restarts']} of {spec['max_restarts']}"
                         + (f", {job['preemptions']} preemption(s)" if job.get("preemptions") else "")),
            ("run id", job.get("run_id") or "-"),
            ("workload", job.get("workload") or "-"),
            ("created", format_ms(job.get("created_ms"))), ("started", format_ms(job.get("started_ms"))),
            ("ended", format_ms(job.get("ended_ms")))]
    if job.get("cancel_requested") and job["state"] not in TERMINAL:
        rows.append(("cancel", "requested"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        if value:
            click.echo(f"  {key.ljust(width)}  {value}")
    if not attempts:
        return
    table = _table("ATTEMPT", "STARTED", "ENDED", "PORT", "PEAK MEMORY", "OUTCOME")
    for a in attempts:
        table.add_row(str(a["number"]), format_ms(a.get("started_ms")), format_ms(a.get("ended_ms")),
                      str(a.get("master_port") or ""), peak_text(a, spec), a.get("summary") or attempt_summary(a))
    click.echo("")
    _print(table)


# -- capstan train: submit, run (or follow) and report ---------------------------------------------------------------
class _Progress:
    """One line per state change and per attempt, and rank 0's output prefixed, for the foreground job."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.state = ""
        self.shown = ""
        self.attempts: dict[int, str | None] = {}
        self.cursor: str | None = None

    def update(self, job: Mapping[str, Any], attempts: Sequence[Mapping[str, Any]]) -> None:
        """Print what changed since the last call: attempts started, attempts ended (after the output rank 0 wrote
        before its end) and the job's state. ``attempts`` may be newer than ``job``: what the job has not reached
        yet waits for a later call."""
        from capstan.training.job_views import attempt_summary

        current, state = int(job.get("attempt") or 0), str(job["state"])
        for a in attempts:
            number, reason = int(a["number"]), a.get("reason")
            if number > current:
                continue
            if number not in self.attempts:
                self.attempts[number] = None
                self._say(f"attempt {number} started (master port {a.get('master_port')})")
            over = number < current or state != "Running"
            if over and reason is not None and self.attempts[number] is None:
                self.pump_logs()
                self.attempts[number] = reason
                self._say(f"attempt {number} ended: {attempt_summary(a)}")
        # A pending job's reason is news too (waiting for quota, for a preempted gang's backoff...).
        key = f"{state}/{job.get('reason') or ''}" if state == "Pending" else state
        if key != self.shown:
            if state in TERMINAL:
                self.pump_logs()
            self.state, self.shown = state, key
            detail = f" ({job['reason']}: {job['message']})" if job.get("reason") and job.get("message") else ""
            self._say(f"{state}{detail}")

    def _say(self, line: str) -> None:
        click.echo(f"job {self.job_id}: {line}", err=True)

    def pump_logs(self) -> bool:
        """Print what rank 0 wrote since the last call (each line led by ``[rank 0]``); whether everything was
        read (the job has ended and no line was left)."""
        if not self.attempts:
            return self.state in TERMINAL
        while True:
            chunk = read_log(self.job_id, worker=0, rank=0, cursor=self.cursor, prefix=True)
            moved = chunk.cursor != (self.cursor or "")
            self.cursor = chunk.cursor or None
            if chunk.text:
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
            if not moved:
                return chunk.state in TERMINAL


def _watch(job_id: str, progress: _Progress, runner_alive: Callable[[], bool] | None = None,
           changes: queue.SimpleQueue[JobRecord] | None = None) -> dict[str, Any]:
    """Report the job until it has ended and rank 0's output is all printed, or until the runner in this process
    (``runner_alive``, which puts every change of the job in ``changes``) has stopped; the last job JSON. Ctrl-C
    asks to cancel the job once, then the loop goes on until the workers have stopped."""
    from capstan.training.job_views import job_json

    cancelling = False
    while True:
        try:
            gone = runner_alive is not None and not runner_alive()  # before the read: it sees the runner's last word
            seen: list[dict[str, Any]] = []
            while changes is not None and not changes.empty():
                seen.append(job_json(changes.get()))
            job, attempts = job_data(job_id)
            for each in (*seen, job):
                progress.update(each, attempts)
            drained = progress.pump_logs()
            if (job["state"] in TERMINAL and drained and (runner_alive is None or gone)) or \
                    (gone and job["state"] not in TERMINAL):
                return job
            time.sleep(POLL_S)
        except KeyboardInterrupt:
            if not cancelling:
                cancelling = True
                click.echo(f"job {job_id}: cancelling (stopping its workers)...", err=True)
                _cancel(job_id)
            else:
                click.echo(f"job {job_id}: still stopping its workers...", err=True)


def _run_local(spec: TrainingJobSpec) -> dict[str, Any]:
    """Submit the job to the local store and run it in a thread of this process while the main thread reports
    (so Ctrl-C reaches the reporter, which asks the runner to cancel, rather than the runner itself)."""
    runner = _services().job_runner()
    try:  # held by this runner from the start: a server on the same home leaves it to us
        record = runner.submit(spec, project=cli_settings().project, user=_login(), hold=True)
    except InvalidParameterValue as exc:
        raise InvalidParameterValue(option_message(exc.message)) from None
    click.echo(f"job {record.id} submitted ({spec.workers} worker(s) x {spec.nproc_per_worker} process(es))",
               err=True)
    failure: list[BaseException] = []
    changes: queue.SimpleQueue[JobRecord] = queue.SimpleQueue()

    def run() -> None:
        try:
            runner.run(record.id, progress=changes.put)
        except BaseException as exc:  # noqa: BLE001  # handed to the main thread, which owns the exit status
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"capstan-job-{record.id}", daemon=True)
    thread.start()
    job = _watch(record.id, _Progress(record.id), thread.is_alive, changes)
    thread.join()
    if job["state"] not in TERMINAL:
        if failure:
            raise failure[0]
        raise click.ClickException(f"job {record.id}: the runner stopped while the job was {job['state']}")
    return job


def _run_remote(spec: TrainingJobSpec) -> dict[str, Any]:
    try:
        job = _http("POST", "", json=spec.to_dict())["job"]
    except InvalidParameterValue as exc:
        raise InvalidParameterValue(option_message(exc.message)) from None
    click.echo(f"job {job['id']} submitted to {cli_settings().url}", err=True)
    return _watch(job["id"], _Progress(job["id"]))


def _login() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (a container without /etc/passwd entry)
        return "unknown"


def _outcome(job: Mapping[str, Any]) -> None:
    if job["state"] == "Succeeded":
        run = f"; run {job['run_id']}" if job.get("run_id") else ""
        click.echo(f"job {job['id']} succeeded{run}", err=True)
        return
    reason = ": ".join(p for p in (job.get("reason"), job.get("message")) if p)
    raise click.ClickException(f"job {job['id']} {str(job['state']).lower()}" + (f" ({reason})" if reason else ""))


# -- commands ----------------------------------------------------------------------------------------------------------
@click.command("train", context_settings={"ignore_unknown_options": False})
@click.argument("entry", metavar="SCRIPT_OR_MODULE")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[-- ARGS...]")
@gang_options()
@click.option("--min-workers", type=int, default=None,
              help="Partial admission: start with as few as this many workers when all --workers do not fit "
                   "(WORLD_SIZE follows; default: all or nothing).")
@click.option("--log-all-ranks", is_flag=True, help="Keep every rank's capstan.log_metric calls (default: rank 0).")
@click.option("--image", help="Container image with the code, for the kubernetes backend (CAPSTAN_BACKEND).")
@click.option("--env-from-secret", "env_from", multiple=True, metavar="SECRET",
              help="Secret whose keys every pod sees as environment variables (the stores' URLs and credentials), "
                   "for the kubernetes backend; repeatable (default: CAPSTAN_KUBE_ENV_FROM).")
def train_cmd(entry: str, args: tuple[str, ...], name: str | None, workers: int, nproc_per_worker: int, cpu: float,
              memory: str | None, gpus: float, gpu_flavor: str | None, max_restarts: int, experiment: str | None,
              queue: str | None, priority: str | None, env: tuple[str, ...], min_workers: int | None,
              log_all_ranks: bool, image: str | None, env_from: tuple[str, ...]) -> None:
    """Run SCRIPT_OR_MODULE as a distributed training job (torchrun's variables in every worker).

    Arguments after `--` go to the script. Locally the job runs in the foreground; with CAPSTAN_URL the server runs
    it and this command follows it. With CAPSTAN_BACKEND=kubernetes each attempt is an indexed Job in --image
    (docs/kubernetes-training.md). Ctrl-C cancels it. Exit status 0 when it succeeded.
    """
    spec = build_spec(entry, args, name=name, workers=workers, nproc_per_worker=nproc_per_worker, cpu=cpu,
                      memory=memory, gpus=gpus, gpu_flavor=gpu_flavor, max_restarts=max_restarts,
                      experiment=experiment, queue=queue, priority=priority, env=env, log_all_ranks=log_all_ranks,
                      image=image, min_workers=min_workers)
    if env_from:
        _env_from_secrets(env_from)
    _outcome(_run_remote(spec) if _remote() else _run_local(spec))


def _env_from_secrets(names: tuple[str, ...]) -> None:
    """``--env-from-secret``: the Secrets of this invocation's training pods, in place of CAPSTAN_KUBE_ENV_FROM;
    refused where no pod of this process would see them."""
    from capstan.cli.context import override_settings
    from capstan.k8s.render_training import check_secret_names

    settings = cli_settings()
    if settings.url:
        raise InvalidParameterValue("--env-from-secret: with CAPSTAN_URL the server runs the job; its "
                                    "CAPSTAN_KUBE_ENV_FROM names the Secrets its pods see")
    if settings.backend != "kubernetes":
        raise InvalidParameterValue("--env-from-secret: only the kubernetes backend runs pods "
                                    "(CAPSTAN_BACKEND=kubernetes)")
    override_settings(kube_env_from=check_secret_names(names, "--env-from-secret"))


@click.group("jobs")
def jobs_group() -> None:
    """List, show, read the logs of and cancel training jobs."""


@jobs_group.command("list")
@click.option("--state", "states", multiple=True, type=click.Choice(JOB_STATES), help="Only jobs in this state.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(states: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Jobs of the current project, newest first."""
    from capstan.training.job_views import format_ms

    jobs = _list_data(states, limit)
    if as_json:
        _echo_json(jobs)
        return
    table = _table("JOB", "STATE", "WORKERS", "RESTARTS", "CREATED", "REASON")
    for j in jobs:
        spec = j["spec"]
        table.add_row(j["id"], j["state"], f"{spec['workers']}x{spec['nproc_per_worker']}",
                      f"{j['restarts']}/{spec['max_restarts']}", format_ms(j["created_ms"]), j.get("reason") or "")
    _print(table)


@jobs_group.command("show")
@click.argument("job_id", metavar="JOB")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show_cmd(job_id: str, as_json: bool) -> None:
    """The job's spec, state, restarts, run id and attempts with how each ended."""
    job, attempts = job_data(job_id)
    if as_json:
        _echo_json({"job": job, "attempts": attempts})
        return
    _show(job, attempts)


@jobs_group.command("logs")
@click.argument("job_id", metavar="JOB")
@click.option("--worker", default=0, show_default=True, type=click.IntRange(0), help="Worker (pod) index.")
@click.option("--attempt", type=click.IntRange(1), help="Attempt number (default: the latest).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
def logs_cmd(job_id: str, worker: int, attempt: int | None, follow: bool) -> None:
    """Print a worker's captured stdout and stderr."""
    print_job_logs(job_id, worker=worker, attempt=attempt, follow=follow)


@jobs_group.command("cancel")
@click.argument("job_id", metavar="JOB")
def cancel_cmd(job_id: str) -> None:
    """Cancel a job: its runner stops the workers (SIGTERM, grace, SIGKILL); a job not yet started ends at once."""
    job = _cancel(job_id)
    if job["state"] == "Cancelled":
        click.echo(f"job {job['id']} cancelled")
    elif job["state"] in TERMINAL:
        click.echo(f"job {job['id']} had already ended ({job['state']}); nothing to cancel")
    else:
        click.echo(f"job {job['id']}: cancel requested; its runner stops it")


def register(cli: click.Group) -> None:
    """Add ``train`` and ``jobs`` to the ``capstan`` command group."""
    cli.add_command(train_cmd)
    cli.add_command(jobs_group)

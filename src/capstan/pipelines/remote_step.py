"""One attempt of one step, run in a pod by ``capstan worker run-step`` (a Kubernetes Job's container).

A pod has no orchestrator beside it, so what a local run keeps in the orchestrator's memory and rows travels
through the shared artifact store and event log instead (decision 0735):

- **inputs**: every successful attempt writes its `OutputRef` to ``pipelines/<run>/<step>/result.json``
  (`result_path`); a step reads its upstream steps' refs there, a map's output being the list of its children's.
  Under an orchestrator (the Kubernetes executor) the outputs its step rows record come first
  (`recorded_outputs`): they include steps it took from the cache, which no pod ran;
- **the attempt**: the task is built with the orchestrator's own `capstan.pipelines.steprec.make_task` and run with
  the warm worker's `capstan.pipelines.worker.run_one` (environment, emptied log, memory request as
  ``RLIMIT_DATA``), so a step behaves in a pod as in a local worker process; ``CHUNK_INDEX`` picks the child of a
  map (an indexed Job's pod runs one item);
- **the outcome**: `Outcome.to_json` goes to ``pipelines/<run>/<step>/<attempt>/outcome.json`` (`outcome_path`,
  read back with `read_outcome` by whoever watches the Job), beside the attempt's output and ``log.txt``; the start
  and the end are events of the step (``StepPodStarted``, ``StepPodSucceeded``/``StepPodFailed``), so
  ``capstan events`` shows them;
- **logs**: the step's stdout and stderr go to the attempt's log file, which is copied to the container's own
  stdout as it grows (``kubectl logs``) and uploaded to the artifact store when the attempt ends.

Bad input (an unknown step, a map pod without ``CHUNK_INDEX``, an upstream step without a result) raises
`StepUsageError`, which the command turns into exit status 2: the Job's ``podFailurePolicy`` fails at once on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import orjson

from capstan.errors import InvalidParameterValue
from capstan.events.records import NORMAL, WARNING
from capstan.pipelines.execution import ExecContext, Outcome, Task, now_ms
from capstan.pipelines.serialize import OutputRef, list_ref, load_output, output_prefix
from capstan.pipelines.state import StepState
from capstan.pipelines.steprec import StepRec, make_task
from capstan.pipelines.storage import STEP_KIND, pipeline_event
from capstan.pipelines.worker import run_one

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from capstan.artifacts.store import ArtifactStore
    from capstan.events.ports import EventLog
    from capstan.pipelines.graph import Graph, Node
    from capstan.settings import Settings

USAGE_EXIT: Final = 2
"""Exit status of bad input and of a failure that a retry cannot fix (the Job fails without retrying)."""
TEE_INTERVAL_S: Final = 0.2


class StepUsageError(InvalidParameterValue):
    """The pod was asked for something it cannot run: wrong step, wrong index, missing upstream result."""


@dataclass(frozen=True, slots=True)
class PodStep:
    """What one pod runs: ``node`` of ``graph`` in run ``run_id``; ``chunk_index``/``chunk_count`` come from the
    indexed Job (``CHUNK_INDEX``/``CHUNK_COUNT``); ``attempt`` None means the next free number; ``recorded`` are
    the outputs the run's orchestrator recorded (`recorded_outputs`)."""

    graph: Graph
    run_id: str
    node: str
    project: str
    chunk_index: int | None = None
    chunk_count: int | None = None
    attempt: int | None = None
    recorded: Mapping[str, OutputRef] | None = None


def result_path(run_id: str, node_id: str) -> str:
    """Artifact-store path of a step's latest successful output reference."""
    return f"pipelines/{run_id}/{quote(node_id, safe='')}/result.json"


def outcome_path(run_id: str, node_id: str, attempt: int) -> str:
    """Artifact-store path of one attempt's `Outcome`."""
    return f"{output_prefix(run_id, node_id, attempt)}/outcome.json"


def read_outcome(store: ArtifactStore, run_id: str, node_id: str, attempt: int) -> Outcome | None:
    """The outcome a pod recorded for an attempt, or None when it recorded none (yet)."""
    path = outcome_path(run_id, node_id, attempt)
    if not store.exists(path):
        return None
    return Outcome.from_json(store.read_bytes(path))


def next_attempt(store: ArtifactStore, run_id: str, node_id: str) -> int:
    """One more than the highest attempt stored for the step (1 for the first)."""
    prefix = f"pipelines/{run_id}/{quote(node_id, safe='')}"
    numbers = [int(name) for item in store.list(prefix) if item.is_dir
               and (name := item.path.rsplit("/", 1)[-1]).isdigit()]
    return max(numbers, default=0) + 1


def recorded_outputs(engine: Engine, run_id: str, project: str) -> dict[str, OutputRef]:
    """The outputs of the run's succeeded and cached steps as its orchestrator recorded them; empty for a run with
    no rows (one driven by Argo or ``kubectl`` alone)."""
    from capstan.pipelines.storage import PipelineStore

    done = (StepState.SUCCEEDED.value, StepState.CACHED.value)
    return {s.step_id: s.output for s in PipelineStore(engine).steps(run_id, project)
            if s.state in done and s.output is not None}


class Upstream:
    """Output references and values of the steps of one run: the orchestrator's ``recorded`` outputs first, else
    the steps' ``result.json`` (cached)."""

    def __init__(self, store: ArtifactStore, graph: Graph, run_id: str, project: str,
                 recorded: Mapping[str, OutputRef] | None = None) -> None:
        self._store = store
        self._graph = graph
        self._run_id = run_id
        self._project = project
        self._refs: dict[str, OutputRef] = dict(recorded or {})

    def ref(self, node_id: str) -> OutputRef:
        """The output of ``node_id``: its stored reference, or the list of a map's children's."""
        if node_id not in self._refs:
            node = self._graph.nodes[node_id]
            if node.map is not None:
                count = len(self._graph.map_items(node, self.value))
                self._refs[node_id] = list_ref([self._stored(f"{node_id}[{i}]") for i in range(count)],
                                               self._project)
            else:
                self._refs[node_id] = self._stored(node_id)
        return self._refs[node_id]

    def value(self, node_id: str) -> Any:
        """The loaded output of ``node_id``."""
        return load_output(self.ref(node_id), project=self._project, store=lambda: self._store)

    def _stored(self, node_id: str) -> OutputRef:
        if node_id in self._refs:  # recorded by the orchestrator
            return self._refs[node_id]
        path = result_path(self._run_id, node_id)
        if not self._store.exists(path):
            raise StepUsageError(f"step {node_id!r} has no result in run {self._run_id} yet; its Job must succeed "
                                 "before this one starts")
        return OutputRef.from_json(orjson.loads(self._store.read_bytes(path))["output"])


def resolve_node(pod: PodStep, upstream: Upstream) -> Node:
    """The node this pod runs: the named static node, or the ``CHUNK_INDEX``-th child of a map."""
    graph = pod.graph
    node = graph.nodes.get(pod.node)
    if node is None or node.parent is not None:
        names = ", ".join(n.id for n in graph.nodes.values() if n.parent is None)
        raise StepUsageError(f"--node: pipeline {graph.pipeline.name!r} has no step {pod.node!r} (its steps: {names})")
    if node.map is None:
        return node
    if pod.chunk_index is None:
        raise StepUsageError(f"step {pod.node!r} is a map: its pods need CHUNK_INDEX (the indexed Job sets it)")
    items = graph.map_items(node, upstream.value)
    if pod.chunk_count is not None and pod.chunk_count != len(items):
        raise StepUsageError(f"CHUNK_COUNT is {pod.chunk_count} but step {pod.node!r} maps over {len(items)} item(s)")
    if not 0 <= pod.chunk_index < len(items):
        raise StepUsageError(f"CHUNK_INDEX {pod.chunk_index} is outside step {pod.node!r}'s {len(items)} item(s)")
    return graph.add_children(node, items)[pod.chunk_index]


def prepare_task(pod: PodStep, store: ArtifactStore, workdir: Path) -> Task:
    """The `Task` of this pod's attempt, as the orchestrator would send it to a worker process."""
    upstream = Upstream(store, pod.graph, pod.run_id, pod.project, pod.recorded)
    node = resolve_node(pod, upstream)
    recs = {dep: StepRec(pod.graph.nodes[dep], StepState.SUCCEEDED, output=upstream.ref(dep)) for dep in node.refs()}
    attempt = pod.attempt if pod.attempt is not None else next_attempt(store, pod.run_id, node.id)
    rec = StepRec(node, StepState.PENDING)
    task = make_task(pod.run_id, pod.project, str(workdir), rec, recs, None, attempt=attempt,
                     log=str(workdir / "step.log"))
    # A pod is a process of its own, whatever the step's local isolation: its output is this process's fd 1.
    return dataclasses.replace(task, isolation="process")


def record(store: ArtifactStore, events: EventLog, task: Task, outcome: Outcome, *, pod: str) -> None:
    """Store the outcome (and, on success, the step's result for its successors) and log the end as an event."""
    store.put_bytes(outcome_path(task.run_id, task.step_id, task.attempt), outcome.to_json())
    data: dict[str, object] = {"attempt": task.attempt, "pod": pod, "exit_code": outcome.exit_code,
                               "log_path": outcome.log_path}
    if outcome.ok and outcome.output is not None:
        body = {"output": outcome.output.to_json(), "attempt": task.attempt}
        store.put_bytes(result_path(task.run_id, task.step_id), orjson.dumps(body))
        event = pipeline_event(outcome.finished_at, task.project, STEP_KIND, f"{task.run_id}/{task.step_id}",
                               "StepPodSucceeded", f"attempt {task.attempt} succeeded in pod {pod}", data=data)
    else:
        event = pipeline_event(outcome.finished_at, task.project, STEP_KIND, f"{task.run_id}/{task.step_id}",
                               "StepPodFailed", f"attempt {task.attempt} failed in pod {pod}: {outcome.reason}: "
                               f"{outcome.message}"[:4000], type=WARNING, data=data)
    events.append_many([event])


def exit_status(outcome: Outcome) -> int:
    """The pod's exit status: 0 on success, `USAGE_EXIT` for a failure no retry can fix, else the attempt's code
    (1 when it has none, or when it is 2, which would read as a usage error)."""
    if outcome.ok:
        return 0
    if not outcome.retryable:
        return USAGE_EXIT
    code = outcome.exit_code or 1
    return 1 if code == USAGE_EXIT or not 0 < code < 256 else code


class _Tee:
    """Copies what is appended to the attempt's log file to the container's stdout, as it grows."""

    def __init__(self, path: str, fd: int) -> None:
        self._path = path
        self._fd = fd
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capstan-log-tee", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with open(self._path, "rb") as fh:
            while not self._stop.wait(TEE_INTERVAL_S):
                self._pump(fh)
            self._pump(fh)

    def _pump(self, fh: Any) -> None:
        if os.fstat(fh.fileno()).st_size < fh.tell():
            fh.seek(0)  # the worker emptied the log before the attempt
        while chunk := fh.read(65536):
            os.write(self._fd, chunk)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def step_output(log_path: str) -> Iterator[None]:
    """While open, this process's fd 1 and 2 write to ``log_path`` (as in a warm worker), and everything written
    there is copied to the original stdout."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = os.dup(1), os.dup(2)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    tee = _Tee(log_path, saved[0])
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        tee.close()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def run_pod_step(pod: PodStep, settings: Settings, store: ArtifactStore, events: EventLog, workdir: Path, *,
                 pod_name: str, env: Mapping[str, str] | None = None) -> tuple[Task, Outcome]:
    """Prepare, run and record one attempt; returns the task and its outcome. `StepUsageError` (before anything
    ran) for bad input."""
    task = prepare_task(pod, store, workdir)
    if env:
        task = dataclasses.replace(task, env={**task.env, **env})
    start = pipeline_event(now_ms(), task.project, STEP_KIND, f"{task.run_id}/{task.step_id}", "StepPodStarted",
                           f"attempt {task.attempt} started in pod {pod_name}", type=NORMAL,
                           data={"attempt": task.attempt, "pod": pod_name})
    events.append_many([start])
    with step_output(task.live_log):
        outcome = run_one(task, ExecContext(settings, store=store))
    record(store, events, task, outcome, pod=pod_name)
    return task, outcome

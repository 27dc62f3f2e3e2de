"""The orchestrator's in-memory step records, their rows, and the `Task` an attempt of a step is sent as."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from capstan.pipelines.execution import Task
from capstan.pipelines.graph import Node
from capstan.pipelines.serialize import OutputRef
from capstan.pipelines.state import StepState
from capstan.pipelines.storage import StepRecord, StepRow
from capstan.pipelines.worker import MEMORY_REQUEST_ENV
from capstan.resources.admission import Lease


@dataclass(slots=True)
class StepRec:
    """In-memory state of one step, mirrored to its ``pipeline_steps`` row."""

    node: Node
    state: StepState
    attempt: int = 0
    retries_used: int = 0
    reason: str = ""
    message: str = ""
    next_attempt_at: int | None = None
    cache_key: str | None = None
    cached_from: str | None = None
    output: OutputRef | None = None
    started_at: int | None = None
    finished_at: int | None = None
    waiting: int = 0
    lease: Lease | None = None
    deadline: float | None = None
    executor: str = ""
    running_children: int = 0
    duration_ms: int | None = None
    attempt_started: int | None = None

    def row(self, run_id: str) -> StepRow:
        """The row's mutable columns (plus the key) for the round writer."""
        fmt = inline = path = digest = None
        size: int | None = None
        if self.output is not None:
            fmt, inline, path, digest, size = self.output.columns()
        return StepRow(run_id, self.node.id, self.state.value, self.attempt, self.retries_used, self.reason,
                       self.message[:4000], self.next_attempt_at, self.cache_key, self.cached_from, fmt, inline,
                       path, digest, size, self.started_at, self.finished_at)

    def record(self, run_id: str) -> StepRecord:
        """The step as a stored record."""
        node = self.node
        return StepRecord(run_id, node.id, node.step.name, node.seq, node.parent, node.index, self.state.value,
                          self.attempt, self.retries_used, self.reason, self.message, self.next_attempt_at,
                          self.cache_key, self.cached_from, self.output, self.started_at, self.finished_at)

    @classmethod
    def of(cls, node: Node, row: StepRecord | None) -> StepRec:
        """A record for ``node`` from its stored row (pending when it has none yet)."""
        if row is None:
            return cls(node, StepState.PENDING)
        return cls(node, StepState(row.state), row.attempt, row.retries_used, row.reason, row.message,
                   row.next_attempt_at, row.cache_key, row.cached_from, row.output, row.started_at, row.finished_at)


def new_step_row(run_id: str, node: Node) -> dict[str, Any]:
    """A fresh pending ``pipeline_steps`` row for ``node``."""
    return {"run_id": run_id, "step_id": node.id, "step_name": node.step.name, "seq": node.seq,
            "parent": node.parent, "map_index": node.index, "state": StepState.PENDING.value, "attempt": 0,
            "retries_used": 0, "reason": "", "message": "", "next_attempt_at": None, "cache_key": None,
            "cached_from": None, "output_format": None, "output_inline": None, "output_path": None,
            "output_digest": None, "output_size": None, "started_at": None, "finished_at": None}


def importable(module: str, file: str | None) -> tuple[str, str | None]:
    """How a worker imports a step's module: ``__main__`` scripts are loaded from their file under another name."""
    if module == "__main__":
        return "__capstan_main__", file
    return module, file


def make_task(run_id: str, project: str, run_dir: str, rec: StepRec, recs: dict[str, StepRec], lease: Lease | None,
              *, attempt: int, log: str | None = None, results: str | None = None) -> Task:
    """The task for one attempt of ``rec``: its step, argument bindings, upstream outputs and environment."""
    node, step = rec.node, rec.node.step
    env = dict(step.options.env)
    env.update({"CAPSTAN_RUN_ID": run_id, "CAPSTAN_STEP": node.id, "CAPSTAN_ATTEMPT": str(attempt)})
    if step.options.resources.memory:
        env[MEMORY_REQUEST_ENV] = str(step.options.resources.memory)  # enforced by a worker process
    if node.chunk is not None:
        env.update({"CHUNK_INDEX": str(node.chunk.index), "CHUNK_COUNT": str(node.chunk.count)})
    if lease is not None:
        if lease.devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(lease.devices)
        env.update(lease.env)  # the queue's placement (MPS share) and workload id
    base = f"{run_dir}/{quote(node.id, safe='')}.{attempt}"
    inputs = {}
    for dep in node.refs():
        output = recs[dep].output
        if output is not None:
            inputs[dep] = output
    module, file = importable(step.module, step.file)
    return Task(run_id, node.id, step.name, attempt, project, step.kind, module, file, step.qualname, step.command,
                node.args, inputs, env, step.location, step.options.isolation, log or f"{base}.log", results,
                f"{base}.out.json", step.options.timeout)

"""The environment of each worker process of a training job: what ``torchrun`` sets, plus Capstan's own variables.

Pure: no I/O, no clock. The launcher (`capstan.training.launcher`) picks the free port and passes the base
environment (its own, with the store settings); this module only computes the variables.

A job has ``workers`` pods (``GROUP_RANK`` 0..workers-1), each with ``nproc_per_worker`` processes (``LOCAL_RANK``
0..nproc-1). The global ``RANK`` is ``GROUP_RANK * nproc_per_worker + LOCAL_RANK``, as torchrun's static rendezvous
assigns it when every node runs the same number of processes; there is one role (``default``), so ``ROLE_RANK``
and ``ROLE_WORLD_SIZE`` equal ``RANK`` and ``WORLD_SIZE``. Rank 0's ``init_process_group(init_method="env://")``
hosts the rendezvous store on ``MASTER_ADDR:MASTER_PORT`` (``TORCHELASTIC_USE_AGENT_STORE=False``: no agent
process holds it), exactly as under ``torchrun`` with a store-less rendezvous.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from capstan.training.spec import TrainingJobSpec

__all__ = ["JOB_ID_VARIABLE", "JOB_VARIABLES", "TORCHRUN_VARIABLES", "WorkerPlace", "capstan_env", "rank_env",
           "worker_env", "worker_places"]

LOCAL_MASTER_ADDR = "127.0.0.1"
"""Every worker of a local job runs on this machine."""

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                      "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                      "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_RUN_ID",
                      "TORCHELASTIC_USE_AGENT_STORE")
"""What torchrun's local agent sets for every worker, in that order."""

JOB_ID_VARIABLE = "CAPSTAN_JOB_ID"
"""Names the job in each of its processes' environment (how a later runner recognises a stale worker)."""
JOB_VARIABLES = (JOB_ID_VARIABLE, "CAPSTAN_JOB_RUN_ID", "CAPSTAN_JOB_ATTEMPT", "CAPSTAN_JOB_LOG_ALL_RANKS",
                 "CAPSTAN_CHECKPOINT_URI", "CAPSTAN_CHECKPOINT_KEEP")
"""Capstan's own variables (read back by `capstan.settings.Settings.from_env`)."""

CHECKPOINT_PATH = "checkpoints"
"""The artifact folder of the job's run where `capstan.checkpoint` keeps checkpoints."""


@dataclass(frozen=True, slots=True)
class WorkerPlace:
    """Where one worker process sits in the gang: its pod (``group_rank``), its process within the pod
    (``local_rank``) and its global ``rank``."""

    rank: int
    group_rank: int
    local_rank: int


def worker_places(spec: TrainingJobSpec) -> list[WorkerPlace]:
    """Every process of the job, in rank order."""
    return [WorkerPlace(g * spec.nproc_per_worker + local, g, local)
            for g in range(spec.workers) for local in range(spec.nproc_per_worker)]


def rank_env(spec: TrainingJobSpec, place: WorkerPlace, *, master_port: int, restart_count: int,
             run_id: str, master_addr: str = LOCAL_MASTER_ADDR) -> dict[str, str]:
    """torchrun's variables for the process at ``place``; ``restart_count`` is how often the gang was restarted
    before this attempt (``TORCHELASTIC_RESTART_COUNT``), ``run_id`` the rendezvous id (the job id)."""
    world = spec.world_size
    return {
        "RANK": str(place.rank),
        "LOCAL_RANK": str(place.local_rank),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(spec.nproc_per_worker),
        "GROUP_RANK": str(place.group_rank),
        "GROUP_WORLD_SIZE": str(spec.workers),
        "ROLE_RANK": str(place.rank),
        "ROLE_NAME": "default",
        "ROLE_WORLD_SIZE": str(world),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "TORCHELASTIC_RESTART_COUNT": str(restart_count),
        "TORCHELASTIC_MAX_RESTARTS": str(spec.max_restarts),
        "TORCHELASTIC_RUN_ID": run_id,
        "TORCHELASTIC_USE_AGENT_STORE": "False",
    }


def capstan_env(spec: TrainingJobSpec, *, job_id: str, run_id: str | None, attempt: int) -> dict[str, str]:
    """Capstan's variables: the job, its tracking run (rank gating of the fluent API), the attempt number and
    where checkpoints go."""
    env = {JOB_ID_VARIABLE: job_id, "CAPSTAN_JOB_ATTEMPT": str(attempt),
           "CAPSTAN_JOB_LOG_ALL_RANKS": "1" if spec.log_all_ranks else "0",
           "CAPSTAN_CHECKPOINT_KEEP": str(spec.checkpoint_keep)}
    if run_id:
        env["CAPSTAN_JOB_RUN_ID"] = run_id
        env["CAPSTAN_CHECKPOINT_URI"] = f"runs:/{run_id}/{CHECKPOINT_PATH}"
    return env


def worker_env(spec: TrainingJobSpec, place: WorkerPlace, *, base: Mapping[str, str], job_id: str,
               run_id: str | None, attempt: int, master_port: int, restart_count: int,
               devices: tuple[str, ...] | None, lease_env: Mapping[str, str] | None = None,
               master_addr: str = LOCAL_MASTER_ADDR) -> dict[str, str]:
    """The whole environment of one worker process.

    ``base`` (the launcher's environment with the store settings) comes first, then the spec's ``env``, the
    lease's placement variables, Capstan's variables and torchrun's (which nothing overrides). ``devices`` are the
    pod's GPU indices from the lease: when there are some, ``CUDA_VISIBLE_DEVICES`` lists exactly them; otherwise
    (no GPUs asked for, or a queue that placed none, as for pipeline steps) the inherited value stays. Like
    torchrun, ``OMP_NUM_THREADS`` is 1 when a pod runs several processes and nobody set it, and
    ``TORCH_NCCL_ASYNC_ERROR_HANDLING`` defaults to 1.
    """
    env = dict(base)
    env.update(spec.env)
    env.update(lease_env or {})
    env.update(capstan_env(spec, job_id=job_id, run_id=run_id, attempt=attempt))
    env.update(rank_env(spec, place, master_port=master_port, restart_count=restart_count, run_id=job_id,
                        master_addr=master_addr))
    env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    if spec.nproc_per_worker > 1:
        env.setdefault("OMP_NUM_THREADS", "1")
    if devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    return env

"""Running admitted workloads as local processes, with GPUs detected or declared.

The executor asks the queue before starting anything: it submits a workload, runs admission cycles, starts
the processes the queue admits (pinned with ``CUDA_VISIBLE_DEVICES`` and, on MPS flavors,
``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``), returns quota when they end, and stops preempted ones with SIGTERM, a
grace period and SIGKILL before the queue requeues them with backoff. Declared GPUs let a laptop or CI run
GPU-shaped scheduling honestly: the devices are only numbers handed to the process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from capstan.errors import InvalidParameterValue
from capstan.queue.manager import QueueManager
from capstan.queue.model import PodSet
from capstan.queue.records import ADMITTED, EVICTING, WorkloadRecord


def detect_gpus(declared: int | None = None, *, runner: Callable[[list[str]], str] | None = None) -> int:
    """GPUs of this machine: ``declared`` when given, else NVML through ``nvidia-smi``, else 0."""
    if declared is not None:
        if declared < 0:
            raise InvalidParameterValue("declared GPUs must be >= 0")
        return declared
    if runner is None:
        if shutil.which("nvidia-smi") is None:
            return 0

        def runner(cmd: list[str]) -> str:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True).stdout
    try:
        out = runner(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"])
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.strip().isdigit())


def local_queue_yaml(*, cpus: float, memory: str, gpus: int, shared_slots: int = 0, mps: bool = False,
                     name: str = "local", gpu_label: str | None = None) -> str:
    """A one-queue configuration for this machine: ClusterQueue and LocalQueue ``name`` (default ``local``) with
    cpu, memory and (if any) gpu quota.

    With ``shared_slots`` the GPU flavor is shareable (fractions such as 0.25 are admitted), ``mps`` adds MPS.
    ``gpu_label`` labels the GPU flavor ``gpu: <label>`` (the GPU model, which a request's node selector may name).
    """
    gpu_flavor = ""
    gpu_group = ""
    if gpus:
        sharing = ""
        if shared_slots:
            sharing = f", sharing: {{slotsPerGpu: {shared_slots}{', strategy: mps' if mps else ''}}}"
        labels = f", nodeLabels: {{gpu: {gpu_label!r}}}" if gpu_label else ""
        gpu_flavor = f"\n  - {{name: local-gpu, gpus: {gpus}{sharing}{labels}}}"
        gpu_group = ("\n      - coveredResources: [gpu]\n        flavors: [{name: local-gpu, resources: "
                     f"[{{name: gpu, nominalQuota: {gpus}}}]}}]")
    return f"""flavors:
  - {{name: local-cpu}}{gpu_flavor}
priorityClasses:
  - {{name: low, value: 0}}
  - {{name: normal, value: 100}}
  - {{name: high, value: 1000}}
defaultPriorityClass: normal
clusterQueues:
  - name: {name}
    preemption: {{withinClusterQueue: LowerPriority}}
    resourceGroups:
      - coveredResources: [cpu, memory]
        flavors: [{{name: local-cpu, resources: [{{name: cpu, nominalQuota: {cpus}}},
                                                {{name: memory, nominalQuota: {memory}}}]}}]{gpu_group}
localQueues:
  - {{name: {name}, clusterQueue: {name}}}
"""


def placement_env(record: WorkloadRecord) -> dict[str, str]:
    """Environment pinning the first pod of an admitted workload to its GPUs."""
    env: dict[str, str] = {}
    if record.admission is None:
        return env
    for ps in record.admission.pod_sets:
        if ps.gpus:
            first = ps.gpus[0]
            env["CUDA_VISIBLE_DEVICES"] = first.cuda_visible_devices
            if first.mps_thread_percentage is not None:
                env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(first.mps_thread_percentage)
            break
    return env


@dataclass(slots=True)
class _Proc:
    popen: subprocess.Popen[bytes]
    kill_at: float | None = None


@dataclass(slots=True)
class LocalExecutor:
    """Runs queue-admitted workloads as process groups on this machine.

    ``manager`` is a `QueueManager`; ``grace_s`` is the time between SIGTERM and SIGKILL for a preempted
    workload. Call `step` in a loop (or `run_until_done`).
    """

    manager: QueueManager
    grace_s: float = 10.0
    env: Mapping[str, str] = field(default_factory=dict)
    commands: dict[str, list[str]] = field(default_factory=dict)
    procs: dict[str, _Proc] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    exit_codes: dict[str, int] = field(default_factory=dict)

    def submit(self, workload_id: str, command: Sequence[str], pod_sets: Sequence[PodSet], *,
               local_queue: str = "local", priority_class: str | None = None, user: str = "") -> WorkloadRecord:
        """Queue a command; it starts once the queue admits it."""
        if not command:
            raise InvalidParameterValue("command must not be empty")
        record = self.manager.submit(workload_id, local_queue, pod_sets, priority_class=priority_class, user=user)
        self.commands[workload_id] = list(command)
        return record

    def step(self) -> None:
        """Reap ended processes, run one admission cycle, start admitted work and stop preempted work."""
        mgr = self.manager
        now = time.monotonic()
        for wid, proc in list(self.procs.items()):
            code = proc.popen.poll()
            record = mgr.get(wid)
            if code is not None:
                del self.procs[wid]
                self.exit_codes[wid] = code
                if record.state == EVICTING:
                    mgr.evicted(wid)
                elif record.state == ADMITTED:
                    mgr.finish(wid)
            elif proc.kill_at is not None and now >= proc.kill_at:
                self._signal(proc, signal.SIGKILL)
                proc.kill_at = None
        report = mgr.cycle()
        for record in report.preempting:
            victim = self.procs.get(record.id)
            if victim is None:
                mgr.evicted(record.id)
                continue
            self._signal(victim, signal.SIGTERM)
            victim.kill_at = time.monotonic() + self.grace_s
        for record in report.admitted:
            if record.id in self.commands:
                self._start(record)

    def _start(self, record: WorkloadRecord) -> None:
        env = {**os.environ, **self.env, **placement_env(record),
               "CAPSTAN_WORKLOAD_ID": record.id, "CAPSTAN_RESTART_COUNT": str(self.restarts.get(record.id, 0))}
        self.restarts[record.id] = self.restarts.get(record.id, 0) + 1
        popen = subprocess.Popen(self.commands[record.id], env=env, start_new_session=True)
        self.procs[record.id] = _Proc(popen)

    @staticmethod
    def _signal(proc: _Proc, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, sig)

    def busy(self) -> bool:
        """True while anything is running or queued."""
        return bool(self.procs) or bool(self.manager.workloads())

    def run_until_done(self, *, timeout_s: float = 60.0, poll_s: float = 0.05) -> None:
        """Step until every submitted workload has ended (or raise after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while self.busy():
            if time.monotonic() > deadline:
                self.shutdown()
                raise TimeoutError(f"workloads still running after {timeout_s}s")
            self.step()
            time.sleep(poll_s)

    def shutdown(self) -> None:
        """Kill every process this executor started."""
        for proc in self.procs.values():
            self._signal(proc, signal.SIGKILL)
            proc.popen.wait(timeout=10)
        self.procs.clear()

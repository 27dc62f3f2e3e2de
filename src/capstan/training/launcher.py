"""Start one attempt of a training job's gang and watch it: a process per rank, each in its own process group.

For each worker (pod) and each of its ``nproc_per_worker`` processes the launcher starts ``python SCRIPT ARGS`` or
``python -m MODULE ARGS`` with the rank environment of `capstan.training.env`, in a new session (its own process
group, so stopping it also stops the processes it started, such as data loader workers). Standard output and
standard error go straight to files, one pair per rank, kept after the job ends (`capstan.training.logs` reads
them)::

    $CAPSTAN_HOME/jobs/<job id>/attempt-<n>/worker-<g>/rank-<r>.out
    $CAPSTAN_HOME/jobs/<job id>/attempt-<n>/worker-<g>/rank-<r>.err
    $CAPSTAN_HOME/jobs/<job id>/attempt-<n>/pids.json

The processes write their files themselves, so they keep logging if the runner dies; ``pids.json`` lets a later
runner find and stop them (`stop_stale`).

`Gang.poll` decides the attempt: all processes exited 0 → ``Succeeded``; the first one that exits non-zero →
``WorkerFailed`` (its rank and exit code), or ``OOMKilled`` when it died of SIGKILL while the kernel's OOM-kill
counter of this cgroup went up, or exited 137 (a shell reporting a SIGKILL, as container runtimes do). The caller
then `Gang.stop`\\ s the rest: SIGTERM to every process group, ``grace_s``, SIGKILL.

`Gang.peaks` gives each rank's peak resident memory once it has been reaped: the kernel's ``ru_maxrss`` from
`os.wait4` when it exceeds what the child inherited from the runner before its ``exec``, else the largest ``VmHWM``
sampled while it ran (see `_Member`).

The runner (`capstan.training.runner`) reaches a gang only through the port below: a `GangLauncher` starts an
attempt from a `GangStart` and answers a `RunningGang`, which it polls, stops or reaps. `LocalGangLauncher` is the
adapter of this module (processes on this machine); `capstan.k8s.training_launcher.KubeGangLauncher` runs the
gang as an indexed Job on a cluster. The composition root (`capstan.services.Services.job_runner`) picks one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from capstan.resources.memory import vm_hwm
from capstan.training.env import JOB_ID_VARIABLE, WorkerPlace, worker_env, worker_places
from capstan.training.ports import AttemptReason
from capstan.training.spec import TrainingJobSpec

__all__ = ["Gang", "GangExit", "GangHold", "GangLauncher", "GangStart", "LocalGangLauncher", "RunningGang",
           "attempt_dir", "classify_exit", "free_port", "launch", "oom_kill_count", "stop_stale"]

JOBS_DIR = "jobs"
PIDS_FILE = "pids.json"
OOM_EXIT_CODE = 137
"""128 + SIGKILL: how a shell or a container runtime reports a process the kernel killed."""


def attempt_dir(home: Path, job_id: str, attempt: int) -> Path:
    """The folder of one attempt's logs and pid file."""
    return home / JOBS_DIR / job_id / f"attempt-{attempt}"


def rank_log(folder: Path, place: WorkerPlace, stream: str) -> Path:
    """The file of one rank's ``out`` or ``err`` stream in an attempt's folder."""
    return folder / f"worker-{place.group_rank}" / f"rank-{place.rank}.{stream}"


def free_port(avoid: Sequence[int] = (), host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the kernel's choice), other than those in ``avoid``."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port
    raise OSError("no free TCP port found")


def oom_kill_count() -> int | None:
    """How many processes the kernel's OOM killer has killed in this process's memory cgroup (v2
    ``memory.events`` or v1 ``memory.oom_control``); None when neither can be read."""
    candidates: list[Path] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _id, controllers, path = line.split(":", 2)
            if controllers == "":
                candidates.append(Path("/sys/fs/cgroup" + path.rstrip("/")) / "memory.events")
            elif "memory" in controllers.split(","):
                candidates.append(Path("/sys/fs/cgroup/memory" + path.rstrip("/")) / "memory.oom_control")
    candidates += [Path("/sys/fs/cgroup/memory.events"), Path("/sys/fs/cgroup/memory/memory.oom_control")]
    for file in candidates:
        try:
            text = file.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
    return None


def classify_exit(code: int, *, oom_killed: bool) -> AttemptReason:
    """The reason a process with exit status ``code`` (negative: killed by that signal) ended the attempt:
    ``OOMKilled`` for exit 137, or a SIGKILL while the OOM killer struck; ``WorkerFailed`` for any other non-zero
    status; ``Succeeded`` for 0."""
    if code == 0:
        return "Succeeded"
    if code == OOM_EXIT_CODE or (code == -signal.SIGKILL and oom_killed):
        return "OOMKilled"
    return "WorkerFailed"


def describe_exit(code: int) -> str:
    """``exited with code 3`` or ``was killed by SIGKILL``."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


@dataclass(frozen=True, slots=True)
class GangExit:
    """How an attempt ended: ``reason`` and, for a failure, the first failing ``rank`` and its ``exit_code``."""

    reason: AttemptReason
    rank: int | None = None
    exit_code: int | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class GangHold:
    """Why a started gang does not run yet: the cluster's admission holds it (Kueue has not admitted its Job, or
    evicted it). ``reason`` is an event reason (``KueuePending``, ``KueueEvicted``, ``Suspended``...), ``message``
    one line with the admitter's own words."""

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class GangStart:
    """What one attempt of a job's gang needs: the spec, the job and its ``project``, its tracking run, the attempt
    number (from 1) and how often the gang was restarted before it; ``pod_devices`` gives each pod's GPU indices
    from the lease (None without GPUs), ``lease_env`` the lease's placement variables, ``avoid_ports`` the
    rendezvous ports not to reuse (the previous attempt's). ``min_workers`` is the job's ``min_workers`` when the
    queue granted every worker of ``spec`` and a cluster's own admission may still start fewer (Kueue's partial
    admission, `capstan.k8s.training_launcher`); None when ``spec.workers`` is what starts. A launcher whose
    admission decided already (this machine, Capstan's queue) ignores it."""

    spec: TrainingJobSpec
    job_id: str
    project: str
    run_id: str | None
    attempt: int
    restart_count: int
    pod_devices: Callable[[int], tuple[str, ...]] | None = None
    lease_env: Mapping[str, str] = field(default_factory=dict)
    avoid_ports: tuple[int, ...] = ()
    min_workers: int | None = None


class RunningGang(Protocol):
    """One started attempt as the runner sees it. ``folder`` holds its rank logs (the layout `rank_log` names, so
    ``capstan logs`` reads every backend alike); ``master_port``/``rendezvous`` where rank 0 listens; ``pids`` the
    local process ids by rank (empty where the processes are not on this machine)."""

    folder: Path
    master_port: int

    @property
    def rendezvous(self) -> str:
        """``host:port`` of rank 0's rendezvous, as the job's message shows it."""
        ...

    @property
    def pids(self) -> dict[int, int]:
        """Each rank's local process id (empty for a gang running elsewhere)."""
        ...

    def poll(self) -> GangExit | None:
        """The attempt's outcome once decided (all succeeded, or the first failing rank), else None."""
        ...

    def held(self) -> GangHold | None:
        """Why the gang is started but held back by the cluster's admission (its pods do not run yet), else None;
        a held gang is pending, not running, and the runner's job says so."""
        ...

    def admitted_workers(self) -> int | None:
        """Once the gang is no longer held: how many workers the cluster's admission let it run with, where that
        admission may start fewer than ``spec.workers`` (Kueue admitting a Job with ``min_workers`` with fewer
        pods); None where the launched spec's ``workers`` is what runs."""
        ...

    def stop(self, grace_s: float) -> None:
        """Stop whatever still runs (SIGTERM or a delete, ``grace_s``, then a kill); returns once it has stopped
        and its logs are kept."""
        ...

    def reap(self) -> None:
        """After a decided attempt: clean up what the gang left (processes, cluster objects); logs are kept."""
        ...

    def peaks(self) -> tuple[int | None, ...]:
        """Each rank's peak resident memory in bytes (index = rank); empty when the backend cannot tell."""
        ...


class GangLauncher(Protocol):
    """Starts the attempts of training jobs' gangs: the port between the runner's restart, back-off and
    preemption logic and where the processes run."""

    def check(self, spec: TrainingJobSpec) -> None:
        """`InvalidParameterValue` naming the field when this backend cannot run ``spec`` (checked at submit)."""
        ...

    def launch(self, start: GangStart) -> RunningGang:
        """Start every worker of one attempt; the gang. An attempt that cannot start raises (`OSError`, a
        `capstan.errors.CapstanError`), having stopped what it had started."""
        ...

    def stop_stale(self, job_id: str, attempt: int) -> int:
        """Stop what an earlier runner started for ``attempt`` of ``job_id`` and left running; how many workers
        (processes or pods) that was."""
        ...


def peak_rss_bytes(maxrss: int) -> int:
    """``ru_maxrss`` of `os.wait4` in bytes: Linux reports KiB, macOS bytes."""
    return maxrss if sys.platform == "darwin" else maxrss * 1024


@dataclass(slots=True)
class _Member:
    """One process and, once it has exited, when (monotonic seconds) and its peak resident memory (bytes): a
    thread reaps each with `os.wait4`, so the first failure is known even when several processes end between two
    polls, and the kernel's ``ru_maxrss`` comes with the exit status.

    On Linux ``ru_maxrss`` also counts the runner's memory the child held before its ``exec`` (at most the
    runner's own ``VmHWM`` just after the start, ``floor``): above ``floor`` it is the worker's exact peak; at or
    below, the peak is the largest ``VmHWM`` sampled while it ran (`sample`, on every `Gang.poll`), or None when it
    ended before a sample. Only this thread waits for the process (the gang never calls ``Popen.poll``/``wait``,
    which could reap it first and lose the usage); it sets ``process.returncode`` from the status it reaped."""

    place: WorkerPlace
    process: subprocess.Popen[bytes]
    floor: int | None = None
    exited_at: float | None = None
    reaped_peak: int | None = None
    sampled_peak: int | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def watch(self) -> None:
        thread = threading.Thread(target=self._wait, name=f"capstan-rank-{self.place.rank}", daemon=True)
        thread.start()

    def _wait(self) -> None:
        try:
            _pid, status, usage = os.wait4(self.process.pid, 0)
        except ChildProcessError:  # reaped elsewhere: the status (if any) is Popen's, the usage is lost
            if self.process.returncode is None:
                self.process.returncode = 1  # status unknown: counted as a failure
        else:
            self.process.returncode = os.waitstatus_to_exitcode(status)
            self.reaped_peak = peak_rss_bytes(usage.ru_maxrss)
        self.exited_at = time.monotonic()
        self.done.set()

    def sample(self) -> None:
        """Read the running process's ``VmHWM`` (ignored once it has been reaped: its pid may be reused)."""
        if self.done.is_set():
            return
        seen = vm_hwm(self.process.pid)
        if seen is not None and not self.done.is_set():
            self.sampled_peak = max(seen, self.sampled_peak or 0)

    @property
    def peak_memory(self) -> int | None:
        """The process's peak resident memory in bytes, once reaped (see the class docstring)."""
        reaped = self.reaped_peak
        if reaped is not None and (self.floor is None or reaped > self.floor):
            return reaped
        return self.sampled_peak


class Gang:
    """The processes of one attempt. Not thread-safe: one runner thread polls and stops it."""

    def __init__(self, members: list[_Member], folder: Path, master_port: int, oom_baseline: int | None) -> None:
        self._members = members
        self.folder = folder
        self.master_port = master_port
        self._oom_baseline = oom_baseline
        self._exit: GangExit | None = None

    @property
    def rendezvous(self) -> str:
        """Rank 0's rendezvous on this machine."""
        return f"127.0.0.1:{self.master_port}"

    @property
    def pids(self) -> dict[int, int]:
        """Each rank's process id."""
        return {m.place.rank: m.process.pid for m in self._members}

    def held(self) -> GangHold | None:
        """Never: local processes run as soon as they are started."""
        return None

    def admitted_workers(self) -> int | None:
        """None: the queue's lease decided the workers before the processes started."""
        return None

    def poll(self) -> GangExit | None:
        """The attempt's outcome once decided (every process exited 0, or one failed), else None."""
        if self._exit is not None:
            return self._exit
        for member in self._members:
            member.sample()
        failed: list[tuple[float, int, int]] = []
        running = 0
        for member in self._members:
            exited_at = member.exited_at
            code = member.process.returncode if exited_at is not None else None
            if code is None:
                running += 1
            elif code != 0:
                failed.append((exited_at or 0.0, member.place.rank, code))
        if failed:
            _at, rank, code = min(failed)
            oom = self._oom_baseline is not None and (oom_kill_count() or 0) > self._oom_baseline
            reason = classify_exit(code, oom_killed=oom)
            what = "was killed by the kernel's OOM killer" if reason == "OOMKilled" else describe_exit(code)
            self._exit = GangExit(reason, rank, code, f"rank {rank} {what}")
        elif running == 0:
            self._exit = GangExit("Succeeded", message=f"all {len(self._members)} processes exited 0")
        return self._exit

    def running(self) -> bool:
        """Whether any process of the gang is still running (not yet reaped)."""
        return any(not m.done.is_set() for m in self._members)

    def peaks(self) -> tuple[int | None, ...]:
        """Each rank's peak resident memory in bytes (index = rank), None for a process not reaped yet."""
        by_rank = {m.place.rank: m.peak_memory for m in self._members}
        return tuple(by_rank.get(rank) for rank in range(len(by_rank)))

    def stop(self, grace_s: float, *, sleep: Callable[[float], None] = time.sleep) -> None:
        """SIGTERM every process group still running, wait up to ``grace_s``, then SIGKILL what is left (and any
        process the workers left behind in their groups). Returns once every worker process has been reaped."""
        for member in self._members:
            if not member.done.is_set():
                _signal_group(member.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self.running() and time.monotonic() < deadline:
            sleep(0.05)
        for member in self._members:
            _signal_group(member.process.pid, signal.SIGKILL)
        for member in self._members:
            member.done.wait(5)

    def reap(self) -> None:
        """After a decided attempt: SIGKILL anything the workers left running in their process groups."""
        for member in self._members:
            _signal_group(member.process.pid, signal.SIGKILL)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def entry_argv(spec: TrainingJobSpec) -> list[str]:
    """``python SCRIPT ARGS`` or ``python -m MODULE ARGS``, as torchrun runs its entry point."""
    if spec.entry_kind == "module":
        return [sys.executable, "-m", spec.entry, *spec.args]
    return [sys.executable, spec.entry, *spec.args]


def launch(spec: TrainingJobSpec, *, job_id: str, run_id: str | None, attempt: int, restart_count: int,
           home: Path, base_env: Mapping[str, str], pod_devices: Callable[[int], tuple[str, ...]] | None,
           lease_env: Mapping[str, str] | None = None, avoid_ports: Sequence[int] = ()) -> Gang:
    """Start every process of attempt ``attempt`` (from 1) and return the gang.

    ``pod_devices`` gives each pod's GPU indices (`capstan.resources.admission.Lease.devices_of`) when the job asked
    for GPUs (None otherwise: ``CUDA_VISIBLE_DEVICES`` is inherited). A process that cannot be started stops the
    ones already started and raises the `OSError`.
    """
    folder = attempt_dir(home, job_id, attempt)
    port = free_port(avoid_ports)
    argv = entry_argv(spec)
    cwd = spec.working_dir or os.getcwd()
    oom_baseline = oom_kill_count()
    members: list[_Member] = []
    try:
        for place in worker_places(spec):
            devices = pod_devices(place.group_rank) if pod_devices is not None else None
            env = worker_env(spec, place, base=base_env, job_id=job_id, run_id=run_id, attempt=attempt,
                             master_port=port, restart_count=restart_count, devices=devices,
                             lease_env=lease_env or {})
            env.setdefault("PYTHONUNBUFFERED", "1")  # log lines reach the files (and --follow) as printed
            out, err = rank_log(folder, place, "out"), rank_log(folder, place, "err")
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "wb") as out_file, open(err, "wb") as err_file:
                process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out_file, stderr=err_file,
                                           cwd=cwd, env=env, start_new_session=True)
            members.append(_Member(place, process, floor=vm_hwm()))
            members[-1].watch()
    except BaseException:
        Gang(members, folder, port, oom_baseline).stop(0)
        raise
    gang = Gang(members, folder, port, oom_baseline)
    (folder / PIDS_FILE).write_text(json.dumps({str(rank): pid for rank, pid in gang.pids.items()}))
    return gang


def stop_stale(home: Path, job_id: str, attempt: int) -> int:
    """Stop (SIGKILL, whole process group) the processes an earlier runner started for ``attempt`` of ``job_id``
    that still run: those listed in the attempt's ``pids.json`` whose environment names this job. Returns how
    many there were."""
    import psutil

    try:
        pids = json.loads((attempt_dir(home, job_id, attempt) / PIDS_FILE).read_text())
    except (OSError, ValueError):
        return 0
    stopped = 0
    for pid in pids.values() if isinstance(pids, dict) else ():
        try:
            variables = psutil.Process(int(pid)).environ()
        except (psutil.Error, ValueError, OSError):
            continue
        if variables.get(JOB_ID_VARIABLE) == job_id:
            _signal_group(int(pid), signal.SIGKILL)
            stopped += 1
    return stopped


class LocalGangLauncher:
    """The `GangLauncher` of this machine: every rank a process group (`launch`), logs under ``home``.
    ``base_env`` is called at each start for the environment every worker inherits (the runner's, with the store
    settings: `capstan.training.runner.worker_base_env`)."""

    def __init__(self, home: Path, base_env: Callable[[], Mapping[str, str]]) -> None:
        self.home = home
        self.base_env = base_env

    def check(self, spec: TrainingJobSpec) -> None:
        """Nothing beyond what the runner checks: the entry point exists on this machine, where it runs."""

    def launch(self, start: GangStart) -> Gang:
        """Start the attempt's processes (`launch`)."""
        return launch(start.spec, job_id=start.job_id, run_id=start.run_id, attempt=start.attempt,
                      restart_count=start.restart_count, home=self.home, base_env=self.base_env(),
                      pod_devices=start.pod_devices, lease_env=start.lease_env, avoid_ports=start.avoid_ports)

    def stop_stale(self, job_id: str, attempt: int) -> int:
        """SIGKILL the processes a dead runner left (`stop_stale`)."""
        return stop_stale(self.home, job_id, attempt)

"""Training jobs on the ``kubernetes`` backend, run against the in-memory API EMULATOR (tests/k8s/emulator.py: a
real HTTP server that the real lightkube client talks to and that validates every object created), not a cluster.

The real `capstan.training.runner.JobRunner` drives each job with the Kubernetes gang launcher
(`capstan.k8s.training_launcher`); the test plays the kubelet and the Job controller: it creates each attempt's
pods, writes their statuses and logs, or runs the pods' own command (the user's script with the container's
environment) as subprocesses. Each test also runs against a real cluster when ``CAPSTAN_TEST_KUBECONFIG`` names a
kubeconfig and skips otherwise; the flows that need the emulator to play the kubelet skip there, saying so.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from emulator import T0, ApiEmulator, Cluster, crds, ended_pod, job_done, running_pod

from capstan.errors import InvalidParameterValue, ResourceDoesNotExist
from capstan.events.records import Event
from capstan.k8s.client import JOB, KubeApi, KubeNotFound, Ref, connect
from capstan.k8s.pods import restricted_violations
from capstan.k8s.training_launcher import SERVICE, KubeGangLauncher, KubeTrainingOptions, attempt_job_name
from capstan.k8s.validate import check_documents
from capstan.resources.admission import Lease, ResourceRequest
from capstan.resources.local import LocalAdmission
from capstan.resources.machine import Capacity
from capstan.services import Services
from capstan.settings import Settings
from capstan.training.launcher import GangStart
from capstan.training.logs import read_logs
from capstan.training.ports import JobRecord
from capstan.training.runner import JobRunner
from capstan.training.spec import TrainingJobSpec, parse_job_spec
from helpers.server import capstan_command, clean_env

IMAGE = "registry.example/train:1"
CONTAINER = "trainer"
GIB = 2**30
SCRIPT = '''
import os
names = ("RANK", "WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT", "CAPSTAN_JOB_ID", "CAPSTAN_JOB_ATTEMPT",
         "TORCHELASTIC_RESTART_COUNT")
print(" ".join(f"{n}={os.environ.get(n, '')}" for n in names))
print(f"hello from rank {os.environ['RANK']}")
'''


@dataclass
class Harness:
    """A job runner whose gangs run on ``cluster``, with real stores (SQLite, local artifacts) and a fast poll."""

    cluster: Cluster
    api: KubeApi
    services: Services
    runner: JobRunner
    code: Path
    done: list[JobRecord] = field(default_factory=list)

    def spec(self, **fields: object) -> TrainingJobSpec:
        data: dict[str, object] = {"name": "mnist", "entry": "train.py", "workers": 2, "working_dir": str(self.code),
                                   "image": IMAGE, "restart_backoff_s": 0.05, "grace_s": 1.0}
        data.update(fields)
        return parse_job_spec(data)

    def start(self, spec: TrainingJobSpec) -> tuple[JobRecord, threading.Thread]:
        record = self.runner.submit(spec, project="default", user="tester", hold=True)
        thread = threading.Thread(target=lambda: self.done.append(self.runner.run(record.id)), daemon=True)
        thread.start()
        return record, thread

    def finish(self, thread: threading.Thread) -> JobRecord:
        thread.join(60)
        assert not thread.is_alive(), "the runner did not finish"
        assert self.done, "the runner failed"
        return self.done[-1]

    def events(self, job_id: str) -> list[Event]:
        return list(self.services.events.list("job", job_id))


def _launcher(api: KubeApi, services: Services) -> KubeGangLauncher:
    return KubeGangLauncher(lambda: api, home=services.settings.home, events=services.events,
                            options=KubeTrainingOptions(watch_timeout_s=5, log_wait_s=2.0, stuck_after_s=1.0,
                                                        delete_wait_s=5.0))


@pytest.fixture
def harness(cluster: Cluster, tmp_path: Path) -> Iterator[Harness]:
    settings = dataclasses.replace(Settings.for_home(tmp_path / "home"), backend="kubernetes")
    services = Services.open(settings, admission=LocalAdmission(Capacity(cpu=8, memory=16 * GIB)))
    api = connect(kubeconfig=str(cluster.kubeconfig))
    runner = JobRunner(services.jobs, tracking=services.tracking, events=services.events,
                       admission=services.admission.get, settings=settings, clock=services.clock, poll_s=0.05,
                       launcher=_launcher(api, services))
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text(textwrap.dedent(SCRIPT))
    yield Harness(cluster, api, services, runner, code)
    api.close()
    services.close()


def _pod_name(job: str, index: int) -> str:
    return f"{job}-{index}-abcde"  # as the Job controller names an indexed Job's pods


def _created(emu: ApiEmulator, job_id: str, attempt: int, workers: int = 2) -> str:
    name = attempt_job_name(job_id, attempt, workers)
    emu.wait_for("jobs", name, timeout_s=20)
    return name


def _wait(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def _run_pod(emu: ApiEmulator, job: dict[str, Any], index: int, settings: Settings, cwd: Path) -> int:
    """Play the kubelet for pod ``index``: run its container's command with its environment (the completion index
    from the downward API), its output as the pod log."""
    name = job["metadata"]["name"]
    pod = _pod_name(name, index)
    emu.add_pod(name, pod, running_pod(CONTAINER))
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value", str(index)) for e in container["env"]}  # valueFrom: the completion index
    command = [sys.executable if container["command"][0] == "python" else container["command"][0],
               *container["command"][1:]]
    done = subprocess.run(command, cwd=cwd, env={"PATH": "/usr/bin:/bin", **settings.store_environment(), **env},
                          text=True, capture_output=True, timeout=60)
    emu.append_log(pod, done.stdout + done.stderr)
    emu.set_status("pods", pod, ended_pod(CONTAINER, code=done.returncode,
                                          reason="Completed" if done.returncode == 0 else "Error"))
    return done.returncode


def test_a_two_worker_job_runs_as_an_indexed_job_and_a_headless_service(harness: Harness) -> None:
    h = harness
    emu = h.cluster.kubelet()
    record, thread = h.start(h.spec())
    name = _created(emu, record.id, 1)
    job = emu.get("jobs", name)
    service = emu.get("services", name)
    assert job is not None and service is not None
    # The rendering, as created: valid (the emulator validated it too) and a restricted pod.
    clean = [{k: v for k, v in d.items() if k != "status"} for d in (service, job)]
    for doc in clean:
        for key in ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields"):
            doc["metadata"].pop(key, None)
    assert check_documents(clean, crds=crds()).errors == []
    assert restricted_violations(job["spec"]["template"]["spec"]) == []
    assert job["spec"]["completionMode"] == "Indexed"
    assert (job["spec"]["completions"], job["spec"]["parallelism"], job["spec"]["backoffLimit"]) == (2, 2, 0)
    assert service["spec"]["clusterIP"] == "None"
    assert job["spec"]["template"]["spec"]["subdomain"] == name
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == IMAGE and container["command"] == ["python", "train.py"]
    # The kubelet runs both pods: the user's script with torchrun's variables and the job's own.
    codes = [_run_pod(emu, job, i, h.services.settings, h.code) for i in range(2)]
    assert codes == [0, 0]
    emu.set_status("jobs", name, job_done())
    final = h.finish(thread)
    assert final.state == "Succeeded", (final.reason, final.message)
    attempts = h.services.jobs.attempts(record.id)
    assert [(a.number, a.reason) for a in attempts] == [(1, "Succeeded")]
    assert attempts[0].master_port == 29500
    one = [line.text for line in read_logs(h.services.settings.home, record.id, worker=1)]
    assert one[0] == (f"RANK=1 WORLD_SIZE=2 GROUP_RANK=1 MASTER_ADDR={name}-0.{name} MASTER_PORT=29500 "
                      f"CAPSTAN_JOB_ID={record.id} CAPSTAN_JOB_ATTEMPT=1 TORCHELASTIC_RESTART_COUNT=0")
    assert one[1] == "hello from rank 1"
    # The finished attempt's Job and Service are deleted; the events tell the story.
    _wait(lambda: emu.get("jobs", name) is None and emu.get("services", name) is None)
    reasons = [e.reason for e in h.events(record.id)]
    for expected in ("Submitted", "JobCreated", "Started", "JobCollected", "Succeeded"):
        assert expected in reasons, reasons
    started = next(e for e in h.events(record.id) if e.reason == "Started")
    assert f"rendezvous on {name}-0.{name}:29500" in started.message


def test_a_partial_admission_by_capstans_queue_creates_the_job_with_the_workers_granted(harness: Harness) -> None:
    """Capstan mode (EMULATOR, decision 0744): the queue grants 2 of the 4 workers (7 CPUs left, 3 each), so the
    Job has 2 pods with the static rendezvous of 2 (no Kueue annotations); each pod knows the 4 asked for."""
    h = harness
    emu = h.cluster.kubelet()
    admission = h.services.admission.get()
    other = admission.acquire_many([ResourceRequest("other", cpu=1, memory=0)])[0]
    assert isinstance(other, Lease)
    record, thread = h.start(h.spec(workers=4, min_workers=2, cpu=3))
    name = _created(emu, record.id, 1)
    job = emu.get("jobs", name)
    assert job is not None
    assert (job["spec"]["parallelism"], job["spec"]["completions"], job["spec"].get("suspend")) == (2, 2, None)
    assert "kueue.x-k8s.io/job-min-parallelism" not in job["metadata"].get("annotations", {})
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["WORLD_SIZE"], env["GROUP_WORLD_SIZE"], env["CAPSTAN_JOB_WORKERS_REQUESTED"]) == ("2", "2", "4")
    assert container["command"] == ["python", "train.py"]
    assert [_run_pod(emu, job, i, h.services.settings, h.code) for i in range(2)] == [0, 0]
    final = h.finish(thread)
    assert final.state == "Succeeded", (final.reason, final.message)
    one = [line.text for line in read_logs(h.services.settings.home, record.id, worker=1)]
    assert one[0].startswith("RANK=1 WORLD_SIZE=2 GROUP_RANK=1 ")
    started = next(e for e in h.events(record.id) if e.reason == "Started")
    assert started.message.startswith("attempt 1: 2 of 4 workers (partial admission, min_workers 2), 2 process(es)")
    admission.release(other)


def _oom_then_success(h: Harness, emu: ApiEmulator, job_id: str) -> tuple[str, str]:
    """Attempt 1: rank 1 is OOMKilled; attempt 2 (a new Job) succeeds. Both pods log a line."""
    first = _created(emu, job_id, 1)
    for i in range(2):
        emu.add_pod(first, _pod_name(first, i), running_pod(CONTAINER))
        emu.append_log(_pod_name(first, i), f"attempt 1 rank {i} starting\n")
    emu.set_status("pods", _pod_name(first, 1), ended_pod(CONTAINER, code=137, reason="OOMKilled"))
    _wait(lambda: emu.get("jobs", first) is None)  # the runner stopped the gang
    second = _created(emu, job_id, 2)
    for i in range(2):
        emu.add_pod(second, _pod_name(second, i), running_pod(CONTAINER))
        emu.append_log(_pod_name(second, i), f"attempt 2 rank {i} done\n")
    for i in range(2):
        emu.set_status("pods", _pod_name(second, i), ended_pod(CONTAINER))
    emu.set_status("jobs", second, job_done())
    return first, second


def test_an_oom_killed_rank_restarts_the_gang_as_a_new_job(harness: Harness) -> None:
    h = harness
    emu = h.cluster.kubelet()
    record, thread = h.start(h.spec(max_restarts=1))
    first, second = _oom_then_success(h, emu, record.id)
    final = h.finish(thread)
    assert (final.state, final.restarts, final.attempt) == ("Succeeded", 1, 2), (final.reason, final.message)
    attempts = h.services.jobs.attempts(record.id)
    assert [(a.reason, a.rank, a.exit_code) for a in attempts] == [("OOMKilled", 1, 137), ("Succeeded", None, None)]
    assert "rank 1: container trainer in pod" in attempts[0].message and "OOMKilled" in attempts[0].message
    # The failed attempt's Job was deleted with Foreground propagation, the finished one collected.
    assert ("jobs", first, "Foreground") in emu.deletions
    assert ("services", first, "Foreground") in emu.deletions
    assert any(d[:2] == ("jobs", second) for d in emu.deletions)
    oom = [e for e in h.events(record.id) if e.reason == "OOMKilled" and (e.data or {}).get("rank") == 1]
    assert oom and oom[0].type == "Warning", [(e.reason, e.data) for e in h.events(record.id)]
    assert oom[0].data is not None and oom[0].data["exit_code"] == 137
    # Each rank's log outlives its pod, attempt by attempt.
    assert emu.objects("pods") == []
    home = h.services.settings.home
    assert [ln.text for ln in read_logs(home, record.id, worker=1, attempt=1)] == ["attempt 1 rank 1 starting"]
    assert [ln.text for ln in read_logs(home, record.id, worker=0)] == ["attempt 2 rank 0 done"]
    logs = subprocess.run([*capstan_command(), "logs", record.id, "--worker", "1"], env=clean_env(home),
                          text=True, capture_output=True, timeout=60)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.strip() == "attempt 2 rank 1 done"


def test_a_lost_node_restarts_the_gang_without_using_a_restart(harness: Harness) -> None:
    h = harness
    emu = h.cluster.kubelet()
    record, thread = h.start(h.spec(workers=1, max_restarts=0))
    first = _created(emu, record.id, 1, workers=1)
    emu.add_pod(first, _pod_name(first, 0), running_pod(CONTAINER))
    lost = {"phase": "Failed", "startTime": T0, "conditions": [
        {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
         "message": "Taint manager: deleting due to NoExecute taint"}]}
    emu.set_status("pods", _pod_name(first, 0), lost)
    second = _created(emu, record.id, 2, workers=1)
    emu.add_pod(second, _pod_name(second, 0), ended_pod(CONTAINER))
    emu.set_status("jobs", second, job_done())
    final = h.finish(thread)
    assert (final.state, final.restarts) == ("Succeeded", 0)
    assert [a.reason for a in h.services.jobs.attempts(record.id)] == ["NodeLost", "Succeeded"]


def test_cancel_deletes_the_job_with_foreground_propagation(harness: Harness) -> None:
    h = harness
    emu = h.cluster.kubelet()
    record, thread = h.start(h.spec())
    name = _created(emu, record.id, 1)
    for i in range(2):
        emu.add_pod(name, _pod_name(name, i), running_pod(CONTAINER))
        emu.append_log(_pod_name(name, i), f"step 1 on rank {i}\n")
    _wait(lambda: any(e.reason == "Running" for e in h.events(record.id)))
    _wait(lambda: len(_lines(h, record.id)) == 2)  # streamed while the pods run
    h.services.jobs.request_cancel(record.id)
    final = h.finish(thread)
    assert final.state == "Cancelled"
    assert ("jobs", name, "Foreground") in emu.deletions
    assert ("services", name, "Foreground") in emu.deletions
    assert emu.get("jobs", name) is None and emu.objects("pods") == []
    assert [a.reason for a in h.services.jobs.attempts(record.id)] == ["Cancelled"]
    assert "JobDeleted" in [e.reason for e in h.events(record.id)]
    lines = read_logs(h.services.settings.home, record.id)
    assert sorted((ln.rank, ln.text) for ln in lines) == [(0, "step 1 on rank 0"), (1, "step 1 on rank 1")]


def _lines(h: Harness, job_id: str) -> list[str]:
    try:
        return [ln.text for ln in read_logs(h.services.settings.home, job_id)]
    except ResourceDoesNotExist:  # no attempt folder yet
        return []


def test_the_attempt_is_created_on_the_cluster_and_cancel_removes_it(harness: Harness) -> None:
    """Runs on a real cluster too: nothing here plays the kubelet."""
    h = harness
    record, thread = h.start(h.spec())
    name = attempt_job_name(record.id, 1, 2)
    _wait(lambda: _exists(h.api, JOB, name) and _exists(h.api, SERVICE, name))
    h.services.jobs.request_cancel(record.id)
    final = h.finish(thread)
    assert final.state == "Cancelled"
    assert not _exists(h.api, JOB, name) and not _exists(h.api, SERVICE, name)


def _exists(api: KubeApi, ref: Ref, name: str) -> bool:
    try:
        api.get(ref, name)
    except KubeNotFound:
        return False
    return True


def test_a_stuck_image_pull_fails_the_attempt_with_the_rank(harness: Harness) -> None:
    h = harness
    emu = h.cluster.kubelet()
    record, thread = h.start(h.spec(workers=2))
    name = _created(emu, record.id, 1)
    emu.add_pod(name, _pod_name(name, 0), running_pod(CONTAINER))
    emu.add_pod(name, _pod_name(name, 1), {"phase": "Pending", "containerStatuses": [
        {"name": CONTAINER, "ready": False, "restartCount": 0, "image": IMAGE, "imageID": "",
         "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]})
    final = h.finish(thread)
    assert (final.state, final.reason) == ("Failed", "WorkerFailed")
    attempt = h.services.jobs.attempts(record.id)[0]
    assert attempt.rank == 1 and "ImagePullBackOff" in attempt.message
    assert "GaveUp" in [e.reason for e in h.events(record.id)]


def test_a_job_without_an_image_is_refused_at_submit(harness: Harness) -> None:
    with pytest.raises(InvalidParameterValue, match=r"^job\.image: the kubernetes backend"):
        harness.runner.submit(harness.spec(image=None), project="default", hold=True)


def test_a_runner_that_finds_an_attempt_left_open_deletes_its_job(harness: Harness) -> None:
    h = harness
    emu = h.cluster.kubelet()
    launcher = _launcher(h.api, h.services)
    spec = h.spec()
    gang = launcher.launch(GangStart(spec, "mnist-0a1b2c", "default", None, 3, 2))
    name = attempt_job_name("mnist-0a1b2c", 3, 2)
    assert gang.name == name and emu.get("jobs", name) is not None
    for i in range(2):
        emu.add_pod(name, _pod_name(name, i), running_pod(CONTAINER))
    assert launcher.stop_stale("mnist-0a1b2c", 2) == 0  # another attempt's Job is left alone
    assert launcher.stop_stale("mnist-0a1b2c", 3) == 2
    assert ("jobs", name, "Foreground") in emu.deletions and emu.get("jobs", name) is None
    gang.reap()


def test_long_job_ids_give_valid_names() -> None:
    long_id = "a" * 63 + "-0a1b2c"
    name = attempt_job_name(long_id, 12, 100)
    assert len(f"{name}-99") <= 63 and name == attempt_job_name(long_id, 12, 100)
    assert name != attempt_job_name(long_id, 13, 100)
    assert attempt_job_name("7up-0a1b2c", 1, 2) == "j-7up-0a1b2c-a1"
    assert attempt_job_name("mnist-0a1b2c", 2, 2) == "mnist-0a1b2c-a2"


def test_the_composition_root_picks_the_launcher_from_the_backend(tmp_path: Path) -> None:
    local = Services.open(Settings.for_home(tmp_path / "local"))
    kube = Services.open(dataclasses.replace(Settings.for_home(tmp_path / "kube"), backend="kubernetes"))
    try:
        assert type(local.job_runner().launcher).__name__ == "LocalGangLauncher"
        assert isinstance(kube.job_runner().launcher, KubeGangLauncher)
    finally:
        local.close()
        kube.close()


def test_capstan_train_runs_on_the_cluster_when_the_backend_is_kubernetes(cluster: Cluster, tmp_path: Path) -> None:
    emu = cluster.kubelet()
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text(textwrap.dedent(SCRIPT))
    home = tmp_path / "home"
    env = clean_env(home, {"CAPSTAN_BACKEND": "kubernetes", "KUBECONFIG": str(cluster.kubeconfig)})
    command = [*capstan_command(), "train", "train.py", "--name", "cli", "--cpu", "0.5"]
    refused = subprocess.run(command, cwd=code, env=env, text=True, capture_output=True, timeout=60)
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines() == [
        "error: --image: the kubernetes backend runs the job in a container image that contains its code; name one "
        "(capstan train --image, or the spec's image)"], refused.stderr
    train = subprocess.Popen([*command, "--image", IMAGE], cwd=code, env=env, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        _wait(lambda: any(j["metadata"]["name"].startswith("cli-") for j in emu.objects("jobs")), timeout_s=60)
        name = next(j["metadata"]["name"] for j in emu.objects("jobs") if j["metadata"]["name"].startswith("cli-"))
        emu.add_pod(name, _pod_name(name, 0), running_pod(CONTAINER))
        emu.append_log(_pod_name(name, 0), "trained\n")
        emu.set_status("pods", _pod_name(name, 0), ended_pod(CONTAINER))
        emu.set_status("jobs", name, job_done())
        _out, err = train.communicate(timeout=60)
    finally:
        if train.poll() is None:
            train.kill()
            train.communicate()
    assert train.returncode == 0, err
    assert "succeeded" in err and name.endswith("-a1")

"""Kueue mode of the ``kubernetes`` backend (``CAPSTAN_KUBE_ADMISSION=kueue``, decision 0726) and the preflight of
training gangs, run against the in-memory API EMULATOR (tests/k8s/emulator.py), not a cluster. The emulator serves
Kueue's CRDs; the test plays Kueue (it writes the Workload and its conditions, and unsuspends the Job), the Job
controller and the kubelet. In Kueue mode Capstan's own admission must not be asked: the stores are opened with an
admission that has no room at all, which would refuse every step and gang that asked it.

The flows that need the emulator to play Kueue skip on a real cluster (``CAPSTAN_TEST_KUBECONFIG``), saying so; the
preflight refusal runs there too.
"""

from __future__ import annotations

import dataclasses
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from emulator import T0, T1, ApiEmulator, Cluster, ended_pod, job_done, open_cluster, running_pod
from test_k8s_executor_pipeline import Kubelet

from capstan.errors import InvalidParameterValue
from capstan.k8s.client import JOB, RESOURCE_QUOTA, connect
from capstan.k8s.kueue_admission import KUEUE_PENDING, KueueAdmission, workload_condition
from capstan.k8s.labels import QUEUE_NAME_LABEL
from capstan.k8s.preflight import Snapshot, gang_refusals
from capstan.k8s.training_launcher import SERVICE
from capstan.pipelines.loader import load_pipeline
from capstan.pipelines.runner import RunResult
from capstan.resources.admission import Lease, ResourceRequest
from capstan.resources.local import LocalAdmission
from capstan.resources.machine import Capacity
from capstan.services import Services
from capstan.settings import Settings
from capstan.training.ports import JobRecord
from helpers.server import capstan_command, clean_env

IMAGE = "registry.example/train:1"
NO_QUOTA = "couldn't assign flavors to pod set main: insufficient quota for cpu in flavor default-flavor, 1 more needed"
PIPELINE = '''
import capstan.pipelines as cp

@cp.step(queue="team-a", resources={"cpu": 1})
def hello() -> int:
    print("hello from the cluster")
    return 7

@cp.pipeline
def greet():
    return hello()
'''


def _wait(test: Callable[[], object], timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = test()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def _no_room() -> LocalAdmission:
    """An admission with nothing to give: asked, it refuses every workload that requests any CPU."""
    return LocalAdmission(Capacity(cpu=0.0, memory=0))


@pytest.fixture(params=["emulator", "real-cluster"])
def kueue_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """The emulator serving Kueue's CRDs, or the real cluster."""
    yield from open_cluster(request.param, tmp_path, kueue=True)


def _kueue_settings(tmp_path: Path) -> Settings:
    return dataclasses.replace(Settings.for_home(tmp_path / "home"), backend="kubernetes", kube_admission="kueue")


def _play_kueue(emu: ApiEmulator, job: dict[str, Any], queue: str, conditions: list[dict[str, Any]],
                count: int = 1) -> str:
    """Create (or update) the Workload Kueue makes for ``job`` and set its conditions. Like Kueue's, it carries
    none of the Job's labels: the executors find it by its owner."""
    name = f"job-{job['metadata']['name']}-1a2b3"
    if emu.get("workloads", name) is None:
        emu.put({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "Workload",
                 "metadata": {"name": name, "namespace": emu.namespace,
                              "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                                                   "name": job["metadata"]["name"], "uid": job["metadata"]["uid"],
                                                   "controller": True}]},
                 "spec": {"queueName": queue, "podSets": [{"name": "main", "count": count,
                                                           "template": job["spec"]["template"]}]}}, "workloads")
    emu.set_status("workloads", name, {"conditions": conditions})
    return name


PENDING = [{"type": "QuotaReserved", "status": "False", "reason": "Pending", "lastTransitionTime": T0,
            "message": NO_QUOTA, "observedGeneration": 1}]
ADMITTED = [{"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved", "lastTransitionTime": T1,
             "message": "Quota reserved in ClusterQueue team-a-cq", "observedGeneration": 1},
            {"type": "Admitted", "status": "True", "reason": "Admitted", "lastTransitionTime": T1,
             "message": "The workload is admitted", "observedGeneration": 1}]


def _train_code(tmp_path: Path) -> Path:
    """A folder holding the one-line ``train.py`` the training jobs of these tests run."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("print('trained')\n")
    return code


def _run_held(services: Services, doc: dict[str, Any]) -> tuple[JobRecord, list[JobRecord], threading.Thread]:
    """Submit the training job ``doc`` (held) and run it on a thread: its record, the list its final record is
    appended to, and the thread."""
    from capstan.training.spec import parse_job_spec

    runner = services.job_runner()
    runner.poll_s = 0.05
    record = runner.submit(parse_job_spec(doc), project="default", user="tester", hold=True)
    done: list[JobRecord] = []
    thread = threading.Thread(target=lambda: done.append(runner.run(record.id)), daemon=True)
    thread.start()
    return record, done, thread


def _unsuspend(emu: ApiEmulator, name: str) -> None:
    """What Kueue does once it admits the workload."""
    job = emu.get("jobs", name)
    assert job is not None
    emu.put({**job, "spec": {**job["spec"], "suspend": False}}, "jobs", validate=False)


def test_a_step_in_kueue_mode_is_admitted_by_kueue_alone(kueue_cluster: Cluster, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    emu = kueue_cluster.kubelet()
    source = tmp_path / "src"
    source.mkdir()
    (source / "greet.py").write_text(textwrap.dedent(PIPELINE))
    workdir = tmp_path / "pod"
    workdir.mkdir()
    monkeypatch.setenv("KUBECONFIG", str(kueue_cluster.kubeconfig))
    settings = _kueue_settings(tmp_path)
    capstan_queue = _no_room()
    services = Services.open(settings, admission=capstan_queue)
    try:
        assert isinstance(services.workload_admission.get(), KueueAdmission)
        assert services.admission.get() is capstan_queue  # serving still asks it
        runner = services.pipelines.get()
        pipe, canonical = load_pipeline(str(source / "greet.py"))
        results: list[RunResult] = []
        thread = threading.Thread(target=lambda: results.append(runner.run(pipe, {}, ref=canonical)), daemon=True)
        thread.start()
        job = _wait(lambda: next(iter(emu.objects("jobs")), None))
        name = job["metadata"]["name"]
        assert job["spec"]["suspend"] is True
        assert job["metadata"]["labels"][QUEUE_NAME_LABEL] == "team-a"
        _play_kueue(emu, job, "team-a", PENDING)
        run_id = job["metadata"]["labels"]["capstan.dev/run-id"]
        step = f"{run_id}/hello"
        pending = _wait(lambda: [e for e in services.events.list("step", step) if e.reason == KUEUE_PENDING])
        assert NO_QUOTA in pending[0].message and pending[0].type == "Warning"
        time.sleep(0.5)  # Capstan leaves the Job to Kueue: it stays suspended, nobody unsuspends it
        assert emu.get("jobs", name)["spec"]["suspend"] is True  # type: ignore[index]
        assert not any(m == "PATCH" and p.endswith(f"/jobs/{name}") for m, p, _ in emu.requests)
        assert thread.is_alive()
        with Kubelet(emu, settings, workdir) as kubelet:
            _play_kueue(emu, job, "team-a", ADMITTED)
            _unsuspend(emu, name)
            thread.join(120)
        assert kubelet.errors == []
        assert results and results[0].ok, [(s.step_id, s.state, s.reason, s.message) for s in results[0].steps]
        assert results[0].output("hello") == 7
        reasons = [e.reason for e in services.events.list("step", f"{run_id}/hello")]
        for expected in ("JobCreated", KUEUE_PENDING, "KueueAdmitted", "Succeeded"):
            assert expected in reasons, reasons
        assert "Admitted" not in reasons  # Capstan's own unsuspension never happened
        assert capstan_queue.leases == {} and capstan_queue.used_cpu == 0
        assert services.workload_admission.get().leases == {}  # type: ignore[attr-defined]  # released
    finally:
        services.close()


def test_kueue_mode_without_kueue_installed_fails_the_step_in_one_line(cluster: Cluster, tmp_path: Path) -> None:
    import queue

    from capstan.k8s.executor import KubeOptions, KubernetesExecutor
    from capstan.pipelines.execution import Outcome, Task

    cluster.kubelet()
    services = Services.open(Settings.for_home(tmp_path / "home"))
    api = connect(kubeconfig=str(cluster.kubeconfig))
    outcomes: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
    executor = KubernetesExecutor(outcomes.put, None, api=api, events=services.events, store=services.artifacts,
                                  run_info=lambda run_id: ("/x/flow.py:flow", {}),
                                  ship=lambda c: ("sha256:" + "ab" * 32, "flow.py:flow"),
                                  options=KubeOptions(kueue=True, watch_timeout_s=5))
    try:
        task = Task("run0123456789abcdef", "s", "s", 1, "default", "python", "flow", None, "s", None, {}, {}, {},
                    "flow.py:1", "process", str(tmp_path / "s.log"), None, str(tmp_path / "s.json"), None)
        executor.start(task, executor.place(None))
        outcome = outcomes.get(timeout=20)
        assert outcome.reason == "Rejected" and not outcome.retryable
        assert "CAPSTAN_KUBE_ADMISSION=kueue" in outcome.message and "\n" not in outcome.message
        assert not any(m == "POST" for m, _p, _c in cluster.kubelet().requests)
    finally:
        executor.shutdown()
        api.close()
        services.close()


def test_a_training_gang_in_kueue_mode_waits_suspended_until_kueue_admits_it(
        kueue_cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emu = kueue_cluster.kubelet()
    monkeypatch.setenv("KUBECONFIG", str(kueue_cluster.kubeconfig))
    code = _train_code(tmp_path)
    capstan_queue = _no_room()
    services = Services.open(_kueue_settings(tmp_path), admission=capstan_queue)
    try:
        record, done, thread = _run_held(services, {
            "name": "mnist", "entry": "train.py", "workers": 2, "working_dir": str(code), "image": IMAGE, "cpu": 1,
            "restart_backoff_s": 0.05, "grace_s": 1.0})
        job = _wait(lambda: next(iter(emu.objects("jobs")), None))
        name = job["metadata"]["name"]
        assert job["spec"]["suspend"] is True
        assert job["metadata"]["labels"][QUEUE_NAME_LABEL] == "default"
        _play_kueue(emu, job, "default", PENDING, count=2)
        pending = _wait(lambda: [e for e in services.events.list("job", record.id) if e.reason == KUEUE_PENDING])
        assert NO_QUOTA in pending[0].message
        assert _wait(lambda: [e for e in services.events.list("job", record.id) if e.reason == "Suspended"])
        time.sleep(0.5)
        stored = services.jobs.get(record.id)
        assert stored is not None and not stored.done and stored.restarts == 0  # pending, not failed
        assert emu.get("jobs", name) is not None and thread.is_alive()
        _play_kueue(emu, job, "default", ADMITTED, count=2)
        _unsuspend(emu, name)
        for i in range(2):
            emu.add_pod(name, f"{name}-{i}-abcde", running_pod("trainer"))
        for i in range(2):
            emu.set_status("pods", f"{name}-{i}-abcde", ended_pod("trainer"))
        emu.set_status("jobs", name, job_done())
        thread.join(60)
        assert done and done[0].state == "Succeeded", done
        reasons = [e.reason for e in services.events.list("job", record.id)]
        assert "KueueAdmitted" in reasons, reasons
        assert capstan_queue.leases == {} and capstan_queue.used_cpu == 0
    finally:
        services.close()


def test_kueue_admits_a_gang_with_min_workers_with_fewer_pods_and_the_job_runs_those(
        kueue_cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Partial admission in Kueue mode (decision 0744), against the API EMULATOR (skipped on a real cluster: the test
    plays Kueue): the Job asks for 4 pods, at least 2; the test plays Kueue admitting 3 (it lowers parallelism and
    completions while unsuspending, and the Workload's admission says 3). The runner records 3 of 4 as it does for
    its own queue, and the gang ends once those 3 pods have succeeded."""
    from capstan.k8s.render_training import COMPLETIONS_EQUAL_PARALLELISM_ANNOTATION, MIN_PARALLELISM_ANNOTATION
    from capstan.training.logs import read_logs
    from capstan.training.runner import WORKERS_ADMITTED_TAG

    emu = kueue_cluster.kubelet()
    monkeypatch.setenv("KUBECONFIG", str(kueue_cluster.kubeconfig))
    code = _train_code(tmp_path)
    services = Services.open(_kueue_settings(tmp_path), admission=_no_room())
    try:
        record, done, thread = _run_held(services, {
            "name": "mnist", "entry": "train.py", "workers": 4, "min_workers": 2, "working_dir": str(code),
            "image": IMAGE, "cpu": 1, "grace_s": 1.0})
        job = _wait(lambda: next(iter(emu.objects("jobs")), None))
        name = job["metadata"]["name"]
        assert job["spec"]["suspend"] is True
        assert (job["spec"]["parallelism"], job["spec"]["completions"]) == (4, 4)
        notes = job["metadata"]["annotations"]
        assert (notes[MIN_PARALLELISM_ANNOTATION], notes[COMPLETIONS_EQUAL_PARALLELISM_ANNOTATION]) == ("2", "true")
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["command"][:2] == ["torchrun", "--nnodes=2:4"]  # the renderer's elastic rendezvous
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert "WORLD_SIZE" not in env and "GROUP_RANK" not in env and env["CAPSTAN_JOB_WORKERS_REQUESTED"] == "4"
        created = _wait(lambda: [e for e in services.events.list("job", record.id) if e.reason == "JobCreated"])
        assert "4 pod(s) (Kueue may admit as few as 2: min_workers)" in created[0].message
        workload = _play_kueue(emu, job, "default", PENDING, count=4)
        _wait(lambda: [e for e in services.events.list("job", record.id) if e.reason == KUEUE_PENDING])
        # Kueue admits 3 pods: the Workload's assignment says so, and the Job is unsuspended with 3 of each.
        emu.set_status("workloads", workload, {"conditions": ADMITTED, "admission": {
            "clusterQueue": "team-a-cq",
            "podSetAssignments": [{"name": "main", "count": 3, "flavors": {"cpu": "default-flavor"}}]}})
        fresh = emu.get("jobs", name)
        assert fresh is not None
        emu.put({**fresh, "spec": {**fresh["spec"], "suspend": False, "parallelism": 3, "completions": 3}}, "jobs",
                validate=False)
        started = _wait(lambda: [e for e in services.events.list("job", record.id) if e.reason == "Started"])[0]
        assert started.message.startswith("attempt 1: 3 of 4 workers (partial admission, min_workers 2), "
                                          "3 process(es)"), started.message
        assert (started.data["workers"], started.data["workers_requested"]) == (3, 4)
        for i in range(3):
            emu.add_pod(name, f"{name}-{i}-abcde", running_pod("trainer"))
            emu.append_log(f"{name}-{i}-abcde", f"worker {i} of 3\n")
        for i in range(3):  # no fourth pod, and no Job condition: the 3 admitted pods decide the attempt
            emu.set_status("pods", f"{name}-{i}-abcde", ended_pod("trainer"))
        thread.join(60)
        assert done and done[0].state == "Succeeded", done
        assert "all 3 pod(s)" in services.jobs.attempts(record.id)[0].message
        assert record.run_id is not None
        tags = services.tracking.get_run(record.run_id).data.tags
        assert (tags[WORKERS_ADMITTED_TAG], tags["capstan.job.min_workers"]) == ("3", "2")
        home = services.settings.home
        logs = {i: [line.text for line in read_logs(home, record.id, worker=i)] for i in range(3)}
        assert logs == {i: [f"worker {i} of 3"] for i in range(3)}
        folder = home / "jobs" / record.id / "attempt-1"
        assert sorted(p.name for p in folder.iterdir() if p.name.startswith("worker-")) == [
            "worker-0", "worker-1", "worker-2"]
        stored = services.jobs.get(record.id)
        assert stored is not None and stored.spec.workers == 4  # the job keeps what it asked for
    finally:
        services.close()


def test_capstan_train_refuses_a_gang_the_quota_can_never_hold(cluster: Cluster, tmp_path: Path) -> None:
    api = connect(kubeconfig=str(cluster.kubeconfig))
    quota = {"apiVersion": "v1", "kind": "ResourceQuota",
             "metadata": {"name": "team-quota", "namespace": api.namespace}, "spec": {"hard": {"requests.cpu": "3"}}}
    api.create(quota)
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("print('trained')\n")
    env = clean_env(tmp_path / "home", {"CAPSTAN_BACKEND": "kubernetes", "KUBECONFIG": str(cluster.kubeconfig)})
    base = [*capstan_command(), "train", "train.py", "--name", "big", "--image", IMAGE, "--workers", "2"]
    try:
        for cpu, words in (("2", "its 2 pods request 4 of cpu together"), ("4", "one pod requests 4 of cpu")):
            done = subprocess.run([*base, "--cpu", cpu], cwd=code, env=env, text=True, capture_output=True,
                                  timeout=60)
            assert done.returncode != 0
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
            assert words in lines[0] and "ResourceQuota team-quota" in lines[0] and "(requests.cpu: 3)" in lines[0]
        assert not [j for j in api.list(JOB).items if j["metadata"]["name"].startswith("big-")]
        assert not [s for s in api.list(SERVICE).items if s["metadata"]["name"].startswith("big-")]
    finally:
        api.delete(RESOURCE_QUOTA, "team-quota")
        api.close()


def test_a_training_gang_in_kueue_mode_without_kueue_is_refused_at_submit(cluster: Cluster, tmp_path: Path) -> None:
    from capstan.k8s.training_launcher import KubeGangLauncher, KubeTrainingOptions
    from capstan.training.spec import parse_job_spec

    cluster.kubelet()  # a real cluster may have Kueue installed
    services = Services.open(Settings.for_home(tmp_path / "home"))
    api = connect(kubeconfig=str(cluster.kubeconfig))
    try:
        launcher = KubeGangLauncher(lambda: api, home=tmp_path, events=services.events,
                                    options=KubeTrainingOptions(kueue=True, preflight=True))
        spec = parse_job_spec({"name": "mnist", "entry": "train.py", "workers": 2, "image": IMAGE})
        with pytest.raises(InvalidParameterValue, match=r"^CAPSTAN_KUBE_ADMISSION: kueue, but Kueue's Workload API"):
            launcher.check(spec)
        assert not api.list(JOB).items
    finally:
        api.close()
        services.close()


def test_gang_refusals_count_every_pod_against_the_quota_and_the_nodes() -> None:
    def job(cpu: str) -> dict[str, Any]:
        return {"kind": "Job", "metadata": {"name": "g"}, "spec": {"template": {"spec": {"containers": [
            {"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu}}}]}}}}

    nodes = {"a": {"cpu": 4000}, "b": {"cpu": 3000}}
    snap = Snapshot("ns", {"requests.cpu": 8000}, {"requests.cpu": "q"}, nodes)
    assert gang_refusals(job("2"), snap, 3) == []  # 6 of 8; node a holds 2, node b 1
    assert gang_refusals(job("2"), snap, 4) == [
        "its 4 pods can not all run at once: the 2 node(s), even empty, hold 3 such pod(s)"]
    assert gang_refusals(job("3"), snap, 3) == [
        "its 3 pods request 9 of cpu together, more than ResourceQuota q in namespace ns allows (requests.cpu: 8)",
        "its 3 pods can not all run at once: the 2 node(s), even empty, hold 2 such pod(s)"]
    assert gang_refusals(job("5"), snap, 1)[0].startswith("one pod requests 5 of cpu; the largest node has 4")
    assert gang_refusals(job("2"), Snapshot("ns"), 100) == []  # nothing known: nothing refused


def test_the_kueue_admission_grants_at_once_and_keeps_only_bookkeeping() -> None:
    admission = KueueAdmission()
    big = ResourceRequest("run/train#1", cpu=1e6, memory=1 << 50, gpu=64)
    assert admission.check(big) is None
    lease = admission.acquire_many([big])[0]
    assert isinstance(lease, Lease) and lease.request == big and lease.workload is None
    assert admission.try_acquire(big) is lease  # asking again is idempotent
    assert admission.revoked([lease]) == []
    assert admission.reclaim(big, held_only=True) is lease
    admission.withdraw("run/train#2")  # the step's next attempt: the step's leases go
    assert admission.leases == {} and admission.reclaim(big, held_only=True) is None
    other = ResourceRequest("run/eval#1", cpu=1, memory=0)
    again = admission.try_acquire(big)
    assert again is not None
    granted = admission.settle([(again, False)], [other])[0]
    assert list(admission.leases) == ["run/eval#1"] and isinstance(granted, Lease)
    admission.release(granted)
    assert admission.leases == {}


def test_workload_conditions_become_event_reasons() -> None:
    assert workload_condition({"status": {}}) is None
    assert workload_condition({"status": {"conditions": PENDING}}) == (KUEUE_PENDING, NO_QUOTA, PENDING[0])
    reason, message, _c = workload_condition({"status": {"conditions": [*PENDING, *ADMITTED]}})  # type: ignore[misc]
    assert (reason, message) == ("KueueAdmitted", "The workload is admitted")


def test_the_admission_mode_is_a_setting(tmp_path: Path) -> None:
    env = {"CAPSTAN_HOME": str(tmp_path)}
    assert Settings.from_env(env).kube_admission == "capstan"
    assert Settings.from_env({**env, "CAPSTAN_KUBE_ADMISSION": " Kueue "}).kube_admission == "kueue"
    with pytest.raises(InvalidParameterValue, match="CAPSTAN_KUBE_ADMISSION: 'both' is not one of capstan, kueue"):
        Settings.from_env({**env, "CAPSTAN_KUBE_ADMISSION": "both"})
    capstan = Services.open(dataclasses.replace(Settings.for_home(tmp_path / "a"), backend="kubernetes"),
                            admission=_no_room())
    local = Services.open(dataclasses.replace(Settings.for_home(tmp_path / "b"), kube_admission="kueue"),
                          admission=_no_room())
    try:  # Capstan's queue admits unless the kubernetes backend runs in Kueue mode
        assert capstan.workload_admission.get() is capstan.admission.get()
        assert local.workload_admission.get() is local.admission.get()
    finally:
        capstan.close()
        local.close()


def test_the_admitted_count_and_when_kueue_may_admit_fewer() -> None:
    from capstan.k8s.kueue_status import admitted_count
    from capstan.k8s.training_launcher import KubeTrainingOptions, kueue_min_workers
    from capstan.training.launcher import GangStart
    from capstan.training.spec import parse_job_spec

    assert admitted_count({"status": {"conditions": PENDING}}) is None  # no quota reserved yet
    assert admitted_count({"status": {"admission": {"podSetAssignments": [{"name": "main"}]}}}) is None
    assert admitted_count({"status": {"admission": {"podSetAssignments": [
        {"name": "main", "count": 3}, {"name": "extra", "count": True}]}}}) == 3
    spec = parse_job_spec({"name": "j", "entry": "train.py", "workers": 4, "image": IMAGE})
    kueue, capstan = KubeTrainingOptions(kueue=True), KubeTrainingOptions()
    assert kueue_min_workers(kueue, GangStart(spec, "j", "default", None, 1, 0, min_workers=2)) == 2
    assert kueue_min_workers(capstan, GangStart(spec, "j", "default", None, 1, 0, min_workers=2)) is None
    assert kueue_min_workers(kueue, GangStart(spec, "j", "default", None, 1, 0)) is None
    assert kueue_min_workers(kueue, GangStart(spec, "j", "default", None, 1, 0, min_workers=4)) is None

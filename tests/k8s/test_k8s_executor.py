"""The Kubernetes executor's flows, run against the in-memory API EMULATOR (tests/k8s/emulator.py: a real HTTP
server that the real lightkube client talks to and that validates every object created), not a cluster. The test
plays the scheduler, the kubelet and the Job controller: it creates the pods and writes their statuses and logs.

Each test also runs against a real cluster when ``CAPSTAN_TEST_KUBECONFIG`` names a kubeconfig, and skips with
that reason otherwise; flows that need the emulator to play the kubelet skip on a real cluster, saying so.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from emulator import (
    T0,
    T1,
    Cluster,
    crds,
    ended_pod,
    job_done,
    open_cluster,
    running_pod,
    unschedulable_pod,
)

from capstan.events.records import Event
from capstan.k8s.client import KubeApi, connect
from capstan.k8s.executor import ATTEMPT_LABEL, KubeOptions, KubernetesExecutor, attempt_job_name
from capstan.k8s.pods import restricted_violations
from capstan.k8s.validate import check_documents
from capstan.pipelines.execution import CANCELLED, Outcome, Task
from capstan.pipelines.remote_step import outcome_path
from capstan.services import Services
from capstan.settings import Settings

CODE = "sha256:" + "ab" * 32


@dataclass
class Harness:
    """One executor on ``cluster`` with real stores (SQLite event log, local artifact store)."""

    cluster: Cluster
    api: KubeApi
    services: Services
    executor: KubernetesExecutor
    run_dir: Path
    outcomes: queue.SimpleQueue[Outcome] = field(default_factory=queue.SimpleQueue)
    started: list[str] = field(default_factory=list)

    def task(self, step: str = "train", attempt: int = 1, run_id: str = "run0123456789abcdef") -> Task:
        return Task(run_id, step, step, attempt, "default", "python", "flow", None, step, None, {}, {},
                    {"CAPSTAN_RUN_ID": run_id, "CAPSTAN_STEP": step, "CAPSTAN_ATTEMPT": str(attempt)}, "flow.py:1",
                    "process", str(self.run_dir / f"{step}.{attempt}.log"), None,
                    str(self.run_dir / f"{step}.{attempt}.out.json"), None)

    def outcome(self, timeout: float = 20.0) -> Outcome:
        return self.outcomes.get(timeout=timeout)

    def events(self, task: Task) -> list[Event]:
        return list(self.services.events.list("step", f"{task.run_id}/{task.step_id}"))

    def record_success(self, task: Task) -> None:
        """What ``capstan worker run-step`` leaves in the artifact store when the step succeeded."""
        done = Outcome(task.run_id, task.step_id, task.attempt, True, "", "", False, 0, 1, 2)
        self.services.artifacts.put_bytes(outcome_path(task.run_id, task.step_id, task.attempt), done.to_json())


@pytest.fixture
def harness(cluster: Cluster, tmp_path: Path) -> Iterator[Harness]:
    services = Services.open(Settings.for_home(tmp_path / "home"))
    api = connect(kubeconfig=str(cluster.kubeconfig))
    run_dir = tmp_path / "runs"
    run_dir.mkdir()
    outcomes: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
    started: list[str] = []
    executor = KubernetesExecutor(
        outcomes.put, started.append, api=api, events=services.events, store=services.artifacts,
        run_info=lambda run_id: ("/src/flows/flow.py:flow", {"n": 3}),
        ship=lambda canonical: (CODE, "flow.py:flow"),
        options=KubeOptions(watch_timeout_s=5, log_wait_s=2, stuck_after_s=1.0))
    yield Harness(cluster, api, services, executor, run_dir, outcomes, started)
    executor.shutdown()
    api.close()


def _job(h: Harness, task: Task) -> dict[str, Any]:
    emu = h.cluster.kubelet()
    if not h.outcomes.empty():
        raise AssertionError(f"the attempt ended before its Job was created: {h.outcomes.get()}")
    return emu.wait_for("jobs", attempt_job_name(task), lambda d: d["spec"].get("suspend") is False)


def test_a_step_runs_as_a_job_watched_to_completion(harness: Harness) -> None:
    h = harness
    emu = h.cluster.kubelet()
    task = h.task()
    h.executor.start(task, h.executor.place(None))
    job = _job(h, task)
    # Created suspended, then admitted by Capstan's queue with a merge patch.
    assert ("PATCH", f"/apis/batch/v1/namespaces/{emu.namespace}/jobs/{job['metadata']['name']}",
            "application/merge-patch+json") in emu.requests
    assert not check_documents([{k: v for k, v in job.items() if k != "status"}], crds=crds()).errors
    assert restricted_violations(job["spec"]["template"]["spec"]) == []
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:3] == ["capstan", "worker", "run-step"]
    assert command[command.index("--node") + 1] == "train"
    assert command[command.index("--pipeline") + 1] == "flow.py:flow"
    assert command[-6:] == ["--run", task.run_id, "--attempt", "1", "--code", CODE]
    assert "--param" in command and "n=3" in command
    assert job["metadata"]["labels"][ATTEMPT_LABEL] == "1"

    emu.add_pod(job["metadata"]["name"], "train-pod", running_pod())
    emu.append_log("train-pod", "epoch 1\n")
    # The executor reads the latest documents: a pod that ended before it looked is never seen running (it
    # still counts as started), so the pod ends only once the Running event is there.
    import time

    deadline = time.monotonic() + 10
    while "Running" not in [e.reason for e in h.events(task)]:
        assert time.monotonic() < deadline, [e.reason for e in h.events(task)]
        time.sleep(0.05)
    h.record_success(task)
    emu.append_log("train-pod", "done\n")
    emu.set_status("pods", "train-pod", ended_pod())
    emu.set_status("jobs", job["metadata"]["name"], job_done())

    outcome = h.outcome()
    assert outcome.ok and outcome.key == task.key
    assert h.started == [task.key]
    assert outcome.log_path is not None
    assert h.services.artifacts.read_bytes(outcome.log_path) == b"epoch 1\ndone\n"
    assert ("jobs", job["metadata"]["name"], "Background") in emu.deletions  # collected once finished
    reasons = [e.reason for e in h.events(task)]
    for expected in ("JobCreated", "Admitted", "Running", "Succeeded", "JobCollected"):
        assert expected in reasons, reasons


def test_an_oom_killed_container_fails_the_attempt_with_its_reason(harness: Harness) -> None:
    h = harness
    emu = h.cluster.kubelet()
    task = h.task("grow")
    h.executor.start(task, h.executor.place(None))
    name = _job(h, task)["metadata"]["name"]
    emu.add_pod(name, "grow-pod", running_pod())
    emu.set_status("pods", "grow-pod", ended_pod(code=137, reason="OOMKilled"))
    emu.set_status("jobs", name, job_done(failed="BackoffLimitExceeded", message="Job has reached the specified "
                                          "backoff limit"))
    outcome = h.outcome()
    assert not outcome.ok
    assert outcome.reason == "OOMKilled"
    assert outcome.exit_code == 137
    assert "container step in pod grow-pod was OOMKilled" in outcome.message
    warning = [e for e in h.events(task) if e.reason == "OOMKilled"]
    assert warning and warning[0].type == "Warning" and warning[0].data["container"] == "step"


def test_a_failure_the_worker_recorded_is_the_outcome(harness: Harness) -> None:
    h = harness
    emu = h.cluster.kubelet()
    task = h.task("raise")
    h.executor.start(task, h.executor.place(None))
    name = _job(h, task)["metadata"]["name"]
    emu.add_pod(name, "raise-pod", running_pod())
    recorded = Outcome(task.run_id, task.step_id, task.attempt, False, "Exception", "ValueError: bad row 7", True,
                       1, 1, 2)
    h.services.artifacts.put_bytes(outcome_path(task.run_id, task.step_id, task.attempt), recorded.to_json())
    emu.set_status("pods", "raise-pod", ended_pod(code=1, reason="Error"))
    emu.set_status("jobs", name, job_done(failed="BackoffLimitExceeded", message="Job has reached the specified "
                                          "backoff limit"))
    outcome = h.outcome()
    assert (outcome.reason, outcome.message, outcome.retryable) == ("Exception", "ValueError: bad row 7", True)


def test_an_evicted_pod_fails_the_attempt_as_retryable(harness: Harness) -> None:
    h = harness
    emu = h.cluster.kubelet()
    task = h.task("evicted")
    h.executor.start(task, h.executor.place(None))
    name = _job(h, task)["metadata"]["name"]
    emu.add_pod(name, "evicted-pod", running_pod())
    emu.set_status("pods", "evicted-pod", {
        "phase": "Failed", "reason": "Evicted",
        "message": "The node was low on resource: memory. Container step was using 3Gi, which exceeds its request "
                   "of 1Gi."})
    emu.set_status("jobs", name, job_done(failed="BackoffLimitExceeded"))
    outcome = h.outcome()
    assert outcome.reason == "Evicted" and outcome.retryable
    assert "low on resource: memory" in outcome.message


def test_a_stuck_image_pull_is_given_up_on_with_its_reason(harness: Harness) -> None:
    h = harness
    emu = h.cluster.kubelet()
    task = h.task("typo")
    h.executor.start(task, h.executor.place(None))
    name = _job(h, task)["metadata"]["name"]
    emu.add_pod(name, "typo-pod", {
        "phase": "Pending", "containerStatuses": [{
            "name": "step", "ready": False, "restartCount": 0, "image": "registry/nope:1", "imageID": "",
            "state": {"waiting": {"reason": "ImagePullBackOff",
                                  "message": 'Back-off pulling image "registry/nope:1"'}}}]})
    outcome = h.outcome()
    assert outcome.reason == "ImagePullBackOff" and not outcome.retryable
    assert 'Back-off pulling image "registry/nope:1"' in outcome.message
    assert "GaveUp" in [e.reason for e in h.events(task)]
    assert emu.get("jobs", name) is None


def test_an_unschedulable_pod_is_reported_with_the_scheduler_message_and_cancel_deletes_the_job(
        harness: Harness) -> None:
    h = harness
    emu = h.cluster.kubelet()
    task = h.task("big")
    h.executor.start(task, h.executor.place(None))
    name = _job(h, task)["metadata"]["name"]
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available."
    emu.add_pod(name, "big-pod", unschedulable_pod(message))
    emu.wait_for("pods", "big-pod")

    def seen() -> list[Event]:
        return [e for e in h.events(task) if e.reason == "Unschedulable"]

    import time

    deadline = time.monotonic() + 10
    while not seen() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen() and message in seen()[0].message and seen()[0].type == "Warning"
    assert h.outcomes.empty()  # still pending: the autoscaler may add a node

    h.executor.stop(task.key, CANCELLED)
    outcome = h.outcome()
    assert outcome.reason == CANCELLED and not outcome.retryable
    assert ("jobs", name, "Foreground") in emu.deletions
    assert emu.get("jobs", name) is None and emu.get("pods", "big-pod") is None


def test_the_log_survives_the_pods_deletion(harness: Harness) -> None:
    h = harness
    emu = h.cluster.kubelet()
    task = h.task("talk")
    h.executor.start(task, h.executor.place(None))
    name = _job(h, task)["metadata"]["name"]
    emu.add_pod(name, "talk-pod", running_pod())
    emu.append_log("talk-pod", "line one\nline two\n")
    emu.set_status("pods", "talk-pod", ended_pod())
    h.record_success(task)
    import time

    deadline = time.monotonic() + 10
    live = Path(task.live_log)
    while (live.read_bytes() if live.exists() else b"") != b"line one\nline two\n":
        assert time.monotonic() < deadline, "the log was not streamed into the live log file"
        time.sleep(0.05)
    emu.delete("pods", "talk-pod")  # pod garbage collection before the Job is marked complete
    emu.set_status("jobs", name, job_done())
    outcome = h.outcome()
    assert outcome.ok and outcome.log_path is not None
    assert h.services.artifacts.read_bytes(outcome.log_path) == b"line one\nline two\n"
    assert not Path(task.live_log).exists()


def test_the_watch_resumes_after_it_expires(harness: Harness) -> None:
    h = harness
    emu = h.cluster.kubelet()
    task = h.task("slow")
    h.executor.start(task, h.executor.place(None))
    name = _job(h, task)["metadata"]["name"]
    emu.add_pod(name, "slow-pod", running_pod())
    import time

    deadline = time.monotonic() + 10
    while not h.started:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    emu.expire_history()  # etcd compacted: the open watches end, resuming from their version gets 410 Gone
    emu.set_status("pods", "slow-pod", ended_pod())
    h.record_success(task)
    emu.set_status("jobs", name, job_done())
    outcome = h.outcome()
    assert outcome.ok
    assert emu.expired_watches >= 1
    assert any(e.reason == "WatchResumed" and "410" not in e.message and "expired" in e.message
               for e in h.events(task))


def test_a_step_no_node_or_quota_can_hold_is_refused_before_submission(harness: Harness) -> None:
    import capstan.pipelines as cp

    h = harness
    emu = h.cluster.kubelet()
    emu.put({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "team", "namespace": emu.namespace},
             "spec": {"hard": {"requests.cpu": "4", "requests.memory": "16Gi"}}}, "resourcequotas")
    emu.put({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
             "status": {"allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"}}}, "nodes", validate=False)

    @cp.step(resources={"cpu": 6, "memory": "8Gi"})
    def heavy() -> int:
        return 1

    h.executor.prepare([heavy])
    task = h.task("heavy")
    h.executor.start(task, h.executor.place(None))
    outcome = h.outcome()
    assert outcome.reason == "Unschedulable" and not outcome.retryable
    assert "ResourceQuota team" in outcome.message and "requests.cpu: 4" in outcome.message
    assert not any(m == "POST" and p.endswith("/jobs") for m, p, _ in emu.requests)


def test_a_deleted_job_is_reported_lost(harness: Harness) -> None:
    h = harness
    emu = h.cluster.kubelet()
    task = h.task("gone")
    h.executor.start(task, h.executor.place(None))
    name = _job(h, task)["metadata"]["name"]
    emu.delete("jobs", name)  # someone ran kubectl delete job
    outcome = h.outcome()
    assert outcome.reason == "WorkerLost" and outcome.retryable
    assert "deleted before it finished" in outcome.message


def test_recover_follows_a_job_left_by_an_earlier_orchestrator(harness: Harness) -> None:
    h = harness
    emu = h.cluster.kubelet()
    task = h.task("again")
    assert h.executor.recover(task, h.executor.placement_of(None, None), 1).reason == "Interrupted"  # type: ignore[union-attr]
    h.executor.start(task, h.executor.place(None))
    name = _job(h, task)["metadata"]["name"]
    second: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
    later = KubernetesExecutor(second.put, None, api=h.api, events=h.services.events, store=h.services.artifacts,
                               run_info=lambda run_id: ("/x/flow.py:flow", {}), ship=lambda c: (CODE, "flow.py:flow"),
                               options=KubeOptions(watch_timeout_s=5, log_wait_s=1))
    try:
        assert later.recover(task, later.placement_of(None, None), 1) is None
        h.record_success(task)
        emu.set_status("jobs", name, job_done())
        assert second.get(timeout=20).ok
    finally:
        later.shutdown()


@pytest.fixture(params=["emulator", "real-cluster"])
def kueue_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """A cluster with Kueue installed: the emulator serving the Kueue CRDs, or the real cluster."""
    yield from open_cluster(request.param, tmp_path, kueue=True)


def test_with_kueue_installed_kueue_admits_and_its_workload_status_is_recorded(kueue_cluster: Cluster,
                                                                                tmp_path: Path) -> None:
    emu = kueue_cluster.kubelet()
    services = Services.open(Settings.for_home(tmp_path / "home"))
    api = connect(kubeconfig=str(kueue_cluster.kubeconfig))
    outcomes: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
    executor = KubernetesExecutor(outcomes.put, None, api=api, events=services.events, store=services.artifacts,
                                  run_info=lambda run_id: ("/x/flow.py:flow", {}),
                                  ship=lambda c: (CODE, "flow.py:flow"),
                                  options=KubeOptions(queue="team-a", watch_timeout_s=5, log_wait_s=1))
    h = Harness(kueue_cluster, api, services, executor, tmp_path, outcomes)
    try:
        task = h.task("queued")
        executor.start(task, executor.place(None))
        name = attempt_job_name(task)
        job = emu.wait_for("jobs", name)
        assert job["spec"]["suspend"] is True
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        assert not any(m == "PATCH" and p.endswith(f"/jobs/{name}") for m, p, _ in emu.requests)  # Kueue's job
        template = job["spec"]["template"]
        workload = {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "Workload",
                    "metadata": {"name": f"job-{name}", "namespace": emu.namespace,
                                 "labels": {"app.kubernetes.io/managed-by": "capstan"},
                                 "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                                      "uid": job["metadata"]["uid"], "controller": True}]},
                    "spec": {"queueName": "team-a", "podSets": [{"name": "main", "count": 1,
                                                                 "template": template}]}}
        emu.put(workload, "workloads")  # validated against Kueue's CRD, CEL rules included
        emu.set_status("workloads", f"job-{name}", {"conditions": [
            {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved", "lastTransitionTime": T0,
             "message": "Quota reserved in ClusterQueue team-a-cq", "observedGeneration": 1},
            {"type": "Admitted", "status": "True", "reason": "Admitted", "lastTransitionTime": T1,
             "message": "The workload is admitted", "observedGeneration": 1}]})
        emu.put({**job, "spec": {**job["spec"], "suspend": False}}, "jobs", validate=False)  # Kueue unsuspends
        h.record_success(task)
        emu.set_status("jobs", name, job_done())
        assert outcomes.get(timeout=20).ok
        admitted = [e for e in h.events(task) if e.reason == "KueueAdmitted"]
        assert admitted and "The workload is admitted" in admitted[0].message
    finally:
        executor.shutdown()
        api.close()


def test_an_unreachable_cluster_or_a_missing_context_is_one_line(tmp_path: Path) -> None:
    from capstan.k8s.client import JOB, KubeUnreachable

    emu_config = tmp_path / "kubeconfig"
    emu_config.write_text(
        '{"apiVersion": "v1", "kind": "Config", "current-context": "gone", "clusters": [{"name": "c", "cluster": '
        '{"server": "http://127.0.0.1:9"}}], "users": [{"name": "u", "user": {"token": "t"}}], "contexts": '
        '[{"name": "gone", "context": {"cluster": "c", "user": "u"}}]}', encoding="utf-8")
    api = connect(kubeconfig=str(emu_config))
    with pytest.raises(KubeUnreachable) as info:
        api.list(JOB)
    assert info.value.message.startswith("cannot reach the Kubernetes API server: ") and "\n" not in info.value.message
    with pytest.raises(KubeUnreachable, match="Context 'nope' not found"):
        connect(kubeconfig=str(emu_config), context="nope")
    with pytest.raises(KubeUnreachable, match=r"cannot read the kubeconfig|no usable Kubernetes configuration"):
        connect(kubeconfig=str(tmp_path / "missing"))


def test_a_job_the_api_server_refuses_fails_the_attempt_with_the_servers_message(harness: Harness) -> None:
    h = harness
    emu = h.cluster.kubelet()
    task = h.task("twice")
    name = attempt_job_name(task)
    leftover = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": emu.namespace},
                "spec": {"template": {"spec": {"restartPolicy": "Never",
                                               "containers": [{"name": "step", "image": "busybox"}]}}}}
    emu.put(leftover, "jobs")  # left behind by someone else
    h.executor.start(task, h.executor.place(None))
    outcome = h.outcome()
    assert outcome.reason == "Rejected" and not outcome.retryable
    assert f'jobs "{name}" already exists' in outcome.message

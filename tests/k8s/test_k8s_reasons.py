"""capstan.k8s.reasons: Pod and Job status documents (tests/k8s/statuses/, shaped as the API server returns them and
checked against the Kubernetes 1.33 schema) mapped to Capstan states, reason codes, messages and containers."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from capstan.k8s.reasons import DISRUPTIONS, STUCK, Reason, WorkloadStatus, job_status, pod_status
from capstan.troubleshoot.classify import Cause, Facts, classify

STATUSES = Path(__file__).parent / "statuses"
UNSCHEDULABLE = ("0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available: "
                 "3 No preemption victims found for incoming pod.")


def load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((STATUSES / f"{name}.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize("path", sorted(STATUSES.glob("*.yaml")), ids=lambda p: p.stem)
def test_fixtures_are_valid_kubernetes_objects(path: Path) -> None:
    kubernetes_validate.validate(yaml.safe_load(path.read_text()), "1.33", strict=True)


# -- one per reason ------------------------------------------------------------------------------------------------
def test_oomkilled_names_the_container_and_exit_code() -> None:
    s = pod_status(load("pod-oomkilled"))
    assert (s.state, s.reason, s.container, s.pod, s.exit_code, s.signal) == (
        "failed", "OOMKilled", "main", "train-0-k7x2p", 137, "SIGKILL")
    assert s.message == "container main in pod train-0-k7x2p was OOMKilled (exit code 137, SIGKILL)"
    assert not s.retryable


def test_image_pull_back_off_is_pending_with_the_pull_error() -> None:
    s = pod_status(load("pod-imagepullbackoff"))
    assert (s.state, s.reason, s.container, s.pod) == ("pending", "ImagePullBackOff", "main", "train-0-b7v2c")
    assert "registry.example.com/capstan/runtime:0.41.0: not found" in s.message
    assert s.reason in STUCK


def test_err_image_pull() -> None:
    s = pod_status(load("pod-errimagepull"))
    assert (s.state, s.reason, s.container) == ("pending", "ErrImagePull", "main")
    assert "pull access denied" in s.message


def test_crash_loop_back_off_reports_the_last_termination() -> None:
    s = pod_status(load("pod-crashloopbackoff"))
    assert (s.state, s.reason, s.container, s.exit_code, s.restarts) == ("running", "CrashLoopBackOff", "main", 137, 4)
    assert s.message == ("container main in pod serve-0-p0o9i restarted 4 times; last: container main in pod "
                         "serve-0-p0o9i was OOMKilled (exit code 137, SIGKILL)")


def test_unschedulable_carries_the_schedulers_message() -> None:
    s = pod_status(load("pod-unschedulable"))
    assert (s.state, s.reason, s.container) == ("pending", "Unschedulable", None)
    assert s.message == f"pod train-0-u8y7t cannot be scheduled: {UNSCHEDULABLE}"


def test_evicted_names_the_container_from_the_kubelets_message() -> None:
    s = pod_status(load("pod-evicted"))
    assert (s.state, s.reason, s.container, s.retryable) == ("failed", "Evicted", "main", True)
    assert s.message.startswith("pod train-0-e3v1c was evicted: The node was low on resource: memory.")
    assert s.exit_code is None  # the container's 137 is the eviction's doing, not its own


def test_pod_deadline_exceeded() -> None:
    s = pod_status(load("pod-deadline"))
    assert (s.state, s.reason) == ("failed", "DeadlineExceeded")
    assert "longer than the specified deadline" in s.message


@pytest.mark.parametrize(("name", "state", "why"), [
    ("pod-node-gone", "failed", "DeletionByPodGC"),
    ("pod-node-tainted", "running", "DeletionByTaintManager"),
    ("pod-node-shutdown", "failed", "TerminationByKubelet"),
])
def test_node_lost_from_the_disruption_target_condition(name: str, state: str, why: str) -> None:
    s = pod_status(load(name))
    assert (s.state, s.reason, s.retryable) == (state, "NodeLost", True)
    assert why in s.message


def test_node_lost_from_the_node_controllers_pod_reason() -> None:
    s = pod_status(load("pod-nodelost-legacy"))
    assert (s.reason, s.retryable) == ("NodeLost", True)
    assert "Node gpu-node-2 which was running pod train-1-l9g2y is unresponsive" in s.message


def test_preempted_by_the_scheduler() -> None:
    s = pod_status(load("pod-preempted"))
    assert (s.state, s.reason, s.retryable) == ("failed", "Preempted", True)
    assert "preempting to accommodate a higher priority pod" in s.message
    assert {Reason.EVICTED, Reason.NODE_LOST, Reason.PREEMPTED} == DISRUPTIONS


def test_job_backoff_limit_exceeded_without_pods() -> None:
    s = job_status(load("job-backofflimit"))
    assert (s.state, s.reason, s.job_reason) == ("failed", "BackoffLimitExceeded", "BackoffLimitExceeded")
    assert s.message == "job train failed (BackoffLimitExceeded): Job has reached the specified backoff limit"


def test_job_deadline_exceeded_stays_the_jobs_reason() -> None:
    s = job_status(load("job-deadline"), [load("pod-deadline")])
    assert (s.state, s.reason, s.pod) == ("failed", "DeadlineExceeded", "eval-0-d1l2n")
    assert s.message.startswith("job eval failed (DeadlineExceeded): Job was active longer than specified deadline; ")


def test_job_pod_failure_policy_names_container_pod_and_exit_code_from_the_message() -> None:
    s = job_status(load("job-podfailurepolicy"))
    assert (s.state, s.reason, s.container, s.pod, s.exit_code) == (
        "failed", "PodFailurePolicy", "main", "prep-0-j5k6l", 2)
    assert "matching FailJob rule at index 0" in s.message


def test_job_failed_indexes() -> None:
    s = job_status(load("job-failed-indexes"))
    assert (s.state, s.reason) == ("failed", "FailedIndexes")


# -- containers: exits, signals, init containers, precedence -------------------------------------------------------
def test_exit_137_without_oom_is_killed() -> None:
    s = pod_status(load("pod-killed-137"))
    assert (s.reason, s.exit_code, s.signal) == ("Killed", 137, "SIGKILL")
    assert s.message == "container main in pod train-0-q4w8n was killed (exit code 137, SIGKILL)"


def test_signal_exit_codes_are_named() -> None:
    s = pod_status(load("pod-segfault"))
    assert (s.reason, s.exit_code, s.signal) == ("NonZeroExit", 139, "SIGSEGV")


def test_non_zero_exit_keeps_the_termination_message() -> None:
    s = pod_status(load("pod-nonzero-exit"))
    assert (s.reason, s.exit_code, s.signal) == ("NonZeroExit", 1, None)
    assert "ValueError: learning rate must be positive" in s.message


def test_start_error_passes_the_runtimes_reason_through() -> None:
    s = pod_status(load("pod-start-error"))
    assert (s.reason, s.exit_code) == ("StartError", 128)
    assert 'exec: "pyhton": executable file not found' in s.message


def test_a_failed_init_container_is_the_pods_reason() -> None:
    s = pod_status(load("pod-init-failed"))
    assert (s.state, s.reason, s.container, s.exit_code) == ("failed", "NonZeroExit", "fetch-inputs", 1)
    assert "artifact s3://capstan/demo/inputs/3fa9 not found" in s.message


def test_oomkilled_beats_a_sidecars_earlier_error() -> None:
    s = pod_status(load("pod-sidecar-and-oom"))
    assert (s.reason, s.container) == ("OOMKilled", "main")


def test_among_equal_failures_the_first_to_fail_wins() -> None:
    s = pod_status(load("pod-two-exits"))
    assert (s.reason, s.container, s.exit_code) == ("NonZeroExit", "metrics", 1)


def test_kubelet_rejection_keeps_its_reason() -> None:
    s = pod_status(load("pod-rejected-gpu"))
    assert (s.state, s.reason) == ("failed", "OutOfnvidia.com/gpu")
    assert "nvidia.com/gpu, requested: 1, used: 1, capacity: 1" in s.message


# -- job precedence ------------------------------------------------------------------------------------------------
def test_backoff_limit_job_whose_pod_was_oomkilled_reports_oomkilled() -> None:
    pods = [load("pod-nonzero-exit"), load("pod-oomkilled"), load("pod-evicted")]
    s = job_status(load("job-backofflimit"), pods)
    assert (s.state, s.reason, s.job_reason, s.container, s.pod, s.exit_code) == (
        "failed", "OOMKilled", "BackoffLimitExceeded", "main", "train-0-k7x2p", 137)
    assert s.message == ("container main in pod train-0-k7x2p was OOMKilled (exit code 137, SIGKILL); "
                         "job train failed (BackoffLimitExceeded): Job has reached the specified backoff limit")
    assert not s.retryable


def test_a_failed_jobs_first_failed_pod_wins_among_equals() -> None:
    later = load("pod-killed-137")
    later["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = "2026-12-07T06:30:00Z"
    first = load("pod-segfault")
    first["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = "2026-12-07T06:02:00Z"
    s = job_status(load("job-backofflimit"), [later, load("pod-nonzero-exit"), first])
    assert (s.reason, s.pod) == ("NonZeroExit", "train-0-s9g3f")  # NonZeroExit before Killed, then the earliest


def test_a_job_with_an_evicted_pod_only_reports_the_eviction() -> None:
    s = job_status(load("job-backofflimit"), [load("pod-evicted"), load("pod-succeeded")])
    assert (s.state, s.reason, s.job_reason, s.container, s.retryable) == (
        "failed", "Evicted", "BackoffLimitExceeded", "main", False)


# -- healthy and queued --------------------------------------------------------------------------------------------
def test_running_pod_and_job() -> None:
    assert pod_status(load("pod-running")) == WorkloadStatus("running", "Running", "pod train-1-a2s3d is running",
                                                             pod="train-1-a2s3d")
    s = job_status(load("job-running"), [load("pod-running")])
    assert (s.state, s.reason, s.message) == ("running", "Running", "job train is running (1 active, 0 succeeded, "
                                                                    "0 failed)")


def test_job_counters_alone_say_running() -> None:
    s = job_status(load("job-running"))
    assert (s.state, s.reason) == ("running", "Running")


def test_succeeded_pod_and_job() -> None:
    assert pod_status(load("pod-succeeded")).state == "succeeded"
    s = job_status(load("job-complete"), [load("pod-succeeded")])
    assert (s.state, s.reason, s.message) == ("succeeded", "Succeeded",
                                              "job train succeeded: Reached expected number of succeeded pods")


def test_success_criteria_met_is_succeeded_while_pods_terminate() -> None:
    s = job_status(load("job-success-policy"), [load("pod-running")])
    assert (s.state, s.reason) == ("succeeded", "Succeeded")
    assert "Matched rules at index 0" in s.message


def test_suspended_job_is_queued() -> None:
    s = job_status(load("job-suspended"))
    assert (s.state, s.reason, s.message) == ("pending", "Suspended", "job train is suspended (queued): Job suspended")
    fresh = job_status(load("job-created"))  # created suspended, before the controller wrote a condition
    assert (fresh.state, fresh.reason) == ("pending", "Suspended")


def test_an_active_jobs_stuck_pod_is_its_reason() -> None:
    job = load("job-running")
    s = job_status(job, [load("pod-unschedulable")])
    assert (s.state, s.reason, s.pod) == ("pending", "Unschedulable", "train-0-u8y7t")
    assert UNSCHEDULABLE in s.message
    s = job_status(job, [load("pod-running"), load("pod-imagepullbackoff")])
    assert (s.state, s.reason, s.container) == ("running", "ImagePullBackOff", "main")


def test_container_creating_is_pending() -> None:
    s = pod_status(load("pod-containercreating"))
    assert (s.state, s.reason, s.container) == ("pending", "ContainerCreating", "main")
    s = job_status(load("job-running"), [load("pod-containercreating")])
    assert (s.state, s.reason) == ("pending", "ContainerCreating")


# -- missing and unknown fields ------------------------------------------------------------------------------------
@pytest.mark.parametrize("doc", [
    {}, {"metadata": {"name": "p"}}, {"status": None}, {"status": {"phase": "Pending", "conditions": "junk"}},
    {"status": {"containerStatuses": [{"name": "main"}, "junk", {"state": {"terminated": {}}}]}},
])
def test_pod_with_no_or_odd_status_is_pending(doc: dict[str, Any]) -> None:
    assert pod_status(doc).state == "pending"


def test_pod_with_no_status_yet_fixture() -> None:
    s = pod_status(load("pod-no-status"))
    assert (s.state, s.reason, s.pod) == ("pending", "Pending", "train-0-z7z7z")
    assert s.message == "pod train-0-z7z7z is pending"


def test_unknown_phase_is_a_lost_node_still_counted_running() -> None:
    pod = load("pod-running")
    pod["status"]["phase"] = "Unknown"
    s = pod_status(pod)
    assert (s.state, s.reason, s.retryable) == ("running", "NodeLost", True)


def test_job_with_no_status_and_no_pods_is_pending() -> None:
    job = load("job-created")
    job["spec"]["suspend"] = False
    assert job_status(job) == WorkloadStatus("pending", "Pending", "job train is pending (0 active, 0 succeeded, "
                                                                   "0 failed)")
    assert job_status({}).state == "pending"


def test_failed_pod_without_container_statuses() -> None:
    s = pod_status({"metadata": {"name": "p"}, "status": {"phase": "Failed"}})
    assert (s.state, s.reason, s.message) == ("failed", "Failed", "pod p failed")


def test_documents_are_not_modified() -> None:
    pods = [load("pod-oomkilled"), load("pod-crashloopbackoff")]
    job = load("job-backofflimit")
    before = copy.deepcopy((job, pods))
    job_status(job, pods)
    assert (job, pods) == before


# -- the same vocabulary as capstan why ----------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "cause"), [
    ("pod-oomkilled", Cause.OOM_KILLED), ("pod-deadline", Cause.TIMEOUT), ("pod-evicted", Cause.ERROR),
    ("pod-nonzero-exit", Cause.NON_ZERO_EXIT), ("pod-preempted", Cause.PREEMPTED),
])
def test_statuses_feed_the_troubleshooting_classifier(name: str, cause: Cause) -> None:
    s = pod_status(load(name))
    assert s.state == "failed"
    facts = Facts(kind="step", phase=s.state, reason=s.reason, message=s.message, exit_code=s.exit_code)
    assert classify(facts).cause is cause


def test_to_dict() -> None:
    d = pod_status(load("pod-oomkilled")).to_dict()
    assert d == {"state": "failed", "reason": "OOMKilled", "container": "main", "pod": "train-0-k7x2p",
                 "exit_code": 137, "signal": "SIGKILL", "restarts": 0, "job_reason": "", "retryable": False,
                 "message": "container main in pod train-0-k7x2p was OOMKilled (exit code 137, SIGKILL)"}

"""capstan.k8s.kueue_status: Kueue ``Workload`` documents (tests/k8s/workloads/, shaped as the API server returns
them for Kueue's v1beta1 and v1beta2 and validated against the Kueue CRD, status included) mapped to why Kueue keeps
a workload pending, admitted it or evicted it. Pure: no cluster, no emulator."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import yaml

from capstan.k8s.kueue_status import KueueStatus, Preemptor, Shortfall, kueue_status, latest, shortfalls

WORKLOADS = Path(__file__).parent / "workloads"


def load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((WORKLOADS / f"{name}.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def status_of(name: str) -> KueueStatus:
    found = kueue_status(load(name))
    assert found is not None
    return found


@pytest.mark.parametrize("path", sorted(WORKLOADS.glob("*.yaml")), ids=lambda p: p.stem)
def test_fixtures_are_valid_kueue_workloads(path: Path, k8s_crds_dir: Path) -> None:
    import jsonschema.validators
    from emulator import crds as loaded_crds

    from capstan.k8s.validate import check_documents

    doc = yaml.safe_load(path.read_text())
    crds = loaded_crds()  # read once per session
    spec_only = {k: v for k, v in doc.items() if k != "status"}
    spec_only["metadata"] = {k: v for k, v in doc["metadata"].items()
                             if k not in ("uid", "resourceVersion", "creationTimestamp", "generation")}
    assert not check_documents([spec_only], crds=crds).errors
    # The status too, against the CRD's own schema of its version (the emulator leaves status unchecked).
    status_schema = _status_schemas(k8s_crds_dir)[doc["apiVersion"].rpartition("/")[2]]
    jsonschema.validators.validator_for(status_schema)(status_schema).validate(doc["status"])


@functools.cache
def _status_schemas(crds_dir: Path) -> dict[str, dict[str, Any]]:
    """The Workload CRD's status schema per version, read once (the file is 1.4 MB: reading it per fixture cost
    seconds each)."""
    raw = yaml.load((crds_dir / "kueue" / "kueue.x-k8s.io_workloads.yaml").read_text(),
                    Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return {v["name"]: v["schema"]["openAPIV3Schema"]["properties"]["status"] for v in raw["spec"]["versions"]}


def test_pending_for_gpus_names_the_flavor_the_resource_and_how_many_more() -> None:
    s = status_of("pending-gpu")
    assert (s.state, s.reason, s.kueue_reason) == ("pending", "KueuePending", "Pending")
    assert s.holds_it and s.local_queue == "team-a" and s.workload == "job-llama-ft-a1-5b7c9"
    assert s.shortfalls == (Shortfall("main", "nvidia.com/gpu", "a100", more="2"),)
    assert s.message == ("couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in "
                         "flavor a100, 2 more needed")
    assert s.summary.startswith("Kueue has not admitted workload job-llama-ft-a1-5b7c9 in LocalQueue team-a: pod set "
                                "main needs 2 more nvidia.com/gpu in flavor a100 than is free (couldn't assign")
    assert "nvidia.com/gpu in flavor a100" in s.hint and "wait for workloads" in s.hint


def test_a_request_above_the_flavors_capacity_never_fits() -> None:
    s = status_of("never-fits")  # v1beta1
    assert s.state == "pending"
    assert s.shortfalls == (Shortfall("main", "nvidia.com/gpu", "a100", unused=False, never=True, request="16",
                                      capacity="8"),)
    assert "Kueue cannot admit" in s.summary and "more than its most (8): it can never fit" in s.summary
    assert s.hint.startswith("ask for at most 8 nvidia.com/gpu")


def test_an_inadmissible_workload_names_the_missing_local_queue() -> None:
    s = status_of("inadmissible")
    assert (s.state, s.kueue_reason, s.shortfalls) == ("pending", "Inadmissible", ())
    assert s.summary == ("Kueue cannot admit workload job-capstan-run0123-prep-a1-9d8c7 in LocalQueue team-b: "
                         "LocalQueue team-b doesn't exist")
    assert "create the LocalQueue" in s.hint


def test_every_pod_set_and_resource_kueue_names_is_a_shortfall() -> None:
    s = status_of("multi-podset")
    assert s.shortfalls == (Shortfall("launcher", "cpu", "default-flavor", more="500m"),
                            Shortfall("worker", "memory", "default-flavor", more="16Gi"),
                            Shortfall("worker", "nvidia.com/gpu", "a100", more="4"))
    assert shortfalls("ClusterQueue team-a-cq is inactive") == ()


def test_admitted_names_the_cluster_queue_and_the_flavors() -> None:
    s = status_of("admitted")
    assert (s.state, s.reason, s.cluster_queue) == ("admitted", "KueueAdmitted", "team-a-cq")
    assert s.flavors == ("main: cpu=default-flavor, nvidia.com/gpu=a100",)
    assert not s.holds_it and s.hint == ""
    assert s.summary == ("Kueue admitted workload job-llama-ft-a1-5b7c9 in ClusterQueue team-a-cq "
                         "(main: cpu=default-flavor, nvidia.com/gpu=a100)")


def test_preempted_names_the_preemptor_and_what_it_waits_for_again() -> None:
    s = status_of("preempted")
    assert (s.state, s.reason, s.kueue_reason, s.evictions) == ("evicted", "KueueEvicted", "Preempted", 1)
    assert s.holds_it
    assert s.preemptor == Preemptor("5c1ec4a5-3e2b-4e63-b2f1-8c3c5a7b9d01", "a7e4f2c9-1b3d-4e5f-8a6b-9c0d1e2f3a4b",
                                    "prioritization in the ClusterQueue", "InClusterQueue", "/team-a-cq",
                                    "/team-a-cq")
    assert s.summary.startswith("Kueue preempted workload job-llama-ft-a1-5b7c9 in LocalQueue team-a by workload "
                                "5c1ec4a5-3e2b-4e63-b2f1-8c3c5a7b9d01 (job a7e4f2c9-1b3d-4e5f-8a6b-9c0d1e2f3a4b) due "
                                "to prioritization in the ClusterQueue: Preempted to accommodate")
    assert "higher-priority" in s.hint


def test_reclamation_within_the_cohort_says_where_the_preemptor_came_from() -> None:
    s = status_of("reclaimed-by-cohort")  # v1beta1, evicted while still admitted (its Job is being suspended)
    assert (s.state, s.kueue_reason, s.cluster_queue) == ("evicted", "Preempted", "team-b-cq")
    assert s.preemptor is not None and s.preemptor.kind == "InCohortReclamation"
    assert s.preemptor.cause == "reclamation within the cohort"
    assert s.summary.split(": Preempted")[0].endswith("due to reclamation within the cohort, from /research/team-a-cq")


def test_re_admitted_after_a_preemption_is_admitted_again() -> None:
    s = status_of("readmitted")  # Evicted and Preempted went False ("Previously: ...") when Kueue re-admitted it
    assert (s.state, s.preemptor, s.evictions) == ("admitted", None, 1)


def test_pods_ready_timeout_and_deactivation_are_evictions_with_their_reason() -> None:
    timeout = status_of("pods-ready-timeout")
    assert (timeout.state, timeout.kueue_reason, timeout.requeues, timeout.preemptor) == (
        "evicted", "PodsReadyTimeout", 1, None)
    assert timeout.summary.startswith("Kueue evicted (PodsReadyTimeout) workload job-mnist-a1-2a3b4 in LocalQueue "
                                      "default: Exceeded the PodsReady timeout")
    assert "waitForPodsReady" in timeout.hint
    gone = status_of("deactivated")
    assert (gone.kueue_reason, gone.evictions, gone.requeues) == ("InactiveWorkload", 4, 3)
    assert "deactivated" in gone.hint


def test_no_decision_yet_is_none_and_a_finished_workload_is_finished() -> None:
    assert kueue_status({"metadata": {"name": "w"}}) is None
    assert kueue_status({"status": {"conditions": [{"type": "PodsReady", "status": "False"}]}}) is None
    done = kueue_status({"status": {"conditions": [
        {"type": "Admitted", "status": "True", "reason": "Admitted", "message": "The workload is admitted"},
        {"type": "Finished", "status": "True", "reason": "Succeeded", "message": "Job finished successfully"}]}})
    assert done is not None and (done.state, done.reason, done.kueue_reason) == ("finished", "KueueFinished",
                                                                                 "Succeeded")


@pytest.mark.parametrize("name", sorted(p.stem for p in WORKLOADS.glob("*.yaml")))
def test_the_recorded_form_reads_back_the_same(name: str) -> None:
    s = status_of(name)
    data = s.to_dict()
    assert KueueStatus.from_dict(data) == s
    assert data["summary"] == s.summary and data["hint"] == s.hint
    assert latest([data, {"state": "nonsense"}]) == s
    assert latest([]) is None and KueueStatus.from_dict({}) is None

"""EMULATOR tests (tests/k8s/emulator.py, not a cluster) of what Kueue says about the ``kubernetes`` backend's Jobs
in Kueue mode (``CAPSTAN_KUBE_ADMISSION=kueue``, decisions 0741-0744): the executors record Kueue's reason for a
suspended Job (`capstan.k8s.kueue_status`), ``capstan why`` and ``capstan describe`` show it, and a training gang
Kueue preempts (suspends its Job again) goes back to pending as ``Preempted``, uses no restart and runs again from
its checkpoint once Kueue re-admits it.

The test plays Kueue (the Workload and its conditions, the Job's ``suspend``), the Job controller and the kubelet.
Each test is parametrized over the emulator and a real cluster (``CAPSTAN_TEST_KUBECONFIG``, the ``kueue_cluster``
fixture of test_k8s_kueue_mode): on a real cluster they skip, saying so, since Kueue itself would decide there.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from emulator import T0, T1, ApiEmulator, Cluster, ended_pod, job_done, running_pod
from test_k8s_kueue_mode import (  # the shared Kueue-mode fixtures and helpers
    ADMITTED,
    IMAGE,
    _kueue_settings,
    _no_room,
    _play_kueue,
    _run_held,
    _train_code,
    _unsuspend,
    _wait,
    kueue_cluster,
)

from capstan.k8s.executor import KubeOptions, KubernetesExecutor
from capstan.k8s.kueue_status import KueueStatus
from capstan.pipelines.execution import Outcome, Task
from capstan.services import Services
from capstan.training.ports import JobRecord
from capstan.troubleshoot.sources import kueue_of, recorded_kueue

__all__ = ["kueue_cluster"]  # the fixture, imported for these tests

GPU_SHORT = ("couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor a100, "
             "2 more needed")
PREEMPTED_BY = ("Preempted to accommodate a workload (UID: 5c1ec4a5-3e2b-4e63-b2f1-8c3c5a7b9d01, JobUID: "
                "a7e4f2c9-1b3d-4e5f-8a6b-9c0d1e2f3a4b) due to prioritization in the ClusterQueue")
T2 = "2026-12-07T10:10:00Z"
PENDING_GPU = [{"type": "QuotaReserved", "status": "False", "reason": "Pending", "lastTransitionTime": T0,
                "message": GPU_SHORT, "observedGeneration": 1}]
EVICTED = [{"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved", "lastTransitionTime": T1,
            "message": "Quota reserved in ClusterQueue team-a-cq", "observedGeneration": 1},
           {"type": "Admitted", "status": "True", "reason": "Admitted", "lastTransitionTime": T1,
            "message": "The workload is admitted", "observedGeneration": 1},
           {"type": "Evicted", "status": "True", "reason": "Preempted", "lastTransitionTime": T2,
            "message": PREEMPTED_BY, "observedGeneration": 1},
           {"type": "Preempted", "status": "True", "reason": "InClusterQueue", "lastTransitionTime": T2,
            "message": PREEMPTED_BY, "observedGeneration": 1}]


def _suspend(emu: ApiEmulator, name: str) -> None:
    """What Kueue does to an evicted workload's Job; the Job controller then deletes its pods."""
    job = emu.get("jobs", name)
    assert job is not None
    emu.put({**job, "spec": {**job["spec"], "suspend": True}}, "jobs", validate=False)


def _env(job: dict[str, Any]) -> dict[str, str]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def _job_named(emu: ApiEmulator, suffix: str) -> dict[str, Any]:
    found: dict[str, Any] = _wait(lambda: next((j for j in emu.objects("jobs")
                                                if j["metadata"]["name"].endswith(suffix)), None))
    return found


def test_a_preempted_gang_goes_back_to_pending_uses_no_restart_and_resumes(
        kueue_cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emu = kueue_cluster.kubelet()
    monkeypatch.setenv("KUBECONFIG", str(kueue_cluster.kubeconfig))
    code = _train_code(tmp_path)
    services = Services.open(_kueue_settings(tmp_path), admission=_no_room())
    try:
        from capstan.cli import context as cli_context
        from capstan.cli.training_cmds import job_why

        # max_restarts 0: a worker failure would fail the job at once, so only a preemption lets it finish.
        record, done, thread = _run_held(services, {
            "name": "llama", "entry": "train.py", "workers": 2, "working_dir": str(code), "image": IMAGE, "cpu": 1,
            "max_restarts": 0, "grace_s": 1.0})

        def stored() -> JobRecord:
            found = services.jobs.get(record.id)
            assert found is not None
            return found

        # 1. Kueue has no room: the job is Pending with Kueue's reason, and `capstan why` says which quota.
        first = _job_named(emu, "-a1")
        name = first["metadata"]["name"]
        _play_kueue(emu, first, "default", PENDING_GPU, count=2)
        waiting = _wait(lambda: stored() if stored().reason == "KueuePending" else None)
        assert waiting.state == "Pending" and "needs 2 more nvidia.com/gpu in flavor a100" in waiting.message
        monkeypatch.setenv("CAPSTAN_HOME", str(tmp_path / "home"))
        cli_context.reset()  # the CLI reads the environment once per process: an earlier test may have read it
        try:
            why = job_why(record.id)
        finally:
            cli_context.reset()
        assert why is not None and why["kueue"]["shortfalls"][0]["more"] == "2"
        assert "Kueue:     Kueue has not admitted workload" in why["text"] and "Hint:" in why["text"]
        timeline = services.timelines().describe(f"job/{record.id}", _scope())
        assert timeline.diagnosis.summary.startswith("waiting for the queue: KueuePending: Kueue has not admitted")
        assert "nvidia.com/gpu in flavor a100" in timeline.diagnosis.hint

        # 2. Kueue admits it; its pods run.
        _play_kueue(emu, first, "default", ADMITTED, count=2)
        _unsuspend(emu, name)
        for i in range(2):
            emu.add_pod(name, f"{name}-{i}-abcde", running_pod("trainer"))
        assert _wait(lambda: stored().state == "Running")

        # 3. Kueue preempts it: the Workload is evicted, the Job suspended, the Job controller ends the pods
        # (SIGTERM, exit code 143) and deletes them.
        _play_kueue(emu, first, "default", EVICTED, count=2)
        _suspend(emu, name)
        for i in range(2):
            emu.set_status("pods", f"{name}-{i}-abcde", ended_pod("trainer", code=143, reason="Error"))
        preempted = _wait(lambda: stored() if stored().reason == "Preempted" else None)
        assert preempted.state == "Pending" and not preempted.done
        assert (preempted.restarts, preempted.preemptions) == (0, 1)  # no retry consumed
        attempts = services.jobs.attempts(record.id)
        assert attempts[0].reason == "Preempted" and attempts[0].rank is None
        assert "due to prioritization in the ClusterQueue" in attempts[0].message
        evicted = [e for e in services.events.list("job", record.id) if e.reason in ("KueueEvicted", "KueuePreempted")]
        assert evicted and evicted[-1].type == "Warning"
        status = KueueStatus.from_dict(evicted[-1].data["kueue"])  # type: ignore[arg-type]
        assert status is not None and status.preemptor is not None
        assert status.preemptor.workload_uid == "5c1ec4a5-3e2b-4e63-b2f1-8c3c5a7b9d01"

        # 4. The next attempt's Job waits suspended for Kueue; the job stays Pending/Preempted meanwhile.
        second = _job_named(emu, "-a2")
        assert second["spec"]["suspend"] is True and emu.get("jobs", name) is None
        assert _env(second)["CAPSTAN_JOB_ATTEMPT"] == "2"  # it resumes from the run's checkpoint, as locally
        assert _env(second)["CAPSTAN_CHECKPOINT_URI"] == _env(first)["CAPSTAN_CHECKPOINT_URI"]
        time.sleep(0.3)
        again = stored()
        assert (again.state, again.reason, again.restarts) == ("Pending", "Preempted", 0)
        assert "waiting to be admitted again" in again.message
        timeline = services.timelines().describe(f"job/{record.id}", _scope())
        assert timeline.diagnosis.cause == "Preempted"
        assert "workload 5c1ec4a5-3e2b-4e63-b2f1-8c3c5a7b9d01" in timeline.diagnosis.summary

        # 5. Kueue re-admits it: the gang runs again and completes.
        name2 = second["metadata"]["name"]
        _play_kueue(emu, second, "default", ADMITTED, count=2)
        _unsuspend(emu, name2)
        for i in range(2):
            emu.add_pod(name2, f"{name2}-{i}-fghij", running_pod("trainer"))
        assert _wait(lambda: stored().state == "Running")
        for i in range(2):
            emu.set_status("pods", f"{name2}-{i}-fghij", ended_pod("trainer"))
        emu.set_status("jobs", name2, job_done())
        thread.join(60)
        assert done and done[0].state == "Succeeded", done
        assert (done[0].restarts, done[0].preemptions) == (0, 1)
        assert [a.reason for a in services.jobs.attempts(record.id)] == ["Preempted", "Succeeded"]
    finally:
        services.close()


def _scope() -> Any:
    from capstan.troubleshoot.sources import Scope

    return Scope("default")


def _task(tmp_path: Path) -> Task:
    return Task("run0123456789abcdef", "prep", "prep", 1, "default", "python", "flow", None, "prep", None, {}, {}, {},
                "flow.py:1", "process", str(tmp_path / "prep.log"), None, str(tmp_path / "prep.json"), None)


def test_a_steps_job_kueue_holds_records_kueues_reason_for_why(kueue_cluster: Cluster, tmp_path: Path) -> None:
    import queue

    from capstan.k8s.client import connect
    from capstan.settings import Settings

    emu = kueue_cluster.kubelet()
    services = Services.open(Settings.for_home(tmp_path / "home"))
    api = connect(kubeconfig=str(kueue_cluster.kubeconfig))
    outcomes: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
    executor = KubernetesExecutor(outcomes.put, None, api=api, events=services.events, store=services.artifacts,
                                  run_info=lambda run_id: ("/x/flow.py:flow", {}),
                                  ship=lambda c: ("sha256:" + "ab" * 32, "flow.py:flow"),
                                  options=KubeOptions(kueue=True, watch_timeout_s=5))
    step = "run0123456789abcdef/prep"
    try:
        task = _task(tmp_path)
        executor.start(task, executor.place(None))
        job = _wait(lambda: next(iter(emu.objects("jobs")), None))
        assert job["spec"]["suspend"] is True
        _play_kueue(emu, job, "team-a", PENDING_GPU)
        pending = _wait(lambda: recorded_kueue(services.events, "step", step))
        assert (pending.state, pending.local_queue) == ("pending", "team-a")
        assert pending.shortfalls[0].text() == "pod set main needs 2 more nvidia.com/gpu in flavor a100 than is free"

        # Kueue admits it, then preempts it: the step's record says by whom.
        _play_kueue(emu, job, "team-a", EVICTED)
        evicted = _wait(lambda: [k for k in [recorded_kueue(services.events, "step", step)]
                                 if k is not None and k.state == "evicted"])[0]
        assert evicted.preemptor is not None and evicted.preemptor.cause == "prioritization in the ClusterQueue"
        recorded = [e for e in services.events.list("step", step) if e.data.get("kueue")]
        assert [KueueStatus.from_dict(e.data["kueue"]).state for e in recorded] == [  # type: ignore[union-attr, arg-type]
            "pending", "evicted"]
        assert kueue_of(services.events.list("step", step)) == evicted
        executor.stop(task.key, "Cancelled")
        assert outcomes.get(timeout=20).reason == "Cancelled"
    finally:
        executor.shutdown()
        api.close()
        services.close()


def test_capstan_why_explains_a_step_kueue_holds(tmp_path: Path) -> None:
    """``capstan why RUN/STEP`` (a subprocess, as a user runs it; no cluster: the event is written as the executor
    records it above): in Kueue mode the step is no workload of Capstan's queue, so why answers with what Kueue
    last said about its Job."""
    import subprocess

    from capstan.events.records import WARNING
    from capstan.k8s.kueue_status import kueue_status
    from capstan.settings import Settings
    from helpers.server import capstan_command, clean_env

    home = tmp_path / "home"
    services = Services.open(Settings.for_home(home))
    try:
        workload = {"metadata": {"name": "job-capstan-run0123-prep-a1-9d8c7"}, "spec": {"queueName": "team-a"},
                    "status": {"conditions": PENDING_GPU}}
        status = kueue_status(workload)
        assert status is not None
        services.events.append("step", "run0123/prep", "KueuePending", f"workload x: {GPU_SHORT}", type=WARNING,
                               project="default", data={"kueue": status.to_dict()})
    finally:
        services.close()
    env = clean_env(home, {})
    shown = subprocess.run([*capstan_command(), "why", "run0123/prep#1"], env=env, text=True, capture_output=True,
                           timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "Workload:  step run0123/prep (Kueue workload job-capstan-run0123-prep-a1-9d8c7)" in shown.stdout
    assert "Missing:   pod set main needs 2 more nvidia.com/gpu in flavor a100 than is free" in shown.stdout
    missing = subprocess.run([*capstan_command(), "why", "run9999/other"], env=env, text=True, capture_output=True,
                             timeout=60)
    assert missing.returncode != 0 and missing.stderr.startswith("error: ") and len(missing.stderr.splitlines()) == 1


def test_describe_and_why_of_a_pipeline_step_kueue_keeps_pending(
        kueue_cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pipeline run in Kueue mode: its step's attempt has started (its Job exists, suspended), but while Kueue
    keeps the Job pending `capstan describe step/RUN/STEP` says it waits, with Kueue's reason and hint."""
    import textwrap

    from test_k8s_kueue_mode import PIPELINE

    from capstan.pipelines.loader import load_pipeline
    from capstan.pipelines.runner import RunResult

    emu = kueue_cluster.kubelet()
    source = tmp_path / "src"
    source.mkdir()
    (source / "greet.py").write_text(textwrap.dedent(PIPELINE))
    monkeypatch.setenv("KUBECONFIG", str(kueue_cluster.kubeconfig))
    services = Services.open(_kueue_settings(tmp_path), admission=_no_room())
    try:
        runner = services.pipelines.get()
        pipe, canonical = load_pipeline(str(source / "greet.py"))
        results: list[RunResult] = []
        thread = threading.Thread(target=lambda: results.append(runner.run(pipe, {}, ref=canonical)), daemon=True)
        thread.start()
        job = _wait(lambda: next(iter(emu.objects("jobs")), None))
        _play_kueue(emu, job, "team-a", PENDING_GPU)
        run_id = job["metadata"]["labels"]["capstan.dev/run-id"]
        _wait(lambda: recorded_kueue(services.events, "step", f"{run_id}/hello"))
        timeline = services.timelines().describe(f"step/{run_id}/hello", _scope())
        assert timeline.diagnosis.cause == "Unschedulable", timeline.diagnosis
        workload = emu.objects("workloads")[0]["metadata"]["name"]
        assert timeline.diagnosis.summary.startswith("waiting for the queue: KueuePending: Kueue has not admitted "
                                                     f"workload {workload}")
        assert "pod set main needs 2 more nvidia.com/gpu in flavor a100" in timeline.diagnosis.summary
        assert "ClusterQueue's quota" in timeline.diagnosis.hint
        assert any(i.reason == "KueuePending" for i in timeline.items)
        run = services.timelines().describe(f"pipeline-run/{run_id}", _scope())
        assert run.diagnosis.summary.startswith("step hello: waiting for the queue: KueuePending")
        runner.cancel(run_id)
        thread.join(60)
        assert results and not results[0].ok
    finally:
        services.close()

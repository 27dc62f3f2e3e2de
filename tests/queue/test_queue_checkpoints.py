"""Checkpoint-aware preemption: victims that lose least work, minimum run times, and what `why` reports."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from queue_helpers import Cluster, gpu_queues, wl
from test_queue_manager import gpus, make

from capstan.errors import InvalidParameterValue, InvalidState
from capstan.queue.manager import QueueManager
from capstan.queue.model import Admission, Workload
from capstan.queue.records import ADMITTED, EVICTING, PENDING, record_from_json, record_to_json
from capstan.queue.store import MemoryQueueStore

PREEMPT = "{withinClusterQueue: LowerPriority}"


def running(*jobs: tuple[Workload, float]) -> Cluster:
    """One queue of 4 GPUs that preempts lower priorities, with these workloads admitted at these times."""
    cluster = Cluster(gpu_queues(("a", 4), cohort=None, preemption=PREEMPT))
    for w, at in jobs:
        cluster.state.admit(Admission(w, "a", (), {("a100", "gpu"): w.total("gpu")}, at))
    return cluster


def victims(cluster: Cluster, now: float, gpu: int = 2) -> list[str]:
    cluster.now = now
    cluster.submit(wl("urgent", "a", gpu=gpu, priority=10, created=now))
    return [p.victim for p in cluster.cycle(apply=False).preempted]


def test_without_checkpoints_the_most_recent_admission_loses_least() -> None:
    cluster = running((wl("old", "a", gpu=2), 0.0), (wl("new", "a", gpu=2), 50.0))
    assert victims(cluster, 100.0) == ["new"]


def test_a_recorded_checkpoint_makes_a_workload_the_cheaper_victim() -> None:
    cluster = running((wl("old", "a", gpu=2), 0.0), (wl("new", "a", gpu=2), 50.0))
    cluster.state.record_checkpoint("old", 95.0)  # loses 5 s x 2 GPUs; "new" would lose 50 s x 2
    assert cluster.state.lost_work(cluster.state.admissions["old"], 100.0) == 10.0
    assert victims(cluster, 100.0) == ["old"]


def test_lost_work_counts_gpus() -> None:
    cluster = running((wl("small", "a", gpu=1), 0.0), (wl("wide", "a", gpu=3), 70.0))
    # small loses 100 s x 1 GPU = 100, wide 30 s x 3 GPUs = 90: wide goes, and it frees enough on its own.
    assert victims(cluster, 100.0, gpu=1) == ["wide"]


def test_a_declared_checkpoint_interval_estimates_the_last_save() -> None:
    saver = replace(wl("saver", "a", gpu=2), checkpoint_interval_seconds=30.0)
    cluster = running((saver, 0.0), (wl("new", "a", gpu=2), 50.0))
    # saver's last save is estimated at t=90 (every 30 s since its admission at 0): it loses 10 s x 2 GPUs.
    assert cluster.state.last_checkpoint(cluster.state.admissions["saver"], 100.0) == 90.0
    assert victims(cluster, 100.0) == ["saver"]


def test_minimum_run_time_protects_a_workload_until_it_has_run() -> None:
    fresh = replace(wl("fresh", "a", gpu=2), min_run_seconds=60.0)
    cluster = running((wl("old", "a", gpu=2), 0.0), (fresh, 50.0))
    assert victims(cluster, 100.0) == ["old"]  # "fresh" would lose less but has run only 50 s of its 60


def test_protected_workloads_leave_the_queue_unblocked() -> None:
    both = [replace(wl(n, "a", gpu=2), min_run_seconds=60.0) for n in ("p1", "p2")]
    cluster = running((both[0], 50.0), (both[1], 50.0))
    cluster.now = 100.0
    cluster.submit(wl("urgent", "a", gpu=2, priority=10, created=100.0))
    result = cluster.cycle(apply=False)
    assert not result.preempted
    # Time alone lifts the protection, so the queue must be looked at again at the same cohort-tree version.
    assert "a" not in result.blocked
    cluster.now = 110.0
    # Equal lost work: the most recently admitted goes, as in Kueue.
    assert [p.victim for p in cluster.cycle(apply=False).preempted] == ["p2"]


def test_record_checkpoint_needs_an_admitted_workload() -> None:
    cluster = running()
    with pytest.raises(Exception, match="not admitted"):
        cluster.state.record_checkpoint("ghost", 1.0)


def test_manager_reports_the_lost_work_of_a_preemption() -> None:
    mgr, clock, _ = make(MemoryQueueStore())
    mgr.submit("b-big", "b-vision", gpus(8))  # 6 nominal + 2 borrowed from team-a
    mgr.submit("b-small", "b-vision", gpus(4))
    mgr.cycle()
    assert mgr.get("b-big").state == ADMITTED
    clock.now += 1_800_000  # 30 minutes
    mgr.record_checkpoint("b-big", step=300)
    clock.now += 600_000  # 10 more minutes
    work = mgr.why("b-big").work
    assert work == ("10 min since its last checkpoint at step 300 on 8 GPUs; a preemption now would lose "
                    "1.33 GPU-hours")
    mgr.submit("a-need", "a-ml", gpus(8))  # reclaims team-a's lent quota
    report = mgr.cycle()
    assert [r.id for r in report.preempting] == ["b-big"]
    victim = mgr.get("b-big")
    assert victim.state == EVICTING
    # 10 minutes x 8 GPUs since its checkpoint = 1.33 GPU-hours.
    assert victim.lost_gpu_seconds == pytest.approx(600 * 8)
    lost = "lost 1.33 GPU-hours: 10 min since its last checkpoint at step 300 on 8 GPUs"
    assert f"preempted by a-need (InCohortReclamation); {lost}" in mgr.why("b-big").render()
    mgr.evicted("b-big")
    requeued = mgr.get("b-big")
    assert requeued.state == PENDING and lost in requeued.message and "requeued after" in requeued.message
    assert requeued.checkpointed_at is None and requeued.checkpoint_step is None
    assert lost in mgr.why("b-big").render()
    assert record_from_json(record_to_json(requeued)) == requeued


def test_manager_checkpoint_validation() -> None:
    mgr, _clock, _ = make(MemoryQueueStore())
    mgr.submit("b1", "b-vision", gpus(1), min_run_seconds=30.0, checkpoint_interval_seconds=60.0)
    with pytest.raises(InvalidState, match="not running"):
        mgr.record_checkpoint("b1")
    mgr.cycle()
    saved = mgr.record_checkpoint("b1")
    assert saved.checkpointed_at is not None
    assert saved.workload.min_run_seconds == 30.0 and saved.workload.checkpoint_interval_seconds == 60.0
    with pytest.raises(InvalidParameterValue, match="min_run_seconds"):
        mgr.submit("b2", "b-vision", gpus(1), min_run_seconds=-1.0)


def test_the_lost_work_says_where_the_last_save_came_from() -> None:
    mgr, clock, _ = make(MemoryQueueStore())
    mgr.submit("b-declared", "b-vision", gpus(4), checkpoint_interval_seconds=1200.0)
    mgr.submit("b-unsaved", "b-vision", gpus(4))
    mgr.cycle()
    clock.now += 1_500_000  # 25 minutes: b-declared is assumed to have saved 5 minutes ago
    assert mgr.why("b-declared").work == ("5 min since its last checkpoint as estimated from its declared interval "
                                          "(20 min) on 4 GPUs; a preemption now would lose 0.33 GPU-hours")
    assert mgr.why("b-unsaved").work == ("25 min since its admission (no checkpoint recorded) on 4 GPUs; a "
                                         "preemption now would lose 1.67 GPU-hours")
    mgr.submit("a-need", "a-ml", gpus(8))  # reclaims team-a's 2 lent GPUs: the cheaper victim goes
    report = mgr.cycle()
    assert [r.id for r in report.preempting] == ["b-declared"]
    assert mgr.get("b-declared").message.endswith(
        "lost 0.33 GPU-hours: 5 min since its last checkpoint as estimated from its declared interval (20 min) "
        "on 4 GPUs")
    mgr.evicted("b-declared")
    clock.now += 3_600_000  # past the backoff: it waits again as any pending workload, its loss still shown
    mgr.cycle()
    explanation = mgr.why("b-declared")
    assert explanation.state == PENDING and "lost" not in explanation.message
    assert explanation.work == "preempted once; the last preemption lost 0.33 GPU-hours"
    assert "Work:      preempted once" in explanation.render()


def test_record_checkpoint_keeps_the_newest_save_and_checks_the_step() -> None:
    mgr, clock, _ = make(MemoryQueueStore())
    mgr.submit("b1", "b-vision", gpus(1))
    mgr.cycle()
    newest = mgr.record_checkpoint("b1", step=20)
    assert newest.checkpointed_at is not None
    assert mgr.record_checkpoint("b1", at=newest.checkpointed_at - 1_000, step=10) == newest  # late, older save
    assert mgr.get("b1").checkpoint_step == 20
    for bad in (-1, True, 1.5, "3"):
        with pytest.raises(InvalidParameterValue, match="step"):
            mgr.record_checkpoint("b1", step=bad)  # type: ignore[arg-type]  # what an untyped caller may pass
    clock.now += 1000
    assert mgr.record_checkpoint("b1").checkpoint_step is None  # a newer save without a step forgets the old one


def test_the_cli_records_a_checkpoint_in_the_local_store(tmp_path: Path) -> None:
    from test_queue_cli import ROOT, capstan

    from capstan.services import Services
    from capstan.settings import Settings

    home = tmp_path / "home"
    services = Services.open(Settings.for_home(home))
    try:
        mgr = QueueManager(services.queue.get(), clock=services.clock)
        mgr.apply_config((ROOT / "examples" / "queues" / "teams.yaml").read_text())
        mgr.submit("train", "vision", gpus(2))
        mgr.cycle()
        mgr.submit("wait", "vision", gpus(1))  # no cycle: stays pending
    finally:
        services.close()
    r = capstan(home, "queue", "checkpoint", "train", "--step", "5")
    assert r.returncode == 0 and r.stdout.strip() == "train: checkpoint at step 5 recorded", r.stderr
    why = capstan(home, "why", "train").stdout
    assert re.search(r"Work: +\d+ s since its last checkpoint at step 5 on 2 GPUs; a preemption now would lose "
                     r"0\.00 GPU-hours", why), why
    r = capstan(home, "queue", "checkpoint", "wait")
    assert r.returncode == 1 and r.stderr.strip() == "error: workload 'wait' is Pending, not running", r.stderr

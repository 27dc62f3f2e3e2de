"""Partial admission of a training job (``min_workers``): the queue has room for fewer workers than asked, so the
job starts with what it got; its real processes rendezvous with that WORLD_SIZE, and the job says how many."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from training_helpers import CPU_QUEUE, GIB, Env, events_of, make_env

from capstan.cli.training_cmds import build_spec
from capstan.errors import InvalidParameterValue
from capstan.queue.admission import QueueAdmission
from capstan.queue.manager import Backoff
from capstan.queue.store import MemoryQueueStore
from capstan.resources.admission import Lease, ResourceRequest, Waiting
from capstan.resources.local import LocalAdmission
from capstan.resources.machine import Capacity
from capstan.training.runner import WORKERS_ADMITTED_TAG, gang_request, launched_spec
from capstan.training.spec import parse_job_spec


@pytest.fixture
def queued(tmp_path: Path) -> Iterator[Env]:
    queue = QueueAdmission(MemoryQueueStore(), capacity=Capacity(cpu=4, memory=8 * GIB), backoff=Backoff(base_s=0))
    with queue.session() as mgr:
        mgr.apply_config(CPU_QUEUE)
    yield from make_env(tmp_path, queue)


def test_a_job_admitted_with_fewer_workers_runs_them_with_that_world_size(queued: Env) -> None:
    env = queued
    other = env.admission.acquire_many([ResourceRequest("other", cpu=1, memory=0)])[0]
    assert isinstance(other, Lease)  # 3 of the queue's 4 CPUs are left
    spec = env.spec("partial_env.py", str(env.out), workers=4, min_workers=2, cpu=1)
    record = env.submit_and_run(spec)
    assert (record.state, record.reason) == ("Succeeded", "Succeeded"), record.message
    seen = {rank: json.loads((env.out / f"rank-{rank}.json").read_text()) for rank in range(3)}
    assert not (env.out / "rank-3.json").exists()
    for rank, values in seen.items():
        assert (values["RANK"], values["WORLD_SIZE"], values["GROUP_WORLD_SIZE"]) == (str(rank), "3", "3")
        assert values["CAPSTAN_JOB_WORKERS_REQUESTED"] == "4"
        assert (values["dist_world"], values["ranks_sum"]) == (3, 0 + 1 + 2)  # the rendezvous agreed on 3
    started = next(e for e in events_of(env, record.id) if e.reason == "Started")
    assert started.message.startswith("attempt 1: 3 of 4 workers (partial admission, min_workers 2), 3 process(es)")
    assert (started.data["workers"], started.data["workers_requested"]) == (3, 4)
    assert record.run_id is not None
    tags = env.services.tracking.get_run(record.run_id).data.tags
    assert (tags[WORKERS_ADMITTED_TAG], tags["capstan.job.min_workers"]) == ("3", "2")
    assert env.job(record.id).spec.workers == 4  # the job keeps what it asked for


def test_below_min_workers_the_gang_waits() -> None:
    queue = QueueAdmission(MemoryQueueStore(), capacity=Capacity(cpu=4, memory=8 * GIB))
    with queue.session() as mgr:
        mgr.apply_config(CPU_QUEUE)
    assert isinstance(queue.acquire_many([ResourceRequest("other", cpu=3, memory=0)])[0], Lease)
    spec = parse_job_spec({"name": "j", "entry": "train.py", "workers": 4, "min_workers": 2, "cpu": 1})
    verdict = queue.acquire_many([gang_request(spec, key="job/j", project="default")])[0]
    assert isinstance(verdict, Waiting) and verdict.reason == "GangIncomplete"
    assert verdict.message.endswith("only 1 of 4 pods fit; it may be admitted with 2 at least (minCount)")


def test_the_local_admission_grants_the_most_workers_that_fit() -> None:
    local = LocalAdmission(Capacity(cpu=4, memory=8 * GIB, gpus=(("0", "g"), ("1", "g"), ("2", "g"))))
    spec = parse_job_spec({"name": "j", "entry": "train.py", "workers": 4, "min_workers": 2, "cpu": 1, "gpus": 1})
    lease = local.try_acquire(gang_request(spec, key="job/j", project="default"))
    assert lease is not None and lease.pods == 3 and lease.granted == 3
    assert [lease.devices_of(p) for p in range(3)] == [("0",), ("1",), ("2",)]
    launched, words = launched_spec(spec, lease)
    assert (launched.workers, launched.min_workers, launched.world_size) == (3, None, 3)
    assert words == "3 of 4 workers (partial admission, min_workers 2), "
    local.release(lease)
    assert local.used_cpu == 0 and all(free == 1.0 for free in local.gpu_free.values())
    whole = local.try_acquire(gang_request(spec, key="job/k", project="default"))
    assert whole is not None and whole.pods == 3  # three GPUs: never four
    assert local.check(gang_request(parse_job_spec({"name": "x", "entry": "t.py", "workers": 8, "min_workers": 4,
                                                    "cpu": 1}), key="x", project="default")) is None


def test_min_workers_is_checked_naming_the_field_or_the_option() -> None:
    with pytest.raises(InvalidParameterValue, match=r"^job\.min_workers: must be between 1 and 4, got 5$"):
        parse_job_spec({"name": "j", "entry": "train.py", "workers": 4, "min_workers": 5})
    with pytest.raises(InvalidParameterValue, match=r"^job\.min_workers: expected a whole number"):
        parse_job_spec({"name": "j", "entry": "train.py", "workers": 4, "min_workers": "2"})
    with pytest.raises(InvalidParameterValue, match=r"^--min-workers: must be between 1 and 2, got 0$"):
        build_spec("train.py", [], workers=2, min_workers=0)
    spec = build_spec("train.py", [], workers=2, min_workers=1)
    assert spec.min_workers == 1 and parse_job_spec(spec.to_dict()) == spec

"""Contract of the study store (`capstan.tuning.ports.StudyStore`), run against SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator

import pytest

from capstan.errors import ResourceAlreadyExists, ResourceDoesNotExist
from capstan.settings import Settings
from capstan.store.engine import create_store_engine
from capstan.tuning.ports import StudyRecord, StudyStore, TrialRecord
from capstan.tuning.spec import parse_study_spec
from capstan.tuning.studies_sql import SqlStudyStore, owner_alive, owner_id

SPEC = parse_study_spec({"name": "mlp", "objective": {"metric": "accuracy", "additional_metrics": ["loss"]},
                         "parameters": {"lr": {"type": "float", "min": 1e-4, "max": 1.0, "log": True},
                                        "opt": {"values": ["adam", "sgd"]},
                                        "m": {"type": "float", "min": 0, "max": 1, "when": {"opt": "sgd"}}},
                         "trial": {"function": "train:objective"}, "early_stopping": "median", "seed": 3})


@pytest.fixture
def store(backend_settings: Settings) -> Iterator[StudyStore]:
    engine = create_store_engine(backend_settings)
    yield SqlStudyStore(engine)
    engine.dispose()


def _study(name: str = "mlp", project: str = "alpha", created: int = 1_000) -> StudyRecord:
    return StudyRecord(project, name, dataclasses.replace(SPEC, name=name), "Running", created, created,
                       parent_run_id="p" * 32, owner=owner_id(), user="ann")


def test_create_get_list_update(store: StudyStore) -> None:
    first = store.create(_study())
    assert store.get("alpha", "mlp") == first
    assert store.get("beta", "mlp") is None
    with pytest.raises(ResourceAlreadyExists):
        store.create(_study())
    store.create(_study("cnn", created=2_000))
    store.create(_study("other", project="beta", created=3_000))
    assert [s.name for s in store.list(project="alpha")] == ["cnn", "mlp"]
    assert [s.name for s in store.list()] == ["other", "cnn", "mlp"]
    assert len(store.list(limit=1)) == 1
    done = dataclasses.replace(first, state="Failed", reason="TooManyFailedTrials", message="3 failed", owner=None,
                               ended_ms=5_000)
    store.update(done)
    assert store.get("alpha", "mlp") == done and done.done
    with pytest.raises(ResourceDoesNotExist):
        store.update(_study("ghost"))


def test_trials_round_trip_in_number_order(store: StudyStore) -> None:
    store.create(_study())
    waiting = TrialRecord("alpha", "mlp", 2, "WAITING", 10, workload="study/mlp/trial-2", message="WaitingForQuota")
    done = TrialRecord("alpha", "mlp", 0, "COMPLETE", 5, params={"lr": 0.01, "opt": "sgd", "m": 0.9}, value=0.93,
                       metrics={"accuracy": 0.93, "loss": 0.2, "nan": float("nan")},
                       intermediate=((0, 0.5), (1, 0.8), (2, float("nan"))),
                       system_attrs={"completed_rung_0": 0.8, "search_space": {"x": [1, 2]}},
                       run_id="r" * 32, workload="study/mlp/trial-0", attempts=2, ended_ms=9)
    pruned = TrialRecord("alpha", "mlp", 1, "PRUNED", 6, params={"lr": 0.5, "opt": "adam"}, value=0.1,
                         intermediate=((0, 0.1),), pid=1234)
    for trial in (waiting, done, pruned):
        store.put_trial(trial)
    got = store.trials("alpha", "mlp")
    assert [t.number for t in got] == [0, 1, 2]
    assert got[0].metrics == {"accuracy": 0.93, "loss": 0.2}  # NaN is not kept
    assert got[0].intermediate == ((0, 0.5), (1, 0.8))
    assert got[0] == dataclasses.replace(done, metrics=got[0].metrics, intermediate=got[0].intermediate)
    assert got[1] == pruned and got[2] == waiting
    running = dataclasses.replace(waiting, state="RUNNING", params={"lr": 0.2, "opt": "adam"}, message="")
    store.put_trial(running)
    assert store.trials("alpha", "mlp")[2] == running
    store.delete_trial("alpha", "mlp", 2)
    assert [t.number for t in store.trials("alpha", "mlp")] == [0, 1]
    assert store.trials("beta", "mlp") == []


def test_claim_takes_over_only_from_a_dead_controller(store: StudyStore) -> None:
    store.create(_study())  # held by this process, which is alive
    assert store.claim("alpha", "mlp", owner_id())
    assert not store.claim("alpha", "mlp", "elsewhere:1")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    gone = owner_id(int(dead.stdout))
    assert not owner_alive(gone)
    store.update(dataclasses.replace(_study(), owner=gone))
    assert store.claim("alpha", "mlp", "me:2")
    assert store.get("alpha", "mlp").owner == "me:2"  # type: ignore[union-attr]  # the study exists
    assert not store.claim("alpha", "ghost", "me:2")

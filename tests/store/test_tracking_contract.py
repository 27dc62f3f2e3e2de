"""The tracking-store contract, run against every metadata-store backend (SQLite and PostgreSQL)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from capstan.errors import InvalidParameterValue, InvalidState, ResourceAlreadyExists, ResourceDoesNotExist
from capstan.events.records import Event
from capstan.settings import Settings
from capstan.store.engine import create_store_engine
from capstan.store.events_sql import SqlEventLog
from capstan.store.tracking_sql import SqlTrackingStore
from capstan.tracking.ports import TrackingStore
from capstan.tracking.records import DatasetInput, Metric, Param, Run, RunTag
from helpers.clock import T0, FakeClock


@dataclass
class Bench:
    store: SqlTrackingStore
    events: SqlEventLog
    clock: FakeClock


@pytest.fixture
def bench(backend_settings: Settings) -> Iterator[Bench]:
    engine = create_store_engine(backend_settings)
    clock = FakeClock()
    events = SqlEventLog(engine, clock=clock)
    yield Bench(SqlTrackingStore(engine, clock=clock, events=events), events, clock)
    engine.dispose()


def _run(store: SqlTrackingStore, exp: str, **kwargs: object) -> str:
    return store.create_run(exp, **kwargs).run_id  # type: ignore[arg-type]  # test helper forwards keywords


def _ids(runs: Sequence[Run]) -> list[str]:
    return [r.info.run_id for r in runs]


def test_implements_the_protocol(bench: Bench) -> None:
    store: TrackingStore = bench.store  # mypy checks the structural match
    assert store is bench.store


# ---------------------------------------------------------------------------------------------- experiments


def test_default_experiment_exists_with_id_zero(bench: Bench, backend_settings: Settings) -> None:
    store = bench.store
    default = store.get_experiment("0")
    assert (default.name, default.project, default.lifecycle_stage) == ("Default", "default", "active")
    assert default.artifact_location == "mlflow-artifacts:/0"
    by_name = store.get_experiment_by_name("Default", project="default")
    assert by_name is not None and by_name.experiment_id == "0"
    assert "0" in [e.experiment_id for e in store.search_experiments(project="default").items]
    run = store.create_run("0")
    assert run.artifact_uri == f"mlflow-artifacts:/0/{run.run_id}/artifacts"
    # New experiments get ids from the sequence, past 0, and a second store on the same database is harmless.
    assert int(store.create_experiment("first", project="default")) >= 1
    other_engine = create_store_engine(backend_settings)
    other = SqlTrackingStore(other_engine)
    assert other.get_experiment("0").name == "Default"
    assert int(other.create_experiment("second", project="default")) >= 2
    other_engine.dispose()


def test_create_get_and_validate_experiments(bench: Bench) -> None:
    store = bench.store
    exp_id = store.create_experiment("exp", project="team-a", tags={"owner": "ann"})
    exp = store.get_experiment(exp_id)
    assert (exp.name, exp.project, exp.tags, exp.creation_time) == ("exp", "team-a", {"owner": "ann"}, T0)
    assert exp.artifact_location == f"mlflow-artifacts:/{exp_id}"
    custom = store.create_experiment("custom", project="team-a", artifact_location="s3://bucket/x/")
    assert store.get_experiment(custom).artifact_location == "s3://bucket/x/"
    assert store.create_run(custom).artifact_uri.startswith("s3://bucket/x/")
    # Names are unique per project only.
    with pytest.raises(ResourceAlreadyExists, match="'exp' already exists in project 'team-a'"):
        store.create_experiment("exp", project="team-a")
    other = store.create_experiment("exp", project="team-b")
    assert store.get_experiment_by_name("exp", project="team-b").experiment_id == other  # type: ignore[union-attr]  # present: this test created it
    assert store.get_experiment_by_name("nope", project="team-a") is None
    assert store.get_experiment_by_name("exp", project="no-such-project") is None
    with pytest.raises(ResourceDoesNotExist, match="Experiment '999' not found"):
        store.get_experiment("999")
    with pytest.raises(ResourceDoesNotExist):
        store.get_experiment("99999999999999")
    with pytest.raises(InvalidParameterValue, match="experiment_id"):
        store.get_experiment("abc")
    for bad_name in ("", "   ", "x" * 257):
        with pytest.raises(InvalidParameterValue, match=r"^name: "):
            store.create_experiment(bad_name, project="team-a")
    with pytest.raises(InvalidParameterValue, match=r"tags\['bad\?'\].key"):
        store.create_experiment("tagged", project="team-a", tags={"bad?": "v"})


def test_rename_and_experiment_tags(bench: Bench) -> None:
    store = bench.store
    a = store.create_experiment("a", project="p")
    store.create_experiment("b", project="p")
    bench.clock.advance(5)
    store.rename_experiment(a, "a2")
    renamed = store.get_experiment(a)
    assert (renamed.name, renamed.last_update_time) == ("a2", T0 + 5)
    with pytest.raises(ResourceAlreadyExists):
        store.rename_experiment(a, "b")
    store.set_experiment_tag(a, "k", "v1")
    store.set_experiment_tag(a, "k", "v2")
    store.set_experiment_tag(a, "long", "x" * 20000)
    assert store.get_experiment(a).tags["k"] == "v2"
    with pytest.raises(InvalidParameterValue, match=r"tag\.value"):
        store.set_experiment_tag(a, "long", "x" * 20001)
    store.delete_experiment_tag(a, "k")
    assert "k" not in store.get_experiment(a).tags
    with pytest.raises(ResourceDoesNotExist, match="No tag with name: k in experiment"):
        store.delete_experiment_tag(a, "k")
    with pytest.raises(ResourceDoesNotExist):
        store.rename_experiment("424242", "x")


def test_delete_and_restore_experiment(bench: Bench) -> None:
    store = bench.store
    exp = store.create_experiment("e", project="p")
    live, gone = _run(store, exp), _run(store, exp)
    store.delete_run(gone)
    bench.clock.advance(10)
    store.delete_experiment(exp)
    deleted = store.get_experiment(exp)
    assert (deleted.lifecycle_stage, deleted.last_update_time) == ("deleted", T0 + 10)
    assert store.get_run(live).info.lifecycle_stage == "deleted"
    with pytest.raises(InvalidState):
        store.create_run(exp)
    with pytest.raises(InvalidState):
        store.rename_experiment(exp, "other")
    with pytest.raises(InvalidState):
        store.set_experiment_tag(exp, "k", "v")
    with pytest.raises(InvalidState):
        store.delete_experiment(exp)
    with pytest.raises(InvalidState):
        store.log_batch(live, metrics=[Metric("m", 1.0, T0)])
    with pytest.raises(ResourceAlreadyExists, match="deleted"):
        store.create_experiment("e", project="p")
    assert store.get_experiment_by_name("e", project="p") is not None
    store.restore_experiment(exp)
    assert store.get_experiment(exp).lifecycle_stage == "active"
    assert {store.get_run(r).info.lifecycle_stage for r in (live, gone)} == {"active"}
    with pytest.raises(InvalidState):
        store.restore_experiment(exp)


def test_search_experiments(bench: Bench) -> None:
    store = bench.store
    ids = {}
    for name, project in (("Alpha", "p"), ("alpha-2", "p"), ("beta", "p"), ("gamma", "q")):
        bench.clock.advance(100)
        ids[name] = store.create_experiment(name, project=project, tags={"team": name[0].lower()})
    store.set_experiment_tag(ids["beta"], "special", "yes")

    def names(**kwargs: object) -> list[str]:
        page = store.search_experiments(**kwargs)  # type: ignore[arg-type]  # keyword passthrough
        return [e.name for e in page.items]

    assert names(project="p") == ["beta", "alpha-2", "Alpha"]  # newest first
    assert names(project="q") == ["gamma"]
    assert set(names(project=None)) == {"Default", "Alpha", "alpha-2", "beta", "gamma"}
    assert names(project="p", filter_string="name = 'beta'") == ["beta"]
    assert names(project="default", filter_string="attributes.name != 'beta'") == ["Default"]
    assert names(project="p", filter_string="attributes.name != 'beta'", order_by=["name"]) == ["Alpha", "alpha-2"]
    assert names(project="p", filter_string="name LIKE 'alpha%'") == ["alpha-2"]  # LIKE is case-sensitive
    assert names(project="p", filter_string="name ILIKE 'alpha%'", order_by=["name DESC"]) == ["alpha-2", "Alpha"]
    assert names(project="p", filter_string="tags.special = 'yes'") == ["beta"]
    assert names(project="p", filter_string="tags.team LIKE 'a%'", order_by=["name"]) == ["Alpha", "alpha-2"]
    assert names(project="p", filter_string="tags.special IS NULL", order_by=["creation_time"]) == [
        "Alpha", "alpha-2"]
    assert names(project="p", filter_string=f"creation_time > {T0 + 150}") == ["beta", "alpha-2"]
    assert names(project=None, filter_string=f"experiment_id IN ('{ids['gamma']}', '{ids['Alpha']}')",
                 order_by=["experiment_id"]) == ["Alpha", "gamma"]
    store.delete_experiment(ids["beta"])
    assert names(project="p", view_type="DELETED_ONLY") == ["beta"]
    assert "beta" not in names(project="p")
    assert len(names(project="p", view_type="ALL")) == 3
    # Pagination walks every experiment exactly once.
    seen: list[str] = []
    token = None
    while True:
        page = store.search_experiments(project=None, view_type="ALL", max_results=2, page_token=token)
        seen += [e.experiment_id for e in page.items]
        token = page.next_page_token
        if token is None:
            break
    assert sorted(seen) == sorted(["0", *ids.values()])
    for kwargs in ({"view_type": "SOME"}, {"max_results": 0}, {"filter_string": "metrics.a > 1"},
                   {"order_by": ["bogus"]}, {"page_token": "garbage!"}):
        with pytest.raises(InvalidParameterValue):
            store.search_experiments(**kwargs)


# ---------------------------------------------------------------------------------------------- runs


def test_create_get_and_update_run(bench: Bench) -> None:
    store = bench.store
    exp = store.create_experiment("e", project="p")
    info = store.create_run(exp, user_id="ann", tags=[RunTag("mlflow.source.name", "train.py"),
                                                      RunTag("mlflow.source.git.commit", "abc123")])
    assert len(info.run_id) == 32 and int(info.run_id, 16) >= 0
    assert (info.experiment_id, info.user_id, info.status, info.start_time, info.end_time) == (
        exp, "ann", "RUNNING", T0, None)
    assert (info.source, info.git_commit, info.lifecycle_stage) == ("train.py", "abc123", "active")
    assert info.artifact_uri == f"mlflow-artifacts:/{exp}/{info.run_id}/artifacts"
    assert info.run_name and len(info.run_name) <= 20
    run = store.get_run(info.run_id)
    assert run.info == info
    assert run.data.tags["mlflow.runName"] == info.run_name
    named = store.create_run(exp, run_name="my-run", start_time=5)
    assert (named.run_name, named.start_time) == ("my-run", 5)
    tagged = store.create_run(exp, tags=[RunTag("mlflow.runName", "from-tag")])
    assert tagged.run_name == "from-tag"
    with pytest.raises(InvalidParameterValue, match="run_name"):
        store.create_run(exp, run_name="a", tags=[RunTag("mlflow.runName", "b")])
    with pytest.raises(ResourceDoesNotExist, match="Run 'abc' not found"):
        store.get_run("abc")
    with pytest.raises(ResourceDoesNotExist, match="Experiment '777' not found"):
        store.create_run("777")
    with pytest.raises(InvalidParameterValue, match=r"^start_time: "):
        store.create_run(exp, start_time=-1)
    with pytest.raises(InvalidParameterValue, match=r"^start_time: "):
        store.create_run(exp, start_time=2**70)

    updated = store.update_run(named.run_id, status="FINISHED", end_time=T0 + 9, run_name="renamed")
    assert (updated.status, updated.end_time, updated.run_name) == ("FINISHED", T0 + 9, "renamed")
    again = store.get_run(named.run_id)
    assert again.info == updated and again.data.tags["mlflow.runName"] == "renamed"
    assert store.update_run(named.run_id).status == "FINISHED"  # nothing to change is fine
    with pytest.raises(InvalidParameterValue, match="status"):
        store.update_run(named.run_id, status="DONE")
    with pytest.raises(InvalidParameterValue, match=r"^end_time: "):
        store.update_run(named.run_id, end_time=1.5)  # type: ignore[arg-type]  # deliberately bad input
    with pytest.raises(ResourceDoesNotExist):
        store.update_run("0" * 32, status="FAILED")
    store.delete_run(named.run_id)
    with pytest.raises(InvalidState):
        store.update_run(named.run_id, status="KILLED")


def test_log_batch_params_tags_and_validation(bench: Bench) -> None:
    store = bench.store
    exp = store.create_experiment("e", project="p")
    run = _run(store, exp)
    store.log_batch(run, params=[Param("lr", "0.1"), Param("opt", "adam")], tags=[RunTag("t", "1")])
    store.log_batch(run, params=[Param("lr", "0.1")], tags=[RunTag("t", "2"), RunTag("mlflow.runName", "nm")])
    data = store.get_run(run)
    assert data.data.params == {"lr": "0.1", "opt": "adam"}
    assert data.data.tags["t"] == "2" and data.info.run_name == "nm"
    with pytest.raises(InvalidParameterValue, match=r"params\[1\]\.value: param 'lr'.*'0\.1'.*'0\.2'"):
        store.log_batch(run, params=[Param("new", "x"), Param("lr", "0.2")])
    assert "new" not in store.get_run(run).data.params  # the whole batch was refused

    ok_metric = Metric("m", 1.0, T0)
    cases: list[tuple[dict[str, object], str]] = [
        ({"metrics": [ok_metric] * 3 + [Metric("m", "x", T0)]}, r"^metrics\[3\]\.value: "),  # type: ignore[arg-type]  # deliberately ill-typed input under test
        ({"metrics": [Metric("m", True, T0)]}, r"^metrics\[0\]\.value: "),
        ({"metrics": [Metric("m", None, T0)]}, r"^metrics\[0\]\.value: "),  # type: ignore[arg-type]  # deliberately ill-typed input under test
        ({"metrics": [Metric("m", 1.0, -1)]}, r"^metrics\[0\]\.timestamp: "),
        ({"metrics": [Metric("m", 1.0, T0, 1.5)]}, r"^metrics\[0\]\.step: "),  # type: ignore[arg-type]  # deliberately ill-typed input under test
        ({"metrics": [Metric("bad?key", 1.0, T0)]}, r"^metrics\[0\]\.key: invalid name"),
        ({"metrics": [Metric("a//b", 1.0, T0)]}, r"^metrics\[0\]\.key: "),
        ({"metrics": [Metric("../up", 1.0, T0)]}, r"^metrics\[0\]\.key: "),
        ({"metrics": [Metric("", 1.0, T0)]}, r"^metrics\[0\]\.key: "),
        ({"params": [Param("k" * 251, "v")]}, r"^params\[0\]\.key: "),
        ({"params": [Param("p", "v" * 6001)]}, r"^params\[0\]\.value: 6001 characters"),
        ({"params": [Param("p", "a"), Param("p", "a")]}, r"^params\[1\]\.key: duplicate"),
        ({"tags": [RunTag("t", "v" * 8001)]}, r"^tags\[0\]\.value: "),
        ({"tags": [RunTag("mlflow.runName", "n" * 251)]}, "mlflow.runName"),
        ({"metrics": [ok_metric] * 1001}, "^metrics: a batch may hold at most 1000"),
        ({"params": [Param(f"p{i}", "v") for i in range(101)]}, "^params: a batch may hold at most 100"),
        ({"tags": [RunTag(f"t{i}", "v") for i in range(101)]}, "^tags: a batch may hold at most 100"),
        ({"metrics": [ok_metric] * 950, "params": [Param(f"p{i}", "v") for i in range(51)]}, "in all"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InvalidParameterValue, match=message):
            store.log_batch(run, **kwargs)  # type: ignore[arg-type]  # deliberately bad input
    store.log_batch(run, params=[Param("p", "v" * 6000)], tags=[RunTag("long", "v" * 8000)],
                    metrics=[Metric("a b/c-d.e:f_g", 2, T0)])
    assert store.get_run(run).data.metrics == (Metric("a b/c-d.e:f_g", 2.0, T0, 0),)
    with pytest.raises(ResourceDoesNotExist, match="Run 'nope' not found"):
        store.log_batch("nope", metrics=[ok_metric])


def test_tags_can_be_deleted(bench: Bench) -> None:
    store = bench.store
    run = _run(store, store.create_experiment("e", project="p"))
    store.log_batch(run, tags=[RunTag("a", "1"), RunTag("b", "2"), RunTag("a", "3")])
    assert {k: v for k, v in store.get_run(run).data.tags.items() if k != "mlflow.runName"} == {"a": "3", "b": "2"}
    store.delete_tag(run, "a")
    assert "a" not in store.get_run(run).data.tags
    with pytest.raises(ResourceDoesNotExist, match="No tag with name: a in run"):
        store.delete_tag(run, "a")


def test_metrics_history_latest_nan_and_infinity(bench: Bench) -> None:
    store = bench.store
    run = _run(store, store.create_experiment("e", project="p"))
    points = [Metric("loss", 0.5, T0 + 1, 1), Metric("loss", 0.4, T0 + 2, 2), Metric("loss", float("nan"), T0, 3),
              Metric("loss", 0.9, T0 + 9, 0), Metric("loss", 0.5, T0 + 1, 1),  # a duplicate is absorbed
              Metric("inf", float("inf"), T0, 0), Metric("ninf", float("-inf"), T0, 0)]
    store.log_batch(run, metrics=points)
    store.log_batch(run, metrics=[Metric("loss", 0.1, T0 + 50, 2)])  # older step than the NaN: not latest
    latest = {m.key: m for m in store.get_run(run).data.metrics}
    assert math.isnan(latest["loss"].value) and latest["loss"].step == 3
    assert latest["inf"].value == float("inf") and latest["ninf"].value == float("-inf")
    history = store.get_metric_history(run, "loss").items
    assert [(m.step, m.timestamp) for m in history] == [(0, T0 + 9), (1, T0 + 1), (2, T0 + 2), (2, T0 + 50),
                                                       (3, T0)]
    assert math.isnan(history[-1].value)
    # Latest keeps the max by (step, timestamp, value) whatever the logging order.
    store.log_batch(run, metrics=[Metric("acc", 0.7, T0 + 5, 4), Metric("acc", 0.6, T0 + 5, 4)])
    store.log_batch(run, metrics=[Metric("acc", 0.99, T0 + 4, 4)])
    assert {m.key: m for m in store.get_run(run).data.metrics}["acc"] == Metric("acc", 0.7, T0 + 5, 4)
    # Pages.
    first = store.get_metric_history(run, "loss", max_results=2)
    assert len(first.items) == 2 and first.next_page_token
    second = store.get_metric_history(run, "loss", max_results=2, page_token=first.next_page_token)
    third = store.get_metric_history(run, "loss", max_results=2, page_token=second.next_page_token)
    assert [m.step for m in (*first.items, *second.items, *third.items)] == [0, 1, 2, 2, 3]
    assert third.next_page_token is None
    assert store.get_metric_history(run, "never-logged").items == ()
    with pytest.raises(ResourceDoesNotExist):
        store.get_metric_history("f" * 32, "loss")


def test_log_metrics_for_runs_is_one_transaction(bench: Bench) -> None:
    store = bench.store
    exp = store.create_experiment("e", project="p")
    a, b, dead = _run(store, exp), _run(store, exp), _run(store, exp)
    store.log_metrics_for_runs({a: [Metric("m", 1.0, T0, 0), Metric("m", 2.0, T0, 1)], b: [Metric("n", 3.0, T0)]})
    assert len(store.get_metric_history(a, "m").items) == 2
    assert store.get_run(b).data.metrics == (Metric("n", 3.0, T0, 0),)
    store.delete_run(dead)
    with pytest.raises(InvalidState):
        store.log_metrics_for_runs({a: [Metric("m", 9.0, T0, 9)], dead: [Metric("m", 1.0, T0)]})
    assert len(store.get_metric_history(a, "m").items) == 2  # nothing of the failed call was kept
    with pytest.raises(InvalidParameterValue, match=r"batches\['.*'\]\[0\]\.value"):
        store.log_metrics_for_runs({a: [Metric("m", "x", T0)]})  # type: ignore[arg-type]  # bad on purpose


def test_delete_restore_run(bench: Bench) -> None:
    store = bench.store
    exp = store.create_experiment("e", project="p")
    run = _run(store, exp)
    bench.clock.advance(3)
    store.delete_run(run)
    store.delete_run(run)  # idempotent
    assert store.get_run(run).info.lifecycle_stage == "deleted"
    assert _ids(store.search_runs([exp]).items) == []
    assert _ids(store.search_runs([exp], view_type="DELETED_ONLY").items) == [run]
    writes: list[Callable[[], None]] = [
        lambda: store.log_batch(run, params=[Param("a", "b")]), lambda: store.delete_tag(run, "x"),
        lambda: store.log_inputs(run, datasets=[DatasetInput("d", "1")])]
    for write in writes:
        with pytest.raises(InvalidState, match="deleted"):
            write()
    store.restore_run(run)
    store.restore_run(run)
    assert store.get_run(run).info.lifecycle_stage == "active"
    store.delete_experiment(exp)
    with pytest.raises(InvalidState, match="restore the experiment"):
        store.restore_run(run)
    with pytest.raises(ResourceDoesNotExist):
        store.delete_run("1" * 32)


# ---------------------------------------------------------------------------------------------- search


@pytest.fixture
def population(bench: Bench) -> tuple[Bench, str, dict[str, str]]:
    """Six runs with varied metrics, params, tags, statuses and start times."""
    store = bench.store
    exp = store.create_experiment("search", project="p")
    specs = {
        "r1": ({"acc": 0.9, "loss": 0.1}, {"opt": "adam", "lr": "0.1"}, {"team": "Vision"}, "FINISHED", "ann"),
        "r2": ({"acc": 0.5, "loss": 0.5}, {"opt": "sgd", "lr": "0.01"}, {"team": "vision"}, "FINISHED", "bob"),
        "r3": ({"acc": float("nan")}, {"opt": "Adam"}, {"team": "nlp"}, "FAILED", "ann"),
        "r4": ({"loss": 2.0}, {}, {}, "RUNNING", "cy"),
        "r5": ({"acc": 0.7, "loss": float("inf")}, {"opt": "adam_w"}, {"team": "nlp", "x": "50%"}, "KILLED", "ann"),
        "r6": ({"acc": 0.5}, {"opt": "a_am"}, {}, "FINISHED", "bob"),
    }
    ids: dict[str, str] = {}
    for index, (name, (mets, pars, tags, status, user)) in enumerate(specs.items()):
        run = store.create_run(exp, run_name=name, user_id=user, start_time=T0 + index * 10)
        store.log_batch(run.run_id, metrics=[Metric(k, v, T0) for k, v in mets.items()],
                        params=[Param(k, v) for k, v in pars.items()], tags=[RunTag(k, v) for k, v in tags.items()])
        if status != "RUNNING":
            store.update_run(run.run_id, status=status, end_time=T0 + 1000 + index)
        ids[name] = run.run_id
    return bench, exp, ids


def test_search_runs_filters(population: tuple[Bench, str, dict[str, str]]) -> None:
    bench, exp, ids = population
    names = {v: k for k, v in ids.items()}

    def found(filter_string: str) -> set[str]:
        return {names[r] for r in _ids(bench.store.search_runs([exp], filter_string=filter_string).items)}

    assert found("") == set(ids)
    assert found("metrics.acc > 0.5") == {"r1", "r5"}
    assert found("metrics.acc >= 0.5") == {"r1", "r2", "r5", "r6"}
    assert found("metrics.acc < 0.7") == {"r2", "r6"}
    assert found("metrics.acc <= 0.7") == {"r2", "r5", "r6"}
    assert found("metrics.acc = 0.5") == {"r2", "r6"}
    assert found("metrics.acc != 0.5") == {"r1", "r3", "r5"}  # NaN satisfies only '!='
    assert found("metrics.loss > 1e300") == {"r5"}  # +inf
    assert found("metrics.never > 0") == set()
    assert found("params.opt = 'adam'") == {"r1"}
    assert found("params.opt != 'adam'") == {"r2", "r3", "r5", "r6"}  # a run without the param never matches
    assert found("params.opt LIKE 'adam%'") == {"r1", "r5"}  # case-sensitive on every backend
    assert found("params.opt ILIKE 'adam%'") == {"r1", "r3", "r5"}
    assert found("params.opt LIKE 'a_am'") == {"r1", "r6"}  # '_' is one character
    assert found("params.opt LIKE 'a\\_am'") == {"r6"}  # ... unless escaped
    assert found("tags.x LIKE '50\\%'") == {"r5"}
    assert found("tags.team = 'vision'") == {"r2"}
    assert found("tags.team ILIKE 'VISION'") == {"r1", "r2"}
    assert found("tags.team IS NULL") == {"r4", "r6"}
    assert found("params.lr IS NOT NULL") == {"r1", "r2"}
    assert found("tags.`mlflow.runName` = 'r3'") == {"r3"}
    assert found("attributes.status = 'FINISHED' AND metrics.acc > 0.6") == {"r1"}
    assert found("status != 'FINISHED'") == {"r3", "r4", "r5"}
    assert found("run_name LIKE 'r%' AND user_id = 'ann'") == {"r1", "r3", "r5"}
    assert found("attributes.run_name ILIKE 'R1'") == {"r1"}
    assert found(f"attributes.run_id IN ('{ids['r1']}', '{ids['r4']}')") == {"r1", "r4"}
    assert found(f"run_id NOT IN ('{ids['r1']}')") == set(ids) - {"r1"}
    assert found(f"start_time >= {T0 + 20} AND start_time < {T0 + 40}") == {"r3", "r4"}
    assert found(f"end_time > {T0 + 1003}") == {"r5", "r6"}
    assert found(f"artifact_uri LIKE 'mlflow-artifacts:/{exp}/%'") == set(ids)
    assert found("lifecycle_stage = 'active'") == set(ids)
    with pytest.raises(InvalidParameterValue, match="filter_string"):
        bench.store.search_runs([exp], filter_string="metrics.acc > 'high'")
    with pytest.raises(InvalidParameterValue, match="experiment_ids"):
        bench.store.search_runs(["x"])
    assert bench.store.search_runs([]).items == ()
    assert bench.store.search_runs(["9999"]).items == ()


def test_search_runs_order_by_and_pages(population: tuple[Bench, str, dict[str, str]]) -> None:
    bench, exp, ids = population
    store = bench.store
    names = {v: k for k, v in ids.items()}

    def order(*order_by: str) -> list[str]:
        return [names[r] for r in _ids(store.search_runs([exp], order_by=list(order_by)).items)]

    assert order() == ["r6", "r5", "r4", "r3", "r2", "r1"]  # start_time DESC
    # Ties broken by start time DESC; NaN after numbers; missing values last, in both directions.
    assert order("metrics.acc DESC") == ["r1", "r5", "r6", "r2", "r3", "r4"]
    assert order("metrics.acc") == ["r6", "r2", "r5", "r1", "r3", "r4"]
    assert order("metrics.loss DESC") == ["r5", "r4", "r2", "r1", "r6", "r3"]
    assert order("params.opt") == ["r3", "r6", "r1", "r5", "r2", "r4"]  # byte order: 'A' < 'a'
    assert order("params.lr DESC", "start_time ASC") == ["r1", "r2", "r3", "r4", "r5", "r6"]
    assert order("tags.team", "attributes.start_time") == ["r1", "r3", "r5", "r2", "r4", "r6"]
    assert order("run_name DESC") == ["r6", "r5", "r4", "r3", "r2", "r1"]
    assert order("end_time") == ["r1", "r2", "r3", "r5", "r6", "r4"]
    assert order("status", "user_id DESC") == ["r3", "r6", "r2", "r1", "r5", "r4"]
    filtered = store.search_runs([exp], filter_string="metrics.acc >= 0.5", order_by=["metrics.acc DESC"])
    assert [names[r] for r in _ids(filtered.items)] == ["r1", "r5", "r6", "r2"]
    run = filtered.items[0]
    assert run.data.params == {"opt": "adam", "lr": "0.1"} and run.data.tags["team"] == "Vision"
    assert {m.key for m in run.data.metrics} == {"acc", "loss"}

    seen: list[str] = []
    token = None
    while True:
        page = store.search_runs([exp], order_by=["metrics.acc DESC"], max_results=4, page_token=token)
        assert len(page.items) <= 4
        seen += [names[r] for r in _ids(page.items)]
        token = page.next_page_token
        if token is None:
            break
    assert seen == ["r1", "r5", "r6", "r2", "r3", "r4"]
    store.delete_run(ids["r2"])
    assert "r2" not in order()
    everything = store.search_runs([exp, "0"], view_type="ALL")
    assert len(everything.items) == 6
    for bad in (["metrics.acc SIDEWAYS"], ["metrics.acc", "metrics.acc DESC"]):
        with pytest.raises(InvalidParameterValue, match="order_by"):
            store.search_runs([exp], order_by=bad)
    with pytest.raises(InvalidParameterValue, match="max_results"):
        store.search_runs([exp], max_results=50001)
    with pytest.raises(InvalidParameterValue, match="view_type"):
        store.search_runs([exp], view_type="BOTH")


# ---------------------------------------------------------------------------------------------- inputs, models


def test_inputs_and_outputs(bench: Bench) -> None:
    store = bench.store
    exp = store.create_experiment("e", project="p")
    run = _run(store, exp)
    model = store.create_logged_model(exp, name="clf", source_run_id=run)
    ds = DatasetInput("train", "abc123", "local", "/data/train.csv", '{"cols": []}', "{}", {"mlflow.data.context": "t"})
    store.log_inputs(run, datasets=[ds], model_ids=[model.model_id])
    store.log_inputs(run, datasets=[DatasetInput("train", "abc123", "local", "/data/v2.csv")])  # same dataset: update
    store.log_outputs(run, [(model.model_id, 3)])
    store.log_outputs(run, [(model.model_id, 5)])
    got = store.get_run(run)
    assert got.inputs == (DatasetInput("train", "abc123", "local", "/data/v2.csv"),)
    assert got.model_inputs == (model.model_id,)
    assert [(o.model_id, o.step) for o in got.outputs] == [(model.model_id, 5)]
    found = store.search_runs([exp]).items[0]
    assert found.inputs == got.inputs and found.outputs == got.outputs
    with pytest.raises(ResourceDoesNotExist, match="Logged model 'm-missing'"):
        store.log_outputs(run, [("m-missing", 0)])
    with pytest.raises(InvalidParameterValue, match=r"model_ids_and_steps\[0\]\.step"):
        store.log_outputs(run, [(model.model_id, "x")])  # type: ignore[list-item]  # deliberately bad input
    with pytest.raises(InvalidParameterValue, match=r"datasets\[0\]\.digest"):
        store.log_inputs(run, datasets=[DatasetInput("d", "x" * 37)])
    with pytest.raises(InvalidParameterValue, match=r"datasets\[0\]\.name"):
        store.log_inputs(run, datasets=[DatasetInput("", "1")])


def test_logged_models(bench: Bench) -> None:
    store = bench.store
    exp = store.create_experiment("e", project="p")
    run = _run(store, exp)
    model = store.create_logged_model(exp, name="clf", source_run_id=run, model_type="sklearn",
                                      params={"alpha": "1"}, tags={"stage": "dev"})
    assert model.model_id.startswith("m-") and len(model.model_id) == 34
    assert model.artifact_location == f"mlflow-artifacts:/{exp}/models/{model.model_id}/artifacts"
    assert (model.status, model.source_run_id, model.params, model.tags) == ("PENDING", run, {"alpha": "1"},
                                                                             {"stage": "dev"})
    assert store.get_logged_model(model.model_id) == model
    bench.clock.advance(7)
    ready = store.finalize_logged_model(model.model_id, "LOGGED_MODEL_READY")
    assert (ready.status, ready.last_updated_timestamp) == ("READY", T0 + 7)
    with pytest.raises(InvalidParameterValue, match="status"):
        store.finalize_logged_model(model.model_id, "DONE")
    store.set_logged_model_tags(model.model_id, {"stage": "prod", "owner": "ann"})
    assert store.get_logged_model(model.model_id).tags == {"stage": "prod", "owner": "ann"}
    store.delete_logged_model_tag(model.model_id, "owner")
    with pytest.raises(ResourceDoesNotExist, match="No tag 'owner'"):
        store.delete_logged_model_tag(model.model_id, "owner")
    unnamed = store.create_logged_model(exp)
    assert unnamed.name and unnamed.source_run_id is None
    other = store.create_logged_model(exp, name="reg", model_type="xgboost")
    for bad in ("a/b", "a.b", ""):
        with pytest.raises(InvalidParameterValue, match="name"):
            store.create_logged_model(exp, name=bad)
    with pytest.raises(ResourceDoesNotExist):
        store.create_logged_model(exp, source_run_id="9" * 32)
    with pytest.raises(ResourceDoesNotExist):
        store.create_logged_model("4242")

    def search(filter_string: str = "", **kwargs: object) -> list[str]:
        page = store.search_logged_models([exp], filter_string=filter_string, **kwargs)  # type: ignore[arg-type]  # keyword arguments from a parametrized dict
        return [m.model_id for m in page.items]

    assert search() == [other.model_id, unnamed.model_id, model.model_id] or set(search()) == {
        other.model_id, unnamed.model_id, model.model_id}
    assert search("name = 'clf'") == [model.model_id]
    assert search("status = 'READY' AND params.alpha = '1' AND tags.stage LIKE 'pr%'") == [model.model_id]
    assert search("model_type != 'sklearn'") == [other.model_id, unnamed.model_id] or set(
        search("model_type != 'sklearn'")) == {other.model_id, unnamed.model_id}
    assert search(f"source_run_id = '{run}'") == [model.model_id]
    assert search("metrics.acc > 0") == []
    first = store.search_logged_models([exp], max_results=2)
    rest = store.search_logged_models([exp], max_results=2, page_token=first.next_page_token)
    assert len(first.items) == 2 and len(rest.items) == 1 and rest.next_page_token is None
    store.delete_logged_model(other.model_id)
    with pytest.raises(ResourceDoesNotExist, match="Logged model"):
        store.get_logged_model(other.model_id)
    assert other.model_id not in search()


# ---------------------------------------------------------------------------------------------- purge, events


def test_purge_deleted(bench: Bench) -> None:
    store = bench.store
    keep_exp = store.create_experiment("keep", project="p")
    drop_exp = store.create_experiment("drop", project="p")
    kept, dropped_run = _run(store, keep_exp), _run(store, keep_exp)
    in_dropped = _run(store, drop_exp)
    store.log_batch(dropped_run, metrics=[Metric("m", 1.0, T0)], params=[Param("p", "v")], tags=[RunTag("t", "v")])
    model = store.create_logged_model(keep_exp, name="gone")
    store.delete_logged_model(model.model_id)
    store.delete_run(dropped_run)
    bench.clock.advance(1000)
    store.delete_experiment(drop_exp)
    bench.clock.advance(10)
    # A dry run reports exactly what the real purge then removes, and removes nothing itself.
    preview = store.purge_deleted(older_than_ms=500, dry_run=True)
    assert [r.info.run_id for r in store.search_runs([keep_exp], view_type="DELETED_ONLY").items] == [dropped_run]
    # Only what was deleted at least 500 ms ago.
    partial = store.purge_deleted(older_than_ms=500)
    assert partial == preview
    assert (partial.experiments, partial.runs) == (0, 1)
    assert sorted(partial.artifact_prefixes) == sorted([f"{keep_exp}/models/{model.model_id}/artifacts",
                                                        f"{keep_exp}/{dropped_run}/artifacts"])
    with pytest.raises(ResourceDoesNotExist):
        store.get_run(dropped_run)
    full = store.purge_deleted()
    assert (full.experiments, full.runs, full.artifact_prefixes) == (1, 1, (drop_exp,))
    with pytest.raises(ResourceDoesNotExist):
        store.get_experiment(drop_exp)
    with pytest.raises(ResourceDoesNotExist):
        store.get_run(in_dropped)
    assert store.get_run(kept).info.lifecycle_stage == "active"
    assert store.purge_deleted() == type(full)(0, 0, ())
    store.create_experiment("drop", project="p")  # the name is free again
    with pytest.raises(InvalidParameterValue):
        store.purge_deleted(older_than_ms=-1)


def test_lifecycle_events(bench: Bench) -> None:
    store, log = bench.store, bench.events
    exp = store.create_experiment("e", project="team")
    run = store.create_run(exp, run_name="r").run_id
    store.update_run(run, status="RUNNING")
    store.update_run(run, status="FAILED", end_time=T0 + 5)
    store.update_run(run, status="FAILED")  # no transition, no event
    store.delete_run(run)
    store.restore_run(run)
    other = _run(store, exp)
    store.update_run(other, status="KILLED")
    third = _run(store, exp)
    store.update_run(third, status="FINISHED")
    events = log.list("run", run)
    assert [e.reason for e in events] == ["RunCreated", "RunFailed", "RunDeleted", "RunRestored"]
    assert events[0].project == "team" and events[0].data["experiment_id"] == exp
    assert events[1].type == "Warning" and events[1].data["end_time"] == T0 + 5
    assert [e.reason for e in log.list("run", other)] == ["RunCreated", "RunKilled"]
    assert [e.reason for e in log.list("run", third)] == ["RunCreated", "RunFinished"]
    store.delete_experiment(exp)
    store.restore_experiment(exp)
    store.rename_experiment(exp, "e2")
    assert [e.reason for e in log.list("experiment", exp)] == [
        "ExperimentCreated", "ExperimentDeleted", "ExperimentRestored", "ExperimentRenamed"]
    assert [e.reason for e in log.list("run", third)][-2:] == ["RunDeleted", "RunRestored"]


@dataclass
class ListEventLog:
    """An EventLog that is not SQL: it must receive the events after each commit."""

    events: list[Event] = field(default_factory=list)

    def append(self, kind: str, object_id: str, reason: str, message: str = "", *, type: str = "Normal",
               project: str = "", data: object = None, time: int | None = None) -> Event:
        raise AssertionError("the store appends in batches")

    def append_many(self, events: Sequence[Event]) -> None:
        self.events.extend(events)

    def list(self, *args: object, **kwargs: object) -> tuple[Event, ...]:
        return tuple(self.events)


def test_events_to_another_event_log_and_none(bench: Bench, backend_settings: Settings) -> None:
    engine = create_store_engine(backend_settings)
    sink = ListEventLog()
    store = SqlTrackingStore(engine, clock=bench.clock, events=sink)
    exp = store.create_experiment("elsewhere", project="p")
    run = store.create_run(exp).run_id
    with pytest.raises(InvalidState):
        store.restore_experiment(exp)  # a failed call records nothing
    store.update_run(run, status="FINISHED")
    assert [(e.kind, e.reason) for e in sink.events] == [
        ("experiment", "ExperimentCreated"), ("run", "RunCreated"), ("run", "RunFinished")]
    assert sink.events[1].time == T0 and sink.events[1].object_id == run
    quiet = SqlTrackingStore(engine, clock=bench.clock)
    quiet.update_run(quiet.create_run(exp).run_id, status="FINISHED")
    assert len(sink.events) == 3
    assert all(e.object_id != run for e in bench.events.list("run"))
    engine.dispose()


def test_logged_model_params_are_added_but_never_changed(bench: Bench) -> None:
    store = bench.store
    exp = store.create_experiment("lm-params", project="p")
    model = store.create_logged_model(exp, name="clf", params={"alpha": "1"})
    store.log_logged_model_params(model.model_id, {"beta": "2", "alpha": "1"})
    assert store.get_logged_model(model.model_id).params == {"alpha": "1", "beta": "2"}
    with pytest.raises(InvalidParameterValue, match="alpha"):
        store.log_logged_model_params(model.model_id, {"alpha": "3"})
    with pytest.raises(InvalidParameterValue):
        store.log_logged_model_params(model.model_id, {"bad key?": "x"})
    with pytest.raises(ResourceDoesNotExist):
        store.log_logged_model_params("m-" + "0" * 32, {"a": "b"})
    assert store.get_logged_model(model.model_id).params == {"alpha": "1", "beta": "2"}

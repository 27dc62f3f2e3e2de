"""The fluent API (``capstan.start_run``, ``log_*``) and ``capstan.Client``, on the local stores and over HTTP."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

import capstan
from capstan.errors import InvalidParameterValue, InvalidState, ResourceDoesNotExist
from capstan.settings import Settings


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_start_run_logs_and_finishes(fluent: Settings, tmp_path: Path) -> None:
    experiment = unique("fluent")
    with capstan.start_run(experiment=experiment, run_name="first", params={"lr": 0.1, "layers": 3},
                           tags={"team": "risk"}) as run:
        assert capstan.active_run() is run
        for step in range(250):
            capstan.log_metric("loss", 1 / (step + 1), step=step)
        capstan.log_metrics({"acc": 0.9, "f1": 0.8}, step=3)
        capstan.log_param("batch", 32)
        capstan.log_params({"optimizer": "adam"})
        capstan.set_tag("stage", "dev")
        capstan.set_tags({"a": 1})
    assert capstan.active_run() is None
    client = capstan.Client()
    stored = client.get_run(run.run_id)
    assert stored.info.status == "FINISHED" and stored.info.end_time is not None
    assert stored.info.run_name == "first"
    assert dict(stored.data.params) == {"lr": "0.1", "layers": "3", "batch": "32", "optimizer": "adam"}
    tags = stored.data.tags
    assert (tags["team"], tags["stage"], tags["a"]) == ("risk", "dev", "1")
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.user"]
    latest = {m.key: (m.value, m.step) for m in stored.data.metrics}
    assert latest == {"loss": (1 / 250, 249), "acc": (0.9, 3), "f1": (0.8, 3)}
    assert len(client.get_metric_history(run.run_id, "loss")) == 250
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None and exp.experiment_id == run.experiment_id


def test_exception_marks_failed_and_keyboard_interrupt_killed(fluent: Settings) -> None:
    experiment = unique("status")
    with pytest.raises(ZeroDivisionError), capstan.start_run(experiment=experiment) as failed:
        capstan.log_metric("x", 1.0)
        _ = 1 / 0
    with pytest.raises(KeyboardInterrupt), capstan.start_run(experiment=experiment) as killed:
        raise KeyboardInterrupt
    client = capstan.Client()
    assert client.get_run(failed.run_id).info.status == "FAILED"
    assert [m.key for m in client.get_run(failed.run_id).data.metrics] == ["x"]  # flushed before ending
    assert client.get_run(killed.run_id).info.status == "KILLED"


def test_nested_runs_and_active_run_conflict(fluent: Settings) -> None:
    experiment = unique("nested")
    with capstan.start_run(experiment=experiment) as parent:
        with pytest.raises(InvalidState, match="already active"):
            capstan.start_run(experiment=experiment)
        with capstan.start_run(experiment=experiment, nested=True) as child:
            capstan.log_metric("inner", 1.0)
            assert capstan.active_run() is child
        assert capstan.active_run() is parent
    child_run = capstan.Client().get_run(child.run_id)
    assert child_run.data.tags["mlflow.parentRunId"] == parent.run_id


def test_resume_run_and_manual_end(fluent: Settings) -> None:
    run = capstan.start_run(experiment=unique("resume"))
    capstan.log_metric("a", 1.0)
    capstan.end_run("FINISHED")
    assert capstan.active_run() is None
    with capstan.start_run(run_id=run.run_id) as resumed:
        assert resumed.run_id == run.run_id
        capstan.log_metric("b", 2.0)
    stored = capstan.Client().get_run(run.run_id)
    assert {m.key for m in stored.data.metrics} == {"a", "b"} and stored.info.status == "FINISHED"


def test_logging_without_a_run_starts_one_in_the_default_experiment(fluent: Settings) -> None:
    capstan.log_metric("auto", 1.0)
    run = capstan.active_run()
    assert run is not None
    capstan.end_run()
    exp = capstan.Client().get_experiment(run.experiment_id)
    assert exp.name == "Default"


def test_set_experiment_is_used_by_later_runs(fluent: Settings) -> None:
    name = unique("chosen")
    exp = capstan.set_experiment(name)
    with capstan.start_run() as run:
        pass
    assert run.experiment_id == exp.experiment_id


def test_bad_input_fails_at_the_call(fluent: Settings) -> None:
    with capstan.start_run(experiment=unique("bad")) as run:
        with pytest.raises(InvalidParameterValue, match="not a number"):
            capstan.log_metric("loss", "high")  # type: ignore[arg-type]  # deliberately ill-typed input under test
        with pytest.raises(InvalidParameterValue, match="metric key"):
            capstan.log_metric("bad*key", 1.0)
        with pytest.raises(InvalidParameterValue, match="step"):
            capstan.log_metric("loss", 1.0, step=1.5)  # type: ignore[arg-type]  # deliberately ill-typed input under test
        capstan.log_param("p", "a")
        with pytest.raises(InvalidParameterValue, match="p"):
            capstan.log_param("p", "b")
        capstan.log_metric("ok", 1.0)
    stored = capstan.Client().get_run(run.run_id)
    assert stored.info.status == "FINISHED" and stored.data.params == {"p": "a"}
    assert [m.key for m in stored.data.metrics] == ["ok"]


def test_artifacts_files_folders_text_and_dict(fluent: Settings, tmp_path: Path) -> None:
    src = tmp_path / "report"
    (src / "sub").mkdir(parents=True)
    (src / "index.html").write_text("<h1>hi</h1>")
    (src / "sub" / "data.csv").write_text("a,b\n1,2\n")
    single = tmp_path / "notes.txt"
    single.write_text("notes")
    with capstan.start_run(experiment=unique("artifacts")) as run:
        capstan.log_artifact(single)
        capstan.log_artifact(single, artifact_path="docs")
        capstan.log_artifact(src, artifact_path="kept")  # a folder keeps its name
        capstan.log_artifacts(src, artifact_path="contents")  # a folder's contents
        capstan.log_text("hello", "texts/hello.txt")
        capstan.log_dict({"a": [1, 2]}, "config.json")
        with pytest.raises(InvalidParameterValue):
            capstan.log_artifact(tmp_path / "missing.txt")
    client = capstan.Client()
    paths = [a.path for a in client.list_artifacts(run.run_id, recursive=True)]
    assert paths == ["config.json", "contents/index.html", "contents/sub/data.csv", "docs/notes.txt",
                     "kept/report/index.html", "kept/report/sub/data.csv", "notes.txt", "texts/hello.txt"]
    assert client.read_artifact_text(run.run_id, "texts/hello.txt") == "hello"
    assert json.loads(client.read_artifact_text(run.run_id, "config.json")) == {"a": [1, 2]}
    local = client.download_artifacts(run.run_id, "kept", tmp_path / "dl")
    assert (local / "report" / "sub" / "data.csv").read_text() == "a,b\n1,2\n"


def test_client_queries(fluent: Settings) -> None:
    experiment = unique("client")
    for i in range(4):
        with capstan.start_run(experiment=experiment, run_name=f"r{i}", params={"depth": i}):
            capstan.log_metric("acc", i / 10)
    client = capstan.Client()
    best = client.search_runs(experiment_names=[experiment], filter_string="metrics.acc > 0.05",
                              order_by=["metrics.acc DESC"], max_results=2)
    assert [r.info.run_name for r in best] == ["r3", "r2"]
    assert experiment in {e.name for e in client.search_experiments()}
    with pytest.raises(ResourceDoesNotExist):
        client.search_runs(experiment_names=[unique("missing")])
    run_id = best[0].info.run_id
    client.set_tag(run_id, "reviewed", True)
    client.log_metric(run_id, "late", 5.0, step=2)
    client.rename_run(run_id, "renamed")
    stored = client.get_run(run_id)
    assert stored.data.tags["reviewed"] == "True" and stored.info.run_name == "renamed"
    created = client.create_run(client.create_experiment(unique("manual")), run_name="manual")
    client.set_terminated(created.info.run_id, "KILLED")
    assert client.get_run(created.info.run_id).info.status == "KILLED"


def test_configure_refuses_while_a_run_is_active(fluent: Settings) -> None:
    with capstan.start_run(experiment=unique("busy")), pytest.raises(InvalidState, match="active"):
        capstan.configure(fluent)


def test_client_with_explicit_settings_uses_its_own_store(fluent: Settings, tmp_path: Path) -> None:
    other = Settings.for_home(tmp_path / "other")
    with capstan.Client(settings=other) as client:
        experiment_id = client.create_experiment("only-here")
        assert client.get_experiment(experiment_id).name == "only-here"
    assert capstan.Client().get_experiment_by_name("only-here") is None

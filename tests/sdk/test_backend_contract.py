"""The `TrackingBackend` contract, run against both adapters: LocalBackend (SQLite) and HttpBackend (a real
``capstan server`` on a loopback port). Every test here must pass unchanged for both."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import pytest

from capstan.errors import (
    InvalidParameterValue,
    InvalidState,
    ResourceAlreadyExists,
    ResourceDoesNotExist,
)
from capstan.sdk.backends import ArtifactOwner, TrackingBackend
from capstan.tracking.records import Metric, Param, RunTag

NOW = 1_700_000_000_000


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def new_run(backend: TrackingBackend, **kwargs: object) -> tuple[str, str]:
    experiment_id = backend.create_experiment(unique("exp"))
    info = backend.create_run(experiment_id, **kwargs)  # type: ignore[arg-type]  # keyword arguments from a parametrized dict
    return experiment_id, info.run_id


# -- experiments ------------------------------------------------------------------------------------------
def test_experiment_lifecycle(backend: TrackingBackend) -> None:
    name = unique("exp")
    experiment_id = backend.create_experiment(name, tags={"team": "fraud"})
    exp = backend.get_experiment(experiment_id)
    assert (exp.name, exp.lifecycle_stage, exp.project, exp.tags["team"]) == (name, "active", "default", "fraud")
    assert exp.artifact_location == f"mlflow-artifacts:/{experiment_id}"
    by_name = backend.get_experiment_by_name(name)
    assert by_name is not None and by_name.experiment_id == experiment_id
    assert backend.get_experiment_by_name(unique("missing")) is None

    with pytest.raises(ResourceAlreadyExists):
        backend.create_experiment(name)

    backend.set_experiment_tag(experiment_id, "stage", "dev")
    backend.delete_experiment_tag(experiment_id, "team")
    assert dict(backend.get_experiment(experiment_id).tags) == {"stage": "dev"}

    renamed = unique("renamed")
    backend.rename_experiment(experiment_id, renamed)
    found = backend.search_experiments(filter_string=f"name = '{renamed}'").items
    assert [e.experiment_id for e in found] == [experiment_id]

    backend.delete_experiment(experiment_id)
    assert backend.get_experiment(experiment_id).lifecycle_stage == "deleted"
    assert experiment_id not in {e.experiment_id for e in backend.search_experiments(max_results=50_000).items}
    deleted = backend.search_experiments(view_type="DELETED_ONLY", max_results=50_000).items
    assert experiment_id in {e.experiment_id for e in deleted}
    backend.restore_experiment(experiment_id)
    assert backend.get_experiment(experiment_id).lifecycle_stage == "active"


def test_unknown_experiment_is_resource_does_not_exist(backend: TrackingBackend) -> None:
    with pytest.raises(ResourceDoesNotExist):
        backend.get_experiment("987654321")


def test_search_experiments_pages(backend: TrackingBackend) -> None:
    prefix = unique("paged")
    ids = {backend.create_experiment(f"{prefix}-{i}") for i in range(5)}
    seen: set[str] = set()
    token = None
    for _ in range(10):
        page = backend.search_experiments(filter_string=f"name LIKE '{prefix}-%'", max_results=2, page_token=token)
        assert len(page.items) <= 2
        seen.update(e.experiment_id for e in page.items)
        token = page.next_page_token
        if not token:
            break
    assert seen == ids


# -- runs -------------------------------------------------------------------------------------------------
def test_run_lifecycle_and_data(backend: TrackingBackend) -> None:
    experiment_id, run_id = new_run(backend, run_name="first", tags=[RunTag("owner", "ana")], start_time=NOW,
                                    user_id="ana", source="train.py", git_commit="abc123")
    backend.log_batch(run_id, params=[Param("lr", "0.1"), Param("depth", "4")], tags=[RunTag("note", "x")],
                      metrics=[Metric("loss", 0.5, NOW, 0), Metric("loss", 0.25, NOW + 1, 1)])
    run = backend.get_run(run_id)
    assert run.info.run_name == "first" and run.info.status == "RUNNING"
    assert run.info.experiment_id == experiment_id
    assert run.info.artifact_uri == f"mlflow-artifacts:/{experiment_id}/{run_id}/artifacts"
    assert (run.info.source, run.info.git_commit, run.info.user_id) == ("train.py", "abc123", "ana")
    assert dict(run.data.params) == {"lr": "0.1", "depth": "4"}
    assert run.data.tags["owner"] == "ana" and run.data.tags["note"] == "x"
    assert run.data.tags["mlflow.runName"] == "first"
    assert [(m.key, m.value, m.step) for m in run.data.metrics] == [("loss", 0.25, 1)]

    info = backend.update_run(run_id, status="FINISHED", end_time=NOW + 10)
    assert (info.status, info.end_time) == ("FINISHED", NOW + 10)
    backend.delete_tag(run_id, "note")
    assert "note" not in backend.get_run(run_id).data.tags

    backend.delete_run(run_id)
    assert backend.get_run(run_id).info.lifecycle_stage == "deleted"
    with pytest.raises(InvalidState):
        backend.log_batch(run_id, params=[Param("late", "1")])
    backend.restore_run(run_id)
    assert backend.get_run(run_id).info.lifecycle_stage == "active"


def test_param_relog_with_other_value_is_rejected(backend: TrackingBackend) -> None:
    _, run_id = new_run(backend)
    backend.log_batch(run_id, params=[Param("lr", "0.1")])
    backend.log_batch(run_id, params=[Param("lr", "0.1")])  # identical value: accepted
    with pytest.raises(InvalidParameterValue, match="lr"):
        backend.log_batch(run_id, params=[Param("lr", "0.2")])
    assert backend.get_run(run_id).data.params["lr"] == "0.1"


def test_bad_metric_key_names_the_field(backend: TrackingBackend) -> None:
    _, run_id = new_run(backend)
    with pytest.raises(InvalidParameterValue, match="bad\\*key"):
        backend.log_batch(run_id, metrics=[Metric("bad*key", 1.0, NOW, 0)])


def test_unknown_run(backend: TrackingBackend) -> None:
    with pytest.raises(ResourceDoesNotExist):
        backend.get_run(uuid.uuid4().hex)
    with pytest.raises(ResourceDoesNotExist):
        backend.log_metrics_for_runs({uuid.uuid4().hex: [Metric("x", 1.0, NOW, 0)]})


def test_metric_history_keeps_non_finite_values_and_pages(backend: TrackingBackend) -> None:
    _, run_id = new_run(backend)
    values = [0.5, math.nan, math.inf, -math.inf, 1.5]
    backend.log_batch(run_id, metrics=[Metric("train/loss", v, NOW + i, i) for i, v in enumerate(values)])
    history = backend.get_metric_history(run_id, "train/loss").items
    assert [m.step for m in history] == [0, 1, 2, 3, 4]
    got = [m.value for m in history]
    assert got[0] == 0.5 and math.isnan(got[1]) and got[2] == math.inf and got[3] == -math.inf
    first = backend.get_metric_history(run_id, "train/loss", max_results=2)
    assert len(first.items) == 2 and first.next_page_token
    rest = backend.get_metric_history(run_id, "train/loss", max_results=10, page_token=first.next_page_token)
    assert [m.step for m in rest.items] == [2, 3, 4]


def test_log_metrics_for_several_runs_at_once(backend: TrackingBackend) -> None:
    experiment_id, run_a = new_run(backend)
    run_b = backend.create_run(experiment_id).run_id
    backend.log_metrics_for_runs({run_a: [Metric("acc", 0.1 * i, NOW + i, i) for i in range(50)],
                                  run_b: [Metric("acc", 0.9, NOW, 0)]})
    assert len(backend.get_metric_history(run_a, "acc").items) == 50
    assert [m.value for m in backend.get_metric_history(run_b, "acc").items] == [0.9]


def test_search_runs_filter_and_order(backend: TrackingBackend) -> None:
    experiment_id = backend.create_experiment(unique("search"))
    for i in range(5):
        run_id = backend.create_run(experiment_id, run_name=f"r{i}").run_id
        backend.log_batch(run_id, metrics=[Metric("acc", i / 10, NOW, 0)],
                          params=[Param("model", "rf" if i % 2 else "lr")], tags=[RunTag("group", f"g{i % 2}")])
    page = backend.search_runs([experiment_id], filter_string="metrics.acc >= 0.2 AND params.model = 'lr'",
                               order_by=["metrics.acc DESC"])
    assert [r.info.run_name for r in page.items] == ["r4", "r2"]
    liked = backend.search_runs([experiment_id], filter_string="tags.group LIKE 'g1%'",
                                order_by=["attributes.run_name"])
    assert [r.info.run_name for r in liked.items] == ["r1", "r3"]
    first = backend.search_runs([experiment_id], max_results=2, order_by=["metrics.acc ASC"])
    assert [r.info.run_name for r in first.items] == ["r0", "r1"] and first.next_page_token
    with pytest.raises(InvalidParameterValue):
        backend.search_runs([experiment_id], filter_string="metrics.acc >>> 1")


# -- artifacts --------------------------------------------------------------------------------------------
def test_run_artifacts_upload_list_download(backend: TrackingBackend, tmp_path: Path) -> None:
    _, run_id = new_run(backend)
    owner = ArtifactOwner.run(run_id)
    src = tmp_path / "src"
    (src / "plots").mkdir(parents=True)
    (src / "plots" / "roc.txt").write_text("roc")
    big = src / "weights.bin"
    big.write_bytes(bytes(range(256)) * 12_000)  # ~3 MB: several upload chunks
    backend.upload_artifact(owner, "plots/roc.txt", src / "plots" / "roc.txt")
    backend.upload_artifact(owner, "weights.bin", big)

    top = backend.list_artifacts(owner)
    assert [(a.path, a.is_dir) for a in top] == [("plots", True), ("weights.bin", False)]
    assert top[1].size == big.stat().st_size
    assert [a.path for a in backend.list_artifacts(owner, "plots")] == ["plots/roc.txt"]
    assert [a.path for a in backend.list_artifacts(owner, recursive=True)] == ["plots/roc.txt", "weights.bin"]

    one = backend.download_artifacts(owner, "weights.bin", tmp_path / "one")
    assert one == tmp_path / "one" / "weights.bin" and one.read_bytes() == big.read_bytes()
    everything = backend.download_artifacts(owner, "", tmp_path / "all")
    assert (everything / "plots" / "roc.txt").read_text() == "roc"
    folder = backend.download_artifacts(owner, "plots", tmp_path / "folder")
    assert (folder / "roc.txt").read_text() == "roc"
    with pytest.raises(ResourceDoesNotExist):
        backend.download_artifacts(owner, "missing.txt", tmp_path / "missing")


def test_artifact_paths_are_normalised_and_checked(backend: TrackingBackend, tmp_path: Path) -> None:
    _, run_id = new_run(backend)
    file = tmp_path / "f.txt"
    file.write_text("x")
    owner = ArtifactOwner.run(run_id)
    for bad in ("../escape.txt", "a/../../b.txt", "/abs.txt"):
        with pytest.raises(InvalidParameterValue):
            backend.upload_artifact(owner, bad, file)
    backend.upload_artifact(owner, "./a//b.txt", file)
    assert [a.path for a in backend.list_artifacts(owner, recursive=True)] == ["a/b.txt"]
    backend.delete_run(run_id)
    with pytest.raises(InvalidState):
        backend.upload_artifact(owner, "late.txt", file)


# -- logged models and registry ---------------------------------------------------------------------------
def test_logged_model_and_registry_flow(backend: TrackingBackend, tmp_path: Path) -> None:
    experiment_id, run_id = new_run(backend)
    model = backend.create_logged_model(experiment_id, name="model", source_run_id=run_id, model_type="sklearn",
                                        params={"alpha": "0.1"}, tags={"k": "v"})
    assert model.status == "PENDING" and model.source_run_id == run_id
    assert model.artifact_location == f"mlflow-artifacts:/{experiment_id}/models/{model.model_id}/artifacts"
    mlmodel = tmp_path / "MLmodel"
    mlmodel.write_text("flavors: {}\n")
    backend.upload_artifact(ArtifactOwner.logged_model(model.model_id), "MLmodel", mlmodel)
    assert backend.finalize_logged_model(model.model_id, "READY").status == "READY"
    assert backend.get_logged_model(model.model_id).params == {"alpha": "0.1"}
    found = backend.search_logged_models([experiment_id]).items
    assert [m.model_id for m in found] == [model.model_id]
    backend.log_outputs(run_id, [(model.model_id, 3)])
    assert [(o.model_id, o.step) for o in backend.get_run(run_id).outputs] == [(model.model_id, 3)]

    name = unique("model")
    created = backend.create_registered_model(name, description="first", tags={"team": "risk"})
    assert (created.name, created.description, created.project) == (name, "first", "default")
    with pytest.raises(ResourceAlreadyExists):
        backend.create_registered_model(name)
    version = backend.create_model_version(name, source=f"models:/{model.model_id}", run_id=run_id,
                                           model_id=model.model_id, tags={"stage": "candidate"})
    assert (version.version, version.run_id, version.model_id) == (1, run_id, model.model_id)
    assert version.storage_location == model.artifact_location
    backend.set_alias(name, "champion", 1)
    assert backend.get_version_by_alias(name, "champion").version == 1
    assert backend.get_registered_model(name).aliases == {"champion": 1}
    files = backend.list_artifacts(ArtifactOwner.model_version(name, 1))
    assert [f.path for f in files] == ["MLmodel"]
    got = backend.download_artifacts(ArtifactOwner.model_version(name, 1), "", tmp_path / "dl")
    assert (got / "MLmodel").read_text() == "flavors: {}\n"

    backend.set_model_version_tag(name, 1, "reviewed", "yes")
    backend.delete_model_version_tag(name, 1, "stage")
    assert dict(backend.get_model_version(name, 1).tags) == {"reviewed": "yes"}
    assert backend.update_model_version(name, 1, description="v1").description == "v1"
    backend.set_registered_model_tag(name, "owner", "ana")
    backend.delete_registered_model_tag(name, "team")
    assert dict(backend.get_registered_model(name).tags) == {"owner": "ana"}
    assert backend.update_registered_model(name, description="second").description == "second"
    versions = backend.search_model_versions(filter_string=f"name = '{name}'").items
    assert [v.version for v in versions] == [1]
    models = backend.search_registered_models(filter_string=f"name = '{name}'").items
    assert [m.name for m in models] == [name]

    backend.delete_alias(name, "champion")
    with pytest.raises(ResourceDoesNotExist):
        backend.get_version_by_alias(name, "champion")
    new_name = unique("renamed")
    assert backend.rename_registered_model(name, new_name).name == new_name
    backend.delete_model_version(new_name, 1)
    with pytest.raises(ResourceDoesNotExist):
        backend.get_model_version(new_name, 1)
    backend.delete_registered_model(new_name)
    with pytest.raises(ResourceDoesNotExist):
        backend.get_registered_model(new_name)


def test_registry_errors(backend: TrackingBackend) -> None:
    with pytest.raises(ResourceDoesNotExist):
        backend.get_registered_model(unique("nobody"))
    with pytest.raises(InvalidParameterValue):
        backend.create_registered_model("bad/name")
    name = unique("model")
    backend.create_registered_model(name)
    with pytest.raises(ResourceDoesNotExist):
        backend.get_model_version(name, 7)
    with pytest.raises(ResourceDoesNotExist):
        backend.set_alias(name, "champion", 7)


# -- lifecycle the CLI exposes (rename, delete, restore; deleted experiments' runs) ------------------------
def test_rename_run_sets_name_and_tag(backend: TrackingBackend) -> None:
    _, run_id = new_run(backend, run_name="before")
    info = backend.update_run(run_id, run_name="after")
    run = backend.get_run(run_id)
    assert info.run_name == run.info.run_name == run.data.tags["mlflow.runName"] == "after"


def test_deleted_experiment_takes_its_runs_and_errors_name_the_restore_command(backend: TrackingBackend) -> None:
    from capstan.sdk.client import Client

    experiment_id, run_id = new_run(backend)
    backend.delete_experiment(experiment_id)
    assert backend.get_run(run_id).info.lifecycle_stage == "deleted"
    with pytest.raises(InvalidState, match=f"`capstan experiments restore {experiment_id}`"):
        backend.create_run(experiment_id)
    with pytest.raises(InvalidState, match=f"`capstan experiments restore {experiment_id}`"):
        backend.restore_run(run_id)
    with pytest.raises(InvalidState, match=f"`capstan runs restore {run_id}`"):
        backend.log_batch(run_id, params=[Param("late", "1")])
    with pytest.raises(ResourceAlreadyExists, match=f"`capstan experiments restore {experiment_id}`"):
        backend.create_experiment(backend.get_experiment(experiment_id).name)

    client = Client(backend=backend)  # no experiment named: every experiment the view covers
    assert run_id in {r.info.run_id for r in client.search_runs(view_type="DELETED_ONLY", max_results=100_000)}
    assert run_id in {r.info.run_id for r in client.search_runs(view_type="ALL", max_results=100_000)}
    assert run_id not in {r.info.run_id for r in client.search_runs(max_results=100_000)}

    backend.restore_experiment(experiment_id)
    assert backend.get_run(run_id).info.lifecycle_stage == "active"
    assert run_id in {r.info.run_id for r in client.search_runs(max_results=100_000)}

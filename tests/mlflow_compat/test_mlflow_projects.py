"""Projects and RBAC through the MLflow API: the unmodified client with ``MLFLOW_TRACKING_TOKEN`` (or basic auth)
and ``MLFLOW_WORKSPACE`` (which selects the Capstan project) against a server that requires credentials."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from capstan.services import Services
from capstan.settings import Settings
from helpers.server import ServerProcess, start_server


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    """A server with users: admin; alice (editor of team-a); bob (viewer of team-a); carol (editor of team-b)."""
    with start_server(tmp_path_factory.mktemp("secured-home")) as server:
        # Straight into the server's metadata store (what `capstan users/tokens` do), without a CLI process each.
        services = Services.open(Settings.for_home(server.home))
        tokens = {}
        try:
            for name, project, role in (("admin", None, None), ("alice", "team-a", "editor"),
                                        ("bob", "team-a", "viewer"), ("carol", "team-b", "editor")):
                services.auth.create_user(name, admin=project is None)
                if project is not None and role is not None:
                    services.auth.grant(name, project, role)
                tokens[name] = services.auth.create_token(name, name="compat-test").secret
        finally:
            services.close()
        yield server, tokens


@contextmanager
def acting(mlflow: Any, url: str, *, token: str | None = None, workspace: str | None = None,
           basic: tuple[str, str] | None = None) -> Iterator[Any]:
    """An MlflowClient for ``url`` that sends ``token`` (or basic auth) and the workspace header."""
    names = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_WORKSPACE", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    saved = {name: os.environ.pop(name, None) for name in names}
    if token:
        os.environ["MLFLOW_TRACKING_TOKEN"] = token
    if workspace:
        os.environ["MLFLOW_WORKSPACE"] = workspace
    if basic:
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = basic
    try:
        yield mlflow.MlflowClient(tracking_uri=url, registry_uri=url)
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def _code(mlflow: Any, call: Any) -> str:
    with pytest.raises(mlflow.exceptions.MlflowException) as exc:
        call()
    return str(exc.value.error_code)


def test_projects_and_roles(mlflow_env: Any, secured: tuple[ServerProcess, dict[str, str]], unique: str,
                            tmp_path: Path) -> None:
    mlflow = mlflow_env
    server, tokens = secured
    url = server.url
    note = tmp_path / "note.txt"
    note.write_text("team-a only")

    with acting(mlflow, url) as anonymous:
        assert _code(mlflow, lambda: anonymous.search_experiments()) == "UNAUTHENTICATED"
    with acting(mlflow, url, token="not-a-token") as forged:
        assert _code(mlflow, lambda: forged.search_experiments()) == "UNAUTHENTICATED"

    with acting(mlflow, url, token=tokens["alice"], workspace="team-a") as alice:
        exp_id = alice.create_experiment(f"a-exp-{unique}")
        assert alice.get_experiment(exp_id).workspace == "team-a"
        run_id = alice.create_run(exp_id).info.run_id
        alice.log_metric(run_id, "acc", 0.5)
        alice.log_param(run_id, "lr", "0.1")
        alice.log_artifact(run_id, str(note))
        alice.create_registered_model(f"a-model-{unique}")
        assert [e.experiment_id for e in alice.search_experiments(filter_string=f"name = 'a-exp-{unique}'")] == [
            exp_id]
        # an editor of team-a cannot create in team-b
        with acting(mlflow, url, token=tokens["alice"], workspace="team-b") as alice_b:
            assert _code(mlflow, lambda: alice_b.create_experiment(f"a-in-b-{unique}")) == "PERMISSION_DENIED"

    with acting(mlflow, url, basic=("alice", tokens["alice"]), workspace="team-a") as alice_basic:
        assert alice_basic.get_run(run_id).data.metrics == {"acc": 0.5}

    with acting(mlflow, url, token=tokens["bob"], workspace="team-a") as bob:
        assert bob.get_run(run_id).data.params == {"lr": "0.1"}
        assert [m.value for m in bob.get_metric_history(run_id, "acc")] == [0.5]
        assert [f.path for f in bob.list_artifacts(run_id)] == ["note.txt"]
        local = bob.download_artifacts(run_id, "note.txt", str(tmp_path / "bob"))
        assert Path(local).read_text() == "team-a only"
        assert bob.get_registered_model(f"a-model-{unique}").name == f"a-model-{unique}"
        # a viewer writes nothing
        assert _code(mlflow, lambda: bob.log_metric(run_id, "acc", 0.9)) == "PERMISSION_DENIED"
        assert _code(mlflow, lambda: bob.set_tag(run_id, "k", "v")) == "PERMISSION_DENIED"
        assert _code(mlflow, lambda: bob.create_experiment(f"b-exp-{unique}")) == "PERMISSION_DENIED"
        assert _code(mlflow, lambda: bob.delete_run(run_id)) == "PERMISSION_DENIED"
        assert _code(mlflow, lambda: bob.set_registered_model_tag(f"a-model-{unique}", "k", "v")) == \
            "PERMISSION_DENIED"
        with pytest.raises(requests.HTTPError) as upload:  # artifact uploads surface as HTTP errors in mlflow
            bob.log_artifact(run_id, str(note), "bob")
        assert upload.value.response is not None and upload.value.response.status_code == 403

    with acting(mlflow, url, token=tokens["carol"], workspace="team-b") as carol:
        # another project's objects are neither readable nor writable
        assert _code(mlflow, lambda: carol.get_run(run_id)) == "PERMISSION_DENIED"
        assert _code(mlflow, lambda: carol.get_experiment(exp_id)) == "PERMISSION_DENIED"
        assert _code(mlflow, lambda: carol.search_runs([exp_id])) == "PERMISSION_DENIED"
        assert _code(mlflow, lambda: carol.log_metric(run_id, "acc", 0.1)) == "PERMISSION_DENIED"
        assert _code(mlflow, lambda: carol.get_registered_model(f"a-model-{unique}")) == "PERMISSION_DENIED"
        assert _code(mlflow, lambda: carol.create_model_version(f"a-model-{unique}", "s3://x/y")) == \
            "PERMISSION_DENIED"
        # ... and invisible to her searches
        assert carol.search_experiments(filter_string=f"name = 'a-exp-{unique}'") == []
        assert carol.search_registered_models(filter_string=f"name = 'a-model-{unique}'") == []
        own = carol.create_experiment(f"c-exp-{unique}")
        assert carol.get_experiment(own).workspace == "team-b"
    headers = {"Authorization": f"Bearer {tokens['carol']}"}
    artifact = f"{url}/api/2.0/mlflow-artifacts/artifacts/{exp_id}/{run_id}/artifacts/note.txt"
    assert httpx.get(artifact, headers=headers).status_code == 403
    assert httpx.put(artifact, content=b"overwritten", headers=headers).status_code == 403
    assert httpx.delete(artifact, headers=headers).status_code == 403
    assert httpx.get(artifact).status_code == 401

    # nothing the rejected calls tried was stored
    with acting(mlflow, url, token=tokens["admin"]) as admin:
        run = admin.get_run(run_id)
        assert run.data.metrics == {"acc": 0.5} and "k" not in run.data.tags
        assert [m.value for m in admin.get_metric_history(run_id, "acc")] == [0.5]
        assert run.info.lifecycle_stage == "active"
        assert admin.get_registered_model(f"a-model-{unique}").tags == {}
        assert [f.path for f in admin.list_artifacts(run_id)] == ["note.txt"]
        assert admin.search_experiments(filter_string=f"name = 'a-in-b-{unique}'") == []
    assert httpx.get(artifact, headers={"Authorization": f"Bearer {tokens['admin']}"}).content == b"team-a only"

    # mutating MLflow calls are audited under their project (the server writes the audit log in the background)
    services = Services.open(Settings.for_home(server.home))
    try:
        deadline = time.monotonic() + 10
        while True:
            entries = services.auth.list_audit(project="team-a")
            alice_logged = any(e.user == "alice" and "log-metric" in e.action for e in entries)
            bob_denied = any(e.user == "bob" and e.status == 403 for e in entries)
            if (alice_logged and bob_denied) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        services.close()
    assert alice_logged and bob_denied, entries

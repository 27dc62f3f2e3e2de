"""The auth policy of every route, and how to build a request that reaches its permission check.

`POLICY` maps ``"METHOD /path/template"`` (MLflow endpoints under their ``/api/...`` prefix; the ``/ajax-api/...``
twins share the entry) to a `Rule`: the permission the route requires and a builder that makes a request aimed at
objects of project ``alpha``. ``tests/server/test_auth_matrix.py`` runs every route of the live route table against
it, and ``python tests/server/auth_matrix_routes.py`` writes ``docs/auth-matrix.md`` from it.

Permissions:

- ``public``: no credential needed.
- ``authenticated``: any valid token; the route acts on the caller's own things or on nothing.
- ``read`` / ``write`` / ``admin``: that permission in the project of the object (or, for create, list and search,
  the ``X-Capstan-Project`` project). Project viewers hold read, editors read and write, project admins all three.
- ``server-admin``: server admins only.
- ``self-or-server-admin``: the caller's own user or token, otherwise server admins (the matrix aims at another
  user's, so it expects server-admin behaviour).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

NOW = 1_700_000_000_000
PROJECT = "alpha"
PERMISSIONS = ("public", "authenticated", "read", "write", "admin", "server-admin", "self-or-server-admin")
DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "auth-matrix.md"


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class Req:
    """A request below the route's prefix (MLflow) or at its full path (everything else)."""

    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


class World(Protocol):
    """Objects of project ``alpha`` made by a server admin: ``fresh=True`` makes a new one (for calls that consume
    or change it), otherwise one shared object is reused."""

    pipeline_ref: str

    def experiment(self, fresh: bool = False, *, deleted: bool = False, tag: bool = False) -> str: ...
    def experiment_name(self) -> str: ...
    def artifact(self, fresh: bool = False) -> str: ...
    def run(self, fresh: bool = False, *, deleted: bool = False, tag: bool = False) -> str: ...
    def logged_model(self, fresh: bool = False, *, tag: bool = False) -> str: ...
    def model(self, fresh: bool = False, *, tag: bool = False) -> str: ...
    def version(self, fresh: bool = False, *, tag: bool = False, alias: bool = False) -> tuple[str, int]: ...
    def user(self, fresh: bool = False, *, member: bool = False) -> str: ...
    def token_id(self) -> int: ...
    def pipeline_run(self) -> tuple[str, str]: ...
    def schedule(self, fresh: bool = False) -> str: ...
    def workload(self, fresh: bool = False) -> str: ...
    def queue_config(self) -> bytes: ...


Builder = Callable[[World], Req]


@dataclass(frozen=True)
class Rule:
    """What a route requires; ``ok`` lists the statuses an allowed caller may get besides 2xx (with a reason)."""

    permission: str
    build: Builder
    ok: tuple[int, ...] = ()
    note: str = ""


def _metric() -> dict[str, Any]:
    return {"key": "m", "value": 1.0, "timestamp": NOW, "step": 0}


def _art(w: World, name: str = "a.txt") -> str:
    return f"{w.experiment()}/{w.run()}/artifacts/{name}"


BINARY = {"Content-Type": "application/octet-stream"}
MLFLOW = "/api/2.0/mlflow"
ARTIFACTS = "/api/2.0/mlflow-artifacts"
V1 = "/api/v1"


def _v(w: World, fresh: bool = False, **kw: bool) -> dict[str, Any]:
    name, version = w.version(fresh, **kw)
    return {"name": name, "version": str(version)}


def _mv_path(w: World, fresh: bool = False, **kw: bool) -> str:
    name, version = w.version(fresh, **kw)
    return f"{V1}/registered-models/{name}/versions/{version}"


_MLFLOW: dict[str, Rule] = {
    # experiments
    "POST /experiments/create": Rule("write", lambda w: Req("/experiments/create", {"name": uniq("e")})),
    "GET /experiments/get": Rule("read", lambda w: Req("/experiments/get", params={"experiment_id": w.experiment()})),
    "GET /experiments/get-by-name": Rule("read", lambda w: Req(
        "/experiments/get-by-name", params={"experiment_name": w.experiment_name()})),
    "POST /experiments/search": Rule("read", lambda w: Req("/experiments/search", {"max_results": 5})),
    "GET /experiments/search": Rule("read", lambda w: Req("/experiments/search", params={"max_results": 5})),
    "POST /experiments/update": Rule("write", lambda w: Req(
        "/experiments/update", {"experiment_id": w.experiment(True), "new_name": uniq("e")})),
    "POST /experiments/delete": Rule("write", lambda w: Req(
        "/experiments/delete", {"experiment_id": w.experiment(True)})),
    "POST /experiments/restore": Rule("write", lambda w: Req(
        "/experiments/restore", {"experiment_id": w.experiment(True, deleted=True)})),
    "POST /experiments/set-experiment-tag": Rule("write", lambda w: Req(
        "/experiments/set-experiment-tag", {"experiment_id": w.experiment(), "key": "k", "value": "v"})),
    "POST /experiments/delete-experiment-tag": Rule("write", lambda w: Req(
        "/experiments/delete-experiment-tag", {"experiment_id": w.experiment(True, tag=True), "key": "k"})),
    # runs
    "POST /runs/create": Rule("write", lambda w: Req(
        "/runs/create", {"experiment_id": w.experiment(), "start_time": NOW})),
    "GET /runs/get": Rule("read", lambda w: Req("/runs/get", params={"run_id": w.run()})),
    "POST /runs/update": Rule("write", lambda w: Req("/runs/update", {"run_id": w.run(), "status": "RUNNING"})),
    "POST /runs/delete": Rule("write", lambda w: Req("/runs/delete", {"run_id": w.run(True)})),
    "POST /runs/restore": Rule("write", lambda w: Req("/runs/restore", {"run_id": w.run(True, deleted=True)})),
    "POST /runs/log-metric": Rule("write", lambda w: Req("/runs/log-metric", {"run_id": w.run(), **_metric()})),
    "POST /runs/log-parameter": Rule("write", lambda w: Req(
        "/runs/log-parameter", {"run_id": w.run(), "key": uniq("p"), "value": "1"})),
    "POST /runs/set-tag": Rule("write", lambda w: Req("/runs/set-tag", {"run_id": w.run(), "key": "t", "value": "v"})),
    "POST /runs/delete-tag": Rule("write", lambda w: Req("/runs/delete-tag", {"run_id": w.run(True, tag=True),
                                                                              "key": "t"})),
    "POST /runs/log-batch": Rule("write", lambda w: Req("/runs/log-batch", {"run_id": w.run(),
                                                                            "metrics": [_metric()]})),
    "POST /runs/log-inputs": Rule("write", lambda w: Req("/runs/log-inputs", {"run_id": w.run(), "datasets": [
        {"dataset": {"name": "d", "digest": "abc", "source_type": "local", "source": "{}"}}]})),
    "POST /runs/outputs": Rule("write", lambda w: Req(
        "/runs/outputs", {"run_id": w.run(), "models": [{"model_id": w.logged_model(), "step": 0}]})),
    "POST /runs/search": Rule("read", lambda w: Req("/runs/search", {"experiment_ids": [w.experiment()]})),
    "GET /metrics/get-history": Rule("read", lambda w: Req(
        "/metrics/get-history", params={"run_id": w.run(), "metric_key": "m"})),
    "GET /artifacts/list": Rule("read", lambda w: Req("/artifacts/list", params={"run_id": w.run()})),
    # registered models
    "POST /registered-models/create": Rule("write", lambda w: Req("/registered-models/create", {"name": uniq("m")})),
    "GET /registered-models/get": Rule("read", lambda w: Req("/registered-models/get", params={"name": w.model()})),
    "POST /registered-models/rename": Rule("write", lambda w: Req(
        "/registered-models/rename", {"name": w.model(True), "new_name": uniq("m")})),
    "PATCH /registered-models/update": Rule("write", lambda w: Req(
        "/registered-models/update", {"name": w.model(), "description": "d"})),
    "DELETE /registered-models/delete": Rule("write", lambda w: Req(
        "/registered-models/delete", {"name": w.model(True)})),
    "GET /registered-models/search": Rule("read", lambda w: Req("/registered-models/search")),
    "POST /registered-models/get-latest-versions": Rule("read", lambda w: Req(
        "/registered-models/get-latest-versions", {"name": w.version()[0]})),
    "GET /registered-models/get-latest-versions": Rule("read", lambda w: Req(
        "/registered-models/get-latest-versions", params={"name": w.version()[0]})),
    "POST /registered-models/set-tag": Rule("write", lambda w: Req(
        "/registered-models/set-tag", {"name": w.model(), "key": "k", "value": "v"})),
    "DELETE /registered-models/delete-tag": Rule("write", lambda w: Req(
        "/registered-models/delete-tag", {"name": w.model(True, tag=True), "key": "k"})),
    "POST /registered-models/alias": Rule("write", lambda w: Req(
        "/registered-models/alias", {**_v(w), "alias": "staged"})),
    "DELETE /registered-models/alias": Rule("write", lambda w: Req(
        "/registered-models/alias", {"name": w.version(True, alias=True)[0], "alias": "champion"})),
    "GET /registered-models/alias": Rule("read", lambda w: Req(
        "/registered-models/alias", params={"name": w.version(alias=True)[0], "alias": "champion"})),
    # model versions
    "POST /model-versions/create": Rule("write", lambda w: Req(
        "/model-versions/create", {"name": w.model(), "source": f"runs:/{w.run()}/model", "run_id": w.run()}),
        note="plus read on every project the source and its lineage belong to"),
    "GET /model-versions/get": Rule("read", lambda w: Req("/model-versions/get", params=_v(w))),
    "PATCH /model-versions/update": Rule("write", lambda w: Req("/model-versions/update",
                                                                {**_v(w), "description": "d"})),
    "DELETE /model-versions/delete": Rule("write", lambda w: Req("/model-versions/delete", _v(w, True))),
    "GET /model-versions/search": Rule("read", lambda w: Req(
        "/model-versions/search", params={"filter": f"name='{w.version()[0]}'"})),
    "GET /model-versions/get-download-uri": Rule("read", lambda w: Req("/model-versions/get-download-uri",
                                                                       params=_v(w))),
    "POST /model-versions/transition-stage": Rule("write", lambda w: Req(
        "/model-versions/transition-stage", {**_v(w), "stage": "Staging", "archive_existing_versions": False})),
    "POST /model-versions/set-tag": Rule("write", lambda w: Req("/model-versions/set-tag",
                                                                {**_v(w), "key": "k", "value": "v"})),
    "DELETE /model-versions/delete-tag": Rule("write", lambda w: Req("/model-versions/delete-tag",
                                                                     {**_v(w, True, tag=True), "key": "k"})),
    # logged models
    "POST /logged-models": Rule("write", lambda w: Req("/logged-models", {"experiment_id": w.experiment()})),
    "POST /logged-models/search": Rule("read", lambda w: Req(
        "/logged-models/search", {"experiment_ids": [w.experiment()]})),
    "GET /logged-models/{model_id}": Rule("read", lambda w: Req(f"/logged-models/{w.logged_model()}")),
    "PATCH /logged-models/{model_id}": Rule("write", lambda w: Req(
        f"/logged-models/{w.logged_model(True)}", {"status": "LOGGED_MODEL_READY"})),
    "DELETE /logged-models/{model_id}": Rule("write", lambda w: Req(f"/logged-models/{w.logged_model(True)}")),
    "PATCH /logged-models/{model_id}/tags": Rule("write", lambda w: Req(
        f"/logged-models/{w.logged_model()}/tags", {"tags": [{"key": "k", "value": "v"}]})),
    "POST /logged-models/{model_id}/params": Rule("write", lambda w: Req(
        f"/logged-models/{w.logged_model()}/params", {"params": [{"key": uniq("p"), "value": "1"}]})),
    "DELETE /logged-models/{model_id}/tags/{tag_key:path}": Rule("write", lambda w: Req(
        f"/logged-models/{w.logged_model(True, tag=True)}/tags/k")),
    "GET /logged-models/{model_id}/artifacts/directories": Rule("read", lambda w: Req(
        f"/logged-models/{w.logged_model()}/artifacts/directories")),
}

_V3: dict[str, Rule] = {
    "GET /server-info": Rule("read", lambda w: Req("/server-info")),
}

_ARTIFACTS: dict[str, Rule] = {
    "GET /artifacts": Rule("read", lambda w: Req("/artifacts", params={"path": _art(w, "")[:-1]})),
    "GET /artifacts/{artifact_path:path}": Rule("read", lambda w: Req(f"/artifacts/{_art(w)}")),
    "PUT /artifacts/{artifact_path:path}": Rule("write", lambda w: Req(
        f"/artifacts/{_art(w, uniq('up') + '.txt')}", content=b"x", headers={"Content-Type": "text/plain"})),
    "DELETE /artifacts/{artifact_path:path}": Rule("write", lambda w: Req(f"/artifacts/{w.artifact(True)}")),
    "POST /mpu/create/{artifact_path:path}": Rule("authenticated", lambda w: Req(
        f"/mpu/create/{_art(w, 'big.bin')}", {"path": _art(w, "big.bin"), "num_parts": 1}), ok=(501,),
        note="declined with 501 NOT_IMPLEMENTED before anything is read or written"),
}

UI_PAGES: dict[str, Rule] = {
    "GET /ui": Rule("authenticated", lambda w: Req("/ui"), ok=(303,), note="redirects to /ui/experiments"),
    "GET /ui/": Rule("authenticated", lambda w: Req("/ui/"), ok=(303,), note="redirects to /ui/experiments"),
    "GET /ui/login": Rule("public", lambda w: Req("/ui/login"), note="the login form"),
    "POST /ui/login": Rule("public", lambda w: Req("/ui/login", content=b"token=",
                                                   headers={"Content-Type": "application/x-www-form-urlencoded"}),
                           ok=(400,), note="starts a session from a token (an empty one answers 400)"),
    "POST /ui/logout": Rule("authenticated", lambda w: Req("/ui/logout"), ok=(303,),
                            note="ends the session (cookie callers need the CSRF token)"),
    "GET /ui/static/{path:path}": Rule("public", lambda w: Req("/ui/static/ui.css"), note="the UI's css and scripts"),
    "GET /ui/assets/plotly.min.js": Rule("public", lambda w: Req("/ui/assets/plotly.min.js"),
                                         note="plotly.js from the installed plotly package"),
    "GET /ui/{path:path}": Rule("authenticated", lambda w: Req("/ui/no-such-page"), ok=(404,),
                                note="any other /ui path: the 404 page"),
    "GET /ui/experiments": Rule("read", lambda w: Req("/ui/experiments", params={"project": PROJECT})),
    "GET /ui/experiments/{experiment_id}": Rule("read", lambda w: Req(f"/ui/experiments/{w.experiment()}")),
    "GET /ui/runs/{run_id}": Rule("read", lambda w: Req(f"/ui/runs/{w.run()}")),
    "GET /ui/compare": Rule("read", lambda w: Req("/ui/compare", params={"run_id": [w.run(), w.run(True)]})),
    "GET /api/v1/views/experiments/{experiment_id}/runs": Rule("read", lambda w: Req(
        f"{V1}/views/experiments/{w.experiment()}/runs", params={"column": "metrics.m"})),
    "GET /api/v1/views/runs/{run_id}": Rule("read", lambda w: Req(f"{V1}/views/runs/{w.run()}")),
    "GET /api/v1/views/compare": Rule("read", lambda w: Req(f"{V1}/views/compare",
                                                            params={"run_id": [w.run(), w.run(True)]})),
    "GET /ui/queues": Rule("read", lambda w: Req("/ui/queues", params={"project": PROJECT})),
    "GET /ui/queues/{name}": Rule("read", lambda w: Req("/ui/queues/cq", params={"project": PROJECT})),
    "GET /ui/usage": Rule("read", lambda w: Req("/ui/usage", params={"project": PROJECT})),
    "GET /api/v1/views/queues": Rule("read", lambda w: Req(f"{V1}/views/queues")),
    "GET /api/v1/views/queues/{name}": Rule("read", lambda w: Req(f"{V1}/views/queues/cq")),
    "GET /ui/models": Rule("read", lambda w: Req("/ui/models", params={"project": PROJECT})),
    "GET /ui/models/{name}": Rule("read", lambda w: Req(f"/ui/models/{w.model()}")),
    "GET /ui/models/{name}/versions/{version}": Rule("read", lambda w: Req(
        "/ui/models/{}/versions/{}".format(*w.version()))),
    "GET /api/v1/views/models/{name}": Rule("read", lambda w: Req(f"{V1}/views/models/{w.model()}")),
    "GET /api/v1/views/models/{name}/versions/{version}": Rule("read", lambda w: Req(
        "{}/views/models/{}/versions/{}".format(V1, *w.version()))),
    "GET /ui/pipelines": Rule("read", lambda w: Req("/ui/pipelines", params={"project": PROJECT})),
    "GET /ui/pipelines/runs/{run_id}": Rule("read", lambda w: Req(f"/ui/pipelines/runs/{w.pipeline_run()[0]}")),
    "GET /ui/pipelines/runs/{run_id}/steps/{step_id}": Rule("read", lambda w: Req(
        "/ui/pipelines/runs/{}/steps/{}".format(*w.pipeline_run()))),
    "GET /api/v1/views/pipelines/runs": Rule("read", lambda w: Req(f"{V1}/views/pipelines/runs")),
    "GET /api/v1/views/pipelines/runs/{run_id}": Rule("read", lambda w: Req(
        f"{V1}/views/pipelines/runs/{w.pipeline_run()[0]}")),
    "GET /api/v1/views/pipelines/runs/{run_id}/events": Rule("read", lambda w: Req(
        f"{V1}/views/pipelines/runs/{w.pipeline_run()[0]}/events"), note="server-sent events (a finished run: one "
        "state event, then end)"),
    "GET /api/v1/views/pipelines/runs/{run_id}/steps/{step_id}": Rule("read", lambda w: Req(
        "{}/views/pipelines/runs/{}/steps/{}".format(V1, *w.pipeline_run()))),
    "GET /api/v1/views/pipelines/runs/{run_id}/steps/{step_id}/log": Rule("read", lambda w: Req(
        "{}/views/pipelines/runs/{}/steps/{}/log".format(V1, *w.pipeline_run())), note="server-sent events of the "
        "attempt's log"),
    "GET /ui/deployments": Rule("read", lambda w: Req("/ui/deployments", params={"project": PROJECT})),
    "GET /ui/deployments/{name}": Rule("read", lambda w: Req("/ui/deployments/no-such-deployment", params={
        "project": PROJECT}), ok=(404,), note="checked in the project before the look-up; a missing one is a 404 page"),
    "GET /ui/deployments/{name}/live": Rule("read", lambda w: Req("/ui/deployments/no-such-deployment/live", params={
        "project": PROJECT}), ok=(404,), note="the page's live part (HTML); a missing deployment answers 404"),
    "GET /api/v1/views/deployments": Rule("read", lambda w: Req(f"{V1}/views/deployments",
                                                                params={"project": PROJECT})),
    "GET /api/v1/views/deployments/{name}": Rule("read", lambda w: Req(
        f"{V1}/views/deployments/no-such-deployment", params={"project": PROJECT}), ok=(404,),
        note="a missing deployment answers 404"),
    "GET /ui/jobs": Rule("read", lambda w: Req("/ui/jobs", params={"project": PROJECT})),
    "GET /ui/jobs/{job_id}": Rule("read", lambda w: Req("/ui/jobs/no-such-job-000000", params={"project": PROJECT}),
                                  ok=(404,), note="a missing job answers 404 (the project is checked first)"),
    "GET /ui/studies": Rule("read", lambda w: Req("/ui/studies", params={"project": PROJECT})),
    "GET /ui/studies/{name}": Rule("read", lambda w: Req("/ui/studies/no-such-study", params={"project": PROJECT}),
                                   ok=(404,), note="a missing study answers 404 (the project is checked first)"),
    "GET /api/v1/views/studies/{name}": Rule("read", lambda w: Req(f"{V1}/views/studies/no-such-study"), ok=(404,),
                                             note="a missing study answers 404 (the project is checked first)"),
    "GET /ui/timeline/{kind}/{ident:path}": Rule("read", lambda w: Req(f"/ui/timeline/workload/{w.workload()}",
                                                                       params={"project": PROJECT}),
                                                 note="any workload's timeline (the twin: /api/v1/timeline)"),
}
"""The web UI's routes (`capstan.ui`); `test_auth_matrix` expects the page behaviour for paths under ``/ui``."""


_NATIVE: dict[str, Rule] = {
    "GET /health": Rule("public", lambda w: Req("/health")),
    "GET /": Rule("public", lambda w: Req("/"), note="opens the web UI (JSON naming the server for API clients)"),
    "GET /api/v1/docs/assets/{path:path}": Rule("authenticated", lambda w: Req("/api/v1/docs/assets/swagger-ui.css")),
    "GET /metrics": Rule("authenticated", lambda w: Req("/metrics")),
    "GET /api/v1/openapi.json": Rule("authenticated", lambda w: Req("/api/v1/openapi.json")),
    "GET /api/v1/docs": Rule("authenticated", lambda w: Req("/api/v1/docs")),
    # experiments
    "POST /api/v1/experiments": Rule("write", lambda w: Req(f"{V1}/experiments", {"name": uniq("e")})),
    "GET /api/v1/experiments": Rule("read", lambda w: Req(f"{V1}/experiments")),
    "GET /api/v1/experiments/{experiment_id}": Rule("read", lambda w: Req(f"{V1}/experiments/{w.experiment()}")),
    "PATCH /api/v1/experiments/{experiment_id}": Rule("write", lambda w: Req(
        f"{V1}/experiments/{w.experiment(True)}", {"name": uniq("e")})),
    "DELETE /api/v1/experiments/{experiment_id}": Rule("write", lambda w: Req(
        f"{V1}/experiments/{w.experiment(True)}")),
    "POST /api/v1/experiments/{experiment_id}/restore": Rule("write", lambda w: Req(
        f"{V1}/experiments/{w.experiment(True, deleted=True)}/restore")),
    "PUT /api/v1/experiments/{experiment_id}/tags/{key:path}": Rule("write", lambda w: Req(
        f"{V1}/experiments/{w.experiment()}/tags/k", {"value": "v"})),
    "DELETE /api/v1/experiments/{experiment_id}/tags/{key:path}": Rule("write", lambda w: Req(
        f"{V1}/experiments/{w.experiment(True, tag=True)}/tags/k")),
    # runs
    "POST /api/v1/runs": Rule("write", lambda w: Req(f"{V1}/runs", {"experiment_id": w.experiment()})),
    "POST /api/v1/runs/search": Rule("read", lambda w: Req(f"{V1}/runs/search", {"experiment_ids": [w.experiment()]})),
    "POST /api/v1/metrics/batch": Rule("write", lambda w: Req(f"{V1}/metrics/batch", {"runs": {w.run(): [_metric()]}})),
    "GET /api/v1/runs/{run_id}": Rule("read", lambda w: Req(f"{V1}/runs/{w.run()}")),
    "PATCH /api/v1/runs/{run_id}": Rule("write", lambda w: Req(f"{V1}/runs/{w.run()}", {"status": "RUNNING"})),
    "DELETE /api/v1/runs/{run_id}": Rule("write", lambda w: Req(f"{V1}/runs/{w.run(True)}")),
    "POST /api/v1/runs/{run_id}/restore": Rule("write", lambda w: Req(
        f"{V1}/runs/{w.run(True, deleted=True)}/restore")),
    "POST /api/v1/runs/{run_id}/batch": Rule("write", lambda w: Req(f"{V1}/runs/{w.run()}/batch",
                                                                    {"metrics": [_metric()]})),
    "GET /api/v1/runs/{run_id}/metrics/{key:path}": Rule("read", lambda w: Req(f"{V1}/runs/{w.run()}/metrics/m")),
    "GET /api/v1/runs/{run_id}/metric-series/{key:path}": Rule("read", lambda w: Req(
        f"{V1}/runs/{w.run()}/metric-series/m")),
    "GET /api/v1/metrics/series": Rule("read", lambda w: Req(f"{V1}/metrics/series",
                                                             params={"run_id": [w.run()], "key": "m"})),
    "DELETE /api/v1/runs/{run_id}/tags/{key:path}": Rule("write", lambda w: Req(
        f"{V1}/runs/{w.run(True, tag=True)}/tags/t")),
    "POST /api/v1/runs/{run_id}/outputs": Rule("write", lambda w: Req(
        f"{V1}/runs/{w.run()}/outputs", {"models": [{"model_id": w.logged_model()}]})),
    "GET /api/v1/runs/{run_id}/artifacts": Rule("read", lambda w: Req(f"{V1}/runs/{w.run()}/artifacts")),
    "GET /api/v1/runs/{run_id}/artifacts/{path:path}": Rule("read", lambda w: Req(
        f"{V1}/runs/{w.run()}/artifacts/a.txt")),
    "PUT /api/v1/runs/{run_id}/artifacts/{path:path}": Rule("write", lambda w: Req(
        f"{V1}/runs/{w.run()}/artifacts/{uniq('up')}.bin", content=b"\x00", headers=BINARY)),
    # logged models
    "POST /api/v1/logged-models": Rule("write", lambda w: Req(
        f"{V1}/logged-models", {"experiment_id": w.experiment()})),
    "POST /api/v1/logged-models/search": Rule("read", lambda w: Req(
        f"{V1}/logged-models/search", {"experiment_ids": [w.experiment()]})),
    "GET /api/v1/logged-models/{model_id}": Rule("read", lambda w: Req(f"{V1}/logged-models/{w.logged_model()}")),
    "PATCH /api/v1/logged-models/{model_id}": Rule("write", lambda w: Req(
        f"{V1}/logged-models/{w.logged_model(True)}", {"status": "READY"})),
    "GET /api/v1/logged-models/{model_id}/artifacts": Rule("read", lambda w: Req(
        f"{V1}/logged-models/{w.logged_model()}/artifacts")),
    "GET /api/v1/logged-models/{model_id}/artifacts/{path:path}": Rule("read", lambda w: Req(
        f"{V1}/logged-models/{w.logged_model()}/artifacts/MLmodel")),
    "PUT /api/v1/logged-models/{model_id}/artifacts/{path:path}": Rule("write", lambda w: Req(
        f"{V1}/logged-models/{w.logged_model()}/artifacts/{uniq('f')}.bin", content=b"\x00", headers=BINARY)),
    # registered models and versions
    "POST /api/v1/registered-models": Rule("write", lambda w: Req(f"{V1}/registered-models", {"name": uniq("m")})),
    "GET /api/v1/registered-models": Rule("read", lambda w: Req(f"{V1}/registered-models")),
    "GET /api/v1/registered-models/{name}": Rule("read", lambda w: Req(f"{V1}/registered-models/{w.model()}")),
    "PATCH /api/v1/registered-models/{name}": Rule("write", lambda w: Req(
        f"{V1}/registered-models/{w.model()}", {"description": "d"})),
    "DELETE /api/v1/registered-models/{name}": Rule("write", lambda w: Req(f"{V1}/registered-models/{w.model(True)}")),
    "PUT /api/v1/registered-models/{name}/tags/{key:path}": Rule("write", lambda w: Req(
        f"{V1}/registered-models/{w.model()}/tags/k", {"value": "v"})),
    "DELETE /api/v1/registered-models/{name}/tags/{key:path}": Rule("write", lambda w: Req(
        f"{V1}/registered-models/{w.model(True, tag=True)}/tags/k")),
    "POST /api/v1/registered-models/{name}/versions": Rule("write", lambda w: Req(
        f"{V1}/registered-models/{w.model()}/versions", {"source": f"runs:/{w.run()}/model", "run_id": w.run()}),
        note="plus read on every project the source and its lineage belong to"),
    "GET /api/v1/model-versions": Rule("read", lambda w: Req(f"{V1}/model-versions")),
    "GET /api/v1/registered-models/{name}/versions/{version}": Rule("read", lambda w: Req(_mv_path(w))),
    "PATCH /api/v1/registered-models/{name}/versions/{version}": Rule("write", lambda w: Req(
        _mv_path(w), {"description": "d"})),
    "DELETE /api/v1/registered-models/{name}/versions/{version}": Rule("write", lambda w: Req(_mv_path(w, True))),
    "PUT /api/v1/registered-models/{name}/versions/{version}/tags/{key:path}": Rule("write", lambda w: Req(
        f"{_mv_path(w)}/tags/k", {"value": "v"})),
    "DELETE /api/v1/registered-models/{name}/versions/{version}/tags/{key:path}": Rule("write", lambda w: Req(
        f"{_mv_path(w, True, tag=True)}/tags/k")),
    "PUT /api/v1/registered-models/{name}/aliases/{alias}": Rule("write", lambda w: Req(
        f"{V1}/registered-models/{w.version()[0]}/aliases/staged", {"version": w.version()[1]})),
    "DELETE /api/v1/registered-models/{name}/aliases/{alias}": Rule("write", lambda w: Req(
        f"{V1}/registered-models/{w.version(True, alias=True)[0]}/aliases/champion")),
    "GET /api/v1/registered-models/{name}/aliases/{alias}": Rule("read", lambda w: Req(
        f"{V1}/registered-models/{w.version(alias=True)[0]}/aliases/champion")),
    "GET /api/v1/registered-models/{name}/versions/{version}/artifacts": Rule("read", lambda w: Req(
        f"{_mv_path(w)}/artifacts"), note="plus read on the project that owns the version's files"),
    "GET /api/v1/registered-models/{name}/versions/{version}/artifacts/{path:path}": Rule("read", lambda w: Req(
        f"{_mv_path(w)}/artifacts/MLmodel"), note="plus read on the project that owns the version's files"),
    # admin
    "GET /api/v1/events": Rule("authenticated", lambda w: Req(f"{V1}/events"),
                               note="only events of projects the caller may read; ?project= needs read there"),
    "GET /api/v1/whoami": Rule("authenticated", lambda w: Req(f"{V1}/whoami")),
    "GET /api/v1/users": Rule("server-admin", lambda w: Req(f"{V1}/users")),
    "POST /api/v1/users": Rule("server-admin", lambda w: Req(f"{V1}/users", {"name": uniq("u")})),
    "GET /api/v1/users/{name}": Rule("self-or-server-admin", lambda w: Req(f"{V1}/users/{w.user()}")),
    "PATCH /api/v1/users/{name}": Rule("server-admin", lambda w: Req(f"{V1}/users/{w.user()}", {"disabled": False})),
    "GET /api/v1/projects/{project}/members": Rule("admin", lambda w: Req(f"{V1}/projects/{PROJECT}/members")),
    "PUT /api/v1/projects/{project}/members/{name}": Rule("admin", lambda w: Req(
        f"{V1}/projects/{PROJECT}/members/{w.user()}", {"role": "viewer"})),
    "DELETE /api/v1/projects/{project}/members/{name}": Rule("admin", lambda w: Req(
        f"{V1}/projects/{PROJECT}/members/{w.user(True, member=True)}")),
    "GET /api/v1/tokens": Rule("authenticated", lambda w: Req(f"{V1}/tokens"),
                               note="the caller's own; ?user=other or ?all=true needs server-admin"),
    "POST /api/v1/tokens": Rule("authenticated", lambda w: Req(f"{V1}/tokens", {"name": "matrix"}),
                                note="for the caller; {\"user\": other} needs server-admin"),
    "DELETE /api/v1/tokens/{ref}": Rule("self-or-server-admin", lambda w: Req(f"{V1}/tokens/{w.token_id()}")),
    "GET /api/v1/audit": Rule("server-admin", lambda w: Req(f"{V1}/audit"),
                              note="?project=P is open to P's admins"),
    # pipelines
    "POST /api/v1/pipelines/runs": Rule("write", lambda w: Req(f"{V1}/pipelines/runs", {"pipeline": w.pipeline_ref})),
    "GET /api/v1/pipelines/runs": Rule("read", lambda w: Req(f"{V1}/pipelines/runs")),
    "GET /api/v1/pipelines/runs/{run_id}": Rule("read", lambda w: Req(f"{V1}/pipelines/runs/{w.pipeline_run()[0]}")),
    "POST /api/v1/pipelines/runs/{run_id}/cancel": Rule("write", lambda w: Req(
        f"{V1}/pipelines/runs/{w.pipeline_run()[0]}/cancel"), ok=(400,), note="a finished run answers 400"),
    "POST /api/v1/pipelines/runs/{run_id}/retry": Rule("write", lambda w: Req(
        f"{V1}/pipelines/runs/{w.pipeline_run()[0]}/retry"), ok=(400,), note="a succeeded run answers 400"),
    "POST /api/v1/pipelines/runs/{run_id}/resume": Rule("write", lambda w: Req(
        f"{V1}/pipelines/runs/{w.pipeline_run()[0]}/resume"), ok=(400,), note="a finished run answers 400"),
    "GET /api/v1/pipelines/runs/{run_id}/steps/{step_id}/logs": Rule("read", lambda w: Req(
        "{}/pipelines/runs/{}/steps/{}/logs".format(V1, *w.pipeline_run()))),
    "GET /api/v1/pipelines/lineage/{key}": Rule("read", lambda w: Req(f"{V1}/pipelines/lineage/nothing-here"),
                                               ok=(404,)),
    "GET /api/v1/pipelines/schedules": Rule("read", lambda w: Req(f"{V1}/pipelines/schedules")),
    "POST /api/v1/pipelines/schedules": Rule("write", lambda w: Req(f"{V1}/pipelines/schedules", {
        "name": uniq("s"), "pipeline": w.pipeline_ref, "cron": "0 0 1 1 *", "catchup": False})),
    "DELETE /api/v1/pipelines/schedules/{name}": Rule("write", lambda w: Req(
        f"{V1}/pipelines/schedules/{w.schedule(True)}")),
    "POST /api/v1/pipelines/schedules/{name}/backfill": Rule("write", lambda w: Req(
        f"{V1}/pipelines/schedules/{w.schedule()}/backfill", {"from": "2030-01-01T00:00:00Z",
                                                              "to": "2030-01-01T00:00:00Z"})),
    # queue
    "GET /api/v1/queue/status": Rule("read", lambda w: Req(f"{V1}/queue/status")),
    "GET /api/v1/queue/config": Rule("read", lambda w: Req(f"{V1}/queue/config")),
    "POST /api/v1/queue/config": Rule("server-admin", lambda w: Req(
        f"{V1}/queue/config", content=w.queue_config(), headers={"Content-Type": "application/yaml"})),
    "POST /api/v1/queue/workloads": Rule("write", lambda w: Req(f"{V1}/queue/workloads", {
        "id": uniq("w"), "queue": "ml", "pod_sets": [{"count": 1, "requests": {"gpu": 1}}]})),
    "GET /api/v1/queue/workloads": Rule("read", lambda w: Req(f"{V1}/queue/workloads")),
    "GET /api/v1/queue/workloads/{workload_id:path}/why": Rule("read", lambda w: Req(
        f"{V1}/queue/workloads/{w.workload()}/why"), note="in Kueue mode a pipeline step's RUN/STEP answers from "
        "the step's recorded Kueue status, checked against the step's project"),
    "POST /api/v1/queue/workloads/{workload_id:path}/finish": Rule("write", lambda w: Req(
        f"{V1}/queue/workloads/{w.workload(True)}/finish"), ok=(400,), note="a workload not admitted answers 400"),
    "POST /api/v1/queue/workloads/{workload_id:path}/cancel": Rule("write", lambda w: Req(
        f"{V1}/queue/workloads/{w.workload(True)}/cancel")),
    "POST /api/v1/queue/workloads/{workload_id:path}/evicted": Rule("write", lambda w: Req(
        f"{V1}/queue/workloads/{w.workload(True)}/evicted"), ok=(400,), note="a workload not admitted answers 400"),
    "POST /api/v1/queue/workloads/{workload_id:path}/checkpoint": Rule("write", lambda w: Req(
        f"{V1}/queue/workloads/{w.workload()}/checkpoint", {"step": 1}), ok=(400,),
        note="a workload not admitted answers 400"),
    "GET /api/v1/queue/workloads/{workload_id:path}": Rule("read", lambda w: Req(
        f"{V1}/queue/workloads/{w.workload()}")),
    "GET /api/v1/queue/usage": Rule("read", lambda w: Req(f"{V1}/queue/usage")),
    # deployments: the permission is checked in the request's project before the deployment is looked up, so a
    # name that does not exist answers 404 to those allowed and 401/403 to the others
    "POST /api/v1/deployments": Rule("write", lambda w: Req(f"{V1}/deployments", _deployment_spec(w))),
    "GET /api/v1/deployments": Rule("read", lambda w: Req(f"{V1}/deployments")),
    "GET /api/v1/deployments/{name}": Rule("read", lambda w: Req(f"{V1}/deployments/no-such-deployment"),
                                          ok=(404,), note="a missing deployment answers 404"),
    "GET /api/v1/deployments/{name}/drift": Rule("read", lambda w: Req(
        f"{V1}/deployments/no-such-deployment/drift"), ok=(404,), note="a missing deployment answers 404"),
    "DELETE /api/v1/deployments/{name}": Rule("write", lambda w: Req(f"{V1}/deployments/no-such-deployment"),
                                             ok=(404,), note="a missing deployment answers 404"),
    "POST /api/v1/deployments/{name}/promote": Rule("write", lambda w: Req(
        f"{V1}/deployments/no-such-deployment/promote"), ok=(404,), note="a missing deployment answers 404"),
    "POST /api/v1/deployments/{name}/rollback": Rule("write", lambda w: Req(
        f"{V1}/deployments/no-such-deployment/rollback"), ok=(404,), note="a missing deployment answers 404"),
    "GET /deployments/{name}/{path:path}": Rule("read", lambda w: Req("/deployments/no-such-deployment/v2"),
                                                ok=(404,), note="inference; a missing deployment answers 404"),
    "POST /deployments/{name}/{path:path}": Rule("read", lambda w: Req(
        "/deployments/no-such-deployment/invocations", {"inputs": [[1.0]]}), ok=(404,),
        note="inference; a missing deployment answers 404"),
    "POST /deployments/{name}/feedback": Rule("read", lambda w: Req(
        "/deployments/no-such-deployment/feedback", {"request_id": "r", "truth": 1}), ok=(404,),
        note="ground truth; a missing deployment answers 404"),
    "GET /deployments/{name}/quality": Rule("read", lambda w: Req("/deployments/no-such-deployment/quality"),
                                           ok=(404,), note="a missing deployment answers 404"),
    "POST /api/v1/deployments/{name}/scale": Rule("write", lambda w: Req(
        f"{V1}/deployments/no-such-deployment/scale", {"replicas": 1}), ok=(404,),
        note="a missing deployment answers 404"),
    # training jobs: as deployments, the permission is checked in the request's project before the job is looked up
    # (a missing one answers 404 to those allowed); the submitted script does not exist, so nothing runs
    "POST /api/v1/jobs": Rule("write", lambda w: Req(f"{V1}/jobs", {"name": uniq("j"), "entry": "no-such-script.py"}),
                              ok=(400,), note="a missing script answers 400"),
    "GET /api/v1/jobs": Rule("read", lambda w: Req(f"{V1}/jobs")),
    "GET /api/v1/jobs/{job_id}": Rule("read", lambda w: Req(f"{V1}/jobs/no-such-job-000000"), ok=(404,),
                                     note="a missing job answers 404"),
    "POST /api/v1/jobs/{job_id}/cancel": Rule("write", lambda w: Req(f"{V1}/jobs/no-such-job-000000/cancel"),
                                             ok=(404,), note="a missing job answers 404"),
    "GET /api/v1/jobs/{job_id}/logs": Rule("read", lambda w: Req(f"{V1}/jobs/no-such-job-000000/logs"), ok=(404,),
                                          note="a missing job answers 404"),
    "GET /api/v1/jobs/{job_id}/why": Rule("read", lambda w: Req(f"{V1}/jobs/no-such-job-000000/why"), ok=(404,),
                                         note="a missing job answers 404"),
    # hyperparameter studies (read-only): the permission is checked in the request's project before the study is
    # looked up (a missing one answers 404 to those allowed)
    "GET /api/v1/studies": Rule("read", lambda w: Req(f"{V1}/studies")),
    "GET /api/v1/studies/{name}": Rule("read", lambda w: Req(f"{V1}/studies/no-such-study"), ok=(404,),
                                       note="a missing study answers 404"),
    # workload timelines (`capstan describe`): read in the request's project, checked before the workload is looked up
    # (a workload of another project answers 404 like a missing one)
    "GET /api/v1/timeline/{kind}/{ident:path}": Rule("read", lambda w: Req(f"{V1}/timeline/job/no-such-job-000000"),
                                                     ok=(404,), note="a missing workload answers 404"),
    # the web UI (capstan.ui): pages under /ui check the same permission as their JSON twins under
    # /api/v1/views; without a credential a page redirects to /ui/login (303), and a denied page is a 403 page
    **UI_PAGES,
}


def _deployment_spec(w: World) -> dict[str, Any]:
    """A deployment that starts no replica (it scales from zero on its first request)."""
    name, version = w.version()
    return {"name": uniq("d"), "model": f"models:/{name}/{version}",
            "autoscaling": {"min_replicas": 0, "max_replicas": 1, "target_concurrency": 1}}


def _prefixed(prefix: str, rules: dict[str, Rule]) -> dict[str, Rule]:
    out = {}
    for key, rule in rules.items():
        method, _, path = key.partition(" ")
        out[f"{method} {prefix}{path}"] = rule
    return out


POLICY: dict[str, Rule] = {**_NATIVE, **_prefixed(MLFLOW, _MLFLOW), **_prefixed("/api/3.0/mlflow", _V3),
                           **_prefixed(ARTIFACTS, _ARTIFACTS)}
"""Every route's rule, keyed ``"METHOD /template"``; ``/ajax-api/...`` routes use their ``/api/...`` twin."""


def policy_key(method: str, template: str) -> str:
    """The `POLICY` key of a route (the web UI's ``/ajax-api`` prefix shares the ``/api`` entry)."""
    if template.startswith("/ajax-api/"):
        template = "/api/" + template[len("/ajax-api/"):]
    return f"{method} {template}"


def render_markdown() -> str:
    """``docs/auth-matrix.md``: every route with the permission it requires, generated from `POLICY`."""
    lines = [
        "# Auth matrix",
        "",
        "Generated from `tests/server/auth_matrix_routes.py` (`python tests/server/auth_matrix_routes.py`); "
        "`tests/server/test_auth_matrix.py` checks every route of the server against it with seven callers "
        "(anonymous, a bad token, a viewer of another project, a viewer, an editor and an admin of the project, "
        "a server admin) and fails when a route is missing here or this page is stale. Do not edit by hand.",
        "",
        "Permissions: **public** needs no credential; **authenticated** any valid token; **read**, **write**, "
        "**admin** that permission in the project of the object (for create, list and search: the project named "
        "by `X-Capstan-Project`; viewers hold read, editors read and write, project admins all three); "
        "**server-admin** server admins only; **self-or-server-admin** the caller's own user or token, otherwise "
        "server admins. Without a valid credential every route but the public ones answers 401 (a web UI page "
        "under `/ui` asked without any credential redirects to `/ui/login` instead); with one but without the "
        "permission, 403 (an HTML page for `/ui` pages). Every MLflow route under `/api/...` is also served under "
        "`/ajax-api/...` with the same rule.",
        "",
        "| Method | Route | Permission | Note |",
        "|---|---|---|---|",
    ]
    for key in sorted(POLICY, key=lambda k: (k.partition(" ")[2], k.partition(" ")[0])):
        method, _, path = key.partition(" ")
        rule = POLICY[key]
        lines.append(f"| {method} | `{path}` | {rule.permission} | {rule.note} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    DOC_PATH.write_text(render_markdown())
    print(f"wrote {DOC_PATH}")

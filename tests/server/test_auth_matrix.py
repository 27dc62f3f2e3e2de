"""The auth matrix: every route of the live route table x seven kinds of caller, against a real auth-enabled server.

Routes come from the app itself (FastAPI's route table, and each MLflow dispatcher's endpoints), never from a list
kept here, so a new route fails `test_every_route_is_classified` until `auth_matrix_routes.POLICY` says what it
requires, and `test_route_enforces_its_permission` then checks its 401/403 rows. A second group checks indirect
access: a model version, experiment, alias or logged model of project ``alpha`` that points at ``beta``'s objects.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from auth_matrix_routes import DOC_PATH, NOW, POLICY, PROJECT, Req, policy_key, render_markdown, uniq

from capstan.services import Services
from capstan.settings import Settings
from helpers.server import ServerProcess, start_server

CALLERS = ("anonymous", "bad-token", "outsider", "reader", "editor", "project-admin", "server-admin")
"""outsider: a viewer of project beta; reader/editor/project-admin: viewer, editor, admin of alpha."""
DENIED = {
    "public": set(), "authenticated": set(), "read": {"outsider"}, "write": {"outsider", "reader"},
    "admin": {"outsider", "reader", "editor"},
    "server-admin": {"outsider", "reader", "editor", "project-admin"},
    "self-or-server-admin": {"outsider", "reader", "editor", "project-admin"},
}
ROLES = {"outsider": ("beta", "viewer"), "reader": (PROJECT, "viewer"), "editor": (PROJECT, "editor"),
         "project-admin": (PROJECT, "admin")}
QUEUE_CONFIG = f"""
flavors: [{{name: f}}]
clusterQueues:
  - name: cq
    resourceGroups:
      - coveredResources: [gpu]
        flavors: [{{name: f, resources: [{{name: gpu, nominalQuota: 1}}]}}]
localQueues:
  - {{name: ml, clusterQueue: cq, project: {PROJECT}}}
""".encode()
PIPELINE = '''
import capstan.pipelines as cp


@cp.step(isolation="thread")
def one() -> int:
    print("one")
    return 1


@cp.pipeline
def flow():
    return one()
'''


# -- the route table ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LiveRoute:
    """One route x method of the running app; ``prefix`` is set for MLflow endpoints (their requests are built
    below it)."""

    method: str
    template: str
    prefix: str | None = None

    @property
    def key(self) -> str:
        return policy_key(self.method, self.template)


def live_routes() -> list[LiveRoute]:
    """Every route and method the app serves, read from a freshly built app."""
    from starlette.routing import Mount

    from capstan.server.app import create_app
    from capstan.server.mlflow_routing import Dispatcher

    found: list[LiveRoute] = []

    def walk(routes: Any, prefix: str) -> None:
        for route in routes:
            nested = getattr(route, "original_router", None)
            if nested is not None:
                walk(nested.routes, prefix + str(getattr(route.include_context, "prefix", "") or ""))
                continue
            owner = getattr(getattr(route, "endpoint", None), "__self__", None)
            if isinstance(owner, Dispatcher):
                found.extend(LiveRoute(r.method, owner.prefix + r.path, owner.prefix) for r in owner.routes)
                continue
            if isinstance(route, Mount):  # static files: every GET below the mount point
                found.append(LiveRoute("GET", prefix + route.path + "/{path:path}"))
                continue
            for method in sorted(set(getattr(route, "methods", None) or ()) - {"HEAD"}):
                found.append(LiveRoute(method, prefix + route.path))

    with tempfile.TemporaryDirectory() as home:
        services = Services.open(Settings.for_home(home))
        try:
            walk(create_app(Settings.for_home(home), services=services).routes, "")
        finally:
            services.close()
    return found


ROUTES = live_routes()


def test_every_route_is_classified() -> None:
    live = {r.key for r in ROUTES}
    unclassified = sorted(live - set(POLICY))
    assert not unclassified, ("routes without a rule in tests/server/auth_matrix_routes.py POLICY (say which "
                              f"permission each requires): {unclassified}")
    stale = sorted(set(POLICY) - live)
    assert not stale, f"POLICY names routes the server no longer has: {stale}"
    assert len(ROUTES) > 150  # both MLflow prefixes, the native API and the admin routes are all enumerated


def test_auth_matrix_document_is_current() -> None:
    assert DOC_PATH.read_text() == render_markdown(), (
        "docs/auth-matrix.md is stale: run `python tests/server/auth_matrix_routes.py`")


# -- the world: users, tokens and alpha's objects -----------------------------------------------------------
class Live:
    """Objects of project alpha (and a few of beta), made through the API as the server admin."""

    def __init__(self, server: ServerProcess, tokens: dict[str, str], folder: Path) -> None:
        self.server = server
        self.tokens = tokens
        self.http = httpx.Client(base_url=server.url, timeout=60)
        self._shared: dict[str, Any] = {}
        pipeline = folder / "flow.py"
        pipeline.write_text(PIPELINE)
        self.pipeline_ref = f"{pipeline}:flow"

    def call(self, method: str, path: str, *, who: str = "server-admin", project: str = PROJECT,
             **kwargs: Any) -> httpx.Response:
        headers = {"X-Capstan-Project": project, **kwargs.pop("headers", {})}
        if who in self.tokens:
            headers["Authorization"] = f"Bearer {self.tokens[who]}"
        return self.http.request(method, path, headers=headers, **kwargs)

    def ok(self, method: str, path: str, project: str = PROJECT, **kwargs: Any) -> Any:
        response = self.call(method, path, project=project, **kwargs)
        assert response.status_code < 300, f"setup {method} {path}: {response.status_code} {response.text}"
        return response.json() if response.content else None

    def _once(self, key: str, make: Any) -> Any:
        if key not in self._shared:
            self._shared[key] = make()
        return self._shared[key]

    # tracking
    def experiment(self, fresh: bool = False, *, deleted: bool = False, tag: bool = False,
                   project: str = PROJECT) -> str:
        if not fresh:
            return str(self._once(f"exp:{project}", lambda: self.experiment(True, project=project)))
        body = self.ok("POST", "/api/2.0/mlflow/experiments/create", project=project, json={"name": uniq("e")})
        experiment_id = str(body["experiment_id"])
        if tag:
            self.ok("POST", "/api/2.0/mlflow/experiments/set-experiment-tag",
                    json={"experiment_id": experiment_id, "key": "k", "value": "v"})
        if deleted:
            self.ok("POST", "/api/2.0/mlflow/experiments/delete", json={"experiment_id": experiment_id})
        return experiment_id

    def experiment_name(self) -> str:
        body = self.ok("GET", "/api/2.0/mlflow/experiments/get", params={"experiment_id": self.experiment()})
        return str(body["experiment"]["name"])

    def run(self, fresh: bool = False, *, deleted: bool = False, tag: bool = False, project: str = PROJECT) -> str:
        if not fresh:
            return str(self._once(f"run:{project}", lambda: self._shared_run(project)))
        body = self.ok("POST", "/api/2.0/mlflow/runs/create", project=project,
                       json={"experiment_id": self.experiment(project=project), "start_time": NOW})
        run_id = str(body["run"]["info"]["run_id"])
        if tag:
            self.ok("POST", "/api/2.0/mlflow/runs/set-tag", json={"run_id": run_id, "key": "t", "value": "v"})
        if deleted:
            self.ok("POST", "/api/2.0/mlflow/runs/delete", json={"run_id": run_id})
        return run_id

    def _shared_run(self, project: str) -> str:
        run_id = self.run(True, project=project)
        self.ok("POST", "/api/2.0/mlflow/runs/log-metric", project=project,
                json={"run_id": run_id, "key": "m", "value": 1, "timestamp": NOW, "step": 0})
        for name in ("a.txt", "model/MLmodel"):
            self.ok("PUT", f"/api/v1/runs/{run_id}/artifacts/{name}", project=project, content=b"artifact",
                    headers={"Content-Type": "application/octet-stream"})
        return run_id

    def artifact(self, fresh: bool = False) -> str:
        name = uniq("file") + ".txt"
        self.ok("PUT", f"/api/v1/runs/{self.run()}/artifacts/{name}", content=b"x",
                headers={"Content-Type": "application/octet-stream"})
        return f"{self.experiment()}/{self.run()}/artifacts/{name}"

    def logged_model(self, fresh: bool = False, *, tag: bool = False, project: str = PROJECT) -> str:
        if not fresh:
            return str(self._once(f"lm:{project}", lambda: self.logged_model(True, project=project)))
        body = self.ok("POST", "/api/2.0/mlflow/logged-models", project=project,
                       json={"experiment_id": self.experiment(project=project)})
        model_id = str(body["model"]["info"]["model_id"])
        self.ok("PUT", f"/api/v1/logged-models/{model_id}/artifacts/MLmodel", project=project, content=b"m",
                headers={"Content-Type": "application/octet-stream"})
        if tag:
            self.ok("PATCH", f"/api/2.0/mlflow/logged-models/{model_id}/tags",
                    json={"tags": [{"key": "k", "value": "v"}]})
        return model_id

    # registry
    def model(self, fresh: bool = False, *, tag: bool = False, project: str = PROJECT) -> str:
        if not fresh:
            return str(self._once(f"rm:{project}", lambda: self.model(True, project=project)))
        name = uniq("m")
        self.ok("POST", "/api/2.0/mlflow/registered-models/create", project=project, json={"name": name})
        if tag:
            self.ok("POST", "/api/2.0/mlflow/registered-models/set-tag", json={"name": name, "key": "k", "value": "v"})
        return name

    def version(self, fresh: bool = False, *, tag: bool = False, alias: bool = False,
                project: str = PROJECT) -> tuple[str, int]:
        if not fresh:
            return self._once(f"mv:{project}:{alias}",  # type: ignore[no-any-return]  # untyped helper value
                              lambda: self.version(True, alias=alias, project=project))
        name = self.model(True, project=project)
        run_id = self.run(project=project)
        body = self.ok("POST", "/api/2.0/mlflow/model-versions/create", project=project,
                       json={"name": name, "source": f"runs:/{run_id}/model", "run_id": run_id})
        version = int(body["model_version"]["version"])
        if tag:
            self.ok("POST", "/api/2.0/mlflow/model-versions/set-tag",
                    json={"name": name, "version": str(version), "key": "k", "value": "v"})
        if alias:
            self.ok("POST", "/api/2.0/mlflow/registered-models/alias",
                    json={"name": name, "alias": "champion", "version": str(version)})
        return name, version

    # admin
    def user(self, fresh: bool = False, *, member: bool = False) -> str:
        if not fresh:
            return str(self._once("user", lambda: self.user(True)))
        name = uniq("victim")
        self.ok("POST", "/api/v1/users", json={"name": name})
        if member:
            self.ok("PUT", f"/api/v1/projects/{PROJECT}/members/{name}", json={"role": "viewer"})
        return name

    def token_id(self) -> int:
        return int(self.ok("POST", "/api/v1/tokens", json={"user": self.user(), "name": "victim"})["token"]["id"])

    # pipelines and queue
    def pipeline_run(self) -> tuple[str, str]:
        def make() -> tuple[str, str]:
            run_id = self.ok("POST", "/api/v1/pipelines/runs",  # no cache: the step must run (and log)
                             json={"pipeline": self.pipeline_ref, "no_cache": True})["run"]["id"]
            deadline = time.monotonic() + 120
            while True:
                shown = self.ok("GET", f"/api/v1/pipelines/runs/{run_id}")
                if shown["run"]["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert shown["run"]["status"] == "succeeded", shown
            return str(run_id), str(shown["steps"][0]["step"])

        return self._once("pipeline-run", make)  # type: ignore[no-any-return]  # untyped helper value

    def schedule(self, fresh: bool = False) -> str:
        if not fresh:
            return str(self._once("schedule", lambda: self.schedule(True)))
        name = uniq("s")
        self.ok("POST", "/api/v1/pipelines/schedules",
                json={"name": name, "pipeline": self.pipeline_ref, "cron": "0 0 1 1 *", "catchup": False})
        return name

    def workload(self, fresh: bool = False) -> str:
        if not fresh:
            return str(self._once("workload", lambda: self.workload(True)))
        workload_id = uniq("w")
        self.ok("POST", "/api/v1/queue/workloads", json={
            "id": workload_id, "queue": "ml", "pod_sets": [{"count": 1, "requests": {"gpu": 1}}]})
        return workload_id

    def queue_config(self) -> bytes:
        return QUEUE_CONFIG


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    home = tmp_path_factory.mktemp("auth-matrix") / "home"
    services = Services.open(Settings.for_home(home))
    tokens: dict[str, str] = {}
    try:
        services.auth.create_user("root", admin=True)
        tokens["server-admin"] = services.auth.create_token("root").secret
        for caller, (project, role) in ROLES.items():
            services.auth.create_user(caller)
            services.auth.grant(caller, project, role)
            tokens[caller] = services.auth.create_token(caller).secret
    finally:
        services.close()
    tokens["bad-token"] = "cap_" + uuid.uuid4().hex + uuid.uuid4().hex[:8]
    with start_server(home) as server:
        live = Live(server, tokens, tmp_path_factory.mktemp("pipelines"))
        live.ok("POST", "/api/v1/queue/config", content=QUEUE_CONFIG, headers={"Content-Type": "application/yaml"})
        yield live
        live.http.close()


# -- the matrix ---------------------------------------------------------------------------------------------
def _send(world: Live, route: LiveRoute, caller: str, req: Req) -> httpx.Response:
    path = (route.prefix or "") + req.path
    kwargs: dict[str, Any] = {"params": req.params, "headers": dict(req.headers)}
    if req.json is not None:
        kwargs["json"] = req.json
    elif req.content is not None:
        kwargs["content"] = req.content
    return world.call(route.method, path, who=caller, **kwargs)


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.template}")
def test_route_enforces_its_permission(world: Live, route: LiveRoute) -> None:
    rule = POLICY.get(route.key)
    assert rule is not None, f"{route.key} has no rule in auth_matrix_routes.POLICY"
    problems: list[str] = []
    page = route.template.startswith("/ui")  # web UI pages answer browsers: a redirect and HTML error pages
    for caller in CALLERS:
        response = _send(world, route, caller, rule.build(world))
        status = response.status_code
        if rule.permission != "public" and caller == "anonymous" and page:
            expected = "303 to /ui/login"
            good = status == 303 and response.headers["location"].startswith("/ui/login?next=")
        elif rule.permission != "public" and caller in ("anonymous", "bad-token"):
            expected = "401 UNAUTHENTICATED"
            good = status == 401 and response.json().get("error_code") == "UNAUTHENTICATED"
        elif caller in DENIED[rule.permission]:
            expected = "403 PERMISSION_DENIED"
            good = status == 403 and (response.headers["content-type"].startswith("text/html") if page
                                      else response.json().get("error_code") == "PERMISSION_DENIED")
        else:
            expected = f"2xx{'/' + '/'.join(map(str, rule.ok)) if rule.ok else ''}"
            good = 200 <= status < 300 or status in rule.ok
        if not good:
            problems.append(f"{caller}: expected {expected}, got {status} {response.text[:200]}")
    assert not problems, f"{route.key} ({rule.permission}):\n  " + "\n  ".join(problems)


# -- indirect access: objects of alpha that point into beta -------------------------------------------------
def _refused(response: httpx.Response, *, or_invalid: bool = False) -> None:
    """403; with ``or_invalid`` a 400 that refuses the cross-project link as invalid input counts too."""
    allowed = {(403, "PERMISSION_DENIED")} | ({(400, "INVALID_PARAMETER_VALUE")} if or_invalid else set())
    assert (response.status_code, response.json().get("error_code")) in allowed, response.text


def test_version_source_in_another_project_is_refused(world: Live) -> None:
    beta_run = world.run(project="beta")
    beta_experiment = world.experiment(project="beta")
    beta_model = world.logged_model(project="beta")
    sources = [{"source": f"runs:/{beta_run}/model", "run_id": beta_run},
               {"source": f"runs:/{beta_run}/model"},
               {"source": f"mlflow-artifacts:/{beta_experiment}/{beta_run}/artifacts/model"},
               {"source": f"models:/{beta_model}"},
               {"source": f"runs:/{world.run()}/model", "run_id": beta_run}]
    for body in sources:
        name = world.model()
        _refused(world.call("POST", "/api/2.0/mlflow/model-versions/create", who="editor",
                            json={"name": name, **body}))
        _refused(world.call("POST", f"/api/v1/registered-models/{name}/versions", who="editor", json=body))
    # the same source is fine for someone who may read beta too
    allowed = world.call("POST", "/api/2.0/mlflow/model-versions/create", who="server-admin",
                         json={"name": world.model(), "source": f"runs:/{beta_run}/model", "run_id": beta_run})
    assert allowed.status_code == 200, allowed.text


def test_alias_resolving_a_model_in_another_project_is_refused(world: Live) -> None:
    beta_name, _ = world.version(alias=True, project="beta")
    _refused(world.call("GET", "/api/2.0/mlflow/registered-models/alias", who="editor",
                        params={"name": beta_name, "alias": "champion"}))
    _refused(world.call("GET", f"/api/v1/registered-models/{beta_name}/aliases/champion", who="editor"))
    for source in (f"models:/{beta_name}@champion", f"models:/{beta_name}/1"):
        _refused(world.call("POST", "/api/2.0/mlflow/model-versions/create", who="editor",
                            json={"name": world.model(), "source": source}))


def test_lineage_across_projects_is_refused(world: Live) -> None:
    """run -> logged model -> version: no link may name another project's object without read access there."""
    beta_run, beta_model = world.run(project="beta"), world.logged_model(project="beta")
    _refused(world.call("POST", "/api/2.0/mlflow/logged-models", who="editor",
                        json={"experiment_id": world.experiment(), "source_run_id": beta_run}), or_invalid=True)
    _refused(world.call("POST", "/api/v1/logged-models", who="editor",
                        json={"experiment_id": world.experiment(), "source_run_id": beta_run}), or_invalid=True)
    _refused(world.call("POST", "/api/2.0/mlflow/runs/outputs", who="editor",
                        json={"run_id": world.run(), "models": [{"model_id": beta_model, "step": 0}]}), or_invalid=True)
    _refused(world.call("POST", f"/api/v1/runs/{world.run()}/outputs", who="editor",
                        json={"models": [{"model_id": beta_model}]}), or_invalid=True)
    _refused(world.call("POST", f"/api/v1/registered-models/{world.model()}/versions", who="editor",
                        json={"source": f"models:/{beta_model}", "model_id": beta_model}))


def test_experiment_artifact_location_into_another_project_is_refused(world: Live) -> None:
    beta = world.ok("GET", "/api/2.0/mlflow/experiments/get", project="beta",
                    params={"experiment_id": world.experiment(project="beta")})["experiment"]
    for location in (beta["artifact_location"], f"mlflow-artifacts:/{beta['experiment_id']}"):
        for path in ("/api/2.0/mlflow/experiments/create", "/api/v1/experiments"):
            response = world.call("POST", path, who="editor", json={"name": uniq("e"), "artifact_location": location})
            _refused(response, or_invalid=True)

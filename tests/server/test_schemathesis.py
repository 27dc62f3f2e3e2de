"""Property-based checks of the HTTP APIs against a real server: no 5xx, and answers that match the document.

- ``/api/v1``: schemathesis reads the server's own OpenAPI document and runs every built-in check on each
  operation (a fixed seed, a few examples each). Two settings, explained in docs/decisions/0010-api-conformance.md:
  a 400 or 404 may answer a schema-valid request (a filter's grammar, a deleted experiment or a name already
  taken cannot be said in JSON Schema), and `documented_limits` makes sure such a 400 is never about something the
  document could have said (a length, an integer range, a type).
- MLflow's REST API (``/api/2.0/mlflow/...``, no OpenAPI document of its own): hypothesis sends every route of
  the dispatch tables bodies and queries of hostile values (huge integers, control characters, wrong types) and
  asserts no 5xx and the ``{"error_code", "message"}`` error body.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.config import SchemathesisConfig
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection

from capstan.server import mlflow_artifacts, mlflow_models, mlflow_registry, mlflow_tracking
from capstan.server.mlflow_routing import Route
from capstan.services import Services
from capstan.settings import Settings
from helpers.server import start_server

SEED = 20_240_601
EXAMPLES = 5
# What a schema-valid request may get besides 2xx: see the module docstring.
POSITIVE_STATUSES = ["2XX", "400", "401", "403", "404", "409"]
# Messages of a 400 that the OpenAPI document should have prevented: pydantic's type/shape errors and the
# stores' length and range limits.
_SCHEMA_SAYABLE = re.compile(r"\b(Input|String|Value|List|Dictionary|Object) should\b|Field required|Extra inputs"
                             r"|longer than|must be at most|at most \d+ characters|64-bit", re.IGNORECASE)


@dataclass
class Api:
    url: str
    token: str
    experiment_id: str
    run_id: str
    model_name: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A throwaway server bound to loopback with one admin user, so every route demands (and gets) a token."""
    home: Path = tmp_path_factory.mktemp("schemathesis") / "home"
    services = Services.open(Settings.for_home(home))
    try:
        services.auth.create_user("root", admin=True)
        token = services.auth.create_token("root").secret
    finally:
        services.close()
    with start_server(home) as server:
        headers = {"Authorization": f"Bearer {token}"}
        experiment_id = httpx.post(f"{server.url}/api/v1/experiments", json={"name": "seed"}, headers=headers,
                                   timeout=30).json()["experiment_id"]
        run_id = httpx.post(f"{server.url}/api/v1/runs", json={"experiment_id": experiment_id}, headers=headers,
                            timeout=30).json()["info"]["run_id"]
        created = httpx.post(f"{server.url}/api/v1/registered-models", json={"name": "seed-model"}, headers=headers,
                             timeout=30)
        assert created.status_code == 201, created.text
        yield Api(server.url, token, experiment_id, run_id, "seed-model")


# -- /api/v1 through its OpenAPI document -----------------------------------------------------------------
@pytest.fixture(scope="module")
def api_v1_schema(api: Api) -> Any:
    config = SchemathesisConfig.from_dict({
        "seed": SEED,
        "headers": api.headers,
        "checks": {"positive_data_acceptance": {"expected-statuses": POSITIVE_STATUSES}},
    })
    return schemathesis.openapi.from_url(f"{api.url}/api/v1/openapi.json", headers=api.headers, config=config)


def documented_limits(_ctx: Any, response: Any, case: Any) -> bool | None:
    """A schema-valid request must not be refused for a reason the document could state (a limit, a type)."""
    meta = getattr(case, "meta", None)
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 400:
        return None
    message = str(response.json().get("message", ""))
    if _SCHEMA_SAYABLE.search(message):
        raise AssertionError(f"a schema-valid request was refused for a limit the OpenAPI document does not state: "
                             f"{message}")
    return None


def _unreliable_checks(case: Any) -> list[Any]:
    """A case made schema-violating only in its query string may not be: on the wire every query value is a
    string, so ``order_by=true`` (a "boolean" where strings are expected) is a valid string. Such cases still get
    every other check."""
    meta = case.meta
    negative = {location for location, info in meta.components.items() if info.mode.is_negative}
    if meta.generation.mode.is_negative and negative == {ParameterLocation.QUERY}:
        return [negative_data_rejection]
    return []


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_api_v1_conforms_to_its_openapi_document(api_v1_schema: Any, api: Api, mode: GenerationMode) -> None:
    """Every operation of the document, a few schema-valid (or schema-violating) requests each, every check.

    (schemathesis's ``schema.parametrize()`` pytest plugin does not run under pytest 9, so the operations are
    driven through `APIOperation.as_strategy` and hypothesis directly.)
    """
    failures: list[str] = []
    operations = 0
    for result in api_v1_schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @settings(derandomize=True, max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case: Any) -> None:
            case.call_and_validate(base_url=api.url, headers=api.headers, additional_checks=[documented_limits],
                                   excluded_checks=_unreliable_checks(case), timeout=30)

        try:
            check()
        except Unsatisfiable:  # negative mode: nothing in this operation can be made schema-violating
            assert mode is GenerationMode.NEGATIVE, operation.label
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001  # collected so that one run reports every failing operation
            failures.append(f"{operation.label}: {exc}")
    assert operations > 50
    assert not failures, f"{len(failures)} of {operations} operations failed:\n\n" + "\n\n".join(failures)


def test_openapi_document_states_the_real_error_answers(api: Api) -> None:
    document = httpx.get(f"{api.url}/api/v1/openapi.json", headers=api.headers, timeout=30).json()
    error_ref = {"$ref": "#/components/schemas/Error"}
    assert document["components"]["schemas"]["Error"]["required"] == ["error_code", "message"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert "422" not in responses, f"{method} {path} still documents 422"
            assert {"400", "401", "503"} <= set(responses), f"{method} {path}: {sorted(responses)}"
            if "{" in path:
                assert "404" in responses, f"{method} {path}"
            for status, response in responses.items():
                if int(status) >= 400:
                    assert response["content"]["application/json"]["schema"] == error_ref, f"{method} {path}"


# -- the MLflow REST API through hypothesis ----------------------------------------------------------------
MLFLOW_ROUTES: list[tuple[str, Route]] = (
    [("/api/2.0/mlflow", r) for r in mlflow_tracking.ROUTES + mlflow_registry.ROUTES + mlflow_models.ROUTES
     + mlflow_artifacts.ROUTES]
    + [("/api/3.0/mlflow", r) for r in mlflow_models.V3_ROUTES]
    + [("/api/2.0/mlflow-artifacts", r) for r in mlflow_artifacts.ARTIFACT_ROUTES])
FIELDS = ("experiment_id", "experiment_ids", "run_id", "run_uuid", "name", "new_name", "key", "value", "timestamp",
          "step", "version", "max_results", "page_token", "filter", "order_by", "view_type", "run_view_type",
          "start_time", "end_time", "status", "tags", "params", "metrics", "alias", "stage", "stages", "source",
          "model_id", "description", "metric_key", "path", "experiment_name", "archive_existing_versions",
          "datasets", "models", "artifact_location", "user_id", "run_name", "source_run_id", "model_type")
HUGE = 956_969_569_694_412_872_404_172_800
hostile_text = st.one_of(st.text(max_size=12), st.sampled_from(["", "x\x00y", "a\u202eb", "../..", "%00", "NaN"]))
hostile_number = st.one_of(st.integers(), st.sampled_from([HUGE, -HUGE, 2**63, -(2**63) - 1, 2**64]),
                           st.floats(allow_nan=True, allow_infinity=True), st.booleans())
scalar = st.one_of(st.none(), hostile_text, hostile_number, st.sampled_from([str(HUGE), "9223372036854775808"]))
pair = st.fixed_dictionaries({"key": scalar, "value": scalar})
value = st.one_of(scalar, st.lists(st.one_of(scalar, pair), max_size=3), st.dictionaries(hostile_text, scalar,
                                                                                          max_size=2))


def _fill(path: str, real: dict[str, str], segment: str) -> str:
    """``path`` with each ``{param}`` replaced by a real id when ``real`` has one, else by ``segment``."""
    return re.sub(r"\{(\w+)(:path)?\}", lambda m: real.get(m.group(1), segment), path)


def _call(api: Api, prefix: str, route: Route, body: dict[str, Any], real: dict[str, str],
          segment: str) -> httpx.Response:
    url = api.url + prefix + _fill(route.path, real, segment)
    if route.method == "GET":
        query = {k: (v if isinstance(v, (str, int, float)) else str(v)) for k, v in body.items()}
        return httpx.get(url, params=query, headers=api.headers, timeout=30)
    return httpx.request(route.method, url, json=body, headers=api.headers, timeout=30)


@pytest.mark.parametrize(("prefix", "route"), MLFLOW_ROUTES, ids=[f"{r.method} {p}{r.path}" for p, r in MLFLOW_ROUTES])
def test_mlflow_route_answers_hostile_input_with_a_4xx(api: Api, prefix: str, route: Route) -> None:
    @settings(derandomize=True, max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)
    @given(fields=st.dictionaries(st.sampled_from(FIELDS), value, max_size=5), segment=hostile_text,
           real=st.booleans())
    def check(fields: dict[str, Any], segment: str, real: bool) -> None:
        ids = {"run_id": api.run_id, "experiment_id": api.experiment_id} if real else {}
        if real:  # point the request at objects that exist, so it gets past the lookups to the field checks
            fields = {"experiment_id": api.experiment_id, "run_id": api.run_id, "name": api.model_name, **fields}
        response = _call(api, prefix, route, fields, ids, quote(segment, safe="") or "x")
        assert response.status_code < 500 or (response.status_code == 501 and
                                              response.json()["error_code"] == "NOT_IMPLEMENTED"), \
            f"{route.method} {prefix}{route.path} {fields!r}: {response.status_code} {response.text[:300]}"
        if response.status_code >= 400:
            body = response.json()
            assert isinstance(body.get("error_code"), str) and isinstance(body.get("message"), str), response.text

    check()

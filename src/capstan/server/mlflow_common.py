"""Shared plumbing of the MLflow-compatible REST API: request parsing, JSON rendering and scoping.

MLflow's client speaks proto3-style JSON: POST/PATCH/DELETE bodies are JSON objects, GET requests carry their
fields as query parameters (repeated keys for lists), int64 fields may arrive as numbers or strings and doubles
may be the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``. Parsing is done by hand (no pydantic) because
these handlers sit on the hot path of metric logging; responses are serialised with orjson.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import orjson
from fastapi import Request
from starlette.responses import Response

from capstan.artifacts.paths import normalize_path
from capstan.errors import CapstanError, InvalidParameterValue

if TYPE_CHECKING:
    from capstan.artifacts.store import ArtifactStore
    from capstan.auth.policy import Permission
    from capstan.registry.ports import RegistryStore
    from capstan.tracking.ports import TrackingStore

PROJECT_HEADER = "x-capstan-project"
WORKSPACE_HEADER = "x-mlflow-workspace"
DEFAULT_PROJECT = "default"
_MISSING = object()
MAX_INT64 = 2**63 - 1
MIN_INT64 = -(2**63)


class EndpointNotFound(CapstanError):
    """A path (or method) under an MLflow prefix that this server does not serve: MLflow's
    ``ENDPOINT_NOT_FOUND``, which is how its client detects an optional API a server lacks."""

    code = "ENDPOINT_NOT_FOUND"
    http_status = 404


class NotImplementedByServer(CapstanError):
    """A capability MLflow lets servers decline (``NOT_IMPLEMENTED``); the client then falls back."""

    code = "NOT_IMPLEMENTED"
    http_status = 501


# -- request fields -----------------------------------------------------------------------------------------
class Fields:
    """The fields of one request: a JSON body, or query parameters for GET (a repeated key gives a list).

    Every getter validates the type and raises `InvalidParameterValue` naming the field (``prefix`` is
    prepended for nested objects, e.g. ``metrics[3].value``).
    """

    __slots__ = ("_data", "_prefix", "_query")

    def __init__(self, data: Mapping[str, Any], prefix: str = "", *, query: bool = False) -> None:
        self._data = data
        self._prefix = prefix
        self._query = query

    @property
    def data(self) -> Mapping[str, Any]:
        """The raw fields."""
        return self._data

    def _scalar(self, key: str, value: Any) -> Any:
        """A repeated query key counts as its last value; a JSON array is never a scalar."""
        if isinstance(value, list):
            if not self._query:
                raise self._invalid(key, value, "a single value, not a list")
            return value[-1]
        return value

    def name(self, key: str) -> str:
        """The field's name as shown in error messages."""
        return f"{self._prefix}{key}"

    def _raw(self, keys: tuple[str, ...]) -> tuple[str, Any]:
        for key in keys:
            value = self._data.get(key, _MISSING)
            if value is not _MISSING and value is not None:
                return key, value
        return keys[0], _MISSING

    def has(self, *keys: str) -> bool:
        """True when any of ``keys`` is present with a non-null value."""
        return self._raw(keys)[1] is not _MISSING

    def _invalid(self, key: str, value: Any, expected: str) -> InvalidParameterValue:
        # JSON spelling, as MLflow's messages write it (``Invalid value "5" for parameter 'tags' supplied``).
        try:
            shown = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        except TypeError:
            shown = repr(value)
        if len(shown) > 100:
            shown = shown[:100] + "..."
        return InvalidParameterValue(
            f"Invalid value {shown} for parameter '{self.name(key)}' supplied: expected {expected}")

    def _missing(self, key: str) -> InvalidParameterValue:
        return InvalidParameterValue(f"Missing value for required parameter '{self.name(key)}'.")

    def string(self, *keys: str, required: bool = False, default: str = "") -> str:
        """A string field; ``keys`` are accepted aliases (``run_id``, ``run_uuid``)."""
        key, value = self._raw(keys)
        if value is _MISSING:
            if required:
                raise self._missing(key)
            return default
        value = self._scalar(key, value)
        if not isinstance(value, str):
            raise self._invalid(key, value, "a string")
        if required and value == "":
            raise self._missing(key)
        return value

    def optional_string(self, *keys: str) -> str | None:
        """A string field, or ``None`` when absent or empty."""
        value = self.string(*keys)
        return value or None

    def integer(self, key: str, *, default: int | None = None, required: bool = False,
                minimum: int | None = None, maximum: int | None = None) -> int | None:
        """An integer (int64 fields may be JSON numbers or decimal strings); never outside the signed 64-bit
        range, whatever ``minimum`` and ``maximum`` say, so no store sees a number its columns cannot hold."""
        _, value = self._raw((key,))
        if value is _MISSING:
            if required:
                raise self._missing(key)
            return default
        value = self._scalar(key, value)
        result = _as_int(value)
        if result is None:
            raise self._invalid(key, value, "an integer")
        if not MIN_INT64 <= result <= MAX_INT64:
            raise self._invalid(key, value, f"an integer from {MIN_INT64} to {MAX_INT64} (64 bits)")
        if minimum is not None and result < minimum:
            raise InvalidParameterValue(f"Invalid value {result} for parameter '{self.name(key)}': "
                                        f"must be at least {minimum}")
        if maximum is not None and result > maximum:
            raise InvalidParameterValue(f"Invalid value {result} for parameter '{self.name(key)}': "
                                        f"must be at most {maximum}")
        return result

    def number(self, key: str, *, required: bool = True) -> float:
        """A double: a JSON number, or a string such as ``"NaN"``, ``"Infinity"``, ``"-Infinity"``, ``"1.5"``."""
        _, value = self._raw((key,))
        if value is _MISSING:
            raise self._missing(key)
        value = self._scalar(key, value)
        if isinstance(value, bool):
            raise self._invalid(key, value, "a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise self._invalid(key, value, "a number (or \"NaN\", \"Infinity\", \"-Infinity\")")

    def boolean(self, key: str, *, default: bool = False) -> bool:
        """A boolean: JSON true/false or the strings ``"true"``/``"false"``."""
        _, value = self._raw((key,))
        if value is _MISSING:
            return default
        value = self._scalar(key, value)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise self._invalid(key, value, "true or false")

    def strings(self, key: str) -> list[str]:
        """A repeated string field (a JSON array, or repeated query keys); a bare JSON string is refused."""
        _, value = self._raw((key,))
        if value is _MISSING:
            return []
        if isinstance(value, str) and self._query:
            return [value]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self._invalid(key, value, "a list of strings")
        return value

    def objects(self, key: str) -> list[Fields]:
        """A repeated message field: each item becomes a nested `Fields` named ``key[i].``."""
        _, value = self._raw((key,))
        if value is _MISSING:
            return []
        if not isinstance(value, list):
            raise self._invalid(key, value, "a list of objects")
        out = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise self._invalid(f"{key}[{index}]", item, "an object")
            out.append(Fields(item, f"{self._prefix}{key}[{index}]."))
        return out

    def object(self, key: str) -> Fields:
        """A nested message field (an empty one when absent)."""
        _, value = self._raw((key,))
        if value is _MISSING:
            return Fields({}, f"{self._prefix}{key}.")
        if not isinstance(value, dict):
            raise self._invalid(key, value, "an object")
        return Fields(value, f"{self._prefix}{key}.")

    def key_values(self, key: str, *, value_required: bool = False) -> dict[str, str]:
        """A repeated ``{key, value}`` message field (tags, params) as a dict; later keys win."""
        out: dict[str, str] = {}
        for item in self.objects(key):
            out[item.string("key", required=True)] = item.string("value", required=value_required)
        return out

    def enum(self, key: str, values: tuple[str, ...], *, default: str | None = None) -> str | None:
        """An enum given by name (``"ACTIVE_ONLY"``) or by its proto number (1-based where MLflow's are)."""
        _, value = self._raw((key,))
        if value is _MISSING:
            return default
        value = self._scalar(key, value)
        if isinstance(value, str) and value.upper() in values:
            return value.upper()
        number = _as_int(value)
        if number is not None and 1 <= number <= len(values):
            return values[number - 1]
        raise self._invalid(key, value, "one of " + ", ".join(values))


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text.startswith(("-", "+")) else text
        if not (digits.isascii() and digits.isdigit()):
            return None
        # Past 20 digits it is out of range anyway (and int() refuses past 4,300 digits).
        return int(text) if len(digits) <= 20 else (MIN_INT64 - 1 if text.startswith("-") else MAX_INT64 + 1)
    return None


def parse_body(body: bytes) -> dict[str, Any]:
    """A JSON request body as a dict (`InvalidParameterValue` when it is not a JSON object)."""
    if not body.strip():
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidParameterValue(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidParameterValue("Request body must be a JSON object")
    return data


def query_fields(request: Request) -> dict[str, Any]:
    """Query parameters as a dict; a repeated key gives a list."""
    data: dict[str, Any] = {}
    for key, value in request.query_params.multi_items():
        previous = data.get(key)
        if previous is None:
            data[key] = value
        elif isinstance(previous, list):
            previous.append(value)
        else:
            data[key] = [previous, value]
    return data


# -- rendering ------------------------------------------------------------------------------------------------
def json_response(payload: Mapping[str, Any], status_code: int = 200) -> Response:
    """An ``application/json`` response serialised with orjson."""
    return Response(content=orjson.dumps(payload), status_code=status_code, media_type="application/json")


def render_double(value: float) -> float | str:
    """A double as proto-JSON writes it: NaN and infinities become strings."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def render_pairs(mapping: Mapping[str, str]) -> list[dict[str, str]]:
    """A ``{key: value}`` mapping as MLflow's repeated ``{"key", "value"}`` messages."""
    return [{"key": key, "value": value} for key, value in mapping.items()]


def drop_none(payload: dict[str, Any]) -> dict[str, Any]:
    """Remove ``None`` members (absent optional proto fields)."""
    return {key: value for key, value in payload.items() if value is not None}


# -- request context --------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Call:
    """Everything a handler needs: the request, its fields and path parameters."""

    request: Request
    fields: Fields
    path: Mapping[str, str]

    @property
    def tracking(self) -> TrackingStore:
        """The tracking store."""
        return cast("TrackingStore", self.request.app.state.services.tracking)

    @property
    def registry(self) -> RegistryStore:
        """The model-registry store."""
        return cast("RegistryStore", self.request.app.state.services.registry)

    @property
    def artifacts(self) -> ArtifactStore:
        """The artifact store."""
        return cast("ArtifactStore", self.request.app.state.services.artifacts)

    @property
    def project(self) -> str:
        """The project new objects go into and searches look at: the ``X-Capstan-Project`` header, else MLflow's
        workspace header (``MLFLOW_WORKSPACE`` on the client), else ``default``."""
        headers = self.request.headers
        chosen = headers.get(PROJECT_HEADER) or headers.get(WORKSPACE_HEADER) or ""
        return chosen.strip() or DEFAULT_PROJECT

    @property
    def owners(self) -> Owners:
        """The app's cache of which project owns a run, logged model or experiment."""
        state = self.request.app.state
        owners: Owners | None = getattr(state, "mlflow_owners", None)
        if owners is None:
            owners = Owners()
            state.mlflow_owners = owners
        return owners

    def require(self, permission: Permission, project: str, target: str | None = None) -> None:
        """Authorise ``permission`` on ``project`` (raises Unauthenticated / PermissionDenied); ``target``
        (``"run/<id>"``) names the object for the audit log."""
        from capstan.server.security import require

        require(self.request, permission, project, target=target)

    # -- scoped lookups ---------------------------------------------------------------------------------
    def experiment_project(self, experiment_id: str) -> str:
        """The project of an experiment (cached briefly)."""
        project = self.owners.experiment_project(experiment_id)
        if project is None:
            project = self.tracking.get_experiment(experiment_id).project
            self.owners.remember_experiment(experiment_id, project)
        return project

    def run_project(self, run_id: str) -> str:
        """The project of a run (through its experiment; cached, since a run never moves)."""
        project = self.owners.runs.get(run_id)
        if project is None:
            project = self.experiment_project(self.tracking.get_run(run_id).info.experiment_id)
            self.owners.remember(self.owners.runs, run_id, project)
        return project

    def authorize_experiment(self, experiment_id: str, permission: Permission) -> str:
        """Check ``permission`` on the experiment's project; returns the project."""
        project = self.experiment_project(experiment_id)
        self.require(permission, project, f"experiment/{experiment_id}")
        return project

    def authorize_run(self, run_id: str, permission: Permission) -> str:
        """Check ``permission`` on the run's project; returns the project."""
        project = self.run_project(run_id)
        self.require(permission, project, f"run/{run_id}")
        return project

    def authorize_logged_model(self, model_id: str, permission: Permission) -> str:
        """Check ``permission`` on the logged model's project; returns the project."""
        project = self.owners.models.get(model_id)
        if project is None:
            project = self.experiment_project(self.tracking.get_logged_model(model_id).experiment_id)
            self.owners.remember(self.owners.models, model_id, project)
        self.require(permission, project, f"logged-model/{model_id}")
        return project

    def authorize_registered_model(self, name: str, permission: Permission) -> str:
        """Check ``permission`` on the registered model's project (never cached: models can be renamed)."""
        project = self.registry.get_registered_model(name).project
        self.require(permission, project, f"model/{name}")
        return project


class Owners:
    """Caches of which project owns an object, so authorisation costs no query on the hot path.

    Runs and logged models never change experiment and experiments never change project, so those entries
    stay valid for the object's lifetime (ids are random uuids, never reused). Experiment ids are small
    integers that could in principle be reused after a purge, so those entries expire after ``ttl_s``.
    """

    def __init__(self, *, ttl_s: float = 10.0, max_entries: int = 100_000) -> None:
        self.runs: dict[str, str] = {}
        self.models: dict[str, str] = {}
        self._experiments: dict[str, tuple[str, float]] = {}
        self._ttl_s = ttl_s
        self._max = max_entries

    def remember(self, cache: dict[str, str], key: str, project: str) -> None:
        """Record ``key -> project`` in ``cache`` (bounded: cleared when full)."""
        if len(cache) >= self._max:
            cache.clear()
        cache[key] = project

    def experiment_project(self, experiment_id: str) -> str | None:
        """The cached project of an experiment, or ``None``."""
        hit = self._experiments.get(experiment_id)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def remember_experiment(self, experiment_id: str, project: str) -> None:
        """Record an experiment's project for a short while."""
        if len(self._experiments) >= self._max:
            self._experiments.clear()
        self._experiments[experiment_id] = (project, time.monotonic() + self._ttl_s)


def proxied_path(uri: str) -> str | None:
    """The artifact-store path of an ``mlflow-artifacts:`` URI (``None`` for any other scheme).

    ``mlflow-artifacts:/1/abc/artifacts`` and ``mlflow-artifacts://host:port/1/abc/artifacts`` both give
    ``1/abc/artifacts``.
    """
    scheme = "mlflow-artifacts:"
    if not uri.startswith(scheme):
        return None
    rest = uri[len(scheme):]
    if rest.startswith("//"):
        slash = rest.find("/", 2)
        rest = "" if slash < 0 else rest[slash:]
    return normalize_path(rest.lstrip("/"), field_name="artifact_uri", allow_empty=True)

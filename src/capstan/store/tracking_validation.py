"""Input checks of the tracking store (MLflow's limits and rules), and generated run names. Pure: no I/O.

Every failure is an `InvalidParameterValue` whose message starts with the field it is about, e.g.
``metrics[3].value: ...`` or ``params[0].key: ...``.
"""

from __future__ import annotations

import math
import numbers
import posixpath
import random
import re
from collections.abc import Mapping, Sequence

from capstan.artifacts.paths import has_relative_references, is_local_uri, normalize_path, uri_scheme
from capstan.errors import InvalidParameterValue
from capstan.names import check_characters
from capstan.tracking.records import RUN_STATUSES, VIEW_TYPES, DatasetInput, Metric, Param, RunTag

MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_EXPERIMENT_TAG_VALUE_LENGTH = 20000
MAX_NAME_LENGTH = 256  # experiment and project names: the width of their columns
MAX_RUN_NAME_LENGTH = 250
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
MAX_SEARCH_RESULTS = 50000
MAX_DATASET_NAME_LENGTH = 500
MAX_DATASET_DIGEST_LENGTH = 36
MAX_DATASET_SOURCE_LENGTH = 65535
MAX_DATASET_SCHEMA_LENGTH = 1048575
MAX_DATASET_PROFILE_LENGTH = 16777215
MAX_INPUT_TAG_KEY_LENGTH = 255
MAX_INPUT_TAG_VALUE_LENGTH = 500
LOGGED_MODEL_STATUSES = ("PENDING", "READY", "FAILED", "UNSPECIFIED")
_STATUS_ALIASES = {"LOGGED_MODEL_PENDING": "PENDING", "LOGGED_MODEL_READY": "READY",
                   "LOGGED_MODEL_UPLOAD_FAILED": "FAILED", "LOGGED_MODEL_STATUS_UNSPECIFIED": "UNSPECIFIED"}
MAX_INT64 = 2**63 - 1
MAX_INT32 = 2**31 - 1

_KEY_CHARS = re.compile(r"[/\w.\- :]*")

MetricRow = tuple[str, float, bool, int, int]
"""A checked metric point: (key, stored value, is_nan, timestamp, step); NaN is stored as 0.0."""


def check_key(key: object, field_name: str) -> str:
    """A metric, param or tag name: alphanumerics, ``_ - . / :`` and spaces, at most 250 characters, and not
    something that resolves to another name as a path (``a//b``, ``./a``, ``a/``)."""
    if not isinstance(key, str) or not key:
        raise InvalidParameterValue(f"{field_name}: a non-empty name is required")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidParameterValue(f"{field_name}: {key[:40]!r}... is longer than {MAX_KEY_LENGTH} characters")
    if not _KEY_CHARS.fullmatch(key):
        raise InvalidParameterValue(
            f"{field_name}: invalid name {key!r}; names may only contain alphanumerics, underscores (_), dashes "
            "(-), periods (.), spaces ( ), colons (:) and slashes (/)")
    norm = posixpath.normpath(key)
    if norm != key or norm == "." or norm.startswith("..") or norm.startswith("/"):
        raise InvalidParameterValue(
            f"{field_name}: invalid name {key!r}; as a path it would resolve to {norm!r}")
    return key


def _check_length(value: str, limit: int, field_name: str) -> str:
    if len(value) > limit:
        raise InvalidParameterValue(
            f"{field_name}: {len(value)} characters is longer than the limit of {limit}")
    return value


def _as_int(value: object, field_name: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        raise InvalidParameterValue(f"{field_name}: {value!r} is not {what}")
    if isinstance(value, numbers.Integral):
        number = int(value)
    else:
        as_float = float(value)  # type: ignore[arg-type]  # a Real; other Numbers are rejected just below
        if not as_float.is_integer():
            raise InvalidParameterValue(f"{field_name}: {value!r} is not {what}")
        number = int(as_float)
    if abs(number) > MAX_INT64:
        raise InvalidParameterValue(f"{field_name}: {value!r} does not fit in a 64-bit integer")
    return number


def check_time(value: object, field_name: str) -> int:
    """A non-negative time in milliseconds that fits in 64 bits."""
    number = _as_int(value, field_name, "a time in milliseconds")
    if number < 0:
        raise InvalidParameterValue(f"{field_name}: {number} must not be negative")
    return number


def check_step(value: object, field_name: str) -> int:
    """A 64-bit integer step."""
    return _as_int(value, field_name, "an integer step")


def check_metric(metric: Metric, field_name: str) -> MetricRow:
    """Validate one metric point and return it as the row to store."""
    key = check_key(metric.key, f"{field_name}.key")
    value = metric.value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidParameterValue(
            f"{field_name}.value: {value!r} is not a number; metric {key!r} needs a 64-bit float value")
    number = float(value)
    timestamp = _as_int(metric.timestamp, f"{field_name}.timestamp", "a timestamp in milliseconds")
    if timestamp < 0:
        raise InvalidParameterValue(f"{field_name}.timestamp: {timestamp} must not be negative")
    step = _as_int(metric.step, f"{field_name}.step", "an integer step")
    if math.isnan(number):
        return key, 0.0, True, timestamp, step
    return key, number, False, timestamp, step


def check_param(param: Param, field_name: str) -> tuple[str, str]:
    """Validate a param and return (key, value); non-string values are stringified as MLflow does."""
    key = check_key(param.key, f"{field_name}.key")
    if param.value is None:
        raise InvalidParameterValue(f"{field_name}.value: a value is required for param {key!r}")
    value = param.value if isinstance(param.value, str) else str(param.value)
    return key, _check_length(value, MAX_PARAM_VALUE_LENGTH, f"{field_name}.value")


def check_tag(key: str, value: object, field_name: str, *, limit: int = MAX_TAG_VALUE_LENGTH) -> tuple[str, str]:
    """Validate a tag (run, experiment or logged-model) and return (key, value)."""
    key = check_key(key, f"{field_name}.key")
    if value is None:
        raise InvalidParameterValue(f"{field_name}.value: a value is required for tag {key!r}")
    text = value if isinstance(value, str) else str(value)
    return key, _check_length(text, limit, f"{field_name}.value")


def check_run_tags(tags: Sequence[RunTag], field_name: str = "tags") -> dict[str, str]:
    """Validate run tags; a key given twice keeps its last value."""
    out: dict[str, str] = {}
    for index, tag in enumerate(tags):
        key, value = check_tag(tag.key, tag.value, f"{field_name}[{index}]")
        out[key] = value
    return out


def check_tag_mapping(tags: Mapping[str, str] | None, field_name: str = "tags", *,
                      limit: int = MAX_TAG_VALUE_LENGTH) -> dict[str, str]:
    """Validate a ``{key: value}`` tag mapping."""
    out: dict[str, str] = {}
    for key, value in (tags or {}).items():
        k, v = check_tag(key, value, f"{field_name}[{key!r}]", limit=limit)
        out[k] = v
    return out


def check_batch_limits(metrics: int, params: int, tags: int) -> None:
    """MLflow's per-request limits of ``log_batch``."""
    for name, count, limit in (("metrics", metrics, MAX_METRICS_PER_BATCH), ("params", params, MAX_PARAMS_PER_BATCH),
                               ("tags", tags, MAX_TAGS_PER_BATCH)):
        if count > limit:
            raise InvalidParameterValue(
                f"{name}: a batch may hold at most {limit} {name}, got {count}; split it into several batches")
    if metrics + params + tags > MAX_ENTITIES_PER_BATCH:
        raise InvalidParameterValue(
            f"metrics, params and tags: a batch may hold at most {MAX_ENTITIES_PER_BATCH} entries in all, got "
            f"{metrics + params + tags}")


def check_name(name: object, field_name: str, *, limit: int = MAX_NAME_LENGTH) -> str:
    """A non-empty experiment, project or run name that fits its column and holds no control or bidi-override
    character (`capstan.names.check_characters`)."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidParameterValue(f"{field_name}: a non-empty name is required")
    if len(name) > limit:
        raise InvalidParameterValue(f"{field_name}: {len(name)} characters is longer than the limit of {limit}")
    return check_characters(name, field_name)


def check_logged_model_name(name: str) -> str:
    """MLflow's rule for logged-model names: non-empty, none of ``/ : . % " '``."""
    bad = [ch for ch in '/:.%"\'' if ch in name]
    if not name or bad:
        raise InvalidParameterValue(
            f"name: invalid logged model name {name!r}; it must be non-empty and must not contain "
            "any of / : . % \" '")
    return check_name(name, "name")


def check_status(status: str, field_name: str = "status") -> str:
    """A run status: RUNNING, SCHEDULED, FINISHED, FAILED or KILLED."""
    if status not in RUN_STATUSES:
        raise InvalidParameterValue(f"{field_name}: {status!r} is not one of {', '.join(RUN_STATUSES)}")
    return status


def check_logged_model_status(status: str) -> str:
    """Accept ``READY`` or the proto name ``LOGGED_MODEL_READY`` (and the other statuses); return the short name."""
    short = _STATUS_ALIASES.get(status, status)
    if short not in LOGGED_MODEL_STATUSES:
        raise InvalidParameterValue(f"status: {status!r} is not one of {', '.join(LOGGED_MODEL_STATUSES)}")
    return short


def check_view_type(view_type: str) -> tuple[str, ...]:
    """The lifecycle stages a view type selects."""
    if view_type == "ACTIVE_ONLY":
        return ("active",)
    if view_type == "DELETED_ONLY":
        return ("deleted",)
    if view_type == "ALL":
        return ("active", "deleted")
    raise InvalidParameterValue(f"view_type: {view_type!r} is not one of {', '.join(VIEW_TYPES)}")


def check_max_results(max_results: int, *, limit: int = MAX_SEARCH_RESULTS) -> int:
    """A page size between 1 and ``limit``."""
    if isinstance(max_results, bool) or not isinstance(max_results, int) or not 1 <= max_results <= limit:
        raise InvalidParameterValue(f"max_results: must be an integer between 1 and {limit}, got {max_results!r}")
    return max_results


def check_dataset(dataset: DatasetInput, field_name: str) -> DatasetInput:
    """MLflow's limits on a dataset input (name, digest, source, schema, profile, input tags)."""
    check_name(dataset.name, f"{field_name}.name", limit=MAX_DATASET_NAME_LENGTH)
    if not isinstance(dataset.digest, str) or not dataset.digest:
        raise InvalidParameterValue(f"{field_name}.digest: a non-empty digest is required")
    _check_length(dataset.digest, MAX_DATASET_DIGEST_LENGTH, f"{field_name}.digest")
    _check_length(dataset.source, MAX_DATASET_SOURCE_LENGTH, f"{field_name}.source")
    _check_length(dataset.schema, MAX_DATASET_SCHEMA_LENGTH, f"{field_name}.schema")
    _check_length(dataset.profile, MAX_DATASET_PROFILE_LENGTH, f"{field_name}.profile")
    for key, value in dataset.tags.items():
        if not key:
            raise InvalidParameterValue(f"{field_name}.tags: tag keys must not be empty")
        _check_length(key, MAX_INPUT_TAG_KEY_LENGTH, f"{field_name}.tags[{key!r}].key")
        _check_length(value, MAX_INPUT_TAG_VALUE_LENGTH, f"{field_name}.tags[{key!r}].value")
    return dataset


MAX_ARTIFACT_LOCATION_LENGTH = 4000
_SERVER_SCHEMES = ("mlflow-artifacts", "runs", "models")


def check_artifact_location(location: str | None) -> tuple[str, str]:
    """Where a new experiment keeps its artifacts: ``("", "")`` to let the server assign
    ``mlflow-artifacts:/<id>``, ``("", sub)`` for a relative location (resolved by the server to
    ``mlflow-artifacts:/<id>/<sub>``, inside the experiment's own tree), or ``(uri, "")`` for external storage
    (``s3://bucket/prefix``) that clients write to directly.

    Refused, so that no experiment's runs can write into another experiment's tree or onto the server's disk:
    ``mlflow-artifacts:``, ``runs:`` and ``models:`` URIs (the server assigns those), absolute local paths and
    ``file:`` URIs, relative paths that climb out (``../../etc``), and URIs with ``..``, encoded traversal, NUL or
    control characters.
    """
    text = (location or "").strip()
    if not text:
        return "", ""
    field_name = "artifact_location"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise InvalidParameterValue(f"{field_name}: control characters are not allowed in {text!r}")
    if len(text) > MAX_ARTIFACT_LOCATION_LENGTH:
        raise InvalidParameterValue(f"{field_name}: longer than {MAX_ARTIFACT_LOCATION_LENGTH} characters")
    scheme = uri_scheme(text)
    if scheme in _SERVER_SCHEMES:
        raise InvalidParameterValue(
            f"{field_name}: {scheme}: locations are assigned by the server; leave it empty, give a path relative "
            "to the experiment's own artifact folder or a storage URI such as s3://bucket/prefix")
    if is_local_uri(text):
        if scheme == "file" or text.startswith(("/", "\\")) or (len(text) > 1 and text[1] == ":"):
            raise InvalidParameterValue(
                f"{field_name}: {text!r} is a path on the server's disk, which the server does not hand out; "
                "leave it empty, give a path relative to the experiment's own artifact folder or a storage URI "
                "such as s3://bucket/prefix")
        return "", normalize_path(text, field_name=field_name)
    if has_relative_references(text):
        raise InvalidParameterValue(
            f"{field_name}: {text!r} holds relative path references ('..', '.', encoded '..%2f') or NUL; give an "
            "absolute storage URI")
    return text, ""


def parse_experiment_id(experiment_id: object, field_name: str = "experiment_id") -> int | None:
    """The integer behind an experiment id; None when it is a well-formed id too large to exist."""
    text = str(experiment_id).strip() if isinstance(experiment_id, (str, int)) else ""
    if isinstance(experiment_id, bool) or not text.isdigit() or not text.isascii():
        raise InvalidParameterValue(f"{field_name}: {experiment_id!r} is not a valid experiment id (an integer)")
    number = int(text) if len(text) <= 20 else MAX_INT64  # int() refuses past 4,300 digits
    return number if number <= MAX_INT32 else None


_ADJECTIVES = (
    "amber", "bold", "brave", "bright", "calm", "clever", "crisp", "daring", "eager", "fancy", "fast", "fierce",
    "gentle", "glad", "golden", "grand", "happy", "hidden", "humble", "jolly", "keen", "kind", "lively", "lucky",
    "mellow", "merry", "mighty", "misty", "noble", "polite", "proud", "quick", "quiet", "rapid", "royal", "rustic",
    "shiny", "silent", "silver", "sleek", "smooth", "snowy", "steady", "stormy", "sunny", "swift", "tidy",
    "upbeat", "vivid", "warm", "wise", "witty", "zesty",
)
_NOUNS = (
    "badger", "bison", "crane", "cobra", "colt", "deer", "dove", "eagle", "eel", "elk", "falcon", "finch", "fox",
    "frog", "gecko", "goat", "goose", "hare", "hawk", "heron", "ibis", "koala", "lark", "lemur", "lion", "lynx",
    "mole", "moose", "moth", "newt", "orca", "otter", "owl", "panda", "puma", "quail", "raven", "robin", "seal",
    "shrew", "sloth", "snail", "swan", "tapir", "tiger", "trout", "viper", "whale", "wolf", "wren", "yak", "zebra",
)


def generate_run_name(rng: random.Random | None = None) -> str:
    """A readable run name such as ``swift-otter-274`` (at most 20 characters)."""
    pick = rng or random.Random()
    while True:
        name = f"{pick.choice(_ADJECTIVES)}-{pick.choice(_NOUNS)}-{pick.randrange(1000)}"
        if len(name) <= 20:
            return name
